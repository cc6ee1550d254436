"""The idle fast path of ModelRunner: at concurrency 1 a tiny model answers in the iteration that
read the request; back-to-back requests still wait one iteration and share a run."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

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
