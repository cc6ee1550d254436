"""Whisper with timestamps asked for: the prompt leaves <|notimestamps|> out and the batch applies
Whisper's timestamp rules (runtimes._logits.Timestamps), token for token against Hugging Face's
``generate(return_timestamps=True, force_unique_generate_call=True)`` — one decoding pass over the
30 s window. (Without ``force_unique_generate_call`` Hugging Face re-seeks to the last timestamp
pair and decodes the rest of the window again; torchport does not.)"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tests.speech_models import EOS, NOTIME, exported_whisper, sample_audio  # noqa: E402
from torchport.runtimes._errors import InferenceInputError  # noqa: E402

pytestmark = pytest.mark.slow  # a second Whisper export (with the 1501 timestamp tokens)


def test_timestamps_equal_hugging_face_single_pass(tmp_path: Path) -> None:
    from torchport.runtimes import Session
    from torchport.runtimes._audio_request import SpeechCodec
    from torchport.runtimes._generate import Generator

    folder, package = exported_whisper(tmp_path, vocab=51865)
    session = Session.from_package(package)
    codec = SpeechCodec.from_manifest(session.manifest)
    assert codec is not None and codec.timestamps
    gen = Generator(session)
    hf = transformers.WhisperForConditionalGeneration.from_pretrained(folder).eval()
    stamped = 0
    for audio in sample_audio():
        source = codec.sources([audio])
        forced = codec.forced(language="en", timestamps=True)
        assert NOTIME not in forced
        for beams in (1, 3):
            got = gen.generate(None, sources=source, forced=forced, max_new_tokens=12, num_beams=beams)
            feats = torch.from_numpy(source[0]["input_features"][None])
            with torch.no_grad():
                want = hf.generate(
                    feats, language="en", return_timestamps=True, force_unique_generate_call=True,
                    max_new_tokens=12, do_sample=False, num_beams=beams,
                )[0].tolist()  # fmt: skip
            want = [t for t in want[1 + len(forced) :] if t != EOS]
            assert got.tokens[0] == want, beams
            stamped += sum(t > NOTIME for t in want)
        # timestamps off (the default): the prompt ends with <|notimestamps|>, the rules are not applied
        assert codec.forced(language="en")[-1] == NOTIME
    assert stamped >= 4  # the rules were exercised: timestamps were generated


def test_timestamps_refused_on_a_model_without_them(tmp_path: Path) -> None:
    from torchport.runtimes import Session
    from torchport.runtimes._audio_request import SpeechCodec

    _, package = exported_whisper(tmp_path)  # vocabulary ends at <|notimestamps|>
    codec = SpeechCodec.from_manifest(Session.from_package(package).manifest)
    assert codec is not None
    with pytest.raises(
        InferenceInputError, match="^this model has no timestamp tokens; leave timestamps off"
    ):
        codec.forced(language="en", timestamps=True)
    with pytest.raises(InferenceInputError, match="^timestamps must be true or false, got 'yes'"):
        codec.forced(language="en", timestamps="yes")
