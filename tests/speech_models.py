"""A tiny random-weight Whisper folder (with a word-level tokenizer and its preprocessor config), exported.

Shared by the speech tests: the generate loop against Hugging Face, the server's audio inputs.
"""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np

START, EOS = 50258, 50257
LANGS = {"<|en|>": 50259, "<|de|>": 50261, "<|fr|>": 50265}
TASKS = {"transcribe": 50359, "translate": 50358}
NOTIME = 50363
#: no timestamp tokens (ids >= 50364): Hugging Face re-decodes after two of them (long-form seeking)
VOCAB = 50364


def _tokenizer(folder: Path, size: int = VOCAB) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    special = {EOS: "<|endoftext|>", START: "<|startoftranscript|>", NOTIME: "<|notimestamps|>"}
    special.update({v: k for k, v in LANGS.items()})
    special.update({50359: "<|transcribe|>", 50358: "<|translate|>"})
    vocab = {special.get(i, f"w{i}"): i for i in range(size)}
    for i in range(size):  # the other special ids Whisper reserves
        if 50257 <= i and i not in special:
            vocab.pop(f"w{i}")
            vocab[f"<|x{i}|>"] = i
            special[i] = f"<|x{i}|>"
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.add_special_tokens([AddedToken(t, special=True) for t in special.values()])
    tok.save(str(folder / "tokenizer.json"))


def whisper_folder(root: Path, vocab: int = VOCAB) -> Path:
    """Write the Hugging Face folder under ``root / "hf"`` and return it (``vocab`` 51865: with
    Whisper's 1501 timestamp tokens)."""
    import torch
    import transformers

    folder = root / "hf"
    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        vocab_size=vocab, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
        max_source_positions=1500, max_target_positions=64, decoder_start_token_id=START, eos_token_id=EOS,
        pad_token_id=EOS, bos_token_id=EOS, init_std=0.5,
    )  # fmt: skip
    model = transformers.WhisperForConditionalGeneration(config).eval()
    model.generation_config = transformers.GenerationConfig(
        decoder_start_token_id=START, eos_token_id=EOS, pad_token_id=EOS, max_length=64, lang_to_id=LANGS,
        task_to_id=TASKS, no_timestamps_token_id=NOTIME, is_multilingual=True,
        begin_suppress_tokens=[220, EOS], suppress_tokens=[1, 2, 7],
    )  # fmt: skip
    model.save_pretrained(folder)
    transformers.WhisperFeatureExtractor().save_pretrained(folder)
    _tokenizer(folder, vocab)
    return folder


def exported_whisper(root: Path, vocab: int = VOCAB) -> tuple[Path, Path]:
    """``(hf folder, package)``: the tiny Whisper and its torchport package (speech recognition)."""
    from torchport.exporters import export_model

    folder = whisper_folder(root, vocab)
    export_model(str(folder), root / "pkg", task="automatic-speech-recognition", quiet=True)
    return folder, root / "pkg"


def wav(samples: np.ndarray, rate: int = 16000, width: int = 2) -> bytes:
    """16-bit (or 8/32-bit) PCM mono WAV bytes."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(width)
        w.setframerate(rate)
        scale = float(1 << (8 * width - 1)) - 1
        dtype = {2: "<i2", 4: "<i4"}[width]
        w.writeframes((np.clip(samples, -1, 1) * scale).astype(dtype).tobytes())
    return buf.getvalue()


def sample_audio() -> list[bytes]:
    """A 3 s tone and 5 s of noise, as WAV files."""
    rng = np.random.default_rng(3)
    t = np.arange(3 * 16000) / 16000
    return [wav(0.3 * np.sin(2 * np.pi * 440 * t)), wav(0.1 * rng.standard_normal(5 * 16000))]
