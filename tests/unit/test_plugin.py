import runpy
from pathlib import Path

import pytest

from flywheel.airflow import ui, view
from flywheel.core.config import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _plugin(monkeypatch, **env: str) -> dict:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from flywheel.core.config import get_settings

    get_settings.cache_clear()
    return runpy.run_path(str(ROOT / "plugins" / "flywheel_links.py"))


def test_plugin_links_follow_settings(monkeypatch):
    plugin = _plugin(monkeypatch, FLYWHEEL_MLFLOW_TRACKING_URI="http://mlflow.internal:5000")["FlywheelLinks"]
    views = {v["name"]: v for v in plugin.external_views}
    assert {"Flywheel", "MLflow (experiments, registry)", "Model API (Swagger)"} == set(views)
    assert views["MLflow (experiments, registry)"]["href"] == "http://mlflow.internal:5000"
    # the view: a relative href (no leading slash) to the plugin's app, embedded in the UI
    assert views["Flywheel"]["href"] == "flywheel/" and views["Flywheel"]["url_route"] == "flywheel"
    assert [app["url_prefix"] for app in plugin.fastapi_apps] == ["/flywheel"]
    assert sorted(link.name for link in plugin.global_operator_extra_links) == sorted(
        link.label for link in ui.TASK_LINKS)


def test_task_links_only_on_the_tasks_that_produce_them(tmp_path):
    settings = Settings(home=tmp_path, airflow_url="http://127.0.0.1:8080")
    names = {"fraud"}
    docs = ui.TASK_LINKS[0]
    url = ui.task_link_url(docs, dag_id="fraud_data", task_id="validate", run_id="scheduled__2026-01-02",
                           map_index=-1, names=names, settings=settings)
    assert url == ("http://127.0.0.1:8080/flywheel/task/data-docs?dag_id=fraud_data&task_id=validate"
                   "&run_id=scheduled__2026-01-02&map_index=-1")
    for dag_id, task_id in [("fraud_data", "ingest"), ("fraud_training", "validate"), ("other_data", "validate"),
                            ("data", "validate")]:
        assert ui.task_link_url(docs, dag_id=dag_id, task_id=task_id, run_id="r", map_index=-1, names=names,
                                settings=settings) == ""


def test_task_targets_are_the_published_reports(tmp_path):
    settings = Settings(home=tmp_path)
    reports = f"s3://{settings.bucket('reports')}"
    validated = {"data_docs": {"uri": f"{reports}/data-docs/transactions/ds=2026-01-02/index.html"}}
    assert ui.task_target("data-docs", validated, settings) == "reports/data-docs/transactions/ds%3D2026-01-02/index.html"
    assert ui.task_target("drift-report", {"html_uri": f"{reports}/drift/fraud/ds=2026-01-02/report.html"},
                          settings) == "reports/drift/fraud/ds%3D2026-01-02/report.html"
    with pytest.raises(ui.TaskLinkError, match="produced nothing"):
        ui.task_target("drift-report", None, settings)  # the task has not returned yet
    with pytest.raises(ui.TaskLinkError, match="produced nothing"):  # not a published report
        ui.task_target("drift-report", {"html_uri": f"{reports}/audit/fraud/x.json"}, settings)
    with pytest.raises(ui.TaskLinkError, match="unknown"):
        ui.task_target("secrets", {}, settings)


@pytest.mark.parametrize("key", ["audit/fraud/x.json", "locks/fraud/champion.json", "policy/fraud/ds=1/a.json",
                                 "drift/../audit/x.json", "data-docs//x", "/drift/x"])
def test_only_published_reports_are_served(key):
    assert not view.published(key)


def test_page_escapes_values_and_shows_a_broken_use_case():
    rows = [view.UseCaseRow(name="broken", error="invalid pipeline spec: <script>"),
            view.UseCaseRow(name="fraud", model="fraud_model", aliases={"champion": "3", "canary": "4", "legacy": "1"},
                            drift="alert", decision="cooldown", decision_reason="within 3 days",
                            links=[view.Link("Swagger", "http://127.0.0.1:13000/")])]
    page = view.render(rows, user="admin")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert '<td class="alias-champion">3</td><td class="alias-challenger"></td>' in page
    assert '<td class="alias-shadow"></td><td class="alias-canary">4</td>' in page
    assert "legacy: v1" in page and "cooldown: within 3 days" in page


def test_registered_links_answer_for_the_task_instance_they_are_asked_about(monkeypatch):
    from airflow.models.taskinstancekey import TaskInstanceKey

    plugin = _plugin(monkeypatch, FLYWHEEL_AIRFLOW_URL="http://127.0.0.1:8080")["FlywheelLinks"]
    links = {link.name: link for link in plugin.global_operator_extra_links}
    train = TaskInstanceKey(dag_id="fraud_training", task_id="train", run_id="manual__1", try_number=1)
    run = links["Flywheel: MLflow run"].get_link(None, ti_key=train)
    assert run.startswith("http://127.0.0.1:8080/flywheel/task/mlflow-run?dag_id=fraud_training&task_id=train")
    assert links["Flywheel: GX Data Docs"].get_link(None, ti_key=train) == ""
