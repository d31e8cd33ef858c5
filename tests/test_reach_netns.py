"""Reachability between real `gnut node` processes in the namespace rig (tests/netrig.py, docs/NETNS.md).

One network: a public ultrapeer (`seed`), a public `auto` node, a leaf behind NAT sharing a file,
a public downloader and an `auto` node on a public address behind an inbound firewall. Proves: the NATed node finds itself firewalled and the public ones
reachable; the public auto node becomes an ultrapeer while the NATed one stays a leaf; the NATed
leaf's file is found and downloaded by the public node through the seed as push proxy, with the
leaf's own address unreachable.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from netrig import REPO, netrig, wait_until  # noqa: F401  (netrig is a fixture)

pytestmark = pytest.mark.slow

PORT = 6346
NAT_FILE = "natquokka concert.ogg"
NAT_DATA = bytes(range(256)) * 1200  # 300 KiB
# Short timers through the config file (defaults are minutes; the rules are the same).
FAST = 'connect_back_wait = 3.0\nup_min_uptime = 2.0\nsave_hosts = false\n'


def _gnut(home: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "gnut", "--home", str(home), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _node(rig, host, tmp: Path, listen: str, mode: str, connect: list[str] = (), files: dict | None = None):
    home = tmp / host.name
    share = home / "share"
    share.mkdir(parents=True)
    for name, data in (files or {}).items():
        (share / name).write_bytes(data)
    conf = home / "gnut.toml"
    conf.write_text(FAST + f'mode = "{mode}"\nlisten = "{listen}"\n'
                    + (f"connect = {json.dumps(list(connect))}\n" if connect else ""))
    log = open(home / "node.log", "w")
    rig.popen(host, [sys.executable, "-m", "gnut", "--home", str(home), "node", "--config", str(conf),
                     "--share", str(share)], env=rig.gnut_env(home), stdout=log, stderr=log)
    wait_until(lambda: (home / "control.sock").exists(), 20, f"{host.name}'s control socket")
    return home


def _status(home: Path) -> dict:
    res = _gnut(home, "status", "--json", timeout=20)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _log(home: Path) -> str:
    return (home / "node.log").read_text(errors="replace")


def test_nat_firewall_role_and_push_proxy_download(netrig, tmp_path):  # noqa: F811
    rig = netrig
    seed_h = rig.public_host("seed")
    auto_h = rig.public_host("auto")
    nat_h = rig.nat_host("nat")
    dl_h = rig.public_host("dl")
    fw_h = rig.firewalled_host("fw")
    rig.assert_isolated()
    seed_at = f"{seed_h.ip}:{PORT}"

    seed = _node(rig, seed_h, tmp_path, seed_at, "ultrapeer")
    auto = _node(rig, auto_h, tmp_path, f"{auto_h.ip}:{PORT}", "auto", [seed_at])
    nat = _node(rig, nat_h, tmp_path, f"0.0.0.0:{PORT}", "auto", [seed_at], {NAT_FILE: NAT_DATA})
    dl = _node(rig, dl_h, tmp_path, f"{dl_h.ip}:{PORT}", "leaf", [seed_at])
    fw = _node(rig, fw_h, tmp_path, f"{fw_h.ip}:{PORT}", "auto", [seed_at])
    try:
        # Reachability is real in the rig: nobody can dial the NATed host, at either address.
        assert not rig.can_connect(dl_h, nat_h.seen_as, PORT, timeout=0.5)
        assert not rig.can_connect(dl_h, nat_h.ip, PORT, timeout=0.5)

        # Firewall detection: the NATed node asked the seed to connect back; nothing came.
        st = wait_until(lambda: (s := _status(nat))["reachability"]["tcp"] == "no" and s, 30,
                        "the NATed node to find itself firewalled")
        assert "connect back" in st["reachability"]["tcp_reason"]
        # So does a node on a public address behind its own inbound firewall.
        wait_until(lambda: _status(fw)["reachability"]["tcp"] == "no", 30, "the firewalled node's verdict")
        st = wait_until(lambda: (s := _status(auto))["reachability"]["tcp"] == "yes" and s, 30,
                        "the public auto node to find itself reachable")
        assert _status(seed)["events"].get("connect_back_probes", 0) >= 2

        # Role election: the public auto node becomes an ultrapeer, the NATed one stays a leaf.
        st = wait_until(lambda: (s := _status(auto))["mode"] == "ultrapeer" and s, 30,
                        "the public auto node to become an ultrapeer")
        assert st["reachability"]["role_reason"].startswith("auto: promoted")
        # ... and links to the seed again, now as an ultrapeer.
        wait_until(lambda: any(p["host"] == auto_h.ip and p["role"] == "ultrapeer"
                               for p in _status(seed)["peers"]), 30, "the promoted node's new link")
        st = _status(nat)
        assert st["mode"] == "leaf" and "TCP not reachable" in st["reachability"]["role_reason"]
        # Its address: learned from its peers' Remote-IP (the router's outside address), or, while
        # address learning waits for more peers to agree, not advertised (never 127.0.0.1 on the wire).
        learned = st["address"].split(":")[0] == nat_h.seen_as
        assert _status(fw)["mode"] == "leaf"  # a routable address is not enough: nobody can reach it

        # The NATed leaf has the seed as push proxy.
        wait_until(lambda: _status(nat)["events"].get("push_proxies_acked", 0) >= 1, 20,
                   "the seed to acknowledge as push proxy")

        # Search from the public downloader: the hit says push-needed and names the proxy.
        def found():
            res = _gnut(dl, "search", "natquokka", "--json", "--timeout", "4", "--max-results", "1")
            lines = [json.loads(x) for x in res.stdout.splitlines() if x.strip()]
            return lines[0] if lines else None

        hit = wait_until(found, 40, "the NATed leaf's file in a search", step=0.5)
        assert hit["firewalled"] is True
        (src,) = hit["sources"]
        assert src["host"] == (nat_h.seen_as if learned else nat_h.ip)  # unlearned: its end of the link
        assert [seed_h.ip, PORT] in src["push_proxies"]

        out = tmp_path / "got"
        res = _gnut(dl, "get", hit["urn"], "--out", str(out), "--json", "--timeout", "60", timeout=90)
        assert res.returncode == 0, res.stdout + res.stderr + _log(dl)[-3000:]
        got = out / NAT_FILE
        assert hashlib.sha1(got.read_bytes()).digest() == hashlib.sha1(NAT_DATA).digest()
        # ... through the push proxy: the downloader asked the seed over HTTP, the seed pushed.
        assert _status(dl)["events"].get("push_proxy_used", 0) >= 1
        assert _status(seed)["events"].get("push_proxy_pushes", 0) >= 1
        assert _status(nat)["events"].get("giv_sent", 0) >= 1
    except BaseException:
        for home in (seed, auto, nat, dl, fw):
            print(f"----- {home.name}\n{_log(home)[-4000:]}")
        raise
