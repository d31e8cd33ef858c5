"""Long hostile-peer runs against one real node on 127.0.0.1, with memory and descriptor figures."""

# Usage (repository root, the venv):
#   python fuzz/soak.py guids --count 2000000            # unique-GUID query flood, RSS per stage
#   python fuzz/soak.py guids --count 2000000 --seen 262144 --routes 65536
#   python fuzz/soak.py dups --count 1000000              # one GUID resent: the BYE and when it came
#   python fuzz/soak.py storm --count 5000                # connects/s refused, member latency meanwhile
#   python fuzz/soak.py slowloris --count 400             # silent sockets held past the deadline
#   python fuzz/soak.py all --json out.json
#
# Strategy: the node runs in this process (its RSS is this process's RSS minus a small client),
# attacked over real loopback sockets by raw clients that write pre-built frames.  Figures come
# from /proc/self (VmRSS, VmHWM, fd count) and the node's own counters; every scenario ends by
# checking that an honest peer still gets a search answered.  The default test suite runs short
# versions of the same attacks (tests/test_hostile.py); this script is for the long figures in
# RELIABILITY.md.

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from nethelpers import RawPeer, start_node, wait_for  # noqa: E402

from gnut.constants import MSG_BYE, MSG_QUERY, MSG_QUERYHIT  # noqa: E402
from gnut.protocol import messages  # noqa: E402
from gnut.protocol.guid import new_guid  # noqa: E402
from gnut.runtime import loops  # noqa: E402

# Frames written per socket write in the floods (about 100 KiB).
BATCH = 2000
FILES = {"honest answer.txt": b"h" * 4096}


def proc_status() -> dict:
    """VmRSS / VmHWM in MiB and the open descriptor count of this process."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    out["fds"] = len(os.listdir("/proc/self/fd"))
    return out


def query(text: str, guid: bytes | None = None, ttl: int = 2) -> bytes:
    return messages.build(guid or new_guid(), MSG_QUERY, ttl, 0, messages.Query(text=text).encode())


async def honest(node) -> float:
    """Seconds for a fresh peer to connect, search and get the hit."""
    started = time.monotonic()
    p = RawPeer()
    await p.connect(node)
    p.send(query("honest"))
    await wait_for(lambda: p.of_type(MSG_QUERYHIT), timeout=30, what="honest hit")
    await p.close()
    return round(time.monotonic() - started, 3)


async def flood(node, raw: RawPeer, frames, expect_received: int) -> None:
    """Write frames in batches, pacing on the node's progress so the socket buffers stay small."""
    sent = 0
    batch = []
    for f in frames:
        batch.append(f)
        if len(batch) == BATCH:
            raw.send(b"".join(batch))
            sent += len(batch)
            batch = []
            await raw.writer.drain()
            while node.router.received[MSG_QUERY] < sent - 4 * BATCH and not raw.closed:
                await asyncio.sleep(0.001)
            if raw.closed:
                return
    if batch:
        raw.send(b"".join(batch))
    await wait_for(
        lambda: node.router.received[MSG_QUERY] >= expect_received or raw.closed,
        timeout=600,
        what="flood routed",
    )


async def scenario_guids(tmp: Path, count: int, seen: int | None, routes: int | None) -> dict:
    kw = {}
    if seen:
        kw["seen_cache_size"] = seen
    if routes:
        kw["route_table_size"] = routes
    node = await start_node(tmp, "guids", files=FILES, **kw)
    try:
        sink = RawPeer()  # a neighbour that receives every relayed query
        await sink.connect(node)
        sink.messages = _Counter()
        raw = RawPeer()
        await raw.connect(node)
        stages = {"start": proc_status()}
        started = time.monotonic()
        step = count // 4
        for k in range(4):
            await flood(node, raw, (query(f"u{i}") for i in range(k * step, (k + 1) * step)), (k + 1) * step)
            st = proc_status()
            st["seen_entries"] = len(node.router._seen)
            st["query_routes"] = len(node.router._query_routes)
            stages[f"after_{(k + 1) * step}"] = st
        elapsed = time.monotonic() - started
        return {
            "unique_queries": 4 * step,
            "seconds": round(elapsed, 1),
            "msgs_per_second": round(4 * step / elapsed),
            "seen_capacity": node.router._seen.capacity,
            "route_capacity": node.router._query_routes.capacity,
            "stages": stages,
            "relayed_to_neighbour": sink.messages.n,
            "drops": {k.name.lower(): v for k, v in node.router.drops.items() if v},
            "flooder_still_linked": not raw.closed,
            "honest_search_seconds": await honest(node),
        }
    finally:
        await node.stop()


class _Counter(list):
    """Stands in for RawPeer.messages when only the count matters (a million Message objects is the client's RSS)."""

    n = 0

    def extend(self, items) -> None:
        self.n += len(items)


