"""Relay-core micro-benchmark: Node.on_frames on QUERY chunks, Router.route per message vs RelayCore, Cython vs pure."""

# Strategy
# --------
# A real flood-mode Node (Cython or pure twin: one subprocess each, GNUT_NO_EXTENSIONS picks) with
# five real loopback links: one source, four sinks. The traffic is framed beforehand (untimed) by
# the node's own FrameReader into 64 KiB chunks; the timed part is only Node.on_frames over every
# chunk (routing, dedup, TTL rewrite, flow control, appending to the sinks' output buffers, local
# delivery) plus clearing the output buffers after each chunk as a flush would. 10% of the queries
# come back a second time from a sink (a duplicate by another path, as in bench_relay). Each
# repeat uses fresh GUIDs. "before" is router.use_core = False (Router.route per message, the
# path before RelayCore); "after" is the default. Workloads: the node shares nothing (every query
# is only relayed), and the node shares 200 files whose words overlap the query vocabulary (a
# few queries are answered, the local filter keeps the others away from Python), and an ultrapeer
# with 30 leaves that sent real QRP tables over their links (RESET + zlib PATCH, 40 files of two
# vocabulary words each) plus 4 ultrapeer links, one of which sent a table too (last-hop QRP): the
# common real-world ultrapeer (gtk-gnutella holds ~30 leaves), where every query's targets are
# chosen by QRP tables.

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
for _p in (str(BENCH_DIR), str(REPO_DIR / "src")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

SINKS = 4
CHUNK = 64 * 1024  # bytes per chunk handed to the FrameReader (one socket read)
MESSAGES = {"full": 200_000, "quick": 40_000}
REPEATS = {"full": 5, "quick": 3}
DUP_EVERY = 10  # every 10th query also arrives from a sink
WORDS = 600  # query vocabulary
SHARED_FILES = 200
LEAVES = 30  # leaves of the ultrapeer workload (gtk-gnutella's usual leaf slots)
LEAF_FILES = 40  # files per leaf, two vocabulary words each, in its QRP table
UP_TABLE_WORDS = WORDS // 2  # vocabulary words in the QRP table of one ultrapeer sink
ULTRAPEER_WORKLOAD = f"ultrapeer with {LEAVES} QRP leaves"
URN_SHARE = 0.15  # queries carrying a urn:sha1 extension


def _vocabulary(rng: random.Random) -> list[str]:
    syll = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "be", "da", "fu", "go", "ha", "jo", "pe", "zu"]
    return ["".join(rng.choice(syll) for _ in range(rng.randrange(2, 5))) for _ in range(WORDS)]


def _payloads(rng: random.Random, vocab: list[str], count: int) -> list[bytes]:
    from gnut.protocol import messages

    b32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    out = []
    for _ in range(count):
        text = " ".join(rng.choice(vocab) for _ in range(rng.choice((1, 2, 2, 3))))
        urns = (
            ("urn:sha1:" + "".join(rng.choice(b32) for _ in range(32)),) if rng.random() < URN_SHARE else ()
        )
        out.append(messages.Query(text=text, flags=messages.QF_FLAGS_IN_USE, urns=urns).encode())
    return out


def _streams(rng: random.Random, payloads: list[bytes], count: int) -> tuple[bytes, bytes]:
    """(source stream, duplicate stream from a sink): fresh GUIDs, hops 0-2, TTL 2-4."""
    src, dup = [], []
    for i in range(count):
        hops = rng.choice((0, 0, 1, 1, 2))
        ttl = rng.choice((2, 3, 4)) if hops < 2 else rng.choice((2, 3))
        p = payloads[i % len(payloads)]
        g = rng.randbytes(16)
        src.append(g + bytes((0x80, ttl, hops)) + len(p).to_bytes(4, "little") + p)
        if i % DUP_EVERY == 0:
            dup.append(g + bytes((0x80, ttl, hops + 1)) + len(p).to_bytes(4, "little") + p)
    return b"".join(src), b"".join(dup)


def _frame(stream: bytes) -> list[list]:
    from gnut.fastpath import FrameReader

    reader = FrameReader()
    return [m for m in (reader.feed(stream[i : i + CHUNK]) for i in range(0, len(stream), CHUNK)) if m]


