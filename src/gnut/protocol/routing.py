"""Routing core: decide what happens to each received message (drop, local, forward, route back)."""

# Strategy
# --------
# Router.route() never sends anything: like gtk-gnutella's route_message() it returns
# a RouteDecision that the runtime (node.py) executes.  Rules, in the order applied:
#
#   1. A peer we treat as a LEAF must never relay: anything it sends with hops > 0
#      is dropped LEAF_RELAY and costs the link (BYE 414).
#   2. TTL sanity: TTL 0 is invalid on receipt (TTL_EXPIRED); TTL+hops above the hard
#      limit 15 is abuse (HOP_LIMIT).  TTL+hops above the soft limit 7 is clamped for
#      relaying (effective_ttl), and a copy is relayed only if it keeps TTL >= 1
#      (one exception: an ultrapeer hands a query spent at its node to matching
#      leaves with TTL 1, as LimeWire does: leaves are inside their ultrapeer's horizon).
#   3. Per type: broadcasts (PING, QUERY) are deduplicated by (GUID, type) and leave a
#      reverse route GUID -> sender; replies (PONG, QUERYHIT) follow that route back;
#      PUSH follows the servent-GUID route learned from QUERYHIT trailers; link-level
#      messages (BYE, QRP, vendor) are local and only valid at hops 0.
#
# Reverse-route entries hold (peer id, peer generation): remove_peer() only forgets
# the peer (O(1)), stale entries are recognised when looked up and ignored.
#
# Duplicates: a PING or QUERY whose (GUID, type) was already seen is a DUPLICATE, but for one
# case (gtk-gnutella's check_duplicate: "forward but don't handle"): the first copy of a query may
# come the long way round with less TTL left.  The QUERY route record keeps the highest relay TTL
# (relay_ttl) forwarded for its GUID and the hops and hops + TTL of the copy that set it; a
# duplicate from a relay peer with a higher relay TTL that passes the takeover rule (routerules.py:
# strictly fewer hops, consistent hops + TTL, never a GUID we or our leaves originated, the
# sender's takeover budget) is relayed again with it (a first copy's targets but its sender;
# FORWARD even with no target left), is not handled again, counts in `forwarded` and
# `dup_ttl_relays` (= route takeovers), and takes over the route record: replies go back the
# shorter way (a holder reached only that way sets its hit's TTL from that path's hops, and
# QUERYHIT_TTL_MARGIN covers one extra hop, not the longer first route).  One that fails the rule
# is a DUPLICATE and counts in `takeovers_refused`: a higher TTL alone never moves a route (it
# let any neighbour steal every QUERYHIT of the queries it relays).  Each relay must raise the TTL
# (1 .. SOFT_TTL_LIMIT - 1) and lower the hops.  This holds on the link the route points to as
# well (an upstream relays its late short-path copy to us too); there a resend without a takeover
# is a DUPLICATE that node.py counts (BYE 401).
# PINGs are answered, not relayed: their duplicates are all DUPLICATE, as in leaf mode or from leaves.
#
# Routes are learned only from messages we accepted and routed: a QUERYHIT teaches the PUSH route
# of its servent GUID only when it is ours (LOCAL) or routed back (ROUTE_BACK); a hit dropped for
# NO_ROUTE, ROUTE_LOOP, TTL or size teaches nothing (else anyone could point PUSHes for any servent
# at itself with hits nobody asked for).

from __future__ import annotations

import collections
from collections import Counter
from collections.abc import Iterable

