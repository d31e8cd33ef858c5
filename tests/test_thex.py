"""THEX: Tiger trees (known roots), streaming hashing, serialization, DIME, verification, hostile bodies.

Known roots: the THEX draft's examples as checked by gtk-gnutella at start-up (src/lib/tigertree.c,
tt_check(): the empty file, one NUL, 1024 and 1025 'A's).
"""

from __future__ import annotations

import os
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gnut.errors import RemoteProtocolError
from gnut.protocol import thex
from gnut.tiger import tiger, tth_leaves, tth_parents


@pytest.mark.parametrize(
    "data,urn",
    [
        (b"", "urn:tree:tiger/:LWPNACQDBZRYXW3VHJVCJ64QBZNGHOHHHZWCLNQ"),
        (b"\x00", "urn:tree:tiger/:VK54ZIEEVTWNAUI5D5RDFIL37LX2IQNSTAXFKSA"),
        (b"A" * 1024, "urn:tree:tiger/:L66Q4YVNAFWVS23X2HJIRA5ZJ7WXR3F26RSASFA"),
        (b"A" * 1025, "urn:tree:tiger/:PZMRYHGY6LTBEH63ZWAHDORHSYTLO4LEFUIKHWY"),
    ],
)
def test_known_roots(data: bytes, urn: str) -> None:
    tree = thex.hash_bytes(data)
    assert tree.urn == urn
    assert thex.parse_tth_urn(urn) == tree.root
    assert thex.parse_tth_urn(urn.replace("tiger/:", "tiger:")) == tree.root


def _naive_root(data: bytes) -> bytes:
    level = [tiger(b"\x00" + data[i : i + 1024]) for i in range(0, len(data), 1024)] or [tiger(b"\x00")]
    while len(level) > 1:
        nxt = [tiger(b"\x01" + level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 1025, 3 * 1024, 7 * 1024 + 5, 300_000, 600_001])
def test_streaming_hasher_matches_the_naive_tree_at_every_depth(size: int) -> None:
    data = random.Random(size).randbytes(size)
    want = _naive_root(data)
    for depth in range(0, thex.full_depth(size) + 1):
        hasher = thex.TreeHasher(size, depth)
        rng = random.Random(depth)
        pos = 0
        while pos < size:  # pieces of odd sizes cross leaf boundaries
            step = rng.choice([1, 100, 1023, 1024, 1025, 5000, 70000])
            hasher.update(data[pos : pos + step])
            pos += step
        tree = hasher.finish()
        assert tree.root == want
        assert tree.depth == depth
        assert tree.nodes == thex.nodes_at_depth(size, depth)


def test_good_depth_follows_gtk_gnutella_thresholds() -> None:
    assert thex.good_depth(0) == 0
    assert thex.good_depth(256 * 1024 - 1) == 0
    assert thex.good_depth(256 * 1024) == 1
    assert thex.good_depth(1024 * 1024) == 3
    assert thex.good_depth(1 << 30) == 11
    assert thex.good_depth(1 << 40) == 11
    assert thex.nodes_at_depth(1 << 30, 11) == 2048


def test_hasher_refuses_wrong_amounts() -> None:
    hasher = thex.TreeHasher(10)
    with pytest.raises(ValueError):
        hasher.update(b"x" * 11)
    hasher.update(b"x" * 9)
    with pytest.raises(ValueError):
        hasher.finish()


def test_serialization_round_trip_and_breadth_first_order() -> None:
    data = os.urandom(5 * 1024 + 17)  # 6 leaves: levels of 1, 2, 3, 6 nodes
    tree = thex.hash_bytes(data, depth=3)
    ser = tree.serialize()
    assert len(ser) == 24 * (1 + 2 + 3 + 6)
    leaves = tth_leaves(data)
    assert ser[-6 * 24 :] == leaves
    assert ser[-9 * 24 : -6 * 24] == tth_parents(leaves)
    back = thex.HashTree.from_serialized(len(data), tree.root, ser)
    assert back.levels == tree.levels


