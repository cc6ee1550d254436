"""The model repository: one package, or a folder of packages (``name/`` or ``name/<version>/``).

Names: one package is served under its manifest's ``name`` (what ``--name`` set at export; the
folder's name when the manifest has none); in a repository (a folder of packages) each model is
served under its folder's name, as Triton; ``name`` in ``serve.toml`` overrides both. Each
version loads on its own: a package that fails (bad hash, missing provider, broken ONNX) is logged
and kept in the index as UNAVAILABLE with its reason, while the others serve. Which versions load
is the model's version policy (default: the latest).

A loaded version is swapped, never edited: :meth:`ModelRepository.publish` replaces the entry
objects, and requests already running keep the entry (session and runner) they started with.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from torchport.runtimes._dtypes import PROTOCOL_DATATYPES
from torchport.runtimes._errors import InferenceInputError, PackageError, ServingError, TorchportError
from torchport.runtimes._manifest import MANIFEST_NAME, TensorSpec
from torchport.runtimes._manifest_schema import read_manifest
from torchport.runtimes._session import Session
from torchport.runtimes.server._batching import ModelRunner
from torchport.runtimes.server._config import ModelSettings, _version_key
from torchport.runtimes.server._protocol import HTTPError
from torchport.runtimes.server._signature import InputSignature
from torchport.runtimes.server._speech_infer import SpeechInfer
from torchport.runtimes.server._stats import ModelStats
from torchport.runtimes.server._text2text_infer import Text2TextInfer
from torchport.runtimes.server._text_infer import TEXT, TextInfer
from torchport.runtimes.server._triton_layout import triton_versions

log = logging.getLogger("torchport.server")

LOADING, READY, UNAVAILABLE = "LOADING", "READY", "UNAVAILABLE"
UNLOADED = "unloaded"


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
    settings: ModelSettings = field(default_factory=ModelSettings)
    stats: ModelStats = field(default_factory=ModelStats)
    #: what the package folder looked like when this entry was loaded (see :func:`fingerprint`)
    fingerprint: tuple = ()
    #: the ``text`` input of a text model (:class:`TextInfer`), ``None`` for other models
    text: TextInfer | Text2TextInfer | SpeechInfer | None = None
    #: what serves this version besides its runner (a generation engine...), keyed by kind; each
    #: has ``retire()``, called once the version is no longer served (see :meth:`retire`)
    services: dict[str, Any] = field(default_factory=dict)
    #: no longer served (a service made for it later is retired at once)
    retired: bool = False
    #: what the loaded session accepts, for the request path (set with ``session`` on load)
    signature: InputSignature | None = field(default=None, init=False, repr=False, compare=False)

    def retire(self) -> None:
        """This version is no longer served: its services stop once the work they hold is done."""
        self.retired = True
        for service in self.services.values():
            service.retire()

    @property
    def ready(self) -> bool:
        return self.state == READY

    def request_inputs(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        wanted: Iterable[str],
        *,
        checked: bool = False,
    ) -> tuple[dict[str, np.ndarray], bool]:
        """An infer request's inputs as the session takes them, and whether they came as ``text``
        (HTTP and gRPC alike): the requested outputs must exist; a text model's ``text`` input is
        tokenized (checked where it is built), other inputs are checked by the session unless
        ``checked`` (the request path's signature has checked them already).

        Args:
            model: the model as the request names it (for the messages).
            inputs: the decoded input tensors.
            wanted: the names of the outputs the request asks for.

        Raises:
            HTTPError: 400, an unknown output or inputs the model does not take.
        """
        for name in wanted:
            if name not in self.output_datatypes:
                raise HTTPError(
                    400, f"unknown output {name!r}; model {model!r} has: {', '.join(self.output_datatypes)}"
                )
        text, session = self.text, self.session
        assert session is not None  # requests reach only a loaded (READY) entry
        try:
            if checked:
                session.check_attention_step(inputs)
                return inputs, False
            if text is not None and getattr(text, "input_name", TEXT) in inputs:
                return text.encode(inputs), True
            session.validate_inputs(inputs)
        except InferenceInputError as e:
            raise HTTPError(400, str(e)) from None
        return inputs, False

    def answer_outputs(
        self,
        inputs: Mapping[str, np.ndarray],
        results: Mapping[str, np.ndarray],
        wanted: list[str] | None,
        *,
        is_text: bool,
    ) -> Mapping[str, np.ndarray]:
        """The outputs to answer, in order: ``wanted``, else a text request's default outputs or every
        output of the model (``inputs`` are what the session ran on, for the outputs a text model adds)."""
        if self.text is not None:
            return self.text.outputs(inputs, results, wanted, is_text=is_text)
        return results if wanted is None else {name: results[name] for name in wanted}

    def tensors(self) -> tuple[list[dict], list[dict]]:
        """The inputs and outputs as model metadata lists them (``name``, ``datatype``, ``shape``
        with ``-1`` for dynamic dims): the model's, then a text model's ``text`` and added outputs."""
        sess = self.session
        assert sess is not None

        def tensors(specs: Sequence[TensorSpec], datatypes: Mapping[str, str]) -> list[dict[str, Any]]:
            return [
                {
                    "name": s.name,
                    "datatype": datatypes[s.name],
                    "shape": [d if isinstance(d, int) else -1 for d in s.shape],
                }
                for s in specs
            ]

        text_inputs, text_outputs = self.text.metadata() if self.text is not None else ([], [])
        return (
            tensors(sess.input_specs, self.input_datatypes) + text_inputs,
            tensors(sess.output_specs, self.output_datatypes) + text_outputs,
        )

    def metadata(self, versions: list[str]) -> dict:
        sess = self.session
        assert sess is not None
        runner = self.runner
        inputs, outputs = self.tensors()
        return {
            "name": self.name,
            "versions": versions,
            "platform": "onnxruntime_onnx",
            "inputs": inputs,
            "outputs": outputs,
            "parameters": {
                "version": self.version,
                "variant": sess.variant,
                "provider": sess.provider,
                "batch_dim": sess.batch_dim,
                "max_batch_size": runner.max_batch_size if runner else 1,
                "dynamic_batching": bool(runner and runner.batching),
                "dynamic_dims": {k: v.to_dict() for k, v in sess.dynamic_dims.items()},
                "validated": bool(sess.manifest and sess.manifest.validated),
                **({"text_task": self.text.task} if self.text is not None else {}),
            },
        }


@dataclass
class ModelSource:
    """One model of the repository: its folder, the versions found there and how to serve it."""

    name: str
    folder: str
    versions: dict[str, Path]
    settings: ModelSettings
    #: why the served name differs from the folder's (``None`` when it does not), for the startup log
    why: str | None = None


def fingerprint(folder: Path) -> tuple:
    """Names, sizes and modification times of a package folder's files (cheap change detection)."""
    out = []
    try:
        for p in sorted(folder.iterdir()):
            if p.is_file():
                st = p.stat()
                out.append((p.name, st.st_size, st.st_mtime_ns))
    except OSError:
        return ()
    return tuple(out)


def _manifest_version(folder: Path) -> str:
    """The manifest's version, or ``"1"`` when it has none or cannot be read (loading says why)."""
    try:
        version = read_manifest(folder / MANIFEST_NAME).get("version", "1")
    except PackageError:
        return "1"
    return str(version) if isinstance(version, str | int) and not isinstance(version, bool) else "1"


def _public(text: str, entry: ModelEntry) -> str:
    """``text`` with the package's folder path replaced by ``name/version``: reasons are served over
    HTTP (index, 503s) and must not reveal the server's file system."""
    label = f"{entry.name}/{entry.version}"
    for path in sorted(
        {str(entry.path.resolve()), str(entry.path.absolute()), str(entry.path)}, key=len, reverse=True
    ):
        if path not in (".", ""):
            text = text.replace(path, label)
    return text


def discover(path: str | Path) -> list[tuple[str, str, Path]]:
    """Find packages under ``path``: ``[(folder name, version, package folder)]``.

    ``path`` is one package (has ``torchport.json``; its manifest gives the version; the name it is
    served under is :func:`scan_sources`' rule), one model's numeric versions (``path/1/``, ``path/2/``), or a repository of
    ``name/`` and ``name/<version>/`` folders.

    Raises:
        ServingError: ``path`` does not exist or holds no package.
    """
    root = Path(path)
    if not root.is_dir():
        raise ServingError(f"model repository {str(root)!r} does not exist or is not a folder")
    if (root / MANIFEST_NAME).is_file():
        resolved = root.resolve()
        if resolved.name.isdigit():  # one version folder of a model: models/cnn/3 is cnn version 3
            return [(resolved.parent.name, resolved.name, root)]
        return [(resolved.name, _manifest_version(root), root)]
    found: list[tuple[str, str, Path]] = []
    children = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    packages = [c for c in children if (c / MANIFEST_NAME).is_file()]
    if packages and all(c.name.isdigit() for c in packages):
        # PATH is one model's folder of numeric versions: PATH/1/, PATH/2/ ...
        return [(root.resolve().name, c.name, c) for c in sorted(packages, key=lambda c: int(c.name))]
    for child in sorted(children):
        if (child / MANIFEST_NAME).is_file():
            found.append((child.name, _manifest_version(child), child))
            continue
        versions = [
            v
            for v in sorted(child.iterdir())
            if v.is_dir() and not v.name.startswith(".") and (v / MANIFEST_NAME).is_file()
        ]
        if not versions:  # a Triton repository's model: NAME/config.pbtxt, NAME/<v>/model.onnx
            versions = [v for _, v in triton_versions(child)]
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


def _manifest_name(folder: Path) -> str | None:
    """The manifest's ``name`` (a non-empty string), or ``None`` when it has none or cannot be read."""
    try:
        name = read_manifest(folder / MANIFEST_NAME).get("name")
    except PackageError:
        return None
    return name if isinstance(name, str) and name.strip() else None


def scan_sources(path: str | Path, settings_for: Callable[[str], ModelSettings]) -> dict[str, ModelSource]:
    """The models under ``path`` by served name; ``settings_for(folder)`` gives each one's settings.

    The name rule: ``path`` being one package, it is served under its manifest's ``name`` (the
    folder's name when the manifest has none); in a repository each model is served under its
    folder's name; a ``name`` in the folder's settings (``serve.toml``) overrides both.

    Raises:
        ServingError: two folders would be served under the same name, or ``path`` holds no package.
    """
    root = Path(path)
    single = (root / MANIFEST_NAME).is_file()
    sources: dict[str, ModelSource] = {}
    for folder, version, pkg in discover(path):
        settings = settings_for(folder)
        manifest_name = _manifest_name(pkg) if single else None
        if settings.name:
            name, why = settings.name, "name set in serve.toml"
        elif manifest_name:
            name, why = manifest_name, "the package's manifest name"
        else:
            name, why = folder, None
        src = sources.get(name)
        if src is None:
            src = sources[name] = ModelSource(name, folder, {}, settings, why if name != folder else None)
        elif src.folder != folder:
            raise ServingError(
                f"folders {src.folder!r} and {folder!r} would both be served as {name!r}; "
                "give one a different name in serve.toml ([models.FOLDER] name = ...)"
            )
        src.versions[version] = pkg
    return sources


class ModelRepository:
    """All served models, by name and version.

    Mutated only on the event loop thread (lookups there need no lock); loading happens elsewhere
    and is published with :meth:`publish`.
    """

    def __init__(self, sources: dict[str, ModelSource], root: Path | None = None) -> None:
        self.root = root
        self.sources = sources
        self._by_name: dict[str, dict[str, ModelEntry]] = {}
        #: names the server knows about, loaded or not (metrics label values stay bounded)
        self.known: set[str] = set(sources)

    @classmethod
    def scan(
        cls, path: str | Path, settings_for: Callable[[str], ModelSettings] | None = None
    ) -> ModelRepository:
        """Index the packages under ``path`` (nothing is loaded yet).

        Example:
            >>> repo = ModelRepository.scan("models/")        # doctest: +SKIP
            >>> sorted(repo.sources)
            ['cnn', 'mlp']
        """
        return cls(scan_sources(path, settings_for or (lambda folder: ModelSettings())), Path(path))

    def planned(self, name: str) -> list[ModelEntry]:
        """Fresh (not yet loaded) entries for the versions ``name``'s version policy selects."""
        src = self.sources[name]
        chosen = src.settings.version_policy.select(list(src.versions))
        return [ModelEntry(name, v, src.versions[v], settings=src.settings) for v in chosen]

    @property
    def entries(self) -> list[ModelEntry]:
        return [e for versions in self._by_name.values() for e in versions.values()]

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def versions(self, name: str) -> list[str]:
        return sorted(self._by_name.get(name, {}), key=_version_key)

    def get(self, name: str, version: str | None = None) -> ModelEntry | None:
        """The entry for ``name`` (``version`` or the highest ready one); ``None`` if unknown."""
        versions = self._by_name.get(name)
        if not versions:
            return None
        if version is None:
            if len(versions) == 1:
                return next(iter(versions.values()))
            ready = [v for v in versions if versions[v].ready]
            version = max(ready or versions, key=_version_key)
        return versions.get(version)

    def publish(self, name: str, entries: list[ModelEntry], *, keep_failed_old: bool = True) -> None:
        """Make ``entries`` the served versions of ``name`` (event loop thread).

        A new entry that failed to load does not replace a ready old one of the same version
        (``keep_failed_old``): the old one keeps serving and the failure stays in the log and index.
        Versions no longer listed are dropped; requests already running on them finish normally.
        """
        old = self._by_name.get(name, {})
        new: dict[str, ModelEntry] = {}
        for e in entries:
            prev = old.get(e.version)
            if keep_failed_old and not e.ready and prev is not None and prev.ready:
                prev.reason = e.reason
                new[e.version] = prev
            else:
                if prev is not None and prev.ready and e.ready:
                    e.stats = prev.stats
                new[e.version] = e
        self.known.add(name)
        served = {id(e) for e in new.values()}
        for e in old.values():
            if id(e) not in served:
                e.retire()
        if new:
            self._by_name[name] = new
        else:
            self._by_name.pop(name, None)

    def unload(self, name: str) -> list[ModelEntry]:
        """Stop serving ``name``; returns the entries that were served (retired: requests already
        running on them finish)."""
        entries = list(self._by_name.pop(name, {}).values())
        for e in entries:
            e.retire()
        return entries

    @staticmethod
    def load_entry(
        entry: ModelEntry,
        make_session: Callable[[ModelEntry], Session],
        make_runner: Callable[[ModelEntry, Session], ModelRunner],
    ) -> None:
        """Load one entry; a TorchportError marks it UNAVAILABLE with the reason (logged)."""
        entry.fingerprint = fingerprint(entry.path)
        try:
            session = make_session(entry)
            entry.session = session
            entry.input_datatypes = {s.name: PROTOCOL_DATATYPES[s.dtype] for s in session.input_specs}
            entry.output_datatypes = {s.name: PROTOCOL_DATATYPES[s.dtype] for s in session.output_specs}
            entry.text = (
                TextInfer.of(session, entry.name)
                or Text2TextInfer.of(session, entry.name)
                or SpeechInfer.of(session, entry.name)
            )
            entry.signature = InputSignature.of(session, entry.text)
            if entry.text is not None:
                ins, outs = entry.text.metadata()
                entry.input_datatypes.update((t["name"], t["datatype"]) for t in ins)
                entry.output_datatypes.update((t["name"], t["datatype"]) for t in outs)
            entry.runner = make_runner(entry, session)
            entry.state = READY
            entry.reason = ""
            log.info(
                "model %s version %s ready: variant %s on %s (batching: %s)",
                entry.name,
                entry.version,
                session.variant,
                session.provider,
                f"up to {entry.runner.max_batch_size}" if entry.runner.batching else "off",
            )
        except TorchportError as e:
            entry.state = UNAVAILABLE
            entry.reason = _public(
                f"model {entry.name!r} (version {entry.version}) failed to load: {e}", entry
            )
            log.error("%s (folder %s)", entry.reason, entry.path)
        except Exception as e:
            entry.state = UNAVAILABLE
            entry.reason = _public(
                f"model {entry.name!r} (version {entry.version}) failed to load: {type(e).__name__}: {e}",
                entry,
            )
            log.exception("%s (folder %s)", entry.reason, entry.path)

    def index(self) -> list[dict[str, str]]:
        """The repository index (Triton's model repository extension): every model found on disk,
        each served version with its state, models not loaded as UNAVAILABLE / unloaded."""
        out = []
        for name in sorted(set(self.sources) | set(self._by_name)):
            served = self._by_name.get(name)
            if not served:
                out.append({"name": name, "state": UNAVAILABLE, "reason": UNLOADED})
                continue
            for v in sorted(served, key=_version_key):
                e = served[v]
                item = {"name": name, "version": v, "state": e.state}
                if e.reason:
                    item["reason"] = e.reason
                out.append(item)
        return out
