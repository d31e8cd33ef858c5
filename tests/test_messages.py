"""Tests for gnut.protocol.messages: header helpers and every payload codec, against captured real-servent bytes."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gnut.constants import (
    HEADER_LEN,
    MAX_PAYLOAD,
    MSG_BYE,
    MSG_PING,
    MSG_PONG,
    MSG_PUSH,
    MSG_QRP,
    MSG_QUERY,
    MSG_QUERYHIT,
    MSG_VENDOR,
    MSG_VENDOR_STD,
)
from gnut.errors import LocalProtocolError, RemoteProtocolError
from gnut.protocol import messages as m
from gnut.protocol.ggep import GgepItem, encode_ggep

VECTORS = Path(__file__).resolve().parent / "vectors"  # captured real-servent bytes (vectors/README.md)
GUID = bytes(range(16))


def vector(name: str) -> tuple[int, bytes]:
    """(message type, payload) of a captured message."""
    path = VECTORS / name
    raw = path.read_bytes()
    assert len(raw) == HEADER_LEN + struct.unpack_from("<I", raw, 19)[0]
    return raw[16], raw[HEADER_LEN:]


MESSAGE_VECTORS = [
    "gnutellabun/bye_414_from_gbun.bin",
    "gnutellabun/ping_from_gbun.bin",
    "gnutellabun/pong.bin",
    "gnutellabun/qrp_patch_from_gbun.bin",
    "gnutellabun/qrp_patch_from_gbun_leaf.bin",
    "gnutellabun/qrp_reset_from_gbun.bin",
    "gnutellabun/query_from_gbun_leaf.bin",
    "gnutellabun/query_from_gbun_up.bin",
    "gnutellabun/queryhit.bin",
    "gtk-gnutella/leaf_pong.bin",
    "gtk-gnutella/ultra_pong.bin",
    "gtk-gnutella/leaf_qrp_patch.bin",
    "gtk-gnutella/leaf_qrp_reset.bin",
    "gtk-gnutella/leaf_query_from_gtkg_search.bin",
    "gtk-gnutella/ultra_query_from_gtkg_search.bin",
    "gtk-gnutella/ultra_query_from_gtkg_relayed.bin",
    "gtk-gnutella/leaf_queryhit.bin",
    "gtk-gnutella/ultra_queryhit.bin",
    "gtk-gnutella/leaf_vendor_msg.bin",
]


# --- captured vectors: fields as their .txt describes them ---------------------------------------
def test_gbun_bye_414():
    mtype, payload = vector("gnutellabun/bye_414_from_gbun.bin")
    assert m.decode(mtype, payload) == m.Bye(414, "Leaf node relayed QUERY")


def test_gbun_ping_is_empty():
    mtype, payload = vector("gnutellabun/ping_from_gbun.bin")
    assert mtype == MSG_PING and m.decode(mtype, payload) == m.Ping()


def test_gbun_pong_14_bytes_no_ggep():
    mtype, payload = vector("gnutellabun/pong.bin")
    pong = m.decode(mtype, payload)
    assert pong == m.Pong(port=42189, ip="127.0.0.1", files=1, kbytes=69)


@pytest.mark.parametrize(
    ("name", "port", "files", "kbytes"), [("leaf", 16500, 2, 97), ("ultra", 16400, 2, 128)]
)
def test_gtkg_pong_with_ggep(name, port, files, kbytes):
    mtype, payload = vector(f"gtk-gnutella/{name}_pong.bin")
    pong = m.decode(mtype, payload)
    assert (pong.port, pong.ip, pong.files, pong.kbytes) == (port, "127.0.0.1", files, kbytes)
    ids = [item.id for item in pong.ggep]
    assert ids[0] == "VC" and "DU" in ids
    assert pong.ggep[0].data[:4] == b"GTKG"


@pytest.mark.parametrize(
    ("name", "size", "infinity"),
    [("gnutellabun/qrp_reset_from_gbun.bin", 65536, 7), ("gtk-gnutella/leaf_qrp_reset.bin", 16384, 2)],
)
def test_qrp_reset_vectors(name, size, infinity):
    mtype, payload = vector(name)
    assert mtype == MSG_QRP
    assert m.decode_qrp(payload) == m.QrpReset(size, infinity)


@pytest.mark.parametrize(
    ("name", "bits"),
    [
        ("gnutellabun/qrp_patch_from_gbun.bin", 1),
        ("gnutellabun/qrp_patch_from_gbun_leaf.bin", 1),
        ("gtk-gnutella/leaf_qrp_patch.bin", 4),
    ],
)
def test_qrp_patch_vectors(name, bits):
    import zlib

    mtype, payload = vector(name)
    patch = m.decode(mtype, payload)
    assert isinstance(patch, m.QrpPatch)
    assert (patch.seq_no, patch.seq_size, patch.compressor, patch.entry_bits) == (1, 1, 1, bits)
    table = zlib.decompress(patch.data)
    size = {1: 65536, 4: 16384}[bits]
    assert len(table) * 8 // bits == size


@pytest.mark.parametrize("name", ["query_from_gbun_leaf", "query_from_gbun_up"])
def test_gbun_query(name):
    mtype, payload = vector(f"gnutellabun/{name}.bin")
    query = m.decode(mtype, payload)
    assert query == m.Query("interopgiraffe", flags=0x8832)
    assert query.flags_in_use and query.flags & m.QF_GGEP_H
    assert query.words == ["interopgiraffe"]


@pytest.mark.parametrize("name", ["leaf_query_from_gtkg_search", "ultra_query_from_gtkg_search"])
def test_gtkg_search_query(name):
    mtype, payload = vector(f"gtk-gnutella/{name}.bin")
    query = m.decode(mtype, payload)
    assert query.text == "quokka" and query.flags == 0xB900
    assert [item.id for item in query.ggep] == ["PR"]
    assert query.urns == () and query.extra == ()
    assert query.flags & m.QF_XML and query.flags & m.QF_LEAF_GUIDED and not query.firewalled


def test_gtkg_relayed_query():
    mtype, payload = vector("gtk-gnutella/ultra_query_from_gtkg_relayed.bin")
    query = m.decode(mtype, payload)
    assert query == m.Query("quokka relay", flags=0x8000)
    assert query.words == ["quokka", "relay"]


def test_gbun_queryhit():
    mtype, payload = vector("gnutellabun/queryhit.bin")
    hit = m.decode(mtype, payload)
    assert (hit.port, hit.ip, hit.speed) == (42189, "127.0.0.1", 512)
    assert hit.vendor == b"GBUN" and not hit.firewalled and not hit.busy
    assert [item.id for item in hit.ggep] == ["BH"]
    assert hit.servent_guid == payload[-16:]
    (result,) = hit.results
    assert (result.index, result.size, result.name) == (1, 70000, "interopzebra sample.bin")
    urn = "urn:sha1:MFPCK47GUWY5JU2AD2BONA4CKFWKBU67"
    assert result.urns == (urn,)
    assert result.ggep[0].id == "H" and result.ggep[0].data == b"\x01" + m.urn_digest(urn)
    assert result.sha1 == m.urn_digest(urn)


@pytest.mark.parametrize("name", ["leaf_queryhit", "ultra_queryhit"])
def test_gtkg_queryhit(name):
    mtype, payload = vector(f"gtk-gnutella/{name}.bin")
    hit = m.decode(mtype, payload)
    assert hit.ip == "127.0.0.1" and hit.vendor == b"GTKG"
    assert not hit.push and not hit.busy and not hit.uploaded
    assert not hit.flag_mask & m.QHD_SPEED  # gtk-gnutella does not claim a measured speed
    assert [item.id for item in hit.ggep] == ["GTKGV", "BH"]
    (result,) = hit.results
    assert (result.index, result.size, result.name) == (2, 39, "interop_alpha.txt")
    assert result.urns == ("urn:sha1:76XGQU3CAJH2OLZXFPA27SAKDXMBRV4U",)
    assert [item.id for item in result.ggep] == ["TT", "CT"]
    assert len(result.ggep[0].data) == 24  # Tiger tree root


def test_gtkg_vendor_message():
    mtype, payload = vector("gtk-gnutella/leaf_vendor_msg.bin")
    vendor = m.decode(mtype, payload)
    assert (vendor.vendor, vendor.selector, vendor.version) == (b"BEAR", 12, 1)
    assert vendor.data == b"\x01\x00"  # kept hits = 1


@pytest.mark.parametrize("name", MESSAGE_VECTORS)
def test_vectors_round_trip(name):
    mtype, payload = vector(name)
    message = m.decode(mtype, payload)
    assert message.encode() == payload


@pytest.mark.parametrize("name", MESSAGE_VECTORS)
def test_vectors_with_trailing_bytes(name):
    mtype, payload = vector(name)
    full = m.decode(mtype, payload)
    junk = b"\x1cjunk"
    if isinstance(full, m.Ping | m.Pong | m.QrpReset):
        with pytest.raises(RemoteProtocolError):
            m.decode(mtype, payload + junk)
        return
    longer = m.decode(mtype, payload + junk)
    # Formats that run to the end of the payload take the bytes as part of their last field.
    if isinstance(full, m.Query):
        assert longer.extra == (*full.extra, b"junk") and longer.text == full.text
    elif isinstance(full, m.QueryHit):
        # The GUID is always the last 16 bytes: the old GUID tail shifts into the private data.
        assert longer.servent_guid == (payload + junk)[-16:] and longer.results == full.results
    elif isinstance(full, m.QrpPatch | m.Vendor):
        assert longer.encode() == payload + junk
    else:
        assert longer == m.Bye(full.code, full.reason)


@pytest.mark.parametrize("name", MESSAGE_VECTORS)
def test_vector_truncations(name):
    mtype, payload = vector(name)
    full = m.decode(mtype, payload)
    for cut in range(len(payload)):
        try:
            m.decode(mtype, payload[:cut])
        except RemoteProtocolError:
            continue
        # A prefix that parses must itself be a complete, shorter message of the same kind.
        assert type(m.decode(mtype, payload[:cut])) in (type(full), m.QrpPatch)
    if isinstance(full, m.QueryHit):
        # Up to the end of the results plus a GUID nothing can parse: the result set is counted.
        trailer = len(full._trailer())
        for cut in range(len(payload) - trailer):
            with pytest.raises(RemoteProtocolError):
                m.decode(mtype, payload[:cut])
    if isinstance(full, m.Pong | m.QrpReset | m.Query):
        for cut in range(min(len(payload), {m.Pong: 14, m.QrpReset: 6, m.Query: 3}[type(full)])):
            with pytest.raises(RemoteProtocolError):
                m.decode(mtype, payload[:cut])


# --- header ------------------------------------------------------------------------------------
def test_encode_header_layout():
    header = m.encode_header(GUID, MSG_QUERY, 4, 1, 300)
    assert len(header) == HEADER_LEN
    assert header[:16] == GUID and header[16:19] == bytes((MSG_QUERY, 4, 1))
    assert header[19:] == (300).to_bytes(4, "little")


def test_build_is_header_plus_payload():
    payload = m.Bye(200, "Shutdown").encode()
    raw = m.build(GUID, MSG_BYE, 1, 0, payload)
    assert raw == m.encode_header(GUID, MSG_BYE, 1, 0, len(payload)) + payload


@pytest.mark.parametrize(
    "args",
    [
        (b"short", 0, 1, 0, 0),
        (GUID, 256, 1, 0, 0),
        (GUID, 0, -1, 0, 0),
        (GUID, 0, 1, 256, 0),
        (GUID, 0, 1, 0, MAX_PAYLOAD + 1),
        (GUID, 0, 1, 0, -1),
    ],
)
def test_encode_header_rejects(args):
    with pytest.raises(LocalProtocolError):
        m.encode_header(*args)


# --- per-class edge cases ------------------------------------------------------------------------
def test_ping_with_ggep_and_junk():
    ping = m.Ping((GgepItem("SCP", b"\x01"),))
    assert m.Ping.decode(ping.encode()) == ping
    with pytest.raises(RemoteProtocolError, match="GGEP was expected"):
        m.Ping.decode(b"hello")


def test_pong_bad_fields():
    with pytest.raises(LocalProtocolError):
        m.Pong(70000, "1.2.3.4", 0, 0).encode()
    with pytest.raises(LocalProtocolError):
        m.Pong(1, "1.2.3", 0, 0).encode()
    with pytest.raises(LocalProtocolError):
        m.Pong(1, "1.2.3.256", 0, 0).encode()


def test_query_default_flags_and_encode():
    query = m.Query("Hello World")
    assert query.flags == m.QF_FLAGS_IN_USE | m.QF_GGEP_H == m.QF_DEFAULT
    assert query.encode() == b"\x88\x00Hello World\x00"
    assert query.words == ["hello", "world"]


def test_query_words_split_on_punctuation_and_unicode():
    assert m.Query("Björk_live-2001.MP3").words == ["björk", "live", "2001", "mp3"]


def test_query_latin1_text_never_raises():
    query = m.Query.decode(b"\x80\x00caf\xe9\x00")
    assert query.text == "café"


def test_query_urns_ggep_and_extras():
    digest = hashlib.sha1(b"x").digest()
    query = m.Query(
        "",
        urns=(m.sha1_urn(digest),),
        extra=(b"<?xml version='1.0'?><audios/>",),
        ggep=(GgepItem("PR", b""), GgepItem("Z", b"\x00\x01")),
    )
    payload = query.encode()
    assert m.Query.decode(payload) == query
    assert payload.count(b"\x1c") == 2


def test_query_legacy_huge_nul_terminated_extension_and_two_blocks():
    block_a = encode_ggep([GgepItem("A", b"1")])
    block_b = encode_ggep([GgepItem("B", b"2")])
    payload = b"\x80\x00mp3\x00urn:\x00" + block_a + block_b
    query = m.Query.decode(payload)
    assert query.urns == ("urn:",)
    assert query.ggep == (GgepItem("A", b"1"), GgepItem("B", b"2"))


def test_query_ggep_h_exposes_urn():
    digest = hashlib.sha1(b"h").digest()
    payload = b"\x88\x00\x00" + encode_ggep([GgepItem("H", b"\x01" + digest)])
    assert m.Query.decode(payload).urns == (m.sha1_urn(digest),)


def test_query_size_limits():
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        m.Query.decode(b"\x80\x00" + b"a" * m.MAX_QUERY_PAYLOAD + b"\x00")
    with pytest.raises(LocalProtocolError):
        m.Query("a" * m.MAX_QUERY_PAYLOAD).encode()
    with pytest.raises(LocalProtocolError):
        m.Query("a\x1cb").encode()
    with pytest.raises(RemoteProtocolError, match="NUL-terminated"):
        m.Query.decode(b"\x80\x00abc")
    with pytest.raises(RemoteProtocolError, match="0x1C"):
        m.Query.decode(b"\x80\x00a\x1cb\x00")


def test_legacy_min_speed_query_is_not_flags():
    query = m.Query.decode(b"\x00\x00old\x00")
    assert not query.flags_in_use and not query.firewalled and query.min_speed == 0
    assert m.Query.decode(b"\x28\x00old\x00").min_speed == 40
    assert m.Query("new").min_speed is None


def _hit(**kwargs) -> m.QueryHit:
    result = m.HitResult(3, 1234, "song.mp3", urns=(m.sha1_urn(bytes(20)),))
    fields = {"port": 6346, "ip": "10.0.0.1", "speed": 100, "results": (result,), "servent_guid": GUID}
    fields.update(kwargs)
    return m.QueryHit(**fields)


def test_queryhit_flags_layout():
    hit = _hit(push=True, busy=True, uploaded=False, measured_speed=True, ggep=(GgepItem("BH", b""),))
    payload = hit.encode()
    trailer = payload[-16 - 5 - 2 - 5 : -16]
    assert trailer[:5] == b"GNPY\x02"
    assert trailer[5] == 0x3C | 0x01  # all "valid" bits + push value
    assert trailer[6] == 0x20 | 0x10 | 0x04 | 0x01  # GGEP, speed, busy values + push valid
    assert m.QueryHit.decode(payload) == hit
    assert m.QueryHit.decode(payload).firewalled


def test_queryhit_without_trailer():
    hit = _hit(vendor=None, flag_mask=0)
    decoded = m.QueryHit.decode(hit.encode())
    assert decoded == hit and decoded.vendor is None and not decoded.firewalled
    with pytest.raises(LocalProtocolError):
        _hit(vendor=None, push=True).encode()


def test_queryhit_trailer_errors_and_unknown_private_data():
    body = _hit(vendor=None, flag_mask=0).encode()[:-16]
    with pytest.raises(RemoteProtocolError, match="too short"):
        m.QueryHit.decode(body + b"GNP" + GUID)
    with pytest.raises(RemoteProtocolError, match="runs past"):
        m.QueryHit.decode(body + b"GNPY\x09\x00" + GUID)
    weird = m.QueryHit.decode(body + b"ABCD\x02\x20\x20\xc3\xff\xff" + GUID)
    assert weird.ggep == () and weird.private == b"\xc3\xff\xff"
    opaque = m.QueryHit.decode(body + b"LIME\x04\x1c\x00\x00\x00private\x00stuff" + GUID)
    assert (
        opaque.vendor == b"LIME"
        and opaque.open_extra == b"\x00\x00"
        and opaque.private == b"private\x00stuff"
    )
    assert opaque.encode() == body + b"LIME\x04\x1c\x00\x00\x00private\x00stuff" + GUID


def test_queryhit_results_fewer_than_announced():
    payload = bytearray(_hit().encode())
    payload[0] = 2
    with pytest.raises(RemoteProtocolError):
        m.QueryHit.decode(bytes(payload))


def test_hit_result_large_size_uses_lf():
    result = m.HitResult(1, 5 << 32, "big.iso")
    hit = _hit(results=(result,))
    decoded = m.QueryHit.decode(hit.encode()).results[0]
    assert decoded.size == 5 << 32 and decoded.ggep[0].id == "LF"
    assert struct.unpack_from("<I", hit.encode(), 15)[0] == 0xFFFFFFFF


def test_hit_result_ggep_h_only_and_nul_free_extension():
    digest = bytes(20)  # all zero: needs COBS inside a NUL-terminated field
    result = m.HitResult(1, 2, "z", urns=(m.sha1_urn(digest),), ggep=(GgepItem("H", b"\x01" + digest),))
    encoded = result.encode()
    assert encoded[8:].count(b"\x00") == 2  # only the two terminators
    only_h = b"\x01\x00\x00\x00\x02\x00\x00\x00z\x00" + encode_ggep(
        [GgepItem("H", b"\x01" + digest)], cobs=True
    )
    decoded, end = m.HitResult.decode_from(only_h + b"\x00", 0)
    assert decoded.urns == (m.sha1_urn(digest),) and decoded.sha1 == digest and end == len(only_h) + 1


def test_hit_result_missing_terminators():
    with pytest.raises(RemoteProtocolError, match="name"):
        m.HitResult.decode_from(b"\x01\x00\x00\x00\x02\x00\x00\x00abc", 0)
    with pytest.raises(RemoteProtocolError, match="extension area"):
        m.HitResult.decode_from(b"\x01\x00\x00\x00\x02\x00\x00\x00abc\x00urn:x", 0)


def test_push_codec():
    push = m.Push(GUID, 7, "192.168.1.2", 6346)
    payload = push.encode()
    assert len(payload) == m.PUSH_LEN
    assert payload[20:24] == bytes((192, 168, 1, 2)) and payload[24:] == (6346).to_bytes(2, "little")
    assert m.decode(MSG_PUSH, payload) == push
    with pytest.raises(RemoteProtocolError):
        m.Push.decode(payload[:-1])


def test_bye_tolerates_missing_nul_and_crlf():
    assert m.Bye.decode(b"\xc8\x00Shutdown\r\n") == m.Bye(200, "Shutdown")
    assert m.Bye.decode(b"\x96\x01Ping unanswered") == m.Bye(406, "Ping unanswered")
    assert m.Bye.decode(b"\xc8\x00") == m.Bye(200, "")
    with pytest.raises(RemoteProtocolError):
        m.Bye.decode(b"\xc8")


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"", "empty"),
        (b"\x02\x00", "variant"),
        (b"\x00\x00\x40\x00\x00", "6 expected"),
        (b"\x00\x00\x40\x00\x00\x02\x00", "6 expected"),
        (b"\x00\x01\x40\x00\x00\x02", "power of two"),
        (b"\x00\x00\x00\x00\x00\x02", "power of two"),
        (b"\x00\x00\x00\x00\x01\x02", "power of two"),
        (b"\x00\x00\x40\x00\x00\x00", "infinity"),
        (b"\x01\x01\x01\x01", "truncated"),
        (b"\x01\x00\x01\x01\x04", "sequence"),
        (b"\x01\x03\x02\x01\x04", "sequence"),
        (b"\x01\x01\x01\x02\x04", "compressor"),
        (b"\x01\x01\x01\x01\x03", "entry bits"),
    ],
)
def test_qrp_malformed(payload, why):
    with pytest.raises(RemoteProtocolError, match=why):
        m.decode_qrp(payload)


def test_qrp_encode_rejects():
    with pytest.raises(LocalProtocolError):
        m.QrpReset(1000, 7).encode()
    with pytest.raises(LocalProtocolError):
        m.QrpReset(1024, 0).encode()
    with pytest.raises(LocalProtocolError):
        m.QrpPatch(2, 1, 1, 4, b"").encode()


def test_vendor_short_payload_and_make():
    assert m.Vendor.decode(b"abc").vendor is None
    assert m.Vendor.decode(b"abc").selector is None and m.Vendor.decode(b"abc").version is None
    made = m.Vendor.make(b"GTKG", 21, 2, b"xy")
    assert m.decode(MSG_VENDOR_STD, made.encode()) == made and made.selector == 21


def test_unknown_type():
    with pytest.raises(RemoteProtocolError, match="unknown message type"):
        m.decode(0x10, b"")


def test_urn_helpers():
    digest = hashlib.sha1(b"abc").digest()
    urn = m.sha1_urn(digest)
    assert urn.startswith("urn:sha1:") and len(urn) == 9 + 32
    assert m.urn_digest(urn) == digest
    assert m.urn_digest(urn.lower().replace("urn:sha1:", "URN:SHA1:")) == digest
    assert m.urn_digest("urn:bitprint:" + urn[9:] + "." + "A" * 39) == digest
    assert m.urn_digest("urn:sha1:short") is None
    assert m.urn_digest("urn:sha1:" + "1" * 32) is None
    assert m.urn_digest("urn:tree:tiger/:abc") is None
    with pytest.raises(LocalProtocolError):
        m.sha1_urn(b"x")


# --- properties -------------------------------------------------------------------------------------
ids = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=4).filter(
    lambda s: s not in ("H", "LF")
)
ggeps = st.lists(st.builds(GgepItem, ids, st.binary(max_size=40)), max_size=3).map(tuple)
u32 = st.integers(0, 0xFFFFFFFF)
ports = st.integers(0, 0xFFFF)
ips = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
texts = st.text(max_size=60).filter(lambda s: "\0" not in s and "\x1c" not in s)
sha1_urns = st.binary(min_size=20, max_size=20).map(m.sha1_urn)
extras = st.lists(
    st.binary(min_size=1, max_size=20).filter(
        lambda b: 0 not in b and 0x1C not in b and b[0] != 0xC3 and b[:4].lower() != b"urn:"
    ),
    max_size=2,
).map(tuple)
results = st.builds(m.HitResult, u32, u32, texts, st.lists(sha1_urns, max_size=2).map(tuple), ggeps, extras)


@given(ggeps)
def test_ping_round_trip(ggep):
    assert m.decode(MSG_PING, m.Ping(ggep).encode()) == m.Ping(ggep)


@given(ports, ips, u32, u32, ggeps)
def test_pong_round_trip(port, ip, files, kbytes, ggep):
    pong = m.Pong(port, ip, files, kbytes, ggep)
    assert m.decode(MSG_PONG, pong.encode()) == pong


@given(texts, st.integers(0, 0xFFFF), st.lists(sha1_urns, max_size=2).map(tuple), ggeps, extras)
def test_query_round_trip(text, flags, urns, ggep, extra):
    query = m.Query(text, flags, urns, ggep, extra)
    assert m.decode(MSG_QUERY, query.encode()) == query


@given(
    ports,
    ips,
    u32,
    st.lists(results, max_size=4).map(tuple),
    st.binary(min_size=16, max_size=16),
    st.sampled_from([b"GNPY", b"GTKG", b"LIME"]),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    ggeps,
    st.binary(max_size=10).filter(lambda b: b[:1] != b"\xc3"),
)
def test_queryhit_round_trip(port, ip, speed, res, guid, vendor, push, busy, up, measured, ggep, private):
    hit = m.QueryHit(port, ip, speed, res, guid, vendor, push, busy, up, measured, ggep, private)
    assert m.decode(MSG_QUERYHIT, hit.encode()) == hit


@given(st.binary(min_size=16, max_size=16), u32, ips, ports, ggeps)
def test_push_round_trip(guid, index, ip, port, ggep):
    push = m.Push(guid, index, ip, port, ggep)
    assert m.decode(MSG_PUSH, push.encode()) == push


@given(
    st.integers(0, 0xFFFF),
    st.text(max_size=50).filter(lambda s: "\0" not in s and not s.endswith(("\r", "\n"))),
)
def test_bye_round_trip(code, reason):
    assert m.decode(MSG_BYE, m.Bye(code, reason).encode()) == m.Bye(code, reason)


@given(st.integers(0, 21), st.integers(1, 255))
def test_qrp_reset_round_trip(bits, infinity):
    reset = m.QrpReset(1 << bits, infinity)
    assert m.decode(MSG_QRP, reset.encode()) == reset


@given(st.data())
def test_qrp_patch_round_trip(data):
    size = data.draw(st.integers(1, 255))
    patch = m.QrpPatch(
        data.draw(st.integers(1, size)),
        size,
        data.draw(st.sampled_from([0, 1])),
        data.draw(st.sampled_from(m.QRP_ENTRY_BITS)),
        data.draw(st.binary(max_size=100)),
    )
    assert m.decode(MSG_QRP, patch.encode()) == patch


@given(st.binary(max_size=60))
def test_vendor_round_trip(payload):
    assert m.decode(MSG_VENDOR, payload).encode() == payload


ALL_TYPES = [
    MSG_PING,
    MSG_PONG,
    MSG_BYE,
    MSG_QRP,
    MSG_VENDOR,
    MSG_VENDOR_STD,
    MSG_PUSH,
    MSG_QUERY,
    MSG_QUERYHIT,
]


@given(st.sampled_from([*ALL_TYPES, 0x10, 0xFF]), st.binary(max_size=300))
def test_fuzz_decode_parses_or_raises_remote_error(mtype, payload):
    try:
        message = m.decode(mtype, payload)
    except RemoteProtocolError:
        return
    assert isinstance(message, m.Message)
    assert isinstance(message, m.Vendor) or message.MTYPE == mtype


@given(
    st.sampled_from(ALL_TYPES), st.binary(min_size=1, max_size=120), st.integers(0, 119), st.integers(0, 255)
)
def test_fuzz_mutated_vectors(mtype, data, pos, value):
    # Flip one byte of a well-formed payload: still only parse-or-RemoteProtocolError.
    base = {
        MSG_QUERYHIT: _hit(ggep=(GgepItem("BH", b""),)).encode(),
        MSG_QUERY: m.Query("abc", urns=(m.sha1_urn(bytes(20)),), ggep=(GgepItem("PR", b""),)).encode(),
        MSG_PONG: m.Pong(1, "1.2.3.4", 5, 6, (GgepItem("DU", b"\x01"),)).encode(),
    }.get(mtype, data)
    mutated = bytearray(base)
    mutated[pos % len(mutated)] = value
    try:
        message = m.decode(mtype, bytes(mutated))
    except RemoteProtocolError:
        return
    # Whatever parses re-encodes (no LocalProtocolError) to something that decodes the same.
    assert m.decode(mtype, message.encode()) == message
