"""Servent benchmark: relayed distinct queries/s of any Gnutella servent at HOST:PORT, with exact loss.

`python bench/run.py servent [--quick] [--target HOST:PORT]`. Without --target it measures, in one
run, the null relay (the limit), `gnut node --mode flood` and `--mode ultrapeer` on the Cython fast
path, and the pure-Python node, each in its own process. With --target it measures that servent
only (gnut, gtk-gnutella, GnutellaBun, ...: anything that speaks the 0.6 handshake).
"""

# Strategy
# --------
# The load side is compiled C (bench/servent_load.c, built here with the system's cc): one source
# link writes COUNT unique QUERY messages (TTL 3, gnut's own encodings of realistic texts, GUIDs
# that carry a run id and a sequence number) as fast as the servent reads them; SINKS sink links
# count what the servent relays to them (TTL 2) with a bitmap, so loss and duplicates are exact.
# Each link is its own process on its own 127.0.0.x address with its own Listen-IP port, as real
# servents require. Rate = distinct queries a sink received / (its last arrival - the source's
# first byte); the table shows the median over sinks and rounds. When the machine has two cores
# the servent is pinned to one and the load processes to the other. Peak RSS of a local servent is
# read from /proc (VmHWM).

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if str(REPO_DIR / "src") not in sys.path:
    sys.path.insert(0, str(REPO_DIR / "src"))

from bench_relay import RelayProcess, query_payloads  # noqa: E402

SINKS = 4  # the shape of the table: 1 source -> servent -> 4 sinks
TTL = 3  # arrives with TTL 3, relayed with TTL 2: every servent forwards it to its ultrapeer links
COUNT = {"full": 2_000_000, "quick": 200_000}
ROUNDS = {"full": 3, "quick": 1}
# A sink stops this long after the last query it counted: the servent has drained.
IDLE_MS = 1500
# Nothing in one round may take longer than this (a stuck servent ends the round, it is not awaited).
MAX_MS = 120_000
TEMPLATES = 2000  # distinct query texts cycled through by the source
SOURCE_IP = "127.0.0.10"  # the sinks use 127.0.0.11.. (one address per link)
LOCAL_KINDS = ("null", "cython-flood", "cython-ultrapeer", "python-flood")


def build_loader(out_dir: Path) -> Path:
    """Compile bench/servent_load.c (cached by the source's hash)."""
    src = BENCH_DIR / "servent_load.c"
    digest = hashlib.sha1(src.read_bytes()).hexdigest()[:12]
    exe = out_dir / f"servent_load-{digest}"
    if not exe.exists():
        cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if cc is None:
            raise RuntimeError("the servent benchmark needs a C compiler (cc, gcc or clang)")
        out_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run([cc, "-O2", "-Wall", "-o", str(exe), str(src)], check=True)
    return exe


def write_templates(path: Path) -> None:
    """QUERY payloads as gnut encodes them (flags word, text, NUL), each prefixed by its length."""
    with open(path, "wb") as fh:
        for payload in query_payloads(TEMPLATES, seed=5):
            fh.write(len(payload).to_bytes(4, "little") + payload)


