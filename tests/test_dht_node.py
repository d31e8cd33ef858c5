"""The DHT wired into real nodes: two Gnutella overlays that no flood crosses, joined only by the
DHT; a file shared in one is found through its ALOC and downloaded (SHA-1 verified) from the
other; the control op and `gnut dht` answer."""

from __future__ import annotations

import hashlib
import os

from nethelpers import link, start_node, wait_for

from gnut.app.actions import fetch
from gnut.app.dhtcli import control_dht
from gnut.dht import wire
from gnut.runtime.share import sha1_to_urn

# Loopback: one /24 and one source IP for everyone, so the DHT's and the UDP socket's limits are raised.
LAB = {"dht": True, "dht_per_net24": 64, "dht_rate": 1e4, "udp_rate": 1e4, "udp_burst": 1e4}


def test_file_beyond_any_flood_is_found_through_the_dht_and_downloaded(run, tmp_path):
    data = os.urandom(300_000)
    sha1 = hashlib.sha1(data).digest()

    async def main():
        a0 = await start_node(tmp_path, "a0", **LAB)
        boot = {"dht_bootstrap": [a0.dht.address]}
        a1 = await start_node(tmp_path, "a1", **LAB, **boot)
        b0 = await start_node(tmp_path, "b0", **LAB, **boot)
        b1 = await start_node(tmp_path, "b1", files={"rare.bin": data}, **LAB, **boot)
        extra = [await start_node(tmp_path, f"x{i}", **LAB, **boot) for i in range(4)]
        nodes = [a0, a1, b0, b1, *extra]
        try:
            await link(a1, a0)  # overlay A: a0 - a1
            await link(b1, b0)  # overlay B: b0 - b1 (no Gnutella link between A and B)
            await wait_for(lambda: all(n.dht.core.bootstrapped for n in nodes), 15.0, "DHT bootstrap")
            await wait_for(lambda: b1.dht.published_files and not b1.dht.publishing, 20.0, "ALOC published")
            assert b1.dht.core.history[-1]["stored"] >= 3
            # the flood alone cannot find it
            st = await control_dht(a1, {"action": "get", "urn": sha1_to_urn(sha1), "timeout": 10})
            assert [v["aloc"]["port"] for v in st["values"]] == [b1.address[1]]
            assert st["values"][0]["type"] == "ALOC"
            path = await fetch(a1, sha1_to_urn(sha1), "rare.bin", None, tmp_path / "out", 30.0)
            assert hashlib.sha1(path.read_bytes()).digest() == sha1
            status = await control_dht(a1, {"action": "status"})
            assert status["dht"]["lookups"]["succeeded"] >= 2 and status["dht"]["contacts"] >= 3
        finally:
            for n in nodes:
                await n.stop()

    run(main)


def test_dht_op_without_a_dht_says_how_to_enable_it(run, tmp_path):
    async def main():
        n = await start_node(tmp_path, "plain")
        try:
            assert "gnut node --dht" in (await control_dht(n, {"action": "status"}))["error"]
        finally:
            await n.stop()

    run(main)


def test_values_keep_their_type_in_dht_get(run, tmp_path):
    async def main():
        a = await start_node(tmp_path, "a", **LAB)
        b = await start_node(tmp_path, "b", **LAB, dht_bootstrap=[a.dht.address])
        try:
            await wait_for(lambda: b.dht.core.bootstrapped and len(a.dht.core.table), 10.0, "DHT bootstrap")
            key = hashlib.sha1(b"k").digest()
            assert await b.dht.publish(key, wire.VT_TEXT, b"hello") >= 1
            got = await control_dht(a, {"action": "get", "urn": key.hex()})
            assert (
                got["values"][0]["type"] == "TEXT" and bytes.fromhex(got["values"][0]["data_hex"]) == b"hello"
            )
        finally:
            await b.stop()
            await a.stop()

    run(main)


def test_cli_flags_and_config_file_turn_the_dht_on(tmp_path):
    from gnut.app.cli import build_parser, node_config

    cfg = node_config(
        build_parser().parse_args(["--home", str(tmp_path), "node", "--dht-bootstrap", "127.0.0.1:7001"])
    )
    assert cfg.dht and cfg.dht_bootstrap == [("127.0.0.1", 7001)] and cfg.dht_mode == "auto"
    conf = tmp_path / "gnut.toml"
    conf.write_text('dht = true\ndht_bootstrap = ["127.0.0.1:7002"]\ndht_mode = "passive"\n')
    cfg = node_config(build_parser().parse_args(["--home", str(tmp_path), "node", "--config", str(conf)]))
    assert cfg.dht and cfg.dht_bootstrap == [("127.0.0.1", 7002)] and cfg.dht_mode == "passive"
    import pytest

    from gnut.runtime.config import NodeConfig

    with pytest.raises(ValueError, match="dht_mode"):
        NodeConfig(dht_mode="eager")


def test_gnutella_pongs_advertising_the_dht_seed_it(run, tmp_path):
    async def main():
        a = await start_node(tmp_path, "a", **LAB)
        b = await start_node(tmp_path, "b", **LAB)  # no bootstrap address at all
        plain = await start_node(tmp_path, "plain")
        try:
            from gnut.protocol import ggep, messages

            assert ggep.find(a.our_pong().ggep, "DHT") == b"\x00\x00\x01"  # version 0.0, active
            assert plain.our_pong().ggep == ()
            await link(b, a)
            for p in b.peers.values():
                b.send_ping(p, 1)
            b.flush()
            await wait_for(
                lambda: a.dht.core.kuid in {c.kuid for c in b.dht.core.table.contacts()}, 10.0, "seeded"
            )
            await wait_for(lambda: b.dht.core.bootstrapped, 10.0, "bootstrapped")
            before = len(b.dht.pong_seeds)
            b.dht.offer_pong("127.0.0.1", 9, (messages.GgepItem("DHT", b"\x00\x00\x03"),))  # passive leaf: no
            assert len(b.dht.pong_seeds) == before
        finally:
            for n in (a, b, plain):
                await n.stop()

    run(main)


def test_the_dht_rides_on_the_node_udp_socket_or_its_own(run, tmp_path):
    async def main():
        a = await start_node(tmp_path, "a", **LAB)
        b = await start_node(tmp_path, "b", **{**LAB, "udp": False}, dht_bootstrap=[a.dht.address])
        try:
            assert a.dht.transceiver is a.udp and a.dht.endpoint is None  # the node's transceiver
            assert b.udp is None and b.dht.endpoint is not None  # UDP services off: its own socket
            await wait_for(lambda: b.dht.core.bootstrapped and len(a.dht.core.table), 10.0, "DHT bootstrap")
            assert a.udp.received["0x44"] >= 1
        finally:
            await b.stop()
            await a.stop()

    run(main)
