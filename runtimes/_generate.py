"""Text generation over ONNX Runtime in numpy (no torch), for packages exported with ``--task text-generation``.

The decoder takes ``input_ids``, ``attention_mask``, ``position_ids`` (when it uses them) and
``past_key_values.<i>.key/value`` and returns ``logits`` and ``present.<i>.key/value`` (see
``torchport.exporters._decoder_export``). :class:`DecodeBatch` keeps the cache between steps as
ONNX Runtime values bound with IOBinding, never copied out to numpy and back: for a fused-attention
package one pre-allocated buffer per layer's keys and values, bound as both past and present, which
each step writes its new positions into; otherwise each step's presents become the next step's pasts.
Rows join a running batch (their prompt is run on its own, then their cache is left-padded to the
batch's length) and leave it at step boundaries; that is what the server's continuous batching uses,
and :class:`Generator` runs one batch to the end.

Sampling follows Hugging Face ``generate``: repetition penalty, then temperature, top-k and top-p on
the logits, then argmax (greedy) or a draw from a seeded ``numpy`` generator per request. Position ids
are ``cumsum(attention_mask) - 1`` as ``generate`` makes them, so left-padded batches give the tokens
each prompt gives alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from torchport.runtimes._errors import InferenceInputError, UsageError

__all__ = [
    "DecodeBatch",
    "DecoderSpec",
    "GenerationResult",
    "Generator",
    "SamplingParams",
    "GenRequest",
    "Seq2SeqBatch",
    "Seq2SeqSpec",
    "decode_batch",
]

#: the most new tokens one request may ask for (beyond it the request is refused)
MAX_NEW_TOKENS = 4096


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token, and when to stop.

    Attributes:
        max_new_tokens: tokens to generate at most (1..4096, and within the model's positions).
        do_sample: draw from the distribution; ``False`` is greedy (argmax).
        temperature / top_k / top_p: the distribution when sampling (``top_k=0``, ``top_p=1``: off).
        seed: seed of this request's random generator (same seed, same tokens).
        stop_token_ids: ids that end the sequence (the token is not part of the output); ``None``:
            the model's EOS ids.
        ignore_eos: keep going past EOS (only ``stop_token_ids`` given explicitly stop).
        repetition_penalty: > 1 makes tokens already in the prompt or output less likely (as
            Hugging Face's ``repetition_penalty``).

    Example:
        >>> SamplingParams(max_new_tokens=8, do_sample=True, temperature=0.7, top_p=0.9, seed=1).check()
    """

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] | None = None
    ignore_eos: bool = False
    repetition_penalty: float = 1.0

    def check(self) -> None:
        """Raise :class:`InferenceInputError` naming the first bad field."""
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise InferenceInputError(f"max_tokens must be an integer, got {self.max_new_tokens!r}")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise InferenceInputError(
                f"max_tokens must be between 1 and {MAX_NEW_TOKENS}, got {self.max_new_tokens}"
            )
        if (
            not (isinstance(self.temperature, int | float) and math.isfinite(self.temperature))
            or self.temperature < 0
        ):
            raise InferenceInputError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if self.do_sample and self.temperature == 0:
            raise InferenceInputError("temperature 0 means greedy decoding; do not combine it with sampling")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise InferenceInputError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if not isinstance(self.top_p, int | float) or not 0 < self.top_p <= 1:
            raise InferenceInputError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.repetition_penalty, int | float) or not self.repetition_penalty > 0:
            raise InferenceInputError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0
        ):
            raise InferenceInputError(f"seed must be an integer >= 0, got {self.seed!r}")


def is_text_generation(manifest: Any) -> bool:
    """Whether the package's manifest was exported with ``--task text-generation``."""
    generation = (manifest.extra or {}).get("generation")
    return isinstance(generation, dict) and generation.get("task") == "text-generation"


@dataclass(frozen=True)
class DecoderSpec:
    """The decoder signature a package's manifest records (``extra["generation"]``)."""

    input_names: tuple[str, ...]
    past_names: tuple[str, ...]
    present_names: tuple[str, ...]
    kv_heads: tuple[int, ...]
    head_dims: tuple[int, ...]
    kv_dtype: str
    position_ids: bool
    max_positions: int
    max_batch: int
    max_seq: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    #: the decoder takes a past longer than the mask (a pre-allocated buffer) and writes into it in place
    shared_buffer: bool = False

    @classmethod
    def from_manifest(cls, manifest: Any) -> DecoderSpec:
        """Raises :class:`UsageError` for a package that was not exported for text generation."""
        if manifest is None or not is_text_generation(manifest):
            name = manifest.name if manifest is not None else "this model"
            raise UsageError(
                f"{name!r} is not a text-generation package (export the causal LM with --task text-generation)"
            )
        gen = manifest.extra["generation"]
        n = int(gen["num_layers"])
        past = tuple(f"past_key_values.{i}.{kv}" for i in range(n) for kv in ("key", "value"))
        eos = tuple(int(t) for t in gen.get("eos_token_id") or [])
        pad = (gen.get("pad_token_id") or []) or list(eos) or [0]
        dims = manifest.dynamic_dims
        return cls(
            input_names=tuple(s.name for s in manifest.inputs),
            past_names=past,
            present_names=tuple(p.replace("past_key_values", "present") for p in past),
            kv_heads=tuple(int(h) for h in gen["kv_heads"] for _ in range(2)),
            head_dims=tuple(int(d) for d in gen["head_dims"] for _ in range(2)),
            kv_dtype=str(gen.get("kv_dtype", "float32")),
            position_ids=bool(gen.get("position_ids")),
            max_positions=int(gen.get("max_positions") or dims["seq"].max),
            max_batch=int(dims["batch"].max) if "batch" in dims else 1,
            max_seq=int(dims["seq"].max) if "seq" in dims else int(gen.get("max_positions", 1)),
            eos_token_ids=eos,
            pad_token_id=int(pad[0]),
            shared_buffer=gen.get("kv_cache") == "shared-buffer",
        )