from gnut.constants import (
    GUID_CACHE_CAPACITY,
    GUID_CACHE_MAX_AGE,
    GUID_LEN,
    MSG_BYE,
    MSG_PING,
    MSG_PONG,
    MSG_PUSH,
    MSG_QRP,
    MSG_QUERY,
    MSG_QUERYHIT,
    MSG_VENDOR,
    MSG_VENDOR_STD,
    ROUTE_MAX_AGE,
    ROUTE_TABLE_CAPACITY,
)
from gnut.errors import LocalProtocolError
from gnut.fastpath import GuidCache, RelayCore, RouteMap
from gnut.protocol.qrp import QRP_MIN_WORD_LENGTH, QrpTable, qrp_hashcode
from gnut.protocol.routerules import (  # noqa: F401  (re-exported: routing's public vocabulary)
    MIN_QUERY_PAYLOAD,
    TAKEOVER_OK,
    Action,
    DropReason,
    PeerRole,
    QrpMatcher,
    RouteDecision,
    RouteTable,
    _Peer,
    _QueryView,
    check_query_size,
    check_ttl,
    effective_ttl,
    query_terms,
    query_words,
    relay_ttl,
)

# BYE code sent to a leaf that relayed a message (gtk-gnutella, INTEROP.md).
BYE_LEAF_RELAYED = 414
# A PONG payload is port(2) + IPv4(4) + files(4) + kbytes(4), GGEP may follow.
MIN_PONG_PAYLOAD = 14
# A QUERYHIT payload is count(1) + port(2) + IPv4(4) + speed(4) + servent GUID(16) at the least.
MIN_QUERYHIT_PAYLOAD = 27
# A PUSH payload is servent GUID(16) + file index(4) + IPv4(4) + port(2).
MIN_PUSH_PAYLOAD = 26
# Route-table peer id that stands for "us": replies to our own PING/QUERY are LOCAL.
LOCAL_PEER = -1
# Router modes accepted by Router(mode=...).
MODES = ("flood", "ultrapeer", "leaf")

# Local filter of RelayCore: table slots per shared-word prefix (a 16x sparse table leaves a query
# word a ~6% chance of a false "may match"), within 2^10 .. 2^24 slots (1 KiB .. 16 MiB).
LOCAL_FILTER_SPARSITY = 16
LOCAL_FILTER_MIN_BITS = 10
LOCAL_FILTER_MAX_BITS = 24

# Types that are link-level only: never relayed, valid only straight from the neighbour.
_LINK_TYPES = frozenset((MSG_BYE, MSG_QRP, MSG_VENDOR, MSG_VENDOR_STD))


