"""Network benchmark: N real gnut nodes on loopback (flood and ultrapeer/leaf), end-to-end search figures."""

# Strategy
# --------
# Every node is a real gnut.runtime.node.Node with its own listening socket on 127.0.0.1, all in this
# process on one uvloop (50-200 nodes fit one core; the figures are therefore those of a
# network whose nodes share one CPU). A topology (random G(n, m) made connected, or
# Barabasi-Albert power-law) is dialled link by link. In "flood" mode every node is a flood
# node on the topology; in "hybrid" mode the topology joins the ultrapeers (UP_FRACTION of
# the nodes) and every other node is a leaf linked to LEAF_UPLINKS random ultrapeers (QRP
# tables, last-hop QRP, dynamic querying as the nodes do it). Distinct items (one unique
# keyword each) are placed as small shared files by a replication rule (uniform,
# proportional or square-root to the Zipf query popularity) on distinct random nodes.
#
# Two phases per network, each from random queriers (flood: any node; hybrid: leaves) asking
# for Zipf-chosen items through Node.searches.start() exactly as `gnut search` does:
#   * paced: one query every PACE seconds; per query the first-hit latency (time to the first
#     QUERYHIT at the querier) and success; over the phase the QUERY+QUERYHIT messages
#     received network-wide per query and the duplicate ratio (QUERY copies dropped as
#     duplicates / QUERY copies received), read from every node's Router counters;
#   * burst: BURST queries issued at once; queries per second end to end = BURST / time until
#     the network is quiet again (no message received anywhere for a quiet window).
# Runs are seeded; several seeds give medians and spreads. The implementation (cython or
# python fast path) is whatever gnut.fastpath selected; run() measures the Cython build here
# and the pure twin in a child process with GNUT_NO_EXTENSIONS=1, side by side.

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if str(REPO_DIR / "src") not in sys.path:
    sys.path.insert(0, str(REPO_DIR / "src"))

import networkx as nx  # noqa: E402

from gnut.constants import MSG_QUERY, MSG_QUERYHIT  # noqa: E402
from gnut.fastpath import IMPLEMENTATION  # noqa: E402
from gnut.protocol import routing as rt  # noqa: E402
from gnut.runtime import loops  # noqa: E402
from gnut.runtime.config import NodeConfig  # noqa: E402
from gnut.runtime.node import Node  # noqa: E402

# Hybrid mode: one node in five is an ultrapeer (a small network needs a dense core for the
# leaves to be reachable), each leaf keeps 2 ultrapeer links (LimeWire-family leaves keep 2-3).
UP_FRACTION = 0.2
LEAF_UPLINKS = 2
# Random topology: mean degree 4 (a classic 0.4 node kept 4 links); power-law: 2 links per
# new node (Barabasi-Albert m=2, mean degree ~4, hubs much higher).
MEAN_DEGREE = 4
BA_LINKS = 2
# Items and copies: as many items as nodes, 3 copies per item on average.
COPIES_PER_ITEM = 3
ZIPF_S = 1.0  # query popularity ~ 1/rank
REPLICATIONS = ("uniform", "proportional", "sqrt")
# Paced phase: one query every PACE seconds; a search counts hits until the phase ends.
PACE = 0.05
# The network is quiet when no node received a message for this long (longer in hybrid mode:
# a dynamic query waits DQ_HOP_WAIT per hop between its steps).
QUIET_FLOOD = 0.3
# Dynamic querying waits 2.4 s per hop by default, a wide-area figure; loopback answers in
# milliseconds, so the benchmark's ultrapeers wait this long instead.
DQ_HOP_WAIT = 0.25
# Seen-GUID and route tables per node: a run sees a few hundred query GUIDs per node, and the
# servent default (1M entries, ~32 MB each, preallocated by the Cython cache) would make 150
# in-process nodes cost ~10 GB.
NODE_TABLE_SIZE = 1 << 15
# Housekeeping period of the benchmark's nodes (QRP tables propagate on ticks).
TICK = 0.2
# Caps on waiting: links to come up, QRP tables to settle, a phase to drain.
LINK_TIMEOUT = 30.0
QRP_SETTLE = 3 * TICK + 0.5
DRAIN_TIMEOUT = 20.0
# Networks measured by run(): (nodes, topologies, modes, replications, paced queries, burst, seeds).
QUICK = {
    "nodes": 40,
    "topologies": ("random", "powerlaw"),
    "modes": ("flood", "hybrid"),
    "replications": ("sqrt",),
    "paced": 20,
    "burst": 50,
    "seeds": (1,),
}
FULL = {
    "nodes": 150,
    "topologies": ("random", "powerlaw"),
    "modes": ("flood", "hybrid"),
    "replications": ("uniform", "sqrt"),
    "paced": 60,
    "burst": 200,
    "seeds": (1, 2, 3),
}
# The pure-Python twin runs a subset of the grid (same nodes) for the side-by-side ratio.
PURE_SUBSET = {"topologies": ("random",), "modes": ("flood", "hybrid"), "replications": ("sqrt",)}
PURE_SUBSET_QUICK = PURE_SUBSET


