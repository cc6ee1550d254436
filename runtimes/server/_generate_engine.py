"""Continuous batching for text generation: one decode loop per model on its own thread.

Requests wait in a queue; at every step boundary the loop drops finished and cancelled sequences
from the running :class:`~torchport.runtimes._generate.DecodeBatch`, lets waiting requests join (their
prompts run as prefills, their caches left-padded to the batch's), then runs one decode step for
the whole batch. Each new token goes to its request's ``on_token`` callback on the event loop.

Joiners are prefilled in groups of at most ``prefill_tokens`` padded prompt tokens, in arrival order,
each group's first tokens sent as soon as its run is done. A prefill run costs about a decode step
(reading the weights) plus a share per token that dominates past a few dozen tokens, so one run of
every joiner made each wait for all the others' prompts (8 streams of 32-token prompts: the 7 that
joined a running stream all got their first token after one 224-token prefill), while groups of
about 128 tokens keep ~90% of a single run's efficiency and short prompts still share a run.
A client that goes away cancels its request, which frees its row at the next boundary.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torchport.runtimes._generate import GenRequest, decode_batch

log = logging.getLogger("torchport.server")

__all__ = ["GenerationEngine", "Job"]

#: default padded prompt tokens per prefill run of joiners (see the module docstring)
PREFILL_TOKENS = 128


@dataclass
class Job:
    """One generate request inside the engine.

    Attributes:
        request: the sequence (prompt, sampling parameters, generated tokens).
        on_token: called on the event loop with each new token id (``None`` when the sequence ends
            without a new token).
        on_done: called on the event loop once, with ``None`` or the exception that ended the job.
    """

    request: GenRequest
    on_token: Callable[[int | None], None]
    on_done: Callable[[BaseException | None], None]
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    cancelled: bool = False
    done: bool = False
    ended: bool = False  #: the end (``None``) was sent to on_token

    def cancel(self) -> None:
        """Ask the engine to drop this job at the next step boundary (the client went away)."""
        self.cancelled = True


class GenerationEngine:
    """The decode loop of one model (started on the first job, idle without jobs).

    Attributes:
        batch: the running :class:`DecodeBatch` (``batch.spec`` is the decoder signature).
        max_batch: most sequences decoded together.
        prefill_tokens: the padded prompt tokens (rows × longest prompt) one prefill run of joiners
            takes at most (a longer prompt runs alone).
        steps / peak_batch: counters for tests and metrics.
    """

    def __init__(self, session: Any, *, max_batch: int = 16, prefill_tokens: int = PREFILL_TOKENS) -> None:
        self.batch = decode_batch(session)
        self.max_batch = max(1, min(max_batch, self.batch.spec.max_batch))
        self.prefill_tokens = max(1, prefill_tokens)
        self._waiting: deque[Job] = deque()
        self._running: dict[int, Job] = {}
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._retired = False
        self.steps = 0
        self.peak_batch = 0

    def check(self, request: GenRequest) -> None:
        """Refuse a request the model cannot serve (raises :class:`InferenceInputError`)."""
        self.batch.check(request)

    def submit(self, job: Job) -> None:
        with self._cv:
            self._waiting.append(job)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="torchport-generate", daemon=True)
                self._thread.start()
            self._cv.notify()

    def close(self) -> None:
        """Stop now: running and waiting jobs end with an error."""
        with self._cv:
            self._stop = True
            self._cv.notify()

    def retire(self) -> None:
        """The model version is no longer served: the loop's thread ends once the jobs it holds are
        done (running streams finish, as requests already running on a swapped-out version do). A job
        submitted later still runs, on a thread that also ends when idle."""
        with self._cv:
            self._retired = True
            self._cv.notify()

    @property
    def running(self) -> bool:
        """Whether the loop's thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def active(self) -> int:
        """Sequences in the running batch."""
        return len(self.batch.rows)

    # -- the loop (engine thread) -----------------------------------------------------------------

    def _finish(self, job: Job, exc: BaseException | None = None) -> None:
        if not job.done:
            job.done = True
            job.loop.call_soon_threadsafe(job.on_done, exc)

    def _admit(self) -> list[Job]:
        """Waiting jobs that join now (as many as fit the batch and the model's positions)."""
        joining: list[Job] = []
        with self._cv:
            while self._waiting and len(self.batch.rows) + len(joining) < self.max_batch:
                job = self._waiting[0]
                if job.cancelled:
                    self._waiting.popleft()
                    self._finish(job)
                    continue
                if self.batch.rows and not self.batch.fits(job.request):
                    break  # joins when the batch has shrunk
                joining.append(self._waiting.popleft())
        return joining

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._waiting and not self.batch.rows and not self._stop:
                    if self._retired:
                        self._thread = None  # under the lock: a later submit starts a new thread
                        return
                    self._cv.wait()
                if self._stop:
                    jobs = list(self._waiting) + list(self._running.values())
                    self._waiting.clear()
                    for job in jobs:
                        self._finish(job, RuntimeError("the server is shutting down"))
                    self._thread = None
                    return
            try:
                self._boundary()
                if self.batch.rows:
                    tokens = self.batch.step()
                    self.steps += 1
                    self._deliver(tokens)
            except Exception as e:  # noqa: BLE001 - every running job learns; the loop goes on
                log.exception("generation step failed")
                for job in list(self._running.values()):
                    self._finish(job, e)
                self._running.clear()
                self.batch.drop([False] * len(self.batch.rows))

    def _boundary(self) -> None:
        rows = self.batch.rows
        keep = [not (r.finished or self._running[id(r)].cancelled) for r in rows]
        for row in self.batch.drop(keep):
            self._finish(self._running.pop(id(row)))
        joining = self._admit()
        for job in joining:  # running from now on: a failed prefill ends them with its error
            self._running[id(job.request)] = job
        for group in self._prefill_groups(joining):
            first = self.batch.add([j.request for j in group])
            self._deliver(first, rows=[j.request for j in group])
        self.peak_batch = max(self.peak_batch, len(self.batch.rows))

    def _prefill_groups(self, joining: list[Job]) -> list[list[Job]]:
        """``joining`` in arrival order, cut into runs of at most ``prefill_tokens`` padded tokens."""
        groups: list[list[Job]] = []
        longest = 0
        for job in joining:
            n = len(job.request.prompt)
            if groups and (len(groups[-1]) + 1) * max(longest, n) <= self.prefill_tokens:
                groups[-1].append(job)
                longest = max(longest, n)
            else:
                groups.append([job])
                longest = n
        return groups

    def _deliver(self, tokens: list[int | None], rows: list[GenRequest] | None = None) -> None:
        """Hand this step's tokens to their jobs: one event-loop wake-up per step, not per token."""
        calls: dict[Any, list[tuple[Callable[[int | None], None], int | None]]] = {}
        for row, token in zip(rows if rows is not None else self.batch.rows, tokens, strict=True):
            job = self._running[id(row)]
            if token is not None:
                calls.setdefault(job.loop, []).append((job.on_token, token))
            if row.finished and not job.ended:
                job.ended = True
                calls.setdefault(job.loop, []).append((job.on_token, None))
        for loop, batch in calls.items():
            loop.call_soon_threadsafe(_call_all, batch)


def _call_all(calls: list[tuple[Callable[[int | None], None], int | None]]) -> None:
    for fn, token in calls:
        try:
            fn(token)
        except Exception:  # noqa: BLE001 - one stream's failure must not stop the others
            log.exception("delivering a generated token failed")
