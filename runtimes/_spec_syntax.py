"""The text form of tensor specs: ``--input name:dtype[dims]{lo..hi}`` and ``--dim name=min..max``.

:func:`parse_input_spec` and :func:`format_spec` are inverses; every place that shows a spec
(``inspect``, ``export``'s summary, error messages) formats it with :func:`format_spec`.
"""

from __future__ import annotations

import keyword
import re

from torchport.runtimes._dtypes import SUPPORTED_DTYPES, check_dtype
from torchport.runtimes._errors import UsageError
from torchport.runtimes._manifest import DimRange, TensorSpec

__all__ = ["INPUT_DTYPES", "format_spec", "parse_dim_spec", "parse_input_spec"]

_INPUT_EXAMPLE = '"input_ids:int64[batch,seq]" or "x:float32[1,3,224,224]"'
_DIM_EXAMPLE = '"batch=1..64"'
#: dtypes a model input may have (every manifest dtype but strings)
INPUT_DTYPES = tuple(d for d in SUPPORTED_DTYPES if d != "string")


def format_spec(spec: TensorSpec) -> str:
    """``name:dtype[dims]`` (plus ``{lo..hi}`` for a value range): the form ``--input`` takes.

    Example:
        >>> format_spec(TensorSpec("input_ids", "int64", ["batch", "seq"], (0, 99)))
        'input_ids:int64[batch,seq]{0..99}'
        >>> parse_input_spec(format_spec(TensorSpec("x", "float32", [1, "n"]))).shape
        [1, 'n']
    """
    shape = ",".join("?" if d is None else str(d) for d in spec.shape)
    text = f"{spec.name}:{spec.dtype}[{shape}]"
    if spec.value_range is not None:
        low, high = spec.value_range
        text += f"{{{low:g}..{high:g}}}"
    return text


def _is_identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


_SPEC_RE = re.compile(r"^\s*(?P<name>[^:\[\]]*?)\s*:\s*(?P<dtype>[^\[\]]*?)\s*(?P<dims>\[.*)?$")


