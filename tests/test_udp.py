"""The UDP transceiver on real loopback sockets: PING/PONG, UHC answers, GUESS keys, limits, hooks."""

from __future__ import annotations

import asyncio
import time
import zlib

from nethelpers import link, start_node, wait_for

from gnut.constants import HEADER_LEN, MSG_PING, MSG_PONG, MSG_QUERY, MSG_QUERYHIT
from gnut.protocol import messages, vendor
from gnut.protocol.datagram import (
    TTL_CAN_INFLATE,
    TTL_DEFLATED,
    Datagram,
    UdpDrop,
    build_datagram,
    parse_datagram,
)
from gnut.protocol.ggep import GgepItem, find
from gnut.protocol.guid import new_guid
from gnut.runtime.udp import TokenBuckets


class Client(asyncio.DatagramProtocol):
    """A bare UDP socket on 127.0.0.1 that keeps what it receives."""

    def __init__(self) -> None:
        self.got: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        self.got.append(data)

    def parsed(self) -> list[Datagram]:
        return [d for d in (parse_datagram(g) for g in self.got) if isinstance(d, Datagram)]


async def client() -> Client:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(Client, local_addr=("127.0.0.1", 0))
    return proto


# --- sans-IO datagram checks -------------------------------------------------------------------------
def test_deflated_reply_round_trip_and_marks():
    payload = messages.Pong(6346, "127.0.0.1", 1, 2, (GgepItem("IPP", b"\x7f\0\0\1\xca\x18" * 30),)).encode()
    raw = build_datagram(new_guid(), MSG_PONG, 1, 0, payload, deflate=True)
    assert raw[17] == 1 | TTL_DEFLATED and len(raw) < HEADER_LEN + len(payload)
    dg = parse_datagram(raw)
    assert isinstance(dg, Datagram) and dg.deflated and dg.ttl == 1 and dg.payload == payload
    req = build_datagram(new_guid(), MSG_PING, 1, 0, b"", can_inflate=True)
    assert req[17] == 9 and parse_datagram(req).can_inflate


def test_bad_datagrams_are_reasons_not_exceptions():
    g = new_guid()
    ok = build_datagram(g, MSG_PING, 1, 0, b"")
    assert parse_datagram(ok[:10]) is UdpDrop.TRUNCATED
    assert parse_datagram(ok + b"x") is UdpDrop.LENGTH_MISMATCH
    assert parse_datagram(messages.build(g, 0x77, 1, 0, b"")) is UdpDrop.UNKNOWN_TYPE
    assert parse_datagram(messages.build(g, MSG_PING, 0, 0, b"")) is UdpDrop.TTL_EXPIRED
    assert parse_datagram(messages.build(g, MSG_PING, 7, 9, b"")) is UdpDrop.HOP_LIMIT
    assert parse_datagram(messages.build(g, MSG_PONG, 1, 0, b"short")) is UdpDrop.MALFORMED
    assert parse_datagram(messages.build(g, MSG_PONG, 1 | TTL_DEFLATED, 0, b"not zlib")) is UdpDrop.BAD_INFLATE
    bomb = zlib.compress(b"\0" * (2 * 65536))  # inflates past the payload cap
    assert parse_datagram(messages.build(g, MSG_PONG, 1 | TTL_DEFLATED, 0, bomb)) is UdpDrop.BAD_INFLATE
    assert parse_datagram(messages.build(g, 0x44, 1, 0, b"dht"), {0x44}).type == 0x44
    assert TTL_CAN_INFLATE == 0x08


def test_token_buckets_refill_and_stay_bounded():
    b = TokenBuckets(rate=2.0, burst=3.0, max_keys=2)
    assert [b.take("x", 0.0) for _ in range(4)] == [True, True, True, False]
    assert b.take("x", 0.5)  # one token back after half a second at 2/s
    b.take("y", 0.0)
    b.take("z", 0.0)
    assert len(b) == 2


