"""The manifest dtype names ↔ torch dtypes."""

from __future__ import annotations

import torch

from torchport.runtimes._dtypes import SUPPORTED_DTYPES
from torchport.runtimes._errors import UsageError

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

__all__ = ["TORCH_DTYPES", "dtype_name"]


def dtype_name(dtype: torch.dtype) -> str:
    """Manifest dtype name of a torch dtype (``torch.float32`` → ``"float32"``)."""
    try:
        return _FROM_TORCH[dtype]
    except KeyError:
        raise UsageError(
            f"unsupported tensor dtype {dtype}; use one of: {', '.join(_INPUT_DTYPES)}"
        ) from None
