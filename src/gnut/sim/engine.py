"""Discrete-event network simulator that runs the real Router and message codecs over an in-memory transport."""

# Strategy
# --------
# Every simulated node owns one real gnut.protocol.routing.Router (peer ids = neighbour node ids)
# and a small set of object ids.  Links are in memory: a send pushes
# (arrival time, seq, dst, src, raw bytes) on one heap, a virtual clock pops it, the
# receiver wraps the bytes in fastpath.Message and asks its Router what to do, then the
# simulator executes the RouteDecision exactly as node.py would (relay with TTL/hops
# rewritten, route a QUERYHIT back, deliver locally).  A node that holds the queried
# object answers with a real QUERYHIT (messages codec) that the Routers route back hop
# by hop.  Every copy put on a link is one message.
#
# What is the real Router and what is the simulator:
# * flood, expanding ring, ultrapeer/leaf + QRP last hop: the Router decides everything
#   (dedup, TTL clamp, targets, QRP filtering, reverse routes); the querier's first
#   copies use Router.route_query_targets().
# * dynamic querying: the querier (or the ultrapeer a leaf hands its query to) is the
#   DQ controller and picks which neighbour gets which TTL; every relay after that is
#   the Router's.
# * random walkers: the simulator picks the next hop (one random neighbour); the Router
#   still sees every step (dedup bookkeeping: a revisit is its DUPLICATE).  A walk's
#   path is far longer than the 15-hop header limit allows a QUERYHIT to travel, so a
#   walker's answer goes straight to the querier (one message, like Gnutella's
#   out-of-band replies) and a walker asks the querier every CHECK_EVERY steps whether
#   to stop (Lv et al.'s check-back rule; each check counts as one message).

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field

from gnut.constants import MSG_QUERY, MSG_QUERYHIT, QUERYHIT_TTL_MARGIN
from gnut.errors import LocalProtocolError
from gnut.fastpath import Message
from gnut.protocol import qrp
from gnut.protocol.messages import QF_FLAGS_IN_USE, HitResult, Query, QueryHit, build
from gnut.protocol.routing import Action, DropReason, Router
from gnut.sim.overlays import (  # noqa: F401  (re-exported: the simulator's public names)
    _PEER_ROLES,
    _ROLE_MODES,
    FLOOD,
    LEAF,
    REPLICATIONS,
    SIM_QRP_BITS,
    ULTRAPEER,
    Content,
    SlotMatcher,
    Topology,
    complete,
    erdos_renyi,
    from_networkx,
    horizon,
    last_hop_share,
    place_content,
    power_law,
    random_regular,
    regular_tree,
    ring,
    star,
    two_tier,
)

# Per-node seen-GUID cache and route tables, far below the real 1M: 100,000 routers must
# fit in memory (the Cython GuidCache preallocates ~31 bytes a slot: 256 slots = 8 KB a
# node, 4096 slots would be 12 GB at 100k nodes).  Queries run one at a time, so only the
# GUIDs of the query in flight (at most a few dozen walkers) must stay; older ones may go.
SIM_SEEN_CAPACITY = 256
SIM_ROUTE_CAPACITY = 256
# Entries are kept as long as the real servent keeps them (virtual seconds).
SIM_MAX_AGE = 600.0
# Default one-way link latency in virtual seconds (a typical broadband RTT of 100 ms).
DEFAULT_LATENCY = 0.05
# Lv et al. (ICS 2002): walkers contact the querier every 4th step.
CHECK_EVERY = 4
# Lv et al.: expanding ring starts at TTL 1 and grows by 2.
RING_START = 1
RING_STEP = 2
# Dynamic querying (LimeWire/gtk-gnutella): probe with TTL 2 on up to 3 connections,
# then one connection at a time with a TTL sized to the hosts still needed, up to TTL 4.
DQ_PROBE_TTL = 2
DQ_PROBE_CONNS = 3
DQ_MAX_TTL = 4
# Results a dynamic query waits for before it stops widening (small: objects are rare here).
DQ_TARGET_RESULTS = 3
# Gap between two queries so that none overlaps the previous one (virtual seconds).
QUERY_GAP = 1.0
# Safety margin added to every "wait for replies" timer, in link latencies.
WAIT_MARGIN = 1
# Ultrapeers hand a query whose TTL is spent to their QRP-matching leaves (see _on_query).
LEAVES_ON_EXPIRED_TTL = True
# Redraws of the querying node when the one drawn already holds the object.
MAX_ORIGIN_DRAWS = 20
# Fixed fields of every simulated QUERYHIT (loopback address, as all traffic here is local).
SIM_HIT_PORT = 6346
SIM_HIT_IP = "127.0.0.1"
SIM_HIT_SPEED = 1000
SIM_OBJECT_SIZE = 1 << 20

