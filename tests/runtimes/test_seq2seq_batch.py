"""Continuous batching for encoder-decoders: requests of different source lengths, joining at
different steps, decode in ONE decoder run per step and get the tokens each gets alone."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")

from tests.seq2seq_models import exported_seq2seq  # noqa: E402
from torchport.runtimes import Session  # noqa: E402
from torchport.runtimes._generate import Generator, GenRequest, SamplingParams, Seq2SeqBatch  # noqa: E402

PROMPTS = [[5, 17, 9, 33, 2], [44, 2], [7, 8, 9, 10, 11, 12, 13, 14, 15, 2], [61, 62, 63, 2]]
#: (prompt index, step it joins at, max new tokens)
PLAN = [(0, 0, 12), (1, 2, 5), (2, 2, 9), (3, 6, 8)]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("s2s-batch")


class _Counting:
    """The decoder session's runs counted (the real ONNX Runtime session underneath)."""

    def __init__(self, sess: object) -> None:
        self.sess = sess
        self.runs = 0

    def run(self, names: list[str], feeds: dict) -> list:
        self.runs += 1
        return self.sess.run(names, feeds)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["t5", "bart"])  # relative position bias; learned absolute positions
def test_rows_joining_at_different_steps_share_one_decoder_run_and_match_each_alone(
    root: Path, name: str
) -> None:
    session = Session.from_package(exported_seq2seq(name, root).package.path)
    alone = [
        Generator(session).generate([PROMPTS[i]], max_new_tokens=n, ignore_eos=True).tokens[0]
        for i, _, n in PLAN
    ]
    batch = Seq2SeqBatch(session)
    assert batch.spec.decoder_mask
    counter = _Counting(batch._sess)
    batch._sess = counter
    rows = [
        GenRequest(list(PROMPTS[i]), SamplingParams(max_new_tokens=n, ignore_eos=True)) for i, _, n in PLAN
    ]
    step = 0
    widths = set()
    while step == 0 or batch.rows:
        joining = [rows[k] for k, (_, at, _) in enumerate(PLAN) if at == step]
        if joining:
            batch.add(joining)
        before = counter.runs
        batch.step()
        assert len(batch.cohorts) == 1 and counter.runs == before + 1  # every running row in one run
        widths.add(batch.cohorts[0].cross[0].shape[2])
        batch.drop_finished()
        step += 1
    assert [r.tokens for r in rows] == alone
    assert [r.finish_reason for r in rows] == ["length"] * len(rows)
    assert max(widths) == max(len(p) for p in PROMPTS)  # cross keys padded to the longest source
    assert min(widths) < max(widths)  # and cut back when the longest left


def test_without_joining_each_cohort_runs_apart_and_gives_the_same_tokens(root: Path) -> None:
    """``join = False`` (what a package whose decoder takes no mask gets): one run per cohort."""
    session = Session.from_package(exported_seq2seq("t5", root).package.path)
    batch = Seq2SeqBatch(session)
    batch.join = False
    counter = _Counting(batch._sess)
    batch._sess = counter
    a = GenRequest(list(PROMPTS[0]), SamplingParams(max_new_tokens=6, ignore_eos=True))
    b = GenRequest(list(PROMPTS[1]), SamplingParams(max_new_tokens=6, ignore_eos=True))
    batch.add([a])
    batch.step()
    batch.add([b])
    assert len(batch.cohorts) == 2
    before = counter.runs
    batch.step()
    assert counter.runs == before + 2
    while batch.rows:
        batch.step()
        batch.drop_finished()
    gen = Generator(session)
    assert [a.tokens, b.tokens] == [
        gen.generate([PROMPTS[0]], max_new_tokens=6, ignore_eos=True).tokens[0],
        gen.generate([PROMPTS[1]], max_new_tokens=6, ignore_eos=True).tokens[0],
    ]
