"""Hostile peers against a real node on 127.0.0.1: bad frames, slowloris, storms, floods, bombs, HTTP abuse."""

# Strategy: every test starts real nodes (tests/nethelpers.py) and attacks one of them over real
# sockets, then checks three things: the attack ended the way RELIABILITY.md says (a counted drop,
# a protocol error or a BYE with its code), the node still serves an honest peer afterwards, and
# the event loop's exception handler was never called.  Deadlines are shortened on the node
# instance (handshake_timeout, tick_interval, ctx.request_timeout) so that each test stays short.

from __future__ import annotations

import asyncio
import struct
import time
import zlib

import pytest
from nethelpers import RawPeer, established, start_node, wait_for

from gnut.constants import HANDSHAKE_MAX_HEADER_BYTES, MSG_BYE, MSG_PING, MSG_QRP, MSG_QUERY, MSG_QUERYHIT
from gnut.protocol import messages
from gnut.protocol.ggep import GGEP_MAX_INFLATED, GgepItem, encode_ggep
from gnut.protocol.guid import new_guid
from gnut.protocol.routing import DropReason
from gnut.runtime.node import BYE_DUPLICATES, DUP_RESENT_MAX

FILES = {"honest answer.txt": b"h" * 2048}




def query(text: str, ttl: int = 2, hops: int = 0, guid: bytes | None = None) -> bytes:
    return messages.build(guid or new_guid(), MSG_QUERY, ttl, hops, messages.Query(text=text).encode())


def header(mtype: int, ttl: int, hops: int, length: int, guid: bytes | None = None) -> bytes:
    return (guid or new_guid()) + bytes((mtype, ttl, hops)) + struct.pack("<I", length)


async def honest_search(node, text: str = "honest") -> None:
    """A fresh peer connects, queries and gets a hit: the node still serves."""
    p = RawPeer()
    await p.connect(node)
    try:
        p.send(query(text))
        await wait_for(lambda: p.of_type(MSG_QUERYHIT), what="a hit for an honest peer")
    finally:
        await p.close()


def byes(p: RawPeer) -> list[messages.Bye]:
    return [messages.Bye.decode(m.payload) for m in p.of_type(MSG_BYE)]


# --- bad frames after a valid handshake -----------------------------------------------------------------


@pytest.mark.parametrize(
    "attack",
    [
        header(MSG_QUERY, 2, 0, 0x7FFFFFFF),  # oversized declared payload
        header(MSG_QUERY, 255, 0, 10) + bytes(10),  # TTL 255
        header(MSG_PING, 1, 255, 0),  # hops abuse beyond the hard limit
        b"\xff" * 64,  # garbage
    ],
    ids=["oversized", "ttl255", "hops255", "garbage"],
)
def test_bad_frame_closes_only_that_link(run, tmp_path, attack):
    async def go():
        node = await start_node(tmp_path, "n", files=FILES)
        try:
            bystander = RawPeer(deflate=False)
            await bystander.connect(node)
            bad = RawPeer(deflate=False)
            await bad.connect(node)
            bad.writer.write(attack)
            await wait_for(lambda: bad.closed, what="the bad link closed")
            assert node.events["protocol_errors"] == 1
            await wait_for(lambda: established(node) == 1, what="only the bystander left")
            bystander.send(query("honest"))
            await wait_for(lambda: bystander.of_type(MSG_QUERYHIT), what="bystander still served")
            await bystander.close()
            await honest_search(node)
        finally:
            await node.stop()

    run(go)


def test_garbage_on_a_deflated_link_is_one_protocol_error(run, tmp_path):
    # Regression: the BYE for a link whose Connection had already failed raised LocalProtocolError
    # out of data_received ("send_raw() in state closed"), which reached the loop's exception handler.
    async def go():
        node = await start_node(tmp_path, "n", files=FILES)
        try:
            bad = RawPeer(deflate=True)
            await bad.connect(node)
            assert bad.complete.deflate_out
            bad.writer.write(b"\x00garbage that is no zlib stream" * 4)
            await wait_for(lambda: bad.closed, what="the bad link closed")
            assert node.events["protocol_errors"] == 1
            await honest_search(node)
        finally:
            await node.stop()

    run(go)


