"""Seen-GUID cache benchmark: GuidCache.seen at 1M entries, Cython vs pure, random and shared-prefix GUIDs."""

# Strategy: each workload is a Python loop calling cache.seen(guid, 0x80, now) once per GUID, as
# the router does. "insert at capacity" feeds fresh GUIDs into a full cache (every call looks up,
# misses, evicts the oldest and inserts); "hit" re-asks GUIDs that are present; "mixed" alternates.
# The "shared prefix" GUIDs all begin with the same 8 bytes (what an attacker choosing GUIDs could
# do): keyed XXH3 must spread them as well as random ones. "hit" asks in insertion order (like
# duplicates, which follow their original closely: the ring records are read in order); "hit,
# random order" asks the same GUIDs shuffled (copied into fresh objects so that only the cache's
# own memory is accessed at random): the worst case, one table miss then one record miss per call.
# A plain loop over the GUID list gives the Python iteration floor.
#
# Growth: a new cache starts small and doubles as live entries arrive. "fill from empty (grows)"
# inserts `capacity` fresh GUIDs into a new cache (every doubling included), to compare with
# "insert at capacity"; the fill is then repeated with each call timed on its own to find the
# stalls (the Cython rehash at a doubling, the pure dict's resize). "new cache" times creating
# GuidCache(2^20) and reads what ten of them add to the process RSS (the servent default, whatever
# --quick says: what an in-process network of nodes pays per node before any traffic).

from __future__ import annotations

import importlib
import os
import random
import time

from run import measure

CAPACITY_FULL = 1 << 20
CAPACITY_QUICK = 1 << 17
REPEATS_FULL = 5
REPEATS_QUICK = 3
# Entries stay for the whole run (the cache's 600 s default): the benchmark measures lookups and
# eviction by capacity, expiry costs the same tail pop.
MAX_AGE = 600.0
KIND = 0x80
NEW_CACHES = 10  # caches created per "new cache" timing (and held at once for the RSS figure)
STALL_MS = 1.0  # a single seen() call slower than this counts as a stall
IMPLS = {"cython": "gnut._fastpath", "python": "gnut._purepath"}


def _guids(count: int, prefix: bytes = b"") -> list[bytes]:
    tail = 16 - len(prefix)
    blob = os.urandom(count * tail)
    return [prefix + blob[i * tail : (i + 1) * tail] for i in range(count)]


