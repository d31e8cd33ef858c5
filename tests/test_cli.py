"""CLI in-process: options -> NodeConfig, usage errors, output formats, and client/control against real nodes."""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from nethelpers import start_node, wait_for

from gnut.app import cli, client, commands, control, runner
from gnut.app.progress import ProgressView
from gnut.runtime import loops
from gnut.runtime.config import NodeConfig
from gnut.runtime.node import Node


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


def urn_of(data: bytes) -> str:
    return "urn:sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode()


# --- options -> NodeConfig ------------------------------------------------------------------

def test_node_options_make_the_config(tmp_path):
    cfg = cli.node_config(parse("--home", str(tmp_path), "node", "--listen", "127.0.0.1:7000",
                                "--connect", "127.0.0.1:7001", "--connect", "[::1]:7002", "--share", "/s1",
                                "--share", "/s2", "--mode", "flood", "--loop", "asyncio", "--max-peers", "5",
                                "--max-leaves", "6", "--out-links", "2", "--firewalled"))
    assert (cfg.listen_host, cfg.listen_port) == ("127.0.0.1", 7000)
    assert cfg.connect == [("127.0.0.1", 7001), ("::1", 7002)]
    assert cfg.share_dirs == [Path("/s1"), Path("/s2")]
    assert (cfg.mode, cfg.loop, cfg.max_peers, cfg.max_leaves, cfg.out_links) == ("flood", "asyncio", 5, 6, 2)
    assert cfg.firewalled is True and cfg.home == tmp_path and cfg.download_dir == tmp_path / "downloads"
    assert cfg.verbose == 0


def test_node_defaults_and_gnut_home(tmp_path, monkeypatch):
    monkeypatch.setenv("GNUT_HOME", str(tmp_path / "h"))
    cfg = cli.node_config(parse("node"))
    default = NodeConfig()
    assert cfg.home == tmp_path / "h"
    assert (cfg.listen_port, cfg.mode, cfg.firewalled, cfg.control) == (default.listen_port, "leaf", False, True)
    # The real network's defaults: every interface, auto role (starts as a leaf), TLS on.
    assert (cfg.listen_host, cfg.auto_role, cfg.tls) == ("0.0.0.0", True, True)
    assert cli.node_config(parse("node", "--mode", "ultrapeer")).auto_role is False
    assert cli.node_config(parse("node", "--no-tls")).tls is False
    assert cli.node_config(parse("node", "--no-control")).control is False


def test_verbose_flag_turns_on_message_flow(tmp_path):
    assert cli.node_config(parse("--home", str(tmp_path), "node", "-v")).verbose == cli.FLOW_VERBOSITY
    assert cli.node_config(parse("--home", str(tmp_path), "-v", "node", "-v")).verbose == cli.FLOW_VERBOSITY + 1


def test_config_file_under_command_line(tmp_path):
    conf = tmp_path / "gnut.toml"
    conf.write_text('listen = "127.0.0.1:7100"\nconnect = ["127.0.0.1:7101"]\nshare = "/music"\n'
                    'mode = "leaf"\nmax_peers = 9\nupload_slots = 2\n')
    cfg = cli.node_config(parse("--home", str(tmp_path), "node", "--config", str(conf), "--max-peers", "4"))
    assert (cfg.listen_port, cfg.connect, cfg.share_dirs) == (7100, [("127.0.0.1", 7101)], [Path("/music")])
    assert (cfg.mode, cfg.max_peers, cfg.upload_slots) == ("leaf", 4, 2)


