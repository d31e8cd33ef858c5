"""Simulated overlays and content for gnut.sim.engine: topologies, replication rules, sparse QRP tables."""

from __future__ import annotations

import math
import random
from bisect import bisect_left
from dataclasses import dataclass
from itertools import accumulate

from gnut.errors import LocalProtocolError
from gnut.protocol import qrp
from gnut.protocol.routing import PeerRole

# A simulated QRP table has 2**16 slots, like GnutellaBun's leaf tables.
SIM_QRP_BITS = 16


def horizon(degree: int, ttl: int) -> int:
    """Nodes a flood reaches on a tree where every node has `degree` links: d * sum_{i<ttl} (d-1)^i.

    Args:
        degree: links per node (>= 1).
        ttl: TTL of the querier's copies.

    Returns:
        The number of nodes reached, the querier excluded (= messages sent, no duplicates).
    """
    return degree * sum((degree - 1) ** i for i in range(ttl))


def last_hop_share(degree: int, ttl: int) -> float:
    """Share of the nodes a tree-like flood reaches that are reached on its last hop.

    Args:
        degree: links per node.
        ttl: TTL of the querier's copies (>= 1).

    Returns:
        d (d-1)^(ttl-1) / horizon(d, ttl): 0.80 at degree 6 TTL 7, 0.968 at degree 32 TTL 3.
    """
    return degree * (degree - 1) ** (ttl - 1) / horizon(degree, ttl)


# --- topologies ---------------------------------------------------------------------------

FLOOD, ULTRAPEER, LEAF = 0, 1, 2
_ROLE_MODES = {FLOOD: "flood", ULTRAPEER: "ultrapeer", LEAF: "leaf"}
_PEER_ROLES = {FLOOD: PeerRole.FLOOD, ULTRAPEER: PeerRole.ULTRAPEER, LEAF: PeerRole.LEAF}


@dataclass(slots=True)
class Topology:
    """An overlay: adjacency lists (node ids 0..n-1) and one role byte per node (FLOOD, ULTRAPEER, LEAF)."""

    name: str
    adj: list[list[int]]
    roles: bytearray

    @property
    def n(self) -> int:
        """Number of nodes."""
        return len(self.adj)

    def mean_degree(self) -> float:
        """Mean number of links per node."""
        return sum(len(a) for a in self.adj) / max(1, len(self.adj))


def _flat(name: str, n: int, edges) -> Topology:
    adj: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        if a != b and b not in adj[a]:
            adj[a].append(b)
            adj[b].append(a)
    return Topology(name, adj, bytearray(n))


def ring(n: int) -> Topology:
    """A cycle of n >= 3 nodes, node i linked to i-1 and i+1."""
    if n < 3:
        raise LocalProtocolError(f"a ring needs at least 3 nodes, got {n}")
    return _flat(f"ring{n}", n, ((i, (i + 1) % n) for i in range(n)))


def star(n: int) -> Topology:
    """Node 0 linked to each of nodes 1..n-1."""
    return _flat(f"star{n}", n, ((0, i) for i in range(1, n)))


def complete(n: int) -> Topology:
    """Every pair of the n nodes linked."""
    return _flat(f"complete{n}", n, ((a, b) for a in range(n) for b in range(a + 1, n)))


def regular_tree(degree: int, depth: int, role: int = FLOOD) -> Topology:
    """The tree where the root and every inner node have `degree` links, leaves at distance `depth`.

    Node 0 is the root; a flood from it with TTL <= depth follows horizon() exactly.
    `role` (FLOOD or ULTRAPEER) is given to every node.
    """
    edges = []
    frontier = [0]
    n = 1
    for level in range(depth):
        nxt = []
        for parent in frontier:
            for _ in range(degree if level == 0 else degree - 1):
                edges.append((parent, n))
                nxt.append(n)
                n += 1
        frontier = nxt
    topo = _flat(f"tree-d{degree}-h{depth}", n, edges)
    topo.roles = bytearray([role]) * n
    return topo


def from_networkx(name: str, graph) -> Topology:
    """Convert a networkx graph whose nodes are 0..n-1 into a flat (all FLOOD) Topology."""
    return _flat(name, graph.number_of_nodes(), graph.edges())


def erdos_renyi(n: int, mean_degree: float, seed: int) -> Topology:
    """G(n, p) random graph with p = mean_degree / (n - 1) (networkx fast_gnp_random_graph)."""
    import networkx as nx

    return from_networkx(f"random{n}", nx.fast_gnp_random_graph(n, mean_degree / (n - 1), seed=seed))


def power_law(n: int, m: int, seed: int) -> Topology:
    """Barabasi-Albert preferential attachment graph, m links per new node (mean degree ~2m)."""
    import networkx as nx

    return from_networkx(f"powerlaw{n}", nx.barabasi_albert_graph(n, m, seed=seed))


def random_regular(n: int, degree: int, seed: int) -> Topology:
    """Random `degree`-regular graph (networkx random_regular_graph): tree-like for small TTLs."""
    import networkx as nx

    return from_networkx(f"regular{n}-d{degree}", nx.random_regular_graph(degree, n, seed=seed))


