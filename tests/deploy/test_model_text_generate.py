"""The wheel's ``predict(text=...)`` on a text-to-text package: the generated text, as the generate loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from tests.seq2seq_models import exported_seq2seq  # noqa: E402
from torchport.deploy._model import Model  # noqa: E402
from torchport.runtimes import InferenceInputError, Session  # noqa: E402


def test_predict_text_returns_the_generated_text(tmp_path: Path) -> None:
    pkg = exported_seq2seq("t5", tmp_path).package.path
    model = Model.load(pkg)
    out = model.predict(text=["the quick brown fox", "hello"], max_new_tokens=6, num_beams=2)
    expected = Session.from_package(pkg).generate(
        ["the quick brown fox", "hello"], max_new_tokens=6, num_beams=2
    )
    assert out == {"text": expected.text, "tokens": expected.tokens}
    assert model.predict(text="hello", max_new_tokens=3)["text"] == [
        Session.from_package(pkg).generate("hello", max_new_tokens=3).text[0]
    ]
    with pytest.raises(InferenceInputError, match="encoder takes at most"):
        model.predict(text="the quick brown fox " * 200)
    with pytest.raises(InferenceInputError, match="missing"):
        model.predict(decoder_input_ids=np.zeros((1, 1), np.int64))


@pytest.mark.slow
def test_a_one_variant_wheel_carries_that_variant_of_both_parts(tmp_path: Path) -> None:
    import zipfile

    from torchport.deploy import build_wheel

    pkg = exported_seq2seq("bart", tmp_path, level="all", fp16=True, int8="dynamic").package
    wheel = build_wheel(pkg.path, tmp_path / "dist", name="bart", variant="int8").path
    names = set(zipfile.ZipFile(wheel).namelist())
    root = next(n for n in names if n.endswith("/torchport.json")).rsplit("/", 1)[0]
    assert {f"{root}/encoder.int8.onnx", f"{root}/model.int8.onnx"} <= names
    assert not {f"{root}/encoder.onnx", f"{root}/model.onnx", f"{root}/encoder.fp16.onnx"} & names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    model = Model.load(site / root, variant="int8")
    expected = Session.from_package(pkg.path, variant="int8").generate("hello", max_new_tokens=4).text
    assert model.predict(text="hello", max_new_tokens=4)["text"] == expected