def test_unknown_type_and_relayed_link_message_are_counted_drops(run, tmp_path):
    async def go():
        node = await start_node(tmp_path, "n", files=FILES)
        try:
            p = RawPeer(deflate=False)
            await p.connect(node)
            p.send(header(0x55, 1, 0, 3) + b"abc")
            p.send(messages.build(new_guid(), MSG_BYE, 1, 2, messages.Bye(200, "relayed").encode()))
            p.send(query("honest"))
            await wait_for(lambda: p.of_type(MSG_QUERYHIT), what="the link still answers")
            drops = node.router.drops
            assert drops[DropReason.UNKNOWN_TYPE] == 1 and drops[DropReason.HOPS_NONZERO] == 1
            assert not p.closed and node.events["protocol_errors"] == 0
        finally:
            await node.stop()

    run(go)


def test_hops_abuse_within_the_hard_limit_is_not_relayed(run, tmp_path):
    async def go():
        node = await start_node(tmp_path, "n", files=FILES)
        try:
            other = RawPeer()
            await other.connect(node)
            p = RawPeer()
            await p.connect(node)
            p.send(query("honest", ttl=1, hops=14))  # ttl + hops = 15: legal, but spent
            p.send(query("honest", ttl=8, hops=7))  # clamped by the soft limit: spent here
            await wait_for(lambda: len(p.of_type(MSG_QUERYHIT)) == 2, what="both answered locally")
            await asyncio.sleep(0.1)
            assert not other.of_type(MSG_QUERY), "a spent query was relayed"
        finally:
            await node.stop()

    run(go)


def test_leaf_that_relays_gets_bye_414(run, tmp_path):
    async def go():
        node = await start_node(tmp_path, "n", mode="ultrapeer", files=FILES)
        try:
            leaf = RawPeer(mode="leaf")
            await leaf.connect(node)
            leaf.send(query("anything", ttl=2, hops=1))
            await wait_for(lambda: leaf.closed, what="the leaf dropped")
            assert [b.code for b in byes(leaf)] == [414]
            assert node.router.drops[DropReason.LEAF_RELAY] == 1
        finally:
            await node.stop()

    run(go)


@pytest.mark.parametrize("deflate", [False, True])
def test_messages_split_at_every_byte(run, tmp_path, deflate):
    async def go():
        node = await start_node(tmp_path, "n", files=FILES)
        try:
            p = RawPeer(deflate=deflate)
            await p.connect(node)
            guid = new_guid()
            raw = query("honest", guid=guid) + messages.build(new_guid(), MSG_PING, 1, 0, b"")
            p.conn.send_raw(raw)
            wire = p.conn.data_to_send()
            for i in range(len(wire)):
                p.writer.write(wire[i : i + 1])
                await p.writer.drain()
                await asyncio.sleep(0.0005)
            await wait_for(lambda: p.of_type(MSG_QUERYHIT) and p.of_type(messages.MSG_PONG), what="answers")
            assert p.of_type(MSG_QUERYHIT)[0].guid == guid
        finally:
            await node.stop()

    run(go)


# --- handshake abuse ----------------------------------------------------------------------------------


