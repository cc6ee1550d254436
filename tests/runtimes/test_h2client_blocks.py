"""The load generator's HPACK block caches (runtimes/_h2client.py): a remembered block is only reused
while the header table it was encoded or decoded against is unchanged, so every block means what
the plain hpack library would make of it."""

from __future__ import annotations

from hpack import Decoder, Encoder

from torchport.runtimes._h2client import _BlockDecoder, _BlockEncoder

CALL = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/inference.GRPCInferenceService/ModelInfer"),
    (b":authority", b"127.0.0.1:8001"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]
OTHER = [*CALL[:2], (b":path", b"/inference.GRPCInferenceService/ModelMetadata"), *CALL[3:]]


def test_a_repeated_call_is_encoded_once_and_means_the_same_fields() -> None:
    encoder, plain = _BlockEncoder(), Decoder()
    first = encoder.encode(CALL)  # literals with indexing: the table changes, nothing is kept
    second = encoder.encode(CALL)  # all indexed now: kept
    assert len(second) < len(first) and second == encoder.encode(CALL)
    assert encoder.encode(CALL) is encoder.encode(CALL)  # the remembered bytes, not a new encoding
    for block in (first, second, encoder.encode(CALL)):
        assert plain.decode(block, raw=True) == CALL


def test_a_block_that_changes_the_table_and_a_resize_forget_the_remembered_blocks() -> None:
    encoder, plain = _BlockEncoder(), Decoder()
    sequence = [CALL, CALL, CALL, OTHER, CALL, OTHER, OTHER, CALL]
    blocks = [encoder.encode(h) for h in sequence]
    encoder.header_table_size = 0  # as h2 does on the peer's SETTINGS_HEADER_TABLE_SIZE
    plain.max_allowed_table_size = 4096
    blocks += [encoder.encode(CALL), encoder.encode(CALL)]
    sequence += [CALL, CALL]
    assert [plain.decode(b, raw=True) for b in blocks] == sequence
    # after the resize the table is empty: the old indexed block would now be wrong
    assert blocks[-1] != blocks[2]


def test_the_same_bytes_decode_to_what_the_current_table_says() -> None:
    """Index 62 is the newest dynamic entry: the same one-byte block names another field once a
    new entry is added, and the cache must follow."""
    plain_enc = Encoder()
    add_a = plain_enc.encode([(b"x-a", b"1")])  # literal with indexing: x-a becomes entry 62
    add_b = plain_enc.encode([(b"x-b", b"2")])  # x-b becomes 62, x-a 63
    newest = bytes([0x80 | 62])
    decoder, plain = _BlockDecoder(), Decoder()
    got = []
    for block in (add_a, newest, newest, add_b, newest, newest):
        assert decoder.decode(block, raw=True) == plain.decode(block, raw=True)
        got.append(decoder.decode(newest, raw=True) if block == newest else None)
    assert got[1:3] == [[(b"x-a", b"1")]] * 2 and got[4:6] == [[(b"x-b", b"2")]] * 2


def test_a_caller_changing_the_decoded_list_does_not_change_the_next_answer() -> None:
    decoder = _BlockDecoder()
    block = bytes([0x88])  # :status 200 (static table)
    fields = decoder.decode(block, raw=True)
    fields.append((b"x", b"y"))
    assert decoder.decode(block, raw=True) == [(b":status", b"200")]
