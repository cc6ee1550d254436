"""Text on ``/v2/models/{m}/infer``: a BYTES input ``text`` for packages that carry a tokenizer.

A text model (its inputs are ``input_ids`` plus optionally ``attention_mask`` / ``token_type_ids``,
its package carries ``tokenizer.json``, see :mod:`torchport.exporters._text_assets`) also accepts
``text`` of shape ``[batch]`` or ``[batch, 1]``: the server tokenizes each element with the
package's tokenizer (``tokenizers`` only), right-pads them to the longest with the attention mask,
runs the model and adds outputs by the task recorded in the manifest:

- ``text-classification``: ``label`` (BYTES ``[batch]``, from ``id2label``: the top label) and
  ``score`` (FP32 ``[batch]``, its score), next to ``logits``. The score follows Hugging Face's
  text-classification pipeline by the recorded ``problem_type``: the sigmoid of the label's logit for
  ``multi_label_classification`` (or a single label), which also answers ``scores`` (FP32
  ``[batch, num_labels]``, every label's sigmoid: a text may carry several labels), the raw logit for
  ``regression``, else the softmax probability (also for packages that predate ``problem_type``);
- ``token-classification``: ``labels`` / ``scores`` / ``tokens`` (``[batch, seq]``; padding
  positions are ``""`` / 0), next to ``logits``;
- ``feature-extraction``: ``embedding`` (FP32 ``[batch, hidden]``: mean, CLS or max pooling of
  ``last_hidden_state`` over the attention mask, L2-normalized when recorded).

A text request answers these by default; a tensor request answers the model's outputs as before and
may ask for the added ones by name. Text longer than the model's ``seq`` range is truncated when the
tokenizer records truncation, else refused naming the limit.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchport.runtimes._dtypes import to_numpy
from torchport.runtimes._errors import InferenceInputError, TorchportError
from torchport.runtimes._inputs import check_value_range
from torchport.runtimes._manifest import DimRange, TensorSpec
from torchport.runtimes._tokenizer import TextCodec

log = logging.getLogger("torchport.server")

__all__ = ["TEXT", "TextInfer"]

#: the name of the text input
TEXT = "text"
#: model inputs the tokenizer fills
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: ``seen`` key recording that a request declared ``text`` (see :meth:`TextInfer.check_declared`)
_SEEN = "\0text"
_UNBOUNDED = 1 << 31


@dataclass(frozen=True)
class _Extra:
    """An output the server adds to the model's."""

    name: str
    datatype: str
    shape: list[int]


def _dim_range(dim: Any, dynamic_dims: Mapping[str, DimRange]) -> DimRange:
    if isinstance(dim, int):
        return DimRange(dim, dim)
    if isinstance(dim, str) and dim in dynamic_dims:
        return dynamic_dims[dim]
    return DimRange(1, _UNBOUNDED)


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)  # 1/(1+e^-x) without overflow


def score_function(info: Mapping[str, Any], num_labels: int) -> str:
    """``"softmax"``, ``"sigmoid"`` or ``"none"``: how a sequence classifier's logits become scores,
    by Hugging Face's text-classification pipeline rule on the recorded ``problem_type`` (packages
    without the field keep softmax, what they were served with)."""
    if "problem_type" not in info:
        return "softmax"
    problem = info["problem_type"]
    if problem == "regression":
        return "none"
    if problem == "multi_label_classification" or (problem is None and num_labels == 1):
        return "sigmoid"
    return "softmax"


def _utf8(item: Any, index: int) -> str:
    """``item`` as text; BYTES that are not UTF-8 (decoded with surrogateescape) are refused."""
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InferenceInputError(
                f"input {TEXT!r} element {index} is not valid UTF-8 (byte 0x{item[e.start]:02x} at {e.start})"
            ) from None
    if not isinstance(item, str):
        raise InferenceInputError(f"input {TEXT!r} element {index} is not text")
    try:
        item.encode("utf-8")
    except UnicodeEncodeError as e:
        raw = item[: e.start].encode("utf-8", "surrogateescape")
        bad = item[e.start].encode("utf-8", "surrogateescape")
        raise InferenceInputError(
            f"input {TEXT!r} element {index} is not valid UTF-8 (byte 0x{bad[0]:02x} at {len(raw)})"
        ) from None
    return item


