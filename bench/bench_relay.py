"""Relay benchmark: a `gnut node` process relaying a QUERY flood to 4 sinks, vs a null relay and the pure node."""

# Strategy
# --------
# Three relays run as separate processes, so the load generator (this process) never shares
# their CPU core: the null relay (bench/null_relay.py: Cython framing on uvloop,
# every message written to every other link, no routing, lossless backpressure), the
# `gnut node --mode flood` on the Cython fast path, and the same node with GNUT_NO_EXTENSIONS=1.
# The load generator is one selector loop over raw sockets: one source link writes a
# pre-built stream of realistic QUERY messages (fresh GUIDs per round, a share of them
# duplicates that a node must drop), four sink links count the messages relayed to them
# with FrameReader. Rounds alternate between the relays (null, cython, python, null, ...) so
# drift on a noisy machine hits all three alike; each figure is the median of the rounds with
# its spread. Rates: inbound = messages written by the source / round time, outbound =
# messages counted at the sinks / round time, round time = first byte sent to last byte
# relayed. A second part opens 1,000 (and 10,000) handshaken idle links to a node and reads
# its RSS from /proc before and after. A last round runs the Cython node under cProfile.

from __future__ import annotations

import os
import pstats
import random
import re
import resource
import selectors
import shutil
import signal
import socket
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

from gnut._fastpath import FrameReader  # noqa: E402  (the load generator always counts with Cython)

from gnut.constants import MSG_QUERY  # noqa: E402
from gnut.protocol import connection as cx  # noqa: E402
from gnut.protocol import handshake as hs  # noqa: E402
from gnut.protocol import messages  # noqa: E402

SINKS = 4  # the issue's shape: one source, four sinks
# Messages per round, per relay: enough for rounds of ~0.3-1.5 s (rates are per second, so
# the counts may differ; the null relay is ~10x faster than a node and gets more).
MESSAGES = {
    "null": {"full": 1_500_000, "quick": 400_000},
    "cython": {"full": 300_000, "quick": 60_000},
    "python": {"full": 150_000, "quick": 30_000},
}
ROUNDS_FULL = 5
ROUNDS_QUICK = 2
PROFILE_MESSAGES_FULL = 1_000_000
PROFILE_MESSAGES_QUICK = 300_000
# Duplicates: the first sink echoes every 10th query it receives back to the relay, as a
# neighbour that got the query over a second path does (10% duplicates, from another link than
# the first copy: a link that resends its own broadcasts is cut by the node as a replayer).
ECHO_EVERY = 10
IDLE_LINKS_FULL = (1_000, 10_000)
IDLE_LINKS_QUICK = (1_000,)
# The node closes more than 120 accepts per source IP per minute (node.ACCEPTS_PER_IP_PER_MINUTE):
# idle links come from many loopback addresses 127.0.x.y, at most this many from each.
LINKS_PER_SOURCE_IP = 100
# Connections in flight at once while opening idle links (the listen backlog is 100).
CONNECT_BATCH = 100
# A round ends when the sinks have everything they can get, or nothing arrived for this long.
STALL_TIMEOUT = 1.5
# Waiting for a relay process to listen, a handshake to finish, links to settle.
START_TIMEOUT = 20.0
HANDSHAKE_TIMEOUT = 30.0  # per batch of CONNECT_BATCH links
SETTLE = 1.0
SEND_CHUNK = 256 * 1024  # one send() of the source
RECV_CHUNK = 1024 * 1024  # one recv() of a sink
WORDS = 600  # vocabulary of the generated query texts
TOP_PROFILE = 15  # profile rows reported
_LISTEN_RE = re.compile(rb"listening on 127\.0\.0\.1:(\d+)")


# --- traffic ----------------------------------------------------------------------------------
def _vocabulary(rng: random.Random) -> list[str]:
    syll = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "be", "da", "fu", "go", "ha", "jo", "pe", "zu"]
    return ["".join(rng.choice(syll) for _ in range(rng.randrange(2, 5))) for _ in range(WORDS)]


