"""HPACK (RFC 7541): a header block decoder with a dynamic table, and the few encodings we send.

The decoder reads what any HTTP/2 client sends (indexed fields, literals with and without indexing,
table size updates, Huffman strings via the ``hpack`` package's decoder) and enforces a limit on the
decoded header list. We encode our own headers as literals without indexing and without Huffman, so
the peer's decoder table never depends on what we sent.
"""

from __future__ import annotations

from collections import deque

from torchport.runtimes._errors import ServingError

try:
    from hpack.exceptions import HPACKDecodingError
    from hpack.huffman_table import decode_huffman
    from hpack.table import HeaderTable
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ServingError(
        "--grpc-port needs hpack: pip install 'torchport[serve]' (or pip install hpack)"
    ) from e

#: the static table (RFC 7541 appendix A), decoded once
_STATIC = tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in HeaderTable.STATIC_TABLE)
_STATIC_LEN = len(_STATIC)
#: the per-entry overhead of the dynamic table (RFC 7541 4.1)
_ENTRY_OVERHEAD = 32
#: integers longer than this many continuation bytes are refused (no header needs more than 2^28)
_MAX_INT_BYTES = 4


class HpackError(Exception):
    """A header block that cannot be decoded (a connection error: COMPRESSION_ERROR)."""


class HeaderListTooLarge(Exception):
    """The decoded header list exceeds the limit (the stream is refused; the table stays in sync)."""


class Decoder:
    """Decodes header blocks of one connection (the dynamic table lives across blocks).

    Args:
        max_table_size: SETTINGS_HEADER_TABLE_SIZE we advertise (the peer's table size updates may
            not exceed it).
        max_header_list_size: the most bytes (name + value + 32 per field) one block may decode to.
    """

    def __init__(self, max_table_size: int = 4096, max_header_list_size: int = 16384) -> None:
        self.max_table_size = max_table_size
        self.table_size = max_table_size
        self.max_header_list_size = max_header_list_size
        self._dynamic: deque[tuple[str, str]] = deque()
        self._used = 0
        #: changes whenever the dynamic table does (a block decoded at the same generation without
        #: changing it decodes the same again)
        self.generation = 0

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        """The (name, value) fields of ``block`` (names lower-case, latin-1 text).

        Raises:
            HpackError: a malformed block (the connection must close).
            HeaderListTooLarge: a valid block decoding to more than ``max_header_list_size``.
        """
        fields: list[tuple[str, str]] = []
        pos, end = 0, len(block)
        size = 0
        too_large = False
        first = True
        try:
            while pos < end:
                b = block[pos]
                if b & 0x80:  # indexed header field
                    index, pos = self._int(block, pos, 7)
                    field = self._get(index)
                elif b & 0x40:  # literal with incremental indexing
                    field, pos = self._literal(block, pos, 6)
                    self._add(field)
                elif b & 0x20:  # dynamic table size update: only at the start of a block
                    if not first:
                        raise HpackError("a dynamic table size update after the first header field")
                    new, pos = self._int(block, pos, 5)
                    if new > self.max_table_size:
                        raise HpackError(
                            f"table size update to {new} exceeds the advertised {self.max_table_size}"
                        )
                    self.table_size = new
                    self.generation += 1
                    self._evict(0)
                    continue
                else:  # literal without indexing (0000) or never indexed (0001)
                    field, pos = self._literal(block, pos, 4)
                first = False
                size += len(field[0]) + len(field[1]) + _ENTRY_OVERHEAD
                if size > self.max_header_list_size:
                    too_large = True  # keep decoding: the dynamic table must stay in sync
                    fields.clear()
                elif not too_large:
                    fields.append(field)
        except IndexError:
            raise HpackError("truncated header block") from None
        if too_large:
            raise HeaderListTooLarge(f"request headers exceed {self.max_header_list_size} bytes")
        return fields

    # -- primitives ---------------------------------------------------------------------------------

    @staticmethod
    def _int(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
        mask = (1 << prefix) - 1
        value = data[pos] & mask
        pos += 1
        if value < mask:
            return value, pos
        shift = 0
        for _ in range(_MAX_INT_BYTES + 1):
            b = data[pos]
            pos += 1
            value += (b & 0x7F) << shift
            if not b & 0x80:
                return value, pos
            shift += 7
        raise HpackError("an integer in the header block is too long")

    def _string(self, data: bytes, pos: int) -> tuple[str, int]:
        huffman = data[pos] & 0x80
        length, pos = self._int(data, pos, 7)
        stop = pos + length
        if stop > len(data):
            raise HpackError("a string runs past the end of the header block")
        raw = data[pos:stop]
        if huffman:
            try:
                raw = decode_huffman(raw)
            except HPACKDecodingError as e:
                raise HpackError(f"bad Huffman string: {e}") from None
        return raw.decode("latin-1"), stop

    def _literal(self, data: bytes, pos: int, prefix: int) -> tuple[tuple[str, str], int]:
        index, pos = self._int(data, pos, prefix)
        if index:
            name = self._get(index)[0]
        else:
            name, pos = self._string(data, pos)
        value, pos = self._string(data, pos)
        return (name, value), pos

    def _get(self, index: int) -> tuple[str, str]:
        if 0 < index <= _STATIC_LEN:
            return _STATIC[index - 1]
        i = index - _STATIC_LEN - 1
        if index == 0 or i >= len(self._dynamic):
            raise HpackError(f"header table index {index} is out of range")
        return self._dynamic[i]

    def _add(self, field: tuple[str, str]) -> None:
        self.generation += 1
        size = len(field[0]) + len(field[1]) + _ENTRY_OVERHEAD
        if size > self.table_size:  # an entry larger than the table empties it (RFC 7541 4.4)
            self._dynamic.clear()
            self._used = 0
            return
        self._evict(size)
        self._dynamic.appendleft(field)
        self._used += size

    def _evict(self, room: int) -> None:
        while self._dynamic and self._used + room > self.table_size:
            name, value = self._dynamic.pop()
            self._used -= len(name) + len(value) + _ENTRY_OVERHEAD


def encode_literal(name: str, value: str) -> bytes:
    """A literal header field without indexing, new name, no Huffman (RFC 7541 6.2.2)."""
    out = bytearray(b"\x00")
    for text in (name, value):
        raw = text.encode("latin-1")
        out += _encode_int(len(raw), 7)
        out += raw
    return bytes(out)


def _encode_int(value: int, prefix: int, flags: int = 0) -> bytes:
    mask = (1 << prefix) - 1
    if value < mask:
        return bytes([flags | value])
    out = bytearray([flags | mask])
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


#: ``:status: 200`` (static table index 8)
STATUS_200 = b"\x88"
