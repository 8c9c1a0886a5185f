# The two README commands: `make demo` and `make test`. Everything installs itself.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.flywheel-installed

.PHONY: demo test test-unit test-integration test-e2e down status lint venv clean-state

venv: $(STAMP)

# Reinstall when the dependency pins change; constraints.txt is the lock CI installs. uv (pinned
# by the lock) installs it from the indexes pip is configured with (infra/uv_args.py), in about
# 30 s; should uv fail, pip installs the same lock.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt uv
	$(VENV)/bin/uv pip install --quiet --python $(PY) $$($(PY) infra/uv_args.py) -c constraints.txt -e '.[test]' \
	  || $(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	$(PY) -m pip check
	@touch $@

# The demo is example code (examples/demo.py), run from the checkout, not part of the engine. It
# is told when `make demo` started, so the time to the first prediction includes the install.
demo:
	@started=$$(date +%s); $(MAKE) --no-print-directory venv && $(PY) -m examples.demo --started-at $$started

down:
	@test -x $(VENV)/bin/flywheel && $(VENV)/bin/flywheel down || echo "nothing to stop (no venv)"

status: venv
	$(VENV)/bin/flywheel status

# Most of the suite's time is waiting on services (startups, scheduler polls), which overlaps well
# even on 2 cores: TEST_WORKERS pytest-xdist workers, each xdist group (a module, or all tests on
# the session stack) whole on one worker (tests/conftest.py). TEST_WORKERS=0 runs it serially.
TEST_WORKERS ?= 3
# --no-loadscope-reorder: xdist would otherwise start the groups with the most tests first (its
# default), not the longest (tests/conftest.py's order): the 1-test e2e loop then started last.
test: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

# Two workers split the unit modules' heavy imports (torch, Feast, MLflow, Airflow) between them.
test-unit: venv
	$(PY) -m pytest -q -m unit -n 2 --dist loadgroup

test-integration: venv
	$(PY) -m pytest -q -m integration

test-e2e: venv
	$(PY) -m pytest -q -m e2e

lint: venv
	$(VENV)/bin/ruff check flywheel dags serving examples tests benchmarks

clean-state: down
	rm -rf .flywheel
