"""Generating inputs from a signature (numpy only): for validation, calibration and warm-up."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from torchport.runtimes._dtypes import to_numpy
from torchport.runtimes._errors import InferenceInputError, UsageError
from torchport.runtimes._manifest import DimRange, TensorSpec


def concrete_shape(spec: TensorSpec, dims: Mapping[str, int]) -> tuple[int, ...]:
    """Shape of ``spec`` with each named dim replaced by its value in ``dims``.

    A dim named as a sum of dims (``"past_seq+seq"``, a decoder's attention mask) is their sum.
    """
    shape = []
    for d in spec.shape:
        if isinstance(d, int):
            shape.append(d)
        elif d is None:
            raise UsageError(f"input {spec.name!r} has an unnamed dynamic dim; name it with --input/--dim")
        elif d in dims:
            shape.append(int(dims[d]))
        elif "+" in d and all(p in dims for p in d.split("+")):
            shape.append(sum(int(dims[p]) for p in d.split("+")))
        else:
            raise UsageError(f"input {spec.name!r}: no value for dynamic dim {d!r}")
    return tuple(shape)


def format_shape(shape: Sequence[object]) -> str:
    """``[batch, 4]``-style text of a spec's shape (``?`` for an unnamed dynamic dim)."""
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def check_shape(
    spec: TensorSpec,
    shape: Sequence[int],
    dynamic_dims: Mapping[str, DimRange],
    seen: dict[str, tuple[int, str]],
) -> None:
    """Check ``shape`` against ``spec``: rank, fixed dims, each named dim's range, and one value per
    named dim across inputs (``seen`` collects them: ``{dim: (value, input name)}``).

    Example:
        >>> check_shape(TensorSpec("x", "float32", ["batch", 4]), (2, 5), {}, {})
        Traceback (most recent call last):
        ...
        torchport.runtimes._errors.InferenceInputError: input 'x' dim 1 is 5, expected 4 (shape [2, 5], expected [batch, 4])

    Raises:
        InferenceInputError: naming the input, the dim and what was expected.
    """
    name = spec.name
    if len(shape) != len(spec.shape):
        raise InferenceInputError(
            f"input {name!r} has rank {len(shape)} (shape {list(shape)}), expected rank "
            f"{len(spec.shape)}: {format_shape(spec.shape)}"
        )
    for axis, (got, want) in enumerate(zip(shape, spec.shape)):
        if isinstance(want, int):
            if got != want:
                raise InferenceInputError(
                    f"input {name!r} dim {axis} is {got}, expected {want} "
                    f"(shape {list(shape)}, expected {format_shape(spec.shape)})"
                )
        elif isinstance(want, str):
            rng = dynamic_dims.get(want)
            if rng is not None and got not in rng:
                raise InferenceInputError(
                    f"input {name!r} dim {axis} ({want!r}) is {got}, outside its range {rng.min}..{rng.max}"
                )
            if want in seen and seen[want][0] != got:
                raise InferenceInputError(
                    f"input {name!r} dim {axis} ({want!r}) is {got} but input {seen[want][1]!r} has "
                    f"{want}={seen[want][0]}; they must be equal"
                )
            seen.setdefault(want, (got, name))


def check_value_range(spec: TensorSpec, arr: np.ndarray) -> None:
    """Refuse integer values outside ``spec.value_range`` (token ids past the embedding table...).

    Example:
        >>> check_value_range(TensorSpec("ids", "int64", [2], (0, 9)), np.array([3, 12]))
        Traceback (most recent call last):
        ...
        torchport.runtimes._errors.InferenceInputError: input 'ids' has values outside its range 0..9 (min 3, max 12)

    Raises:
        InferenceInputError: naming the input, its range and the offending extremes.
    """
    if spec.value_range is None or arr.dtype.kind not in "iu" or arr.size == 0:
        return
    low, high = (int(v) if float(v).is_integer() else v for v in spec.value_range)
    got_low, got_high = arr.min().item(), arr.max().item()
    if got_low < low or got_high > high:
        raise InferenceInputError(
            f"input {spec.name!r} has values outside its range {low}..{high} (min {got_low}, max {got_high})"
        )


#: the inputs that generated examples fill with ones (see :func:`random_tensor`)
ATTENTION_MASKS = frozenset({"attention_mask", "decoder_attention_mask"})


def random_tensor(spec: TensorSpec, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """A random array for ``spec``: floats ~ N(0, 1), ints in ``value_range`` (default 0..9), bools.

    Attention masks (integer inputs named ``attention_mask`` / ``decoder_attention_mask`` that take
    0..1) are all ones: random zeros and ones make rows that mask everything, which is not an input
    a model is meant to see. Other 0..1 inputs get random zeros and ones.

    Example:
        >>> random_tensor(TensorSpec("attention_mask", "int64", [1, 3], (0, 1)), [1, 3], np.random.default_rng(0))
        array([[1, 1, 1]])
    """
    if spec.dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if spec.dtype == "string":
        return np.array(["x"] * int(np.prod(shape)), dtype=object).reshape(shape)
    dtype = to_numpy(spec.dtype)
    if dtype.kind in "iu":
        low, high = spec.value_range or (0, 9)
        if spec.name in ATTENTION_MASKS and (low, high) == (0, 1):
            return np.ones(shape, dtype)
        return rng.integers(int(low), int(high) + 1, size=shape).astype(dtype)
    if spec.value_range is not None:
        low, high = spec.value_range
        return rng.uniform(low, high, size=shape).astype(dtype)
    return rng.standard_normal(size=shape).astype(dtype)


def random_inputs(
    specs: Sequence[TensorSpec], dims: Mapping[str, int], rng: np.random.Generator | int | None = None
) -> dict[str, np.ndarray]:
    """One random input per spec, with dynamic dims set from ``dims``.

    Example:
        >>> specs = [TensorSpec("x", "float32", ["batch", 4])]
        >>> random_inputs(specs, {"batch": 2}, 0)["x"].shape
        (2, 4)
    """
    rng = np.random.default_rng(rng)
    return {s.name: random_tensor(s, concrete_shape(s, dims), rng) for s in specs}


def dim_sample_points(
    dynamic_dims: Mapping[str, DimRange], n: int, rng: np.random.Generator | int | None = None
) -> list[dict[str, int]]:
    """``n`` assignments of the dynamic dims: all-min, all-max, then random points in range.

    With no dynamic dims it returns ``[{}]`` (one point: the fixed signature).
    """
    rng = np.random.default_rng(rng)
    if not dynamic_dims:
        return [{}]
    points = [{k: r.min for k, r in dynamic_dims.items()}, {k: r.max for k, r in dynamic_dims.items()}]
    while len(points) < n:
        points.append({k: int(rng.integers(r.min, r.max + 1)) for k, r in dynamic_dims.items()})
    unique: list[dict[str, int]] = []
    for p in points[: max(n, 1)]:
        if p not in unique:
            unique.append(p)
    return unique
