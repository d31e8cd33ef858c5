"""Tests for gnut.protocol.handshake: block framing/parsing, our headers, admission policy."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gnut
from gnut.constants import HANDSHAKE_MAX_HEADER_BYTES
from gnut.errors import RemoteProtocolError
from gnut.protocol.handshake import (
    HandshakeConfig,
    Headers,
    PeerCounts,
    build_connect,
    build_response,
    content_is_deflated,
    evaluate_incoming,
    evaluate_response,
    find_block_end,
    has_token,
    our_headers,
    parse_block,
    parse_host,
    parse_request_line,
    parse_status_line,
    parse_try_hosts,
    peer_listen_address,
)

VECTORS = Path(__file__).resolve().parent / "vectors"  # captured real-servent bytes (vectors/README.md)
HANDSHAKE_VECTORS = sorted(
    [*VECTORS.glob("gtk-gnutella/*_handshake_*.bin"), *VECTORS.glob("gnutellabun/handshake_*.bin")]
)
assert HANDSHAKE_VECTORS, f"captured handshakes missing under {VECTORS}"

ROOMY = PeerCounts(ultrapeers=0, leaves=0, max_ultrapeers=32, max_leaves=30)
UP_FULL = PeerCounts(ultrapeers=32, leaves=0, max_ultrapeers=32, max_leaves=30)
LEAVES_FULL = PeerCounts(ultrapeers=0, leaves=30, max_ultrapeers=32, max_leaves=30)


def vector(name: str) -> bytes:
    path = VECTORS / name
    return path.read_bytes()


def incremental_end(data: bytes) -> int:
    """Feed `data` one byte at a time as a Connection does; return the first block end."""
    buf = bytearray()
    scanned = 0
    for i in range(len(data)):
        buf += data[i : i + 1]
        end = find_block_end(buf, scanned)
        if end != -1:
            return end
        scanned = len(buf)
    return -1


# --- framing -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", HANDSHAKE_VECTORS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_captured_block_frames_and_parses(path):
    data = path.read_bytes()
    assert find_block_end(data) == len(data)
    assert incremental_end(data) == len(data)
    # Trailing bytes (the peer's first messages) are not part of the block.
    assert find_block_end(data + b"\x00" * 40 + b"\r\n\r\n") == len(data)
    start, headers = parse_block(data)
    assert start.startswith("GNUTELLA")
    assert len(headers) >= 1
    for name, value in headers.items():
        assert name and ":" not in name and value == value.strip()
    # Bare LF gives the same parse.
    assert parse_block(data.replace(b"\r\n", b"\n")) == (start, headers)


def test_find_block_end_variants():
    assert find_block_end(b"GNUTELLA CONNECT/0.6\r\nA: b\r\n\r\nrest") == 30
    assert find_block_end(b"GNUTELLA CONNECT/0.4\n\n") == 22
    assert find_block_end(b"GNUTELLA OK\n\r\nxx") == 14
    assert find_block_end(b"GNUTELLA CONNECT/0.6\r\nA: b\r\n") == -1
    assert find_block_end(b"") == -1
    # A terminator split across two searches is still found.
    assert find_block_end(b"X\r\nA: b\r\n\r\n", 9) == 11


def test_header_block_bomb_raises():
    never_ends = b"GNUTELLA CONNECT/0.6\r\n" + b"X-Junk: " + b"a" * HANDSHAKE_MAX_HEADER_BYTES
    with pytest.raises(RemoteProtocolError, match="still open"):
        find_block_end(never_ends)
    with pytest.raises(RemoteProtocolError):
        incremental_end(never_ends)
    ends_too_late = never_ends + b"\r\n\r\n"
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        find_block_end(ends_too_late)
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        parse_block(ends_too_late)
    at_limit = b"GNUTELLA OK\r\nX: " + b"a" * (HANDSHAKE_MAX_HEADER_BYTES - 20) + b"\r\n\r\n"
    assert len(at_limit) == HANDSHAKE_MAX_HEADER_BYTES
    assert find_block_end(at_limit) == HANDSHAKE_MAX_HEADER_BYTES


def test_parse_block_rules():
    start, h = parse_block(
        b"GNUTELLA CONNECT/0.6\r\n"
        b"user-agent: x/1\r\n"
        b"X-Try: 1.2.3.4:1\r\n"
        b"x-try: 5.6.7.8:2\n"
        b"X-Long: first\r\n"
        b"\t second\r\n"
        b"   third\r\n"
        b"Empty:\r\n"
        b"Spaced : v\r\n"
        b"\r\n"
    )
    assert start == "GNUTELLA CONNECT/0.6"
    assert h.get("User-Agent") == "x/1" and h["USER-AGENT"] == "x/1"
    assert h.get("X-Try") == "1.2.3.4:1, 5.6.7.8:2"
    assert h.get("x-long") == "first second third"
    assert h.get("Empty") == "" and "empty" in h
    assert h.get("Spaced") == "v"
    assert h.get("Missing") is None and h.get("Missing", "d") == "d"
    assert "Missing" not in h and 3 not in h
    assert [n for n, _ in h.items()][:2] == ["user-agent", "X-Try"]
    assert list(h)[0] == "user-agent"


def test_parse_block_start_line_only_and_non_utf8():
    assert parse_block(b"GNUTELLA OK\n\n") == ("GNUTELLA OK", Headers())
    start, h = parse_block(b"GNUTELLA/0.6 200 OK\r\nUser-Agent: \xff\xfebad\r\n\r\n")
    assert h.get("User-Agent") == "\ufffd\ufffdbad"


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\r\nA: b\r\n\r\n", "empty start line"),
        (b"", "empty start line"),
        (b"GNUTELLA CONNECT/0.6\r\nno colon here\r\n\r\n", "malformed header"),
        (b"GNUTELLA CONNECT/0.6\r\n: novalue\r\n\r\n", "malformed header"),
        (b"GNUTELLA CONNECT/0.6\r\n continued\r\n\r\n", "continuation"),
        (b"GNUTELLA CONNECT/0.6\r\nA: b\r\n\r\nB: c\r\n\r\n", "blank line inside"),
    ],
)
def test_parse_block_rejects(data, message):
    with pytest.raises(RemoteProtocolError, match=message):
        parse_block(data)


def test_headers_updated_and_equality():
    a = Headers([("A", "1"), ("B", "2")])
    b = a.updated(Headers([("b", "3"), ("C", "4")]))
    assert b.get("B") == "3" and b.get("C") == "4" and a.get("B") == "2"
    assert Headers([("x", "1")]) == Headers([("X", "1")])
    assert Headers([("x", "1")]) != Headers([("X", "2")])
    assert "Headers(" in repr(a)


# --- start lines -------------------------------------------------------------------------


def test_request_and_status_lines():
    assert parse_request_line("GNUTELLA CONNECT/0.6") == "0.6"
    assert parse_request_line("GNUTELLA CONNECT/0.7") == "0.6"
    assert parse_request_line("GNUTELLA CONNECT/0.4") == "0.4"
    assert parse_status_line("GNUTELLA/0.6 200 OK") == ("0.6", 200, "OK")
    assert parse_status_line("GNUTELLA/0.6 204 Shielded leaf node (4 peers max)") == (
        "0.6",
        204,
        "Shielded leaf node (4 peers max)",
    )
    assert parse_status_line("GNUTELLA/0.6 503") == ("0.6", 503, "")


@pytest.mark.parametrize(
    "line",
    ["GET / HTTP/1.1", "GNUTELLA CONNECT/", "GNUTELLA CONNECT/abc", "GNUTELLA CONNECT/0.5", "GNUTELLA"],
)
def test_bad_request_lines(line):
    with pytest.raises(RemoteProtocolError):
        parse_request_line(line)


@pytest.mark.parametrize(
    "line",
    ["HTTP/1.1 200 OK", "GNUTELLA OK", "GNUTELLA/0.6 2000 OK", "GNUTELLA/0.6 abc", "GNUTELLA/x 200 OK"],
)
def test_bad_status_lines(line):
    with pytest.raises(RemoteProtocolError):
        parse_status_line(line)


# --- header values -------------------------------------------------------------------------


def test_try_hosts_tolerant():
    value = (
        "1.2.3.4:6346 2024-06-01T00:00Z, garbage, 5.6.7.8:0, 9.9.9.9:70000, host.name:6346,"
        " [::1]:6347, 10.0.0.1:6346,1.2.3.4:6346,, 300.1.1.1:1, 8.8.8.8:+1"
    )
    assert parse_try_hosts(value) == [("1.2.3.4", 6346), ("::1", 6347), ("10.0.0.1", 6346)]
    assert parse_try_hosts("") == []
    assert parse_host("  ") is None


def test_tokens_and_encodings():
    assert has_token("gzip, Deflate;q=1", "deflate")
    assert not has_token("deflated", "deflate") and not has_token(None, "deflate")
    assert content_is_deflated(Headers([("Content-Encoding", "deflate")]))
    assert not content_is_deflated(Headers([("Content-Encoding", "identity")]))
    assert not content_is_deflated(Headers())
    with pytest.raises(RemoteProtocolError, match="Content-Encoding"):
        content_is_deflated(Headers([("Content-Encoding", "gzip")]))


def test_peer_listen_address():
    assert peer_listen_address(Headers([("Listen-IP", "1.2.3.4:6346")])) == ("1.2.3.4", 6346)
    assert peer_listen_address(Headers([("Node", "127.0.0.1:16500")])) == ("127.0.0.1", 16500)
    assert peer_listen_address(Headers([("X-My-Address", "bad"), ("Node", "1.1.1.1:2")])) == ("1.1.1.1", 2)
    assert peer_listen_address(Headers()) is None


# --- our blocks -----------------------------------------------------------------------------


def names(pairs):
    return [n for n, _ in pairs]


def test_our_headers_ultrapeer_response():
    cfg = HandshakeConfig(mode="ultrapeer", listen_ip="127.0.0.1", listen_port=6346)
    h = dict(our_headers(cfg, "10.0.0.9", True, True))
    assert h["User-Agent"] == f"gnut/{gnut.__version__}"
    assert h["X-Ultrapeer"] == "True" and h["X-Ultrapeer-Needed"] == "True"
    assert h["X-Query-Routing"] == "0.2" and h["X-Ultrapeer-Query-Routing"] == "0.1"
    assert h["X-Degree"] == "32" and h["X-Max-TTL"] == "4" and h["X-Dynamic-Querying"] == "0.1"
    assert h["Accept-Encoding"] == "deflate" and h["Content-Encoding"] == "deflate"
    assert h["Pong-Caching"] == "0.1" and h["GGEP"] == "0.5"
    assert h["Bye-Packet"] == "0.1" and h["Vendor-Message"] == "0.2"
    assert h["Remote-IP"] == "10.0.0.9"
    assert h["Listen-IP"] == h["X-My-Address"] == "127.0.0.1:6346"


def test_our_headers_content_encoding_rules():
    cfg = HandshakeConfig(listen_ip="127.0.0.1", listen_port=6346)
    assert "Content-Encoding" not in names(our_headers(cfg, None, True, False))
    assert "Content-Encoding" not in names(our_headers(cfg, None, False, True))
    off = HandshakeConfig(accept_deflate=False)
    hs = names(our_headers(off, None, True, True))
    assert "Content-Encoding" not in hs and "Accept-Encoding" not in hs


def test_our_headers_leaf_and_flood():
    leaf = dict(our_headers(HandshakeConfig(mode="leaf"), None, False, False))
    assert leaf["X-Ultrapeer"] == "False"
    assert "X-Ultrapeer-Needed" not in leaf and "X-Ultrapeer-Query-Routing" not in leaf
    assert leaf["X-Query-Routing"] == "0.2"
    flood = dict(our_headers(HandshakeConfig(mode="flood"), None, False, False))
    assert flood["X-Ultrapeer"] == "True"
    assert "X-Query-Routing" not in flood and "X-Dynamic-Querying" not in flood
    unspecified = names(our_headers(HandshakeConfig(listen_ip="0.0.0.0"), None, False, False))
    assert "Listen-IP" not in unspecified and "Remote-IP" not in unspecified
    extra = our_headers(HandshakeConfig(extra={"X-Features": "browse/1.0"}), None, False, False)
    assert extra[-1] == ("X-Features", "browse/1.0")
    with pytest.raises(ValueError):
        HandshakeConfig(mode="hub")


def test_build_connect_and_response_roundtrip():
    cfg = HandshakeConfig(mode="leaf", listen_ip="127.0.0.1", listen_port=7000)
    data = build_connect(cfg, "127.0.0.2")
    assert data.startswith(b"GNUTELLA CONNECT/0.6\r\n") and data.endswith(b"\r\n\r\n")
    assert find_block_end(data) == len(data)
    start, h = parse_block(data)
    assert parse_request_line(start) == "0.6"
    assert h.get("Remote-IP") == "127.0.0.2" and h.get("X-Ultrapeer") == "False"
    resp = build_response(503, "Too many leaves", [("X-Try-Ultrapeers", "1.2.3.4:6346")])
    assert resp == b"GNUTELLA/0.6 503 Too many leaves\r\nX-Try-Ultrapeers: 1.2.3.4:6346\r\n\r\n"
    assert build_response(200, "OK", []) == b"GNUTELLA/0.6 200 OK\r\n\r\n"


# --- admission: incoming ---------------------------------------------------------------------


def hdrs(**kw) -> Headers:
    return Headers((k.replace("_", "-"), v) for k, v in kw.items())


def test_ultrapeer_admits_and_negotiates_deflate():
    cfg = HandshakeConfig(mode="ultrapeer")
    v = evaluate_incoming(cfg, hdrs(X_Ultrapeer="False", Accept_Encoding="deflate"), ROOMY)
    assert (v.code, v.peer_is_ultrapeer, v.deflate_out, v.accepted) == (200, False, True, True)
    v = evaluate_incoming(cfg, hdrs(X_Ultrapeer="True"), ROOMY)
    assert (v.code, v.peer_is_ultrapeer, v.deflate_out) == (200, True, False)
    v = evaluate_incoming(HandshakeConfig(accept_deflate=False), hdrs(Accept_Encoding="deflate"), ROOMY)
    assert v.deflate_out is False


def test_ultrapeer_slots_full_refuses_with_try_hosts():
    cfg = HandshakeConfig(mode="ultrapeer")
    tries = ["1.2.3.4:6346", "5.6.7.8:6347"]
    v = evaluate_incoming(cfg, hdrs(X_Ultrapeer="False"), LEAVES_FULL, tries)
    assert (v.code, v.reason, v.accepted) == (503, "Too many leaves", False)
    assert v.headers == (("X-Try-Ultrapeers", "1.2.3.4:6346,5.6.7.8:6347"),)
    assert v.try_hosts == (("1.2.3.4", 6346), ("5.6.7.8", 6347))
    assert evaluate_incoming(cfg, hdrs(X_Ultrapeer="True"), LEAVES_FULL).code == 200
    v = evaluate_incoming(cfg, hdrs(X_Ultrapeer="True"), UP_FULL)
    assert (v.code, v.reason, v.headers) == (503, "Too many ultrapeers", ())
    assert evaluate_incoming(cfg, hdrs(X_Ultrapeer="False"), UP_FULL).code == 200


def test_leaf_accepts_only_ultrapeers():
    cfg = HandshakeConfig(mode="leaf")
    v = evaluate_incoming(cfg, hdrs(X_Ultrapeer="False"), ROOMY)
    assert (v.code, v.reason) == (503, "Shielded leaf node")
    assert evaluate_incoming(cfg, hdrs(X_Ultrapeer="True"), ROOMY).code == 200
    v = evaluate_incoming(cfg, hdrs(X_Ultrapeer="True"), UP_FULL, ["9.9.9.9:1"])
    assert v.code == 503 and v.reason.startswith("Shielded leaf node") and v.try_hosts == (("9.9.9.9", 1),)


@pytest.mark.parametrize("mode", ["ultrapeer", "leaf", "flood"])
def test_missing_x_ultrapeer_is_lenient(mode):
    v = evaluate_incoming(HandshakeConfig(mode=mode), hdrs(User_Agent="old/0.4"), ROOMY)
    assert (v.code, v.peer_is_ultrapeer) == (200, True)
    assert "X-Ultrapeer" in v.note


def test_accept_header_must_list_gnutella_packets():
    cfg = HandshakeConfig()
    v = evaluate_incoming(cfg, hdrs(X_Ultrapeer="True", Accept="text/html"), ROOMY)
    assert (v.code, v.accepted) == (406, False)
    ok = hdrs(X_Ultrapeer="True", Accept="text/html, application/x-gnutella-packets")
    assert evaluate_incoming(cfg, ok, ROOMY).code == 200


def test_flood_counts_like_an_ultrapeer():
    cfg = HandshakeConfig(mode="flood")
    assert evaluate_incoming(cfg, hdrs(X_Ultrapeer="True"), UP_FULL).code == 503
    assert evaluate_incoming(cfg, hdrs(X_Ultrapeer="False"), ROOMY).code == 200


def test_flood_admits_a_client_that_calls_itself_a_leaf():
    # A flood node takes no leaves (max_leaves 0): a stand-alone client is one more equal peer.
    cfg = HandshakeConfig(mode="flood")
    no_leaf_slots = PeerCounts(ultrapeers=1, leaves=0, max_ultrapeers=4, max_leaves=0)
    v = evaluate_incoming(cfg, hdrs(X_Ultrapeer="False"), no_leaf_slots)
    assert (v.code, v.peer_is_ultrapeer) == (200, False)
    full = PeerCounts(ultrapeers=4, leaves=0, max_ultrapeers=4, max_leaves=0)
    v = evaluate_incoming(cfg, hdrs(X_Ultrapeer="False"), full)
    assert (v.code, v.reason) == (503, "Too many peers (4 max)")


# --- admission: dialing side -----------------------------------------------------------------


def test_evaluate_response_refusals():
    cfg = HandshakeConfig(mode="ultrapeer")
    v = evaluate_response(
        cfg, 503, hdrs(X_Try_Ultrapeers="1.2.3.4:6346,bad", X_Try="5.6.7.8:1"), "Too many leaves"
    )
    assert (v.code, v.reason, v.accepted) == (503, "Too many leaves", False)
    assert v.try_hosts == (("1.2.3.4", 6346), ("5.6.7.8", 1))
    leaf = HandshakeConfig(mode="leaf")
    v = evaluate_response(leaf, 200, hdrs(X_Ultrapeer="False"))
    assert (v.code, v.accepted) == (503, False)
    assert evaluate_response(cfg, 200, hdrs(Accept="text/plain")).code == 406
    with pytest.raises(RemoteProtocolError):
        evaluate_response(cfg, 200, hdrs(Content_Encoding="br"))


def test_evaluate_response_deflate_flags():
    cfg = HandshakeConfig(mode="leaf")
    both = hdrs(X_Ultrapeer="True", Accept_Encoding="deflate", Content_Encoding="deflate")
    v = evaluate_response(cfg, 200, both)
    assert (v.code, v.deflate_in, v.deflate_out, v.peer_is_ultrapeer) == (200, True, True, True)
    v = evaluate_response(HandshakeConfig(mode="leaf", accept_deflate=False), 200, both)
    assert (v.deflate_in, v.deflate_out) == (True, False)
    v = evaluate_response(cfg, 200, hdrs(X_Ultrapeer="True"))
    assert (v.deflate_in, v.deflate_out) == (False, False)


# --- captured vectors through the policy -------------------------------------------------------


@pytest.mark.parametrize(
    "name, peer_up, deflate",
    [
        ("gtk-gnutella/leaf_handshake_req_connect.bin", False, True),
        ("gtk-gnutella/ultra_handshake_req_connect.bin", True, True),
        ("gnutellabun/handshake_request_from_gbun_leaf.bin", False, True),
        ("gnutellabun/handshake_request_from_gbun_up.bin", True, True),
        ("gnutellabun/handshake_request_probe_leaf.bin", False, True),
    ],
)
def test_captured_connects_admitted_by_ultrapeer(name, peer_up, deflate):
    start, headers = parse_block(vector(name))
    assert parse_request_line(start) == "0.6"
    v = evaluate_incoming(HandshakeConfig(mode="ultrapeer"), headers, ROOMY)
    assert (v.code, v.peer_is_ultrapeer, v.deflate_out) == (200, peer_up, deflate)


@pytest.mark.parametrize(
    "name, code, deflate_in, deflate_out",
    [
        ("gtk-gnutella/leaf_handshake_resp_ultra_deflate.bin", 200, True, True),
        ("gtk-gnutella/leaf_handshake_resp_ultra_nodeflate.bin", 200, False, True),
        ("gtk-gnutella/ultra_handshake_resp_ultra_deflate.bin", 200, True, True),
        ("gtk-gnutella/ultra_handshake_resp_leaf_nodeflate.bin", 403, False, False),
        ("gtk-gnutella/ultra_handshake_resp_no_x_ultrapeer.bin", 403, False, False),
        ("gtk-gnutella/leaf_handshake_resp_leaf_deflate.bin", 204, False, False),
        ("gnutellabun/handshake_response_up_deflate.bin", 200, True, True),
        ("gnutellabun/handshake_response_up_plain.bin", 200, False, True),
        ("gnutellabun/handshake_reject_leaf_503.bin", 503, False, False),
    ],
)
def test_captured_responses_evaluated(name, code, deflate_in, deflate_out):
    start, headers = parse_block(vector(name))
    _version, status, reason = parse_status_line(start)
    v = evaluate_response(HandshakeConfig(mode="ultrapeer"), status, headers, reason)
    assert (v.code, v.deflate_in, v.deflate_out) == (code, deflate_in, deflate_out)
    assert v.reason == ("OK" if code == 200 else reason)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_remote_error(data):
    for parse in (parse_block, find_block_end):
        try:
            parse(data)
        except RemoteProtocolError:
            pass
    try:
        start, headers = parse_block(data)
    except RemoteProtocolError:
        return
    for line_parser in (parse_request_line, parse_status_line):
        try:
            line_parser(start)
        except RemoteProtocolError:
            pass
    for value in (headers.get("X-Try-Ultrapeers"), start):
        parse_try_hosts(value or "")
