"""Sample input files (``.npz``) for validation (``--samples``) and calibration (``--calibration``)."""

from __future__ import annotations

import collections
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from torchport.runtimes._errors import UsageError

__all__ = ["load_samples"]


def load_samples(
    path: str | os.PathLike[str], input_names: Sequence[str], ranks: Mapping[str, int]
) -> list[dict[str, np.ndarray]]:
    """Read sample inputs from an ``.npz``: one array per input name.

    An array whose rank is the input's rank is one sample; one more leading axis holds several
    samples (``x[i]`` is sample ``i``). Keys ``name/0``, ``name/1``... give samples of
    different shapes.

    Raises:
        UsageError: the file is missing, unreadable, or lacks an input.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"sample file {str(path)!r} does not exist")
    try:
        data = dict(np.load(path, allow_pickle=False))
    except Exception as e:
        raise UsageError(f"cannot read samples from {str(path)!r}: {e}; save them with numpy.savez") from e
    grouped: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    for key in sorted(
        data,
        key=lambda k: (
            k.split("/")[0],
            int(k.split("/")[1]) if "/" in k and k.split("/")[1].isdigit() else 0,
        ),
    ):
        name = key.split("/")[0]
        arr = data[key]
        if "/" not in key and name in ranks and arr.ndim == ranks[name] + 1:
            grouped[name].extend(list(arr))
        else:
            grouped[name].append(arr)
    missing = [n for n in input_names if n not in grouped]
    if missing:
        raise UsageError(
            f"sample file {str(path)!r} lacks input(s) {', '.join(missing)}; it has {', '.join(sorted(grouped)) or 'nothing'}"
        )
    counts = {len(grouped[n]) for n in input_names}
    if len(counts) != 1:
        raise UsageError(
            f"sample file {str(path)!r}: inputs have different numbers of samples {sorted(counts)}"
        )
    n = counts.pop()
    return [{name: grouped[name][i] for name in input_names} for i in range(n)]
