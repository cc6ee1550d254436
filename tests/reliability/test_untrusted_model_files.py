"""Model files crafted to run code when read are refused, and the code never runs.

Each crafted file carries a real payload: unpickling it (or evaluating the expression) creates a
marker file. Every test asserts the marker is never created and the error names the entry.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import pickle
import re
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._export.serde.schema import SCHEMA_VERSION
from typer.testing import CliRunner

from torchport.cli import app
from torchport.exporters import load_model
from torchport.exporters._untrusted import untrusted_pt2_load
from torchport.runtimes import LoadError


class _Payload:
    """Unpickling this opens (creates) ``marker`` for writing: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (builtins.open, (str(self.marker), "w"))


class _Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


@pytest.fixture(scope="module")
def good_pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    batch = torch.export.Dim("batch", min=1, max=8)
    ep = torch.export.export(_Small().eval(), (torch.randn(2, 4),), dynamic_shapes={"x": {0: batch}})
    path = tmp_path_factory.mktemp("pt2") / "good.pt2"
    torch.export.save(ep, str(path))
    return path


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy the archive ``src`` to ``dst``; ``edit(inner_name, data, add)`` returns the new data."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        prefix = zin.namelist()[0].split("/", 1)[0] + "/"
        added: dict[str, bytes] = {}
        for info in zin.infolist():
            inner = info.filename[len(prefix) :]
            zout.writestr(info.filename, edit(inner, zin.read(info.filename), added))
        for inner, data in added.items():
            zout.writestr(prefix + inner, data)
    return dst


def _with_constant(src: Path, dst: Path, path_name: str, payload: bytes) -> Path:
    """An archive with one extra constant ``evil`` stored as ``data/constants/<path_name>``, pickled."""

    def edit(inner: str, data: bytes, added: dict[str, bytes]) -> bytes:
        if inner == "data/constants/model_constants_config.json":
            meta = {"path_name": path_name, "is_param": False, "use_pickle": True, "tensor_meta": None}
            added[f"data/constants/{path_name}"] = payload
            return json.dumps({"config": {"evil": meta}}).encode()
        return data

    return _rewrite(src, dst, edit)


