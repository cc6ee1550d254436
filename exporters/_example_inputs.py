"""The inputs a model is captured with: :class:`ExampleInputs`.

An :class:`ExampleInputs` holds the positional and keyword inputs a model is captured with, one
:class:`~torchport.runtimes.TensorSpec` per leaf tensor (the package signature), and the named dynamic
dims with their ranges. It builds the ``dynamic_shapes`` argument of :func:`torch.export.export` and
fresh inputs at other sizes (:meth:`ExampleInputs.make`) for validation. Leaves are named as
:mod:`torchport.exporters._input_names` says.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from torchport.exporters._dynamic_shapes import export_dims, spec_axes
from torchport.exporters._example_sizes import choose_example_sizes, example_size
from torchport.exporters._input_names import (
    arg_names,
    map_leaves,
    order_kwargs,
    param_names,
    place_by_name,
    tensor_leaves,
    top_level_inputs,
)
from torchport.exporters._torch_dtypes import dtype_name
from torchport.runtimes._errors import UsageError
from torchport.runtimes._inputs import concrete_shape, random_tensor
from torchport.runtimes._manifest import DimRange, TensorSpec
from torchport.runtimes._spec_syntax import format_spec

__all__ = ["ExampleInputs", "random_torch_tensor"]


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
        kwargs = order_kwargs(kwargs or {}, signature)
        dynamic = dict(dynamic or {})
        dims = dict(dims or {})
        value_ranges = dict(value_ranges or {})
        specs: list[TensorSpec] = []
        used: dict[str, DimRange] = {}
        matched: set[str] = set()
        for top, value in top_level_inputs(args, kwargs, signature):
            for leaf, tensor in tensor_leaves(value, top):
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
        tensors = {s.name: random_torch_tensor(s, sizes, gen) for s in specs}
        _, var_pos, _ = param_names(signature)
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
        args, kwargs = place_by_name(tensors, signature, what="--input")
        ordered = order_kwargs(kwargs, signature)
        order = list(arg_names(signature, len(args))) + list(ordered)
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
        return [leaf for top, value in self._tops() for leaf in tensor_leaves(value, top)]

    def _positional_names(self) -> list[str]:
        if self.arg_names is not None and len(self.arg_names) == len(self.args):
            return list(self.arg_names)
        return arg_names(self.signature, len(self.args))

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
        dim_objs = export_dims(self.dynamic_dims)
        if not dim_objs:
            return None
        specs = self._spec_by_name()

        def leaf_shape(leaf: str, value: Any) -> Any:
            return spec_axes(specs[leaf], dim_objs) if isinstance(value, torch.Tensor) else None

        tops = self._tops()
        per_top = {top: map_leaves(value, top, leaf_shape) for top, value in tops}
        if self.signature is None:
            if self.kwargs:
                return per_top  # best effort: keyed by name
            return tuple(per_top[name] for name, _ in tops)
        positional, var_pos, var_kw = param_names(self.signature)
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
            out = random_torch_tensor(spec, sizes, gen)
            return out.to(value.device)

        args = tuple(
            map_leaves(v, name, new_leaf) for name, v in zip(self._positional_names(), self.args, strict=True)
        )
        kwargs = {k: map_leaves(v, k, new_leaf) for k, v in self.kwargs.items()}
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
        parts = [format_spec(TensorSpec(s.name, s.dtype, s.shape)) for s in self.specs]
        dims = ", ".join(f"{k}={r.min}..{r.max}" for k, r in self.dynamic_dims.items())
        return " ".join(parts) + (f" ({dims})" if dims else " (static)")


def _is_integer(tensor: torch.Tensor) -> bool:
    return not tensor.is_floating_point() and not tensor.is_complex() and tensor.dtype != torch.bool


def random_torch_tensor(spec: TensorSpec, sizes: Mapping[str, int], gen: np.random.Generator) -> torch.Tensor:
    """A random tensor of ``spec`` with its dynamic dims at ``sizes`` (values as :func:`random_tensor`)."""
    shape = concrete_shape(spec, sizes)
    if spec.dtype == "bfloat16":
        tmp = TensorSpec(spec.name, "float32", spec.shape, spec.value_range)
        return torch.from_numpy(np.array(random_tensor(tmp, shape, gen), order="C")).to(torch.bfloat16)
    return torch.from_numpy(np.array(random_tensor(spec, shape, gen), order="C"))
