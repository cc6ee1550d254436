"""Row bookkeeping shared by the decoder-only batch (:class:`~torchport.runtimes._generate.DecodeBatch`)
and the encoder-decoder one (:class:`~torchport.runtimes._seq2seq_batch.Seq2SeqBatch`): admitting rows
(checks, seeds, the model's batch range), dropping finished ones, free slots."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from torchport.runtimes._errors import InferenceInputError
from torchport.runtimes._sampling import GenRequest

__all__ = ["RowBatch"]


class _BatchSpec(Protocol):
    @property
    def max_batch(self) -> int: ...


class RowBatch:
    """Base of the running batches the server's engine drives: ``rows`` join at step boundaries
    (:meth:`_admit` first) and leave through :meth:`drop`."""

    spec: _BatchSpec
    #: the running rows, in the order :meth:`step` returns their tokens
    rows: list[GenRequest]

    def check(self, seq: GenRequest) -> None:
        """Refuse a request the model cannot take (raise :class:`InferenceInputError`)."""
        raise NotImplementedError

    def drop(self, keep: Sequence[bool]) -> list[GenRequest]:
        """Keep the rows where ``keep`` is true; return the dropped ones."""
        raise NotImplementedError

    def _admit(self, seqs: Sequence[GenRequest]) -> None:
        """Check ``seqs``, seed their generators, and refuse more rows than the model's batch range."""
        for s in seqs:
            self.check(s)
            if s.params.seed is not None:
                s.rng = np.random.default_rng(s.params.seed)
        total = len(self.rows) + len(seqs)
        if total > self.spec.max_batch:
            raise InferenceInputError(
                f"{total} sequences exceed the model's batch range (at most {self.spec.max_batch})"
            )

    def drop_finished(self) -> list[GenRequest]:
        """Remove finished rows (see :meth:`drop`); return them."""
        return self.drop([not r.finished for r in self.rows])

    @property
    def free_slots(self) -> int:
        return self.spec.max_batch - len(self.rows)
