"""Flattening model outputs to named tensors, and the wrapper modules capture runs on.

Models return tensors, tuples, lists, dicts, dataclasses, Hugging Face ``ModelOutput`` objects and
cache objects (``DynamicCache``). ONNX wants a flat list of named tensors, so:

* :func:`flatten_outputs` turns any of those into ``[(name, tensor), ...]`` with stable names:
  a single tensor is ``output``; dict and ``ModelOutput`` keys keep their names (``logits``,
  ``last_hidden_state``); tuple/list items are ``output_0, output_1, ...`` at the top level and
  ``<parent>.<i>`` below it; a cache object becomes ``present.<layer>.key`` / ``present.<layer>.value``.
  ``None`` entries are skipped.
* :class:`OutputSelection` says which of those names are exported: ``"default"`` (causal language
  models: ``logits`` only; other models: everything except caches), ``"all"``, or explicit names.
  A past-key-values variant is a later selection (``"present"``) over the same names.
* :class:`FlatModule` wraps the user's model so the captured graph takes the flat list of input
  tensors (in :class:`~torchport.exporters.ExampleInputs` spec order) and returns a flat tuple of the
  selected outputs. Both export paths (torch.export and the TorchScript exporter) capture it.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from torchport.runtimes._errors import UsageError

__all__ = ["FlatModule", "OutputSelection", "flatten_outputs", "is_causal_lm"]

#: output modes accepted by ``--outputs`` besides explicit names
OUTPUT_MODES = ("default", "all")


def _is_cache(obj: Any) -> bool:
    """True for a transformers cache object (``DynamicCache``, ``EncoderDecoderCache``...)."""
    for cls in type(obj).__mro__:
        if cls.__name__ == "Cache" and cls.__module__.startswith("transformers"):
            return True
    return False


#: one step from an output object to a part of it: ("item", key), ("attr", name), ("index", i), ("leaf", i)
Step = tuple[str, Any]
Flat = list[tuple[str, torch.Tensor, tuple[Step, ...]]]


def _cache_tensors(cache: Any, prefix: str, path: tuple[Step, ...]) -> Flat:
    """``present.<i>.key/value`` tensors of a transformers cache (both 4.x and 5.x layouts)."""
    out: Flat = []
    inner = [a for a in ("self_attention_cache", "cross_attention_cache") if hasattr(cache, a)]
    if inner:  # EncoderDecoderCache
        for attr, name in zip(inner, ("present", "present_cross"), strict=False):
            sub_prefix = name if prefix == "present" else f"{prefix}.{name}"
            out += _cache_tensors(getattr(cache, attr), sub_prefix, (*path, ("attr", attr)))
        return out
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for i, layer in enumerate(layers):
            for attr, label in (("keys", "key"), ("values", "value")):
                t = getattr(layer, attr, None)
                if isinstance(t, torch.Tensor):
                    out.append(
                        (
                            f"{prefix}.{i}.{label}",
                            t,
                            (*path, ("attr", "layers"), ("index", i), ("attr", attr)),
                        )
                    )
        return out
    if getattr(cache, "key_cache", None) is None or getattr(cache, "value_cache", None) is None:
        return []
    for i in range(len(cache.key_cache)):
        for attr, label in (("key_cache", "key"), ("value_cache", "value")):
            out.append(
                (f"{prefix}.{i}.{label}", getattr(cache, attr)[i], (*path, ("attr", attr), ("index", i)))
            )
    return out


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _flatten(obj: Any, prefix: str, path: tuple[Step, ...]) -> Flat:
    if isinstance(obj, torch.Tensor):
        return [(prefix or "output", obj, path)]
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return []
    if _is_cache(obj):
        # a cache at the top level of the output (``past_key_values``, ``cache``...) is ``present``
        return _cache_tensors(obj, "present" if "." not in prefix else prefix, path)
    out: Flat = []
    if isinstance(obj, Mapping):  # includes transformers ModelOutput (an OrderedDict)
        for key, value in obj.items():
            sub = "past_key_values" if key == "past_key_values" and not prefix else _join(prefix, key)
            out += _flatten(value, sub, (*path, ("item", key)))
        return out
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            out += _flatten(getattr(obj, f.name), _join(prefix, f.name), (*path, ("attr", f.name)))
        return out
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        for key in obj._fields:
            out += _flatten(getattr(obj, key), _join(prefix, key), (*path, ("attr", key)))
        return out
    if isinstance(obj, (list, tuple)):
        if prefix == "past_key_values":  # legacy cache: ((k, v), (k, v), ...)
            for i, layer in enumerate(obj):
                if isinstance(layer, (list, tuple)) and len(layer) == 2:
                    out += [
                        (f"present.{i}.key", layer[0], (*path, ("index", i), ("index", 0))),
                        (f"present.{i}.value", layer[1], (*path, ("index", i), ("index", 1))),
                    ]
                else:
                    out += _flatten(layer, f"present.{i}", (*path, ("index", i)))
            return out
        for i, value in enumerate(obj):
            out += _flatten(value, f"{prefix}.{i}" if prefix else f"output_{i}", (*path, ("index", i)))
        return out
    leaves, _ = pytree.tree_flatten(obj)  # registered pytree types
    if len(leaves) == 1 and leaves[0] is obj:
        return []
    for i, leaf in enumerate(leaves):
        out += _flatten(leaf, f"{prefix}.{i}" if prefix else f"output_{i}", (*path, ("leaf", i)))
    return out


def flatten_outputs(obj: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Flatten a model's output into ``[(name, tensor), ...]`` with stable names.

    Args:
        obj: what ``model(...)`` returned.
        prefix: name prefix (used when recursing).

    Returns:
        The tensors in a deterministic order, each with its name. Non-tensor leaves (``None``,
        Python numbers, strings) are skipped.

    Example:
        >>> [n for n, _ in flatten_outputs({"logits": torch.ones(1), "aux": (torch.ones(1), None)})]
        ['logits', 'aux.0']
        >>> [n for n, _ in flatten_outputs((torch.ones(1), torch.ones(1)))]
        ['output_0', 'output_1']
    """
    return [(name, t) for name, t, _ in _flatten(obj, prefix, ())]


