"""The node's links: dialing, admission of incoming peers and the outcome of handshakes."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import TYPE_CHECKING

from gnut.protocol import handshake as hs
from gnut.protocol import routing as rt
from gnut.protocol.addresses import AddrClass, classify, parse_ip
from gnut.protocol.printable import printable
from gnut.runtime.limits import net_key
from gnut.runtime.peer import Peer
from gnut.runtime.tls import TlsTransport

if TYPE_CHECKING:
    pass

log = logging.getLogger("gnut.runtime.node")

# A dial that has not connected by then is a failure (GnutellaBun's own timeout is 2.5 s).
DIAL_TIMEOUT = 5.0
# Connection storms: more accepts than this per minute from one IP are closed at once.
ACCEPTS_PER_IP_PER_MINUTE = 120
# X-Try-Ultrapeers entries offered with a refusal.
TRY_HOSTS_OFFERED = 10


class LinkManager:
    """Mixin of Node: everything about opening, admitting and losing links.

    Strategy: Node owns the state (peers, host cache, router); these methods are the
    link-lifecycle half of it, kept apart so the message path in node.py stays readable.
    """

    def dial(self, host: str, port: int) -> None:
        """Start an outgoing connection to host:port unless one exists or is under way.

        A host on the hostiles list is never dialled (counted in trust refusals "dial_hostile").
        """
        key = (host, port)
        if key == self.address or key in self._dialing or self.stopping:
            return
        if host in self.hostiles:
            self.trust["dial_hostile"] += 1
            log.info("not dialling %s:%d: listed as hostile", host, port)
            return
        if not self.limits.fd_room():
            self.limits.refuse("fd_headroom", f"dial to {printable(host)}:{port} (file descriptors near the limit)")
            return
        if any(p.listen_addr == key for p in self.peers.values()):
            return
        self._dialing.add(key)
        self.spawn(self._dial(host, port))

    async def _dial(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        direct_tls = self.tls is not None and (host, port) in self.tls_hosts
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: Peer(self, outgoing=True, addr=(host, port), direct_tls=direct_tls),
                                       host, port),
                DIAL_TIMEOUT,
            )
        except (TimeoutError, OSError) as exc:
            log.info("dial %s:%d failed: %s", printable(host), port, printable(str(exc or "timeout")))
            self.note_link_failure(host, port, exc)
            self.hosts.mark_failed(host, port, time.time())
            self.events["dial_failed"] += 1
        finally:
            self._dialing.discard((host, port))

    def peer_opened(self, peer: Peer) -> None:
        if self.stopping:
            # A connection the kernel accepted before the listener closed, or a dial that completed
            # after stop() began: a node that is shutting down admits nobody. (Admitting it left a
            # live, handshaken link to a node that had stopped: the churn test's stale link.)
            self.events["refused_stopping"] += 1
            peer.transport.abort()
            return
        if not peer.outgoing and peer.addr is not None and peer.addr[0] in self.hostiles:
            # Hostile addresses are refused at accept, before a byte of handshake is read.
            self.trust["refused_hostile"] += 1
            peer.transport.abort()
            return
        if not peer.outgoing and peer.addr is not None:
            if not self._admit_socket(peer):
                peer.closed = True
                peer.transport.abort()
                return
            now = time.monotonic()
            q = self._accepts.setdefault(peer.addr[0], collections.deque())
            while q and now - q[0] > 60.0:
                q.popleft()
            if len(q) >= self.accepts_per_ip_per_minute:  # refused accepts are not stored: q stays bounded
                self.events["refused_storm"] += 1
                peer.transport.abort()
                return
            q.append(now)
            self.reach.on_accept(peer.transport)
        self.peers[peer.id] = peer

    def _admit_socket(self, peer: Peer) -> bool:
        """Admission of an accepted socket: file-descriptor headroom, then pending sockets per IP."""
        limits = self.limits
        ip = peer.addr[0]
        if not limits.fd_room():
            limits.refuse("fd_headroom", f"connection from {printable(ip)} (file descriptors near the limit)")
            return False
        pending = sum(1 for p in self.peers.values()
                      if not p.outgoing and not p.established and not p.closed and p.addr and p.addr[0] == ip)
        if pending >= self.cfg.max_pending_per_ip:
            limits.refuse("pending_per_ip", f"{printable(ip)} has {pending} connections in handshake")
            return False
        return True

    def _link_refusal(self, peer: Peer) -> tuple[str, str] | None:
        """(counter key, BYE/503 reason) when admitting `peer` would pass the per-IP or per-/24 link limit."""
        ip = peer.addr[0] if peer.addr else ""
        net = net_key(ip)
        same_ip = same_net = 0
        for p in self.peers.values():
            if p is peer or p.closed or not (p.established or p.admitted) or not p.addr:
                continue
            if p.addr[0] == ip:
                same_ip += 1
            if net_key(p.addr[0]) == net:
                same_net += 1
        if same_ip >= self.cfg.max_links_per_ip:
            return "per_ip", "Too many links from your address"
        if same_net >= self.cfg.max_links_per_24:
            return "per_24", "Too many links from your network"
        return None

    def peer_closed(self, peer: Peer) -> None:
        if self.peers.pop(peer.id, None) is None:
            return
        self._qrp_sent.pop(peer.id, None)
        self.pushproxy.peer_closed(peer)
        if peer.direct_tls and not peer.established and peer.listen_addr:
            self.tls_hosts.pop(peer.listen_addr, None)  # next time: plain, with the upgrade offer
        if peer.counted:
            if peer.role == rt.PeerRole.LEAF:
                self.n_leaves -= 1
            else:
                self.n_ultrapeers -= 1
        if peer.established:
            self._slot_removed(peer, self.router.remove_peer(peer.id))
            log.info("left %s: %s", peer.describe(), printable(peer.close_reason))
            self.qrp_changed()
        if peer in self._dirty:
            self._dirty.remove(peer)

    # --- the relay core's per-slot lists -------------------------------------------------------
    # Strategy: RelayCore.relay() takes one output bytearray and one "base" (bytes queued in the
    # transport) per slot. The node keeps those lists as the core keeps its slots: a new link is
    # appended, a departed one is replaced by the last (RelayCore.remove_peer says which), so a
    # link change is O(1) and a chunk never rebuilds anything. A base is refreshed when the peer's
    # output moves (after a flush, on resume_writing, on close): between those it can only
    # overstate what is queued, so flow control errs towards shedding, never towards bloat.

    def _slot_added(self, peer: Peer, k: int) -> None:
        assert k == len(self._slot_peers), "relay core slots and the node's lists disagree"
        peer.slot = k
        self._slot_peers.append(peer)
        self._slot_bufs.append(peer.outbuf)
        self._slot_bases.append(self._base_of(peer))

    def _slot_removed(self, peer: Peer, result: tuple[int, int] | None) -> None:
        if result is None:
            return
        k, moved = result
        last = self._slot_peers.pop()
        buf = self._slot_bufs.pop()
        base = self._slot_bases.pop()
        if moved >= 0:
            self._slot_peers[k] = last
            self._slot_bufs[k] = buf
            self._slot_bases[k] = base
            last.slot = k
        peer.slot = -1

    @staticmethod
    def _base_of(peer: Peer) -> int:
        if peer.closed:
            return -1
        t = peer.transport
        return t.get_write_buffer_size() if t is not None else 0

    def output_changed(self, peer: Peer) -> None:
        """A peer's transport buffer moved (flushed, drained, closed): refresh its base."""
        if peer.slot >= 0:
            self._slot_bases[peer.slot] = self._base_of(peer)

    def protocol_error(self, peer: Peer, exc: Exception) -> None:
        self.events["protocol_errors"] += 1
        log.info("protocol error from %s: %s", peer.describe(), printable(str(exc)))
        if peer.established:
            peer.send_bye(400, str(exc)[:80])
        else:
            peer.close(f"protocol error: {exc}")

    def counts(self) -> hs.PeerCounts:
        max_leaves = self.cfg.max_leaves if self.cfg.mode == "ultrapeer" else 0
        return hs.PeerCounts(
            ultrapeers=self.n_ultrapeers,
            leaves=self.n_leaves,
            max_ultrapeers=self.cfg.max_peers,
            max_leaves=max_leaves,
        )

    def try_hosts(self) -> list[str]:
        # Only proven addresses are passed on: ultrapeers we dialled and that answered (an incoming
        # peer's Listen-IP is its own claim), then the host cache's good entries.
        rows = [
            p.listen_addr
            for p in self.peers.values()
            if p.established and p.outgoing and p.listen_addr and p.role != rt.PeerRole.LEAF
        ]
        rows += self.hosts.sample_good(TRY_HOSTS_OFFERED)
        seen, out = set(), []
        for h in rows:
            if h not in seen and h != self.address:
                seen.add(h)
                out.append(f"{h[0]}:{h[1]}")
        return out[:TRY_HOSTS_OFFERED]

    def on_handshake_request(self, peer: Peer, ev) -> None:
        # X-Try-Ultrapeers is built only for a refusal (it walks the peers and the host cache).
        refusal = self._link_refusal(peer)
        if refusal is not None:
            key, reason = refusal
            self.events["refused"] += 1
            self.limits.refuse(key, f"handshake from {peer.describe()}: {reason.lower()}")
            peer.conn.refuse(503, reason, self.try_hosts())
            peer._write_pending()
            peer.close(f"refused: 503 {reason}")
            return
        verdict = hs.evaluate_incoming(self.handshake_config, ev.headers, self.counts())
        if verdict.code == 200:
            peer.admitted = True
            peer.conn.accept(verdict.headers, peer_is_ultrapeer=verdict.peer_is_ultrapeer)
        else:
            self.events["refused"] += 1
            log.info("refusing %s: %d %s", peer.describe(), verdict.code, printable(verdict.reason))
            peer.conn.refuse(verdict.code, verdict.reason, self.try_hosts())
            peer._write_pending()
            peer.close(f"refused: {verdict.code} {verdict.reason}")

    def on_established(self, peer: Peer, ev) -> None:
        dialled = peer.listen_addr if peer.outgoing else None  # the address we dialled and reached
        if self.cfg.mode == "flood":
            peer.role = rt.PeerRole.FLOOD
        elif ev.peer_is_ultrapeer:
            peer.role = rt.PeerRole.ULTRAPEER
        else:
            peer.role = rt.PeerRole.LEAF
        if self.cfg.mode == "leaf" and peer.role != rt.PeerRole.ULTRAPEER:
            peer.close("a leaf links only to ultrapeers")
            return
        peer.peer_headers = ev.headers
        peer.user_agent = ev.user_agent or ""
        self._learn_own_ip(peer, ev.headers.get("Remote-IP"))
        now = time.time()
        if ev.peer_listen:
            peer.listen_addr = ev.peer_listen
            # An incoming ultrapeer's Listen-IP is only a claim: cached unverified, and only for the
            # address it connects from (else any peer could plant any address). Leaves never.
            if (not peer.outgoing and ev.peer_is_ultrapeer and peer.role != rt.PeerRole.LEAF
                    and peer.addr is not None and parse_ip(ev.peer_listen[0]) == parse_ip(peer.addr[0])):
                self.hosts.add(ev.peer_listen[0], ev.peer_listen[1], "handshake", now, via=peer.addr[0])
        if dialled is not None and peer.role != rt.PeerRole.LEAF:
            # A name we dialled (--connect host.example:6346) is kept as the address that answered.
            host = dialled[0] if parse_ip(dialled[0]) is not None or peer.addr is None else peer.addr[0]
            self.hosts.mark_good(host, dialled[1], now)
        self._slot_added(peer, self.router.add_peer(peer.id, peer.role))
        peer.counted = True
        if peer.role == rt.PeerRole.LEAF:
            self.n_leaves += 1
        else:
            self.n_ultrapeers += 1
        log.info(
            "connected %s %s as %s (%s, deflate in=%s out=%s)",
            "to" if peer.outgoing else "from",
            peer.describe(),
            peer.role.name.lower(),
            printable(peer.user_agent, 80),
            ev.deflate_in,
            ev.deflate_out,
        )
        self.send_qrp(peer)
        self.reach.on_link_up(peer)
        # A first ping learns the neighbourhood (answered from the peer's pong cache).
        self.send_ping(peer, ttl=2 if self.cfg.mode != "leaf" else 1)

    def _learn_own_ip(self, peer: Peer, remote_ip: str | None) -> None:
        """Behind a wildcard bind, advertise the address that AGREEMENT_NEEDED distinct peers see.

        The rule (protocol/addresses.py, AddressVotes): one peer's Remote-IP is one vote; a
        reporter counts once per /16 (by address on loopback/private links); the address is
        adopted, and later corrected, only when enough reporters agree. A claim must be a public
        address, or of the same class as the link it came over (127.x over loopback).
        """
        if not self.wildcard or not remote_ip or peer.addr is None:
            return
        claim = parse_ip(remote_ip)
        if claim is None or claim.version != 4:
            self.trust["remote_ip_invalid"] += 1
            return
        kind = classify(str(claim))
        if kind is not AddrClass.PUBLIC and kind is not classify(peer.addr[0]):
            self.trust["remote_ip_refused"] += 1
            return
        adopted = self.addr_votes.report(peer.addr[0], str(claim), time.monotonic())
        if adopted is not None and adopted != self.address[0]:
            self.address = (adopted, self.address[1])
            self.handshake_config = self._handshake_config()
            self.address_changed()
            log.info("advertising %s:%d (agreed by %d peers)", *self.address,
                     self.addr_votes.tally(time.monotonic()).get(adopted, 0))

    def on_refused(self, peer: Peer, ev) -> None:
        self.events["refused_by_peer"] += 1
        log.info("%s refused us: %d %s", peer.describe(), ev.code, printable(ev.reason))
        now = time.time()
        if peer.outgoing and peer.listen_addr:
            self.hosts.mark_failed(*peer.listen_addr, now)
        # One refusal's X-Try list adds at most XTRY_NEW_MAX new (unverified) hosts.
        self.hosts.add_list(ev.try_hosts, "x-try", now, via=peer.addr[0] if peer.addr else None)
        peer.close(f"refused: {ev.code} {ev.reason}")

    def switch_to_http(self, peer: Peer, first: bytes) -> None:
        """Hand a connection whose first bytes are not Gnutella to the HTTP side."""
        self.peers.pop(peer.id, None)
        # The time spent sniffing counts against the HTTP request's total deadline. Over TLS the
        # Peer keeps the socket and feeds the HTTP side what it decrypts.
        transport = peer.transport if peer.tls is None else TlsTransport(peer)
        self.transfers.take_http(transport, first, elapsed=time.monotonic() - peer.started)
