"""load_model: every source kind, what is found next to the model, and every LoadError."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import pytest
import torch

from torchport.exporters import LoadedModel, load_model, resolve_example_inputs
from torchport.runtimes import DimRange, LoadError

MODEL_PY = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lin = nn.Linear(4, 3)
            self.drop = nn.Dropout(0.5)

        def forward(self, x, mask=None):
            return self.drop(self.lin(x))

    class NeedsArgs(nn.Module):
        def __init__(self, width):
            super().__init__()

    def make_model():
        return Net()

    def broken_factory():
        raise ValueError("width must be positive")

    def not_a_model():
        return {"weights": 1}

    class Builders:
        @staticmethod
        def build():
            return Net()

    instance = Net()
    NUMBER = 3

    def example_inputs():
        return (torch.randn(3, 4),)

    DYNAMIC_DIMS = {"x": {0: ("batch", 1, 16)}}
    """
)


class Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.lin(x))


@pytest.fixture()
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_model.py"
    path.write_text(MODEL_PY)
    return path


# --------------------------------------------------------------------------- python file


def test_python_file_factory(model_file: Path) -> None:
    loaded = load_model(f"{model_file}:make_model")
    assert isinstance(loaded, LoadedModel) and loaded
    assert loaded.kind == "python_file"
    assert loaded.reference == f"{model_file}:make_model"
    assert type(loaded.module).__name__ == "Net"
    assert loaded.module.training is False
    assert loaded.sha256 == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert list(loaded.forward_signature.parameters) == ["x", "mask"]
    # example_inputs() and DYNAMIC_DIMS next to the factory
    ex = loaded.example_inputs
    assert ex is not None and loaded.example_source == "example_inputs()"
    assert [(s.name, s.dtype, s.shape) for s in ex.specs] == [("x", "float32", ["batch", 4])]
    assert ex.dynamic_dims == {"batch": DimRange(1, 16)}
    # eval mode: dropout is off, so two calls agree
    x = torch.randn(2, 4)
    torch.testing.assert_close(loaded.module(x), loaded.module(x))
    assert "python_file" in str(loaded) and "x:float32[batch,4]" in str(loaded)


def test_python_file_class_instance_and_dotted_attr(model_file: Path) -> None:
    by_class = load_model(f"{model_file}:Net")
    assert type(by_class.module).__name__ == "Net" and not by_class.module.training
    by_instance = load_model(f"{model_file}:instance")
    assert not by_instance.module.training
    by_dotted = load_model(f"{model_file}:Builders.build")
    assert type(by_dotted.module).__name__ == "Net"
    x = torch.randn(2, 4)
    torch.testing.assert_close(by_class.module(x), by_dotted.module(x))


def test_python_file_imports_its_siblings(tmp_path: Path) -> None:
    (tmp_path / "layers_helper.py").write_text(
        "import torch\ndef block():\n    return torch.nn.Linear(2, 2)\n"
    )
    (tmp_path / "net.py").write_text("from layers_helper import block\ndef make():\n    return block()\n")
    loaded = load_model(f"{tmp_path / 'net.py'}:make")
    assert isinstance(loaded.module, torch.nn.Linear)
    assert loaded.example_inputs is None


# --------------------------------------------------------------------------- importable module


def test_python_module_attr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "tp_pkg_for_loading"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(MODEL_PY)
    monkeypatch.syspath_prepend(str(tmp_path))
    for attr in ("make_model", "Net", "instance"):
        loaded = load_model(f"tp_pkg_for_loading.models:{attr}")
        assert loaded.kind == "python_module"
        assert type(loaded.module).__name__ == "Net" and not loaded.module.training
        assert loaded.sha256 == hashlib.sha256((pkg / "models.py").read_bytes()).hexdigest()
        assert str(loaded.example_inputs) == "x:float32[batch,4] (batch=1..16)"


def test_builtin_examples_load_with_their_inputs() -> None:
    loaded = load_model("torchport.exporters.examples.cnn:make_model")
    assert str(loaded.example_inputs) == "image:float32[batch,3,32,32] (batch=1..64)"
    loaded = load_model("torchport.exporters.examples.mlp:make_model")
    assert str(loaded.example_inputs) == "input:float32[batch,16] (batch=1..64)"


