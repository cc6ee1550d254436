"""Dynamic batching merges text requests of different lengths by padding (models with an attention mask)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as th

pytest.importorskip("transformers")

import torch  # noqa: E402

from tests.runtimes.conftest import http, running_server  # noqa: E402
from torchport.exporters import export_model  # noqa: E402
from torchport.runtimes import Session  # noqa: E402
from torchport.runtimes.server._batching import padding_dim  # noqa: E402


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import transformers as T

    root = tmp_path_factory.mktemp("pad")
    torch.manual_seed(0)
    config = T.BertConfig(
        vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    T.BertModel(config).eval().save_pretrained(root / "src")
    export_model(str(root / "src"), root / "repo" / "bert", dims=["seq=1..32", "batch=1..16"], quiet=True)
    return root / "repo"


def test_padding_dim_of_a_text_model(repo: Path) -> None:
    sess = Session.from_package(repo / "bert")
    assert padding_dim(sess) == ("seq", ["last_hidden_state"])


def test_requests_of_different_lengths_share_a_run(repo: Path) -> None:
    rng = np.random.default_rng(0)
    lengths = [3, 7, 5, 12, 1, 9]  # all different: without padding each would run alone
    requests = []
    for n in lengths:
        ids = rng.integers(0, 96, (1, n)).astype(np.int64)
        requests.append(
            {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        )
    sess = Session.from_package(repo / "bert")
    alone = [sess.run(r) for r in requests]
    with running_server(repo, max_batch_size=16, max_queue_delay_ms=400) as srv:
        client = th.InferenceServerClient(srv.url.removeprefix("http://"), concurrency=8)
        handles = []
        for r in requests:
            inputs = []
            for name, arr in r.items():
                inp = th.InferInput(name, list(arr.shape), "INT64")
                inp.set_data_from_numpy(arr, binary_data=True)
                inputs.append(inp)
            handles.append(client.async_infer("bert", inputs))
        results = [h.get_result() for h in handles]
        metrics = http(srv, "GET", "/metrics")[2].decode()
        client.close()
    for n, got, want in zip(lengths, results, alone, strict=True):
        hidden = got.as_numpy("last_hidden_state")
        assert hidden.shape == (1, n, 32)
        np.testing.assert_allclose(hidden, want["last_hidden_state"], atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(got.as_numpy("pooler_output"), want["pooler_output"], atol=1e-5, rtol=1e-4)
    runs = float(re.search(r'^torchport_batch_size_count\{model="bert"\} (\S+)$', metrics, re.M).group(1))
    assert runs <= 2, f"{runs:g} runs for {len(lengths)} requests of different lengths"
