"""runtimes._logits: each rule equals Hugging Face's logits processor on the same ids and scores; the
sampling warpers draw from the distribution they define, reproducibly per seed."""

from __future__ import annotations

import numpy as np
import pytest

from torchport.runtimes._errors import InferenceInputError
from torchport.runtimes._logits import LogitsRules, check_bad_words, pick, softmax, warp

torch = pytest.importorskip("torch")
lp = pytest.importorskip("transformers.generation.logits_process")

VOCAB = 40
EOS = 2


def _hf(processors: list, history: list[int], scores: np.ndarray) -> np.ndarray:
    ids = torch.tensor([history])
    out = torch.from_numpy(scores.copy())[None]
    for p in processors:
        out = p(ids, out)
    return out[0].numpy()


def _same(ours: np.ndarray, ref: np.ndarray) -> None:
    assert np.array_equal(np.isinf(ours), np.isinf(ref))
    finite = ~np.isinf(ref)
    np.testing.assert_allclose(ours[finite], ref[finite], rtol=1e-6)


@pytest.mark.parametrize("length", [1, 2, 5, 9])
def test_each_rule_equals_hugging_face_processor(length: int) -> None:
    rng = np.random.default_rng(length)
    history = [0, *rng.integers(3, 8, length - 1).tolist()]  # few ids: n-grams and bad words repeat
    scores = rng.standard_normal(VOCAB).astype(np.float32)
    prompt = 1
    max_length = prompt + 6
    cases = [
        (LogitsRules(repetition_penalty=1.7), [lp.RepetitionPenaltyLogitsProcessor(1.7)]),
        (LogitsRules(repetition_penalty=0.6), [lp.RepetitionPenaltyLogitsProcessor(0.6)]),
        (LogitsRules(no_repeat_ngram_size=2), [lp.NoRepeatNGramLogitsProcessor(2)]),
        (LogitsRules(no_repeat_ngram_size=3), [lp.NoRepeatNGramLogitsProcessor(3)]),
        (LogitsRules(no_repeat_ngram_size=1), [lp.NoRepeatNGramLogitsProcessor(1)]),
        (
            LogitsRules(eos_token_ids=(EOS,), bad_words_ids=((5,), (3, 4), (EOS,), (4, 5, 6))),
            [lp.NoBadWordsLogitsProcessor([[5], [3, 4], [EOS], [4, 5, 6]], EOS)],
        ),
        (LogitsRules(eos_token_ids=(EOS,), min_length=4), [lp.MinLengthLogitsProcessor(4, EOS)]),
        (
            LogitsRules(eos_token_ids=(EOS,), min_new_tokens=3),
            [lp.MinNewTokensLengthLogitsProcessor(prompt, 3, EOS)],
        ),
        (LogitsRules(forced_bos_token_id=7), [lp.ForcedBOSTokenLogitsProcessor(7)]),
        (LogitsRules(forced_eos_token_id=EOS), [lp.ForcedEOSTokenLogitsProcessor(max_length, EOS)]),
        (LogitsRules(suppress_tokens=(3, 9)), [lp.SuppressTokensLogitsProcessor([3, 9])]),
        (
            LogitsRules(begin_suppress_tokens=(4,)),
            [lp.SuppressTokensAtBeginLogitsProcessor([4], prompt)],
        ),
        (  # several at once, in generate's order
            LogitsRules(
                eos_token_ids=(EOS,),
                repetition_penalty=1.3,
                no_repeat_ngram_size=2,
                bad_words_ids=((6,),),
                min_new_tokens=2,
                suppress_tokens=(11,),
            ),
            [
                lp.RepetitionPenaltyLogitsProcessor(1.3),
                lp.NoRepeatNGramLogitsProcessor(2),
                lp.NoBadWordsLogitsProcessor([[6]], EOS),
                lp.MinNewTokensLengthLogitsProcessor(prompt, 2, EOS),
                lp.SuppressTokensLogitsProcessor([11]),
            ],
        ),
    ]
    for rules, hf in cases:
        assert rules.active
        _same(rules.apply(scores, history, prompt, max_length), _hf(hf, history, scores))
    assert not LogitsRules(eos_token_ids=(EOS,)).active
    np.testing.assert_array_equal(LogitsRules().apply(scores, history, prompt, max_length), scores)


def test_begin_suppression_waits_for_a_forced_bos_as_generate_does() -> None:
    rules = LogitsRules(begin_suppress_tokens=(4,), forced_bos_token_id=7)
    scores = np.zeros(VOCAB, np.float32)
    assert not np.isinf(rules.apply(scores, [0], 1, 9)[7])  # step 0: BOS is forced, 4 is not suppressed yet
    assert np.isinf(rules.apply(scores, [0, 7], 1, 9)[4])  # step 1: suppressed


