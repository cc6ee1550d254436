"""A tiny multilayer perceptron: 16 features → 4 outputs."""

from __future__ import annotations

import torch
from torch import nn


def make_model() -> nn.Module:
    """A 16→32→4 MLP with fixed random weights (seed 0), in eval mode."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4)).eval()


def example_inputs() -> tuple[torch.Tensor]:
    """One example batch of 3 rows. The batch dim is dynamic (``batch``)."""
    return (torch.randn(3, 16),)


DYNAMIC_DIMS = {"input": {0: ("batch", 1, 64)}}
