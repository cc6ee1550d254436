"""The one dynamic-shapes builder: torch.export.Dim objects from specs and dim ranges."""

from __future__ import annotations

from torchport.exporters._dynamic_shapes import flat_dynamic_shapes
from torchport.runtimes import DimRange, TensorSpec


def test_make_dynamic_shapes_shares_dims() -> None:
    specs = [
        TensorSpec("a", "float32", ["batch", 4]),
        TensorSpec("b", "float32", ["batch", "n"]),
        TensorSpec("c", "int64", [3]),
    ]
    (shapes,) = flat_dynamic_shapes(specs, {"batch": DimRange(1, 8), "n": DimRange(2, 9)})
    assert shapes[0][0] is shapes[1][0]
    assert shapes[0][0].__name__ == "batch" and shapes[1][1].min == 2 and shapes[1][1].max == 9
    assert shapes[2] is None


def test_single_size_range_stays_static() -> None:
    """--dim n=5..5 means a fixed size: torch.export.Dim refuses min == max, so the axis stays static."""
    specs = [TensorSpec("x", "float32", ["batch", "seq"])]
    (shapes,) = flat_dynamic_shapes(specs, {"batch": DimRange(5, 5), "seq": DimRange(1, 8)})
    assert list(shapes[0]) == [1] and shapes[0][1].__name__ == "seq"
