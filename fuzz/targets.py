"""Fuzz entry points shared by the atheris harness (fuzz/run.py) and the hypothesis suite (tests/test_fuzz_props.py)."""

# Strategy
# --------
# Each target takes one byte string and checks the project's invariant for one parser:
# the input either parses or raises RemoteProtocolError (the peer broke the protocol) -- never
# another exception, never unbounded memory.  Where two implementations exist (the Cython
# gnut._fastpath and the pure gnut._purepath) the target runs both on the same input and the
# results must agree byte for byte, including WHETHER an error was raised.  A target signals a
# finding by raising anything else (AssertionError for a broken invariant); the runner records
# the input.  Targets use the first input bytes as "knobs" (chunk sizes, message type, mode) so
# one flat byte string drives a structured run, as h11's fuzz/afl-server.py does for h11.

from __future__ import annotations

import importlib
import os
import struct
import tempfile
import zlib
from pathlib import Path

import h11

# The UDP and GWebCache targets live beside this file; imported here so that the atheris
# harness instruments the gnut modules they load (run.py imports this module under instrumentation).
import udp_targets  # noqa: E402,I001  (fuzz/udp_targets.py, found on the same sys.path entry)

from gnut.constants import GUID_LEN, HEADER_LEN, MAX_PAYLOAD
from gnut.dht import aloc as dht_aloc
from gnut.dht import core as dht_core
from gnut.dht import wire as dht_wire
from gnut.errors import LocalProtocolError, RemoteProtocolError
from gnut.protocol import connection as cx
from gnut.protocol import ggep, handshake, messages, qrp
from gnut.protocol import routing as rt
from gnut.runtime import http

# Largest input a target looks at: bigger inputs only slow the fuzzer down (limits are tested apart).
MAX_INPUT = 256 * 1024
# Most messages one QRP target run applies (a RESET and a few PATCHes exercise every state).
QRP_MAX_MESSAGES = 8
# Memory a QRP table may hold after any input: 2^21 slots of one byte (QRP_MAX_TABLE_BITS).
QRP_MAX_TABLE_BYTES = 1 << 21
# Bytes of pending input a FrameReader may hold: one header plus the largest payload.
FRAME_MAX_BUFFERED = HEADER_LEN + MAX_PAYLOAD

PURE = importlib.import_module("gnut._purepath")
try:
    CYTHON = importlib.import_module("gnut._fastpath")
except ImportError:  # pure-only environment (GNUT_NO_EXTENSIONS builds): differential halves are skipped
    CYTHON = None
IMPLS = [m for m in (CYTHON, PURE) if m is not None]


def _chunks(data: bytes, knob: int) -> list[bytes]:
    """Cut `data` into chunks whose sizes cycle through a pattern chosen by `knob` (1-byte splits included)."""
    sizes = (1, 2, 3, 7, 23, 24, 64, 1000)
    step = sizes[knob % len(sizes)]
    if knob & 0x80:
        return [data]
    out, pos, i = [], 0, 0
    while pos < len(data):
        n = step if knob & 0x40 else sizes[(knob + i) % len(sizes)]
        out.append(data[pos : pos + n])
        pos += n
        i += 1
    return out


def _feed_all(mod, chunks: list[bytes]) -> tuple[list[bytes], str | None, int]:
    """Feed chunks to one FrameReader; return (raw messages, error text or None, bytes buffered)."""
    reader = mod.FrameReader()
    out: list[bytes] = []
    error = None
    for chunk in chunks:
        try:
            out.extend(m.raw for m in reader.feed(chunk))
        except RemoteProtocolError as exc:
            out.extend(m.raw for m in getattr(exc, "messages", None) or ())
            error = str(exc)
            break
    return out, error, reader.buffered


def frame_reader(data: bytes) -> None:
    """FrameReader: any stream split any way; Cython and pure agree; buffering stays bounded."""
    if not data:
        return
    chunks = _chunks(data[1:MAX_INPUT], data[0])
    results = [_feed_all(mod, chunks) for mod in IMPLS]
    whole = _feed_all(PURE, [data[1:MAX_INPUT]])
    for msgs, error, buffered in results:
        assert buffered <= FRAME_MAX_BUFFERED, f"reader buffers {buffered} bytes"
        # Chunking must not change what a stream means.
        assert msgs == whole[0] and (error is None) == (whole[1] is None), "chunking changed the result"
    if len(results) == 2:
        assert results[0][:2] == results[1][:2], f"cython {results[0][1]!r} != pure {results[1][1]!r}"
    for mod in IMPLS:
        try:
            n = mod.count_frames(data[1:MAX_INPUT])
        except RemoteProtocolError:
            assert whole[1] is not None, "count_frames refused a stream FrameReader accepts"
        else:
            assert whole[1] is None and n == len(whole[0]), "count_frames disagrees with FrameReader"
    for raw in whole[0]:
        if raw[17] == 0:  # TTL 0 cannot be relayed: relay_rewrite refuses it (LocalProtocolError)
            continue
        rewritten = [mod.relay_rewrite(raw) for mod in IMPLS]
        assert all(r == rewritten[0] for r in rewritten), "relay_rewrite differs"
        assert rewritten[0][17] == raw[17] - 1 and rewritten[0][18] == raw[18] + 1
        assert rewritten[0][:17] == raw[:17] and rewritten[0][19:] == raw[19:]


def guid_cache(data: bytes) -> None:
    """GuidCache: a script of (guid, kind, time step) operations; both twins answer the same."""
    if len(data) < 2:
        return
    capacity = 1 + data[0] % 64
    caches = [mod.GuidCache(capacity, 5.0, 1234) for mod in IMPLS]
    now = 0.0
    pos = 1
    while pos + 3 <= len(data) and pos < 4096:
        # A 2-byte GUID seed keeps collisions frequent; the third byte is kind and time step.
        guid = (data[pos : pos + 2] * 8)[:GUID_LEN]
        kind = data[pos + 2] & 0x81
        now += (data[pos + 2] >> 1 & 0x3F) * 0.25
        answers = [c.seen(guid, kind, now) for c in caches]
        assert all(a == answers[0] for a in answers), f"GuidCache twins disagree at {pos}"
        assert all(len(c) <= c.capacity for c in caches), "GuidCache over capacity"
        pos += 3


def message_codecs(data: bytes) -> None:
    """Payload codecs: decode(type, payload) parses or raises RemoteProtocolError; re-encoding is stable."""
    if not data:
        return
    types = (0x00, 0x01, 0x02, 0x30, 0x31, 0x32, 0x40, 0x80, 0x81, data[0])
    mtype = types[data[0] % len(types)]
    payload = data[1:MAX_INPUT]
    try:
        msg = messages.decode(mtype, payload)
    except RemoteProtocolError:
        return
    try:
        again = msg.encode()
    except LocalProtocolError as exc:
        # Re-encoding may grow a payload: invalid UTF-8 in the text comes back as U+FFFD (3 bytes
        # each, crash-3dfe261bf09c4d0a: 791 -> 1048 bytes), a GGEP H urn is also written as text,
        # GGEP goes out COBS encoded (crash-97dac4337ec3d949).  encode() then refuses to build a
        # query over the 1 KiB cap that peers disconnect for; only that refusal is accepted.
        if "exceeds" in str(exc):
            return
        raise AssertionError(f"decoded {type(msg).__name__} does not re-encode: {exc!r}") from exc
    except Exception as exc:  # noqa: BLE001 - a decoded message that cannot be re-encoded is a finding
        raise AssertionError(f"decoded {type(msg).__name__} does not re-encode: {exc!r}") from exc
    assert messages.decode(mtype, again) == msg, "decode(encode(decode(x))) != decode(x)"


def ggep_blocks(data: bytes) -> None:
    """GGEP blocks and the 0x1C extension area: parse or RemoteProtocolError; inflation is capped."""
    try:
        items, end = ggep.decode_ggep(data[:MAX_INPUT])
    except RemoteProtocolError:
        pass
    else:
        assert 0 < end <= len(data)
        assert sum(len(i.data) for i in items) <= len(items) * ggep.GGEP_MAX_INFLATED
        assert ggep.decode_ggep(ggep.encode_ggep(items))[0] == items, "GGEP round trip"
    for stop_at_nul in (False, True):
        try:
            ggep.parse_extensions(data[:MAX_INPUT], 0, stop_at_nul, "fuzz")
        except RemoteProtocolError:
            pass
    try:
        ggep.cobs_decode(data[:MAX_INPUT])
    except RemoteProtocolError:
        pass


def handshake_parse(data: bytes) -> None:
    """Handshake: header blocks and both Connection roles, fed in chunks; events only, never exceptions."""
    if not data:
        return
    body = data[1:MAX_INPUT]
    try:
        start, headers = handshake.parse_block(body)
    except RemoteProtocolError:
        pass
    else:
        for parse in (handshake.parse_request_line, handshake.parse_status_line):
            try:
                parse(start)
            except RemoteProtocolError:
                pass
        handshake.peer_listen_address(headers)
        handshake.parse_try_hosts(headers.get("X-Try-Ultrapeers") or "")
        cfg = handshake.HandshakeConfig(mode=("ultrapeer", "leaf", "flood")[data[0] % 3])
        handshake.evaluate_incoming(cfg, headers, handshake.PeerCounts(1, 1, 32, 30), ["10.0.0.1:6346"])
    cfg = handshake.HandshakeConfig(
        mode=("ultrapeer", "leaf", "flood")[data[0] % 3], accept_deflate=bool(data[0] & 4)
    )
    conn = cx.Connection(cfg, outgoing=bool(data[0] & 8), remote_ip="127.0.0.1")
    for chunk in _chunks(body, data[0] >> 4):
        conn.receive_data(chunk)
        while (ev := conn.next_event()) is not cx.NEED_DATA:
            if isinstance(ev, cx.HandshakeRequest):
                conn.accept() if data[0] & 16 else conn.refuse(503, "busy")
            assert not isinstance(ev, cx.ProtocolViolation) or isinstance(ev.error, RemoteProtocolError)
        conn.data_to_send()
    assert len(conn._inbuf) <= handshake.HANDSHAKE_MAX_HEADER_BYTES * 2 + 65536, "handshake buffer grows"


_ROUTER_GUID = bytes(range(16))


def open_link(data: bytes) -> None:
    """An open link (plain or deflated) then the Router: frames or one violation; routing never raises."""
    if not data:
        return
    knob = data[0]
    cfg = handshake.HandshakeConfig(mode="ultrapeer")
    conn = cx.Connection(cfg, outgoing=False)
    conn.receive_data(b"GNUTELLA CONNECT/0.6\r\nX-Ultrapeer: True\r\nAccept-Encoding: deflate\r\n\r\n")
    assert isinstance(conn.next_event(), cx.HandshakeRequest)
    conn.accept()
    final = b"GNUTELLA/0.6 200 OK\r\n" + (b"Content-Encoding: deflate\r\n" if knob & 1 else b"") + b"\r\n"
    conn.receive_data(final)
    assert isinstance(conn.next_event(), cx.HandshakeComplete)
    body = data[1:MAX_INPUT]
    if knob & 1 and knob & 2:  # a valid zlib stream around fuzzed bytes reaches the framing layer
        body = zlib.compress(body)
    router = rt.Router(
        ("flood", "ultrapeer", "leaf")[knob % 3],
        servent_guid=_ROUTER_GUID,
        seen_capacity=64,
        route_capacity=64,
    )
    for peer, role in enumerate(rt.PeerRole):
        router.add_peer(peer, role)
    violations = 0
    now = 0.0
    for chunk in _chunks(body, knob >> 2):
        conn.receive_data(chunk)
        while (ev := conn.next_event()) is not cx.NEED_DATA:
            if isinstance(ev, cx.Frames):
                assert violations == 0, "frames after a violation"
                for i, msg in enumerate(ev.messages):
                    now += 1.0
                    dec = router.route(i % 3, msg, now)
                    assert dec.action != rt.Action.DROP or dec.reason is not None
                    if dec.local and msg.type == 0x80:
                        try:
                            messages.Query.decode(msg.payload)
                        except RemoteProtocolError:
                            pass
            else:
                assert isinstance(ev, cx.ProtocolViolation), ev
                violations += 1
    assert violations <= 1, "more than one violation"


def qrp_patches(data: bytes) -> None:
    """QRP: a sequence of RESET/PATCH payloads applied to a receiver; only RemoteProtocolError; bounded."""
    receiver = qrp.QrpReceiver()
    pos = 0
    applied = 0
    while pos + 2 <= len(data) and applied < QRP_MAX_MESSAGES:
        n = struct.unpack_from("<H", data, pos)[0] % 4096
        payload = data[pos + 2 : pos + 2 + n]
        pos += 2 + n
        applied += 1
        if payload[:1] == b"\x01" and len(payload) > 6 and payload[3] == 1:  # compressed PATCH
            payload = payload[:6] + zlib.compress(payload[6:])  # let the fuzzer past zlib's checksum
        try:
            receiver.apply(messages.decode_qrp(payload))
        except RemoteProtocolError:
            continue
        table = receiver.table
        if table is not None:
            assert table.size <= QRP_MAX_TABLE_BYTES
            table.matches(["fuzz", "words"])


_SHARE: tuple[Path, object] | None = None


def _share():
    """A real ShareIndex over two small files in a private temporary folder (built once per process)."""
    global _SHARE
    if _SHARE is None:
        from gnut.runtime.share import ShareIndex

        root = Path(tempfile.mkdtemp(prefix="gnut-fuzz-"))
        (root / "share").mkdir()
        (root / "share" / "song one.mp3").write_bytes(b"1" * 1000)
        (root / "share" / "two.txt").write_bytes(b"2" * 10)
        (root / "outside.txt").write_bytes(b"secret")
        index = ShareIndex([root / "share"])
        index.scan()
        _SHARE = (root, index)
    return _SHARE


def http_request(data: bytes) -> None:
    """HTTP: h11 framing as the upload server configures it, then target lookup, Range and GIV parsing."""
    root, share = _share()
    body = data[:MAX_INPUT]
    if body.startswith(b"GIV "):
        try:
            index, guid, _name = http.parse_giv(body)
        except RemoteProtocolError:
            return
        assert index >= 0 and len(guid) == GUID_LEN
        return
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=http.MAX_HEADER_BYTES)
    try:
        conn.receive_data(body)
        conn.receive_data(b"")
        for _ in range(64):
            ev = conn.next_event()
            if isinstance(ev, h11.Request):
                sf = http._lookup(ev.target, share)
                assert sf is None or Path(sf.path).parent == root / "share", "lookup left the share"
                for name, value in ev.headers:
                    if name == b"range":
                        for size in (0, 1, 1000):
                            span = http.parse_range(value, size)
                            assert span is None or 0 <= span[0] <= span[1] < size, f"range {span} of {size}"
            if ev is h11.NEED_DATA or isinstance(ev, h11.ConnectionClosed) or ev is h11.PAUSED:
                break
    except h11.RemoteProtocolError:
        return


def udp_datagram(data: bytes) -> None:
    """One UDP datagram through the node's receive path (fuzz/udp_targets.py)."""
    udp_targets.udp_datagram(data, _share()[1])


def _udp_target(name: str):
    def target(data: bytes) -> None:
        udp_targets.TARGETS[name](data)

    target.__doc__ = f"UDP/GWC payloads: {name} (fuzz/udp_targets.py)."
    return target


def dht_messages(data: bytes) -> None:
    """A Mojito datagram parses (then re-encodes to the same message) or raises RemoteProtocolError."""
    data = data[:MAX_INPUT]
    try:
        header, body = dht_wire.decode_message(data)
    except RemoteProtocolError:
        return
    try:
        again = dht_wire.encode_message(header, body)
    except LocalProtocolError:
        return  # a long status description is cut on re-encode; decoding it was still sound
    assert dht_wire.decode_message(again) == (header, body), "DHT message does not survive a round trip"
    if header.op in (dht_wire.STORE_REQUEST, dht_wire.FIND_VALUE_RESPONSE):
        for v in body.values:
            for decode in (dht_aloc.decode_aloc, dht_aloc.decode_prox):
                try:
                    decode(v.data)
                except RemoteProtocolError:
                    pass


def dht_node(data: bytes) -> None:
    """Any datagrams fed to a DhtCore are answered or dropped with a count; it never raises."""
    limits = dht_core.DhtLimits(rate_burst=1e6)  # a fresh node whose rate limit leaves the input alone
    node = dht_core.DhtCore("127.0.0.1", 6346, 0.0, kuid=bytes(20), limits=limits)
    knob = data[:1]
    for i, chunk in enumerate(data[1:].split(b"\xfe\xfd") if knob == b"\x01" else [data[1:]]):
        node.receive(chunk, ("127.0.0.2", 1000 + (i & 3)), float(i))
        node.tick(float(i) + 10.0)
    node.take_outbox()
    assert len(node.pending) <= dht_core.MAX_PENDING


TARGETS = {
    "udp_datagram": udp_datagram,
    "udp_payloads": _udp_target("udp_payloads"),
    "gwc": _udp_target("gwc"),
    "frame_reader": frame_reader,
    "guid_cache": guid_cache,
    "message_codecs": message_codecs,
    "ggep": ggep_blocks,
    "handshake": handshake_parse,
    "open_link": open_link,
    "qrp": qrp_patches,
    "http": http_request,
    "dht_messages": dht_messages,
    "dht_node": dht_node,
}

# Seeds: captured real-servent bytes (tests/vectors), plus a few built here.
VECTORS = Path(os.environ.get("GNUT_VECTORS", Path(__file__).resolve().parents[1] / "tests" / "vectors"))


def seeds(name: str) -> list[bytes]:
    """Starting inputs for a target: real captured bytes shaped for that target's knobs."""
    if name in ("udp_datagram", "udp_payloads", "gwc"):
        return udp_targets.seeds(name)
    vec = sorted(VECTORS.glob("*/*.bin")) if VECTORS.is_dir() else []

    def pick(*words: str) -> list[bytes]:
        return [p.read_bytes() for p in vec if any(w in p.name for w in words)]

    ping = messages.build(bytes(16), 0x00, 1, 0, b"")
    query = messages.build(bytes(range(16)), 0x80, 3, 0, messages.Query("fuzz me").encode())
    if name in ("frame_reader", "open_link"):
        frames = pick("ping", "pong", "query", "bye", "qrp", "vendor") + [ping, query]
        return [bytes((k,)) + f for f in frames for k in (0, 0x41, 0x80, 3)]
    if name == "guid_cache":
        return [bytes(range(64)), b"\x05" + b"ab\x02" * 30]
    if name == "message_codecs":
        out = []
        for f in pick("ping", "pong", "query", "bye", "qrp", "vendor") + [ping, query]:
            if len(f) >= HEADER_LEN:
                types = (0x00, 0x01, 0x02, 0x30, 0x31, 0x32, 0x40, 0x80, 0x81)
                t = f[16]
                out.append(bytes((types.index(t) if t in types else 9,)) + f[HEADER_LEN:])
        return out
    if name == "ggep":
        return [
            ggep.encode_ggep([ggep.GgepItem("H", b"\x01" + bytes(20)), ggep.GgepItem("VC", b"GNPY")]),
            ggep.encode_ggep([ggep.GgepItem("DU", b"\x10\x27")], compress=True, cobs=True),
        ]
    if name == "handshake":
        return [bytes((k,)) + b for b in pick("handshake") for k in (0x10, 0x18, 0x05)]
    if name == "qrp":
        reset = messages.QrpReset(1 << 10, 7).encode()
        patch = messages.QrpPatch(1, 1, 0, 4, bytes(512)).encode()
        return [struct.pack("<H", len(reset)) + reset + struct.pack("<H", len(patch)) + patch]
    if name == "http":
        return pick("http_req", "giv") + [
            b"GET /get/1/song%20one.mp3 HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n"
        ]
    if name in ("dht_messages", "dht_node"):
        out = _dht_seeds()
        return out if name == "dht_messages" else [b"\x00" + d for d in out]
    raise KeyError(name)


def _dht_seeds() -> list[bytes]:
    """One datagram of every Mojito message type (as gtk-gnutella lays them out)."""
    w = dht_wire
    me = w.Contact(bytes(range(20)), "127.0.0.1", 6346, b"GTKG", (0, 0))
    val = w.DhtValue(
        me, bytes(20), w.VT_ALOC, dht_aloc.encode_aloc(dht_aloc.Aloc(bytes(16), 6346, 1000)), (0, 1)
    )
    bodies = {
        w.PING_REQUEST: None,
        w.PING_RESPONSE: w.Pong(("127.0.0.1", 6346), 12345),
        w.STORE_REQUEST: w.StoreRequest(b"tokn", [val]),
        w.STORE_RESPONSE: [w.StoreStatus(bytes(20), me.kuid, w.SC_OK)],
        w.FIND_NODE_REQUEST: bytes(20),
        w.FIND_NODE_RESPONSE: w.FindNodeResponse(b"tokn", [me, w.Contact(bytes(20), "::1", 1, b"LIME")]),
        w.FIND_VALUE_REQUEST: w.FindValueRequest(bytes(20), [me.kuid], w.VT_ALOC),
        w.FIND_VALUE_RESPONSE: w.FindValueResponse(0.5, [val], [bytes(20)]),
    }
    return [w.encode_message(w.Header(bytes(16), op, me), body) for op, body in bodies.items()]
