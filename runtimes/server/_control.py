"""Model control (Triton's repository extension): load, unload, poll the folder, reload the config.

Every change is loaded off the event loop (hashes verified, warm-up done), then published on the
loop in one step, so a request either sees the old version or the new one; requests already
running on the old one finish on it. A new version that fails to load leaves the old one serving;
the failure is logged and shown in the repository index.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor

from torchport.runtimes._errors import ServingError, TorchportError
from torchport.runtimes.server._repository import (
    ModelEntry,
    ModelRepository,
    fingerprint,
    scan_sources,
)

log = logging.getLogger("torchport.server")


class ModelControl:
    """Loads and unloads the models of one repository (one operation at a time).

    Args:
        repository: the served repository.
        load_entry: loads one :class:`ModelEntry` in place (runs in ``executor``).
        executor: where loading runs.
        settings_for: folder name -> settings (re-read on :meth:`reload_config`).
        on_change: called on the loop after each publish (metrics).
    """

    def __init__(
        self,
        repository: ModelRepository,
        load_entry: Callable[[ModelEntry], None],
        executor: Executor,
        settings_for: Callable,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.repository = repository
        self.load_entry = load_entry
        self.executor = executor
        self.settings_for = settings_for
        self.on_change = on_change
        self._lock = asyncio.Lock()
        #: (name, version) -> the entry that failed to load (not retried until its folder changes)
        self._failed: dict[tuple[str, str], ModelEntry] = {}

    def rescan(self) -> None:
        """Re-read the folder: new models and versions become known (nothing loads)."""
        if self.repository.root is None:
            return
        self.repository.sources = scan_sources(self.repository.root, self.settings_for)
        self.repository.known |= set(self.repository.sources)

    async def load(self, name: str, *, force: bool = True) -> list[ModelEntry]:
        """Load (or reload) ``name``'s versions per its version policy and serve them.

        With ``force`` every selected version loads again; otherwise only new or changed ones.

        Raises:
            ServingError: no such model in the folder, or none of its versions could be loaded
                (an old version keeps serving).
        """
        async with self._lock:
            try:
                self.rescan()
            except ServingError as e:
                raise ServingError(f"cannot load {name!r}: {e}") from e
            if name not in self.repository.sources:
                known = ", ".join(sorted(self.repository.sources)) or "none"
                raise ServingError(f"no model {name!r} in the repository folder; models there: {known}")
            return await self._sync(name, force=force)

    async def unload(self, name: str) -> None:
        """Stop serving ``name`` (requests already running finish).

        Raises:
            ServingError: ``name`` is not loaded.
        """
        async with self._lock:
            if not self.repository.unload(name):
                raise ServingError(f"model {name!r} is not loaded")
            log.info("model %s unloaded", name)
            self.on_change()

    async def poll(self) -> None:
        """One scan: load new or changed versions, drop versions and models gone from the folder."""
        async with self._lock:
            try:
                self.rescan()
            except ServingError as e:
                log.warning("poll: %s", e)
                return
            for name in list(self.repository.names()):
                if name not in self.repository.sources:
                    self.repository.unload(name)
                    log.info("poll: model %s left the folder; unloaded", name)
                    self.on_change()
            for name in sorted(self.repository.sources):
                try:
                    await self._sync(name, force=False)
                except ServingError:
                    pass  # logged and shown in the index; the old version (if any) keeps serving

    async def _sync(self, name: str, *, force: bool) -> list[ModelEntry]:
        current = {e.version: e for e in self.repository.entries if e.name == name}
        todo: list[ModelEntry] = []
        final: dict[str, ModelEntry] = {}
        for entry in self.repository.planned(name):
            old = current.get(entry.version)
            fp = fingerprint(entry.path)
            if not force and old is not None and old.ready and old.fingerprint == fp:
                final[entry.version] = old
            elif (
                not force
                and (name, entry.version) in self._failed
                and self._failed[name, entry.version].fingerprint == fp
            ):
                final[entry.version] = old or self._failed[name, entry.version]  # unchanged since it failed
            else:
                todo.append(entry)
                final[entry.version] = entry
        loop = asyncio.get_running_loop()
        for entry in todo:
            await loop.run_in_executor(self.executor, self.load_entry, entry)
            if entry.ready:
                self._failed.pop((name, entry.version), None)
            else:
                self._failed[(name, entry.version)] = entry
        if any(not e.ready for e in final.values()):
            # a broken new version must not take the serving ones away: keep every ready old version
            for v, e in current.items():
                if e.ready and v not in final:
                    final[v] = e
            kept = sorted(v for v, e in current.items() if e.ready)
            for e in todo:
                if not e.ready and kept:
                    log.error("keeping version %s of %s serving: %s", ", ".join(kept), name, e.reason)
        if todo or set(current) != set(final) or any(current.get(v) is not e for v, e in final.items()):
            self.repository.publish(name, list(final.values()))
            self.on_change()
            for entry in todo:
                if entry.ready:
                    log.info(
                        "model %s version %s %s",
                        name,
                        entry.version,
                        "reloaded" if entry.version in current else "loaded",
                    )
        failed = [e for e in todo if not e.ready]
        if failed:
            kept = [e.version for e in self.repository.entries if e.name == name and e.ready]
            tail = f" (version {', '.join(kept)} keeps serving)" if kept else ""
            raise ServingError("; ".join(e.reason for e in failed) + tail)
        return list(final.values())

    async def reload_config(self, settings_for: Callable) -> None:
        """Use new settings (SIGHUP): every loaded model is reloaded with them, swapping in place."""
        self.settings_for = settings_for
        for name in list(self.repository.names()):
            try:
                await self.load(name, force=True)
            except TorchportError as e:
                log.error("reload of %s failed: %s", name, e)
