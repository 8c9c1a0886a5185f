"""Onboarding a dataset is one spec file: `flywheel init-dataset` drafts it from samples, the DAG
appears; `flywheel init-use-case` drafts a use case on it. CLI mistakes are one line, exit 2."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from flywheel.airflow.factory import build_all
from flywheel.cli import app
from flywheel.core.spec import DataSpec, PipelineSpec, SpecError, load_any_spec_file, load_spec_file
from flywheel.data.validation import REASONS, validate

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def orders_sample(folder: Path) -> Path:
    path = folder / "orders.csv"
    pd.DataFrame({
        "order_id": [f"o-{i}" for i in range(50)],
        "placed_at": pd.date_range("2026-02-01", periods=50, freq="20min", tz="UTC"),
        "customer_id": range(50),
        "total": [10.5 + i for i in range(50)],
        "channel": ["web", "app"] * 25,
    }).to_csv(path, index=False)
    return path


def draft(tmp_path: Path) -> Path:
    specs = tmp_path / "specs"
    specs.mkdir()
    out = specs / "orders.yaml"
    result = runner.invoke(app, ["init-dataset", str(orders_sample(tmp_path)), "--name", "orders",
                                 "--source", "{home}/landing/orders/ds={ds}", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def flights_day(day: str, *, rows: int = 300, seed: int = 0) -> pd.DataFrame:
    """A day of flights: calendar columns constant within a day, no single-column key."""
    rng = np.random.default_rng(seed)
    when = pd.Timestamp(day, tz="UTC") + pd.to_timedelta(np.sort(rng.integers(0, 86_399, rows)), unit="s")
    return pd.DataFrame({
        "year": when.year, "month": when.month, "day": when.day, "hour": when.hour,
        "carrier": rng.choice(["UA", "AA", "B6", "DL"], rows),
        "flight": rng.integers(1, 4000, rows),
        "tailnum": [f"N{n}" for n in rng.integers(100, 900, rows)],
        "origin": rng.choice(["JFK", "LGA", "EWR"], rows),
        "distance": rng.integers(200, 2500, rows),
        "arr_delay": rng.normal(5, 30, rows).round(),
        "time_hour": when,
    })


def flights_samples(folder: Path, days: list[str]) -> list[Path]:
    paths = []
    for i, day in enumerate(days):
        frame = flights_day(day, seed=i)
        if i == 1:
            frame.loc[3, "arr_delay"] = None  # a null only in the second sample
        path = folder / f"flights-{day}.csv"
        frame.to_csv(path, index=False)
        paths.append(path)
    return paths


def init_flights(tmp_path: Path, *extra: str) -> tuple[object, Path]:
    flights_samples(tmp_path, ["2013-01-01", "2013-01-02"])
    out = tmp_path / "specs" / "flights.yaml"
    out.parent.mkdir(exist_ok=True)
    result = runner.invoke(app, ["init-dataset", str(tmp_path / "flights-*.csv"), "--name", "flights",
                                 "--source", "{home}/landing/flights/ds={ds}", "--out", str(out), *extra])
    return result, out


def test_init_dataset_writes_a_loadable_dataset_spec(tmp_path):
    spec = load_any_spec_file(draft(tmp_path))
    assert type(spec) is DataSpec and not isinstance(spec, PipelineSpec)
    assert (spec.name, spec.owner, spec.dataset.format) == ("orders", "data-engineering", "csv")
    assert spec.dataset.timestamp == "placed_at" and spec.dataset.key == "order_id"
    assert spec.dataset.contract.columns["order_id"].unique
    assert spec.dataset.contract.max_quarantine_share == 0.05
    with pytest.raises(SpecError, match="kind: dataset"):
        load_spec_file(tmp_path / "specs" / "orders.yaml")


def test_no_unique_key_is_one_line_suggesting_a_composite_key_or_none(tmp_path):
    result, out = init_flights(tmp_path)
    assert result.exit_code == 2 and not out.exists()
    assert "Traceback" not in result.output and "--key a,b" in result.output and "--key none" in result.output


def test_a_draft_from_several_samples_survives_the_next_day(tmp_path):
    result, out = init_flights(tmp_path, "--key", "none")
    assert result.exit_code == 0, result.output
    spec = load_any_spec_file(out)
    columns = spec.dataset.contract.columns
    assert spec.dataset.key is None and spec.dataset.key_columns == []
    assert columns["arr_delay"].nullable and not columns["distance"].nullable  # from all samples
    assert columns["year"].min is None and columns["day"].max == 31  # calendar-like: no tight range
    assert columns["flight"].min is None  # id-like
    assert columns["distance"].min < 200 and columns["distance"].max > 2500  # widened by the span
    assert columns["carrier"].allowed == ["AA", "B6", "DL", "UA"] and columns["tailnum"].allowed is None
    later = flights_day("2013-01-20", seed=9)  # another month day, the same kinds of values
    checked = validate(later, spec.dataset, "2013-01-20")
    assert len(checked.quarantined) == 0, checked.quarantined[REASONS].value_counts()


def test_composite_key_and_never_overwrite_without_force(tmp_path):
    flights_samples(tmp_path, ["2013-01-01"])
    frame = pd.read_csv(tmp_path / "flights-2013-01-01.csv")
    frame["seq"] = range(len(frame))
    frame.to_csv(tmp_path / "flights-2013-01-01.csv", index=False)
    out = tmp_path / "flights.yaml"
    args = ["init-dataset", str(tmp_path / "flights-2013-01-01.csv"), "--name", "flights", "--source", "x/{ds}",
            "--key", "carrier,seq", "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    assert load_any_spec_file(out).dataset.key == ["carrier", "seq"]
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--force" in again.output and "Traceback" not in again.output
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0
    not_unique = runner.invoke(app, [*args[:-2], "--key", "carrier", "--out", str(tmp_path / "b.yaml")])
    assert not_unique.exit_code == 2 and "not unique" in not_unique.output


def test_init_use_case_drafts_a_spec_that_loads(tmp_path, monkeypatch):
    result, dataset_file = init_flights(tmp_path, "--key", "none")
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("FLYWHEEL_SPECS_DIR", str(dataset_file.parent))
    out = tmp_path / "delays.yaml"
    drafted = runner.invoke(app, ["init-use-case", "--dataset", "flights", "--label", "arr_delay > 15",
                                  "--task", "binary", "--entities", "carrier,origin", "--out", str(out)])
    assert drafted.exit_code == 0, drafted.output
    spec = load_spec_file(out)
    assert spec.task == "binary" and spec.label.expr == "arr_delay > 15" and spec.target == "arr_delay_gt_15"
    assert set(spec.features.entities) == {"carrier", "origin"}
    aggregations = spec.features.entities["carrier"].aggregations
    assert {"carrier_count_1d", "carrier_count_7d", "carrier_distance_mean_7d"} <= set(aggregations)
    request = spec.features.request
    used = {f.column for f in request.values()}
    assert "arr_delay" not in used and "carrier" not in used  # the label's column; an entity
    assert {"event_hour", "event_day_of_week"} <= set(request) and request["event_hour"].fn == "hour"
    assert spec.monitoring.features and spec.dataset == load_any_spec_file(dataset_file).dataset
    assert set(build_all(spec)) == {"flights_data", "flights_training", "flights_monitoring", "flights_registry",
                                      "flights_batch"}


@pytest.mark.parametrize(("args", "says"), [
    (["--label", "delay_minutes > 15", "--task", "binary", "--entities", "carrier"], "delay_minutes"),
    (["--label", "arr_delay > 15", "--task", "binary", "--entities", "gate"], "--entities 'gate'"),
    (["--label", "carrier", "--task", "regression", "--entities", "origin"], "numeric label"),
    (["--label", "arr_delay > 15", "--task", "binary", "--entities", "origin", "--request", "arr_delay"],
     "known at prediction time"),
])
def test_init_use_case_mistakes_are_one_line(tmp_path, monkeypatch, args, says):
    _, dataset_file = init_flights(tmp_path, "--key", "none")
    monkeypatch.setenv("FLYWHEEL_SPECS_DIR", str(dataset_file.parent))
    result = runner.invoke(app, ["init-use-case", "--dataset", "flights", *args])
    assert result.exit_code == 2 and says in result.output and "Traceback" not in result.output


def test_use_case_is_the_only_one_or_named(tmp_path, monkeypatch):
    from flywheel.core import catalog

    specs = tmp_path / "specs"
    specs.mkdir()
    shutil.copy(ROOT / "models" / "fraud.yaml", specs / "fraud.yaml")
    monkeypatch.setenv("FLYWHEEL_SPECS_DIR", str(specs))
    monkeypatch.delenv("FLYWHEEL_USE_CASE", raising=False)
    assert catalog.resolve(None).name == "fraud"
    text = (specs / "fraud.yaml").read_text().replace("name: fraud\n", "name: fraud_copy\n", 1)
    (specs / "fraud_copy.yaml").write_text(text.replace("name: transactions", "name: transactions_copy", 1))
    result = runner.invoke(app, ["decisions"])
    assert result.exit_code == 2 and "fraud, fraud_copy" in result.output and "--use-case" in result.output
    assert catalog.resolve("fraud_copy").name == "fraud_copy"
    unknown = runner.invoke(app, ["audit", "--use-case", "nope"])
    assert unknown.exit_code == 2 and "known: fraud, fraud_copy" in unknown.output


def test_backfill_argument_mistakes_are_one_line(tmp_path, monkeypatch):
    specs = tmp_path / "specs"
    specs.mkdir()
    shutil.copy(ROOT / "models" / "fraud.yaml", specs / "fraud.yaml")
    monkeypatch.setenv("FLYWHEEL_SPECS_DIR", str(specs))
    result = runner.invoke(app, ["backfill", "--from", "2026-01-05", "--to", "2026-01-01"])
    assert result.exit_code == 2 and "before --from" in result.output
    result = runner.invoke(app, ["backfill", "--from", "2026-01-05", "--to", "Jan 6"])
    assert result.exit_code == 2 and "YYYY-MM-DD" in result.output


def test_a_dataset_spec_gets_a_data_dag_without_features(tmp_path):
    dags = build_all(load_any_spec_file(draft(tmp_path)))
    assert set(dags) == {"orders_data"}
    assert set(dags["orders_data"].task_dict) == {"source_arrived", "ingest", "validate"}


def _dagbag(tmp_path, monkeypatch, specs: Path):
    import os

    monkeypatch.setenv("FLYWHEEL_SPECS_DIR", str(specs))
    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_the_dag_folder_picks_up_a_new_spec_file(tmp_path, monkeypatch):
    out = draft(tmp_path)
    shutil.copy(ROOT / "models" / "fraud.yaml", out.parent / "fraud.yaml")
    bag = _dagbag(tmp_path, monkeypatch, out.parent)
    assert bag.import_errors == {}
    assert {"orders_data", "fraud_data", "fraud_training"} <= set(bag.dag_ids)
    assert not any(d.startswith("orders_") and d != "orders_data" for d in bag.dag_ids)


def test_a_broken_spec_breaks_only_its_own_dags(tmp_path, monkeypatch):
    specs = tmp_path / "specs"
    specs.mkdir()
    shutil.copy(ROOT / "models" / "fraud.yaml", specs / "fraud.yaml")
    good = (ROOT / "models" / "fraud.yaml").read_text().replace("name: fraud\n", "name: fraud_two\n", 1)
    good = good.replace("name: transactions", "name: transactions_two", 1)
    (specs / "broken.yaml").write_text(good.replace("holdout: 0.15}", "holdout: 0.5}"))
    bag = _dagbag(tmp_path, monkeypatch, specs)
    assert {"fraud_data", "fraud_training", "fraud_monitoring", "fraud_registry"} <= set(bag.dag_ids)
    assert not any(d.startswith("fraud_two") for d in bag.dag_ids)
    assert len(bag.import_errors) == 1, bag.import_errors
    (where, message), = bag.import_errors.items()
    assert where.endswith("spec_errors.py")
    assert "broken.yaml" in message and "training.split" in message


def test_two_specs_of_one_dataset_are_an_error_of_the_second(tmp_path):
    from flywheel.core import catalog

    specs = tmp_path / "specs"
    specs.mkdir()
    shutil.copy(ROOT / "models" / "fraud.yaml", specs / "a.yaml")
    (specs / "b.yaml").write_text((ROOT / "models" / "fraud.yaml").read_text().replace("name: fraud\n", "name: x\n", 1))
    folder = catalog.load_folder(specs)
    assert [s.name for s in folder.specs.values()] == ["fraud"]
    assert "dataset.name: 'transactions' is also ingested by" in folder.errors[specs / "b.yaml"]


def test_unknown_kind_is_a_clear_error(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("kind: model\nname: x\n")
    with pytest.raises(SpecError, match="kind: 'model'"):
        load_any_spec_file(path)


def test_flywheel_airflow_runs_the_airflow_cli_against_the_stack(tmp_path):
    import os
    import subprocess
    import sys

    from flywheel.core.config import Settings
    from flywheel.stack import launcher

    home = tmp_path / "home"
    launcher.ensure_secrets(Settings(home=home))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")} | {"FLYWHEEL_HOME": str(home)}
    flywheel = str(Path(sys.executable).parent / "flywheel")
    out = subprocess.run([flywheel, "airflow", "config", "get-value", "core", "dags_folder"], env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(ROOT / "dags")
    missing = subprocess.run([flywheel, "airflow", "version"], env=env | {"FLYWHEEL_HOME": str(tmp_path / "none")},
                             capture_output=True, text=True, timeout=120, check=False)
    assert missing.returncode == 2 and "flywheel up" in missing.stderr and "Traceback" not in missing.stderr


def test_init_dataset_drafts_columns_that_look_like_personal_data_as_pii(tmp_path):
    path = tmp_path / "riders.csv"
    pd.DataFrame({
        "ride_id": [f"r-{i}" for i in range(40)],
        "started_at": pd.date_range("2026-02-01", periods=40, freq="30min", tz="UTC"),
        "contact": [f"person{i % 7}@example.org" for i in range(40)],  # by its values
        "phone_number": [5550100 + i for i in range(40)],  # by its name, and not text
        "station_name": ["north", "south"] * 20,  # a name of a place, not of a person
        "km": [1.5 + i for i in range(40)],
    }).to_csv(path, index=False)
    out = tmp_path / "riders.yaml"
    result = runner.invoke(app, ["init-dataset", str(path), "--name", "riders", "--source",
                                 "{home}/landing/riders/ds={ds}", "--out", str(out)])
    assert result.exit_code == 0, result.output
    columns = load_any_spec_file(out).dataset.contract.columns
    assert columns["contact"].privacy == "hash" and columns["contact"].allowed is None
    assert columns["phone_number"].privacy == "drop" and columns["phone_number"].min is None
    assert columns["station_name"].privacy is None and columns["km"].privacy is None
    assert "contact: looks like personal data (its values are e-mail addresses)" in result.output
