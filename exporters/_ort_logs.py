"""Silencing ONNX Runtime's tools while they run for us (no torch).

ONNX Runtime's quantizer advises on every run through Python's root logger ("Please consider to run
pre-processing before quantization", "Axis 1 is out-of-range for weight ..."), and the sessions it
creates inside (calibration, shape inference, its optimizer) log C++ warnings through ORT's default
logger, as they take no session options from us. torchport reports what matters itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["quiet_ort_logs"]

#: ONNX Runtime's severities: 0 verbose, 1 info, 2 warning (its default), 3 error, 4 fatal
ORT_DEFAULT_SEVERITY = 2
ORT_ERROR = 3


@contextmanager
def quiet_ort_logs() -> Iterator[None]:
    """Python warnings of ONNX Runtime's tools and the C++ warnings of the sessions they create are
    dropped inside; errors still show.

    ORT has no getter for its default logger's severity: on the way out it is set back to ORT's
    default (warning).

    Example:
        >>> with quiet_ort_logs():
        ...     logging.warning("Please consider to run pre-processing before quantization")
    """
    import onnxruntime as ort

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    ort.set_default_logger_severity(ORT_ERROR)
    try:
        yield
    finally:
        ort.set_default_logger_severity(ORT_DEFAULT_SEVERITY)
        logging.disable(previous)
