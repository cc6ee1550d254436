"""The model package manifest, ``torchport.json``.

A package is a folder::

    model.onnx               (+ model.onnx.data when external data is used)
    model.fp16.onnx / model.int8.onnx / model.int4.onnx   optional variants
    torchport.json           this manifest
    parity.json              the validation report that gated this package

The manifest is plain JSON. ``schema_version`` lets later versions read older packages:
:func:`manifest_from_dict` upgrades every older schema it knows and refuses newer ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from torchport.runtimes._dtypes import check_dtype
from torchport.runtimes._errors import PackageError
from torchport.runtimes._manifest_schema import MANIFEST_NAME, validate_manifest

SCHEMA_VERSION = 1
PARITY_NAME = "parity.json"

Dim = int | str


@dataclass
class TensorSpec:
    """Name, dtype and shape of one model input or output.

    ``shape`` holds ints for fixed dims and names (``"batch"``) for dynamic ones; ``None``
    marks a dim whose size is unknown and unnamed.
    """

    name: str
    dtype: str
    shape: list[Dim | None]
    #: optional inclusive [low, high] of legal values (token ids < vocab size, for example);
    #: used to generate validation, calibration and warm-up inputs
    value_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        self.dtype = check_dtype(self.dtype)
        self.shape = list(self.shape)
        if self.value_range is not None:
            self.value_range = (self.value_range[0], self.value_range[1])

    @property
    def rank(self) -> int:
        return len(self.shape)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.value_range is not None:
            data["value_range"] = list(self.value_range)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        vr = data.get("value_range")
        return cls(
            name=data["name"],
            dtype=data["dtype"],
            shape=list(data["shape"]),
            value_range=tuple(vr) if vr else None,
        )


@dataclass
class DimRange:
    """Inclusive range of a named dynamic dim."""

    min: int
    max: int

    def __post_init__(self) -> None:
        if self.min < 0 or self.max < self.min:
            raise PackageError(f"invalid dim range {self.min}..{self.max}: need 0 <= min <= max")

    def __contains__(self, value: int) -> bool:
        return self.min <= value <= self.max

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "max": self.max}


@dataclass
class FileRecord:
    """sha256 and size in bytes of one file in the package."""

    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size}


@dataclass
class Variant:
    """One ONNX model file of the package (``fp32`` is ``model.onnx``), with its own parity record.

    Attributes:
        file: the ``.onnx`` file; ``data_files``: its external-data files.
        precision: ``fp32``, ``fp16``, ``int8`` or ``int4``.
        parity: the variant's link of the trust chain: ``reference`` (``"eager"`` for the fp32 model,
            ``"fp32"`` for a variant compared with the validated fp32 model), ``passed``,
            ``tolerance`` and the measured errors; ``None`` when not validated.
        passes: the history of optimization passes that produced this file, oldest first.
    """

    file: str
    precision: str = "fp32"
    parity: dict[str, Any] | None = None
    data_files: list[str] = field(default_factory=list)
    passes: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "precision": self.precision,
            "parity": self.parity,
            "data_files": list(self.data_files),
            "passes": list(self.passes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Variant:
        return cls(
            file=data["file"],
            precision=data.get("precision", "fp32"),
            parity=data.get("parity"),
            data_files=list(data.get("data_files", [])),
            passes=list(data.get("passes", [])),
        )


@dataclass
class Manifest:
    """Everything ``torchport.json`` records about a package.

    Attributes:
        name: model name (a valid identifier-like string; the server serves it under this name).
        version: model version string.
        inputs / outputs: the signature.
        dynamic_dims: range of each named dynamic dim used in the signature.
        producer: versions of what produced the package (torchport, torch, onnx, onnxscript, opset).
        source: where the model came from: ``{"kind", "reference", "sha256"}``.
        export: how it was exported: ``{"strategy", "attempts", "opset", "seconds"}``.
        files: sha256 and size of every file except the manifest itself.
        variants: ``"fp32"`` (``model.onnx``) and optional ``"fp16"``/``"int8"``/``"int4"``.
        passes: what each optimization pass did.
        parity: summary of the validation that gated the package; ``None`` when unvalidated.
        validated: whether the package was validated against eager PyTorch.
        extra: free-form metadata kept round-trip.
    """

    name: str
    version: str = "1"
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    dynamic_dims: dict[str, DimRange] = field(default_factory=dict)
    producer: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    files: dict[str, FileRecord] = field(default_factory=dict)
    variants: dict[str, Variant] = field(default_factory=lambda: {"fp32": Variant(file="model.onnx")})
    passes: list[dict[str, Any]] = field(default_factory=list)
    parity: dict[str, Any] | None = None
    validated: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "version": self.version,
            "producer": self.producer,
            "source": self.source,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "dynamic_dims": {k: v.to_dict() for k, v in self.dynamic_dims.items()},
            "export": self.export,
            "files": {k: v.to_dict() for k, v in sorted(self.files.items())},
            "variants": {k: v.to_dict() for k, v in self.variants.items()},
            "passes": self.passes,
            "parity": self.parity,
            "validated": self.validated,
            "extra": self.extra,
        }

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)


def _upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """Bring an older manifest dict up to :data:`SCHEMA_VERSION` (schema 1 is the first).

    ``data`` has passed :func:`validate_manifest`, so its ``schema_version`` is a known one.
    """
    # Future schema upgrades go here, one step at a time: if version == 1: ...; version = 2
    return data


def manifest_from_dict(data: dict[str, Any]) -> Manifest:
    """Parse a manifest dict (any schema version this torchport knows) into a :class:`Manifest`.

    Raises:
        PackageError: one line naming the first field that is missing or of the wrong type
            (``inputs[0].dtype``, ``validated``...), or a file name outside the package.
    """
    validate_manifest(data, newest=SCHEMA_VERSION)
    data = _upgrade(dict(data))
    try:
        return Manifest(
            schema_version=SCHEMA_VERSION,
            name=data["name"],
            version=str(data.get("version", "1")),
            producer=dict(data.get("producer", {})),
            source=dict(data.get("source", {})),
            inputs=[TensorSpec.from_dict(d) for d in data.get("inputs", [])],
            outputs=[TensorSpec.from_dict(d) for d in data.get("outputs", [])],
            dynamic_dims={k: DimRange(**v) for k, v in data.get("dynamic_dims", {}).items()},
            export=dict(data.get("export", {})),
            files={k: FileRecord(**v) for k, v in data.get("files", {}).items()},
            variants={k: Variant.from_dict(v) for k, v in data.get("variants", {}).items()},
            passes=list(data.get("passes", [])),
            parity=data.get("parity"),
            validated=bool(data.get("validated", False)),
            extra=dict(data.get("extra", {})),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise PackageError(f"{MANIFEST_NAME} is malformed: {type(e).__name__}: {e}") from e