def _follow(obj: Any, path: tuple[Step, ...]) -> Any:
    """The part of ``obj`` at ``path`` (see :data:`Step`); plain indexing, so TorchDynamo traces it."""
    for kind, key in path:
        if kind == "item":
            obj = obj[key]
        elif kind == "attr":
            obj = getattr(obj, key)
        elif kind == "index":
            obj = obj[key]
        else:
            obj = pytree.tree_leaves(obj)[key]
    return obj


def is_causal_lm(model: nn.Module) -> bool:
    """True for a text-generation model (``*ForCausalLM``, ``*LMHeadModel``)."""
    name = type(model).__name__
    return name.endswith("ForCausalLM") or name.endswith("LMHeadModel")


@dataclass(frozen=True)
class OutputSelection:
    """Which flattened outputs to export.

    Attributes:
        mode: ``"default"`` (causal LMs: ``logits``; other models: every output except caches),
            ``"all"`` (every output, caches as ``present.<i>.key/value``), or ``"names"``.
        names: the explicit names when ``mode == "names"``.

    Example:
        >>> OutputSelection.parse("logits").names
        ('logits',)
        >>> OutputSelection.parse(None).mode
        'default'
    """

    mode: str = "default"
    names: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: str | Sequence[str] | OutputSelection | None) -> OutputSelection:
        """From ``None``/``"default"``, ``"all"``, ``"logits"``, ``"a,b"`` or a list of names."""
        if isinstance(value, OutputSelection):
            return value
        if value is None:
            return cls()
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
        else:
            parts = [str(p).strip() for p in value]
        if not parts:
            raise UsageError('--outputs is empty; use "default", "all" or output names such as "logits"')
        if len(parts) == 1 and parts[0] in OUTPUT_MODES:
            return cls(mode=parts[0])
        return cls(mode="names", names=tuple(parts))

    def use_cache(self) -> bool:
        """Whether the model should build its key/value cache (only when cache outputs are asked for)."""
        return self.mode == "all" or any(n.startswith("present") for n in self.names)

    def select(self, named: list[tuple[str, Any]], model: nn.Module | None = None) -> list[int]:
        """Indexes of the outputs in ``named`` to export.

        Raises:
            UsageError: an explicit name the model does not return (lists those it does).
        """
        names = [n for n, _ in named]
        if self.mode == "all":
            return list(range(len(names)))
        if self.mode == "default":
            if model is not None and is_causal_lm(model) and "logits" in names:
                return [names.index("logits")]
            keep = [i for i, n in enumerate(names) if not n.startswith(("present.", "present_cross."))]
            return keep or list(range(len(names)))
        missing = [n for n in self.names if n not in names]
        if missing:
            raise UsageError(
                f"--outputs {', '.join(missing)}: the model returns no output of that name; "
                f"it returns: {', '.join(names) or '(none)'}"
            )
        return [names.index(n) for n in self.names]

    def __str__(self) -> str:
        return ",".join(self.names) if self.mode == "names" else self.mode


