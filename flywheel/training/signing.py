"""Registration signatures: the model server loads only what training registered.

When training registers a version it downloads the version's artifacts back, computes their
digest (SHA-256 over every file's relative path and bytes) and signs ``name``, ``version`` and
the digest with the training identity's Ed25519 key (``settings.registry_signing_key``). The
digest, the signature and the registering identity are tags on the version.

Before the model server loads a version (at start and at every champion swap) it downloads the
artifacts, recomputes the digest and verifies the signature with the public key
(``settings.registry_verify_key``). A version registered by anyone else, or whose artifacts
changed after registration, is refused with :class:`VersionVerificationError`, and the server
keeps serving the champion it has. The private key never reaches the model server.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from pathlib import Path
from typing import Any

from flywheel.core.config import Settings

log = logging.getLogger(__name__)

DIGEST_TAG = "flywheel.artifact_digest"
SIGNATURE_TAG = "flywheel.signature"
REGISTERED_BY_TAG = "flywheel.registered_by"


class VersionVerificationError(RuntimeError):
    """A model version is unsigned, signed by another key, or its artifacts changed."""


def digest(folder: Path) -> str:
    """``sha256:<hex>`` over every file under ``folder``: relative path, size and bytes, in order."""
    sha = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix().encode()
        sha.update(len(relative).to_bytes(4, "big") + relative + path.stat().st_size.to_bytes(8, "big"))
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                sha.update(block)
    return f"sha256:{sha.hexdigest()}"


def _message(model_name: str, version: str, value: str, onnx_sha256: str | None) -> bytes:
    """What is signed: the version, its artifacts' digest and its ONNX copy's SHA-256 (the copy
    is a run artifact named by tags; binding its hash here makes a re-tagged copy fail too)."""
    return f"flywheel-version\n{model_name}\n{version}\n{value}\n{onnx_sha256 or '-'}".encode()


def _onnx_sha256(tags: dict[str, str]) -> str | None:
    from flywheel.training.compiled import TAGS

    return tags.get(TAGS.sha256) if tags.get(TAGS.status) == "ok" else None


def download(model_name: str, version: str, folder: Path) -> Path:
    """The version's artifacts (``models:/name/version``) under ``folder``."""
    from mlflow.artifacts import download_artifacts

    return Path(download_artifacts(artifact_uri=f"models:/{model_name}/{version}", dst_path=str(folder)))


def sign_version(model_name: str, version: str, settings: Settings, client: Any,
                 runtime_tags: dict[str, str] | None = None) -> dict[str, str]:
    """Digest and sign a registered version (and its ONNX copy, from ``runtime_tags``, the
    ``runtime.onnx.*`` tags packaging recorded); set and return the signature tags.

    Without ``settings.registry_signing_key`` nothing is signed (a server that verifies will
    then refuse the version) and a warning says so."""
    import tempfile

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if settings.registry_signing_key is None:
        log.warning("no registry_signing_key: version %s of %s is not signed, and a model server that "
                    "verifies versions will not load it", version, model_name)
        return {}
    key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(settings.registry_signing_key.get_secret_value()))
    with tempfile.TemporaryDirectory() as tmp:
        value = digest(download(model_name, version, Path(tmp)))
    tags = {DIGEST_TAG: value,
            SIGNATURE_TAG: base64.b64encode(key.sign(_message(model_name, version, value,
                                                              _onnx_sha256(runtime_tags or {})))).decode(),
            REGISTERED_BY_TAG: settings.mlflow_username or "anonymous"}
    for name, tag in tags.items():
        client.set_model_version_tag(model_name, version, name, tag)
    return tags


def verify(model_name: str, version: str, tags: dict[str, str], folder: Path, settings: Settings) -> str:
    """Check that the artifacts under ``folder`` are what training signed; return the digest.

    Raises :class:`VersionVerificationError` naming what failed."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    where = f"version {version} of {model_name}"
    if not settings.registry_verify_key:
        raise VersionVerificationError(f"{where}: no registry_verify_key configured to verify it with")
    recorded, signature = tags.get(DIGEST_TAG), tags.get(SIGNATURE_TAG)
    if not recorded or not signature:
        raise VersionVerificationError(f"{where} is not signed by training (no {DIGEST_TAG}/{SIGNATURE_TAG} "
                                       "tags): it was not registered by the training pipeline")
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(settings.registry_verify_key))
    try:
        public.verify(base64.b64decode(signature), _message(model_name, version, recorded, _onnx_sha256(tags)))
    except (InvalidSignature, ValueError) as exc:
        raise VersionVerificationError(f"{where}: the signature does not verify with the training key "
                                       "(registered or re-tagged by someone else)") from exc
    actual = digest(folder)
    if actual != recorded:
        raise VersionVerificationError(f"{where}: its artifacts changed after registration "
                                       f"(digest {actual}, signed {recorded})")
    return actual


def verified_load(model_name: str, version: str, tags: dict[str, str], settings: Settings, load: Any) -> Any:
    """Download, verify, then ``load(local_path)``: the bytes loaded are the bytes verified."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = download(model_name, version, Path(tmp))
        verify(model_name, version, tags, local, settings)
        return load(str(local))
