# Airflow loads this module from $AIRFLOW_HOME/config (native production stack,
# the Airflow image, and the Helm chart's `airflowLocalSettings`): the Flywheel
# cluster policy routes GPU tasks to the GPU queue (flywheel/airflow/policy.py).
from flywheel.airflow.policy import task_policy  # noqa: F401
