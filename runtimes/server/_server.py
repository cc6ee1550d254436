"""Server configuration and lifecycle: listen, load + warm up models, serve, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from torchport.runtimes._errors import ServingError, TorchportError
from torchport.runtimes._manifest import MANIFEST_NAME
from torchport.runtimes._session import Session
from torchport.runtimes.server._accesslog import flush_access_log
from torchport.runtimes.server._auth import ApiKeyAuth
from torchport.runtimes.server._batching import ModelRunner
from torchport.runtimes.server._config import ServerConfig
from torchport.runtimes.server._control import ModelControl
from torchport.runtimes.server._http import HttpServer
from torchport.runtimes.server._loading import MetricsApp, check_models, warm_up
from torchport.runtimes.server._metrics import ServerMetrics
from torchport.runtimes.server._repository import READY, ModelEntry, ModelRepository
from torchport.runtimes.server._routes import InferenceApp, on_batch_metrics
from torchport.runtimes.server._speech_infer import SpeechInfer
from torchport.runtimes.server._text2text_infer import Text2TextInfer, Text2TextRunner
from torchport.runtimes.server._triton_layout import open_package

if TYPE_CHECKING:
    from torchport.runtimes.server._grpc import GrpcServer

log = logging.getLogger("torchport.server")


class InferenceServer:
    """Serves a model repository over the Open Inference Protocol v2.

    Example:
        >>> server = InferenceServer("out/cnn", ServerConfig(port=8000))     # doctest: +SKIP
        >>> server.run()                       # blocks; SIGTERM/SIGINT drain and stop it

        In tests, or next to other work in one process:

        >>> handle = InferenceServer("repo/", ServerConfig(port=0)).start_in_thread()  # doctest: +SKIP
        >>> handle.url
        'http://127.0.0.1:41234'
        >>> handle.stop()
    """

    def __init__(self, path: str | os.PathLike[str], config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.path = Path(path)
        cfg = self.config
        self.auth = ApiKeyAuth.from_sources(cfg.api_key_env, cfg.api_key_file)
        self.repository = ModelRepository.scan(self.path, cfg.model_settings)
        # fail fast on configuration mistakes, before binding a socket
        check_models(self.repository, cfg)
        self.single_package = (self.path / MANIFEST_NAME).is_file()
        self.exit_on_error = cfg.exit_on_error if cfg.exit_on_error is not None else self.single_package
        self.metrics = ServerMetrics()
        from torchport import __version__

        self.app = InferenceApp(
            self.repository,
            metrics=self.metrics,
            auth=self.auth,
            max_request_bytes=cfg.max_request_bytes,
            server_version=__version__,
        )
        self.app.strict_readiness = cfg.strict_readiness
        self.app.metrics_public = cfg.metrics_public or cfg.metrics_port is not None
        self.http = HttpServer(self.app, limits=cfg.http_limits())
        self.metrics_http: HttpServer | None = None
        instances = [
            s.instances or cfg.worker_threads
            for s in (src.settings for src in self.repository.sources.values())
        ]
        self.executor = ThreadPoolExecutor(
            max([cfg.worker_threads, *instances]), thread_name_prefix="torchport-infer"
        )
        self.control = ModelControl(
            self.repository,
            self._load_entry,
            self.executor,
            cfg.model_settings,
            on_change=self._models_changed,
        )
        self.app.control = self.control if cfg.model_control != "none" else None
        self.app.model_control = cfg.model_control
        self.grpc: GrpcServer | None = None
        #: command-line values that win over the config file when SIGHUP re-reads it
        self.flag_overrides: dict = {}
        self.port: int | None = None
        self.grpc_port: int | None = None
        self.metrics_port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._listening = threading.Event()
        self._loaded = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def grpc_url(self) -> str | None:
        return f"{self._host}:{self.grpc_port}" if self.grpc_port is not None else None

    @property
    def _host(self) -> str:
        return self.config.host if self.config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"

    # -- model loading ----------------------------------------------------------------------------

    def _make_session(self, entry: ModelEntry) -> Session:
        st = entry.settings
        session = Session.from_package(
            open_package(entry.path),
            variant=st.variant,
            providers=st.providers,
            allow_fallback=st.allow_fallback,
            intra_op_threads=st.intra_op_threads,
            inter_op_threads=1,
            spinning=False,
        )
        if st.warmup:
            warm_up(session, entry, st.warmup, st.warmup_inputs)
        return session

    def _make_runner(self, entry: ModelEntry, session: Session) -> ModelRunner:
        st = entry.settings
        if isinstance(entry.text, Text2TextInfer | SpeechInfer):  # infer's text/audio: the generate engine
            return Text2TextRunner(entry, session, self.executor)
        return ModelRunner(
            session,
            self.executor,
            max_batch_size=st.max_batch_size,
            max_queue_delay=st.max_queue_delay_ms / 1000.0,
            workers=st.instances or self.config.worker_threads,
            on_batch=on_batch_metrics(self.metrics, entry.name, entry),
            inline_below=self.config.inline_below_us / 1e6,
        )

    def _load_entry(self, entry: ModelEntry) -> None:
        self.repository.load_entry(entry, self._make_session, self._make_runner)

    def _initial_models(self) -> list[str]:
        cfg = self.config
        if cfg.model_control != "explicit":
            return sorted(self.repository.sources)
        by_folder = {src.folder: name for name, src in self.repository.sources.items()}
        return sorted(set(cfg.load) | {by_folder[f] for f in cfg.models if f in by_folder})

    def _load_initial(self, entries: list[ModelEntry]) -> None:
        """Load the models served from the start (in the executor; they are already published as LOADING)."""
        for entry in entries:
            self._load_entry(entry)

    def _models_changed(self) -> None:
        """After a load/unload/poll: strict readiness follows what is meant to be served now."""
        self.app.expected = {(e.name, e.version) for e in self.repository.entries}
        self._publish_model_metrics()

    def _publish_model_metrics(self) -> None:
        self.metrics.model_ready.values.clear()
        self.metrics.model_info.values.clear()
        for e in self.repository.entries:
            self.metrics.model_ready.set(e.name, e.version, value=1 if e.state == READY else 0)
            if e.session is not None:
                self.metrics.model_info.set(e.name, e.version, e.session.provider, value=1)

    # -- lifecycle --------------------------------------------------------------------------------

    async def serve(self, *, install_signal_handlers: bool = True) -> None:
        """Listen, load the models (warm-up included), serve until stopped, then drain.

        Raises:
            ServingError: a model failed to load and ``exit_on_error`` is on (after closing).
        """
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop = asyncio.Event()
        cfg = self.config
        self.port = await self.http.start(cfg.host, cfg.port)
        failure: ServingError | None = None
        try:
            if cfg.metrics_port is not None:
                self.metrics_http = HttpServer(MetricsApp(self.metrics), max_request_bytes=1024)
                self.metrics_port = await self.metrics_http.start(cfg.host, cfg.metrics_port)
                log.info("metrics on http://%s:%d/metrics", self._host, self.metrics_port)
            if cfg.grpc_port is not None:
                from torchport.runtimes.server._grpc import GrpcServer

                self.grpc = GrpcServer(self.app, cfg.http_limits(), self.http.reserve, self.http.release)
                self.grpc_port = await self.grpc.start(cfg.host, cfg.grpc_port, cfg.max_request_bytes)
                log.info("gRPC on %s", self.grpc_url)
            log.info(
                "listening on %s (models load in the background; /v2/health/ready turns 200 when done)",
                self.url,
            )
            if install_signal_handlers:
                self._install_signal_handlers(loop)
            self._listening.set()
            for src in self.repository.sources.values():
                if src.why:
                    log.info("folder %s served as model %r (%s)", src.folder, src.name, src.why)
            attempted = []
            for name in self._initial_models():
                entries = self.repository.planned(name)
                self.repository.publish(name, entries)
                attempted.extend(entries)
            self.app.expected = {(e.name, e.version) for e in attempted}
            await loop.run_in_executor(self.executor, self._load_initial, attempted)
            self._publish_model_metrics()
            self.app.loaded = True
            ready = [f"{e.name}:{e.version}" for e in attempted if e.ready]
            failed = [e for e in attempted if not e.ready]
            if ready:
                log.info("ready: serving %s on %s", ", ".join(ready), self.url)
            for e in failed:
                log.error("not serving %s", e.reason)
            if failed and self.exit_on_error:
                failure = ServingError(
                    "; ".join(e.reason for e in failed)
                    + " (exiting: --exit-on-error; pass --no-exit-on-error to serve the others)"
                )
                self._error = failure
                self._stop.set()
            elif not ready:
                log.error("no model could be loaded; /v2/health/ready stays 503")
            self._loaded.set()
            poller = loop.create_task(self._poll_loop()) if cfg.model_control == "poll" else None
            await self._stop.wait()
            if poller is not None:
                poller.cancel()
            self.app.draining = True
            inflight = self.http.inflight + (self.grpc.inflight if self.grpc else 0)
            if inflight:
                log.info("draining %d in-flight request(s) (up to %.0f s)", inflight, cfg.drain_timeout)
            drained = await self.http.drain(cfg.drain_timeout)
            if self.grpc is not None:
                drained = await self.grpc.drain(cfg.drain_timeout) and drained
            if not drained:
                log.warning("drain timeout: requests still in flight are dropped")
        finally:
            await self.http.close()
            if self.metrics_http is not None:
                await self.metrics_http.close()
            if self.grpc is not None:
                await self.grpc.close()
            for entry in self.repository.entries:
                entry.retire()
            self.executor.shutdown(wait=False, cancel_futures=True)
            self._loaded.set()
            flush_access_log()
            log.info("stopped")
        if failure is not None:
            raise failure

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._begin_shutdown, sig)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - not the main thread
                pass
        try:
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        except (NotImplementedError, RuntimeError, AttributeError):  # pragma: no cover
            pass

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval)
            try:
                await self.control.poll()
            except Exception:  # pragma: no cover - a poll must never stop the server
                log.exception("poll of %s failed", self.path)

    def request_reload(self) -> None:
        """Re-read the config file and reload every loaded model with it (what SIGHUP does; thread-safe)."""
        loop = self._loop
        if loop is None:
            return
        loop.call_soon_threadsafe(lambda: loop.create_task(self._reload()))

    async def _reload(self) -> None:
        path = self.config.config_path
        log.info("SIGHUP: reloading %s", path or "the models (no --config file)")
        try:
            new = ServerConfig.from_toml(path, **self.flag_overrides) if path else self.config
            check_models(ModelRepository.scan(self.path, new.model_settings), new)
        except TorchportError as e:
            log.error("SIGHUP: config not reloaded, keeping the running one: %s", e)
            return
        self.config.models = new.models
        await self.control.reload_config(new.model_settings)
        log.info("SIGHUP: reload done")

    def _begin_shutdown(self, sig: int | None = None) -> None:
        if self._stop is not None and not self._stop.is_set():
            if sig is not None:
                log.info(
                    "received %s: finishing in-flight requests, answering new ones with 503",
                    signal.Signals(sig).name,
                )
            self.app.draining = True
            self._stop.set()

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT (blocking)."""
        runner = asyncio.run
        if not os.environ.get("TORCHPORT_NO_UVLOOP"):
            try:
                import uvloop  # type: ignore[import-not-found]

                runner = uvloop.run
            except ImportError:
                pass
        runner(self.serve())

    def start_in_thread(self, *, wait_ready: bool = True, timeout: float = 60.0) -> InferenceServer:
        """Serve from a background thread; returns once listening (and loaded, with ``wait_ready``)."""

        def target() -> None:
            try:
                asyncio.run(self.serve(install_signal_handlers=False))
            except BaseException as e:  # surfaced by the waiting caller
                self._error = e
                self._listening.set()
                self._loaded.set()

        self._thread = threading.Thread(target=target, name="torchport-server", daemon=True)
        self._thread.start()
        if not self._listening.wait(timeout):
            raise ServingError(f"the server did not start listening within {timeout:.0f} s")
        if self._error is not None:
            raise ServingError(f"the server failed to start: {self._error}") from self._error
        if wait_ready and not self._loaded.wait(timeout):
            raise ServingError(f"models did not load within {timeout:.0f} s")
        if self._error is not None:
            self._thread.join(timeout)
            if isinstance(self._error, ServingError):
                raise self._error
            raise ServingError(f"the server failed: {self._error}") from self._error
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Drain and stop a server started with :meth:`start_in_thread` (thread-safe)."""
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._begin_shutdown)
            except RuntimeError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)


def serve(path: str | os.PathLike[str], config: ServerConfig | None = None) -> None:
    """Serve the package or repository at ``path`` until SIGTERM/SIGINT.

    Example:
        >>> serve("out/cnn", ServerConfig(host="0.0.0.0", port=8000, max_batch_size=32))  # doctest: +SKIP
    """
    InferenceServer(path, config).run()
