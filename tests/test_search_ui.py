"""`gnut search` as users see it: the real CLI (a subprocess) against real nodes on 127.0.0.1.

The nodes run in-process (on uvloop and on asyncio: the `run` fixture) beside a hostile raw
servent; the CLI runs as `python -m gnut search ...` with its own GNUT_HOME, either through the
running node's control socket or stand-alone with --connect.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
from nethelpers import LAB_LIMITS, RawPeer, link, start_node, wait_for

from gnut.app import control, lastsearch, runner
from gnut.constants import MSG_QUERY, MSG_QUERYHIT
from gnut.protocol import messages
from gnut.runtime.config import NodeConfig

REPO = Path(__file__).resolve().parents[1]
# Seconds one CLI command may take in these tests (its own --timeout is far below).
CLI_TIMEOUT = 40.0
JAZZ = "jazz live 1969.mp3"
JAZZ_DATA = bytes(range(256)) * 1200  # 307,200 bytes, shared by the control node and by S
NOTES = "jazz notes.txt"
MINE = "jazz mine.txt"  # shared only by the control node: shown as local
EVIL_NAME = "jazz \x1b]0;pwned\x07\x1b[2J\rFAKE\nline.txt"
HOSTILE_GUID = bytes.fromhex("6a" * 16)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def urn_of(data: bytes) -> str:
    return "urn:sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode()


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NO_COLOR", None)
    env.update(GNUT_HOME=str(home), PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


async def gnut(home: Path, *args: str, **env: str) -> tuple[int, str, str, float]:
    """Run `python -m gnut ARGS` with GNUT_HOME=home; (exit status, stdout, stderr, seconds). Never a traceback."""
    home.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gnut", *args, env=_env(home, **env),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT)
    text_out, text_err = out.decode(), err.decode()
    assert "Traceback" not in text_err, text_err
    return proc.returncode, text_out, text_err, time.monotonic() - started


class HostileServent(RawPeer):
    """A raw ultrapeer that answers every QUERY it sees, as a spammer does.

    style "exe": `query.exe` plus a file with terminal escapes in its name;
    "fresh": "<query> remix.mp3" with a new urn each time (only the servent burst gives it away);
    "same_urn": "<query>.mp3" always with one urn (the urn burst gives it away).
    """

    def __init__(self, style: str) -> None:
        super().__init__(mode="ultrapeer")
        self.style = style
        self.answered = 0
        self._done = 0

    async def serve(self) -> None:
        while not self.closed:
            queries = self.of_type(MSG_QUERY)
            for m in queries[self._done:]:
                self.answer(m)
            self._done = len(queries)
            await asyncio.sleep(0.01)

    def answer(self, m) -> None:
        q = messages.Query.decode(m.payload)
        if not q.text.strip() or q.text == "\\":
            return
        self.answered += 1
        if self.style == "exe":
            results = (messages.HitResult(2, 4_321, EVIL_NAME, urns=(urn_of(b"evil"),)),
                       messages.HitResult(1, 66_666, f"{q.text}.exe", urns=(urn_of(q.text.encode()),)))
        elif self.style == "fresh":
            results = (messages.HitResult(1, 5_000_000 + self.answered, f"{q.text} remix.mp3",
                                          urns=(urn_of(q.text.encode() + b"fresh"),)),)
        else:
            results = (messages.HitResult(1, 3_000_000, f"{q.text}.mp3", urns=(urn_of(b"one payload"),)),)
        qh = messages.QueryHit(port=6399, ip="127.0.0.1", speed=99, results=results, servent_guid=HOSTILE_GUID)
        self.send(messages.build(m.guid, MSG_QUERYHIT, m.hops + 2, 0, qh.encode()))


async def control_node(tmp: Path, files: dict[str, bytes], **kw) -> object:
    """A node with the control API (what `gnut node` runs) sharing `files`."""
    home = tmp / "u"
    (home / "share").mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (home / "share" / name).write_bytes(data)
    # Its peers and clients all come from 127.0.0.1: the lab's per-address limits (tests/nethelpers.py).
    cfg = NodeConfig(listen_host="127.0.0.1", listen_port=0, home=home, share_dirs=[home / "share"],
                     save_hosts=False, out_links=0, dq_hop_wait=0.2, **{**LAB_LIMITS, **kw})
    return await runner.start_node(cfg)


class Net:
    """U (control API, shares JAZZ) <- S (shares JAZZ and NOTES), optionally a hostile servent on U."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.hostile: HostileServent | None = None

    async def __aenter__(self) -> Net:
        self.u = await control_node(self.tmp, {JAZZ: JAZZ_DATA, MINE: b"m" * 900})
        self.s = await start_node(self.tmp, "s", "ultrapeer", files={JAZZ: JAZZ_DATA, NOTES: b"n" * 5000})
        await link(self.s, self.u)
        return self

    async def add_hostile(self, style: str) -> HostileServent:
        self.hostile = HostileServent(style)
        await self.hostile.connect(self.u)
        self._serve = asyncio.ensure_future(self.hostile.serve())
        return self.hostile

    async def __aexit__(self, *exc) -> None:
        if self.hostile is not None:
            self._serve.cancel()
            await self.hostile.close()
        await self.s.stop()
        await self.u.stop()


