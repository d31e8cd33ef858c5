"""TLS cost: the same `gnut node` (Cython, flood) relaying a QUERY flood over plain links and over TLS links.

# Strategy
# --------
# One node process (bench_relay.RelayProcess "cython"); the load generator opens 1 source and
# SINKS sink links to it, either plain or with the gnet-TLS-upgrade (runtime/tls.TlsLayer on
# our side too). The source's stream is encrypted before the clock starts, so only the node's
# work (decrypt, relay, encrypt per sink) and the sinks' decryption are timed; sinks decrypt
# and count frames. Rounds alternate plain/TLS on the same node; figures are medians.
"""

from __future__ import annotations

import selectors
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from bench_relay import SINKS, RelayProcess, build_stream, query_payloads  # noqa: E402
from gnut._fastpath import FrameReader  # noqa: E402

from gnut.protocol import connection as cx  # noqa: E402
from gnut.protocol import handshake as hs  # noqa: E402
from gnut.runtime.tls import TlsContexts, TlsLayer  # noqa: E402

MESSAGES = {"full": 200_000, "quick": 40_000}
ROUNDS = {"full": 3, "quick": 1}
CHUNK = 64 * 1024  # plaintext per TLS send of the source (and per socket send)
STALL = 1.5  # a round ends when the sinks got everything or nothing came for this long
TIMEOUT = 20.0


class TLink:
    """A handshaken link of the load generator, plain or TLS."""

    def __init__(self, addr: tuple[str, int], use_tls: bool, ctx) -> None:
        cfg = hs.HandshakeConfig(mode="ultrapeer", user_agent="gnut-bench/1", listen_ip="", listen_port=0,
                                 accept_deflate=False, tls=use_tls)
        self.sock = socket.create_connection(addr)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = cx.Connection(cfg, outgoing=True, remote_ip="127.0.0.1")
        self.tls: TlsLayer | None = None
        self.reader = FrameReader()
        self.msgs = 0
        self.sock.sendall(self.conn.data_to_send())
        deadline = time.monotonic() + TIMEOUT
        done = False
        while not done:
            if time.monotonic() > deadline:
                raise RuntimeError("handshake timed out")
            self.conn.receive_data(self.sock.recv(65536))
            while (ev := self.conn.next_event()) is not cx.NEED_DATA:
                if isinstance(ev, cx.HandshakeComplete):
                    done = True
                    self.sock.sendall(self.conn.data_to_send())
                    if ev.tls_upgrade:
                        self.tls = TlsLayer(ctx, False)
                        self.sock.sendall(self.tls.start())
                elif not isinstance(ev, cx.Frames):
                    raise RuntimeError(f"handshake failed: {ev}")
        if use_tls and self.tls is None:
            raise RuntimeError("the node did not accept the TLS upgrade")
        # Finish the TLS handshake and take the node's first PING (it registered the link).
        while self.msgs == 0:
            if time.monotonic() > deadline:
                raise RuntimeError("no first message")
            self.on_data(self.sock.recv(65536))
        self.msgs = 0

    def on_data(self, data: bytes) -> None:
        if self.tls is not None:
            data, wire = self.tls.receive(data)
            if wire:
                self.sock.sendall(wire)
        if data:
            self.msgs += len(self.reader.feed(data))

    def wire(self, stream: bytes) -> bytes:
        if self.tls is None:
            return stream
        return b"".join(self.tls.send(stream[i:i + CHUNK]) for i in range(0, len(stream), CHUNK))


def _round(source: TLink, sinks: list[TLink], stream: bytes, sent: int) -> dict:
    wire = source.wire(stream)
    for s in sinks:
        s.msgs = 0
    sel = selectors.DefaultSelector()
    for s in sinks:
        s.sock.setblocking(False)
        sel.register(s.sock, selectors.EVENT_READ, s)
    source.sock.setblocking(False)
    sel.register(source.sock, selectors.EVENT_WRITE, source)
    view, off = memoryview(wire), 0
    target = sent * len(sinks)
    t0 = time.perf_counter()
    last = t0
    try:
        while True:
            got = sum(s.msgs for s in sinks)
            if off >= len(wire) and (got >= target or time.perf_counter() - last > STALL):
                break
            for key, _events in sel.select(0.05):
                link = key.data
                if link is source:
                    try:
                        off += source.sock.send(view[off:off + CHUNK])
                    except BlockingIOError:
                        pass
                    if off >= len(wire):
                        sel.unregister(source.sock)
                    continue
                try:
                    data = link.sock.recv(1 << 20)
                except BlockingIOError:
                    continue
                if not data:
                    raise RuntimeError("node closed a sink")
                link.on_data(data)
                last = time.perf_counter()
    finally:
        sel.close()
        for s in (source, *sinks):
            s.sock.setblocking(True)
    seconds = max(last - t0, 1e-9)
    got = sum(s.msgs for s in sinks)
    return {"sent": sent, "received": got, "seconds": seconds, "in_per_s": sent / seconds,
            "out_per_s": got / seconds, "loss_pct": 100.0 * max(0, target - got) / target}


def run(quick: bool) -> dict:
    size = "quick" if quick else "full"
    n = MESSAGES[size]
    payloads = query_payloads(5000)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = TlsContexts(Path(tmp) / "gen").client
        node = RelayProcess("cython", Path(tmp))
        try:
            links = {kind: [TLink(node.address, kind == "tls", ctx) for _ in range(1 + SINKS)]
                     for kind in ("plain", "tls")}
            rows: dict[str, list[dict]] = {"plain": [], "tls": []}
            seed = 500
            for _ in range(ROUNDS[size]):
                for kind, ls in links.items():
                    seed += 1
                    rows[kind].append(_round(ls[0], ls[1:], build_stream(payloads, n, seed), n))
            for ls in links.values():
                for link in ls:
                    link.sock.close()
        finally:
            node.stop()
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("in_per_s", "out_per_s", "loss_pct")}
           for k, v in rows.items()}
    return {"messages_per_round": n, "sinks": SINKS, "rounds": rows, "median": med,
            "tls_vs_plain_in": med["tls"]["in_per_s"] / med["plain"]["in_per_s"]}


def format_table(result: dict) -> str:
    lines = [f"relay over plain vs TLS links ({result['sinks']} sinks, {result['messages_per_round']:,} "
             "queries per round, Cython node, flood)",
             f"{'links':<6} {'in msg/s':>12} {'out msg/s':>12} {'loss %':>7}"]
    for kind, m in result["median"].items():
        lines.append(f"{kind:<6} {m['in_per_s']:>12,.0f} {m['out_per_s']:>12,.0f} {m['loss_pct']:>7.2f}")
    lines.append(f"TLS / plain (inbound): {result['tls_vs_plain_in']:.2f}")
    return "\n".join(lines)
