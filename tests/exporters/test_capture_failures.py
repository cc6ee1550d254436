"""torch.export failures analysed: the kind, the user's source line, what to change. Real torch.export runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchport.exporters._capture import capture
from torchport.exporters._capture_failures import analyze_failure
from torchport.exporters._outputs import FlatModule
from torchport.exporters._source_lines import user_traceback
from torchport.runtimes import DimRange, ExportError, TensorSpec


class Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


def _capture_error(
    model: nn.Module, x: torch.Tensor, spec: TensorSpec, dims: dict, strict: bool = False
) -> ExportError:
    flat = FlatModule.build(model, (x,))
    with pytest.raises(ExportError) as info:
        capture(flat, (x,), [spec], dims, strict=strict)
    return info.value


@pytest.mark.parametrize("strict", [False, True], ids=["non-strict", "strict"])
def test_data_dependent_branch_is_located(strict: bool) -> None:
    err = _capture_error(
        Branchy(),
        torch.randn(3, 4),
        TensorSpec("x", "float32", ["batch", 4]),
        {"batch": DimRange(1, 8)},
        strict,
    )
    assert err.stage == "capture"
    assert err.failure.kind == "data-dependent control flow"
    assert err.failure.location.filename == __file__
    assert err.failure.location.line == "if x.sum() > 0:"
    text = str(err)
    assert f"{__file__}:{err.failure.location.lineno} in forward" in text
    assert "torch.cond(x.sum() > 0, true_fn, false_fn, (x,))" in text
    if not strict:  # non-strict runs the Python: the traceback ends in the user's frame (for --pdb)
        tb = err.user_traceback
        while tb.tb_next is not None:
            tb = tb.tb_next
        assert tb.tb_frame.f_code.co_name == "forward" and tb.tb_frame.f_code.co_filename == __file__


def test_item_is_data_dependent_value() -> None:
    class UsesItem(nn.Module):
        def forward(self, x):
            n = int(x.max().item())
            return torch.zeros(n) + x.sum()

    err = _capture_error(
        UsesItem(), torch.ones(3, 4) * 3, TensorSpec("x", "float32", ["batch", 4]), {"batch": DimRange(1, 8)}
    )
    assert err.failure.kind == "data-dependent value"
    assert err.failure.location.filename == __file__
    assert "torch.zeros(n)" in err.failure.location.line or "item()" in err.failure.location.line


def test_specialized_dim_is_explained() -> None:
    class FixedBatch(nn.Module):
        def forward(self, x):
            return x.reshape(4, -1)

    err = _capture_error(
        FixedBatch(), torch.randn(4, 6), TensorSpec("x", "float32", ["batch", 6]), {"batch": DimRange(1, 16)}
    )
    assert err.failure.kind == "dynamic dim specialized"
    assert "'batch' to 4" in str(err)
    assert "--dim" in err.failure.hint


def test_analyze_plain_exception_finds_user_frame() -> None:
    def user_code():
        raise RuntimeError("boom happened")

    try:
        user_code()
    except RuntimeError as e:
        failure = analyze_failure(e, "capture")
        tb = user_traceback(e)
    assert failure.kind == "error" and "boom happened" in failure.summary
    assert (
        failure.location.function == "user_code"
        and failure.location.line == 'raise RuntimeError("boom happened")'
    )
    assert tb is not None
