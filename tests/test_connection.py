"""Tests for gnut.protocol.connection: both handshake sides, captured peers, deflate links, framing, errors."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gnut.constants import HANDSHAKE_MAX_HEADER_BYTES, MSG_PING, MSG_QUERY
from gnut.errors import LocalProtocolError, RemoteProtocolError
from gnut.protocol.connection import (
    INFLATE_MAX_RATIO,
    NEED_DATA,
    Connection,
    ConnectionClosed,
    Frames,
    HandshakeComplete,
    HandshakeRefused,
    HandshakeRequest,
    ProtocolViolation,
    State,
)
from gnut.protocol.handshake import (
    HandshakeConfig,
    PeerCounts,
    evaluate_incoming,
    parse_block,
    parse_status_line,
)

VECTORS = Path(__file__).resolve().parent / "vectors"  # captured real-servent bytes (vectors/README.md)
ROOMY = PeerCounts(ultrapeers=0, leaves=0, max_ultrapeers=32, max_leaves=30)


def vector(name: str) -> bytes:
    path = VECTORS / name
    return path.read_bytes()


def message(n: int, mtype: int = MSG_QUERY, payload: bytes | None = None) -> bytes:
    """A framed message with a distinct GUID; the payload is a flags word and text."""
    body = payload if payload is not None else b"\x00\x80" + f"search {n}".encode() + b"\x00"
    guid = n.to_bytes(16, "little")
    return guid + struct.pack("<BBBI", mtype, 4, 0, len(body)) + body


def drain(conn: Connection) -> list:
    events = []
    while (ev := conn.next_event()) is not NEED_DATA:
        events.append(ev)
    return events


def feed(conn: Connection, data: bytes, bytewise: bool) -> list:
    if bytewise:
        events = []
        for i in range(len(data)):
            conn.receive_data(data[i : i + 1])
            events += drain(conn)
        return events
    conn.receive_data(data)
    return drain(conn)


def raws(events) -> list[bytes]:
    return [m.raw for ev in events if isinstance(ev, Frames) for m in ev.messages]


def of(events, kind):
    found = [ev for ev in events if isinstance(ev, kind)]
    assert len(found) == 1, events
    return found[0]


def answer_connect(listener: Connection, events) -> None:
    req = of(events, HandshakeRequest)
    listener.answer(evaluate_incoming(listener.cfg, req.headers, ROOMY))


def handshake(dial_cfg, listen_cfg, bytewise=False):
    """Run a gnut dialer against a gnut listener; return both and their completion events."""
    dialer = Connection(dial_cfg, outgoing=True, remote_ip="127.0.0.2")
    listener = Connection(listen_cfg, outgoing=False, remote_ip="127.0.0.1")
    answer_connect(listener, feed(listener, dialer.data_to_send(), bytewise))
    dial_done = of(feed(dialer, listener.data_to_send(), bytewise), HandshakeComplete)
    listen_done = of(feed(listener, dialer.data_to_send(), bytewise), HandshakeComplete)
    return dialer, listener, dial_done, listen_done


# --- gnut against gnut ---------------------------------------------------------------------------


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("dial_deflate", [True, False], ids=["dial-z", "dial-plain"])
@pytest.mark.parametrize("listen_deflate", [True, False], ids=["listen-z", "listen-plain"])
def test_gnut_to_gnut(dial_deflate, listen_deflate, bytewise):
    dial_cfg = HandshakeConfig(mode="leaf", listen_port=7001, accept_deflate=dial_deflate)
    listen_cfg = HandshakeConfig(mode="ultrapeer", listen_port=7002, accept_deflate=listen_deflate)
    dialer, listener, dial_done, listen_done = handshake(dial_cfg, listen_cfg, bytewise)
    both = dial_deflate and listen_deflate
    assert (dial_done.deflate_in, dial_done.deflate_out) == (both, both)
    assert (listen_done.deflate_in, listen_done.deflate_out) == (both, both)
    assert dial_done.peer_is_ultrapeer is True and listen_done.peer_is_ultrapeer is False
    assert dial_done.peer_listen == ("127.0.0.1", 7002) and listen_done.peer_listen == ("127.0.0.1", 7001)
    assert dial_done.user_agent.startswith("gnut/")
    assert dialer.handshake_done and listener.handshake_done
    assert dialer.state is listener.state is State.OPEN

    burst = [message(i) for i in range(20)]
    for sender, receiver in ((dialer, listener), (listener, dialer)):
        sender.send_raw(b"".join(burst[:10]))
        sender.send_raw(b"".join(burst[10:]))
        wire = sender.data_to_send()
        events = feed(receiver, wire, bytewise)
        assert raws(events) == burst
        assert all(isinstance(ev, Frames) for ev in events)
        assert sender.bytes_out_raw == sum(map(len, burst))
        assert (wire[:1] == b"\x78") == both  # zlib header (RFC 1950) only on deflated links
        assert receiver.bytes_in_inflated == sum(map(len, burst))


def test_one_frames_event_per_chunk():
    dialer, listener, _, _ = handshake(HandshakeConfig(), HandshakeConfig())
    dialer.send_raw(b"".join(message(i) for i in range(50)))
    listener.receive_data(dialer.data_to_send())
    events = drain(listener)
    assert len(events) == 1 and len(events[0].messages) == 50
    half = message(99)
    dialer.send_raw(half)
    wire = dialer.data_to_send()
    listener.receive_data(wire[:5])
    assert drain(listener) == []


def test_messages_in_the_same_chunk_as_the_final_200_are_delivered():
    # The dialer's final 200 and its first (compressed) messages arrive as one chunk.
    dialer = Connection(HandshakeConfig(mode="leaf"), outgoing=True)
    listener = Connection(HandshakeConfig(), outgoing=False)
    answer_connect(listener, feed(listener, dialer.data_to_send(), False))
    of(feed(dialer, listener.data_to_send(), False), HandshakeComplete)
    first = [message(1), message(2, MSG_PING, b"")]
    dialer.send_raw(b"".join(first))
    events = feed(listener, dialer.data_to_send(), False)
    assert isinstance(events[0], HandshakeComplete) and events[0].deflate_in
    assert raws(events) == first


def test_messages_right_after_the_listener_200_are_delivered():
    # Some servents send right after their 200: the dialer must not lose those bytes.
    dialer = Connection(HandshakeConfig(accept_deflate=False), outgoing=True)
    listener = Connection(HandshakeConfig(accept_deflate=False), outgoing=False)
    answer_connect(listener, feed(listener, dialer.data_to_send(), False))
    events = feed(dialer, listener.data_to_send() + message(7), False)
    assert isinstance(events[0], HandshakeComplete)
    assert raws(events) == [message(7)]


# --- captured CONNECTs into our listener ------------------------------------------------------------


CAPTURED_CONNECTS = [
    ("gtk-gnutella/leaf_handshake_req_connect.bin", "gtk-gnutella/leaf_handshake_final_ack.bin", False),
    ("gtk-gnutella/ultra_handshake_req_connect.bin", "gtk-gnutella/ultra_handshake_final_ack.bin", True),
    (
        "gnutellabun/handshake_request_from_gbun_leaf.bin",
        "gnutellabun/handshake_final_from_gbun_leaf.bin",
        False,
    ),
    ("gnutellabun/handshake_request_from_gbun_up.bin", "gnutellabun/handshake_final_from_gbun_up.bin", True),
]


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("connect, final, peer_up", CAPTURED_CONNECTS, ids=lambda v: str(v).split("/")[-1])
def test_captured_connect_into_our_listener(connect, final, peer_up, bytewise):
    listener = Connection(
        HandshakeConfig(mode="ultrapeer", listen_port=6346), outgoing=False, remote_ip="127.0.0.1"
    )
    events = feed(listener, vector(connect), bytewise)
    assert of(events, HandshakeRequest).version == "0.6"
    answer_connect(listener, events)
    start, ours = parse_block(listener.data_to_send())
    assert parse_status_line(start)[1] == 200
    assert ours.get("X-Ultrapeer") == "True"
    assert ours.get("Accept-Encoding") == "deflate"  # a gtk-gnutella leaf needs deflate offered
    assert ours.get("Content-Encoding") == "deflate"  # each of them sent Accept-Encoding: deflate
    assert ours.get("Remote-IP") == "127.0.0.1"
    # Their final ack, then their first compressed messages, in one chunk.
    z = zlib.compressobj()
    first = [message(3), message(4)]
    chunk = vector(final) + z.compress(b"".join(first)) + z.flush(zlib.Z_SYNC_FLUSH)
    events = feed(listener, chunk, bytewise)
    done = of(events, HandshakeComplete)
    assert (done.deflate_in, done.deflate_out, done.peer_is_ultrapeer) == (True, True, peer_up)
    assert done.user_agent.startswith(("gtk-gnutella/", "GnutellaBun/"))
    assert done.peer_listen is not None
    assert raws(events) == first


@pytest.mark.parametrize("name", [c[0] for c in CAPTURED_CONNECTS], ids=lambda v: v.split("/")[-1])
def test_no_content_encoding_without_their_accept_encoding(name):
    plain = vector(name).replace(b"Accept-Encoding: deflate\r\n", b"")
    listener = Connection(HandshakeConfig(), outgoing=False)
    answer_connect(listener, feed(listener, plain, False))
    _, ours = parse_block(listener.data_to_send())
    assert "Content-Encoding" not in ours and ours.get("Accept-Encoding") == "deflate"


def test_leaf_listener_refuses_a_leaf_with_503():
    listener = Connection(HandshakeConfig(mode="leaf"), outgoing=False, remote_ip="127.0.0.1")
    events = feed(listener, vector("gnutellabun/handshake_request_from_gbun_leaf.bin"), False)
    req = of(events, HandshakeRequest)
    counts = ROOMY
    listener.answer(evaluate_incoming(listener.cfg, req.headers, counts, ["10.1.1.1:6346"]))
    start, ours = parse_block(listener.data_to_send())
    assert start == "GNUTELLA/0.6 503 Shielded leaf node"
    assert ours.get("X-Try-Ultrapeers") == "10.1.1.1:6346" and ours.get("X-Ultrapeer") == "False"
    assert listener.state is State.CLOSED
    listener.receive_data(b"GNUTELLA/0.6 200 OK\r\n\r\n")
    assert drain(listener) == []


# --- captured answers into our dialer ---------------------------------------------------------------


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize(
    "mode, name, deflate_in, peer_up",
    [
        ("leaf", "gtk-gnutella/ultra_handshake_resp_leaf_deflate.bin", True, True),
        ("ultrapeer", "gtk-gnutella/ultra_handshake_resp_ultra_deflate.bin", True, True),
        ("ultrapeer", "gtk-gnutella/ultra_handshake_resp_ultra_nodeflate.bin", False, True),
        ("ultrapeer", "gtk-gnutella/leaf_handshake_resp_ultra_deflate.bin", True, False),
        ("leaf", "gnutellabun/handshake_response_up_deflate.bin", True, True),
        ("leaf", "gnutellabun/handshake_response_up_plain.bin", False, True),
        ("ultrapeer", "gnutellabun/handshake_response_up_to_up.bin", True, True),
        ("ultrapeer", "gnutellabun/handshake_response_leaf.bin", True, False),
    ],
)
def test_captured_answer_into_our_dialer(mode, name, deflate_in, peer_up, bytewise):
    dialer = Connection(HandshakeConfig(mode=mode), outgoing=True, remote_ip="127.0.0.1")
    assert dialer.data_to_send().startswith(b"GNUTELLA CONNECT/0.6\r\n")
    events = feed(dialer, vector(name), bytewise)
    done = of(events, HandshakeComplete)
    # Every captured answer carries Accept-Encoding: deflate, so we compress our side.
    assert (done.deflate_in, done.deflate_out, done.peer_is_ultrapeer) == (deflate_in, True, peer_up)
    final = dialer.data_to_send()
    assert final == b"GNUTELLA/0.6 200 OK\r\nContent-Encoding: deflate\r\n\r\n"
    dialer.send_raw(message(5))
    assert zlib.decompressobj().decompress(dialer.data_to_send()) == message(5)


@pytest.mark.parametrize(
    "mode, name, code, reason",
    [
        (
            "leaf",
            "gtk-gnutella/ultra_handshake_resp_leaf_nodeflate.bin",
            403,
            "Gnet connection not compressed",
        ),
        ("ultrapeer", "gtk-gnutella/ultra_handshake_resp_no_x_ultrapeer.bin", 403, "Normal nodes refused"),
        (
            "leaf",
            "gtk-gnutella/leaf_handshake_resp_leaf_deflate.bin",
            204,
            "Shielded leaf node (4 peers max)",
        ),
        ("leaf", "gnutellabun/handshake_reject_leaf_503.bin", 503, "Shielded leaf node (8 ultrapeers max)"),
    ],
)
def test_captured_refusals_into_our_dialer(mode, name, code, reason):
    dialer = Connection(HandshakeConfig(mode=mode), outgoing=True)
    dialer.data_to_send()
    refused = of(feed(dialer, vector(name), False), HandshakeRefused)
    assert (refused.code, refused.reason, refused.try_hosts) == (code, reason, [])
    assert dialer.state is State.CLOSED and dialer.data_to_send() == b""
    with pytest.raises(LocalProtocolError):
        dialer.send_raw(message(1))


def test_our_leaf_dialer_refuses_a_leaf_that_said_200():
    dialer = Connection(HandshakeConfig(mode="leaf"), outgoing=True)
    dialer.data_to_send()
    refused = of(
        feed(dialer, vector("gtk-gnutella/leaf_handshake_resp_ultra_deflate.bin"), False), HandshakeRefused
    )
    assert refused.code == 503
    assert dialer.data_to_send().startswith(b"GNUTELLA/0.6 503 Shielded leaf node\r\n")


def test_refusal_with_try_ultrapeers_parsed():
    dialer = Connection(HandshakeConfig(), outgoing=True)
    answer = b"GNUTELLA/0.6 503 Too many leaves\r\nX-Try-Ultrapeers: 1.2.3.4:6346 2024-01-01T00:00Z,bad,5.6.7.8:7\r\n\r\n"
    refused = of(feed(dialer, answer, True), HandshakeRefused)
    assert (refused.code, refused.try_hosts) == (503, [("1.2.3.4", 6346), ("5.6.7.8", 7)])


def test_listener_refuse_and_third_step_refusal():
    listener = Connection(HandshakeConfig(), outgoing=False)
    feed(listener, b"GNUTELLA CONNECT/0.6\r\nX-Ultrapeer: True\r\n\r\n", False)
    listener.refuse(503, "Too many ultrapeers", try_hosts=["9.8.7.6:6346"])
    start, h = parse_block(listener.data_to_send())
    assert start == "GNUTELLA/0.6 503 Too many ultrapeers" and h.get("X-Try-Ultrapeers") == "9.8.7.6:6346"
    assert listener.state is State.CLOSED

    listener = Connection(HandshakeConfig(), outgoing=False)
    feed(listener, b"GNUTELLA CONNECT/0.6\r\nX-Ultrapeer: True\r\n\r\n", False)
    listener.accept()
    events = feed(listener, b"GNUTELLA/0.6 503 Changed my mind\r\nX-Try: 4.4.4.4:1\r\n\r\n", False)
    refused = of(events, HandshakeRefused)
    assert (refused.code, refused.reason, refused.try_hosts) == (503, "Changed my mind", [("4.4.4.4", 1)])


# --- 0.4 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_gnutella_04_connect_accepted_as_flood_link(bytewise):
    listener = Connection(HandshakeConfig(mode="flood"), outgoing=False)
    events = feed(listener, b"GNUTELLA CONNECT/0.4\n\n" + message(8), bytewise)
    req = of(events, HandshakeRequest)
    assert req.version == "0.4" and len(req.headers) == 0
    listener.accept()
    assert listener.data_to_send() == b"GNUTELLA OK\n\n"
    events = drain(listener)
    done = of(events, HandshakeComplete)
    assert (done.peer_is_ultrapeer, done.deflate_in, done.deflate_out) == (True, False, False)
    assert raws(events) == [message(8)]
    listener.send_raw(message(9))
    assert listener.data_to_send() == message(9)


def test_gnutella_04_refused_closes_silently():
    listener = Connection(HandshakeConfig(mode="leaf"), outgoing=False)
    feed(listener, b"GNUTELLA CONNECT/0.4\n\n", False)
    listener.refuse(503, "Shielded leaf node")
    assert listener.data_to_send() == b"" and listener.state is State.CLOSED


# --- errors and limits -------------------------------------------------------------------------------


def open_pair(deflate: bool):
    cfg = HandshakeConfig(accept_deflate=deflate)
    dialer, listener, _, _ = handshake(cfg, cfg)
    return dialer, listener


def test_header_block_bomb_is_a_violation():
    listener = Connection(HandshakeConfig(), outgoing=False)
    events = feed(listener, b"GNUTELLA CONNECT/0.6\r\nX: " + b"a" * HANDSHAKE_MAX_HEADER_BYTES, False)
    violation = of(events, ProtocolViolation)
    assert isinstance(violation.error, RemoteProtocolError) and "handshake block" in str(violation.error)
    assert listener.state is State.CLOSED
    listener.receive_data(b"more")
    assert drain(listener) == []


@pytest.mark.parametrize(
    "data",
    [b"GET / HTTP/1.1\r\n\r\n", b"GNUTELLA CONNECT/0.6\r\nno colon\r\n\r\n", b"GNUTELLA CONNECT/0.2\r\n\r\n"],
)
def test_bad_connect_is_a_violation(data):
    listener = Connection(HandshakeConfig(), outgoing=False)
    assert isinstance(of(feed(listener, data, False), ProtocolViolation).error, RemoteProtocolError)


def test_bad_answer_is_a_violation():
    dialer = Connection(HandshakeConfig(), outgoing=True)
    of(feed(dialer, b"GNUTELLA OK\n\n", False), ProtocolViolation)
    dialer = Connection(HandshakeConfig(), outgoing=True)
    of(feed(dialer, b"GNUTELLA/0.6 200 OK\r\nContent-Encoding: br\r\n\r\n", False), ProtocolViolation)


def test_sending_before_our_answer_is_bounded():
    listener = Connection(HandshakeConfig(), outgoing=False)
    feed(listener, b"GNUTELLA CONNECT/0.6\r\n\r\n", False)
    events = feed(listener, b"\x00" * (HANDSHAKE_MAX_HEADER_BYTES + 1), False)
    assert "before we answered" in str(of(events, ProtocolViolation).error)


def test_decompression_bomb_is_a_violation():
    dialer, listener = open_pair(True)
    # 16 MiB of zero bytes deflates to ~16 KiB, far past the allowed ratio.
    bomb = zlib.compress(b"\x00" * (16 << 20))
    assert len(bomb) * INFLATE_MAX_RATIO < 16 << 20
    events = feed(listener, bomb, False)
    assert "decompression bomb" in str(events[-1].error)
    assert listener.state is State.CLOSED
    assert listener.bytes_in_inflated < 4 << 20  # stopped early, not after inflating everything


@pytest.mark.parametrize("fill", ["random", "zeros"])
def test_large_compressed_burst_is_inflated_in_steps(fill):
    # Random payloads leave input in unconsumed_tail; zero payloads (within the slack)
    # leave output pending inside zlib after all input was consumed.
    dialer, listener = open_pair(True)
    payload = (lambda: os.urandom(60000)) if fill == "random" else (lambda: bytes(60000))
    burst = [message(i, MSG_QUERY, payload()) for i in range(3)]
    dialer.send_raw(b"".join(burst))
    events = feed(listener, dialer.data_to_send(), False)
    assert len(events) == 1 and raws(events) == burst


def test_corrupt_deflate_stream_is_a_violation():
    _, listener = open_pair(True)
    events = feed(listener, b"\x78\x9c\xff\xff\xff\xff garbage", False)
    assert "corrupt deflate" in str(of(events, ProtocolViolation).error)


def test_data_after_deflate_stream_end_is_a_violation():
    _, listener = open_pair(True)
    events = feed(listener, zlib.compress(message(1)) + b"tail", False)
    assert raws(events) == [message(1)]
    assert "end of the deflate stream" in str(events[-1].error)


@pytest.mark.parametrize("deflate", [True, False], ids=["z", "plain"])
def test_frame_error_delivers_earlier_messages_then_violation(deflate):
    dialer, listener = open_pair(deflate)
    oversized = bytes(16) + struct.pack("<BBBI", MSG_QUERY, 4, 0, 10 << 20)
    dialer.send_raw(message(1) + message(2) + oversized)
    events = feed(listener, dialer.data_to_send(), False)
    assert raws(events) == [message(1), message(2)]
    assert isinstance(events[-1], ProtocolViolation) and listener.state is State.CLOSED


def test_eof_and_counters():
    dialer, listener = open_pair(True)
    wire_before = listener.bytes_in_wire
    out_before = dialer.bytes_out_wire
    dialer.send_raw(message(1) + message(2))
    chunk = dialer.data_to_send()
    assert dialer.bytes_out_raw == len(message(1)) + len(message(2))
    assert dialer.bytes_out_wire == out_before + len(chunk)
    feed(listener, chunk, False)
    assert listener.bytes_in_wire == wire_before + len(chunk)
    assert listener.bytes_in_inflated == len(message(1)) + len(message(2))
    listener.receive_data(b"")
    assert isinstance(listener.next_event(), ConnectionClosed)
    assert listener.next_event() is NEED_DATA
    with pytest.raises(LocalProtocolError):
        listener.receive_data(b"x")


def test_eof_during_handshake():
    dialer = Connection(HandshakeConfig(), outgoing=True)
    events = feed(dialer, b"GNUTELLA/0.6 200", False)
    assert events == []
    dialer.receive_data(b"")
    assert drain(dialer) == [ConnectionClosed()]
    assert not dialer.handshake_done


def test_api_misuse_is_local_error():
    listener = Connection(HandshakeConfig(), outgoing=False)
    with pytest.raises(LocalProtocolError):
        listener.accept()
    with pytest.raises(LocalProtocolError):
        listener.send_raw(message(1))
    feed(listener, b"GNUTELLA CONNECT/0.6\r\n\r\n", False)
    with pytest.raises(LocalProtocolError):
        listener.refuse(200, "OK")
    listener.accept()
    with pytest.raises(LocalProtocolError):
        listener.accept()
    listener.close()
    assert listener.state is State.CLOSED and listener.data_to_send().startswith(b"GNUTELLA/0.6 200 OK")


def test_final_200_pipelined_with_the_connect_waits_for_accept():
    listener = Connection(HandshakeConfig(accept_deflate=False), outgoing=False)
    chunk = b"GNUTELLA CONNECT/0.6\r\nX-Ultrapeer: True\r\n\r\nGNUTELLA/0.6 200 OK\r\n\r\n" + message(1)
    events = feed(listener, chunk, False)
    assert [type(ev) for ev in events] == [HandshakeRequest]
    listener.accept()
    events = drain(listener)
    assert isinstance(events[0], HandshakeComplete) and raws(events) == [message(1)]


# --- the fuzz invariant: any input parses or becomes ONE ProtocolViolation, nothing escapes ---------


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600), outgoing=st.booleans())
def test_any_handshake_input_yields_events_only(data, outgoing):
    conn = Connection(HandshakeConfig(), outgoing=outgoing)
    conn.receive_data(data)
    events = drain(conn)
    if any(isinstance(ev, HandshakeRequest) for ev in events):
        conn.accept()
        events += drain(conn)
    assert sum(isinstance(ev, ProtocolViolation) for ev in events) <= 1
    if any(isinstance(ev, ProtocolViolation) for ev in events):
        assert conn.state is State.CLOSED


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=1, max_size=400), deflate=st.booleans())
def test_any_open_link_input_yields_frames_or_one_violation(data, deflate):
    _, listener = open_pair(deflate)
    listener.receive_data(data)
    events = drain(listener)
    assert all(isinstance(ev, (Frames, ProtocolViolation)) for ev in events)
    assert sum(isinstance(ev, ProtocolViolation) for ev in events) <= 1
