"""A third use case, onboarded from the docs alone: CSV samples → `flywheel init-dataset` →
`flywheel init-use-case` → the drafts, unedited, ingest, validate, compute features and train a
multiclass model that the gate promotes and that scores through the one featurizer. No Python.

The dataset is one we never saw (bike rentals, synthesized here as the files a feed would land):
no key column (rows are keyed by their hash), a label that is an expression on columns.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.core.spec import load_spec_file
from flywheel.features.featurizer import featurizer_for
from flywheel.runs import data_day, training_run
from flywheel.training import registry

pytestmark = pytest.mark.integration
FIRST = date(2026, 4, 1)
DAYS = 6
LABEL = "CASE WHEN minutes < 12 THEN 'short' WHEN minutes < 30 THEN 'medium' ELSE 'long' END"


def land(home, day: date, rng: np.random.Generator) -> None:
    n = 600
    km = rng.gamma(2.0, 2.0, n).round(2)
    station = rng.choice([f"st{i}" for i in range(6)], n)
    bike = rng.choice(["classic", "electric"], n)
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    frame = pd.DataFrame({
        "started_at": [start + timedelta(seconds=int(s)) for s in np.sort(rng.integers(0, 86_400, n))],
        "station": station,
        "bike": bike,
        "km": km,
        # an interaction (electric bikes are three times faster): a linear baseline cannot learn it
        "minutes": (km * np.where(bike == "electric", 2.0, 6.0) + rng.normal(0, 1, n)).clip(1).round(1),
    })
    folder = home / "landing" / "bikes" / f"ds={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "part-0.csv", index=False)


def test_a_spec_drafted_by_the_cli_trains_and_scores_unedited(services, tmp_path):
    rng = np.random.default_rng(5)
    for offset in range(DAYS):
        land(services.home, FIRST + timedelta(days=offset), rng)
    specs = tmp_path / "models"
    specs.mkdir()
    env = {"FLYWHEEL_HOME": str(services.home), "FLYWHEEL_SPECS_DIR": str(specs)}
    runner = CliRunner()
    drafted = runner.invoke(app, [
        "init-dataset", str(services.home / "landing" / "bikes" / "ds=*" / "part-0.csv"), "--name", "bikes",
        "--source", "{home}/landing/bikes/ds={ds}", "--key", "none", "--out", str(specs / "bikes.yaml")], env=env)
    assert drafted.exit_code == 0, drafted.output
    again = runner.invoke(app, ["init-dataset", str(services.home / "landing" / "bikes" / "ds=*" / "part-0.csv"),
                                "--name", "bikes", "--source", "x", "--key", "none",
                                "--out", str(specs / "bikes.yaml")], env=env)
    assert again.exit_code == 2 and "--force" in again.output  # never overwrites silently
    use_case = runner.invoke(app, [
        "init-use-case", "--dataset", "bikes", "--label", LABEL, "--label-name", "trip", "--task", "multiclass",
        "--entities", "station", "--out", str(specs / "bikes.yaml"), "--force"], env=env)
    assert use_case.exit_code == 0, use_case.output

    spec = load_spec_file(specs / "bikes.yaml")
    assert spec.task == "multiclass" and spec.dataset.key is None and spec.label.expr
    assert "minutes" not in featurizer_for(spec).request_columns  # the label's inputs are not request features
    settings = services.model_copy(update={"specs_dir": specs})
    for offset in range(DAYS):
        ds = (FIRST + timedelta(days=offset)).isoformat()
        out = data_day(spec, ds, run_id="third", settings=settings)
        assert out["validate"]["quarantined"] == 0, out["validate"]
    result = training_run(spec, FIRST + timedelta(days=DAYS - 1), reason="test", settings=settings)
    assert result.promoted, result.reason
    assert result.metrics["holdout_macro_f1"] > result.metrics["baseline_macro_f1"]

    model = registry.load_alias(spec.model_name, settings=settings)
    assert model.task == "multiclass" and sorted(model.classes) == ["long", "medium", "short"]
    rows = pd.read_csv(services.home / "landing" / "bikes" / f"ds={FIRST.isoformat()}" / "part-0.csv").head(20)
    fz = featurizer_for(spec)
    columns = {c: rows[c].tolist() for c in fz.request_columns}
    columns[spec.dataset.timestamp] = pd.to_datetime(rows[spec.dataset.timestamp], utc=True)
    scored = model.predict(fz.transform(columns, {}).frame())
    assert set(scored["class"]) <= {"long", "medium", "short"}
    assert np.allclose(scored["probabilities"].sum(axis=1), 1.0)
