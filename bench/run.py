"""Benchmark dispatcher: `python bench/run.py NAME [--quick] [--json PATH]` runs bench/bench_NAME.py."""

# Strategy: a benchmark is any module bench/bench_<name>.py exposing `run(quick: bool) -> dict` and
# `format_table(result: dict) -> str`; it is found by name, so adding one needs no change here.
# Helpers shared by benchmark modules live here too (`from run import measure, machine_info`).

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
for _path in (str(BENCH_DIR), str(REPO_DIR / "src")):
    if _path not in sys.path:
        sys.path.insert(0, _path)


def available() -> list[str]:
    """Names of the benchmarks present (bench/bench_<name>.py)."""
    return sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def machine_info() -> dict:
    """Where and when the figures were taken."""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "commit": _git_commit(),
    }


def measure(
    fn: Callable[[], object], ops: int, repeats: int, setup: Callable[[], object] | None = None
) -> dict:
    """Time fn() `repeats` times (after an untimed warm-up) and summarise as operations per second.

    Args:
        fn: the work; one call performs `ops` operations.
        ops: operations per call.
        repeats: timed calls.
        setup: run untimed before each call (fresh state), when given.

    Returns:
        {"ops", "repeats", "median_s", "min_s", "max_s", "ops_per_s" (median), "spread_pct"
        ((max - min) / median of the times)}.
    """
    times = []
    for i in range(repeats + 1):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        if i:  # the first call warms caches and the allocator
            times.append(elapsed)
    median = statistics.median(times)
    return {
        "ops": ops,
        "repeats": repeats,
        "median_s": median,
        "min_s": min(times),
        "max_s": max(times),
        "ops_per_s": ops / median,
        "spread_pct": 100.0 * (max(times) - min(times)) / median,
    }


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark, print its table and write the JSON record.

    Args:
        argv: command-line arguments (sys.argv[1:] when None).

    Returns:
        The process exit status.
    """
    names = available()
    parser = argparse.ArgumentParser(description="gnut benchmarks (not timed tests)")
    parser.add_argument("name", choices=[*names, "all"], help="which benchmark (bench/bench_<name>.py), or all")
    parser.add_argument("--quick", action="store_true", help="smaller inputs and fewer repeats")
    parser.add_argument(
        "--json", type=Path, help="where to write the JSON record (default bench/out/<name>.json)"
    )
    parser.add_argument("--plot", type=Path, help="write a PNG plot (benchmarks that define plot())")
    parser.add_argument("--target", metavar="HOST:PORT",
                        help="servent benchmark: measure the Gnutella servent at HOST:PORT instead of local ones")
    args = parser.parse_args(argv)
    if args.name == "all":
        status = 0
        for name in names:
            sub = [name] + (["--quick"] if args.quick else [])
            if args.json:
                sub += ["--json", str(args.json.with_name(f"{args.json.stem}-{name}.json"))]
            if args.plot and hasattr(importlib.import_module(f"bench_{name}"), "plot"):
                sub += ["--plot", str(args.plot.with_name(f"{args.plot.stem}-{name}.png"))]
            status |= main(sub)
            print()
        return status
    module = importlib.import_module(f"bench_{args.name}")
    if args.plot and not hasattr(module, "plot"):
        parser.error(f"benchmark {args.name!r} has no plot")
    if args.target and args.name != "servent":
        parser.error("--target applies to the servent benchmark only")
    result = module.run(args.quick, target=args.target) if args.target else module.run(args.quick)
    record = {"benchmark": args.name, "quick": args.quick, "machine": machine_info(), "result": result}
    info = record["machine"]
    print(f"# {args.name} — {info['date']} — {info['cpu']} x{info['cpus']} — Python {info['python']}")
    print(module.format_table(result))
    path = args.json or BENCH_DIR / "out" / f"{args.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nJSON written to {path}")
    if args.plot:
        module.plot(result, str(args.plot))
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
