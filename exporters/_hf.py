"""Loading a local Hugging Face model folder and deriving example inputs from its config.

Only local files are read (``local_files_only=True``), never the hub, and no code from the folder is
run (``trust_remote_code=False``).

Example inputs from the config, by what ``forward()`` takes:

- text (``input_ids``): ``input_ids[batch,seq]`` with values in ``[0, vocab_size-1]``, plus
  ``attention_mask[batch,seq]`` (all ones) when forward takes it, plus ``token_type_ids`` when
  forward takes it and the config has ``type_vocab_size``; encoder-decoder models also get
  ``decoder_input_ids[batch,decoder_seq]``.
- vision (``pixel_values``): ``[batch, num_channels, image_size, image_size]`` (image dims fixed).
- audio: ``input_values[batch,samples]`` (wav2vec2-like, ``samples`` from what the feature extractor
  turns into 2 frames, up to 16000) or ``input_features[batch,num_mel_bins,2*max_source_positions]`` (Whisper;
  the time dim is fixed at what the encoder requires, 3000 for real Whisper checkpoints).

Default ranges: ``batch=1..32``, ``seq=1..min(max_position_embeddings, 512)``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from torchport.exporters._example_inputs import ExampleInputs
from torchport.exporters._loaded_model import LoadedModel
from torchport.exporters._untrusted import is_refused_pickle
from torchport.runtimes._errors import LoadError, TorchportError, describe_error
from torchport.runtimes._manifest import DimRange, TensorSpec

__all__ = ["load_hf_folder", "hf_folder_sha256", "hf_example_inputs"]

DEFAULT_BATCH = DimRange(1, 32)
MAX_SEQ = 512

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")
_CONFIG_FILES = ("config.json", "generation_config.json")


def hf_folder_sha256(folder: Path) -> str:
    """sha256 over a Hugging Face folder's config and weight files (names sorted, each name and content hashed)."""
    h = hashlib.sha256()
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and (p.name in _CONFIG_FILES or p.name.endswith(_WEIGHT_SUFFIXES) or p.name.endswith(".index.json"))
    )
    for p in files:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(functools.partial(f.read, 1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Silence transformers' "Loading weights" progress bars (torchport prints its own stages)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        yield
        return
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _model_class(config: Any, folder: Path) -> Any:
    import transformers

    archs = list(getattr(config, "architectures", None) or [])
    for arch in archs:
        cls = getattr(transformers, arch, None)
        if isinstance(cls, type):
            return cls
    if getattr(config, "auto_map", None):
        raise LoadError(
            f"{folder} needs custom code from the folder (auto_map in config.json), which torchport does not run; "
            "build the model in a file and pass file.py:factory"
        )
    if archs:
        from transformers import (
            AutoModel,
            AutoModelForCausalLM,
            AutoModelForImageClassification,
            AutoModelForMaskedLM,
            AutoModelForSeq2SeqLM,
            AutoModelForSequenceClassification,
        )

        name = archs[0]
        for suffix, auto in (
            ("ForCausalLM", AutoModelForCausalLM),
            ("LMHeadModel", AutoModelForCausalLM),
            ("ForMaskedLM", AutoModelForMaskedLM),
            ("ForSequenceClassification", AutoModelForSequenceClassification),
            ("ForImageClassification", AutoModelForImageClassification),
            ("ForConditionalGeneration", AutoModelForSeq2SeqLM),
        ):
            if name.endswith(suffix):
                return auto
        return AutoModel
    from transformers import AutoModel

    return AutoModel


def load_hf_folder(
    folder: Path, source: str, *, component: str | None = None, attn_implementation: str | None = None
) -> Any:
    """Load a ``save_pretrained`` folder into a :class:`~torchport.exporters.LoadedModel`.

    Args:
        folder: the folder (must hold ``config.json``).
        source: the source string as the user gave it.
        component: ``"encoder"`` keeps ``model.get_encoder()`` of an encoder-decoder model (Whisper,
            T5, BART...).
        attn_implementation: ``"sdpa"`` (default; falls back to ``"eager"`` when the model has no
            SDPA support) or ``"eager"``.
    """
    if not (folder / "config.json").is_file():
        raise LoadError(
            f"{folder} has no config.json: not a Hugging Face model folder (save one with model.save_pretrained)"
        )
    try:
        import transformers  # noqa: F401
        from transformers import AutoConfig
    except ImportError as e:
        raise LoadError(f"loading {folder} needs transformers: pip install 'torchport[hf]' ({e})") from e
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001
        raise LoadError(f"cannot read {folder}/config.json: {describe_error(e)}") from e
    cls = _model_class(config, folder)
    has_weights = any(p.name.endswith(_WEIGHT_SUFFIXES) for p in folder.iterdir() if p.is_file())
    if not has_weights:
        raise LoadError(
            f"{folder} has a config.json but no weights (*.safetensors or *.bin); save with save_pretrained"
        )
    attempts = [attn_implementation] if attn_implementation else ["sdpa", "eager"]
    model = None
    for i, attn in enumerate(attempts):
        try:
            with _no_progress_bars():
                model = cls.from_pretrained(
                    str(folder),
                    config=config,
                    local_files_only=True,
                    trust_remote_code=False,
                    attn_implementation=attn,
                )
            break
        except Exception as e:  # noqa: BLE001
            text = str(e).lower()
            if is_refused_pickle(e):
                raise LoadError(
                    f"{folder} has weights that are pickled Python objects beyond tensors; torchport loads "
                    "weights with weights_only=True and refuses untrusted pickles: re-save the model with "
                    "save_pretrained() (model.safetensors)"
                ) from e
            if i + 1 < len(attempts) and any(w in text for w in ("attn", "attention", "sdpa")):
                continue
            raise LoadError(
                f"cannot load {folder} as {getattr(cls, '__name__', cls)}: {describe_error(e)}"
            ) from e
    assert model is not None
    model.eval()
    module: torch.nn.Module = model
    if component == "encoder":
        get = getattr(model, "get_encoder", None)
        encoder = get() if callable(get) and getattr(config, "is_encoder_decoder", False) else None
        if not isinstance(encoder, torch.nn.Module) or encoder is model:
            raise LoadError(f"{type(model).__name__} in {folder} has no separate encoder; drop ':encoder'")
        module = encoder.eval()
    try:
        signature = inspect.signature(module.forward)
    except (TypeError, ValueError):
        signature = None
    defaults = _hf_defaults(config, signature)
    float_dtype = _float_dtype(module)
    examples = None
    try:
        examples = hf_example_inputs(config, signature, defaults, float_dtype=float_dtype)
    except TorchportError as e:
        examples = None
        defaults["no_examples_reason"] = f"the Hugging Face config gives no inputs: {e}"
    return LoadedModel(
        module=module,
        kind="huggingface",
        reference=source,
        sha256=hf_folder_sha256(folder),
        example_inputs=examples,
        hf_config=config,
        forward_signature=signature,
        example_source="huggingface" if examples is not None else None,
        hf_defaults=defaults,
    )


def _text_config(config: Any) -> Any:
    get = getattr(config, "get_text_config", None)
    if callable(get):
        try:
            return get()
        except Exception:  # noqa: BLE001
            return config
    return config


def _audio_min_samples(config: Any) -> int:
    """Fewest samples a wav2vec2-like feature extractor turns into 2 frames (1 frame gets specialized)."""
    kernels = list(getattr(config, "conv_kernel", None) or [])
    strides = list(getattr(config, "conv_stride", None) or [])
    if not kernels or len(kernels) != len(strides):
        return 400 + 320
    rf, hop = 1, 1
    for k, s in zip(reversed(kernels), reversed(strides), strict=True):
        rf = (rf - 1) * int(s) + int(k)
    for s in strides:
        hop *= int(s)
    return rf + hop


#: model types whose position ids start at pad_token_id + 1 (so the longest sequence is shorter)
_PADDING_OFFSET_POSITIONS = frozenset(
    {
        "roberta",
        "camembert",
        "xlm-roberta",
        "xlm-roberta-xl",
        "data2vec-text",
        "ibert",
        "longformer",
        "markuplm",
    }
)


def _hf_defaults(config: Any, signature: inspect.Signature | None) -> dict[str, Any]:
    """Default dim ranges, example sizes and value ranges for a Hugging Face config."""
    text = _text_config(config)
    max_pos = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
    pad = getattr(text, "pad_token_id", None)
    if (
        getattr(text, "model_type", None) in _PADDING_OFFSET_POSITIONS
        and isinstance(max_pos, int)
        and isinstance(pad, int)
    ):
        max_pos -= pad + 1  # RoBERTa-style position ids start after the padding index
    seq_max = min(int(max_pos), MAX_SEQ) if isinstance(max_pos, int) and max_pos > 0 else MAX_SEQ
    dims: dict[str, DimRange] = {"batch": DEFAULT_BATCH, "seq": DimRange(1, seq_max)}
    dec_max = None
    if getattr(config, "is_encoder_decoder", False):
        dec_max = getattr(config, "max_target_positions", None) or max_pos
        dims["decoder_seq"] = DimRange(1, min(int(dec_max), MAX_SEQ) if isinstance(dec_max, int) else MAX_SEQ)
    # masks take 0 (padding) and 1; generated examples are all ones (see runtimes' random_tensor)
    value_ranges: dict[str, tuple[float, float]] = {
        "attention_mask": (0, 1),
        "decoder_attention_mask": (0, 1),
    }
    vocab = getattr(text, "vocab_size", None)
    if isinstance(vocab, int) and vocab > 0:
        value_ranges["input_ids"] = (0, vocab - 1)
        value_ranges["decoder_input_ids"] = (0, vocab - 1)
    tvs = getattr(text, "type_vocab_size", None)
    if isinstance(tvs, int) and tvs > 0:
        value_ranges["token_type_ids"] = (0, tvs - 1)
    limits: dict[str, int] = {}
    if isinstance(max_pos, int) and max_pos > 0:
        limits["seq"] = max_pos
    if "decoder_seq" in dims and isinstance(dec_max, int) and dec_max > 0:
        limits["decoder_seq"] = dec_max
    sizes: dict[str, int] = {}
    params = set(signature.parameters) if signature is not None else set()
    if "input_values" in params:
        low = _audio_min_samples(config)
        dims["samples"] = DimRange(low, max(low, 16000))
        sizes["samples"] = min(
            max(low, 16000), low * 4 + 1
        )  # not a multiple of the hop: no divisibility guard
    return {"dims": dims, "value_ranges": value_ranges, "sizes": sizes, "limits": limits}


def _image_size(config: Any) -> tuple[int, int] | None:
    vision = getattr(config, "vision_config", None) or config
    size = getattr(vision, "image_size", None)
    if isinstance(size, int):
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    if isinstance(size, dict) and "height" in size:
        return int(size["height"]), int(size["width"])
    return None


def _float_dtype(module: torch.nn.Module) -> str:
    """The dtype float inputs get: the model's parameter dtype (float32 for a float32 checkpoint)."""
    for p in module.parameters():
        if p.is_floating_point():
            return {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64"}.get(
                p.dtype, "float32"
            )
    return "float32"


def hf_example_inputs(
    config: Any,
    signature: inspect.Signature | None,
    defaults: dict[str, Any],
    *,
    float_dtype: str = "float32",
) -> ExampleInputs:
    """Example inputs for a Hugging Face model from its config (see the module docstring)."""
    if signature is None:
        raise LoadError("cannot read the model's forward() signature")
    params = signature.parameters
    text = _text_config(config)
    vr = defaults["value_ranges"]
    specs: list[TensorSpec] = []
    if "input_ids" in params:
        specs.append(TensorSpec("input_ids", "int64", ["batch", "seq"], vr.get("input_ids")))
        if "attention_mask" in params:
            specs.append(TensorSpec("attention_mask", "int64", ["batch", "seq"], vr["attention_mask"]))
        if "token_type_ids" in params and "token_type_ids" in vr:
            specs.append(TensorSpec("token_type_ids", "int64", ["batch", "seq"], vr["token_type_ids"]))
    if "pixel_values" in params:
        hw = _image_size(config)
        vision = getattr(config, "vision_config", None) or config
        if hw is None:
            raise LoadError("config has no image_size")
        channels = int(getattr(vision, "num_channels", 3) or 3)
        specs.append(TensorSpec("pixel_values", float_dtype, ["batch", channels, hw[0], hw[1]]))
    if "input_values" in params:
        specs.append(TensorSpec("input_values", float_dtype, ["batch", "samples"]))
    elif "input_features" in params:
        mels = getattr(config, "num_mel_bins", None)
        src = getattr(config, "max_source_positions", None)
        if not (isinstance(mels, int) and isinstance(src, int)):
            raise LoadError("config has no num_mel_bins/max_source_positions for input_features")
        specs.append(TensorSpec("input_features", float_dtype, ["batch", mels, 2 * src]))
    if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in params:
        specs.append(
            TensorSpec("decoder_input_ids", "int64", ["batch", "decoder_seq"], vr.get("decoder_input_ids"))
        )
    if not specs:
        raise LoadError("forward() takes none of input_ids, pixel_values, input_values, input_features")
    del text
    used = {d for s in specs for d in s.shape if isinstance(d, str)}
    dims = {k: v for k, v in defaults["dims"].items() if k in used}
    return ExampleInputs.from_specs(specs, dims, signature=signature, example_sizes=defaults.get("sizes"))
