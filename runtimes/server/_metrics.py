"""Prometheus metrics, written by hand in the text exposition format (no dependency).

Updated only from the event loop thread, so no locks are needed.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: queued observations per histogram that trigger folding them into the buckets
_FOLD_AT = 256


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    if v == float("inf"):
        return "+Inf"
    return repr(float(v)) if isinstance(v, float) else str(v)


class Counter:
    def __init__(self, name: str, help: str, labels: Sequence[str]) -> None:
        self.name, self.help, self.labels = name, help, tuple(labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1) -> None:
        self.values[labels] = self.values.get(labels, 0) + amount

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0)

    def render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {self.help}\n# TYPE {self.name} counter\n")
        for key, v in sorted(self.values.items()):
            out.append(f"{self.name}{_labels(self.labels, key)} {_num(v)}\n")


class Gauge(Counter):
    def set(self, *labels: str, value: float) -> None:
        self.values[labels] = value

    def render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {self.help}\n# TYPE {self.name} gauge\n")
        for key, v in sorted(self.values.items()):
            out.append(f"{self.name}{_labels(self.labels, key)} {_num(v)}\n")


class Histogram:
    """A histogram per label set. Observations are queued and folded into the buckets in bulk
    (when the queue fills up and before rendering): one list append per observation on the
    request path instead of a bucket search and three updates."""

    def __init__(self, name: str, help: str, labels: Sequence[str], buckets: Sequence[float]) -> None:
        self.name, self.help, self.labels = name, help, tuple(labels)
        self.buckets = tuple(buckets)
        #: per label set: per-bucket counts, an overflow count, then [sum, count]
        self._series: dict[tuple[str, ...], list[float]] = {}
        self._pending: list[tuple[float, tuple[str, ...]]] = []

    def observe(self, value: float, *labels: str) -> None:
        pending = self._pending
        pending.append((value, labels))
        if len(pending) >= _FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Add the queued observations to the buckets."""
        pending, self._pending = self._pending, []
        buckets = self.buckets
        for value, labels in pending:
            s = self._series.get(labels)
            if s is None:
                s = self._series[labels] = [0.0] * (len(buckets) + 3)
            s[bisect.bisect_left(buckets, value)] += 1
            s[-2] += value
            s[-1] += 1

    @property
    def series(self) -> dict[tuple[str, ...], list[float]]:
        """Per label set: the count in each bucket (not cumulative), the count above the last
        bucket, the sum and the count of observations."""
        self.fold()
        return self._series

    def render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {self.help}\n# TYPE {self.name} histogram\n")
        for key, s in sorted(self.series.items()):
            cum = 0.0
            for bound, n in zip(self.buckets, s, strict=False):
                cum += n
                le = 'le="' + _num(bound) + '"'
                out.append(f"{self.name}_bucket{_labels(self.labels, key, le)} {int(cum)}\n")
            inf = 'le="+Inf"'
            out.append(f"{self.name}_bucket{_labels(self.labels, key, inf)} {int(s[-1])}\n")
            out.append(f"{self.name}_sum{_labels(self.labels, key)} {_num(s[-2])}\n")
            out.append(f"{self.name}_count{_labels(self.labels, key)} {int(s[-1])}\n")


class ServerMetrics:
    """Every metric the server exports."""

    def __init__(self) -> None:
        self.requests = Counter(
            "torchport_requests_total",
            "HTTP requests by model, endpoint and status code.",
            ["model", "endpoint", "status"],
        )
        self.errors = Counter(
            "torchport_request_errors_total",
            "HTTP requests answered with status >= 400.",
            ["model", "status"],
        )
        self.latency = Histogram(
            "torchport_request_duration_seconds",
            "Infer request latency (request parsed to response written).",
            ["model"],
            LATENCY_BUCKETS,
        )
        self.queue_time = Histogram(
            "torchport_queue_duration_seconds",
            "Time an infer request waited in the batching queue before its batch started running.",
            ["model"],
            LATENCY_BUCKETS,
        )
        self.compute_time = Histogram(
            "torchport_compute_duration_seconds",
            "Time of one model run (one batch).",
            ["model"],
            LATENCY_BUCKETS,
        )
        self.batch_size = Histogram(
            "torchport_batch_size", "Rows (batch dim) per model run.", ["model"], BATCH_BUCKETS
        )
        self.requests_per_batch = Histogram(
            "torchport_requests_per_batch", "Requests merged into one model run.", ["model"], BATCH_BUCKETS
        )
        self.model_info = Gauge(
            "torchport_model_info",
            "Loaded models, with the execution provider in use.",
            ["model", "version", "provider"],
        )
        self.model_ready = Gauge(
            "torchport_model_ready", "1 when the model is ready, else 0.", ["model", "version"]
        )
        self.inflight = Gauge("torchport_inflight_requests", "Requests being processed now.", [])

    def render(self) -> bytes:
        out: list[str] = []
        for m in (
            self.requests,
            self.errors,
            self.latency,
            self.queue_time,
            self.compute_time,
            self.batch_size,
            self.requests_per_batch,
            self.model_info,
            self.model_ready,
            self.inflight,
        ):
            m.render(out)
        return "".join(out).encode()
