"""Test stacks' ports. ``FLYWHEEL_TEST_PORT_OFFSET`` moves them all, so two checkouts can run
their suites side by side on one machine without fighting over ports."""

from __future__ import annotations

import os

from flywheel.core.config import Ports

OFFSET = int(os.environ.get("FLYWHEEL_TEST_PORT_OFFSET", "0"))


# Blocks in use: 19500 (monitoring backfill), 20000 (data backfill), 21000-23xxx (stack), 24000 (session stack), 25000 (e2e),
# 26000/27000 (production loop), 30000 (RabbitMQ), 38000 (simulation), 39000 (flights e2e). The blocks' SeaweedFS
# gRPC twins (+10000) hold 30333-37336, so no block starts at 31000-37000. SeaweedFS also binds each of its ports
# + 10000; the demo's defaults (18333, 19333, 18081, 18888) thus hold 28333, 29333, 28081 and
# 28888, so no block starts at 28000 or 29000 (tests run beside a running demo).


def ports(base: int, **fields: int) -> Ports:
    """A full port set in the ``base`` block (e.g. 24000), shifted by the offset."""
    default = dict(s3=base + 333, weed_master=base + 334, weed_volume=base + 335, weed_filer=base + 336,
                   airflow=base + 80, airflow_worker_logs=base + 81, airflow_trigger_logs=base + 82,
                   mlflow=base + 500, model_server=base + 600, exporter=base + 700)
    return Ports(**(default | fields)).shifted(OFFSET)
