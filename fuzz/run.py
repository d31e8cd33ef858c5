"""Run the coverage-guided fuzz targets (atheris) for N inputs each and report executions and findings."""

# Usage (from the repository root, in the venv that has atheris):
#   python fuzz/run.py --runs 1000000                  # every target, one process each, 2 at a time
#   python fuzz/run.py --runs 100000 frame_reader qrp  # some targets
#   python fuzz/run.py --replay                        # re-run every stored regression input
#
# Strategy: each target runs in its own child process (`--child NAME`), because libFuzzer owns
# the process: it exits at the first finding and keeps global coverage state.  The child
# instruments gnut and h11 with atheris (Python bytecode coverage), seeds the corpus with
# captured real-servent bytes (fuzz/targets.py seeds()), and runs -runs=N inputs.  The Cython
# module gnut._fastpath is compiled without sanitizer coverage, so its branches do not guide the
# fuzzer; the differential targets (frame_reader, guid_cache) still run every input through it
# and compare it with the instrumented pure twin.  A finding (crash input) is copied to
# fuzz/regressions/<target>/ where tests/test_fuzz_props.py replays it on every test run.

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REGRESSIONS = HERE / "regressions"
# Largest input libFuzzer generates: a few maximal messages; bigger only slows each run.
MAX_LEN = 4096
# Seconds one input may take before libFuzzer reports it as a hang (a finding too).
INPUT_TIMEOUT = 10


def _child(name: str, runs: int, corpus: Path, artifacts: Path, max_len: int) -> None:
    import atheris

    sys.path[:0] = [str(HERE), str(ROOT / "src")]
    with atheris.instrument_imports(include=["gnut", "h11", "targets"]):
        import targets
    target = targets.TARGETS[name]
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(targets.seeds(name)):
        (corpus / f"seed-{i}").write_bytes(seed[:max_len])
    argv = [
        sys.argv[0],
        f"-runs={runs}",
        f"-max_len={max_len}",
        f"-timeout={INPUT_TIMEOUT}",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
        str(corpus),
    ]
    atheris.Setup(argv, target)
    atheris.Fuzz()


def _parse(output: str) -> dict:
    stats = dict(re.findall(r"stat::(\w+):\s+(\d+)", output))
    cov = re.findall(r"cov: (\d+) ft: (\d+)", output)
    done = re.search(r"Done (\d+) runs in (\d+) second", output)
    return {
        "executions": int(stats.get("number_of_executed_units", done.group(1) if done else 0)),
        "seconds": int(done.group(2)) if done else None,
        "peak_rss_mb": int(stats["peak_rss_mb"]) if "peak_rss_mb" in stats else None,
        "coverage_edges": int(cov[-1][0]) if cov else None,
        "features": int(cov[-1][1]) if cov else None,
    }


def run_target(name: str, runs: int, max_len: int, keep_corpus: Path | None) -> dict:
    """Fuzz one target in a child process; return its figures and findings.

    Args:
        name: a key of targets.TARGETS.
        runs: inputs to execute.
        max_len: largest generated input.
        keep_corpus: folder to keep the grown corpus in (None: a temporary one).

    Returns:
        executions, seconds, exec/s, coverage, peak RSS and the findings (paths under fuzz/regressions).
    """
    work = Path(tempfile.mkdtemp(prefix=f"gnut-fuzz-{name}-"))
    corpus = (keep_corpus / name) if keep_corpus else work / "corpus"
    artifacts = work / "artifacts"
    artifacts.mkdir()
    started = time.monotonic()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            name,
            "--runs",
            str(runs),
            "--max-len",
            str(max_len),
            "--corpus",
            str(corpus),
            "--artifacts",
            str(artifacts),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    result = {"target": name, "runs_asked": runs, **_parse(proc.stderr), "exit": proc.returncode}
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    if result["seconds"]:
        result["exec_per_second"] = round(result["executions"] / max(result["seconds"], 1))
    findings = []
    for art in sorted(artifacts.iterdir()):
        data = art.read_bytes()
        dest = REGRESSIONS / name / f"{art.name.split('-')[0]}-{hashlib.sha1(data).hexdigest()[:16]}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        findings.append(str(dest.relative_to(ROOT)))
    result["findings"] = findings
    if proc.returncode != 0 and not findings:
        result["error"] = proc.stderr[-2000:]
    elif findings:
        result["crash_log"] = proc.stderr[-3000:]
    shutil.rmtree(work, ignore_errors=True)
    return result


def replay() -> int:
    """Run every stored regression input through its target; return the number still failing."""
    sys.path[:0] = [str(HERE), str(ROOT / "src")]
    import targets

    failing = 0
    for path in sorted(REGRESSIONS.glob("*/*")):
        try:
            targets.TARGETS[path.parent.name](path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - report every failure, keep going
            failing += 1
            print(f"FAIL {path.relative_to(ROOT)}: {exc!r}")
        else:
            print(f"ok   {path.relative_to(ROOT)}")
    return failing


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module comment."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("targets", nargs="*", help="targets to run (default: all)")
    ap.add_argument("--runs", type=int, default=100_000, help="inputs per target")
    ap.add_argument("--jobs", type=int, default=2, help="targets fuzzed at the same time")
    ap.add_argument("--max-len", type=int, default=MAX_LEN)
    ap.add_argument("--keep-corpus", type=Path, help="keep the grown corpora in this folder")
    ap.add_argument("--json", type=Path, help="write the figures to this file")
    ap.add_argument("--replay", action="store_true", help="re-run the stored regression inputs")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--artifacts", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, args.runs, args.corpus, args.artifacts, args.max_len)
        return 0
    if args.replay:
        return 1 if replay() else 0
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed: pip install atheris (the 'fuzz' extra)", file=sys.stderr)
        return 2
    sys.path[:0] = [str(HERE), str(ROOT / "src")]
    import targets

    names = args.targets or list(targets.TARGETS)
    unknown = [n for n in names if n not in targets.TARGETS]
    if unknown:
        ap.error(f"unknown targets {unknown}; known: {', '.join(targets.TARGETS)}")
    results = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_target, n, args.runs, args.max_len, args.keep_corpus): n for n in names}
        for fut in concurrent.futures.as_completed(futures):
            r = fut.result()
            results.append(r)
            print(
                f"{r['target']:15} {r['executions']:>9} execs  {r.get('seconds') or 0:>5} s  "
                f"{r.get('exec_per_second', 0):>6}/s  cov {r.get('coverage_edges')}  ft {r.get('features')}  "
                f"rss {r.get('peak_rss_mb')} MB  findings {len(r['findings'])}"
                + (f"  ERROR exit {r['exit']}" if "error" in r else ""),
                flush=True,
            )
    results.sort(key=lambda r: names.index(r["target"]))
    if args.json:
        meta = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "max_len": args.max_len}
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    return 1 if any(r["findings"] or "error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