@dataclass
class GenRequest:
    """One sequence being generated (a row of a :class:`DecodeBatch`).

    Attributes:
        prompt: the prompt token ids.
        params: its sampling parameters.
        tokens: the generated ids so far (stop tokens not included).
        finish_reason: ``None`` while running, then ``"stop"`` (EOS or a stop token) or ``"length"``.
        tag: anything the caller wants to find the sequence by (the server keeps its stream there).
    """

    prompt: list[int]
    params: SamplingParams
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    tag: Any = None
    #: encoder-decoders: this row's encoder feeds (e.g. ``{"input_features": [80, 3000]}``) instead
    #: of the tokenized ``prompt``; and decoder ids forced after the start token (Whisper's
    #: language/task tokens), not part of ``tokens``
    source: dict[str, Any] | None = None
    forced: list[int] = field(default_factory=list)
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    _seen: np.ndarray | None = None
    _stops: set[int] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def stop_ids(self, spec: DecoderSpec) -> set[int]:
        if self._stops is None:
            ids = set(self.params.stop_token_ids or ())
            if not self.params.ignore_eos and self.params.stop_token_ids is None:
                ids |= set(spec.eos_token_ids)
            self._stops = ids
        return self._stops


@dataclass
class GenerationResult:
    """What :meth:`Generator.generate` returns.

    Attributes:
        tokens: the generated ids of each prompt (without the prompt, without the stop token).
        finish_reasons: ``"stop"`` or ``"length"`` per prompt.
        text: the decoded text per prompt when the prompts were text.
    """

    tokens: list[list[int]]
    finish_reasons: list[str]
    text: list[str] | None = None


def _last_logits_processed(logits: np.ndarray, seq: GenRequest) -> np.ndarray:
    """Repetition penalty, temperature, top-k and top-p (Hugging Face's order) on one row of logits."""
    p = seq.params
    scores = logits.astype(np.float32, copy=True)
    if p.repetition_penalty != 1.0:
        seen = np.unique(np.asarray(seq.prompt + seq.tokens, dtype=np.int64))
        seen = seen[(seen >= 0) & (seen < scores.shape[-1])]
        vals = scores[seen]
        scores[seen] = np.where(vals < 0, vals * p.repetition_penalty, vals / p.repetition_penalty)
    if not p.do_sample:
        return scores
    if p.temperature != 1.0:
        scores = scores / np.float32(p.temperature)
    if p.top_k and p.top_k < scores.shape[-1]:
        kth = np.partition(scores, -p.top_k)[-p.top_k]
        scores = np.where(scores < kth, -np.inf, scores)
    if p.top_p < 1.0:
        order = np.argsort(scores, kind="stable")  # ascending, as Hugging Face's TopPLogitsWarper
        probs = _softmax(scores[order])
        cum = np.cumsum(probs)
        remove = cum <= (1 - p.top_p)
        remove[-1] = False  # keep at least one token
        scores = scores.copy()
        scores[order[remove]] = -np.inf
    return scores


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = np.max(x)
    e = np.exp(x - m)
    return e / e.sum()


def pick_token(logits: np.ndarray, seq: GenRequest) -> int:
    """The next token of ``seq`` from its last-position logits."""
    scores = _last_logits_processed(logits, seq)
    if not seq.params.do_sample:
        return int(np.argmax(scores))
    probs = _softmax(scores)
    return int(seq.rng.choice(probs.shape[-1], p=probs))


