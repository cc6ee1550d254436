"""Server configuration and lifecycle: listen, load + warm up models, serve, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from torchport.runtimes._errors import ServingError, UsageError
from torchport.runtimes._providers import resolve_providers
from torchport.runtimes._session import Session
from torchport.runtimes.server._auth import ApiKeyAuth
from torchport.runtimes.server._batching import ModelRunner
from torchport.runtimes.server._http import HttpServer
from torchport.runtimes.server._metrics import ServerMetrics
from torchport.runtimes.server._repository import READY, ModelEntry, ModelRepository
from torchport.runtimes.server._routes import InferenceApp, on_batch_metrics

log = logging.getLogger("torchport.server")


@dataclass
class ServerConfig:
    """Everything ``torchport serve`` can set.

    Attributes:
        host / port: where to listen (port 0 picks a free port).
        providers: execution providers in priority order (``"cpu"``, ``"cuda"``, ``"tensorrt"``...).
        allow_fallback: serve on the next available provider when a requested one is missing.
        variant: package variant to serve (``fp32``, ``fp16``, ``int8``).
        max_batch_size: dynamic batching limit in rows; 1 turns batching off.
        max_queue_delay_ms: longest a request waits for others to join its batch.
        threads: inference worker threads (= batches in flight per model); default: CPU count.
        intra_op_threads: ONNX Runtime threads per run (default 1: parallelism comes from workers).
        warmup: warm-up runs per model before it reports ready.
        api_key_env / api_key_file: where to read the API key (auth is off without one).
        max_request_bytes: request body limit (413 above it).
        drain_timeout: seconds SIGTERM waits for in-flight requests.
        access_log: write one JSON line per request.
        inline_below_us: run a model on the event loop thread instead of the pool when its runs
            average less than this many microseconds (a thread hand-off costs more); 0 disables.
        idle_timeout: close connections idle (keep-alive, or stalled mid-request) for this many seconds.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    providers: str | Sequence[str] = "cpu"
    allow_fallback: bool = False
    variant: str = "fp32"
    max_batch_size: int = 32
    max_queue_delay_ms: float = 0.0
    threads: int | None = None
    intra_op_threads: int | None = 1
    warmup: int = 2
    api_key_env: str | None = None
    api_key_file: str | None = None
    max_request_bytes: int = 64 * 1024 * 1024
    drain_timeout: float = 30.0
    access_log: bool = True
    idle_timeout: float = 75.0
    inline_below_us: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port {self.port} is not a TCP port; use 0..65535 (0 picks a free one)")
        if self.max_batch_size < 1:
            raise UsageError(
                f"--max-batch-size must be >= 1 (1 turns batching off), got {self.max_batch_size}"
            )
        if self.max_queue_delay_ms < 0:
            raise UsageError(f"--max-queue-delay-ms must be >= 0, got {self.max_queue_delay_ms}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")
        if self.max_request_bytes < 1024:
            raise UsageError(f"--max-request-bytes must be at least 1024, got {self.max_request_bytes}")
        if self.idle_timeout <= 0:
            raise UsageError(f"idle_timeout must be > 0 seconds, got {self.idle_timeout}")
        if self.warmup < 0:
            raise UsageError(f"--warmup must be >= 0, got {self.warmup}")

    @property
    def worker_threads(self) -> int:
        return self.threads or max(1, min(8, os.cpu_count() or 1))


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
        # fail fast on configuration mistakes, before binding a socket
        resolve_providers(self.config.providers, allow_fallback=self.config.allow_fallback)
        self.auth = ApiKeyAuth.from_sources(self.config.api_key_env, self.config.api_key_file)
        self.repository = ModelRepository.scan(self.path)
        self.metrics = ServerMetrics()
        from torchport import __version__

        self.app = InferenceApp(
            self.repository,
            metrics=self.metrics,
            auth=self.auth,
            max_request_bytes=self.config.max_request_bytes,
            server_version=__version__,
        )
        self.http = HttpServer(
            self.app, max_request_bytes=self.config.max_request_bytes, idle_timeout=self.config.idle_timeout
        )
        self.executor = ThreadPoolExecutor(self.config.worker_threads, thread_name_prefix="torchport-infer")
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._listening = threading.Event()
        self._loaded = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        host = self.config.host if self.config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"http://{host}:{self.port}"

    # -- model loading ----------------------------------------------------------------------------

    def _make_session(self, entry: ModelEntry) -> Session:
        cfg = self.config
        session = Session.from_package(
            entry.path,
            variant=cfg.variant,
            providers=cfg.providers,
            allow_fallback=cfg.allow_fallback,
            intra_op_threads=cfg.intra_op_threads,
            inter_op_threads=1,
            spinning=False,
        )
        if cfg.warmup:
            try:
                seconds = session.warmup(cfg.warmup)
                log.info(
                    "model %s version %s: %d warm-up run(s) in %.3f s",
                    entry.name,
                    entry.version,
                    cfg.warmup,
                    seconds,
                )
            except Exception as e:  # random inputs may be illegal for this model: warn, still serve
                log.warning(
                    "model %s version %s: warm-up on random inputs failed (%s: %s); serving without warm-up",
                    entry.name,
                    entry.version,
                    type(e).__name__,
                    str(e).strip().splitlines()[0] if str(e).strip() else "",
                )
        return session

    def _make_runner(self, entry: ModelEntry, session: Session) -> ModelRunner:
        cfg = self.config
        return ModelRunner(
            session,
            self.executor,
            max_batch_size=cfg.max_batch_size,
            max_queue_delay=cfg.max_queue_delay_ms / 1000.0,
            workers=cfg.worker_threads,
            on_batch=on_batch_metrics(self.metrics, entry.name),
            inline_below=cfg.inline_below_us / 1e6,
        )

    def _load_all(self) -> None:
        for entry in self.repository.entries:
            self.repository.load_entry(entry, self._make_session, self._make_runner)

    def _publish_model_metrics(self) -> None:
        for e in self.repository.entries:
            self.metrics.model_ready.set(e.name, e.version, value=1 if e.state == READY else 0)
            if e.session is not None:
                self.metrics.model_info.set(e.name, e.version, e.session.provider, value=1)

    # -- lifecycle --------------------------------------------------------------------------------

    async def serve(self, *, install_signal_handlers: bool = True) -> None:
        """Listen, load every model (warm-up included), serve until stopped, then drain."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop = asyncio.Event()
        self.port = await self.http.start(self.config.host, self.config.port)
        log.info(
            "listening on %s (models load in the background; /v2/health/ready turns 200 when done)", self.url
        )
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self._begin_shutdown, sig)
                except (
                    NotImplementedError,
                    RuntimeError,
                ):  # pragma: no cover - not the main thread / Windows
                    pass
        self._listening.set()
        try:
            await loop.run_in_executor(self.executor, self._load_all)
            self._publish_model_metrics()
            self.app.loaded = True
            ready = [f"{e.name}:{e.version}" for e in self.repository.entries if e.ready]
            failed = [e for e in self.repository.entries if not e.ready]
            if ready:
                log.info("ready: serving %s on %s", ", ".join(ready), self.url)
            for e in failed:
                log.error("not serving %s", e.reason)
            if not ready:
                log.error("no model could be loaded; /v2/health/ready stays 503")
            self._loaded.set()
            await self._stop.wait()
            self.app.draining = True
            inflight = self.http.inflight
            if inflight:
                log.info(
                    "draining %d in-flight request(s) (up to %.0f s)", inflight, self.config.drain_timeout
                )
            drained = await self.http.drain(self.config.drain_timeout)
            if not drained:
                log.warning("drain timeout: %d request(s) still in flight are dropped", self.http.inflight)
        finally:
            await self.http.close()
            self.executor.shutdown(wait=False, cancel_futures=True)
            self._loaded.set()
            log.info("stopped")

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
