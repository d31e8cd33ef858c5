"""Mojito codecs: layout as gtk-gnutella's kademlia.h gives it, round trips, and every parser fed
whole, byte-truncated and with trailing bytes (any input parses or raises RemoteProtocolError)."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

from gnut.dht import aloc, wire
from gnut.errors import LocalProtocolError, RemoteProtocolError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
import targets  # noqa: E402

ME = wire.Contact(bytes(range(20)), "10.1.2.3", 0x1234, b"GTKG", (0, 1))


def test_header_layout_matches_gtk_gnutella():
    data = wire.encode(
        wire.Header(b"M" * 16, wire.PING_REQUEST, ME, instance=7, flags=wire.F_FIREWALLED), b""
    )
    assert len(data) == wire.HEADER_LEN == 61
    assert data[16] == 0x44 and data[17:19] == b"\x00\x00"
    assert struct.unpack_from("<I", data, 19)[0] == 61 - 23  # Gnutella payload length, little-endian
    assert data[23] == wire.PING_REQUEST
    assert data[24:28] == b"GTKG" and data[28:30] == b"\x00\x01" and data[30:50] == bytes(range(20))
    assert data[50] == 4 and data[51:55] == bytes((10, 1, 2, 3))
    assert data[55:57] == b"\x12\x34"  # big-endian port: "unlike Gnutella"
    assert data[57] == 7 and data[58] == wire.F_FIREWALLED and data[59:61] == b"\x00\x00"


def test_every_message_round_trips():
    for data in targets._dht_seeds():
        header, body = wire.decode_message(data)
        assert wire.encode_message(header, body) == data


@pytest.mark.parametrize("index", range(8))
def test_every_parser_rejects_truncation_and_trailing_bytes(index):
    data = targets._dht_seeds()[index]
    for cut in range(len(data)):
        with pytest.raises(RemoteProtocolError):
            wire.decode_message(data[:cut])
    with pytest.raises(RemoteProtocolError):  # one byte more, with the length fixed up: trailing bytes
        grown = bytearray(data + b"\x00")
        struct.pack_into("<I", grown, 19, len(grown) - 23)
        wire.decode_message(bytes(grown))
    with pytest.raises(RemoteProtocolError, match="payload bytes"):  # length disagrees with the datagram
        wire.decode_message(data + b"\x00")


def test_extended_header_is_skipped_and_bounded():
    body = wire.encode_find_node(bytes(20))
    base = bytearray(wire.encode(wire.Header(bytes(16), wire.FIND_NODE_REQUEST, ME), b""))
    base[59:61] = (3).to_bytes(2, "big")
    data = bytearray(base + b"ext" + body)
    struct.pack_into("<I", data, 19, len(data) - 23)
    assert wire.decode_message(bytes(data))[1] == bytes(20)
    base[59:61] = (wire.MAX_EXTENDED_HEADER + 1).to_bytes(2, "big")
    with pytest.raises(RemoteProtocolError, match="extended header"):
        wire.decode(bytes(base))


def test_hostile_counts_and_sizes():
    hdr = wire.Header(bytes(16), wire.FIND_NODE_RESPONSE, ME)
    too_many = b"\x00" + bytes((wire.MAX_CONTACTS + 1,))
    with pytest.raises(RemoteProtocolError, match="contacts"):
        wire.decode_message(wire.encode(hdr, too_many))
    with pytest.raises(RemoteProtocolError, match="token"):
        wire.decode_find_node_response(bytes((wire.MAX_TOKEN_LEN + 1,)) + bytes(40))
    big = bytearray(
        wire.encode_store(wire.StoreRequest(b"t", [wire.DhtValue(ME, bytes(20), wire.VT_TEXT, b"x")]))
    )
    big[-3:-1] = (wire.VALUE_MAX_LEN + 1).to_bytes(2, "big")
    with pytest.raises(RemoteProtocolError, match="value of"):
        wire.decode_store(bytes(big))
    with pytest.raises(RemoteProtocolError, match="address length"):
        wire.decode_pong(b"\x05" + bytes(7) + b"\x00")
    with pytest.raises(RemoteProtocolError, match="no value"):
        wire.decode_store(b"\x00\x00")
    with pytest.raises(RemoteProtocolError, match="opcode"):
        bad = bytearray(targets._dht_seeds()[0])
        bad[23] = 0x09  # STATS_REQUEST: deprecated, unsupported
        wire.decode(bytes(bad))
    with pytest.raises(RemoteProtocolError, match="datagram of"):
        wire.decode(bytes(wire.MAX_DATAGRAM + 1))


def test_header_contact_must_be_ipv4_and_local_misuse_is_local_error():
    with pytest.raises(LocalProtocolError):
        wire.encode(wire.Header(bytes(16), wire.PING_REQUEST, wire.Contact(bytes(20), "::1", 1)), b"")
    with pytest.raises(LocalProtocolError):
        wire.encode_find_node(b"short")
    with pytest.raises(LocalProtocolError):
        wire.encode_store(wire.StoreRequest(b"", []))


def test_nan_load_is_read_as_zero():
    body = struct.pack(">f", float("nan")) + b"\x00\x00"
    assert wire.decode_find_value_response(body).load == 0.0


def test_aloc_round_trip_and_sources():
    a = aloc.Aloc(b"G" * 16, 6346, 123456789, tls=True)
    assert aloc.decode_aloc(aloc.encode_aloc(a)) == a
    vals = [
        wire.DhtValue(ME, bytes(20), wire.VT_ALOC, aloc.encode_aloc(a)),
        wire.DhtValue(
            ME, bytes(20), wire.VT_ALOC, aloc.encode_aloc(aloc.Aloc(b"F" * 16, 1, 1, firewalled=True))
        ),
        wire.DhtValue(ME, bytes(20), wire.VT_ALOC, b"garbage"),
        wire.DhtValue(ME, bytes(20), wire.VT_TEXT, b"text"),
    ]
    assert aloc.sources(vals) == [("10.1.2.3", 6346)]
    with pytest.raises(RemoteProtocolError):
        aloc.decode_aloc(aloc.encode_aloc(a) + b"x")


def test_prox_values_as_gtk_gnutella_lays_them_out():
    from gnut.protocol import ggep

    proxies = b"\x04" + bytes((10, 0, 0, 1)) + b"\x18\xca" + b"\x04" + bytes((10, 0, 0, 2)) + b"\x00\x01"
    data = ggep.encode_ggep(
        [
            ggep.GgepItem("client-id", b"G" * 16),
            ggep.GgepItem("features", b"\x00"),
            ggep.GgepItem("fwt-version", b"\x00"),
            ggep.GgepItem("port", b"\x18\xca"),
            ggep.GgepItem("proxies", proxies),
        ]
    )
    p = aloc.decode_prox(data)
    assert p.guid == b"G" * 16 and p.port == 6346 and p.proxies == [("10.0.0.1", 6346), ("10.0.0.2", 1)]
    assert aloc.guid_key(b"G" * 16) == __import__("hashlib").sha1(b"G" * 16).digest()
    for cut in range(1, len(proxies)):
        bad = ggep.encode_ggep(
            [
                ggep.GgepItem("client-id", b"G" * 16),
                ggep.GgepItem("port", b"\x00\x01"),
                ggep.GgepItem("proxies", proxies[:cut]),
            ]
        )
        if cut not in (7,):  # 7 bytes is exactly one whole proxy
            with pytest.raises(RemoteProtocolError):
                aloc.decode_prox(bad)
