"""Dynamic batching: merge concurrent requests along the batch dim, run once, split the outputs back.

One :class:`ModelRunner` per served model. It lives on the event loop; model runs happen in a
thread pool (ONNX Runtime releases the GIL), at most ``workers`` batches at a time per model.

Rules:
- only requests with identical dtypes and identical non-batch dims are merged (one queue per
  such signature);
- a batch is dispatched when it holds ``max_batch_size`` rows, or when its oldest request has
  waited ``max_queue_delay``; while every worker is busy, requests keep accumulating and the next
  free worker takes up to ``max_batch_size`` rows at once. With ``max_queue_delay == 0`` nothing
  waits on purpose: a request runs as soon as a worker is free, together with whatever queued up
  (dispatch happens once per event-loop iteration, so requests read in the same iteration merge);
- a model without a batch dim (or ``max_batch_size <= 1``) is never batched: one request per run;
- a text model whose inputs are all ``[batch, seq]`` and include ``attention_mask`` merges requests of
  different lengths: each is right-padded with zeros (mask 0) to the longest, and outputs with the
  ``seq`` dim at axis 1 are cut back to each request's length (see :func:`padding_dim`);
- a model whose typical run (the median of its recent runs, so one run slowed down by a busy
  machine does not change the decision) takes under ``inline_below`` seconds runs on the event
  loop thread itself (a thread hand-off would cost more than the run); when such a runner is idle,
  the first request of a loop iteration runs at once, in the iteration that read it (concurrency 1
  pays no extra iteration, no future and no thread): :meth:`ModelRunner.run_now`; the requests read
  after it in that iteration batch as usual;
- when a merged run fails, its requests are re-run one by one so only the bad one gets the error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchport.runtimes._session import Session

log = logging.getLogger("torchport.server")

#: runs whose median decides whether the model is small enough to run on the event loop
_RECENT_RUNS = 15


@dataclass
class _Item:
    inputs: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future
    enqueued: float
    deadline: float


def padding_dim(session: Session) -> tuple[str, list[str]] | None:
    """``(seq dim name, outputs with it at axis 1)`` when requests of different lengths may be merged
    by padding: every input is ``[batch, seq]`` with the same ``seq`` dim and one is ``attention_mask``."""
    specs = session.input_specs
    if not specs or "attention_mask" not in {s.name for s in specs}:
        return None
    dims = {tuple(s.shape) for s in specs}
    if len(dims) != 1:
        return None
    (shape,) = dims
    if len(shape) != 2 or not isinstance(shape[1], str) or shape[0] != session.batch_dim:
        return None
    outputs = [o.name for o in session.output_specs if len(o.shape) >= 2 and o.shape[1] == shape[1]]
    return shape[1], outputs


def _pad_to(arr: np.ndarray, length: int) -> np.ndarray:
    if arr.shape[1] == length:
        return arr
    return np.pad(arr, [(0, 0), (0, length - arr.shape[1])])


class ModelRunner:
    """Runs one model's requests, batching them when the model has a batch dim.

    ``submit(inputs)`` returns an asyncio future resolving to ``(outputs, queue_seconds)``.
    ``on_batch(rows, requests, compute_seconds)`` is called on the loop after every run (metrics).
    """

    def __init__(
        self,
        session: Session,
        executor: Executor,
        *,
        max_batch_size: int = 1,
        max_queue_delay: float = 0.0,
        workers: int = 1,
        on_batch: Callable[[int, int, float], None] | None = None,
        inline_below: float = 0.0,
    ) -> None:
        self.session = session
        self.executor = executor
        self.batching = bool(session.batch_dim) and max_batch_size > 1
        self.max_batch_size = max_batch_size if self.batching else 1
        batch_range = session.dynamic_dims.get(session.batch_dim) if session.batch_dim else None
        if self.batching and batch_range is not None:
            self.max_batch_size = min(self.max_batch_size, batch_range.max)
        self.max_queue_delay = max_queue_delay if self.batching else 0.0
        #: merge different sequence lengths by padding (text models with an attention mask)
        self.padding = padding_dim(session) if self.batching else None
        self.workers = max(1, workers)
        self.on_batch = on_batch
        self.busy = 0
        self._queues: dict[tuple, deque[_Item]] = {}
        self._rows: dict[tuple, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dispatch_pending = False
        #: runs whose typical compute time is below this many seconds happen on the event loop
        #: (a thread hand-off costs more than such a run); 0 always uses the thread pool
        self.inline_below = inline_below
        #: the median of recent run times (None before the first run)
        self.typical_run: float | None = None
        self._recent: list[float] = []
        self._submitted_this_iteration = False
        #: libuv (uvloop) timers tick in whole milliseconds and may fire up to 1 ms late: aim 1 ms
        #: early there, so no request waits longer than max_queue_delay
        self._slack = 0.0

    def submit(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any] | None = None
    ) -> asyncio.Future:
        """Queue ``inputs`` for the next batch; ``parameters`` (the request's) are for runners whose
        model reads them (text generation), unused here."""
        loop = self._loop or asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._slack = 0.001 if type(loop).__module__.startswith("uvloop") else 0.0
        now = time.perf_counter()
        fut = loop.create_future()
        if self.batching:
            skip = 2 if self.padding is not None else 1  # padded merges ignore the seq length
            key = tuple((k, v.dtype.str, v.shape[skip:]) for k, v in sorted(inputs.items()))
            rows = next(iter(inputs.values())).shape[0] if inputs else 1
        else:
            key = ()
            rows = 1
        item = _Item(inputs, rows, fut, now, now + self.max_queue_delay)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            self._rows[key] = 0
        queue.append(item)
        self._rows[key] += rows
        first_this_iteration = not self._submitted_this_iteration
        if first_this_iteration:
            self._submitted_this_iteration = True
            loop.call_soon(self._new_iteration)
        if (
            first_this_iteration
            and not self._dispatch_pending
            and self.busy == 0
            and len(self._queues) == 1
            and len(queue) == 1
            and self.max_queue_delay == 0.0
            and self._inline()
        ):
            # an idle runner, a tiny model, the first request of this loop iteration (always so at
            # concurrency 1): run it now, so the answer goes out in this iteration, not two later
            self._dispatch()
            return fut
        if not self._dispatch_pending:
            # dispatch once per loop iteration, so requests read in the same iteration share a run
            self._dispatch_pending = True
            loop.call_soon(self._dispatch)
        return fut

    def run_now(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """Run ``inputs`` at once on the calling (event loop) thread and return the outputs, when
        :meth:`submit` would do so too (an idle runner, a tiny model, the first request of this loop
        iteration, no queue delay), without a future; ``None``: use :meth:`submit`.

        Raises:
            Exception: whatever the model run raised.
        """
        if (
            self._submitted_this_iteration
            or self._dispatch_pending
            or self.busy
            or self._queues
            or self.max_queue_delay
            or self._loop is None
            or not self._inline()
        ):
            return None
        self._submitted_this_iteration = True
        self._loop.call_soon(self._new_iteration)
        self.busy = 1
        started = time.perf_counter()
        try:
            out = self.session.run_prepared(inputs)
        finally:
            self.busy = 0
        compute = time.perf_counter() - started
        self._record(next(iter(inputs.values())).shape[0] if self.batching and inputs else 1, 1, compute)
        return out

    def _record(self, rows: int, requests: int, compute: float) -> None:
        """One finished run: its time for :attr:`typical_run`, then the ``on_batch`` callback."""
        self._timed(compute)
        if self.on_batch is not None:
            try:
                self.on_batch(rows, requests, compute)
            except Exception:  # pragma: no cover - metrics must never break serving
                log.exception("metrics callback failed")

    def _inline(self) -> bool:
        return self.typical_run is not None and self.typical_run < self.inline_below

    def _timed(self, compute: float) -> None:
        """Record one run's time; every few runs the median of them becomes :attr:`typical_run`."""
        recent = self._recent
        recent.append(compute)
        if self.typical_run is None or len(recent) >= _RECENT_RUNS:
            self.typical_run = sorted(recent)[len(recent) // 2]
            if len(recent) >= _RECENT_RUNS:
                recent.clear()

    def _new_iteration(self) -> None:
        self._submitted_this_iteration = False

    def _due_key(self, now: float) -> tuple | None:
        best, best_deadline = None, None
        for key, queue in self._queues.items():
            if not queue:
                continue
            head = queue[0]
            if self._rows[key] >= self.max_batch_size or head.deadline - self._slack <= now:
                if best_deadline is None or head.deadline < best_deadline:
                    best, best_deadline = key, head.deadline
        return best

    def _dispatch(self) -> None:
        self._dispatch_pending = False
        now = time.perf_counter()
        while self.busy < self.workers:
            key = self._due_key(now)
            if key is None:
                break
            queue = self._queues[key]
            batch = [queue.popleft()]
            rows = batch[0].rows
            while queue and rows + queue[0].rows <= self.max_batch_size:
                item = queue.popleft()
                batch.append(item)
                rows += item.rows
            self._rows[key] -= rows
            if not queue:
                del self._queues[key]
                del self._rows[key]
            self.busy += 1
            started = time.perf_counter()
            if self._inline():
                cf: Future = Future()
                try:
                    cf.set_result(self._run(batch))
                except BaseException as e:
                    cf.set_exception(e)
                self._done(cf, batch, rows, started, redispatch=False)
                continue
            cf = self.executor.submit(self._run, batch)
            loop = self._loop
            assert loop is not None  # set by the first submit, which runs on the loop

            def back_to_the_loop(
                f: Future,
                batch: list[_Item] = batch,
                rows: int = rows,
                started: float = started,
                back: asyncio.AbstractEventLoop = loop,
            ) -> None:  # on the executor's thread
                back.call_soon_threadsafe(self._done, f, batch, rows, started)

            cf.add_done_callback(back_to_the_loop)
        self._arm_timer(now)

    def _arm_timer(self, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.busy >= self.workers or not self._queues:
            return
        deadline = min(q[0].deadline for q in self._queues.values() if q) - self._slack
        loop = self._loop
        assert loop is not None  # set by the first submit, before anything is queued
        self._timer = loop.call_at(loop.time() + max(0.0, deadline - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _run(self, batch: list[_Item]) -> tuple[list[dict[str, np.ndarray] | BaseException], float]:
        """Worker thread: merge, run, split. A failing merged run is retried request by request,
        so that one bad request does not fail the others of its batch."""
        t0 = time.perf_counter()
        if len(batch) == 1:
            outputs: list[dict[str, np.ndarray] | BaseException] = [
                self.session.run_prepared(batch[0].inputs)
            ]
            return outputs, time.perf_counter() - t0
        names = list(batch[0].inputs)
        lengths = [next(iter(it.inputs.values())).shape[1] for it in batch] if self.padding else []
        longest = max(lengths, default=0)
        merged = {
            n: np.concatenate(
                [_pad_to(it.inputs[n], longest) if lengths else it.inputs[n] for it in batch], axis=0
            )
            for n in names
        }
        try:
            result = self.session.run_prepared(merged)
        except Exception:
            outputs = []
            for it in batch:
                try:
                    outputs.append(self.session.run_prepared(it.inputs))
                except Exception as e:
                    outputs.append(e)
            return outputs, time.perf_counter() - t0
        outputs = []
        start = 0
        cut = set(self.padding[1]) if self.padding and len(set(lengths)) > 1 else set()
        for i, it in enumerate(batch):
            stop = start + it.rows
            outputs.append(
                {k: v[start:stop, : lengths[i]] if k in cut else v[start:stop] for k, v in result.items()}
            )
            start = stop
        return outputs, time.perf_counter() - t0

    def _done(
        self, cf: Future, batch: list[_Item], rows: int, started: float, redispatch: bool = True
    ) -> None:
        self.busy -= 1
        try:
            outputs, compute = cf.result()
        except BaseException as e:  # a failure inside the model: every request of the batch gets it
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(e)
        else:
            for it, out in zip(batch, outputs, strict=True):
                if it.future.done():
                    continue
                if isinstance(out, BaseException):
                    it.future.set_exception(out)
                else:
                    it.future.set_result((out, started - it.enqueued))
            self._record(rows, len(batch), compute)
        if redispatch:
            self._dispatch()
