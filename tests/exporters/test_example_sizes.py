"""Example sizes of dynamic dims: well inside each range, distinct, never 0 or 1 where avoidable."""

from __future__ import annotations

from torchport.exporters._example_sizes import example_size
from torchport.runtimes import DimRange


def test_example_size_is_not_the_min_and_distinct() -> None:
    assert example_size("batch", DimRange(1, 64)) == 2
    assert example_size("seq", DimRange(1, 512)) == 8
    assert example_size("seq", DimRange(1, 4)) == 4
    assert example_size("seq", DimRange(20, 40)) == 30  # well inside the range, not its minimum
    assert example_size("h", DimRange(32, 96)) == 64
    assert example_size("n", DimRange(1, 64), taken={8, 9}) == 10
    assert example_size("n", DimRange(0, 1)) == 1  # nothing else fits
