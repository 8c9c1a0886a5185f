"""The S3 client and the errors of object storage, what :mod:`flywheel.core.storage` (partitions,
manifests) and :mod:`flywheel.core.lease` (leases on top of conditional writes) both build on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flywheel.core.config import Settings, get_settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client  # pragma: no cover
else:
    S3Client = Any


class StorageError(RuntimeError):
    """An object-store operation failed or found an inconsistent partition."""


def conditional_write_lost(exc: Exception) -> bool:
    """A conditional write (``If-Match`` / ``If-None-Match``) lost: 412, or 409 for a concurrent one."""
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return status in (409, 412) or code in {"PreconditionFailed", "ConditionalRequestConflict"}


def s3_client(
    settings: Settings | None = None,
    *,
    max_attempts: int = 5,
    connect_timeout: float = 5,
    read_timeout: float = 60,
) -> S3Client:
    """A boto3 S3 client for the configured endpoint and credentials.

    Readers that must answer quickly (the Prometheus exporter) pass fewer attempts and
    shorter timeouts. Raises :class:`StorageError` when no credentials are configured.
    """
    import boto3
    from botocore.config import Config

    settings = settings or get_settings()
    if settings.s3_access_key is None or settings.s3_secret_key is None:
        raise StorageError(
            "no S3 credentials configured: run `flywheel up` (embedded profile) or set "
            "FLYWHEEL_S3_ACCESS_KEY / FLYWHEEL_S3_SECRET_KEY"
        )
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key.get_secret_value(),
        aws_secret_access_key=settings.s3_secret_key.get_secret_value(),
        config=Config(
            s3={"addressing_style": settings.s3_addressing_style},
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        ),
    )
