"""Per model-version statistics in the shape of Triton's statistics extension.

Counts and cumulative nanoseconds of successful and failed requests, time spent queued and
computing, and per batch size executions. Updated on the event loop thread only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

#: queued requests (or runs) that trigger adding them to the totals
_FOLD_AT = 256


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class _Totals:
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    batches: dict[int, _Duration] = field(default_factory=dict)


def _total(name: str) -> property:
    return property(lambda self: getattr(self._folded(), name), doc=f"``{name}``, queued requests included.")


class ModelStats:
    """Statistics of one model version (see :meth:`to_triton`).

    Successful requests and runs are queued (one list append each on the request path) and added to
    the totals in bulk: every few hundred, and whenever a total is read.
    """

    def __init__(self) -> None:
        self._totals = _Totals()
        self.fail = _Duration()
        self._done: list[tuple[float, float, int]] = []
        self._runs: list[tuple[int, int, float]] = []
        self._last_time = 0.0

    last_inference_ms = _total("last_inference_ms")
    inference_count = _total("inference_count")
    execution_count = _total("execution_count")
    success = _total("success")
    queue = _total("queue")
    compute_infer = _total("compute_infer")
    batches = _total("batches")

    def request_done(self, seconds: float, queued: float, rows: int) -> None:
        """A request answered successfully after ``seconds`` (``queued`` of them in the batch queue)."""
        self._done.append((seconds, queued, rows))
        self._last_time = time.time()
        if len(self._done) >= _FOLD_AT:
            self.fold()

    def request_failed(self, seconds: float) -> None:
        self.fail.add(seconds)

    def batch_done(self, rows: int, requests: int, compute: float) -> None:
        """One model run of ``rows`` rows merged from ``requests`` requests took ``compute`` s."""
        self._runs.append((rows, requests, compute))
        if len(self._runs) >= _FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Add the queued requests and runs to the totals."""
        t = self._totals
        done, self._done = self._done, []
        for seconds, queued, rows in done:
            t.success.add(seconds)
            t.queue.add(queued)
            t.inference_count += rows
        if done:
            t.last_inference_ms = int(self._last_time * 1000)
        runs, self._runs = self._runs, []
        for rows, requests, compute in runs:
            t.execution_count += 1
            t.compute_infer.add(compute, requests)
            d = t.batches.get(rows)
            if d is None:
                d = t.batches[rows] = _Duration()
            d.add(compute)

    def _folded(self) -> _Totals:
        if self._done or self._runs:
            self.fold()
        return self._totals

    def to_triton(self, name: str, version: str) -> dict:
        """One element of Triton's ``model_stats`` list."""
        zero = {"count": 0, "ns": 0}
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_dict(),
                "fail": self.fail.to_dict(),
                "queue": self.queue.to_dict(),
                "compute_input": zero,
                "compute_infer": self.compute_infer.to_dict(),
                "compute_output": zero,
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "batch_stats": [
                {
                    "batch_size": rows,
                    "compute_input": {"count": d.count, "ns": 0},
                    "compute_infer": d.to_dict(),
                    "compute_output": {"count": d.count, "ns": 0},
                }
                for rows, d in sorted(self.batches.items())
            ],
        }
