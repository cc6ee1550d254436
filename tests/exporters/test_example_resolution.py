"""Which example inputs a model is captured with: --input/--dim over example_inputs(), sample files, HF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.exporters.conftest import MODEL, write_npz
from torchport.exporters import load_model, parse_dim_spec, parse_input_spec, resolve_example_inputs
from torchport.runtimes import DimRange, UsageError


def test_input_specs_win_over_everything(model_with_examples: Path, tmp_path: Path) -> None:
    loaded = load_model(f"{model_with_examples}:make")
    sample = write_npz(tmp_path, x=np.zeros((5, 4), np.float32))
    ex = resolve_example_inputs(
        loaded, [parse_input_spec("x:float32[n,4]")], dict([parse_dim_spec("n=1..10")]), sample_file=sample
    )
    assert str(ex) == "x:float32[n,4] (n=1..10)"
    assert ex.args[0].shape == (8, 4)
    ep = torch.export.export(loaded.module, ex.args, ex.kwargs, dynamic_shapes=ex.dynamic_shapes())
    (x,), _ = ex.make({"n": 3}, rng=0)
    torch.testing.assert_close(ep.module()(x), loaded.module(x))


def test_input_spec_dim_falls_back_to_model_range(model_with_examples: Path) -> None:
    loaded = load_model(f"{model_with_examples}:make")
    ex = resolve_example_inputs(loaded, [parse_input_spec("x:float32[batch,4]")], {})
    assert ex.dynamic_dims == {"batch": DimRange(1, 32)}


def test_example_inputs_beat_sample_file(model_with_examples: Path, tmp_path: Path) -> None:
    loaded = load_model(f"{model_with_examples}:make")
    sample = write_npz(tmp_path, x=np.zeros((5, 4), np.float32))
    ex = resolve_example_inputs(loaded, [], {}, sample_file=sample)
    assert str(ex) == "x:float32[batch,4] (batch=1..32)"
    assert torch.equal(ex.args[0], torch.ones(3, 4))


def test_dim_overrides_the_range_of_example_inputs(model_with_examples: Path) -> None:
    loaded = load_model(f"{model_with_examples}:make")
    ex = resolve_example_inputs(loaded, [], dict([parse_dim_spec("batch=1..4")]))
    assert ex.dynamic_dims == {"batch": DimRange(1, 4)}
    assert torch.equal(ex.args[0], torch.ones(3, 4))  # 3 is in range: kept
    moved = resolve_example_inputs(loaded, [], dict([parse_dim_spec("batch=5..9")]))
    assert moved.args[0].shape == (7, 4)  # regenerated well inside the new range
    torch.export.export(loaded.module, moved.args, moved.kwargs, dynamic_shapes=moved.dynamic_shapes())


def test_dim_for_unknown_name_lists_existing(model_with_examples: Path) -> None:
    loaded = load_model(f"{model_with_examples}:make")
    with pytest.raises(
        UsageError, match=r"--dim seq: no input uses a dim of that name; the dynamic dims are: batch"
    ):
        resolve_example_inputs(loaded, [], dict([parse_dim_spec("seq=1..8")]))
    with pytest.raises(UsageError, match=r"--dim seq: no --input uses a dim of that name; dims used: n"):
        resolve_example_inputs(
            loaded,
            [parse_input_spec("x:float32[n,4]")],
            dict([parse_dim_spec("n=1..4"), parse_dim_spec("seq=1..8")]),
        )


def test_no_inputs_anywhere(bare_model: Path) -> None:
    loaded = load_model(f"{bare_model}:make")
    with pytest.raises(
        UsageError, match=r'no example inputs for .*: pass --input "name:dtype\[dims\]" and --dim'
    ):
        resolve_example_inputs(loaded, [], {})


def test_input_spec_errors_against_the_model(bare_model: Path) -> None:
    loaded = load_model(f"{bare_model}:make")
    with pytest.raises(
        UsageError, match=r"dim\(s\) seq used in --input have no range; add --dim seq=1\.\.64"
    ):
        resolve_example_inputs(loaded, [parse_input_spec("x:float32[seq,4]")], {})
    with pytest.raises(
        UsageError, match=r"--input names 'image' that forward\(\) does not take; its parameters are: x, y"
    ):
        resolve_example_inputs(loaded, [parse_input_spec("image:float32[1,4]")], {})
    with pytest.raises(UsageError, match=r"--input names x more than once"):
        resolve_example_inputs(
            loaded, [parse_input_spec("x:float32[1,4]"), parse_input_spec("x:float32[2,4]")], {}
        )


def test_distinct_example_sizes_for_input_specs(bare_model: Path) -> None:
    loaded = load_model(f"{bare_model}:make")
    ex = resolve_example_inputs(
        loaded,
        [parse_input_spec("x:float32[batch,4]"), parse_input_spec("y:float32[seq]")],
        dict([parse_dim_spec("batch=1..64"), parse_dim_spec("seq=1..64")]),
    )
    sizes = ex.example_dims()
    assert sizes["batch"] >= 2 and sizes["seq"] >= 2 and sizes["batch"] != sizes["seq"]
    assert 4 not in sizes.values()  # static sizes avoided too
    assert list(ex.kwargs) == [] and len(ex.args) == 2
    ep = torch.export.export(loaded.module, ex.args, ex.kwargs, dynamic_shapes=ex.dynamic_shapes())
    args, kwargs = ex.make({"batch": 1, "seq": 64}, rng=3)
    torch.testing.assert_close(ep.module()(*args, **kwargs), loaded.module(*args, **kwargs))


def test_dim_batch_makes_axis_zero_dynamic(bare_model: Path, tmp_path: Path) -> None:
    path = tmp_path / "plain.py"
    path.write_text(
        MODEL + "\ndef example_inputs():\n    return {'x': torch.ones(1, 4), 'y': torch.ones(1, 3)}\n"
    )
    loaded = load_model(f"{path}:make")
    assert str(loaded.example_inputs) == "x:float32[1,4] y:float32[1,3] (static)"
    ex = resolve_example_inputs(loaded, [], dict([parse_dim_spec("batch=1..16")]))
    assert str(ex) == "x:float32[batch,4] y:float32[batch,3] (batch=1..16)"
    assert ex.args[0].shape == (2, 4) and ex.args[1].shape == (2, 3)  # size 1 would be specialized
    ep = torch.export.export(loaded.module, ex.args, ex.kwargs, dynamic_shapes=ex.dynamic_shapes())
    args, kwargs = ex.make({"batch": 16}, rng=0)
    torch.testing.assert_close(ep.module()(*args, **kwargs), loaded.module(*args, **kwargs))
    with pytest.raises(
        UsageError, match=r"--dim seq: no input uses a dim of that name; the dynamic dims are: \(none"
    ):
        resolve_example_inputs(loaded, [], dict([parse_dim_spec("seq=1..16")]))


def test_torchscript_with_input_specs(tmp_path: Path) -> None:
    model = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(4, 2)).eval())
    path = tmp_path / "seq.pt"
    torch.jit.save(model, str(path))
    loaded = load_model(str(path))
    ex = resolve_example_inputs(
        loaded, [parse_input_spec("input:float32[batch,4]")], dict([parse_dim_spec("batch=1..8")])
    )
    assert str(ex) == "input:float32[batch,4] (batch=1..8)"
    args, kwargs = ex.make({"batch": 8}, rng=0)
    assert loaded.module(*args, **kwargs).shape == (8, 2)
    with pytest.raises(
        UsageError, match=r"--input names 'x' that forward\(\) does not take; its parameters are: input"
    ):
        resolve_example_inputs(loaded, [parse_input_spec("x:float32[2,4]")], {})
