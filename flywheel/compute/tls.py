"""Certificates for a Dask cluster's mutual TLS: ``python -m flywheel.compute.tls FOLDER``.

Writes ``ca.pem``, ``cert.pem`` and ``key.pem`` (mode 0600) from Dask's own
``Security.temporary()`` (a self-signed key/cert pair that every role of the cluster presents and
trusts: scheduler, workers, clients). Dask authenticates peers by that CA, not by host name. An
existing set is kept (the running cluster trusts it); delete the folder to rotate. For a
cluster spanning several teams, issue per-role certificates from your own CA instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

FILES = ("ca.pem", "cert.pem", "key.pem")


def write_certificates(folder: Path) -> dict[str, Path]:
    """The CA, certificate and key files under ``folder`` (created when absent; never overwritten)."""
    from distributed.security import Security

    paths = {name.removesuffix(".pem"): folder / name for name in FILES}
    if all(p.is_file() for p in paths.values()):
        return paths
    if any(p.exists() for p in paths.values()):
        raise FileExistsError(f"{folder} holds part of a certificate set: delete it to start over")
    folder.mkdir(parents=True, exist_ok=True)
    security = Security.temporary()
    contents = {"ca": security.tls_ca_file, "cert": security.tls_client_cert, "key": security.tls_client_key}
    for name, path in paths.items():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as fh:
            fh.write(contents[name])
    return paths


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m flywheel.compute.tls FOLDER", file=sys.stderr)
        return 2
    try:
        paths = write_certificates(Path(argv[0]))
    except (OSError, FileExistsError) as exc:
        print(f"flywheel.compute.tls: {exc}", file=sys.stderr)
        return 1
    print(" ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