class Router:
    """Routing decisions for one servent; peers are opaque int ids.

    Counters: `drops` (Counter[DropReason]), `received`, `forwarded` (copies sent,
    relays and route-backs) and `local` (Counter by message type), `qrp_skips`
    (query copies not sent to a peer because its QRP table did not match) and
    `dup_ttl_relays` (duplicate QUERYs relayed again for their higher TTL: route takeovers) and
    `takeovers_refused` (duplicates whose higher TTL failed the takeover rule).

    `core` (fastpath.RelayCore) shares the seen cache and the QUERY reverse routes and settles
    the common relay case over whole chunks (node.on_frames); its counts are folded into the
    Counters above whenever they are read.
    """

    def __init__(
        self,
        mode: str,
        *,
        servent_guid: bytes,
        seen_capacity: int = GUID_CACHE_CAPACITY,
        seen_max_age: float = GUID_CACHE_MAX_AGE,
        route_capacity: int = ROUTE_TABLE_CAPACITY,
        route_max_age: float = ROUTE_MAX_AGE,
        seed: int | None = None,
    ) -> None:
        """Args:
        mode: "flood" (classic all-relay), "ultrapeer" (QRP to leaves and last hop) or "leaf".
        servent_guid: our 16-byte servent GUID (PUSH messages naming it are ours).
        seen_capacity, seen_max_age: bounds of the duplicate (GUID, type) cache.
        route_capacity, route_max_age: bounds of each reverse-route table.
        seed: hash seed of the duplicate cache (None = random per process).

        Raises:
            LocalProtocolError: unknown mode or servent_guid not 16 bytes.
        """
        if mode not in MODES:
            raise LocalProtocolError(f"unknown router mode {mode!r}, expected one of {MODES}")
        if len(servent_guid) != GUID_LEN:
            raise LocalProtocolError(f"servent GUID must be {GUID_LEN} bytes, got {len(servent_guid)}")
        self.mode = mode
        self.servent_guid = bytes(servent_guid)
        self._seen = GuidCache(seen_capacity, seen_max_age, seed)
        self._ping_routes = RouteTable(route_capacity, route_max_age)
        self._query_routes = RouteMap(route_capacity, route_max_age)
        self._push_routes = RouteTable(route_capacity, route_max_age)
        self._peers: dict[int, _Peer] = {}
        self._next_gen = 0
        # Target lists rebuilt when peers change (tens of peers), read on every query.
        # ULTRAPEER and FLOOD peers, and leaves: insertion-ordered sets, so a link change is O(1).
        self._relay_peers: dict[int, None] = {}
        self._leaf_peers: dict[int, None] = {}
        self._drops: Counter[DropReason] = collections.Counter()
        self._received: Counter[int] = collections.Counter()
        self._forwarded: Counter[int] = collections.Counter()
        self._local_counts: Counter[int] = collections.Counter()
        self._qrp_skips = 0
        self._dup_ttl_relays = 0
        self._takeovers_refused = 0
        self.core = RelayCore(mode, self._seen, self._query_routes)
        # The runtime settles whole chunks through `core` while this is True (a switch for
        # benchmarks and debugging: False routes every message through route()).
        self.use_core = True
        self._local_words: object = None  # what set_local_words() last built the filter from

    # --- counters (the core's C counts folded in on read) --------------------------------

    def _sync(self) -> None:
        received, forwarded, local, dup, own, flow, skips, dup_ttl, refused = self.core.take_counts()
        self._dup_ttl_relays += dup_ttl
        self._takeovers_refused += refused
        if not received and not flow:
            return
        self._qrp_skips += skips
        for counter, key, value in (
            (self._received, MSG_QUERY, received),
            (self._forwarded, MSG_QUERY, forwarded),
            (self._local_counts, MSG_QUERY, local),
            (self._drops, DropReason.DUPLICATE, dup),
            (self._drops, DropReason.OWN_MESSAGE, own),
            (self._drops, DropReason.FLOW_CONTROL, flow),
        ):
            if value:
                counter[key] += value

    @property
    def dup_ttl_relays(self) -> int:
        """Duplicate QUERYs relayed again because they carried a higher relay TTL (not drops)."""
        self._sync()
        return self._dup_ttl_relays

    @property
    def takeovers_refused(self) -> int:
        """Duplicate QUERYs with a higher relay TTL that the takeover rule refused (routerules.py)."""
        self._sync()
        return self._takeovers_refused

    @property
    def qrp_skips(self) -> int:
        """Query copies not sent to a peer because its QRP table did not match."""
        self._sync()
        return self._qrp_skips

    @property
    def drops(self) -> Counter[DropReason]:
        """Drops by reason."""
        self._sync()
        return self._drops

    @property
    def received(self) -> Counter[int]:
        """Messages routed, by type."""
        self._sync()
        return self._received

    @property
    def forwarded(self) -> Counter[int]:
        """Copies relayed or routed back, by type."""
        self._sync()
        return self._forwarded

    @property
    def local(self) -> Counter[int]:
        """Messages for this node, by type."""
        self._sync()
        return self._local_counts

    def set_local_words(self, words: Iterable[str] | None) -> None:
        """Give the core the words our shares are matched on (None: hand every query over).

        A query is answered only when each of its words prefixes a word of a shared name
        (share.ShareIndex.match), so the filter holds the QRP hash of every prefix of 3+
        characters of every word. Calling again with the same object does nothing.

        Args:
            words: share.ShareIndex.all_words() (a new object whenever the shares change).
        """
        if words is self._local_words:
            return
        self._local_words = words
        if words is None:
            self.core.set_local(None)
            return
        prefixes = {w[:i] for w in words for i in range(QRP_MIN_WORD_LENGTH, len(w) + 1)}
        bits = (len(prefixes) * LOCAL_FILTER_SPARSITY).bit_length()
        bits = max(LOCAL_FILTER_MIN_BITS, min(LOCAL_FILTER_MAX_BITS, bits))
        table = bytearray(1 << bits)
        shift = 32 - bits
        for p in prefixes:
            table[qrp_hashcode(p) >> shift] = 1
        self.core.set_local(table, bits)

    # --- peers ---------------------------------------------------------------------

    def add_peer(self, peer_id: int, role: PeerRole) -> int:
        """Register a connected neighbour (a reused id gets a fresh generation).

        Returns:
            Its slot in the relay core (RelayCore.slot_ids): the next one.

        Raises:
            LocalProtocolError: peer_id is negative or already registered.
        """
        if peer_id < 0:
            raise LocalProtocolError(f"peer id must be >= 0, got {peer_id}")
        if peer_id in self._peers:
            raise LocalProtocolError(f"peer {peer_id} already registered")
        self._next_gen += 1
        self._peers[peer_id] = _Peer(PeerRole(role), self._next_gen)
        (self._leaf_peers if role == PeerRole.LEAF else self._relay_peers)[peer_id] = None
        return self.core.add_peer(peer_id, self._next_gen, role != PeerRole.LEAF)

    def remove_peer(self, peer_id: int) -> tuple[int, int] | None:
        """Forget a neighbour; its reverse routes become stale without a scan. Unknown ids are ignored.

        Returns:
            RelayCore.remove_peer's (slot, moved peer id or -1), None for an unknown id.
        """
        if self._peers.pop(peer_id, None) is None:
            return None
        self._relay_peers.pop(peer_id, None)
        self._leaf_peers.pop(peer_id, None)
        return self.core.remove_peer(peer_id)

    def set_qrp(self, peer_id: int, matcher: QrpMatcher | None) -> None:
        """Install (or clear with None) the QRP matcher of a peer: an object with .matches(words).

        Raises:
            LocalProtocolError: unknown peer.
        """
        peer = self._peers.get(peer_id)
        if peer is None:
            raise LocalProtocolError(f"set_qrp on unknown peer {peer_id}")
        peer.matcher = matcher
        if type(matcher) is QrpTable:  # the core reads the table itself: a reference to its slots
            self.core.set_qrp(peer_id, True, matcher.slots, matcher.size_bits)
        else:
            self.core.set_qrp(peer_id, matcher is not None)

    def peer_role(self, peer_id: int) -> PeerRole | None:
        """Return the role of a live peer, or None."""
        peer = self._peers.get(peer_id)
        return None if peer is None else peer.role

    def _live(self, route: tuple[int, int] | None) -> int | None:
        """Return the peer id of a route if it still names the same live connection."""
        if route is None:
            return None
        peer = self._peers.get(route[0])
        if peer is None or peer.gen != route[1]:
            return None
        return route[0]

    # --- our own messages ----------------------------------------------------------

    def register_own(self, guid: bytes, kind: int, now: float) -> None:
        """Record one of our own PINGs or QUERYs: its replies become LOCAL, its echoes OWN_MESSAGE.

        Raises:
            LocalProtocolError: kind is not MSG_PING / MSG_QUERY or guid is not 16 bytes.
        """
        if len(guid) != GUID_LEN:
            raise LocalProtocolError(f"GUID must be {GUID_LEN} bytes, got {len(guid)}")
        if kind == MSG_PING:
            self._ping_routes.put(guid, LOCAL_PEER, 0, now)
        elif kind == MSG_QUERY:
            self._query_routes.put(guid, LOCAL_PEER, 0, now)
        else:
            raise LocalProtocolError(f"register_own takes MSG_PING or MSG_QUERY, got {kind:#x}")
        self._seen.seen(guid, kind, now)

    def first_sender(self, guid: bytes, mtype: int, now: float) -> int | None:
        """Return the live peer a broadcast (PING or QUERY) with `guid` was first taken from, or None.

        A duplicate whose first copy came from the same peer was sent twice on one link: no
        honest servent does that (it deduplicates before relaying), so the node counts it.
        """
        table = self._query_routes if mtype == MSG_QUERY else self._ping_routes if mtype == MSG_PING else None
        return None if table is None else self._live(table.get(guid, now))

    def is_own_ping(self, guid: bytes, now: float) -> bool:
        """Whether `guid` is one of our own live PINGs (a PONG for it was solicited)."""
        return self._is_own(self._ping_routes, guid, now)

    def push_route(self, servent_guid: bytes, now: float) -> int | None:
        """Return the live peer a PUSH for `servent_guid` should go to (learned from hits), or None."""
        return self._live(self._push_routes.get(servent_guid, now))

    def count_drop(self, reason: DropReason) -> None:
        """Count a drop decided outside the router (e.g. FLOW_CONTROL in the runtime)."""
        self._drops[reason] += 1

    # --- routing -------------------------------------------------------------------

    def _drop(
        self, reason: DropReason, *, disconnect: bool = False, bye_code: int = 0, local: bool = False
    ) -> RouteDecision:
        """Count a drop; with `local` only the relay is dropped and the node still handles it."""
        self._drops[reason] += 1
        if local:
            return RouteDecision(Action.LOCAL, (), True, reason)
        return RouteDecision(Action.DROP, (), False, reason, disconnect, bye_code)

    def _local(self, mtype: int) -> RouteDecision:
        self._local_counts[mtype] += 1
        return RouteDecision(Action.LOCAL, (), True)

    def route(self, peer: int, msg, now: float) -> RouteDecision:
        """Decide what to do with `msg` received from `peer` at time `now`.

        Args:
            peer: id of the live peer the message came from.
            msg: object with guid (16 bytes), type, ttl, hops, payload.
            now: current time in seconds (monotonic).

        Returns:
            The RouteDecision; drops are already counted in `drops`.

        Raises:
            LocalProtocolError: `peer` is not registered.
        """
        sender = self._peers.get(peer)
        if sender is None:
            raise LocalProtocolError(f"route() from unknown peer {peer}")
        mtype = msg.type
        hops = msg.hops
        self._received[mtype] += 1
        if hops > 0 and sender.role == PeerRole.LEAF:
            return self._drop(DropReason.LEAF_RELAY, disconnect=True, bye_code=BYE_LEAF_RELAYED)
        ttl = msg.ttl
        bad = check_ttl(ttl, hops)
        if bad is not None:
            return self._drop(bad)
        if mtype == MSG_QUERY:
            return self._route_query(peer, msg, ttl, hops, now)
        if mtype == MSG_QUERYHIT:
            return self._route_hit(peer, sender, msg, ttl, hops, now)
        if mtype == MSG_PING:
            return self._route_ping(peer, sender, msg, now)
        if mtype == MSG_PONG:
            return self._route_pong(peer, msg, ttl, hops, now)
        if mtype == MSG_PUSH:
            return self._route_push(peer, msg, ttl, hops, now)
        if mtype in _LINK_TYPES:
            if hops != 0:
                return self._drop(DropReason.HOPS_NONZERO)
            return self._local(mtype)
        return self._drop(DropReason.UNKNOWN_TYPE)

    def _route_query(self, peer: int, msg, ttl: int, hops: int, now: float) -> RouteDecision:
        payload = msg.payload
        bad, disconnect = check_query_size(len(payload))
        if bad is not None:
            return self._drop(bad, disconnect=disconnect)
        guid = msg.guid
        if self._is_own(self._query_routes, guid, now):
            return self._drop(DropReason.OWN_MESSAGE)
        out_ttl = relay_ttl(ttl, hops)
        if self._seen.seen(guid, MSG_QUERY, now):
            return self._route_dup_query(peer, guid, payload, out_ttl, hops, ttl + hops, now)
        self._local_counts[MSG_QUERY] += 1
        if self.mode == "leaf":
            # A leaf answers from its shares straight to `peer` and never relays.
            return RouteDecision(Action.LOCAL, (), True)
        # A leaf's copy is recorded with hops 0 whatever it says: no copy can take its route over.
        rec_hops = 0 if self._peers[peer].role == PeerRole.LEAF else hops
        self._query_routes.put(guid, peer, self._peers[peer].gen, now, out_ttl, rec_hops, ttl + hops)
        if out_ttl == 0:
            # Spent here, but an ultrapeer's leaves sit inside its horizon (LimeWire's
            # forwardQueryToLeaves): matching leaves still get it, with TTL 1.
            if self.mode != "ultrapeer" or not self._leaf_peers or effective_ttl(ttl, hops) < 1:
                return RouteDecision(Action.LOCAL, (), True)
            out_ttl = 1
            targets = self._select_targets(peer, None, payload, out_ttl, leaves_only=True)
        else:
            targets = self._select_targets(peer, None, payload, out_ttl)
        if not targets:
            return RouteDecision(Action.LOCAL, (), True)
        self._forwarded[MSG_QUERY] += len(targets)
        return RouteDecision(Action.FORWARD, targets, True, ttl=out_ttl)

    def _route_dup_query(
        self, peer: int, guid: bytes, payload: bytes, out_ttl: int, hops: int, span: int, now: float
    ) -> RouteDecision:
        """A QUERY already seen: relayed again (not handled) when it takes the route over (routerules' rule).

        Such a copy is never a DUPLICATE, even when no peer is left to relay it to (FORWARD with no
        targets): its sender is not replaying anything and the node must not count it as such.
        """
        sender = self._peers[peer]
        if (
            out_ttl > 0
            and self.mode != "leaf"
            and sender.role != PeerRole.LEAF
            and self.core.take_over(guid, peer, out_ttl, hops, span, now) == TAKEOVER_OK
        ):
            targets = self._select_targets(peer, None, payload, out_ttl)
            self._forwarded[MSG_QUERY] += len(targets)
            return RouteDecision(Action.FORWARD, targets, False, ttl=out_ttl)
        return self._drop(DropReason.DUPLICATE)

    def _is_own(self, table: RouteTable, guid: bytes, now: float) -> bool:
        route = table.get(guid, now)
        return route is not None and route[0] == LOCAL_PEER

    def route_query_targets(
        self, sender: int | None, words: list[str] | None, hops_after: int, payload: bytes | None = None
    ) -> tuple[int, ...]:
        """Return the peers a QUERY copy goes to.

        Args:
            sender: peer the query came from (never a target), or None for our own query.
            words: the query's normalised search words (for QRP matching).
            hops_after: the TTL the copy carries when sent, i.e. how many hops it may
                still travel; 1 means last hop (ultrapeers filter it by their QRP table).
            payload: the QUERY payload instead of `words`: its words and URNs are both
                matched against QRP tables (URN-only queries need this).

        Returns:
            Target peer ids.  A leaf-mode router sends only its own queries, to its ultrapeers.
        """
        if self.mode == "leaf":
            return tuple(self._relay_peers) if sender is None else ()
        return self._select_targets(sender, None if payload is not None else words, payload, hops_after)

    def _select_targets(
        self,
        sender: int | None,
        words: list[str] | None,
        payload: bytes | None,
        out_ttl: int,
        leaves_only: bool = False,
    ) -> tuple[int, ...]:
        """Target selection shared by relays and our own queries.

        Strategy: relay peers (ultrapeers, flood peers) get every query except the
        sender; in ultrapeer mode a last-hop copy (TTL 1) goes only to ultrapeers
        whose QRP table matches or who sent none.  Leaves, in every mode, get a query
        only when their table matches: a leaf without a table gets nothing.  The
        query is parsed only when a table is actually consulted (_QueryView).
        """
        peers = self._peers
        view = None
        targets = []
        last_hop = out_ttl == 1 and self.mode == "ultrapeer"
        for p in () if leaves_only else self._relay_peers:
            if p == sender:
                continue
            if last_hop:
                matcher = peers[p].matcher
                if matcher is not None:
                    if view is None:
                        view = _QueryView(payload, words)
                    if not view.matches(matcher):
                        self._qrp_skips += 1
                        continue
            targets.append(p)
        for p in self._leaf_peers:
            matcher = peers[p].matcher
            if p == sender or matcher is None:
                continue
            if view is None:
                view = _QueryView(payload, words)
            if view.matches(matcher):
                targets.append(p)
            else:
                self._qrp_skips += 1
        return tuple(targets)

    def _route_back(
        self, mtype: int, peer: int, to_peer: int | None, ttl: int, hops: int, local: bool
    ) -> RouteDecision:
        """Route a reply/PUSH from `peer` back to `to_peer` (None: no live route)."""
        if local:
            self._local_counts[mtype] += 1
        if to_peer is None or self.mode == "leaf":
            # A leaf never relays, so it keeps no routes for others: only its own replies arrive.
            return self._drop(DropReason.NO_ROUTE, local=local)
        if to_peer == peer:
            return self._drop(DropReason.ROUTE_LOOP, local=local)
        out_ttl = relay_ttl(ttl, hops)
        if out_ttl == 0:
            return self._drop(DropReason.TTL_EXPIRED, local=local)
        self._forwarded[mtype] += 1
        return RouteDecision(Action.ROUTE_BACK, (to_peer,), local, ttl=out_ttl)

    def _route_hit(self, peer: int, sender: _Peer, msg, ttl: int, hops: int, now: float) -> RouteDecision:
        payload = msg.payload
        if len(payload) < MIN_QUERYHIT_PAYLOAD:
            return self._drop(DropReason.MALFORMED)
        route = self._query_routes.get(msg.guid, now)
        if route is not None and route[0] == LOCAL_PEER:
            dec = self._local(MSG_QUERYHIT)
        else:
            dec = self._route_back(MSG_QUERYHIT, peer, self._live(route), ttl, hops, False)
        if dec.action is not Action.DROP:
            # Only a hit we accepted (ours) or routed back teaches where its servent is: PUSH
            # requests for the servent GUID that ends it go back to `peer`.
            servent = payload[-GUID_LEN:]
            if servent != self.servent_guid:
                self._push_routes.put(servent, peer, sender.gen, now)
        return dec

    def _route_ping(self, peer: int, sender: _Peer, msg, now: float) -> RouteDecision:
        # Pong caching: pings are never flooded; the node answers with its own pong
        # (and cached pongs for a ping that could travel further).
        guid = msg.guid
        if self._is_own(self._ping_routes, guid, now):
            return self._drop(DropReason.OWN_MESSAGE)
        if self._seen.seen(guid, MSG_PING, now):
            return self._drop(DropReason.DUPLICATE)
        if self.mode != "leaf":
            self._ping_routes.put(guid, peer, sender.gen, now)
        return self._local(MSG_PING)

    def _route_pong(self, peer: int, msg, ttl: int, hops: int, now: float) -> RouteDecision:
        if len(msg.payload) < MIN_PONG_PAYLOAD:
            return self._drop(DropReason.MALFORMED)
        route = self._ping_routes.get(msg.guid, now)
        if hops == 0 or (route is not None and route[0] == LOCAL_PEER):
            return self._local(MSG_PONG)
        # Every valid pong names a host: LOCAL (with the drop reason) even when it cannot be relayed.
        return self._route_back(MSG_PONG, peer, self._live(route), ttl, hops, True)

    def _route_push(self, peer: int, msg, ttl: int, hops: int, now: float) -> RouteDecision:
        payload = msg.payload
        if len(payload) < MIN_PUSH_PAYLOAD:
            return self._drop(DropReason.MALFORMED)
        target = payload[:GUID_LEN]
        if target == self.servent_guid:
            return self._local(MSG_PUSH)
        to_peer = self._live(self._push_routes.get(target, now))
        return self._route_back(MSG_PUSH, peer, to_peer, ttl, hops, False)
