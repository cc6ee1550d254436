"""docs/design.md's layering: torch only in exporters/; runtimes/ and deploy/ never import the layers above."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_TORCH = re.compile(r"^\s*(import torch|from torch[ .])", re.M)


def _sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_torch_is_imported_only_in_exporters() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for folder in ("runtimes", "deploy", "cli", "torchport")
        for p in _sources(folder)
        if _TORCH.search(p.read_text())
    ]
    assert offenders == []


def test_lower_layers_do_not_import_upper_layers() -> None:
    """Import statements only (lazy ones included): code in a string template is not an import."""
    above = {"runtimes": ("exporters", "deploy", "cli"), "deploy": ("exporters", "cli")}
    offenders = sorted(
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        for target in targets
        for layer, banned in above.items()
        if module.startswith(f"torchport.{layer}") and target.partition(".")[2].split(".")[0] in banned
    )
    assert offenders == []


def test_cli_and_serving_start_without_torch() -> None:
    """With torch made unimportable, the CLI starts and `serve --help` / `inspect --help` work."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import torchport.runtimes, torchport.runtimes.server, torchport.deploy\n"
        "from torchport.cli import main\n"
        "for cmd in (['--help'], ['serve', '--help'], ['inspect', '--help']):\n"
        "    try:\n"
        "        main(cmd)\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), (cmd, e.code)\n"
        "assert sys.modules['torch'] is None\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "serve" in proc.stdout and "inspect" in proc.stdout


_PACKAGE_DIRS = {
    "torchport": "torchport",
    "torchport.exporters": "exporters",
    "torchport.runtimes": "runtimes",
    "torchport.deploy": "deploy",
    "torchport.cli": "cli",
}


def _module_files() -> dict[str, Path]:
    """Every torchport module name → its file (packages as their ``__init__.py``)."""
    modules: dict[str, Path] = {}
    for package, folder in _PACKAGE_DIRS.items():
        for path in _sources(folder):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Who imports whom among torchport's modules: every import statement, lazy ones (inside
    functions) and ``TYPE_CHECKING`` ones included, since a cycle hidden behind them is still a cycle."""
    import ast

    modules = _module_files()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(anchor[: len(anchor) - node.level + 1] + [node.module])
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