async def scenario_dups(tmp: Path, count: int) -> dict:
    node = await start_node(tmp, "dups", files=FILES)
    try:
        raw = RawPeer()
        await raw.connect(node)
        guid = new_guid()
        one = query("dup", guid)
        before = proc_status()
        started = time.monotonic()
        sent = 0
        while sent < count and not raw.closed and not raw.task.done():
            try:
                raw.send(one * BATCH)
                await raw.writer.drain()
            except (ConnectionError, RuntimeError):
                break
            sent += BATCH
            await asyncio.sleep(0)
        # The node closes after its BYE; our writes still in flight may turn the close into a reset.
        await wait_for(lambda: raw.closed or raw.task.done(), timeout=30, what="close")
        if raw.task.done() and not raw.task.cancelled():
            raw.task.exception()
        byes = [messages.Bye.decode(m.payload) for m in raw.of_type(MSG_BYE)]
        return {
            "node_bye_duplicates": node.events["bye_duplicates"],
            "duplicates_written_before_close": sent,
            "duplicates_routed": node.router.drops[
                next(r for r in node.router.drops if r.name == "DUPLICATE")
            ],
            "bye": [(b.code, b.reason) for b in byes],
            "seconds_to_bye": round(time.monotonic() - started, 3),
            "rss_before": before["VmRSS"],
            "rss_after": proc_status()["VmRSS"],
            "honest_search_seconds": await honest(node),
        }
    finally:
        await node.stop()


async def scenario_storm(tmp: Path, count: int) -> dict:
    node = await start_node(tmp, "storm", files=FILES)
    try:
        member = RawPeer()
        await member.connect(node)
        before = proc_status()
        latencies = []
        started = time.monotonic()
        done = 0
        while done < count:
            n = min(100, count - done)
            results = await asyncio.gather(
                *(asyncio.open_connection(*node.address) for _ in range(n)), return_exceptions=True
            )
            for r in results:
                if not isinstance(r, BaseException):
                    r[1].close()
            done += n
            t0 = time.monotonic()
            have = len(member.of_type(MSG_QUERYHIT))
            member.send(query("honest"))
            await wait_for(
                lambda h=have: len(member.of_type(MSG_QUERYHIT)) > h, timeout=10, what="member hit"
            )
            latencies.append(time.monotonic() - t0)
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.5)
        latencies.sort()
        return {
            "connects": count,
            "seconds": round(elapsed, 2),
            "connects_per_second": round(count / elapsed),
            "refused_storm": node.events["refused_storm"],
            "accepted": count - node.events["refused_storm"],
            "member_query_latency_ms_median": round(1000 * latencies[len(latencies) // 2], 2),
            "member_query_latency_ms_max": round(1000 * latencies[-1], 2),
            "fds_before": before["fds"],
            "fds_after": proc_status()["fds"],
            "peers_after": len(node.peers),
        }
    finally:
        await node.stop()


async def scenario_slowloris(tmp: Path, count: int) -> dict:
    node = await start_node(tmp, "slow", files=FILES)
    node.accepts_per_ip_per_minute = count + 10
    try:
        before = proc_status()
        conns = [await asyncio.open_connection(*node.address) for _ in range(count)]
        for i, (_, w) in enumerate(conns):
            if i % 2:
                w.write(b"GNUTELLA CONNECT/0.6\r\nUser-Agent: sl")
        held = proc_status()
        t_honest = await honest(node)  # a new peer gets in while the slow ones are held
        started = time.monotonic()
        await wait_for(
            lambda: node.events["handshake_timeouts"] >= count,
            timeout=node.handshake_timeout + 10,
            what="deadline",
        )
        closed_after = time.monotonic() - started
        for _, w in conns:
            w.close()
        await asyncio.sleep(0.5)
        return {
            "silent_connections": count,
            "handshake_timeout": node.handshake_timeout,
            "all_closed_within_seconds_of_honest_search": round(closed_after, 2),
            "honest_search_seconds_while_held": t_honest,
            "fds_before": before["fds"],
            "fds_held": held["fds"],
            "fds_after": proc_status()["fds"],
            "peers_after": len(node.peers),
        }
    finally:
        await node.stop()


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module comment."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("scenario", choices=["guids", "dups", "storm", "slowloris", "all"])
    ap.add_argument("--count", type=int, help="messages or connections (scenario default when omitted)")
    ap.add_argument("--seen", type=int, help="seen-GUID cache size (default: NodeConfig's)")
    ap.add_argument("--routes", type=int, help="route table size (default: NodeConfig's)")
    ap.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    defaults = {"guids": 2_000_000, "dups": 1_000_000, "storm": 5000, "slowloris": 400}
    names = list(defaults) if args.scenario == "all" else [args.scenario]
    out = {}
    for name in names:
        count = args.count or defaults[name]
        tmp = Path(tempfile.mkdtemp(prefix=f"gnut-soak-{name}-"))

        async def go(name=name, count=count, tmp=tmp):
            if name == "guids":
                return await scenario_guids(tmp, count, args.seen, args.routes)
            return await {"dups": scenario_dups, "storm": scenario_storm, "slowloris": scenario_slowloris}[
                name
            ](tmp, count)

        out[name] = loops.run(go(), args.loop)
        print(json.dumps({name: out[name]}, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
