"""The public API: the names each package exports and their signatures.

A change to this surface is a decision: update tests/public_api.json in the same commit
(``python tests/test_public_api.py`` writes it from the code).
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from pathlib import Path

import pytest

SNAPSHOT = Path(__file__).with_name("public_api.json")
PACKAGES = (
    "torchport.exporters",
    "torchport.runtimes",
    "torchport.runtimes.server",
    "torchport.deploy",
    "torchport.cli",
)


def describe(obj: object) -> str:
    """``class(signature)``, ``function(signature)`` or the value's type."""
    if inspect.isclass(obj):
        try:
            return f"class{inspect.signature(obj)}"
        except (TypeError, ValueError):
            return "class"
    if callable(obj):
        try:
            return f"function{inspect.signature(obj)}"
        except (TypeError, ValueError):
            return "callable"
    return type(obj).__name__


def surface() -> dict[str, dict[str, str]]:
    out = {}
    for name in PACKAGES:
        module = importlib.import_module(name)
        out[name] = {attr: describe(getattr(module, attr)) for attr in sorted(module.__all__)}
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_public_api_matches_the_snapshot(package: str) -> None:
    expected = json.loads(SNAPSHOT.read_text())[package]
    actual = surface()[package]
    added = sorted(set(actual) - set(expected))
    removed = sorted(set(expected) - set(actual))
    changed = sorted(n for n in set(actual) & set(expected) if actual[n] != expected[n])
    assert not (added or removed or changed), (
        f"{package}: added {added}, removed {removed}, changed "
        + "; ".join(f"{n}: {expected[n]} -> {actual[n]}" for n in changed)
        + " (if intended: python tests/test_public_api.py)"
    )


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_exists_and_is_documented(package: str) -> None:
    module = importlib.import_module(package)
    for attr in module.__all__:
        obj = getattr(module, attr)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{package}.{attr} has no docstring"


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(surface(), indent=1, sort_keys=True) + "\n")
    sys.stdout.write(f"wrote {SNAPSHOT}\n")
