"""Every docstring example runs (doctest).

An example that needs files, a model package or a server is marked ``# doctest: +SKIP``; the lines
after a skipped one in the same docstring build on it and are skipped with it (they still show
the reader what comes back)."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_PACKAGES = {
    "torchport.runtimes": "runtimes",
    "torchport.exporters": "exporters",
    "torchport.deploy": "deploy",
    "torchport.cli": "cli",
}


def _modules() -> list[str]:
    names = []
    for package, folder in _PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if "__main__" not in parts:
                names.append(".".join([package, *parts]))
    return names


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name, globs=dict(vars(module))):
        for i, example in enumerate(test.examples):
            if example.options.get(doctest.SKIP):
                test.examples = test.examples[:i]
                break
        runner.run(test, out=lambda text: None)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} docstring examples fail in {name}"
