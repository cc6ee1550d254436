"""Example sizes of dynamic dims: the sizes capture runs at, well inside each dim's range.

Not the minimum: torch.export specializes sizes 0 and 1, two dims with the same example size may be
assumed equal, and a size at the bottom of an image range (``h=32..96`` at 32) shrinks feature maps
to 1×1 deep in a CNN, where torch.export specializes the dim.
"""

from __future__ import annotations

from collections.abc import Mapping

from torchport.runtimes._manifest import DimRange

__all__ = ["choose_example_sizes", "example_size"]


def example_size(name: str, rng: DimRange, taken: set[int] | None = None) -> int:
    """The size used for dynamic dim ``name`` in example (capture) inputs.

    Not the minimum: torch.export specializes sizes 0 and 1, and two dims with the same example size
    may be assumed equal. So: 2 for batch-like names, 8 otherwise, when that lies above the range's
    minimum; else (a range such as ``h=32..96``) the middle of the range, well inside it. At least 2
    where the range allows it, and moved up past sizes already ``taken`` while it stays in range.

    Example:
        >>> example_size("batch", DimRange(1, 64)), example_size("seq", DimRange(1, 128))
        (2, 8)
        >>> example_size("h", DimRange(32, 96))  # not 32: deep feature maps would shrink to 1x1
        64
    """
    lo, hi = rng.min, rng.max
    pref = 2 if "batch" in name.lower() else 8
    value = min(hi, max(lo, 2, pref)) if pref > lo or lo == hi else (lo + hi + 1) // 2
    taken = taken or set()
    candidate = value
    while candidate in taken and candidate < hi:
        candidate += 1
    if candidate in taken:  # walk down instead
        candidate = value
        while candidate in taken and candidate > max(lo, 2):
            candidate -= 1
    return candidate if candidate not in taken else value


def choose_example_sizes(
    dims: Mapping[str, DimRange], static_sizes: set[int] | None = None
) -> dict[str, int]:
    """Distinct example sizes for each dynamic dim (see :func:`example_size`)."""
    taken = set(static_sizes or ())
    sizes: dict[str, int] = {}
    for name, rng in dims.items():
        sizes[name] = example_size(name, rng, taken)
        taken.add(sizes[name])
    return sizes