def test_from_serialized_keeps_the_deepest_whole_level_and_caps_depth() -> None:
    data = os.urandom(6 * 1024)
    tree = thex.hash_bytes(data, depth=3)
    ser = tree.serialize()
    partial = thex.HashTree.from_serialized(len(data), tree.root, ser[: 24 * (1 + 2 + 3 + 2)])
    assert partial.depth == 2
    capped = thex.HashTree.from_serialized(len(data), tree.root, ser, max_depth=1)
    assert capped.depth == 1 and capped.levels == tree.levels[:2]


def test_from_serialized_rejects_forgeries() -> None:
    data = os.urandom(4 * 1024)
    tree = thex.hash_bytes(data, depth=2)
    ser = bytearray(tree.serialize())
    with pytest.raises(RemoteProtocolError, match="root"):
        thex.HashTree.from_serialized(len(data), bytes(24), bytes(ser))
    ser[-1] ^= 1  # a forged leaf under the right root
    with pytest.raises(RemoteProtocolError, match="level"):
        thex.HashTree.from_serialized(len(data), tree.root, bytes(ser))
    for bad in (b"", b"x" * 25, tree.root + b"y" * (thex.MAX_THEX_BYTES)):
        with pytest.raises(RemoteProtocolError):
            thex.HashTree.from_serialized(len(data), tree.root, bad)


def test_check_catches_a_bad_chunk_and_passes_good_ones() -> None:
    size = 2 * 1024 * 1024 + 333  # depth 4 by the size rule; 2049 leaves: 8 nodes of 256 KiB + a short one
    data = bytearray(random.Random(7).randbytes(size))
    tree = thex.hash_bytes(bytes(data))
    assert tree.depth == 4 and tree.span == 256 * 1024 and tree.nodes == 9
    good, bad = tree.check(0, data[: 3 * tree.span])
    assert good == [0, 1, 2] and bad == []
    good, bad = tree.check(tree.span, data[tree.span : tree.span + tree.span // 2])  # half a node: unknown
    assert good == [] and bad == []
    corrupt = bytearray(data[5 * tree.span : 6 * tree.span])
    corrupt[1000] ^= 0xFF
    good, bad = tree.check(5 * tree.span, corrupt)
    assert good == [] and bad == [5]
    last = tree.nodes - 1
    start, end = tree.node_range(last)
    assert end == size and end - start == 333
    assert tree.check(start, data[start:]) == ([last], [])
    shallow = tree.truncated(1)
    assert shallow.check(0, data) == ([0, 1], [])


def test_check_of_the_empty_file() -> None:
    tree = thex.hash_bytes(b"")
    assert tree.check(0, b"") == ([0], [])


def test_dime_round_trip_and_gtk_layout() -> None:
    recs = [
        thex.DimeRecord("text/xml", b"<x/>"),
        thex.DimeRecord(thex.THEX_TREE_TYPE, b"a" * 25, "uuid:1", 2),
    ]
    raw = thex.encode_dime(recs)
    assert raw[0] == (1 << 3) | thex.DIME_MB and raw[1] == 0x10
    assert struct.unpack_from(">HHHI", raw, 2) == (0, 0, 8, 4)
    assert len(raw) % 4 == 0
    assert thex.decode_dime(raw) == recs


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda r: bytes([r[0] & ~thex.DIME_MB]) + r[1:], "MB"),
        (lambda r: bytes([(2 << 3) | thex.DIME_MB | thex.DIME_ME]) + r[1:], "version"),
        (lambda r: r[:-4], "runs past"),
        (lambda r: r + b"\0" * 4, "after the DIME ME"),
        (lambda r: bytes([r[0] | thex.DIME_CF]) + r[1:], "chunked"),
        (lambda r: r[:7], "header"),
    ],
)
def test_dime_hostile(mutate, message: str) -> None:
    raw = thex.encode_dime([thex.DimeRecord("text/xml", b"<hashtree/>")])
    with pytest.raises(RemoteProtocolError, match=message):
        thex.decode_dime(mutate(raw))


