"""The generate loop on CUDA: the KV cache stays on the GPU (IOBinding) and the tokens equal the CPU's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        "CUDAExecutionProvider" not in ort.get_available_providers(),
        reason="needs onnxruntime-gpu and a CUDA device (CUDAExecutionProvider)",
    ),
]

from tests.lm_models import exported_lm  # noqa: E402
from torchport.runtimes import Session  # noqa: E402
from torchport.runtimes._generate import DecodeBatch  # noqa: E402

PROMPTS = [[1, 5, 9, 14, 3, 7, 20, 11], [1, 30, 4], [1, 8, 8, 60, 2]]


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_greedy_on_cuda_equals_cpu(name: str, tmp_path: Path) -> None:
    package = exported_lm(name, tmp_path, attention="standard").path  # CUDA GroupQueryAttention: fp16 only
    gpu = Session.from_package(package, providers="cuda")
    cpu = Session.from_package(package, providers="cpu")
    assert gpu.provider == "CUDAExecutionProvider" and gpu._use_iobinding
    got = gpu.generate(PROMPTS, max_new_tokens=48, ignore_eos=True)
    want = cpu.generate(PROMPTS, max_new_tokens=48, ignore_eos=True)
    assert got.tokens == want.tokens and all(len(t) == 48 for t in got.tokens)
    # the cache lives on the GPU between steps: the decode batch binds presents to CUDA memory
    assert DecodeBatch(gpu)._device == "cuda" and DecodeBatch(cpu)._device == "cpu"
    # one request joining alone gives the same tokens as in the batch
    alone = gpu.generate(PROMPTS[1], max_new_tokens=48, ignore_eos=True).tokens[0]
    assert alone == want.tokens[1]


def test_prompt_logits_on_cuda_match_cpu(tmp_path: Path) -> None:
    package = exported_lm("llama", tmp_path, attention="standard").path
    gpu = Session.from_package(package, providers="cuda")
    cpu = Session.from_package(package, providers="cpu")
    feeds = {}
    for spec in cpu.input_specs:
        if spec.name == "input_ids":
            feeds[spec.name] = np.array([PROMPTS[0]], np.int64)
        elif spec.name == "attention_mask":
            feeds[spec.name] = np.ones((1, len(PROMPTS[0])), np.int64)
        elif spec.name == "position_ids":
            feeds[spec.name] = np.arange(len(PROMPTS[0]), dtype=np.int64)[None]
        else:  # past key/values: empty at the prompt step
            shape = [1 if d == "batch" else 0 if isinstance(d, str) else d for d in spec.shape]
            feeds[spec.name] = np.zeros(shape, spec.dtype)
    a, b = gpu.run(feeds), cpu.run(feeds)
    np.testing.assert_allclose(a["logits"], b["logits"], rtol=1e-3, atol=1e-4)
