"""Model files shared by the example-input tests (resolution, user examples)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

MODEL = textwrap.dedent(
    """
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 2)

        def forward(self, x, y=None):
            out = self.lin(x)
            return out if y is None else out + y.sum()

    def make():
        return Net()
    """
)


@pytest.fixture()
def bare_model(tmp_path: Path) -> Path:
    path = tmp_path / "bare.py"
    path.write_text(MODEL)
    return path


@pytest.fixture()
def model_with_examples(tmp_path: Path) -> Path:
    path = tmp_path / "with_examples.py"
    path.write_text(
        MODEL
        + textwrap.dedent(
            """
            def example_inputs():
                return (torch.ones(3, 4),)

            DYNAMIC_DIMS = {"x": {0: ("batch", 1, 32)}}
            """
        )
    )
    return path


def write_npz(tmp_path: Path, **arrays: np.ndarray) -> str:
    """A sample file ``sample.npz`` holding ``arrays``; returns its path."""
    path = tmp_path / "sample.npz"
    np.savez(path, **arrays)
    return str(path)
