"""Gnutella PING/PONG and GUESS over UDP: UHC client and server, query keys, GUESS queries.

Strategy (gtk-gnutella doc/gnutella: ping-pong, GGEP, query_keys, GUESS; src/core/uhc.c):
- Every UDP PING gets one PONG with our address, GGEP "VC" and, as an ultrapeer, "GUE".
  An SCP ping to an ultrapeer also gets "IPP" with at most IPP_MAX_HOSTS fresh ultrapeer
  addresses (our links, our pong cache, the host cache): one small pong per ping, never more,
  so a forged ping cannot make us amplify (the reply is within a few times the ping's size).
  A TTL-1 ping with "QK" gets our query key for its source address (ultrapeers only).
- A PONG is taken only as the answer to a ping we sent to that IP (its GUID is recorded), so a
  forged pong cannot fill the host cache; its "IPP" hosts go to the host cache (source "uhc")
  and its "PHC" caches to the bootstrap lists.
- A UDP QUERY is a GUESS query: executed only with a valid "QK" for its source (query_keys), and
  answered with at most GUESS_MAX_HITS hit datagrams to that verified source.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from gnut import __version__
from gnut.constants import MSG_PING, MSG_PONG, MSG_QUERY, MSG_QUERYHIT, VENDOR_CODE
from gnut.protocol import messages, vendor
from gnut.protocol import routing as rt
from gnut.protocol.datagram import Datagram, UdpDrop, build_datagram
from gnut.protocol.ggep import GgepItem, find
from gnut.protocol.guid import new_guid
from gnut.runtime.udp import UdpTransceiver

log = logging.getLogger("gnut.runtime.udpnode")

# Pings we sent (UHC, query key) remembered for their pongs; a pong must arrive within
# PING_REPLY_WINDOW seconds. Bounded: oldest forgotten first.
PINGS_REMEMBERED = 256
PING_REPLY_WINDOW = 30.0
# Query-key secrets live this long; the previous one is still honoured (query_keys 2.x.4.2 note).
QK_ROTATE_EVERY = 3600.0
# Query keys other ultrapeers gave us (GUESS client), newest kept.
QUERY_KEYS_KEPT = 1024
# Hit datagrams one GUESS query can make us send (each within MAX_DATAGRAM).
GUESS_MAX_HITS = 4
# Results considered for one GUESS query.
GUESS_MAX_RESULTS = 32


class UdpGnutella:
    """The Gnutella message kinds the node itself handles over UDP (OOB lives in runtime/oob.py)."""

    def __init__(self, node: Any, udp: UdpTransceiver) -> None:
        self.node = node
        self.udp = udp
        # (GUID, IP) of pings we sent (and GUESS queries, whose ack pongs carry the query GUID) -> (time, kind).
        self._pings: collections.OrderedDict[tuple[bytes, str], tuple[float, str]] = collections.OrderedDict()
        self._qk = [os.urandom(16)]
        self._qk_since = time.monotonic()
        self.events: collections.Counter[str] = collections.Counter()
        self.query_keys: collections.OrderedDict[tuple[str, int], bytes] = collections.OrderedDict()
        # Called with (uhc_addr, hosts learned) on each UHC pong; set by the bootstrap policy.
        self.on_uhc_reply: Callable[[tuple[str, int], list[tuple[str, int]], list[tuple[str, int]]], None] | None = None
        udp.register_parsed(MSG_PING, self.on_ping)
        udp.register_parsed(MSG_PONG, self.on_pong)
        udp.register_parsed(MSG_QUERY, self.on_query)

    @property
    def ultrapeer(self) -> bool:
        return self.node.cfg.mode == "ultrapeer"

    # --- PING --------------------------------------------------------------------------------------
    def _pong_payload(self, extra: list[GgepItem]) -> bytes:
        major, _, rest = __version__.partition(".")
        minor = rest.partition(".")[0]
        vc = VENDOR_CODE + bytes((((int(major or 0) & 0xF) << 4) | (int(minor or 0) & 0xF),))
        items = [GgepItem("VC", vc)]
        if self.ultrapeer:
            items.append(GgepItem("GUE", bytes((vendor.GUESS_VERSION,))))
        items.extend(extra)
        p = self.node.our_pong()
        return messages.Pong(p.port, p.ip, p.files, p.kbytes, tuple(items)).encode()

    def fresh_ultrapeers(self, exclude: tuple[str, int], n: int = vendor.IPP_MAX_HOSTS) -> list[tuple[str, int]]:
        """Up to `n` ultrapeer addresses, freshest first: our ultrapeer links, the pong cache, the host cache."""
        node = self.node
        out: list[tuple[str, int]] = []
        seen = {exclude, tuple(node.address)}
        rows: list[tuple[str, int]] = [p.listen_addr for p in list(node.peers.values())
                                       if p.established and p.role == rt.PeerRole.ULTRAPEER and p.listen_addr]
        rows += list(reversed(node.pong_cache.keys()))
        sample = getattr(node.hosts, "sample", None)
        if callable(sample):
            rows += [tuple(h) for h in sample(n * 2)]
        for addr in rows:
            if addr not in seen:
                seen.add(addr)
                out.append(addr)
                if len(out) >= n:
                    break
        return out

    def on_ping(self, dg: Datagram, addr: tuple[str, int]) -> None:
        ping = messages.Ping.decode(dg.payload)
        extra: list[GgepItem] = []
        scp = find(ping.ggep, "SCP")
        if scp is not None:
            self.events["scp_pings"] += 1
            if self.ultrapeer:
                ipp = vendor.encode_ipp(self.fresh_ultrapeers(addr))
                if ipp:
                    extra.append(GgepItem("IPP", ipp))
                    self.events["uhc_answers"] += 1
        if find(ping.ggep, "QK") is not None and dg.ttl == 1 and self.ultrapeer:
            extra.append(GgepItem("QK", vendor.query_key(self._qk[0], addr[0], addr[1])))
            self.events["query_keys_given"] += 1
        raw = build_datagram(dg.guid, MSG_PONG, 1, 0, self._pong_payload(extra), deflate=dg.can_inflate)
        self.udp.send(raw, addr, "pong")

    def send_ping(self, addr: tuple[str, int], kind: str, ggep: tuple[GgepItem, ...] = ()) -> bytes:
        """Send a TTL-1 UDP ping (UHC: SCP; GUESS key request: QK) and remember it for its pong."""
        guid = new_guid()
        self.expect_pong(guid, addr, kind)
        raw = build_datagram(guid, MSG_PING, 1, 0, messages.Ping(ggep).encode(), can_inflate=True)
        self.udp.send(raw, addr, f"ping_{kind}")
        return guid

    def expect_pong(self, guid: bytes, addr: tuple[str, int], kind: str) -> None:
        """Accept one pong with `guid` from `addr`'s IP within PING_REPLY_WINDOW."""
        self._pings[(guid, addr[0])] = (time.monotonic(), kind)
        while len(self._pings) > PINGS_REMEMBERED:
            self._pings.popitem(last=False)

    def ping_uhc(self, addr: tuple[str, int]) -> bytes:
        return self.send_ping(addr, "uhc", vendor.scp_ping(want_ultrapeers=True).ggep)

    # --- PONG --------------------------------------------------------------------------------------
    def on_pong(self, dg: Datagram, addr: tuple[str, int]) -> None:
        rec = self._pings.pop((dg.guid, addr[0]), None)
        now = time.monotonic()
        if rec is None or now - rec[0] > PING_REPLY_WINDOW:
            self.udp.drops[UdpDrop.UNSOLICITED.value] += 1
            return
        kind = rec[1]
        pong = messages.Pong.decode(dg.payload)
        wall = time.time()
        hosts = vendor.decode_ipp(find(pong.ggep, "IPP") or b"")
        caches = vendor.decode_phc(find(pong.ggep, "PHC") or b"")
        hosts = [h for h in hosts if vendor.may_reach(h[0], addr[0])]
        if pong.port and vendor.may_reach(pong.ip, addr[0]) and (pong.ip, pong.port) != tuple(self.node.address):
            self.node.hosts.add(pong.ip, pong.port, "udp_pong", wall)
        for host, port in hosts:
            if (host, port) != tuple(self.node.address):
                self.node.hosts.add(host, port, "uhc", wall)
        self.events["uhc_hosts_learned"] += len(hosts)
        key = find(pong.ggep, "QK")
        if kind == "qk" and key is not None and vendor.QK_MIN <= len(key) <= vendor.QK_MAX:
            self.query_keys[addr] = key
            self.query_keys.move_to_end(addr)
            while len(self.query_keys) > QUERY_KEYS_KEPT:
                self.query_keys.popitem(last=False)
            self.events["query_keys_received"] += 1
        if kind == "guess_ack":
            self.events["guess_acks_received"] += 1
        if kind == "uhc" and self.on_uhc_reply is not None:
            self.on_uhc_reply(addr, hosts, caches)

    # --- GUESS -------------------------------------------------------------------------------------
    def _rotate_keys(self) -> None:
        now = time.monotonic()
        if now - self._qk_since > QK_ROTATE_EVERY:
            self._qk = [os.urandom(16), self._qk[0]]
            self._qk_since = now

    def on_query(self, dg: Datagram, addr: tuple[str, int]) -> None:
        if not self.ultrapeer:
            self.udp.drops[UdpDrop.NOT_ALLOWED.value] += 1
            return
        self._rotate_keys()
        q = messages.Query.decode(dg.payload)
        if not vendor.check_query_key(self._qk, addr[0], addr[1], find(q.ggep, "QK")):
            self.events["guess_bad_key"] += 1
            self.udp.drops["bad_query_key"] += 1
            return
        self.events["guess_queries"] += 1
        # The acknowledgement pong (GUESS 0.1): tells the querier we took the query; with "SCP" in
        # the query (GUESS 0.2) it lists more ultrapeers to walk. Only key holders get here.
        extra: list[GgepItem] = []
        if find(q.ggep, "SCP") is not None:
            ipp = vendor.encode_ipp(self.fresh_ultrapeers(addr))
            if ipp:
                extra.append(GgepItem("IPP", ipp))
        ack = build_datagram(dg.guid, MSG_PONG, 1, 0, self._pong_payload(extra), deflate=dg.can_inflate)
        self.udp.send(ack, addr, "guess_ack")
        share, transfers = self.node.share, self.node.transfers
        if share is None or transfers is None:
            return
        files = share.match(q.text, q.urns, GUESS_MAX_RESULTS)
        if not files:
            return
        self.events["guess_answered"] += 1
        for payload in transfers.hit_payloads(files, ggep_h=bool(q.flags & messages.QF_GGEP_H))[:GUESS_MAX_HITS]:
            raw = build_datagram(dg.guid, MSG_QUERYHIT, 1, 0, payload, deflate=dg.can_inflate)
            self.udp.send(raw, addr, "guess_hit")

    def stats(self) -> dict:
        return dict(self.events)


