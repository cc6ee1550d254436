"""Example sizes of dynamic dims: the sizes capture runs at, well inside each dim's range.

Not the minimum: torch.export specializes sizes 0 and 1, two dims with the same example size may be
assumed equal, and a size at the bottom of an image range (``h=32..96`` at 32) shrinks feature maps
to 1×1 deep in a CNN, where torch.export specializes the dim. When torch.export still specializes a
dim at the chosen size (an example of size 1, two dims of the same size that the model compares),
:func:`retry_sizes` gives other sizes to capture at.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from torchport.runtimes._manifest import DimRange

__all__ = ["choose_example_sizes", "example_size", "retry_sizes"]


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
    return _free_size(value, rng, taken or set())


def _free_size(value: int, rng: DimRange, taken: set[int]) -> int:
    """``value``, moved up (else down, not below 2) past sizes already ``taken`` while it stays in ``rng``."""
    lo, hi = rng.min, rng.max
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


def retry_sizes(
    dims: Mapping[str, DimRange],
    tried: Mapping[str, int],
    static_sizes: set[int] | None = None,
    *,
    vary: Collection[str] = (),
    count: int = 2,
) -> list[dict[str, int]]:
    """Other example sizes to capture at after torch.export specialized a dim at the ``tried`` sizes.

    Only the dims in ``vary`` change (all of them when ``vary`` names none of ``dims``); the others keep
    their tried size. Each changed dim gets, in turn, its usual example size (:func:`example_size`),
    the middle of its range and the point three quarters up it: never 0 or 1 where the range allows
    more, distinct from the other dims' sizes and the static sizes, and never a set of sizes already
    tried. At most ``count`` sets.

    Example:
        >>> retry_sizes({"batch": DimRange(1, 64)}, {"batch": 1})  # an example of batch 1 specializes
        [{'batch': 2}, {'batch': 33}]
        >>> retry_sizes({"h": DimRange(16, 64), "w": DimRange(16, 64)}, {"h": 32, "w": 32}, vary=["w"])
        [{'h': 32, 'w': 40}, {'h': 32, 'w': 52}]
    """
    changing = [d for d in dims if d in vary] or list(dims)
    picks = (
        lambda name, rng: example_size(name, rng),
        lambda name, rng: (rng.min + rng.max + 1) // 2,
        lambda name, rng: rng.min + (3 * (rng.max - rng.min) + 3) // 4,
    )
    seen = [dict(tried)]
    out: list[dict[str, int]] = []
    for pick in picks:
        sizes = {name: tried[name] for name in dims if name not in changing}
        taken = set(static_sizes or ()) | set(sizes.values())
        for name in changing:
            sizes[name] = _free_size(max(pick(name, dims[name]), min(2, dims[name].max)), dims[name], taken)
            taken.add(sizes[name])
        sizes = {name: sizes[name] for name in dims}
        if sizes not in seen:
            seen.append(sizes)
            out.append(sizes)
        if len(out) == count:
            break
    return out
