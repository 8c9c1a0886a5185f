"""Print the `uv pip install` options that point uv at the package indexes pip is configured with.

`make venv` installs the lock (constraints.txt) with uv, which resolves and installs in parallel
(about 30 s against pip's 2-3 min), but uv reads no pip.conf: this hands it pip's own
configuration (`pip config list`: files and PIP_* variables) so both install from the same
registries. Standard library only; it runs before the venv holds anything.

    python infra/uv_args.py   # e.g. --index-strategy unsafe-best-match --find-links /opt/wheels
"""

from __future__ import annotations

import shlex
import subprocess
import sys


def pip_config() -> dict[str, str]:
    """pip's effective options: later sources (``:env:``) win over the files, as in pip."""
    done = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                          check=False)
    options: dict[str, str] = {}
    ranked = sorted(done.stdout.splitlines(), key=lambda line: line.startswith(":env:"))
    for line in ranked:
        key, sep, value = line.partition("=")
        if not sep:
            continue
        section, _, name = key.rpartition(".")
        if section in ("global", "install", ":env:"):
            options[name] = value.strip().strip("'\"")
    return options


def uv_args(options: dict[str, str]) -> list[str]:
    # pip looks for the best match over every index; uv's default stops at the first index
    # that has the package, which misses versions only a later index holds.
    args = ["--index-strategy", "unsafe-best-match"]
    if options.get("index-url"):
        args += ["--index-url", options["index-url"]]
    for url in options.get("extra-index-url", "").split():
        args += ["--extra-index-url", url]
    for place in options.get("find-links", "").split():
        args += ["--find-links", place]
    for constraint in options.get("constraint", "").split():
        args += ["--constraint", constraint]
    if options.get("cert"):
        args.append("--native-tls")  # the system's certificate store, which pip's `cert` names
    return args


if __name__ == "__main__":
    print(shlex.join(uv_args(pip_config())))
