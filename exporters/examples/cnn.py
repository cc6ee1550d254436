"""A small image classifier: 3x32x32 images → 10 class logits (conv, batch norm, dropout)."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Two conv blocks with BatchNorm, global average pooling, dropout and a linear head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(32, num_classes))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))


def make_model() -> nn.Module:
    """The example CNN with fixed random weights (seed 0), in eval mode."""
    torch.manual_seed(0)
    return SmallCNN().eval()


def example_inputs() -> tuple[torch.Tensor]:
    """One example batch: two 3x32x32 images. The batch dim is dynamic (``batch``)."""
    return (torch.randn(2, 3, 32, 32),)


#: dynamic dims of the example inputs, used when the user gives no --dim
DYNAMIC_DIMS = {"image": {0: ("batch", 1, 64)}}
