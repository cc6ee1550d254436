"""The README's command blocks that need no server run as written (export, optimize, validate,
in-process bench), in a folder holding the models they name (tiny ones, built here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
#: commands that need a server, a container tool, a cluster or the set-up scripts are left out
_NEEDS_MORE = re.compile(r"\b(serve|curl|podman|kubectl|deploy|package|scripts/)\b|https?://|grpc://")

NET_PY = """
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=4)
        self.bn = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4, 5)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def make_model():
    torch.manual_seed(0)
    return Net().eval()
"""


def readme_commands() -> list[str]:
    """Every command line of the README's ``bash`` blocks that needs no server (continuations joined)."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if (
                line
                and not line.startswith("#")
                and line.startswith("torchport ")
                and not _NEEDS_MORE.search(line)
            ):
                commands.append(line)
    return commands


def _hf_models(folder: Path) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    small = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 37}
    transformers.BertModel(
        transformers.BertConfig(vocab_size=99, max_position_embeddings=128, **small)
    ).save_pretrained(folder / "bert-tiny")
    transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=99, n_positions=64)
    ).save_pretrained(folder / "gpt2-tiny")
    transformers.LlamaForCausalLM(
        transformers.LlamaConfig(vocab_size=99, max_position_embeddings=64, num_key_value_heads=2, **small)
    ).save_pretrained(folder / "llama-tiny")
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
    ).save_pretrained(folder / "whisper-tiny")


def test_the_readme_has_commands_to_run():
    commands = readme_commands()
    assert any(c.startswith("torchport export") for c in commands)
    assert any(c.startswith("torchport optimize") for c in commands)
    assert any(c.startswith("torchport validate") for c in commands)


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path):
    pytest.importorskip("transformers")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "net.py").write_text(NET_PY)
    _hf_models(tmp_path)
    np.savez(
        tmp_path / "calib.npz",
        image=np.random.default_rng(0).standard_normal((8, 1, 3, 32, 32)).astype(np.float32),
    )
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    # the CNN package block 4 optimizes comes from the deploy section's first command
    commands = sorted(
        readme_commands(),
        key=lambda c: ("out/cnn" in c and "export" not in c, c.startswith("torchport validate")),
    )
    for command in commands:
        proc = subprocess.run(
            command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
