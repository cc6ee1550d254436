"""HTTP/2 framing (RFC 9113) and gRPC status codes: the wire constants that the gRPC server
(:mod:`torchport.runtimes.server._h2`) and the load generator's client (:mod:`._h2client`) share.

Plain constants and one frame encoder; it needs no third-party package, so importing it costs
nothing where gRPC is not used.
"""

from __future__ import annotations

import struct

#: the client connection preface (RFC 9113 3.4)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: a frame header: (length << 8 | type), flags, stream id (the top bit reserved)
FRAME_HEADER = struct.Struct(">IBI")

# frame types (RFC 9113 6)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
# frame flags
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

# gRPC status codes
OK, CANCELLED, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND = 0, 1, 3, 4, 5
RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, UNAUTHENTICATED = 8, 12, 13, 14, 16
STATUS_NAMES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    """One HTTP/2 frame: the 9-byte header and ``payload``."""
    return FRAME_HEADER.pack((len(payload) << 8) | ftype, flags, sid) + payload