class DecodeBatch:
    """Sequences decoded together, their key/value cache kept in ONNX Runtime between steps.

    For a decoder exported with the shared-buffer cache (``extra.generation.kv_cache``), each layer's
    keys and values live in one pre-allocated buffer [rows, kv_heads, capacity, head_dim] bound as both
    the past input and the present output: each step writes its new keys/values into it in place, so
    no step copies the cache. Other decoders get each step's presents (past + new) as the next
    step's pasts. Either way the cache is copied only when rows join or leave, or the buffer grows.

    Example:
        >>> batch = DecodeBatch(session)                                 # doctest: +SKIP
        >>> batch.add([GenRequest([1, 5, 9], SamplingParams(max_new_tokens=4))])
        >>> while batch.rows:
        ...     batch.step(); batch.drop_finished()
    """

    def __init__(self, session: Any) -> None:
        import onnxruntime as ort

        self._ort = ort
        self.session = session
        self.spec = DecoderSpec.from_manifest(session.manifest)
        self._sess = session._sess
        self._device = "cuda" if getattr(session, "_use_iobinding", False) else "cpu"
        self._shared = self.spec.shared_buffer
        self.rows: list[GenRequest] = []
        #: [rows, width]: 1 where a row has a token; the cache holds ``width`` positions (left-padded)
        self.mask = np.zeros((0, 0), np.int64)
        #: per past input: [rows, kv_heads, length, head_dim], length = width (or the buffer's capacity)
        self.past: list[Any] = []
        self._np_dtype = np.dtype(self.spec.kv_dtype)
        #: (caches, binding) of the last shared-buffer run, reused while the caches stay the same
        self._bound: tuple[Any, Any] | None = None
        self._logits_type: tuple[Any, Any] | None = None

    # -- checks -------------------------------------------------------------------------------------

    def check(self, seq: GenRequest) -> None:
        """Refuse a prompt the model cannot take (empty, beyond the exported range, bad ids)."""
        spec = self.spec
        seq.params.check()
        n = len(seq.prompt)
        if n == 0:
            raise InferenceInputError("the prompt is empty")
        if n > spec.max_seq:
            raise InferenceInputError(f"the prompt has {n} tokens; this model takes at most {spec.max_seq}")
        if n + seq.params.max_new_tokens > spec.max_positions:
            raise InferenceInputError(
                f"prompt ({n} tokens) + max_tokens ({seq.params.max_new_tokens}) exceeds the model's "
                f"{spec.max_positions} positions; ask for at most {max(spec.max_positions - n, 0)} tokens"
            )

    # -- running ------------------------------------------------------------------------------------

    def _run(
        self,
        input_ids: np.ndarray,
        mask: np.ndarray,
        past: Sequence[Any],
        positions: np.ndarray | None = None,
    ) -> tuple[np.ndarray, list[Any]]:
        reuse = self._shared and self._bound is not None and self._bound[0] is past
        # the logits land in a numpy array of ours (no output objects to fetch); the slot is the first
        # bound, as outputs come back in the order bound
        logits = self._logits_array(input_ids.shape)
        if reuse and self._bound is not None:  # the same buffers as the last step: only small inputs change
            binding = self._bound[1]
        else:
            binding = self._sess.io_binding()
        if logits is None:
            binding.bind_output("logits", "cpu")
        else:
            binding.bind_output(
                "logits",
                "cpu",
                element_type=logits.dtype,
                shape=list(logits.shape),
                buffer_ptr=logits.ctypes.data,
            )
        if not reuse:
            for name, value in zip(self.spec.past_names, past, strict=True):
                binding.bind_ortvalue_input(name, value)
            for name, value in zip(self.spec.present_names, past, strict=True):
                if self._shared:  # the same buffer: the op writes the new positions into it
                    binding.bind_ortvalue_output(name, value)
                else:
                    binding.bind_output(name, self._device)
            self._bound = (past, binding) if self._shared else None
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, np.int64))
        binding.bind_cpu_input("attention_mask", np.ascontiguousarray(mask, np.int64))
        if self.spec.position_ids:
            if positions is None:  # as generate makes them: real tokens counted, padding at 1
                positions = np.cumsum(mask, axis=-1) - 1
                positions = np.where(mask == 0, 1, positions)[:, -input_ids.shape[1] :]
            binding.bind_cpu_input("position_ids", np.ascontiguousarray(positions, np.int64))
        self._sess.run_with_iobinding(binding)
        if logits is not None and self._shared:
            return logits[:, -1, :], cast(list[Any], past)  # the same object: the next step's reuse test
        outs = binding.get_outputs()
        last = (logits if logits is not None else outs[0].numpy())[:, -1, :]
        return last, cast(list[Any], past) if self._shared else list(outs[1:])

    def _logits_array(self, ids_shape: tuple[int, ...]) -> np.ndarray | None:
        """An array for the logits of a step of ``ids_shape`` (``None``: the vocabulary size or type is
        not in the graph; ONNX Runtime allocates them)."""
        if self._logits_type is None:
            out = self._sess.get_outputs()[0]
            dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16}.get(out.type)
            vocab = out.shape[-1] if out.shape else None
            self._logits_type = (
                (dtype, vocab) if dtype is not None and isinstance(vocab, int) else (None, None)
            )
        dtype, vocab = self._logits_type
        return None if dtype is None or vocab is None else np.empty((*ids_shape, vocab), dtype)

    def _ortvalue(self, arr: np.ndarray) -> Any:
        return self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), self._device)

    def _room(self, rows: Sequence[GenRequest]) -> int:
        """Positions the cache still needs for ``rows`` (their remaining tokens; 0 without a shared buffer)."""
        if not self._shared:
            return 0
        return max([r.params.max_new_tokens - len(r.tokens) for r in rows if not r.finished] + [1])

    def _layout(self, parts: Sequence[tuple[list[Any], Any, int, int]], width: int, room: int) -> list[Any]:
        """New caches from ``parts`` — (caches, rows, first, end): those rows' positions ``first:end`` —
        stacked by rows and right-aligned at ``width`` (left padding), with ``room`` free positions after."""
        out = []
        for j, (heads, dim) in enumerate(zip(self.spec.kv_heads, self.spec.head_dims, strict=True)):
            arrays = [(caches[j].numpy()[rows], first, end) for caches, rows, first, end in parts]
            buf = np.zeros((sum(a.shape[0] for a, _, _ in arrays), heads, width + room, dim), self._np_dtype)
            r = 0
            for a, first, end in arrays:
                buf[r : r + a.shape[0], :, width - (end - first) : width] = a[:, :, first:end]
                r += a.shape[0]
            out.append(self._ortvalue(buf))
        return out

    def _sample(self, logits: np.ndarray, rows: Sequence[GenRequest]) -> list[int | None]:
        """Pick one token per row; finished rows get ``None``."""
        out: list[int | None] = []
        greedy_all = all(not r.params.do_sample and r.params.repetition_penalty == 1.0 for r in rows)
        argmax = np.argmax(logits, axis=-1) if greedy_all else None
        for i, row in enumerate(rows):
            if row.finished:
                out.append(None)
                continue
            token = int(argmax[i]) if argmax is not None else pick_token(logits[i], row)
            if token in row.stop_ids(self.spec):
                row.finish_reason = "stop"
            else:
                row.tokens.append(token)
                if len(row.tokens) >= row.params.max_new_tokens:
                    row.finish_reason = "length"
            out.append(token if token not in row.stop_ids(self.spec) else None)
        return out

    def add(self, seqs: Sequence[GenRequest]) -> list[int | None]:
        """Run the prompts of ``seqs`` (left-padded together), pick their first tokens, join the batch.

        Returns the first token of each new sequence (``None`` where it stopped at once).

        Raises:
            InferenceInputError: a prompt the model cannot take, or more rows than the exported batch range.
        """
        if not seqs:
            return []
        for s in seqs:
            self.check(s)
            if s.params.seed is not None:
                s.rng = np.random.default_rng(s.params.seed)
        if len(self.rows) + len(seqs) > self.spec.max_batch:
            raise InferenceInputError(
                f"{len(self.rows) + len(seqs)} sequences exceed the model's batch range (at most {self.spec.max_batch})"
            )
        longest = max(len(s.prompt) for s in seqs)
        ids = np.full((len(seqs), longest), self.spec.pad_token_id, np.int64)
        mask = np.zeros((len(seqs), longest), np.int64)
        for i, s in enumerate(seqs):
            ids[i, longest - len(s.prompt) :] = s.prompt
            mask[i, longest - len(s.prompt) :] = 1
        # an empty past, or (shared buffer) one with room for the prompt and every new token
        length = longest + self._room(seqs) if self._shared else 0
        empty = [
            self._ortvalue(np.zeros((len(seqs), h, length, d), self._np_dtype))
            for h, d in zip(self.spec.kv_heads, self.spec.head_dims, strict=True)
        ]
        logits, present = self._run(ids, mask, empty)
        first = self._sample(logits, seqs)
        self._merge(list(seqs), mask, present)
        return first

    def _merge(self, seqs: list[GenRequest], mask: np.ndarray, present: list[Any]) -> None:
        if not self.rows:
            self.rows, self.mask, self.past = seqs, mask, present
            return
        old, new = self.mask.shape[1], mask.shape[1]
        width = max(old, new)

        def left_pad(m: np.ndarray) -> np.ndarray:
            return np.pad(m, [(0, 0), (width - m.shape[1], 0)])

        self.mask = np.concatenate([left_pad(self.mask), left_pad(mask)], axis=0)
        self.rows = self.rows + seqs
        everything = slice(None)
        self.past = self._layout(
            [(self.past, everything, 0, old), (present, everything, 0, new)], width, self._room(self.rows)
        )

    def step(self) -> list[int | None]:
        """One decode step for every row: feed each row's last token, pick the next.

        Returns the new token of each row (``None`` for rows that are finished or stopped now).
        """
        if not self.rows:
            return []
        last = [
            (r.tokens[-1] if r.tokens else self.spec.pad_token_id)
            if not r.finished
            else self.spec.pad_token_id
            for r in self.rows
        ]
        width = self.mask.shape[1]
        if self._shared and self.past[0].shape()[2] <= width:  # the buffer is full: grow it (one copy)
            self.past = self._layout([(self.past, slice(None), 0, width)], width, self._room(self.rows))
        positions = self.mask.sum(axis=1, keepdims=True)  # each row's real tokens: the new one's position
        self.mask = np.concatenate([self.mask, np.ones((len(self.rows), 1), np.int64)], axis=1)
        logits, self.past = self._run(np.asarray(last, np.int64)[:, None], self.mask, self.past, positions)
        return self._sample(logits, self.rows)

    def drop(self, keep: Sequence[bool]) -> list[GenRequest]:
        """Keep the rows where ``keep`` is true; return the dropped ones. The cache is sliced (one copy)
        and columns no remaining row attends to are cut from the left."""
        keep_idx = [i for i, k in enumerate(keep) if k]
        dropped = [r for i, r in enumerate(self.rows) if not keep[i]]
        if not dropped:
            return []
        if not keep_idx:
            self.rows, self.mask, self.past = [], np.zeros((0, 0), np.int64), []
            return dropped
        mask = self.mask[keep_idx]
        used = np.flatnonzero(mask.any(axis=0))
        start = int(used[0]) if used.size else 0
        width = self.mask.shape[1]
        self.mask = np.ascontiguousarray(mask[:, start:])
        self.rows = [self.rows[i] for i in keep_idx]
        self.past = self._layout([(self.past, keep_idx, start, width)], width - start, self._room(self.rows))
        return dropped

    def drop_finished(self) -> list[GenRequest]:
        """Remove finished rows (see :meth:`drop`); return them."""
        return self.drop([not r.finished for r in self.rows])

    @property
    def free_slots(self) -> int:
        return self.spec.max_batch - len(self.rows)

    def fits(self, seq: GenRequest) -> bool:
        """Whether ``seq`` can join now without the batch outgrowing the model's positions."""
        need = max(self.mask.shape[1] if self.rows else 0, len(seq.prompt))
        remaining = max(
            [r.params.max_new_tokens - len(r.tokens) for r in self.rows] + [seq.params.max_new_tokens]
        )
        return self.free_slots > 0 and need + remaining <= self.spec.max_positions


