"""The terminal experience with real `gnut` processes on loopback: downloads owned by the node
(detach on Ctrl-C or a closed pipe, list, pause, resume, cancel, restart), progress, config
errors, shares, status, stop, flood admission of stand-alone clients, and clear refusals."""

from __future__ import annotations

import json
import os
import pty
import random
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from test_e2e import CLI_TIMEOUT, GNUT, NodeProc, _default_signals, _env, _spawn, cli, status_json, urn_of

from gnut.app import lastsearch

# Node-side behaviour runs on both loops: the node processes under test get --loop from here.
LOOPS = ("uvloop", "asyncio")
# The trickle source sends this many bytes per second: slow enough to pause and detach mid-way.
TRICKLE_RATE = 256 * 1024
TRICKLE_SIZE = 3 * 1024 * 1024
WAIT = 20.0


class Trickle:
    """A slow HTTP source on loopback: answers `GET ... Range:` with 206 at TRICKLE_RATE, keep-alive."""

    def __init__(self, data: bytes, rate: int = TRICKLE_RATE) -> None:
        self.data = data
        self.urn = urn_of(data)
        self.rate = rate
        self.served = 0
        self.closing = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            conn.settimeout(30)
            while not self.closing.is_set():
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                m = re.search(rb"range: *bytes=(\d+)-(\d+)", head, re.I)
                start, end = (int(m.group(1)), int(m.group(2))) if m else (0, len(self.data) - 1)
                body = self.data[start:end + 1]
                conn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Length: %d\r\nContent-Range: bytes %d-%d/%d\r\n"
                             b"X-Gnutella-Content-URN: %s\r\n\r\n" % (len(body), start, end, len(self.data),
                                                                       self.urn.encode()))
                piece = max(1024, self.rate // 20)
                for i in range(0, len(body), piece):
                    if self.closing.is_set():
                        return
                    conn.sendall(body[i:i + piece])
                    self.served += len(body[i:i + piece])
                    time.sleep(0.05)
        except OSError:
            return
        finally:
            conn.close()

    def row(self, name: str) -> dict:
        return {"n": 1, "urn": self.urn, "name": name, "size": len(self.data),
                "sources": [{"host": "127.0.0.1", "port": self.port, "index": 1, "name": name,
                             "size": len(self.data), "servent_guid": "11" * 16, "firewalled": False}]}

    def close(self) -> None:
        self.closing.set()
        self.sock.close()


@pytest.fixture
def trickle():
    t = Trickle(random.Random(3).randbytes(TRICKLE_SIZE))
    yield t
    t.close()


class Lines:
    """Collects a process's stderr lines in a thread, so a test can wait for one while it runs."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line)

    def wait(self, pattern: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not any(re.search(pattern, line) for line in self.lines):
            assert time.monotonic() < deadline, f"no {pattern!r} in {''.join(self.lines)[-2000:]}"
            time.sleep(0.05)

    def text(self) -> str:
        self.thread.join(5)
        return "".join(self.lines)


def downloads_json(home: Path) -> list[dict]:
    res = cli(home, "downloads", "--json")
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()]


def wait_state(home: Path, ident: int, states: tuple[str, ...], timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rows = {r["id"]: r for r in downloads_json(home)}
        if ident in rows and rows[ident]["state"] in states:
            return rows[ident]
        assert time.monotonic() < deadline, f"download #{ident} never {states}: {rows.get(ident)}"
        time.sleep(0.2)


def no_traceback(node: NodeProc) -> None:
    assert "Traceback" not in node.log() and "RuntimeError" not in node.log(), node.log()[-3000:]


# --- downloads belong to the node ------------------------------------------------------------------

@pytest.mark.parametrize("loop", LOOPS)
def test_ctrl_c_detaches_and_the_node_keeps_downloading(tmp_path, trickle, loop):
    node = NodeProc(tmp_path / "n", "--loop", loop)
    try:
        lastsearch.save(node.home, "slow", [trickle.row("slow river.bin")])
        out = tmp_path / "out"
        getter = _spawn(node.home, "get", "#1", "--out", str(out))
        err = Lines(getter.stderr)
        err.wait(r"#1 slow river\.bin  downloading +\d")
        getter.send_signal(signal.SIGINT)
        getter.wait(CLI_TIMEOUT)  # stderr belongs to the Lines reader
        text = err.text()
        assert getter.returncode == 130, text
        assert "detached: the node keeps downloading #1 (gnut downloads)" in text
        assert "Traceback" not in text
        row = wait_state(node.home, 1, ("downloading",))
        assert row["name"] == "slow river.bin" and row["sources_known"] == 1
        res = cli(node.home, "downloads")
        assert re.search(r"^ +1  downloading +\d+\.\d% of 3\.0 MiB +[\d.]+ (KiB|MiB)/s +1/1  slow river\.bin$",
                         res.stdout, re.M), res.stdout
        done = wait_state(node.home, 1, ("complete", "failed"))
        assert done["state"] == "complete", done
        assert (out / "slow river.bin").read_bytes() == trickle.data
        node.wait_log(r"download #1 complete: slow river\.bin \(3145728 bytes from 1 source\(s\)")
        res = cli(node.home, "get", "#1", "--out", str(out))  # again: same SHA-1 already there
        assert res.returncode == 0 and "(already there)" in res.stderr, res.stderr
        assert sorted(p.name for p in out.iterdir()) == ["slow river.bin"]
        no_traceback(node)
    finally:
        assert node.stop() == 0


def test_closed_pipe_detaches_then_pause_resume_cancel(tmp_path, trickle):
    node = NodeProc(tmp_path / "n")
    try:
        lastsearch.save(node.home, "slow", [trickle.row("pond.bin")])
        out = tmp_path / "out"
        # `gnut get 1 --json | head -1`: the reader goes away after the first line.
        getter = _spawn(node.home, "get", "1", "--json", "--out", str(out))
        first = getter.stdout.readline()
        assert json.loads(first)["progress"]["id"] == 1
        getter.stdout.close()
        _, err = getter.communicate(timeout=CLI_TIMEOUT)
        assert "detached: the node keeps downloading #1" in err and "Traceback" not in err, err
        wait_state(node.home, 1, ("downloading",))

        res = cli(node.home, "pause", "1")
        assert res.returncode == 0 and res.stdout.startswith("paused #1 pond.bin"), res.stdout + res.stderr
        paused = wait_state(node.home, 1, ("paused",))
        time.sleep(0.5)
        assert wait_state(node.home, 1, ("paused",))["done"] == paused["done"] < TRICKLE_SIZE
        res = cli(node.home, "pause", "9")
        assert res.returncode == 1 and "no download #9" in res.stderr
        res = cli(node.home, "pause", "x")
        assert res.returncode == 2 and "not a download id" in res.stderr

        res = cli(node.home, "resume", "#1")
        assert res.returncode == 0 and res.stdout.startswith("resumed #1"), res.stdout + res.stderr
        wait_state(node.home, 1, ("downloading",))
        res = cli(node.home, "cancel", "1")
        assert res.returncode == 0 and "cancelled #1" in res.stdout
        assert wait_state(node.home, 1, ("cancelled",))
        deadline = time.monotonic() + WAIT  # the partial data goes once the cancelled task closed it
        while (out / ".gnut-partial").exists():
            assert time.monotonic() < deadline, list((out / ".gnut-partial").iterdir())
            time.sleep(0.05)
        res = cli(node.home, "cancel", "1")
        assert res.returncode == 1 and "already cancelled" in res.stderr
        no_traceback(node)
    finally:
        assert node.stop() == 0


def test_partial_download_survives_a_node_restart(tmp_path, trickle):
    home = tmp_path / "n"
    node = NodeProc(home)
    lastsearch.save(home, "slow", [trickle.row("heron.bin")])
    out = tmp_path / "out"
    getter = _spawn(home, "get", "1", "--out", str(out))
    err = Lines(getter.stderr)
    err.wait(r"downloading +\d")
    getter.send_signal(signal.SIGINT)
    getter.wait(CLI_TIMEOUT)
    before = wait_state(home, 1, ("downloading",))
    time.sleep(1.0)
    res = cli(home, "stop")
    assert res.returncode == 0 and "node stopped" in res.stdout, res.stderr
    assert node.proc.wait(CLI_TIMEOUT) == 0
    node.stop()
    assert "stop requested through the control API" in node.log()
    partial = out / ".gnut-partial"
    (state,) = partial.glob("*.state")
    have = sum(e - s for s, e in json.loads(state.read_text())["done"])
    assert before["done"] <= have + 256 * 1024 and 0 < have < TRICKLE_SIZE
    served_before = trickle.served

    node = NodeProc(home)
    try:
        node.wait_log(r"download queue: 1 download\(s\) to resume")
        done = wait_state(home, 1, ("complete", "failed"))
        assert done["state"] == "complete", done
        assert (out / "heron.bin").read_bytes() == trickle.data
        # Resumed from the sidecar: the second run fetched only what was missing (plus the chunk in flight).
        assert trickle.served - served_before <= TRICKLE_SIZE - have + 256 * 1024
        no_traceback(node)
    finally:
        assert node.stop() == 0


def test_get_row_errors_are_one_line(tmp_path):
    home = tmp_path / "h"
    home.mkdir()
    res = cli(home, "get", "3")
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert res.stderr.startswith("gnut get: no earlier search") and "gnut search" in res.stderr
    lastsearch.save(home, "jazz", [{"n": 1, "urn": urn_of(b"x"), "name": "x", "size": 1}])
    res = cli(home, "get", "#7")
    assert res.returncode == 2 and "has no row 7: it had 1 rows" in res.stderr, res.stderr


# --- files already there, --out, our own shares ----------------------------------------------------

@pytest.mark.parametrize("loop", LOOPS)
def test_get_of_own_share_existing_file_and_bad_out(tmp_path, loop):
    share = tmp_path / "share"
    share.mkdir()
    data = random.Random(1).randbytes(100_000)
    (share / "lark.zip").write_bytes(data)
    node = NodeProc(tmp_path / "n", "--share", str(share), "--loop", loop)
    try:
        out = tmp_path / "out"
        res = cli(node.home, "get", urn_of(data), "--out", str(out))
        assert res.returncode == 0, res.stderr
        assert f"complete and verified: {out / 'lark.zip'}" in res.stdout
        assert "copied from our own shares" in res.stderr
        assert (out / "lark.zip").read_bytes() == data
        res = cli(node.home, "get", urn_of(data), "--out", str(out))  # again: it is already there
        assert res.returncode == 0 and "already there" in res.stderr, res.stderr
        assert sorted(p.name for p in out.iterdir()) == ["lark.zip"]
        started = time.monotonic()
        res = cli(node.home, "get", urn_of(data), "--out", str(out / "lark.zip"))
        assert res.returncode == 2 and "is an existing file: give the folder" in res.stderr
        assert time.monotonic() - started < 5
        no_traceback(node)
    finally:
        assert node.stop() == 0


def test_standalone_reget_finds_the_file_already_there(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    data = random.Random(2).randbytes(50_000)
    (share / "wren.zip").write_bytes(data)
    src = NodeProc(tmp_path / "src", "--share", str(share))
    try:
        out = tmp_path / "out"
        for _ in range(2):
            res = cli(tmp_path / "c", "get", urn_of(data), "--connect", src.addr, "--out", str(out))
            assert res.returncode == 0, res.stderr
        assert sorted(p.name for p in out.iterdir()) == ["wren.zip"]  # no "wren (1).zip"
    finally:
        assert src.stop() == 0


# --- flood nodes admit clients; refusals are reported as what they were ----------------------------

@pytest.mark.parametrize("loop", LOOPS)
def test_flood_node_admits_a_standalone_client(tmp_path, loop):
    share = tmp_path / "share"
    share.mkdir()
    data = random.Random(4).randbytes(40_000)
    (share / "gannet song.ogg").write_bytes(data)
    a = NodeProc(tmp_path / "a", "--mode", "flood", "--share", str(share), "--loop", loop)
    try:
        res = cli(tmp_path / "c", "search", "gannet", "--connect", a.addr, "--timeout", "3", "--json")
        assert res.returncode == 0, res.stderr
        assert any(json.loads(line)["name"] == "gannet song.ogg" for line in res.stdout.splitlines())
        out = tmp_path / "out"
        res = cli(tmp_path / "c", "get", urn_of(data), "--connect", a.addr, "--out", str(out))
        assert res.returncode == 0, res.stderr
        assert (out / "gannet song.ogg").read_bytes() == data
        a.wait_log(r"connected from #\d+ 127\.0\.0\.1:\d+ .*as flood")
        no_traceback(a)
    finally:
        assert a.stop() == 0


def test_refusal_and_closed_port_are_reported_as_such(tmp_path):
    full = NodeProc(tmp_path / "full", "--mode", "flood", "--max-peers", "0")
    try:
        res = cli(tmp_path / "c", "search", "x", "--connect", full.addr, "--timeout", "3")
        assert res.returncode == 1
        assert f"{full.addr} refused us: 503 Too many peers (0 max)" in res.stderr, res.stderr
        res = cli(tmp_path / "c", "get", urn_of(b"q"), "--connect", full.addr, "--timeout", "3")
        assert res.returncode == 1 and "refused us: 503" in res.stderr, res.stderr
    finally:
        assert full.stop() == 0
    res = cli(tmp_path / "c", "search", "x", "--connect", "127.0.0.1:1", "--timeout", "3")
    assert res.returncode == 1
    assert "127.0.0.1:1 connection refused (nothing listens there)" in res.stderr, res.stderr
    assert "give --connect" not in res.stderr


# --- config ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, msg", [
    ('max_peers = "ten"\n', ":1: setting 'max_peers' must be an integer, not 'ten'"),
    ('mode = "flood"\nlisten = 16349\n', ":2: setting 'listen' must be a \"HOST:PORT\" string, not 16349"),
    ('listen = "16349"\n', "'16349' has no host: write \"HOST:PORT\", e.g. \"127.0.0.1:16349\""),
    ('max_peers = 3\nmax_peers = 4\n', "not valid TOML: Cannot overwrite a value (at line 2, column 14)"),
    ('colour = "red"\n', ":1: unknown setting 'colour' (`gnut config --defaults` lists every setting)"),
    ('max_peer = 3\n', ":1: unknown setting 'max_peer' (did you mean 'max_peers'? `gnut config --defaults`"),
    ('share = 5\n', ":1: setting 'share' must be a path string or a list of them"),
])
def test_bad_config_exits_2_naming_file_line_and_key(tmp_path, text, msg):
    conf = tmp_path / "gnut.toml"
    conf.write_text(text)
    res = cli(tmp_path / "h", "node", "--config", str(conf), "--listen", "127.0.0.1:0")
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith(f"gnut node: {conf}") and msg in res.stderr, res.stderr
    assert "listening" not in res.stderr


def test_config_defaults_load_back_and_dashes_are_accepted(tmp_path, monkeypatch):
    res = cli(tmp_path / "h", "config", "--defaults")
    assert res.returncode == 0
    for key in ("listen", "connect", "share", "max_peers", "upload_slots", "log_file", "max_downloads"):
        assert re.search(rf"^#? ?{key} = ", res.stdout, re.M), key
    assert res.stdout.count("\n# ") >= 25  # every key has its line of documentation
    conf = tmp_path / "defaults.toml"
    conf.write_text(res.stdout)
    assert cli(tmp_path / "h", "config", "--check", str(conf)).returncode == 0
    from gnut.app.configfile import load_config_file
    from gnut.runtime.config import NodeConfig

    monkeypatch.setenv("GNUT_HOME", str(tmp_path / "h"))  # the home the printed defaults named
    assert NodeConfig(**load_config_file(conf)) == NodeConfig()
    conf.write_text('max-peers = 7\nmax_leaves = 3\nlisten = "127.0.0.1:0"\n')
    node = NodeProc(tmp_path / "n", "--config", str(conf))
    try:
        assert node.port > 0
    finally:
        assert node.stop() == 0


# --- shares, status, stop, logs ------------------------------------------------------------------------

def test_shares_warnings_in_words_and_rescan(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    (share / "kestrel.txt").write_bytes(b"kestrel " * 100)
    (share / "dangling").symlink_to(tmp_path / "nowhere")
    missing = tmp_path / "no-such-dir"
    log_file = tmp_path / "node.log.txt"
    node = NodeProc(tmp_path / "n", "--share", str(share), "--share", str(missing), "--log-file", str(log_file))
    try:
        log = node.log()
        assert f"cannot share {missing}: share folder does not exist" in log
        assert f"cannot share {share / 'dangling'}: cannot read (no such file or directory)" in log
        assert "shares scanned: 1 file(s) shared (1 added, 1 skipped)" in log
        assert "ScanReport" not in log and "files shared" not in log.replace("file(s) shared", "")
        assert "shares scanned" in log_file.read_text()  # --log-file gets the same log
        res = cli(node.home, "shares")
        assert res.returncode == 0
        assert re.search(r"800 B +0  urn:sha1:[A-Z2-7]{32}  kestrel\.txt", res.stdout), res.stdout
        assert "-- 1 file(s), 800 B" in res.stdout
        (share / "osprey.txt").write_bytes(b"osprey")
        res = cli(node.home, "rescan")
        assert res.returncode == 0 and "2 file(s) shared (1 added, 1 skipped)" in res.stdout, res.stdout + res.stderr
        assert f"cannot share {missing}: share folder does not exist" in res.stderr
        # A search that matches counts a hit served for that file.
        cli(tmp_path / "c", "search", "kestrel", "--connect", node.addr, "--timeout", "2")
        rows = [json.loads(line) for line in cli(node.home, "shares", "--json").stdout.splitlines()]
        assert {r["name"]: r["hits"] for r in rows} == {"kestrel.txt": 1, "osprey.txt": 0}
    finally:
        assert node.stop() == 0


@pytest.mark.parametrize("loop", LOOPS)
def test_uploads_are_logged_per_file_and_stop_exits_cleanly(tmp_path, loop):
    share = tmp_path / "share"
    share.mkdir()
    data = random.Random(6).randbytes(1_000_000)  # 4 range requests of 256 KiB
    (share / "plover.bin").write_bytes(data)
    src = NodeProc(tmp_path / "src", "--share", str(share), "--loop", loop)
    try:
        res = cli(tmp_path / "c", "get", urn_of(data), "--connect", src.addr, "--out", str(tmp_path / "out"))
        assert res.returncode == 0, res.stderr
        src.wait_log(r"upload complete: 127\.0\.0\.1:\d+ got plover\.bin \(1000000 bytes\)")
        st = status_json(src.home)
        assert st["transfers"]["uploads_done"] == 1 and st["transfers"]["upload_requests"] == 4
        assert st["traffic"]["http_out"]["bytes"] == 1_000_000
        res = cli(src.home, "status")
        assert "uploads:   0 active, 1 file(s) served whole" in res.stdout
        assert re.search(r"files +in .* out +976\.6 KiB", res.stdout), res.stdout
        res = cli(src.home, "stop")
        assert res.returncode == 0 and res.stdout.strip() == "node stopped (BYE 200 sent to its peers)"
        assert src.proc.wait(CLI_TIMEOUT) == 0
        no_traceback(src)
    finally:
        src.stop()
    res = cli(src.home, "stop")
    assert res.returncode == 1 and "no running node" in res.stderr


def test_progress_on_a_terminal_redraws_one_clean_line(tmp_path, trickle):
    """stderr on a pseudo-terminal: each redraw erases the line first; only progress is drawn there."""
    node = NodeProc(tmp_path / "n")
    master, slave = pty.openpty()
    try:
        lastsearch.save(node.home, "slow", [trickle.row("tty.bin")])
        trickle.rate = 4 * TRICKLE_RATE
        proc = subprocess.Popen([*GNUT, "get", "1", "--out", str(tmp_path / "out")], env=_env(node.home),
                                stdout=subprocess.PIPE, stderr=slave, text=True, preexec_fn=_default_signals)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        stdout, _ = proc.communicate(timeout=CLI_TIMEOUT)
        screen = b"".join(chunks).decode()
        assert proc.returncode == 0, screen
        assert stdout.strip().startswith("complete and verified: ")
        redraws = screen.split("\r\x1b[2K")
        assert len(redraws) >= 4, screen
        # Every redraw is one line (no newline inside); the last one is the result on its own line.
        assert all("\n" not in r for r in redraws[1:-1]), screen
        assert any(r.startswith("#1 tty.bin  downloading") and "/s  ETA " in r for r in redraws), screen
        assert redraws[-1].startswith("#1 tty.bin  done  3.0 MiB in ") and "1 source(s)" in redraws[-1]
        assert "Traceback" not in screen
    finally:
        os.close(master)
        assert node.stop() == 0


@pytest.mark.parametrize("args, msg", [
    (("--max-peers", "-1"), "gnut node: --max-peers: must not be negative, not -1"),
    (("--log-file", "/nonexistent-dir/x/node.log"), "gnut node: cannot open the log file /nonexistent-dir/x/node.log"),
])
def test_bad_node_flags_exit_2_before_starting(tmp_path, args, msg):
    res = cli(tmp_path / "h", "node", "--listen", "127.0.0.1:0", *args)
    assert res.returncode == 2 and res.stderr.startswith(msg), res.stderr
    assert "listening" not in res.stderr


def test_standalone_get_of_a_row_uses_its_sources(tmp_path, trickle):
    """No node running: `gnut get 1` joins through --connect and fetches from the row's own source."""
    peer = NodeProc(tmp_path / "peer")
    try:
        trickle.rate = 16 * TRICKLE_RATE
        home = tmp_path / "c"
        home.mkdir()
        lastsearch.save(home, "slow", [trickle.row("bittern.bin")])
        res = cli(home, "get", "1", "--connect", peer.addr, "--out", str(tmp_path / "out"))
        assert res.returncode == 0, res.stderr
        assert (tmp_path / "out" / "bittern.bin").read_bytes() == trickle.data
        assert trickle.served >= TRICKLE_SIZE
    finally:
        assert peer.stop() == 0


def test_ctrl_c_on_a_standalone_get_keeps_the_partial_file(tmp_path, trickle):
    peer = NodeProc(tmp_path / "peer")
    try:
        home = tmp_path / "c"
        home.mkdir()
        lastsearch.save(home, "slow", [trickle.row("snipe.bin")])
        out = tmp_path / "out"
        getter = _spawn(home, "get", "1", "--connect", peer.addr, "--out", str(out))
        err = Lines(getter.stderr)
        err.wait(r"snipe\.bin  downloading +\d")
        time.sleep(1.5)  # past the first sidecar write
        getter.send_signal(signal.SIGINT)
        getter.wait(CLI_TIMEOUT)
        text = err.text()
        assert getter.returncode == 130, text
        assert "gnut get: interrupted; the partial file is kept (run the same command to resume)" in text
        assert "Traceback" not in text
        (state,) = (out / ".gnut-partial").glob("*.state")
        assert 0 < sum(e - s for s, e in json.loads(state.read_text())["done"]) < TRICKLE_SIZE
    finally:
        assert peer.stop() == 0
