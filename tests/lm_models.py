"""Tiny causal language models from transformers configs (random weights, no hub), saved as folders
with a small trained ``tokenizer.json``: shared by the exporter, runtime and server tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

VOCAB = 96
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, this is a tiny language model",
    "torchport exports models to onnx and serves them",
    "one two three four five six seven eight nine ten",
]


def _common() -> dict[str, Any]:
    return {"vocab_size": VOCAB, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def _llama_like(cls_config: str, **extra: Any) -> Callable[[Any], Any]:
    def make(T: Any) -> Any:
        cfg = getattr(T, cls_config)(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            **_common(),
            **extra,
        )
        return cfg

    return make


#: name -> (model class name, config builder)
CONFIGS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "gpt2": (
        "GPT2LMHeadModel",
        lambda T: T.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **_common()),
    ),
    "llama": ("LlamaForCausalLM", _llama_like("LlamaConfig")),
    # a head size GroupQueryAttention does not take (multiples of 8 only): the capture falls back
    "llama_head4": ("LlamaForCausalLM", _llama_like("LlamaConfig", head_dim=4)),
    # a head size GroupQueryAttention rotates itself (multiples of 16): the rotary goes inside the op
    "llama_head16": ("LlamaForCausalLM", _llama_like("LlamaConfig", head_dim=16)),
    "qwen2": ("Qwen2ForCausalLM", _llama_like("Qwen2Config")),
    "mistral": ("MistralForCausalLM", _llama_like("MistralConfig", sliding_window=None)),
    "mistral_sw": ("MistralForCausalLM", _llama_like("MistralConfig", sliding_window=16)),
    "phi3": ("Phi3ForCausalLM", _llama_like("Phi3Config")),
    "gemma": ("GemmaForCausalLM", _llama_like("GemmaConfig", head_dim=8)),
    # soft-capped attention scores: not what GroupQueryAttention fuses here (the capture falls back)
    "gemma2": ("Gemma2ForCausalLM", _llama_like("Gemma2Config", head_dim=8, sliding_window=16)),
    "mixtral": (
        "MixtralForCausalLM",
        _llama_like("MixtralConfig", num_local_experts=4, num_experts_per_tok=2),
    ),
    "qwen2_moe": (
        "Qwen2MoeForCausalLM",
        _llama_like(
            "Qwen2MoeConfig",
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=32,
        ),
    ),
}


def tiny_bert(cls_name: str, **extra: Any) -> Any:
    """A one-layer BERT (``BertModel``, ``BertForSequenceClassification``...) of ``VOCAB`` tokens,
    random weights; ``extra`` goes to its config (``num_labels``, ``id2label``...)."""
    import transformers as T

    config = T.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        **extra,
    )
    return getattr(T, cls_name)(config).eval()


def train_tokenizer(folder: Path) -> None:
    """A byte-level BPE tokenizer of ``VOCAB`` tokens (ids 0..2: pad, bos, eos) with a chat template."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=[],
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    assert tok.get_vocab_size() <= VOCAB, tok.get_vocab_size()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "pad_token": "<pad>",
                "chat_template": "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
            }
        )
    )


def save_causal_lm(name: str, folder: Path, *, seed: int = 0, tokenizer: bool = True) -> Path:
    """Build the tiny ``name`` model with random weights and ``save_pretrained`` it to ``folder``."""
    import torch
    import transformers as T

    cls_name, make_config = CONFIGS[name]
    torch.manual_seed(seed)
    model = getattr(T, cls_name)(make_config(T)).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    if tokenizer:
        train_tokenizer(folder)
    return folder


_EXPORTED: dict[str, Any] = {}


def exported_lm(name: str, root: Path, **kwargs: Any) -> Any:
    """Export the tiny ``name`` model once per options (``ExportResult``), cached for the session."""
    from torchport.exporters import export_model

    key = repr((str(root), name, sorted(kwargs.items())))
    if key not in _EXPORTED:
        src = root / f"src-{name}"
        if not src.exists():
            save_causal_lm(name, src)
        out = root / f"pkg-{name}-{len(_EXPORTED)}"
        _EXPORTED[key] = export_model(str(src), out, quiet=True, **kwargs)
    return _EXPORTED[key]