# --------------------------------------------------------------------------- TorchScript / ExportedProgram


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript(tmp_path: Path, how: str) -> None:
    model = Small().eval()
    x = torch.randn(2, 4)
    scripted = torch.jit.script(model) if how == "script" else torch.jit.trace(model, (x,))
    path = tmp_path / "model.pt"
    torch.jit.save(scripted, str(path))
    loaded = load_model(str(path))
    assert loaded.kind == "torchscript"
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not loaded.module.training
    assert list(loaded.forward_signature.parameters) == ["x"]
    assert loaded.example_inputs is None
    torch.testing.assert_close(loaded.module(x), model(x))


def test_torchscript_ts_suffix(tmp_path: Path) -> None:
    path = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(Small().eval()), str(path))
    assert load_model(str(path)).kind == "torchscript"


def test_exported_program(tmp_path: Path) -> None:
    model = Small().eval()
    batch = torch.export.Dim("batch", min=1, max=32)
    ep = torch.export.export(model, (torch.randn(3, 4),), dynamic_shapes={"x": {0: batch}})
    path = tmp_path / "model.pt2"
    torch.export.save(ep, str(path))
    loaded = load_model(str(path))
    assert loaded.kind == "exported_program"
    assert loaded.exported_program is not None
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    x = torch.randn(5, 4)
    torch.testing.assert_close(loaded.exported_program.module()(x), model(x))
    torch.testing.assert_close(loaded.module(x), model(x))
    # the saved example inputs come back, with the program's dynamic dim and its range
    ex = loaded.example_inputs
    assert ex is not None and loaded.example_source == "pt2"
    assert [(s.name, s.shape) for s in ex.specs] == [("x", ["batch", 4])]
    assert ex.dynamic_dims == {"batch": DimRange(1, 32)}
    torch.testing.assert_close(loaded.module(*ex.make({"batch": 9}, rng=0)[0]).shape, torch.Size([9, 3]))


class TwoInputs(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.sum(-1) + y.sum(-1)


def test_exported_program_unbounded_and_second_dim(tmp_path: Path) -> None:
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=100)
    ep = torch.export.export(
        TwoInputs(),
        (torch.randn(3, 5), torch.randn(3, 6)),
        dynamic_shapes={"x": {0: batch, 1: seq}, "y": {0: batch}},
    )
    path = tmp_path / "two.pt2"
    torch.export.save(ep, str(path))
    ex = load_model(str(path)).example_inputs
    assert [(s.name, s.shape) for s in ex.specs] == [("x", ["batch", "dim2"]), ("y", ["batch", 6])]
    assert ex.dynamic_dims["batch"] == DimRange(1, 64)  # unbounded -> UNBOUNDED_DIM_MAX, min 0 -> 1
    assert ex.dynamic_dims["dim2"].max == 100
    # the user can rename nothing but can narrow a range
    narrowed = resolve_example_inputs(load_model(str(path)), [], {"dim2": DimRange(2, 10)})
    assert narrowed.dynamic_dims["dim2"] == DimRange(2, 10)


# --------------------------------------------------------------------------- refused pickles


def test_pickled_whole_module_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(Small(), str(path))
    with pytest.raises(
        LoadError, match=r"pickled Python object.*weights_only=True.*refuses untrusted pickles"
    ) as info:
        load_model(str(path))
    assert "\n" not in str(info.value)


