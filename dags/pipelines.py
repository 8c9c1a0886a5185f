"""One set of DAGs (data, training, monitoring) per pipeline spec in models/*.yaml.

A new use case is a new spec file; nothing here changes. See flywheel.airflow.factory.
"""

from flywheel.airflow.factory import build_all
from flywheel.config import get_settings
from flywheel.spec import load_spec_file

for _spec_file in sorted(get_settings().specs_dir.glob("*.yaml")):
    globals().update(build_all(load_spec_file(_spec_file)))