@dataclasses.dataclass(frozen=True)
class Spec:
    """One network to build and measure."""

    nodes: int
    topology: str  # "random" | "powerlaw" | "tree"
    mode: str  # "flood" | "hybrid"
    replication: str  # one of REPLICATIONS
    paced: int  # queries in the paced phase
    burst: int  # queries in the burst phase (0: skip)
    seed: int


# --- network construction (pure functions: tested without sockets) -------------------------------
def topology(kind: str, n: int, rng: random.Random) -> list[tuple[int, int]]:
    """Edges of a connected graph on nodes 0..n-1.

    Args:
        kind: "random" (G(n, m) with mean degree MEAN_DEGREE, components joined), "powerlaw"
            (Barabasi-Albert with BA_LINKS links per new node) or "tree" (random recursive tree:
            no cycles, so a flood sees no duplicates: the baseline of the duplicate ratio).
        n: node count (>= 2).
        rng: the random source.

    Returns:
        Sorted (a, b) pairs with a < b, no duplicates.

    Raises:
        ValueError: unknown kind or n < 2.
    """
    if n < 2:
        raise ValueError("a network needs at least 2 nodes")
    seed = rng.randrange(2**31)
    if kind == "random":
        g = nx.gnm_random_graph(n, max(n - 1, n * MEAN_DEGREE // 2), seed=seed)
        comps = [sorted(c) for c in nx.connected_components(g)]
        for comp in comps[1:]:
            g.add_edge(rng.choice(comp), rng.choice(comps[0]))
    elif kind == "powerlaw":
        g = nx.barabasi_albert_graph(n, min(BA_LINKS, n - 1), seed=seed)
    elif kind == "tree":
        g = nx.Graph([(i, rng.randrange(i)) for i in range(1, n)])
    else:
        raise ValueError(f"unknown topology {kind!r}")
    return sorted((min(a, b), max(a, b)) for a, b in g.edges())


def popularity(items: int) -> list[float]:
    """Zipf query probabilities of `items` items (rank 1 first), summing to 1."""
    w = [1.0 / (r**ZIPF_S) for r in range(1, items + 1)]
    total = sum(w)
    return [x / total for x in w]


def replicas(rule: str, pop: list[float], nodes: int) -> list[int]:
    """Copies of each item under a replication rule, COPIES_PER_ITEM per item on average.

    Args:
        rule: "uniform" (same for all), "proportional" (to popularity) or "sqrt" (to its square
            root: Cohen and Shenker's optimum for random search).
        pop: query probabilities per item.
        nodes: the copies of one item go to distinct nodes, so at most this many.

    Returns:
        Copies per item, each in 1..nodes.

    Raises:
        ValueError: unknown rule.
    """
    if rule == "uniform":
        weights = [1.0] * len(pop)
    elif rule == "proportional":
        weights = list(pop)
    elif rule == "sqrt":
        weights = [math.sqrt(p) for p in pop]
    else:
        raise ValueError(f"unknown replication rule {rule!r}")
    budget = COPIES_PER_ITEM * len(pop)
    total = sum(weights)
    return [min(nodes, max(1, round(budget * w / total))) for w in weights]


def item_keyword(i: int) -> str:
    """The unique search word of item i (no item's word is a prefix of another's)."""
    return f"netbench{i:05d}x"


def place_items(copies: list[int], holders: list[int], rng: random.Random) -> dict[int, list[int]]:
    """Which node holds which items: item i on copies[i] distinct random holders.

    Returns:
        node -> item indexes.
    """
    out: dict[int, list[int]] = {}
    for item, k in enumerate(copies):
        for node in rng.sample(holders, min(k, len(holders))):
            out.setdefault(node, []).append(item)
    return out


# --- the live network ----------------------------------------------------------------------------
def _config(home: Path, mode: str, nodes: int) -> NodeConfig:
    kw = {
        "listen_host": "127.0.0.1",
        "listen_port": 0,
        "mode": mode,
        "home": home,
        "share_dirs": [home / "share"],
        "control": False,
        "save_hosts": False,
        "out_links": 0,
        "max_peers": nodes + 8,
        "max_leaves": nodes + 8,
    }
    known = {f.name for f in dataclasses.fields(NodeConfig)}
    for key, value in (
        ("dq_hop_wait", DQ_HOP_WAIT),
        ("seen_cache_size", NODE_TABLE_SIZE),
        ("route_table_size", NODE_TABLE_SIZE),
        # All nodes share 127.0.0.1: raise the per-address fairness limits (absent in older trees).
        ("max_links_per_ip", nodes + 8),
        ("max_links_per_24", nodes + 8),
        ("max_pending_per_ip", nodes + 8),
        ("max_http_per_ip", nodes + 8),
        ("upload_slots_per_host", 8),
    ):
        if key in known:
            kw[key] = value
    return NodeConfig(**kw)


def _established(node: Node) -> int:
    return sum(1 for p in node.peers.values() if p.established)


def _totals(nodes: list[Node]) -> tuple[int, int, int, int]:
    """(all messages received, QUERY received, QUERYHIT received, QUERY duplicates) network-wide."""
    total = q = h = d = 0
    for n in nodes:
        r = n.router
        total += sum(r.received.values())
        q += r.received[MSG_QUERY]
        h += r.received[MSG_QUERYHIT]
        d += r.drops[rt.DropReason.DUPLICATE]
    return total, q, h, d


async def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _quiet(nodes: list[Node], window: float) -> float:
    """Wait until no node received anything for `window` seconds; return when the last message came."""
    last = _totals(nodes)[0]
    last_change = time.perf_counter()
    deadline = last_change + DRAIN_TIMEOUT
    while time.perf_counter() - last_change < window and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
        now_total = _totals(nodes)[0]
        if now_total != last:
            last = now_total
            last_change = time.perf_counter()
    return last_change


class _Watch:
    """Records when the first hit of one search arrived."""

    def __init__(self, search, started: float) -> None:
        self.search = search
        self.started = started
        self.first: float | None = None
        self.queue = search.listen()
        self.task = asyncio.get_running_loop().create_task(self._wait())

    async def _wait(self) -> None:
        await self.queue.get()
        self.first = time.perf_counter()

    def close(self) -> None:
        self.task.cancel()
        if self.queue in self.search.listeners:
            self.search.listeners.remove(self.queue)


async def measure_network(spec: Spec, tmp: Path) -> dict:
    """Build the network of `spec` on loopback, run the paced and burst phases, tear it down.

    Args:
        spec: what to build and how many queries to run.
        tmp: a folder for the nodes' homes and shares.

    Returns:
        A row of figures (see format_table): nodes, links, success rates, first-hit latency
        percentiles, messages per query, duplicate ratio, burst queries per second.

    Raises:
        RuntimeError: links or QRP tables did not come up in time.
    """
    rng = random.Random(spec.seed)
    n = spec.nodes
    hybrid = spec.mode == "hybrid"
    n_up = max(2, round(n * UP_FRACTION)) if hybrid else n
    core = topology(spec.topology, n_up, rng)
    leaf_links = [
        (leaf, up) for leaf in range(n_up, n) for up in rng.sample(range(n_up), min(LEAF_UPLINKS, n_up))
    ]
    pop = popularity(n)
    holdings = place_items(replicas(spec.replication, pop, n), list(range(n)), rng)
    queriers = list(range(n_up, n)) if hybrid else list(range(n))
    root = tmp / f"net-{spec.topology}-{spec.mode}-{spec.replication}-{spec.seed}-{time.monotonic_ns()}"
    nodes: list[Node] = []
    t_build = time.perf_counter()
    try:
        for i in range(n):
            home = root / f"n{i}"
            (home / "share").mkdir(parents=True)
            for item in holdings.get(i, ()):
                (home / "share" / f"{item_keyword(item)}.dat").write_bytes(f"item {item}\n".encode())
            mode = ("ultrapeer" if i < n_up else "leaf") if hybrid else "flood"
            node = Node(_config(home, mode, n))
            if hasattr(node, "tick_interval"):
                node.tick_interval = TICK
            await node.start()
            nodes.append(node)
        want = [0] * n
        for a, b in core + leaf_links:
            want[a] += 1
            want[b] += 1
            nodes[a].dial(*nodes[b].address)
            await asyncio.sleep(0)
        await _wait(
            lambda: all(_established(x) >= w for x, w in zip(nodes, want, strict=True)),
            LINK_TIMEOUT,
            "links up",
        )
        if hybrid:

            def leaf_tables_in() -> bool:
                return all(
                    p.qrp is not None and p.qrp.table is not None
                    for up in nodes[:n_up]
                    for p in up.peers.values()
                    if p.role == rt.PeerRole.LEAF
                )

            await _wait(leaf_tables_in, LINK_TIMEOUT, "leaf QRP tables")
            await asyncio.sleep(QRP_SETTLE)  # ultrapeers exchange merged tables on their ticks
        build_s = time.perf_counter() - t_build
        quiet = QUIET_FLOOD if not hybrid else max(QUIET_FLOOD, 4 * DQ_HOP_WAIT)
        await _quiet(nodes, quiet)

        def pick() -> tuple[Node, int]:
            item = rng.choices(range(n), weights=pop)[0]
            return nodes[rng.choice(queriers)], item

        # Paced phase.
        t_paced = time.perf_counter()
        before = _totals(nodes)
        watches: list[_Watch] = []
        for _ in range(spec.paced):
            node, item = pick()
            watches.append(_Watch(node.searches.start(item_keyword(item)), time.perf_counter()))
            await asyncio.sleep(PACE)
        await _quiet(nodes, quiet)
        after = _totals(nodes)
        lat = sorted(w.first - w.started for w in watches if w.first is not None)
        paced_ok = len(lat)
        for w in watches:
            w.close()
        paced_s = time.perf_counter() - t_paced
        # Burst phase.
        burst_qps = burst_ok = burst_lat_p50 = hit_qps = burst_s = None
        if spec.burst:
            b_before = _totals(nodes)
            t0 = time.perf_counter()
            bw = []
            for _ in range(spec.burst):
                node, item = pick()
                bw.append(_Watch(node.searches.start(item_keyword(item)), t0))
            last = await _quiet(nodes, quiet)
            burst_s = time.perf_counter() - t0
            b_after = _totals(nodes)
            burst_qps = spec.burst / max(last - t0, 1e-9)
            b_lat = sorted(w.first - w.started for w in bw if w.first is not None)
            burst_ok = len(b_lat) / spec.burst
            # Answered queries per second: until the last first hit (hybrid: before the DQ's later steps).
            hit_qps = len(b_lat) / b_lat[-1] if b_lat else 0.0
            burst_lat_p50 = statistics.median(b_lat) if b_lat else None
            burst_msgs = (b_after[1] - b_before[1] + b_after[2] - b_before[2]) / spec.burst
            for w in bw:
                w.close()
    finally:
        t_stop = time.perf_counter()
        # All at once: a node's stop() waits (up to 2 s) for its peers to take their BYE.
        await asyncio.gather(*(node.stop() for node in nodes))
        stop_s = time.perf_counter() - t_stop
        shutil.rmtree(root, ignore_errors=True)
    q_msgs = after[1] - before[1]
    return {
        "nodes": n,
        "ultrapeers": n_up if hybrid else 0,
        "links": len(core) + len(leaf_links),
        "topology": spec.topology,
        "mode": spec.mode,
        "replication": spec.replication,
        "seed": spec.seed,
        "implementation": IMPLEMENTATION,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "build_s": build_s,
        "stop_s": stop_s,
        "paced_s": paced_s,
        "burst_s": burst_s,
        "paced_queries": spec.paced,
        "success_rate": paced_ok / spec.paced if spec.paced else None,
        "first_hit_ms_p50": 1000 * statistics.median(lat) if lat else None,
        "first_hit_ms_p90": 1000 * lat[min(len(lat) - 1, int(0.9 * len(lat)))] if lat else None,
        "msgs_per_query": (q_msgs + after[2] - before[2]) / spec.paced if spec.paced else None,
        "query_msgs_per_query": q_msgs / spec.paced if spec.paced else None,
        "dup_ratio": (after[3] - before[3]) / q_msgs if q_msgs else 0.0,
        "burst_queries": spec.burst,
        "burst_qps": burst_qps,
        "burst_answered_qps": hit_qps,
        "burst_success_rate": burst_ok,
        "burst_first_hit_ms_p50": 1000 * burst_lat_p50 if burst_lat_p50 is not None else None,
        "burst_msgs_per_query": burst_msgs if spec.burst else None,
    }


# --- the benchmark -------------------------------------------------------------------------------
def specs(grid: dict, subset: dict | None = None) -> list[Spec]:
    """Every Spec of a grid (QUICK or FULL), optionally restricted to a subset of its axes."""
    sub = subset or {}
    return [
        Spec(grid["nodes"], topo, mode, repl, grid["paced"], grid["burst"], seed)
        for topo in sub.get("topologies", grid["topologies"])
        for mode in sub.get("modes", grid["modes"])
        for repl in sub.get("replications", grid["replications"])
        for seed in sub.get("seeds", grid["seeds"])
    ]


def scratch_dir() -> Path:
    """A fresh folder for the nodes' homes, in memory when /dev/shm exists.

    Each node start saves its SHA-1 cache with fsync; on a busy disk 40-200 fsyncs cost
    seconds that have nothing to do with the network under test.
    """
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="gnut-bench-net-", dir=base))


