"""Pipeline specs: one YAML file per use case under ``models/``."""

from __future__ import annotations

import functools
import re
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from flywheel.core.compile import LOWER_IS_BETTER as LOWER_IS_BETTER  # re-exported
from flywheel.core.compile import TASK_METRICS as TASK_METRICS  # re-exported
from flywheel.core.compile import check_references
from flywheel.core.config import Settings, get_settings

NOT_STATED = "not stated"


class SpecError(ValueError):
    """A pipeline spec is missing or invalid; the message names the file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


NAME = r"^[a-z][a-z0-9_]{0,62}$"
"""Use-case, dataset, entity and feature names: they become DAG ids, object keys, Feast names,
routes and metric labels, so only lower-case letters, digits and underscores (no path parts)."""

TaskType = Literal["binary", "multiclass", "regression"]
Metric = Literal["pr_auc", "roc_auc", "log_loss", "macro_f1", "accuracy", "rmse", "mae", "r2"]
AggregationFn = Literal["count", "sum", "mean", "min", "max", "std", "distinct_count", "last", "mode",
                        "share", "seconds_since_last", "sql"]
RequestFn = Literal["value", "log1p", "hour", "day_of_week", "is_weekend", "category", "ratio",
                    "difference", "differs", "missing", "python"]
WINDOW = r"^[1-9][0-9]*[hd]$"


def window_hours(window: str) -> int:
    """``"24h"`` -> 24, ``"7d"`` -> 168."""
    return int(window[:-1]) * (24 if window.endswith("d") else 1)


ColumnType = Literal["string", "int", "float", "datetime", "bool"]
# What happens to a PII column's values past the raw zone (flywheel.core.pii).
PiiPolicy = Literal["hash", "drop", "features_only"]


class ColumnRule(_Strict):
    type: ColumnType
    nullable: bool = True
    unique: bool = False
    min: float | None = None
    max: float | None = None
    allowed: list[Any] | None = None
    # Personal data: past the raw zone its values are keyed-hashed (``hash``, the default),
    # removed (``drop``) or kept in curated for the aggregation SQL only (``features_only``);
    # they never reach logs, reports, Data Docs or MLflow (docs/security.md, "Privacy").
    pii: bool = False
    pii_policy: PiiPolicy | None = None

    @model_validator(mode="after")
    def _pii(self) -> ColumnRule:
        if self.pii_policy is not None and not self.pii:
            raise ValueError("pii_policy needs pii: true")
        if not self.pii:
            return self
        bounds = [name for name in ("min", "max", "allowed") if getattr(self, name) is not None]
        if bounds:
            raise ValueError(f"a pii column cannot declare {', '.join(bounds)}: a rule on its values would "
                             "show them in validation results and Data Docs (keep nullable/unique)")
        if self.pii_policy in (None, "hash") and self.type != "string":
            raise ValueError(f"pii_policy hash needs type: string (its keyed hash is text), got {self.type}")
        return self

    @property
    def privacy(self) -> PiiPolicy | None:
        """The column's PII policy (None: not personal data)."""
        return (self.pii_policy or "hash") if self.pii else None

    @model_validator(mode="after")
    def _min_below_max(self) -> ColumnRule:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min: {self.min} is greater than max: {self.max}")
        return self


class VolumeRule(_Strict):
    """Row-count bounds relative to the median of the last ``history`` committed batches."""

    history: int = Field(7, ge=1)
    min_history: int = Field(3, ge=1)
    min_ratio: float = Field(0.5, ge=0)
    max_ratio: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> VolumeRule:
        if self.min_ratio > self.max_ratio:
            raise ValueError(f"min_ratio: {self.min_ratio} is greater than max_ratio: {self.max_ratio}")
        if self.min_history > self.history:
            raise ValueError(f"min_history: {self.min_history} is more than history: {self.history} "
                             "(the check would never run)")
        return self


class Contract(_Strict):
    columns: dict[str, ColumnRule]
    timestamp_in_interval: bool = True
    # Columns that must not arrive in this dataset (e.g. the label in a scoring feed).
    forbidden_columns: list[str] = Field(default_factory=list)
    # The newest row must be at most this many hours older than the interval's end.
    freshness_hours: float | None = Field(None, gt=0)
    volume: VolumeRule | None = None
    # [data-onboarding] A partition whose quarantined share of rows exceeds this fails its
    # validate task (the rows stay quarantined): a wrong contract is loud, not green.
    max_quarantine_share: float = Field(0.05, ge=0, le=1)


