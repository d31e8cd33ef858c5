"""One Gnutella link on the event loop: bytes to the sans-IO Connection, frames to the node, flow control."""

from __future__ import annotations

import asyncio
import logging
import time

from gnut.constants import MSG_BYE, MSG_PING, MSG_PONG, MSG_QUERY
from gnut.errors import ProtocolError
from gnut.protocol import connection as cx
from gnut.protocol.printable import printable
from gnut.runtime.host import LinkHost
from gnut.runtime.tls import TlsError, TlsLayer, looks_like_client_hello

log = logging.getLogger("gnut.runtime.peer")

# Flow control (DESIGN.md): above LOW_WATER bytes queued for a peer, relayed queries that
# already travelled 2+ hops are shed; above HIGH_WATER every relayed query, ping and pong;
# replies (QUERYHIT), PUSH, BYE and QRP are kept. Above HARD_LIMIT the peer cannot keep
# up at all and is closed rather than buffered without bound.
LOW_WATER = 256 * 1024
HIGH_WATER = 1024 * 1024
HARD_LIMIT = 8 * 1024 * 1024
# Bytes a non-Gnutella first request may take before we decide what it is.
SNIFF_BYTES = 8

PRIO_KEEP = 0  # replies, PUSH, BYE, QRP: never shed
PRIO_LOW = 1  # queries with hops >= 2
PRIO_MID = 2  # other queries, pings, pongs


def shed_priority(mtype: int, hops: int) -> int:
    """Priority class of a relayed message for flow control."""
    if mtype == MSG_QUERY:
        return PRIO_LOW if hops >= 2 else PRIO_MID
    if mtype in (MSG_PING, MSG_PONG):
        return PRIO_MID
    return PRIO_KEEP