@pytest.mark.parametrize("text, msg", [
    ('bogus_key = 1\n', "unknown setting 'bogus_key'"),
    ('mode = "hub"\n', "setting 'mode' must be one of"),
    ('listen = "127.0.0.1:x"\n', "numeric port"),
    ('max_peers = "ten"\n', "bad.toml:1: setting 'max_peers' must be an integer, not 'ten'"),
    ('\nlisten = 16349\n', "bad.toml:2: setting 'listen' must be a \"HOST:PORT\" string"),
    ('listen = \n', "Invalid value"),
])
def test_bad_config_file_exits_2(tmp_path, capsys, text, msg):
    conf = tmp_path / "bad.toml"
    conf.write_text(text)
    assert cli.main(["--home", str(tmp_path), "node", "--config", str(conf)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gnut node: ") and msg in err


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert cli.main(["--home", str(tmp_path), "node", "--config", str(tmp_path / "none.toml")]) == 2
    assert "No such file" in capsys.readouterr().err


@pytest.mark.parametrize("argv, msg", [
    (["search", "x", "--connect", "h:port"], "bad address 'h:port'"),
    (["search", "x", "--connect", "h:0"], "port in 1..65535"),
    (["get", "urn:sha1:X", "--connect", "h:65536"], "port in 1..65535"),
    (["node", "--listen", "h:-1"], "port in 0..65535"),
    (["node", "--mode", "hub"], "invalid choice"),
    (["node", "--loop", "trio"], "invalid choice"),
    (["node", "--max-peers", "many"], "invalid int value"),
    (["search", "x", "--timeout", "soon"], "invalid float value"),
])
def test_usage_errors_exit_2(capsys, argv, msg):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert msg in capsys.readouterr().err


def test_listen_port_0_is_allowed():
    assert parse("node", "--listen", "127.0.0.1:0").listen == ("127.0.0.1", 0)


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "usage: gnut" in capsys.readouterr().out


def test_version_names_the_fast_path(capsys):
    from gnut.fastpath import IMPLEMENTATION

    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"fastpath: {IMPLEMENTATION}" in out and "loop: " in out
    assert IMPLEMENTATION == ("python" if os.environ.get("GNUT_NO_EXTENSIONS") else "cython")


@pytest.mark.parametrize("target, msg", [
    ("urn:sha1:TOO-SHORT", "bad sha1"),
    ("http://example.invalid/file", "not a magnet"),
    ("magnet:?dn=name-only", "carries no urn:sha1"),
    ("magnet:?dn=x&xl=big", "not a byte count"),
])
def test_get_rejects_bad_targets_before_joining(tmp_path, capsys, target, msg):
    # No --connect and an empty home: a join would fail differently; the target is checked first.
    assert cli.main(["--home", str(tmp_path), "get", target]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gnut get: ") and msg in err


def test_get_json_error_line(tmp_path, capsys):
    assert cli.main(["--home", str(tmp_path), "get", "nonsense", "--json"]) == 2
    assert "error" in json.loads(capsys.readouterr().out)


def test_search_rejects_empty_text_and_bad_limits(tmp_path, capsys):
    assert cli.main(["--home", str(tmp_path), "search", "  "]) == 2
    assert cli.main(["--home", str(tmp_path), "search", "x", "--max-results", "0"]) == 2
    assert cli.main(["--home", str(tmp_path), "search", "x", "--timeout", "0"]) == 2
    assert capsys.readouterr().err.count("gnut search: ") == 3


def test_status_without_node(tmp_path, capsys):
    assert cli.main(["--home", str(tmp_path), "status"]) == 1
    assert "no running node" in capsys.readouterr().err


# --- output formats ---------------------------------------------------------------------------

HIT = {"name": "a b.txt", "size": 1234567, "urn": "urn:sha1:" + "A" * 32, "host": "127.0.0.1", "port": 6346,
       "index": 3, "servent_guid": "00" * 16, "firewalled": False, "vendor": "GNPY", "speed": 0, "hops": 2}


def test_results_group_by_urn_and_print_aligned_rows():
    from gnut.app import searchview

    r = searchview.Results("a b")
    r.add(HIT)
    r.add(dict(HIT, host="127.0.0.2"))
    r.add(dict(HIT, urn=None, name="c.txt", size=10))
    lines = searchview.plain_lines(r.rows())
    assert lines[0].split() == ["#", "Name", "Size", "Src", "Speed", "Flags"]
    assert lines[1].split() == ["1", "a", "b.txt", "1.2", "MiB", "2", "-", "-"]
    assert lines[2].split()[:3] == ["2", "c.txt", "10"]
    assert len({line.index("Src") if i == 0 else None for i, line in enumerate(lines)}) == 2


def test_results_json_records_carry_sources():
    from gnut.app import searchview

    r = searchview.Results("a b")
    r.add(HIT)
    r.add(dict(HIT, host="127.0.0.2", firewalled=True))
    (rec,) = r.records()
    assert (rec["n"], rec["urn"], rec["name"], rec["size"], rec["source_count"]) == (1, HIT["urn"], "a b.txt",
                                                                                     1234567, 2)
    assert [(s["host"], s["port"], s["index"], s["push"]) for s in rec["sources"]] == [
        ("127.0.0.1", 6346, 3, False), ("127.0.0.2", 6346, 3, True)]
    assert json.loads(json.dumps(rec)) == rec


def test_progress_line_plain_and_json(capsys):
    view = {"id": 3, "name": "a.bin", "done": 50, "size": 200, "sources": 1, "sources_known": 2, "speed": 25,
            "eta": 6.0, "state": "downloading"}
    ProgressView(as_json=False, tty=False).update(view)
    assert capsys.readouterr().err == "#3 a.bin  downloading  25.0%  50 B/200 B  25 B/s  ETA 0:06  1/2 src\n"
    ProgressView(as_json=True).update(view)
    assert json.loads(capsys.readouterr().out)["progress"]["done"] == 50


# --- client and control against real in-process nodes ----------------------------------------

def ns(**kw) -> argparse.Namespace:
    base = {"connect": [], "timeout": 5.0, "max_results": 100, "json": True, "out": Path("."), "target": ""}
    base.update(kw)
    return argparse.Namespace(**base)


def test_client_search_and_get_standalone(tmp_path, capsys):
    data = os.urandom(70_000)

    async def go():
        up = await start_node(tmp_path, "up", "ultrapeer", files={"orchid lantern.bin": data})
        try:
            rc = await client.search(ns(term="orchid", connect=[up.address], max_results=1), tmp_path / "c1")
            assert rc == 0
            hit = json.loads(capsys.readouterr().out)
            assert (hit["name"], hit["sources"][0]["port"], hit["urn"]) == ("orchid lantern.bin", up.address[1],
                                                                           urn_of(data))
            rc = await commands.get(ns(target=hit["urn"], connect=[up.address], out=tmp_path / "dl"), tmp_path / "c1")
            assert rc == 0
            assert (tmp_path / "dl" / "orchid lantern.bin").read_bytes() == data
            assert json.loads(capsys.readouterr().out.splitlines()[-1])["done"] is True
        finally:
            await up.stop()

    loops.run(go(), "asyncio")


def test_client_joins_through_the_host_cache(tmp_path, capsys):
    from gnut.runtime.hostcache import HostCache

    async def go():
        up = await start_node(tmp_path, "up", "ultrapeer", files={"plover dawn.bin": b"p" * 5000})
        try:
            cache = HostCache(tmp_path / "c" / "hosts.json")
            cache.mark_good(*up.address, time.time())  # it answered once (only proven hosts are saved)
            cache.mark_failed(*up.address, time.time())  # backed off by an old failure: still tried now
            cache.save()
            rc = await client.search(ns(term="plover", max_results=1), tmp_path / "c")
            assert rc == 0 and json.loads(capsys.readouterr().out)["name"] == "plover dawn.bin"
        finally:
            await up.stop()

    loops.run(go(), "asyncio")


def test_client_join_fails_fast_and_clearly(tmp_path, capsys):
    async def go():
        node = await start_node(tmp_path, "gone")
        dead = node.address
        await node.stop()  # its port is now closed
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await client.search(ns(term="x", connect=[dead], timeout=8.0), tmp_path / "c") == 1
        assert loop.time() - t0 < 3.0
        assert "could not join the network" in capsys.readouterr().err
        assert await client.search(ns(term="x"), tmp_path / "empty") == 1
        assert "no peers known" in capsys.readouterr().err

    loops.run(go(), "asyncio")


async def control_node(tmp_path: Path, files: dict[str, bytes] | None = None) -> Node:
    home = tmp_path / "ctl"
    (home / "share").mkdir(parents=True)
    for name, data in (files or {}).items():
        (home / "share" / name).write_bytes(data)
    return await runner.start_node(NodeConfig(listen_host="127.0.0.1", listen_port=0, home=home,
                                              share_dirs=[home / "share"], save_hosts=False, out_links=0))


def test_control_socket_is_private_and_answers_status(tmp_path, capsys):
    async def go():
        node = await control_node(tmp_path)
        try:
            sock = node.cfg.control_path
            assert sock.stat().st_mode & 0o777 == 0o600
            rc = await commands.status(argparse.Namespace(json=True), node.cfg.home)
            assert rc == 0
            st = json.loads(capsys.readouterr().out)
            assert st["address"] == f"{node.address[0]}:{node.address[1]}" and st["peers"] == []
            rc = await commands.status(argparse.Namespace(json=False), node.cfg.home)
            out = capsys.readouterr().out
            assert rc == 0 and "peers (0):" in out and "drops:    none" in out
            assert f"udp:      {node.address[0]}:{node.address[1]} datagrams in 0" in out
        finally:
            await node.stop()
        assert not node.cfg.control_path.exists()

    loops.run(go(), "asyncio")


@pytest.mark.parametrize("request_line, msg", [
    (b"not json\n", "bad request"),
    (b"[1, 2]\n", "must be a JSON object"),
    (b'{"op": "dance"}\n', "unknown op 'dance'"),
    (b'{"op": "connect", "host": "127.0.0.1", "port": "x"}\n', "connect needs"),
    (b'{"op": "connect"}\n', "connect needs"),
    (b'{"op": "get"}\n', "get needs a urn"),
    (b'{"op": "get", "urn": "urn:sha1:nope"}\n', "bad sha1"),
    (b'{"op": "search", "text": "x", "timeout": null}\n', "bad request"),
    (b'{"op": "search", "text": "x", "timeout": "soon"}\n', "bad request"),
])
def test_control_bad_requests_get_an_error_line(tmp_path, request_line, msg):
    async def go():
        node = await control_node(tmp_path)
        try:
            reader, writer = await asyncio.open_unix_connection(str(node.cfg.control_path))
            writer.write(request_line)
            await writer.drain()
            answer = json.loads(await asyncio.wait_for(reader.readline(), 5))
            writer.close()
            assert msg in answer["error"]
            # The node is still serving.
            lines = [line async for line in control.request(node.cfg.control_path, {"op": "peers"})]
            assert lines == [{"done": True, "peers": []}]
        finally:
            await node.stop()

    loops.run(go(), "asyncio")


def test_client_uses_the_running_node(tmp_path, capsys):
    data = os.urandom(50_000)

    async def go():
        up = await start_node(tmp_path, "up", "ultrapeer", files={"heron sketch.bin": data})
        node = await control_node(tmp_path)
        try:
            rc = await client.search(ns(term="heron", connect=[up.address], max_results=1), node.cfg.home)
            assert rc == 0
            hit = json.loads(capsys.readouterr().out)
            assert hit["name"] == "heron sketch.bin"
            assert node.stats()["sent"].get("QUERY"), "the search ran inside the running node"
            # The client hung up after its one row: the node stops the search on its side too.
            await wait_for(lambda: not node.searches.active, what="the node-side search to stop")
            rc = await commands.get(ns(target=hit["urn"], out=tmp_path / "dl", json=False), node.cfg.home)
            assert rc == 0
            assert "complete and verified" in capsys.readouterr().out
            assert (tmp_path / "dl" / "heron sketch.bin").read_bytes() == data
            rc = await commands.get(ns(target=urn_of(b"absent"), timeout=1.0), node.cfg.home)
            assert rc == 1 and "no source found" in capsys.readouterr().err
        finally:
            await node.stop()
            await up.stop()

    loops.run(go(), "asyncio")


def test_get_leaves_no_empty_partial_folder(tmp_path):
    data = os.urandom(10_000)

    async def go():
        up = await start_node(tmp_path, "up", "ultrapeer", files={"finch.bin": data})
        try:
            async with client.ephemeral_node(tmp_path / "c", [up.address], 5.0) as leaf:
                await wait_for(lambda: leaf.peers, what="leaf linked")
                from gnut.app.actions import fetch

                path = await fetch(leaf, urn_of(data), None, None, tmp_path / "out", 10.0)
        finally:
            await up.stop()
        assert path.read_bytes() == data
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["finch.bin"]

    loops.run(go(), "asyncio")


def test_a_source_tree_without_the_build_says_what_to_run(tmp_path):
    """`python -m gnut` over an unbuilt copy of the package: one line naming the fix, no traceback."""
    import shutil
    import subprocess
    import sys

    import gnut

    tree = tmp_path / "src"
    shutil.copytree(Path(gnut.__file__).parent, tree / "gnut", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "GNUT_NO_EXTENSIONS"}
    env["PYTHONPATH"] = str(tree)
    for argv in (["--version"], ["demo"], ["status"]):
        out = subprocess.run([sys.executable, "-m", "gnut", *argv], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=60)
        assert out.returncode == 2, (argv, out)
        assert "Traceback" not in out.stderr and out.stdout == ""
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "python3 -m pip install ." in lines[0] and "GNUT_NO_EXTENSIONS=1" in lines[0]
    # The pure twin, asked for, runs from the same unbuilt tree.
    env["GNUT_NO_EXTENSIONS"] = "1"
    out = subprocess.run([sys.executable, "-m", "gnut", "--version"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=60)
    assert out.returncode == 0 and "fastpath: python" in out.stdout


def test_the_installed_gnut_command_resolves():
    """The console script pyproject declares points at the real entry point (the layout moved it)."""
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "gnut"]
    assert ep.load() is cli.main
