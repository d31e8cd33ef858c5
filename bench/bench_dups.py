"""Seen cache inside the relay core: duplicate QUERYs in random order against 2^20 remembered GUIDs.

`python bench/run.py dups [--quick]`.
"""

# Strategy
# --------
# A flood-mode RelayCore (its own GuidCache of 2^20 entries and the default RouteMap) with two
# peers: the source and one sink. Pass 1 relays N fresh queries (the cache fills to N). Pass 2
# relays the same N GUIDs again as new Message objects, shuffled: every one is a duplicate, so
# each costs a route-table lookup and a seen-cache hit at a random place in ~30 MB of tables: the
# DRAM-bound case that batched, prefetching lookups in RelayCore._relay address. "in order" (the
# same duplicates in insertion order, cache-friendly) is the limit; the pure twin runs the same
# random-order pass for the ratio. Chunks of 512 messages, as a socket read would bring.

from __future__ import annotations

import importlib
import os
import random
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if str(REPO_DIR / "src") not in sys.path:
    sys.path.insert(0, str(REPO_DIR / "src"))

ENTRIES = {"full": 1 << 20, "quick": 1 << 18}
PURE_ENTRIES = {"full": 1 << 18, "quick": 1 << 16}
CHUNK = 512
REPEATS = {"full": 3, "quick": 2}
LOW, HIGH = 256 * 1024, 1024 * 1024


def _payload() -> bytes:
    return b"\x80\x00kalo mizu\x00"


def _raw(guid: bytes, payload: bytes) -> bytes:
    return guid + bytes((0x80, 3, 0)) + len(payload).to_bytes(4, "little") + payload


def _pass(impl, core, raws: list[bytes], bufs) -> float:
    """Relay every message (as fresh Message objects, chunk by chunk); return messages per second."""
    chunks = [[impl.Message(r) for r in raws[i : i + CHUNK]] for i in range(0, len(raws), CHUNK)]
    bases = [0, 0]
    start = time.perf_counter()
    for msgs in chunks:
        i = 0
        while i < len(msgs):
            i, kind = core.relay(1, msgs, i, 1.0, bufs, bases, LOW, HIGH)
            if kind == impl.STOP_END:
                break
            i += 1
        core.end_chunk()
        for b in bufs:
            b.clear()
    return len(raws) / (time.perf_counter() - start)


def _measure(module: str, n: int, repeats: int) -> dict:
    impl = importlib.import_module(module)
    rng = random.Random(n)
    best: dict = {}
    for _ in range(repeats):
        core = impl.RelayCore("flood", impl.GuidCache(n, 3600.0), impl.RouteMap(1 << 18, 3600.0))
        core.add_peer(1, 1, True)
        core.add_peer(2, 1, True)
        core.set_local(None)
        payload = _payload()
        guids = [os.urandom(16) for _ in range(n)]
        raws = [_raw(g, payload) for g in guids]
        bufs = [bytearray(), bytearray()]
        fill = _pass(impl, core, raws, bufs)
        in_order = _pass(impl, core, raws, bufs)
        shuffled = raws[:]
        rng.shuffle(shuffled)
        shuffled = [bytes(bytearray(r)) for r in shuffled]  # fresh objects: only the tables are random
        random_order = _pass(impl, core, shuffled, bufs)
        for key, value in (("fill", fill), ("in_order", in_order), ("random_order", random_order)):
            best[key] = max(best.get(key, 0.0), value)
    return {"entries": n, **best}


def run(quick: bool) -> dict:
    size = "quick" if quick else "full"
    cy = _measure("gnut._fastpath", ENTRIES[size], REPEATS[size])
    py = _measure("gnut._purepath", PURE_ENTRIES[size], 1)
    return {
        "cython": cy,
        "python": py,
        "random_vs_in_order": cy["random_order"] / cy["in_order"],
        "random_vs_pure": cy["random_order"] / py["random_order"],
    }


def format_table(result: dict) -> str:
    cy, py = result["cython"], result["python"]
    lines = [
        "RelayCore.relay over duplicate QUERYs (msgs/s, best of the repeats; chunks of 512)",
        f"{'implementation':<16} {'entries':>9} {'fill (new)':>12} {'dups in order':>14} {'dups random':>12}",
        f"{'cython':<16} {cy['entries']:>9,} {cy['fill']:>12,.0f} {cy['in_order']:>14,.0f} {cy['random_order']:>12,.0f}",
        f"{'python':<16} {py['entries']:>9,} {py['fill']:>12,.0f} {py['in_order']:>14,.0f} {py['random_order']:>12,.0f}",
        "",
        f"random order / in order (the limit): {result['random_vs_in_order']:.2f};  "
        f"random order Cython / pure: {result['random_vs_pure']:.1f}x",
    ]
    return "\n".join(lines)