# --- wiring into a node (Node.start / Node.stop / Node.stats call these) -------------------------
async def start_udp(node: Any) -> None:
    """Bind the UDP socket on the node's TCP port number, attach PING/PONG/GUESS, OOB and bootstrap.

    A UDP port that cannot be bound leaves the node TCP-only (logged and counted), never stopped.
    """
    from gnut.runtime.bootstrap import Bootstrap
    from gnut.runtime.guess import GuessClient
    from gnut.runtime.oob import OobManager

    cfg = node.cfg
    if not cfg.udp:
        return
    udp = UdpTransceiver(rate=cfg.udp_rate, burst=cfg.udp_burst)
    host = cfg.listen_host
    try:
        await udp.start(host, node.address[1])
    except OSError as exc:
        node.events["udp_bind_failed"] += 1
        log.warning("no UDP on %s:%d (%s): running TCP-only", host, node.address[1], exc)
        return
    node.udp = udp
    node.udpnode = UdpGnutella(node, udp)
    node.oob = OobManager(node, udp)
    if cfg.guess:
        node.guess = GuessClient(node, node.udpnode, node.oob)
    node.bootstrap = Bootstrap(node, node.udpnode, cfg.bootstrap_path if cfg.save_hosts else None)
    if node.bootstrap.enabled:
        node.spawn(node.bootstrap.run())
    log.info("UDP on %s:%d%s", *udp.address[:2], " (bootstrap on)" if node.bootstrap.enabled else "")


def stop_udp(node: Any) -> None:
    if getattr(node, "bootstrap", None) is not None:
        try:
            node.bootstrap.save()
        except OSError as exc:
            log.warning("could not save bootstrap state: %s", exc)
    if getattr(node, "udp", None) is not None:
        node.udp.close()


def udp_stats(node: Any) -> dict:
    udp = getattr(node, "udp", None)
    if udp is None:
        return {"enabled": False}
    guess = getattr(node, "guess", None)
    return {"enabled": True, **udp.stats(), "gnutella": node.udpnode.stats(), "oob": node.oob.stats(),
            "bootstrap": node.bootstrap.stats(), "guess_client": guess.stats() if guess is not None else None}