SOURCE_PLACEHOLDERS = frozenset({"home", "ds"})
"""What ``dataset.source`` may name: ``{home}`` (FLYWHEEL_HOME) and ``{ds}`` (the interval's date)."""


def check_placeholders(template: str, allowed: frozenset[str] = SOURCE_PLACEHOLDERS) -> str:
    """``template`` if its ``{...}`` fields are all in ``allowed``; raises ``ValueError`` naming the
    unknown one (a misspelt ``{dss}`` would otherwise fail at the first run, as a KeyError)."""
    import string

    try:
        fields = [f for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"{template!r} is not a valid template ({exc}); write a literal brace as {{{{ or }}}}") \
            from exc
    for name in fields:
        if name not in allowed:
            shown = "{" + name + "}"
            raise ValueError(f"unknown placeholder {shown} in {template!r} (known: "
                             f"{', '.join('{' + a + '}' for a in sorted(allowed))})")
    return template


class DatasetSpec(_Strict):
    name: str = Field(pattern=NAME)
    source: str
    format: Literal["parquet", "csv", "jsonl"] = "parquet"
    encoding: str = "utf8"
    timestamp: str
    # The row key: one column, several (composite), or none (rows are keyed by a hash of the row).
    key: str | list[str] | None = None
    contract: Contract
    # Rows validated per Great Expectations batch (bounded memory for large partitions).
    chunk_rows: int = Field(500_000, ge=1)
    # Let the scheduler create the runs of every missed interval since the DAG's start.
    catchup: bool = False
    # The first data interval of the dataset's DAGs (their start_date): Airflow runs no task for
    # an interval before it, so history older than the default (2026-01-01) needs its date here.
    start: date | None = None

    @property
    def key_columns(self) -> list[str]:
        """The key's columns ([] when rows are keyed by their hash)."""
        return [] if self.key is None else [self.key] if isinstance(self.key, str) else list(self.key)

    @model_validator(mode="after")
    def _source_placeholders(self) -> DatasetSpec:
        try:
            check_placeholders(self.source)
        except ValueError as exc:
            raise ValueError(f"source: {exc}") from exc
        return self

    @model_validator(mode="after")
    def _key_and_timestamp_in_contract(self) -> DatasetSpec:
        for col in (self.timestamp, *self.key_columns):
            if col not in self.contract.columns:
                where = "timestamp" if col == self.timestamp else "key"
                raise ValueError(f"{where}: column {col!r} is not in the dataset contract")
        if self.contract.columns[self.timestamp].pii:
            raise ValueError(f"timestamp: column {self.timestamp!r} is tagged pii (the event time is not hashed)")
        for col in self.key_columns:
            if self.contract.columns[col].privacy not in (None, "hash"):
                raise ValueError(f"key: column {col!r} is pii with policy {self.contract.columns[col].privacy}; "
                                 "a key column is kept in every zone and log, so it can only be hashed")
        return self


class AggregationSpec(_Strict):
    """One windowed aggregate of an entity's rows, as of the end of each data interval.

    ``window`` (``"1h"``, ``"7d"``) counts back from the interval's end; ``delay`` shifts the
    window back (e.g. a label rate over rows whose label is already known); ``where`` is a SQL
    condition on the dataset's columns that filters the rows (for ``share``: the condition whose
    share of rows is computed). ``default`` replaces NULL (no rows in the window).
    """

    fn: AggregationFn
    column: str | None = None
    window: str | None = Field(None, pattern=WINDOW)
    delay: str | None = Field(None, pattern=WINDOW)
    where: str | None = None
    default: float | None = None
    # fn: sql — one aggregate call over the entity's rows (the escape hatch), e.g.
    # "quantile_cont(minutes, 0.9)"; the window and where apply as its FILTER clause.
    expr: str | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _arguments(self) -> AggregationSpec:
        needs_column = {"sum", "mean", "min", "max", "std", "distinct_count", "last", "mode"}
        if self.fn in needs_column and not self.column:
            raise ValueError(f"fn: {self.fn} needs 'column'")
        if self.fn == "share" and not self.where:
            raise ValueError("fn: share needs 'where' (the condition whose share of rows it is)")
        if self.fn == "sql" and not self.expr:
            raise ValueError("fn: sql needs 'expr' (an aggregate SQL expression)")
        if self.fn != "sql" and self.expr:
            raise ValueError(f"'expr' is only for fn: sql (got fn: {self.fn})")
        return self


