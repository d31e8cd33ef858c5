"""DHT benchmark: Kademlia lookups on 10^3-10^4 simulated gnut.dht nodes, and finding a rare file by
flooding, random walkers, dynamic querying and DHT lookup, side by side on the same network size.

Strategy: gnut.sim.dht runs real DhtCore nodes (real codecs, routing tables, lookups, tokens) on
a virtual clock, with oracle-filled routing tables built when a node is first touched (so 10^5
nodes fit: only the few thousand nodes the lookups reach are built).  Part 1 measures hops, RPCs and datagrams per
FIND_NODE / FIND_VALUE lookup against network size (Kademlia predicts ~log N), and the success
of value lookups after 30 % of the nodes died.  Part 2 places RARE_COPIES copies of each of
OBJECTS files and searches them: flood (TTL 4-7) and walkers on a random graph of mean degree 4,
dynamic querying on a two-tier overlay (gnut.sim.engine: the real Router), and a DHT FIND_VALUE
for the file's ALOC after each holder published it (the publication's cost is reported apart:
it is paid once per file per hour, not per search).
"""

from __future__ import annotations

import math
import random
import resource
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gnut.dht import aloc  # noqa: E402
from gnut.sim import engine as sim  # noqa: E402
from gnut.sim.dht import DhtNetwork, key_of  # noqa: E402

