"""Example inputs for capture: ``--input``/``--dim`` parsing, naming, dynamic shapes, resolution.

An :class:`ExampleInputs` holds the positional and keyword inputs a model is captured with, one
:class:`~torchport.runtimes.TensorSpec` per leaf tensor (the package signature), and the named dynamic
dims with their ranges. It builds the ``dynamic_shapes`` argument of :func:`torch.export.export` and
fresh inputs at other sizes (:meth:`ExampleInputs.make`) for validation.

Leaf names follow the model's ``forward()`` signature: a plain tensor parameter keeps its name
(``input_ids``), dict entries become ``<param>_<key>`` and list/tuple entries ``<param>_<index>``
(nested levels joined by ``_``).
"""

from __future__ import annotations

import inspect
import keyword
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from torchport.runtimes._dtypes import SUPPORTED_DTYPES, check_dtype
from torchport.runtimes._errors import UsageError
from torchport.runtimes._inputs import concrete_shape, random_tensor
from torchport.runtimes._manifest import DimRange, TensorSpec

if TYPE_CHECKING:
    from torchport.exporters._loading import LoadedModel

__all__ = [
    "ExampleInputs",
    "parse_input_spec",
    "parse_dim_spec",
    "resolve_example_inputs",
    "example_size",
]

_INPUT_EXAMPLE = '"input_ids:int64[batch,seq]" or "x:float32[1,3,224,224]"'
_DIM_EXAMPLE = '"batch=1..64"'

#: manifest dtype name -> torch dtype (names torch lacks are left out)
TORCH_DTYPES: dict[str, torch.dtype] = {
    "bool": torch.bool,
    "uint8": torch.uint8,
    "uint16": torch.uint16,
    "uint32": torch.uint32,
    "uint64": torch.uint64,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "float16": torch.float16,
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
}
_FROM_TORCH: dict[torch.dtype, str] = {v: k for k, v in TORCH_DTYPES.items()}
_INPUT_DTYPES = tuple(d for d in SUPPORTED_DTYPES if d in TORCH_DTYPES)


def torch_dtype(name: str) -> torch.dtype:
    """torch dtype for a manifest dtype name (``"float32"`` → ``torch.float32``)."""
    norm = check_dtype(name)
    if norm not in TORCH_DTYPES:
        raise UsageError(
            f"unsupported dtype {name!r} for a torch input; use one of: {', '.join(_INPUT_DTYPES)}"
        )
    return TORCH_DTYPES[norm]


def dtype_name(dtype: torch.dtype) -> str:
    """Manifest dtype name of a torch dtype (``torch.float32`` → ``"float32"``)."""
    try:
        return _FROM_TORCH[dtype]
    except KeyError:
        raise UsageError(
            f"unsupported tensor dtype {dtype}; use one of: {', '.join(_INPUT_DTYPES)}"
        ) from None


# --------------------------------------------------------------------------- parsing


def _is_identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


_SPEC_RE = re.compile(r"^\s*(?P<name>[^:\[\]]*?)\s*:\s*(?P<dtype>[^\[\]]*?)\s*(?P<dims>\[.*)?$")