class Peer(asyncio.Protocol):
    """An asyncio Protocol for one link; all decisions are the Connection's and the Node's."""

    def __init__(self, node: LinkHost, outgoing: bool, addr: tuple[str, int] | None = None,
                 direct_tls: bool = False) -> None:
        self.node = node
        self.outgoing = outgoing
        self.id = node.next_peer_id()
        self.addr = addr  # remote (host, port) of the socket
        self.listen_addr: tuple[str, int] | None = addr if outgoing else None
        self.transport: asyncio.Transport | None = None
        self.conn: cx.Connection | None = None
        self.role = None
        self.user_agent = ""
        self.started = time.monotonic()
        self.last_rx = self.started
        self.ping_sent_at = 0.0
        self.outbuf = bytearray()
        self.slot = -1  # this link's relay-core slot while it is established (links.py)
        self.closed = False
        self.close_reason = ""
        self.established = False
        self.counted = False  # included in the node's per-role link counts
        self.admitted = False  # incoming: we accepted its handshake (it holds a link slot from then on)
        self.msgs_in = 0
        self.msgs_out = 0
        self.shed = 0
        self.bytes_in = 0  # wire bytes (compressed when deflated), counted per chunk, not per message
        self.bytes_out = 0
        self.dups = 0  # duplicate broadcasts received on this link
        self.dups_resent = 0  # ... of which this very link had already sent (see Node.on_frames)
        self.dup_window_start = self.started
        self.qrp = None  # QrpReceiver of this peer's table
        self.peer_headers = None
        self._sniff = bytearray()
        self.ready: asyncio.Future | None = None
        self.tls: TlsLayer | None = None  # runtime/tls.py: set when the link runs over TLS
        self.vendor_supported: set | None = None  # (vendor, selector) from its Messages Supported
        self.direct_tls = direct_tls  # dial: TLS from the first byte (the peer advertised GGEP "TLS")
        self.http_proto: asyncio.Protocol | None = None  # HTTP over TLS: gets what TLS decrypts

    # --- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peername = transport.get_extra_info("peername")
        if peername:
            self.addr = (peername[0], peername[1])
        if self.outgoing:
            if self.direct_tls and not self._start_tls(False, b""):
                return
            self.conn = cx.Connection(self.node.handshake_config, outgoing=True, remote_ip=self.addr[0],
                                      secure=self.tls is not None)
            self._write_pending()
        self.node.peer_opened(self)

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        self.bytes_in += len(data)
        self.node.traffic[0] += len(data)
        if self.tls is not None:
            try:
                data, wire = self.tls.receive(data)
            except TlsError as exc:
                self.node.events["tls_failed"] += 1
                self.close(str(exc))
                return
            if wire and not self.transport.is_closing():
                self.transport.write(wire)
            if not data:
                return
            if self.http_proto is not None:
                self.http_proto.data_received(data)
                return
        if self.conn is None:
            self._sniff += data
            if len(self._sniff) < SNIFF_BYTES and b"\n" not in self._sniff:
                return
            first = bytes(self._sniff)
            self._sniff = bytearray()
            if first.startswith(b"GNUTELLA"):
                self.conn = cx.Connection(self.node.handshake_config, outgoing=False, remote_ip=self.addr[0],
                                          secure=self.tls is not None)
                data = first
            elif not first.strip(b"\r\n"):
                self.node.on_connect_back(self)  # a BEAR/7 probe: "\n\n" then close
                self.close("connect-back probe received")
                return
            elif self.tls is None and looks_like_client_hello(first):
                self._start_tls(True, first)  # direct TLS: what it decrypts comes back here
                return
            else:
                self.node.switch_to_http(self, first)
                return
        try:
            self.conn.receive_data(data)
            self._drain_events()
        except ProtocolError as exc:
            self.node.protocol_error(self, exc)
        except Exception as exc:  # a bug of ours must cost this link only, never the node
            log.exception("internal error handling data from %s", self.describe())
            self.node.events["internal_errors"] += 1
            self.close(f"internal error: {exc!r}")
        self.node.flush()

    def eof_received(self) -> bool | None:
        if self.http_proto is not None:
            self.http_proto.eof_received()
            return None  # the socket closes (our side may already be half-closed)
        self.close("remote closed the connection")
        return None

    def pause_writing(self) -> None:
        if self.http_proto is not None:
            self.http_proto.pause_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.http_proto is not None:
            self.http_proto.connection_lost(exc)
        if not self.closed:
            self.closed = True
            self.close_reason = self.close_reason or (f"connection lost: {exc}" if exc else "connection closed")
        self.node.peer_closed(self)

    # --- events -------------------------------------------------------------------------
    def _drain_events(self) -> None:
        conn = self.conn
        node = self.node
        while not self.closed:
            ev = conn.next_event()
            if ev is cx.NEED_DATA:
                break
            if isinstance(ev, cx.Frames):
                if ev.messages:
                    self.msgs_in += len(ev.messages)
                    node.on_frames(self, ev.messages)
            elif isinstance(ev, cx.HandshakeRequest):
                node.on_handshake_request(self, ev)
            elif isinstance(ev, cx.HandshakeComplete):
                self.established = True
                if ev.tls_upgrade:
                    self._write_pending()  # our final block (dialer) goes out in clear first
                    leftover, conn.tls_leftover = conn.tls_leftover, b""
                    if not self._start_tls(not self.outgoing, leftover):
                        return
                node.on_established(self, ev)
            elif isinstance(ev, cx.HandshakeRefused):
                node.on_refused(self, ev)
            elif isinstance(ev, cx.ConnectionClosed):
                self.close("remote closed the connection")
            elif isinstance(ev, cx.ProtocolViolation):
                node.protocol_error(self, ev.error)
            self._write_pending()

    # --- output ---------------------------------------------------------------------------
    def queued(self) -> int:
        """Bytes waiting for this peer: not yet compressed plus in the transport."""
        t = self.transport
        n = len(self.outbuf) + (t.get_write_buffer_size() if t is not None else 0)
        return n if self.tls is None else n + self.tls.pending_bytes()

    def enqueue(self, raw: bytes, prio: int = PRIO_KEEP) -> bool:
        """Queue a framed message; shed it (False) when the peer is backed up.

        Args:
            raw: header + payload.
            prio: shed_priority() of the message.
        """
        if self.closed:
            return False
        if prio != PRIO_KEEP:
            q = self.queued()
            if q > HIGH_WATER or (prio == PRIO_LOW and q > LOW_WATER):
                self.shed += 1
                return False
        if not self.outbuf:
            self.node.mark_dirty(self)
        self.outbuf += raw
        self.msgs_out += 1
        return True

    def flush(self) -> None:
        """Hand the queued messages to the Connection (one deflate flush) and the socket."""
        # After a protocol violation the Connection is closed for output too: drop, never raise.
        if self.outbuf and not self.closed and self.conn.state is cx.State.OPEN:
            data = bytes(self.outbuf)
            self.outbuf.clear()
            self.conn.send_raw(data)
            self._write_pending()
            if self.transport is not None and self.transport.get_write_buffer_size() > HARD_LIMIT:
                self.close("peer cannot keep up (output over hard limit)")
        else:
            self.outbuf.clear()

    def resume_writing(self) -> None:
        """The transport drained below its low-water mark: the relay core may queue again."""
        if self.http_proto is not None:  # HTTP over TLS: its stream's drain() waits on this
            self.http_proto.resume_writing()
            return
        self.node.output_changed(self)

    def _write_pending(self) -> None:
        if self.conn is None or self.transport is None:
            return
        out = self.conn.data_to_send()
        if out and self.tls is not None:
            try:
                out = self.tls.send(out)
            except TlsError as exc:
                self.node.events["tls_failed"] += 1
                self.close(str(exc))
                return
        if out and not self.transport.is_closing():
            self.transport.write(out)
            self.bytes_out += len(out)
            self.node.traffic[1] += len(out)

    def _start_tls(self, server_side: bool, received: bytes) -> bool:
        """Switch the link to TLS (False when it failed and was closed, or TLS is off).

        Args:
            server_side: we answer the TLS handshake (we listened), else we start it.
            received: TLS bytes already received (the start of the peer's ClientHello).
        """
        ctx = self.node.tls_context(server_side)
        if ctx is None:
            self.close("TLS requested but not available")
            return False
        self.tls = TlsLayer(ctx, server_side)
        self.node.events["tls_links"] += 1
        try:
            wire = self.tls.start()
            if wire:
                self.transport.write(wire)
        except TlsError as exc:
            self.node.events["tls_failed"] += 1
            self.close(str(exc))
            return False
        if received:
            self.data_received(received)
        return not self.closed

    def send_bye(self, code: int, reason: str) -> None:
        """Send BYE (when the link is up) and close after it is written."""
        if self.established and not self.closed and self.conn.state is cx.State.OPEN:
            from gnut.protocol import messages

            raw = messages.build(self.node.new_guid(), MSG_BYE, 1, 0, messages.Bye(code, reason).encode())
            self.outbuf += raw
            self.flush()
        self.close(f"BYE {code} {reason}")

    def close(self, reason: str) -> None:
        """Close the link (after pending output is written) and remember why."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        if self.transport is not None:
            if self.tls is not None and not self.transport.is_closing():
                wire = self.tls.close_notify()
                if wire:
                    self.transport.write(wire)
            self.transport.close()
        self.node.output_changed(self)

    def describe(self) -> str:
        """`#id host:port` of the socket; an incoming peer's claimed listen address beside it, escaped."""
        host, port = self.addr or self.listen_addr or ("?", 0)
        text = f"#{self.id} {printable(str(host), 64)}:{port}"
        if self.listen_addr and self.listen_addr != self.addr and not self.outgoing:
            lhost, lport = self.listen_addr
            text += f" (listens on {printable(str(lhost), 64)}:{printable(str(lport), 8)})"
        return text
