"""Airflow import errors for broken specs: this DAG file fails to import, naming every spec file
in models/ that does not load and the field at fault, while pipelines.py builds the DAGs of all
the others (Airflow records import errors per DAG file, so one bad spec cannot hide the rest).
It defines no DAG when every spec loads.
"""

from flywheel.airflow.factory import raise_spec_errors
from flywheel.core.config import get_settings

raise_spec_errors(get_settings().specs_dir)
