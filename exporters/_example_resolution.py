"""Which example inputs a model is captured with: the resolution order over a loaded model."""

from __future__ import annotations

from collections.abc import Mapping

from torchport.exporters._example_inputs import ExampleInputs
from torchport.exporters._loaded_model import LoadedModel
from torchport.exporters._user_examples import example_from_object, load_sample_file
from torchport.runtimes._errors import UsageError
from torchport.runtimes._manifest import DimRange, TensorSpec

__all__ = ["resolve_example_inputs"]


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
        >>> from torchport.exporters import load_model, parse_input_spec
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