async def _raw_link(node, mode: str = "ultrapeer", deflate: bool = False):
    """Open a handshaken raw Gnutella link to `node` and return (its Connection, the writer)."""
    from gnut.protocol import connection as cx
    from gnut.protocol import handshake as hs

    cfg = hs.HandshakeConfig(mode=mode, listen_ip="127.0.0.1", listen_port=1, accept_deflate=deflate)
    conn = cx.Connection(cfg, outgoing=True, remote_ip="127.0.0.1")
    reader, writer = await asyncio.open_connection(*node.address)
    writer.write(conn.data_to_send())
    while True:
        conn.receive_data(await reader.read(65536))
        ev = conn.next_event()
        while ev is not cx.NEED_DATA and not isinstance(ev, cx.HandshakeComplete):
            ev = conn.next_event()
        out = conn.data_to_send()
        if out:
            writer.write(out)
        if isinstance(ev, cx.HandshakeComplete):
            return conn, writer


def _send_table(conn, writer, words) -> None:
    """Send a QRP table holding `words` (and their prefixes) over a raw link, as a leaf does."""
    from gnut.constants import MSG_QRP
    from gnut.protocol import messages, qrp
    from gnut.protocol.guid import new_guid

    table = qrp.QrpTable()
    for w in words:
        table.add_words(qrp.keywords(w))
    for m in table.to_messages(entry_bits=4):
        conn.send_raw(messages.build(new_guid(), MSG_QRP, 1, 0, m.encode()))
    writer.write(conn.data_to_send())


async def _ultrapeer_links(node, rng: random.Random, vocab: list[str]) -> list:
    """SINKS + 1 ultrapeer links (the last sink with a QRP table) and LEAVES leaves with tables."""
    node.accepts_per_ip_per_minute = 10 * (SINKS + 1 + LEAVES)  # all from 127.0.0.1 at once
    writers = []
    for k in range(SINKS + 1):
        conn, w = await _raw_link(node)
        if k == SINKS:
            _send_table(conn, w, rng.sample(vocab, UP_TABLE_WORDS))
        writers.append(w)
    for _ in range(LEAVES):
        conn, w = await _raw_link(node, "leaf", deflate=True)
        _send_table(conn, w, [f"{rng.choice(vocab)} {rng.choice(vocab)}" for _ in range(LEAF_FILES)])
        writers.append(w)
    peers = node.router._peers
    deadline = time.monotonic() + 20
    while sum(st.matcher is not None for st in peers.values()) < LEAVES + 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the leaves' QRP tables did not arrive")
        await asyncio.sleep(0.01)
    return writers


