"""Checks and steps around loading models: config vs the folder, warm-up, the metrics-only app."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from torchport.runtimes._errors import UsageError, first_line
from torchport.runtimes._providers import resolve_providers
from torchport.runtimes._session import Session
from torchport.runtimes.server._config import ServerConfig
from torchport.runtimes.server._http import Request, Response
from torchport.runtimes.server._metrics import ServerMetrics
from torchport.runtimes.server._protocol import json_dumps
from torchport.runtimes.server._repository import ModelEntry, ModelRepository

log = logging.getLogger("torchport.server")


def check_models(repository: ModelRepository, config: ServerConfig) -> None:
    """Refuse a config that names folders or models the repository does not have, or providers
    that are not available (before any socket is bound).

    Raises:
        UsageError / ProviderError: with what exists, or which providers are available.
    """
    folders = {src.folder for src in repository.sources.values()}
    where = config.config_path or "serve.toml"
    for folder in config.models:
        if folder not in folders:
            import difflib

            close = difflib.get_close_matches(folder, sorted(folders), n=1)
            hint = f"did you mean [models.{close[0]}]?" if close else f"folders: {', '.join(sorted(folders))}"
            raise UsageError(f"{where}: [models.{folder}] names no model folder in the repository; {hint}")
    for name in config.load:
        if name not in repository.sources:
            raise UsageError(
                f"--load {name}: no such model in the repository; models: {', '.join(sorted(repository.sources))}"
            )
    for src in repository.sources.values():
        resolve_providers(src.settings.providers, allow_fallback=src.settings.allow_fallback)


def warm_up(session: Session, entry: ModelEntry, runs: int, inputs: Path | None) -> None:
    """``runs`` warm-up runs on ``inputs`` (a .npz, one array per input) or on random inputs.

    Random inputs that the model rejects only log a warning; given inputs that fail make the
    model fail to load (the user's own data should run).
    """
    start = time.perf_counter()
    if inputs is not None:
        with np.load(inputs) as data:
            feeds = {k: data[k] for k in data.files}
        session.validate_inputs(feeds)
        for _ in range(runs):
            session.run(feeds, validate=False)
    else:
        try:
            session.warmup(runs)
        except Exception as e:  # random inputs may be illegal for this model: warn, still serve
            log.warning(
                "model %s version %s: warm-up on random inputs failed (%s: %s); serving without warm-up",
                entry.name,
                entry.version,
                type(e).__name__,
                first_line(e),
            )
            return
    log.info(
        "model %s version %s: %d warm-up run(s)%s in %.3f s",
        entry.name,
        entry.version,
        runs,
        f" on {inputs}" if inputs else "",
        time.perf_counter() - start,
    )


class MetricsApp:
    """The ``--metrics-port`` listener: ``/metrics`` only, no auth (scrapers reach it on a private port)."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def handle(self, req: Request) -> Response:
        if req.path != "/metrics":
            return self.error_response(404, f"only /metrics is served on this port, not {req.path}")
        if req.method not in ("GET", "HEAD"):
            return self.error_response(405, "/metrics accepts GET or HEAD")
        return Response(200, self.metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")

    def error_response(self, status: int, message: str) -> Response:
        return Response(status, json_dumps({"error": message}))

    def on_response(self, req: Request, resp: Response, nbytes: int) -> None:
        pass
