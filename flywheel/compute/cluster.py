"""The Dask client of ``Settings.compute``: connect (TLS when configured), list workers, run ranks.

Dask is imported inside the functions, so the engine imports without it being configured.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flywheel.core.config import ComputeSettings, Settings

if TYPE_CHECKING:
    from distributed import Client, Security

_CLIENTS: dict[str, Client] = {}
_LOCK = threading.Lock()


class ComputeError(RuntimeError):
    """The compute cluster cannot be reached or cannot run a stage; the message names the address."""


def security(compute: ComputeSettings) -> Security | None:
    """Mutual TLS from the configured CA, certificate and key (None for a loopback tcp:// scheduler)."""
    from distributed.security import Security

    if not compute.tls_ca_file:
        return None
    return Security(tls_ca_file=str(compute.tls_ca_file), tls_client_cert=str(compute.tls_cert),
                    tls_client_key=str(compute.tls_key), require_encryption=True)


def client(settings: Settings) -> Client:
    """The process's client of the configured scheduler (one per address, reconnected if closed).

    Raises :class:`ComputeError` when ``compute.engine`` is ``local`` or the scheduler does not answer.
    """
    from distributed import Client

    compute = settings.compute
    if not compute.distributed or not compute.scheduler_address:
        raise ComputeError("compute.engine is local: there is no cluster to connect to")
    address = compute.scheduler_address
    with _LOCK:
        current = _CLIENTS.get(address)
        if current is not None and current.status == "running":
            return current
        try:
            current = Client(address, security=security(compute), timeout=compute.connect_timeout_s,
                             set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ComputeError(f"compute scheduler {address} did not answer within "
                               f"{compute.connect_timeout_s:.0f} s: {exc}") from exc
        _CLIENTS[address] = current
        return current


def workers(dask: Client, *, at_least: int = 1, timeout_s: float = 30.0) -> list[str]:
    """Addresses of the cluster's workers, sorted (rank order); waits for ``at_least`` of them."""
    try:
        dask.wait_for_workers(at_least, timeout=timeout_s)
    except TimeoutError as exc:
        raise ComputeError(f"compute scheduler {dask.scheduler.address}: fewer than {at_least} "
                           f"worker(s) after {timeout_s:.0f} s") from exc
    return sorted(dask.scheduler_info(n_workers=-1)["workers"])


def _free_port(dask_worker: Any) -> int:
    """A port free now on the interface the worker listens on (``Client.run`` passes the worker)."""
    with socket.socket() as sock:
        sock.bind((urlsplit(dask_worker.address).hostname or "127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_ranks(dask: Client, fn: Callable[..., Any], payloads: Sequence[Any], *,
              timeout_s: float | None = None) -> list[Any]:
    """``fn(rank, world, master_host, master_port, payloads[rank])`` on one worker per rank, all at once.

    Rank 0's worker picks a free port for the process group's rendezvous; every rank is pinned to
    its own worker (a rank waiting for the others must not queue behind them). Returns the ranks'
    results in rank order; raises :class:`ComputeError` when there are fewer workers than ranks.
    """
    world = len(payloads)
    hosts = workers(dask, at_least=world)[:world]
    port = dask.run(_free_port, workers=[hosts[0]])[hosts[0]]
    master = urlsplit(hosts[0]).hostname or "127.0.0.1"
    futures = [dask.submit(fn, rank, world, master, port, dask.scatter(payload, workers=[host], direct=True),
                           workers=[host], allow_other_workers=False, pure=False, key=f"rank-{rank}-{port}")
               for rank, (host, payload) in enumerate(zip(hosts, payloads, strict=True))]
    return list(dask.gather(futures, errors="raise") if timeout_s is None else
                [f.result(timeout=timeout_s) for f in futures])
