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
class ModelStats:
    """Statistics of one model version (see :meth:`to_triton`)."""

    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    batches: dict[int, _Duration] = field(default_factory=dict)
    #: requests and runs not added to the totals yet (see :meth:`fold`)
    _done: list[tuple[float, float, int]] = field(default_factory=list, repr=False, compare=False)
    _runs: list[tuple[int, int, float]] = field(default_factory=list, repr=False, compare=False)
    _last_time: float = field(default=0.0, repr=False, compare=False)

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
        """Add the queued requests and runs to the totals (the request path only queues them)."""
        done, self._done = self._done, []
        for seconds, queued, rows in done:
            self.success.add(seconds)
            self.queue.add(queued)
            self.inference_count += rows
        if done:
            self.last_inference_ms = int(self._last_time * 1000)
        runs, self._runs = self._runs, []
        for rows, requests, compute in runs:
            self.execution_count += 1
            self.compute_infer.add(compute, requests)
            d = self.batches.get(rows)
            if d is None:
                d = self.batches[rows] = _Duration()
            d.add(compute)

    def to_triton(self, name: str, version: str) -> dict:
        """One element of Triton's ``model_stats`` list."""
        self.fold()
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
