"""Onboarding a dataset is one spec file: `flywheel init-dataset` drafts it, the DAG appears."""

import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from flywheel.airflow.factory import build_all
from flywheel.cli import app
from flywheel.core.spec import DataSpec, PipelineSpec, SpecError, load_any_spec_file, load_spec_file

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


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
    result = CliRunner().invoke(app, ["init-dataset", str(orders_sample(tmp_path)), "--name", "orders",
                                      "--source", "{home}/landing/orders/ds={ds}", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_init_dataset_writes_a_loadable_dataset_spec(tmp_path):
    spec = load_any_spec_file(draft(tmp_path))
    assert type(spec) is DataSpec and not isinstance(spec, PipelineSpec)
    assert (spec.name, spec.owner, spec.dataset.format) == ("orders", "data-engineering", "csv")
    assert spec.dataset.timestamp == "placed_at" and spec.dataset.key == "order_id"
    assert spec.dataset.contract.columns["order_id"].unique
    with pytest.raises(SpecError, match="kind: dataset"):
        load_spec_file(tmp_path / "specs" / "orders.yaml")


def test_a_dataset_spec_gets_a_data_dag_without_features(tmp_path):
    dags = build_all(load_any_spec_file(draft(tmp_path)))
    assert set(dags) == {"orders_data"}
    assert set(dags["orders_data"].task_dict) == {"source_arrived", "ingest", "validate"}


def test_the_dag_folder_picks_up_a_new_spec_file(tmp_path, monkeypatch):
    import os

    out = draft(tmp_path)
    shutil.copy(ROOT / "models" / "fraud.yaml", out.parent / "fraud.yaml")
    monkeypatch.setenv("FLYWHEEL_SPECS_DIR", str(out.parent))
    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path / "airflow"))
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    assert {"orders_data", "fraud_data", "fraud_training"} <= set(bag.dag_ids)
    assert not any(d.startswith("orders_") and d != "orders_data" for d in bag.dag_ids)


def test_unknown_kind_is_a_clear_error(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("kind: model\nname: x\n")
    with pytest.raises(SpecError, match="kind: 'model'"):
        load_any_spec_file(path)
