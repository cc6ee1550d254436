"""Silencing torch's loggers and warnings while tracing (we analyse and report failures ourselves)."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout

__all__ = ["quiet_torch_logs"]


@contextmanager
def quiet_torch_logs(enabled: bool = True) -> Iterator[None]:
    """Silence torch's export/dynamo loggers (they print graphs, guards and hints on failures that we
    analyse and report ourselves) and Python warnings raised while tracing."""
    if not enabled:
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    sink = io.StringIO()  # torch prints partial graphs on some failures; the analysis reports them
    try:
        with warnings.catch_warnings(), redirect_stdout(sink), redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
