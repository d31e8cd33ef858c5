"""Real UDP sockets on 127.0.0.1: 30 DHT runtimes form a DHT, a value stored by one is found by
another, the routing table survives a restart.  Loopback puts every node in one /24, so the
Sybil and rate limits are raised through DhtLimits (config), not exempted."""

from __future__ import annotations

import asyncio
import hashlib

from gnut.dht import wire
from gnut.dht.core import DhtLimits
from gnut.runtime.dht import DhtService, UdpEndpoint

LAB = DhtLimits(
    per_net24_bucket=64, per_net24_table=64, per_net24_per_key=64, rate_per_source=1e4, rate_burst=1e4
)


async def _spawn(n: int, home=None, bootstrap=()):
    services, endpoints = [], []
    for i in range(n):
        ep = UdpEndpoint()
        addr = await ep.open("127.0.0.1", 0)
        boot = list(bootstrap) or ([services[0].address] if services else [])
        svc = DhtService(ep, addr, home=(home / str(i)) if home else None, bootstrap=boot, limits=LAB)
        await svc.start()
        services.append(svc)
        endpoints.append(ep)
    return services, endpoints


async def _stop(services, endpoints):
    for s in services:
        await s.stop()
    for e in endpoints:
        e.close()


async def _until(cond, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


def test_thirty_runtimes_form_a_dht_and_find_a_stored_value(run):
    async def main():
        services, endpoints = await _spawn(30)
        try:
            await _until(lambda: all(s.core.bootstrapped for s in services))
            for s in services[1:]:  # everyone looks itself up once more: tables fill
                await s.find_value(s.core.kuid, timeout=5.0)
            await _until(lambda: min(len(s.core.table) for s in services) >= 8)
            key = hashlib.sha1(b"a rare file").digest()
            stored = await services[7].publish(key, wire.VT_TEXT, b"hello from node 7")
            assert stored >= 10
            values = await services[23].find_value(key, wire.VT_TEXT)
            assert [v.data for v in values] == [b"hello from node 7"]
            assert values[0].creator.port == services[7].address[1]
            missing = await services[12].find_value(hashlib.sha1(b"nobody has this").digest(), timeout=10.0)
            assert missing == []
            st = services[23].status()
            assert st["lookups"]["succeeded"] >= 1 and st["contacts"] >= 8
            assert not any(s.core.drops.get("unparseable") for s in services)
        finally:
            await _stop(services, endpoints)

    run(main)


def test_routing_table_and_kuid_survive_a_restart(run, tmp_path):
    async def main():
        services, endpoints = await _spawn(6, home=tmp_path)
        await _until(lambda: len(services[5].core.table) >= 3)
        kuid = services[5].core.kuid
        await services[5].stop()
        endpoints[5].close()
        saved = (tmp_path / "5" / "dht.json").read_text()
        assert kuid.hex() in saved
        ep = UdpEndpoint()
        addr = await ep.open("127.0.0.1", 0)
        again = DhtService(ep, addr, home=tmp_path / "5", limits=LAB)  # no bootstrap address given
        assert again.core.kuid == kuid and len(again.saved_contacts) >= 3
        await again.start()
        try:
            await _until(lambda: len(again.core.table) >= 3)
        finally:
            await again.stop()
            ep.close()
            await _stop(services[:5], endpoints[:5])

    run(main)


def test_garbage_datagrams_are_counted_drops(run):
    async def main():
        services, endpoints = await _spawn(2)
        try:
            loop = asyncio.get_running_loop()
            tr, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
            junk = bytes(16) + b"\x44" + bytes(10)
            tr.sendto(junk, services[0].address)
            tr.sendto(b"short", services[0].address)
            await _until(
                lambda: services[0].core.drops.get("unparseable") == 1 and endpoints[0].drops.get("short")
            )
            tr.close()
        finally:
            await _stop(services, endpoints)

    run(main)


def test_a_damaged_routing_table_file_starts_afresh(tmp_path):
    for content in (
        '["not", "a", "dict"]',
        '{"kuid": 5, "contacts": {"x": 1}}',
        "{{{",
        '{"contacts": [[1, 2, 3]]}',
    ):
        (tmp_path / "dht.json").write_text(content)
        svc = DhtService(UdpEndpoint(), ("127.0.0.1", 1), home=tmp_path)
        assert svc.saved_contacts == [] and len(svc.core.kuid) == 20
    (tmp_path / "dht.json").write_text('{"contacts": [["ab", "127.0.0.1", 5], ["ab", "127.0.0.1", 70000]]}')
    assert DhtService(UdpEndpoint(), ("127.0.0.1", 1), home=tmp_path).saved_contacts == [("127.0.0.1", 5)]
