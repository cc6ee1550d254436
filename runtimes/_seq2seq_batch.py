"""Encoder-decoder generation over ONNX Runtime in numpy (no torch): packages exported with
``--task text2text-generation`` or ``--task automatic-speech-recognition``.

The encoder graph turns a source (token ids and mask, or Whisper's log-mel features) into every
decoder layer's cross-attention keys/values once; the decoder graph then takes them as cache inputs
beside its own self-attention cache (see ``torchport.exporters._seq2seq_export``).
:class:`Seq2SeqBatch` is :class:`~torchport.runtimes._generate.DecodeBatch`'s counterpart: the
server's engine drives both the same way (rows join at step boundaries and leave when finished).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from torchport.runtimes._errors import InferenceInputError, UsageError
from torchport.runtimes._logits import LogitsRules, Timestamps, _log_softmax
from torchport.runtimes._row_batch import RowBatch
from torchport.runtimes._sampling import GenRequest, SamplingParams, pick_token

__all__ = ["Seq2SeqBatch", "Seq2SeqSpec", "is_seq2seq"]


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
    #: the generation config's settings a request defaults to (``no_repeat_ngram_size``,
    #: ``min_length``, ``repetition_penalty``, ``bad_words_ids``, ...: ``extra.generation.generation_config``)
    defaults: dict[str, Any] = field(default_factory=dict)
    #: Whisper's timestamp rules, for rows whose forced prompt leaves ``<|notimestamps|>`` out
    timestamps: Timestamps | None = None
    #: the decoder takes ``decoder_attention_mask`` (and ``decoder_position_ids``): rows at different
    #: positions and of different sources share one decoder run per step
    decoder_mask: bool = False
    decoder_positions: bool = False

    @property
    def rules(self) -> LogitsRules:
        """The model's own logits processors (suppressed, begin-suppressed, forced BOS/EOS tokens)."""
        return LogitsRules(
            eos_token_ids=self.eos_token_ids,
            suppress_tokens=self.suppress_tokens,
            begin_suppress_tokens=self.begin_suppress_tokens,
            forced_bos_token_id=self.forced_bos_token_id,
            forced_eos_token_id=self.forced_eos_token_id,
        )

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
            defaults=dict(gen.get("generation_config") or {}),
            timestamps=_timestamps(gen, eos),
            decoder_mask=bool(gen.get("decoder_mask")),
            decoder_positions=bool(gen.get("decoder_positions")),
        )


def _encoder_session(session: Any, spec: Seq2SeqSpec) -> Any:
    """The encoder's session, in the decoder session's variant, providers and thread counts; made
    once per decoder session (every batch and generate call reuses it: loading it each time cost
    ~0.3 s of a Whisper-tiny transcription)."""
    cached = getattr(session, "_encoder_session", None)
    if cached is not None:
        return cached
    encoder = _new_encoder_session(session, spec)
    try:
        session._encoder_session = encoder
    except AttributeError:  # a session object that takes no new attributes: no cache
        pass
    return encoder


def _new_encoder_session(session: Any, spec: Seq2SeqSpec) -> Any:
    package = session.package
    if package is None:
        raise UsageError("an encoder-decoder runs from its package (Session.from_package)")
    file = spec.encoder_files.get(session.variant) or spec.encoder_files.get("fp32")
    if file is None:
        raise UsageError(f"{session.name!r} has no encoder file for variant {session.variant!r}")
    threads: dict[str, int] = {}
    options = getattr(getattr(session, "_sess", None), "get_session_options", None)
    if options is not None:  # the decoder's intra/inter-op thread counts (0: ONNX Runtime's default)
        opts = options()
        threads = {
            k: v
            for k, v in (
                ("intra_op_threads", int(opts.intra_op_num_threads)),
                ("inter_op_threads", int(opts.inter_op_num_threads)),
            )
            if v > 0
        }
    # the decoder session's own class (runtimes' Session): no import of _session, which imports this
    return type(session)(
        package.file(file), None, providers=session.providers, device_id=session.device_id, **threads
    )


def _timestamps(gen: Mapping[str, Any], eos: tuple[int, ...]) -> Timestamps | None:
    """Whisper's timestamp rules from ``extra.generation`` (``None``: no timestamp tokens)."""
    whisper = gen.get("whisper") or {}
    notime = whisper.get("no_timestamps_token_id")
    if not isinstance(notime, int) or not eos or int(gen.get("vocab") or 0) <= notime + 1:
        return None
    initial = whisper.get("max_initial_timestamp_index")
    return Timestamps(notime, eos[0], int(initial) if isinstance(initial, int) else None)


def _prefix(spec: Seq2SeqSpec, row: GenRequest) -> list[int]:
    """The decoder ids before a row's generated tokens: the start token and the forced ones."""
    return [spec.decoder_start_token_id, *row.forced]


