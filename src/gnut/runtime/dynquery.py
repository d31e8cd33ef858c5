"""Dynamic querying (GDF Dynamic Query 0.1): a sans-IO planner and the ultrapeer's driver."""

# Strategy
# --------
# An ultrapeer runs a dynamic query (DQ) for each query of one of its leaves and for each
# of its own searches.  Its own leaves get the query at once (QRP-filtered by the Router);
# the ultrapeer links are handed to DynamicQuery, which decides, step by step, which link
# gets the query next and with which TTL:
#
#   1. Probe: the links whose last-hop QRP table matches (or that sent none) get the query
#      with TTL 2 (DQ_PROBE_TTL), at most DQ_PROBE_LINKS of them, all at once; the TTL drops
#      to 1 when far more links match than the probe needs (the content is common), and a
#      TTL-1 copy only ever goes to a link whose table matches.  No candidate at all means
#      rare content: the probe is skipped.
#   2. Then one link at a time (matching tables first).  With r results so far and H
#      ultrapeers theoretically reached, a link is sent the largest TTL whose horizon
#      hosts(degree, ttl) = sum_{i<ttl} (degree-1)^i stays within the hosts still needed
#      per remaining link, (target - r) / (r / H) / C: rounding down favours low TTLs, as
#      the spec asks.  No result yet means the highest TTL the link accepts (X-Max-TTL).
#   3. After each send the planner waits DQ_HOP_WAIT seconds per hop of the TTL it used
#      (2.4 s in LimeWire; configurable so tests run fast), then stops when the target is
#      met, when no link is left (the horizon is exhausted), at DQ_MAX_HORIZON ultrapeers,
#      after DQ_MAX_LIFETIME, or when the leaf says stop (leaf guidance).
#
# Leaf guidance (BEAR vendor messages): a leaf reports how many results it kept (Query
# Status Response, BEAR/12); the ultrapeer then counts kept / DQ_LEAF_UP_LINKS instead of
# the hits it routed (the leaf keeps results of all its ~3 ultrapeers), and 0xFFFF means
# "stop".  gnut leaves answer Query Status Requests (BEAR/11) and send the stop when a
# search is stopped.
#
# Replies that lie about themselves steer nothing (the trust rule of this module):
#   - a QUERYHIT counts the results its payload really holds, parsed (a count byte of 255 over one
#     result counts 1; a payload that does not parse counts 0), and one responder (servent GUID)
#     counts at most DQ_MAX_RESULTS_PER_SERVENT per query: one host cannot end a query that wants
#     choices from many;
#   - leaf guidance may lower the count below what we routed only down to a floor of
#     routed / DQ_GUIDANCE_FLOOR_DIV (a leaf drops spam and duplicates, but a leaf that says "0"
#     while hundreds arrived is widening its query over the whole network), and a kept count is
#     bounded by 0xFFFE;
#   - X-Degree counts up to DQ_MAX_DEGREE only: one link claiming a huge degree would "reach" the
#     whole horizon at once and end every query after one step.
#
# Deviation noted: LimeWire's X-Ext-Probes (re-query a probed link with a higher TTL) is
# not used: gnut's Router drops a duplicate GUID whatever its TTL, so every link is
# queried at most once.

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gnut.constants import GUID_LEN, MAX_TTL_ADVERTISED, MSG_QUERY, MSG_VENDOR
from gnut.errors import ProtocolError
from gnut.protocol import messages
from gnut.protocol import routing as rt
from gnut.protocol.qrp import QRP_DEFAULT_TABLE_BITS, QueryHashes
from gnut.runtime.peer import shed_priority

if TYPE_CHECKING:
    from gnut.runtime.host import NodeServices
    from gnut.runtime.peer import Peer

log = logging.getLogger("gnut.dq")