class EntitySpec(_Strict):
    """An entity: its join keys (one or several columns of the dataset) and its aggregates."""

    keys: list[str] = Field(min_length=1)
    description: str | None = None
    aggregations: dict[str, AggregationSpec] = Field(default_factory=dict)


class RequestFeatureSpec(_Strict):
    """A feature computed from the request row itself (and the entity aggregates it names).

    value / log1p / missing: of ``column``; hour / day_of_week / is_weekend: of ``column``
    (default: the dataset's timestamp); category: the code of ``column``'s value in the
    contract's allowed set (an unknown value gets the reserved code -1 and is flagged);
    ratio / difference / differs: ``column`` against ``other`` (an aggregate or a request
    feature); python: ``function`` (``path/to/file.py:name``, relative to the spec's folder)
    called with the arrays of ``inputs`` (columns or features), returning one array.
    """

    fn: RequestFn
    column: str | None = None
    other: str | None = None
    function: str | None = None
    inputs: list[str] = Field(default_factory=list)
    description: str | None = None

    @model_validator(mode="after")
    def _arguments(self) -> RequestFeatureSpec:
        if self.fn in {"value", "log1p", "category", "missing", "ratio", "difference", "differs"} and not self.column:
            raise ValueError(f"fn: {self.fn} needs 'column'")
        if self.fn in {"ratio", "difference", "differs"} and not self.other:
            raise ValueError(f"fn: {self.fn} needs 'other' (an aggregate or request feature)")
        if self.fn == "python" and (not self.function or ":" not in self.function or not self.inputs):
            raise ValueError("fn: python needs 'function: file.py:name' and 'inputs'")
        return self


class FeatureSpec(_Strict):
    """Declarative features: compiled to duckdb SQL, Feast objects and the one featurizer."""

    entities: dict[str, EntitySpec] = Field(min_length=1)
    request: dict[str, RequestFeatureSpec] = Field(default_factory=dict)
    # The Feast feature service; default: the use case's name.
    service: str | None = Field(None, pattern=NAME)
    # Model inputs in order; default: every numeric request feature and aggregate.
    model: list[str] | None = None


class LabelSpec(_Strict):
    """The label: a column, or a SQL expression on columns (``arr_delay > 15``) named ``name``."""

    column: str | None = None
    expr: str | None = None
    name: str | None = Field(None, pattern=NAME)
    # Labels become known this long after the event (aggregates over labels must lag by it).
    delay: str | None = Field(None, pattern=WINDOW)

    @model_validator(mode="after")
    def _one(self) -> LabelSpec:
        if bool(self.column) == bool(self.expr):
            raise ValueError("label needs exactly one of 'column' or 'expr'")
        if self.expr and not self.name:
            raise ValueError("a label expression needs a 'name'")
        return self

    @property
    def output(self) -> str:
        return self.name or self.column or ""


class SplitSpec(_Strict):
    train: float = Field(gt=0)
    validation: float = Field(gt=0)
    holdout: float = Field(gt=0)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitSpec:
        total = self.train + self.validation + self.holdout
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions sum to {total}, not 1")
        return self


class CostSpec(_Strict):
    """Business cost of each error kind, per transaction (any consistent unit)."""

    false_positive: float = Field(5.0, ge=0)
    false_negative: float = Field(100.0, ge=0)


class ParamRange(_Strict):
    """One dimension of a hyperparameter search: a numeric range or a list of choices."""

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> ParamRange:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical range needs a non-empty 'choices' list")
        elif self.low is None or self.high is None or self.low >= self.high:
            raise ValueError(f"a {self.type} range needs low < high (got low={self.low}, high={self.high})")
        elif self.log and self.low <= 0:
            raise ValueError("a log-scaled range needs low > 0")
        return self


class CandidateSpec(_Strict):
    """A model family competing for promotion: fixed params and an optional search space."""

    params: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, ParamRange] = Field(default_factory=dict)


class SearchSpec(_Strict):
    """Bounded hyperparameter search (Optuna TPE, seeded): per candidate family, at most
    ``trials`` trials and ``timeout_s`` seconds. ``trials: 0`` trains the fixed params once.
    The timeout is a safety cap: a search cut by it is not reproducible (the run says so)."""

    trials: int = Field(0, ge=0, le=200)
    timeout_s: float = Field(600, gt=0)