ALGORITHMS = ("flood", "ring", "walk", "dq")


# --- search specification and per-query record ----------------------------------------------


@dataclass(slots=True)
class SearchSpec:
    """How the querier searches.

    algorithm: "flood" (TTL `ttl`; on a two-tier overlay this is ultrapeer + QRP last hop),
    "ring" (expanding ring RING_START, +RING_STEP, ... up to `ttl`), "walk" (`walkers`
    random walkers of at most `max_steps` steps, check-back every `check_every` steps) or
    "dq" (dynamic querying up to `dq_target` results).
    """

    algorithm: str = "flood"
    ttl: int = 4
    walkers: int = 16
    max_steps: int = 1024
    check_every: int = CHECK_EVERY
    dq_target: int = DQ_TARGET_RESULTS

    def label(self) -> str:
        """Short name used in tables and plots."""
        if self.algorithm == "flood":
            return f"flood ttl={self.ttl}"
        if self.algorithm == "ring":
            return f"ring ttl<={self.ttl}"
        if self.algorithm == "walk":
            return f"walk k={self.walkers}"
        return f"dq target={self.dq_target}"


@dataclass(slots=True)
class QueryRecord:
    """What one query cost and found."""

    obj: int
    origin: int
    start: float
    words: list[str]
    payload: bytes
    spec: SearchSpec
    visited: set[int] = field(default_factory=set)
    query_msgs: int = 0  # QUERY copies put on links
    hit_msgs: int = 0  # QUERYHIT copies put on links (or sent out of band by walkers)
    checks: int = 0  # walker check-backs with the querier
    received: int = 0  # QUERY copies that reached a live node
    duplicates: int = 0  # ... at a node that had already received this query (any of its GUIDs)
    router_duplicates: int = 0  # ... that the receiving Router dropped as DUPLICATE
    last_hop_visits: int = 0  # nodes first reached by a copy carrying TTL 1
    hits: int = 0  # QUERYHITs that reached the querier
    first_hit_hops: int | None = None
    first_hit_time: float | None = None
    dq_node: int = -1  # dynamic querying: the node that runs it
    dq_results: int = 0
    dq_hosts: float = 0.0
    dq_pending: list[int] = field(default_factory=list)
    guids: list[bytes] = field(default_factory=list)

    @property
    def messages(self) -> int:
        """All messages this query caused."""
        return self.query_msgs + self.hit_msgs + self.checks


def branch_horizon(degree: int, ttl: int) -> int:
    """Nodes reached through one link of a tree-like overlay by a copy with TTL `ttl`: sum_{i<ttl} (d-1)^i."""
    return sum((degree - 1) ** i for i in range(ttl))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(records: list[QueryRecord], n_nodes: int) -> dict:
    """Aggregate metrics of a batch of queries.

    Args:
        records: the queries' records.
        n_nodes: overlay size (for messages per node).

    Returns:
        queries, success_rate, msgs_per_query (and its query/hit/check parts),
        msgs_per_node, dup_pct, router_dup_pct, visited, last_hop_share, hops_first_hit,
        time_first_hit.
    """
    q = max(1, len(records))
    received = sum(r.received for r in records)
    ok = [r for r in records if r.hits]
    msgs = sum(r.messages for r in records) / q
    visited = sum(len(r.visited) - 1 for r in records)
    return {
        "queries": len(records),
        "success_rate": len(ok) / q,
        "msgs_per_query": msgs,
        "query_msgs": sum(r.query_msgs for r in records) / q,
        "hit_msgs": sum(r.hit_msgs for r in records) / q,
        "check_msgs": sum(r.checks for r in records) / q,
        "msgs_per_node": msgs / max(1, n_nodes),
        "dup_pct": 100.0 * sum(r.duplicates for r in records) / received if received else 0.0,
        "router_dup_pct": 100.0 * sum(r.router_duplicates for r in records) / received if received else 0.0,
        "visited": visited / q,
        "last_hop_share": sum(r.last_hop_visits for r in records) / visited if visited else 0.0,
        "hops_first_hit": _mean([r.first_hit_hops for r in ok]),
        "time_first_hit": _mean([r.first_hit_time - r.start for r in ok]),
    }