# Seconds to wait per hop of the TTL before the next step (LimeWire; GDF DQ 0.1, 2.5.2.3).
DQ_HOP_WAIT = 2.4
# The probe: TTL 2 down 3 connections (GDF DQ 0.1, 2.5.1; gtk-gnutella DQ_PROBE_UP).
DQ_PROBE_TTL = 2
DQ_PROBE_LINKS = 3
# More matching links than this many probes' worth: common content, probe one hop shorter (gtk-gnutella).
DQ_COMMON_FACTOR = 3
# Highest TTL a dynamic query uses: fresh queries above X-Max-TTL 4 are refused (GDF DQ 0.1, 2.5.3.2.1).
DQ_MAX_TTL = MAX_TTL_ADVERTISED
# Theoretical ultrapeers reached after which a query stops (GDF DQ 0.1: at most 200,000).
DQ_MAX_HORIZON = 200_000
# A dynamic query never runs longer than this (gtk-gnutella DQ_MAX_LIFETIME, 10 minutes).
DQ_MAX_LIFETIME = 600.0
# Most leaves connect to 3 ultrapeers, each targets a third of the results (GDF DQ 0.1, 2.5.3.1).
DQ_LEAF_UP_LINKS = 3
# A URN query wants sources, not choices: its target is divided by this (gtk-gnutella DQ_SHA1_DECIMATOR).
DQ_URN_DECIMATOR = 25
# Degree assumed for a link that sends no X-Degree (the classic 0.4 network's degree).
DQ_DEFAULT_DEGREE = 6
# X-Degree values above this are taken as this: the horizon math stays bounded, and no link can
# claim the horizon of a whole query (32 is the largest degree deployed ultrapeers announce).
DQ_MAX_DEGREE = 32
# Results one responder (servent GUID) counts for one query: a host with many matches or a liar
# cannot end a query that wants choices from many hosts.
DQ_MAX_RESULTS_PER_SERVENT = 32
# Responders remembered per query for that cap (memory bound: 16 bytes + an int each).
DQ_SERVENTS_TRACKED = 4096
# Leaf guidance may count less than the hits we routed to the leaf, down to routed / this:
# a leaf drops spam and duplicates, not three quarters of everything.
DQ_GUIDANCE_FLOOR_DIV = 4
# Dynamic queries running at once on one node, and for one leaf: beyond that a query
# reaches only our leaves (a leaf with more searches in flight is flooding us).
DQ_MAX_ACTIVE = 1024
DQ_MAX_PER_LEAF = 8
# Finished queries remembered for `gnut status` and tests.
DQ_RECENT_KEPT = 64

# Leaf-guided dynamic queries: BEAR vendor messages (gtk-gnutella doc/gnutella/leaf_guided_queries).
BEAR = b"BEAR"
QSTAT_REQUEST = 11
QSTAT_RESPONSE = 12
QSTAT_VERSION = 1
# Hit count meaning "stop this query" in a Query Status Response.
QSTAT_STOP = 0xFFFF


class DoneReason(enum.Enum):
    """Why a dynamic query stopped sending."""

    TARGET = "target"  # enough results
    EXHAUSTED = "exhausted"  # no link left to query
    HORIZON = "horizon"  # DQ_MAX_HORIZON ultrapeers reached
    LIFETIME = "lifetime"  # ran DQ_MAX_LIFETIME seconds
    STOPPED = "stopped"  # the leaf said stop, left, or our search was stopped


@dataclass(frozen=True, slots=True)
class Done:
    """next_step() result once the query is over."""

    reason: DoneReason


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """One ultrapeer link as the planner sees it.

    `qrp_match` is the link's last-hop QRP table verdict for the query: True or False,
    or None when the link sent no table.
    """

    peer_id: int
    degree: int = DQ_DEFAULT_DEGREE
    max_ttl: int = DQ_MAX_TTL
    qrp_match: bool | None = None