def test_state_dict_only_file_explains(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(Small().state_dict(), str(path))
    with pytest.raises(LoadError, match=r"holds only weights \(a state dict\).*file\.py:factory"):
        load_model(str(path))


def test_pickle_code_is_not_run(tmp_path: Path) -> None:
    """A .pt whose pickle would run code is refused and the code never runs."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    torch.save(Evil(), str(path))
    with pytest.raises(LoadError, match="refuses untrusted pickles"):
        load_model(str(path))
    assert not marker.exists()


# --------------------------------------------------------------------------- LoadError cases


@pytest.mark.parametrize(
    ("suffix", "pattern"),
    [
        (":make_modle", r"has no attribute 'make_modle'; did you mean make_model"),
        (":zzz_nothing_like_it", r"has no attribute 'zzz_nothing_like_it'; available: .*Net.*make_model"),
        (":Builders.bild", r"has no attribute 'Builders.bild'; did you mean build"),
        (":broken_factory", r"factory broken_factory in .* raised ValueError: width must be positive"),
        (":NeedsArgs", r"class NeedsArgs in .* raised TypeError: .*width"),
        (":not_a_model", r"factory not_a_model in .* returned a builtins\.dict, not a torch\.nn\.Module"),
        (":NUMBER", r"NUMBER in .* is a int, not an nn\.Module"),
        (":", r"nothing after ':'"),
        (":1bad", r"'1bad' is not an attribute name"),
    ],
)
def test_python_file_errors(model_file: Path, suffix: str, pattern: str) -> None:
    with pytest.raises(LoadError, match=pattern) as info:
        load_model(f"{model_file}{suffix}")
    assert "\n" not in str(info.value)


def test_factory_exception_is_chained(model_file: Path) -> None:
    with pytest.raises(LoadError) as info:
        load_model(f"{model_file}:broken_factory")
    assert isinstance(info.value.__cause__, ValueError)


def test_file_without_attr_lists_candidates(model_file: Path) -> None:
    with pytest.raises(LoadError, match=r"add :<factory or class>; candidates in .*: .*Net.*make_model"):
        load_model(str(model_file))


@pytest.mark.parametrize(
    ("source", "pattern"),
    [
        ("does/not/exist.py:make", r"model file not found: does/not/exist\.py"),
        ("nothere.pt", r"model file not found: nothere\.pt"),
        ("nothere.pt2", r"model file not found: nothere\.pt2"),
        (
            "no_such_pkg_xyz.models:make",
            r"cannot import module 'no_such_pkg_xyz.models': no module named 'no_such_pkg_xyz'",
        ),
        ("", r"empty model source"),
        (":make", r"nothing before ':'"),
        ("just_a_word", r"is not a file, folder or module:attr; use path/to/file\.py:factory"),
        ("bad-name.mod:make", r"'bad-name.mod' is not a module name"),
        (
            "torchport.exporters.examples.cnn:make_modl",
            r"module torchport.exporters.examples.cnn has no attribute 'make_modl'; did you mean make_model",
        ),
    ],
)
def test_source_errors(source: str, pattern: str) -> None:
    with pytest.raises(LoadError, match=pattern) as info:
        load_model(source)
    assert "\n" not in str(info.value)


def test_file_that_raises_on_import(tmp_path: Path) -> None:
    path = tmp_path / "bad.py"
    path.write_text("import torch\nraise RuntimeError('no GPU here')\n")
    with pytest.raises(LoadError, match=r"importing .*bad\.py failed: RuntimeError: no GPU here") as info:
        load_model(f"{path}:make")
    assert isinstance(info.value.__cause__, RuntimeError)


def test_module_that_fails_to_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tp_broken_mod.py").write_text("import torch\nx = 1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(LoadError, match=r"importing module 'tp_broken_mod' failed: ZeroDivisionError"):
        load_model("tp_broken_mod:make")


def test_example_inputs_that_raise(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(
        "import torch\ndef make():\n    return torch.nn.Linear(2, 2)\n"
        "def example_inputs():\n    raise KeyError('sample')\n"
    )
    with pytest.raises(LoadError, match=r"example_inputs\(\) in .* raised KeyError"):
        load_model(f"{path}:make")


def test_corrupt_pt2(tmp_path: Path) -> None:
    path = tmp_path / "broken.pt2"
    path.write_bytes(b"not a zip file")
    with pytest.raises(LoadError, match=r"cannot load .*broken\.pt2 as an ExportedProgram"):
        load_model(str(path))


# --------------------------------------------------------------------------- Hugging Face folders


def _save(model: torch.nn.Module, folder: Path) -> Path:
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    small = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 37}
    out = {
        "bert": _save(
            transformers.BertModel(
                transformers.BertConfig(vocab_size=99, max_position_embeddings=64, **small)
            ),
            root / "bert",
        ),
        "gpt2": _save(
            transformers.GPT2LMHeadModel(
                transformers.GPT2Config(
                    n_layer=2,
                    n_embd=32,
                    n_head=2,
                    vocab_size=99,
                    n_positions=40,
                    bos_token_id=0,
                    eos_token_id=0,
                )
            ),
            root / "gpt2",
        ),
        "vit": _save(
            transformers.ViTForImageClassification(
                transformers.ViTConfig(image_size=16, patch_size=4, **small)
            ),
            root / "vit",
        ),
        "whisper": _save(
            transformers.WhisperForConditionalGeneration(
                transformers.WhisperConfig(
                    d_model=32,
                    encoder_layers=2,
                    decoder_layers=2,
                    encoder_attention_heads=2,
                    decoder_attention_heads=2,
                    encoder_ffn_dim=32,
                    decoder_ffn_dim=32,
                    num_mel_bins=8,
                    max_source_positions=16,
                    max_target_positions=32,
                    vocab_size=100,
                    pad_token_id=0,
                    bos_token_id=1,
                    eos_token_id=2,
                    decoder_start_token_id=1,
                )
            ),
            root / "whisper",
        ),
        "wav2vec2": _save(
            transformers.Wav2Vec2Model(
                transformers.Wav2Vec2Config(
                    conv_dim=(8, 8),
                    conv_stride=(5, 2),
                    conv_kernel=(10, 3),
                    num_conv_pos_embeddings=4,
                    num_conv_pos_embedding_groups=2,
                    vocab_size=20,
                    **small,
                )
            ),
            root / "wav2vec2",
        ),
    }
    return out


def _spec_table(loaded: LoadedModel) -> list[tuple]:
    return [(s.name, s.dtype, s.shape, s.value_range) for s in loaded.example_inputs.specs]


def test_hf_bert(hf_folders: dict[str, Path]) -> None:
    loaded = load_model(str(hf_folders["bert"]))
    assert loaded.kind == "huggingface" and type(loaded.module).__name__ == "BertModel"
    assert not loaded.module.training
    assert loaded.hf_config.model_type == "bert"
    assert _spec_table(loaded) == [
        ("input_ids", "int64", ["batch", "seq"], (0, 98)),
        ("attention_mask", "int64", ["batch", "seq"], (0, 1)),  # padding (0) is a valid mask value
        ("token_type_ids", "int64", ["batch", "seq"], (0, 1)),
    ]
    ex = loaded.example_inputs
    args, _ = ex.make(rng=0)
    mask = args[ex.input_names.index("attention_mask")]
    assert bool((mask == 1).all())  # examples still attend everywhere
    assert ex.dynamic_dims == {"batch": DimRange(1, 32), "seq": DimRange(1, 64)}
    sizes = ex.example_dims()
    assert sizes["batch"] >= 2 and sizes["seq"] >= 2 and sizes["batch"] != sizes["seq"]
    out = loaded.module(*ex.args, **ex.kwargs)
    assert out.last_hidden_state.shape == (sizes["batch"], sizes["seq"], 32)


def test_hf_gpt2_picks_the_lm_head_class(hf_folders: dict[str, Path]) -> None:
    loaded = load_model(str(hf_folders["gpt2"]))
    assert type(loaded.module).__name__ == "GPT2LMHeadModel"
    # GPT-2's forward takes token_type_ids but its config has no type_vocab_size: not fed
    assert [s.name for s in loaded.example_inputs.specs] == ["input_ids", "attention_mask"]
    assert loaded.example_inputs.dynamic_dims["seq"] == DimRange(1, 40)  # n_positions
    assert loaded.module.config._attn_implementation == "sdpa"
    eager = load_model(str(hf_folders["gpt2"]), attn_implementation="eager")
    assert eager.module.config._attn_implementation == "eager"


def test_hf_vit(hf_folders: dict[str, Path]) -> None:
    loaded = load_model(str(hf_folders["vit"]))
    assert type(loaded.module).__name__ == "ViTForImageClassification"
    assert _spec_table(loaded) == [("pixel_values", "float32", ["batch", 3, 16, 16], None)]
    assert loaded.example_inputs.dynamic_dims == {"batch": DimRange(1, 32)}


def test_hf_whisper_encoder(hf_folders: dict[str, Path]) -> None:
    loaded = load_model(f"{hf_folders['whisper']}:encoder")
    assert type(loaded.module).__name__ == "WhisperEncoder" and not loaded.module.training
    assert loaded.reference.endswith(":encoder")
    # time dim fixed at 2 * max_source_positions
    assert _spec_table(loaded) == [("input_features", "float32", ["batch", 8, 32], None)]
    ex = loaded.example_inputs
    out = loaded.module(*ex.args, **ex.kwargs)
    assert out.last_hidden_state.shape == (ex.example_dims()["batch"], 16, 32)


def test_hf_whisper_full_model_gets_decoder_inputs(hf_folders: dict[str, Path]) -> None:
    loaded = load_model(str(hf_folders["whisper"]))
    assert type(loaded.module).__name__ == "WhisperForConditionalGeneration"
    assert [s.name for s in loaded.example_inputs.specs] == ["input_features", "decoder_input_ids"]
    assert loaded.example_inputs.dynamic_dims["decoder_seq"] == DimRange(1, 32)


def test_hf_wav2vec2_input_values(hf_folders: dict[str, Path]) -> None:
    loaded = load_model(str(hf_folders["wav2vec2"]))
    assert _spec_table(loaded) == [("input_values", "float32", ["batch", "samples"], None)]
    # receptive field 20 samples + hop 10 -> two frames at least
    assert loaded.example_inputs.dynamic_dims["samples"] == DimRange(30, 16000)


def test_hf_sha256_covers_weights_and_config(hf_folders: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(hf_folders["vit"], tmp_path / "vit"))
    first = load_model(str(copy)).sha256
    assert first == load_model(str(hf_folders["vit"])).sha256
    (copy / "README.md").write_text("not part of the hash")
    assert load_model(str(copy)).sha256 == first
    config = json.loads((copy / "config.json").read_text())
    config["id2label"] = {"0": "cat", "1": "dog"}
    config["label2id"] = {"cat": 0, "dog": 1}
    (copy / "config.json").write_text(json.dumps(config))
    assert load_model(str(copy)).sha256 != first


def test_hf_errors(hf_folders: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(LoadError, match=r"has no config\.json: not a Hugging Face model folder"):
        load_model(str(tmp_path))
    with pytest.raises(LoadError, match=r"is a folder, not a \.py file or a Hugging Face model folder"):
        load_model(f"{tmp_path}:make_model")
    with pytest.raises(LoadError, match=r"unknown part 'decoder'.*one of: encoder"):
        load_model(f"{hf_folders['bert']}:decoder")
    with pytest.raises(LoadError, match=r"BertModel .* has no separate encoder; drop ':encoder'"):
        load_model(f"{hf_folders['bert']}:encoder")
    no_weights = tmp_path / "cfg_only"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((hf_folders["bert"] / "config.json").read_text())
    with pytest.raises(LoadError, match=r"has a config\.json but no weights"):
        load_model(str(no_weights))
    custom = tmp_path / "custom"
    custom.mkdir()
    config = json.loads((hf_folders["bert"] / "config.json").read_text())
    config["architectures"] = ["MyCustomModel"]
    config["auto_map"] = {"AutoModel": "modeling_custom.MyCustomModel"}
    (custom / "config.json").write_text(json.dumps(config))
    (custom / "model.safetensors").write_bytes((hf_folders["bert"] / "model.safetensors").read_bytes())
    with pytest.raises(LoadError, match=r"needs custom code from the folder .* which torchport does not run"):
        load_model(str(custom))


def test_hf_input_spec_gets_vocab_value_range(hf_folders: dict[str, Path]) -> None:
    from torchport.exporters import parse_input_spec

    loaded = load_model(str(hf_folders["bert"]))
    ex = resolve_example_inputs(loaded, [parse_input_spec("input_ids:int64[batch,seq]")], {})
    assert ex.specs[0].value_range == (0, 98)
    assert ex.dynamic_dims == {"batch": DimRange(1, 32), "seq": DimRange(1, 64)}
    assert int(ex.args[0].max()) <= 98


def test_hf_float_inputs_follow_the_model_dtype(hf_folders: dict[str, Path], tmp_path: Path) -> None:
    import transformers

    model = transformers.ViTModel.from_pretrained(str(hf_folders["vit"]), dtype=torch.float16)
    model.save_pretrained(str(tmp_path / "vit16"))
    loaded = load_model(str(tmp_path / "vit16"))
    assert loaded.example_inputs.specs[0].dtype == "float16"
    assert loaded.example_inputs.args[0].dtype == torch.float16


def test_module_without_attr_lists_candidates() -> None:
    with pytest.raises(
        LoadError,
        match=r"add :<factory or class>; candidates in module torchport\.exporters\.examples\.cnn: SmallCNN, make_model",
    ):
        load_model("torchport.exporters.examples.cnn")


class _Touch:
    """Pickles to a call that creates a file: what a malicious checkpoint would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_hf_pickled_bin_is_refused_and_not_run(hf_folders: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    folder = Path(shutil.copytree(hf_folders["vit"], tmp_path / "vit_bin"))
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"evil": _Touch(marker)}, str(folder / "pytorch_model.bin"))
    with pytest.raises(
        LoadError, match=r"pickled Python objects beyond tensors; .*weights_only=True.*safetensors"
    ) as info:
        load_model(str(folder))
    assert not marker.exists()
    assert "\n" not in str(info.value)
    # a plain state dict in pytorch_model.bin loads (weights_only=True accepts tensors)
    state = load_model(str(hf_folders["vit"])).module.state_dict()
    torch.save(state, str(folder / "pytorch_model.bin"))
    loaded = load_model(str(folder))
    torch.testing.assert_close(loaded.module.state_dict()["classifier.weight"], state["classifier.weight"])


