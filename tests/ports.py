"""Test stacks' ports. ``FLYWHEEL_TEST_PORT_OFFSET`` moves them all, so two checkouts can run
their suites side by side on one machine without fighting over ports."""

from __future__ import annotations

import os

from flywheel.core.config import Ports

OFFSET = int(os.environ.get("FLYWHEEL_TEST_PORT_OFFSET", "0"))


# Blocks in use: 14000 (the Flywheel view's api-server), 16000 (serving faults), 17000 (Dask test cluster), 19500 (monitoring backfill), 31000 (faults), 20000 (data backfill), 21000-23xxx (stack), 24000 (session stack), 25000 (e2e),
# 26000/27000 (production loop), 30000 (RabbitMQ), 38000 (simulation), 39000 (flights e2e). SeaweedFS's
# gRPC ports are explicit and inside each block (base + 433..436), so no port of a block lies in the
# kernel's ephemeral range (32768-60999), where an outgoing connection could hold it. The demo's
# defaults (18333, 19333, 18081, 18888, gRPC 28333, 29333, 28081, 28888) hold ports in 18000/19000
# and 28000/29000, so no block starts there (tests run beside a running demo).
# Offsets (FLYWHEEL_TEST_PORT_OFFSET) are 0-49 apart per checkout: fields of one block sit >= 50 apart
# or in one run (333-336, 433-436, 80-82). Under pytest-xdist each block is used by one worker only
# (tests/conftest.py puts a module, or every test of the session stack, in one xdist group).


def ports(base: int, **fields: int) -> Ports:
    """A full port set in the ``base`` block (e.g. 24000), shifted by the offset."""
    default = dict(s3=base + 333, weed_master=base + 334, weed_volume=base + 335, weed_filer=base + 336,
                   s3_grpc=base + 433, weed_master_grpc=base + 434, weed_volume_grpc=base + 435,
                   weed_filer_grpc=base + 436,
                   airflow=base + 80, airflow_worker_logs=base + 81, airflow_trigger_logs=base + 82,
                   mlflow=base + 500, model_server=base + 600, exporter=base + 700)
    return Ports(**(default | fields)).shifted(OFFSET)