class ApprovalSpec(_Strict):
    """Human approval (Airflow's ApprovalOperator) between the gate and the promotion."""

    required: bool = False
    timeout_hours: float = Field(72, gt=0)


# Model families are entry points of this group (``[project.entry-points."flywheel.families"]``):
# names are checked here without importing the training layer, and a package of its own can add
# a family without an engine edit. Baselines per task when the spec names none.
FAMILY_GROUP = "flywheel.families"
DEFAULT_BASELINE: dict[str, str] = {"binary": "logistic_regression", "multiclass": "logistic_regression",
                                    "regression": "linear"}


@functools.cache
def registered_families() -> frozenset[str]:
    """Names of the installed model families (entry points of :data:`FAMILY_GROUP`)."""
    from importlib.metadata import entry_points

    return frozenset(ep.name for ep in entry_points(group=FAMILY_GROUP))


PARAMETERS_GROUP = "flywheel.family_parameters"


@functools.cache
def family_parameters(name: str) -> frozenset[str]:
    """The hyperparameters family ``name`` declares: the entry point of that name in
    :data:`PARAMETERS_GROUP` (a frozenset in a light module: specs load at every DAG parse, and
    importing the family classes would import pandas). A family that declares none takes none."""
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=PARAMETERS_GROUP) if ep.name == name]
    return frozenset(found[0].load()) if found else frozenset()


