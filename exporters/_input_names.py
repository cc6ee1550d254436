"""Naming and placing model inputs by the forward signature; walking nested inputs to their tensors.

Leaf names follow the model's ``forward()`` signature: a plain tensor parameter keeps its name
(``input_ids``), dict entries become ``<param>_<key>`` and list/tuple entries ``<param>_<index>``
(nested levels joined by ``_``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch

from torchport.runtimes._errors import UsageError

__all__ = [
    "arg_names",
    "has_tensor",
    "map_leaves",
    "order_kwargs",
    "param_names",
    "place_by_name",
    "tensor_leaves",
    "top_level_inputs",
]


def param_names(signature: inspect.Signature | None) -> tuple[list[str], str | None, str | None]:
    """(positional parameter names, *args name, **kwargs name) of a forward signature."""
    if signature is None:
        return [], None, None
    positional: list[str] = []
    var_pos = var_kw = None
    for p in signature.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional.append(p.name)
        elif p.kind == p.VAR_POSITIONAL:
            var_pos = p.name
        elif p.kind == p.VAR_KEYWORD:
            var_kw = p.name
    return positional, var_pos, var_kw


def arg_names(signature: inspect.Signature | None, n_args: int) -> list[str]:
    """Names of ``n_args`` positional inputs: the forward parameter names, then ``<*args>_<i>``."""
    positional, var_pos, _ = param_names(signature)
    names = []
    for i in range(n_args):
        if i < len(positional):
            names.append(positional[i])
        else:
            names.append(f"{var_pos or 'input'}_{i - len(positional)}" if signature else f"input_{i}")
    if signature is None and n_args == 1:
        names = ["input"]
    return names


def order_kwargs(kwargs: Mapping[str, Any], signature: inspect.Signature | None) -> dict[str, Any]:
    """``kwargs`` ordered as the forward signature lists them (extra names keep their order, last)."""
    if signature is None:
        return dict(kwargs)
    order = [n for n in signature.parameters if n in kwargs]
    rest = [n for n in kwargs if n not in order]
    return {n: kwargs[n] for n in order + rest}


def _collect(value: Any, name: str, out: list[tuple[str, torch.Tensor]]) -> None:
    """Collect ``(leaf name, tensor)`` in pytree flattening order (dicts: insertion order)."""
    if isinstance(value, torch.Tensor):
        out.append((name, value))
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _collect(v, f"{name}_{k}", out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _collect(v, f"{name}_{i}", out)


def map_leaves(value: Any, name: str, fn: Any) -> Any:
    """Rebuild ``value`` with each tensor leaf replaced by ``fn(leaf_name, tensor)``; other leaves by ``fn(name, leaf)``."""
    if isinstance(value, torch.Tensor):
        return fn(name, value)
    if isinstance(value, Mapping):
        return {k: map_leaves(v, f"{name}_{k}", fn) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return type(value)(*(map_leaves(v, f"{name}_{i}", fn) for i, v in enumerate(value)))
    if isinstance(value, (list, tuple)):
        return type(value)(map_leaves(v, f"{name}_{i}", fn) for i, v in enumerate(value))
    return fn(name, value)


def top_level_inputs(
    args: tuple, kwargs: Mapping[str, Any], signature: inspect.Signature | None
) -> list[tuple[str, Any]]:
    return list(zip(arg_names(signature, len(args)), args, strict=True)) + list(kwargs.items())


# --------------------------------------------------------------------------- ExampleInputs


def place_by_name(
    values: Mapping[str, Any], signature: inspect.Signature | None, *, what: str
) -> tuple[list[Any], dict[str, Any]]:
    """Split named inputs into (leading positional args, kwargs) following the forward signature."""
    if signature is None:
        return list(values.values()), {}
    positional, _, var_kw = param_names(signature)
    params = signature.parameters
    unknown = [
        n
        for n in values
        if n not in params
        or params[n].kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if unknown and var_kw is None:
        accepted = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        raise UsageError(
            f"{what} names {', '.join(map(repr, unknown))} that forward() does not take; its parameters are: "
            f"{', '.join(accepted) or '(none)'}"
        )
    args: list[Any] = []
    for name in positional:
        if name in values:
            args.append(values[name])
        else:
            break
    kwargs = {n: v for n, v in values.items() if n not in positional[: len(args)]}
    pos_only_missing = [
        n for n in kwargs if n in params and params[n].kind == inspect.Parameter.POSITIONAL_ONLY
    ]
    if pos_only_missing:
        raise UsageError(
            f"{what}: positional-only parameter(s) {', '.join(pos_only_missing)} need every parameter before "
            "them too"
        )
    return args, kwargs


def has_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, Mapping):
        return any(has_tensor(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(has_tensor(v) for v in value)
    return False


def tensor_leaves(value: Any, name: str) -> list[tuple[str, torch.Tensor]]:
    """``(leaf name, tensor)`` of every tensor in ``value``, in pytree flattening order."""
    out: list[tuple[str, torch.Tensor]] = []
    _collect(value, name, out)
    return out