class Generator:
    """Generate from a text-generation package's :class:`~torchport.runtimes.Session`.

    Example:
        >>> gen = Generator(Session.from_package("out/llama"))          # doctest: +SKIP
        >>> gen.generate([[1, 5, 9]], SamplingParams(max_new_tokens=8)).tokens
        [[17, 4, 4, 30, 2, 9, 9, 11]]
        >>> gen.generate("Hello", max_new_tokens=8).text                 # with the package's tokenizer
    """

    def __init__(self, session: Any) -> None:
        self.session = session
        self.spec = generation_spec(session.manifest)
        self._codec: Any = False

    @property
    def codec(self) -> Any:
        """The package's :class:`~torchport.runtimes.TextCodec` (``None`` without a tokenizer)."""
        if self._codec is False:
            from torchport.runtimes._tokenizer import TextCodec

            package = getattr(self.session, "package", None)
            self._codec = TextCodec.from_package(package) if package is not None else None
        return self._codec

    def _prompts(self, prompts: Any) -> tuple[list[list[int]], bool]:
        if isinstance(prompts, str) or (
            isinstance(prompts, list | tuple) and prompts and all(isinstance(p, str) for p in prompts)
        ):
            if self.codec is None:
                raise UsageError(
                    f"{self.session.name!r} has no tokenizer in its package; pass token ids instead of text"
                )
            texts = [prompts] if isinstance(prompts, str) else list(prompts)
            return [self.codec.encode(t) for t in texts], True
        if isinstance(prompts, np.ndarray):
            prompts = prompts.tolist()
        if (
            isinstance(prompts, list | tuple)
            and prompts
            and all(isinstance(t, int | np.integer) for t in prompts)
        ):
            return [[int(t) for t in prompts]], False
        if (
            isinstance(prompts, list | tuple)
            and prompts
            and all(isinstance(p, list | tuple) for p in prompts)
        ):
            return [[int(t) for t in p] for p in prompts], False
        raise InferenceInputError(
            "prompts must be text, a list of texts, token ids, or a list of token-id lists"
        )

    def stream(
        self, prompts: Any, params: SamplingParams | None = None, **kwargs: Any
    ) -> Iterator[list[int | None]]:
        """Yield, step by step, the new token of each prompt (``None`` once a prompt has finished).

        Takes the same arguments as :meth:`generate`.
        """
        params = params or SamplingParams(**kwargs)
        ids, _ = self._prompts(prompts)
        seqs = [GenRequest(p, params) for p in ids]
        yield from self._stream(seqs)

    def _stream(self, seqs: list[GenRequest]) -> Iterator[list[int | None]]:
        batch = decode_batch(self.session)
        yield batch.add(seqs)
        while not all(s.finished for s in seqs):
            yield batch.step()

    def generate(self, prompts: Any, params: SamplingParams | None = None, **kwargs: Any) -> GenerationResult:
        """Generate for one or several prompts (different lengths are left-padded together).

        Args:
            prompts: text (needs the package's tokenizer), a list of texts, a list of token ids, or a
                list of token-id lists.
            params: a :class:`SamplingParams`; or its fields as keyword arguments
                (``max_new_tokens=64, do_sample=True, temperature=0.8, top_p=0.9, seed=0``).

        Raises:
            InferenceInputError: a bad parameter or a prompt beyond the model's range.
        """
        num_beams = int(kwargs.pop("num_beams", 1))
        length_penalty = float(kwargs.pop("length_penalty", 1.0))
        early_stopping = kwargs.pop("early_stopping", False)
        sources = kwargs.pop("sources", None)
        forced = list(kwargs.pop("forced", None) or [])
        params = params or SamplingParams(**kwargs)
        if sources is not None:  # encoder feeds per row (speech): no prompt to tokenize
            ids: list[list[int]] = [[] for _ in sources]
            is_text = False
        else:
            ids, is_text = self._prompts(prompts)
        seqs = [
            GenRequest(p, params, source=sources[i] if sources is not None else None, forced=forced)
            for i, p in enumerate(ids)
        ]
        if num_beams > 1:
            if not isinstance(self.spec, Seq2SeqSpec):
                raise UsageError("beam search (num_beams > 1) runs on encoder-decoder packages")
            batch = Seq2SeqBatch(self.session)
            for s in seqs:
                batch.beam_search(s, num_beams, length_penalty, early_stopping)
        else:
            for _ in self._stream(seqs):
                pass
        if is_text and isinstance(self.spec, Seq2SeqSpec):
            result = GenerationResult([s.tokens for s in seqs], [s.finish_reason or "length" for s in seqs])
            result.text = [self.codec.decode(s.tokens) for s in seqs]
            return result
        result = GenerationResult([s.tokens for s in seqs], [s.finish_reason or "length" for s in seqs])
        if is_text:
            result.text = [self.codec.decode(s.tokens) for s in seqs]
        return result