def test_the_request_overrides_the_generation_config() -> None:
    from torchport.runtimes._generate import SamplingParams

    model = LogitsRules(eos_token_ids=(EOS,), suppress_tokens=(9,))
    config = {"no_repeat_ngram_size": 3, "min_length": 5, "repetition_penalty": 1.2, "bad_words_ids": [[8]]}
    rules = model.with_request(SamplingParams(), config)
    assert (rules.no_repeat_ngram_size, rules.min_length, rules.repetition_penalty) == (3, 5, 1.2)
    assert rules.bad_words_ids == ((8,),) and rules.suppress_tokens == (9,)
    mine = model.with_request(SamplingParams(no_repeat_ngram_size=2, repetition_penalty=1.5), config)
    assert (mine.no_repeat_ngram_size, mine.repetition_penalty) == (2, 1.5)
    with pytest.raises(InferenceInputError, match="bad_words_ids must be a list of non-empty lists"):
        check_bad_words([[1], []])
    with pytest.raises(InferenceInputError, match="no_repeat_ngram_size must be an integer >= 0"):
        SamplingParams(no_repeat_ngram_size=-1).check()
    with pytest.raises(InferenceInputError, match="bad_words_ids must be a list"):
        SamplingParams(bad_words_ids=((-1,),)).check()


def test_warpers_equal_hugging_face_and_sampling_follows_their_distribution() -> None:
    rng = np.random.default_rng(3)
    scores = rng.standard_normal(VOCAB).astype(np.float32) * 2
    for t, k, p in ((0.7, 0, 1.0), (1.0, 5, 1.0), (1.0, 0, 0.8), (1.3, 10, 0.9)):
        hf = [lp.TemperatureLogitsWarper(t)] if t != 1.0 else []
        hf += [lp.TopKLogitsWarper(k)] if k else []
        hf += [lp.TopPLogitsWarper(p)] if p < 1 else []
        _same(warp(scores, t, k, p), _hf(hf, [0], scores))
    # seeded draws: the same seed gives the same tokens; top_k=1 is greedy
    warped = warp(scores, 0.8, 8, 0.9)
    draws = [pick(warped, True, np.random.default_rng(11)) for _ in range(3)]
    assert len(set(draws)) == 1
    assert all(
        pick(warp(scores, 1.5, 1), True, np.random.default_rng(s)) == np.argmax(scores) for s in range(5)
    )
    # the empirical distribution of 20000 seeded draws is the warped softmax (total variation < 0.03)
    g = np.random.default_rng(0)
    counts = np.bincount([pick(warped, True, g) for _ in range(20000)], minlength=VOCAB)
    expected = softmax(warped)
    assert counts[expected == 0].sum() == 0  # nothing outside top-k / top-p is ever drawn
    assert 0.5 * np.abs(counts / counts.sum() - expected).sum() < 0.03


def test_whisper_timestamp_rules_equal_hugging_face() -> None:
    from types import SimpleNamespace

    from torchport.runtimes._logits import Timestamps

    vocab, eos, notime, begin = 60, 40, 45, 3  # timestamps: 46..59
    first = notime + 1
    rng = np.random.default_rng(5)
    hits = {"text banned": 0, "stamps banned": 0, "forced stamp": 0}
    for case in range(120):
        n = int(rng.integers(0, 6))
        gen = [
            int(t) if rng.random() < 0.5 else int(rng.integers(first, vocab)) for t in rng.integers(3, 30, n)
        ]
        history = [1, 7, 8, *gen]
        scores = (rng.standard_normal(vocab) * 3).astype(np.float32)
        scores[first:] += rng.normal(0, 2)  # sometimes the timestamps' mass wins
        max_initial = None if case % 2 else 4
        config = SimpleNamespace(
            no_timestamps_token_id=notime,
            eos_token_id=eos,
            bos_token_id=eos,
            max_initial_timestamp_index=max_initial,
        )
        hf = lp.WhisperTimeStampLogitsProcessor(config, begin_index=begin)
        want = _hf([hf], history, scores)
        rules = LogitsRules(eos_token_ids=(eos,), timestamps=Timestamps(notime, eos, max_initial))
        got = rules.apply(scores, history, begin, begin + 10)
        _same(got, want)
        hits["text banned"] += bool(np.isinf(got[:eos]).all())
        hits["stamps banned"] += bool(np.isinf(got[first:]).all())
        hits["forced stamp"] += bool(np.isinf(got[:first]).all() and len(history) > begin)
    assert all(v > 3 for v in hits.values()), hits  # every branch of the rules ran
