"""Host cache benchmark: microseconds per PONG-learned address at a full cache, now and before.

Strategy: the cache is filled to capacity with good and unverified entries spread over many /24s,
then each workload calls add() as node._on_pong does, once per address: "new host" (a fresh
address: insert, evicting the oldest unverified entry), "known host" (refresh), "refused"
(a subnet already at its cap: the cheap early exit an attacker's block meets). "before" loads the
host cache of commit BEFORE_COMMIT (the version the trust issue measured, which scanned every
entry to evict one) from git, when git and that commit are at hand, and times "new host" on it.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
from pathlib import Path

from gnut.runtime.hostcache import HOST_CACHE_CAPACITY, HostCache

REPO_DIR = Path(__file__).resolve().parents[1]


def _bench_run():
    """bench/run.py by path (a test session may hold fuzz/run.py under the name `run`)."""
    mod = sys.modules.get("gnut_bench_run")
    if mod is None:
        spec = importlib.util.spec_from_file_location("gnut_bench_run", REPO_DIR / "bench" / "run.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["gnut_bench_run"] = mod
        spec.loader.exec_module(mod)
    return mod


def measure(*args, **kw) -> dict:
    """run.measure (timing of one workload)."""
    return _bench_run().measure(*args, **kw)

# The host cache before the trust rework (runtime/hostcache.py at this commit).
BEFORE_COMMIT = "a6b83bf"
ADDS_FULL = 20_000
ADDS_QUICK = 4_000
REPEATS_FULL = 5
REPEATS_QUICK = 3


def _addr(i: int) -> str:
    """A distinct public-looking address per i, spread over /24s (documentation ranges avoided)."""
    return f"{11 + i // 65025 % 200}.{i // 255 % 255}.{i % 255}.1"


def _full_cache(cls) -> object:
    hc = cls(None)
    for i in range(HOST_CACHE_CAPACITY):
        if hasattr(hc, "mark_good") and i % 4 == 0:
            hc.mark_good(_addr(10_000_000 + i), 6346, 0.0)
        else:
            hc.add(_addr(10_000_000 + i), 6346, "pong", 0.0)
    return hc


def _old_class():
    try:
        src = subprocess.run(["git", "show", f"{BEFORE_COMMIT}:src/gnut/runtime/hostcache.py"], cwd=REPO_DIR,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    mod = types.ModuleType("hostcache_before")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up
    exec(compile(src, f"{BEFORE_COMMIT}:hostcache.py", "exec"), mod.__dict__)  # noqa: S102 (our own file)
    return mod.HostCache


def _workloads(cls, adds: int, repeats: int, only_new: bool = False) -> dict:
    state = {"hc": None, "base": 0}

    def fresh() -> None:
        state["hc"] = _full_cache(cls)
        state["base"] += adds

    def new_hosts() -> None:
        hc, base = state["hc"], state["base"]
        for i in range(adds):
            hc.add(_addr(base + i), 6346, "pong", 1.0)

    out = {"new host (insert + evict)": measure(new_hosts, adds, repeats, setup=fresh)}
    if only_new:
        return out
    hc = _full_cache(cls)
    known = [_addr(10_000_000 + i) for i in range(1, HOST_CACHE_CAPACITY, 4)]

    def known_hosts() -> None:
        for i in range(adds):
            hc.add(known[i % len(known)], 6346, "pong", 1.0)

    def refused() -> None:
        for i in range(adds):
            hc.add("9.9.9.9", 1000 + i % 60000, "pong", 1.0)

    out["known host (refresh)"] = measure(known_hosts, adds, repeats)
    out["refused (subnet full)"] = measure(refused, adds, repeats)
    return out


def run(quick: bool) -> dict:
    adds = ADDS_QUICK if quick else ADDS_FULL
    repeats = REPEATS_QUICK if quick else REPEATS_FULL
    result = {"capacity": HOST_CACHE_CAPACITY, "adds": adds, "now": _workloads(HostCache, adds, repeats)}
    old = _old_class()
    if old is not None:
        result["before"] = _workloads(old, max(adds // 10, 200), repeats, only_new=True)
    return result


def format_table(result: dict) -> str:
    lines = [
        f"host cache full at {result['capacity']} entries; {result['adds']} add() calls per run",
        "",
        "| version | workload | us per add | spread |",
        "|---|---|---:|---:|",
    ]
    for version in ("before", "now"):
        for name, fig in result.get(version, {}).items():
            lines.append(f"| {version} | {name} | {1e6 / fig['ops_per_s']:.2f} | {fig['spread_pct']:.0f}% |")
    return "\n".join(lines)
