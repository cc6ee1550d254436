"""Encoder-decoder export (T5, BART, Marian, mBART, Whisper) and generation without torch, checked
token for token against Hugging Face ``generate``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from tests.seq2seq_models import exported_seq2seq, make_seq2seq  # noqa: E402
from torchport.runtimes import Session  # noqa: E402
from torchport.runtimes._errors import InferenceInputError, PackageError  # noqa: E402
from torchport.runtimes._generate import Generator, SamplingParams  # noqa: E402
from torchport.runtimes._package import ModelPackage  # noqa: E402

#: mBART exports like BART, Whisper's 3000-frame encoder is the slowest capture: both in the slow tier
FAMILIES = [
    "t5",
    "bart",
    "marian",
    pytest.param("mbart", marks=pytest.mark.slow),
    pytest.param("whisper", marks=pytest.mark.slow),
]
EOS = 2


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("seq2seq")


def _sources(name: str) -> tuple[dict, dict]:
    """HF generate's inputs and ours: three texts of different lengths, or two spectrograms."""
    rng = np.random.default_rng(0)
    if name == "whisper":
        feats = [rng.standard_normal((80, 3000)).astype(np.float32) for _ in range(2)]
        return {"input_features": torch.from_numpy(np.stack(feats))}, {
            "sources": [{"input_features": f} for f in feats]
        }
    prompts = [rng.integers(3, 96, n).tolist() + [EOS] for n in (7, 4, 10)]
    longest = max(map(len, prompts))
    ids = np.zeros((3, longest), np.int64)
    mask = np.zeros((3, longest), np.int64)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = p
        mask[i, : len(p)] = 1
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}, {
        "prompts": prompts
    }


def _hf_tokens(sequences: torch.Tensor) -> list[list[int]]:
    """HF's sequences without the decoder start token, cut at EOS."""
    out = []
    for row in sequences.tolist():
        tokens = []
        for t in row[1:]:
            if t == EOS:
                break
            tokens.append(t)
        out.append(tokens)
    return out


def _ours(gen: Generator, ours: dict, **kw: object) -> list[list[int]]:
    return gen.generate(ours.get("prompts"), sources=ours.get("sources"), **kw).tokens


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_exports_validated_and_generates_as_hugging_face(root: Path, name: str) -> None:
    pkg = exported_seq2seq(name, root).package
    gen_extra = pkg.manifest.extra["generation"]
    assert gen_extra["architecture"] == "encoder-decoder"
    assert gen_extra["task"] == (
        "automatic-speech-recognition" if name == "whisper" else "text2text-generation"
    )
    enc = gen_extra["parts"]["encoder"]
    assert enc["variants"]["fp32"]["file"] == "encoder.onnx" and "encoder.onnx" in pkg.manifest.files
    assert [i["name"] for i in enc["inputs"]] == (
        ["input_features"] if name == "whisper" else ["input_ids", "attention_mask"]
    )
    assert pkg.manifest.parity["passed"] and pkg.manifest.validated
    model = make_seq2seq(name)
    hf_in, ours = _sources(name)
    gen = Generator(Session.from_package(pkg.path))
    # sequences with the decoder start token (Whisper's generate leaves it out of a plain return)
    hf_kw = {"return_dict_in_generate": True, "max_new_tokens": 10}
    ref = _hf_tokens(model.generate(**hf_in, **hf_kw, do_sample=False, num_beams=1).sequences)
    assert _ours(gen, ours, max_new_tokens=10) == ref
    for lp, es in ((1.0, False), (0.5, True), (2.0, "never")):
        hf = model.generate(**hf_in, **hf_kw, num_beams=3, length_penalty=lp, early_stopping=es).sequences
        got = _ours(gen, ours, max_new_tokens=10, num_beams=3, length_penalty=lp, early_stopping=es)
        assert got == _hf_tokens(hf), (lp, es)


#: per family, settings that change its plain greedy or beam tokens (random weights: T5 repeats a token,
#: BART ends at once, so the minimum lengths matter there)
LOGITS_SETTINGS = {
    "t5": [
        {"no_repeat_ngram_size": 2},
        {"repetition_penalty": 1.5},
        {"bad_words_ids": [[43], [0, 0]]},
        {"no_repeat_ngram_size": 3, "repetition_penalty": 1.3, "min_new_tokens": 4},
    ],
    "bart": [
        {"min_new_tokens": 8},
        {"min_length": 6},
        {"repetition_penalty": 1.5},
        {"min_new_tokens": 4, "no_repeat_ngram_size": 2, "repetition_penalty": 1.3},
    ],
}


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_logits_processors_equal_hugging_face_greedy_and_beam(root: Path, name: str) -> None:
    gen = Generator(Session.from_package(exported_seq2seq(name, root).package.path))
    model = make_seq2seq(name)
    hf_in, ours = _sources(name)
    hf_kw = {"return_dict_in_generate": True, "max_new_tokens": 10, "do_sample": False}
    changed = 0
    for kw in LOGITS_SETTINGS[name]:
        for beams in (1, 3):
            want = _hf_tokens(model.generate(**hf_in, **hf_kw, num_beams=beams, **kw).sequences)
            ours_kw = {k: tuple(map(tuple, v)) if k == "bad_words_ids" else v for k, v in kw.items()}
            assert _ours(gen, ours, max_new_tokens=10, num_beams=beams, **ours_kw) == want, (kw, beams)
            changed += want != _hf_tokens(model.generate(**hf_in, **hf_kw, num_beams=beams).sequences)
    assert changed >= len(LOGITS_SETTINGS[name])  # the settings are not no-ops on these weights