def _pin(cpu: int | None):
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def _cpus() -> tuple[int | None, int | None]:
    """(servent core, load core) when there are two or more cores, else no pinning."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)


def one_round(exe: Path, templates: Path, host: str, port: int, count: int, run_id: int, load_cpu) -> dict:
    """One source and SINKS sinks against host:port; exact counts per sink."""
    sinks = []
    for i in range(SINKS):
        cmd = [str(exe), "sink", host, str(port), f"127.0.0.{11 + i}", str(40_000 + i), str(run_id), str(count),
               str(IDLE_MS), str(MAX_MS)]
        sinks.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      preexec_fn=_pin(load_cpu)))
    try:
        for s in sinks:
            line = s.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"sink could not link: {s.stderr.read().strip() or line}")
        time.sleep(0.3)  # the servent has registered every sink before the first query arrives
        source = subprocess.Popen(
            [str(exe), "source", host, str(port), SOURCE_IP, "40100", str(run_id), str(count), str(templates), str(TTL)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_pin(load_cpu),
        )
        line = source.stdout.readline()
        if not line:
            raise RuntimeError(f"source failed: {source.stderr.read().strip()}")
        sent = json.loads(line)
        results = []
        for s in sinks:
            out, err = s.communicate(timeout=MAX_MS / 1000 + 10)
            results.append(json.loads(out.strip().splitlines()[-1]))
        source.terminate()
        source.wait(5)
    finally:
        for p in sinks:
            if p.poll() is None:
                p.kill()
    per_sink = []
    for r in results:
        span = (r["last_ns"] - sent["t0_ns"]) / 1e9 if r["distinct"] else float("inf")
        per_sink.append({**r, "rate": r["distinct"] / span if span > 0 else 0.0, "loss": count - r["distinct"]})
    return {"sent": count, "source_s": (sent["t1_ns"] - sent["t0_ns"]) / 1e9, "sinks": per_sink}


def _summary(rounds: list[dict]) -> dict:
    rates = [s["rate"] for r in rounds for s in r["sinks"]]
    return {
        "rate_median": statistics.median(rates),
        "rate_min": min(rates),
        "rate_max": max(rates),
        "loss_max": max(s["loss"] for r in rounds for s in r["sinks"]),
        "dups_max": max(s["dups"] for r in rounds for s in r["sinks"]),
        "sent": rounds[0]["sent"],
        "rounds": rounds,
    }


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _local(kind: str, tmp: Path, servent_cpu) -> RelayProcess:
    impl, _, mode = kind.partition("-")
    proc = RelayProcess("null" if kind == "null" else impl, tmp, max_peers=64, mode=mode or "flood")
    if servent_cpu is not None:
        os.sched_setaffinity(proc.proc.pid, {servent_cpu})
    return proc


# The scale part: quiet leaf links held by one ultrapeer while the relay round runs.
SCALE_LINKS = {"full": (100, 5_000, 19_000), "quick": (100, 2_000)}
SCALE_COUNT = {"full": 500_000, "quick": 100_000}
# Handshakes in flight at once (one process each): admission is measured as throughput, not latency.
IDLE_WORKERS = 16


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def scale(exe: Path, templates: Path, tmp: Path, size: str, servent_cpu, load_cpu, run_id: int) -> list[dict]:
    """An ultrapeer holding N quiet leaf links: admission rate, memory per link, relay rate."""
    rows = []
    for n in SCALE_LINKS[size]:
        proc = RelayProcess("cython", tmp, max_peers=16, mode="ultrapeer",
                            extra=("--max-leaves", str(n + 10)))
        idle = None
        try:
            if servent_cpu is not None:
                os.sched_setaffinity(proc.proc.pid, {servent_cpu})
            time.sleep(0.3)
            before = _rss_kb(proc.proc.pid)
            idle = subprocess.Popen([str(exe), "idle", "127.0.0.1", str(proc.port), str(n), "leaf", str(IDLE_WORKERS)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    preexec_fn=_pin(load_cpu), start_new_session=True)
            admit_s = 0.0
            for _ in range(IDLE_WORKERS):
                line = idle.stdout.readline().split()
                if len(line) != 5 or line[0] != "admitted":
                    raise RuntimeError(f"idle links failed: {idle.stderr.read().strip()}")
                admit_s = max(admit_s, float(line[3]))
            time.sleep(1.0)  # let the node settle (QRP, pings) before measuring
            after = _rss_kb(proc.proc.pid)
            r = one_round(exe, templates, "127.0.0.1", proc.port, SCALE_COUNT[size], run_id + n, load_cpu)
            rate = statistics.median(s["rate"] for s in r["sinks"])
            rows.append({
                "links": n,
                "admitted_per_s": n / admit_s if admit_s > 0 else None,
                "kb_per_link": (after - before) / n,
                "rate": rate,
                "loss_max": max(s["loss"] for s in r["sinks"]),
            })
        finally:
            if idle is not None:
                os.killpg(idle.pid, signal.SIGKILL)  # the idle workers are one process group
                idle.wait()
            proc.stop()
    base = rows[0]["rate"] if rows else None
    for row in rows:
        row["vs_fewest"] = row["rate"] / base if base else None
    return rows


def run(quick: bool, target: str | None = None) -> dict:
    """Measure `target` (HOST:PORT), or the local null relay and gnut nodes when target is None."""
    size = "quick" if quick else "full"
    count, rounds = COUNT[size], ROUNDS[size]
    out_dir = BENCH_DIR / "out"
    exe = build_loader(out_dir)
    servent_cpu, load_cpu = _cpus()
    result: dict = {"count": count, "rounds": rounds, "sinks": SINKS, "ttl": TTL, "servents": {}}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        templates = tmp / "templates.bin"
        write_templates(templates)
        run_id = int(time.time()) & 0x7FFFFFFF
        if target is not None:
            host, _, port = target.rpartition(":")
            rs = [one_round(exe, templates, host, int(port), count, run_id + i, load_cpu) for i in range(rounds)]
            result["servents"][target] = _summary(rs)
            return result
        for kind in LOCAL_KINDS:
            n = count if kind != "python-flood" else max(count // 8, 20_000)
            proc = _local(kind, tmp, servent_cpu)
            try:
                rs = [one_round(exe, templates, "127.0.0.1", proc.port, n, run_id + 100 * i, load_cpu)
                      for i in range(rounds)]
                result["servents"][kind] = {**_summary(rs), "peak_rss_kb": _peak_rss_kb(proc.proc.pid)}
            finally:
                proc.stop()
            run_id += 1000
        result["scale"] = scale(exe, templates, tmp, size, servent_cpu, load_cpu, run_id + 50_000)
    limit = result["servents"].get("null", {}).get("rate_median")
    pure = result["servents"].get("python-flood", {}).get("rate_median")
    for s in result["servents"].values():
        s["vs_null"] = s["rate_median"] / limit if limit else None
        s["vs_pure"] = s["rate_median"] / pure if pure else None
    return result


def format_table(result: dict) -> str:
    lines = [
        f"1 source -> servent -> {result['sinks']} sinks, {result['count']:,} unique queries per round "
        f"(TTL {result['ttl']}), {result['rounds']} round(s); rate = distinct queries a sink received / s",
        "",
        f"{'servent':<22} {'relayed q/s (median)':>21} {'min':>11} {'max':>11} {'loss':>8} {'dups':>6} "
        f"{'peak RSS':>10} {'x null':>7} {'x pure':>7}",
    ]
    for name, s in result["servents"].items():
        rss = f"{s['peak_rss_kb'] / 1024:.0f} MB" if s.get("peak_rss_kb") else "-"
        vs_null = f"{s['vs_null']:.2f}" if s.get("vs_null") else "-"
        vs_pure = f"{s['vs_pure']:.1f}" if s.get("vs_pure") else "-"
        lines.append(
            f"{name:<22} {s['rate_median']:>21,.0f} {s['rate_min']:>11,.0f} {s['rate_max']:>11,.0f} "
            f"{s['loss_max']:>8,} {s['dups_max']:>6,} {rss:>10} {vs_null:>7} {vs_pure:>7}"
        )
    if result.get("scale"):
        lines += [
            "",
            "gnut ultrapeer (Cython) holding N quiet leaf links (each its own 127.1.x.y, answering PINGs):",
            f"{'links':>7} {'admitted/s':>11} {'KB/link':>8} {'relayed q/s':>12} {'x fewest':>9} {'loss':>6}",
        ]
        for row in result["scale"]:
            lines.append(
                f"{row['links']:>7,} {row['admitted_per_s'] or 0:>11,.0f} {row['kb_per_link']:>8.1f} "
                f"{row['rate']:>12,.0f} {row['vs_fewest'] or 0:>9.2f} {row['loss_max']:>6,}"
            )
    return "\n".join(lines)
