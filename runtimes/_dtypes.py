"""Data type names shared by the manifest, ONNX Runtime and the Open Inference Protocol.

The manifest uses numpy-style names (``float32``, ``int64``, ``bool``...). This module maps
them to numpy, to ONNX Runtime's type strings (``tensor(float)``) and to the protocol's
datatypes (``FP32``).
"""

from __future__ import annotations

import numpy as np

from torchport.runtimes._errors import UsageError

#: manifest dtype name -> Open Inference Protocol datatype
PROTOCOL_DATATYPES: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "bfloat16": "BF16",
    "string": "BYTES",
}

#: ONNX Runtime type string -> manifest dtype name
_ORT_TYPES: dict[str, str] = {
    "tensor(bool)": "bool",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(float16)": "float16",
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(bfloat16)": "bfloat16",
    "tensor(string)": "string",
}

#: ONNX TensorProto element type -> manifest dtype name
ONNX_ELEM_TYPES: dict[int, str] = {
    9: "bool",
    2: "uint8",
    4: "uint16",
    12: "uint32",
    13: "uint64",
    3: "int8",
    5: "int16",
    6: "int32",
    7: "int64",
    10: "float16",
    1: "float32",
    11: "float64",
    16: "bfloat16",
    8: "string",
}

SUPPORTED_DTYPES = tuple(PROTOCOL_DATATYPES)


def check_dtype(name: str) -> str:
    """Return ``name`` normalised, or raise a :class:`UsageError` listing the supported dtypes."""
    aliases = {"float": "float32", "double": "float64", "half": "float16", "long": "int64", "int": "int32"}
    norm = aliases.get(name.strip().lower(), name.strip().lower())
    if norm not in PROTOCOL_DATATYPES:
        raise UsageError(f"unsupported dtype {name!r}; use one of: {', '.join(SUPPORTED_DTYPES)}")
    return norm


def to_numpy(name: str) -> np.dtype:
    """numpy dtype for a manifest dtype name (bfloat16 has no numpy dtype and raises)."""
    if name == "string":
        return np.dtype(object)
    if name == "bfloat16":
        raise UsageError("bfloat16 has no numpy dtype; send it as binary data or use float32")
    return np.dtype(name)


def from_numpy(dtype: np.dtype) -> str:
    """Manifest dtype name for a numpy dtype."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "string"
    return check_dtype(dtype.name)


def from_ort(type_string: str) -> str:
    """Manifest dtype name for an ONNX Runtime type string such as ``tensor(float)``."""
    try:
        return _ORT_TYPES[type_string]
    except KeyError:
        raise UsageError(f"unsupported ONNX Runtime type {type_string!r}") from None