def _row_rules(spec: Seq2SeqSpec, row: GenRequest) -> LogitsRules:
    """The row's logits processors (the model's, the request's, the generation config's), made once."""
    if row.rules is None:
        rules = spec.rules.with_request(row.params, spec.defaults)
        stamps = spec.timestamps
        if stamps is not None and row.forced and row.forced[-1] != stamps.no_timestamps_token_id:
            rules = dataclasses.replace(rules, timestamps=stamps)  # a prompt asking for timestamps
        row.rules = rules
    return row.rules


def _processed(
    spec: Seq2SeqSpec, logits: np.ndarray, row: GenRequest, tokens: Sequence[int] | None = None
) -> np.ndarray:
    """``generate``'s logits processors (:class:`~torchport.runtimes._logits.LogitsRules`) on one
    row's scores, the decoder's ids being the prefix and ``tokens`` (default: the row's tokens)."""
    rules = _row_rules(spec, row)
    prefix = _prefix(spec, row)
    history = prefix + list(row.tokens if tokens is None else tokens)
    return rules.apply(logits, history, len(prefix), len(prefix) + row.params.max_new_tokens)


@dataclass
class _Cohort:
    """Rows decoded by one decoder run: their cross keys/values (right-padded to the longest source,
    ``enc_mask`` marking it; speech sources all have the encoder's length) and their self-attention
    cache (left-padded to the longest row, ``mask`` marking it, when the decoder takes a mask)."""

    rows: list[GenRequest]
    cross: list[np.ndarray]
    enc_mask: np.ndarray | None
    past: list[np.ndarray]
    mask: np.ndarray | None = None  #: [rows, cache positions]: 1 where a row has a token


def _pad_to(arr: np.ndarray, axis: int, width: int, left: bool) -> np.ndarray:
    if arr.shape[axis] == width:
        return arr
    pad = [(0, 0)] * arr.ndim
    pad[axis] = (width - arr.shape[axis], 0) if left else (0, width - arr.shape[axis])
    return np.pad(arr, pad)


def _joined(a: _Cohort, b: _Cohort) -> _Cohort:
    """One cohort of ``a``'s rows then ``b``'s: self caches left-padded to the longer (masks zero
    there), cross keys/values right-padded to the longer source (encoder masks zero there)."""
    assert a.mask is not None and b.mask is not None
    width = max(a.mask.shape[1], b.mask.shape[1])
    past = [
        np.concatenate([_pad_to(x, 2, width, True), _pad_to(y, 2, width, True)])
        for x, y in zip(a.past, b.past, strict=True)
    ]
    mask = np.concatenate([_pad_to(a.mask, 1, width, True), _pad_to(b.mask, 1, width, True)])
    src = max(a.cross[0].shape[2], b.cross[0].shape[2])
    cross = [
        np.concatenate([_pad_to(x, 2, src, False), _pad_to(y, 2, src, False)])
        for x, y in zip(a.cross, b.cross, strict=True)
    ]
    enc_mask = None
    if a.enc_mask is not None and b.enc_mask is not None:
        enc_mask = np.concatenate([_pad_to(a.enc_mask, 1, src, False), _pad_to(b.enc_mask, 1, src, False)])
    return _Cohort(a.rows + b.rows, cross, enc_mask, past, mask)


