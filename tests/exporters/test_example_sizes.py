"""Example sizes of dynamic dims: well inside each range, distinct, never 0 or 1 where avoidable."""

from __future__ import annotations

from torchport.exporters._example_sizes import example_size, retry_sizes
from torchport.runtimes import DimRange


def test_example_size_is_not_the_min_and_distinct() -> None:
    assert example_size("batch", DimRange(1, 64)) == 2
    assert example_size("seq", DimRange(1, 512)) == 8
    assert example_size("seq", DimRange(1, 4)) == 4
    assert example_size("seq", DimRange(20, 40)) == 30  # well inside the range, not its minimum
    assert example_size("h", DimRange(32, 96)) == 64
    assert example_size("n", DimRange(1, 64), taken={8, 9}) == 10
    assert example_size("n", DimRange(0, 1)) == 1  # nothing else fits


def test_retry_sizes_change_the_specialized_dims_only() -> None:
    dims = {"batch": DimRange(1, 64), "h": DimRange(16, 64), "w": DimRange(16, 64)}
    tried = {"batch": 2, "h": 32, "w": 32}
    assert retry_sizes(dims, tried, {3}, vary=["w"]) == [
        {"batch": 2, "h": 32, "w": 40},  # the usual size
        {"batch": 2, "h": 32, "w": 52},  # three quarters up the range (the middle is 40 too)
    ]
    # no dim named: every dim moves, each distinct from the others and from the static sizes
    sizes = retry_sizes(dims, tried, {3}, count=3)
    assert sizes[0] == {"batch": 2, "h": 40, "w": 41} and tried not in sizes
    assert all(len(set(s.values())) == 3 and 3 not in s.values() for s in sizes)
    assert retry_sizes({"batch": DimRange(1, 64)}, {"batch": 1}) == [{"batch": 2}, {"batch": 33}]
    assert retry_sizes({"n": DimRange(1, 1)}, {"n": 1}) == []  # nothing else fits
