"""The object layout: every bucket zone and key Flywheel reads or writes, spelled once.

One bucket per zone (``<prefix>-<zone>``, see ``Settings.bucket``). Inside them:

| zone | key | written by |
| --- | --- | --- |
| raw, curated, quarantine | ``<dataset>/ds=<date>/`` (+ ``_manifest.json``) | ingest, validation |
| reports | ``locks/partitions/<dataset>/ds=<date>.json`` | the lease of a partition's one writer |
| features | ``<use case>/<entity>/ds=<date>/`` | the day's aggregates (Feast's offline source) |
| features | ``reference/<model>/v<version>.parquet`` | training: the drift reference |
| predictions | ``<use case>/dt=<date>/part-<writer>-<segment>.parquet`` | the model server's prediction log |
| predictions | ``batch/<use case>/ds=<date>/`` (+ ``_manifest.json``) | batch prediction (``<use case>_batch``) |
| reports | ``feature-freshness/<use case>/ds=<date>.json`` | materialization |
| reports | ``data-docs/<dataset>/ds=<date>/index.html`` (+ its pages) | validation: the GX Data Docs |
| reports | ``drift/<model>/ds=<date>/``, ``performance/<model>/ds=<date>/`` | monitoring checks |
| reports | ``monitoring/<model>/ds=<date>/summary.json``, ``monitoring/<model>/latest.json`` | the day's summary |
| reports | ``policy/<model>/ds=<date>/…json`` | retraining decisions |
| reports | ``audit/<model>/…json`` | every alias move (written before the move) |
| reports | ``locks/<model>/champion.json`` | the lease held while the champion alias moves |

Curated and quarantine are one unit (:data:`UNIT_RECORD`): the curated manifest commits both (it
carries the quarantine manifest); without a curated manifest the quarantine zone's own manifest
stands (a batch quarantined whole, an unreadable file).

Use cases and models are keyed by their spec's ``name`` / ``model_name`` (validated names: no
path parts), so several use cases share the buckets without collisions.
"""

from __future__ import annotations

import re
from datetime import date

ZONES = ("raw", "curated", "quarantine", "features", "predictions", "reports", "mlflow")
MANIFEST = "_manifest.json"
SUMMARY = "summary.json"
LATEST = "latest.json"
SUMMARY_PREFIX = "monitoring/"
# zone -> the zone whose manifest commits it with its own (one commit for a validated day).
UNIT_RECORD = {"quarantine": "curated"}


_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,127}$")


class LayoutError(ValueError):
    """A name or date would not make a safe object key (a path part, a traversal, a stray character)."""


def _part(value: str, what: str) -> str:
    """``value`` when every ``/``-separated part of it is a plain name (specs validate the names
    they define; this is the last check before a key is written, e.g. for a name from a CLI)."""
    for part in str(value).split("/"):
        if not _PART.fullmatch(part) or set(part) == {"."} or ".." in part:
            raise LayoutError(f"{what} {value!r} cannot be part of an object key "
                              "(letters, digits, '_', '-', '.', '=' only; no empty, '.' or '..' parts)")
    return str(value)


def _day(day: date | str) -> str:
    return day.isoformat() if isinstance(day, date) else _part(day, "date")


def partition_prefix(dataset: str, ds: date | str) -> str:
    """A dataset's daily partition in the raw, curated, quarantine or features zone."""
    return f"{_part(dataset, 'dataset')}/ds={_day(ds)}/"


def feature_dataset(use_case: str, entity: str) -> str:
    """The features-zone dataset of one entity's aggregates (Feast's offline source)."""
    return f"{_part(use_case, 'use case')}/{_part(entity, 'entity')}"


def reference_key(model: str, version: str) -> str:
    """A model version's drift reference in the features zone."""
    return f"reference/{_part(model, 'model')}/v{_part(version.removeprefix('v'), 'version')}.parquet"


def prediction_prefix(use_case: str, day: date | str) -> str:
    """One day of a use case's prediction log in the predictions zone."""
    return f"{_part(use_case, 'use case')}/dt={_day(day)}/"


def prediction_part_key(use_case: str, day: date | str, writer: str, segment: int) -> str:
    """The prediction-log object of one spool segment's rows of one day: the same segment always
    gets the same key, so an upload retried after a crash overwrites itself instead of adding a copy."""
    return f"{prediction_prefix(use_case, day)}part-{_part(writer, 'writer')}-{segment:08d}.parquet"


def batch_dataset(use_case: str) -> str:
    """The predictions-zone dataset (object prefix) of a use case's batch predictions."""
    return f"batch/{_part(use_case, 'use case')}"


def freshness_prefix(use_case: str) -> str:
    return f"feature-freshness/{_part(use_case, 'use case')}/"


def freshness_key(use_case: str, ds: date | str) -> str:
    """The feature-freshness record of one materialized day (reports zone)."""
    return f"{freshness_prefix(use_case)}ds={_day(ds)}.json"


def report_prefix(kind: str, model: str, ds: date | str) -> str:
    """A monitoring report of one day (``drift``, ``performance``) in the reports zone."""
    return f"{_part(kind, 'report kind')}/{_part(model, 'model')}/ds={_day(ds)}/"


def data_docs_prefix(dataset: str, ds: date | str) -> str:
    """A validated day's GX Data Docs site in the reports zone (its ``index.html`` and pages)."""
    return f"data-docs/{partition_prefix(dataset, ds)}"


def summary_prefix(model: str) -> str:
    return f"{SUMMARY_PREFIX}{_part(model, 'model')}/"


def policy_prefix(model: str) -> str:
    return f"policy/{_part(model, 'model')}/"


def audit_prefix(model: str) -> str:
    return f"audit/{_part(model, 'model')}/"


def champion_lease_key(model: str) -> str:
    """The lease every move of a model's champion alias holds (flywheel.core.lease)."""
    return f"locks/{_part(model, 'model')}/champion.json"


def partition_lease_key(dataset: str, ds: date | str) -> str:
    """The lease of the one writer of a dataset's day, every zone of it (flywheel.core.lease)."""
    return f"locks/partitions/{_part(dataset, 'dataset')}/ds={_day(ds)}.json"