def query_payloads(count: int, seed: int = 1) -> list[bytes]:
    """Distinct-looking QUERY payloads: 1-3 words, modern flags, 15% with a urn:sha1 extension.

    Args:
        count: how many payloads.
        seed: the generator's seed (deterministic output).

    Returns:
        Encoded QUERY payloads (about 20-70 bytes each, like live traffic).
    """
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    b32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    out = []
    for _ in range(count):
        text = " ".join(rng.choice(vocab) for _ in range(rng.choice((1, 2, 2, 3))))
        urns = ("urn:sha1:" + "".join(rng.choice(b32) for _ in range(32)),) if rng.random() < 0.15 else ()
        flags = messages.QF_FLAGS_IN_USE | rng.choice((messages.QF_GGEP_H, 0x3800, 0x0800 | 0x0400))
        out.append(messages.Query(text=text, flags=flags, urns=urns).encode())
    return out


def build_stream(payloads: list[bytes], count: int, seed: int) -> bytes:
    """One round's source stream: `count` QUERY messages with fresh GUIDs (a node remembers GUIDs).

    Args:
        payloads: pool of QUERY payloads (cycled).
        count: messages in the stream.
        seed: the GUIDs' seed.

    Returns:
        The stream's bytes.
    """
    rng = random.Random(seed)
    parts: list[bytes] = []
    npay = len(payloads)
    for i in range(count):
        hops = rng.choice((0, 0, 1, 1, 2))
        ttl = rng.choice((2, 3, 4)) if hops < 2 else rng.choice((2, 3))
        payload = payloads[i % npay]
        parts.append(
            rng.randbytes(16) + bytes((MSG_QUERY, ttl, hops)) + len(payload).to_bytes(4, "little") + payload
        )
    return b"".join(parts)


# --- relay processes ------------------------------------------------------------------------------
def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (children inherit it).

    Returns:
        The soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class RelayProcess:
    """A relay under test in its own process: null relay or `gnut node` (cython or python)."""

    def __init__(self, kind: str, tmp: Path, max_peers: int = 64, profile: Path | None = None,
                 mode: str = "flood", extra: tuple[str, ...] = ()) -> None:
        self.kind = kind
        home = tmp / f"home-{kind}-{os.getpid()}-{time.monotonic_ns()}"
        home.mkdir(parents=True)
        env = dict(os.environ, GNUT_HOME=str(home), PYTHONPATH=str(REPO_DIR / "src"))
        env.pop("GNUT_NO_EXTENSIONS", None)
        if kind == "python":
            env["GNUT_NO_EXTENSIONS"] = "1"
        py = [sys.executable]
        if profile is not None:
            py += ["-m", "cProfile", "-o", str(profile)]
        if kind == "null":
            cmd = py + [str(BENCH_DIR / "null_relay.py")]
        else:
            # Every load connection comes from 127.0.0.1: the lab raises the per-address
            # fairness limits in the node's config file (they hold for loopback otherwise).
            lab = home / "lab.toml"
            lab.write_text(f"max_links_per_ip = {max_peers + 16}\nmax_links_per_24 = {max_peers + 16}\n"
                           f"max_pending_per_ip = {max_peers + 16}\n")
            cmd = py + [
                "-m",
                "gnut",
                "node",
                "--listen",
                "127.0.0.1:0",
                "--mode",
                mode,
                "--no-control",
                "--out-links",
                "0",
                "--max-peers",
                str(max_peers),
                *extra,
                "--config",
                str(lab),
            ]
        self.log_path = home / "stderr.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=REPO_DIR, stdout=subprocess.DEVNULL, stderr=self._log)
        self.port = self._wait_port()

    def _wait_port(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            m = _LISTEN_RE.search(self.log_path.read_bytes())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.kind} relay did not start: {self.log_path.read_text()[-2000:]}")

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def rss_kb(self) -> int:
        """Resident set size of the relay process, from /proc/PID/status."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS line")

    def stop(self) -> None:
        """SIGTERM (a node says BYE and exits; cProfile writes its file), then wait."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# --- load generator -------------------------------------------------------------------------------