def parse_input_spec(text: str) -> TensorSpec:
    """Parse one ``--input`` spec: ``name:dtype[dim,dim,...]``.

    Dims are ints (fixed sizes) or names (dynamic dims, ranged with ``--dim``). ``name:float32[]`` is
    a scalar. An integer input may carry a value range: ``input_ids:int64[batch,seq]{0..30521}``.

    Args:
        text: the spec as typed on the command line.

    Returns:
        The :class:`~torchport.runtimes.TensorSpec`.

    Raises:
        UsageError: naming the bad part, with an example of the right form.

    Example:
        >>> parse_input_spec("input_ids:int64[batch,seq]")
        TensorSpec(name='input_ids', dtype='int64', shape=['batch', 'seq'], value_range=None)
        >>> parse_input_spec("x:float32[1,3,224,224]").shape
        [1, 3, 224, 224]
    """
    where = f"--input {text!r}"
    m = _SPEC_RE.match(text or "")
    if m is None:
        raise UsageError(f"{where}: expected name:dtype[dims], e.g. {_INPUT_EXAMPLE}")
    name, dtype_text, dims_text = m.group("name"), m.group("dtype"), m.group("dims")
    if not name:
        raise UsageError(f"{where}: the input name is missing before ':'; e.g. {_INPUT_EXAMPLE}")
    if not _is_identifier(name):
        raise UsageError(f"{where}: input name {name!r} is not a valid identifier; e.g. {_INPUT_EXAMPLE}")
    if not dtype_text:
        raise UsageError(f"{where}: the dtype is missing after ':'; e.g. {_INPUT_EXAMPLE}")
    try:
        dtype = check_dtype(dtype_text)
    except UsageError:
        raise UsageError(
            f"{where}: unsupported dtype {dtype_text!r}; use one of: {', '.join(_INPUT_DTYPES)}"
        ) from None
    if dtype not in TORCH_DTYPES:
        raise UsageError(f"{where}: unsupported dtype {dtype_text!r}; use one of: {', '.join(_INPUT_DTYPES)}")
    if dims_text is None:
        raise UsageError(f"{where}: the shape is missing; add [dims] after the dtype, e.g. {_INPUT_EXAMPLE}")
    dm = re.match(r"^\[(?P<inner>[^\[\]]*)\]\s*(?:\{(?P<range>[^{}]*)\})?\s*$", dims_text)
    if dm is None:
        raise UsageError(
            f"{where}: malformed shape {dims_text!r}; write it as [dim,dim,...], e.g. {_INPUT_EXAMPLE}"
        )
    inner = dm.group("inner").strip()
    shape: list[int | str] = []
    if inner:
        for part in inner.split(","):
            tok = part.strip()
            if not tok:
                raise UsageError(f"{where}: empty dim in {dims_text!r}; e.g. {_INPUT_EXAMPLE}")
            if re.fullmatch(r"\d+", tok):
                shape.append(int(tok))
            elif _is_identifier(tok):
                shape.append(tok)
            else:
                raise UsageError(
                    f"{where}: dim {tok!r} is neither a size (an int >= 0) nor a dim name (an identifier "
                    f"such as batch); e.g. {_INPUT_EXAMPLE}"
                )
    value_range = None
    if dm.group("range") is not None:
        rtext = dm.group("range").strip()
        rm = re.fullmatch(r"(-?\d+(?:\.\d+)?)\s*\.\.\s*(-?\d+(?:\.\d+)?)", rtext)
        if rm is None:
            raise UsageError(
                f"{where}: malformed value range {{{rtext}}}; write it as {{low..high}}, e.g. {{0..30521}}"
            )
        low, high = (float(rm.group(1)), float(rm.group(2)))
        if low > high:
            raise UsageError(f"{where}: value range {{{rtext}}} has low > high")
        if low.is_integer() and high.is_integer():
            low, high = int(low), int(high)
        value_range = (low, high)
    return TensorSpec(name=name, dtype=dtype, shape=shape, value_range=value_range)


def parse_dim_spec(text: str) -> tuple[str, DimRange]:
    """Parse one ``--dim`` spec: ``name=min..max`` (inclusive).

    Raises:
        UsageError: naming the bad part; ``batch=8`` (a single size) is refused with a hint to give a
            range, or to write the fixed size in ``--input``.

    Example:
        >>> parse_dim_spec("batch=1..64")
        ('batch', DimRange(min=1, max=64))
    """
    where = f"--dim {text!r}"
    if "=" not in (text or ""):
        raise UsageError(f"{where}: expected name=min..max, e.g. {_DIM_EXAMPLE}")
    name, _, rng = text.partition("=")
    name, rng = name.strip(), rng.strip()
    if not name:
        raise UsageError(f"{where}: the dim name is missing before '='; e.g. {_DIM_EXAMPLE}")
    if not _is_identifier(name):
        raise UsageError(f"{where}: dim name {name!r} is not a valid identifier; e.g. {_DIM_EXAMPLE}")
    if re.fullmatch(r"\d+", rng):
        raise UsageError(
            f"{where}: a dynamic dim needs a range such as {name}=1..{rng}; for a fixed size write the "
            f"number in --input instead (e.g. x:float32[{rng},16])"
        )
    m = re.fullmatch(r"(\d+)\s*\.\.\s*(\d+)", rng)
    if m is None:
        raise UsageError(f"{where}: range {rng!r} is not min..max with ints >= 0; e.g. {_DIM_EXAMPLE}")
    low, high = int(m.group(1)), int(m.group(2))
    if high < low:
        raise UsageError(f"{where}: min {low} is greater than max {high}; e.g. {_DIM_EXAMPLE}")
    return name, DimRange(low, high)