def _torch_saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _crafted(kind: str, good: Path, folder: Path, marker: Path) -> tuple[Path, str]:
    """A crafted archive of ``kind`` and the entry the error must name."""
    if kind == "opaque_obj":
        path = _with_constant(good, folder / "opaque.pt2", "opaque_obj_0", pickle.dumps(_Payload(marker)))
        return path, r"entry good/data/constants/opaque_obj_0 is a pickled Python object"
    if kind == "use_pickle":
        path = _with_constant(
            good, folder / "usepickle.pt2", "tensor_constant_0", _torch_saved(_Payload(marker))
        )
        return (
            path,
            r"entry good/data/constants/tensor_constant_0 \('evil' in model_constants_config\.json\) is marked use_pickle",
        )
    if kind == "sympy":

        def edit(inner: str, data: bytes, added: dict[str, bytes]) -> bytes:
            if inner == "models/model.json":
                text = data.decode()
                start = text.index('"expr_str": "') + len('"expr_str": "')
                end = text.index('"', start)
                expr = f"open({str(marker)!r}, 'w') and {text[start:end]}"
                return (text[:start] + expr.replace("'", "\\u0027") + text[end:]).encode()
            return data

        return _rewrite(good, folder / "sympy.pt2", edit), (
            r"entry good/models/model\.json has a shape expression torch would evaluate as Python "
            r"\(call of 'open' is not an allowed sympy function\)"
        )
    if kind == "legacy-sympy":  # the pre-2.6 layout torch.export.load falls back to
        with zipfile.ZipFile(good) as z:
            program = z.read("good/models/model.json").decode()
        start = program.index('"expr_str": "') + len('"expr_str": "')
        end = program.index('"', start)
        expr = f"open({str(marker)!r}, 'w') and {program[start:end]}".replace("'", "\\u0027")
        ep = torch.export.load(str(good))
        path = folder / "legacy.pt2"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("version", ".".join(map(str, SCHEMA_VERSION)))
            z.writestr("serialized_exported_program.json", program[:start] + expr + program[end:])
            z.writestr("serialized_state_dict.pt", _torch_saved(dict(ep.state_dict)))
            z.writestr("serialized_constants.pt", _torch_saved({}))
            z.writestr("serialized_example_inputs.pt", _torch_saved(ep.example_inputs))
        return path, (
            r"entry serialized_exported_program\.json has a shape expression torch would evaluate as Python "
            r"\(call of 'open' is not an allowed sympy function\)"
        )
    if kind == "defaultdict":
        # a module with import-time effects stands for any importable module (torch imports it by name)
        module = f"torchport_marker_{uuid.uuid4().hex[:8]}"
        (folder / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').close()\nfactory = list\n")
        context = {"default_factory_module": module, "default_factory_name": "factory", "dict_context": ["a"]}
        leaf = {"type": None, "context": None, "children_spec": []}
        spec = json.dumps(
            [1, {"type": "collections.defaultdict", "context": context, "children_spec": [leaf]}]
        )

        def edit(inner: str, data: bytes, added: dict[str, bytes]) -> bytes:
            if inner == "models/model.json":
                program = json.loads(data)
                program["graph_module"]["module_call_graph"][0]["signature"]["out_spec"] = spec
                return json.dumps(program).encode()
            return data

        return _rewrite(good, folder / "defaultdict.pt2", edit), (
            rf"entry good/models/model\.json holds a defaultdict factory {module}\.factory torch would import"
        )
    raise AssertionError(kind)


KINDS = ["opaque_obj", "use_pickle", "sympy", "legacy-sympy", "defaultdict"]


@pytest.fixture(autouse=True)
def _importable_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Modules written to tmp_path are importable (the defaultdict payload's module lives there)."""
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize("kind", KINDS)
def test_crafted_pt2_is_refused_and_its_payload_never_runs(kind: str, good_pt2: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    crafted, entry = _crafted(kind, good_pt2, tmp_path, marker)
    with pytest.raises(LoadError, match=rf"^refusing {crafted}: {entry}.*does not run code from model files"):
        load_model(str(crafted))
    assert not marker.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_cli_export_of_crafted_pt2_is_one_line_exit_1(kind: str, good_pt2: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    crafted, entry = _crafted(kind, good_pt2, tmp_path, marker)
    out = tmp_path / "pkg"
    result = CliRunner().invoke(app, ["export", str(crafted), "-o", str(out), "-q"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing"), result.stderr
    assert re.search(entry, lines[0]), lines[0]
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_plain_torch_runs_the_payload_and_the_load_wall_alone_blocks_it(
    kind: str, good_pt2: Path, tmp_path: Path
) -> None:
    """untrusted_pt2_load by itself (no archive check) blocks what plain torch.export.load runs."""
    marker = tmp_path / "pwned"
    crafted, _ = _crafted(kind, good_pt2, tmp_path, marker)
    original_load = torch.load
    with pytest.raises(Exception, match=r"refused|[Ww]eights only load failed"), untrusted_pt2_load():
        torch.export.load(str(crafted))
    assert not marker.exists()
    assert torch.load is original_load  # everything swapped is put back
    with contextlib.suppress(Exception):  # the threat is real: some loads fail only after the payload ran
        torch.export.load(str(crafted))
    assert marker.exists()


def test_aoti_entry_is_refused(good_pt2: Path, tmp_path: Path) -> None:
    def edit(inner: str, data: bytes, added: dict[str, bytes]) -> bytes:
        added["data/aotinductor/model/model.so"] = b"\x7fELF not really"
        return data

    crafted = _rewrite(good_pt2, tmp_path / "aoti.pt2", edit)
    with pytest.raises(
        LoadError, match=r"entry good/data/aotinductor/model/model\.so is compiled AOTInductor code"
    ):
        load_model(str(crafted))


def test_normal_pt2_still_exports(good_pt2: Path, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    result = CliRunner().invoke(app, ["export", str(good_pt2), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "torchport.json").read_text())
    assert manifest["source"]["kind"] == "exported_program"
    assert manifest["dynamic_dims"]["batch"] == {"min": 1, "max": 8}


# --------------------------------------------------------------------------- every other path that could unpickle


def _hf_folder_with_pickled_bin(folder: Path, marker: Path) -> str:
    import transformers

    config = transformers.BertConfig(
        vocab_size=32,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
        max_position_embeddings=16,
        architectures=["BertModel"],
    )
    config.save_pretrained(folder)
    torch.save({"embeddings.word_embeddings.weight": _Payload(marker)}, folder / "pytorch_model.bin")
    return str(folder)


def _torchscript_with_pickled_data(folder: Path, marker: Path) -> str:
    good, bad = folder / "good.pt", folder / "scripted.pt"
    torch.jit.save(torch.jit.trace(_Small().eval(), torch.randn(2, 4)), str(good))
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            zout.writestr(
                info,
                pickle.dumps(_Payload(marker), protocol=2) if info.filename.endswith("/data.pkl") else data,
            )
    return str(bad)


def _whole_module_pickle(folder: Path, marker: Path) -> str:
    torch.save(_Payload(marker), folder / "model.pt")
    return str(folder / "model.pt")


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (
            _hf_folder_with_pickled_bin,
            r"hf has weights that are pickled Python objects beyond tensors; .*weights_only=True",
        ),
        (
            _torchscript_with_pickled_data,
            r"scripted\.pt is a pickled Python object .*refuses untrusted pickles",
        ),
        (_whole_module_pickle, r"model\.pt is a pickled Python object .*refuses untrusted pickles"),
    ],
    ids=["hf-pytorch_model.bin", "torchscript-data.pkl", "torch.save-whole-model"],
)
def test_model_sources_that_would_unpickle_are_refused(build, error: str, tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    marker = tmp_path / "pwned"
    source = build(folder, marker)
    with pytest.raises(LoadError, match=error):
        load_model(source)
    assert not marker.exists()


def test_torchscript_extra_files_are_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "extra.pt"
    torch.jit.save(
        torch.jit.trace(_Small().eval(), torch.randn(2, 4)),
        str(path),
        _extra_files={"evil.pkl": pickle.dumps(_Payload(marker))},
    )
    assert load_model(str(path)).kind == "torchscript"
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_sample_files_that_would_unpickle_are_refused(suffix: str, tmp_path: Path) -> None:
    from torchport.exporters._user_examples import load_sample_file
    from torchport.runtimes import UsageError
    from torchport.runtimes._samples import load_samples

    marker = tmp_path / "pwned"
    path = tmp_path / f"samples{suffix}"
    if suffix == ".pt":
        torch.save({"x": _Payload(marker)}, path)
        error = r"cannot read sample file .*samples\.pt with weights_only=True \(UnpicklingError\)"
    else:
        np.savez(path, x=np.array([_Payload(marker)], dtype=object))
        error = r"cannot read sample file .*samples\.npz: ValueError: Object arrays cannot be loaded"
    with pytest.raises(UsageError, match=error):
        load_sample_file(str(path), signature=None)
    if suffix == ".npz":  # --calibration and --samples files
        with pytest.raises(UsageError, match=r"cannot read samples from .*Object arrays cannot be loaded"):
            load_samples(path, ["x"], {"x": 1})
    assert not marker.exists()
