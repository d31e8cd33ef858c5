"""Small seeded cases of the relay and network benchmarks: their building blocks and real tiny runs."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import networkx as nx
import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import bench_network as bn  # noqa: E402

from gnut.constants import MSG_QUERY  # noqa: E402
from gnut.runtime import loops  # noqa: E402


def _relay_module():
    # The relay load generator counts with the Cython FrameReader: import it only in Cython runs.
    return importlib.import_module("bench_relay")


# --- network bench: construction ----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["random", "powerlaw", "tree"])
@pytest.mark.parametrize("n", [2, 5, 40])
def test_topology_is_connected_and_simple(kind, n):
    import random

    edges = bn.topology(kind, n, random.Random(n))
    assert all(a < b for a, b in edges)
    assert len(set(edges)) == len(edges)
    g = nx.Graph(edges)
    assert sorted(g.nodes) == list(range(n))
    assert nx.is_connected(g)
    if kind == "tree":
        assert len(edges) == n - 1
    if kind == "random" and n == 40:
        assert len(edges) == 40 * bn.MEAN_DEGREE // 2 + nx.number_connected_components(g) - 1


def test_topology_rejects_bad_input():
    import random

    with pytest.raises(ValueError, match="unknown topology"):
        bn.topology("mesh", 10, random.Random(1))
    with pytest.raises(ValueError, match="at least 2"):
        bn.topology("random", 1, random.Random(1))


def test_replication_rules_order_and_budget():
    pop = bn.popularity(50)
    assert abs(sum(pop) - 1.0) < 1e-9 and pop == sorted(pop, reverse=True)
    uniform = bn.replicas("uniform", pop, 50)
    prop = bn.replicas("proportional", pop, 50)
    sqrt = bn.replicas("sqrt", pop, 50)
    assert set(uniform) == {bn.COPIES_PER_ITEM}
    # The popular item: proportional gives it most copies, square-root fewer, uniform fewest.
    assert prop[0] > sqrt[0] > uniform[0]
    assert prop[-1] == 1 and sqrt[-1] >= prop[-1]
    for copies in (uniform, prop, sqrt):
        assert all(1 <= c <= 50 for c in copies)
    with pytest.raises(ValueError, match="replication"):
        bn.replicas("random", pop, 50)


def test_place_items_uses_distinct_holders():
    import random

    copies = [5, 3, 1, 8]
    placed = bn.place_items(copies, list(range(6)), random.Random(3))
    for item, k in enumerate(copies):
        holders = [node for node, items in placed.items() if item in items]
        assert len(holders) == min(k, 6)
        assert all(placed[node].count(item) == 1 for node in holders)


def test_item_keywords_are_not_prefixes_of_each_other():
    words = [bn.item_keyword(i) for i in range(200)]
    assert not any(a != b and b.startswith(a) for a in words for b in words)


def test_summarize_medians_and_spread():
    rows = [
        {
            "implementation": "cython",
            "topology": "tree",
            "mode": "flood",
            "replication": "sqrt",
            "nodes": 5,
            "links": 4,
            **{k: v for k in bn.FIGURES},
        }
        for v in (1.0, 2.0, 4.0)
    ]
    (s,) = bn.summarize(rows)
    assert s["seeds"] == 3 and s["burst_qps"] == 2.0 and s["burst_qps_spread_pct"] == 150.0


# --- network bench: real tiny networks on loopback ------------------------------------------------
def _measure(spec: bn.Spec, tmp_path: Path) -> dict:
    return loops.run(bn.measure_network(spec, tmp_path), "uvloop")


def test_flood_on_a_tree_has_no_duplicates(tmp_path):
    row = _measure(bn.Spec(10, "tree", "flood", "uniform", paced=6, burst=6, seed=4), tmp_path)
    assert row["links"] == 9
    assert row["dup_ratio"] == 0.0
    # Each node takes each query at most once: at most n-1 QUERY copies per query.
    assert 0 < row["query_msgs_per_query"] <= 9
    assert row["success_rate"] > 0 and row["burst_success_rate"] > 0
    assert row["first_hit_ms_p50"] > 0 and row["burst_qps"] > 0
    assert not list(tmp_path.iterdir())  # the network's homes are removed


def test_flood_on_a_random_graph_sees_duplicates_and_hybrid_sends_fewer(tmp_path):
    flood = _measure(bn.Spec(20, "random", "flood", "sqrt", paced=8, burst=0, seed=2), tmp_path)
    hybrid = _measure(bn.Spec(20, "random", "hybrid", "sqrt", paced=8, burst=0, seed=2), tmp_path)
    assert flood["dup_ratio"] > 0.2  # cycles: a node hears most queries from several links
    assert flood["success_rate"] > 0.5
    assert hybrid["ultrapeers"] == 4 and hybrid["links"] > 16
    assert hybrid["success_rate"] > 0.5
    assert hybrid["msgs_per_query"] < flood["msgs_per_query"]
    assert flood["burst_qps"] is None


# --- relay bench ----------------------------------------------------------------------------------
@pytest.mark.needs_cython
def test_relay_stream_is_valid_query_traffic():
    br = _relay_module()
    from gnut._fastpath import FrameReader

    payloads = br.query_payloads(50, seed=3)
    assert payloads == br.query_payloads(50, seed=3)
    stream = br.build_stream(payloads, 500, seed=9)
    msgs = FrameReader().feed(stream)
    assert len(msgs) == 500
    assert {m.type for m in msgs} == {MSG_QUERY}
    assert all(2 <= m.ttl and m.ttl + m.hops <= 5 for m in msgs)
    assert len({m.guid for m in msgs}) == 500
    assert br.build_stream(payloads, 500, seed=10) != stream


@pytest.mark.needs_cython
def test_relay_summarize_stacks():
    br = _relay_module()
    raw = [
        "<module> (gnut/__main__.py:5);Runner.run (asyncio/runners.py:118);"
        "Peer.data_received (gnut/peer.py:101);Node.on_frames (gnut/node.py:356);Router.route (gnut/routing.py:493) 6",
        "<module> (gnut/__main__.py:5);Peer.data_received (gnut/peer.py:101);Node.flush (gnut/node.py:346) 2",
        "garbage",
        "<module> (gnut/__main__.py:5);Runner.run (asyncio/runners.py:118) 2",
    ]
    s = br.summarize_stacks(raw)
    assert s["samples"] == 10
    incl = {r["function"]: r["pct"] for r in s["inclusive"]}
    own = {r["function"]: r["pct"] for r in s["self"]}
    assert incl["Peer.data_received (peer.py)"] == 80.0 and incl["Router.route (routing.py)"] == 60.0
    assert incl["(outside data_received)"] == 20.0
    assert "Runner.run (runners.py)" not in incl  # above data_received: on every stack, not ranked
    assert own["Router.route (routing.py)"] == 60.0 and own["Runner.run (runners.py)"] == 20.0


@pytest.mark.needs_cython
@pytest.mark.parametrize("kind", ["null", "cython"])
def test_relay_round_through_a_real_process(kind, tmp_path):
    br = _relay_module()
    proc = br.RelayProcess(kind, tmp_path)
    try:
        links = br.open_links(proc.address, 1 + br.SINKS, wait_first_message=True)
        n = 3000
        fig = br.run_round(
            links[0], links[1:], br.build_stream(br.query_payloads(100), n, 5), n, kind != "null"
        )
        for link in links:
            link.sock.close()
        assert proc.rss_kb() > 0
    finally:
        proc.stop()
    assert fig["echoed"] == n // br.ECHO_EVERY
    # The null relay also relays the echoes (to the other three sinks); the node drops them as duplicates.
    expected = br.SINKS * n + (0 if kind == "cython" else (br.SINKS - 1) * fig["echoed"])
    assert fig["received"] == fig["expected"] == expected
    assert fig["loss_pct"] == 0.0 and fig["in_per_s"] > 0
    assert proc.proc.returncode == 0


# --- servent bench: the compiled load generator counts exactly --------------------------------------
@pytest.mark.needs_cython
@pytest.mark.parametrize("mode", ["flood", "ultrapeer"])
def test_servent_load_counts_every_relayed_query_exactly(tmp_path, mode):
    """A small round against a real gnut node: every sink sees each query once, nothing foreign."""
    bs = importlib.import_module("bench_servent")
    exe = bs.build_loader(tmp_path / "bin")
    templates = tmp_path / "templates.bin"
    bs.write_templates(templates)
    proc = bs.RelayProcess("cython", tmp_path, max_peers=16, mode=mode)
    try:
        result = bs.one_round(exe, templates, "127.0.0.1", proc.port, 3000, 77, None)
    finally:
        proc.stop()
    assert result["sent"] == 3000
    assert [(s["distinct"], s["dups"], s["foreign"], s["loss"]) for s in result["sinks"]] == [(3000, 0, 0, 0)] * 4


# --- host cache bench ---------------------------------------------------------------------------
def test_hostcache_bench_runs_small():
    import bench_hostcache as bh

    from gnut.runtime.hostcache import HostCache

    figures = bh._workloads(HostCache, 50, 1)
    assert set(figures) == {"new host (insert + evict)", "known host (refresh)", "refused (subnet full)"}
    table = bh.format_table({"capacity": 2000, "adds": 50, "now": figures})
    assert "| now | new host (insert + evict) |" in table
