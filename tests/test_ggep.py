"""Tests for gnut.protocol.ggep: GGEP block decode/encode, COBS, deflate, limits."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gnut.errors import LocalProtocolError, RemoteProtocolError
from gnut.protocol.ggep import (
    GGEP_MAGIC,
    GGEP_MAX_INFLATED,
    GGEP_MAX_ITEMS,
    GgepItem,
    cobs_decode,
    cobs_encode,
    decode_ggep,
    decode_int,
    encode_extensions,
    encode_ggep,
    encode_int,
    find,
    parse_extensions,
    sha1_urn,
    urn_digest,
)

# gtk-gnutella pong GGEP (vectors/gtk-gnutella/ultra_pong.bin): VC, UP, DU.
GTKG_PONG_GGEP = bytes.fromhex("c30256434547544b478302555043 02ff30 8244554101".replace(" ", ""))
GTKG_PONG_ITEMS = [GgepItem("VC", b"GTKG\x83"), GgepItem("UP", b"\x02\xff0"), GgepItem("DU", b"\x01")]

ids = st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=255), min_size=1, max_size=15)
items_st = st.lists(st.builds(GgepItem, ids, st.binary(max_size=300)), min_size=1, max_size=8)


def test_decode_real_block():
    items, end = decode_ggep(GTKG_PONG_GGEP)
    assert items == GTKG_PONG_ITEMS
    assert end == len(GTKG_PONG_GGEP)
    assert encode_ggep(items) == GTKG_PONG_GGEP


def test_decode_at_offset_with_trailing_bytes():
    buf = b"xyz" + GTKG_PONG_GGEP + b"\x1curn:trailing"
    items, end = decode_ggep(buf, 3)
    assert items == GTKG_PONG_ITEMS
    assert buf[end:] == b"\x1curn:trailing"


@pytest.mark.parametrize("cut", range(len(GTKG_PONG_GGEP)))
def test_every_truncation_raises(cut):
    with pytest.raises(RemoteProtocolError):
        decode_ggep(GTKG_PONG_GGEP[:cut])


@pytest.mark.parametrize(
    ("length", "encoded"),
    [(0, "40"), (63, "7f"), (64, "8140"), (4095, "bf7f"), (4096, "818040"), (262143, "bfbf7f")],
)
def test_length_encoding_boundaries_from_spec(length, encoded):
    block = encode_ggep([GgepItem("X", b"\x01" * length)])
    assert block[:3] == bytes((GGEP_MAGIC, 0x81, ord("X")))
    assert block[3 : 3 + len(encoded) // 2] == bytes.fromhex(encoded)
    items, end = decode_ggep(block)
    assert items[0].data == b"\x01" * length and end == len(block)


@pytest.mark.parametrize(
    ("block", "why"),
    [
        (b"\xc2\x81X\x40", "magic"),
        (b"\xc3\x80\x40", "id length"),
        (b"\xc3\x91X\x40", "reserved"),
        (b"\xc3\x81\x00\x40", "NUL"),
        (b"\xc3\x81X\x00", "length byte"),
        (b"\xc3\x81X\xc1", "length byte"),
        (b"\xc3\x81X\x81\x81\x81\x40", "longer than 3"),
        (b"\xc3\x81X\x45ab", "truncated"),
        (b"\xc3\x01X\x40", "truncated"),
        (b"\xc3\xc1X\x42\x02\x00", "NUL"),
        (b"\xc3\xc1X\x42\x05a", "past the end"),
        (b"\xc3\xa1X\x43abc", "deflate"),
    ],
)
def test_malformed_blocks(block, why):
    with pytest.raises(RemoteProtocolError, match=why):
        decode_ggep(block)


def test_cobs_known_values():
    assert cobs_encode(b"") == b"\x01"
    assert cobs_encode(b"\x00") == b"\x01\x01"
    assert cobs_encode(b"\x11\x22\x00\x33") == b"\x03\x11\x22\x02\x33"
    assert cobs_encode(b"\x01" * 254) == b"\xff" + b"\x01" * 254
    assert cobs_encode(b"\x01" * 254 + b"\x00") == b"\xff" + b"\x01" * 254 + b"\x01\x01"
    assert cobs_decode(b"\x03\x11\x22\x02\x33") == b"\x11\x22\x00\x33"


@given(st.binary(max_size=1200))
def test_cobs_round_trip(data):
    encoded = cobs_encode(data)
    assert 0 not in encoded
    assert cobs_decode(encoded) == data


def test_cobs_and_deflate_item_decodes():
    raw = b"\x00" * 500 + b"hello"
    packed = zlib.compress(raw)
    wire = cobs_encode(packed)
    block = bytes((GGEP_MAGIC, 0x80 | 0x40 | 0x20 | 1)) + b"Z" + encode_len(len(wire)) + wire
    items, _ = decode_ggep(block)
    assert items == [GgepItem("Z", raw)]


def encode_len(n: int) -> bytes:
    block = encode_ggep([GgepItem("L", b"\x01" * n)])
    return block[3 : len(block) - n]


def test_compress_only_when_smaller_and_cobs_when_nul():
    small = encode_ggep([GgepItem("A", b"xy")], compress=True)
    assert small[1] & 0x20 == 0
    big = encode_ggep([GgepItem("A", b"\x00" * 1000)], compress=True, cobs=True)
    assert big[1] & 0x20 and big[1] & 0x40
    assert 0 not in big
    assert decode_ggep(big)[0] == [GgepItem("A", b"\x00" * 1000)]


def test_deflate_bomb_is_refused():
    bomb = zlib.compress(b"\x00" * (GGEP_MAX_INFLATED + 1), 9)
    block = encode_ggep([GgepItem("B", bomb)])
    block = block[:1] + bytes((block[1] | 0x20,)) + block[2:]
    with pytest.raises(RemoteProtocolError, match="inflates past"):
        decode_ggep(block)


def test_deflate_trailing_garbage_and_truncation():
    packed = zlib.compress(b"abc" * 50)
    for data, why in ((packed + b"!!", "after the end"), (packed[:-3], "truncated")):
        block = bytes((GGEP_MAGIC, 0x80 | 0x20 | 1)) + b"D" + encode_len(len(data)) + data
        with pytest.raises(RemoteProtocolError, match=why):
            decode_ggep(block)


def test_item_count_limit():
    many = [GgepItem("I", b"")] * (GGEP_MAX_ITEMS + 1)
    with pytest.raises(LocalProtocolError):
        encode_ggep(many)
    block = bytes((GGEP_MAGIC,)) + b"\x01I\x40" * GGEP_MAX_ITEMS + b"\x81I\x40"
    with pytest.raises(RemoteProtocolError, match="more than"):
        decode_ggep(block)
    exact = bytes((GGEP_MAGIC,)) + b"\x01I\x40" * (GGEP_MAX_ITEMS - 1) + b"\x81I\x40"
    assert len(decode_ggep(exact)[0]) == GGEP_MAX_ITEMS


@pytest.mark.parametrize("bad", [[], [GgepItem("", b"")], [GgepItem("x" * 16, b"")], [GgepItem("a\0", b"")]])
def test_encode_rejects_bad_items(bad):
    with pytest.raises(LocalProtocolError):
        encode_ggep(bad)


def test_encode_rejects_non_latin1_id_and_huge_data():
    with pytest.raises(LocalProtocolError):
        encode_ggep([GgepItem("\u20ac", b"")])
    with pytest.raises(LocalProtocolError):
        encode_ggep([GgepItem("X", b"\x01" * (1 << 18))])


def test_find():
    assert find(GTKG_PONG_ITEMS, "UP") == b"\x02\xff0"
    assert find(GTKG_PONG_ITEMS, "up") is None
    assert find((), "X") is None


def test_ints():
    assert encode_int(0) == b"\x00"
    assert encode_int(0x1234) == b"\x34\x12"
    assert decode_int(b"\x34\x12") == 0x1234
    with pytest.raises(RemoteProtocolError):
        decode_int(b"")
    with pytest.raises(RemoteProtocolError):
        decode_int(b"\x01" * 9)
    with pytest.raises(LocalProtocolError):
        encode_int(-1)


@given(items_st, st.booleans(), st.booleans())
def test_round_trip(items, compress, cobs):
    block = encode_ggep(items, compress=compress, cobs=cobs)
    decoded, end = decode_ggep(block + b"tail")
    assert decoded == items
    assert end == len(block)


@given(items_st)
def test_cobs_block_has_no_nul(items):
    assert 0 not in encode_ggep(items, cobs=True)


@given(st.binary(max_size=200))
def test_fuzz_only_remote_errors(data):
    buf = bytes((GGEP_MAGIC,)) + data
    try:
        items, end = decode_ggep(buf)
    except RemoteProtocolError:
        return
    assert end <= len(buf)
    assert all(isinstance(i, GgepItem) for i in items)


# --- extension areas ---------------------------------------------------------------------------
def test_parse_extensions_mixed_area_until_nul():
    digest = bytes(range(20))
    area = b"urn:sha1:" + sha1_urn(digest)[9:].encode() + b"\x1c<xml/>\x1c" + GTKG_PONG_GGEP + b"\x00rest"
    urns, extra, items, end = parse_extensions(area, 0, True, "test")
    assert urns == (sha1_urn(digest),) and extra == (b"<xml/>",) and list(items) == GTKG_PONG_ITEMS
    assert area[end:] == b"rest"


def test_parse_extensions_to_end_tolerates_nul_and_requires_nothing():
    assert parse_extensions(b"urn:\x00", 0, False, "test") == (("urn:",), (), (), 5)
    assert parse_extensions(b"", 0, False, "test") == ((), (), (), 0)
    with pytest.raises(RemoteProtocolError, match="not NUL-terminated"):
        parse_extensions(b"urn:", 0, True, "test")


def test_ggep_h_adds_urn_once():
    digest = bytes(20)
    block = encode_ggep([GgepItem("H", b"\x01" + digest)], cobs=True)
    assert parse_extensions(block, 0, False, "t")[0] == (sha1_urn(digest),)
    both = sha1_urn(digest).encode() + b"\x1c" + block
    assert parse_extensions(both, 0, False, "t")[0] == (sha1_urn(digest),)
    unknown = encode_ggep([GgepItem("H", b"\x09abc")])
    assert parse_extensions(unknown, 0, False, "t")[0] == ()


def test_encode_extensions_rejects_ambiguous_parts():
    assert encode_extensions(("urn:sha1:X",), (b"<x/>",), (), "t") == b"urn:sha1:X\x1c<x/>"
    for urns, extra in (
        ((b"nope",), ()),
        ((), (b"urn:x",)),
        ((), (b"\xc3x",)),
        ((), (b"a\x1cb",)),
        ((), (b"",)),
    ):
        with pytest.raises(LocalProtocolError):
            encode_extensions(tuple(u.decode() for u in urns), extra, (), "t")


def test_urn_digest_round_trip():
    digest = bytes(range(20))
    assert urn_digest(sha1_urn(digest)) == digest
    assert urn_digest("urn:sha1:" + "0" * 32) is None
