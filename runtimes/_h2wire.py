"""HTTP/2 framing (RFC 9113): the wire constants of the gRPC server's framing
(:mod:`torchport.runtimes.server._h2`; the load generator's client is the ``h2`` library's).

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


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    """One HTTP/2 frame: the 9-byte header and ``payload``."""
    return FRAME_HEADER.pack((len(payload) << 8) | ftype, flags, sid) + payload