def _workloads(mod, capacity: int, repeats: int, prefix: bytes) -> dict:
    """Measure one implementation on one GUID family (random or shared prefix)."""
    cache = mod.GuidCache(capacity, MAX_AGE)
    seen = cache.seen
    fill = _guids(capacity, prefix)
    for guid in fill:
        seen(guid, KIND, 0.0)
    state = {"fresh": fill, "recent": fill, "half": []}

    def next_batch() -> None:  # untimed: fresh GUIDs for the next insert run
        state["fresh"] = _guids(capacity, prefix)

    def insert() -> None:
        for guid in state["fresh"]:
            seen(guid, KIND, 1.0)
        state["recent"] = state["fresh"]

    def hit() -> None:
        for guid in state["recent"]:
            seen(guid, KIND, 2.0)

    def shuffle() -> None:  # untimed: the present GUIDs in random order, as fresh objects
        order = list(state["recent"])
        random.Random(len(order)).shuffle(order)
        blob = b"".join(order)
        state["shuffled"] = [blob[i : i + 16] for i in range(0, len(blob), 16)]

    def hit_random() -> None:
        for guid in state["shuffled"]:
            seen(guid, KIND, 2.0)

    def refill() -> None:  # untimed: a known full cache, and fresh GUIDs for the mixed run
        next_batch()
        insert()
        state["half"] = _guids(capacity // 2, prefix)

    def mixed() -> None:
        # Each insert evicts the oldest entry; the hits ask the newer half, which stays present.
        recent = state["recent"][capacity // 2 :]
        for i, guid in enumerate(state["half"]):
            seen(guid, KIND, 3.0)
            seen(recent[i], KIND, 3.0)

    def loop_floor() -> None:
        for _guid in state["recent"]:
            pass

    figures = {
        "insert at capacity (evicts)": measure(insert, capacity, repeats, setup=next_batch),
        "hit": measure(hit, capacity, repeats),
        "hit, random order": measure(hit_random, capacity, repeats, setup=shuffle),
        "mixed 50% hits": measure(mixed, capacity // 2 * 2, repeats, setup=refill),
        "python loop floor": measure(loop_floor, capacity, repeats),
    }
    assert len(cache) == capacity
    return {"figures": figures, "memory_bytes": cache.memory_bytes()}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _new_cache(mod, repeats: int) -> dict:
    """Cost of creating GuidCache(2^20): time per cache, bytes allocated, RSS of ten held at once."""
    timing = measure(
        lambda: [mod.GuidCache(CAPACITY_FULL, MAX_AGE) for _ in range(NEW_CACHES)], NEW_CACHES, repeats
    )
    before = _rss_bytes()
    held = [mod.GuidCache(CAPACITY_FULL, MAX_AGE) for _ in range(NEW_CACHES)]
    rss = _rss_bytes() - before
    return {
        "ms_per_cache": 1e3 * timing["median_s"] / NEW_CACHES,
        "spread_pct": timing["spread_pct"],
        "memory_bytes": held[0].memory_bytes(),
        "rss_bytes_for_10": rss,
    }


def _growth(mod, capacity: int, repeats: int, prefix: bytes) -> dict:
    """Fill a new cache to capacity: throughput with every doubling, and the slowest single calls."""
    state: dict = {}

    def setup() -> None:  # untimed: a new cache and fresh GUIDs
        state["cache"] = mod.GuidCache(capacity, MAX_AGE)
        state["guids"] = _guids(capacity, prefix)

    def fill() -> None:
        seen = state["cache"].seen
        for guid in state["guids"]:
            seen(guid, KIND, 0.0)

    figure = measure(fill, capacity, repeats, setup=setup)
    setup()
    seen, clock = state["cache"].seen, time.perf_counter_ns
    calls = []
    for guid in state["guids"]:
        start = clock()
        seen(guid, KIND, 0.0)
        calls.append(clock() - start)
    calls.sort(reverse=True)
    stalls = [ns / 1e6 for ns in calls if ns > STALL_MS * 1e6]
    return {
        "fill": figure,
        "slowest_ms": [ns / 1e6 for ns in calls[:3]],
        "stalls": len(stalls),
        "stall_total_ms": sum(stalls),
        "memory_bytes": state["cache"].memory_bytes(),
    }


def run(quick: bool) -> dict:
    """Run every workload on both implementations, with random and with shared-prefix GUIDs.

    Args:
        quick: a smaller cache and fewer repeats.

    Returns:
        {"capacity", "families": {family: {impl: {"figures": {workload: measure(...)},
        "memory_bytes", "bytes_per_entry", "growth": _growth(...)}}}, "ratios": {family: {workload:
        x}}, "new_cache": {impl: _new_cache(...)}}.
    """
    capacity = CAPACITY_QUICK if quick else CAPACITY_FULL
    repeats = REPEATS_QUICK if quick else REPEATS_FULL
    families: dict[str, dict] = {}
    new_cache = {impl: _new_cache(importlib.import_module(m), repeats) for impl, m in IMPLS.items()}
    for family, prefix in (("random GUIDs", b""), ("shared 8-byte prefix", b"\xab" * 8)):
        for impl, modname in IMPLS.items():
            mod = importlib.import_module(modname)
            res = _workloads(mod, capacity, repeats, prefix)
            res["bytes_per_entry"] = res["memory_bytes"] / capacity
            res["growth"] = _growth(mod, capacity, repeats, prefix)
            res["figures"]["fill from empty (grows)"] = res["growth"]["fill"]
            families.setdefault(family, {})[impl] = res
    ratios = {
        family: {
            w: impls["cython"]["figures"][w]["ops_per_s"] / impls["python"]["figures"][w]["ops_per_s"]
            for w in impls["cython"]["figures"]
        }
        for family, impls in families.items()
    }
    return {
        "capacity": capacity,
        "max_age": MAX_AGE,
        "families": families,
        "ratios": ratios,
        "new_cache": new_cache,
    }


def format_table(result: dict) -> str:
    """The result as a Markdown table (millions of seen() calls per second, median of the repeats)."""
    lines = [
        f"capacity {result['capacity']} entries, max_age {result['max_age']:.0f} s",
        "",
        "| GUIDs | workload | cython M op/s | spread | python M op/s | spread | cython/python |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for family, impls in result["families"].items():
        for workload, cy in impls["cython"]["figures"].items():
            py = impls["python"]["figures"][workload]
            lines.append(
                f"| {family} | {workload} | {cy['ops_per_s'] / 1e6:.1f} | {cy['spread_pct']:.0f}% "
                f"| {py['ops_per_s'] / 1e6:.2f} | {py['spread_pct']:.0f}% "
                f"| {result['ratios'][family][workload]:.1f}x |"
            )
    lines.append("")
    for family, impls in result["families"].items():
        lines.append(
            f"memory ({family}): cython {impls['cython']['bytes_per_entry']:.1f} B/entry, "
            f"python ~{impls['python']['bytes_per_entry']:.0f} B/entry"
        )
    lines += [
        "",
        f"filling a new cache to {result['capacity']} entries, each call timed (stall: > {STALL_MS:g} ms):",
        "",
        "| GUIDs | impl | slowest calls ms | stalls | stall total ms |",
        "|---|---|---|---:|---:|",
    ]
    for family, impls in result["families"].items():
        for impl, res in impls.items():
            gr = res["growth"]
            slowest = ", ".join(f"{ms:.1f}" for ms in gr["slowest_ms"])
            lines.append(f"| {family} | {impl} | {slowest} | {gr['stalls']} | {gr['stall_total_ms']:.1f} |")
    lines += [
        "",
        f"new GuidCache({CAPACITY_FULL}):",
        "",
        f"| impl | ms per cache | bytes allocated | RSS of {NEW_CACHES} held |",
        "|---|---:|---:|---:|",
    ]
    for impl, nc in result["new_cache"].items():
        lines.append(
            f"| {impl} | {nc['ms_per_cache']:.3f} | {nc['memory_bytes'] / 1e3:.1f} KB "
            f"| {nc['rss_bytes_for_10'] / 1e6:.1f} MB |"
        )
    return "\n".join(lines)
