"""Structured access logs: one JSON object per request on the ``torchport.access`` logger."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO

access_log = logging.getLogger("torchport.access")


class _RawFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


class JsonFormatter(logging.Formatter):
    """Server (non-access) log records as JSON lines too, so one parser reads both streams."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data)


def configure_logging(enabled: bool = True, stream: IO[str] | None = None, level: int = logging.INFO) -> None:
    """Send access lines (raw JSON) and server logs (JSON) to ``stream`` (stderr by default)."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_RawFormatter())
    access_log.handlers[:] = [handler]
    access_log.propagate = False
    access_log.setLevel(logging.INFO if enabled else logging.CRITICAL + 1)
    server_handler = logging.StreamHandler(stream)
    server_handler.setFormatter(JsonFormatter())
    for name in ("torchport.server", "torchport.runtimes"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [server_handler]
        lg.propagate = False
        lg.setLevel(level)


def log_access(
    *,
    client: str,
    method: str,
    path: str,
    status: int,
    duration: float,
    bytes_in: int,
    bytes_out: int,
    model: str | None,
    request_id: str | None,
) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    now = time.time()
    entry = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z",
        "client": client,
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": round(duration * 1000, 3),
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
    }
    if model is not None:
        entry["model"] = model
    if request_id is not None:
        entry["request_id"] = request_id
    access_log.info(json.dumps(entry))