def test_dime_record_count_and_size_limits() -> None:
    many = [thex.DimeRecord("t", b"") for _ in range(thex.MAX_DIME_RECORDS + 1)]
    with pytest.raises(RemoteProtocolError, match="records"):
        thex.decode_dime(thex.encode_dime(many))
    with pytest.raises(RemoteProtocolError, match="limit"):
        thex.decode_dime(b"\0" * (thex.MAX_THEX_BYTES + 1))
    # A header announcing 4 GiB of data in a 40-byte message is refused before any allocation.
    liar = struct.pack(">BBHHHI", (1 << 3) | 6, 0x10, 0, 0, 0, 0xFFFFFFFF) + b"\0" * 28
    with pytest.raises(RemoteProtocolError, match="runs past"):
        thex.decode_dime(liar)


def test_thex_answer_round_trip_and_gtk_xml() -> None:
    data = os.urandom(700_000)
    tree = thex.hash_bytes(data)
    body = thex.encode_thex(tree)
    recs = thex.decode_dime(body)
    assert [r.type for r in recs] == ["text/xml", thex.THEX_TREE_TYPE]
    assert recs[1].id == thex.tree_uuid(tree.root) and recs[1].tnf == thex.TNF_URI
    assert b'<file size="700000" segmentsize="1024"/>' in recs[0].data
    assert f'depth="{tree.depth}"'.encode() in recs[0].data
    back = thex.decode_thex(body, len(data), tree.root)
    assert back.levels == tree.levels


def test_thex_answer_checks_the_description_and_root() -> None:
    data = os.urandom(5000)
    tree = thex.hash_bytes(data)
    body = thex.encode_thex(tree)
    with pytest.raises(RemoteProtocolError, match="size"):
        thex.decode_thex(body, 5001, tree.root)
    with pytest.raises(RemoteProtocolError, match="root"):
        thex.decode_thex(body, 5000, bytes(24))
    no_xml = thex.encode_dime([thex.DimeRecord(thex.THEX_TREE_TYPE, tree.serialize(), "", 2)])
    with pytest.raises(RemoteProtocolError, match="xml"):
        thex.decode_thex(no_xml, 5000, tree.root)
    bomb = b'<!DOCTYPE x [<!ENTITY a "aaaa">]>' + b"&a;" * 2000
    with pytest.raises(RemoteProtocolError):
        thex.decode_thex(thex.encode_dime([thex.DimeRecord("text/xml", bomb)]), 5000, tree.root)


def test_thex_uri_header() -> None:
    root = thex.hash_bytes(b"hello").root
    value = thex.format_thex_uri("QLFYWY2RI5WZCTEP6MJKR5CAFGP7FQ5X", root)
    assert value.startswith("/uri-res/N2X?urn:sha1:QLFYWY2RI5WZCTEP6MJKR5CAFGP7FQ5X;")
    assert thex.parse_thex_uri(value) == ("/uri-res/N2X?urn:sha1:QLFYWY2RI5WZCTEP6MJKR5CAFGP7FQ5X", root)
    for bad in ("", "noroot", "/x;SHORT", "http://h/x;" + thex.b32(root), "/a b;" + thex.b32(root)):
        with pytest.raises(RemoteProtocolError):
            thex.parse_thex_uri(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_decode_or_raise_remote_error(body: bytes) -> None:
    for fn in (thex.decode_dime, lambda b: thex.decode_thex(b, 100, bytes(24))):
        try:
            fn(body)
        except RemoteProtocolError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 5000))
def test_any_tree_bytes_parse_or_raise_remote_error(data: bytes, size: int) -> None:
    try:
        thex.HashTree.from_serialized(size, data[:24].ljust(24, b"\0"), data)
    except RemoteProtocolError:
        pass