async def _measure(quick: bool) -> dict:
    from gnut import fastpath
    from gnut.protocol.routing import PeerRole
    from gnut.runtime.config import NodeConfig
    from gnut.runtime.node import Node

    size = "quick" if quick else "full"
    count, repeats = MESSAGES[size], REPEATS[size]
    rng = random.Random(7)
    vocab = _vocabulary(rng)
    payloads = _payloads(rng, vocab, 5000)
    results = {"implementation": fastpath.IMPLEMENTATION, "messages": count, "repeats": repeats, "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        share = Path(tmp) / "share"
        share.mkdir()
        for i in range(SHARED_FILES):
            (share / f"{rng.choice(vocab)} {rng.choice(vocab)} {i}.txt").write_bytes(b"x" * 64)
        workloads = (
            ("relay only (no shares)", "flood", []),
            (f"{SHARED_FILES} shared files", "flood", [share]),
            (ULTRAPEER_WORKLOAD, "ultrapeer", []),
        )
        for workload, node_mode, dirs in workloads:
            cfg = NodeConfig(
                listen_host="127.0.0.1",
                listen_port=0,
                mode=node_mode,
                home=Path(tmp) / workload[:5],
                share_dirs=dirs,
                control=False,
                save_hosts=False,
                out_links=0,
                max_leaves=LEAVES,
                # Every leaf connects from 127.0.0.1: raise the per-address limits for this lab.
                max_links_per_ip=LEAVES + 8,
                max_links_per_24=LEAVES + 8,
                max_pending_per_ip=LEAVES + 8,
            )
            cfg.home.mkdir(exist_ok=True)
            node = Node(cfg)
            await node.start()
            if node_mode == "ultrapeer":
                writers = await _ultrapeer_links(node, random.Random(11), vocab)
            else:
                writers = [(await _raw_link(node))[1] for _ in range(SINKS + 1)]
            want = len(writers)
            deadline = time.monotonic() + 10
            while sum(p.established for p in node.peers.values()) < want and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            links = sorted(node.peers.values(), key=lambda p: p.id)
            src, echo = links[0], links[1]
            for mode, use_core in (("before", False), ("after", True)):
                node.router.use_core = use_core
                times = []
                for rep in range(repeats + 1):
                    s, d = _streams(random.Random(1000 + rep + (100 if use_core else 0)), payloads, count)
                    chunks, dchunks = _frame(s), _frame(d)
                    total = sum(map(len, chunks)) + sum(map(len, dchunks))
                    step = max(1, len(chunks) // max(1, len(dchunks)))
                    plan = []
                    for i, c in enumerate(chunks):
                        plan.append((src, c))
                        if i % step == 0 and dchunks:
                            plan.append((echo, dchunks.pop(0)))
                    plan += [(echo, c) for c in dchunks]
                    on_frames = node.on_frames
                    received = node.router.received[0x80]
                    leaf_msgs = sum(p.msgs_out for p in links if p.role == PeerRole.LEAF)
                    t0 = time.perf_counter()
                    for peer, msgs in plan:
                        on_frames(peer, msgs)
                        for p in links:
                            p.outbuf.clear()
                        node._dirty.clear()
                    dt = time.perf_counter() - t0
                    if node.router.received[0x80] - received != total or src.closed:
                        raise RuntimeError(
                            f"{mode}: not every message was routed (link closed: {src.closed})"
                        )
                    if rep:  # the first round warms up
                        times.append(dt)
                    leaf_copies = sum(p.msgs_out for p in links if p.role == PeerRole.LEAF) - leaf_msgs
                times.sort()
                med = times[len(times) // 2]
                results["rows"][f"{workload} / {mode}"] = {
                    "msgs_per_s": total / med,
                    "spread_pct": 100 * (times[-1] - times[0]) / med,
                    "answered": node.events["queries_answered"],
                    "leaf_copies_per_query": leaf_copies / total,
                }
            for w in writers:
                w.close()
            await node.stop()
    return results


def _child(quick: bool) -> None:
    from gnut.runtime import loops

    print(json.dumps(loops.run(_measure(quick), "asyncio")))


def run(quick: bool) -> dict:
    """Measure both implementations, each in its own process.

    Returns:
        {"cython": {...}, "python": {...}} with msgs/s per workload and mode.
    """
    out = {}
    for impl in ("cython", "python"):
        env = dict(os.environ, PYTHONPATH=str(REPO_DIR / "src"))
        env.pop("GNUT_NO_EXTENSIONS", None)
        if impl == "python":
            env["GNUT_NO_EXTENSIONS"] = "1"
        args = [sys.executable, str(Path(__file__).resolve()), "--child"] + (["--quick"] if quick else [])
        proc = subprocess.run(args, env=env, cwd=REPO_DIR, capture_output=True, text=True, check=True)
        out[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def format_table(result: dict) -> str:
    """Markdown table: msgs/s before and after per workload and implementation."""
    lines = [
        "| workload | impl | before (Router.route) msg/s | after (RelayCore) msg/s | after/before | spread |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for impl, res in result.items():
        for workload in ("relay only (no shares)", f"{SHARED_FILES} shared files", ULTRAPEER_WORKLOAD):
            b = res["rows"][f"{workload} / before"]
            a = res["rows"][f"{workload} / after"]
            lines.append(
                f"| {workload} | {impl} | {b['msgs_per_s']:,.0f} | {a['msgs_per_s']:,.0f} | "
                f"{a['msgs_per_s'] / b['msgs_per_s']:.1f}x | {b['spread_pct']:.0f}% / {a['spread_pct']:.0f}% |"
            )
    for impl, res in result.items():
        row = res["rows"][f"{ULTRAPEER_WORKLOAD} / after"]
        lines.append(
            f"\n{impl}, {ULTRAPEER_WORKLOAD}: {row['leaf_copies_per_query']:.2f} leaf copies per query"
        )
    c, p = result.get("cython"), result.get("python")
    if c and p:
        w = "relay only (no shares)"
        ratio = c["rows"][f"{w} / after"]["msgs_per_s"] / p["rows"][f"{w} / before"]["msgs_per_s"]
        lines.append(f"\nCython after vs pure before ({w}): {ratio:.1f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    if "--child" in sys.argv:
        _child("--quick" in sys.argv)
    else:
        res = run("--quick" in sys.argv)
        print(format_table(res))