# --------------------------------------------------------------------------- encoder-decoders


def is_seq2seq(manifest: Any) -> bool:
    """Whether the package holds an encoder-decoder exported for generation (text2text, speech)."""
    generation = (manifest.extra or {}).get("generation") if manifest is not None else None
    return isinstance(generation, dict) and generation.get("architecture") == "encoder-decoder"


@dataclass(frozen=True)
class Seq2SeqSpec:
    """The encoder and decoder an encoder-decoder package's manifest records (``extra["generation"]``)."""

    num_layers: int
    kv_heads: tuple[int, ...]
    head_dims: tuple[int, ...]
    kv_dtype: str
    audio: bool
    max_positions: int
    max_seq: int  #: the longest source (tokens; speech: the encoder's fixed length)
    max_batch: int
    decoder_start_token_id: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    forced_bos_token_id: int | None
    forced_eos_token_id: int | None
    suppress_tokens: tuple[int, ...]
    begin_suppress_tokens: tuple[int, ...]
    encoder_files: dict[str, str]
    past_names: tuple[str, ...]
    cross_names: tuple[str, ...]

    @classmethod
    def from_manifest(cls, manifest: Any) -> Seq2SeqSpec:
        """Raises :class:`UsageError` for a package that holds no encoder-decoder, or whose part files
        are not all listed (and so hash-verified) in its manifest."""
        if not is_seq2seq(manifest):
            name = manifest.name if manifest is not None else "this model"
            raise UsageError(
                f"{name!r} is not an encoder-decoder package (export with --task text2text-generation)"
            )
        gen = manifest.extra["generation"]
        parts = gen.get("parts") or {}
        files = {}
        for part in ("encoder", "decoder"):
            for variant, rec in (parts.get(part, {}).get("variants") or {}).items():
                for file in [rec.get("file"), *(rec.get("data_files") or [])]:
                    if file not in manifest.files:
                        raise UsageError(
                            f"{manifest.name!r}: {part} file {file!r} is not listed in the manifest's files"
                        )
                if part == "encoder":
                    files[variant] = rec["file"]
        if not files:
            raise UsageError(
                f"{manifest.name!r}: the manifest names no encoder file (extra.generation.parts)"
            )
        n = int(gen["num_layers"])
        eos = tuple(int(t) for t in gen.get("eos_token_id") or [])
        pad = (gen.get("pad_token_id") or []) or list(eos) or [0]
        dims = manifest.dynamic_dims

        def opt(key: str) -> int | None:
            value = gen.get(key)
            return int(value) if isinstance(value, int) and not isinstance(value, bool) else None

        return cls(
            num_layers=n,
            kv_heads=tuple(int(h) for h in gen["heads"] for _ in range(2)),
            head_dims=tuple(int(d) for d in gen["head_dims"] for _ in range(2)),
            kv_dtype=str(gen.get("kv_dtype", "float32")),
            audio=gen.get("source") == "input_features",
            max_positions=int(gen.get("max_positions") or dims["past_seq"].max + 1),
            max_seq=int(gen.get("max_source") or 0),
            max_batch=int(dims["batch"].max) if "batch" in dims else 1,
            decoder_start_token_id=int(gen.get("decoder_start_token_id") or 0),
            eos_token_ids=eos,
            pad_token_id=int(pad[0]),
            forced_bos_token_id=opt("forced_bos_token_id"),
            forced_eos_token_id=opt("forced_eos_token_id"),
            suppress_tokens=tuple(int(t) for t in gen.get("suppress_tokens") or []),
            begin_suppress_tokens=tuple(int(t) for t in gen.get("begin_suppress_tokens") or []),
            encoder_files=files,
            past_names=tuple(f"past_key_values.{i}.{kv}" for i in range(n) for kv in ("key", "value")),
            cross_names=tuple(f"cross.{i}.{kv}" for i in range(n) for kv in ("key", "value")),
        )