def test_pt2_with_pickled_objects_is_refused_and_not_run(tmp_path: Path) -> None:
    """torch.export.load falls back to weights_only=False for some payloads; torchport does not."""
    import io
    import zipfile

    ep = torch.export.export(Small().eval(), (torch.randn(3, 4),))
    good = tmp_path / "good.pt2"
    torch.export.save(ep, str(good))
    marker = tmp_path / "pwned"
    evil_payload = io.BytesIO()
    torch.save(((_Touch(marker),), {}), evil_payload)
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as dst:
        names = [i.filename for i in src.infolist()]
        sample = [n for n in names if "sample_inputs" in n]
        assert sample, names
        for info in src.infolist():
            data = evil_payload.getvalue() if info.filename in sample else src.read(info.filename)
            dst.writestr(info, data)
    with pytest.raises(
        LoadError, match=r"bad\.pt2 holds pickled Python objects beyond tensors; .*weights_only=True"
    ):
        load_model(str(bad))
    assert not marker.exists()
    assert torch.load is not None and load_model(str(good)).exported_program is not None


def test_hf_dim_beyond_positions_is_refused(hf_folders: dict[str, Path]) -> None:
    from torchport.exporters import parse_dim_spec
    from torchport.runtimes import UsageError

    loaded = load_model(str(hf_folders["gpt2"]))
    with pytest.raises(
        UsageError, match=r"--dim seq=1\.\.128: the model has 40 positions .*use --dim seq=1\.\.40"
    ):
        resolve_example_inputs(loaded, [], dict([parse_dim_spec("seq=1..128")]))
    ex = resolve_example_inputs(loaded, [], dict([parse_dim_spec("seq=4..40"), parse_dim_spec("batch=1..4")]))
    assert ex.dynamic_dims == {"batch": DimRange(1, 4), "seq": DimRange(4, 40)}
    assert ex.example_dims()["seq"] in DimRange(4, 40)


