"""Speech pre-processing without torch: WAV decoding, resampling and Whisper's log-mel features.

A speech package (Whisper) carries its feature extractor's settings (``preprocessor_config.json``,
recorded in the manifest's ``extra["audio"]``, see :mod:`torchport.exporters._audio_assets`);
:class:`AudioFeatures` turns 16 kHz mono samples into the encoder's ``input_features`` exactly as
``transformers.WhisperFeatureExtractor`` does (periodic Hann window, reflect-padded STFT, Slaney mel
filters, ``log10`` clamped 8 below the maximum, ``(x + 4) / 4``), with numpy alone.

:func:`decode_audio` takes what a request sends: a WAV file (decoded with the standard library:
8/16/24/32-bit PCM through :mod:`wave`, IEEE float 32/64-bit and ``WAVE_FORMAT_EXTENSIBLE`` from the
header parsed here; channels averaged to mono) or FP32 samples already at the model's rate. Other
rates are resampled with a polyphase Kaiser-windowed sinc filter (the filter of
``scipy.signal.resample_poly``: 20 taps per phase each side, beta 5, stop-band about -50 dB), which is
transparent for speech; pass ``resample=False`` to refuse them instead.
"""

from __future__ import annotations

import functools
import io
import math
import struct
import wave
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchport.runtimes._errors import InferenceInputError

__all__ = ["AudioFeatures", "decode_audio", "decode_wav", "mel_filters", "resample"]

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE
_MIN_RATE, _MAX_RATE = 1000, 384_000


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    mels = 3.0 * freq / 200.0
    log = freq >= 1000.0
    mels[log] = 15.0 + np.log(freq[log] / 1000.0) * (27.0 / np.log(6.4))
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    freq = 200.0 * mels / 3.0
    log = mels >= 15.0
    freq[log] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mels[log] - 15.0))
    return freq


