"""The torch-free generate loop against Hugging Face ``generate`` on tiny random causal LMs."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from tests.lm_models import exported_lm  # noqa: E402
from torchport.runtimes import InferenceInputError, SamplingParams, Session, TextCodec, UsageError  # noqa: E402
from torchport.runtimes._generate import DecodeBatch, Generator, GenRequest  # noqa: E402
from torchport.runtimes._tokenizer import IncrementalDecoder  # noqa: E402

N = 64
PROMPTS = [[1, 5, 9, 14, 3, 7, 20, 11], [1, 30, 4], [1, 8, 8, 60, 2]]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lm-gen")


def _hf_generate(
    folder: Path, prompts: list[list[int]], config: dict[str, object] | None = None, **kwargs: object
) -> list[list[int]]:
    """Hugging Face generate on the same prompts, left-padded with the pad id 0 (``config``: fields
    changed on the model's config before generating)."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    for key, value in (config or {}).items():
        setattr(model.config, key, value)
    longest = max(map(len, prompts))
    ids = torch.tensor([[0] * (longest - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=0, **kwargs)
    return out[:, longest:].tolist()


@pytest.mark.parametrize("name", ["llama", "gpt2", pytest.param("qwen2_moe", marks=pytest.mark.slow)])
def test_greedy_equals_hugging_face(name: str, root: Path) -> None:
    """64 new tokens, a batch of prompts of different lengths (left padding): every token equal."""
    result = exported_lm(name, root)
    sess = Session.from_package(result.path)
    got = sess.generate(PROMPTS, max_new_tokens=N, ignore_eos=True)
    want = _hf_generate(
        root / f"src-{name}", PROMPTS, do_sample=False, max_new_tokens=N, min_new_tokens=N, eos_token_id=None
    )
    assert got.tokens == want
    assert got.finish_reasons == ["length"] * 3 and all(len(t) == N for t in got.tokens)
    # each prompt alone gives the tokens it gives in the padded batch
    assert sess.generate(PROMPTS[1], max_new_tokens=N, ignore_eos=True).tokens[0] == want[1]


def test_rotary_inside_the_attention_equals_hugging_face(root: Path) -> None:
    """A decoder whose attention rotates itself takes unpadded prompts only: prompts of different
    lengths run apart and join one left-padded batch, a row joining a running batch too; every token
    equals Hugging Face's left-padded batch and each prompt alone."""
    result = exported_lm("llama_head16", root, level="basic")
    sess = Session.from_package(result.path)
    assert DecodeBatch(sess).spec.unpadded_prompts
    want = _hf_generate(
        root / "src-llama_head16",
        PROMPTS,
        do_sample=False,
        max_new_tokens=24,
        min_new_tokens=24,
        eos_token_id=None,
    )
    assert sess.generate(PROMPTS, max_new_tokens=24, ignore_eos=True).tokens == want
    batch = DecodeBatch(sess)
    reqs = [GenRequest(p, SamplingParams(max_new_tokens=24, ignore_eos=True)) for p in PROMPTS]
    batch.add(reqs[:1])
    for _ in range(5):
        batch.step()
    batch.add(reqs[1:])  # two lengths: two prompt runs, rows in the order given
    assert [r is q for r, q in zip(batch.rows, reqs, strict=True)] == [True] * 3
    while batch.rows:
        batch.step()
        batch.drop_finished()
    assert [r.tokens for r in reqs] == want


def test_sliding_window_past_the_window_equals_hugging_face(root: Path) -> None:
    """Mistral with a 16-token window: 40 tokens past the window, batched prompts of different lengths,
    equal to Hugging Face generate (whose cache drops what leaves the window)."""
    result = exported_lm("mistral_sw", root)
    generation = result.manifest.extra["generation"]
    assert generation["sliding_window"] == 16 and generation["max_positions"] == 128
    sess = Session.from_package(result.path)
    got = sess.generate(PROMPTS, max_new_tokens=40, ignore_eos=True)
    greedy = {"do_sample": False, "max_new_tokens": 40, "min_new_tokens": 40, "eos_token_id": None}
    want = _hf_generate(root / "src-mistral_sw", PROMPTS, **greedy)
    assert got.tokens == want
    # the window matters: the same weights attending to every position give other tokens
    assert _hf_generate(root / "src-mistral_sw", PROMPTS, config={"sliding_window": None}, **greedy) != want
    with pytest.raises(InferenceInputError, match=r"exceeds the model's 128 positions; ask for at most 120"):
        sess.generate(PROMPTS[0], max_new_tokens=121)


def test_eos_and_repetition_penalty_as_hugging_face(root: Path) -> None:
    result = exported_lm("llama", root)
    sess = Session.from_package(result.path)
    prompt = [PROMPTS[0]]
    got = sess.generate(prompt, max_new_tokens=N, repetition_penalty=1.3)
    want = _hf_generate(
        root / "src-llama", prompt, do_sample=False, max_new_tokens=N, repetition_penalty=1.3
    )[0]
    if 2 in want:  # Hugging Face keeps the EOS token, torchport's output stops before it
        assert got.finish_reasons == ["stop"] and got.tokens[0] == want[: want.index(2)]
    else:
        assert got.tokens[0] == want
    plain = sess.generate(prompt, max_new_tokens=N, ignore_eos=True).tokens[0]
    assert got.tokens[0] != plain[: len(got.tokens[0])] or len(got.tokens[0]) < 4
    stopped = sess.generate(prompt, max_new_tokens=N, ignore_eos=True, stop_token_ids=(plain[5],))
    assert stopped.tokens[0] == plain[: plain.index(plain[5])] and stopped.finish_reasons == ["stop"]


def test_logits_processors_as_hugging_face(root: Path) -> None:
    """no_repeat_ngram_size, bad_words_ids, repetition_penalty (runtimes._logits) on a decoder: equal to
    Hugging Face generate with the same settings, and each changes the plain greedy tokens."""
    result = exported_lm("llama", root)
    sess = Session.from_package(result.path)
    prompt = [PROMPTS[0]]
    plain = sess.generate(prompt, max_new_tokens=24, ignore_eos=True).tokens[0]
    words = [t for t in plain if t != 2]  # EOS is never a bad word (as in Hugging Face with EOS set)
    for kw in (
        {"no_repeat_ngram_size": 2},
        {"bad_words_ids": ((words[0],), (words[2], words[3]))},
        {"no_repeat_ngram_size": 3, "repetition_penalty": 1.2},
    ):
        got = sess.generate(prompt, max_new_tokens=24, ignore_eos=True, **kw).tokens[0]
        hf_kw = {k: [list(b) for b in v] if k == "bad_words_ids" else v for k, v in kw.items()}
        want = _hf_generate(
            root / "src-llama", prompt, do_sample=False, max_new_tokens=24, min_new_tokens=24,
            eos_token_id=None, **hf_kw,
        )[0]  # fmt: skip
        assert got == want, kw
        assert got != plain, kw


def test_seeded_sampling_is_reproducible(root: Path) -> None:
    sess = Session.from_package(exported_lm("llama", root).path)
    kw = {
        "max_new_tokens": 32,
        "do_sample": True,
        "temperature": 1.5,
        "top_k": 50,
        "top_p": 0.95,
        "ignore_eos": True,
    }
    a = sess.generate(PROMPTS, seed=7, **kw).tokens
    assert a == sess.generate(PROMPTS, seed=7, **kw).tokens
    assert a != sess.generate(PROMPTS, seed=8, **kw).tokens
    greedy = sess.generate(PROMPTS, max_new_tokens=32, ignore_eos=True).tokens
    assert a != greedy
    assert sess.generate(PROMPTS, seed=1, **{**kw, "top_k": 1}).tokens == greedy  # top-k 1 is greedy


def test_streaming_and_joining_a_running_batch(root: Path) -> None:
    sess = Session.from_package(exported_lm("llama", root).path)
    alone = [sess.generate(p, max_new_tokens=20, ignore_eos=True).tokens[0] for p in PROMPTS]
    steps = list(Generator(sess).stream(PROMPTS[:1], max_new_tokens=20, ignore_eos=True))
    assert [s[0] for s in steps] == alone[0]

    # continuous batching: sequences join at step boundaries and leave when done
    batch = DecodeBatch(sess)
    reqs = [GenRequest(p, SamplingParams(max_new_tokens=20, ignore_eos=True)) for p in PROMPTS]
    batch.add(reqs[:1])
    for _ in range(5):
        batch.step()
    batch.add(reqs[1:2])
    for _ in range(7):
        batch.step()
    batch.add(reqs[2:])
    while batch.rows:
        batch.step()
        batch.drop_finished()
    assert [r.tokens for r in reqs] == alone


def test_the_cache_is_one_buffer_per_layer_written_in_place(root: Path) -> None:
    """A fused-attention package: each layer's keys/values live in one pre-allocated buffer that is
    both the past and the present of every step (no step copies the cache); it grows when full."""
    sess = Session.from_package(exported_lm("llama", root).path)
    batch = DecodeBatch(sess)
    assert batch.spec.shared_buffer
    row = GenRequest(PROMPTS[0], SamplingParams(max_new_tokens=6, ignore_eos=True))
    batch.add([row])
    buffers = list(batch.past)
    pointers = [b.data_ptr() for b in buffers]
    assert buffers[0].shape()[2] == len(PROMPTS[0]) + 6  # room for the prompt and every new token
    for _ in range(5):
        batch.step()
    assert [b.data_ptr() for b in batch.past] == pointers and all(a is b for a, b in zip(batch.past, buffers))
    assert (
        row.finished and row.tokens == sess.generate(PROMPTS[0], max_new_tokens=6, ignore_eos=True).tokens[0]
    )
    for _ in range(3):  # a finished row still stepped (until it is dropped) outgrows the buffer: it grows
        batch.step()
    assert batch.mask.shape[1] == len(PROMPTS[0]) + 8 and batch.past[0].shape()[2] > batch.mask.shape[1] - 1


def test_text_in_text_out(root: Path) -> None:
    result = exported_lm("llama", root)
    codec = TextCodec.from_package(result.package)
    assert codec is not None and codec.info["chat_template"].startswith("{% for m in messages %}")
    assert codec.decode(codec.encode("the lazy dog")) == "the lazy dog"
    sess = Session.from_package(result.path)
    out = sess.generate(["the quick brown", "hello"], max_new_tokens=12, ignore_eos=True)
    assert out.text == [codec.decode(t) for t in out.tokens]
    dec = IncrementalDecoder(codec)
    pieces = "".join(dec.push(t) for t in out.tokens[0]) + dec.flush()
    assert pieces == out.text[0]


def test_bad_requests(root: Path) -> None:
    sess = Session.from_package(exported_lm("llama", root).path)
    with pytest.raises(InferenceInputError, match=r"max_tokens must be between 1 and 4096, got 0"):
        sess.generate([1, 2], max_new_tokens=0)
    with pytest.raises(InferenceInputError, match=r"top_p must be in \(0, 1\], got 1.5"):
        sess.generate([1, 2], do_sample=True, top_p=1.5)
    with pytest.raises(InferenceInputError, match=r"the prompt has 200 tokens; this model takes at most 128"):
        sess.generate([1] * 200, max_new_tokens=4)
    with pytest.raises(
        InferenceInputError, match=r"exceeds the model's 128 positions; ask for at most 28 tokens"
    ):
        sess.generate([1] * 100, max_new_tokens=64)
    with pytest.raises(InferenceInputError, match=r"the prompt is empty"):
        sess.generate([[]], max_new_tokens=4)


def test_plain_package_is_refused(root: Path) -> None:
    plain = exported_lm("gpt2", root, outputs="logits")
    with pytest.raises(UsageError, match=r"is not a text-generation package .*--task text-generation"):
        Session.from_package(plain.path).generate([1, 2])
