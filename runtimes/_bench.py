"""Latency and throughput of a model package (in process) or of a running server (HTTP JSON,
HTTP binary, gRPC): what ``torchport bench`` prints and what benchmarks/ use.

Every run is one row: its settings (target, model, variant or protocol, batch, concurrency) and
its measures (requests, errors, p50/p90/p99 latency in ms, requests/s, rows/s).
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from torchport.runtimes._errors import UsageError
from torchport.runtimes._table import format_table

#: default size of non-batch dynamic dims (clamped into each dim's range); --dim NAME=N overrides
DEFAULT_DIM = 16


@dataclass
class BenchRow:
    """One measured point. ``mode`` is the variant (in process) or the protocol (json, binary, grpc)."""

    target: str
    model: str
    mode: str
    batch: int
    concurrency: int
    duration_s: float
    requests: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    rps: float

    @property
    def rows_per_s(self) -> float:
        return self.rps * self.batch

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rows_per_s"] = round(self.rows_per_s, 1)
        return d


class BenchResult(list):
    """The rows of one bench run; ``str()`` is the table, :meth:`to_json` the ``--json`` output."""

    def __str__(self) -> str:
        headers = ["target", "model", "mode", "batch", "conc", "requests", "errors"]
        headers += ["p50 ms", "p90 ms", "p99 ms", "req/s", "rows/s"]
        rows = [
            [r.target, r.model, r.mode, r.batch, r.concurrency, r.requests, r.errors]
            + [
                round(r.p50_ms, 3),
                round(r.p90_ms, 3),
                round(r.p99_ms, 3),
                int(round(r.rps)),
                int(round(r.rows_per_s)),
            ]
            for r in self
        ]
        return format_table(headers, rows)

    def to_json(self) -> str:
        return json.dumps([r.to_dict() for r in self], indent=2)


def summarize(latencies: Sequence[float], elapsed: float, errors: int = 0, **settings: Any) -> BenchRow:
    """A :class:`BenchRow` from per-request latencies (seconds) over ``elapsed`` seconds."""
    lat = np.sort(np.asarray(latencies, dtype=np.float64)) * 1000.0
    n = len(lat)

    def pct(p: float) -> float:
        return float(lat[min(n - 1, int(p * n))]) if n else float("nan")

    return BenchRow(
        **settings,
        duration_s=round(elapsed, 3),
        requests=n,
        errors=errors,
        p50_ms=pct(0.50),
        p90_ms=pct(0.90),
        p99_ms=pct(0.99),
        rps=n / elapsed if elapsed > 0 else 0.0,
    )


def parse_dims(items: Sequence[str]) -> dict[str, int]:
    """``["seq=128", "*=4"]`` -> ``{"seq": 128, "*": 4}``.

    Raises:
        UsageError: an item that is not NAME=N with N >= 1.
    """
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if not name or not value.isdigit() or int(value) < 1:
            raise UsageError(f"--dim {item!r}: expected NAME=N with N >= 1, e.g. --dim seq=128")
        out[name.strip()] = int(value)
    return out


def random_array(
    datatype: str, shape: Sequence[int], rng: np.random.Generator, spec: Any = None
) -> np.ndarray:
    """Random values of a protocol datatype (BF16 as its uint16 bits), from the manifest's ``spec``
    (its value range) when given."""
    from torchport.runtimes._inputs import random_tensor
    from torchport.runtimes._manifest import TensorSpec
    from torchport.runtimes.server._protocol import DTYPE_OF

    if datatype == "BF16":
        return np.zeros(shape, np.uint16)
    return random_tensor(spec or TensorSpec("x", DTYPE_OF[datatype], list(shape)), shape, rng)


def _timed_loop(
    run: Callable[[], object], concurrency: int, duration: float
) -> tuple[list[float], float, int]:
    """``concurrency`` threads call ``run`` for ``duration`` seconds: (latencies, elapsed, errors).

    Each thread makes at least one call, however late it starts (on a loaded machine a thread may
    first run after the deadline), so every row measures something.
    """
    latencies: list[float] = []
    errors = [0]
    deadline = time.perf_counter() + duration
    lock = threading.Lock()

    def worker() -> None:
        mine = []
        failed = 0
        while True:
            t0 = time.perf_counter()
            try:
                run()
            except Exception:
                failed += 1
            else:
                mine.append(time.perf_counter() - t0)
            if time.perf_counter() >= deadline:
                break
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start, errors[0]


def package_inputs(
    session: Any, batch: int, dims: dict[str, int], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Inputs for ``session`` at ``batch`` rows: other dynamic dims from ``dims`` or
    :data:`DEFAULT_DIM` clamped into their range."""
    from torchport.runtimes._dtypes import PROTOCOL_DATATYPES

    feeds = {}
    for spec in session.input_specs:
        shape = []
        for i, d in enumerate(spec.shape):
            if isinstance(d, int):
                shape.append(d)
            elif d == session.batch_dim or (i == 0 and d is None):
                shape.append(batch)
            else:
                rng_ = session.dynamic_dims.get(d) if d else None
                value = dims.get(d or "", dims.get("*", DEFAULT_DIM))
                if rng_ is not None:
                    value = min(max(value, rng_.min), rng_.max)
                shape.append(value)
        feeds[spec.name] = random_array(PROTOCOL_DATATYPES[spec.dtype], shape, rng, spec)
    return feeds


def bench_package(
    path: str | Path,
    *,
    variants: Sequence[str] | None = None,
    batches: Sequence[int] = (1,),
    concurrency: Sequence[int] = (1,),
    duration: float = 5.0,
    dims: dict[str, int] | None = None,
    providers: str | Sequence[str] = "cpu",
    intra_op_threads: int | None = None,
) -> BenchResult:
    """Time ``session.run`` of a package in this process, per variant, batch size and concurrency.

    Example:
        >>> print(bench_package("out/cnn", batches=[1, 8], concurrency=[1, 4], duration=2))  # doctest: +SKIP

    Raises:
        PackageError: the package is broken or has no such variant.
    """
    from torchport.runtimes._package import ModelPackage
    from torchport.runtimes._session import Session

    pkg = ModelPackage.load(path)
    names = list(variants) if variants else list(pkg.manifest.variants)
    result = BenchResult()
    rng = np.random.default_rng(0)
    for variant in names:
        sess = Session.from_package(
            pkg, variant=variant, providers=providers, intra_op_threads=intra_op_threads, warmup=3
        )
        for batch in batches:
            _check_batch(sess, batch)
            feeds = package_inputs(sess, batch, dims or {}, rng)
            sess.run(feeds)  # signature check once, then untimed warm-up at this shape
            for c in concurrency:
                run = functools.partial(sess.run, feeds, validate=False)
                lat, elapsed, errors = _timed_loop(run, c, duration)
                result.append(
                    summarize(
                        lat,
                        elapsed,
                        errors,
                        target="in-process",
                        model=pkg.manifest.name,
                        mode=variant,
                        batch=batch,
                        concurrency=c,
                    )
                )
    return result


def _check_batch(sess: Any, batch: int) -> None:
    if batch == 1:
        return
    if sess.batch_dim is None:
        raise UsageError(f"--batch {batch}: model {sess.name!r} has no batch dim; use --batch 1")
    r = sess.dynamic_dims.get(sess.batch_dim)
    if r is not None and not r.min <= batch <= r.max:
        raise UsageError(f"--batch {batch}: the package's batch dim takes {r.min}..{r.max}")