def table_rows(out: str) -> tuple[str, list[str]]:
    lines = [ln for ln in out.splitlines() if ln.strip()]
    return lines[0], lines[1:]


def test_table_through_running_node_groups_numbers_and_ends_when_quiet(tmp_path, run):
    async def go():
        async with Net(tmp_path) as net:
            home = net.u.cfg.home
            rc, out, err, took = await gnut(home, "search", "jazz", "live", "--timeout", "20", "--quiet", "1")
            assert rc == 0, err
            assert took < 10, f"search took {took:.1f} s: the quiet period must end it well before --timeout"
            head, rows = table_rows(out)
            assert head.split() == ["#", "Name", "Size", "Src", "Speed", "Flags"]
            assert len(rows) == 1, out  # one row for the file, though two nodes (U itself and S) have it
            assert rows[0].split()[:6] == ["1", "jazz", "live", "1969.mp3", "300.0", "KiB"]
            assert rows[0].split()[6] == "2" and rows[0].endswith("local")
            assert "1 file from 2 sources" in err
            row = lastsearch.load_row(home, 1)
            assert (row["urn"], row["name"], row["size"]) == (urn_of(JAZZ_DATA), JAZZ, len(JAZZ_DATA))
            ports = sorted(s["port"] for s in row["sources"])
            assert ports == sorted([net.u.address[1], net.s.address[1]])
            for s in row["sources"]:
                assert s["host"] == "127.0.0.1" and isinstance(s["index"], int) and s["push"] is False
                assert len(bytes.fromhex(s["servent_guid"])) == 16
            # The client is gone: the node stopped the search on its side.
            await wait_for(lambda: not net.u.searches.active, what="the node-side search to end")
            # Words after an option are search words too.
            rc, out, err, _ = await gnut(home, "search", "jazz", "--quiet", "1", "live", "--json")
            assert rc == 0 and [json.loads(ln)["name"] for ln in out.splitlines()] == [JAZZ], out + err
            assert json.loads((home / "last_search.json").read_text())["query"] == "jazz live"

            rc, out, err, _ = await gnut(home, "search", "jazz", "--quiet", "1")
            head, rows = table_rows(out)
            assert rc == 0 and [r.split()[0] for r in rows] == ["1", "2", "3"], out
            # Aligned columns: every left column starts where its header does, every right one ends there.
            for col in ("Name", "Flags"):
                start = head.index(col)
                assert all(r[start - 1] == " " and r[start] != " " for r in rows), (col, out)
            for col in ("Size", "Src", "Speed"):
                end = head.index(col) + len(col)
                assert all(r[end - 1] != " " and r[end] == " " for r in rows), (col, out)
            names = [r for r in rows if MINE in r]
            assert names and names[0].split()[-1] == "local", "the node's own file is shown, marked local"

    run(go)