@pytest.mark.slow
def test_the_generation_configs_settings_apply_by_default(root: Path, tmp_path: Path) -> None:
    """A generation config's no_repeat_ngram_size / bad_words_ids / repetition_penalty are recorded at
    export and applied as generate applies them, unless the request sets its own."""
    from tests.seq2seq_models import save_seq2seq
    from torchport.exporters import export_model

    src = save_seq2seq("t5", tmp_path / "src")
    model = make_seq2seq("t5")
    settings = {"no_repeat_ngram_size": 2, "bad_words_ids": [[43]], "repetition_penalty": 1.2}
    for key, value in settings.items():
        setattr(model.generation_config, key, value)
    model.generation_config.save_pretrained(src)
    pkg = export_model(str(src), tmp_path / "pkg", quiet=True).package
    recorded = pkg.manifest.extra["generation"]["generation_config"]
    assert {k: recorded[k] for k in settings} == settings
    gen = Generator(Session.from_package(pkg.path))
    hf_in, ours = _sources("t5")
    hf_kw = {"return_dict_in_generate": True, "max_new_tokens": 10, "do_sample": False}
    for beams in (1, 3):
        want = _hf_tokens(model.generate(**hf_in, **hf_kw, num_beams=beams).sequences)
        assert _ours(gen, ours, max_new_tokens=10, num_beams=beams) == want
    own = _hf_tokens(model.generate(**hf_in, **hf_kw, no_repeat_ngram_size=3).sequences)
    assert _ours(gen, ours, max_new_tokens=10, no_repeat_ngram_size=3) == own


@pytest.mark.slow
def test_optimized_and_quantized_variants_are_each_validated(root: Path) -> None:
    pkg = exported_seq2seq("bart", root, level="all", fp16=True, int8="dynamic").package
    parts = pkg.manifest.extra["generation"]["parts"]
    for part, stem in (("encoder", "encoder"), ("decoder", "model")):
        assert set(parts[part]["variants"]) == {"fp32", "fp16", "int8"}
        for v, rec in parts[part]["variants"].items():
            assert rec["file"] == (f"{stem}.onnx" if v == "fp32" else f"{stem}.{v}.onnx")
            assert rec["file"] in pkg.manifest.files
    for v in ("fp32", "fp16", "int8"):
        assert pkg.manifest.variants[v].parity["passed"], v
    assert pkg.manifest.variants["int8"].parity["reference"] == "fp32"
    _, ours = _sources("bart")
    int8 = Generator(Session.from_package(pkg.path, variant="int8"))
    assert len(_ours(int8, ours, max_new_tokens=4)) == 3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["t5", "bart"])
def test_int4_variant_of_each_part_is_validated_and_generates(root: Path, name: str) -> None:
    """``export --int4`` on an encoder-decoder: the int4 MatMulNBits pass on the encoder and the
    decoder, validated against the fp32 parts, and a session of variant int4 generates."""
    import onnx

    pkg = exported_seq2seq(name, root, int4=True, int4_block_size=16).package
    parts = pkg.manifest.extra["generation"]["parts"]
    for part, stem in (("encoder", "encoder"), ("decoder", "model")):
        rec = parts[part]["variants"]["int4"]
        assert rec["file"] == f"{stem}.int4.onnx" and rec["file"] in pkg.manifest.files
        ops = {n.op_type for n in onnx.load(str(pkg.path / rec["file"]), load_external_data=False).graph.node}
        assert "MatMulNBits" in ops, part
    int4 = pkg.manifest.variants["int4"]
    assert int4.precision == "int4" and int4.parity["passed"] and int4.parity["reference"] == "fp32"
    assert pkg.manifest.extra["optimization"]["int4"]["block_size"] == 16
    _, ours = _sources(name)
    gen = Generator(Session.from_package(pkg.path, variant="int4"))
    assert gen.session.variant == "int4"
    got = _ours(gen, ours, max_new_tokens=4, ignore_eos=True)
    assert [len(t) for t in got] == [4, 4, 4]


def test_a_tampered_encoder_is_refused(root: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "pkg"
    shutil.copytree(exported_seq2seq("t5", root).package.path, copy)
    with open(copy / "encoder.onnx", "ab") as f:
        f.write(b"x")
    with pytest.raises(PackageError, match="encoder.onnx"):
        ModelPackage.load(copy)


def test_sampling_is_seeded_and_text_beyond_the_encoder_is_refused(root: Path) -> None:
    gen = Generator(Session.from_package(exported_seq2seq("marian", root).package.path))
    params = SamplingParams(max_new_tokens=8, do_sample=True, temperature=0.8, top_k=20, top_p=0.9, seed=3)
    a = gen.generate([[5, 6, 7, 2]], params).tokens
    assert a == gen.generate([[5, 6, 7, 2]], params).tokens
    steps = list(gen.stream([[5, 6, 7, 2]], max_new_tokens=3, ignore_eos=True))
    assert len(steps) == 3 and all(isinstance(s[0], int) for s in steps)
    with pytest.raises(InferenceInputError, match="encoder takes at most 128"):
        gen.generate([[5] * 129])
    text = gen.generate("the quick brown fox", max_new_tokens=4)
    assert text.text is not None and len(text.tokens[0]) <= 4


def test_validate_checks_both_parts_against_the_source(root: Path) -> None:
    from torchport.exporters import validate

    pkg = exported_seq2seq("t5", root).package
    result = validate(pkg.path, n=4, write=False)
    assert result and result.cases[0] == "encoder" and len(result.cases) >= 3
    assert result.variants["fp32"].file == "encoder.onnx+model.onnx"


def test_optimize_after_export_is_refused_with_what_to_run(root: Path) -> None:
    from torchport.exporters import optimize_package
    from torchport.runtimes import UsageError

    with pytest.raises(UsageError, match="optimize it at export"):
        optimize_package(exported_seq2seq("t5", root).package.path, level="all")