# --------------------------------------------------------------------------- example sizes


def example_size(name: str, rng: DimRange, taken: set[int] | None = None) -> int:
    """The size used for dynamic dim ``name`` in example (capture) inputs.

    Not the minimum: torch.export specializes sizes 0 and 1, and two dims with the same example size
    may be assumed equal. So: 2 for batch-like names, 8 otherwise, clamped into ``rng`` and at least 2
    where the range allows it, and moved up past sizes already ``taken`` while it stays in range.
    """
    lo, hi = rng.min, rng.max
    pref = 2 if "batch" in name.lower() else 8
    value = min(hi, max(lo, 2, pref))
    taken = taken or set()
    candidate = value
    while candidate in taken and candidate < hi:
        candidate += 1
    if candidate in taken:  # walk down instead
        candidate = value
        while candidate in taken and candidate > max(lo, 2):
            candidate -= 1
    return candidate if candidate not in taken else value


def choose_example_sizes(
    dims: Mapping[str, DimRange], static_sizes: set[int] | None = None
) -> dict[str, int]:
    """Distinct example sizes for each dynamic dim (see :func:`example_size`)."""
    taken = set(static_sizes or ())
    sizes: dict[str, int] = {}
    for name, rng in dims.items():
        sizes[name] = example_size(name, rng, taken)
        taken.add(sizes[name])
    return sizes


# --------------------------------------------------------------------------- structure helpers


def _param_names(signature: inspect.Signature | None) -> tuple[list[str], str | None, str | None]:
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


def _arg_names(signature: inspect.Signature | None, n_args: int) -> list[str]:
    """Names of ``n_args`` positional inputs: the forward parameter names, then ``<*args>_<i>``."""
    positional, var_pos, _ = _param_names(signature)
    names = []
    for i in range(n_args):
        if i < len(positional):
            names.append(positional[i])
        else:
            names.append(f"{var_pos or 'input'}_{i - len(positional)}" if signature else f"input_{i}")
    if signature is None and n_args == 1:
        names = ["input"]
    return names


def _order_kwargs(kwargs: Mapping[str, Any], signature: inspect.Signature | None) -> dict[str, Any]:
    """``kwargs`` ordered as the forward signature lists them (extra names keep their order, last)."""
    if signature is None:
        return dict(kwargs)
    order = [n for n in signature.parameters if n in kwargs]
    rest = [n for n in kwargs if n not in order]
    return {n: kwargs[n] for n in order + rest}