def _check_hyperparameters(family: str, candidate: CandidateSpec) -> None:
    declared = family_parameters(family)
    for part, names in (("params", candidate.params), ("search", candidate.search)):
        for key in names:
            if key not in declared:
                import difflib

                close = difflib.get_close_matches(key, sorted(declared), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(f"candidates.{family}.{part}.{key}: {family} has no hyperparameter {key!r} "
                                 f"({hint}declared: {', '.join(sorted(declared)) or 'none'})")


class LatencyBudgetSpec(_Strict):
    """The gate's in-process p99 budget (ms) of a candidate scoring holdout rows, by batch size.
    Defaults are generous: a model that misses them on a loaded 2-core machine is broken."""

    p99_ms_batch_1: float = Field(250.0, gt=0)
    p99_ms_batch_100: float = Field(1000.0, gt=0)
    repeats: int = Field(60, ge=5, le=1000)  # timed calls per batch size


class CardSpec(_Strict):
    """What the model card says about use, from the people who own the model."""

    intended_use: str = NOT_STATED
    misuses: list[str] = Field(default_factory=list)  # empty: the card says "not stated"
    # Who reviewed the model for inclusion (fairness) and on which slices; None: not reviewed.
    inclusion_review: str | None = None


class TrainingSpec(_Strict):
    lookback_days: int = Field(30, ge=1)
    split: SplitSpec
    seed: int = 42
    # The selection and gate metric; default per task (binary: pr_auc, multiclass: macro_f1,
    # regression: rmse). Lower is better for log_loss, rmse and mae.
    metric: Metric | None = None
    min_improvement: float = 0.0
    costs: CostSpec = Field(default_factory=CostSpec)
    precision_target: float = Field(0.5, gt=0, lt=1)
    slice_tolerance: float = Field(0.05, ge=0)
    baseline: str = "logistic_regression"
    candidates: dict[str, CandidateSpec] = Field(
        default_factory=lambda: {"xgboost": CandidateSpec()}, min_length=1)
    search: SearchSpec = Field(default_factory=SearchSpec)
    approval: ApprovalSpec = Field(default_factory=ApprovalSpec)
    latency_budget: LatencyBudgetSpec = Field(default_factory=LatencyBudgetSpec)
    # Columns or features the gate compares per value (numeric ones in quantile buckets);
    # None: the columns of the category request features.
    slices: list[str] | None = None

    @model_validator(mode="after")
    def _known_families(self) -> TrainingSpec:
        known = registered_families()
        listed = ", ".join(sorted(known)) or "none: is the flywheel package installed (make venv)?"
        for where, name in [("baseline", self.baseline), *((f"candidates.{c}", c) for c in self.candidates)]:
            if name not in known:
                raise ValueError(f"{where}: unknown model family {name!r} (known: {listed})")
        for name, candidate in self.candidates.items():
            _check_hyperparameters(name, candidate)
        return self

    def with_lookback(self, days: int | None) -> TrainingSpec:
        """A copy training on the last ``days`` days (unchanged when ``days`` is None)."""
        return self if days is None else self.model_copy(update={"lookback_days": int(days)})

    def with_params(self, family: str, **params: Any) -> TrainingSpec:
        """A copy whose ``family`` candidate uses ``params`` (merged) and no search."""
        current = self.candidates[family]
        changed = current.model_copy(update={"params": {**current.params, **params}, "search": {}})
        return self.model_copy(update={"candidates": {**self.candidates, family: changed}})


RetrainSignal = Literal["data_drift", "performance", "skew"]
DEFAULT_RETRAIN_SIGNALS: tuple[RetrainSignal, ...] = ("data_drift", "performance")


class RetrainPolicySpec(_Strict):
    """When monitoring may request a retrain (see flywheel.monitoring.policy). Days are data days."""

    cooldown_days: int = Field(3, ge=0)
    max_per_day: int = Field(2, ge=1)
    min_new_labelled_rows: int = Field(1000, ge=0)
    max_model_age_days: int | None = Field(30, ge=1)
    # A retrain the performance signal requested (the concept changed: older labels mislead)
    # trains on only this many recent days; None keeps training.lookback_days.
    performance_lookback_days: int | None = Field(None, ge=2)
    # Which monitoring signals may request a retrain (staleness is governed by max_model_age_days).
    signals: list[RetrainSignal] = Field(default_factory=lambda: list(DEFAULT_RETRAIN_SIGNALS))


class LabelFeedSpec(_Strict):
    """Where delayed labels arrive: a dataset spec's curated partitions, joined on ``key``
    (a column the prediction log carries: the dataset's key) to the label column ``label``."""

    dataset: str = Field(pattern=NAME)
    key: str
    label: str


class PerformanceSpec(_Strict):
    """Model performance on labelled predictions of the trailing ``window_days``.

    The monitored ``metric`` (default: ``training.metric``, else the task's first metric) is
    compared with the champion's holdout value of it. "Worse" follows the metric's direction
    (lower is better for log_loss, rmse and mae).
    """

    window_days: int = Field(7, ge=1)
    min_labelled_rows: int = Field(500, ge=1)
    # Binary only: labelled positives needed before PR-AUC means anything.
    min_positives: int = Field(30, ge=1)
    metric: Metric | None = None
    # Alert when the live metric is this much worse than the champion's holdout value (in the
    # metric's own units)...
    max_metric_drop: float = Field(0.15, gt=0)
    # ...or worse than this limit, whatever the holdout said (a minimum for higher-is-better
    # metrics, a maximum for lower-is-better ones): a champion promoted on a holdout it also
    # failed, e.g. right after a concept shift, would otherwise be its own low bar.
    metric_limit: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _pr_auc_names(cls, data: Any) -> Any:
        """``max_pr_auc_drop`` / ``min_pr_auc`` (binary specs before task types) mean the same
        rule on PR-AUC."""
        if not isinstance(data, dict) or not {"max_pr_auc_drop", "min_pr_auc"} & set(data):
            return data
        if {"max_metric_drop", "metric_limit"} & set(data) or data.get("metric", "pr_auc") != "pr_auc":
            raise ValueError("max_pr_auc_drop/min_pr_auc are the PR-AUC spelling of max_metric_drop/metric_limit"
                             " with metric: pr_auc; use one spelling")
        out = {k: v for k, v in data.items() if k not in {"max_pr_auc_drop", "min_pr_auc"}}
        out["metric"] = "pr_auc"
        if "max_pr_auc_drop" in data:
            out["max_metric_drop"] = data["max_pr_auc_drop"]
        if "min_pr_auc" in data:
            out["metric_limit"] = data["min_pr_auc"]
        return out


class SkewSpec(_Strict):
    """Training/serving skew: served features vs the offline features of the same rows."""

    sample_rows: int = Field(1000, ge=10)
    # A value is skewed when |served - offline| > abs_tol + rel_tol * |offline|.
    rel_tol: float = Field(1e-6, ge=0)
    abs_tol: float = Field(1e-6, ge=0)
    # Alert when more than this share of the sampled rows differ in any feature.
    max_mismatch_share: float = Field(0.01, ge=0, le=1)


class QualitySpec(_Strict):
    """Serving input quality: entity misses, missing features, values outside the reference."""

    max_feature_miss_rate: float = Field(0.2, ge=0, le=1)
    max_missing_rate: float = Field(0.2, ge=0, le=1)
    max_out_of_range_rate: float = Field(0.05, ge=0, le=1)
    # A value is out of range outside [min, max] of the training reference widened by this
    # share of (max - min) on each side.
    range_margin: float = Field(0.5, ge=0)
    # The online store is stale when its newest features are older than this (data time).
    max_online_age_hours: float = Field(48, gt=0)


class MonitoringSpec(_Strict):
    drift_share_threshold: float = Field(0.3, gt=0, le=1)
    # Days of logged traffic one drift check compares with the reference (ending at the day).
    drift_window_days: int = Field(1, ge=1)
    min_rows: int = Field(200, ge=1)
    features: list[str]
    labels: LabelFeedSpec | None = None
    performance: PerformanceSpec = Field(default_factory=PerformanceSpec)
    skew: SkewSpec = Field(default_factory=SkewSpec)
    quality: QualitySpec = Field(default_factory=QualitySpec)
    retrain: RetrainPolicySpec = Field(default_factory=RetrainPolicySpec)


OutOfContract = Literal["flag", "reject"]


class ServingSpec(_Strict):
    """How the model server treats a request value the dataset contract does not allow.

    ``out_of_contract: flag`` (the default): a number outside the column's ``min``/``max`` is
    scored as given and named in the response's ``out_of_range`` (and the prediction log's
    ``out_of_range`` column, and ``flywheel_out_of_range_values_total``); a value outside the
    ``allowed`` set of a column a ``category`` feature codes is scored with the reserved code and
    named in ``unknown``. ``reject``: both are a 422 naming the field. Wrong types, NaN/infinity,
    missing required fields and unknown fields are a 422 either way.
    """

    out_of_contract: OutOfContract = "flag"


RolloutMode = Literal["champion_only", "shadow", "canary"]


class RolloutSpec(_Strict):
    """How a gate-passing version reaches the champion alias (docs/serving.md, "Rollout").

    ``champion_only`` (the default): the gate moves the champion alias at once, as before.
    ``shadow``: the version first scores every request off the response path (logged, never
    returned), then serves ``canary_share`` of the entities (sticky by hash), then becomes
    champion. ``canary``: it starts at the canary stage. ``flywheel rollout`` moves it one stage
    when its live metrics since the stage began pass (at least ``min_requests`` scored rows,
    agreement with the champion >= ``min_agreement``, challenger p99 <= ``max_p99_ms``, error
    rate <= ``max_error_rate`` and, once ``min_labelled_rows`` labels arrived, the monitored
    metric no more than ``max_metric_drop`` worse than the champion's on the same rows), and
    takes it out of traffic when one fails.
    """

    mode: RolloutMode = "champion_only"
    canary_share: float = Field(default=0.1, gt=0.0, lt=1.0)
    min_requests: int = Field(default=500, ge=1)
    min_agreement: float = Field(default=0.95, ge=0.0, le=1.0)
    agreement_tolerance: float = Field(default=0.05, ge=0.0)  # regression: relative difference that agrees
    max_p99_ms: float = Field(default=50.0, gt=0.0)
    max_error_rate: float = Field(default=0.001, ge=0.0, le=1.0)
    min_labelled_rows: int = Field(default=200, ge=0)  # 0: no label check
    max_metric_drop: float = Field(default=0.02, ge=0.0)


class DataSpec(_Strict):
    """A dataset on its own (``kind: dataset`` in its YAML): a daily data DAG that ingests
    and validates it (contract, quarantine, replay), with no features or model. Onboarding a
    dataset is writing this file (``flywheel init-dataset`` drafts it from a sample)."""

    name: str = Field(pattern=NAME)
    owner: str
    dataset: DatasetSpec
    # Parameters of the use case's own synthetic generator, if it has one (examples/<use case>/);
    # the engine does not read them.
    generator: dict[str, Any] = Field(default_factory=dict)
    # The file the spec was loaded from (custom feature code is found relative to its folder).
    _path: Path | None = PrivateAttr(None)

    @property
    def source_dir(self) -> Path | None:
        return self._path.parent if self._path else None

    def source_for(self, ds: str, settings: Settings) -> str:
        """The source location of one daily partition."""
        return self.dataset.source.format(home=settings.home, ds=ds)


class PipelineSpec(DataSpec):
    """A use case: its dataset plus task, label, features, training and monitoring."""

    model_name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    task: TaskType = "binary"
    label: LabelSpec
    features: FeatureSpec
    training: TrainingSpec
    monitoring: MonitoringSpec
    serving: ServingSpec = Field(default_factory=ServingSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    card: CardSpec = Field(default_factory=CardSpec)

    @model_validator(mode="before")
    @classmethod
    def _label_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("label"), str):
            data = {**data, "label": {"column": data["label"]}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _task_baseline(cls, data: Any) -> Any:
        # The baseline's default depends on the task (no logistic regression of a value).
        training = data.get("training") if isinstance(data, dict) else None
        if isinstance(training, dict) and "baseline" not in training:
            baseline = DEFAULT_BASELINE.get(str(data.get("task", "binary")), "logistic_regression")
            data = {**data, "training": {**training, "baseline": baseline}}
        return data

    @property
    def target(self) -> str:
        """The label's column in training frames (the label column, or the expression's name)."""
        return self.label.output

    @property
    def feature_service(self) -> str:
        return self.features.service or self.name

    @model_validator(mode="after")
    def _references(self) -> PipelineSpec:
        check_references(self)
        return self


_RELATIVE = re.compile(r"^([a-z_][\w-]*(?:\.[\w-]+)*): ")


def _problem(err: Any) -> str:
    """``<field path>: <what>``. A validator's message that starts with a field path relative to
    the model it checks (``min: 5 is greater than max: 1``) gets the full path
    (``dataset.contract.columns.amount.min: ...``); a root validator's message already has it."""
    loc = ".".join(str(p) for p in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    relative = _RELATIVE.match(msg) if err.get("type") == "value_error" else None
    if relative:
        return f"{loc + '.' if loc else ''}{msg}"
    return f"{loc or '<root>'}: {msg}"


def load_spec(name: str | None = None, *, settings: Settings | None = None) -> PipelineSpec:
    """Load ``models/<name>.yaml``; raises :class:`SpecError` naming the file and field."""
    settings = settings or get_settings()
    path = Path(settings.specs_dir) / f"{name or settings.use_case}.yaml"
    return load_spec_file(path)


def use_case_specs(*, settings: Settings | None = None) -> list[PipelineSpec]:
    """Every use-case spec (``kind: pipeline``) under ``specs_dir``, sorted by file name."""
    settings = settings or get_settings()
    specs = [load_any_spec_file(p) for p in sorted(Path(settings.specs_dir).glob("*.yaml"))]
    return [s for s in specs if isinstance(s, PipelineSpec)]


def find_dataset_spec(dataset: str, *, settings: Settings | None = None) -> DataSpec:
    """The spec under ``specs_dir`` whose dataset is named ``dataset``."""
    settings = settings or get_settings()
    specs = [load_any_spec_file(p) for p in sorted(Path(settings.specs_dir).glob("*.yaml"))]
    for spec in specs:
        if spec.dataset.name == dataset:
            return spec
    known = ", ".join(sorted(s.dataset.name for s in specs)) or "none"
    raise SpecError(f"no spec in {settings.specs_dir} has dataset {dataset!r} (known: {known})")


def load_spec_file(path: Path) -> PipelineSpec:
    """A use-case spec; a dataset-only spec here is a :class:`SpecError`."""
    spec = load_any_spec_file(path)
    if not isinstance(spec, PipelineSpec):
        raise SpecError(f"{path} is a dataset spec (kind: dataset), not a use case with a model")
    return spec


def load_any_spec_file(path: Path) -> DataSpec:
    """A use-case spec, or a dataset-only spec when the file says ``kind: dataset``."""
    if not path.is_file():
        raise SpecError(f"pipeline spec {path} does not exist")
    try:
        # libyaml's safe loader (same YAML, ~10x faster: specs load at every DAG parse).
        raw = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506
        if isinstance(raw, dict) and raw.get("kind", "pipeline") == "dataset":
            data = DataSpec.model_validate({k: v for k, v in raw.items() if k != "kind"})
            data._path = path.resolve()
            return data
        if isinstance(raw, dict) and raw.get("kind", "pipeline") != "pipeline":
            raise SpecError(f"invalid pipeline spec {path}: kind: {raw['kind']!r} is not 'pipeline' or 'dataset'")
        spec = PipelineSpec.model_validate({k: v for k, v in (raw or {}).items() if k != "kind"})
        spec._path = path.resolve()
        return spec
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors())
        raise SpecError(f"invalid pipeline spec {path}: {problems}") from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"pipeline spec {path} is not valid YAML: {exc}") from exc
