"""`gnut node --dht`, `gnut dht status|get` and `gnut get` through the DHT, with real processes on
loopback: two nodes with no Gnutella link between them, one sharing a file; the other finds it
in the DHT and downloads it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time

from test_e2e import NodeProc, cli

# Loopback: every node in one /24 and behind one source IP: the DHT and UDP limits are raised.
LAB_CONFIG = "dht_per_net24 = 64\ndht_rate = 1000.0\nudp_rate = 1000.0\nudp_burst = 3000.0\n"


def _urn(data: bytes) -> str:
    return "urn:sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode()


def test_cli_finds_and_downloads_a_file_through_the_dht_alone(tmp_path):
    data = os.urandom(200_000)
    share = tmp_path / "share"
    share.mkdir()
    (share / "dht only.bin").write_bytes(data)
    conf = tmp_path / "lab.toml"
    conf.write_text(LAB_CONFIG)
    a = NodeProc(tmp_path / "a", "--dht", "--config", str(conf))
    b = None
    try:
        b = NodeProc(tmp_path / "b", "--dht-bootstrap", a.addr, "--share", str(share), "--config", str(conf))
        deadline = time.monotonic() + 30
        while True:  # until b's ALOC is stored at a
            st = json.loads(cli(a.home, "dht", "status", "--json").stdout)
            if st["stored_values"] >= 1:
                break
            assert time.monotonic() < deadline, st
            time.sleep(0.2)
        assert st["mode"] == "active" and st["contacts"] >= 1
        res = cli(a.home, "dht", "get", _urn(data))
        assert res.returncode == 0 and f"port {b.port}" in res.stdout and "ALOC" in res.stdout
        got = json.loads(cli(a.home, "dht", "get", _urn(data), "--json").stdout)
        assert got[0]["aloc"]["length"] == len(data)
        out = tmp_path / "out"
        res = cli(a.home, "get", _urn(data), "--out", str(out), "--timeout", "30")
        assert res.returncode == 0, res.stderr
        files = list(out.iterdir())
        assert [hashlib.sha1(f.read_bytes()).digest() for f in files] == [hashlib.sha1(data).digest()]
        bad = cli(a.home, "dht", "get", "not-a-urn")
        assert bad.returncode == 2 and "urn:sha1" in bad.stderr
    finally:
        if b is not None:
            b.stop()
        a.stop()
    assert (tmp_path / "a" / "dht.json").exists()  # the routing table was saved at exit


def test_dht_commands_on_a_node_without_the_dht(tmp_path):
    n = NodeProc(tmp_path / "n")
    try:
        res = cli(n.home, "dht", "status")
        assert res.returncode == 1 and "--dht" in res.stderr
    finally:
        n.stop()
    res = cli(tmp_path / "nobody", "dht", "status")
    assert res.returncode == 1 and "no running node" in res.stderr
