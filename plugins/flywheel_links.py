"""Airflow UI links from Flywheel's DAGs to the other UIs of the loop (MLflow, the model API).

Only URLs are read from the settings (no secrets); the plugin adds entries to the
Airflow 3 navigation ("Browse" menu).
"""

from airflow.plugins_manager import AirflowPlugin

from flywheel.core.config import get_settings


def _views() -> list[dict[str, str]]:
    settings = get_settings()
    return [
        {"name": "MLflow (experiments, registry)", "href": str(settings.mlflow_tracking_uri),
         "destination": "nav", "category": "browse"},
        {"name": "Model API (Swagger)", "href": f"{settings.model_server_url}/",
         "destination": "nav", "category": "browse"},
    ]


class FlywheelLinks(AirflowPlugin):
    name = "flywheel_links"
    external_views = _views()