def test_script_that_exits_on_import(tmp_path: Path) -> None:
    path = tmp_path / "script.py"
    path.write_text("import argparse\nargparse.ArgumentParser().parse_args(['--nope'])\n")
    with pytest.raises(
        LoadError, match=r"importing .*script\.py called sys\.exit\(2\); put script code under if __name__"
    ):
        load_model(f"{path}:make")


def test_hf_folder_without_config_inputs_says_why(tmp_path: Path) -> None:
    import transformers

    from torchport.exporters import parse_dim_spec, parse_input_spec
    from torchport.runtimes import UsageError

    config = transformers.DecisionTransformerConfig(
        state_dim=3, act_dim=2, hidden_size=32, n_layer=1, n_head=2, max_ep_len=16, n_positions=32
    )
    transformers.DecisionTransformerModel(config).save_pretrained(str(tmp_path / "dt"))
    loaded = load_model(str(tmp_path / "dt"))
    assert loaded.example_inputs is None
    with pytest.raises(
        UsageError,
        match=r"no example inputs for .*dt \(the Hugging Face config gives no inputs: forward\(\) takes none of "
        r"input_ids, pixel_values, input_values, input_features\): pass --input",
    ):
        resolve_example_inputs(loaded, [], {})
    ex = resolve_example_inputs(
        loaded, [parse_input_spec("states:float32[batch,seq,3]")], dict([parse_dim_spec("seq=1..8")])
    )
    assert ex.dynamic_dims == {"batch": DimRange(1, 32), "seq": DimRange(1, 8)}  # batch: the HF default


def test_hf_roberta_seq_range_stops_before_the_padding_offset(tmp_path: Path) -> None:
    """RoBERTa's position ids start at pad_token_id + 1: the longest sequence is max_pos - pad - 1,
    and eager PyTorch must run at the top of the default range."""
    transformers = pytest.importorskip("transformers")
    config = transformers.RobertaConfig(
        vocab_size=99, max_position_embeddings=40, pad_token_id=1, num_hidden_layers=1, hidden_size=16,
        num_attention_heads=2, intermediate_size=20,
    )  # fmt: skip
    loaded = load_model(str(_save(transformers.RobertaModel(config), tmp_path / "roberta")))
    ex = loaded.example_inputs
    assert ex.dynamic_dims["seq"] == DimRange(1, 38)
    args, kwargs = ex.make({"batch": 1, "seq": 38}, rng=0)
    assert loaded.module(*args, **kwargs).last_hidden_state.shape == (1, 38, 16)
