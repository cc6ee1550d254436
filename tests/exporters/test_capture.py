"""Capture with torch.export (real runs)."""

from __future__ import annotations

import torch
from torch import nn

from torchport.exporters._capture import capture
from torchport.exporters._outputs import FlatModule
from torchport.runtimes import DimRange, TensorSpec


def test_capture_dynamic_batch() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU()).eval()
    flat = FlatModule.build(model, (torch.randn(3, 4),))
    ep = capture(
        flat, (torch.randn(3, 4),), [TensorSpec("x", "float32", ["batch", 4])], {"batch": DimRange(1, 16)}
    )
    x = torch.randn(11, 4)
    torch.testing.assert_close(ep.module()(x)[0], model(x))
