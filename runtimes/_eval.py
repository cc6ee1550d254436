"""Task metrics on a held-out set, per variant: what a user feels, next to the parity metrics.

A classifier package is evaluated on an ``.npz`` of its inputs (named as the package names them, one row
per sample) and a ``labels`` array (integer class ids, one per row): each variant's **accuracy** against
the labels and its **top-1 agreement** with fp32. A text-generation package is evaluated on a UTF-8 text
file: each variant's **perplexity** on the text (windows of the model's positions, teacher-forced) and its
**free-running greedy agreement** with fp32 (``tokens`` new tokens per held-out prompt, the share of
positions where the variant's token equals fp32's, each running free). The prompts are a file of its own
(one per line, e.g. the test bed's ``prompts.txt``: ``--eval-prompts``) or else the starts of 16 distinct
lines of the eval text.

``evaluate_package`` is the API (``torchport validate PKG --eval DATA``); :func:`gate` judges a result
against the drops ``optimize --eval`` accepts, :func:`record_eval` writes it into the package
(``parity.json``'s ``eval``, the manifest's ``extra.eval``). Bad input — a file that is neither, missing
``labels``, an input missing or of the wrong shape, text that is not UTF-8, a set larger than the memory
budget — is one :class:`~torchport.runtimes.UsageError` line saying what to pass.
"""

from __future__ import annotations

import math
import os
import sys
import time
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from torchport.runtimes._errors import UsageError
from torchport.runtimes._generate import DecoderSpec, Generator, SamplingParams, is_text_generation
from torchport.runtimes._manifest import PARITY_NAME, Manifest
from torchport.runtimes._package import ModelPackage, update_package
from torchport.runtimes._session import Session
from torchport.runtimes._tokenizer import TextCodec

__all__ = [
    "DEFAULT_EVAL_BUDGET",
    "DEFAULT_EVAL_TOKENS",
    "DEFAULT_MAX_ACCURACY_DROP",
    "DEFAULT_MAX_PERPLEXITY_RISE",
    "EvalResult",
    "VariantEval",
    "check_eval_data",
    "evaluate_folder",
    "evaluate_package",
    "gate",
    "record_eval",
]

#: accuracy points (percent) a variant may lose against fp32 before ``optimize --eval`` refuses it
DEFAULT_MAX_ACCURACY_DROP = 1.0
#: relative perplexity rise (0.05 = 5%) a variant may have against fp32 before ``optimize --eval`` refuses it
DEFAULT_MAX_PERPLEXITY_RISE = 0.05
#: new tokens per prompt of the free-running greedy agreement
DEFAULT_EVAL_TOKENS = 32
#: the largest eval set read into memory (bytes, uncompressed)
DEFAULT_EVAL_BUDGET = 512 * 2**20
#: prompts of the greedy agreement (distinct, held out), and the most tokens of each
_PROMPTS = 16
_PROMPT_TOKENS = 32
#: a line of the eval text makes a prompt when it is at least this long (stripped, not a comment)
_PROMPT_LINE = 30
#: perplexity windows (tokens each, at most the model's positions)
_WINDOW = 128
_MAX_WINDOWS = 64

_WHAT = (
    "pass an .npz of the model's inputs with a `labels` array (classifiers) or a UTF-8 .txt file "
    "(text-generation packages)"
)


