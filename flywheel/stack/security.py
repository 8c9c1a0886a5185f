"""Closed by default: the stack's identities, which secrets each component gets, and SeaweedFS's
private network.

- **MLflow** runs its own basic-auth app (``mlflow server --app-name basic-auth``) with three
  identities (:data:`flywheel.core.config.MLFLOW_USERS`): the admin (bootstrapped from
  ``MLFLOW_AUTH_ADMIN_PASSWORD`` on the first start, used only here to create the other two),
  the training identity (Airflow tasks and the operator's CLI: it creates the experiments and
  registered models, so it manages them and moves their aliases) and a read-only identity (the
  model server, the UI). The default permission is READ: every identity reads, only the owner
  writes, anonymous requests get 401.
- **SeaweedFS** signs its filer and volume HTTP APIs (``WEED_JWT_*`` keys, in the environment),
  and, where user namespaces are available, runs in a private network namespace so its master
  and gRPC ports (which take no credentials at all: an anonymous ``/col/delete`` drops a bucket)
  cannot be reached; only the S3 API is bridged out (:mod:`flywheel.stack.isolation`).
- **Each component gets only its own secrets**, in its environment: :func:`component_secrets`.
"""

from __future__ import annotations

import base64
import configparser
import functools
import io
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from flywheel.core.config import MLFLOW_USERS, Profile, Settings
from flywheel.stack.common import StackError, _secret, _write_private

log = logging.getLogger(__name__)

MLFLOW_SECRETS = ("mlflow_admin_password", "mlflow_training_password", "mlflow_reader_password",
                  "mlflow_flask_secret")
WEED_SECRETS = ("weed_jwt_signing_key", "weed_jwt_signing_read_key", "weed_jwt_filer_signing_key",
                "weed_jwt_filer_signing_read_key")
SIGNING_SECRETS = ("registry_signing_key", "registry_verify_key")  # a pair, generated together
# Secrets a component's environment must never inherit from the launcher's own environment:
# each component gets exactly its own (component_secrets), whatever the operator exported.
INHERITED_SECRETS = (
    "FLYWHEEL_S3_ACCESS_KEY", "FLYWHEEL_S3_SECRET_KEY", "FLYWHEEL_AIRFLOW_PASSWORD", "FLYWHEEL_API_KEY",
    "FLYWHEEL_MLFLOW_USERNAME", "FLYWHEEL_MLFLOW_PASSWORD", "FLYWHEEL_REGISTRY_SIGNING_KEY", "FLYWHEEL_PII_KEY",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", *(f"WEED_{k.upper()}" for k in WEED_SECRETS),
)  # fmt: skip


