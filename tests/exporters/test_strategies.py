"""Export strategies: the contiguous() rewrite of the decomposition workaround."""

from __future__ import annotations

import torch
from torch import nn

from torchport.exporters._capture import capture
from torchport.exporters._outputs import FlatModule
from torchport.exporters._strategies import rewrite_contiguous
from torchport.runtimes import DimRange, TensorSpec


class TransposeContiguous(nn.Module):
    def forward(self, x):
        y = x.transpose(1, 2).contiguous()
        return y.reshape(y.shape[0], -1)


def test_rewrite_contiguous_keeps_values() -> None:
    model = TransposeContiguous()
    x = torch.randn(2, 3, 5)
    flat = FlatModule.build(model, (x,))
    spec = TensorSpec("x", "float32", ["batch", 3, "n"])
    ep = capture(flat, (x,), [spec], {"batch": DimRange(1, 8), "n": DimRange(2, 16)})
    assert rewrite_contiguous(ep) == 1
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert torch.ops.aten.contiguous.default not in targets and torch.ops.aten.clone.default in targets
    x2 = torch.randn(4, 3, 9)
    torch.testing.assert_close(ep.module()(x2)[0], model(x2))