def two_tier(n: int, ultrapeers: int, up_degree: int, leaf_links: int, seed: int) -> Topology:
    """Ultrapeer/leaf overlay: a random up_degree-regular ultrapeer graph, each leaf on leaf_links ultrapeers.

    Nodes 0..ultrapeers-1 are ultrapeers, the rest leaves.
    """
    import networkx as nx

    if not 0 < ultrapeers < n or leaf_links > ultrapeers:
        raise LocalProtocolError(f"bad two-tier shape n={n} ultrapeers={ultrapeers} leaf_links={leaf_links}")
    rng = random.Random(seed)
    top = from_networkx("", nx.random_regular_graph(up_degree, ultrapeers, seed=seed))
    adj = top.adj + [[] for _ in range(n - ultrapeers)]
    for leaf in range(ultrapeers, n):
        for up in rng.sample(range(ultrapeers), leaf_links):
            adj[leaf].append(up)
            adj[up].append(leaf)
    roles = bytearray([ULTRAPEER]) * ultrapeers + bytearray([LEAF]) * (n - ultrapeers)
    return Topology(f"twotier{n}-u{ultrapeers}-d{up_degree}", adj, roles)


# --- content ------------------------------------------------------------------------------

REPLICATIONS = ("uniform", "proportional", "sqrt")


@dataclass(slots=True)
class Content:
    """Objects placed on nodes and the Zipf popularity queries are drawn from."""

    holders: list[list[int]]  # object id -> nodes holding a copy
    node_objects: dict[int, set[int]]  # node -> object ids it holds (absent = none)
    cumulative: list[float]  # cumulative query probability by object id

    def keyword(self, obj: int) -> str:
        """The one search word naming object `obj` (also its file name's stem)."""
        return f"object{obj:05d}"

    def draw(self, rng: random.Random) -> int:
        """Draw a queried object id by Zipf popularity."""
        return min(bisect_left(self.cumulative, rng.random() * self.cumulative[-1]), len(self.holders) - 1)


def place_content(
    n_nodes: int,
    n_objects: int,
    replication: str,
    mean_replicas: float,
    seed: int,
    *,
    alpha: float = 1.0,
    eligible: list[int] | None = None,
) -> Content:
    """Place copies of n_objects objects with uniform, proportional or square-root replication.

    Strategy: query rate q_i ~ 1 / i^alpha (Zipf); object i gets r_i ~ 1, q_i or sqrt(q_i)
    copies scaled so that the mean is mean_replicas, each r_i clamped to 1..len(eligible),
    each copy on a distinct random eligible node (Cohen & Shenker, SIGCOMM 2002).

    Args:
        n_nodes: nodes in the overlay.
        n_objects: number of distinct objects.
        replication: "uniform", "proportional" or "sqrt".
        mean_replicas: mean copies per object.
        seed: RNG seed.
        alpha: Zipf exponent of query popularity.
        eligible: nodes that may hold copies (default: all).

    Returns:
        The Content.

    Raises:
        LocalProtocolError: unknown replication scheme or bad sizes.
    """
    if replication not in REPLICATIONS:
        raise LocalProtocolError(f"unknown replication {replication!r}, expected one of {REPLICATIONS}")
    if n_objects < 1 or mean_replicas <= 0:
        raise LocalProtocolError(f"bad content sizes n_objects={n_objects} mean_replicas={mean_replicas}")
    rng = random.Random(seed)
    pool = list(range(n_nodes)) if eligible is None else list(eligible)
    q = [1.0 / (i + 1) ** alpha for i in range(n_objects)]
    weights = {"uniform": [1.0] * n_objects, "proportional": q, "sqrt": [math.sqrt(x) for x in q]}[
        replication
    ]
    scale = mean_replicas * n_objects / sum(weights)
    holders = []
    node_objects: dict[int, set[int]] = {}
    for obj, w in enumerate(weights):
        copies = min(len(pool), max(1, round(w * scale)))
        nodes = rng.sample(pool, copies)
        holders.append(nodes)
        for node in nodes:
            node_objects.setdefault(node, set()).add(obj)
    return Content(holders, node_objects, list(accumulate(q)))


class SlotMatcher:
    """A node's QRP table stored sparsely: the set of present slots of a 2**bits table.

    Same hash and same words (qrp.keywords of each file name) as a qrp table of that
    size, so it matches (and mismatches) exactly as the real table would, in a few
    hundred bytes instead of 2**bits.
    """

    __slots__ = ("bits", "slots")

    def __init__(self, bits: int = SIM_QRP_BITS) -> None:
        self.bits = bits
        self.slots: set[int] = set()

    def add_name(self, name: str) -> None:
        """Add the QRP keywords of one shared file name."""
        for word in qrp.keywords(name):
            self.slots.add(qrp.qrp_hash(word, self.bits))

    def matches(self, words) -> bool:
        """True when every routed word's slot is present (and there is at least one word)."""
        if not words:
            return False
        slots = self.slots
        bits = self.bits
        return all(qrp.qrp_hash(w, bits) in slots for w in words)
