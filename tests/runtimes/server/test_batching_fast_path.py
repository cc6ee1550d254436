"""The idle fast path of ModelRunner: at concurrency 1 a tiny model answers in the iteration that
read the request; back-to-back requests still wait one iteration and share a run."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.runtimes.conftest import make_add_package
from torchport.runtimes import Session
from torchport.runtimes.server import ModelRunner


def test_idle_runner_runs_at_once_and_bursts_still_batch(tmp_path):
    sess = Session.from_package(make_add_package(tmp_path / "add").path, intra_op_threads=1)
    batches: list[tuple[int, int]] = []
    x = np.ones((1, 4), np.float32)

    async def main() -> None:
        with ThreadPoolExecutor(2) as pool:
            runner = ModelRunner(
                sess,
                pool,
                max_batch_size=8,
                workers=2,
                inline_below=1.0,
                on_batch=lambda rows, reqs, _t: batches.append((rows, reqs)),
            )
            first = runner.submit({"x": x})
            assert not first.done()  # no run timed yet: the normal path
            await first
            await asyncio.sleep(0.01)
            alone = runner.submit({"x": x})
            assert alone.done()  # idle, first of this iteration: ran at once
            np.testing.assert_array_equal(alone.result()[0]["z"], x + 1)
            await asyncio.sleep(0)
            burst = [runner.submit({"x": x * i}) for i in range(4)]
            assert burst[0].done()  # the first request of this iteration: at once
            assert not any(f.done() for f in burst[1:])  # the others of the same iteration share a run
            outs = await asyncio.gather(*burst)
            for i, (out, _queued) in enumerate(outs):
                np.testing.assert_array_equal(out["z"], x * i + 1)

    asyncio.run(main())
    assert batches == [(1, 1), (1, 1), (1, 1), (3, 3)]


def test_run_now_runs_an_idle_tiny_model_without_a_future_and_declines_otherwise(tmp_path):
    sess = Session.from_package(make_add_package(tmp_path / "add").path, intra_op_threads=1)
    batches: list[tuple[int, int]] = []
    x = np.ones((2, 4), np.float32)

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            runner = ModelRunner(
                sess,
                pool,
                max_batch_size=8,
                inline_below=1.0,
                on_batch=lambda rows, reqs, _t: batches.append((rows, reqs)),
            )
            assert runner.run_now({"x": x}) is None  # no run timed yet: submit() times one first
            await runner.submit({"x": x})
            await asyncio.sleep(0)
            out = runner.run_now({"x": x})
            np.testing.assert_array_equal(out["z"], x + 1)
            assert runner.run_now({"x": x}) is None  # a second request of this iteration batches
            await asyncio.sleep(0)
            queued = runner.submit({"x": x})  # the first of its iteration: runs at once
            await asyncio.sleep(0)
            pending = [runner.submit({"x": x}), runner.submit({"x": x})]
            assert runner.run_now({"x": x}) is None  # requests are queued: no jumping ahead of them
            await asyncio.gather(queued, *pending)
            with pytest.raises(Exception, match="x"):
                await asyncio.sleep(0)
                runner.run_now({"x": np.ones((1, 5), np.float32)})  # the model's error reaches the caller
            runner.inline_below = 0.0
            await asyncio.sleep(0)
            assert runner.run_now({"x": x}) is None  # inline runs turned off

    asyncio.run(main())
    assert batches[:2] == [(2, 1), (2, 1)]


def test_the_inline_decision_follows_the_median_run_not_one_slow_run(tmp_path):
    sess = Session.from_package(make_add_package(tmp_path / "add").path, intra_op_threads=1)
    runner = ModelRunner(sess, ThreadPoolExecutor(1), max_batch_size=8, inline_below=1e-3)
    runner._timed(1e-5)
    assert runner.typical_run == 1e-5 and runner._inline()
    for t in [1e-5] * 11 + [0.5, 0.4, 0.3]:  # a busy machine stalls three runs out of fifteen
        runner._timed(t)
    assert runner.typical_run == 1e-5 and runner._inline()
    for t in [2e-3] * 15:  # the model really got slower
        runner._timed(t)
    assert runner.typical_run == 2e-3 and not runner._inline()
