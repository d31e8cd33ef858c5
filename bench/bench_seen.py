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

from __future__ import annotations

import importlib
import os
import random

from run import measure

CAPACITY_FULL = 1 << 20
CAPACITY_QUICK = 1 << 17
REPEATS_FULL = 5
REPEATS_QUICK = 3
# Entries stay for the whole run (the cache's 600 s default): the benchmark measures lookups and
# eviction by capacity, expiry costs the same tail pop.
MAX_AGE = 600.0
KIND = 0x80
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


def run(quick: bool) -> dict:
    """Run every workload on both implementations, with random and with shared-prefix GUIDs.

    Args:
        quick: a smaller cache and fewer repeats.

    Returns:
        {"capacity", "families": {family: {impl: {"figures": {workload: measure(...)},
        "memory_bytes", "bytes_per_entry"}}}, "ratios": {family: {workload: x}}}.
    """
    capacity = CAPACITY_QUICK if quick else CAPACITY_FULL
    repeats = REPEATS_QUICK if quick else REPEATS_FULL
    families: dict[str, dict] = {}
    for family, prefix in (("random GUIDs", b""), ("shared 8-byte prefix", b"\xab" * 8)):
        for impl, modname in IMPLS.items():
            res = _workloads(importlib.import_module(modname), capacity, repeats, prefix)
            res["bytes_per_entry"] = res["memory_bytes"] / capacity
            families.setdefault(family, {})[impl] = res
    ratios = {
        family: {
            w: impls["cython"]["figures"][w]["ops_per_s"] / impls["python"]["figures"][w]["ops_per_s"]
            for w in impls["cython"]["figures"]
        }
        for family, impls in families.items()
    }
    return {"capacity": capacity, "max_age": MAX_AGE, "families": families, "ratios": ratios}


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
    return "\n".join(lines)