def test_standalone_json_filters_sort_and_exit_status(tmp_path, run):
    async def go():
        async with Net(tmp_path) as net:
            addr = f"127.0.0.1:{net.u.address[1]}"
            c = tmp_path / "c"
            rc, out, err, _ = await gnut(c, "search", "jazz", "--connect", addr, "--quiet", "1", "--json")
            assert rc == 0, err
            recs = [json.loads(ln) for ln in out.splitlines()]
            assert [r["n"] for r in recs] == list(range(1, len(recs) + 1))
            by_name = {r["name"]: r for r in recs}
            assert {JAZZ, NOTES, MINE} <= set(by_name)
            j = by_name[JAZZ]
            for key in ("n", "urn", "name", "size", "source_count", "speed", "flags", "local", "firewalled",
                        "busy", "spam", "sources"):
                assert key in j
            assert j["source_count"] == 2 and j["local"] is False and j["spam"] is None
            # The saved rows are the printed ones.
            assert [lastsearch.load_row(c, r["n"])["urn"] for r in recs] == [r["urn"] for r in recs]

            async def names(*flags: str) -> list[str]:
                rc, out, err, _ = await gnut(c, "search", "jazz", "--connect", addr, "--quiet", "1", "--json", *flags)
                assert rc == 0, err
                return [json.loads(ln)["name"] for ln in out.splitlines()]

            assert await names("--min-size", "100k") == [JAZZ]
            assert await names("--max-size", "1k") == [MINE]
            assert sorted(await names("--ext", "txt")) == sorted([NOTES, MINE])
            assert sorted(await names("--ext", "MP3,.txt")) == sorted([JAZZ, NOTES, MINE])
            assert await names("--sort", "name") == [JAZZ, MINE, NOTES]
            assert await names("--sort", "size") == [JAZZ, NOTES, MINE]

            rc, out, err, took = await gnut(c, "search", "zzyzx", "nothing", "--connect", addr, "--quiet", "1",
                                            "--timeout", "20")
            assert rc == 1 and out == "" and "no results for 'zzyzx nothing'" in err and took < 10
            rc, out, err, _ = await gnut(c, "search", "x", "--min-size", "10Q")
            assert rc == 2 and "bad size '10Q'" in err
            for bad in (("--timeout", "nan"), ("--quiet", "0"), ("--max-results", "0")):
                rc, out, err, _ = await gnut(c, "search", "x", *bad)
                assert rc == 2 and "gnut search: --timeout and --quiet must be > 0" in err, (bad, err)

    run(go)


def test_spam_and_hostile_names(tmp_path, run):
    async def go():
        async with Net(tmp_path) as net:
            hostile = await net.add_hostile("exe")
            home = net.u.cfg.home
            rc, out, err, _ = await gnut(home, "search", "jazz", "live", "--quiet", "1")
            assert rc == 0 and hostile.answered >= 1, err
            assert "\x1b" not in out + err and "\r" not in out + err
            head, rows = table_rows(out)
            assert not any(".exe" in r for r in rows), out
            assert "1 filtered (exe_named_query 1): --show-filtered shows them" in err
            evil = [r for r in rows if "pwned" in r]
            assert evil and "\\x1b]0;pwned\\x07\\x1b[2J\\rFAKE\\nline.txt" in evil[0]
            assert net.u.stats()["spam"]["filtered"]["exe_named_query"] >= 1

            rc, out, err, _ = await gnut(home, "search", "jazz", "live", "--quiet", "1", "--show-filtered")
            exe = [r for r in out.splitlines() if "jazz live.exe" in r]
            assert exe and "spam:exe_named_query" in exe[0], out
            # The hostile name in the live table on a terminal: escaped there too.
            screen = await pty_search(home, "jazz", "live", "--quiet", "1", "--show-filtered")
            assert "\\x1b]0;pwned" in screen and "\x1b]0;pwned" not in screen

    run(go)


@pytest.mark.parametrize("style, reason, burst", [("fresh", "servent_every_query", 4),
                                                  ("same_urn", "urn_every_query", 3)])
