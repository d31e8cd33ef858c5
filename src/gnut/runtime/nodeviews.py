"""Mixin of Node: what users see of it: status, byte counters and rates, why links failed, in words.

Strategy: kept apart from node.py (the message path) like links.py (the link lifecycle); Node
owns the state (traffic, samples, link_failures, transfers, downloads), these methods read it.
"""

from __future__ import annotations

import time

from gnut.constants import TYPE_NAMES
from gnut.protocol.printable import printable
from gnut.runtime.hostiles import trust_view
from gnut.runtime.udpnode import udp_stats

# Link failures remembered for the user (by address, newest kept).
LINK_FAILURES_KEPT = 64


class NodeViews:
    """`gnut status` data, byte counters and rates, link-failure notes of a Node."""

    def note_link_failure(self, host: str, port: int, why) -> None:
        """Remember, in words, why a link to host:port failed (a dial error or a refusal's status)."""
        if isinstance(why, ConnectionRefusedError):
            text = "connection refused (nothing listens there)"
        elif isinstance(why, TimeoutError):
            text = "no answer (timed out)"
        elif isinstance(why, OSError):
            text = (why.strerror or str(why) or type(why).__name__).lower()
        else:
            text = str(why)
        self.link_failures[(host, port)] = text
        self.link_failures.move_to_end((host, port))
        while len(self.link_failures) > LINK_FAILURES_KEPT:
            self.link_failures.popitem(last=False)

    def on_refused(self, peer, ev) -> None:
        host, port = peer.listen_addr or peer.addr or ("?", 0)
        self.note_link_failure(host, port, f"refused us: {ev.code} {printable(ev.reason)}")
        super().on_refused(peer, ev)

    def byte_counters(self) -> tuple[int, int, int, int]:
        """Bytes (gnutella in, gnutella out, http in = downloads, http out = uploads) since start."""
        up = self.transfers.ctx.stats.get("bytes_sent", 0) if self.transfers is not None else 0
        down = self.downloads.bytes_received if self.downloads is not None else 0
        return self.traffic[0], self.traffic[1], down, up

    def traffic_stats(self) -> dict:
        """Byte totals and rates (bytes/s over the last few ticks) per direction."""
        now = (time.monotonic(), *self.byte_counters())
        old = self._samples[0] if self._samples else (self.started, 0, 0, 0, 0)
        span = max(now[0] - old[0], 1e-3)
        names = ("gnutella_in", "gnutella_out", "http_in", "http_out")
        return {n: {"bytes": now[i + 1], "rate": round((now[i + 1] - old[i + 1]) / span)}
                for i, n in enumerate(names)}

    def stats(self) -> dict:
        """Peers, traffic by message type, drops by reason, transfers: for `gnut status`."""
        peers = []
        for p in self.peers.values():
            # The socket's address (what we know); an incoming peer's claimed listen address beside it.
            host, port = p.addr or p.listen_addr or ("?", 0)
            listen = f"{p.listen_addr[0]}:{p.listen_addr[1]}" if p.listen_addr else ""
            peers.append({
                "id": p.id, "host": host, "port": port, "listen": printable(listen, 80),
                "role": p.role.name.lower() if p.role is not None else "handshake",
                "outgoing": p.outgoing, "user_agent": printable(p.user_agent, 80), "msgs_in": p.msgs_in,
                "msgs_out": p.msgs_out, "queued": p.queued() if p.transport else 0, "shed": p.shed,
                "bytes_in": p.bytes_in, "bytes_out": p.bytes_out,
                "tls": p.tls.version if p.tls is not None else "",
                "deflate": bool(p.conn is not None and (p.conn.deflate_in or p.conn.deflate_out)),
                "uptime": round(time.monotonic() - p.started, 1),
            })
        r = self.router
        return {
            "address": f"{self.address[0]}:{self.address[1]}",
            "mode": self.cfg.mode,
            "servent_guid": self.servent_guid.hex(),
            "uptime": round(time.monotonic() - self.started, 1),
            "peers": peers,
            "received": {TYPE_NAMES.get(k, hex(k)): v for k, v in sorted(r.received.items())},
            "sent": {TYPE_NAMES.get(k, hex(k)): v for k, v in sorted(self.sent.items())},
            "drops": {k.name.lower(): v for k, v in r.drops.items() if v},
            "qrp_skips": r.qrp_skips,
            "dup_ttl_relays": r.dup_ttl_relays,
            "events": dict(self.events),
            "limits": self.limits.stats(),
            "dynamic_queries": self.dq.stats(),
            "spam": self.searches.spam_stats(),
            "hosts_known": len(self.hosts),
            "hosts": self.hosts.stats(),
            "trust": trust_view(r, self.addr_votes, self.address[0], self.wildcard, self.hostiles, self.trust,
                                time.monotonic()),
            "reachability": self.reach.stats(),
            "shared_files": len(self.share) if self.share is not None else 0,
            "transfers": self.transfers.stats() if self.transfers is not None else {},
            "traffic": self.traffic_stats(),
            "queue": self.downloads.views() if self.downloads is not None else [],
            "udp": udp_stats(self),
            "shared_bytes": self.share.total_kbytes * 1024 if self.share is not None else 0,
        }