@dataclass
class VariantEval:
    """One variant's task metrics (``None`` where the metric does not apply to the task).

    Attributes:
        accuracy: share of samples whose top-1 class equals the label (classifiers), 0..1.
        agreement: top-1 agreement with fp32 (classifiers) or free-running greedy agreement with fp32
            over ``tokens`` new tokens per prompt (text generation), 0..1.
        perplexity: exp of the mean next-token negative log-likelihood on the text (text generation).
    """

    variant: str
    samples: int
    accuracy: float | None = None
    agreement: float | None = None
    perplexity: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON record (``parity.json``'s ``eval.variants``)."""
        out: dict[str, Any] = {"samples": self.samples, "seconds": round(self.seconds, 3)}
        for key in ("accuracy", "agreement", "perplexity"):
            value = getattr(self, key)
            if value is not None:
                out[key] = round(float(value), 6)
        return out


@dataclass
class EvalResult:
    """Task metrics of a package's variants on one held-out set; truthy when no variant was refused.

    Attributes:
        task: ``"classification"`` or ``"text-generation"``.
        data: the eval file's name.
        variants: variant name → :class:`VariantEval` (fp32 first).
        tokens: new tokens per prompt of the greedy agreement (text generation).
        prompts: distinct prompts the greedy agreement is averaged over (text generation).
        refused: variant → the one-line reason :func:`gate` refused it (empty when not gated).
        limits: the gate's limits (``max_accuracy_drop`` points, ``max_perplexity_rise`` fraction).
    """

    task: str
    data: str
    variants: dict[str, VariantEval]
    tokens: int | None = None
    prompts: int | None = None
    refused: dict[str, str] = field(default_factory=dict)
    limits: dict[str, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return not self.refused

    def to_dict(self) -> dict[str, Any]:
        """The JSON record written to ``parity.json`` (``eval``) and the manifest (``extra.eval``)."""
        out: dict[str, Any] = {
            "task": self.task,
            "data": self.data,
            "variants": {k: v.to_dict() for k, v in self.variants.items()},
        }
        if self.tokens is not None:
            out["tokens"] = self.tokens
        if self.prompts is not None:
            out["prompts"] = self.prompts
        if self.limits:
            out["limits"] = dict(self.limits)
        if self.refused:
            out["refused"] = dict(self.refused)
        return out

    def __str__(self) -> str:
        return format_eval(self.to_dict())


def format_eval(record: Mapping[str, Any]) -> str:
    """Render an eval record (``EvalResult.to_dict()``, ``extra.eval``) as a small table."""
    task = record.get("task")
    lm = task == "text-generation"
    per = f" x {record['prompts']} prompts" if record.get("prompts") else ""
    agree = (
        f"greedy agreement vs fp32 ({record.get('tokens')} tokens{per})" if lm else "top-1 agreement vs fp32"
    )
    head = ["variant", "perplexity" if lm else "accuracy", agree]
    rows = []
    variants = record.get("variants") or {}
    base = variants.get("fp32", {})
    for name, v in variants.items():
        if lm:
            ppl = v.get("perplexity")
            rise = ""
            if name != "fp32" and ppl is not None and base.get("perplexity"):
                rise = f" ({(ppl / base['perplexity'] - 1) * 100:+.1f}%)"
            metric = f"{ppl:.3f}{rise}" if ppl is not None else "-"
        else:
            acc = v.get("accuracy")
            drop = ""
            if name != "fp32" and acc is not None and base.get("accuracy") is not None:
                drop = f" ({(acc - base['accuracy']) * 100:+.2f} pt)"
            metric = f"{acc * 100:.2f}%{drop}" if acc is not None else "-"
        ag = v.get("agreement")
        rows.append([name, metric, f"{ag * 100:.1f}%" if ag is not None else "-"])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    lines = [
        f"Eval on {record.get('data')} ({task}, {next(iter(variants.values()), {}).get('samples', 0)} samples):"  # type: ignore[call-overload]
    ]
    lines += [
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]
    ]
    for name, reason in (record.get("refused") or {}).items():
        lines.append(f"  refused {name}: {reason}")
    return "\n".join(lines)


# -- reading the eval set ---------------------------------------------------------------------------


def _budget_text(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def _check_size(path: Path, size: int, budget: int) -> None:
    if size > budget:
        raise UsageError(
            f"eval data {path.name} holds {_budget_text(size)}, over the {_budget_text(budget)} memory budget; "
            f"pass a smaller held-out set or raise the budget (--eval-budget MiB; the API's max_bytes=)"
        )


def check_eval_data(
    data: str | os.PathLike[str],
    *,
    prompts: Sequence[str] | str | os.PathLike[str] | None = None,
    max_bytes: int = DEFAULT_EVAL_BUDGET,
) -> None:
    """Refuse, before any work, an eval set that is missing or larger than the memory budget.

    ``optimize --eval`` calls it before its passes run, so a bad set costs nothing.

    Args:
        data: the eval file (``.npz`` or UTF-8 text).
        prompts: the prompts file, when one is given.
        max_bytes: the memory budget (bytes, uncompressed for an ``.npz``).

    Raises:
        UsageError: one line naming the file and what to pass.

    Example:
        >>> check_eval_data("eval.npz", max_bytes=2**20)                         # doctest: +SKIP
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise UsageError(f"the eval memory budget must be a positive number of bytes, got {max_bytes!r}")
    path = Path(data)
    if not path.is_file():
        raise UsageError(f"eval data {path} does not exist; {_WHAT}")
    if _is_npz(path):
        with zipfile.ZipFile(path) as z:
            _check_size(path, sum(i.file_size for i in z.infolist()), max_bytes)
    else:
        _check_size(path, path.stat().st_size, max_bytes)
    _prompt_texts(prompts, max_bytes)


def _is_npz(path: Path) -> bool:
    return zipfile.is_zipfile(path)


def _read_npz(path: Path, manifest: Manifest, budget: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    with zipfile.ZipFile(path) as z:
        _check_size(path, sum(i.file_size for i in z.infolist()), budget)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as e:  # noqa: BLE001 - numpy raises several types for a bad file
        raise UsageError(f"cannot read eval data {path.name} as .npz ({e}); {_WHAT}") from e
    names = [s.name for s in manifest.inputs]
    if "labels" not in arrays:
        raise UsageError(
            f"eval data {path.name} has no `labels` array (it has {sorted(arrays)}); pass an .npz with the "
            f"model's inputs ({', '.join(names)}) and `labels`: one integer class id per row"
        )
    labels = arrays.pop("labels")
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) == 0:
        raise UsageError(
            f"eval data {path.name}: `labels` is {labels.dtype}{list(labels.shape)}; pass integer class ids, "
            f"one per row: shape [N]"
        )
    inputs: dict[str, np.ndarray] = {}
    for spec in manifest.inputs:
        if spec.name not in arrays:
            raise UsageError(
                f"eval data {path.name} lacks the model's input `{spec.name}` (it has {sorted(arrays)}); "
                f"pass arrays named {', '.join(names)} plus `labels`"
            )
        arr = arrays[spec.name]
        want = [d if isinstance(d, int) else None for d in spec.shape]
        shape_text = "[" + ",".join(str(d) for d in spec.shape) + "]"
        if arr.ndim != len(want) or any(
            w is not None and w != a for w, a in zip(want, arr.shape, strict=False)
        ):
            raise UsageError(
                f"eval data {path.name}: input `{spec.name}` has shape {list(arr.shape)}; the model takes "
                f"{spec.dtype}{shape_text}: pass one row per sample along the first dim"
            )
        if arr.shape[0] != len(labels):
            raise UsageError(
                f"eval data {path.name}: input `{spec.name}` has {arr.shape[0]} rows and `labels` {len(labels)}; "
                f"pass one label per row"
            )
        try:
            inputs[spec.name] = arr.astype(np.dtype(spec.dtype), copy=False)
        except TypeError as e:
            raise UsageError(
                f"eval data {path.name}: input `{spec.name}` is {arr.dtype}; pass {spec.dtype}"
            ) from e
    return inputs, labels.astype(np.int64)


def _read_text(path: Path, budget: int) -> str:
    _check_size(path, path.stat().st_size, budget)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(
            f"eval text {path.name} is not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); "
            f"pass a UTF-8 text file"
        ) from e
    if not text.strip():
        raise UsageError(f"eval text {path.name} is empty; pass held-out text the model did not train on")
    return text


# -- metrics ------------------------------------------------------------------------------------------


def _logits_output(session: Session) -> str:
    names = session.output_names
    if "logits" in names:
        return "logits"
    return names[0]


def _classify(session: Session, inputs: dict[str, np.ndarray], batch: int) -> np.ndarray:
    out_name = _logits_output(session)
    n = len(next(iter(inputs.values())))
    limit = session.dynamic_dims[session.batch_dim].max if session.batch_dim in session.dynamic_dims else None
    step = min(batch, limit) if limit else batch
    if session.batch_dim is None:
        step = n
    preds = []
    for i in range(0, n, step):
        out = session.run({k: v[i : i + step] for k, v in inputs.items()}, [out_name])[out_name]
        if out.ndim != 2:
            raise UsageError(
                f"output `{out_name}` has shape {list(out.shape)}: --eval with labels scores classifiers "
                f"([batch, classes] logits); for a text-generation package pass a UTF-8 text file"
            )
        preds.append(np.argmax(out, axis=-1))
    return np.concatenate(preds)


def _window(spec_max: int) -> int:
    return max(2, min(_WINDOW, spec_max))


def _nll(session: Session, ids: list[int]) -> tuple[float, int]:
    """Sum of next-token negative log-likelihoods over one window, and the count of predictions."""
    gen = DecoderSpec.from_manifest(session.manifest)  # text eval takes decoder-only packages
    n = len(ids)
    types = {s.name: s.dtype for s in session.input_specs}
    feeds: dict[str, Any] = {
        "input_ids": np.asarray([ids], np.int64),
        "attention_mask": np.ones((1, n), np.int64),
    }
    if gen.position_ids:
        feeds["position_ids"] = np.arange(n, dtype=np.int64)[None]
    length = n + 1 if gen.shared_buffer else 0
    for name, heads, dim in zip(gen.past_names, gen.kv_heads, gen.head_dims, strict=True):
        dtype = np.float16 if types.get(name) == "float16" else np.float32
        feeds[name] = np.zeros((1, heads, length, dim), dtype)
    logits = session._sess.run(["logits"], feeds)[0][0].astype(np.float64)  # [n, vocab]
    logits -= logits.max(axis=-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    target = np.asarray(ids[1:])
    return float(-logp[np.arange(n - 1), target].sum()), n - 1


def _lm_windows(session: Session, ids: list[int]) -> list[list[int]]:
    spec = Generator(session).spec
    w = _window(min(spec.max_seq, spec.max_positions))
    return [ids[i : i + w] for i in range(0, len(ids) - 1, w) if len(ids[i : i + w]) >= 2][:_MAX_WINDOWS]


def _spread(items: list[Any], count: int) -> list[Any]:
    """``count`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if len(items) <= count:
        return list(items)
    return [items[int(i * len(items) / count)] for i in range(count)]


def _text_prompts(text: str, count: int) -> list[str]:
    """The starts of ``count`` distinct lines of ``text`` (stripped, long enough, not comments)."""
    lines = (ln.strip() for ln in text.splitlines())
    good = dict.fromkeys(ln for ln in lines if len(ln) >= _PROMPT_LINE and not ln.startswith("#"))
    return _spread(list(good), count)


def _read_prompts(path: Path, budget: int) -> list[str]:
    text = _read_text(path, budget)
    prompts = list(dict.fromkeys(ln.strip() for ln in text.splitlines() if ln.strip()))
    return prompts


def _lm_prompts(
    codec: TextCodec, ids: list[int], text: str, prompts: Sequence[str] | None, count: int
) -> list[list[int]]:
    """Token ids of the greedy agreement's prompts, distinct: ``prompts`` else lines of ``text``, else
    evenly spaced slices of ``ids`` (text without such lines)."""
    chosen = list(prompts) if prompts is not None else _text_prompts(text, count)
    out = [codec.encode(p)[:_PROMPT_TOKENS] for p in chosen]
    if not out:
        usable = max(1, len(ids) - _PROMPT_TOKENS)
        out = [ids[s : s + _PROMPT_TOKENS] for s in sorted({int(i * usable / count) for i in range(count)})]
    unique = list(dict.fromkeys(tuple(p) for p in out if p))
    return [list(p) for p in unique]


def _progress(show: bool, text: str) -> None:
    if show:
        print(f"  eval {text}", file=sys.stderr, flush=True)


def evaluate_folder(
    folder: str | os.PathLike[str],
    manifest: Manifest,
    data: str | os.PathLike[str],
    *,
    variants: Iterable[str] | None = None,
    tokens: int = DEFAULT_EVAL_TOKENS,
    prompts: Sequence[str] | str | os.PathLike[str] | None = None,
    batch: int = 64,
    max_bytes: int = DEFAULT_EVAL_BUDGET,
    providers: str | Sequence[str] = "cpu",
    progress: bool = False,
) -> EvalResult:
    """:func:`evaluate_package` on a folder and its manifest (a package being written, not yet hashed).

    Example:
        >>> pkg = ModelPackage.load("out/digits")                               # doctest: +SKIP
        >>> evaluate_folder(pkg.path, pkg.manifest, "eval.npz").variants["fp32"].accuracy
        0.98
    """
    folder = Path(folder)
    path = Path(data)
    check_eval_data(path, prompts=prompts, max_bytes=max_bytes)
    names = list(variants) if variants else list(manifest.variants)
    if "fp32" in names:
        names.remove("fp32")
    names = ["fp32", *names]
    for name in names:
        if name not in manifest.variants:
            raise UsageError(
                f"package {manifest.name!r} has no variant {name!r}; pass one of {sorted(manifest.variants)}"
            )

    def open_session(name: str) -> Session:
        return Session(folder / manifest.variants[name].file, manifest, providers=providers, variant=name)

    text_gen = is_text_generation(manifest)
    if _is_npz(path):
        if text_gen:
            raise UsageError(
                f"eval data {path.name} is an .npz; {manifest.name!r} is a text-generation package: "
                f"pass a UTF-8 text file of held-out text"
            )
        inputs, labels = _read_npz(path, manifest, max_bytes)
        results: dict[str, VariantEval] = {}
        ref: np.ndarray | None = None
        for name in names:
            start = time.perf_counter()
            _progress(progress, f"{name}: {len(labels)} samples")
            pred = _classify(open_session(name), inputs, batch)
            ref = pred if ref is None else ref
            results[name] = VariantEval(
                name,
                len(labels),
                accuracy=float((pred == labels).mean()),
                agreement=float((pred == ref).mean()),
                seconds=time.perf_counter() - start,
            )
        return EvalResult("classification", path.name, results)
    if not text_gen:
        raise UsageError(
            f"eval data {path.name} is not an .npz; {manifest.name!r} is not a text-generation package: "
            f"pass an .npz of its inputs ({', '.join(s.name for s in manifest.inputs)}) with a `labels` array"
        )
    text = _read_text(path, max_bytes)
    prompt_texts = _prompt_texts(prompts, max_bytes)
    info = manifest.extra.get("text")
    if not isinstance(info, dict) or not info.get("tokenizer"):
        raise UsageError(
            f"package {manifest.name!r} carries no tokenizer: text eval needs one (export from a Hugging Face "
            f"folder with tokenizer.json)"
        )
    codec = TextCodec.from_package(ModelPackage(path=folder, manifest=manifest))
    assert codec is not None
    ids = codec.encode(text)
    if len(ids) < 2:
        raise UsageError(f"eval text {path.name} is {len(ids)} token(s); pass at least a few sentences")
    prompt_ids = _lm_prompts(codec, ids, text, prompt_texts, _PROMPTS)
    results = {}
    ref_tokens: list[list[int]] | None = None
    for name in names:
        start = time.perf_counter()
        sess = open_session(name)
        windows = _lm_windows(sess, ids)
        total, count = 0.0, 0
        for i, w in enumerate(windows):
            _progress(progress and i % 8 == 0, f"{name}: perplexity window {i + 1}/{len(windows)}")
            nll, k = _nll(sess, w)
            total, count = total + nll, count + k
        _progress(progress, f"{name}: greedy {tokens} tokens x {len(prompt_ids)} prompts")
        params = SamplingParams(max_new_tokens=tokens, ignore_eos=True)
        out = Generator(sess).generate(prompt_ids, params).tokens
        ref_tokens = out if ref_tokens is None else ref_tokens
        agree = [
            sum(a == b for a, b in zip(o, r, strict=False)) / max(1, len(r))
            for o, r in zip(out, ref_tokens, strict=True)
        ]
        results[name] = VariantEval(
            name,
            count,
            perplexity=math.exp(total / count),
            agreement=float(np.mean(agree)),
            seconds=time.perf_counter() - start,
        )
    return EvalResult("text-generation", path.name, results, tokens=tokens, prompts=len(prompt_ids))


def _prompt_texts(prompts: Sequence[str] | str | os.PathLike[str] | None, budget: int) -> list[str] | None:
    """The prompts argument as distinct strings (a path: one prompt per line of a UTF-8 file)."""
    if prompts is None:
        return None
    if isinstance(prompts, (str, os.PathLike)):
        path = Path(prompts)
        if not path.is_file():
            raise UsageError(
                f"eval prompts {path} does not exist; pass a UTF-8 text file with one prompt per line"
            )
        found = _read_prompts(path, budget)
        where = path.name
    else:
        found = list(dict.fromkeys(p for p in prompts if p.strip()))
        where = "prompts"
    if not found:
        raise UsageError(f"eval {where} holds no prompt; pass one prompt per line (held-out text)")
    return found


def evaluate_package(
    package: ModelPackage | str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    variants: Iterable[str] | None = None,
    tokens: int = DEFAULT_EVAL_TOKENS,
    prompts: Sequence[str] | str | os.PathLike[str] | None = None,
    batch: int = 64,
    max_bytes: int = DEFAULT_EVAL_BUDGET,
    providers: str | Sequence[str] = "cpu",
    progress: bool = False,
) -> EvalResult:
    """Task metrics of each variant of a package on a held-out set (no torch).

    Args:
        package: the package folder or a loaded package.
        data: an ``.npz`` of the model's inputs + ``labels`` (classifiers), or a UTF-8 text file
            (text-generation packages).
        variants: the variants to evaluate (default: all in the package; fp32 always, as the reference).
        tokens: new tokens per prompt of the greedy agreement (text generation).
        prompts: the greedy agreement's held-out prompts (text generation): strings, or a UTF-8 file
            with one prompt per line (e.g. the test bed's ``prompts.txt``); duplicates are dropped.
            Default: the starts of 16 distinct lines of the eval text.
        batch: rows per run (classifiers).
        max_bytes: the memory budget: a larger eval set is refused.
        providers: ONNX Runtime providers.
        progress: print a line per variant (and per few perplexity windows) on stderr.

    Returns:
        An :class:`EvalResult` (print it for the table).

    Raises:
        UsageError: bad eval data (one line saying what to pass) or an unknown variant.

    Example:
        >>> result = evaluate_package("out/digits", "eval.npz")                  # doctest: +SKIP
        >>> round(result.variants["int8"].accuracy, 3), result.variants["int8"].agreement
        (0.983, 0.997)
    """
    pkg = package if isinstance(package, ModelPackage) else ModelPackage.load(package)
    return evaluate_folder(
        pkg.path,
        pkg.manifest,
        data,
        variants=variants,
        tokens=tokens,
        prompts=prompts,
        batch=batch,
        max_bytes=max_bytes,
        providers=providers,
        progress=progress,
    )


def gate(
    result: EvalResult,
    *,
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
    max_perplexity_rise: float = DEFAULT_MAX_PERPLEXITY_RISE,
) -> EvalResult:
    """Mark the variants whose task metric fell too far from fp32's (``result.refused``); returns ``result``.

    Args:
        result: an :func:`evaluate_package` result.
        max_accuracy_drop: accuracy points (percent) a variant may lose against fp32.
        max_perplexity_rise: relative perplexity rise a variant may have (0.05 = 5%).

    Example:
        >>> gate(evaluate_package("out/digits", "eval.npz")).refused              # doctest: +SKIP
        {}
    """
    result.limits = {"max_accuracy_drop": max_accuracy_drop, "max_perplexity_rise": max_perplexity_rise}
    result.refused = {}
    base = result.variants["fp32"]
    for name, v in result.variants.items():
        if name == "fp32":
            continue
        if v.accuracy is not None and base.accuracy is not None:
            drop = (base.accuracy - v.accuracy) * 100
            if drop > max_accuracy_drop:
                result.refused[name] = (
                    f"accuracy {v.accuracy * 100:.2f}% is {drop:.2f} points below fp32's "
                    f"{base.accuracy * 100:.2f}% (--max-accuracy-drop {max_accuracy_drop:g})"
                )
        if v.perplexity is not None and base.perplexity is not None:
            rise = v.perplexity / base.perplexity - 1
            if not rise <= max_perplexity_rise:
                result.refused[name] = (
                    f"perplexity {v.perplexity:.3f} is {rise * 100:.1f}% above fp32's {base.perplexity:.3f} "
                    f"(--max-perplexity-rise {max_perplexity_rise * 100:g}%)"
                )
    return result


def eval_into(parity: dict[str, Any] | None, manifest: Manifest, result: EvalResult) -> dict[str, Any]:
    """Put ``result`` into a parity report (``eval``) and the manifest (``extra.eval``); returns the report."""
    record = result.to_dict()
    manifest.extra["eval"] = record
    report = dict(parity or {})
    report["eval"] = record
    return report


def record_eval(package: ModelPackage | str | os.PathLike[str], result: EvalResult) -> ModelPackage:
    """Write ``result`` into the package (``parity.json``'s ``eval``, the manifest's ``extra.eval``).

    Example:
        >>> record_eval("out/digits", evaluate_package("out/digits", "eval.npz"))   # doctest: +SKIP
    """
    import json

    pkg = package if isinstance(package, ModelPackage) else ModelPackage.load(package)
    with update_package(pkg) as w:
        report_file = w.path / PARITY_NAME
        report = json.loads(report_file.read_text()) if report_file.is_file() else None
        manifest = pkg.manifest.replace()
        report = eval_into(report, manifest, result)
        return w.commit(manifest, parity=report)
