"""Tiny encoder-decoders from transformers configs (random weights, no hub), saved as folders with the
small trained tokenizer of ``tests.lm_models``: T5, BART, Marian, mBART (text) and Whisper (speech)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.lm_models import VOCAB, train_tokenizer

_LAYERS = {
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
}
_IDS = {"vocab_size": VOCAB, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}

#: name -> (model class name, config builder)
CONFIGS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "t5": (
        "T5ForConditionalGeneration",
        lambda T: T.T5Config(
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            vocab_size=VOCAB,
            pad_token_id=0,
            eos_token_id=2,
            decoder_start_token_id=0,
        ),
    ),
    "bart": (
        "BartForConditionalGeneration",
        lambda T: T.BartConfig(
            **_LAYERS, max_position_embeddings=128, forced_eos_token_id=None, decoder_start_token_id=2, **_IDS
        ),
    ),
    "marian": (
        "MarianMTModel",
        lambda T: T.MarianConfig(
            **_LAYERS,
            max_position_embeddings=128,
            vocab_size=VOCAB,
            pad_token_id=0,
            eos_token_id=2,
            decoder_start_token_id=0,
            forced_eos_token_id=None,
        ),
    ),
    "mbart": (
        "MBartForConditionalGeneration",
        lambda T: T.MBartConfig(
            **_LAYERS, max_position_embeddings=128, forced_eos_token_id=None, decoder_start_token_id=2, **_IDS
        ),
    ),
    "whisper": (
        "WhisperForConditionalGeneration",
        lambda T: T.WhisperConfig(
            **_LAYERS,
            num_mel_bins=80,
            max_source_positions=1500,
            max_target_positions=64,
            decoder_start_token_id=1,
            suppress_tokens=[],
            begin_suppress_tokens=[],
            **_IDS,
        ),
    ),
}


def make_seq2seq(name: str, *, seed: int = 0) -> Any:
    """The tiny ``name`` model with random weights (eval mode)."""
    import torch
    import transformers as T

    cls_name, make_config = CONFIGS[name]
    torch.manual_seed(seed)
    return getattr(T, cls_name)(make_config(T)).eval()


def save_seq2seq(name: str, folder: Path, *, seed: int = 0) -> Path:
    """``save_pretrained`` the tiny ``name`` model (text models with the trained tokenizer)."""
    folder.mkdir(parents=True, exist_ok=True)
    make_seq2seq(name, seed=seed).save_pretrained(str(folder))
    if name != "whisper":
        train_tokenizer(folder)
    return folder


_EXPORTED: dict[str, Any] = {}


def exported_seq2seq(name: str, root: Path, **kwargs: Any) -> Any:
    """Export the tiny ``name`` model once per options (``ExportResult``), cached for the session."""
    from torchport.exporters import export_model

    key = repr((str(root), name, sorted(kwargs.items())))
    if key not in _EXPORTED:
        src = root / f"src-{name}"
        if not src.exists():
            save_seq2seq(name, src)
        out = root / f"pkg-{name}-{len(_EXPORTED)}"
        _EXPORTED[key] = export_model(str(src), out, quiet=True, **kwargs)
    return _EXPORTED[key]