class TextInfer:
    """Text pre- and post-processing of one served text model.

    Attributes:
        model: the model's name (for messages).
        task: the task recorded in the manifest (``text-classification``...).
        token_inputs: the model inputs filled from the tokenizer, in the model's order.
        batch / seq: the ranges of ``input_ids``' two dims.
        truncates: whether over-long text is truncated (the tokenizer records truncation).
        extras: the outputs added by the task.
        score_function: ``softmax``, ``sigmoid`` or ``none`` (a classifier's ``score``, see
            :func:`score_function`); ``multi_label``: whether ``scores`` is added.

    Example:
        >>> text = TextInfer.of(session)                                # doctest: +SKIP
        >>> feeds = text.encode({"text": np.array(["great film"], dtype=object)})
        >>> text.outputs(feeds, session.run(feeds), None, is_text=True)["label"]
        array(['pos'], dtype=object)
    """

    def __init__(
        self,
        model: str,
        codec: TextCodec,
        specs: list[TensorSpec],
        outputs: list[TensorSpec],
        dims: Mapping[str, DimRange],
    ) -> None:
        self.model = model
        self.codec = codec
        info = codec.info
        self.task = str(info.get("task") or "")
        self.specs = {s.name: s for s in specs}
        self.token_inputs = [s.name for s in specs]
        ids = self.specs["input_ids"]
        self.batch = _dim_range(ids.shape[0], dims)
        self.seq = _dim_range(ids.shape[1], dims)
        self.seq_name = ids.shape[1] if isinstance(ids.shape[1], str) else "seq"
        tok = codec.tokenizer
        tok.no_padding()
        trunc = tok.truncation
        self.truncates = trunc is not None
        if trunc is not None:
            length = min(int(trunc["max_length"]), self.seq.max)
            tok.enable_truncation(
                length,
                stride=min(int(trunc.get("stride", 0)), max(length - 1, 0)),
                strategy=trunc.get("strategy", "longest_first"),
                direction=trunc.get("direction", "right"),
            )
        pad = codec.token_id((info.get("special_tokens") or {}).get("pad"))
        if pad is None and tok.padding:
            pad = tok.padding.get("pad_id")
        self.pad_id = int(pad or 0)
        self.id2label = {str(k): str(v) for k, v in (info.get("id2label") or {}).items()}
        self.pooling = str(info.get("pooling") or "mean")
        self.normalize = bool(info.get("normalize"))
        self.multi_label = info.get("problem_type") == "multi_label_classification"
        self.score_function = "softmax"
        by_name = {o.name: o for o in outputs}
        self.source, self.extras = self._task_outputs(by_name, outputs)
        extra = [e.name for e in self.extras]
        if self.task == "feature-extraction" and extra:
            self.defaults = extra
        else:
            self.defaults = [o.name for o in outputs] + extra

    def _task_outputs(
        self, by_name: dict[str, TensorSpec], outputs: list[TensorSpec]
    ) -> tuple[str | None, list[_Extra]]:
        """The model output the task reads and the outputs added from it."""
        if self.task == "feature-extraction":
            hidden = by_name.get("last_hidden_state")
            if hidden is not None and len(hidden.shape) == 3:
                dim = hidden.shape[2] if isinstance(hidden.shape[2], int) else -1
                return hidden.name, [_Extra("embedding", "FP32", [-1, dim])]
            return None, []
        logits = by_name.get("logits") or (outputs[0] if outputs else None)
        if self.task == "text-classification" and logits is not None and len(logits.shape) == 2:
            labels = logits.shape[1] if isinstance(logits.shape[1], int) else -1
            self.score_function = score_function(self.codec.info, labels)
            extras = [_Extra("label", "BYTES", [-1]), _Extra("score", "FP32", [-1])]
            if self.multi_label:
                extras.append(_Extra("scores", "FP32", [-1, labels]))
            return logits.name, extras
        if self.task == "token-classification" and logits is not None and len(logits.shape) == 3:
            return logits.name, [
                _Extra("labels", "BYTES", [-1, -1]),
                _Extra("scores", "FP32", [-1, -1]),
                _Extra("tokens", "BYTES", [-1, -1]),
            ]
        return None, []

    @classmethod
    def of(cls, session: Any, name: str | None = None) -> TextInfer | None:
        """The text handling of a loaded :class:`~torchport.runtimes.Session` served as ``name``, or
        ``None`` when it takes no text (no tokenizer in its package, or inputs a tokenizer does not
        fill, such as a KV cache)."""
        names = [s.name for s in session.input_specs]
        if "input_ids" not in names or not set(names) <= set(TOKEN_INPUTS) or session.package is None:
            return None
        if any(len(s.shape) != 2 for s in session.input_specs):
            return None
        try:
            codec = TextCodec.from_package(session.package)
        except TorchportError as e:
            log.warning("model %s: no text input (%s)", name or session.name, e)
            return None
        if codec is None:
            return None
        return cls(
            name or session.name,
            codec,
            list(session.input_specs),
            list(session.output_specs),
            session.dynamic_dims,
        )

    # -- the request ------------------------------------------------------------------------------

    def metadata(self) -> tuple[list[dict], list[dict]]:
        """The ``text`` input and the added outputs, as model metadata lists them."""
        ins = [{"name": TEXT, "datatype": "BYTES", "shape": [-1]}]
        outs = [{"name": e.name, "datatype": e.datatype, "shape": list(e.shape)} for e in self.extras]
        return ins, outs

    def both_error(self, names: list[str]) -> InferenceInputError:
        return InferenceInputError(
            f"give either {TEXT!r} or the model's tensor inputs ({', '.join(self.token_inputs)}), "
            f"not both (got {TEXT!r} and {', '.join(repr(n) for n in names)})"
        )

    def check_declared(self, datatype: str, shape: tuple[int, ...], seen: dict[str, tuple[int, str]]) -> None:
        """Check the declared ``text`` input before its data is decoded (``seen``: the request's
        dims so far; a token input declared before or after ``text`` is refused)."""
        if datatype != "BYTES":
            raise InferenceInputError(f"input {TEXT!r} has datatype {datatype}, the model expects BYTES")
        clash = sorted({src for _, src in seen.values() if src in self.specs})
        if clash:
            raise self.both_error(clash)
        self._check_shape(shape)
        seen[_SEEN] = (shape[0], TEXT)

    def check_token_input(self, name: str, seen: Mapping[str, tuple[int, str]]) -> None:
        if _SEEN in seen and name in self.specs:
            raise self.both_error([name])

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise InferenceInputError(
                f"input {TEXT!r} has shape {list(shape)}; expected [batch] or [batch, 1]"
            )
        if shape[0] not in self.batch:
            raise InferenceInputError(
                f"input {TEXT!r} has {shape[0]} element(s); model {self.model!r} takes a batch of "
                f"{self.batch.min}..{self.batch.max}"
            )

    def encode(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Tokenize the request's ``text`` into the model's inputs (right-padded, with the mask), checked
        against the model's signature (no ``Session.validate_inputs`` needed: a manifest may record a
        mask's legal values as ``1..1``, the values of its validation inputs, while padding needs 0).

        Raises:
            InferenceInputError: tensor inputs next to ``text``, a wrong shape, bytes that are not
                UTF-8, text that tokenizes to nothing or beyond the model's ``seq`` range.
        """
        others = [n for n in inputs if n != TEXT]
        if others:
            raise self.both_error(others)
        arr = np.asarray(inputs[TEXT])
        self._check_shape(arr.shape)
        encodings = []
        for i, item in enumerate(arr.reshape(-1)):
            enc = self.codec.tokenizer.encode(_utf8(item, i))
            n = len(enc.ids)
            if n == 0:
                raise InferenceInputError(f"input {TEXT!r} element {i} tokenizes to no tokens")
            if n > self.seq.max:
                raise InferenceInputError(
                    f"input {TEXT!r} element {i} is {n} tokens long; model {self.model!r} takes at most "
                    f"{self.seq.max} (its {self.seq_name!r} range is {self.seq.min}..{self.seq.max}, and its "
                    "tokenizer does not truncate)"
                )
            encodings.append(enc)
        lengths = [len(e.ids) for e in encodings]
        width = max(max(lengths), self.seq.min)
        masked = "attention_mask" in self.specs
        if not masked and any(n != width for n in lengths):
            raise InferenceInputError(
                f"the texts tokenize to {sorted(set(lengths))} tokens and model {self.model!r} takes no "
                f"attention_mask{' and at least ' + str(width) + ' tokens' if width > max(lengths) else ''}: "
                "send texts of one length per request"
            )
        rows = len(encodings)
        ids = np.full((rows, width), self.pad_id, np.int64)
        mask = np.zeros((rows, width), np.int64)
        types = np.zeros((rows, width), np.int64)
        for r, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[r, :n] = enc.ids
            mask[r, :n] = 1
            types[r, :n] = enc.type_ids
        made = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        feeds = {n: made[n].astype(to_numpy(self.specs[n].dtype), copy=False) for n in self.token_inputs}
        for name in ("input_ids", "token_type_ids"):  # the mask is 0/1 by construction
            if name in feeds:
                try:
                    check_value_range(self.specs[name], feeds[name])
                except InferenceInputError as e:
                    raise InferenceInputError(f"the tokenizer of model {self.model!r} made {e}") from None
        return feeds

    # -- the answer -------------------------------------------------------------------------------

    def outputs(
        self,
        feeds: Mapping[str, np.ndarray],
        results: Mapping[str, np.ndarray],
        wanted: list[str] | None,
        *,
        is_text: bool,
    ) -> dict[str, np.ndarray]:
        """The outputs to answer, in order: ``wanted`` (names), else the task's defaults for a text
        request and the model's outputs for a tensor request."""
        names = wanted if wanted is not None else (self.defaults if is_text else list(results))
        added: dict[str, np.ndarray] | None = None
        out = {}
        for name in names:
            if name in results:
                out[name] = results[name]
            else:
                if added is None:
                    added = self._added(feeds, results)
                out[name] = added[name]
        return out

    def _mask(self, feeds: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        mask = feeds.get("attention_mask")
        return np.ones(shape, bool) if mask is None else np.asarray(mask) != 0

    def _label(self, index: int) -> str:
        return self.id2label.get(str(index), str(index))

    def _added(
        self, feeds: Mapping[str, np.ndarray], results: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        assert self.source is not None
        src = np.asarray(results[self.source]).astype(np.float32, copy=False)
        if self.task == "feature-extraction":
            return {"embedding": self._embedding(src, self._mask(feeds, src.shape[:2]))}
        fn = self.score_function
        probs = _sigmoid(src) if fn == "sigmoid" else src if fn == "none" else _softmax(src)
        best = probs.argmax(axis=-1)
        score = np.take_along_axis(probs, best[..., None], axis=-1)[..., 0].astype(np.float32)
        labels = np.array([self._label(int(i)) for i in best.reshape(-1)], dtype=object).reshape(best.shape)
        if self.task == "text-classification":
            added = {"label": labels, "score": score}
            if self.multi_label:
                added["scores"] = np.ascontiguousarray(probs, dtype=np.float32)
            return added
        mask = self._mask(feeds, best.shape)
        vocab = self.codec.tokenizer
        ids = np.asarray(feeds["input_ids"])
        tokens = np.array([vocab.id_to_token(int(i)) or "" for i in ids.reshape(-1)], dtype=object)
        tokens = tokens.reshape(ids.shape)
        labels[~mask] = ""
        tokens[~mask] = ""
        return {"labels": labels, "scores": np.where(mask, score, np.float32(0)), "tokens": tokens}

    def _embedding(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.pooling == "cls":
            emb = hidden[:, 0]
        elif self.pooling == "max":
            emb = np.where(mask[..., None], hidden, -np.inf).max(axis=1)
        else:
            weights = mask[..., None].astype(np.float32)
            emb = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        if self.normalize:
            emb = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
        return np.ascontiguousarray(emb, dtype=np.float32)