# --- real sockets ------------------------------------------------------------------------------------
def test_ping_gets_one_pong_and_stats(run, tmp_path):
    async def body():
        n = await start_node(tmp_path, "n", mode="ultrapeer")
        c = await client()
        try:
            assert n.udp.address == n.address  # same host and port number as TCP
            guid = new_guid()
            c.transport.sendto(build_datagram(guid, MSG_PING, 1, 0, b""), n.address)
            await wait_for(lambda: c.got, what="UDP pong")
            dg = c.parsed()[0]
            pong = messages.Pong.decode(dg.payload)
            assert dg.type == MSG_PONG and dg.guid == guid and pong.port == n.address[1]
            assert find(pong.ggep, "VC")[:4] == b"GNPY" and find(pong.ggep, "GUE") == b"\x02"
            st = n.stats()["udp"]
            assert st["enabled"] and st["received"]["0x00"] == 1 and st["sent"]["pong"] == 1
        finally:
            c.transport.close()
            await n.stop()

    run(body)


def test_uhc_answer_lists_ultrapeers_and_stays_small(run, tmp_path):
    async def body():
        uhc = await start_node(tmp_path, "uhc", mode="ultrapeer")
        others = [await start_node(tmp_path, f"u{i}", mode="ultrapeer") for i in range(3)]
        c = await client()
        try:
            for o in others:
                await link(o, uhc)
            ping = build_datagram(new_guid(), MSG_PING, 1, 0, vendor.scp_ping().encode(), can_inflate=True)
            c.transport.sendto(ping, uhc.address)
            await wait_for(lambda: c.got, what="UHC pong")
            pong = messages.Pong.decode(c.parsed()[0].payload)
            hosts = vendor.decode_ipp(find(pong.ggep, "IPP"))
            assert set(hosts) == {o.address for o in others}
            # One reply per ping, within a few times its size (no amplification).
            assert len(c.got) == 1 and len(c.got[0]) <= 4 * len(ping)
            assert uhc.udp.worst_amplification <= 4
        finally:
            c.transport.close()
            for n in (uhc, *others):
                await n.stop()

    run(body)


def test_guess_query_needs_the_key_of_its_source(run, tmp_path):
    async def body():
        up = await start_node(tmp_path, "up", mode="ultrapeer", files={"blue train.flac": b"b" * 500})
        c = await client()
        try:
            me = c.transport.get_extra_info("sockname")[:2]
            c.transport.sendto(build_datagram(new_guid(), MSG_PING, 1, 0,
                                              messages.Ping((GgepItem("QK"),)).encode()), up.address)
            await wait_for(lambda: c.got, what="query key pong")
            key = find(messages.Pong.decode(c.parsed()[0].payload).ggep, "QK")
            assert key == vendor.query_key(up.udpnode._qk[0], *me)
            c.got.clear()
            bad = messages.Query("blue train", ggep=(GgepItem("QK", b"\1\2\3\4\5\6\7\x08"),)).encode()
            c.transport.sendto(build_datagram(new_guid(), MSG_QUERY, 1, 0, bad), up.address)
            good_guid = new_guid()
            good = messages.Query("blue train", ggep=(GgepItem("QK", key),)).encode()
            c.transport.sendto(build_datagram(good_guid, MSG_QUERY, 1, 0, good), up.address)
            await wait_for(lambda: any(d.type == MSG_QUERYHIT for d in c.parsed()), what="GUESS hit")
            hits = [d for d in c.parsed() if d.type == MSG_QUERYHIT]
            assert all(d.guid == good_guid for d in hits)
            assert messages.QueryHit.decode(hits[0].payload).results[0].name == "blue train.flac"
            assert up.udp.drops["bad_query_key"] == 1
        finally:
            c.transport.close()
            await up.stop()

    run(body)