class Seq2SeqBatch(RowBatch):
    """:class:`DecodeBatch`'s counterpart for encoder-decoders: the encoder step, then decode steps.

    Rows that join together (:meth:`add`) run the encoder once (sources right-padded, the mask
    marking them) and their first decoder step. When the decoder takes its own attention mask (and
    position ids) — packages exported since it does — they then join the running rows: one cohort
    whose self caches are left-padded to the longest row and whose cross keys/values are
    right-padded to the longest source, so every :meth:`step` is ONE decoder run for every request,
    whatever its source length and whenever it joined. Older packages keep one decoder run per
    cohort (rows that joined together). The server's engine drives it exactly as a
    :class:`DecodeBatch` (rows join at step boundaries and leave when finished).
    """

    spec: Seq2SeqSpec

    def __init__(self, session: Any) -> None:
        self.session = session
        self.spec = Seq2SeqSpec.from_manifest(session.manifest)
        self.encoder = _encoder_session(session, self.spec)
        self._sess = session._sess
        self.cohorts: list[_Cohort] = []
        self.rows = []
        self._dtype = np.dtype(self.spec.kv_dtype)
        #: joiners merge into the running rows (one decoder run per step); ``False`` keeps one run per
        #: cohort, as for a decoder without its own mask (benchmarks/seq2seq_batching.py compares them)
        self.join = self.spec.decoder_mask

    def _set_cohorts(self, cohorts: list[_Cohort]) -> None:
        self.cohorts = cohorts
        self.rows = [r for c in cohorts for r in c.rows]

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

    def _cohort(
        self, rows: list[GenRequest], cross: list[np.ndarray], enc_mask: np.ndarray | None
    ) -> _Cohort:
        """A cohort of ``rows`` with an empty self cache."""
        past = [
            np.zeros((len(rows), h, 0, d), self._dtype)
            for h, d in zip(self.spec.kv_heads, self.spec.head_dims, strict=True)
        ]
        mask = np.zeros((len(rows), 0), np.int64) if self.spec.decoder_mask else None
        return _Cohort(rows, cross, enc_mask, past, mask)

    def _run(self, cohort: _Cohort, ids: np.ndarray) -> np.ndarray:
        feeds: dict[str, np.ndarray] = {"decoder_input_ids": ids}
        if cohort.enc_mask is not None:
            feeds["encoder_attention_mask"] = cohort.enc_mask
        if cohort.mask is not None:
            cohort.mask = np.concatenate([cohort.mask, np.ones(ids.shape, np.int64)], axis=1)
            feeds["decoder_attention_mask"] = cohort.mask
            if self.spec.decoder_positions:  # each row's own: its real tokens before each new one
                positions = np.cumsum(cohort.mask, axis=1)[:, -ids.shape[1] :] - 1
                feeds["decoder_position_ids"] = np.maximum(positions, 0).astype(np.int64)
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
            _row_rules(self.spec, row)
            token = pick_token(logits[i], row, _prefix(self.spec, row))
            if token in row.stop_ids(self.spec):
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
        start = np.full((len(rows), 1), self.spec.decoder_start_token_id, np.int64)
        return self._run(self._cohort(rows, cross, mask), start)

    def add(self, seqs: Sequence[GenRequest]) -> list[int | None]:
        """Run the encoder for ``seqs`` and their first decoder step (rows with different forced
        prefixes apart); they join the running rows (or, for a decoder without its own mask, form
        cohorts of their own). Returns each one's first token (``None`` where it stopped at once)."""
        if not seqs:
            return []
        self._admit(seqs)
        groups: dict[tuple[int, ...], list[GenRequest]] = {}
        for s in seqs:
            groups.setdefault(tuple(s.forced), []).append(s)
        first: dict[int, int | None] = {}
        cohorts = list(self.cohorts)
        for forced, group in groups.items():
            cross, mask = self._encode(group)
            cohort = self._cohort(list(group), cross, mask)
            prefix = np.asarray([[self.spec.decoder_start_token_id, *forced]] * len(group), np.int64)
            for s, t in zip(group, self._sample(self._run(cohort, prefix), group), strict=True):
                first[id(s)] = t
            if self.join and cohorts:
                cohorts = [_joined(cohorts[0], cohort)]
            else:
                cohorts.append(cohort)
        self._set_cohorts(cohorts)
        return [first[id(s)] for s in seqs]

    def step(self) -> list[int | None]:
        """One decoder step for every row (one run; one per cohort for a decoder without its own
        mask); returns the new token of each row (in :attr:`rows` order)."""
        out: list[int | None] = []
        for cohort in self.cohorts:
            last = [
                r.tokens[-1] if r.tokens and not r.finished else self.spec.pad_token_id for r in cohort.rows
            ]
            logits = self._run(cohort, np.asarray(last, np.int64)[:, None])
            out += self._sample(logits, cohort.rows)
        return out

    def drop(self, keep: Sequence[bool]) -> list[GenRequest]:
        """Keep the rows where ``keep`` is true (in :attr:`rows` order); return the dropped ones.
        Cache columns no remaining row uses (self: from the left, cross: from the right) are cut."""
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
                if cohort.enc_mask is not None:
                    enc = cohort.enc_mask[idx]
                    used = np.flatnonzero(enc.any(axis=0))
                    end = int(used[-1]) + 1 if used.size else enc.shape[1]
                    cohort.enc_mask = np.ascontiguousarray(enc[:, :end])
                    cohort.cross = [np.ascontiguousarray(c[:, :, :end]) for c in cohort.cross]
                if cohort.mask is not None:
                    mask = cohort.mask[idx]
                    used = np.flatnonzero(mask.any(axis=0))
                    begin = int(used[0]) if used.size else 0
                    cohort.mask = np.ascontiguousarray(mask[:, begin:])
                    cohort.past = [np.ascontiguousarray(p[:, :, begin:]) for p in cohort.past]
            cohorts.append(cohort)
        self._set_cohorts(cohorts)
        return dropped

    def fits(self, seq: GenRequest) -> bool:
        """Whether ``seq`` can join now (a free row: each row keeps its own positions)."""
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
        cohort = self._cohort(
            [seq] * num_beams, [c[rep] for c in cross], mask[rep] if mask is not None else None
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
                np.stack(
                    [_processed(spec, _log_softmax(logits[b]), seq, running[b]) for b in range(num_beams)]
                )
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
