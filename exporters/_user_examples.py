"""Example inputs from what the user gives: ``example_inputs()`` + ``DYNAMIC_DIMS``, sample files."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchport.exporters._example_inputs import ExampleInputs
from torchport.exporters._input_names import has_tensor, place_by_name
from torchport.runtimes._errors import UsageError, describe_error
from torchport.runtimes._manifest import DimRange

__all__ = ["example_from_object", "load_sample_file"]


def example_from_object(
    value: Any,
    *,
    signature: inspect.Signature | None,
    dynamic: Mapping[str, Mapping[int, Any]] | None = None,
    origin: str = "example_inputs()",
) -> ExampleInputs:
    """ExampleInputs from what ``example_inputs()`` returned (or a sample file held).

    Accepted: a tensor; a tuple/list (positional inputs); a dict (inputs by parameter name); a pair
    ``(tuple, dict)`` of args and kwargs; an :class:`ExampleInputs`. ``dynamic`` is a ``DYNAMIC_DIMS``
    mapping ``{param or leaf name: {axis: (dim name, min, max)}}``.
    """
    if isinstance(value, ExampleInputs):
        return value
    if isinstance(value, torch.Tensor):
        args, kwargs = (value,), {}
    elif (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], (tuple, list))
        and isinstance(value[1], Mapping)
        and all(isinstance(k, str) for k in value[1])
        and _looks_like_args_kwargs(value, signature)
    ):
        args, kwargs = tuple(value[0]), dict(value[1])
    elif isinstance(value, (tuple, list)):
        args, kwargs = tuple(value), {}
    elif isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise UsageError(f"{origin}: a dict of inputs needs str keys (forward parameter names)")
        a, kwargs = place_by_name(dict(value), signature, what=origin)
        args = tuple(a)
    else:
        raise UsageError(
            f"{origin} gave a {type(value).__name__}; return a tensor, a tuple of positional inputs, "
            "a dict of inputs by parameter name, or (args, kwargs)"
        )
    if not has_tensor((args, kwargs)):
        raise UsageError(f"{origin} holds no tensors")
    if signature is not None:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as e:
            raise UsageError(f"{origin} does not match forward{signature}: {e}") from None
    axes: dict[str, dict[int, str]] = {}
    ranges: dict[str, DimRange] = {}
    for key, spec in (dynamic or {}).items():
        axes[key] = {}
        for axis, entry in spec.items():
            if isinstance(entry, str):
                raise UsageError(f"DYNAMIC_DIMS[{key!r}][{axis}] needs (name, min, max), got {entry!r}")
            try:
                dim_name, low, high = entry
            except (TypeError, ValueError):
                raise UsageError(
                    f"DYNAMIC_DIMS[{key!r}][{axis}] needs (name, min, max), got {entry!r}"
                ) from None
            axes[key][int(axis)] = str(dim_name)
            rng = DimRange(int(low), int(high))
            if dim_name in ranges and ranges[dim_name] != rng:
                raise UsageError(
                    f"DYNAMIC_DIMS gives dim {dim_name!r} two ranges: {ranges[dim_name]} and {rng}"
                )
            ranges[str(dim_name)] = rng
    return ExampleInputs.from_tensors(args, kwargs, signature=signature, dynamic=axes, dims=ranges)


def _looks_like_args_kwargs(value: tuple, signature: inspect.Signature | None) -> bool:
    if signature is None:
        return True
    try:
        signature.bind(*value[0], **value[1])
        return True
    except TypeError:
        return False


def load_sample_file(path: str, *, signature: inspect.Signature | None) -> Any:
    """Read a ``.npz`` (keys = forward parameter names) or ``.pt`` (``weights_only=True``) sample file.

    Returns the raw structure (a dict of tensors, a tuple/list, or a tensor) for
    :func:`example_from_object`.
    """
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"sample file not found: {path}")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as data:
                return {k: torch.from_numpy(np.array(data[k])) for k in data.files}
        except Exception as e:  # noqa: BLE001 - any read error is the user's file
            raise UsageError(f"cannot read sample file {path}: {describe_error(e)}") from e
    if suffix in (".pt", ".pth"):
        try:
            return torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise UsageError(
                f"cannot read sample file {path} with weights_only=True ({type(e).__name__}): save a tensor, "
                "a tuple/list or a dict of tensors with torch.save"
            ) from e
    raise UsageError(f"sample file {path}: unsupported type {suffix or '(none)'}; use .npz or .pt")
