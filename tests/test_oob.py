"""Out-of-band query hits between real gnut nodes on 127.0.0.1 (LIME/12, LIME/11 v3, hits by UDP)."""

from __future__ import annotations

from nethelpers import link, start_node, wait_for

from gnut.constants import MSG_QUERYHIT, MSG_VENDOR
from gnut.protocol import messages, vendor
from gnut.protocol.datagram import build_datagram
from gnut.protocol.guid import new_guid


def test_search_gets_its_hits_over_udp_with_the_ack_exchange(run, tmp_path):
    async def body():
        a = await start_node(tmp_path, "a")
        b = await start_node(tmp_path, "b")
        c = await start_node(tmp_path, "c", files={f"jazz live {i}.mp3": bytes([i]) * 3000 for i in range(4)})
        try:
            await link(a, b)
            await link(b, c)
            search = a.searches.start("jazz")
            assert vendor.oob_return_address(search.guid) == ("127.0.0.1", a.udp.address[1])
            await wait_for(lambda: len(search.results) == 4, what="OOB hits")
            hit = search.results[0]
            assert hit.name.startswith("jazz live") and hit.port == c.address[1]
            # Our ack said "can inflate" (TTL 9): the hit datagram came deflated (deflated_udp).
            assert a.udp.received["deflated"] == 1
            ca, aa = c.oob.stats(), a.oob.stats()
            assert ca["indications_sent"] == 1 and ca["acks_received"] == 1 and ca["hits_sent"] == 1
            assert aa["indications_received"] == 1 and aa["acks_sent"] == 1 and aa["hits_received"] == 1
            # Nothing went back over TCP: the relay in the middle routed no QUERYHIT.
            assert b.sent.get(MSG_QUERYHIT, 0) == 0
            assert c.udp.sent["oob_hit"] == 1 and a.udp.sent["oob_ack"] == 1
        finally:
            for n in (a, b, c):
                await n.stop()

    run(body)


def test_direct_neighbour_gets_tcp_hits_and_unclaimed_hits_are_never_sent(run, tmp_path):
    async def body():
        a = await start_node(tmp_path, "a")
        c = await start_node(tmp_path, "c", files={"jazz.mp3": b"j" * 100})
        try:
            await link(a, c)
            search = a.searches.start("jazz")
            await wait_for(lambda: search.results, what="TCP hit from a neighbour")
            assert c.oob.stats().get("indications_sent", 0) == 0
            # A forged ack (unknown GUID) and an unsolicited hit are dropped and counted.
            ack = vendor.OobReplyAck(10, b"tok").encode()
            c.udp.handle(build_datagram(new_guid(), MSG_VENDOR, 1, 0, ack), ("127.0.0.1", a.udp.address[1]))
            assert c.udp.drops["unsolicited"] == 1 and c.udp.sent.get("oob_hit", 0) == 0
            qh = messages.QueryHit(1, "127.0.0.1", 0, (messages.HitResult(0, 1, "x"),), new_guid())
            a.udp.handle(build_datagram(search.guid, MSG_QUERYHIT, 1, 0, qh.encode()), ("127.0.0.1", 9))
            assert a.udp.drops["unsolicited"] == 1
        finally:
            await a.stop()
            await c.stop()

    run(body)


def test_hits_without_our_token_are_refused(run, tmp_path):
    async def body():
        a = await start_node(tmp_path, "a")
        try:
            search = a.searches.start("anything")
            src = ("127.0.0.1", 40000)
            ind = vendor.OobReplyInd(3, True, 3).encode()
            a.udp.handle(build_datagram(search.guid, MSG_VENDOR, 1, 0, ind), src)
            assert a.oob.stats()["acks_sent"] == 1
            qh = messages.QueryHit(1, "127.0.0.1", 0, (messages.HitResult(0, 1, "x"),), new_guid())
            a.udp.handle(build_datagram(search.guid, MSG_QUERYHIT, 1, 0, qh.encode()), src)
            assert a.udp.drops["bad_token"] == 1 and not search.results
        finally:
            await a.stop()

    run(body)


def test_leaf_queries_ask_for_tcp_hits(run, tmp_path):
    """A leaf's hits must pass its ultrapeer, whose dynamic query counts them: no OOB flag."""

    async def body():
        leaf = await start_node(tmp_path, "leaf", mode="leaf")
        try:
            assert leaf.udp is not None and leaf.oob.query_guid() is None
            search = leaf.searches.start("anything")
            assert search.guid[:4] != bytes((127, 0, 0, 1)) or search.guid[13:15] != leaf.udp.address[1].to_bytes(2, "little")
        finally:
            await leaf.stop()

    run(body)


def test_guid_addresses_outside_the_queriers_scope_are_refused():
    """Pure classifier only (never sent to): an Internet peer cannot aim our LIME/12 at our LAN or loopback."""
    assert vendor.may_reach("8.8.4.4", "127.0.0.1") and vendor.may_reach("8.8.4.4", "192.168.1.5")
    assert vendor.may_reach("127.0.0.1", "127.0.0.1") and vendor.may_reach("192.168.1.9", "10.0.0.2")
    assert not vendor.may_reach("127.0.0.1", "8.8.4.4") and not vendor.may_reach("192.168.1.9", "8.8.4.4")
    assert not vendor.may_reach("169.254.1.1", "8.8.4.4") and not vendor.may_reach("10.0.0.1", "127.0.0.1")
    for bad in ("0.0.0.0", "255.255.255.255", "224.0.0.1", "240.0.0.1", "not an ip"):
        assert not vendor.may_reach(bad, bad)
