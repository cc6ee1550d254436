"""A served model's input signature, checked against a request's declared inputs before any data is decoded.

A request names each input with a datatype and a shape; these are checked against the model (known
name, datatype, rank, fixed dims, dynamic-dim ranges, one value per named dim) before a single
element is decoded, so a mislabelled or oversized tensor costs nothing. The signature also bounds
the body size of any valid request (when every input dim is bounded and no input is BYTES).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from torchport.runtimes._dtypes import PROTOCOL_DATATYPES
from torchport.runtimes._errors import InferenceInputError
from torchport.runtimes._inputs import check_shape
from torchport.runtimes._manifest import DimRange, TensorSpec

if TYPE_CHECKING:
    from torchport.runtimes._session import Session

#: JSON bytes one element may take in a valid request ("-1.2345678901234567e-05, " plus indentation)
JSON_BYTES_PER_ELEMENT = 64
#: room for names, shapes, parameters and whitespace around the data of a valid request
ENVELOPE_BYTES = 64 * 1024
#: accepted (name, datatype, shape) declarations remembered per model
_ACCEPTED_SHAPES = 256


@dataclass(frozen=True)
class InputSignature:
    """The inputs one model accepts.

    Example:
        >>> sig = InputSignature("add", [TensorSpec("x", "float32", ["batch", 4])], {"batch": DimRange(1, 64)})
        >>> sig.check_declared("x", "FP32", (2, 4), {})
        >>> sig.max_body_bytes
        81920
    """

    model: str
    specs: Sequence[TensorSpec]
    dynamic_dims: Mapping[str, DimRange]
    #: the model's text handling (``_text_infer.TextInfer``) when it also takes a BYTES ``text`` input
    text: Any = None

    @classmethod
    def of(cls, session: Session, text: Any = None) -> InputSignature:
        """The signature of a :class:`~torchport.runtimes.Session` (plus ``text``, see above)."""
        return cls(session.name, list(session.input_specs), dict(session.dynamic_dims), text)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs] + ([self.text_input] if self.text is not None else [])

    @property
    def text_input(self) -> str:
        """The name of the text handling's input: ``text``, or ``audio`` for a speech model."""
        return str(getattr(self.text, "input_name", "text"))

    def also_takes(self, name: str, datatype: str) -> bool:
        """True when the text handling takes ``name`` in ``datatype`` besides its declared one
        (a speech model's ``audio``: FP32 samples as well as BYTES WAV files)."""
        also = getattr(self.text, "datatypes", None) or {}
        return datatype in also.get(name, ())

    def _spec(self, name: str) -> TensorSpec:
        for spec in self.specs:
            if spec.name == name:
                return spec
        raise InferenceInputError(
            f"unknown input {name!r}; model {self.model!r} expects: {', '.join(self.names)}"
        )

    def check_declared(
        self, name: str, datatype: str, shape: tuple[int, ...], seen: dict[str, tuple[int, str]]
    ) -> None:
        """Check one declared input (``seen`` collects named dims across the request's inputs).

        Raises:
            InferenceInputError: naming the input and what the model expects.
        """
        if self.text is not None:
            if name == self.text_input:
                self.text.check_declared(datatype, shape, seen)
                return
            self.text.check_token_input(name, seen)
        accepted = self._accepted
        key = (name, datatype, shape)
        named = accepted.get(key)
        if named is not None:  # passed before: only the named dims' agreement is left to check
            for dim, value in named:
                if dim in seen and seen[dim][0] != value:
                    break  # the full check below says which inputs disagree
            else:
                for dim, value in named:
                    seen.setdefault(dim, (value, name))
                return
        spec = self._spec(name)
        want = PROTOCOL_DATATYPES[spec.dtype]
        if datatype != want:
            raise InferenceInputError(f"input {name!r} has datatype {datatype}, the model expects {want}")
        check_shape(spec, shape, self.dynamic_dims, seen)
        if len(accepted) < _ACCEPTED_SHAPES:
            accepted[key] = tuple((d, shape[i]) for i, d in enumerate(spec.shape) if isinstance(d, str))

    @cached_property
    def _accepted(self) -> dict[tuple, tuple[tuple[str, int], ...]]:
        """Declarations that passed :meth:`check_declared`, with the value of each named dim."""
        return {}

    def complete(self, inputs: Mapping[str, object]) -> bool:
        """True when ``inputs``, each already passed :meth:`check_declared`, need no further check:
        every input is there, none has a value range to enforce and none is a ``text`` input."""
        return self.text is None and len(inputs) == len(self.specs) and not self._has_value_ranges

    @cached_property
    def _has_value_ranges(self) -> bool:
        return any(spec.value_range is not None for spec in self.specs)

    @cached_property
    def max_body_bytes(self) -> int | None:
        """The largest body a valid request can have, or ``None`` when unbounded (a BYTES input,
        a dim without a range, a ``text`` input)."""
        if self.text is not None:
            return None
        total = 0
        for spec in self.specs:
            if spec.dtype == "string":
                return None
            dims = []
            for d in spec.shape:
                if isinstance(d, int):
                    dims.append(d)
                elif isinstance(d, str) and d in self.dynamic_dims:
                    dims.append(self.dynamic_dims[d].max)
                else:
                    return None
            total += math.prod(dims) * JSON_BYTES_PER_ELEMENT
        return total + ENVELOPE_BYTES
