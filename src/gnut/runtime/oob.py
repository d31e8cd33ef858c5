"""Out-of-band query hits (gtk-gnutella doc/gnutella/out-of-band, out-of-band-v3).

Strategy, both sides:
- Querier: when our UDP socket is up and we are not firewalled, our queries carry flag 0x0400,
  a GUID holding our IPv4 and UDP port, and an empty GGEP "SO" (v3). A LIME/12 for one of our
  live searches is answered with a LIME/11 (v3 with a fresh random security token, v2 without)
  marked "can inflate"; the claim is remembered per (GUID, responder address). Hit datagrams are
  accepted only against such a claim, only as many as we asked for, and (v3) only with our token.
- Responder: a query with the OOB flag that we can answer, seen at hops >= OOB_MIN_HOPS, gets a
  LIME/12 (v3 when the query says "SO", else v2) sent to the address in its GUID (within the
  transceiver's unsolicited budget per destination) instead of TCP hits. The hits wait
  OFFER_TTL seconds; a LIME/11 from that same IP claims them once: up to `wanted` hit datagrams,
  each with the ack's token in the trailer GGEP, deflated when the ack allows it.
All state is bounded (MAX_OFFERS, MAX_CLAIMS) and every step is counted.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from gnut.constants import MSG_QUERYHIT, MSG_VENDOR, MSG_VENDOR_STD
from gnut.errors import RemoteProtocolError
from gnut.protocol import messages, vendor
from gnut.protocol.datagram import Datagram, UdpDrop, build_datagram
from gnut.protocol.ggep import GgepItem, find
from gnut.runtime.udp import TokenBuckets, UdpTransceiver

log = logging.getLogger("gnut.runtime.oob")

# Only answer out of band when the query came from further than a direct neighbour
# (out-of-band G.1: "hops 1" there counts the last hop, which our header value does not:
# a query from a neighbour arrives here with hops 0, and the TCP link is then the better path).
OOB_MIN_HOPS = 1
# Hits we hold for a LIME/11, and how long (gtk-gnutella keeps them about that long).
OFFER_TTL = 30.0
MAX_OFFERS = 512
# Claims (LIME/11 sent) we remember while their hits arrive.
CLAIM_TTL = 60.0
MAX_CLAIMS = 512
# Hit datagrams we ever ask one responder for (gtk-gnutella asks at most 254).
MAX_WANTED = 254
# Hit bytes one offer may hold: an ack (about 32 bytes, its source forgeable) can make us send at
# most this to the address a query's GUID named. Queries whose hits are larger get TCP hits.
OOB_MAX_BYTES_PER_OFFER = 8192
# Hit bytes per second (and burst) we deliver to one IP over all offers: forged queries naming one
# victim cannot add up past this.
OOB_HIT_BYTES_PER_DEST = 16384.0
# Security token length (v3: any length > 0; short, since it travels in every hit).
TOKEN_LEN = 8


@dataclass(slots=True)
class Offer:
    dest: tuple[str, int]
    payloads: list[bytes]
    expires: float


@dataclass(slots=True)
class Claim:
    token: bytes
    wanted: int
    expires: float
    got: int = 0


class OobManager:
    """OOB hit delivery for one node over its UdpTransceiver."""

    def __init__(self, node: Any, udp: UdpTransceiver) -> None:
        self.node = node
        self.udp = udp
        self.offers: collections.OrderedDict[bytes, Offer] = collections.OrderedDict()
        # Keyed by (GUID, responder address): each responder's hits come from the socket its LIME/12 came from.
        self.claims: collections.OrderedDict[tuple[bytes, tuple[str, int]], Claim] = collections.OrderedDict()
        self.events: collections.Counter[str] = collections.Counter()
        self.hit_budget = TokenBuckets(OOB_HIT_BYTES_PER_DEST, OOB_HIT_BYTES_PER_DEST, MAX_OFFERS)
        udp.register_parsed(MSG_VENDOR, self.on_vendor)
        udp.register_parsed(MSG_VENDOR_STD, self.on_vendor)
        udp.register_parsed(MSG_QUERYHIT, self.on_hit)

    # --- querier side ------------------------------------------------------------------------------
    @property
    def can_receive(self) -> bool:
        """True when our queries may ask for OOB delivery (UDP up, not firewalled, IPv4 address).

        Leaves do not: their ultrapeer's dynamic query counts the hits it routes back, and OOB
        hits would bypass it (gtk-gnutella ultrapeers OOB-proxy their leaves' queries for that
        reason; gnut ultrapeers do not proxy yet), so it would widen the query needlessly.
        """
        cfg = self.node.cfg
        if self.udp.transport is None or cfg.firewalled or not cfg.oob or cfg.mode == "leaf":
            return False
        if getattr(self.node, "wildcard", False):
            return False  # bound to every interface and no peer told us our address yet
        return self.node.address[0].count(".") == 3

    def query_guid(self) -> bytes | None:
        """A GUID for our next query that asks for OOB hits, or None when we cannot take them."""
        if not self.can_receive:
            return None
        host, _ = self.node.address
        return vendor.oob_guid(os.urandom(16), host, self.udp.address[1])

    def on_vendor(self, dg: Datagram, addr: tuple[str, int]) -> None:
        try:
            m = vendor.decode_vendor(dg.payload)
        except RemoteProtocolError:
            self.udp.drops[UdpDrop.MALFORMED.value] += 1
            return
        if isinstance(m, vendor.OobReplyInd):
            self._on_indication(dg, m, addr)
        elif isinstance(m, vendor.OobReplyAck):
            self._on_ack(dg, m, addr)
        else:
            self.udp.drops[UdpDrop.NOT_ALLOWED.value] += 1

    def _on_indication(self, dg: Datagram, m: vendor.OobReplyInd, addr: tuple[str, int]) -> None:
        now = time.monotonic()
        self.events["indications_received"] += 1
        search = self.node.searches.get(dg.guid)
        if search is None:
            self.udp.drops[UdpDrop.UNSOLICITED.value] += 1
            return
        key = (dg.guid, addr)
        self._expire(now)
        if key in self.claims:
            self.events["indications_repeated"] += 1
            return
        wanted = min(m.hits, MAX_WANTED)
        token = os.urandom(TOKEN_LEN) if m.version >= 3 else b""
        self.claims[key] = Claim(token, wanted, now + CLAIM_TTL)
        while len(self.claims) > MAX_CLAIMS:
            self.claims.popitem(last=False)
        ack = vendor.OobReplyAck(wanted, token, m.version if m.version >= 3 else 2).encode()
        self.udp.send(build_datagram(dg.guid, MSG_VENDOR, 1, 0, ack, can_inflate=True), addr, "oob_ack")
        self.events["acks_sent"] += 1

    def expect_hits(self, guid: bytes, addr: tuple[str, int], n: int) -> None:
        """Accept up to `n` hit datagrams for `guid` from `addr` (a host we sent a GUESS query)."""
        self.claims[(guid, addr)] = Claim(b"", n, time.monotonic() + CLAIM_TTL)
        while len(self.claims) > MAX_CLAIMS:
            self.claims.popitem(last=False)

    def on_hit(self, dg: Datagram, addr: tuple[str, int]) -> None:
        claim = self.claims.get((dg.guid, addr))
        now = time.monotonic()
        if claim is None or now > claim.expires:
            self.udp.drops[UdpDrop.UNSOLICITED.value] += 1
            return
        if claim.got >= claim.wanted:
            self.udp.drops["oob_over_claim"] += 1
            return
        qh = messages.QueryHit.decode(dg.payload)
        if claim.token and find(qh.ggep, "SO") != claim.token:
            self.udp.drops[UdpDrop.BAD_TOKEN.value] += 1
            return
        claim.got += 1
        self.events["hits_received"] += 1
        dq = getattr(self.node, "dq", None)
        if dq is not None and dq.enabled:
            dq.on_hit(dg)  # our own dynamic query counts results that came out of band too
        self.node.searches.on_hit(None, dg)

    # --- responder side ----------------------------------------------------------------------------
    def offer(self, msg: Any, q: messages.Query, payloads: list[bytes], from_ip: str | None = None) -> bool:
        """Offer `payloads` (our hits for `msg`) out of band; False when the query does not qualify.

        `from_ip` is the address of the link the query came on: a GUID naming a loopback, LAN or
        link-local address is honoured only when that link is in the same scope.
        """
        if not (q.flags_in_use and q.flags & messages.QF_OUT_OF_BAND) or msg.hops < OOB_MIN_HOPS:
            return False
        if self.udp.transport is None or not payloads:
            return False
        if sum(len(p) for p in payloads) > OOB_MAX_BYTES_PER_OFFER:
            self.events["offers_too_big_for_oob"] += 1
            return False
        dest = vendor.oob_return_address(msg.guid)
        if not dest[1] or not vendor.may_reach(dest[0], from_ip or ""):
            self.events["oob_address_refused"] += 1
            return False
        now = time.monotonic()
        self._expire(now)
        version = 3 if vendor.query_wants_v3(q) else 2
        ind = vendor.OobReplyInd(min(len(payloads), vendor.OOB_MAX_COUNT), True, version).encode()
        raw = build_datagram(msg.guid, MSG_VENDOR, 1, 0, ind)
        if not self.udp.send_unsolicited(raw, dest, "oob_indication", now):
            self.events["indications_over_budget"] += 1
            return False  # the caller falls back to TCP hits
        self.offers[msg.guid] = Offer(dest, list(payloads), now + OFFER_TTL)
        self.offers.move_to_end(msg.guid)
        while len(self.offers) > MAX_OFFERS:
            self.offers.popitem(last=False)
            self.events["offers_evicted"] += 1
        self.events["indications_sent"] += 1
        return True

    def _on_ack(self, dg: Datagram, m: vendor.OobReplyAck, addr: tuple[str, int]) -> None:
        self.events["acks_received"] += 1
        offer = self.offers.get(dg.guid)
        if offer is None or time.monotonic() > offer.expires or offer.dest[0] != addr[0]:
            self.udp.drops[UdpDrop.UNSOLICITED.value] += 1
            return
        del self.offers[dg.guid]  # one claim per offer: a replayed ack gets nothing
        for payload in offer.payloads[: m.wanted]:
            if m.token:
                qh = messages.QueryHit.decode(payload)
                payload = dataclasses.replace(qh, ggep=qh.ggep + (GgepItem("SO", m.token),)).encode()
            raw = build_datagram(dg.guid, MSG_QUERYHIT, 1, 0, payload, deflate=dg.can_inflate)
            if not self.hit_budget.take(addr[0], time.monotonic(), float(len(raw))):
                self.events["hits_over_budget"] += 1
                break
            if self.udp.send(raw, addr, "oob_hit"):
                self.events["hits_sent"] += 1

    def _expire(self, now: float) -> None:
        while self.offers:
            guid, o = next(iter(self.offers.items()))
            if o.expires > now:
                break
            del self.offers[guid]
            self.events["offers_expired"] += 1
        while self.claims:
            key, c = next(iter(self.claims.items()))
            if c.expires > now:
                break
            del self.claims[key]

    def stats(self) -> dict:
        return {**self.events, "offers_pending": len(self.offers), "claims_pending": len(self.claims)}