@pytest.mark.parametrize("via", ["node", "standalone"])
def test_servent_and_urn_answering_every_query(tmp_path, run, style, reason, burst, via):
    async def go():
        async with Net(tmp_path) as net:
            await net.add_hostile(style)
            home = net.u.cfg.home
            # Stand-alone, each search is a new short-lived node: the observations carry over in
            # $GNUT_HOME/spam_state.json.
            extra = ("--connect", f"127.0.0.1:{net.u.address[1]}") if via == "standalone" else ()
            if via == "standalone":
                home = tmp_path / "c"
            words = ["ocelot", "tundra", "marimba", "zeppelin", "quasar"]
            for k, word in enumerate(words):
                rc, out, err, _ = await gnut(home, "search", word, "--quiet", "1", "--json", "--show-filtered",
                                             *extra)
                (rec,) = [json.loads(ln) for ln in out.splitlines()]
                if k + 1 < burst:
                    assert rc == 0 and rec["spam"] is None, (word, rec)
                else:
                    assert rc == 1 and rec["spam"] == reason, (word, rec)
            if via == "node":
                assert net.u.stats()["spam"]["filtered"][reason] == len(words) - burst + 1
            else:
                state = json.loads((home / "spam_state.json").read_text())
                assert any(c[2] == reason for c in state["convicted"]), state

    run(go)


def test_known_spam_lists(tmp_path, run):
    async def go():
        async with Net(tmp_path) as net:
            home = net.u.cfg.home
            listed = tmp_path / "extra.txt"
            listed.write_text(f"# my list\n{urn_of(b'n' * 5000)}\n")
            rc, out, err, _ = await gnut(home, "search", "jazz", "--quiet", "1", "--spam-list", str(listed))
            assert rc == 0 and NOTES not in out and "1 filtered (known_spam 1)" in err, out + err
            # The node's own list: $GNUT_HOME/spam_sha1.txt, read when the node starts.
            c = tmp_path / "c"
            c.mkdir()
            (c / "spam_sha1.txt").write_text(urn_of(JAZZ_DATA).split(":")[-1] + "\n")
            rc, out, err, _ = await gnut(c, "search", "jazz", "live", "--quiet", "1",
                                         "--connect", f"127.0.0.1:{net.u.address[1]}")
            assert rc == 1 and out == "" and "2 filtered (known_spam 2)" in err, out + err

    run(go)


def test_control_search_stops_when_the_client_leaves(tmp_path, run):
    async def go():
        async with Net(tmp_path) as net:
            reader, writer = await asyncio.open_unix_connection(str(net.u.cfg.control_path))
            writer.write(json.dumps({"op": "search", "text": "jazz", "timeout": 60, "quiet": 60}).encode() + b"\n")
            await writer.drain()
            first = json.loads(await asyncio.wait_for(reader.readline(), 5))
            assert first["hit"]["name"] and net.u.searches.active
            writer.close()
            await wait_for(lambda: not net.u.searches.active, timeout=5, what="the abandoned search to stop")
            assert net.u.events["searches_abandoned"] == 1
            # A well-behaved client that reads to the end is not "abandoned", and ends on the quiet period.
            t0 = time.monotonic()
            req = {"op": "search", "text": "jazz", "timeout": 30, "quiet": 0.5, "local": True}
            lines = [ln async for ln in control.request(net.u.cfg.control_path, req)]
            assert lines[-1]["done"] and lines[-1]["count"] >= 3 and time.monotonic() - t0 < 10
            assert any(ln.get("hit", {}).get("local") for ln in lines)
            assert net.u.events["searches_abandoned"] == 1

    run(go)


async def pty_search(home: Path, *args: str, **env: str) -> str:
    """Run `gnut search ARGS` on a pseudo-terminal (100x30); return everything it drew."""
    import pty

    master, slave = pty.openpty()
    os.set_blocking(master, False)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gnut", "search", *args,
                                                env=_env(home, COLUMNS="100", LINES="30", TERM="xterm-256color", **env),
                                                stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    chunks = []
    try:
        deadline = time.monotonic() + CLI_TIMEOUT
        while time.monotonic() < deadline:
            try:
                data = os.read(master, 65536)
            except BlockingIOError:
                if proc.returncode is not None:
                    break
                await asyncio.sleep(0.02)
                continue
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        await asyncio.wait_for(proc.wait(), CLI_TIMEOUT)
    finally:
        os.close(master)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert "Traceback" not in screen, screen
    return screen


