"""The Flywheel plugin of the Airflow UI: the Flywheel view, task links, and nav links to the
other UIs of the loop (MLflow, the model API).

- ``fastapi_apps``: the view's app (flywheel.airflow.ui) at ``/flywheel``, behind Airflow's own
  authentication (it checks the Airflow JWT itself: Airflow does not guard plugin apps);
- ``external_views``: "Flywheel" in the navigation (embedded at ``/plugin/flywheel``), and the
  MLflow and Swagger links in the "Browse" menu;
- ``global_operator_extra_links``: on the data DAGs' ``validate``, the training DAGs' ``train``
  and the monitoring DAGs' ``drift_check`` tasks, a link to what they produced.

Only URLs are read from the settings (no secrets).
"""

from airflow.plugins_manager import AirflowPlugin

from flywheel.airflow import ui
from flywheel.core.config import get_settings


def _views() -> list[dict[str, str]]:
    settings = get_settings()
    return [
        {"name": "Flywheel", "href": ui.URL_PREFIX.lstrip("/") + "/", "destination": "nav",
         "url_route": "flywheel"},
        {"name": "MLflow (experiments, registry)", "href": str(settings.mlflow_tracking_uri),
         "destination": "nav", "category": "browse"},
        {"name": "Model API (Swagger)", "href": f"{settings.model_server_url}/",
         "destination": "nav", "category": "browse"},
    ]


class FlywheelLinks(AirflowPlugin):
    name = "flywheel_links"
    external_views = _views()
    fastapi_apps = [{"app": ui.create_app(), "url_prefix": ui.URL_PREFIX, "name": "Flywheel view"}]
    global_operator_extra_links = ui.operator_links()