@functools.lru_cache(maxsize=8)
def mel_filters(n_mels: int, n_fft: int = 400, sampling_rate: int = 16000) -> np.ndarray:
    """Slaney-normalized triangular mel filters, ``[1 + n_fft // 2, n_mels]`` float64, 0 to 8 kHz.

    The filter bank of ``WhisperFeatureExtractor`` (``mel_filter_bank(norm="slaney",
    mel_scale="slaney", max_frequency=8000)``).

    Example:
        >>> mel_filters(80).shape
        (201, 80)
    """
    bins = 1 + n_fft // 2
    mel_points = np.linspace(_hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([8000.0]))[0], n_mels + 2)
    centers = _mel_to_hz(mel_points)
    fft_freqs = np.linspace(0, sampling_rate // 2, bins)
    diff = np.diff(centers)
    slopes = centers[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    filters *= (2.0 / (centers[2 : n_mels + 2] - centers[:n_mels]))[None, :]
    filters.setflags(write=False)
    return filters


@dataclass(frozen=True)
class AudioFeatures:
    """Whisper's log-mel feature extractor (``preprocessor_config.json``'s settings).

    Attributes:
        feature_size: mel bands (80; 128 for large-v3).
        sampling_rate: the rate the model takes, in Hz.
        hop_length: STFT hop in samples.
        chunk_length: the window in seconds every input is padded or cut to (30).
        n_fft: STFT size (and Hann window length).
        padding_value: the sample value the audio is padded with.

    Example:
        >>> features = AudioFeatures()
        >>> features.extract([np.zeros(16000, dtype=np.float32)]).shape
        (1, 80, 3000)
    """

    feature_size: int = 80
    sampling_rate: int = 16000
    hop_length: int = 160
    chunk_length: int = 30
    n_fft: int = 400
    padding_value: float = 0.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AudioFeatures:
        """Settings from a ``preprocessor_config.json`` (or the manifest's ``extra["audio"]``).

        Raises:
            InferenceInputError: a setting is missing its type or out of range.

        Example:
            >>> AudioFeatures.from_config({"feature_size": 128}).feature_size
            128
        """
        kind = config.get("feature_extractor_type")
        if kind is not None and kind != "WhisperFeatureExtractor":
            raise InferenceInputError(
                f"feature extractor {kind!r} is not supported; torchport computes WhisperFeatureExtractor's features"
            )
        values: dict[str, Any] = {}
        for name in ("feature_size", "sampling_rate", "hop_length", "chunk_length", "n_fft"):
            if name in config:
                value = config[name]
                if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                    raise InferenceInputError(
                        f"audio setting {name} must be a positive integer, got {value!r}"
                    )
                values[name] = value
        if "padding_value" in config:
            values["padding_value"] = float(config["padding_value"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The settings, as recorded in a manifest's ``extra["audio"]``."""
        return {
            "feature_size": self.feature_size,
            "sampling_rate": self.sampling_rate,
            "hop_length": self.hop_length,
            "chunk_length": self.chunk_length,
            "n_fft": self.n_fft,
            "padding_value": self.padding_value,
        }

    @property
    def n_samples(self) -> int:
        """Samples in one window (``chunk_length * sampling_rate``)."""
        return self.chunk_length * self.sampling_rate

    @property
    def n_frames(self) -> int:
        """Feature frames per window (3000 for Whisper)."""
        return self.n_samples // self.hop_length

    def extract(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        """``input_features`` ``[len(batch), feature_size, n_frames]`` float32 for mono sample arrays.

        Each array is padded with ``padding_value`` or cut to ``chunk_length`` seconds, as the
        Hugging Face extractor does with its defaults.
        """
        filters = mel_filters(self.feature_size, self.n_fft, self.sampling_rate).astype(np.float32)
        n = np.arange(self.n_fft)
        window = (0.5 - 0.5 * np.cos(2.0 * np.pi * n / self.n_fft)).astype(np.float32)  # periodic Hann
        out = np.empty((len(batch), self.feature_size, self.n_frames), dtype=np.float32)
        half = self.n_fft // 2
        for row, samples in enumerate(batch):
            wave_ = np.full(self.n_samples, self.padding_value, dtype=np.float32)
            clip = np.asarray(samples, dtype=np.float32).reshape(-1)[: self.n_samples]
            wave_[: clip.size] = clip
            padded = np.pad(wave_, half, mode="reflect")
            frames = np.lib.stride_tricks.sliding_window_view(padded, self.n_fft)[:: self.hop_length]
            frames = frames[: self.n_frames] * window
            power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
            mel = (power.astype(np.float32) @ filters).T
            log_spec = np.log10(np.maximum(mel, 1e-10))
            log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
            out[row] = (log_spec + 4.0) / 4.0
        return out


def _kaiser_sinc(up: int, down: int) -> np.ndarray:
    """``scipy.signal.resample_poly``'s filter: ``firwin(20 * max + 1, 1 / max, ("kaiser", 5))``."""
    top = max(up, down)
    half = 10 * top
    m = np.arange(2 * half + 1) - half
    h = np.sinc(m / top) / top * np.kaiser(2 * half + 1, 5.0)
    return h / h.sum() * up


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Resample mono ``samples`` from ``rate`` to ``target`` Hz (polyphase, Kaiser-windowed sinc).

    Example:
        >>> resample(np.ones(441, dtype=np.float32), 44100, 16000).shape
        (160,)
    """
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if rate == target:
        return x.astype(np.float32)
    g = math.gcd(rate, target)
    up, down = target // g, rate // g
    h = _kaiser_sinc(up, down)
    half = (h.size - 1) // 2
    taps = -(-h.size // up)
    bank = np.zeros(taps * up)
    bank[: h.size] = h
    bank = bank.reshape(taps, up).T  # bank[phase, j] = h[phase + j * up]
    n_out = -(-x.size * up // down)
    pad = taps + 1
    xp = np.concatenate([np.zeros(pad), x, np.zeros(pad + half // up + 2)])
    out = np.empty(n_out)
    step = 8192
    j = np.arange(taps)
    for start in range(0, n_out, step):
        t = np.arange(start, min(start + step, n_out)) * down + half
        phase, base = t % up, t // up
        out[start : start + t.size] = np.einsum("ij,ij->i", bank[phase], xp[base[:, None] - j[None, :] + pad])
    return out.astype(np.float32)


def _riff_chunks(data: bytes) -> dict[bytes, memoryview]:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise InferenceInputError(
            "audio is not a WAV file (no RIFF/WAVE header); send a WAV file or FP32 samples"
        )
    view = memoryview(data)
    chunks: dict[bytes, memoryview] = {}
    pos = 12
    while pos + 8 <= len(data):
        cid, size = bytes(view[pos : pos + 4]), struct.unpack_from("<I", data, pos + 4)[0]
        body = view[pos + 8 : min(pos + 8 + size, len(data))]  # streaming writers leave size 0xFFFFFFFF
        chunks.setdefault(cid, body)
        if cid == b"data":
            break
        pos += 8 + size + (size & 1)
    if b"fmt " not in chunks or len(chunks[b"fmt "]) < 16 or b"data" not in chunks:
        raise InferenceInputError("audio is not a valid WAV file (missing its fmt or data chunk)")
    return chunks


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the sample rate of a WAV file's bytes.

    Raises:
        InferenceInputError: not a WAV file, or an encoding other than 8/16/24/32-bit PCM or
            32/64-bit IEEE float.

    Example:
        >>> import io, wave
        >>> buf = io.BytesIO()
        >>> with wave.open(buf, "wb") as w:
        ...     w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000); w.writeframes(b"\\x00\\x40" * 4)
        >>> decode_wav(buf.getvalue())
        (array([0.5, 0.5, 0.5, 0.5], dtype=float32), 16000)
    """
    chunks = _riff_chunks(data)
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", chunks[b"fmt "])
    plain_pcm = tag == _PCM  # what the standard library's wave module reads
    if tag == _EXTENSIBLE and len(chunks[b"fmt "]) >= 26:
        tag = struct.unpack_from("<H", chunks[b"fmt "], 24)[0]  # the sub-format GUID's first two bytes
    if channels < 1 or not _MIN_RATE <= rate <= _MAX_RATE:
        raise InferenceInputError(
            f"WAV header is invalid ({channels} channels at {rate} Hz); "
            f"expected 1 or more channels at {_MIN_RATE}..{_MAX_RATE} Hz"
        )
    if plain_pcm and bits in (8, 16, 24, 32):
        try:
            with wave.open(io.BytesIO(data), "rb") as reader:
                raw = reader.readframes(reader.getnframes())
        except (wave.Error, EOFError) as e:
            raise InferenceInputError(f"audio is not a valid WAV file: {e}") from None
    else:
        raw = bytes(chunks[b"data"])
    width = bits // 8
    raw = raw[: len(raw) - len(raw) % (width * channels)] if width else b""
    if tag == _PCM and bits == 8:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif tag == _PCM and bits == 16:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif tag == _PCM and bits == 24:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v) / float(1 << 23)).astype(np.float32)
    elif tag == _PCM and bits == 32:
        x = (np.frombuffer(raw, "<i4") / 2147483648.0).astype(np.float32)
    elif tag == _FLOAT and bits in (32, 64):
        x = np.frombuffer(raw, "<f4" if bits == 32 else "<f8").astype(np.float32)
    else:
        kind = {_PCM: "PCM", _FLOAT: "float"}.get(tag, f"format {tag:#x}")
        raise InferenceInputError(
            f"WAV encoding {kind} {bits}-bit is not supported; send 8/16/24/32-bit PCM or 32/64-bit float WAV"
        )
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return x, rate


def _wav_seconds(data: bytes) -> float:
    """The duration a WAV header announces (checked before decoding, so a huge file costs nothing)."""
    chunks = _riff_chunks(data)
    _, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", chunks[b"fmt "])
    frame = max(1, channels * max(1, bits // 8))
    return len(chunks[b"data"]) / frame / max(rate, 1)


def decode_audio(
    audio: bytes | np.ndarray,
    *,
    sampling_rate: int = 16000,
    max_seconds: float = 30.0,
    resample_rate: bool = True,
) -> np.ndarray:
    """Mono float32 samples at ``sampling_rate`` from a WAV file's bytes or FP32 samples.

    Args:
        audio: a WAV file (bytes) or float samples already at ``sampling_rate``.
        sampling_rate: the rate the model takes.
        max_seconds: the longest audio accepted (Whisper's 30 s window).
        resample_rate: resample a WAV at another rate (``False``: refuse it).

    Raises:
        InferenceInputError: empty or not a WAV file, a rate refused, or longer than ``max_seconds``.

    Example:
        >>> decode_audio(np.zeros(8000, dtype=np.float32)).shape
        (8000,)
        >>> decode_audio(b"hello")
        Traceback (most recent call last):
        ...
        torchport.runtimes._errors.InferenceInputError: audio is not a WAV file (no RIFF/WAVE header); send a WAV file or FP32 samples
    """
    if isinstance(audio, (bytes, bytearray, memoryview)):
        data = bytes(audio)
        if not data:
            raise InferenceInputError("audio is empty; send a WAV file or FP32 samples")
        seconds = _wav_seconds(data)
        if seconds > max_seconds + 1e-9:
            raise InferenceInputError(_too_long(seconds, max_seconds))
        samples, rate = decode_wav(data)
        if rate != sampling_rate:
            if not resample_rate:
                raise InferenceInputError(
                    f"WAV sample rate is {rate} Hz; this model takes {sampling_rate} Hz audio (resample it first)"
                )
            samples = resample(samples, rate, sampling_rate)
    else:
        samples = np.asarray(audio)
        if samples.dtype.kind != "f":
            raise InferenceInputError(f"audio samples must be FP32, got {samples.dtype}; or send a WAV file")
        samples = samples.astype(np.float32).reshape(-1)
    if samples.size == 0:
        raise InferenceInputError("audio is empty; send a WAV file or FP32 samples")
    if samples.size > max_seconds * sampling_rate + 1e-6:
        raise InferenceInputError(_too_long(samples.size / sampling_rate, max_seconds))
    if not np.isfinite(samples).all():
        raise InferenceInputError("audio samples hold NaN or infinity; send finite FP32 samples")
    return samples


def _too_long(seconds: float, limit: float) -> str:
    return f"audio is {seconds:.1f} s long; the limit is {limit:g} s (split it into pieces of at most {limit:g} s)"