def _walk(value: Any, name: str, out: list[tuple[str, torch.Tensor]]) -> None:
    """Collect ``(leaf name, tensor)`` in pytree flattening order (dicts: insertion order)."""
    if isinstance(value, torch.Tensor):
        out.append((name, value))
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _walk(v, f"{name}_{k}", out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _walk(v, f"{name}_{i}", out)


def _map_leaves(value: Any, name: str, fn: Any) -> Any:
    """Rebuild ``value`` with each tensor leaf replaced by ``fn(leaf_name, tensor)``; other leaves by ``fn(name, leaf)``."""
    if isinstance(value, torch.Tensor):
        return fn(name, value)
    if isinstance(value, Mapping):
        return {k: _map_leaves(v, f"{name}_{k}", fn) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return type(value)(*(_map_leaves(v, f"{name}_{i}", fn) for i, v in enumerate(value)))
    if isinstance(value, (list, tuple)):
        return type(value)(_map_leaves(v, f"{name}_{i}", fn) for i, v in enumerate(value))
    return fn(name, value)


def _top_level(
    args: tuple, kwargs: Mapping[str, Any], signature: inspect.Signature | None
) -> list[tuple[str, Any]]:
    return list(zip(_arg_names(signature, len(args)), args, strict=True)) + list(kwargs.items())


# --------------------------------------------------------------------------- ExampleInputs


@dataclass
class ExampleInputs:
    """The inputs a model is captured with, their specs and the dynamic dims.

    Attributes:
        args: positional inputs (tensors or nested lists/tuples/dicts of tensors).
        kwargs: keyword inputs, in forward-signature order.
        specs: one :class:`~torchport.runtimes.TensorSpec` per leaf tensor of ``(args, kwargs)`` in
            flattening order; shapes hold dim names where dynamic, ints elsewhere.
        dynamic_dims: each named dynamic dim and its inclusive range.
        signature: the forward signature used to name inputs (``None`` when unknown).

    Example:
        >>> ex = ExampleInputs.from_tensors((torch.randn(2, 16),), {}, dynamic={"input": {0: "batch"}},
        ...                                 dims={"batch": DimRange(1, 64)})
        >>> ex.specs[0].shape
        ['batch', 16]
    """

    args: tuple
    kwargs: dict[str, Any]
    specs: list[TensorSpec]
    dynamic_dims: dict[str, DimRange]
    signature: inspect.Signature | None = field(default=None, repr=False, compare=False)
    #: names of the positional inputs when there is no signature (``--input`` names); else derived
    arg_names: list[str] | None = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_tensors(
        cls,
        args: tuple,
        kwargs: Mapping[str, Any] | None = None,
        *,
        signature: inspect.Signature | None = None,
        dynamic: Mapping[str, Mapping[int, str]] | None = None,
        dims: Mapping[str, DimRange] | None = None,
        value_ranges: Mapping[str, tuple[float, float]] | None = None,
    ) -> ExampleInputs:
        """Build from concrete inputs.

        Args:
            args, kwargs: the inputs.
            signature: forward signature, for names.
            dynamic: ``{leaf name or parameter name: {axis: dim name}}``; a parameter name applies to
                every leaf under it.
            dims: range of each dim name used in ``dynamic``.
            value_ranges: optional ``{leaf name: (low, high)}`` for integer inputs; an integer
                input without one gets the min..max of its example values.
        """
        args = tuple(args)
        kwargs = _order_kwargs(kwargs or {}, signature)
        dynamic = dict(dynamic or {})
        dims = dict(dims or {})
        value_ranges = dict(value_ranges or {})
        specs: list[TensorSpec] = []
        used: dict[str, DimRange] = {}
        matched: set[str] = set()
        for top, value in _top_level(args, kwargs, signature):
            leaves: list[tuple[str, torch.Tensor]] = []
            _walk(value, top, leaves)
            for leaf, tensor in leaves:
                axes = dynamic.get(leaf)
                key = leaf
                if axes is None and top in dynamic:
                    axes, key = dynamic[top], top
                shape: list[int | str | None] = list(tensor.shape)
                for axis, dim_name in (axes or {}).items():
                    matched.add(key)
                    ax = int(axis)
                    if not -tensor.dim() <= ax < tensor.dim():
                        raise UsageError(
                            f"dynamic dim {dim_name!r}: input {leaf!r} has {tensor.dim()} dims, no axis {ax}"
                        )
                    if dim_name not in dims:
                        raise UsageError(
                            f"dynamic dim {dim_name!r} of input {leaf!r} has no range; add --dim {dim_name}=1..64"
                        )
                    shape[ax] = dim_name
                    used[dim_name] = dims[dim_name]
                vr = value_ranges.get(leaf)
                if vr is None and _is_integer(tensor) and tensor.numel() > 0:
                    # the example's own values are legal ones (token ids < vocab size...): keep
                    # generated inputs inside what was seen
                    vr = (int(tensor.min()), int(tensor.max()))
                specs.append(TensorSpec(leaf, dtype_name(tensor.dtype), shape, vr))
        unknown = [k for k in dynamic if k not in matched and dynamic[k]]
        if unknown:
            names = [s.name for s in specs]
            raise UsageError(
                f"dynamic dims name input(s) {', '.join(map(repr, unknown))} that the model does not take; "
                f"inputs are: {', '.join(names) or '(none)'}"
            )
        return cls(args=args, kwargs=dict(kwargs), specs=specs, dynamic_dims=used, signature=signature)

    @classmethod
    def from_specs(
        cls,
        specs: list[TensorSpec],
        dims: Mapping[str, DimRange],
        *,
        signature: inspect.Signature | None = None,
        rng: np.random.Generator | int | None = 0,
        example_sizes: Mapping[str, int] | None = None,
    ) -> ExampleInputs:
        """Random example tensors for ``--input`` specs (flat tensors, one per spec).

        Specs are matched to forward parameters by name: leading positional parameters become ``args``,
        the rest ``kwargs``. Each dynamic dim gets a distinct example size (:func:`example_size`).
        """
        specs = [TensorSpec(s.name, s.dtype, list(s.shape), s.value_range) for s in specs]
        names = [s.name for s in specs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise UsageError(f"--input names {', '.join(dup)} more than once; give each input once")
        used_dims = [d for s in specs for d in s.shape if isinstance(d, str)]
        missing = sorted({d for d in used_dims if d not in dims})
        if missing:
            hint = " ".join(f"--dim {d}=1..64" for d in missing)
            raise UsageError(f"dim(s) {', '.join(missing)} used in --input have no range; add {hint}")
        dyn = {d: dims[d] for d in dict.fromkeys(used_dims)}
        static = {int(d) for s in specs for d in s.shape if isinstance(d, int)}
        sizes = choose_example_sizes(dyn, static)
        for k, v in (example_sizes or {}).items():
            if k in dyn and v in dyn[k]:
                sizes[k] = int(v)
        gen = np.random.default_rng(rng)
        tensors = {s.name: _random_torch(s, sizes, gen) for s in specs}
        _, var_pos, _ = _param_names(signature)
        by_name = {s.name: s for s in specs}
        if signature is None or (var_pos and not any(n in signature.parameters for n in names)):
            # no signature, or forward(*args): the inputs go positionally, in the order given
            return cls(
                args=tuple(tensors.values()),
                kwargs={},
                specs=[by_name[n] for n in names],
                dynamic_dims=dyn,
                signature=signature,
                arg_names=names,
            )
        args, kwargs = _place_by_name(tensors, signature, what="--input")
        ordered = _order_kwargs(kwargs, signature)
        order = list(_arg_names(signature, len(args))) + list(ordered)
        return cls(
            args=tuple(args),
            kwargs=ordered,
            specs=[by_name[n] for n in order],
            dynamic_dims=dyn,
            signature=signature,
        )

    # ------------------------------------------------------------------ views

    @property
    def input_names(self) -> list[str]:
        """Leaf input names in flattening order."""
        return [s.name for s in self.specs]

    def example_dims(self) -> dict[str, int]:
        """The size of each dynamic dim in these example inputs."""
        out: dict[str, int] = {}
        leaves = self._leaves()
        for spec, (_, tensor) in zip(self.specs, leaves, strict=True):
            for axis, d in enumerate(spec.shape):
                if isinstance(d, str) and d not in out:
                    out[d] = int(tensor.shape[axis])
        return out

    def _leaves(self) -> list[tuple[str, torch.Tensor]]:
        leaves: list[tuple[str, torch.Tensor]] = []
        for top, value in self._tops():
            _walk(value, top, leaves)
        return leaves

    def _positional_names(self) -> list[str]:
        if self.arg_names is not None and len(self.arg_names) == len(self.args):
            return list(self.arg_names)
        return _arg_names(self.signature, len(self.args))

    def _tops(self) -> list[tuple[str, Any]]:
        return list(zip(self._positional_names(), self.args, strict=True)) + list(self.kwargs.items())

    def _spec_by_name(self) -> dict[str, TensorSpec]:
        return {s.name: s for s in self.specs}

    def dynamic_shapes(self) -> Any:
        """The ``dynamic_shapes`` argument of :func:`torch.export.export` for ``(args, kwargs)``.

        One :class:`torch.export.Dim` per dim name (the same object wherever the name appears), with
        the range's min and max; fixed dims are left out. A dim whose range has ``min == max`` is fixed.
        With a known forward signature the result is a dict keyed by parameter name (what
        torch.export needs when kwargs are used); without one, a tuple matching ``args``.
        Returns ``None`` when nothing is dynamic.

        Example:
            >>> ex = ExampleInputs.from_tensors((torch.randn(2, 16),), dynamic={"input": {0: "batch"}},
            ...                                 dims={"batch": DimRange(1, 64)})
            >>> ex.dynamic_shapes()
            ({0: Dim('batch', min=1, max=64)},)
        """
        if not any(r.min != r.max for r in self.dynamic_dims.values()):
            return None
        dim_objs = {
            name: torch.export.Dim(name, min=r.min, max=r.max)
            for name, r in self.dynamic_dims.items()
            if r.min != r.max
        }
        specs = self._spec_by_name()

        def leaf_shape(leaf: str, value: Any) -> Any:
            if not isinstance(value, torch.Tensor):
                return None
            spec = specs[leaf]
            axes = {i: dim_objs[d] for i, d in enumerate(spec.shape) if isinstance(d, str) and d in dim_objs}
            return axes or None

        tops = self._tops()
        per_top = {top: _map_leaves(value, top, leaf_shape) for top, value in tops}
        if self.signature is None:
            if self.kwargs:
                return per_top  # best effort: keyed by name
            return tuple(per_top[name] for name, _ in tops)
        positional, var_pos, var_kw = _param_names(self.signature)
        out: dict[str, Any] = {}
        n_named = min(len(self.args), len(positional))
        arg_names = self._positional_names()
        for param, name in zip(positional[:n_named], arg_names[:n_named], strict=True):
            out[param] = per_top[name]
        if len(self.args) > n_named and var_pos:
            out[var_pos] = tuple(per_top[n] for n in arg_names[n_named:])
        params = self.signature.parameters
        extra_kw = {}
        for name in self.kwargs:
            if name in params and params[name].kind not in (inspect.Parameter.VAR_KEYWORD,):
                out[name] = per_top[name]
            else:
                extra_kw[name] = per_top[name]
        if extra_kw and var_kw:
            out[var_kw] = extra_kw
        return out

    def make(
        self, dims: Mapping[str, int] | None = None, rng: np.random.Generator | int | None = None
    ) -> tuple[tuple, dict[str, Any]]:
        """New random inputs of the same structure, with dynamic dims set to ``dims``.

        Values respect each spec's dtype and ``value_range`` (integers without one: 0..9); dims not in
        ``dims`` keep their example size. Non-tensor leaves are kept as they are.

        Example:
            >>> ex = ExampleInputs.from_tensors((torch.randn(2, 16),), dynamic={"input": {0: "batch"}},
            ...                                 dims={"batch": DimRange(1, 64)})
            >>> args, kwargs = ex.make({"batch": 5}, rng=0)
            >>> tuple(args[0].shape)
            (5, 16)
        """
        sizes = self.example_dims()
        for k, v in (dims or {}).items():
            if k not in self.dynamic_dims:
                raise UsageError(
                    f"unknown dynamic dim {k!r}; this model's dynamic dims are: {', '.join(self.dynamic_dims) or '(none)'}"
                )
            sizes[k] = int(v)
        gen = np.random.default_rng(rng)
        specs = self._spec_by_name()

        def new_leaf(leaf: str, value: Any) -> Any:
            if not isinstance(value, torch.Tensor):
                return value
            spec = specs[leaf]
            out = _random_torch(spec, sizes, gen)
            return out.to(value.device)

        args = tuple(
            _map_leaves(v, name, new_leaf)
            for name, v in zip(self._positional_names(), self.args, strict=True)
        )
        kwargs = {k: _map_leaves(v, k, new_leaf) for k, v in self.kwargs.items()}
        return args, kwargs

    def with_dims(self, overrides: Mapping[str, DimRange]) -> ExampleInputs:
        """A copy with the ranges of dynamic dims replaced by ``overrides``.

        ``batch`` may also be new: when no input has a ``batch`` dim yet and every input's axis 0 is
        fixed at the same size, axis 0 of every input becomes the dynamic dim ``batch``. Any other name
        that is no dynamic dim of these inputs is a :class:`UsageError` listing the dims that exist.
        When an example size falls outside its new range (or is 0/1 while the range allows more), the
        inputs are regenerated at a size inside it.

        Example:
            >>> ex = ExampleInputs.from_tensors((torch.randn(3, 4),))
            >>> str(ex.with_dims({"batch": DimRange(1, 8)}))
            'input:float32[batch,4] (batch=1..8)'
        """
        specs = [TensorSpec(s.name, s.dtype, list(s.shape), s.value_range) for s in self.specs]
        unknown = [k for k in overrides if k not in self.dynamic_dims]
        if unknown == ["batch"] and self._can_add_batch():
            for spec in specs:
                spec.shape[0] = "batch"
            unknown = []
        if unknown:
            have = ", ".join(self.dynamic_dims) or "(none: every input is static)"
            raise UsageError(
                f"--dim {', '.join(unknown)}: no input uses a dim of that name; the dynamic dims are: {have}. "
                'Name dynamic axes in DYNAMIC_DIMS next to the factory, or pass --input "name:dtype[dims]"'
            )
        dims = {**self.dynamic_dims, **overrides}
        dims = {k: dims[k] for k in dict.fromkeys(d for s in specs for d in s.shape if isinstance(d, str))}
        new = ExampleInputs(self.args, dict(self.kwargs), specs, dims, self.signature, self.arg_names)
        current = new.example_dims()
        bad = {k: v for k, v in current.items() if v not in dims[k] or (v < 2 <= dims[k].max)}
        if bad:
            static = {int(d) for s in specs for d in s.shape if isinstance(d, int)}
            taken = static | {v for k, v in current.items() if k not in bad}
            fixed = {}
            for k in bad:
                fixed[k] = example_size(k, dims[k], taken)
                taken.add(fixed[k])
            new.args, new.kwargs = new.make({**current, **fixed}, rng=0)
        return new

    def _can_add_batch(self) -> bool:
        leaves = self._leaves()
        if not leaves or "batch" in self.dynamic_dims:
            return False
        firsts = set()
        for spec, (_, tensor) in zip(self.specs, leaves, strict=True):
            if tensor.dim() == 0 or not isinstance(spec.shape[0], int):
                return False
            firsts.add(spec.shape[0])
        return len(firsts) == 1

    # ------------------------------------------------------------------ dunder

    def __bool__(self) -> bool:
        return bool(self.specs)

    def __str__(self) -> str:
        parts = []
        for s in self.specs:
            shape = ",".join(str(d) for d in s.shape)
            parts.append(f"{s.name}:{s.dtype}[{shape}]")
        dims = ", ".join(f"{k}={r.min}..{r.max}" for k, r in self.dynamic_dims.items())
        return " ".join(parts) + (f" ({dims})" if dims else " (static)")


def _is_integer(tensor: torch.Tensor) -> bool:
    return not tensor.is_floating_point() and not tensor.is_complex() and tensor.dtype != torch.bool


def _random_torch(spec: TensorSpec, sizes: Mapping[str, int], gen: np.random.Generator) -> torch.Tensor:
    shape = concrete_shape(spec, sizes)
    if spec.dtype == "bfloat16":
        tmp = TensorSpec(spec.name, "float32", spec.shape, spec.value_range)
        return torch.from_numpy(np.array(random_tensor(tmp, shape, gen), order="C")).to(torch.bfloat16)
    return torch.from_numpy(np.array(random_tensor(spec, shape, gen), order="C"))


def _place_by_name(
    values: Mapping[str, Any], signature: inspect.Signature | None, *, what: str
) -> tuple[list[Any], dict[str, Any]]:
    """Split named inputs into (leading positional args, kwargs) following the forward signature."""
    if signature is None:
        return list(values.values()), {}
    positional, _, var_kw = _param_names(signature)
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


# --------------------------------------------------------------------------- from user objects


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
        a, kwargs = _place_by_name(dict(value), signature, what=origin)
        args = tuple(a)
    else:
        raise UsageError(
            f"{origin} gave a {type(value).__name__}; return a tensor, a tuple of positional inputs, "
            "a dict of inputs by parameter name, or (args, kwargs)"
        )
    if not _has_tensor((args, kwargs)):
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


def _has_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, Mapping):
        return any(_has_tensor(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_tensor(v) for v in value)
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
            raise UsageError(f"cannot read sample file {path}: {type(e).__name__}: {_first_line(e)}") from e
    if suffix in (".pt", ".pth"):
        try:
            return torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise UsageError(
                f"cannot read sample file {path} with weights_only=True ({type(e).__name__}): save a tensor, "
                "a tuple/list or a dict of tensors with torch.save"
            ) from e
    raise UsageError(f"sample file {path}: unsupported type {suffix or '(none)'}; use .npz or .pt")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


# --------------------------------------------------------------------------- resolution


def resolve_example_inputs(
    loaded: LoadedModel,
    input_specs: list[TensorSpec] | None = None,
    dims: Mapping[str, DimRange] | None = None,
    sample_file: str | None = None,
) -> ExampleInputs:
    """Decide the example inputs for capture, in the documented order.

    1. ``--input`` specs (``input_specs``): random tensors of those specs, ranges from ``dims``
       (a dim without ``--dim`` falls back to the model's own default range of that name, if any).
    2. ``example_inputs()`` next to the factory, with the model file's ``DYNAMIC_DIMS``.
    3. ``sample_file`` (``.npz`` keyed by forward parameter names, or ``.pt`` with ``weights_only``),
       with ``DYNAMIC_DIMS`` when the model file defines one.
    4. For a Hugging Face folder, inputs derived from its config (already in ``loaded.example_inputs``).

    With 2–4, ``dims`` may change the range of a dim those inputs already name, or add ``batch`` as
    axis 0 of every input (see :meth:`ExampleInputs.with_dims`); naming another dim is an error
    listing the dims that exist.

    Raises:
        UsageError: when no source gives inputs, with an example of ``--input``/``--dim``.

    Example:
        >>> from torchport.exporters import load_model
        >>> loaded = load_model("torchport.exporters.examples.mlp:make_model")
        >>> str(resolve_example_inputs(loaded, [], {}))
        'input:float32[batch,16] (batch=1..64)'
        >>> ex = resolve_example_inputs(loaded, [parse_input_spec("input:float32[n,16]")], {"n": DimRange(1, 8)})
        >>> str(ex), tuple(ex.args[0].shape)
        ('input:float32[n,16] (n=1..8)', (8, 16))
    """
    dims = dict(dims or {})
    input_specs = list(input_specs or [])
    signature = loaded.forward_signature
    for name, limit in loaded.hf_defaults.get("limits", {}).items():
        rng = dims.get(name)
        if rng is not None and rng.max > limit:
            raise UsageError(
                f"--dim {name}={rng.min}..{rng.max}: the model has {limit} positions "
                f"(max_position_embeddings in config.json); use --dim {name}={rng.min}..{limit}"
            )
    if input_specs:
        known = dict(loaded.default_dims())
        merged = {**known, **dims}
        used = {d for s in input_specs for d in s.shape if isinstance(d, str)}
        unknown = [k for k in dims if k not in used]
        if unknown:
            raise UsageError(
                f"--dim {', '.join(unknown)}: no --input uses a dim of that name; dims used: "
                f"{', '.join(sorted(used)) or '(none)'}"
            )
        specs = [_with_value_range(s, loaded) for s in input_specs]
        return ExampleInputs.from_specs(
            specs, {k: v for k, v in merged.items() if k in used}, signature=signature
        )
    if loaded.example_inputs is not None and loaded.example_source != "huggingface":
        return loaded.example_inputs.with_dims(dims) if dims else loaded.example_inputs
    if sample_file is not None:
        raw = load_sample_file(sample_file, signature=signature)
        ex = example_from_object(
            raw, signature=signature, dynamic=loaded.dynamic_dims_decl, origin=f"sample file {sample_file}"
        )
        return ex.with_dims(dims) if dims else ex
    if loaded.example_inputs is not None:
        return loaded.example_inputs.with_dims(dims) if dims else loaded.example_inputs
    reason = loaded.hf_defaults.get("no_examples_reason")
    raise UsageError(
        f"no example inputs for {loaded.reference}{f' ({reason})' if reason else ''}: pass "
        '--input "name:dtype[dims]" and --dim for each dynamic dim, e.g. --input "x:float32[batch,16]" '
        "--dim batch=1..64 (or define example_inputs() next to the factory, or pass a .npz/.pt sample file)"
    )


def _with_value_range(spec: TensorSpec, loaded: LoadedModel) -> TensorSpec:
    if spec.value_range is not None:
        return spec
    vr = loaded.default_value_ranges().get(spec.name)
    if vr is None:
        return spec
    return TensorSpec(spec.name, spec.dtype, list(spec.shape), vr)