def test_slowloris_handshakes_hit_the_deadline_and_a_new_peer_gets_in(run, tmp_path):
    async def go():
        node = await start_node(tmp_path, "n", files=FILES)
        node.handshake_timeout = 0.4
        node.tick_interval = 0.05
        try:
            conns = []
            for i in range(12):
                reader, writer = await asyncio.open_connection(*node.address)
                if i % 3 == 1:
                    writer.write(b"GNUT")  # too short to tell Gnutella from HTTP
                elif i % 3 == 2:
                    writer.write(b"GNUTELLA CONNECT/0.6\r\nUser-Agent: slow")  # never ends the block
                conns.append((reader, writer))
            started = time.monotonic()
            # A slow peer dribbling its header keeps sending; it is closed all the same.
            slow_r, slow_w = await asyncio.open_connection(*node.address)
            slow_w.write(b"GNUTELLA CONNECT/0.6\r\n")
            conns.append((slow_r, slow_w))
            for _ in range(40):
                if slow_r.at_eof() or slow_w.transport.is_closing():
                    break
                slow_w.write(b"X")
                await asyncio.sleep(0.05)
            for reader, _ in conns:
                try:
                    data = await asyncio.wait_for(reader.read(), 2.0)
                except ConnectionResetError:  # the dribbler wrote after our close
                    data = b""
                assert data == b"", "slow peer got an answer"
            assert time.monotonic() - started < 2.5
            assert node.events["handshake_timeouts"] == len(conns)
            assert not node.peers
            for _, writer in conns:
                writer.close()
            await honest_search(node)
        finally:
            await node.stop()

    run(go)