def _bench_handshake_config() -> hs.HandshakeConfig:
    # No deflate (the figures are for plain links) and no listen port: the node must not dial us.
    return hs.HandshakeConfig(
        mode="ultrapeer", user_agent="gnut-bench/1", listen_ip="", listen_port=0, accept_deflate=False
    )


class Link:
    """One raw handshaken link of the load generator (non-blocking socket + sans-IO Connection)."""

    __slots__ = ("sock", "conn", "open", "reader", "msgs", "bytes", "done")

    def __init__(self, sock: socket.socket, cfg: hs.HandshakeConfig) -> None:
        self.sock = sock
        self.conn = cx.Connection(cfg, outgoing=True, remote_ip="127.0.0.1")
        self.open = False
        self.reader = FrameReader()
        self.msgs = 0
        self.bytes = 0
        self.done = False  # the relay's first message (the node's PING) or the handshake arrived

    def pump(self) -> None:
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def on_data(self, data: bytes) -> None:
        """Feed handshake bytes; after it, count frames."""
        if self.open:
            self.bytes += len(data)
            self.msgs += len(self.reader.feed(data))
            return
        self.conn.receive_data(data)
        while True:
            ev = self.conn.next_event()
            if ev is cx.NEED_DATA:
                break
            if isinstance(ev, cx.HandshakeComplete):
                self.open = True
            elif isinstance(ev, cx.Frames):
                self.msgs += len(ev.messages)
            elif isinstance(ev, (cx.HandshakeRefused, cx.ProtocolViolation, cx.ConnectionClosed)):
                raise RuntimeError(f"link failed during handshake: {ev}")
        self.pump()


