"""Seeded synthetic card-transaction fraud data, one partition per day (the fraud example's feed).

The engine has no generator: data arrives as files in the landing folder (or S3), and this
module is what writes them for the fraud example, as an upstream system would
(``python -m examples.fraud.generator --days 14``). Its parameters are the ``generator:``
section of ``models/fraud.yaml``, which the engine keeps as a free-form dict and
:class:`GeneratorSpec` validates here.

Fraud is driven by learnable but noisy signals: amount relative to the user's
usual spend, a foreign country, night hours, risky categories, unknown devices
and a few compromised merchants. Drift can be injected from a date:

* ``amount_shift`` (covariate shift): amounts grow ×2.5 and foreign use rises;
* ``new_pattern`` (concept shift): fraudsters switch to small mobile buys at pharmacies and
  grocers and the old signals mostly stop working; the inputs look like any other day's and
  the fraud rate is unchanged: only the labels show it.

Kinds combine (a day can carry both), and a :class:`Phase` schedule says which kinds
hold from which day, so a scenario of several weeks is one list.

Labels arrive late, as chargebacks do: every transaction's label lands in the labels
feed (``<dataset>_labels``) 1 to ``label_delay_days`` days after the transaction
(:func:`labels_arriving`), so performance can only be measured with that delay.

Bad records (nulls, negative amounts, unknown categories, future timestamps,
duplicate ids) can be mixed in so that validation has something to quarantine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

CATEGORIES = [
    "grocery", "fuel", "restaurant", "travel", "electronics", "online_retail", "gambling", "pharmacy",
]
CATEGORY_SCALE = {
    "grocery": 40, "fuel": 50, "restaurant": 35, "travel": 400,
    "electronics": 250, "online_retail": 80, "gambling": 120, "pharmacy": 30,
}
RISKY = {"electronics", "online_retail", "gambling"}
COUNTRIES = ["US", "GB", "DE", "FR", "CA", "BR", "IN", "NG"]
COUNTRY_P = [0.55, 0.1, 0.08, 0.07, 0.07, 0.05, 0.05, 0.03]
DEVICES = ["mobile", "desktop", "pos", "unknown"]


class GeneratorSpec(BaseModel):
    """The ``generator:`` section of the fraud spec (parameters of this generator only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    seed: int = 7
    users: int = 2000
    merchants: int = 300
    rows_per_day: int = 2500
    fraud_rate: float = 0.015
    bad_record_rate: float = 0.004
    # Labels (chargebacks) arrive 1..label_delay_days days after the transaction.
    label_delay_days: int = Field(3, ge=1)


def generator_spec(params: GeneratorSpec | dict[str, Any]) -> GeneratorSpec:
    """The generator's parameters; raises ``pydantic.ValidationError`` naming an unknown or bad field."""
    return params if isinstance(params, GeneratorSpec) else GeneratorSpec.model_validate(params)


class DriftKind(StrEnum):
    NONE = "none"
    AMOUNT_SHIFT = "amount_shift"
    NEW_PATTERN = "new_pattern"


Drift = DriftKind | Collection[DriftKind]


def drift_set(drift: Drift) -> frozenset[DriftKind]:
    """The drift kinds of ``drift`` without ``none`` (one kind or several)."""
    kinds = {drift} if isinstance(drift, DriftKind) else set(drift)
    return frozenset(kinds - {DriftKind.NONE})


def drift_label(drift: Drift) -> str:
    """A stable name of a drift combination (``none``, ``amount_shift+new_pattern``)."""
    return "+".join(sorted(k.value for k in drift_set(drift))) or DriftKind.NONE.value


@dataclass(frozen=True)
class Phase:
    """From ``start`` on (until the next phase), days carry the ``drift`` kinds."""

    start: date
    drift: frozenset[DriftKind] = frozenset()
    name: str = ""


def drift_on(day: date, schedule: Sequence[Phase]) -> frozenset[DriftKind]:
    """The drift kinds of ``day`` under ``schedule`` (none before its first phase)."""
    current: frozenset[DriftKind] = frozenset()
    for phase in sorted(schedule, key=lambda p: p.start):
        if phase.start <= day:
            current = drift_set(phase.drift)
    return current


BAD_KINDS = ("null_user", "negative_amount", "unknown_category", "future_timestamp", "duplicate_id")


@dataclass(frozen=True)
class Population:
    user_country: np.ndarray
    user_scale: np.ndarray
    user_weight: np.ndarray
    user_device: np.ndarray
    merchant_category: np.ndarray
    merchant_weight: np.ndarray
    merchant_compromised: np.ndarray


def _rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def population(spec: GeneratorSpec | dict[str, Any]) -> Population:
    """Users and merchants: fixed for a seed."""
    spec = generator_spec(spec)
    rng = _rng(spec.seed, "population")
    users, merchants = spec.users, spec.merchants
    return Population(
        user_country=rng.choice(COUNTRIES, size=users, p=COUNTRY_P),
        user_scale=rng.lognormal(mean=0.0, sigma=0.5, size=users),
        user_weight=rng.pareto(2.0, size=users) + 0.2,
        user_device=rng.choice(DEVICES[:3], size=users, p=[0.6, 0.25, 0.15]),
        merchant_category=rng.choice(CATEGORIES, size=merchants),
        merchant_weight=rng.pareto(1.5, size=merchants) + 0.1,
        merchant_compromised=rng.random(merchants) < 0.03,
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _calibrate(logit: np.ndarray, target: float) -> np.ndarray:
    """Shift logits so the mean probability equals ``target`` (bisection)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _sigmoid(logit + mid).mean() > target:
            hi = mid
        else:
            lo = mid
    return _sigmoid(logit + (lo + hi) / 2)


def generate_day(
    day: date,
    spec: GeneratorSpec | dict[str, Any],
    *,
    drift: Drift = DriftKind.NONE,
    bad_records: bool = True,
) -> pd.DataFrame:
    """One day of transactions; the same (seed, day, drift) gives the same frame."""
    spec = generator_spec(spec)
    kinds = drift_set(drift)
    pop = population(spec)
    rng = _rng(spec.seed, day.isoformat(), drift_label(kinds))
    n = int(spec.rows_per_day * rng.uniform(0.9, 1.1))
    users = rng.choice(len(pop.user_country), size=n, p=pop.user_weight / pop.user_weight.sum())
    merchants = rng.choice(
        len(pop.merchant_category), size=n, p=pop.merchant_weight / pop.merchant_weight.sum()
    )
    category = pop.merchant_category[merchants]
    scale = np.array([CATEGORY_SCALE[c] for c in category]) * pop.user_scale[users]
    amount = rng.lognormal(np.log(scale), 0.6)
    hours = rng.choice(24, size=n, p=_hour_profile())
    seconds = hours * 3600 + rng.integers(0, 3600, size=n)
    foreign_p = 0.07
    if DriftKind.AMOUNT_SHIFT in kinds:
        amount = amount * 2.5
        foreign_p = 0.2
    foreign = rng.random(n) < foreign_p
    country = np.where(foreign, rng.choice(COUNTRIES, size=n), pop.user_country[users])
    device = np.where(rng.random(n) < 0.85, pop.user_device[users], rng.choice(DEVICES, size=n))

    usual = np.array([CATEGORY_SCALE[c] for c in category]) * pop.user_scale[users]
    ratio = amount / usual
    foreign_use = country != pop.user_country[users]
    night = (hours < 6) | (hours == 23)
    risky = np.isin(category, list(RISKY))
    unknown_device = device == "unknown"
    # Interactions make the signal non-linear: trees can learn it, a linear model only in part.
    logit = (
        1.0 * np.log1p(ratio)
        + 1.6 * (ratio > 3)
        + 0.6 * foreign_use
        + 2.6 * (foreign_use & night)
        + 0.4 * risky
        + 2.6 * (unknown_device & risky)
        + 2.2 * pop.merchant_compromised[merchants]
        + rng.normal(0, 0.6, size=n)
    )
    concept = DriftKind.NEW_PATTERN in kinds
    if concept:
        # Fraudsters change tactics: small night purchases on mobile at
        # pharmacies, grocers, restaurants and fuel stations.
        # The old signals mostly stop working; the overall fraud rate stays the same.
        target = (device == "mobile") & np.isin(category, ["pharmacy", "grocery", "restaurant", "fuel"]) & night
        logit = 0.25 * logit + 5.0 * target
    prob = _calibrate(logit, spec.fraud_rate)
    is_fraud = (rng.random(n) < prob).astype("int64")
    # Fraudsters spend more than the user usually does (the new pattern's blend in).
    inflate = (is_fraud == 1) & (not concept)
    amount = np.where(inflate, amount * rng.uniform(1.5, 4.0, size=n), amount)

    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    # Rows in time order, each keeping its own hour (the label depends on it: night use).
    order = np.argsort(seconds, kind="stable")
    users, merchants, category, amount = users[order], merchants[order], category[order], amount[order]
    country, device, is_fraud, seconds = country[order], device[order], is_fraud[order], seconds[order]
    df = pd.DataFrame(
        {
            "transaction_id": [f"t{day:%Y%m%d}-{i:06d}" for i in range(n)],
            "event_timestamp": pd.to_datetime(start) + pd.to_timedelta(seconds, unit="s"),
            "user_id": pd.array(users, dtype="Int64"),
            "merchant_id": pd.array(merchants, dtype="Int64"),
            "merchant_category": category.astype(object),
            "amount": np.round(np.clip(amount, 0.01, 49_999.0), 2),
            "country": country.astype(object),
            "device": device.astype(object),
            "is_fraud": is_fraud,
        }
    )
    if bad_records and spec.bad_record_rate > 0:
        df = inject_bad_records(df, rate=spec.bad_record_rate, rng=rng)
    return df


def _hour_profile() -> np.ndarray:
    hours = np.arange(24)
    weight = 0.15 + np.exp(-((hours - 13) ** 2) / 30.0)
    return weight / weight.sum()


def inject_bad_records(df: pd.DataFrame, *, rate: float, rng: np.random.Generator) -> pd.DataFrame:
    """Corrupt about ``rate`` of the rows in place, one kind of defect per row."""
    df = df.copy()
    count = max(len(BAD_KINDS), int(len(df) * rate))
    rows = rng.choice(len(df), size=count, replace=False)
    for i, row in enumerate(rows):
        kind = BAD_KINDS[i % len(BAD_KINDS)]
        if kind == "null_user":
            df.loc[row, "user_id"] = pd.NA
        elif kind == "negative_amount":
            df.loc[row, "amount"] = -abs(float(df.loc[row, "amount"]))
        elif kind == "unknown_category":
            df.loc[row, "merchant_category"] = "crypto_atm"
        elif kind == "future_timestamp":
            df.loc[row, "event_timestamp"] = df.loc[row, "event_timestamp"] + timedelta(days=3)
        elif kind == "duplicate_id":
            df.loc[row, "transaction_id"] = df.loc[(row + 1) % len(df), "transaction_id"]
    return df


def labels_arriving(day: date, spec: GeneratorSpec | dict[str, Any], schedule: Sequence[Phase] = ()) -> pd.DataFrame:
    """The labels that arrive on ``day``: each transaction of the ``label_delay_days`` days
    before gets its label on one of them (seeded per transaction day), stamped inside ``day``.

    Columns: ``transaction_id``, ``is_fraud``, ``labelled_at``. Labels come from the clean
    transactions (a label feed names real transactions, not the feed's corrupted copies).
    """
    spec = generator_spec(spec)
    frames = []
    for lag in range(1, spec.label_delay_days + 1):
        source = day - timedelta(days=lag)
        txns = generate_day(source, spec, drift=drift_on(source, schedule), bad_records=False)
        rng = _rng(spec.seed, source.isoformat(), "label-delay")
        delay = rng.integers(1, spec.label_delay_days + 1, size=len(txns))
        arrived = txns.loc[delay == lag, ["transaction_id", "is_fraud"]]
        seconds = _rng(spec.seed, day.isoformat(), "label-time", lag).integers(0, 86_400, size=len(arrived))
        start = pd.Timestamp(datetime(day.year, day.month, day.day, tzinfo=UTC))
        frames.append(arrived.assign(labelled_at=start + pd.to_timedelta(seconds, unit="s")))
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["labelled_at", "transaction_id"], ignore_index=True)


def _write_parquet(frame: pd.DataFrame, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "part-0.parquet"
    tmp = path.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def write_landing(
    root: Path,
    start: date,
    days: int,
    spec: GeneratorSpec | dict[str, Any],
    *,
    drift_from: date | None = None,
    drift: Drift = DriftKind.AMOUNT_SHIFT,
    schedule: Sequence[Phase] | None = None,
    dataset: str = "transactions",
    labels_dataset: str | None = None,
) -> list[Path]:
    """Write ``days`` daily Parquet files under ``root/<dataset>/ds=<date>/`` (idempotent).

    Drift follows ``schedule`` when given, else ``drift`` from ``drift_from`` on. With
    ``labels_dataset``, each day's arriving labels go to ``root/<labels_dataset>/ds=<date>/``.
    """
    spec = generator_spec(spec)
    if schedule is None:
        schedule = [Phase(drift_from, drift_set(drift))] if drift_from is not None else []
    written = []
    for offset in range(days):
        day = start + timedelta(days=offset)
        frame = generate_day(day, spec, drift=drift_on(day, schedule))
        written.append(_write_parquet(frame, root / dataset / f"ds={day.isoformat()}"))
        if labels_dataset:
            labels = labels_arriving(day, spec, schedule)
            written.append(_write_parquet(labels, root / labels_dataset / f"ds={day.isoformat()}"))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m examples.fraud.generator``: write daily partitions into the landing folder."""
    import argparse

    from flywheel.core.config import get_settings
    from flywheel.core.spec import find_dataset_spec, load_spec_file

    parser = argparse.ArgumentParser(prog="python -m examples.fraud.generator", description=main.__doc__)
    parser.add_argument("--spec", default="models/fraud.yaml", help="the use-case spec (its generator: section)")
    parser.add_argument("--start", default="2026-01-01", help="first day, YYYY-MM-DD")
    parser.add_argument("--days", type=int, default=14, help="number of daily partitions")
    parser.add_argument("--drift-from", default=None, help="inject drift from this day on")
    parser.add_argument("--drift", default=DriftKind.AMOUNT_SHIFT.value, choices=[k.value for k in DriftKind])
    parser.add_argument("--labels", action="store_true", help="also write the label feed (monitoring.labels)")
    args = parser.parse_args(argv)
    settings = get_settings()
    spec = load_spec_file(Path(args.spec))
    feed = spec.monitoring.labels if args.labels else None
    labels = find_dataset_spec(feed.dataset, settings=settings).dataset.name if feed else None
    root = settings.home / "landing"
    paths = write_landing(root, date.fromisoformat(args.start), args.days, spec.generator,
                          drift_from=date.fromisoformat(args.drift_from) if args.drift_from else None,
                          drift=DriftKind(args.drift), dataset=spec.dataset.name, labels_dataset=labels)
    print(f"wrote {len(paths)} partitions under {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
