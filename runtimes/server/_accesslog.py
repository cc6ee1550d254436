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
    whatever is left at :meth:`flush` (called on server stop and at exit).

    A line may be queued as the record tuple :func:`access_line` takes: it is formatted when
    written out, off the request's path."""

    def __init__(self, stream: IO[str], interval: float = 0.02) -> None:
        super().__init__(stream)
        self.interval = interval
        self._lines: list[str | tuple] = []
        self._scheduled = False
        atexit.register(self.flush)

    def write_line(self, line: str | tuple) -> None:
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
            lines, self._lines = self._lines, []
            data = "\n".join(line if isinstance(line, str) else access_line(line) for line in lines) + "\n"
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
    """Log one request: a JSON line with ``ts``, ``client``, ``method``, ``path``, ``status``,
    ``duration_ms``, ``bytes_in``, ``bytes_out`` and, when known, ``model`` and ``request_id``.

    With the server's own handler the line is queued as its values and formatted when written out
    (see :class:`BufferedLineHandler`), off the request's path."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    record = (time.time(), client, method, path, status, duration, bytes_in, bytes_out, model, request_id)
    writer = _writer
    if writer is not None and access_log.handlers == [writer]:
        writer.write_line(record)  # skips building a LogRecord per request
    else:
        access_log.info(access_line(record))


def access_line(record: tuple) -> str:
    """One access line (JSON) of a record ``(time, client, method, path, status, duration, bytes_in,
    bytes_out, model, request_id)`` as :func:`log_access` queues it. What repeats from request to
    request (client, method, path, model) is escaped once and kept, and the timestamp's text changes
    once a millisecond."""
    now, client, method, path, status, duration, bytes_in, bytes_out, model, request_id = record
    ms = int(now * 1000)
    if ms != _ts_cache[0]:  # the timestamp text changes once a millisecond, its date once a second
        if ms // 1000 != _ts_cache[2]:
            _ts_cache[2] = ms // 1000
            _ts_cache[3] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000))
        _ts_cache[0], _ts_cache[1] = ms, f"{_ts_cache[3]}.{ms % 1000:03d}Z"
    key = (client, method, path, model)
    parts = _parts_cache.get(key)
    if parts is None:
        if len(_parts_cache) >= _PARTS_CACHE_SIZE:
            _parts_cache.clear()
        middle = f'","client":{_dumps(client)},"method":{_dumps(method)},"path":{_dumps(path)},"status":'
        tail = "" if model is None else f',"model":{_dumps(model)}'
        parts = _parts_cache[key] = (middle, tail)
    middle, tail = parts
    return (
        f'{{"ts":"{_ts_cache[1]}{middle}{status},'
        f'"duration_ms":{int(duration * 1e6 + 0.5) / 1000!r},"bytes_in":{bytes_in},"bytes_out":{bytes_out}{tail}'
        + ("}" if request_id is None else f',"request_id":{_dumps(request_id)}}}')
    )


#: [millisecond, its text, second, its text]
_ts_cache: list = [0, "", 0, ""]
#: escaped (client, method, path, model) parts of recent lines
_parts_cache: dict[tuple, tuple[str, str]] = {}
_PARTS_CACHE_SIZE = 1024

try:
    import orjson as _orjson

    def _dumps(obj: object) -> str:
        return _orjson.dumps(obj).decode()

except ImportError:  # pragma: no cover - orjson is optional

    def _dumps(obj: object) -> str:
        return json.dumps(obj)
