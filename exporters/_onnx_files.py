"""Saving ONNX models: one helper, one external-data threshold.

A protobuf file cannot exceed 2 GiB, so a model whose weights pass
:data:`EXTERNAL_DATA_THRESHOLD` is saved with its tensors in ``<file>.data`` next to it (the
threshold leaves room for the graph itself). Export, optimize and the quantizers' temporary
files all save through :func:`save_onnx`.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnx_ir as ir

__all__ = ["EXTERNAL_DATA_THRESHOLD", "save_onnx", "weights_nbytes"]

#: weights above this many bytes go to an external data file
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
#: with external data, tensors smaller than this stay inside the .onnx file
_EXTERNAL_TENSOR_MIN_BYTES = 1024


def weights_nbytes(model: onnx.ModelProto | ir.Model) -> int:
    """Bytes of the model's initializers, cheaply (``ByteSize()`` would serialize the whole model).

    Example:
        >>> from onnx import helper, numpy_helper
        >>> import numpy as np
        >>> w = numpy_helper.from_array(np.zeros((4, 4), np.float32), "w")
        >>> weights_nbytes(helper.make_model(helper.make_graph([], "g", [], [], initializer=[w])))
        64
    """
    if isinstance(model, ir.Model):
        return sum(
            v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None
        )
    total = 0
    for t in model.graph.initializer:
        if t.raw_data:
            total += len(t.raw_data)
        else:
            total += 4 * (len(t.float_data) + len(t.int32_data)) + 8 * (
                len(t.int64_data) + len(t.double_data)
            )
    return total


def save_onnx(
    model: onnx.ModelProto | ir.Model,
    path: str | os.PathLike[str],
    *,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
) -> list[str]:
    """Save ``model`` at ``path`` (replacing it and a stale ``<name>.data``); return the data files written.

    Raises:
        OSError / ValueError: writing failed (callers name their stage).
    """
    path = Path(path)
    data_name = f"{path.name}.data"
    for stale in (path, path.parent / data_name):
        if stale.exists():
            stale.unlink()
    external = weights_nbytes(model) > external_data_threshold
    if isinstance(model, ir.Model):
        if external:
            ir.save(model, path, external_data=data_name, size_threshold_bytes=_EXTERNAL_TENSOR_MIN_BYTES)
        else:
            ir.save(model, path)
    elif external:
        onnx.save(
            model,
            str(path),
            save_as_external_data=True,
            location=data_name,
            size_threshold=_EXTERNAL_TENSOR_MIN_BYTES,
        )
    else:
        onnx.save(model, str(path))
    return [data_name] if external and (path.parent / data_name).exists() else []