def test_live_table_on_a_terminal(tmp_path, run):
    async def go():
        async with Net(tmp_path) as net:
            raw = await pty_search(net.u.cfg.home, "jazz", "--quiet", "1.5")
            assert "\x1b[1A" in raw or "\x1b[2K" in raw, "rich redraws the table in place"
            final = ANSI.sub("", raw[raw.rindex("#"):])
            assert "searching…" in ANSI.sub("", raw), "the table is drawn while the search runs"
            lines = [ln for ln in final.splitlines() if ln.strip()]
            assert lines[0].split()[:6] == ["#", "Name", "Size", "Src", "Speed", "Flags"], final
            body = [ln for ln in lines if re.match(r"\s*\d+\s+jazz ", ln)]
            assert [ln.split()[0] for ln in body] == ["1", "2", "3"], final
            assert "3 files from 4 sources" in final and "gnut get N downloads row N" in final
            # NO_COLOR on a terminal: the plain aligned table (no box drawing, no colours).
            raw = await pty_search(net.u.cfg.home, "jazz", "--quiet", "1", NO_COLOR="1")
            assert "─" not in raw and "\x1b[3" not in raw and "\x1b[1m" not in raw, raw
            assert "\r\x1b[Ksearching… " in raw, "a one-line count while the search runs"
            lines = [ln for ln in ANSI.sub("", raw.replace("\r", "\n")).splitlines() if ln.strip()]
            head = next(ln for ln in lines if ln.startswith("#"))
            assert head.split() == ["#", "Name", "Size", "Src", "Speed", "Flags"], raw

    run(go)


@pytest.mark.parametrize("text, size", [("700k", 700 * 1024), ("10M", 10 << 20), ("1.5G", 3 << 29), ("123", 123),
                                        ("2MB", 2 << 20), ("1 KiB", 1024)])
def test_sizes_users_type(text, size):
    from gnut.app.searchview import parse_size

    assert parse_size(text) == size


def test_rich_cells_never_read_markup():
    from rich.console import Console

    from gnut.app import searchview

    r = searchview.Results("x")
    r.add({"name": "[bold red]x[/] [link=http://e]y", "size": 5, "urn": None, "host": "127.0.0.1", "port": 1,
           "index": 1, "servent_guid": "00" * 16, "firewalled": False, "speed": 0})
    con = Console(width=120, record=True, color_system=None)
    con.print(searchview.rich_table(r.rows()))
    assert "[bold red]x[/] [link=http://e]y" in con.export_text()


def test_quiet_and_timeout_from_config(tmp_path, run):
    async def go():
        async with Net(tmp_path) as net:
            # Stand-alone: $GNUT_HOME/config.toml holds the search settings.
            c = tmp_path / "c"
            c.mkdir()
            (c / "config.toml").write_text("search_timeout = 30.0\nsearch_quiet = 0.5\n")
            rc, out, err, took = await gnut(c, "search", "zzyzx", "--connect", f"127.0.0.1:{net.u.address[1]}")
            assert rc == 1 and took < 8, (took, err)
            (c / "config.toml").write_text("search_quiet = 0.5\nsearch_timeout = 1.0\nsearch_colour = 1\n")
            rc, out, err, _ = await gnut(c, "search", "zzyzx")
            assert rc == 2 and "unknown setting 'search_colour'" in err
            # Through the running node: its own settings apply when the command line says nothing.
            net.u.cfg.search_quiet = 0.5
            net.u.cfg.search_timeout = 30.0
            rc, out, err, took = await gnut(net.u.cfg.home, "search", "zzyzx")
            assert rc == 1 and took < 8, (took, err)
            net.u.cfg.search_quiet = 30.0
            net.u.cfg.search_timeout = 1.0
            rc, out, err, took = await gnut(net.u.cfg.home, "search", "zzyzx")
            assert rc == 1 and 1.0 <= took < 8, (took, err)

    run(go)


def test_row_flags_firewalled_and_busy():
    from gnut.app import searchview

    base = {"name": "a.mp3", "size": 5, "urn": "urn:sha1:" + "B" * 32, "host": "127.0.0.1", "index": 1,
            "servent_guid": "00" * 16, "speed": 10}
    r = searchview.Results("a")
    r.add(dict(base, port=1, firewalled=True, busy=True))
    assert r.rows()[0].flags() == ["firewalled", "busy"]
    r.add(dict(base, port=2, firewalled=False, busy=False, speed=50))
    (row,) = r.rows()
    assert row.flags() == [] and row.speed == 50 and len(row.sources) == 2