def _accepts_kwarg(model: nn.Module, name: str) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def call_kwargs(model: nn.Module, selection: OutputSelection) -> dict[str, Any]:
    """Extra keyword arguments the wrapper passes: ``use_cache=False`` for Hugging Face models that
    take it, unless cache outputs were asked for, and ``return_dict=True`` so outputs carry names."""
    extra: dict[str, Any] = {}
    if getattr(model, "config", None) is not None and hasattr(model.config, "use_cache"):
        if _accepts_kwarg(model, "use_cache"):
            extra["use_cache"] = selection.use_cache()
        if _accepts_kwarg(model, "return_dict"):
            extra["return_dict"] = True
    return extra


class FlatModule(nn.Module):
    """Flat tensors in, flat tuple of selected outputs out, around the user's model.

    The inputs are the tensor leaves of ``(args, kwargs)`` in pytree order (the order of
    :attr:`ExampleInputs.specs`); non-tensor leaves are kept as captured constants.

    Example:
        >>> model = nn.Linear(4, 2)
        >>> flat = FlatModule.build(model, (torch.randn(3, 4),), {})
        >>> flat.output_names
        ['output']
        >>> flat(torch.randn(5, 4))[0].shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        model: nn.Module,
        treespec: pytree.TreeSpec,
        leaves: list[Any],
        tensor_positions: list[int],
        output_names: list[str],
        output_paths: list[tuple[Step, ...]],
        extra_kwargs: dict[str, Any],
    ) -> None:
        super().__init__()
        self.model = model
        self._treespec = treespec
        self._const_leaves = [None if i in set(tensor_positions) else v for i, v in enumerate(leaves)]
        self._tensor_positions = list(tensor_positions)
        self.output_names = list(output_names)
        self._output_paths = [tuple(p) for p in output_paths]
        self._extra_kwargs = dict(extra_kwargs)
        #: shapes of the selected outputs on the example inputs (set by :meth:`build`)
        self.example_output_shapes: list[list[int]] = []
        #: every flattened output is exported, in order (set by :meth:`build`)
        self.selects_all = False

    @classmethod
    def build(
        cls,
        model: nn.Module,
        args: tuple,
        kwargs: Mapping[str, Any] | None = None,
        selection: OutputSelection | str | Sequence[str] | None = None,
    ) -> FlatModule:
        """Wrap ``model`` for example inputs ``(args, kwargs)``: runs it once eagerly to learn the
        output structure and names."""
        selection = OutputSelection.parse(selection)
        kwargs = dict(kwargs or {})
        leaves, treespec = pytree.tree_flatten((tuple(args), kwargs))
        positions = [i for i, v in enumerate(leaves) if isinstance(v, torch.Tensor)]
        extra = {k: v for k, v in call_kwargs(model, selection).items() if k not in kwargs}
        with torch.no_grad():
            out = model(*args, **kwargs, **extra)
        flat_out = _flatten(out, "", ())
        named = [(n, t) for n, t, _ in flat_out]
        if not named:
            raise UsageError(f"the model returned no tensors (it returned a {type(out).__name__})")
        indexes = selection.select(named, model)
        names = [named[i][0] for i in indexes]
        flat = cls(model, treespec, leaves, positions, names, [flat_out[i][2] for i in indexes], extra)
        # the wrapper is in the user's mode (eval, as loaded): an exporter that restores the wrapper's
        # mode afterwards (the TorchScript one does, recursively) must not leave BatchNorm training
        flat.training = model.training
        flat.example_output_shapes = [list(named[i][1].shape) for i in indexes]
        flat.selects_all = indexes == list(range(len(named)))
        return flat

    @property
    def num_inputs(self) -> int:
        return len(self._tensor_positions)

    def flat_inputs(self, args: tuple, kwargs: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, ...]:
        """The tensor leaves of ``(args, kwargs)`` in the order :meth:`forward` takes them."""
        leaves, _ = pytree.tree_flatten((tuple(args), dict(kwargs or {})))
        return tuple(leaves[i] for i in self._tensor_positions)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        leaves = list(self._const_leaves)
        for k, pos in enumerate(self._tensor_positions):
            leaves[pos] = tensors[k]
        args, kwargs = pytree.tree_unflatten(leaves, self._treespec)
        out = self.model(*args, **kwargs, **self._extra_kwargs)
        return tuple(_follow(out, path) for path in self._output_paths)