async def _measure_all(items: list[Spec]) -> list[dict]:
    tmp = scratch_dir()
    try:
        return [await measure_network(s, tmp) for s in items]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure_specs(items: list[Spec]) -> list[dict]:
    """Measure each Spec in turn on a fresh uvloop (the fast path this process selected)."""
    return loops.run(_measure_all(items), "uvloop")


def _child(impl: str, quick: bool) -> subprocess.Popen:
    # Each implementation runs in its own process (the fast path is chosen once, at import);
    # the two run at the same time, one per core, under the same conditions.
    env = dict(os.environ, PYTHONPATH=str(REPO_DIR / "src"))
    env.pop("GNUT_NO_EXTENSIONS", None)
    if impl == "python":
        env["GNUT_NO_EXTENSIONS"] = "1"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--rows-json", impl] + (
        ["--quick"] if quick else []
    )
    return subprocess.Popen(
        cmd, env=env, cwd=REPO_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _child_rows(proc: subprocess.Popen, impl: str) -> list[dict]:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{impl} network run failed:\n{err[-3000:]}")
    rows = json.loads(out)
    if any(r["implementation"] != impl for r in rows):
        raise RuntimeError(f"the {impl} child ran another fast path: {rows[0]['implementation']}")
    return rows


FIGURES = (
    "success_rate",
    "first_hit_ms_p50",
    "first_hit_ms_p90",
    "msgs_per_query",
    "dup_ratio",
    "burst_qps",
    "burst_answered_qps",
    "burst_success_rate",
    "burst_first_hit_ms_p50",
    "burst_msgs_per_query",
    "build_s",
)


def summarize(rows: list[dict]) -> list[dict]:
    """Group rows by (implementation, topology, mode, replication): median and spread over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["implementation"], r["topology"], r["mode"], r["replication"]), []).append(r)
    out = []
    for (impl, topo, mode, repl), rs in groups.items():
        row = {
            "implementation": impl,
            "topology": topo,
            "mode": mode,
            "replication": repl,
            "nodes": rs[0]["nodes"],
            "links": statistics.median(r["links"] for r in rs),
            "seeds": len(rs),
        }
        for key in FIGURES:
            vals = [r[key] for r in rs if r[key] is not None]
            if vals:
                med = statistics.median(vals)
                row[key] = med
                row[key + "_spread_pct"] = 100.0 * (max(vals) - min(vals)) / med if med else 0.0
            else:
                row[key] = None
        out.append(row)
    return out


def run(quick: bool) -> dict:
    """Measure the grid with the Cython fast path and a subset with the pure twin, in two child processes.

    Args:
        quick: 40 nodes, one replication rule, one seed (under a minute).

    Returns:
        {"grid", "rows" (every run), "summary" (medians over seeds), "ratios" (cython/python burst
        queries per second on the shared subset), "seconds"}.
    """
    started = time.perf_counter()
    grid = QUICK if quick else FULL
    procs = {impl: _child(impl, quick) for impl in ("cython", "python")}
    rows = _child_rows(procs["cython"], "cython")
    pure = _child_rows(procs["python"], "python")
    summary = summarize(rows + pure)
    ratios = {}
    for s in summary:
        if s["implementation"] != "python":
            continue
        twin = next(
            (
                c
                for c in summary
                if c["implementation"] != "python"
                and (c["topology"], c["mode"], c["replication"])
                == (s["topology"], s["mode"], s["replication"])
            ),
            None,
        )
        if twin and s["burst_qps"] and twin["burst_qps"]:
            ratios[f"{s['topology']}/{s['mode']}/{s['replication']}"] = twin["burst_qps"] / s["burst_qps"]
    return {
        "grid": {k: list(v) if isinstance(v, tuple) else v for k, v in grid.items()},
        "implementation": IMPLEMENTATION,
        "rows": rows + pure,
        "summary": summary,
        "cython_over_python_burst_qps": ratios,
        "seconds": time.perf_counter() - started,
    }


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(result: dict) -> str:
    """The summary as a Markdown table (medians over seeds; spread of burst q/s in brackets)."""
    g = result["grid"]
    lines = [
        f"{g['nodes']} nodes on loopback in one process, seeds {g['seeds']}, {g['paced']} paced queries "
        f"(one per {PACE * 1000:.0f} ms) + {g['burst']} at once; medians over seeds",
        "",
        "| impl | topology | mode | replication | links | success | first hit p50 ms | p90 ms | msgs/query | "
        "dup % | burst q/s (spread) | answered q/s | burst success | burst first hit p50 ms | burst msgs/query |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result["summary"]:
        lines.append(
            f"| {s['implementation']} | {s['topology']} | {s['mode']} | {s['replication']} | {s['links']:.0f} | "
            f"{_fmt(s['success_rate'], '.2f')} | {_fmt(s['first_hit_ms_p50'], '.1f')} | "
            f"{_fmt(s['first_hit_ms_p90'], '.1f')} | {_fmt(s['msgs_per_query'], '.0f')} | "
            f"{_fmt(s['dup_ratio'] * 100 if s['dup_ratio'] is not None else None, '.0f')} | "
            f"{_fmt(s['burst_qps'], '.0f')} ({_fmt(s.get('burst_qps_spread_pct'), '.0f')}%) | "
            f"{_fmt(s['burst_answered_qps'], '.0f')} | {_fmt(s['burst_success_rate'], '.2f')} | "
            f"{_fmt(s['burst_first_hit_ms_p50'], '.0f')} | {_fmt(s['burst_msgs_per_query'], '.0f')} |"
        )
    if result["cython_over_python_burst_qps"]:
        lines += [
            "",
            "cython / python burst queries per second: "
            + ", ".join(f"{k} {v:.2f}x" for k, v in result["cython_over_python_burst_qps"].items()),
        ]
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    """Write a PNG: messages per query vs success, and first-hit latency, per topology and mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [s for s in result["summary"] if s["implementation"] != "python"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    markers = {"flood": "o", "hybrid": "s"}
    for s in rows:
        label = f"{s['topology']} {s['mode']} {s['replication']}"
        ax1.scatter(s["msgs_per_query"] or 0, s["success_rate"] or 0, marker=markers[s["mode"]], label=label)
        ax2.bar(label, s["first_hit_ms_p50"] or 0)
    ax1.set(
        xlabel="messages per query (QUERY + QUERYHIT received)",
        ylabel="success rate",
        xscale="log",
        title=f"{result['grid']['nodes']} gnut nodes on loopback",
    )
    ax1.legend(fontsize=7)
    ax2.set(ylabel="first hit, median ms", title="first-hit latency (paced queries)")
    ax2.tick_params(axis="x", labelrotation=60, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """`--rows-json IMPL` (a child of run()) or a direct run: `[--quick] [--plot PATH]`."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--rows-json", choices=("cython", "python"), help="child mode: print that fast path's rows"
    )
    parser.add_argument("--plot", help="write a PNG plot here")
    args = parser.parse_args(argv)
    if args.rows_json:
        grid = QUICK if args.quick else FULL
        subset = None if args.rows_json == "cython" else PURE_SUBSET_QUICK if args.quick else PURE_SUBSET
        print(json.dumps(measure_specs(specs(grid, subset))))
        return 0
    result = run(args.quick)
    print(format_table(result))
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
