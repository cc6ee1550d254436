"""Whisper's log-mel features, WAV decoding and resampling (torch-free code; transformers as the reference)."""

from __future__ import annotations

import io
import struct
import wave

import numpy as np
import pytest

from torchport.runtimes._audio import AudioFeatures, decode_audio, decode_wav, mel_filters, resample
from torchport.runtimes._errors import InferenceInputError

RATE = 16000


def _signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(int(3.7 * RATE)) / RATE
    chirp = 0.5 * np.sin(2 * np.pi * (100 * t + (7000 - 100) / (2 * t[-1]) * t**2))
    return {
        "tone": (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
        "noise": (0.1 * rng.standard_normal(10 * RATE)).astype(np.float32),
        "chirp": chirp.astype(np.float32),
        "long": (0.2 * rng.standard_normal(31 * RATE)).astype(np.float32),  # cut to 30 s by both
        "quiet": np.concatenate([np.zeros(RATE), 1e-4 * rng.standard_normal(RATE)]).astype(np.float32),
    }


@pytest.mark.parametrize("n_mels", [80, 128])
def test_features_equal_transformers(n_mels: int) -> None:
    from transformers import WhisperFeatureExtractor

    reference = WhisperFeatureExtractor(feature_size=n_mels)
    ours = AudioFeatures.from_config(reference.to_dict())
    assert ours.feature_size == n_mels
    signals = _signals()
    got = ours.extract(list(signals.values()))
    assert got.shape == (len(signals), n_mels, 3000) and got.dtype == np.float32
    for row, (name, x) in enumerate(signals.items()):
        want = reference(x, sampling_rate=RATE, return_tensors="np").input_features[0]
        err = float(np.abs(got[row] - want).max())
        assert err < 1e-4, f"{name}: max error {err}"


def test_mel_filters_equal_transformers() -> None:
    from transformers.audio_utils import mel_filter_bank

    want = mel_filter_bank(201, 80, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney")
    np.testing.assert_allclose(mel_filters(80), want, rtol=1e-12, atol=1e-15)


def _pcm_wav(samples: np.ndarray, *, width: int, rate: int = RATE, channels: int = 1) -> bytes:
    x = np.clip(samples, -1, 1 - 1e-9)
    if width == 1:
        raw = np.round(x * 128 + 128).clip(0, 255).astype(np.uint8).tobytes()
    elif width == 3:
        v = np.round(x * (1 << 23)).astype(np.int32)
        raw = np.stack([(v >> s) & 0xFF for s in (0, 8, 16)], axis=-1).astype(np.uint8).tobytes()
    else:
        raw = np.round(x * (1 << (8 * width - 1))).astype("<i2" if width == 2 else "<i4").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return buf.getvalue()


def _float_wav(
    samples: np.ndarray, *, bits: int = 32, rate: int = RATE, channels: int = 1, extensible: bool = False
) -> bytes:
    raw = samples.astype("<f4" if bits == 32 else "<f8").tobytes()
    block = channels * bits // 8
    if extensible:
        guid = struct.pack("<H", 3) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * block, block, bits, 22, bits, 0) + guid
    else:
        fmt = struct.pack("<HHIIHH", 3, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"LIST" + struct.pack("<I", 4) + b"INFO"  # a chunk before data, skipped
    body += b"data" + struct.pack("<I", len(raw)) + raw
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_pcm_wav_decodes(width: int) -> None:
    x = (0.5 * np.sin(np.arange(800) / 7)).astype(np.float32)
    got, rate = decode_wav(_pcm_wav(x, width=width))
    assert rate == RATE and got.dtype == np.float32
    np.testing.assert_allclose(got, x, atol=2.0 / (1 << (8 * width - 1)))


def test_stereo_and_float_wav_decode() -> None:
    left = np.linspace(-0.5, 0.5, 600, dtype=np.float32)
    right = np.full(600, 0.25, dtype=np.float32)
    stereo = np.stack([left, right], axis=1).reshape(-1)
    got, _ = decode_wav(_pcm_wav(stereo, width=2, channels=2))
    np.testing.assert_allclose(got, (left + right) / 2, atol=1e-4)
    for bits, ext in ((32, False), (64, False), (32, True)):
        got, rate = decode_wav(_float_wav(stereo, bits=bits, channels=2, extensible=ext))
        assert rate == RATE
        np.testing.assert_allclose(got, (left + right) / 2, atol=1e-7)


def test_resample_matches_the_tone() -> None:
    t_in = np.arange(44100) / 44100
    t_out = np.arange(16000) / 16000
    got = resample(np.sin(2 * np.pi * 440 * t_in), 44100, 16000)
    assert got.shape == (16000,)
    interior = slice(400, -400)  # away from the edges the filter sees zeros past
    assert float(np.abs(got[interior] - np.sin(2 * np.pi * 440 * t_out)[interior]).max()) < 1e-3
    up = resample(np.sin(2 * np.pi * 300 * np.arange(8000) / 8000), 8000, 16000)
    assert (
        float(np.abs(up[400:-400] - np.sin(2 * np.pi * 300 * t_out)[400:-400]).max()) < 3e-3
    )  # passband ripple of the Kaiser filter


def test_decode_audio_resamples_or_refuses_other_rates() -> None:
    x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(22050) / 22050)).astype(np.float32)
    wav = _pcm_wav(x, width=2, rate=22050)
    assert decode_audio(wav).shape == (16000,)
    with pytest.raises(InferenceInputError, match=r"^WAV sample rate is 22050 Hz; this model takes 16000 Hz"):
        decode_audio(wav, resample_rate=False)


def test_bad_audio_refused_with_one_line() -> None:
    with pytest.raises(InferenceInputError, match=r"^audio is empty"):
        decode_audio(b"")
    with pytest.raises(InferenceInputError, match=r"^audio is not a WAV file"):
        decode_audio(b"ID3\x04 an mp3 pretending")
    with pytest.raises(InferenceInputError, match=r"^audio is 31\.0 s long; the limit is 30 s"):
        decode_audio(_pcm_wav(np.zeros(31 * RATE, dtype=np.float32), width=2))
    with pytest.raises(InferenceInputError, match=r"^audio is 30\.5 s long; the limit is 30 s"):
        decode_audio(np.zeros(int(30.5 * RATE), dtype=np.float32))
    with pytest.raises(InferenceInputError, match=r"^audio samples must be FP32, got int16"):
        decode_audio(np.zeros(10, dtype=np.int16))
    with pytest.raises(InferenceInputError, match=r"^audio samples hold NaN"):
        decode_audio(np.array([0.0, np.nan], dtype=np.float32))
    truncated = _pcm_wav(np.zeros(100, dtype=np.float32), width=2)[:30]
    with pytest.raises(InferenceInputError, match=r"^audio is not a valid WAV file"):
        decode_audio(truncated)
    adpcm = bytearray(_pcm_wav(np.zeros(100, dtype=np.float32), width=2))
    adpcm[20:22] = struct.pack("<H", 2)
    with pytest.raises(InferenceInputError, match=r"^WAV encoding format 0x2 16-bit is not supported"):
        decode_audio(bytes(adpcm))
    for message in ("audio is empty",):
        assert "\n" not in message
