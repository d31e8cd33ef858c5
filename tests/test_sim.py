"""Tests for gnut.sim.engine: exact message counts on small overlays computed by hand, and reproducibility."""

from __future__ import annotations

import pytest

from gnut.errors import LocalProtocolError
from gnut.protocol.routing import DropReason
from gnut.sim import engine as sim

NO_OBJECT = sim.Content(holders=[[]], node_objects={}, cumulative=[1.0])


def content_at(*holders: int) -> sim.Content:
    """Object 0 held by `holders`."""
    return sim.Content(holders=[list(holders)], node_objects={h: {0} for h in holders}, cumulative=[1.0])


def flood(topo: sim.Topology, ttl: int, origin: int = 0, content: sim.Content = NO_OBJECT, **kw):
    s = sim.Simulator(topo, content, seed=7, **kw)
    return s, s.query(sim.SearchSpec("flood", ttl=ttl), 0, origin)


def ring_expected(n: int, ttl: int) -> tuple[int, int]:
    """(messages, duplicates) of a flood on a ring, by hand: two waves that may meet."""
    if 2 * ttl <= n - 1:
        return 2 * ttl, 0  # two waves of ttl hops each, no overlap
    if n % 2:  # the waves reach the two middle nodes at once, each relays one copy across
        return n + 1, 2
    # n even: both waves reach the antipode n/2; it relays one more copy if TTL is left
    extra = 1 if n // 2 < ttl else 0
    return n + extra, 1 + extra


@pytest.mark.parametrize("n,ttl", [(10, 3), (10, 5), (10, 7), (9, 4), (9, 5), (9, 7), (30, 7), (4, 2)])
def test_ring_flood_exact(n, ttl):
    s, rec = flood(sim.ring(n), ttl)
    msgs, dups = ring_expected(n, ttl)
    assert len(rec.visited) - 1 == min(2 * ttl, n - 1)
    assert rec.query_msgs == msgs
    assert rec.duplicates == dups
    assert rec.router_duplicates == dups
    assert sum(r.drops[DropReason.DUPLICATE] for r in s.routers) == dups
    assert rec.hits == 0 and rec.hit_msgs == 0


def test_ring_hit_routes_back_hop_by_hop():
    s, rec = flood(sim.ring(12), ttl=4, content=content_at(3))
    assert rec.query_msgs == 8
    assert rec.hits == 1
    assert rec.hit_msgs == 3  # the QUERYHIT crosses the 3 links back to the querier
    assert rec.first_hit_hops == 3
    assert rec.first_hit_time - rec.start == pytest.approx(6 * sim.DEFAULT_LATENCY)


def test_ring_hit_out_of_horizon_is_not_found():
    _, rec = flood(sim.ring(12), ttl=2, content=content_at(3))
    assert rec.hits == 0 and rec.hit_msgs == 0 and rec.query_msgs == 4


@pytest.mark.parametrize("ttl,origin,msgs", [(1, 1, 1), (2, 1, 7), (5, 1, 7), (1, 0, 7), (3, 0, 7)])
def test_star(ttl, origin, msgs):
    _, rec = flood(sim.star(8), ttl, origin)
    assert rec.query_msgs == msgs
    assert rec.duplicates == 0
    assert len(rec.visited) - 1 == msgs


@pytest.mark.parametrize("n", [3, 5, 8])
def test_complete_graph_duplicates(n):
    s, rec = flood(sim.complete(n), ttl=2)
    # n-1 first copies, then each of them relays to the n-2 others: all duplicates.
    assert rec.query_msgs == (n - 1) ** 2
    assert rec.duplicates == rec.router_duplicates == (n - 1) * (n - 2)
    assert s.routers[0].drops[DropReason.OWN_MESSAGE] == 0
    assert sim.summarize([rec], n)["dup_pct"] == pytest.approx(100 * (n - 2) / (n - 1))


