"""Structured access logs: one JSON object per request on the ``torchport.access`` logger."""

from __future__ import annotations

import asyncio
import atexit
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


class BufferedLineHandler(logging.StreamHandler):
    """Writes access lines in batches: at most every ``interval`` seconds from the event loop
    (one write and flush for many requests, not one per request), at once outside a loop, and
    whatever is left at :meth:`flush` (called on server stop and at exit)."""

    def __init__(self, stream: IO[str], interval: float = 0.02) -> None:
        super().__init__(stream)
        self.interval = interval
        self._lines: list[str] = []
        self._scheduled = False
        atexit.register(self.flush)

    def write_line(self, line: str) -> None:
        self._lines.append(line)
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_later(self.interval, self.flush)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record))
        except Exception:  # pragma: no cover - logging must never break serving
            self.handleError(record)

    def flush(self) -> None:
        self._scheduled = False
        if self._lines:
            data = "\n".join(self._lines) + "\n"
            self._lines.clear()
            try:
                self.stream.write(data)
            except ValueError:  # pragma: no cover - the stream was closed at exit
                return
        super().flush()


_writer: BufferedLineHandler | None = None


def flush_access_log() -> None:
    """Write out buffered access lines (the server calls this when it stops)."""
    if _writer is not None:
        _writer.flush()


def configure_logging(enabled: bool = True, stream: IO[str] | None = None, level: int = logging.INFO) -> None:
    """Send access lines (raw JSON) and server logs (JSON) to ``stream`` (stderr by default)."""
    global _writer
    stream = stream or sys.stderr
    if _writer is not None:
        _writer.flush()
    handler = _writer = BufferedLineHandler(stream)
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
    second = int(now)
    if second != _ts_cache[0]:
        _ts_cache[0], _ts_cache[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    entry = {
        "ts": f"{_ts_cache[1]}.{int(now * 1000) % 1000:03d}Z",
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
    line = _dumps(entry)
    if _writer is not None and access_log.handlers == [_writer]:
        _writer.write_line(line)  # skips building a LogRecord per request
    else:
        access_log.info(line)


_ts_cache: list = [0, ""]

try:
    import orjson as _orjson

    def _dumps(obj: dict) -> str:
        return _orjson.dumps(obj).decode()

except ImportError:  # pragma: no cover - orjson is optional

    def _dumps(obj: dict) -> str:
        return json.dumps(obj)