def test_header_bomb_is_refused_by_limit(run, tmp_path):
    async def go():
        node = await start_node(tmp_path, "n", files=FILES)
        try:
            reader, writer = await asyncio.open_connection(*node.address)
            writer.write(b"GNUTELLA CONNECT/0.6\r\n")
            line = b"X-Padding: " + b"a" * 100 + b"\r\n"
            writer.write(line * (2 * HANDSHAKE_MAX_HEADER_BYTES // len(line)))
            assert await asyncio.wait_for(reader.read(), 2.0) == b""
            assert node.events["protocol_errors"] == 1
            writer.close()
            await honest_search(node)
        finally:
            await node.stop()

    run(go)


def test_connection_storm_is_refused_cheaply_and_the_node_stays_responsive(run, tmp_path):
    async def go():
        node = await start_node(tmp_path, "n", files=FILES)
        node.accepts_per_ip_per_minute = 20
        try:
            member = RawPeer()
            await member.connect(node)  # accept 1 of 20
            storm = 300
            started = time.monotonic()
            for _ in range(storm // 50):
                pairs = await asyncio.gather(*(asyncio.open_connection(*node.address) for _i in range(50)))
                for _, w in pairs:
                    w.close()
                member.send(query("honest"))  # the established link keeps working during the storm
            elapsed = time.monotonic() - started
            await wait_for(lambda: node.events["refused_storm"] == storm - 19, what="storm refused")
            await wait_for(lambda: len(member.of_type(MSG_QUERYHIT)) == storm // 50, what="member served")
            assert len(node._accepts["127.0.0.1"]) == 20, "refused accepts must not grow the table"
            assert established(node) == 1 and len(node.peers) == 1
            assert elapsed < 5.0, f"{storm} connects took {elapsed:.1f}s"
            # The storm's address stays refused for the rest of the minute; an honest link is untouched.
            late = RawPeer()
            with pytest.raises(AssertionError):
                await late.connect(node)
        finally:
            await node.stop()

    run(go)


def test_storm_table_forgets_quiet_addresses(run, tmp_path):
    async def go():
        node = await start_node(tmp_path, "n")
        try:
            _, w = await asyncio.open_connection(*node.address)
            await wait_for(lambda: "127.0.0.1" in node._accepts, what="accept recorded")
            w.close()
            node.tick(time.monotonic() + 61.0)
            assert node._accepts == {}
        finally:
            await node.stop()

    run(go)


# --- floods ---------------------------------------------------------------------------------------------


def test_unique_guid_flood_stays_inside_the_configured_caches(run, tmp_path):
    async def go():
        cap = 4096
        node = await start_node(tmp_path, "n", files=FILES, seen_cache_size=cap, route_table_size=cap)
        try:
            other = RawPeer()
            await other.connect(node)
            p = RawPeer()
            await p.connect(node)
            total = 40_000
            for start in range(0, total, 2000):
                p.send(b"".join(query(f"flood{i}", ttl=2) for i in range(start, start + 2000)))
                await asyncio.sleep(0)
            await wait_for(lambda: node.router.received[MSG_QUERY] == total, timeout=30, what="flood routed")
            seen = node.router._seen  # white-box: the bounds under test are private to the Router
            assert len(seen) <= seen.capacity <= 2 * cap
            assert len(node.router._query_routes) <= cap
            assert node.router.drops[DropReason.DUPLICATE] == 0
            await wait_for(lambda: len(other.of_type(MSG_QUERY)) == total, timeout=30, what="relayed")
            p.send(query("honest"))
            await wait_for(lambda: p.of_type(MSG_QUERYHIT), what="flooder still answered")
            assert not p.closed
        finally:
            await node.stop()

    run(go)


def test_duplicate_flood_earns_a_bye(run, tmp_path):
    async def go():
        node = await start_node(tmp_path, "n", files=FILES)
        try:
            p = RawPeer()
            await p.connect(node)
            guid = new_guid()
            p.send(b"".join(query("dup", guid=guid) for _ in range(DUP_RESENT_MAX + 10)))
            await wait_for(lambda: p.closed, what="the duplicate flooder dropped")
            assert [b.code for b in byes(p)] == [BYE_DUPLICATES]
            assert node.events["bye_duplicates"] == 1
            assert node.router.drops[DropReason.DUPLICATE] == DUP_RESENT_MAX + 1
            await honest_search(node)
        finally:
            await node.stop()

    run(go)


def test_duplicates_across_links_are_normal_mesh_traffic(run, tmp_path):
    async def go():
        node = await start_node(tmp_path, "n", files=FILES)
        try:
            a, b = RawPeer(), RawPeer()
            await a.connect(node)
            await b.connect(node)
            n = 3 * DUP_RESENT_MAX
            raws = [query(f"mesh{i}") for i in range(n)]
            a.send(b"".join(raws))
            await wait_for(lambda: node.router.received[MSG_QUERY] == n, what="first copies")
            b.send(b"".join(raws))  # the same queries reaching us by a second path
            await wait_for(lambda: node.router.drops[DropReason.DUPLICATE] == n, what="second copies")
            assert not a.closed and not b.closed and node.events["bye_duplicates"] == 0
        finally:
            await node.stop()

    run(go)


# --- QRP and GGEP bombs ------------------------------------------------------------------------------------


def _qrp(payload: bytes) -> bytes:
    return messages.build(new_guid(), MSG_QRP, 1, 0, payload)


@pytest.mark.parametrize("bomb", ["huge_table", "inflate_bomb"])
def test_qrp_bomb_gets_bye_413(run, tmp_path, bomb):
    async def go():
        node = await start_node(tmp_path, "n", mode="ultrapeer", files=FILES)
        try:
            leaf = RawPeer(mode="leaf")
            await leaf.connect(node)
            if bomb == "huge_table":
                leaf.send(_qrp(bytes((0,)) + struct.pack("<I", 1 << 31) + bytes((7,))))
            else:
                leaf.send(_qrp(messages.QrpReset(1 << 14, 7).encode()))
                data = zlib.compress(bytes(32 << 20), 9)[:60_000]  # 32 MiB of zeros, cut to fit a message
                leaf.send(_qrp(messages.QrpPatch(1, 1, 1, 4, data).encode()))
            await wait_for(lambda: leaf.closed, what="the bomber dropped")
            assert [b.code for b in byes(leaf)] == [413]
            assert node.events["qrp_rejected"] == 1
            await honest_search(node)
        finally:
            await node.stop()

    run(go)


def test_ggep_bomb_in_a_query_is_a_counted_malformed_drop(run, tmp_path):
    async def go():
        node = await start_node(tmp_path, "n", files=FILES)
        try:
            p = RawPeer()
            await p.connect(node)
            bomb = zlib.compress(bytes(GGEP_MAX_INFLATED * 2), 9)  # 128 KiB of zeros in ~130 bytes
            block = bytearray(encode_ggep([GgepItem("X", bomb)]))
            block[1] |= 0x20  # the deflate flag, set by hand around an already-deflated item
            payload = b"\x80\x00honest\x00" + bytes(block)
            assert len(payload) <= 256
            p.send(messages.build(new_guid(), MSG_QUERY, 2, 0, payload))
            p.send(query("honest"))
            await wait_for(lambda: p.of_type(MSG_QUERYHIT), what="the next query answered")
            assert node.router.drops[DropReason.MALFORMED] == 1
            assert not p.closed
        finally:
            await node.stop()

    run(go)


# --- HTTP on the Gnutella port -----------------------------------------------------------------------------


async def http_exchange(node, request: bytes, read_timeout: float = 3.0) -> bytes:
    reader, writer = await asyncio.open_connection(*node.address)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(), read_timeout)
    finally:
        writer.close()


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


SECRET = b"secret outside the share"


@pytest.mark.parametrize(
    "target",
    [
        b"/get/0/../../secret.txt",
        b"/get/0/..%2F..%2Fsecret.txt",
        b"/get/0/%2e%2e%2f%2e%2e%2fsecret.txt",
        b"/get/0/..%252F..%252Fsecret.txt",
        b"/../secret.txt",
        b"/uri-res/N2R?..%2F..%2Fsecret.txt",
        b"/get/0/%00/etc/passwd",
    ],
)
def test_http_path_traversal_via_the_node_port(run, tmp_path, target):
    async def go():
        (tmp_path / "n").mkdir()
        (tmp_path / "n" / "secret.txt").write_bytes(SECRET)
        node = await start_node(tmp_path, "n", files=FILES)
        try:
            resp = await http_exchange(
                node, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            assert status(resp) in (400, 404), resp[:80]
            assert SECRET not in resp
        finally:
            await node.stop()

    run(go)


@pytest.mark.parametrize(
    "rng, expected",
    [
        (b"bytes=99999999999999999999999999-", 416),
        (b"bytes=5000-2", 416),
        (b"bytes=-0", 416),
        (b"bytes=0-" + b"9" * 5000, 416),
        (b",".join([b"bytes=0-1"] + [b"%d-%d" % (i, i) for i in range(2, 600)]), 206),
        (b"pages=0-10", 416),
    ],
    ids=["huge-first", "reversed", "suffix-zero", "long-number", "many-ranges", "bad-unit"],
)
def test_http_absurd_ranges(run, tmp_path, rng, expected):
    async def go():
        node = await start_node(tmp_path, "n", files=FILES)
        try:
            resp = await http_exchange(
                node,
                b"GET /get/1/honest%20answer.txt HTTP/1.1\r\nHost: x\r\nRange: "
                + rng
                + b"\r\nConnection: close\r\n\r\n",
            )
            assert status(resp) == expected, resp[:120]
            if expected == 206:
                assert b"Content-Range: bytes 0-1/2048" in resp and resp.endswith(b"hh")
        finally:
            await node.stop()

    run(go)


def test_http_huge_headers_and_slow_bodies(run, tmp_path):
    async def go():
        node = await start_node(tmp_path, "n", files=FILES)
        node.transfers.ctx.request_timeout = 0.5
        try:
            huge = (
                b"GET /get/1/honest%20answer.txt HTTP/1.1\r\nHost: x\r\n"
                + b"X-Bomb: "
                + b"b" * 20_000
                + b"\r\n\r\n"
            )
            assert status(await http_exchange(node, huge)) == 431
            many = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 3000 + b"\r\n"
            assert status(await http_exchange(node, many)) == 431
            started = time.monotonic()
            slow_body = b"GET /get/1/honest%20answer.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab"
            assert status(await http_exchange(node, slow_body)) == 408
            slow_head = b"GET /get/1/honest%20answer.txt HTTP/1.1\r\nHost: x\r\n"
            assert status(await http_exchange(node, slow_head)) == 408
            assert time.monotonic() - started < 3.0
            big_body = b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n" + bytes(200_000)
            assert status(await http_exchange(node, big_body)) == 413
            ok = await http_exchange(
                node, b"GET /get/1/honest%20answer.txt HTTP/1.1\r\nConnection: close\r\nHost: x\r\n\r\n"
            )
            assert status(ok) == 200 and ok.endswith(FILES["honest answer.txt"])
            await honest_search(node)
        finally:
            await node.stop()

    run(go)
