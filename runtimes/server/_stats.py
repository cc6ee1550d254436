"""Per model-version statistics in the shape of Triton's statistics extension.

Counts and cumulative nanoseconds of successful and failed requests, time spent queued and
computing, and per batch size executions. Updated on the event loop thread only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


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

    def request_done(self, seconds: float, queued: float, rows: int) -> None:
        """A request answered successfully after ``seconds`` (``queued`` of them in the batch queue)."""
        self.success.add(seconds)
        self.queue.add(queued)
        self.inference_count += rows
        self.last_inference_ms = int(time.time() * 1000)

    def request_failed(self, seconds: float) -> None:
        self.fail.add(seconds)

    def batch_done(self, rows: int, requests: int, compute: float) -> None:
        """One model run of ``rows`` rows merged from ``requests`` requests took ``compute`` s."""
        self.execution_count += 1
        self.compute_infer.add(compute, requests)
        self.batches.setdefault(rows, _Duration()).add(compute)

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
