"""Tiger throughput: the Cython gnut._tiger against the pure twin and against hashlib's SHA-1 (the limit)."""

# Strategy: hash the same seeded buffer with each implementation: raw Tiger (one call over the
# whole buffer), Tiger-tree leaves (one Tiger per 1024-byte block with the 0x00 prefix, what
# hashing a shared file costs), and a whole tree (leaves, then every level up). hashlib.sha1 on
# the same bytes is the reference: a tuned C hash the machine already runs for every shared
# file. Each timing is the median of `repeats` after a warm-up (run.measure). The pure twin gets
# a smaller buffer (it runs ~1-2 MB/s) and its MB/s is computed on its own size.

from __future__ import annotations

import hashlib
import importlib
import random
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def measure(fn, nbytes: int, repeats: int) -> dict:
    """Median time of `repeats` calls after a warm-up, as bytes per second (run.measure's shape;
    kept here so the smoke test can import this module whichever `run` module is on sys.path)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "median_s": median,
        "ops_per_s": nbytes / median,
        "spread_pct": 100.0 * (max(times) - min(times)) / median,
    }


IMPLS = {"cython": "gnut._tiger", "python": "gnut._puretiger"}


def _tree(mod, data: bytes) -> bytes:
    level = mod.tth_leaves(data)
    while len(level) > 24:
        level = mod.tth_parents(level)
    return level


def run(quick: bool) -> dict:
    size = (8 if quick else 64) * 1024 * 1024
    pure_size = (256 if quick else 2048) * 1024
    repeats = 3 if quick else 5
    data = random.Random(1996).randbytes(size)
    rows = []

    def row(name: str, impl: str, fn, nbytes: int, reps: int) -> None:
        m = measure(fn, nbytes, reps)
        rows.append({"workload": name, "impl": impl, "bytes": nbytes, "mb_per_s": m["ops_per_s"] / 1e6, **m})

    for impl, modname in IMPLS.items():
        try:
            mod = importlib.import_module(modname)
        except ImportError as exc:  # the Cython half needs a build
            rows.append({"workload": "all", "impl": impl, "error": str(exc)})
            continue
        buf = data if impl == "cython" else data[:pure_size]
        reps = repeats if impl == "cython" else 1
        row("tiger (one call)", impl, lambda m=mod, b=buf: m.tiger(b), len(buf), reps)
        row("TTH leaves (1 KiB blocks)", impl, lambda m=mod, b=buf: m.tth_leaves(b), len(buf), reps)
        row("TTH whole tree", impl, lambda m=mod, b=buf: _tree(m, b), len(buf), reps)
    row("sha1 (hashlib, reference)", "hashlib", lambda: hashlib.sha1(data).digest(), size, repeats)
    return {"size": size, "pure_size": pure_size, "repeats": repeats, "rows": rows}


def format_table(result: dict) -> str:
    lines = [
        f"buffer: {result['size'] // (1024 * 1024)} MiB (pure twin: {result['pure_size'] // 1024} KiB)",
        "",
        "| workload | impl | MB/s | spread |",
        "|---|---|---:|---:|",
    ]
    by = {}
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['impl']} | not built: {r['error'][:60]} | |")
            continue
        by[(r["workload"], r["impl"])] = r["mb_per_s"]
        lines.append(f"| {r['workload']} | {r['impl']} | {r['mb_per_s']:.1f} | {r['spread_pct']:.0f}% |")
    sha = by.get(("sha1 (hashlib, reference)", "hashlib"))
    lines.append("")
    for workload in ("tiger (one call)", "TTH leaves (1 KiB blocks)", "TTH whole tree"):
        cy, py = by.get((workload, "cython")), by.get((workload, "python"))
        if cy and py and sha:
            lines.append(f"{workload}: cython/python {cy / py:.0f}x, cython/sha1 {cy / sha:.2f}")
    return "\n".join(lines)
