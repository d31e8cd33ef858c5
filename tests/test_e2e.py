"""End to end with real `gnut` processes on loopback: chain search, get, PUSH, resume, HTTP, demo, CLI errors."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from nethelpers import LAB_LIMITS

REPO = Path(__file__).resolve().parents[1]
GNUT = [sys.executable, "-m", "gnut"]
LISTEN_RE = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
# Seconds a process gets to start listening, to exit after SIGTERM, or a CLI command to finish.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
CLI_TIMEOUT = 40.0
FAR_NAME = "zebra quokka farnode.bin"  # shared only by C, the far end of the chain
PUSH_NAME = "walrus behindwall.bin"  # shared only by F, a firewalled node
BIG_NAME = "elephant resumable.bin"  # shared by R, the source killed mid-transfer
FILE_SIZE = 300_000
# Large enough that loopback (~200 MB/s here) cannot finish it between the downloader's first
# sidecar write (after its first 256 KiB chunk) and our kill -9 of the source.
BIG_SIZE = 64 * 1024 * 1024


def _default_signals() -> None:
    """In the child: SIGINT back to its default action. A harness that runs the suite as a background job
    of a non-interactive shell hands every child SIGINT ignored, and Python keeps an inherited SIG_IGN, so
    Ctrl-C tests would test nothing (or hang) there."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _spawn(home: Path, *args: str) -> subprocess.Popen:
    """A `gnut` command running in the background with its own home, text pipes for its output."""
    return subprocess.Popen(
        [*GNUT, *args],
        preexec_fn=_default_signals,
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["GNUT_HOME"] = str(home)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli(home: Path, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
    """Run one `gnut` command to completion with GNUT_HOME=home; never a traceback."""
    res = subprocess.run(
        preexec_fn=_default_signals,
        args=[*GNUT, *args],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=home.parent,
    )
    assert "Traceback" not in res.stderr, res.stderr
    return res


class NodeProc:
    """A `gnut node` process with its own GNUT_HOME; stderr (the log) goes to home/node.log."""

    def __init__(self, home: Path, *args: str) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.log_path = home / "node.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        # Every test node and client shares 127.0.0.1: the lab raises the per-address limits
        # in the node's config file, as a user's own lab network would.
        conf = home / "lab.toml"
        conf.write_text("".join(f"{k} = {v}\n" for k, v in LAB_LIMITS.items()))
        if "--mode" not in args:  # the default is auto (a leaf until reachable): a lab node is an ultrapeer
            args = ("--mode", "ultrapeer", *args)
        self.proc = subprocess.Popen(
            preexec_fn=_default_signals,
            args=[*GNUT, "node", "--listen", "127.0.0.1:0", "--config", str(conf), *args],
            env=_env(home),
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            cwd=home,
        )
        self.port = 0
        self.port = int(self.wait_log(LISTEN_RE).group(1))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: re.Pattern | str, timeout: float = START_TIMEOUT, count: int = 1) -> re.Match:
        """Wait until the log holds `count` matches of `pattern`; return the last one."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            found = list(rx.finditer(self.log()))
            if len(found) >= count:
                return found[count - 1]
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"no {rx.pattern!r} in the log of {self.home.name} "
                    f"(exit {self.proc.poll()}):\n{self.log()[-3000:]}"
                )
            time.sleep(0.02)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Signal, wait, kill if it hangs. Returns the exit status (None if it had to be killed)."""
        rc = None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                rc = self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        else:
            rc = self.proc.returncode
        self._log.close()
        return rc

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._log.close()


def status_json(home: Path) -> dict:
    res = cli(home, "status", "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def urn_of(data: bytes) -> str:
    import base64
    import hashlib

    return "urn:sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode()


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """A -> B -> C chain of `gnut node` processes; C shares FAR_NAME, F (firewalled, behind B) PUSH_NAME."""
    root = tmp_path_factory.mktemp("e2e")
    rng = random.Random(5)
    far = rng.randbytes(FILE_SIZE)
    pushed = rng.randbytes(FILE_SIZE)
    (root / "c-share").mkdir()
    (root / "c-share" / FAR_NAME).write_bytes(far)
    (root / "c-share" / "quokka notes.txt").write_bytes(b"quokka " * 100)
    (root / "f-share").mkdir()
    (root / "f-share" / PUSH_NAME).write_bytes(pushed)
    (root / "secret").mkdir()
    (root / "secret" / "passwd").write_bytes(b"SECRET-NOT-SHARED")
    procs: list[NodeProc] = []
    try:
        a = NodeProc(root / "a", "--mode", "ultrapeer", "-v")
        procs.append(a)
        b = NodeProc(root / "b", "--mode", "ultrapeer", "--connect", a.addr, "--loop", "asyncio")
        procs.append(b)
        c = NodeProc(root / "c", "--mode", "ultrapeer", "--connect", b.addr, "--share", str(root / "c-share"))
        procs.append(c)
        f = NodeProc(
            root / "f",
            "--mode",
            "ultrapeer",
            "--connect",
            b.addr,
            "--share",
            str(root / "f-share"),
            "--firewalled",
        )
        procs.append(f)
        for p in (b, c, f):
            p.wait_log(r"connected to #\d+ ")
        b.wait_log(r"connected from #\d+ ", count=2)
        yield {"root": root, "a": a, "b": b, "c": c, "f": f, "far": far, "pushed": pushed}
    finally:
        codes = {p.home.name: p.stop() for p in reversed(procs)}
        assert all(rc == 0 for rc in codes.values()), f"SIGTERM exit codes: {codes}"


def test_version_names_fastpath(tmp_path):
    res = cli(tmp_path, "--version")
    want = "python" if os.environ.get("GNUT_NO_EXTENSIONS") else "cython"
    assert res.returncode == 0
    assert f"fastpath: {want}" in res.stdout, res.stdout


def test_search_standalone_text_and_json(net, tmp_path):
    a, c = net["a"], net["c"]
    res = cli(
        tmp_path / "s1",
        "search",
        "quokka farnode",
        "--connect",
        a.addr,
        "--timeout",
        "8",
        "--max-results",
        "1",
    )
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if FAR_NAME in ln)
    assert line.split()[0] == "1" and "293.0 KiB" in line
    assert "1 file from 1 source" in res.stderr
    row = json.loads((tmp_path / "s1" / "last_search.json").read_text())["rows"][0]
    assert (row["urn"], row["sources"][0]["port"]) == (urn_of(net["far"]), c.port)

    res = cli(
        tmp_path / "s2",
        "search",
        "quokka",
        "--connect",
        a.addr,
        "--timeout",
        "8",
        "--json",
        "--max-results",
        "2",
    )
    assert res.returncode == 0, res.stderr
    hits = {h["name"]: h for h in json_lines(res.stdout)}
    assert set(hits) == {FAR_NAME, "quokka notes.txt"}
    h = hits[FAR_NAME]
    (src,) = h["sources"]
    assert (h["size"], h["urn"], src["host"], src["port"]) == (FILE_SIZE, urn_of(net["far"]), "127.0.0.1", c.port)
    assert isinstance(src["index"], int) and h["firewalled"] is False


def test_search_stops_at_max_results(net, tmp_path):
    home = tmp_path / "s"
    home.mkdir()
    started = time.monotonic()
    res = cli(home, "search", "quokka", "--connect", net["a"].addr, "--timeout", "20", "--quiet", "20",
              "--max-results", "1")
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 2, res.stdout  # header + one row
    assert time.monotonic() - started < 14, "--max-results must end the search before --timeout"


def test_search_and_get_through_running_node(net, tmp_path):
    a = net["a"]
    res = cli(a.home, "search", "farnode", "--timeout", "8", "--json", "--max-results", "1")
    assert res.returncode == 0, res.stderr
    (hit,) = json_lines(res.stdout)
    assert hit["name"] == FAR_NAME and hit["sources"][0]["port"] == net["c"].port
    a.wait_log(r"search 'farnode' sent")  # the node ran it, not a stand-alone leaf

    res = cli(a.home, "get", hit["urn"], "--out", str(tmp_path / "dl"), "--json")
    assert res.returncode == 0, res.stderr
    lines = json_lines(res.stdout)
    assert any("progress" in ln for ln in lines)
    assert lines[-1]["done"] is True
    assert Path(lines[-1]["path"]).read_bytes() == net["far"]


def test_get_standalone_bytes_match(net, tmp_path):
    out = tmp_path / "out"
    res = cli(tmp_path / "g", "get", urn_of(net["far"]), "--connect", net["a"].addr, "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert f"complete and verified: {out / FAR_NAME}" in res.stdout
    # Plain progress lines (stderr is not a TTY): every phase, then the verified result.
    assert "looking for sources" in res.stderr and "verifying SHA-1" in res.stderr
    assert f"{FAR_NAME}  done  293.0 KiB" in res.stderr
    assert (out / FAR_NAME).read_bytes() == net["far"]
    assert sorted(p.name for p in out.iterdir()) == [FAR_NAME]  # no partial folder left behind


def test_get_through_push_from_firewalled_node(net, tmp_path):
    a, f = net["a"], net["f"]
    res = cli(
        tmp_path / "p",
        "search",
        "walrus",
        "--connect",
        a.addr,
        "--timeout",
        "8",
        "--json",
        "--max-results",
        "1",
    )
    (hit,) = json_lines(res.stdout)
    assert hit["firewalled"] is True and hit["sources"][0]["port"] == f.port
    givs = status_json(f.home)["events"].get("giv_sent", 0)
    magnet = f"magnet:?xt={hit['urn']}&dn=walrus.bin&xl={FILE_SIZE}"
    res = cli(tmp_path / "p", "get", magnet, "--connect", a.addr, "--out", str(tmp_path / "out"), "--json")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "walrus.bin").read_bytes() == net["pushed"]
    # The file came over a connection F opened back to us after a routed PUSH.
    assert status_json(f.home)["events"]["giv_sent"] == givs + 1


def test_status_text_and_json(net):
    a = net["a"]
    res = cli(a.home, "status")
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert re.search(rf"node {a.addr}  role ultrapeer  up \d+:\d\d  0 file\(s\) shared", text)
    assert re.search(r"peers \(\d+\):", text) and net["b"].addr in text
    # Bytes and rates per direction, for the Gnutella links and for files.
    assert re.search(r"gnutella  in +[\d.]+ (B|KiB|MiB) \([\d.]+ (B|KiB|MiB)/s\)   out", text), text
    assert re.search(r"files     in .*\(in: downloads, out: uploads\)", text)
    for word in ("received:", "sent:", "drops:", "uploads:", "downloads:"):
        assert word in text
    assert re.search(r"reachable TCP: (yes|no|unknown) \(", text) and "role: ultrapeer: configured" in text
    assert "TLSv1." in text  # the links between gnut nodes are encrypted
    st = status_json(a.home)
    assert st["reachability"]["udp"] == "unknown"
    assert st["peers"] and {"received", "sent", "drops", "transfers", "traffic", "queue"} <= set(st)
    assert st["traffic"]["gnutella_in"]["bytes"] > 0 and st["traffic"]["gnutella_out"]["bytes"] > 0
    assert all(p["bytes_in"] > 0 for p in st["peers"])
    assert st["received"].get("QRP", 0) > 0 and st["sent"].get("PING", 0) > 0


def test_node_verbose_logs_message_flow(net):
    # A runs with -v: every routed message is logged with its decision.
    # Peers are named by their socket address; an incoming peer's claimed listen address follows.
    net["a"].wait_log(r"gnut\.flow: QUERY from #\d+ 127\.0\.0\.1:\d+( \(listens on [^)]*\))? ttl=\d+ hops=\d+ -> ")


def _http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(ln.split(": ", 1) for ln in lines[1:] if ": " in ln)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def test_http_range_and_traversal_on_gnutella_port(net):
    c, far = net["c"], net["far"]
    urn = urn_of(far)
    index = None  # the share index of FAR_NAME on C: found by asking C for /get/<i>/<name>
    for i in range(1, 4):
        code, _, _ = _http(
            c.port,
            f"HEAD /get/{i}/{quote(FAR_NAME)} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
        )
        if code == 200:
            index = i
    assert index is not None

    def get(target: str, rng: str | None = None) -> tuple[int, dict, bytes]:
        extra = f"Range: {rng}\r\n" if rng else ""
        return _http(c.port, f"GET {target} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n".encode())

    code, h, body = get(f"/uri-res/N2R?{urn}", "bytes=100-199")
    assert (code, h["content-range"], body) == (206, f"bytes 100-199/{FILE_SIZE}", far[100:200])
    assert h["x-gnutella-content-urn"] == urn
    code, h, body = get(f"/get/{index}/{quote(FAR_NAME)}", "bytes=-10")
    assert (code, body) == (206, far[-10:])
    code, h, body = get(f"/get/{index}/{quote(FAR_NAME)}", f"bytes={FILE_SIZE - 5}-")
    assert (code, body) == (206, far[-5:])
    code, h, _ = get(f"/uri-res/N2R?{urn}", f"bytes={FILE_SIZE}-")
    assert code == 416 and h["content-range"] == f"bytes */{FILE_SIZE}"
    code, _, body = get(f"/uri-res/N2R?{urn}")
    assert (code, body) == (200, far)

    secret = b"SECRET-NOT-SHARED"
    for target in (
        "/get/1/../../secret/passwd",
        "/get/1/..%2f..%2fsecret%2fpasswd",
        "/../secret/passwd",
        "/get/1/%2e%2e/%2e%2e/secret/passwd",
        "/get/1/..%252f..%252fsecret%252fpasswd",
        "/get/1/..\\..\\secret\\passwd",
        "/get/1/%c0%ae%c0%ae/secret/passwd",
        "/etc/passwd",
        "/get/1//etc/passwd",
        "/uri-res/N2R?urn:sha1:../../secret/passwd",
        "/get/99/" + quote(FAR_NAME),
    ):
        code, _, body = get(target)
        assert secret not in body and b"root:" not in body, target
        assert code in (400, 404), (target, code)


def test_resume_after_source_killed(net, tmp_path):
    """kill -9 the only source mid-transfer; a second `gnut get` fetches only what the sidecar lacks."""
    a, b = net["a"], net["b"]
    share = tmp_path / "r-share"
    share.mkdir()
    big = random.Random(9).randbytes(BIG_SIZE)
    (share / BIG_NAME).write_bytes(big)
    urn = urn_of(big)
    r = NodeProc(tmp_path / "r", "--connect", b.addr, "--share", str(share))
    try:
        r.wait_log(r"connected to #\d+ ")
        out = tmp_path / "out"
        getter = _spawn(
            tmp_path / "g", "get", urn, "--connect", a.addr, "--out", str(out), "--timeout", "5", "--json"
        )
        try:
            sidecars = out / ".gnut-partial"
            deadline = time.monotonic() + 20
            while not list(sidecars.glob("*.state")):
                assert getter.poll() is None and time.monotonic() < deadline, getter.communicate()
                time.sleep(0.002)
            r.kill9()
            stdout, stderr = getter.communicate(timeout=CLI_TIMEOUT)
        finally:
            if getter.poll() is None:
                getter.kill()
                getter.communicate()
        assert getter.returncode == 1, (stdout, stderr)
        assert "partial file is kept" in stderr and "Traceback" not in stderr
        assert not (out / BIG_NAME).exists()
        (state_path,) = sidecars.glob("*.state")
        have = sum(e - s for s, e in json.loads(state_path.read_text())["done"])
        assert 0 < have < BIG_SIZE
        # who left (socket address, then the listen address it claimed), and why
        b.wait_log(rf"left #\d+ 127\.0\.0\.1:\d+ \(listens on 127\.0\.0\.1:{r.port}\): remote closed the connection")

        r = NodeProc(tmp_path / "r", "--connect", b.addr, "--share", str(share))  # same home: sha1 cache
        r.wait_log(r"connected to #\d+ ")
        res = cli(tmp_path / "g", "get", urn, "--connect", a.addr, "--out", str(out), "--timeout", "30")
        assert res.returncode == 0, res.stderr
        assert (out / BIG_NAME).read_bytes() == big
        assert not sidecars.exists()
        # The restarted source sent exactly the bytes the sidecar did not have.
        assert status_json(r.home)["transfers"]["upload_bytes"] == BIG_SIZE - have
        assert r.stop() == 0
    finally:
        r.stop()  # no-op when already stopped; kills a hung process


def test_sigint_and_sigterm_exit_0_after_bye_200(net, tmp_path):
    a = net["a"]
    for name, sig in (("t", signal.SIGTERM), ("i", signal.SIGINT)):
        x = NodeProc(tmp_path / name, "--connect", a.addr)
        try:
            x.wait_log(r"connected to #\d+ ")
            a.wait_log(rf"connected from #\d+ 127\.0\.0\.1:\d+ \(listens on 127\.0\.0\.1:{x.port}\) ")
        finally:
            assert x.stop(sig) == 0, x.log()
        assert "shutting down: BYE 200 to 1 peers" in x.log()
        a.wait_log(rf"left #\d+ 127\.0\.0\.1:\d+ \(listens on 127\.0\.0\.1:{x.port}\): peer said BYE 200 ")


def test_ctrl_c_ends_a_search_quietly(net, tmp_path):
    home = tmp_path / "s"
    home.mkdir()
    proc = _spawn(home, "-v", "search", "quokka", "--connect", net["a"].addr, "--timeout", "30", "--quiet", "30")
    try:
        while "search 'quokka' sent" not in proc.stderr.readline():
            assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=STOP_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err


def test_demo_exits_0(tmp_path):
    res = cli(tmp_path, "demo", "--nodes", "12", timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"[1-9]\d* hit\(s\)", res.stdout) and "verified urn:sha1:" in res.stdout
    assert "demo finished" in res.stdout


def test_cli_errors_are_clear(net, tmp_path):
    home = tmp_path / "h"
    home.mkdir()
    res = cli(home, "search", "x", "--connect", "localhost:notaport")
    assert res.returncode == 2 and "expected HOST:PORT" in res.stderr
    res = cli(home, "node", "--listen", "127.0.0.1:99999")
    assert res.returncode == 2 and "expected HOST:PORT" in res.stderr

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    started = time.monotonic()
    res = cli(home, "search", "x", "--connect", f"127.0.0.1:{dead}", "--timeout", "8")
    assert res.returncode == 1 and "could not join the network" in res.stderr, res.stderr
    assert time.monotonic() - started < 5, "a refused dial must fail at once, not after the timeout"
    res = cli(tmp_path / "empty", "search", "x")
    assert res.returncode == 1 and "no peers known" in res.stderr, res.stderr

    for bad in ("urn:sha1:XYZ", "notaurn", "magnet:?dn=only-a-name"):
        res = cli(home, "get", bad, "--connect", net["a"].addr)
        assert res.returncode == 2 and res.stderr.startswith("gnut get: "), (bad, res.stderr)
    res = cli(home, "get", urn_of(b"nobody has this"), "--connect", net["a"].addr, "--timeout", "2")
    assert res.returncode == 1 and "no source found" in res.stderr, res.stderr

    res = cli(home, "status")
    assert res.returncode == 1 and "no running node" in res.stderr
    res = cli(home, "node", "--listen", net["a"].addr)
    assert res.returncode == 1 and "address already in use" in res.stderr, res.stderr
    res = cli(home, "node", "--mode", "hub")
    assert res.returncode == 2 and "invalid choice" in res.stderr
