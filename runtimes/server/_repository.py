"""The model repository: one package, or a folder of packages (``name/`` or ``name/<version>/``).

Each model loads on its own: a package that fails (bad hash, missing provider, broken ONNX) is
logged and kept in the index as UNAVAILABLE with its reason, while the others serve.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from torchport.runtimes._dtypes import PROTOCOL_DATATYPES
from torchport.runtimes._errors import ServingError, TorchportError
from torchport.runtimes._manifest import MANIFEST_NAME
from torchport.runtimes._session import Session
from torchport.runtimes.server._batching import ModelRunner

log = logging.getLogger("torchport.server")

LOADING, READY, UNAVAILABLE = "LOADING", "READY", "UNAVAILABLE"


def _version_key(v: str) -> tuple[int, int | str]:
    return (0, int(v)) if v.isdigit() else (1, v)


@dataclass
class ModelEntry:
    """One (model, version) of the repository and its state."""

    name: str
    version: str
    path: Path
    state: str = LOADING
    reason: str = ""
    session: Session | None = None
    runner: ModelRunner | None = None
    input_datatypes: dict[str, str] = field(default_factory=dict)
    output_datatypes: dict[str, str] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.state == READY

    def metadata(self, versions: list[str]) -> dict:
        sess = self.session
        assert sess is not None

        def tensors(specs):
            return [
                {
                    "name": s.name,
                    "datatype": PROTOCOL_DATATYPES[s.dtype],
                    "shape": [d if isinstance(d, int) else -1 for d in s.shape],
                }
                for s in specs
            ]

        runner = self.runner
        return {
            "name": self.name,
            "versions": versions,
            "platform": "onnxruntime_onnx",
            "inputs": tensors(sess.input_specs),
            "outputs": tensors(sess.output_specs),
            "parameters": {
                "provider": sess.provider,
                "batch_dim": sess.batch_dim,
                "max_batch_size": runner.max_batch_size if runner else 1,
                "dynamic_batching": bool(runner and runner.batching),
                "dynamic_dims": {k: v.to_dict() for k, v in sess.dynamic_dims.items()},
                "validated": bool(sess.manifest and sess.manifest.validated),
            },
        }


def discover(path: str | Path) -> list[tuple[str | None, str | None, Path]]:
    """Find packages under ``path``: ``[(name or None, version or None, folder)]``.

    ``path`` is one package (has ``torchport.json``), one model's numeric versions (``path/1/``,
    ``path/2/``), or a repository of ``name/`` and ``name/<version>/`` folders.

    ``None`` name/version means "take it from the manifest" (``path`` is itself one package).

    Raises:
        ServingError: ``path`` does not exist or holds no package.
    """
    root = Path(path)
    if not root.is_dir():
        raise ServingError(f"model repository {str(root)!r} does not exist or is not a folder")
    if (root / MANIFEST_NAME).is_file():
        return [(None, None, root)]
    found: list[tuple[str | None, str | None, Path]] = []
    children = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    packages = [c for c in children if (c / MANIFEST_NAME).is_file()]
    if packages and all(c.name.isdigit() for c in packages):
        # PATH is one model's folder of numeric versions: PATH/1/, PATH/2/ ...
        return [(root.resolve().name, c.name, c) for c in sorted(packages, key=lambda c: int(c.name))]
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (child / MANIFEST_NAME).is_file():
            found.append((child.name, None, child))
            continue
        versions = [v for v in sorted(child.iterdir()) if v.is_dir() and (v / MANIFEST_NAME).is_file()]
        for v in versions:
            found.append((child.name, v.name, v))
        if not versions and any(child.iterdir()):
            log.warning("skipping %s: no %s in it or in its version folders", child, MANIFEST_NAME)
    if not found:
        raise ServingError(
            f"no model package in {str(root)!r}: expected {MANIFEST_NAME} in it, in <name>/ or in "
            "<name>/<version>/ folders (create one with `torchport export`)"
        )
    return found


class ModelRepository:
    """All served models, by name and version."""

    def __init__(self, entries: list[ModelEntry]) -> None:
        self.entries = entries
        self._by_name: dict[str, dict[str, ModelEntry]] = {}
        for e in entries:
            self._by_name.setdefault(e.name, {})[e.version] = e

    @classmethod
    def scan(cls, path: str | Path) -> ModelRepository:
        """Index the packages under ``path`` (nothing is loaded yet).

        Example:
            >>> repo = ModelRepository.scan("models/")        # doctest: +SKIP
            >>> [(e.name, e.version, e.state) for e in repo.entries]
            [('cnn', '1', 'LOADING'), ('mlp', '3', 'LOADING')]
        """
        import json

        entries = []
        for name, version, folder in discover(path):
            if name is None or version is None:
                try:
                    data = json.loads((folder / MANIFEST_NAME).read_text())
                    name = name or str(data["name"])
                    version = version or str(data.get("version", "1"))
                except (OSError, ValueError, KeyError, TypeError):
                    name = name or folder.name
                    version = version or "1"
            entries.append(ModelEntry(name=name, version=version, path=folder))
        return cls(entries)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def versions(self, name: str) -> list[str]:
        return sorted(self._by_name.get(name, {}), key=_version_key)

    def get(self, name: str, version: str | None = None) -> ModelEntry | None:
        """The entry for ``name`` (``version`` or the highest one); ``None`` if unknown."""
        versions = self._by_name.get(name)
        if not versions:
            return None
        if version is None:
            ready = [v for v in versions if versions[v].ready]
            version = max(ready or versions, key=_version_key)
        return versions.get(version)

    def load_entry(self, entry: ModelEntry, make_session, make_runner) -> None:
        """Load one entry; a TorchportError marks it UNAVAILABLE with the reason (logged)."""
        try:
            session = make_session(entry)
            entry.session = session
            entry.input_datatypes = {s.name: PROTOCOL_DATATYPES[s.dtype] for s in session.input_specs}
            entry.output_datatypes = {s.name: PROTOCOL_DATATYPES[s.dtype] for s in session.output_specs}
            entry.runner = make_runner(entry, session)
            entry.state = READY
            entry.reason = ""
            log.info(
                "model %s version %s ready on %s (batching: %s)",
                entry.name,
                entry.version,
                session.provider,
                f"up to {entry.runner.max_batch_size}" if entry.runner.batching else "off",
            )
        except TorchportError as e:
            entry.state = UNAVAILABLE
            entry.reason = f"model {entry.name!r} (version {entry.version}) failed to load: {e}"
            log.error("%s", entry.reason)
        except Exception as e:
            entry.state = UNAVAILABLE
            entry.reason = (
                f"model {entry.name!r} (version {entry.version}) failed to load: {type(e).__name__}: {e}"
            )
            log.exception("%s", entry.reason)

    def index(self) -> list[dict[str, str]]:
        """The repository index (Triton's model repository extension)."""
        out = []
        for e in sorted(self.entries, key=lambda e: (e.name, _version_key(e.version))):
            item = {"name": e.name, "version": e.version, "state": e.state}
            if e.reason:
                item["reason"] = e.reason
            out.append(item)
        return out
