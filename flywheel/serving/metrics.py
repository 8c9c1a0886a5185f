"""The model server's Prometheus metrics, labelled by use case."""

from __future__ import annotations

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)


class ServingMetrics:
    """The service's Prometheus metrics (one instance per process, every use case in it).

    Every series carries a ``use_case`` label (the spec's name). ``prometheus_client`` is
    imported here, not at module import: BentoML workers set ``PROMETHEUS_MULTIPROC_DIR`` after
    importing the service module, and the client picks its storage mode on import.
    """

    _instance: ServingMetrics | None = None

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.latency = Histogram("flywheel_request_latency_seconds", "Scoring latency per request",
                                 ["use_case", "endpoint"], buckets=LATENCY_BUCKETS)
        self.batch_rows = Histogram("flywheel_batch_rows",
                                    "Rows per model call, by endpoint and the runtime that scored them "
                                    "(onnxruntime or the family's native one); micro-batched /predict "
                                    "requests share one call", ["use_case", "endpoint", "runtime"],
                                    buckets=BATCH_BUCKETS)
        self.predictions = Counter("flywheel_predictions_total",
                                   "Predictions by outcome (binary: the decision; multiclass: the class; "
                                   "regression: 'value')", ["use_case", "model_version", "outcome"])
        self.unknown_values = Counter("flywheel_unknown_values_total",
                                      "Request values outside the contract's allowed set (scored with the "
                                      "reserved code)", ["use_case", "column"])
        self.out_of_range_values = Counter("flywheel_out_of_range_values_total",
                                           "Request values outside the contract's min/max (scored as given; "
                                           "serving.out_of_contract: flag)", ["use_case", "column"])
        self.lookups = Counter("flywheel_feature_lookups_total", "Online feature lookups by entity",
                               ["use_case", "entity"])
        self.misses = Counter("flywheel_feature_misses_total",
                              "Lookups that found no online features (defaults used)", ["use_case", "entity"])
        self.model_info = Gauge("flywheel_model_info", "The served model (1 = current)",
                                ["use_case", "model_name", "model_version", "device"], multiprocess_mode="liveall")
        self.swaps = Counter("flywheel_model_swaps_total", "Champion changes picked up without restart",
                             ["use_case"])
        self.refresh_errors = Counter("flywheel_model_refresh_errors_total",
                                      "Failed checks of the champion alias (the current model keeps serving)",
                                      ["use_case"])
        self.log_rows = Counter("flywheel_prediction_log_rows_total",
                                "Prediction log rows by outcome (written; rejected or dropped: the spool could "
                                "not keep them; unreadable: spooled records set aside, requests)", ["use_case", "outcome"])
        self.log_failures = Counter("flywheel_prediction_log_flush_failures_total",
                                    "Prediction log uploads that failed and will be retried", ["use_case"])
        self.log_backlog = Gauge("flywheel_prediction_log_backlog_rows",
                                 "Prediction log rows waiting for upload", ["use_case"],
                                 multiprocess_mode="liveall")
        self.log_spool_bytes = Gauge("flywheel_prediction_log_spool_bytes",
                                     "Bytes of the prediction log's local spool not uploaded yet (bounded by "
                                     "prediction_spool_max_bytes)", ["use_case"], multiprocess_mode="liveall")

    @classmethod
    def get(cls) -> ServingMetrics:
        """The process-wide metrics (prometheus_client refuses to register a name twice)."""
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance
