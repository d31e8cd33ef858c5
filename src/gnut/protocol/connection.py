"""One Gnutella peer link, sans-IO: handshake, then inflate/deflate and framing (h11 shape)."""

from __future__ import annotations

import enum
import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from gnut.constants import HANDSHAKE_MAX_HEADER_BYTES, HARD_TTL_LIMIT, MAX_PAYLOAD
from gnut.errors import LocalProtocolError, RemoteProtocolError
from gnut.fastpath import FrameReader
from gnut.protocol.handshake import (
    CODE_OK,
    GNUTELLA_04_OK,
    HandshakeConfig,
    Headers,
    Verdict,
    build_connect,
    build_response,
    confirms_upgrade,
    content_is_deflated,
    evaluate_response,
    find_block_end,
    has_token,
    offers_tls_upgrade,
    our_headers,
    parse_block,
    parse_bool,
    parse_request_line,
    parse_status_line,
    parse_try_hosts,
    peer_listen_address,
    refusal_headers,
)

# Strategy
# --------
# Bytes in with receive_data() (b"" = EOF), events out with next_event() (NEED_DATA when
# there is nothing to report), bytes to write out with data_to_send(). Input is processed
# eagerly inside receive_data() and the resulting events are queued, so the node can
# call receive_data() then drain next_event() until NEED_DATA.
#
# Errors: a RemoteProtocolError caused by the peer's bytes never escapes receive_data();
# it becomes ONE ProtocolViolation(error) event and the connection is CLOSED (later input
# is ignored). LocalProtocolError is raised when the caller misuses the API (send before
# the handshake is done, accept twice...). EOF yields one ConnectionClosed event.
#
# Handshake blocks are cut from a small buffer (at most HANDSHAKE_MAX_HEADER_BYTES are ever
# searched); whatever follows the block that opens the link, in the same chunk, is fed
# to the framing at once, so a peer's first messages are never lost. After the handshake
# each received chunk is inflated (if the peer compresses) in bounded steps and split by
# one FrameReader; all messages of a chunk come out as ONE Frames event (the hot path),
# and a chunk that completes no message yields no event.

# Inflate at most this much per decompress() call: bounds the memory of one step.
INFLATE_STEP = 64 * 1024
# deflate can reach ~1032:1; real Gnutella traffic compresses 2-10:1, so a link whose
# inflated total exceeds 100x its compressed total (after a slack) is a decompression bomb.
INFLATE_MAX_RATIO = 100
# Inflated bytes always allowed on top of the ratio (four maximal messages).
INFLATE_SLACK = 4 * MAX_PAYLOAD
# zlib's default trade-off; each send_raw() call is a small burst, so level matters little.
DEFLATE_LEVEL = 6


class State(enum.Enum):
    """Where a Connection is in its life."""

    SENT_CONNECT = "sent_connect"  # dialer: CONNECT queued, waiting for the answer
    AWAIT_CONNECT = "await_connect"  # listener: waiting for the CONNECT block
    AWAIT_DECISION = "await_decision"  # listener: HandshakeRequest emitted, accept()/refuse() due
    AWAIT_FINAL = "await_final"  # listener: our 200 queued, waiting for the dialer's final block
    OPEN = "open"  # handshake done: messages flow
    CLOSED = "closed"  # refused, violated, closed locally or at EOF


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA = _Sentinel("NEED_DATA")


@dataclass(slots=True)
class HandshakeRequest:
    """Listener: a CONNECT arrived; answer with accept() or refuse(). version is "0.6" or "0.4"."""

    headers: Headers
    version: str


@dataclass(slots=True)
class HandshakeComplete:
    """The link is open; the flags say which directions are compressed.

    headers: the dialer sees the listener's answer; the listener sees the CONNECT headers
    updated by the dialer's final block.
    """

    headers: Headers
    peer_is_ultrapeer: bool
    deflate_in: bool
    deflate_out: bool
    peer_listen: tuple[str, int] | None
    user_agent: str
    # Both sides agreed the gnet-TLS-upgrade: the bytes after this block are TLS records
    # (Connection.tls_leftover holds any that came with it); what TLS decrypts is fed back in.
    tls_upgrade: bool = False


@dataclass(slots=True)
class HandshakeRefused:
    """The handshake ended without a link (the peer refused, or we refused its answer)."""

    code: int
    reason: str
    try_hosts: list[tuple[str, int]]


@dataclass(slots=True)
class Frames:
    """Every message completed by one received chunk (gnut.fastpath.Message objects)."""

    messages: list


@dataclass(slots=True)
class ProtocolViolation:
    """The peer broke the protocol; the connection is now closed."""

    error: RemoteProtocolError


@dataclass(slots=True)
class ConnectionClosed:
    """The peer closed its side (EOF)."""


class Connection:
    """One peer link: bytes in, events out, bytes to send buffered.

    Args:
        cfg: our handshake configuration.
        outgoing: True when we dialed (we send CONNECT), False when the peer did.
        remote_ip: the peer's address as we see it, announced as Remote-IP.
        secure: the link already runs over TLS (direct TLS): no upgrade is offered or accepted.
    """

    def __init__(
        self, cfg: HandshakeConfig, outgoing: bool, remote_ip: str | None = None, secure: bool = False
    ) -> None:
        self.cfg = cfg
        self.outgoing = outgoing
        self.remote_ip = remote_ip
        self.secure = secure
        self.tls_upgrade = False  # the handshake agreed to switch this link to TLS
        self.tls_leftover = b""  # TLS bytes that arrived with the block that opened the link
        self._tls_offered = False  # listener: our 200 accepted the peer's upgrade proposal
        self.handshake_done = False
        self.peer_headers: Headers | None = None
        self.peer_is_ultrapeer: bool | None = None
        self.version: str | None = None
        self.deflate_in = False
        self.deflate_out = False
        self.bytes_in_wire = 0
        self.bytes_in_inflated = 0
        self.bytes_out_raw = 0
        self.bytes_out_wire = 0
        self._events: deque = deque()
        self._inbuf = bytearray()
        self._scanned = 0
        self._out: list[bytes] = []  # pieces to write, joined once per data_to_send()
        self._reader: FrameReader | None = None
        self._inflater = None
        self._deflater = None
        self._inflate_wire = 0
        self._eof = False
        if outgoing:
            self.state = State.SENT_CONNECT
            self._queue(build_connect(cfg, remote_ip, secure))
        else:
            self.state = State.AWAIT_CONNECT

    # --- input ---------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the peer; b"" means EOF.

        Args:
            data: the received chunk.

        Raises:
            LocalProtocolError: data fed after EOF.
        """
        if self._eof:
            raise LocalProtocolError("receive_data() after EOF")
        if not data:
            self._eof = True
            self.state = State.CLOSED
            self._events.append(ConnectionClosed())
            return
        self.bytes_in_wire += len(data)
        if self.state is State.CLOSED:
            return
        if self.state is State.OPEN:
            self._guarded(self._feed_open, data)
        else:
            self._inbuf += data
            self._guarded(self._advance_handshake, b"")

    def next_event(self):
        """Return the next event, or NEED_DATA when there is none.

        Returns:
            HandshakeRequest, HandshakeComplete, HandshakeRefused, Frames,
            ProtocolViolation, ConnectionClosed, or NEED_DATA.
        """
        if self._events:
            return self._events.popleft()
        return NEED_DATA

    def _guarded(self, step, data: bytes) -> None:
        try:
            step(data)
        except RemoteProtocolError as exc:
            self.state = State.CLOSED
            self._inbuf.clear()
            self._events.append(ProtocolViolation(exc))

    def _advance_handshake(self, _unused: bytes) -> None:
        while self.state in (State.SENT_CONNECT, State.AWAIT_CONNECT, State.AWAIT_FINAL):
            end = find_block_end(self._inbuf, self._scanned)
            if end < 0:
                self._scanned = len(self._inbuf)
                return
            block = bytes(self._inbuf[:end])
            del self._inbuf[:end]
            self._scanned = 0
            start_line, headers = parse_block(block)
            if self.state is State.SENT_CONNECT:
                self._on_answer(start_line, headers)
            elif self.state is State.AWAIT_CONNECT:
                self.version = parse_request_line(start_line)
                self.peer_headers = headers
                self.state = State.AWAIT_DECISION
                self._events.append(HandshakeRequest(headers, self.version))
            else:
                self._on_final(start_line, headers)
        if self.state is State.AWAIT_DECISION and len(self._inbuf) > HANDSHAKE_MAX_HEADER_BYTES:
            raise RemoteProtocolError("peer kept sending before we answered its CONNECT")
        if self.state is State.OPEN and self._inbuf:
            rest = bytes(self._inbuf)
            self._inbuf.clear()
            if self.tls_upgrade:
                self.tls_leftover += rest
            else:
                self._feed_open(rest)

    def _on_answer(self, start_line: str, headers: Headers) -> None:
        # Dialer, second step: the listener's answer to our CONNECT.
        _version, code, reason = parse_status_line(start_line)
        self.peer_headers = headers
        verdict = evaluate_response(self.cfg, code, headers, reason)
        self.peer_is_ultrapeer = verdict.peer_is_ultrapeer
        if verdict.accepted:
            self.deflate_in = verdict.deflate_in
            self.deflate_out = verdict.deflate_out
            final = [("Content-Encoding", "deflate")] if self.deflate_out else []
            if self.cfg.tls and not self.secure and offers_tls_upgrade(headers) and confirms_upgrade(headers):
                self.tls_upgrade = True
                final.append(("Connection", "Upgrade"))
            self._queue(build_response(CODE_OK, "OK", final))
            self._open(headers)
            return
        if code == CODE_OK:
            # The listener admitted us but we do not want it: say so as the third step.
            self._queue(
                build_response(verdict.code, verdict.reason, refusal_headers(self.cfg, self.remote_ip))
            )
        self.state = State.CLOSED
        self._events.append(HandshakeRefused(verdict.code, verdict.reason, list(verdict.try_hosts)))

    def _on_final(self, start_line: str, headers: Headers) -> None:
        # Listener, third step: the dialer's final block after our 200.
        _version, code, reason = parse_status_line(start_line)
        if code != CODE_OK:
            self.state = State.CLOSED
            hosts = parse_try_hosts(headers.get("X-Try-Ultrapeers") or headers.get("X-Try") or "")
            self._events.append(HandshakeRefused(code, reason, hosts))
            return
        # Lenient: a peer that compresses without our Accept-Encoding offer is still read.
        self.deflate_in = content_is_deflated(headers)
        self.tls_upgrade = self._tls_offered and confirms_upgrade(headers)
        role = parse_bool(headers.get("X-Ultrapeer"))
        if role is not None:
            self.peer_is_ultrapeer = role
        assert self.peer_headers is not None
        self._open(self.peer_headers.updated(headers))

    def _open(self, headers: Headers) -> None:
        self.state = State.OPEN
        self.handshake_done = True
        self.peer_headers = headers
        self._reader = FrameReader(MAX_PAYLOAD, HARD_TTL_LIMIT)
        if self.deflate_in:
            self._inflater = zlib.decompressobj()
        if self.deflate_out:
            self._deflater = zlib.compressobj(DEFLATE_LEVEL)
        self._events.append(
            HandshakeComplete(
                headers,
                bool(self.peer_is_ultrapeer),
                self.deflate_in,
                self.deflate_out,
                peer_listen_address(headers),
                headers.get("User-Agent", "") or "",
                self.tls_upgrade,
            )
        )

    def _feed_open(self, data: bytes) -> None:
        messages: list = []
        try:
            if self._inflater is None:
                self.bytes_in_inflated += len(data)
                messages = self._reader.feed(data)
            else:
                self._inflate_and_frame(data, messages)
        except RemoteProtocolError as exc:
            # The whole messages that preceded the fault are still delivered, then the error.
            messages.extend(getattr(exc, "messages", None) or ())
            if messages:
                self._events.append(Frames(messages))
            raise
        if messages:
            self._events.append(Frames(messages))

    def _inflate_and_frame(self, data: bytes, messages: list) -> None:
        inflater = self._inflater
        reader = self._reader
        if inflater.eof:
            raise RemoteProtocolError("data after the end of the deflate stream")
        self._inflate_wire += len(data)
        while True:
            try:
                out = inflater.decompress(data, INFLATE_STEP)
            except zlib.error as exc:
                raise RemoteProtocolError(f"corrupt deflate stream: {exc}") from None
            data = inflater.unconsumed_tail
            self.bytes_in_inflated += len(out)
            if self.bytes_in_inflated > INFLATE_MAX_RATIO * self._inflate_wire + INFLATE_SLACK:
                raise RemoteProtocolError(
                    f"decompression bomb: {self.bytes_in_inflated} bytes inflated from {self._inflate_wire}"
                )
            if out:
                messages.extend(reader.feed(out))
            if inflater.unused_data:
                raise RemoteProtocolError("data after the end of the deflate stream")
            # A full step may leave output pending inside zlib even with no input left.
            if not data and len(out) < INFLATE_STEP:
                return

    # --- answering a CONNECT (listener) ---------------------------------------------------

    def accept(
        self, extra_headers: Iterable[tuple[str, str]] = (), peer_is_ultrapeer: bool | None = None
    ) -> None:
        """Admit the peer whose HandshakeRequest was emitted: queue our 200.

        A 0.6 link opens when the dialer's final 200 arrives; a 0.4 link ("GNUTELLA OK")
        opens at once, uncompressed, and HandshakeComplete is queued now.

        Args:
            extra_headers: headers added to ours (e.g. Verdict.headers).
            peer_is_ultrapeer: the role we treat the peer as; default: its X-Ultrapeer
                header, an ultrapeer-equivalent when absent.

        Raises:
            LocalProtocolError: no CONNECT is waiting for an answer.
        """
        if self.state is not State.AWAIT_DECISION:
            raise LocalProtocolError(f"accept() in state {self.state.value}")
        assert self.peer_headers is not None
        if peer_is_ultrapeer is None:
            peer_is_ultrapeer = parse_bool(self.peer_headers.get("X-Ultrapeer")) is not False
        self.peer_is_ultrapeer = peer_is_ultrapeer
        if self.version == "0.4":
            self._queue(GNUTELLA_04_OK)
            self._open(self.peer_headers)
        else:
            peer_accepts = has_token(self.peer_headers.get("Accept-Encoding"), "deflate")
            self.deflate_out = self.cfg.accept_deflate and peer_accepts
            self._tls_offered = self.cfg.tls and not self.secure and offers_tls_upgrade(self.peer_headers)
            headers = our_headers(self.cfg, self.remote_ip, True, peer_accepts, self._tls_offered)
            headers += list(extra_headers)
            self._queue(build_response(CODE_OK, "OK", headers))
            self.state = State.AWAIT_FINAL
        self._guarded(self._advance_handshake, b"")

    def refuse(
        self,
        code: int,
        reason: str,
        try_hosts: Iterable[str] = (),
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Refuse the peer whose HandshakeRequest was emitted: queue the refusal, close.

        A 0.4 peer has no refusal message: nothing is queued, the link just closes.

        Args:
            code: a non-200 status (503 for no slot / wrong role).
            reason: reason phrase.
            try_hosts: "ip:port" strings for X-Try-Ultrapeers.
            extra_headers: further headers (e.g. Verdict.headers).

        Raises:
            LocalProtocolError: no CONNECT is waiting for an answer, or code is 200.
        """
        if self.state is not State.AWAIT_DECISION:
            raise LocalProtocolError(f"refuse() in state {self.state.value}")
        if code == CODE_OK:
            raise LocalProtocolError("refuse() with code 200")
        if self.version != "0.4":
            headers = refusal_headers(self.cfg, self.remote_ip, try_hosts) + list(extra_headers)
            self._queue(build_response(code, reason, headers))
        self.state = State.CLOSED
        self._inbuf.clear()

    def answer(self, verdict: Verdict) -> None:
        """Execute an evaluate_incoming() verdict: accept() or refuse() with its headers.

        Args:
            verdict: the admission decision.

        Raises:
            LocalProtocolError: no CONNECT is waiting for an answer.
        """
        if verdict.accepted:
            self.accept(verdict.headers, verdict.peer_is_ultrapeer)
        else:
            self.refuse(verdict.code, verdict.reason, extra_headers=verdict.headers)

    # --- output ---------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        """Queue already-framed messages (one or many) for sending.

        Compressed with one Z_SYNC_FLUSH per call when deflate_out, so callers batch a
        burst into one call.

        Args:
            data: concatenated header+payload messages.

        Raises:
            LocalProtocolError: the link is not open.
        """
        if self.state is not State.OPEN:
            raise LocalProtocolError(f"send_raw() in state {self.state.value}")
        self.bytes_out_raw += len(data)
        deflater = self._deflater
        if deflater is None:
            self._queue(data)
        else:
            self._queue(deflater.compress(data) + deflater.flush(zlib.Z_SYNC_FLUSH))

    def data_to_send(self) -> bytes:
        """Drain and return the bytes the protocol wants written to the socket."""
        if not self._out:
            return b""
        out = b"".join(self._out)  # a single piece is returned as is, without a copy
        self._out.clear()
        return out

    def close(self) -> None:
        """Mark the link closed locally; bytes already queued stay available from data_to_send()."""
        self.state = State.CLOSED
        self._inbuf.clear()

    def _queue(self, data: bytes) -> None:
        self._out.append(bytes(data))
        self.bytes_out_wire += len(data)
