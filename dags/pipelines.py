"""One set of DAGs per spec in models/*.yaml: data, training, monitoring and registry for a use
case; the data DAG alone for a dataset spec (``kind: dataset``).

A new use case is a new spec file; nothing here changes. See flywheel.airflow.factory.
"""

from flywheel.airflow.factory import build_all
from flywheel.core.config import get_settings
from flywheel.core.spec import load_any_spec_file

for _spec_file in sorted(get_settings().specs_dir.glob("*.yaml")):
    globals().update(build_all(load_any_spec_file(_spec_file)))