def horizon(degree: int, ttl: int) -> int:
    """Ultrapeers a query sent down one link theoretically reaches (GDF DQ 0.1, 2.5.2.2).

    Args:
        degree: the link's X-Degree (every node is assumed to have it).
        ttl: TTL of the copy sent down the link.

    Returns:
        sum over 0 <= i < ttl of (degree - 1)**i; 0 for ttl <= 0.
    """
    d = max(1, min(degree, DQ_MAX_DEGREE)) - 1
    return sum(d**i for i in range(max(ttl, 0)))


def select_ttl(results: int, needed: int, queried: int, links_left: int, degree: int, max_ttl: int) -> int:
    """The TTL for the next link (GDF DQ 0.1, 2.5.2.1), rounded down to favour low TTLs.

    Args:
        results: results so far (r).
        needed: results still wanted (target - r, > 0).
        queried: ultrapeers theoretically reached so far (H).
        links_left: links not yet queried, this one included (C >= 1).
        degree: the link's degree.
        max_ttl: the highest TTL allowed on the link (>= 1).

    Returns:
        A TTL in 1..max_ttl: max_ttl when nothing was found yet, else the largest TTL
        whose horizon does not exceed the hosts needed per remaining link (1 at least).
    """
    if results <= 0:
        return max_ttl
    per_host = results / max(queried, 1)
    per_link = needed / per_host / max(links_left, 1)
    for ttl in range(max_ttl, 1, -1):
        if horizon(degree, ttl) <= per_link:
            return ttl
    return 1


def _rank(link: LinkInfo) -> int:
    """Matching tables first, then links without a table, then refusing tables."""
    return 0 if link.qrp_match else (1 if link.qrp_match is None else 2)


