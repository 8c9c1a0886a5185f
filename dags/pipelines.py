"""One set of DAGs per spec in models/*.yaml: data, training, monitoring and registry for a use
case; the data DAG alone for a dataset spec (``kind: dataset``).

A new use case is a new spec file; nothing here changes. A spec that fails to load is left
out here (its error shows as the import error of spec_errors.py) and the others still run.
See flywheel.airflow.factory.
"""

from flywheel.airflow.factory import build_folder
from flywheel.core.config import get_settings

globals().update(build_folder(get_settings().specs_dir))