def _encoder_session(session: Any, spec: Seq2SeqSpec) -> Any:
    """The encoder's session, in the decoder session's variant and providers."""
    package = session.package
    if package is None:
        raise UsageError("an encoder-decoder runs from its package (Session.from_package)")
    file = spec.encoder_files.get(session.variant) or spec.encoder_files.get("fp32")
    if file is None:
        raise UsageError(f"{session.name!r} has no encoder file for variant {session.variant!r}")
    # the decoder session's own class (runtimes' Session): no import of _session, which imports this
    return type(session)(package.file(file), None, providers=session.providers, device_id=session.device_id)


def _processed(spec: Seq2SeqSpec, logits: np.ndarray, row: GenRequest, step: int) -> np.ndarray:
    """The model's own logits processors (suppressed, begin-suppressed, forced BOS/EOS), as
    ``generate`` applies them from the generation config. ``step``: tokens generated so far."""
    if not (
        spec.suppress_tokens
        or spec.begin_suppress_tokens
        or spec.forced_bos_token_id is not None
        or spec.forced_eos_token_id is not None
    ):
        return logits
    logits = logits.astype(np.float32, copy=True)
    if spec.suppress_tokens:
        logits[list(spec.suppress_tokens)] = -np.inf
    if step == 0 and spec.begin_suppress_tokens:
        logits[list(spec.begin_suppress_tokens)] = -np.inf
    forced = None
    if step == 0 and not row.forced and spec.forced_bos_token_id is not None:
        forced = spec.forced_bos_token_id
    elif spec.forced_eos_token_id is not None and step == row.params.max_new_tokens - 1:
        forced = spec.forced_eos_token_id
    if forced is not None:
        logits[:] = -np.inf
        logits[forced] = 0
    return logits


@dataclass
class _Cohort:
    """Rows whose encoder ran together and whose decoders are at the same position."""

    rows: list[GenRequest]
    cross: list[np.ndarray]
    enc_mask: np.ndarray | None
    past: list[np.ndarray]


