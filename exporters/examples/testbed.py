"""Trained models built on this machine, no hub: the test bed of quality figures (accuracy, perplexity).

Three models, each in a ``"test"`` size (seconds to train, for the tests) and a ``"bench"`` size (minutes,
for the benchmarks), trained from data that ships with the software already installed:

- ``digits``: a small CNN trained on scikit-learn's bundled digits (8x8 images, 10 classes), held-out
  accuracy; the model is a Python file + weights (``source`` is ``FOLDER/model.py:make_model``);
- ``lm``: a Llama-style causal LM trained on the Python standard library's sources (the interpreter's
  ``Lib/``), with a byte-level BPE tokenizer trained by ``tokenizers`` on the same text, saved as a Hugging
  Face folder (``save_pretrained`` + ``tokenizer.json``); held-out perplexity;
- ``bert``: a BERT sequence classifier trained to tell which standard-library package a source line comes
  from; a Hugging Face folder with its tokenizer; held-out accuracy.

Each build is deterministic (fixed seeds; the test sizes train on one thread) and cached per machine in
``$TORCHPORT_CACHE/testbed`` (default ``~/.cache/torchport/testbed``), one folder per
``<name>-<size>-<recipe hash>``, written atomically (a temporary sibling, then a rename; the sibling of a
build that was killed is removed by the next build in the same cache). The hash covers
the recipe (hyperparameters, :data:`RECIPE_VERSION`, the Python version whose ``Lib/`` is the text), so a
changed recipe builds a new folder and an unchanged one is reused.

Each build returns a :class:`TrainedModel`: ``source`` is what ``torchport export`` takes, ``eval_data``
the held-out set in the format ``torchport validate --eval`` takes (an ``.npz`` of inputs with a ``labels``
array, or a UTF-8 ``.txt`` for the LM), ``prompts`` held-out prompts (LM), ``metrics`` the training figures.

Example (``python -m torchport.exporters.examples.testbed lm --size test`` builds from the command line)::

    from torchport.exporters.examples.testbed import build_lm
    lm = build_lm("test")
    # torchport export {lm.source} -o out/lm; torchport validate out/lm --eval {lm.eval_data}
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchport.runtimes._scratch import make_scratch

__all__ = [
    "RECIPE_VERSION",
    "RECIPES",
    "TrainedModel",
    "build",
    "build_bert",
    "build_digits",
    "build_lm",
    "cache_root",
]

#: bump when the training code changes in a way that changes the weights: every cached model rebuilds
RECIPE_VERSION = 2

#: default recipes, per model and size; ``build_*(size, **overrides)`` changes single entries
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "digits": {
        "test": {"channels": 16, "hidden": 64, "epochs": 30, "batch": 64, "lr": 3e-3, "threads": 1},
        "bench": {"channels": 32, "hidden": 128, "epochs": 80, "batch": 32, "lr": 2e-3, "threads": 1},
    },
    "lm": {
        "test": {
            "vocab": 2048,
            "hidden": 128,
            "intermediate": 352,
            "layers": 2,
            "heads": 4,
            "kv_heads": 2,
            "seq": 64,
            "batch": 16,
            "steps": 200,
            "lr": 3e-3,
            "beta2": 0.999,
            "train_chars": 1_500_000,
            "eval_chars": 6_000,
            "threads": 1,
        },
        # the shape of benchmarks/generate.py's 56M model
        "bench": {
            "vocab": 32000,
            "hidden": 512,
            "intermediate": 1376,
            "layers": 8,
            "heads": 8,
            "kv_heads": 8,
            "seq": 128,
            "batch": 8,
            # 1024 tokens a step: ~1.8 s on 2 idle cores, 8-30 s on a machine loaded by other work (bf16
            # autocast measured no faster on this avx512_bf16 CPU; longer recipes did not finish under load)
            "steps": 120,
            "lr": 1.5e-3,
            "beta2": 0.999,
            "train_chars": 4_000_000,
            "eval_chars": 30_000,
            "threads": 2,
        },
    },
    "bert": {
        "test": {
            "vocab": 2000,
            "hidden": 64,
            "intermediate": 128,
            "layers": 2,
            "heads": 2,
            "seq": 32,
            "batch": 32,
            "epochs": 6,
            "lr": 2e-3,
            "per_class_train": 500,
            "per_class_eval": 100,
            "threads": 1,
        },
        "bench": {
            "vocab": 4000,
            "hidden": 128,
            "intermediate": 512,
            "layers": 3,
            "heads": 4,
            "seq": 40,
            "batch": 32,
            "epochs": 4,
            "lr": 1e-3,
            "per_class_train": 1500,
            "per_class_eval": 300,
            "threads": 2,
        },
    },
}

#: the standard-library packages whose lines the ``bert`` classifier tells apart (its labels)
BERT_CLASSES = ("asyncio", "email", "unittest", "xml")

#: held-out prompts per LM (the start of held-out lines, no two alike)
N_PROMPTS = 16

_META = "testbed.json"


@dataclass(frozen=True)
class TrainedModel:
    """A trained test-bed model on disk.

    Attributes:
        name: ``digits``, ``lm`` or ``bert``.
        size: ``test`` or ``bench``.
        root: the cache folder of this build (``<name>-<size>-<hash>``).
        path: the model itself: a Hugging Face folder (``lm``, ``bert``) or a folder with ``model.py``
            and ``weights.pt`` (``digits``).
        source: what ``torchport export`` takes (``path`` for Hugging Face folders,
            ``path/model.py:make_model`` for ``digits``).
        eval_data: the held-out set: ``eval.npz`` (inputs named like the model's + ``labels``) or
            ``eval.txt`` (UTF-8 text, LM).
        prompts: held-out prompts (LM; empty otherwise).
        metrics: training figures: ``train_seconds``, ``params``, ``final_loss`` and the held-out
            ``accuracy`` (classifiers) or ``perplexity`` (LM) of the eager model.
        recipe: the recipe it was built from.
        cached: True when this call reused an earlier build.
    """

    name: str
    size: str
    root: Path
    path: Path
    source: str
    eval_data: Path
    prompts: tuple[str, ...]
    metrics: dict[str, float]
    recipe: dict[str, Any]
    cached: bool = field(default=False, compare=False)


def cache_root() -> Path:
    """Where builds are cached: ``$TORCHPORT_CACHE/testbed``, else ``~/.cache/torchport/testbed``."""
    base = os.environ.get("TORCHPORT_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "torchport"
    return root / "testbed"


def _recipe(name: str, size: str, overrides: dict[str, Any]) -> dict[str, Any]:
    if name not in RECIPES:
        raise ValueError(f"unknown test-bed model {name!r}; pass one of {sorted(RECIPES)}")
    if size not in RECIPES[name]:
        raise ValueError(f"unknown size {size!r} for {name}; pass one of {sorted(RECIPES[name])}")
    recipe = dict(RECIPES[name][size])
    unknown = sorted(set(overrides) - set(recipe))
    if unknown:
        raise ValueError(f"unknown recipe entries {unknown} for {name}; known: {sorted(recipe)}")
    recipe.update(overrides)
    recipe["recipe_version"] = RECIPE_VERSION
    recipe["python"] = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return recipe


def _recipe_hash(name: str, size: str, recipe: dict[str, Any]) -> str:
    text = json.dumps({"name": name, "size": size, **recipe}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _log(name: str, size: str) -> Callable[[str], None]:
    start = time.perf_counter()

    def log(text: str) -> None:
        print(
            f"testbed: {name} ({size}) {time.perf_counter() - start:6.0f}s  {text}",
            file=sys.stderr,
            flush=True,
        )

    return log


def _from_meta(root: Path, cached: bool) -> TrainedModel:
    meta = json.loads((root / _META).read_text())
    path = root / "model"
    return TrainedModel(
        name=meta["name"],
        size=meta["size"],
        root=root,
        path=path,
        source=meta["source"].replace("{path}", str(path)),
        eval_data=root / meta["eval_data"],
        prompts=tuple(meta["prompts"]),
        metrics=meta["metrics"],
        recipe=meta["recipe"],
        cached=cached,
    )


@contextmanager
def _threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _build(
    name: str,
    size: str,
    overrides: dict[str, Any],
    train: Callable[[Path, dict[str, Any], Callable[[str], None]], dict[str, Any]],
    cache_dir: Path | None,
    quiet: bool,
) -> TrainedModel:
    recipe = _recipe(name, size, overrides)
    root_dir = Path(cache_dir) if cache_dir is not None else cache_root()
    root = root_dir / f"{name}-{size}-{_recipe_hash(name, size, recipe)}"
    if (root / _META).is_file():
        return _from_meta(root, cached=True)
    # locked while training: a build killed midway leaves a folder the next build here removes
    scratch = make_scratch(root_dir, root.name, mode=0o700)
    tmp = scratch.path
    try:
        (tmp / "model").mkdir()
        if not quiet:
            print(f"testbed: training {name} ({size}) into {root}", file=sys.stderr)
        start = time.perf_counter()
        with _threads(int(recipe["threads"])):
            meta = train(tmp, recipe, (lambda _: None) if quiet else _log(name, size))
        meta["metrics"]["train_seconds"] = round(time.perf_counter() - start, 2)
        meta.update(name=name, size=size, recipe=recipe)
        (tmp / _META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        try:
            tmp.rename(root)
        except OSError:
            if not (root / _META).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process built it first: keep theirs
            return _from_meta(root, cached=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        scratch.release()
    if not quiet:
        print(f"testbed: {name} ({size}) {json.dumps(meta['metrics'])}", file=sys.stderr)
    return _from_meta(root, cached=False)


# ---------------------------------------------------------------------------------------------- text


def _stdlib() -> Path:
    return Path(sysconfig.get_path("stdlib"))


def _stdlib_files() -> tuple[list[Path], list[Path]]:
    """The top-level ``Lib/*.py`` files, sorted; every 10th is held out (train, held-out)."""
    files = sorted(p for p in _stdlib().glob("*.py") if p.is_file())
    if not files:
        raise RuntimeError(f"no Python sources in {_stdlib()}: the test bed trains on the stdlib's")
    held = [f for i, f in enumerate(files) if i % 10 == 5]
    train = [f for i, f in enumerate(files) if i % 10 != 5]
    return train, held


def _read(files: list[Path], limit: int) -> str:
    parts: list[str] = []
    total = 0
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        total += len(text)
        if total >= limit:
            break
    return "".join(parts)[:limit]


def _bpe(texts: list[str], vocab: int, specials: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


# -------------------------------------------------------------------------------------------- digits


def _digits_net(channels: int, hidden: int) -> Any:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, channels * 2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(channels * 2 * 16, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


def make_digits_model(folder: str | Path) -> Any:
    """The trained digits classifier saved in ``folder`` (``weights.pt`` + ``config.json``), eval mode."""
    import torch
    from torch import nn

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())

    class DigitsClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _digits_net(config["channels"], config["hidden"])

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.net(image)

    model = DigitsClassifier()
    model.net.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
    return model.eval()


_DIGITS_MODEL_PY = '''"""The test bed's trained digits classifier (scikit-learn digits, 8x8): ``make_model()``."""

from pathlib import Path

import torch

from torchport.exporters.examples.testbed import make_digits_model


def make_model() -> torch.nn.Module:
    return make_digits_model(Path(__file__).parent)


def example_inputs() -> tuple[torch.Tensor]:
    return (torch.rand(2, 1, 8, 8),)


DYNAMIC_DIMS = {"image": {0: ("batch", 1, 512)}}
'''


def _digits_split() -> tuple[Any, Any, Any, Any]:
    import numpy as np
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    n_eval = len(y) // 5
    ev, tr = order[:n_eval], order[n_eval:]
    return x[tr], y[tr], x[ev], y[ev]


def _train_digits(tmp: Path, r: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    import numpy as np
    import torch

    torch.manual_seed(0)
    xtr, ytr, xev, yev = _digits_split()
    net = _digits_net(r["channels"], r["hidden"])
    opt = torch.optim.Adam(net.parameters(), lr=r["lr"])
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    gen = torch.Generator().manual_seed(0)
    loss = torch.tensor(0.0)
    for _ in range(r["epochs"]):
        perm = torch.randperm(len(yt), generator=gen)
        for i in range(0, len(yt), r["batch"]):
            idx = perm[i : i + r["batch"]]
            loss = torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        pred = net(torch.from_numpy(xev)).argmax(-1).numpy()
    folder = tmp / "model"
    torch.save(net.state_dict(), folder / "weights.pt")
    (folder / "config.json").write_text(json.dumps({"channels": r["channels"], "hidden": r["hidden"]}))
    (folder / "model.py").write_text(_DIGITS_MODEL_PY)
    np.savez(tmp / "eval.npz", image=xev, labels=yev)
    return {
        "source": "{path}/model.py:make_model",
        "eval_data": "eval.npz",
        "prompts": [],
        "metrics": {
            "accuracy": round(float((pred == yev).mean()), 4),
            "final_loss": round(float(loss.detach()), 4),
            "params": sum(p.numel() for p in net.parameters()),
            "eval_samples": len(yev),
        },
    }


def build_digits(
    size: str = "test", *, cache_dir: Path | None = None, quiet: bool = True, **overrides: Any
) -> TrainedModel:
    """The trained digits classifier (input ``image`` float32[batch,1,8,8], 10 logits).

    Args:
        size: ``"test"`` (seconds) or ``"bench"``.
        cache_dir: where builds are cached (default :func:`cache_root`).
        quiet: no progress lines on stderr.
        **overrides: recipe entries to change (see :data:`RECIPES`), e.g. ``epochs=5``.

    Returns:
        The build; ``eval_data`` is ``eval.npz`` with ``image`` and ``labels``.

    Example:
        >>> build_digits("test").metrics["accuracy"] > 0.9  # doctest: +SKIP
        True
    """
    return _build("digits", size, overrides, _train_digits, cache_dir, quiet)


# ------------------------------------------------------------------------------------------------ LM

_LM_SPECIALS = ["<pad>", "<s>", "</s>"]


def _save_tokenizer(tok: Any, folder: Path, **special: str) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **special)
    fast.save_pretrained(folder)


def _lm_perplexity(model: Any, ids: Any, seq: int) -> float:
    import math

    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ids) - 1, seq):
            chunk = ids[i : i + seq + 1]
            if len(chunk) < 2:
                break
            x = torch.tensor(chunk[:-1])[None]
            y = torch.tensor(chunk[1:])[None]
            logits = model(input_ids=x).logits[0]
            total += float(torch.nn.functional.cross_entropy(logits, y[0], reduction="sum"))
            count += len(chunk) - 1
    return math.exp(total / count)


def _lm_prompts(held_text: str) -> list[str]:
    lines = [ln.rstrip() for ln in held_text.splitlines()]
    good = list(
        dict.fromkeys(
            ln.strip()[:80] for ln in lines if len(ln.strip()) >= 30 and not ln.strip().startswith("#")
        )
    )
    step = max(1, len(good) // N_PROMPTS)
    return [good[i * step] for i in range(min(N_PROMPTS, len(good)))]


def _train_lm(tmp: Path, r: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    import math

    import torch
    import transformers as T

    train_files, held_files = _stdlib_files()
    text = _read(train_files, r["train_chars"])
    held = _read(held_files, r["eval_chars"] * 4)
    eval_text = held[: r["eval_chars"]]
    prompt_text = held[r["eval_chars"] :]
    tok = _bpe([text[i : i + 4096] for i in range(0, len(text), 4096)], r["vocab"], _LM_SPECIALS)
    log(f"tokenizer: {tok.get_vocab_size()} tokens")
    ids = tok.encode(text).ids
    torch.manual_seed(0)
    config = T.LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=r["hidden"],
        intermediate_size=r["intermediate"],
        num_hidden_layers=r["layers"],
        num_attention_heads=r["heads"],
        num_key_value_heads=r["kv_heads"],
        max_position_embeddings=max(512, 2 * r["seq"]),
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    model = T.LlamaForCausalLM(config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], betas=(0.9, r["beta2"]), weight_decay=0.01)
    data = torch.tensor(ids)
    gen = torch.Generator().manual_seed(0)
    warm = max(1, r["steps"] // 20)
    loss = torch.tensor(0.0)
    for step in range(r["steps"]):
        lr = r["lr"] * min(1.0, (step + 1) / warm)
        lr *= 0.5 * (1 + math.cos(math.pi * step / r["steps"])) * 0.9 + 0.1
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(data) - r["seq"] - 1, (r["batch"],), generator=gen)
        batch = torch.stack([data[s : s + r["seq"] + 1] for s in starts.tolist()])
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1].clone()).loss
        # labels are shifted inside the model: predict token t+1 from tokens <= t
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % max(1, r["steps"] // 10) == 0:
            log(f"step {step + 1}/{r['steps']} loss {float(loss.detach()):.3f}")
    model.eval()
    ppl = _lm_perplexity(model, tok.encode(eval_text).ids, r["seq"])
    folder = tmp / "model"
    model.save_pretrained(folder)
    _save_tokenizer(tok, folder, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    (tmp / "eval.txt").write_text(eval_text, encoding="utf-8")
    prompts = _lm_prompts(prompt_text)
    (tmp / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    return {
        "source": "{path}",
        "eval_data": "eval.txt",
        "prompts": prompts,
        "metrics": {
            "perplexity": round(ppl, 3),
            "final_loss": round(float(loss.detach()), 4),
            "params": sum(p.numel() for p in model.parameters()),
            "train_tokens": r["steps"] * r["batch"] * r["seq"],
        },
    }


def build_lm(
    size: str = "test", *, cache_dir: Path | None = None, quiet: bool = True, **overrides: Any
) -> TrainedModel:
    """The trained Llama-style LM, a Hugging Face folder with ``tokenizer.json``.

    Args:
        size: ``"test"`` (a few M parameters... well under a minute) or ``"bench"`` (the 56M shape of
            benchmarks/generate.py, minutes).
        cache_dir: where builds are cached (default :func:`cache_root`).
        quiet: no progress lines on stderr.
        **overrides: recipe entries to change (see :data:`RECIPES`), e.g. ``steps=50``.

    Returns:
        The build; ``eval_data`` is ``eval.txt`` (held-out stdlib text), ``prompts`` held-out lines.

    Example:
        >>> build_lm("test").metrics["perplexity"] < 100  # doctest: +SKIP
        True
    """
    return _build("lm", size, overrides, _train_lm, cache_dir, quiet)


# ---------------------------------------------------------------------------------------------- BERT

_BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _bert_lines(per_class: int) -> list[tuple[str, int]]:
    import numpy as np

    rows: list[tuple[str, int]] = []
    for label, pkg in enumerate(BERT_CLASSES):
        seen: set[str] = set()
        lines: list[str] = []
        for f in sorted((_stdlib() / pkg).rglob("*.py")):
            if "test" in f.relative_to(_stdlib() / pkg).parts[:-1]:
                continue
            for ln in f.read_text(encoding="utf-8", errors="replace").splitlines():
                s = ln.strip()
                if len(s) >= 24 and s not in seen:
                    seen.add(s)
                    lines.append(s)
        order = np.random.default_rng(label).permutation(len(lines))
        rows += [(lines[i], label) for i in order[:per_class]]
    return rows


def _train_bert(tmp: Path, r: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    import numpy as np
    import torch
    import transformers as T
    from tokenizers import processors

    n_tr, n_ev = r["per_class_train"], r["per_class_eval"]
    rows = _bert_lines(n_tr + n_ev)
    train_rows: list[tuple[str, int]] = []
    eval_rows: list[tuple[str, int]] = []
    for label in range(len(BERT_CLASSES)):
        mine = [row for row in rows if row[1] == label]
        eval_rows += mine[:n_ev]
        train_rows += mine[n_ev:]
    tok = _bpe([t for t, _ in train_rows], r["vocab"], _BERT_SPECIALS)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.enable_truncation(r["seq"])

    def encode(batch: list[tuple[str, int]]) -> dict[str, Any]:
        ids = np.zeros((len(batch), r["seq"]), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, enc in enumerate(tok.encode_batch([t for t, _ in batch])):
            ids[i, : len(enc.ids)] = enc.ids
            mask[i, : len(enc.ids)] = 1
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": np.zeros_like(ids),
            "labels": np.array([y for _, y in batch], dtype=np.int64),
        }

    torch.manual_seed(0)
    config = T.BertConfig(  # type: ignore[call-arg]  # num_labels & co. go to PretrainedConfig's **kwargs
        vocab_size=tok.get_vocab_size(),
        hidden_size=r["hidden"],
        intermediate_size=r["intermediate"],
        num_hidden_layers=r["layers"],
        num_attention_heads=r["heads"],
        max_position_embeddings=max(128, r["seq"]),
        num_labels=len(BERT_CLASSES),
        id2label=dict(enumerate(BERT_CLASSES)),
        label2id={c: i for i, c in enumerate(BERT_CLASSES)},
        pad_token_id=0,
    )
    model = T.BertForSequenceClassification(config)
    train = {k: torch.from_numpy(v) for k, v in encode(train_rows).items()}
    opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    n = len(train["labels"])
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(r["epochs"]):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, r["batch"]):
            idx = perm[i : i + r["batch"]]
            loss = model(**{k: v[idx] for k, v in train.items()}).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        log(f"epoch loss {float(loss.detach()):.3f}")
    model.eval()
    ev = encode(eval_rows)
    with torch.no_grad():
        logits = model(**{k: torch.from_numpy(v) for k, v in ev.items() if k != "labels"}).logits
    acc = float((logits.argmax(-1).numpy() == ev["labels"]).mean())
    folder = tmp / "model"
    model.save_pretrained(folder)
    _save_tokenizer(
        tok,
        folder,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    np.savez(tmp / "eval.npz", **ev)
    return {
        "source": "{path}",
        "eval_data": "eval.npz",
        "prompts": [],
        "metrics": {
            "accuracy": round(acc, 4),
            "final_loss": round(float(loss.detach()), 4),
            "params": sum(p.numel() for p in model.parameters()),
            "eval_samples": len(eval_rows),
        },
    }


def build_bert(
    size: str = "test", *, cache_dir: Path | None = None, quiet: bool = True, **overrides: Any
) -> TrainedModel:
    """The trained BERT sequence classifier (which stdlib package a line is from), a Hugging Face folder.

    Args:
        size: ``"test"`` (seconds) or ``"bench"``.
        cache_dir: where builds are cached (default :func:`cache_root`).
        quiet: no progress lines on stderr.
        **overrides: recipe entries to change (see :data:`RECIPES`), e.g. ``epochs=1``.

    Returns:
        The build; ``eval_data`` is ``eval.npz`` with ``input_ids``, ``attention_mask``,
        ``token_type_ids`` and ``labels``.

    Example:
        >>> build_bert("test").metrics["accuracy"] > 0.5  # doctest: +SKIP
        True
    """
    return _build("bert", size, overrides, _train_bert, cache_dir, quiet)


_BUILDERS: dict[str, Callable[..., TrainedModel]] = {
    "digits": build_digits,
    "lm": build_lm,
    "bert": build_bert,
}


def build(name: str, size: str = "test", **kwargs: Any) -> TrainedModel:
    """Build (or reuse) the test-bed model ``name`` (``digits``, ``lm``, ``bert``) of ``size``.

    Example:
        >>> build("digits", "test").source.endswith("model.py:make_model")  # doctest: +SKIP
        True
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown test-bed model {name!r}; pass one of {sorted(_BUILDERS)}")
    return _BUILDERS[name](size, **kwargs)


def _main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Build (or reuse) the trained test-bed models.")
    parser.add_argument("names", nargs="*", default=sorted(_BUILDERS), choices=sorted(_BUILDERS))
    parser.add_argument("--size", default="test", choices=["test", "bench"])
    args = parser.parse_args(argv)
    for name in args.names:
        m = build(name, args.size, quiet=False)
        print(
            json.dumps(
                {
                    "name": name,
                    "source": m.source,
                    "eval_data": str(m.eval_data),
                    "cached": m.cached,
                    "metrics": m.metrics,
                }
            )
        )


if __name__ == "__main__":
    _main()