def open_links(
    addr: tuple[str, int],
    count: int,
    wait_first_message: bool,
    source_ips: list[str] | None = None,
    marks: list[tuple[int, float]] | None = None,
) -> list[Link]:
    """Open `count` handshaken links to `addr`, CONNECT_BATCH at a time.

    Args:
        addr: the relay's address.
        count: links wanted.
        wait_first_message: also wait for one message per link (a node pings each new link:
            proof that the node registered it, not only that its 200 was sent).
        source_ips: loopback addresses to bind, LINKS_PER_SOURCE_IP links each; None: default.
        marks: when given, (links open, seconds since the start) is appended after each batch.

    Returns:
        The open links, sockets non-blocking.

    Raises:
        RuntimeError: a link was refused or did not finish within HANDSHAKE_TIMEOUT.
    """
    cfg = _bench_handshake_config()
    links: list[Link] = []
    sel = selectors.DefaultSelector()
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT
    t0 = time.perf_counter()
    try:
        for start in range(0, count, CONNECT_BATCH):
            batch = []
            for i in range(start, min(count, start + CONNECT_BATCH)):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                if source_ips:
                    s.bind((source_ips[i // LINKS_PER_SOURCE_IP], 0))
                s.connect(addr)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                link = Link(s, cfg)
                link.pump()
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ, link)
                batch.append(link)
            pending = len(batch)
            while pending:
                if time.monotonic() > deadline:  # no batch finished for HANDSHAKE_TIMEOUT
                    raise RuntimeError(
                        f"handshakes unfinished after {HANDSHAKE_TIMEOUT} s ({len(links)} open)"
                    )
                for key, _ in sel.select(0.5):
                    link = key.data
                    data = link.sock.recv(65536)
                    if not data:
                        raise RuntimeError("relay closed a link during the handshake")
                    link.on_data(data)
                    if not link.done and link.open and (link.msgs > 0 or not wait_first_message):
                        link.done = True
                        pending -= 1
            for link in batch:
                sel.unregister(link.sock)
            links.extend(batch)
            deadline = time.monotonic() + HANDSHAKE_TIMEOUT
            if marks is not None:
                marks.append((len(links), time.perf_counter() - t0))
    except BaseException:
        for link in links:
            link.sock.close()
        raise
    finally:
        sel.close()
    for link in links:
        link.msgs = 0
        link.bytes = 0
    return links


def run_round(source: Link, sinks: list[Link], stream: bytes, sent: int, routing: bool) -> dict:
    """Write `stream` on the source, echo duplicates from the first sink, count what the sinks get.

    Args:
        source: the link that floods.
        sinks: the links that count (sinks[0] also echoes every ECHO_EVERY-th message back).
        stream: build_stream() bytes.
        sent: messages in `stream`.
        routing: True for a node (drops the echoes as duplicates); False for the null relay
            (relays the echoes too, to the source and the other sinks).

    Returns:
        {"sent", "echoed", "received", "expected", "seconds", "in_per_s", "out_per_s", "loss_pct"}.
    """
    for s in sinks:
        s.msgs = 0
        s.bytes = 0
    echo_sink = sinks[0]
    sel = selectors.DefaultSelector()
    for s in sinks[1:]:
        sel.register(s.sock, selectors.EVENT_READ, s)
    sel.register(source.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, source)
    sel.register(echo_sink.sock, selectors.EVENT_READ, echo_sink)
    view = memoryview(stream)
    off = 0
    total = len(stream)
    echo_buf = bytearray()
    echoed = 0
    received = 0
    t0 = time.perf_counter()
    last_rx = t0
    sending = True
    try:
        while True:
            target = len(sinks) * sent + (0 if routing else (len(sinks) - 1) * echoed)
            now = time.perf_counter()
            if not sending and not echo_buf and (received >= target or now - last_rx > STALL_TIMEOUT):
                break
            for key, events in sel.select(0.05):
                link = key.data
                if events & selectors.EVENT_WRITE:
                    try:
                        if link is source:
                            off += source.sock.send(view[off : off + SEND_CHUNK])
                            if off >= total:
                                sending = False
                        else:
                            del echo_buf[: echo_sink.sock.send(echo_buf)]
                    except BlockingIOError:
                        pass
                    mask = selectors.EVENT_READ | (
                        selectors.EVENT_WRITE if (sending if link is source else echo_buf) else 0
                    )
                    if mask != key.events:
                        sel.modify(link.sock, mask, link)
                if not events & selectors.EVENT_READ:
                    continue
                try:
                    data = link.sock.recv(RECV_CHUNK)
                except BlockingIOError:
                    continue
                if not data:
                    raise RuntimeError("relay closed a link during the round")
                if link is source:
                    continue  # the null relay sends the echoes back to the source too
                msgs = link.reader.feed(data)
                if link is echo_sink:
                    echo = msgs[(-link.msgs) % ECHO_EVERY :: ECHO_EVERY]
                    if echo:
                        if not echo_buf:
                            sel.modify(link.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, link)
                        echo_buf += b"".join([m.raw for m in echo])
                        echoed += len(echo)
                link.msgs += len(msgs)
                link.bytes += len(data)
                received += len(msgs)
                last_rx = time.perf_counter()
    finally:
        sel.close()
    seconds = max(last_rx - t0, 1e-9)
    inbound = sent + echoed
    return {
        "sent": sent,
        "echoed": echoed,
        "received": received,
        "expected": target,
        "seconds": seconds,
        "in_per_s": inbound / seconds,
        "out_per_s": received / seconds,
        "loss_pct": 100.0 * max(0, target - received) / target if target else 0.0,
    }


# --- the benchmark ----------------------------------------------------------------------------------
def _median_spread(values: list[float]) -> dict:
    med = statistics.median(values)
    return {
        "median": med,
        "min": min(values),
        "max": max(values),
        "spread_pct": 100.0 * (max(values) - min(values)) / med if med else 0.0,
    }


def _throughput(tmp: Path, quick: bool) -> dict:
    size = "quick" if quick else "full"
    rounds = ROUNDS_QUICK if quick else ROUNDS_FULL
    payloads = query_payloads(5000)
    relays = {kind: RelayProcess(kind, tmp) for kind in ("null", "cython", "python")}
    rows: dict[str, list[dict]] = {kind: [] for kind in relays}
    try:
        wired = {}
        for kind, proc in relays.items():
            links = open_links(proc.address, 1 + SINKS, wait_first_message=True)
            wired[kind] = (links[0], links[1:])
        null_stream = build_stream(payloads, MESSAGES["null"][size], 1)  # no GUID memory: one stream
        seed = 100
        for _ in range(rounds):
            for kind in relays:
                seed += 1
                n = MESSAGES[kind][size]
                stream = null_stream if kind == "null" else build_stream(payloads, n, seed)
                source, sinks = wired[kind]
                rows[kind].append(run_round(source, sinks, stream, n, kind != "null"))
        rss = {kind: proc.rss_kb() for kind, proc in relays.items()}
        for source, sinks in wired.values():
            for link in (source, *sinks):
                link.sock.close()
    finally:
        for proc in relays.values():
            proc.stop()
    figures = {}
    for kind, runs in rows.items():
        figures[kind] = {
            "messages_per_round": runs[0]["sent"],
            "rounds": runs,
            "in_per_s": _median_spread([r["in_per_s"] for r in runs]),
            "out_per_s": _median_spread([r["out_per_s"] for r in runs]),
            "loss_pct": _median_spread([r["loss_pct"] for r in runs]),
            "rss_kb_after": rss[kind],
        }
    med = {k: (v["in_per_s"]["median"], v["out_per_s"]["median"]) for k, v in figures.items()}
    ratios = {
        "cython_vs_null_in": med["cython"][0] / med["null"][0],
        "cython_vs_null_out": med["cython"][1] / med["null"][1],
        "cython_vs_python_in": med["cython"][0] / med["python"][0],
        "cython_vs_python_out": med["cython"][1] / med["python"][1],
    }
    return {
        "sinks": SINKS,
        "dup_fraction": 1 / ECHO_EVERY,
        "relays": figures,
        "ratios": ratios,
        "targets": {"cython_vs_null": 0.5, "cython_vs_python": 5.0},
        "targets_met": {
            "cython_vs_null": ratios["cython_vs_null_in"] >= 0.5,
            "cython_vs_python": ratios["cython_vs_python_in"] >= 5.0,
        },
    }


def _idle_memory(tmp: Path, counts: tuple[int, ...]) -> dict:
    limit = raise_fd_limit()
    out: dict[str, dict] = {}
    ips = [f"127.0.{1 + i // 250}.{2 + i % 250}" for i in range(max(counts) // LINKS_PER_SOURCE_IP + 1)]
    for n in counts:
        if n + 64 > limit:
            out[str(n)] = {"skipped": f"open-file limit {limit} too low for {n} links"}
            continue
        for kind in ("cython", "python"):
            proc = RelayProcess(kind, tmp, max_peers=n + 10)
            try:
                time.sleep(SETTLE)
                before = proc.rss_kb()
                marks: list[tuple[int, float]] = []
                links = open_links(proc.address, n, wait_first_message=True, source_ips=ips, marks=marks)
                opened_s = marks[-1][1]
                # Handshake rate over the last tenth of the links: does admission slow as links grow?
                k = next(i for i, m in enumerate(marks) if m[0] >= n - n // 10)
                last_rate = (n - marks[k - 1][0]) / (opened_s - marks[k - 1][1]) if k else n / opened_s
                time.sleep(SETTLE)
                after = proc.rss_kb()
                for link in links:
                    link.sock.close()
            finally:
                proc.stop()
            out.setdefault(str(n), {})[kind] = {
                "links": n,
                "rss_before_kb": before,
                "rss_after_kb": after,
                "per_link_bytes": (after - before) * 1024 / n,
                "open_seconds": opened_s,
                "handshakes_per_s": n / opened_s,
                "handshakes_per_s_last_tenth": last_rate,
            }
    return {"target_per_link_bytes": 16 * 1024, "deflate": False, "counts": out}


def _py_spy() -> str | None:
    found = shutil.which("py-spy")
    local = Path(sys.executable).with_name("py-spy")
    return found or (str(local) if local.exists() else None)


def _frame_key(frame: str) -> str:
    # py-spy raw frames read "func (path/file.py:line)": keep the function and the file name.
    func, _, where = frame.rpartition(" (")
    return f"{func} ({Path(where.rstrip(')').rsplit(':', 1)[0]).name})"


def summarize_stacks(lines: list[str], top: int = TOP_PROFILE) -> dict:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output.

    Inclusive shares count a stack from its first `data_received` frame down (the event loop
    and runner frames above it are on every stack and say nothing); a stack without one
    (timers, the loop waiting) counts as "(outside data_received)". Works for Python-only
    and --native stacks (C and Cython frames in between).

    Args:
        lines: "frame;frame;...;leaf COUNT" lines.
        top: rows per list.

    Returns:
        {"samples", "self": [{"function", "pct"}], "inclusive": [{"function", "pct"}]}.
    """
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame_key(f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + n
        start = next((i for i, f in enumerate(frames) if "data_received" in f), None)
        for key in {"(outside data_received)"} if start is None else set(frames[start:]):
            incl[key] = incl.get(key, 0) + n

    def rows(d: dict[str, int]) -> list[dict]:
        ranked = sorted(d.items(), key=lambda kv: kv[1], reverse=True)[:top]
        return [{"function": k, "pct": 100.0 * v / total} for k, v in ranked]

    return {"samples": total, "self": rows(own), "inclusive": rows(incl)}


def _profile(tmp: Path, quick: bool) -> dict:
    # py-spy samples the running node, C and Cython frames included (--native pauses it briefly
    # per sample); cProfile (Python functions only) is the fallback.
    count = PROFILE_MESSAGES_QUICK if quick else PROFILE_MESSAGES_FULL
    spy = _py_spy()
    prof = tmp / "node.prof"
    proc = RelayProcess("cython", tmp, profile=None if spy else prof)
    sampler = None
    try:
        links = open_links(proc.address, 1 + SINKS, wait_first_message=True)
        stream = build_stream(query_payloads(5000), count, 7)
        if spy:
            raw = tmp / "stacks.txt"
            sampler = subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(proc.proc.pid),
                    "--rate",
                    "400",
                    "--format",
                    "raw",
                    "--native",
                    "-o",
                    str(raw),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            time.sleep(SETTLE)  # py-spy attaches
        fig = run_round(links[0], links[1:], stream, count, True)
        if sampler is not None:
            sampler.send_signal(signal.SIGINT)
            sampler.wait(30)
        for link in links:
            link.sock.close()
    finally:
        if sampler is not None and sampler.poll() is None:
            sampler.kill()
            sampler.wait()
        proc.stop()
    out = {"messages": count, "in_per_s_while_profiled": fig["in_per_s"]}
    if spy:
        out["tool"] = "py-spy --native (sampling, 400 Hz, active samples only)"
        if not raw.exists():  # e.g. no ptrace permission
            err = sampler.stderr.read().decode(errors="replace")[-500:]
            return dict(out, tool=f"py-spy failed: {err}", samples=0, self=[], inclusive=[])
        out.update(summarize_stacks(raw.read_text().splitlines()))
        return out
    stats = pstats.Stats(str(prof))
    total = stats.total_tt
    ranked = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:TOP_PROFILE]
    out["tool"] = "cProfile (whole process, own time)"
    out["samples"] = 0
    out["self"] = [
        {"function": f"{func} ({Path(fname).name}:{line})", "pct": 100.0 * tt / total}
        for (fname, line, func), (_cc, _n, tt, _ct, _callers) in ranked
    ]
    out["inclusive"] = []
    return out


def run(quick: bool) -> dict:
    """Relay throughput (null / cython node / pure node), idle-link memory, node profile.

    Args:
        quick: fewer messages and rounds, 1,000 idle links only.

    Returns:
        {"throughput": {...}, "idle_links": {...}, "profile": {...}, "seconds"}.
    """
    started = time.perf_counter()
    raise_fd_limit()
    tmp = Path(tempfile.mkdtemp(prefix="gnut-bench-relay-"))
    try:
        result = {"implementation": "cython and python nodes, cython null relay", "quick": quick}
        result["throughput"] = _throughput(tmp, quick)
        result["idle_links"] = _idle_memory(tmp, IDLE_LINKS_QUICK if quick else IDLE_LINKS_FULL)
        result["profile"] = _profile(tmp, quick)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["seconds"] = time.perf_counter() - started
    return result


def format_table(result: dict) -> str:
    """The result as Markdown tables: throughput, idle-link memory, profile top items."""
    th = result["throughput"]
    lines = [
        f"1 source -> relay -> {th['sinks']} sinks, QUERY traffic with {th['dup_fraction']:.0%} duplicates, "
        "no deflate; median of rounds (spread = (max-min)/median)",
        "",
        "| relay | msgs/round | in msg/s | spread | out msg/s | spread | loss % (median) | RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {
        "null": "null relay (Cython framing, no routing)",
        "cython": "gnut node, Cython fast path",
        "python": "gnut node, pure Python",
    }
    for kind, f in th["relays"].items():
        lines.append(
            f"| {names[kind]} | {f['messages_per_round']} | {f['in_per_s']['median']:,.0f} | "
            f"{f['in_per_s']['spread_pct']:.0f}% | {f['out_per_s']['median']:,.0f} | "
            f"{f['out_per_s']['spread_pct']:.0f}% | {f['loss_pct']['median']:.1f} | {f['rss_kb_after'] / 1024:.0f} |"
        )
    r = th["ratios"]
    lines += [
        "",
        f"cython node / null relay: in {r['cython_vs_null_in']:.2f}, out {r['cython_vs_null_out']:.2f} "
        f"(target >= 0.50: {'met' if th['targets_met']['cython_vs_null'] else 'NOT met'})",
        f"cython node / pure node: in {r['cython_vs_python_in']:.1f}x, out {r['cython_vs_python_out']:.1f}x "
        f"(target >= 5x: {'met' if th['targets_met']['cython_vs_python'] else 'NOT met'})",
        "",
        "| idle links | impl | RSS before MB | RSS after MB | per link | handshakes/s (last tenth) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for n, by_impl in result["idle_links"]["counts"].items():
        if "skipped" in by_impl:
            lines.append(f"| {n} | - | - | - | {by_impl['skipped']} | - |")
            continue
        for kind, f in by_impl.items():
            lines.append(
                f"| {n} | {kind} | {f['rss_before_kb'] / 1024:.1f} | {f['rss_after_kb'] / 1024:.1f} | "
                f"{f['per_link_bytes'] / 1024:.1f} KB | {f['handshakes_per_s']:,.0f} "
                f"({f['handshakes_per_s_last_tenth']:,.0f}) |"
            )
    p = result["profile"]
    lines += [
        "",
        f"Where the Cython node spends its time relaying {p['messages']} messages "
        f"({p['in_per_s_while_profiled']:,.0f} msg/s while profiled; {p['tool']}, {p['samples']} samples):",
        "",
        "| rank | inclusive (function and callees) | % | self (leaf function) | % |",
        "|---:|---|---:|---|---:|",
    ]
    for i in range(max(len(p["self"]), len(p["inclusive"]))):
        inc = p["inclusive"][i] if i < len(p["inclusive"]) else {"function": "", "pct": 0.0}
        own = p["self"][i] if i < len(p["self"]) else {"function": "", "pct": 0.0}
        lines.append(
            f"| {i + 1} | `{inc['function']}` | {inc['pct']:.1f} | `{own['function']}` | {own['pct']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit("run the benchmark with: python bench/run.py relay [--quick]")
