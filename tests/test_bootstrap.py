"""Bootstrap: a fresh node joins a 10-node loopback network through only a GWebCache or only a UHC.

The public lists are exercised only inside a sealed network namespace this test creates (lo only,
no route out), counting the attempts the node records: nothing leaves the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from nethelpers import established, link, start_node, wait_for
from test_gwc import start_gwc, stop_gwc

from gnut.runtime.bootstrap import CacheList, load_public_lists
from gnut.runtime.config import NodeConfig
from gnut.runtime.fsutil import read_json
from gnut.runtime.node import Node

REPO = Path(__file__).resolve().parents[1]
COMMON = {"common tune.mp3": b"c" * 2000}
FAST = {"bootstrap_tick": 0.1, "hostcache_grace": 0.0, "uhc_timeout": 1.0}


async def _network(tmp: Path, n: int = 10, **kw) -> list:
    nodes = [await start_node(tmp, f"net{i}", mode="ultrapeer", files=COMMON, **kw) for i in range(n)]
    for i in range(n - 1):
        await link(nodes[i + 1], nodes[i])
    return nodes


async def _joined(fresh, nodes) -> None:
    await wait_for(lambda: established(fresh) > 0, timeout=15.0, what="fresh node linked")
    addrs = {n.address for n in nodes}
    assert any(p.listen_addr in addrs for p in fresh.peers.values() if p.established)
    search = fresh.searches.start("common tune")
    await wait_for(lambda: search.results, timeout=10.0, what="a search result through the joined network")
    await wait_for(lambda: fresh.bootstrap.phase == "done", timeout=5.0, what="bootstrap stops")


def test_fresh_node_joins_with_only_a_gwebcache(run, tmp_path):
    proc, url = start_gwc("--update-interval", "0")

    async def body():
        nodes = await _network(tmp_path, gwc=[url], **FAST)
        fresh = None
        try:
            await wait_for(lambda: all(n.bootstrap.events["gwc_updates_ok"] for n in nodes), timeout=10.0,
                           what="network nodes announced to the cache")
            fresh = await start_node(tmp_path, "fresh", mode="leaf", out_links=2, gwc=[url], **FAST)
            assert len(fresh.hosts) == 0
            fresh.tick_interval = 0.1
            await _joined(fresh, nodes)
            st = fresh.stats()["udp"]["bootstrap"]
            assert st["gwc_requests"] >= 1 and st["gwc_hosts"] >= 1 and st["joined"] == 1
        finally:
            for n in [*nodes, *([fresh] if fresh else [])]:
                await n.stop()

    try:
        run(body)
    finally:
        stop_gwc(proc)


def test_fresh_node_joins_with_only_a_udp_host_cache(run, tmp_path):
    async def body():
        nodes = await _network(tmp_path)
        fresh = None
        try:
            uhc = nodes[0]
            fresh = await start_node(tmp_path, "fresh", mode="leaf", out_links=2, uhc=[uhc.address], **FAST)
            fresh.tick_interval = 0.1
            await _joined(fresh, nodes)
            st = fresh.stats()["udp"]["bootstrap"]
            assert st["uhc_pings"] >= 1 and st["uhc_replies"] >= 1 and st["uhc_hosts"] >= 1
            assert uhc.udpnode.events["uhc_answers"] >= 1
        finally:
            for n in [*nodes, *([fresh] if fresh else [])]:
                await n.stop()

    run(body)


def test_dead_caches_back_off_and_state_is_saved(run, tmp_path):
    async def body():
        # 127.0.0.1 port 9 is closed (discard): the GWC fails, the UHC never answers.
        cfg = NodeConfig(listen_host="127.0.0.1", listen_port=0, mode="ultrapeer", home=tmp_path / "lone",
                         control=False, out_links=0, gwc=["http://127.0.0.1:9/"], uhc=["127.0.0.1:9"], **FAST)
        node = Node(cfg)
        await node.start()
        try:
            await wait_for(lambda: node.bootstrap.events["gwc_failures"] >= 1, timeout=10.0, what="GWC failure")
            g = node.bootstrap.gwcs.entries["http://127.0.0.1:9/"]
            u = node.bootstrap.uhcs.entries["127.0.0.1:9"]
            assert g.failures == 1 and g.next_try > time.time() + 20  # backed off, not hammered
            assert u.failures == 1 and node.bootstrap.events["uhc_pings"] == 1
        finally:
            await node.stop()
        saved = read_json(node.cfg.bootstrap_path, {})
        assert {r["key"]: r["failures"] for r in saved["gwc"]} == {"http://127.0.0.1:9/": 1}

    run(body)


def test_cache_list_is_bounded_and_keeps_user_entries():
    cl = CacheList(3)
    cl.add("mine:1", "config")
    for i in range(10):
        cl.add(f"learned{i}:1", "phc")
    assert len(cl.entries) == 3 and "mine:1" in cl.entries
    cl.failed("mine:1", 100.0)
    cl.failed("mine:1", 100.0)
    assert cl.entries["mine:1"].next_try == 100.0 + 60.0
    assert [e.key for e in cl.ready(100.0)][0] != "mine:1"


def test_public_lists_ship_in_the_package():
    uhcs, gwcs = load_public_lists()
    assert uhcs and gwcs and all(":" in u for u in uhcs) and all(g.startswith("http://") for g in gwcs)


def _netns_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a network namespace"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return None


def test_public_bootstrap_runs_only_in_a_sealed_namespace(tmp_path):
    """`gnut node --bootstrap` inside a namespace with only lo: it tries the public list, reaches nothing."""
    reason = _netns_available()
    if reason:
        pytest.skip(reason)
    ns = f"gnut-bs-{uuid.uuid4().hex[:8]}"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
        pytest.skip("`ip netns add` failed here (no network-namespace support)")
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        routes = subprocess.run(["ip", "netns", "exec", ns, "ip", "route", "show", "default"],
                                capture_output=True, text=True, check=True).stdout
        assert routes.strip() == "", "the namespace must have no route out"
        home = tmp_path / "home"
        home.mkdir()
        cfg = tmp_path / "node.toml"
        cfg.write_text("bootstrap_tick = 0.2\nhostcache_grace = 0.0\nuhc_timeout = 0.3\n")
        env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "gnut", "--home", str(home), "node", "--bootstrap",
             "--listen", "127.0.0.1:0", "--no-control", "--config", str(cfg)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(6.0)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        assert "Traceback" not in err, err
        state = read_json(home / "bootstrap.json", {})
        uhcs, gwcs = load_public_lists()
        tried_uhc = {r["key"]: r["attempts"] for r in state.get("uhc", []) if r["source"] == "public"}
        tried_gwc = {r["key"]: r["attempts"] for r in state.get("gwc", []) if r["source"] == "public"}
        assert set(tried_uhc) == set(uhcs) and set(tried_gwc) == set(gwcs)
        assert sum(tried_uhc.values()) >= 1 and sum(tried_gwc.values()) >= 1, (tried_uhc, tried_gwc, err)
        assert "linked to the network" not in err
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_cli_flags_and_config_keys_for_bootstrap(tmp_path, capsys):
    from gnut.app import cli

    args = cli.build_parser().parse_args(["--home", str(tmp_path), "node", "--uhc", "127.0.0.1:7000",
                                          "--uhc", "127.0.0.1:7001", "--gwc", "http://127.0.0.1:8080/"])
    cfg = cli.node_config(args)
    assert cfg.uhc == [("127.0.0.1", 7000), ("127.0.0.1", 7001)] and cfg.gwc == ["http://127.0.0.1:8080/"]
    assert cfg.bootstrap is False  # public lists only when asked
    conf = tmp_path / "n.toml"
    conf.write_text('uhc = ["127.0.0.1:7002"]\ngwc = ["http://127.0.0.1:1/g"]\nbootstrap = true\n')
    cfg = cli.node_config(cli.build_parser().parse_args(["--home", str(tmp_path), "node", "--config", str(conf)]))
    assert cfg.uhc == [("127.0.0.1", 7002)] and cfg.gwc == ["http://127.0.0.1:1/g"] and cfg.bootstrap
    assert cli.main(["--home", str(tmp_path), "node", "--gwc", "ftp://127.0.0.1/"]) == 2
    assert "only http://" in capsys.readouterr().err