def new_signing_pair() -> dict[str, str]:
    """An Ed25519 key pair, base64 (raw bytes): the private half signs versions, the public verifies."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"registry_signing_key": base64.b64encode(private).decode(),
            "registry_verify_key": base64.b64encode(public).decode()}


# ---- which component gets which secret ---------------------------------------------------------

def s3_env(settings: Settings, secret: functools.partial[str] | None = None) -> dict[str, str]:
    get = secret or _getter(settings)
    return {"FLYWHEEL_S3_ACCESS_KEY": get("s3_access_key"), "FLYWHEEL_S3_SECRET_KEY": get("s3_secret_key"),
            "AWS_ACCESS_KEY_ID": get("s3_access_key"), "AWS_SECRET_ACCESS_KEY": get("s3_secret_key")}


def mlflow_identity_env(settings: Settings, role: str) -> dict[str, str]:
    """The MLflow identity ``role`` (training, reader) for a component: Flywheel's settings and
    the variables MLflow's client reads."""
    user, password = MLFLOW_USERS[role], _getter(settings)(f"mlflow_{role}_password")
    return {"FLYWHEEL_MLFLOW_USERNAME": user, "FLYWHEEL_MLFLOW_PASSWORD": password,
            "MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}


def component_secrets(settings: Settings, component: str) -> dict[str, str]:
    """The secrets ``component`` needs, as environment variables, and nothing else.

    - ``tasks`` (the Airflow components, whose task processes run pipeline code): S3, the
      training identity, the registration signing key, the PII key;
    - ``model-server``: S3 (prediction log), the read-only identity, the verify key, the API key,
      the PII key (it hashes PII join keys of requests);
    - ``mlflow``: S3 (it proxies artifacts), its admin bootstrap password and Flask secret;
    - ``seaweedfs``: its JWT signing keys (its S3 identities are a 0600 file);
    - ``exporter``: S3 (it reads the monitoring summaries).
    """
    get = _getter(settings)
    if component == "tasks":
        return {**s3_env(settings, get), **mlflow_identity_env(settings, "training"),
                "FLYWHEEL_REGISTRY_SIGNING_KEY": get("registry_signing_key"),
                "FLYWHEEL_REGISTRY_VERIFY_KEY": get("registry_verify_key"), "FLYWHEEL_PII_KEY": get("pii_key")}
    if component == "model-server":
        return {**s3_env(settings, get), **mlflow_identity_env(settings, "reader"),
                "FLYWHEEL_REGISTRY_VERIFY_KEY": get("registry_verify_key"), "FLYWHEEL_API_KEY": get("api_key"),
                "FLYWHEEL_PII_KEY": get("pii_key")}
    if component == "mlflow":
        return {**s3_env(settings, get), "MLFLOW_AUTH_ADMIN_PASSWORD": get("mlflow_admin_password"),
                "MLFLOW_FLASK_SERVER_SECRET_KEY": get("mlflow_flask_secret")}
    if component == "seaweedfs":
        return {f"WEED_{key.upper()}": get(key) for key in WEED_SECRETS}
    if component == "exporter":
        return s3_env(settings, get)
    raise ValueError(f"unknown component {component!r}")


def scrub(env: dict[str, str]) -> dict[str, str]:
    """``env`` without any secret the launcher's own environment carried."""
    return {k: v for k, v in env.items() if k not in INHERITED_SECRETS}


def _getter(settings: Settings) -> functools.partial[str]:
    return functools.partial(_secret, settings)


# ---- MLflow's basic-auth app -------------------------------------------------------------------

def mlflow_auth_config(settings: Settings) -> Path:
    """Write MLflow's auth configuration (0600) and return its path (``MLFLOW_AUTH_CONFIG_PATH``).

    The user store is SQLite beside MLflow's (embedded) or the ``<prefix>_mlflow_auth``
    database (production). The admin password is not in it: MLflow reads it from
    ``MLFLOW_AUTH_ADMIN_PASSWORD`` on the first start.
    """

    if settings.profile is Profile.PRODUCTION:
        from flywheel.core.profiles import database_url

        database = database_url(settings, "mlflow_auth")
    else:
        database = f"sqlite:///{settings.home / 'mlflow' / 'auth.db'}"
    config = configparser.ConfigParser(interpolation=None)
    config["mlflow"] = {
        "default_permission": "READ",
        "database_uri": database,
        "admin_username": MLFLOW_USERS["admin"],
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access": "false",
        # Each request's basic-auth check is a PBKDF2 hash: uncached, MLflow's one worker spent
        # 35 CPU-minutes of a 40-minute test session on it and training crawled. A successful
        # check is now reused for 60 s (a password change through MLflow's API takes effect at
        # once on this, its only worker).
        "auth_cache_ttl_seconds": "60",
        "auth_cache_max_size": "1000",
    }
    text = io.StringIO()
    config.write(text)
    path = settings.home / "mlflow" / "basic_auth.ini"
    _write_private(path, text.getvalue())
    return path


def provision_mlflow_users(settings: Settings) -> None:
    """Create the training and read-only identities (idempotent), as the admin."""

    provision_users(str(settings.mlflow_tracking_uri), _secret(settings, "mlflow_admin_password"),
                    {role: _secret(settings, f"mlflow_{role}_password") for role in ("training", "reader")})


def provision_users(tracking_uri: str, admin_password: str, passwords: dict[str, str]) -> None:
    """Create each role's identity (:data:`MLFLOW_USERS`) with its password, unless it exists."""

    admin = (MLFLOW_USERS["admin"], admin_password)
    with httpx.Client(base_url=tracking_uri.rstrip("/"), auth=admin, timeout=30.0) as http:
        for role, password in passwords.items():
            user = MLFLOW_USERS[role]
            found = http.get("/api/2.0/mlflow/users/get", params={"username": user})
            if found.status_code == 200:
                continue
            made = http.post("/api/2.0/mlflow/users/create", json={"username": user, "password": password})
            if made.status_code != 200:
                raise StackError(f"mlflow: could not create the {role} identity {user!r}: "
                                 f"HTTP {made.status_code} {made.text[:200]}")
            log.info("mlflow: created the %s identity %s", role, user)


def main() -> int:
    """``python -m flywheel.stack.security``: create the MLflow identities from the environment
    (compose's ``mlflow-init``, Helm's job): ``MLFLOW_TRACKING_URI``, ``MLFLOW_AUTH_ADMIN_PASSWORD``,
    ``MLFLOW_TRAINING_PASSWORD``, ``MLFLOW_READER_PASSWORD``."""
    import os
    import time

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_TRAINING_PASSWORD",
             "MLFLOW_READER_PASSWORD")
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        print(f"flywheel.stack.security: set {', '.join(missing)}", file=sys.stderr)
        return 2
    uri = os.environ["MLFLOW_TRACKING_URI"]
    for _ in range(60):  # the tracking server may still be starting
        try:
            if httpx.get(f"{uri.rstrip('/')}/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(2)
    provision_users(uri, os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"],
                    {"training": os.environ["MLFLOW_TRAINING_PASSWORD"],
                     "reader": os.environ["MLFLOW_READER_PASSWORD"]})
    return 0


# ---- SeaweedFS's private network ---------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def netns_available() -> bool:
    """Whether this user may create a user + network namespace (``unshare -rn``)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        done = subprocess.run([unshare, "--user", "--map-root-user", "--net", sys.executable, "-c", "0"],
                              capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def weed_isolated(settings: Settings) -> bool:
    """Whether SeaweedFS runs in its private network (``settings.s3_isolation``)."""

    if settings.s3_isolation == "none":
        return False
    if netns_available():
        return True
    if settings.s3_isolation == "netns":
        raise StackError("s3_isolation = netns, but this user cannot create a network namespace "
                         "(`unshare --user --map-root-user --net true` fails): enable unprivileged user "
                         "namespaces, or set FLYWHEEL_S3_ISOLATION=none to accept reachable SeaweedFS ports")
    log.warning("SeaweedFS runs without a private network (no user namespaces here): its master and gRPC "
                "ports take no credentials and are reachable from this host (see docs/security.md)")
    return False


def s3_socket(settings: Settings) -> Path:
    """The Unix socket SeaweedFS's S3 API listens on inside its namespace (<= 107 bytes)."""
    path = settings.run_dir / "s3.sock"
    if len(str(path)) > 100:
        import hashlib

        path = Path("/tmp") / f"flywheel-s3-{hashlib.sha256(str(settings.home).encode()).hexdigest()[:16]}.sock"
    return path


if __name__ == "__main__":
    raise SystemExit(main())