_EMPTY_TABLE = SlotMatcher()


def _query_payload(text: str) -> bytes:
    """A real QUERY payload (flags word with "flags in use", as gtk-gnutella requires)."""
    return Query(text=text, flags=QF_FLAGS_IN_USE).encode()


def _query_words(payload: bytes) -> list[str]:
    """The words QRP routes on, decoded from the payload as a receiving node would."""
    return qrp.query_words(Query.decode(payload).text)


def _hit_payload(keyword: str, obj: int, servent_guid: bytes) -> bytes:
    """A real QUERYHIT payload with one result naming the object."""
    result = HitResult(index=obj, size=SIM_OBJECT_SIZE, name=keyword + ".dat")
    return QueryHit(SIM_HIT_PORT, SIM_HIT_IP, SIM_HIT_SPEED, (result,), servent_guid).encode()


def _hit_count(payload: bytes) -> int:
    """Results in a QUERYHIT, decoded with the real codec (the querier reads every hit)."""
    return len(QueryHit.decode(payload).results)


def _rewrite(raw: bytes, ttl: int) -> bytes:
    """The relayed copy: TTL as the Router decided, hops + 1."""
    return raw[:17] + bytes((ttl, raw[18] + 1)) + raw[19:]


class Simulator:
    """A whole overlay of real Routers on a virtual clock.

    Args:
        topology: the overlay.
        content: objects on nodes (node ids of `topology`).
        seed: seeds every random choice (same seed, same metrics).
        latency: one-way link latency in virtual seconds.
        jitter: each send takes latency * (1 + jitter * U[0, 1)) when > 0.
    """

    def __init__(
        self,
        topology: Topology,
        content: Content,
        *,
        seed: int = 0,
        latency: float = DEFAULT_LATENCY,
        jitter: float = 0.0,
    ) -> None:
        self.topology = topology
        self.content = content
        self.adj = topology.adj
        self.roles = topology.roles
        self.n = topology.n
        self.latency = latency
        self.jitter = jitter
        self.rng = random.Random(seed)
        self._lat_rng = random.Random(seed + 1)
        self._churn_rng = random.Random(seed + 2)
        self.now = 0.0
        self.events = 0  # messages delivered (one per message put on a link that reached a node)
        self._heap: list = []
        self._seq = 0
        self._records: dict[bytes, QueryRecord] = {}
        self._walkers: dict[bytes, list[int]] = {}
        self.online = bytearray(b"\x01") * self.n
        self.servent_guids = [self._guid() for _ in range(self.n)]
        self.tables = [self._own_table(v) for v in range(self.n)]
        self._join_degree = [len(a) for a in self.adj]
        self.routers: list[Router | None] = [self._new_router(v) for v in range(self.n)]
        self.up_tables: dict[int, SlotMatcher] = {}
        for v in range(self.n):
            if self.roles[v] == ULTRAPEER:
                self.up_tables[v] = SlotMatcher()
                self._rebuild_up_table(v)
        for v in range(self.n):
            for u in self.adj[v]:
                self._attach(v, u)
        self.churn_rate = 0.0
        self._next_churn = math.inf
        self._offline: list[int] = []
        self.churn_events = 0

    # --- construction ----------------------------------------------------------------------

    def _guid(self) -> bytes:
        raw = bytearray(self.rng.getrandbits(128).to_bytes(16, "little"))
        raw[8], raw[15] = 0xFF, 0x00
        return bytes(raw)

    def _own_table(self, v: int) -> SlotMatcher:
        objs = self.content.node_objects.get(v)
        if not objs:
            return _EMPTY_TABLE
        table = SlotMatcher()
        for obj in objs:
            table.add_name(self.content.keyword(obj) + ".dat")
        return table

    def _new_router(self, v: int) -> Router:
        return Router(
            _ROLE_MODES[self.roles[v]],
            servent_guid=self.servent_guids[v],
            seen_capacity=SIM_SEEN_CAPACITY,
            seen_max_age=SIM_MAX_AGE,
            route_capacity=SIM_ROUTE_CAPACITY,
            route_max_age=SIM_MAX_AGE,
            seed=v,
        )

    def _rebuild_up_table(self, v: int) -> None:
        """An ultrapeer's table for its ultrapeer neighbours: its own files OR its leaves' tables."""
        slots = set(self.tables[v].slots)
        for u in self.adj[v]:
            if self.roles[u] == LEAF:
                slots |= self.tables[u].slots
        self.up_tables[v].slots = slots

    def _attach(self, v: int, u: int) -> None:
        """v's side of the link v-u: register u in v's Router with its role and QRP table."""
        role = self.roles[u]
        router = self.routers[v]
        router.add_peer(u, _PEER_ROLES[role])
        if self.roles[v] == ULTRAPEER:
            if role == LEAF:
                router.set_qrp(u, self.tables[u])
            elif role == ULTRAPEER:
                router.set_qrp(u, self.up_tables[u])

    # --- transport -------------------------------------------------------------------------

    def _send(self, t: float, src: int, dst: int, raw: bytes) -> None:
        lat = self.latency
        if self.jitter:
            lat *= 1.0 + self.jitter * self._lat_rng.random()
        self._seq += 1
        heapq.heappush(self._heap, (t + lat, self._seq, dst, src, raw))

    def _timer(self, when: float, callback) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, -1, -1, callback))

    def _wait(self, ttl: int) -> float:
        """Time for a copy with TTL `ttl` to go out and its replies to come back, plus a margin."""
        return (2 * ttl + WAIT_MARGIN) * self.latency * (1.0 + self.jitter)

    def run(self) -> None:
        """Deliver events until none is left (the current queries have finished)."""
        heap = self._heap
        pop = heapq.heappop
        records = self._records
        online = self.online
        routers = self.routers
        while heap:
            t, _, dst, src, raw = pop(heap)
            if t >= self._next_churn:
                self._churn_until(t)
            self.now = t
            if dst < 0:
                raw(t)
                continue
            if not online[dst]:
                continue
            router = routers[dst]
            if router.peer_role(src) is None:
                continue  # the link went away while the message was in flight
            self.events += 1
            rec = records.get(raw[:16])
            if raw[16] == MSG_QUERY:
                self._on_query(t, dst, src, raw, router, rec)
            else:
                self._on_hit(t, dst, src, raw, router, rec)

    def _on_query(self, t: float, dst: int, src: int, raw: bytes, router: Router, rec: QueryRecord) -> None:
        msg = Message(raw)
        decision = router.route(src, msg, t)
        rec.received += 1
        visited = rec.visited
        if dst in visited:
            rec.duplicates += 1
        else:
            visited.add(dst)
            if raw[17] == 1:
                rec.last_hop_visits += 1
        if decision.reason is DropReason.DUPLICATE:
            rec.router_duplicates += 1
        walker = self._walkers.get(raw[:16])
        if walker is not None:
            self._walk(t, dst, raw, rec, walker)
            return
        if decision.local:
            objs = self.content.node_objects.get(dst)
            if objs and rec.obj in objs:
                self._answer(t, dst, src, msg, rec)
        if rec.dq_node == dst and src == rec.origin:
            self._dq_start(t, rec, sender=src, hops=1)
        elif decision.action == Action.FORWARD:
            out = _rewrite(raw, decision.ttl)
            for target in decision.targets:
                self._send(t, dst, target, out)
            rec.query_msgs += len(decision.targets)
        elif LEAVES_ON_EXPIRED_TTL and decision.local and self.roles[dst] == ULTRAPEER:
            # The Router stops a query whose TTL is spent; an ultrapeer still hands it to
            # its matching leaves (GUESS / last-hop QRP, gtk-gnutella).  Only runs while
            # the Router leaves that out: once it returns those leaves, this finds none.
            leaves = [p for p in router.route_query_targets(src, rec.words, 1) if self.roles[p] == LEAF]
            if leaves:
                out = _rewrite(raw, 1)
                for leaf in leaves:
                    self._send(t, dst, leaf, out)
                rec.query_msgs += len(leaves)

    def _answer(self, t: float, node: int, src: int, msg, rec: QueryRecord) -> None:
        """A node holding the object answers with a real QUERYHIT, sent to the peer the query came from."""
        payload = _hit_payload(self.content.keyword(rec.obj), rec.obj, self.servent_guids[node])
        self._send(t, node, src, build(msg.guid, MSG_QUERYHIT, msg.hops + QUERYHIT_TTL_MARGIN, 0, payload))
        rec.hit_msgs += 1

    def _on_hit(self, t: float, dst: int, src: int, raw: bytes, router: Router, rec: QueryRecord) -> None:
        msg = Message(raw)
        decision = router.route(src, msg, t)
        if decision.action == Action.ROUTE_BACK:
            self._send(t, dst, decision.targets[0], _rewrite(raw, decision.ttl))
            rec.hit_msgs += 1
            if dst == rec.dq_node:
                rec.dq_results += _hit_count(msg.payload)
        elif decision.local and dst == rec.origin:
            self._record_hit(t, rec, msg.hops + 1, _hit_count(msg.payload))

    def _record_hit(self, t: float, rec: QueryRecord, hops: int, results: int) -> None:
        rec.hits += results
        if rec.dq_node == rec.origin:
            rec.dq_results += results
        if rec.first_hit_time is None:
            rec.first_hit_time = t
            rec.first_hit_hops = hops

    # --- searches --------------------------------------------------------------------------

    def query(self, spec: SearchSpec, obj: int, origin: int) -> QueryRecord:
        """Run one search to completion and return its record.

        Args:
            spec: the search algorithm and its parameters.
            obj: the object searched for.
            origin: the querying node (online).

        Returns:
            The QueryRecord.

        Raises:
            LocalProtocolError: unknown algorithm, or random walks on a two-tier overlay.
        """
        if spec.algorithm not in ALGORITHMS:
            raise LocalProtocolError(f"unknown algorithm {spec.algorithm!r}, expected one of {ALGORITHMS}")
        if spec.algorithm == "walk" and self.roles[origin] != FLOOD:
            raise LocalProtocolError("random walks run on flat (flood-mode) overlays only")
        t = self.now + QUERY_GAP
        payload = _query_payload(self.content.keyword(obj))
        rec = QueryRecord(obj, origin, t, _query_words(payload), payload, spec)
        rec.visited.add(origin)
        if spec.algorithm == "flood":
            self._originate(t, rec, spec.ttl)
        elif spec.algorithm == "ring":
            ttls = list(range(RING_START, spec.ttl + 1, RING_STEP))
            if ttls[-1] != spec.ttl:
                ttls.append(spec.ttl)
            self._ring(t, rec, ttls)
        elif spec.algorithm == "walk":
            self._start_walk(t, rec)
        elif self.roles[origin] == LEAF:
            ups = self.adj[origin]
            if ups:
                rec.dq_node = ups[0]
                self._originate(t, rec, DQ_MAX_TTL, targets=(ups[0],))
        else:
            rec.dq_node = origin
            self._new_guid(t, rec)
            self._dq_start(t, rec, sender=None, hops=0)
        self.run()
        for guid in rec.guids:
            self._records.pop(guid, None)
            self._walkers.pop(guid, None)
        return rec

    def _new_guid(self, t: float, rec: QueryRecord) -> bytes:
        guid = self._guid()
        self.routers[rec.origin].register_own(guid, MSG_QUERY, t)
        self._records[guid] = rec
        rec.guids.append(guid)
        return guid

    def _originate(self, t: float, rec: QueryRecord, ttl: int, targets=None) -> None:
        """The querier sends its own query (new GUID) to `targets`, by default the Router's choice."""
        guid = self._new_guid(t, rec)
        if targets is None:
            targets = self.routers[rec.origin].route_query_targets(None, rec.words, ttl)
        raw = build(guid, MSG_QUERY, ttl, 0, rec.payload)
        for target in targets:
            self._send(t, rec.origin, target, raw)
        rec.query_msgs += len(targets)

    def _ring(self, t: float, rec: QueryRecord, ttls: list[int]) -> None:
        if rec.hits or not ttls or not self.online[rec.origin]:
            return
        ttl = ttls.pop(0)
        self._originate(t, rec, ttl)
        self._timer(t + self._wait(ttl), lambda now: self._ring(now, rec, ttls))

    def _start_walk(self, t: float, rec: QueryRecord) -> None:
        nbrs = self.adj[rec.origin]
        if not nbrs:
            return
        k = rec.spec.walkers
        firsts = self.rng.sample(nbrs, k) if len(nbrs) >= k else self.rng.choices(nbrs, k=k)
        for first in firsts:
            guid = self._new_guid(t, rec)
            self._walkers[guid] = [1]
            # The walk's length lives in the simulator; the header stays a valid TTL 2 query.
            self._send(t, rec.origin, first, build(guid, MSG_QUERY, 2, 0, rec.payload))
            rec.query_msgs += 1

    def _walk(self, t: float, node: int, raw: bytes, rec: QueryRecord, walker: list[int]) -> None:
        """One walker arrived at `node` after walker[0] steps: answer, stop, or step on."""
        steps = walker[0]
        objs = self.content.node_objects.get(node)
        if objs and rec.obj in objs and node != rec.origin:
            rec.hit_msgs += 1  # out-of-band answer straight to the querier
            self._timer(t + self.latency, lambda now: self._record_hit(now, rec, steps, 1))
            return
        spec = rec.spec
        if steps >= spec.max_steps:
            return
        if steps % spec.check_every == 0:
            rec.checks += 1
            if rec.hits:
                return
        walker[0] = steps + 1
        self._send(t, node, self.rng.choice(self.adj[node]), raw)
        rec.query_msgs += 1

    def _dq_start(self, t: float, rec: QueryRecord, sender: int | None, hops: int) -> None:
        """Dynamic querying at rec.dq_node: leaves first, a TTL-2 probe, then one link at a time."""
        node = rec.dq_node
        router = self.routers[node]
        guid = rec.guids[0]
        leaves = [p for p in router.route_query_targets(sender, rec.words, 1) if self.roles[p] == LEAF]
        raw1 = build(guid, MSG_QUERY, 1, hops, rec.payload)
        for leaf in leaves:
            self._send(t, node, leaf, raw1)
        rec.query_msgs += len(leaves)
        ups = [p for p in self.adj[node] if self.roles[p] != LEAF and p != sender]
        self.rng.shuffle(ups)
        probe, rec.dq_pending = ups[:DQ_PROBE_CONNS], ups[DQ_PROBE_CONNS:]
        raw = build(guid, MSG_QUERY, DQ_PROBE_TTL, hops, rec.payload)
        for up in probe:
            self._send(t, node, up, raw)
            rec.dq_hosts += branch_horizon(len(self.adj[up]), DQ_PROBE_TTL)
        rec.query_msgs += len(probe)
        self._timer(t + self._wait(DQ_PROBE_TTL + hops), lambda now: self._dq_step(now, rec, sender, hops))

    def _dq_step(self, t: float, rec: QueryRecord, sender: int | None, hops: int) -> None:
        node = rec.dq_node
        target = rec.spec.dq_target
        if rec.dq_results >= target or not rec.dq_pending or not self.online[node]:
            return
        up = rec.dq_pending.pop(0)
        degree = len(self.adj[up])
        if rec.dq_results == 0:
            ttl = DQ_MAX_TTL
        else:
            needed = (target - rec.dq_results) * rec.dq_hosts / rec.dq_results
            ttl = next(
                (x for x in range(1, DQ_MAX_TTL + 1) if branch_horizon(degree, x) >= needed), DQ_MAX_TTL
            )
        if up in self.routers[node].route_query_targets(sender, rec.words, ttl):
            self._send(t, node, up, build(rec.guids[0], MSG_QUERY, ttl, hops, rec.payload))
            rec.query_msgs += 1
        rec.dq_hosts += branch_horizon(degree, ttl)
        self._timer(t + self._wait(ttl + hops), lambda now: self._dq_step(now, rec, sender, hops))

    # --- churn -----------------------------------------------------------------------------

    def set_churn(self, rate: float) -> None:
        """Let nodes leave and join during the run.

        Args:
            rate: churn events per virtual second (Poisson); each event takes one random
                online node offline (its neighbours remove_peer it) and brings one offline
                node back with a fresh Router, linked to as many random online nodes of
                the right role as it had links at the start.
        """
        self.churn_rate = rate
        self._next_churn = self.now + self._churn_rng.expovariate(rate) if rate > 0 else math.inf

    def _churn_until(self, t: float) -> None:
        rng = self._churn_rng
        while self._next_churn <= t:
            self._leave(self._pick_online(rng, None))
            if self._offline:
                self._join(self._offline.pop(rng.randrange(len(self._offline))))
            self.churn_events += 1
            self._next_churn += rng.expovariate(self.churn_rate)

    def _pick_online(self, rng: random.Random, role: int | None) -> int:
        """A random online node (of `role` when given); rejection sampling, the network is mostly online."""
        while True:
            v = rng.randrange(self.n)
            if self.online[v] and (role is None or self.roles[v] == role):
                return v

    def _leave(self, v: int) -> None:
        self.online[v] = 0
        for u in self.adj[v]:
            self.adj[u].remove(v)
            self.routers[u].remove_peer(v)
            if self.roles[u] == ULTRAPEER and self.roles[v] == LEAF:
                self._rebuild_up_table(u)
        self.adj[v] = []
        self.routers[v] = None
        self._offline.append(v)

    def _join(self, v: int) -> None:
        self.online[v] = 1
        self.routers[v] = self._new_router(v)
        role = self.roles[v]
        peer_role = ULTRAPEER if role != FLOOD else None
        for _ in range(self._join_degree[v]):
            u = self._pick_online(self._churn_rng, peer_role)
            if u == v or u in self.adj[v]:
                continue
            self.adj[v].append(u)
            self.adj[u].append(v)
            self._attach(v, u)
            self._attach(u, v)
            if role == LEAF:
                self._rebuild_up_table(u)
        if role == ULTRAPEER:
            self._rebuild_up_table(v)

    # --- workloads -------------------------------------------------------------------------

    def draw_origin(self, obj: int, rng: random.Random | None = None) -> int:
        """A random online querier that does not itself hold `obj` (when one can be found)."""
        rng = rng or self.rng
        holders = self.content.node_objects
        v = self._pick_online(rng, None)
        for _ in range(MAX_ORIGIN_DRAWS):
            if obj not in holders.get(v, ()):
                break
            v = self._pick_online(rng, None)
        return v

    def run_queries(
        self, spec: SearchSpec, count: int, workload_seed: int | None = None
    ) -> list[QueryRecord]:
        """Run `count` queries one after another: Zipf-drawn object, random online querier.

        Args:
            spec: the search algorithm.
            count: number of queries.
            workload_seed: when given, objects and queriers are drawn from their own RNG
                seeded with it, so several algorithms can be compared on the same queries.

        Returns:
            One QueryRecord per query.
        """
        draw_rng = self.rng if workload_seed is None else random.Random(workload_seed)
        out = []
        for _ in range(count):
            obj = self.content.draw(draw_rng)
            out.append(self.query(spec, obj, self.draw_origin(obj, draw_rng)))
        return out