class Seq2SeqBatch:
    """:class:`DecodeBatch`'s counterpart for encoder-decoders: the encoder step, then decode steps.

    Rows that join together (:meth:`add`) run the encoder once (sources right-padded, the mask
    marking them) and form a cohort whose decoder positions move in step; every :meth:`step` runs
    each cohort's decoder once with its self-attention cache and the cross keys/values the encoder
    computed. The server's engine drives it exactly as a :class:`DecodeBatch` (rows join at step
    boundaries and leave when finished).
    """

    def __init__(self, session: Any) -> None:
        self.session = session
        self.spec = Seq2SeqSpec.from_manifest(session.manifest)
        self.encoder = _encoder_session(session, self.spec)
        self._sess = session._sess
        self.cohorts: list[_Cohort] = []
        self._dtype = np.dtype(self.spec.kv_dtype)

    @property
    def rows(self) -> list[GenRequest]:
        return [r for c in self.cohorts for r in c.rows]

    def check(self, seq: GenRequest) -> None:
        """Refuse a source the model cannot take (empty, longer than the encoder's range, bad params)."""
        spec = self.spec
        seq.params.check()
        if seq.source is None:
            n = len(seq.prompt)
            if spec.audio:
                raise InferenceInputError("this model takes audio (input_features), not text")
            if n == 0:
                raise InferenceInputError("the text is empty")
            if n > spec.max_seq:
                raise InferenceInputError(
                    f"the text has {n} tokens; this model's encoder takes at most {spec.max_seq}"
                )
        prefix = 1 + len(seq.forced)
        if prefix + seq.params.max_new_tokens > spec.max_positions:
            raise InferenceInputError(
                f"max_tokens ({seq.params.max_new_tokens}) exceeds the decoder's {spec.max_positions} positions; "
                f"ask for at most {max(spec.max_positions - prefix, 0)} tokens"
            )

    def _encode(self, seqs: Sequence[GenRequest]) -> tuple[list[np.ndarray], np.ndarray | None]:
        if self.spec.audio or seqs[0].source is not None:
            names = list(seqs[0].source or {})
            # every row of an encoder-fed batch carries its source
            feeds = {n: np.stack([np.asarray(s.source[n]) for s in seqs]) for n in names}  # type: ignore[index]
            mask = None
        else:
            longest = max(len(s.prompt) for s in seqs)
            ids = np.full((len(seqs), longest), self.spec.pad_token_id, np.int64)
            mask = np.zeros((len(seqs), longest), np.int64)
            for i, s in enumerate(seqs):
                ids[i, : len(s.prompt)] = s.prompt
                mask[i, : len(s.prompt)] = 1
            feeds = {"input_ids": ids, "attention_mask": mask}
        out = self.encoder.run(feeds, validate=False)
        return [out[n] for n in self.spec.cross_names], mask

    def _run(self, cohort: _Cohort, ids: np.ndarray) -> np.ndarray:
        feeds: dict[str, np.ndarray] = {"decoder_input_ids": ids}
        if cohort.enc_mask is not None:
            feeds["encoder_attention_mask"] = cohort.enc_mask
        feeds.update(zip(self.spec.past_names, cohort.past, strict=True))
        feeds.update(zip(self.spec.cross_names, cohort.cross, strict=True))
        names = ["logits", *(n.replace("past_key_values", "present") for n in self.spec.past_names)]
        outs = self._sess.run(names, feeds)
        cohort.past = outs[1:]
        return outs[0][:, -1, :]

    def _sample(self, logits: np.ndarray, rows: Sequence[GenRequest]) -> list[int | None]:
        out: list[int | None] = []
        for i, row in enumerate(rows):
            if row.finished:
                out.append(None)
                continue
            scores = _processed(self.spec, logits[i], row, len(row.tokens))
            token = pick_token(scores, row)
            if token in row.stop_ids(self.spec):  # type: ignore[arg-type]
                row.finish_reason = "stop"
                out.append(None)
                continue
            row.tokens.append(token)
            if len(row.tokens) >= row.params.max_new_tokens:
                row.finish_reason = "length"
            out.append(token)
        return out

    def first_logits(self, sources: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
        """The raw logits ``[rows, vocab]`` of one decoder step from the start token alone for the
        encoder feeds ``sources`` (no processors; nothing joins the batch): Whisper's language
        detection, as Hugging Face's ``detect_language``."""
        rows = [GenRequest([], SamplingParams(max_new_tokens=1), source=dict(s)) for s in sources]
        cross, mask = self._encode(rows)
        past = [
            np.zeros((len(rows), h, 0, d), self._dtype)
            for h, d in zip(self.spec.kv_heads, self.spec.head_dims, strict=True)
        ]
        start = np.full((len(rows), 1), self.spec.decoder_start_token_id, np.int64)
        return self._run(_Cohort(rows, cross, mask, past), start)

    def add(self, seqs: Sequence[GenRequest]) -> list[int | None]:
        """Run the encoder for ``seqs`` and their first decoder step; they join as one cohort
        (rows with different forced prefixes form cohorts of their own)."""
        if not seqs:
            return []
        for s in seqs:
            self.check(s)
            if s.params.seed is not None:
                s.rng = np.random.default_rng(s.params.seed)
        if len(self.rows) + len(seqs) > self.spec.max_batch:
            raise InferenceInputError(
                f"{len(self.rows) + len(seqs)} sequences exceed the model's batch range (at most {self.spec.max_batch})"
            )
        groups: dict[tuple[int, ...], list[GenRequest]] = {}
        for s in seqs:
            groups.setdefault(tuple(s.forced), []).append(s)
        first: dict[int, int | None] = {}
        for forced, group in groups.items():
            cross, mask = self._encode(group)
            past = [
                np.zeros((len(group), h, 0, d), self._dtype)
                for h, d in zip(self.spec.kv_heads, self.spec.head_dims, strict=True)
            ]
            cohort = _Cohort(list(group), cross, mask, past)
            prefix = np.asarray([[self.spec.decoder_start_token_id, *forced]] * len(group), np.int64)
            for s, t in zip(group, self._sample(self._run(cohort, prefix), group), strict=True):
                first[id(s)] = t
            self.cohorts.append(cohort)
        return [first[id(s)] for s in seqs]

    def step(self) -> list[int | None]:
        """One decoder step for every cohort; returns the new token of each row (in :attr:`rows` order)."""
        out: list[int | None] = []
        for cohort in self.cohorts:
            last = [
                r.tokens[-1] if r.tokens and not r.finished else self.spec.pad_token_id for r in cohort.rows
            ]
            logits = self._run(cohort, np.asarray(last, np.int64)[:, None])
            out += self._sample(logits, cohort.rows)
        return out

    def drop(self, keep: Sequence[bool]) -> list[GenRequest]:
        """Keep the rows where ``keep`` is true (in :attr:`rows` order); return the dropped ones."""
        dropped: list[GenRequest] = []
        at = 0
        cohorts = []
        for cohort in self.cohorts:
            flags = list(keep[at : at + len(cohort.rows)])
            at += len(cohort.rows)
            idx = [i for i, k in enumerate(flags) if k]
            dropped += [r for r, k in zip(cohort.rows, flags, strict=True) if not k]
            if not idx:
                continue
            if len(idx) < len(cohort.rows):
                cohort.rows = [cohort.rows[i] for i in idx]
                cohort.past = [p[idx] for p in cohort.past]
                cohort.cross = [c[idx] for c in cohort.cross]
                cohort.enc_mask = cohort.enc_mask[idx] if cohort.enc_mask is not None else None
            cohorts.append(cohort)
        self.cohorts = cohorts
        return dropped

    def drop_finished(self) -> list[GenRequest]:
        """Remove finished rows; return them."""
        return self.drop([not r.finished for r in self.rows])

    @property
    def free_slots(self) -> int:
        return self.spec.max_batch - len(self.rows)

    def fits(self, seq: GenRequest) -> bool:
        """Whether ``seq`` can join now (a free row: each cohort keeps its own positions)."""
        return self.free_slots > 0

    # -- beam search (Hugging Face's algorithm, per source) ----------------------------------------

    def beam_search(
        self, seq: GenRequest, num_beams: int, length_penalty: float = 1.0, early_stopping: bool | str = False
    ) -> None:
        """Beam search for one source as Hugging Face ``generate(num_beams=...)`` runs it (its
        ``_beam_search``: top ``2·num_beams`` continuations, finished hypotheses scored
        ``sum_logprobs / generated_len ** length_penalty``, the same early-stopping rules); the best
        hypothesis lands in ``seq.tokens``."""
        self.check(seq)
        spec = self.spec
        eos = set(spec.eos_token_ids)
        keep_k = max(2, 1 + len(eos)) * num_beams
        cross, mask = self._encode([seq])
        rep = np.zeros(num_beams, np.int64)
        prefix_ids = [spec.decoder_start_token_id, *seq.forced]
        cohort = _Cohort(
            [seq] * num_beams,
            [c[rep] for c in cross],
            mask[rep] if mask is not None else None,
            [
                np.zeros((num_beams, h, 0, d), self._dtype)
                for h, d in zip(spec.kv_heads, spec.head_dims, strict=True)
            ],
        )
        max_new = seq.params.max_new_tokens
        running = [list[int]() for _ in range(num_beams)]
        running_scores = np.full(num_beams, -1e9, np.float32)
        running_scores[0] = 0.0
        finished: list[tuple[float, list[int], bool]] = []  # (score, tokens, ended by eos)
        heuristic_ok = True
        logits = self._run(cohort, np.asarray([prefix_ids] * num_beams, np.int64))
        for step in range(max_new):
            logp = (
                np.stack([_processed(spec, _log_softmax(logits[b]), seq, step) for b in range(num_beams)])
                + running_scores[:, None]
            )
            flat = logp.reshape(-1)
            vocab = logits.shape[-1]
            top = np.argsort(-flat, kind="stable")[:keep_k]
            top_scores = flat[top]
            beams, tokens = top // vocab, top % vocab
            cand = [running[b] + [int(t)] for b, t in zip(beams, tokens, strict=True)]
            hits = np.array([(int(t) in eos) or (step + 1 >= max_new) for t in tokens])
            # finished: only the first num_beams candidates, scored with the length penalty
            all_full = len(finished) >= num_beams and all(True for _ in finished) and early_stopping is True
            for k in range(num_beams):
                if not hits[k] or all_full or not heuristic_ok:
                    continue
                score = float(top_scores[k]) / ((step + 1) ** length_penalty)
                finished.append((score, cand[k], int(tokens[k]) in eos))
            finished.sort(key=lambda f: -f[0])
            finished = finished[:num_beams]
            alive = np.where(hits, top_scores - 1e9, top_scores)
            order = np.argsort(-alive, kind="stable")[:num_beams]
            running = [cand[i] for i in order]
            running_scores = alive[order].astype(np.float32)
            beam_idx = beams[order]
            # the early-stop heuristic (cur_len now counts this step's token)
            if early_stopping == "never" and length_penalty > 0.0:
                best_len = max_new
            else:
                best_len = step + 1
            worst = min(f[0] for f in finished) if len(finished) >= num_beams else -1e9
            heuristic_ok = heuristic_ok and float(running_scores[0]) / (best_len**length_penalty) > worst
            done_all = len(finished) >= num_beams and early_stopping is True
            if not heuristic_ok or done_all or hits.all() or step + 1 >= max_new:
                break
            cohort.past = [p[beam_idx] for p in cohort.past]
            logits = self._run(cohort, np.asarray([[r[-1]] for r in running], np.int64))
        best = finished[0] if finished else (float(running_scores[0]), running[0], False)
        seq.tokens = [t for t in best[1] if t not in eos] if best[2] else list(best[1])
        seq.finish_reason = "stop" if best[2] else "length"


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    m = np.max(x)
    return (x - m - np.log(np.sum(np.exp(x - m)))).astype(np.float32)


def decode_batch(session: Any) -> DecodeBatch | Seq2SeqBatch:
    """The running batch for ``session``'s package: :class:`Seq2SeqBatch` for an encoder-decoder
    (an encoder step first), else :class:`DecodeBatch`."""
    if is_seq2seq(session.manifest):
        return Seq2SeqBatch(session)
    return DecodeBatch(session)


def generation_spec(manifest: Any) -> DecoderSpec | Seq2SeqSpec:
    """The generation signature of a package (raises :class:`UsageError` when it does not generate)."""
    if is_seq2seq(manifest):
        return Seq2SeqSpec.from_manifest(manifest)
    return DecoderSpec.from_manifest(manifest)
