"""Requests that join at one step boundary are prefilled in groups of at most ``prefill_tokens`` padded
prompt tokens, and each group's first tokens are handed out before the next group's prefill runs (one
prefill of every joiner made each wait for all the others' prompts). Greedy tokens stay those of
generating each prompt alone."""

from __future__ import annotations

import asyncio
import re

import pytest

pytest.importorskip("transformers")

from tests.lm_models import exported_lm  # noqa: E402
from torchport.runtimes import Session  # noqa: E402
from torchport.runtimes._generate import Generator, GenRequest, SamplingParams  # noqa: E402
from torchport.runtimes.server._generate_engine import GenerationEngine, Job  # noqa: E402

#: prompt lengths 4, 4, 4, 4, 9, 3 (token ids within the tiny models' 96)
PROMPTS = [[1, 5, 9, 11], [1, 7, 3, 4], [1, 20, 21, 22], [1, 30, 31, 40], [1, *range(50, 58)], [1, 60, 61]]
NEW = 6


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    return Session.from_package(exported_lm("llama", tmp_path_factory.mktemp("prefill")).path)


def _run(engine: GenerationEngine) -> tuple[list[str], list[list[int]]]:
    """Submit every prompt while the engine waits (all join at its first boundary); return the
    engine's events (``add N``: a prefill of N prompts, ``first N``: their first tokens handed out,
    ``step``) and each job's tokens."""
    events: list[str] = []
    add, deliver = engine.batch.add, engine._deliver

    def recording_add(seqs):
        events.append(f"add {len(seqs)}")
        return add(seqs)

    def recording_deliver(tokens, rows=None):
        events.append("step" if rows is None else f"first {len(rows)}")
        return deliver(tokens, rows)

    engine.batch.add, engine._deliver = recording_add, recording_deliver

    async def go() -> list[list[int]]:
        loop = asyncio.get_running_loop()
        tokens: list[list[int]] = [[] for _ in PROMPTS]
        done = [loop.create_future() for _ in PROMPTS]
        with engine._cv:  # the loop's thread starts but waits for this lock: every job is waiting
            for i, prompt in enumerate(PROMPTS):
                params = SamplingParams(max_new_tokens=NEW, ignore_eos=True)
                engine.submit(
                    Job(
                        GenRequest(list(prompt), params),
                        lambda t, i=i: t is not None and tokens[i].append(t),
                        lambda exc, i=i: done[i].set_result(exc),
                        loop,
                    )
                )
        assert await asyncio.wait_for(asyncio.gather(*done), 60) == [None] * len(PROMPTS)
        return tokens

    try:
        return events, asyncio.run(go())
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("budget", "groups"),
    [
        (8, [2, 2, 1, 1]),  # 2 × 4 tokens fill a run; 9 tokens run alone; 3 after 9 would pad to 2 × 9
        (1, [1, 1, 1, 1, 1, 1]),  # each prompt on its own
        (10**6, [6]),  # one prefill of every joiner (as before groups)
    ],
)
def test_joiners_are_prefilled_group_by_group(session: Session, budget: int, groups: list[int]) -> None:
    events, tokens = _run(GenerationEngine(session, prefill_tokens=budget))
    assert events[: 2 * len(groups)] == [e for n in groups for e in (f"add {n}", f"first {n}")], events
    assert events[2 * len(groups)] == "step"  # the running batch decodes once every joiner is in
    alone = Generator(session)
    for prompt, got in zip(PROMPTS, tokens, strict=True):
        want = alone.generate([prompt], SamplingParams(max_new_tokens=NEW, ignore_eos=True)).tokens[0]
        assert got == want, prompt


def test_the_default_groups_prompts_of_about_128_tokens(session: Session) -> None:
    engine = GenerationEngine(session)
    assert engine.prefill_tokens == 128
    jobs = [
        Job(GenRequest([1] * n, SamplingParams()), print, print, None) for n in (32, 32, 32, 32, 32, 100, 20)
    ]
    sizes = [len(g) for g in engine._prefill_groups(jobs)]
    assert sizes == [4, 1, 1, 1]  # 4 × 32 = 128; 100 alone; 2 × 100 > 128


def test_a_failing_prefill_ends_every_joiner_with_the_error(session: Session) -> None:
    """A token id beyond the vocabulary passes the engine's check and fails in ONNX Runtime: the
    joiners of every group learn (none is left waiting), and the engine serves the next request."""
    engine = GenerationEngine(session, prefill_tokens=4)

    async def go() -> tuple[list[BaseException | None], list[int]]:
        loop = asyncio.get_running_loop()
        prompts = [[1, 5, 9], [1, 10**6, 3], [1, 7, 8]]  # three groups; the second fails
        done = [loop.create_future() for _ in prompts]
        with engine._cv:
            for prompt, fut in zip(prompts, done, strict=True):
                params = SamplingParams(max_new_tokens=NEW, ignore_eos=True)
                engine.submit(Job(GenRequest(prompt, params), lambda t: None, fut.set_result, loop))
        errors = await asyncio.wait_for(asyncio.gather(*done), 60)
        tokens: list[int] = []
        after = loop.create_future()
        params = SamplingParams(max_new_tokens=NEW, ignore_eos=True)
        engine.submit(
            Job(
                GenRequest([1, 5, 9], params),
                lambda t: t is not None and tokens.append(t),
                after.set_result,
                loop,
            )
        )
        assert await asyncio.wait_for(after, 60) is None
        return errors, tokens

    try:
        errors, tokens = asyncio.run(go())
    finally:
        engine.close()
    assert all(isinstance(e, Exception) for e in errors), errors
    assert any(re.search(r"out of (data )?bounds|invalid|index", str(e), re.I) for e in errors), errors
    want = Generator(session).generate([[1, 5, 9]], SamplingParams(max_new_tokens=NEW, ignore_eos=True))
    assert tokens == want.tokens[0]
