"""Whisper through torchport's package and torch-free generate loop, token for token against Hugging Face.

A tiny random-weight Whisper folder is exported (encoder + decoder with cache), audio goes through
:mod:`torchport.runtimes._audio` (WAV → log-mel) and the forced prompt of
:class:`~torchport.runtimes._audio_prompt.WhisperPrompt` into the generate loop; Hugging Face's
``WhisperForConditionalGeneration.generate`` gets the same features and settings.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tests.speech_models import EOS, START, exported_whisper, sample_audio  # noqa: E402
from torchport.runtimes._audio import AudioFeatures, decode_audio  # noqa: E402
from torchport.runtimes._audio_prompt import WhisperPrompt  # noqa: E402


@pytest.fixture(scope="module")
def whisper(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return exported_whisper(tmp_path_factory.mktemp("whisper"))


def test_package_carries_the_audio_settings(whisper: tuple[Path, Path]) -> None:
    from torchport.runtimes import Session

    folder, package = whisper
    manifest = Session.from_package(package).manifest
    assert manifest.extra["audio"]["feature_extractor"] == "preprocessor_config.json"
    assert manifest.extra["audio"]["feature_size"] == 80 and "preprocessor_config.json" in manifest.files
    assert json.loads((package / "preprocessor_config.json").read_text()) == json.loads(
        (folder / "preprocessor_config.json").read_text()
    )
    whisper_extra = manifest.extra["generation"]["whisper"]
    assert whisper_extra["lang_to_id"]["<|fr|>"] == 50265 and whisper_extra["no_timestamps_token_id"] == 50363


@pytest.mark.parametrize(
    ("kw", "beams"),
    [({"language": "fr"}, 1), ({"language": "de", "task": "translate"}, 1), ({"language": "en"}, 1)]
    + [({"language": "de", "task": "translate"}, 3)],
)
def test_generate_equals_hugging_face(whisper: tuple[Path, Path], kw: dict, beams: int) -> None:
    from torchport.runtimes import Session
    from torchport.runtimes._generate import Generator

    folder, package = whisper
    session = Session.from_package(package)
    prompt = WhisperPrompt.from_settings(session.manifest.extra["generation"]["whisper"])
    features = AudioFeatures.from_config(session.manifest.extra["audio"])
    feats = features.extract([decode_audio(a) for a in sample_audio()])
    gen = Generator(session)
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


def test_model_predict_takes_audio(whisper: tuple[Path, Path], tmp_path: Path) -> None:
    from torchport.deploy._model import Model
    from torchport.runtimes import Session
    from torchport.runtimes._errors import InferenceInputError
    from torchport.runtimes._generate import Generator

    _, package = whisper
    model = Model.load(package)
    audio = sample_audio()
    (tmp_path / "a.wav").write_bytes(audio[0])
    got = model.predict(audio=[str(tmp_path / "a.wav"), audio[1]], language="fr", max_new_tokens=6)
    session = Session.from_package(package)
    prompt = WhisperPrompt.from_settings(session.manifest.extra["generation"]["whisper"])
    feats = AudioFeatures.from_config(session.manifest.extra["audio"]).extract(
        [decode_audio(a) for a in audio]
    )
    want = Generator(session).generate(
        None,
        sources=[{"input_features": f} for f in feats],
        forced=prompt.prompt(language="fr")[1:],
        max_new_tokens=6,
    )
    assert got["tokens"] == want.tokens and len(got["text"]) == 2 and all(got["text"])
    with pytest.raises(InferenceInputError, match=r"^audio is not a WAV file"):
        model.predict(audio=b"not a wav")


def test_language_detected_as_hugging_face(whisper: tuple[Path, Path], tmp_path: Path) -> None:
    """No language on a multilingual model: one decoder step from the start token picks it (HF's
    detect_language), in the wheel's predict and in ``torchport generate --audio``'s generate_once."""
    from torchport.deploy._model import Model
    from torchport.runtimes._generate_once import generate_once

    folder, package = whisper
    audio = sample_audio()
    got = Model.load(package).predict(audio=audio, max_new_tokens=8)["tokens"]
    hf_model = transformers.WhisperForConditionalGeneration.from_pretrained(folder).eval()
    feats = AudioFeatures().extract([decode_audio(a) for a in audio])
    for row, want_audio in enumerate(feats):
        with torch.no_grad():
            want = hf_model.generate(torch.from_numpy(want_audio[None]), max_new_tokens=8, do_sample=False)
            lang = hf_model.detect_language(torch.from_numpy(want_audio[None])).tolist()
        assert got[row] == [t for t in want[0].tolist() if t != EOS]
        assert lang[0] in (50259, 50261, 50265)
        (tmp_path / f"{row}.wav").write_bytes(audio[row])
        once = generate_once(package, audio=str(tmp_path / f"{row}.wav"), max_new_tokens=8)
        assert once.tokens == got[row]
