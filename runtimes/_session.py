"""An ONNX Runtime session made from a model package: providers, threads, warm-up, input validation.

No torch here: the serving image has none.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from torchport.runtimes._dtypes import from_ort, to_numpy
from torchport.runtimes._errors import InferenceInputError, PackageError, ProviderError, first_line
from torchport.runtimes._inputs import check_shape, check_value_range, format_shape
from torchport.runtimes._manifest import DimRange, Manifest, TensorSpec
from torchport.runtimes._package import ModelPackage
from torchport.runtimes._providers import GPU_PROVIDERS, resolve_providers, short_name

log = logging.getLogger("torchport.runtimes")

try:  # optional: a real numpy bfloat16 dtype
    import ml_dtypes as _ml_dtypes

    _BF16: np.dtype | None = np.dtype(_ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - depends on the environment
    _BF16 = None

_ONNX_BF16 = 16


def _is_bf16_array(arr: np.ndarray) -> bool:
    return arr.dtype == np.uint16 or (_BF16 is not None and arr.dtype == _BF16)


def _dtype_matches(arr: np.ndarray, dtype: str) -> bool:
    if dtype == "string":
        return arr.dtype.kind in "OUS"
    if dtype == "bfloat16":
        return _is_bf16_array(arr)
    return arr.dtype == to_numpy(dtype)


def _bf16_output(value: Any) -> np.ndarray:
    """Copy a CPU bfloat16 OrtValue out as ml_dtypes.bfloat16 (or raw uint16 bits without ml_dtypes)."""
    shape = tuple(value.shape())
    n = int(np.prod(shape)) if shape else 1
    buf = (ctypes.c_uint16 * n).from_address(value.data_ptr())
    bits = np.ctypeslib.as_array(buf).copy().reshape(shape)
    return bits.view(_BF16) if _BF16 is not None else bits


class Session:
    """An ONNX Runtime inference session for one variant of a model package.

    Attributes:
        manifest: the package manifest (``None`` for a bare ONNX file).
        provider: the execution provider really in use, e.g. ``"CPUExecutionProvider"``.
        providers: every provider the session holds, in priority order.
        input_specs / output_specs: names, dtypes (as ONNX Runtime sees this variant) and shapes.
        dynamic_dims: range of each named dynamic dim (from the manifest).
        batch_dim: name of the dynamic dim at axis 0 of every input and output, or ``None``.

    Example:
        >>> sess = Session.from_package("out/mlp", providers="cpu")          # doctest: +SKIP
        >>> out = sess.run({"x": np.zeros((2, 16), np.float32)})
        >>> out["logits"].shape
        (2, 10)
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        manifest: Manifest | None = None,
        *,
        providers: str | Sequence[str] = "cpu",
        allow_fallback: bool = False,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        spinning: bool = True,
        warmup: int = 0,
        device_id: int = 0,
        package: ModelPackage | None = None,
        variant: str = "fp32",
        log_severity: int = 3,
    ) -> None:
        """See :meth:`from_package`; ``log_severity`` is ONNX Runtime's log level for this session
        (3: errors, the default; 4: fatal only, for callers that report ORT's failures themselves)."""
        import onnxruntime as ort

        self.model_path = Path(model_path)
        self.manifest = manifest
        self.package = package
        self.variant = variant
        self.device_id = device_id
        requested = resolve_providers(providers, allow_fallback=allow_fallback)
        opts = ort.SessionOptions()
        if intra_op_threads is not None:
            opts.intra_op_num_threads = int(intra_op_threads)
        if inter_op_threads is not None:
            opts.inter_op_num_threads = int(inter_op_threads)
            if inter_op_threads > 1:
                opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        opts.log_severity_level = int(log_severity)
        provider_options = [_provider_options(p, device_id) for p in requested]
        try:
            self._sess = ort.InferenceSession(
                str(self.model_path),
                sess_options=opts,
                providers=requested,
                provider_options=provider_options,
            )
        except Exception as e:  # onnxruntime raises its own untyped errors
            where = f"model {manifest.name!r} " if manifest else ""
            raise PackageError(
                f"cannot load {where}{self.model_path} into ONNX Runtime: {first_line(e)}"
            ) from e
        self.providers: list[str] = list(self._sess.get_providers())
        self.provider: str = self.providers[0]
        if self.provider != requested[0]:
            msg = (
                f"ONNX Runtime could not start execution provider {short_name(requested[0])} ({requested[0]}); "
                f"the session runs on {self.provider}"
            )
            if not allow_fallback:
                raise ProviderError(msg + "; pass --allow-fallback (allow_fallback=True) to accept that")
            log.warning(msg)
        self._use_iobinding = self.provider in GPU_PROVIDERS
        self.input_specs = self._specs(self._sess.get_inputs(), manifest.inputs if manifest else [])
        self.output_specs = self._specs(self._sess.get_outputs(), manifest.outputs if manifest else [])
        self.input_names = [s.name for s in self.input_specs]
        self.output_names = [s.name for s in self.output_specs]
        self.dynamic_dims: dict[str, DimRange] = dict(manifest.dynamic_dims) if manifest else {}
        self._input_by_name = {s.name: s for s in self.input_specs}
        generation = (self.manifest.extra or {}).get("generation") if self.manifest else None
        #: a decoder captured with GroupQueryAttention: no multi-token step with a past above batch 1
        self._fused_attention = isinstance(generation, dict) and generation.get("attention") == "fused"
        self._output_set = set(self.output_names)
        self._has_bf16 = any(s.dtype == "bfloat16" for s in self.input_specs + self.output_specs)
        #: ONNX Runtime's own run (below its Python wrapper, whose input check validation already
        #: did) for plain CPU sessions; None: :meth:`run`
        self._direct_run = (
            getattr(getattr(self._sess, "_sess", None), "run", None)
            if self.provider == "CPUExecutionProvider" and not self._has_bf16
            else None
        )
        self.batch_dim = self._find_batch_dim()
        if warmup:
            self.warmup(warmup)

    @classmethod
    def from_package(
        cls,
        package: ModelPackage | str | os.PathLike[str],
        *,
        variant: str = "fp32",
        providers: str | Sequence[str] = "cpu",
        allow_fallback: bool = False,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        spinning: bool = True,
        warmup: int = 0,
        device_id: int = 0,
    ) -> Session:
        """Open ``variant`` of a model package (a folder path or a loaded :class:`ModelPackage`).

        Args:
            package: the package folder or a loaded package (a path is loaded and hash-verified).
            variant: ``"fp32"`` (``model.onnx``), ``"fp16"``, ``"int8"`` or ``"int4"``.
            providers: ``"cpu"``, ``"cuda"``, ``"tensorrt"``, a full ONNX Runtime name, or an ordered list.
            allow_fallback: accept a missing provider (warn and use the next available one).
            intra_op_threads / inter_op_threads: ONNX Runtime thread pools (``None``: its default).
            spinning: let idle pool threads spin; turn off in servers to leave cores to other work.
            warmup: number of warm-up runs on random inputs before returning.
            device_id: GPU ordinal for CUDA / TensorRT.

        Example:
            >>> sess = Session.from_package("out/cnn", providers=["cuda", "cpu"], allow_fallback=True)  # doctest: +SKIP
            >>> sess.provider
            'CPUExecutionProvider'

        Raises:
            PackageError: the package is missing, tampered with, or has no such variant.
            ProviderError: a requested provider is not available and ``allow_fallback`` is off.
        """
        pkg = package if isinstance(package, ModelPackage) else ModelPackage.load(package)
        return cls(
            pkg.model_path(variant),
            pkg.manifest,
            providers=providers,
            allow_fallback=allow_fallback,
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
            spinning=spinning,
            warmup=warmup,
            device_id=device_id,
            package=pkg,
            variant=variant,
        )

    @classmethod
    def from_onnx(cls, path: str | os.PathLike[str], **kwargs: Any) -> Session:
        """Open a bare ONNX file (no manifest: shapes come from the model, dynamic dims have no range).

        Example:
            >>> sess = Session.from_onnx("model.onnx")     # doctest: +SKIP
        """
        return cls(path, None, **kwargs)

    # -- signature -------------------------------------------------------------------------------

    @staticmethod
    def _specs(ort_args: Sequence[Any], declared: Sequence[TensorSpec]) -> list[TensorSpec]:
        by_name = {s.name: s for s in declared}
        specs = []
        for arg in ort_args:
            dtype = from_ort(arg.type)
            spec = by_name.get(arg.name)
            if spec is not None and len(spec.shape) == len(arg.shape):
                shape = list(spec.shape)
                value_range = spec.value_range
            else:
                shape = [d if isinstance(d, int | str) else None for d in arg.shape]
                value_range = spec.value_range if spec else None
            specs.append(TensorSpec(arg.name, dtype, shape, value_range))
        return specs

    def _find_batch_dim(self) -> str | None:
        first = [s.shape[0] if s.shape else None for s in self.input_specs + self.output_specs]
        if not first or not isinstance(first[0], str):
            return None
        return first[0] if all(d == first[0] for d in first) else None

    @property
    def name(self) -> str:
        return self.manifest.name if self.manifest else self.model_path.stem

    # -- validation ------------------------------------------------------------------------------

    def validate_inputs(self, inputs: Mapping[str, Any]) -> None:
        """Check names, dtypes, ranks, fixed dims and dynamic-dim ranges against the signature.

        Example:
            >>> sess.validate_inputs({"x": np.zeros((2, 3), np.float64)})    # doctest: +SKIP
            InferenceInputError: input 'x' has dtype float64, expected float32 ...

        Raises:
            InferenceInputError: naming the input and what was expected.
        """
        if not isinstance(inputs, Mapping):
            raise InferenceInputError(
                f"inputs must be a mapping of input name to array, got {type(inputs).__name__}"
            )
        for name in inputs:
            if name not in self._input_by_name:
                raise InferenceInputError(
                    f"unknown input {name!r}; model {self.name!r} expects: {', '.join(self.input_names)}"
                )
        seen: dict[str, tuple[int, str]] = {}
        for spec in self.input_specs:
            if spec.name not in inputs:
                raise InferenceInputError(
                    f"missing input {spec.name!r} ({spec.dtype} {format_shape(spec.shape)}); "
                    f"model {self.name!r} expects: {', '.join(self.input_names)}"
                )
            arr = inputs[spec.name]
            if not isinstance(arr, np.ndarray):
                raise InferenceInputError(
                    f"input {spec.name!r} must be a numpy array, got {type(arr).__name__}"
                )
            if not _dtype_matches(arr, spec.dtype):
                raise InferenceInputError(
                    f"input {spec.name!r} has dtype {arr.dtype}, expected {spec.dtype}"
                    + (
                        f" (cast it with .astype('{spec.dtype}'))"
                        if spec.dtype not in ("string", "bfloat16")
                        else ""
                    )
                )
            check_shape(spec, arr.shape, self.dynamic_dims, seen)
            check_value_range(spec, arr)
        self.check_attention_step(inputs)

    def check_attention_step(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Refuse what a decoder captured with fused attention cannot run: a step of several tokens
        with a past, for more than one row (ONNX Runtime's GroupQueryAttention takes it for batch 1).

        Raises:
            InferenceInputError: saying what to do instead.
        """
        if not self._fused_attention:
            return
        ids = inputs.get("input_ids")
        past = next((v for k, v in inputs.items() if k.startswith("past_key_values.")), None)
        shape: tuple[int, ...] = getattr(ids, "shape", ())
        if (
            len(shape) == 2
            and shape[0] > 1
            and shape[1] > 1
            and past is not None
            and past.ndim == 4
            and past.shape[2]
        ):
            raise InferenceInputError(
                f"a step of {shape[1]} tokens with a past takes batch 1 in {self.name!r} (its attention is "
                "ONNX Runtime's GroupQueryAttention): run prompts with an empty past and decode one token per "
                "step, or export with --attention standard"
            )

    # -- running ---------------------------------------------------------------------------------

    def run(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None = None,
        *,
        validate: bool = True,
    ) -> dict[str, np.ndarray]:
        """Run the model and return ``{output name: array}``.

        Args:
            inputs: one numpy array per model input (bfloat16 as ``ml_dtypes.bfloat16`` or uint16 bits).
            output_names: which outputs to compute (default: all, in model order).
            validate: check inputs against the signature first (see :meth:`validate_inputs`).

        Example:
            >>> sess.run({"x": np.ones((1, 16), np.float32)}, ["logits"])     # doctest: +SKIP
            {'logits': array([[...]], dtype=float32)}

        Lists and scalars are converted to arrays of the input's dtype, and torch tensors (or
        anything with ``.numpy()``) to their arrays.

        Raises:
            InferenceInputError: an input does not match the signature, or an unknown output is asked for.
        """
        inputs = self._as_arrays(inputs)
        if validate:
            self.validate_inputs(inputs)
        if output_names is None:
            names = self.output_names
        else:
            names = list(output_names)
            for n in names:
                if n not in self._output_set:
                    raise InferenceInputError(
                        f"unknown output {n!r}; model {self.name!r} has: {', '.join(self.output_names)}"
                    )
        if self._use_iobinding:
            values = self._run_iobinding(inputs, names)
        elif self._has_bf16:
            values = self._run_ortvalues(inputs, names)
        else:
            values = self._sess.run(names, inputs if type(inputs) is dict else dict(inputs))
        return dict(zip(names, values, strict=True))

    def run_prepared(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run inputs already checked against the signature (a dict of numpy arrays of the right
        dtypes and shapes, see :meth:`validate_inputs`) and return every output: no conversion and
        no check, the least overhead per run (servers call this after validating a request).

        Example:
            >>> sess.run_prepared({"x": np.ones((1, 16), np.float32)})["logits"].shape   # doctest: +SKIP
            (1, 10)
        """
        direct = self._direct_run
        if direct is None:
            return self.run(inputs, validate=False)
        names = self.output_names
        return dict(zip(names, direct(names, inputs, None), strict=True))

    def _as_arrays(self, inputs: Mapping[str, Any]) -> Mapping[str, Any]:
        """Numpy arrays for what users hold: lists and scalars, torch tensors (no torch import here)."""
        if not isinstance(inputs, Mapping) or all(isinstance(v, np.ndarray) for v in inputs.values()):
            return inputs
        out: dict[str, Any] = {}
        for name, value in inputs.items():
            spec = self._input_by_name.get(name)
            if isinstance(value, np.ndarray) or spec is None:
                out[name] = value
            elif hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
                out[name] = value.detach().cpu().numpy()
            elif isinstance(value, (list, tuple, int, float, bool)):
                try:
                    out[name] = np.asarray(value, dtype=to_numpy(spec.dtype))
                except (TypeError, ValueError) as e:
                    raise InferenceInputError(
                        f"input {name!r}: cannot make a {spec.dtype} array of the given "
                        f"{type(value).__name__} ({e}); pass a numpy array"
                    ) from None
            else:
                out[name] = value  # validate_inputs names the type
        return out

    def _ortvalue(self, name: str, arr: np.ndarray, device: str = "cpu") -> Any:
        import onnxruntime as ort

        arr = np.ascontiguousarray(arr)
        if self._input_by_name[name].dtype == "bfloat16":
            return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(arr.view(np.uint16), _ONNX_BF16)
        return ort.OrtValue.ortvalue_from_numpy(arr, device, self.device_id)

    def _run_ortvalues(self, inputs: Mapping[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        feeds = {k: self._ortvalue(k, v) for k, v in inputs.items()}
        outs = self._sess.run_with_ort_values(names, feeds)
        return [_bf16_output(v) if v.data_type() == "tensor(bfloat16)" else v.numpy() for v in outs]

    def _run_iobinding(self, inputs: Mapping[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        """GPU path: copy inputs to the device once, keep outputs on the device, copy them back at the end."""
        binding = self._sess.io_binding()
        for name, arr in inputs.items():
            if self._input_by_name[name].dtype in ("string", "bfloat16"):
                binding.bind_ortvalue_input(name, self._ortvalue(name, arr))
            else:
                binding.bind_ortvalue_input(name, self._ortvalue(name, arr, "cuda"))
        for name in names:
            binding.bind_output(name, "cuda", self.device_id)
        self._sess.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())

    def warmup(self, runs: int = 1, rng: int | None = 0) -> float:
        """Run the model ``runs`` times on random inputs spread over the dynamic dims' ranges.

        Returns the seconds spent. Example:
            >>> sess.warmup(2)                               # doctest: +SKIP
            0.004
        """
        from torchport.runtimes._inputs import dim_sample_points, random_tensor

        start = time.perf_counter()
        gen = np.random.default_rng(rng)
        named = {d for s in self.input_specs for d in s.shape if isinstance(d, str)}
        ranges = {d: self.dynamic_dims.get(d, DimRange(1, 1)) for d in named}
        points = dim_sample_points(ranges, runs, gen)
        for i in range(runs):
            dims = points[i % len(points)]
            feeds = {}
            for spec in self.input_specs:
                shape = [
                    d
                    if isinstance(d, int)
                    else dims.get(d, sum(dims.get(p, 1) for p in d.split("+")))
                    if d
                    else 1
                    for d in spec.shape
                ]
                if spec.dtype == "bfloat16":
                    feeds[spec.name] = np.zeros(shape, np.uint16)
                else:
                    feeds[spec.name] = random_tensor(spec, shape, gen)
            self.run(feeds, validate=False)
        return time.perf_counter() - start

    def generate(self, prompts: Any, **kwargs: Any) -> Any:
        """Generate text or tokens with a package exported with ``--task text-generation``.

        ``prompts``: text (with the package's tokenizer), a list of texts, token ids, or a list of
        token-id lists; keyword arguments are :class:`~torchport.runtimes.SamplingParams` fields.
        Returns a :class:`~torchport.runtimes.GenerationResult` (see :mod:`torchport.runtimes._generate`).

        Example:
            >>> sess.generate("Once upon a time", max_new_tokens=32, do_sample=True, top_p=0.9, seed=0).text  # doctest: +SKIP
        """
        from torchport.runtimes._generate import Generator

        if getattr(self, "_generator", None) is None:
            self._generator = Generator(self)
        return self._generator.generate(prompts, **kwargs)

    def __repr__(self) -> str:
        return f"Session({self.name!r}, variant={self.variant!r}, provider={self.provider!r})"

    def __str__(self) -> str:
        ins = ", ".join(f"{s.name}: {s.dtype}{format_shape(s.shape)}" for s in self.input_specs)
        outs = ", ".join(f"{s.name}: {s.dtype}{format_shape(s.shape)}" for s in self.output_specs)
        return f"{self.name} ({self.variant}, {short_name(self.provider)}): ({ins}) -> ({outs})"


def _provider_options(provider: str, device_id: int) -> dict[str, str]:
    """Options of one execution provider. CUDA runs float32 as float32: TF32 matrix products (on by
    default in ONNX Runtime's CUDA provider) drift ~1e-3 from the validated CPU results; the fp16
    variant is the fast path on a GPU, with its own recorded parity."""
    if provider not in GPU_PROVIDERS:
        return {}
    options = {"device_id": str(device_id)}
    if provider == "CUDAExecutionProvider":
        options["use_tf32"] = "0"
    return options