def test_flood_from_one_source_is_rate_limited_and_bounded(run, tmp_path):
    async def body():
        n = await start_node(tmp_path, "n", mode="ultrapeer")
        c = await client()
        try:
            for _ in range(400):
                c.transport.sendto(build_datagram(new_guid(), MSG_PING, 1, 0, b""), n.address)
            c.transport.sendto(b"\0" * 5, n.address)
            c.transport.sendto(b"\xff" * 60000, n.address)
            # The kernel may drop part of a burst this size before we see it: count what arrived.
            await wait_for(lambda: n.udp.datagrams_in >= 100, what="flood received")
            await asyncio.sleep(0.3)
            st = n.udp.stats()
            assert not n.udp._queue
            assert st["drops"]["rate_limited"] >= st["datagrams_in"] - 60 - 20
            # Replies never exceed the bucket: burst plus what refilled during the test.
            assert st["sent"]["pong"] <= 60 + 20
        finally:
            c.transport.close()
            await n.stop()

    run(body)


def test_registered_kind_gets_raw_datagrams_and_can_send(run, tmp_path):
    async def body():
        n = await start_node(tmp_path, "n")
        c = await client()
        got = []
        try:
            def handler(data: bytes, addr) -> None:
                got.append((data, addr))
                n.udp.send(b"reply:" + data[23:], addr)

            n.udp.register(0x44, handler)
            raw = messages.build(new_guid(), 0x44, 1, 0, b"mojito")
            c.transport.sendto(raw, n.address)
            await wait_for(lambda: c.got, what="reply from the registered handler")
            assert got[0][0] == raw and c.got == [b"reply:mojito"]
        finally:
            c.transport.close()
            await n.stop()

    run(body)


def test_pong_we_did_not_ask_for_is_dropped(run, tmp_path):
    async def body():
        n = await start_node(tmp_path, "n")
        c = await client()
        try:
            ipp = vendor.encode_ipp([("127.0.0.1", 1111)])
            pong = messages.Pong(1, "127.0.0.1", 0, 0, (GgepItem("IPP", ipp),)).encode()
            c.transport.sendto(build_datagram(new_guid(), MSG_PONG, 1, 0, pong), n.address)
            await wait_for(lambda: n.udp.drops["unsolicited"] == 1, what="unsolicited pong dropped")
            assert ("127.0.0.1", 1111) not in n.hosts
        finally:
            c.transport.close()
            await n.stop()

    run(body)


def test_guess_client_asks_an_unlinked_ultrapeer_for_hits(run, tmp_path):
    async def body():
        u1 = await start_node(tmp_path, "u1", mode="ultrapeer")
        u2 = await start_node(tmp_path, "u2", mode="ultrapeer", files={"kind of blue.flac": b"k" * 700})
        leaf = await start_node(tmp_path, "leaf", mode="leaf", guess=True)
        try:
            await link(leaf, u1)
            leaf.hosts.add(*u2.address, "test", time.time())  # known, not linked: only GUESS reaches it
            search = leaf.searches.start("kind of blue")
            await wait_for(lambda: search.results, what="GUESS hit")
            assert search.results[0].port == u2.address[1]
            g = leaf.stats()["udp"]["guess_client"]
            assert g["key_requests"] == 1 and g["queries_sent"] >= 1
            await wait_for(lambda: leaf.udpnode.events["guess_acks_received"] == 1, what="GUESS ack pong")
            assert u2.udpnode.events["guess_answered"] == 1 and u1.udpnode.events["guess_queries"] == 0
        finally:
            for n in (u1, u2, leaf):
                await n.stop()

    run(body)


def test_amplification_bench_bounds_unsolicited_replies():
    """bench/bench_udp.py on real sockets: nothing unsolicited gets more than 5x its size back."""
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    result = importlib.import_module("bench_udp").run(quick=True)
    rows = {r["datagram"]: r for r in result["rows"]}
    assert result["worst_unsolicited"] <= 5.0
    for name in ("QUERY (GUESS) no key", "LIME/11 forged", "LIME/12 forged", "PONG unsolicited", "garbage",
                 "deflate bomb"):
        assert rows[name]["bytes_out"] == 0, name
    assert rows["LIME/11 claiming a live offer"]["hits"] >= 1