# Rare file: two copies in the whole network.
RARE_COPIES = 2
OBJECTS = 20
# Churn: share of nodes that die after the tables were built (no repair before the lookups).
CHURN = 0.30
MEAN_DEGREE = 4
UP_SHARE = 15
UP_DEGREE = 32
LEAF_LINKS = 3
# The side-by-side comparison runs on 10^4 nodes (the flood simulator's 10^5 runs take an hour).
COMPARE_NODES = 10_000


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def _scaling(sizes: tuple[int, ...], lookups: int, seed: int) -> list[dict]:
    rows = []
    for n in sizes:
        t0 = time.perf_counter()
        net = DhtNetwork(n, seed=seed)
        build = time.perf_counter() - t0
        rng = random.Random(seed)
        nodes = [rng.randrange(n) for _ in range(lookups)]
        t1 = time.perf_counter()
        fn = [net.find_node(i, rng.randbytes(20)) for i in nodes]
        for obj in range(OBJECTS):
            net.publish(rng.randrange(n), key_of(obj), b"v")
        fv = [net.find_value(i, key_of(rng.randrange(OBJECTS))) for i in nodes]
        lookup_s = time.perf_counter() - t1
        net.kill(CHURN)
        ch = [net.find_value(net.random_alive(), key_of(rng.randrange(OBJECTS))) for _ in range(lookups)]
        rows.append(
            {
                "nodes": n,
                "log2_n": math.log2(n),
                "table_size": _mean(len(net.node(i).table) for i in range(0, n, max(1, n // 200))),
                "find_node_ok": _mean(r.ok for r in fn),
                "find_node_hops": _mean(r.hops for r in fn),
                "find_node_rpcs": _mean(r.rpcs for r in fn),
                "find_node_msgs": _mean(r.messages for r in fn),
                "find_value_ok": _mean(r.ok for r in fv),
                "find_value_hops": _mean(r.hops for r in fv),
                "find_value_msgs": _mean(r.messages for r in fv),
                "churn_ok": _mean(r.ok for r in ch),
                "churn_msgs": _mean(r.messages for r in ch),
                "churn_timeouts": _mean(r.timeouts for r in ch),
                "build_s": build,
                "nodes_built": net.built,
                "lookup_s": lookup_s,
                "rss_mb": _rss_mb(),
            }
        )
        del net
    return rows


def _gnutella(n: int, queries: int, seed: int) -> list[dict]:
    rows = []
    for kind in ("random", "twotier"):
        if kind == "random":
            topo = sim.erdos_renyi(n, MEAN_DEGREE, seed)
            eligible = None
            specs = [{"algorithm": "flood", "ttl": t} for t in (4, 5, 6, 7)]
            specs += [{"algorithm": "walk", "walkers": k} for k in (16, 32)]
        else:
            topo = sim.two_tier(n, n // UP_SHARE, UP_DEGREE, LEAF_LINKS, seed)
            eligible = [v for v in range(topo.n) if topo.roles[v] == sim.LEAF]
            specs = [{"algorithm": "dq"}]
        content = sim.place_content(topo.n, OBJECTS, "uniform", RARE_COPIES, seed, eligible=eligible)
        s = sim.Simulator(topo, content, seed=seed)
        for kw in specs:
            spec = sim.SearchSpec(**kw)
            recs = s.run_queries(spec, queries, workload_seed=seed)
            summ = sim.summarize(recs, topo.n)
            ok = [r for r in recs if r.hits]
            rows.append(
                {
                    "method": spec.label() + (" (two-tier QRP)" if kind == "twotier" else ""),
                    "overlay": topo.name,
                    "success_rate": summ["success_rate"],
                    "msgs_per_search": summ["msgs_per_query"],
                    "msgs_per_success": sum(r.messages for r in recs) / len(ok) if ok else None,
                }
            )
    return rows


def _dht_search(n: int, queries: int, seed: int, churn: float) -> dict:
    net = DhtNetwork(n, seed=seed)
    content = sim.place_content(n, OBJECTS, "uniform", RARE_COPIES, seed)
    publish_msgs = []
    for obj, holders in enumerate(content.holders):
        for h in holders:
            data = aloc.encode_aloc(aloc.Aloc(bytes(16), 6346, 1 << 20))
            publish_msgs.append(net.publish(h, key_of(obj), data)[1])
    if churn:
        net.kill(churn)
    rng = random.Random(seed)
    recs = [net.find_value(net.random_alive(), key_of(content.draw(rng))) for _ in range(queries)]
    ok = [r for r in recs if r.ok]
    return {
        "method": "DHT FIND_VALUE" + (f" ({int(churn * 100)} % dead)" if churn else ""),
        "overlay": f"kademlia k=20 a=3 n={n}",
        "success_rate": len(ok) / len(recs),
        "msgs_per_search": _mean(r.messages for r in recs),
        "msgs_per_success": sum(r.messages for r in recs) / len(ok) if ok else None,
        "hops": _mean(r.hops for r in ok),
        "publish_msgs_per_copy": _mean(publish_msgs),
    }


def run(quick: bool) -> dict:
    sizes = (300, 1000, 3000) if quick else (1000, 10_000, 100_000)
    lookups = 30 if quick else 100
    n = 2000 if quick else COMPARE_NODES
    queries = 30 if quick else 100
    t0 = time.perf_counter()
    scaling = _scaling(sizes, lookups, seed=1)
    compare = _gnutella(n, queries, seed=2)
    compare.append(_dht_search(n, queries, seed=2, churn=0.0))
    compare.append(_dht_search(n, queries, seed=2, churn=CHURN))
    return {
        "sizes": list(sizes),
        "compare_nodes": n,
        "rare_copies": RARE_COPIES,
        "scaling": scaling,
        "compare": compare,
        "seconds": time.perf_counter() - t0,
    }


def format_table(result: dict) -> str:
    out = ["Kademlia lookups vs network size (real gnut.dht cores, k=20, alpha=3)", ""]
    out.append(
        f"{'nodes':>7} {'log2N':>6} {'table':>6} {'FN ok':>6} {'FN hops':>8} {'FN rpcs':>8} {'FN msgs':>8}"
        f" {'FV ok':>6} {'FV hops':>8} {'FV msgs':>8} {'30%dead ok':>11} {'msgs':>6} {'built':>6} {'RSS MB':>7}"
    )
    for r in result["scaling"]:
        out.append(
            f"{r['nodes']:>7} {r['log2_n']:>6.1f} {r['table_size']:>6.0f} {r['find_node_ok']:>6.2f}"
            f" {r['find_node_hops']:>8.2f} {r['find_node_rpcs']:>8.1f} {r['find_node_msgs']:>8.1f}"
            f" {r['find_value_ok']:>6.2f} {r['find_value_hops']:>8.2f} {r['find_value_msgs']:>8.1f}"
            f" {r['churn_ok']:>11.2f} {r['churn_msgs']:>6.1f} {r.get('nodes_built', r['nodes']):>6} {r['rss_mb']:>7.0f}"
        )
    out += [
        "",
        f"Finding a rare file ({result['rare_copies']} copies) in {result['compare_nodes']} nodes",
        "",
    ]
    out.append(f"{'method':<34} {'success':>8} {'msgs/search':>12} {'msgs/success':>13}")
    for r in result["compare"]:
        per = f"{r['msgs_per_success']:.1f}" if r["msgs_per_success"] is not None else "-"
        out.append(f"{r['method']:<34} {r['success_rate']:>8.2f} {r['msgs_per_search']:>12.1f} {per:>13}")
    dht = [r for r in result["compare"] if "publish_msgs_per_copy" in r]
    if dht:
        out.append(
            f"(DHT publication: {dht[0]['publish_msgs_per_copy']:.0f} datagrams per copy, once an hour)"
        )
    return "\n".join(out)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    xs = [r["nodes"] for r in result["scaling"]]
    a.plot(xs, [r["find_node_msgs"] for r in result["scaling"]], "o-", label="FIND_NODE datagrams")
    a.plot(xs, [r["find_value_msgs"] for r in result["scaling"]], "s-", label="FIND_VALUE datagrams")
    a.plot(xs, [r["churn_msgs"] for r in result["scaling"]], "^-", label="FIND_VALUE, 30 % dead")
    a.plot(xs, [r["find_node_hops"] * 10 for r in result["scaling"]], "x--", label="FIND_NODE hops x10")
    a.set_xscale("log")
    a.set_xlabel("nodes")
    a.set_title("DHT lookup cost vs network size")
    a.legend()
    rows = [r for r in result["compare"] if r["msgs_per_success"] is not None]
    b.barh([r["method"] for r in rows], [r["msgs_per_success"] for r in rows])
    for i, r in enumerate(rows):
        b.text(r["msgs_per_success"], i, f" {r['success_rate']:.0%}", va="center")
    b.set_xscale("log")
    b.set_xlabel("messages per successful search (label: success rate)")
    b.set_title(f"rare file, {result['compare_nodes']} nodes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
