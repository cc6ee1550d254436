"""Text models carry their tokenizer and record pre/post-processing in the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from tests.lm_models import tiny_bert, train_tokenizer  # noqa: E402
from torchport.exporters import export_model  # noqa: E402
from torchport.runtimes import ModelPackage, TextCodec  # noqa: E402


def test_classifier_records_labels_and_carries_the_tokenizer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = tmp_path / "clf"
    tiny_bert(
        "BertForSequenceClassification", num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"}
    ).save_pretrained(src)
    train_tokenizer(src)
    pkg = ModelPackage.load(export_model(str(src), tmp_path / "pkg", quiet=True, dims=["seq=1..32"]).path)
    text = pkg.manifest.extra["text"]
    assert text["task"] == "text-classification"
    assert text["id2label"] == {"0": "neg", "1": "neu", "2": "pos"}
    assert pkg.manifest.files["tokenizer.json"].sha256 and "tokenizer_config.json" in pkg.manifest.files
    codec = TextCodec.from_package(pkg)
    assert codec is not None and codec.decode(codec.encode("hello world")) == "hello world"
    # tampering with the tokenizer is refused like any file
    with open(pkg.path / "tokenizer.json", "a") as f:
        f.write(" ")
    from torchport.runtimes import PackageError

    with pytest.raises(PackageError, match=r"file 'tokenizer.json' .*(sha256|bytes)"):
        ModelPackage.load(pkg.path)


def test_embeddings_record_pooling_from_sentence_transformers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = tmp_path / "emb"
    tiny_bert("BertModel").save_pretrained(src)
    train_tokenizer(src)
    (src / "1_Pooling").mkdir()
    (src / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (src / "modules.json").write_text(
        json.dumps(
            [
                {"type": "sentence_transformers.models.Pooling"},
                {"type": "sentence_transformers.models.Normalize"},
            ]
        )
    )
    text = export_model(str(src), tmp_path / "pkg", quiet=True, dims=["seq=1..32"]).manifest.extra["text"]
    assert (text["task"], text["pooling"], text["normalize"]) == ("feature-extraction", "cls", True)


def test_no_tokenizer_no_text_section(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = tmp_path / "bare"
    tiny_bert("BertModel").save_pretrained(src)
    manifest = export_model(str(src), tmp_path / "pkg", quiet=True, dims=["seq=1..32"]).manifest
    assert "text" not in manifest.extra and "tokenizer.json" not in manifest.files
