"""Whisper through torchport's package and torch-free generate loop, token for token against Hugging Face.

A tiny random-weight Whisper folder is exported (encoder + decoder with cache), audio goes through
:mod:`torchport.runtimes._audio` (WAV → log-mel) and the forced prompt of
:class:`~torchport.runtimes._audio_prompt.WhisperPrompt` into the generate loop; Hugging Face's
``WhisperForConditionalGeneration.generate`` gets the same features and settings.
"""

from __future__ import annotations

import io
import json
import wave
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from torchport.runtimes._audio import AudioFeatures, decode_audio  # noqa: E402
from torchport.runtimes._audio_prompt import WhisperPrompt, whisper_settings  # noqa: E402

START, EOS = 50258, 50257
LANGS = {"<|en|>": 50259, "<|de|>": 50261, "<|fr|>": 50265}


@pytest.fixture(scope="module")
def whisper(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from torchport.exporters import export_model

    root = tmp_path_factory.mktemp("whisper")
    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        vocab_size=50364,  # no timestamp tokens: HF re-decodes after two of them (long-form seeking)
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
        max_source_positions=1500, max_target_positions=64, decoder_start_token_id=START, eos_token_id=EOS,
        pad_token_id=EOS, bos_token_id=EOS, init_std=0.5,
    )  # fmt: skip
    model = transformers.WhisperForConditionalGeneration(config).eval()
    model.generation_config = transformers.GenerationConfig(
        decoder_start_token_id=START, eos_token_id=EOS, pad_token_id=EOS, max_length=64, lang_to_id=LANGS,
        task_to_id={"transcribe": 50359, "translate": 50358}, no_timestamps_token_id=50363,
        is_multilingual=True, begin_suppress_tokens=[220, EOS], suppress_tokens=[1, 2, 7],
    )  # fmt: skip
    model.save_pretrained(root / "hf")
    transformers.WhisperFeatureExtractor().save_pretrained(root / "hf")
    export_model(str(root / "hf"), root / "pkg", task="automatic-speech-recognition", quiet=True)
    return root / "hf", root / "pkg"


def _wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def _audio() -> list[bytes]:
    rng = np.random.default_rng(3)
    t = np.arange(3 * 16000) / 16000
    return [_wav(0.3 * np.sin(2 * np.pi * 440 * t)), _wav(0.1 * rng.standard_normal(5 * 16000))]


@pytest.mark.parametrize(
    "kw", [{"language": "fr"}, {"language": "de", "task": "translate"}, {"language": "en"}]
)
@pytest.mark.parametrize("beams", [1, 3])
def test_generate_equals_hugging_face(whisper: tuple[Path, Path], kw: dict, beams: int) -> None:
    from torchport.runtimes import Session
    from torchport.runtimes._generate import Generator

    folder, package = whisper
    settings = whisper_settings(json.loads((folder / "generation_config.json").read_text()))
    prompt = WhisperPrompt.from_settings(settings)
    features = AudioFeatures.from_config(json.loads((folder / "preprocessor_config.json").read_text()))
    feats = features.extract([decode_audio(a) for a in _audio()])
    gen = Generator(Session.from_package(package))
    forced = prompt.prompt(**kw)
    assert forced[0] == START
    ours = gen.generate(
        None,
        sources=[{"input_features": f} for f in feats],
        forced=forced[1:],
        max_new_tokens=10,
        num_beams=beams,
    ).tokens

    hf_model = transformers.WhisperForConditionalGeneration.from_pretrained(folder).eval()
    with torch.no_grad():
        hf = hf_model.generate(
            torch.from_numpy(feats), max_new_tokens=10, num_beams=beams, do_sample=False, **kw
        )
    hf_rows = [[t for t in row.tolist() if t != EOS] for row in hf]  # HF pads finished rows with EOS
    assert [r[: len(o)] for r, o in zip(hf_rows, ours, strict=True)] == ours
    assert [len(r) for r in hf_rows] == [len(o) for o in ours]
