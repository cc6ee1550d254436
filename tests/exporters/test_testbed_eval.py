"""The trained test bed and the task-metric gate: real training (test sizes, cached per machine), real
export, real ONNX Runtime variants; ``optimize --eval`` refuses a variant that loses accuracy."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from torchport.exporters import export_model, optimize_package
from torchport.exporters.examples.testbed import TrainedModel, build_digits, build_lm
from torchport.runtimes import (
    OptimizationError,
    Tolerance,
    UsageError,
    evaluate_package,
    gate,
    inspect_package,
)
from torchport.runtimes._eval import DEFAULT_MAX_ACCURACY_DROP, DEFAULT_MAX_PERPLEXITY_RISE


@pytest.fixture(scope="session")
def digits() -> TrainedModel:
    return build_digits("test")


@pytest.fixture(scope="session")
def lm() -> TrainedModel:
    return build_lm("test")


@pytest.fixture(scope="session")
def digits_package(digits: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "pkg"
    export_model(digits.source, out, quiet=True)
    return out


@pytest.fixture(scope="session")
def lm_package(lm: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lm") / "pkg"
    export_model(lm.source, out, quiet=True)
    return out


def _copy(src: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "pkg"
    shutil.copytree(src, dest)
    return dest


def test_testbed_is_cached_and_rebuilt_when_the_recipe_changes(tmp_path: Path) -> None:
    first = build_digits("test", cache_dir=tmp_path, epochs=1)
    again = build_digits("test", cache_dir=tmp_path, epochs=1)
    assert not first.cached and again.cached and again.root == first.root
    changed = build_digits("test", cache_dir=tmp_path, epochs=2)
    assert not changed.cached and changed.root != first.root
    # deterministic: the same recipe trained elsewhere gives the same weights
    other = build_digits("test", cache_dir=tmp_path / "elsewhere", epochs=1)
    assert (other.path / "weights.pt").read_bytes() == (first.path / "weights.pt").read_bytes()
    assert other.metrics["accuracy"] == first.metrics["accuracy"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporaries left
    with pytest.raises(ValueError, match="unknown recipe entries"):
        build_digits("test", cache_dir=tmp_path, epoch=1)


def test_trained_models_learn(digits: TrainedModel, lm: TrainedModel) -> None:
    assert digits.metrics["accuracy"] > 0.9
    assert set(np.load(digits.eval_data).files) == {"image", "labels"}
    assert lm.metrics["perplexity"] < lm.recipe["vocab"] / 2  # far better than uniform over the vocabulary
    assert (lm.path / "tokenizer.json").is_file() and (lm.path / "tokenizer_config.json").is_file()
    assert lm.eval_data.read_text(encoding="utf-8").strip()
    assert len(lm.prompts) == 16 and len(set(lm.prompts)) == 16  # held-out, no two alike
    assert (lm.root / "prompts.txt").read_text(encoding="utf-8").splitlines() == list(lm.prompts)


def test_int8_keeps_digits_accuracy_inside_the_default_gate(
    digits: TrainedModel, digits_package: Path, tmp_path: Path
) -> None:
    pkg = _copy(digits_package, tmp_path)
    result = optimize_package(pkg, int8="dynamic", fp16=True, eval_data=digits.eval_data)
    assert result
    record = result.package.manifest.extra["eval"]
    fp32, int8 = record["variants"]["fp32"], record["variants"]["int8"]
    assert (fp32["accuracy"] - int8["accuracy"]) * 100 <= DEFAULT_MAX_ACCURACY_DROP
    assert int8["agreement"] >= 0.98 and record["variants"]["fp16"]["agreement"] >= 0.99
    assert abs(fp32["accuracy"] - digits.metrics["accuracy"]) < 0.01  # ONNX fp32 = eager on held-out data
    assert '"eval"' in (pkg / "parity.json").read_text()
    assert "Eval on eval.npz" in str(inspect_package(pkg)) and "int8" in str(inspect_package(pkg))
    shown = evaluate_package(pkg, digits.eval_data)
    assert "int8" in str(shown) and "top-1 agreement vs fp32" in str(shown)


def test_a_broken_variant_is_refused_by_optimize_eval(
    digits: TrainedModel, digits_package: Path, tmp_path: Path
) -> None:
    pkg = _copy(digits_package, tmp_path)
    before = {p.name: p.read_bytes() for p in pkg.iterdir()}
    # static int8 calibrated on inputs scaled down 50x: real inputs saturate, accuracy collapses; the
    # parity tolerance is opened so that only the task metric stands between it and the package
    calib = tmp_path / "calib.npz"
    np.savez(calib, image=np.load(digits.eval_data)["image"][:64] * 0.02)
    loose = {"int8": Tolerance(min_cosine=0.0, min_top1=0.0)}
    with pytest.raises(
        OptimizationError, match=r"variant int8 refused by --eval: accuracy .* points below fp32"
    ):
        optimize_package(pkg, int8="static", calibration=calib, tolerances=loose, eval_data=digits.eval_data)
    assert {p.name: p.read_bytes() for p in pkg.iterdir()} == before  # nothing written
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "torchport.cli",
            "optimize",
            str(pkg),
            "--int8",
            "static",
            "--calibration",
            str(calib),
            "--eval",
            str(digits.eval_data),
            "--max-accuracy-drop",
            "1",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert cli.returncode == 1
    assert cli.stderr.startswith("error: variant int8 refused by --eval: accuracy"), cli.stderr
    assert "Traceback" not in cli.stderr
    assert {p.name: p.read_bytes() for p in pkg.iterdir()} == before


def test_bad_eval_data_is_one_line(digits_package: Path, lm_package: Path, tmp_path: Path) -> None:
    image = np.zeros((4, 1, 8, 8), np.float32)
    cases = {
        "nolabels.npz": (
            {"image": image},
            r"has no `labels` array .* pass an .npz with the model's inputs \(image\)",
        ),
        "shape.npz": (
            {"image": np.zeros((4, 8, 8), np.float32), "labels": np.zeros(4, np.int64)},
            r"input `image` has shape \[4, 8, 8\]; the model takes float32\[batch,1,8,8\]",
        ),
        "rows.npz": ({"image": image, "labels": np.zeros(3, np.int64)}, r"4 rows and `labels` 3"),
        "missing.npz": ({"x": image, "labels": np.zeros(4, np.int64)}, r"lacks the model's input `image`"),
    }
    for name, (arrays, match) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(UsageError, match=match):
            evaluate_package(digits_package, tmp_path / name)
    np.savez(tmp_path / "ok.npz", image=image, labels=np.zeros(4, np.int64))
    with pytest.raises(UsageError, match=r"over the 0 MiB memory budget; pass a smaller held-out set"):
        evaluate_package(digits_package, tmp_path / "ok.npz", max_bytes=100)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(UsageError, match=r"is not UTF-8 \(byte 0xe9 at offset 3\); pass a UTF-8 text file"):
        evaluate_package(lm_package, bad)
    with pytest.raises(
        UsageError, match="is an .npz; .* is a text-generation package: pass a UTF-8 text file"
    ):
        evaluate_package(lm_package, tmp_path / "ok.npz")
    with pytest.raises(UsageError, match="is not an .npz; .* pass an .npz of its inputs"):
        evaluate_package(digits_package, bad)
    good_text = tmp_path / "ok.txt"
    good_text.write_text("def f(x):\n    return x + 1\n", encoding="utf-8")
    with pytest.raises(UsageError, match="eval prompts .* does not exist; pass a UTF-8 text file with one"):
        evaluate_package(lm_package, good_text, prompts=tmp_path / "none.txt")
    before = {p.name: p.read_bytes() for p in digits_package.iterdir()}
    with pytest.raises(
        UsageError, match=r"over the 0 MiB memory budget; pass a smaller held-out set or raise"
    ):
        optimize_package(digits_package, int8="dynamic", eval_data=tmp_path / "ok.npz", eval_budget=100)
    assert {p.name: p.read_bytes() for p in digits_package.iterdir()} == before
    for command in ("validate", "optimize"):
        cli = subprocess.run(
            [sys.executable, "-m", "torchport.cli", command, str(digits_package), "--eval",
             str(tmp_path / "ok.npz"), "--eval-budget", "0.0001"],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        assert cli.returncode == 1, cli.stderr
        assert cli.stderr.splitlines() == [
            "error: eval data ok.npz holds 0 MiB, over the 0 MiB memory budget; pass a smaller held-out set "
            "or raise the budget (--eval-budget MiB; the API's max_bytes=)"
        ]
    assert {p.name: p.read_bytes() for p in digits_package.iterdir()} == before
    with pytest.raises(UsageError, match="has no `labels` array"):
        optimize_package(digits_package, int8="dynamic", eval_data=tmp_path / "nolabels.npz")
    assert {p.name: p.read_bytes() for p in digits_package.iterdir()} == before


def test_int8_keeps_lm_perplexity_and_greedy_tokens(
    lm: TrainedModel, lm_package: Path, tmp_path: Path
) -> None:
    pkg = _copy(lm_package, tmp_path)
    result = optimize_package(pkg, int8="dynamic", eval_data=lm.eval_data, eval_tokens=16)
    assert result
    v = result.package.manifest.extra["eval"]["variants"]
    assert v["int8"]["perplexity"] / v["fp32"]["perplexity"] - 1 <= DEFAULT_MAX_PERPLEXITY_RISE
    assert v["int8"]["agreement"] >= 0.75
    # a tighter limit than the drift int8 shows is refused, naming perplexity
    res = evaluate_package(result.package, lm.eval_data, tokens=4)
    rise = res.variants["int8"].perplexity / res.variants["fp32"].perplexity - 1
    refused = gate(res, max_perplexity_rise=rise - 0.01).refused
    assert "perplexity" in refused["int8"] and "above fp32's" in refused["int8"]


def test_a_weight_scaled_lm_variant_is_refused_naming_perplexity(
    lm: TrainedModel, lm_package: Path, tmp_path: Path
) -> None:
    import onnx
    from onnx import numpy_helper

    from torchport.exporters._onnx_files import save_onnx
    from torchport.exporters._onnx_passes import output_head
    from torchport.runtimes import ModelPackage
    from torchport.runtimes._eval import evaluate_folder
    from torchport.runtimes._manifest import Variant

    folder = _copy(lm_package, tmp_path)
    pkg = ModelPackage.load(folder)
    proto = onnx.load(str(folder / "model.onnx"))
    head = next(n for n in proto.graph.node if n.name == output_head(proto, "logits"))
    weights = {i.name: i for i in proto.graph.initializer}
    w = next(weights[name] for name in head.input if name in weights)
    # the head's weights scaled down 5x: the same argmax (greedy tokens agree), far flatter probabilities
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 0.2, w.name))
    data = save_onnx(proto, folder / "model.broken.onnx")
    broken = Variant(file="model.broken.onnx", precision="int8", data_files=data)
    manifest = pkg.manifest.replace(variants={**pkg.manifest.variants, "int8": broken})
    result = gate(evaluate_folder(folder, manifest, lm.eval_data, tokens=8))
    assert result.variants["int8"].agreement == 1.0  # greedy agreement alone would not see it
    assert not result and list(result.refused) == ["int8"]
    assert re.fullmatch(
        r"perplexity [\d.]+ is [\d.]+% above fp32's [\d.]+ \(--max-perplexity-rise 5%\)",
        result.refused["int8"],
    ), result.refused["int8"]
    assert "refused int8: perplexity" in str(result)


def test_lm_greedy_agreement_runs_on_distinct_held_out_prompts(
    lm: TrainedModel, lm_package: Path, tmp_path: Path
) -> None:
    text = lm.eval_data.read_text(encoding="utf-8")
    own = evaluate_package(lm_package, lm.eval_data, tokens=4)  # default: 16 distinct lines of the text
    assert own.prompts == 16 and own.to_dict()["prompts"] == 16
    assert "greedy agreement vs fp32 (4 tokens x 16 prompts)" in str(own)
    held = evaluate_package(lm_package, lm.eval_data, tokens=4, prompts=lm.root / "prompts.txt")
    assert held.prompts == len(lm.prompts) == 16
    twice = tmp_path / "twice.txt"
    line = next(ln.strip() for ln in text.splitlines() if len(ln.strip()) > 30)
    twice.write_text(f"{line}\n\n{line}\n  {line}  \n", encoding="utf-8")
    assert evaluate_package(lm_package, lm.eval_data, tokens=4, prompts=twice).prompts == 1
    assert evaluate_package(lm_package, lm.eval_data, tokens=4, prompts=[line, line, "x = 1"]).prompts == 2
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(UsageError, match="eval text empty.txt is empty"):
        evaluate_package(lm_package, lm.eval_data, prompts=tmp_path / "empty.txt")


def test_validate_eval_reports_and_records_the_metrics(
    digits: TrainedModel, digits_package: Path, tmp_path: Path
) -> None:
    pkg = _copy(digits_package, tmp_path)
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "torchport.cli",
            "validate",
            str(pkg),
            "--n",
            "4",
            "--eval",
            str(digits.eval_data),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    assert "Eval on eval.npz (classification, 359 samples)" in cli.stdout
    assert '"accuracy"' in (pkg / "parity.json").read_text()