def parse_input_spec(text: str) -> TensorSpec:
    """Parse one ``--input`` spec: ``name:dtype[dim,dim,...]``.

    Dims are ints (fixed sizes) or names (dynamic dims, ranged with ``--dim``). ``name:float32[]`` is
    a scalar. An integer input may carry a value range: ``input_ids:int64[batch,seq]{0..30521}``.

    Args:
        text: the spec as typed on the command line.

    Returns:
        The :class:`~torchport.runtimes.TensorSpec`.

    Raises:
        UsageError: naming the bad part, with an example of the right form.

    Example:
        >>> parse_input_spec("input_ids:int64[batch,seq]")
        TensorSpec(name='input_ids', dtype='int64', shape=['batch', 'seq'], value_range=None)
        >>> parse_input_spec("x:float32[1,3,224,224]").shape
        [1, 3, 224, 224]
    """
    where = f"--input {text!r}"
    m = _SPEC_RE.match(text or "")
    if m is None:
        raise UsageError(f"{where}: expected name:dtype[dims], e.g. {_INPUT_EXAMPLE}")
    name, dtype_text, dims_text = m.group("name"), m.group("dtype"), m.group("dims")
    if not name:
        raise UsageError(f"{where}: the input name is missing before ':'; e.g. {_INPUT_EXAMPLE}")
    if not _is_identifier(name):
        raise UsageError(f"{where}: input name {name!r} is not a valid identifier; e.g. {_INPUT_EXAMPLE}")
    if not dtype_text:
        raise UsageError(f"{where}: the dtype is missing after ':'; e.g. {_INPUT_EXAMPLE}")
    try:
        dtype = check_dtype(dtype_text)
    except UsageError:
        raise UsageError(
            f"{where}: unsupported dtype {dtype_text!r}; use one of: {', '.join(INPUT_DTYPES)}"
        ) from None
    if dtype not in INPUT_DTYPES:
        raise UsageError(f"{where}: unsupported dtype {dtype_text!r}; use one of: {', '.join(INPUT_DTYPES)}")
    if dims_text is None:
        raise UsageError(f"{where}: the shape is missing; add [dims] after the dtype, e.g. {_INPUT_EXAMPLE}")
    dm = re.match(r"^\[(?P<inner>[^\[\]]*)\]\s*(?:\{(?P<range>[^{}]*)\})?\s*$", dims_text)
    if dm is None:
        raise UsageError(
            f"{where}: malformed shape {dims_text!r}; write it as [dim,dim,...], e.g. {_INPUT_EXAMPLE}"
        )
    inner = dm.group("inner").strip()
    shape: list[int | str | None] = []
    if inner:
        for part in inner.split(","):
            tok = part.strip()
            if not tok:
                raise UsageError(f"{where}: empty dim in {dims_text!r}; e.g. {_INPUT_EXAMPLE}")
            if re.fullmatch(r"\d+", tok):
                shape.append(int(tok))
            elif _is_identifier(tok):
                shape.append(tok)
            else:
                raise UsageError(
                    f"{where}: dim {tok!r} is neither a size (an int >= 0) nor a dim name (an identifier "
                    f"such as batch); e.g. {_INPUT_EXAMPLE}"
                )
    value_range = None
    if dm.group("range") is not None:
        rtext = dm.group("range").strip()
        rm = re.fullmatch(r"(-?\d+(?:\.\d+)?)\s*\.\.\s*(-?\d+(?:\.\d+)?)", rtext)
        if rm is None:
            raise UsageError(
                f"{where}: malformed value range {{{rtext}}}; write it as {{low..high}}, e.g. {{0..30521}}"
            )
        low, high = (float(rm.group(1)), float(rm.group(2)))
        if low > high:
            raise UsageError(f"{where}: value range {{{rtext}}} has low > high")
        if low.is_integer() and high.is_integer():
            low, high = int(low), int(high)
        value_range = (low, high)
    return TensorSpec(name=name, dtype=dtype, shape=shape, value_range=value_range)


def parse_dim_spec(text: str) -> tuple[str, DimRange]:
    """Parse one ``--dim`` spec: ``name=min..max`` (inclusive).

    Raises:
        UsageError: naming the bad part; ``batch=8`` (a single size) is refused with a hint to give a
            range, or to write the fixed size in ``--input``.

    Example:
        >>> parse_dim_spec("batch=1..64")
        ('batch', DimRange(min=1, max=64))
    """
    where = f"--dim {text!r}"
    if "=" not in (text or ""):
        raise UsageError(f"{where}: expected name=min..max, e.g. {_DIM_EXAMPLE}")
    name, _, rng = text.partition("=")
    name, rng = name.strip(), rng.strip()
    if not name:
        raise UsageError(f"{where}: the dim name is missing before '='; e.g. {_DIM_EXAMPLE}")
    if not _is_identifier(name):
        raise UsageError(f"{where}: dim name {name!r} is not a valid identifier; e.g. {_DIM_EXAMPLE}")
    if re.fullmatch(r"\d+", rng):
        raise UsageError(
            f"{where}: a dynamic dim needs a range such as {name}=1..{rng}; for a fixed size write the "
            f"number in --input instead (e.g. x:float32[{rng},16])"
        )
    m = re.fullmatch(r"(\d+)\s*\.\.\s*(\d+)", rng)
    if m is None:
        raise UsageError(f"{where}: range {rng!r} is not min..max with ints >= 0; e.g. {_DIM_EXAMPLE}")
    low, high = int(m.group(1)), int(m.group(2))
    if high < low:
        raise UsageError(f"{where}: min {low} is greater than max {high}; e.g. {_DIM_EXAMPLE}")
    return name, DimRange(low, high)


# --------------------------------------------------------------------------- example sizes
