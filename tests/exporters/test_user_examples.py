"""Example inputs the user gives: sample files (.npz/.pt) and what example_inputs() returns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.exporters.conftest import MODEL, write_npz
from torchport.exporters import load_model, resolve_example_inputs
from torchport.runtimes import LoadError, UsageError


def test_sample_npz_keyed_by_parameter_names(bare_model: Path, tmp_path: Path) -> None:
    loaded = load_model(f"{bare_model}:make")
    sample = write_npz(tmp_path, y=np.ones((2,), np.float32), x=np.ones((6, 4), np.float32))
    ex = resolve_example_inputs(loaded, [], {}, sample_file=sample)
    assert [(s.name, s.shape) for s in ex.specs] == [("x", [6, 4]), ("y", [2])]  # forward order
    assert ex.dynamic_dims == {}
    assert loaded.module(*ex.args, **ex.kwargs).shape == (6, 2)


def test_sample_npz_with_dynamic_dims(model_with_examples: Path, tmp_path: Path) -> None:
    # the model file's DYNAMIC_DIMS apply to sample-file inputs too (no example_inputs() here)
    path = tmp_path / "dd.py"
    path.write_text(MODEL + '\nDYNAMIC_DIMS = {"x": {0: ("batch", 1, 32)}}\n')
    loaded = load_model(f"{path}:make")
    ex = resolve_example_inputs(
        loaded, [], {}, sample_file=write_npz(tmp_path, x=np.ones((6, 4), np.float32))
    )
    assert str(ex) == "x:float32[batch,4] (batch=1..32)"


def test_sample_npz_unknown_key(bare_model: Path, tmp_path: Path) -> None:
    loaded = load_model(f"{bare_model}:make")
    with pytest.raises(
        UsageError, match=r"names 'z' that forward\(\) does not take; its parameters are: x, y"
    ):
        resolve_example_inputs(loaded, [], {}, sample_file=write_npz(tmp_path, z=np.ones((1, 4), np.float32)))


def test_sample_pt_tuple_and_pickle_refused(bare_model: Path, tmp_path: Path) -> None:
    loaded = load_model(f"{bare_model}:make")
    path = tmp_path / "sample.pt"
    torch.save((torch.ones(2, 4),), str(path))
    ex = resolve_example_inputs(loaded, [], {}, sample_file=str(path))
    assert [(s.name, s.shape) for s in ex.specs] == [("x", [2, 4])]
    bad = tmp_path / "bad.pt"
    torch.save({"x": torch.nn.Linear(2, 2)}, str(bad))
    with pytest.raises(UsageError, match=r"cannot read sample file .*bad\.pt with weights_only=True"):
        resolve_example_inputs(loaded, [], {}, sample_file=str(bad))
    with pytest.raises(UsageError, match=r"sample file not found"):
        resolve_example_inputs(loaded, [], {}, sample_file=str(tmp_path / "missing.npz"))
    with pytest.raises(UsageError, match=r"unsupported type \.csv; use \.npz or \.pt"):
        (tmp_path / "s.csv").write_text("1,2")
        resolve_example_inputs(loaded, [], {}, sample_file=str(tmp_path / "s.csv"))


def test_bad_example_inputs_value(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(MODEL + "\ndef example_inputs():\n    return 'text'\n")
    with pytest.raises(LoadError, match=r"example_inputs\(\) in .* gave a str; return a tensor, a tuple"):
        load_model(f"{path}:make")
    path.write_text(
        MODEL
        + "\ndef example_inputs():\n    return (torch.ones(2, 4),)\nDYNAMIC_DIMS = {'q': {0: ('b', 1, 4)}}\n"
    )
    with pytest.raises(
        LoadError, match=r"dynamic dims name input\(s\) 'q' that the model does not take; inputs are: x"
    ):
        load_model(f"{path}:make")
