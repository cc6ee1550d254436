"""Carry a Hugging Face folder's tokenizer into the package and record text pre/post-processing.

When the source folder holds ``tokenizer.json`` (a fast tokenizer), the package gets a copy (hashed
like every package file) plus ``tokenizer_config.json`` / ``chat_template.jinja`` when present, and
the manifest's ``extra["text"]`` records what the runtime needs to go from text to tensors and back
with the ``tokenizers`` library alone (no transformers, no torch):

    {"tokenizer": "tokenizer.json", "task": "text-generation" | "text-classification" |
     "token-classification" | "feature-extraction", "chat_template": str | None,
     "special_tokens": {"bos": ..., "eos": ..., "pad": ...}, "id2label": {...} (classifiers),
     "problem_type": "single_label_classification" | "multi_label_classification" | "regression" |
     None (sequence classifiers: Hugging Face's ``config.problem_type``),
     "pooling": "mean" | "cls", "normalize": bool (embeddings)}
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from torchport.runtimes._manifest_schema import PROBLEM_TYPES

__all__ = ["copy_text_assets", "source_folder", "text_task", "package_text_assets"]

TOKENIZER_FILE = "tokenizer.json"
_EXTRA_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)


def source_folder(reference: str) -> Path | None:
    """The folder of a Hugging Face source string (``folder`` or ``folder:component``)."""
    path = Path(reference)
    if path.is_dir():
        return path
    left, sep, _ = reference.rpartition(":")
    if sep and Path(left).is_dir():
        return Path(left)
    return None


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def copy_text_assets(reference: str, dest: Path, config: Any, *, task: str) -> dict[str, Any] | None:
    """Copy the tokenizer files of ``reference``'s folder into ``dest``; return ``extra["text"]``.

    Returns ``None`` when the folder has no ``tokenizer.json`` (the package then takes token ids only).
    The returned dict may hold ``generation_defaults`` (eos/bos/pad ids from ``generation_config.json``,
    which Hugging Face ``generate`` prefers over ``config.json``) for the caller to merge.
    """
    folder = source_folder(reference)
    if folder is None or not (folder / TOKENIZER_FILE).is_file():
        return None
    shutil.copyfile(folder / TOKENIZER_FILE, dest / TOKENIZER_FILE)
    files = [TOKENIZER_FILE]
    for name in _EXTRA_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, dest / name)
            files.append(name)
    tok_config: dict[str, Any] = {}
    if (folder / "tokenizer_config.json").is_file():
        tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    if (folder / "special_tokens_map.json").is_file():  # older folders keep special tokens there
        legacy = json.loads((folder / "special_tokens_map.json").read_text())
        tok_config = {**legacy, **tok_config} if isinstance(legacy, dict) else tok_config
    template = tok_config.get("chat_template")
    if isinstance(template, list):  # named templates: transformers uses "default"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text()
    text: dict[str, Any] = {
        "tokenizer": TOKENIZER_FILE,
        "files": files,
        "task": task,
        "chat_template": template if isinstance(template, str) else None,
        "special_tokens": {
            k: _token_text(tok_config.get(f"{k}_token"))
            for k in ("bos", "eos", "pad", "unk", "cls", "sep", "mask")
        },
    }
    if task in ("text-classification", "token-classification"):
        labels = getattr(config, "id2label", None) or {}
        text["id2label"] = {str(k): str(v) for k, v in labels.items()}
    if task == "text-classification":  # picks softmax, sigmoid or none, as Hugging Face's pipeline
        problem = getattr(config, "problem_type", None)
        text["problem_type"] = problem if problem in PROBLEM_TYPES else None
    if (folder / "generation_config.json").is_file():
        gen = json.loads((folder / "generation_config.json").read_text())
        defaults = {k: _ids(gen.get(k)) for k in ("eos_token_id", "bos_token_id", "pad_token_id") if k in gen}
        text["generation_defaults"] = defaults
    return text


def text_task(module: Any) -> str | None:
    """The text task of a Hugging Face model class (``None`` when it does not take text)."""
    name = type(module).__name__
    for suffix, task in (
        ("ForSequenceClassification", "text-classification"),
        ("ForTokenClassification", "token-classification"),
        ("ForMaskedLM", "fill-mask"),
        ("ForCausalLM", "text-generation"),
        ("LMHeadModel", "text-generation"),
        ("ForQuestionAnswering", "question-answering"),
    ):
        if name.endswith(suffix):
            return task
    return "feature-extraction" if name.endswith("Model") else None


def _pooling(folder: Path) -> dict[str, Any]:
    """Embedding pooling from a sentence-transformers layout (``1_Pooling/config.json``, ``modules.json``);
    mean pooling without normalization otherwise."""
    pooling, normalize = "mean", False
    cfg = folder / "1_Pooling" / "config.json"
    if cfg.is_file():
        data = json.loads(cfg.read_text())
        if data.get("pooling_mode_cls_token"):
            pooling = "cls"
        elif data.get("pooling_mode_max_tokens"):
            pooling = "max"
    modules = folder / "modules.json"
    if modules.is_file():
        normalize = any("Normalize" in str(m.get("type", "")) for m in json.loads(modules.read_text()))
    return {"pooling": pooling, "normalize": normalize}


def package_text_assets(loaded: Any, dest: Path, input_names: list[str]) -> dict[str, Any] | None:
    """``extra["text"]`` for a plain (non-generation) export of a Hugging Face text model, its
    tokenizer copied into ``dest``; ``None`` for other models or folders without ``tokenizer.json``."""
    if loaded.kind != "huggingface" or loaded.module is None or "input_ids" not in input_names:
        return None
    task = text_task(loaded.module)
    if task is None:
        return None
    text = copy_text_assets(loaded.reference, dest, loaded.hf_config, task=task)
    if text is None:
        return None
    text.pop("generation_defaults", None)
    if task == "feature-extraction":
        folder = source_folder(loaded.reference)
        assert folder is not None
        text.update(_pooling(folder))
    return text