class DynamicQuery:
    """The sans-IO plan of one dynamic query: which link gets the query next, with what TTL.

    Call next_step(now, results) at `wake_at` (or later); it returns the (peer id, TTL)
    copies to send now, [] when it is not time yet, or Done.
    """

    def __init__(
        self,
        target: int,
        links: Iterable[LinkInfo],
        now: float,
        *,
        max_ttl: int = DQ_MAX_TTL,
        hop_wait: float = DQ_HOP_WAIT,
        probe_ttl: int = DQ_PROBE_TTL,
        probe_links: int = DQ_PROBE_LINKS,
    ) -> None:
        """Args:
        target: results wanted (>= 1).
        links: the ultrapeer links that may get the query.
        now: current time (monotonic seconds).
        max_ttl: highest TTL to use (the query's own TTL, at most DQ_MAX_TTL).
        hop_wait: seconds to wait per hop of each TTL sent.
        probe_ttl, probe_links: the probe's TTL and width.

        Raises:
            ValueError: target < 1, max_ttl < 1, hop_wait < 0, probe_ttl < 1 or probe_links < 1.
        """
        if target < 1 or max_ttl < 1 or hop_wait < 0 or probe_ttl < 1 or probe_links < 1:
            raise ValueError(f"bad dynamic query parameters target={target} max_ttl={max_ttl} "
                             f"hop_wait={hop_wait} probe={probe_links}x{probe_ttl}")
        self.target = target
        self.max_ttl = min(max_ttl, DQ_MAX_TTL)
        self.hop_wait = hop_wait
        self.probe_ttl = probe_ttl
        self.probe_links = probe_links
        self.started = now
        self.wake_at = now
        self.pending: dict[int, LinkInfo] = {}
        self.queried: dict[int, int] = {}  # peer id -> TTL sent
        self._reach: dict[int, int] = {}  # peer id -> horizon that copy added
        self.horizon = 0  # H: ultrapeers theoretically reached
        self.results = 0
        self.kept: int | None = None  # leaf guidance: results the leaf says it kept (0..0xFFFE)
        self.stopped = False
        self.probed = False
        self.done: Done | None = None
        for link in links:
            self.add_link(link)

    # --- inputs ---------------------------------------------------------------------------
    def add_link(self, link: LinkInfo) -> None:
        """A link that may get the query (ignored when already known or queried)."""
        if link.peer_id not in self.queried and link.peer_id not in self.pending:
            self.pending[link.peer_id] = link

    def drop_link(self, peer_id: int) -> None:
        """A link went away: never send to it (what it already reached stays counted)."""
        self.pending.pop(peer_id, None)

    def unsent(self, peer_id: int) -> None:
        """A copy we planned was not sent (flow control): take its horizon back, forget the link."""
        self.pending.pop(peer_id, None)
        if self.queried.pop(peer_id, None) is not None:
            self.horizon -= self._reach.pop(peer_id, 0)

    def guidance(self, kept: int) -> None:
        """Leaf guidance: the leaf kept `kept` results so far; QSTAT_STOP ends the query."""
        if kept == QSTAT_STOP:
            self.stopped = True
        else:
            self.kept = max(0, min(kept, QSTAT_STOP - 1))

    def stop(self) -> None:
        """End the query at the next step (the leaf left, our search was stopped)."""
        self.stopped = True

    # --- the plan -------------------------------------------------------------------------
    def effective_results(self) -> int:
        """Results counted against the target: the leaf's own count when it guides us, never less
        than a share of what we routed to it (DQ_GUIDANCE_FLOOR_DIV)."""
        if self.kept is not None:
            return max(self.kept // DQ_LEAF_UP_LINKS, self.results // DQ_GUIDANCE_FLOOR_DIV)
        return self.results

    def next_step(self, now: float, results: int) -> list[tuple[int, int]] | Done:
        """Decide what to send now.

        Args:
            now: current time (monotonic seconds).
            results: results counted so far for this query.

        Returns:
            Done when the query is over; [] while waiting; else (peer id, TTL) pairs to send.
        """
        if self.done is not None:
            return self.done
        self.results = results
        if self.stopped:
            return self._finish(DoneReason.STOPPED)
        if now < self.wake_at:
            return []
        if self.effective_results() >= self.target:
            return self._finish(DoneReason.TARGET)
        if now - self.started >= DQ_MAX_LIFETIME:
            return self._finish(DoneReason.LIFETIME)
        if self.horizon >= DQ_MAX_HORIZON:
            return self._finish(DoneReason.HORIZON)
        sends = self._probe() if not self.probed else self._next()
        self.probed = True
        if not sends:
            return self._finish(DoneReason.EXHAUSTED)
        for peer_id, ttl in sends:
            link = self.pending.pop(peer_id)
            self.queried[peer_id] = ttl
            self._reach[peer_id] = horizon(link.degree, ttl)
            self.horizon += self._reach[peer_id]
        self.wake_at = now + max(ttl for _, ttl in sends) * self.hop_wait
        return sends

    def _finish(self, reason: DoneReason) -> Done:
        self.done = Done(reason)
        self.pending.clear()
        return self.done

    def _probe(self) -> list[tuple[int, int]]:
        cands = sorted((lk for lk in self.pending.values() if lk.qrp_match is not False), key=_rank)
        if not cands:
            return self._next()  # nobody advertises it: rare content, go one link at a time
        ttl = min(self.probe_ttl, self.max_ttl)
        if sum(1 for lk in cands if lk.qrp_match) > DQ_COMMON_FACTOR * self.probe_links:
            ttl = max(1, ttl - 1)
        chosen = cands[: self.probe_links]
        if ttl == 1:
            chosen = [lk for lk in chosen if lk.qrp_match]
        return [(lk.peer_id, min(ttl, lk.max_ttl)) for lk in chosen]

    def _next(self) -> list[tuple[int, int]]:
        cands = sorted(self.pending.values(), key=_rank)
        results = self.effective_results()
        needed = self.target - results
        for link in cands:
            ttl = select_ttl(results, needed, self.horizon, len(cands), link.degree,
                             max(1, min(self.max_ttl, link.max_ttl)))
            if ttl == 1 and link.qrp_match is False:
                continue  # a last-hop copy its table refuses would go nowhere
            return [(link.peer_id, ttl)]
        return []


# --- leaf guidance codec -------------------------------------------------------------------------


def status_request() -> bytes:
    """The payload of a BEAR/11 Query Status Request (sent with the query's GUID)."""
    return messages.Vendor.make(BEAR, QSTAT_REQUEST, QSTAT_VERSION).encode()


def status_response(kept: int) -> bytes:
    """The payload of a BEAR/12 Query Status Response.

    Args:
        kept: results kept (capped to 0xFFFE), or QSTAT_STOP to end the query.
    """
    count = kept if kept == QSTAT_STOP else max(0, min(kept, QSTAT_STOP - 1))
    return messages.Vendor.make(BEAR, QSTAT_RESPONSE, QSTAT_VERSION, count.to_bytes(2, "little")).encode()


def parse_status(payload: bytes) -> tuple[int, int | None] | None:
    """Recognise a BEAR Query Status message.

    Args:
        payload: a vendor message payload.

    Returns:
        (QSTAT_REQUEST, None), (QSTAT_RESPONSE, hit count), or None for any other vendor
        message (and for a response too short to hold its count).
    """
    v = messages.Vendor.decode(payload)
    if v.vendor != BEAR:
        return None
    if v.selector == QSTAT_REQUEST:
        return QSTAT_REQUEST, None
    if v.selector == QSTAT_RESPONSE and len(v.data) >= 2:
        return QSTAT_RESPONSE, int.from_bytes(v.data[:2], "little")
    return None


# --- the runtime driver ------------------------------------------------------------------------


@dataclass(slots=True)
class DqRecord:
    """One dynamic query as the node runs it (and remembers it after it ends)."""

    guid: bytes
    payload: bytes
    hops: int
    origin: int | None  # leaf peer id, None for our own search
    plan: DynamicQuery
    hashes: QueryHashes
    results: int = 0
    sent: int = 0
    reason: DoneReason | None = None
    per_servent: dict[bytes, int] = field(default_factory=dict)  # results counted per responder

    def summary(self) -> dict:
        return {"guid": self.guid.hex(), "origin": "local" if self.origin is None else self.origin,
                "results": self.results, "sent": self.sent, "links": dict(self.plan.queried),
                "horizon": self.plan.horizon, "reason": self.reason.value if self.reason else None}


def hit_results(payload: bytes) -> int:
    """The number of results a QUERYHIT payload really holds, or -1 when it does not parse.

    The count byte only says how many records the parser reads: a payload whose records run
    short does not parse, and one with fewer results than its bytes could hold is read as what
    it says. Either way what counts is what was parsed.
    """
    try:
        return len(messages.QueryHit.decode(payload).results)
    except ProtocolError:
        return -1


def _int_header(headers, name: str, default: int, low: int, high: int) -> int:
    value = headers.get(name) if headers is not None else None
    try:
        return max(low, min(int(str(value).strip()), high)) if value is not None else default
    except ValueError:
        return default


class DqDriver:
    """Runs the node's dynamic queries: one task per query, sending what DynamicQuery plans."""

    def __init__(self, node: NodeServices) -> None:
        self.node = node
        self.active: dict[bytes, DqRecord] = {}
        self.recent: collections.deque[DqRecord] = collections.deque(maxlen=DQ_RECENT_KEPT)
        self.finished: collections.Counter[DoneReason] = collections.Counter()
        self._per_leaf: collections.Counter[int] = collections.Counter()
        self.refused = 0
        self.messages_sent = 0

    @property
    def enabled(self) -> bool:
        """True for an ultrapeer configured for dynamic querying."""
        return self.node.cfg.mode == "ultrapeer" and self.node.cfg.dynamic_query

    def target_for(self, payload: bytes, leaf: bool) -> int:
        """Results wanted: the configured target, a third of it for a leaf, less for a URN search."""
        target = self.node.cfg.dq_target_results
        if leaf:
            target //= DQ_LEAF_UP_LINKS
        if rt.query_terms(payload)[1]:
            target //= DQ_URN_DECIMATOR
        return max(1, target)

    def on_leaf_query(self, peer: Peer, msg, dec: rt.RouteDecision) -> rt.RouteDecision:
        """Split the Router's decision for a leaf's query: leaves now, ultrapeers by DQ.

        Args:
            peer: the leaf the query came from (hops 0: the Router drops relays from leaves).
            msg: the QUERY.
            dec: the Router's FORWARD decision.

        Returns:
            The decision to execute at once: the same, restricted to leaf targets.
        """
        peers = self.node.peers
        leaves = tuple(t for t in dec.targets if (p := peers.get(t)) is not None and p.role == rt.PeerRole.LEAF)
        if len(leaves) == len(dec.targets):
            return dec
        if (len(self.active) >= DQ_MAX_ACTIVE or self._per_leaf[peer.id] >= DQ_MAX_PER_LEAF
                or msg.guid in self.active):
            self.refused += 1
            self.node.events["dq_refused"] += 1
        else:
            self.start(msg.guid, msg.payload, hops=msg.hops + 1, origin=peer.id, max_ttl=msg.ttl,
                       target=self.target_for(msg.payload, leaf=True))
        if leaves:
            return rt.RouteDecision(dec.action, leaves, dec.local, dec.reason, ttl=dec.ttl)
        return rt.RouteDecision(rt.Action.LOCAL, (), dec.local, dec.reason)

    def start(self, guid: bytes, payload: bytes, *, hops: int, origin: int | None, max_ttl: int,
              target: int) -> DqRecord:
        """Start a dynamic query over our ultrapeer links (our leaves were served already).

        Args:
            guid: the query's GUID (hits for it are counted by on_hit).
            payload: the QUERY payload sent unchanged.
            hops: hops of the copies we send (1 for a leaf's query, 0 for ours).
            origin: the leaf's peer id, None for our own search.
            max_ttl: highest TTL to use (the query's TTL; capped to DQ_MAX_TTL).
            target: results wanted.

        Returns:
            The running query's record.
        """
        words, urns = rt.query_terms(payload)
        hashes = QueryHashes(words, QRP_DEFAULT_TABLE_BITS, urns)
        cfg = self.node.cfg
        plan = DynamicQuery(target, (), time.monotonic(), max_ttl=max(1, min(max_ttl, DQ_MAX_TTL)),
                            hop_wait=cfg.dq_hop_wait)
        rec = DqRecord(guid, payload, hops, origin, plan, hashes)
        self._sync_links(rec)
        self.active[guid] = rec
        if origin is not None:
            self._per_leaf[origin] += 1
        self.node.spawn(self._drive(rec))
        log.debug("DQ %s started for %s: target %d over %d links", guid.hex(),
                  "us" if origin is None else f"leaf #{origin}", target, len(plan.pending))
        return rec

    def cancel(self, guid: bytes) -> None:
        """Stop the dynamic query for `guid` at its next step (unknown GUIDs are ignored)."""
        rec = self.active.get(guid)
        if rec is not None:
            rec.plan.stop()

    def on_hit(self, msg) -> None:
        """A QUERYHIT we route back to a leaf or keep for ourselves: count the results it holds.

        The count is what the payload really holds (parsed, not its count byte), and at most
        DQ_MAX_RESULTS_PER_SERVENT per responder for the whole query; a payload that does not
        parse counts nothing (counted in events "dq_hit_unparsable").
        """
        rec = self.active.get(msg.guid)
        if rec is None:
            return
        n = hit_results(msg.payload)
        if n < 0:
            self.node.events["dq_hit_unparsable"] += 1
            return
        servent = bytes(msg.payload[-GUID_LEN:])
        had = rec.per_servent.get(servent, 0)
        if had >= DQ_MAX_RESULTS_PER_SERVENT:
            self.node.events["dq_hit_capped"] += 1
            return
        n = min(n, DQ_MAX_RESULTS_PER_SERVENT - had)
        if n and (had or len(rec.per_servent) < DQ_SERVENTS_TRACKED):
            rec.per_servent[servent] = had + n
        rec.results += n

    def on_vendor(self, peer: Peer, msg) -> bool:
        """Handle a BEAR Query Status message; False for any other vendor message.

        A response from the leaf whose query it is guides that query; a request (we are the
        leaf) is answered by our SearchManager.
        """
        if msg.type != MSG_VENDOR:
            return False
        status = parse_status(msg.payload)
        if status is None:
            return False
        kind, count = status
        if kind == QSTAT_REQUEST:
            self.node.searches.on_status_request(peer, msg.guid)
            return True
        rec = self.active.get(msg.guid)
        if rec is not None and rec.origin == peer.id:
            rec.plan.guidance(count)
            self.node.events["dq_guidance"] += 1
        return True

    def stats(self) -> dict:
        """Counts for `gnut status`: running, finished by reason, refused, copies sent."""
        return {"active": len(self.active), "finished": {k.value: v for k, v in self.finished.items()},
                "refused": self.refused, "messages_sent": self.messages_sent}

    # --- internals ---------------------------------------------------------------------------
    def _link_info(self, p: Peer, hashes: QueryHashes) -> LinkInfo:
        table = p.qrp.table if p.qrp is not None else None
        return LinkInfo(
            peer_id=p.id,
            degree=_int_header(p.peer_headers, "X-Degree", DQ_DEFAULT_DEGREE, 1, DQ_MAX_DEGREE),
            max_ttl=_int_header(p.peer_headers, "X-Max-TTL", DQ_MAX_TTL, 1, DQ_MAX_TTL),
            qrp_match=None if table is None else table.matches_hashes(hashes),
        )

    def _sync_links(self, rec: DqRecord) -> None:
        """Tell the plan about ultrapeer links that came or went since the last step."""
        plan = rec.plan
        live = set()
        for p in self.node.peers.values():
            if p.established and not p.closed and p.role == rt.PeerRole.ULTRAPEER and p.id != rec.origin:
                live.add(p.id)
                if p.id not in plan.pending and p.id not in plan.queried:
                    plan.add_link(self._link_info(p, rec.hashes))
        for pid in [pid for pid in plan.pending if pid not in live]:
            plan.drop_link(pid)

    async def _drive(self, rec: DqRecord) -> None:
        node = self.node
        plan = rec.plan
        try:
            while True:
                if rec.origin is not None and rec.origin not in node.peers:
                    plan.stop()  # the leaf left: nobody wants these results
                self._sync_links(rec)
                step = plan.next_step(time.monotonic(), rec.results)
                if isinstance(step, Done):
                    rec.reason = step.reason
                    break
                if step:
                    self._send(rec, step)
                await asyncio.sleep(max(0.0, plan.wake_at - time.monotonic()))
        finally:
            if self.active.get(rec.guid) is rec:
                del self.active[rec.guid]
                if rec.origin is not None:
                    self._per_leaf[rec.origin] -= 1
                    if not self._per_leaf[rec.origin]:
                        del self._per_leaf[rec.origin]
            rec.reason = rec.reason or DoneReason.STOPPED
            self.finished[rec.reason] += 1
            self.recent.append(rec)
            log.debug("DQ %s done (%s): %d results, %d copies, horizon %d", rec.guid.hex(),
                      rec.reason.value, rec.results, rec.sent, plan.horizon)

    def _send(self, rec: DqRecord, sends: list[tuple[int, int]]) -> None:
        node = self.node
        prio = shed_priority(MSG_QUERY, rec.hops)
        for pid, ttl in sends:
            p = node.peers.get(pid)
            raw = messages.build(rec.guid, MSG_QUERY, ttl, rec.hops, rec.payload)
            if p is not None and p.enqueue(raw, prio):
                rec.sent += 1
                self.messages_sent += 1
                node.sent[MSG_QUERY] += 1
            else:
                node.router.count_drop(rt.DropReason.FLOW_CONTROL)
                rec.plan.unsent(pid)
        node.flush()