@pytest.mark.parametrize("degree,depth,ttl", [(3, 5, 1), (3, 5, 3), (3, 5, 5), (4, 4, 4), (6, 4, 2)])
def test_tree_matches_horizon_formula(degree, depth, ttl):
    _, rec = flood(sim.regular_tree(degree, depth), ttl)
    assert rec.query_msgs == len(rec.visited) - 1 == sim.horizon(degree, ttl)
    assert rec.duplicates == 0
    assert rec.last_hop_visits == degree * (degree - 1) ** (ttl - 1)


def test_horizon_and_last_hop_numbers():
    assert sim.horizon(4, 3) == 4 * (1 + 3 + 9)
    assert sim.last_hop_share(6, 7) == pytest.approx(0.80, abs=0.001)
    assert sim.last_hop_share(32, 3) == pytest.approx(0.968, abs=0.001)
    assert sim.branch_horizon(6, 3) == 1 + 5 + 25


def test_walkers_without_hit_walk_every_step():
    k, steps = 4, 50
    s = sim.Simulator(sim.ring(20), NO_OBJECT, seed=3)
    rec = s.query(sim.SearchSpec("walk", walkers=k, max_steps=steps), 0, 0)
    assert rec.query_msgs == k * steps
    assert rec.checks == k * (steps // sim.CHECK_EVERY)
    assert rec.hits == 0
    # A walk revisits nodes: the Routers see those as duplicates of that walker's GUID.
    assert rec.router_duplicates > 0
    assert rec.received == rec.query_msgs


def test_single_walker_stops_at_the_hit():
    s = sim.Simulator(sim.ring(20), content_at(10), seed=5)
    rec = s.query(sim.SearchSpec("walk", walkers=1, max_steps=10_000), 0, 0)
    assert rec.hits == 1 and rec.hit_msgs == 1
    assert rec.query_msgs == rec.first_hit_hops >= 10


def test_walkers_with_hit_stop_within_check_interval():
    k = 8
    topo = sim.erdos_renyi(300, 4, seed=1)
    s = sim.Simulator(topo, content_at(*range(50, 60)), seed=2)
    rec = s.query(sim.SearchSpec("walk", walkers=k, max_steps=10_000), 0, 0)
    assert rec.hits >= 1
    # Every walker stops at its first check-back after the hit reached the querier.
    bound_steps = rec.first_hit_hops + 1 + 2 * sim.CHECK_EVERY + int(rec.first_hit_time - rec.start)
    assert rec.query_msgs <= k * (bound_steps + rec.first_hit_hops)


def test_expanding_ring_stops_at_first_ring_with_a_hit():
    s = sim.Simulator(sim.ring(40), content_at(3), seed=1)
    rec = s.query(sim.SearchSpec("ring", ttl=7), 0, 0)
    # Rings of TTL 1 (2 msgs) and 3 (6 msgs) are sent; the hit at distance 3 stops TTL 5.
    assert rec.query_msgs == 2 + 6
    assert len(rec.guids) == 2
    assert rec.duplicates == 2  # the two neighbours receive the second ring again
    assert rec.hits == 1


def test_two_tier_qrp_reaches_only_matching_leaf():
    # Ultrapeer 0 with leaves 1..5; leaf 3 holds the object, leaf 1 asks.
    adj = [[1, 2, 3, 4, 5]] + [[0] for _ in range(5)]
    topo = sim.Topology("up-star", adj, bytearray([sim.ULTRAPEER] + [sim.LEAF] * 5))
    s, rec = flood(topo, ttl=3, origin=1, content=content_at(3))
    assert rec.query_msgs == 2  # leaf -> ultrapeer -> matching leaf only
    assert rec.hit_msgs == 2 and rec.hits == 1
    assert s.routers[0].qrp_skips == 3


def test_two_tier_last_hop_qrp_between_ultrapeers():
    # Ultrapeers 0-1-2 in a line, 0 and 2 also linked to 3; leaf 4 on 0 asks, leaf 5 on 2 holds.
    adj = [[1, 3, 4], [0, 2], [1, 3, 5], [0, 2], [0], [2]]
    roles = bytearray([sim.ULTRAPEER] * 4 + [sim.LEAF] * 2)
    s, rec = flood(sim.Topology("line", adj, roles), ttl=3, origin=4, content=content_at(5))
    # leaf->0 (1); 0 relays TTL 2 to 1 and 3 (2); last hop: 1 and 3 send only to 2,
    # whose table holds leaf 5's words (2); 2 hands it to leaf 5 (1).
    assert rec.query_msgs == 6
    assert rec.hits >= 1
    assert s.routers[1].qrp_skips == 0


def test_dynamic_query_stops_when_enough_results():
    topo = sim.random_regular(400, 8, seed=4)
    popular = sim.Simulator(topo, content_at(*range(1, 400, 2)), seed=1)
    rec = popular.query(sim.SearchSpec("dq", dq_target=3), 0, 0)
    assert rec.hits >= 3
    flood_rec = sim.Simulator(topo, content_at(*range(1, 400, 2)), seed=1).query(
        sim.SearchSpec("flood", ttl=4), 0, 0
    )
    assert rec.query_msgs < flood_rec.query_msgs / 4


def test_content_replication_schemes():
    for scheme in sim.REPLICATIONS:
        c = sim.place_content(1000, 50, scheme, 10, seed=1)
        copies = [len(h) for h in c.holders]
        assert all(1 <= x <= 1000 for x in copies) and all(len(set(h)) == len(h) for h in c.holders)
        assert sum(copies) == pytest.approx(500, rel=0.1)
    prop = [len(h) for h in sim.place_content(1000, 50, "proportional", 10, seed=1).holders]
    root = [len(h) for h in sim.place_content(1000, 50, "sqrt", 10, seed=1).holders]
    assert prop[0] > root[0] > 10 and prop[-1] <= root[-1]
    with pytest.raises(LocalProtocolError):
        sim.place_content(10, 5, "zipf", 1, seed=1)


def test_slot_matcher_uses_the_real_qrp_hash():
    m = sim.SlotMatcher(bits=16)
    m.add_name("object00042.dat")
    assert m.matches(["object00042"])
    assert not m.matches(["object00043"])
    assert not m.matches([])


def run_mix(seed: int, churn: float = 0.0) -> list[dict]:
    topo = sim.erdos_renyi(500, 4, seed=seed)
    content = sim.place_content(500, 30, "sqrt", 3, seed=seed)
    s = sim.Simulator(topo, content, seed=seed, jitter=0.5)
    if churn:
        s.set_churn(churn)
    specs = [sim.SearchSpec("flood", ttl=4), sim.SearchSpec("walk", walkers=4), sim.SearchSpec("ring", ttl=5)]
    return [sim.summarize(s.run_queries(spec, 15), topo.n) for spec in specs]


def test_same_seed_same_metrics():
    assert run_mix(11) == run_mix(11)
    assert run_mix(11, churn=5.0) == run_mix(11, churn=5.0)
    assert run_mix(11) != run_mix(12)


def test_churn_keeps_the_overlay_consistent():
    topo = sim.erdos_renyi(300, 4, seed=2)
    s = sim.Simulator(topo, sim.place_content(300, 20, "uniform", 3, seed=2), seed=2)
    s.set_churn(20.0)
    s.run_queries(sim.SearchSpec("flood", ttl=3), 20)
    assert s.churn_events > 0
    for v in range(s.n):
        if s.online[v]:
            for u in s.adj[v]:
                assert s.online[u] and v in s.adj[u]
                assert s.routers[v].peer_role(u) is not None
        else:
            assert s.adj[v] == [] and s.routers[v] is None


def test_bad_requests_raise_local_errors():
    s = sim.Simulator(sim.ring(5), NO_OBJECT)
    with pytest.raises(LocalProtocolError):
        s.query(sim.SearchSpec("gossip"), 0, 0)
    with pytest.raises(LocalProtocolError):
        sim.ring(2)
    adj = [[1], [0]]
    up = sim.Simulator(sim.Topology("pair", adj, bytearray([sim.ULTRAPEER, sim.LEAF])), NO_OBJECT)
    with pytest.raises(LocalProtocolError):
        up.query(sim.SearchSpec("walk"), 0, 1)
