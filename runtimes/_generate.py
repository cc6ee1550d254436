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

Sampling (:mod:`torchport.runtimes._sampling`) follows Hugging Face ``generate``; encoder-decoders
run in :class:`~torchport.runtimes._seq2seq_batch.Seq2SeqBatch` (re-exported here). Position ids
are ``cumsum(attention_mask) - 1`` as ``generate`` makes them, so left-padded batches give the tokens
each prompt gives alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from torchport.runtimes._errors import InferenceInputError, UsageError
from torchport.runtimes._logits import LogitsRules
from torchport.runtimes._row_batch import RowBatch
from torchport.runtimes._sampling import (
    GenerationResult,
    GenRequest,
    SamplingParams,
    pick_token,
)
from torchport.runtimes._seq2seq_batch import Seq2SeqBatch, Seq2SeqSpec, is_seq2seq

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
    #: the attention applies the rotary embedding itself (``extra.generation.rotary: attention``): a
    #: batched prompt must be unpadded, so prompts of different lengths run apart
    unpadded_prompts: bool = False

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
            unpadded_prompts=gen.get("rotary") == "attention",
        )


class DecodeBatch(RowBatch):
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

    spec: DecoderSpec

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
        for r in rows:  # the row's logits processors (runtimes._logits), made once
            if r.rules is None:
                r.rules = LogitsRules(eos_token_ids=self.spec.eos_token_ids).with_request(r.params)
        greedy_all = all(not r.params.do_sample and not (r.rules and r.rules.active) for r in rows)
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

        A decoder whose attention rotates (``spec.unpadded_prompts``) runs each length's prompts
        apart, unpadded; the rows then join in the order given, left-padded as usual.

        Returns the first token of each new sequence (``None`` where it stopped at once).

        Raises:
            InferenceInputError: a prompt the model cannot take, or more rows than the exported batch range.
        """
        if not seqs:
            return []
        self._admit(seqs)
        lengths = sorted({len(s.prompt) for s in seqs})
        if self.spec.unpadded_prompts and len(lengths) > 1:
            return self._add_unpadded(list(seqs), lengths)
        mask, present, first = self._prompt(seqs)
        self._merge(list(seqs), mask, present)
        return first

    def _prompt(self, seqs: Sequence[GenRequest]) -> tuple[np.ndarray, list[Any], list[int | None]]:
        """One prompt run of ``seqs`` left-padded together: (mask, presents, first tokens)."""
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
        return mask, present, self._sample(logits, seqs)

    def _add_unpadded(self, seqs: list[GenRequest], lengths: list[int]) -> list[int | None]:
        """:meth:`add` for prompts of several lengths on a decoder that takes them unpadded only: one
        run per length, then one cache of the rows in the order given (left-padded to the longest)."""
        first: list[int | None] = [None] * len(seqs)
        parts: list[tuple[list[Any], Any, int, int]] = [([], 0, 0, 0)] * len(seqs)
        for n in lengths:
            group = [i for i, s in enumerate(seqs) if len(s.prompt) == n]
            _, present, tokens = self._prompt([seqs[i] for i in group])
            for row, (i, token) in enumerate(zip(group, tokens, strict=True)):
                first[i], parts[i] = token, (present, [row], 0, n)
        width = lengths[-1]
        mask = np.zeros((len(seqs), width), np.int64)
        for i, s in enumerate(seqs):
            mask[i, width - len(s.prompt) :] = 1
        self._merge(seqs, mask, self._layout(parts, width, self._room(seqs)))
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
