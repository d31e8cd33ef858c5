"""Real-socket tests of the servent on 127.0.0.1, each on uvloop and on the stock asyncio loop."""

from __future__ import annotations

import asyncio
import random

from nethelpers import RawPeer, established, link, start_node, wait_for

from gnut.constants import MSG_QUERY, MSG_QUERYHIT
from gnut.protocol import messages
from gnut.protocol.guid import new_guid
from gnut.protocol.routing import DropReason


def query(text: str, ttl: int, guid: bytes | None = None) -> tuple[bytes, bytes]:
    guid = guid or new_guid()
    return guid, messages.build(guid, MSG_QUERY, ttl, 0, messages.Query(text=text).encode())


async def stop_all(*nodes):
    for n in nodes:
        await n.stop()


def test_chain_query_and_hit_route_back(run, tmp_path):
    async def go():
        a = await start_node(tmp_path, "a")
        b = await start_node(tmp_path, "b")
        c = await start_node(tmp_path, "c", files={"alpha beta.txt": b"x" * 1000})
        try:
            await link(a, b)
            await link(b, c)
            p = RawPeer()
            await p.connect(a)
            guid, raw = query("alpha", 3)
            p.send(raw)
            await wait_for(lambda: p.of_type(MSG_QUERYHIT), what="hit back at the querier")
            hit = p.of_type(MSG_QUERYHIT)[0]
            assert hit.guid == guid
            qh = messages.QueryHit.decode(hit.payload)
            assert [r.name for r in qh.results] == ["alpha beta.txt"]
            assert qh.servent_guid == c.servent_guid
            assert (qh.ip, qh.port) == c.address
            # C answered once; A and B relayed it back along the reverse path.
            assert c.events["queries_answered"] == 1
            assert b.router.received[MSG_QUERYHIT] == 1 and a.router.received[MSG_QUERYHIT] == 1

            # The same GUID again is suppressed at A: C sees nothing new.
            dup_before = a.router.drops[DropReason.DUPLICATE]
            p.send(raw)
            await wait_for(lambda: a.router.drops[DropReason.DUPLICATE] > dup_before, what="duplicate drop")
            await asyncio.sleep(0.1)
            assert c.events["queries_seen"] == 1
            await p.close()
        finally:
            await stop_all(a, b, c)

    run(go)


def test_ttl_one_does_not_pass_b(run, tmp_path):
    async def go():
        a = await start_node(tmp_path, "a")
        b = await start_node(tmp_path, "b")
        c = await start_node(tmp_path, "c", files={"alpha.txt": b"y" * 10})
        try:
            await link(a, b)
            await link(b, c)
            p = RawPeer()
            await p.connect(a)
            _, raw = query("alpha", 2)  # A relays with TTL 1: B handles it, does not forward
            p.send(raw)
            await wait_for(lambda: b.events["queries_seen"] == 1, what="B sees the query")
            await asyncio.sleep(0.2)
            assert c.events["queries_seen"] == 0
            assert not p.of_type(MSG_QUERYHIT)
            await p.close()
        finally:
            await stop_all(a, b, c)

    run(go)


def test_random_topology_each_node_handles_query_once(run, tmp_path):
    import networkx as nx

    async def go():
        rng = random.Random(42)
        n = 12
        g = nx.connected_watts_strogatz_graph(n, 4, 0.3, seed=rng.randint(0, 10**6))
        nodes = [await start_node(tmp_path, f"n{i}", deflate=(i % 3 != 0)) for i in range(n)]
        try:
            for u, v in g.edges():
                await link(nodes[u], nodes[v])
            ttl = 3
            dist = nx.single_source_shortest_path_length(g, 0)
            search = nodes[0].searches.start("nothing matches this", ttl=ttl)
            assert search.messages_sent == g.degree(0)
            within = [i for i in range(1, n) if dist[i] <= ttl]
            await wait_for(lambda: all(nodes[i].events["queries_seen"] >= 1 for i in within), what="flood")
            await asyncio.sleep(0.3)
            for i in range(1, n):
                assert nodes[i].events["queries_seen"] == (1 if dist[i] <= ttl else 0), i
            assert nodes[0].events["queries_seen"] == 0  # our own query echoes are dropped
        finally:
            await stop_all(*nodes)

    run(go)


def test_node_killed_mid_flood_does_not_disturb_others(run, tmp_path):
    async def go():
        a = await start_node(tmp_path, "a")
        b = await start_node(tmp_path, "b")
        victim = await start_node(tmp_path, "v")
        c = await start_node(tmp_path, "c", files={"gamma ray.bin": b"z" * 5000})
        try:
            for x, y in ((a, b), (a, victim), (b, c), (victim, c)):
                await link(x, y)
            p = RawPeer()
            await p.connect(a)
            guids = []
            for i in range(200):
                guid, raw = query("gamma", 4)
                guids.append(guid)
                p.send(raw)
                if i == 50:
                    for peer in list(victim.peers.values()):
                        peer.transport.abort()
                    await victim.stop()
            await wait_for(lambda: len({m.guid for m in p.of_type(MSG_QUERYHIT)}) == len(guids), timeout=10,
                           what="every query answered through the surviving path")
            assert established(a) == 2 and established(c) == 1  # the raw peer + b; b
        finally:
            await stop_all(a, b, c)

    run(go)


def test_deflate_and_plain_links_mixed(run, tmp_path):
    async def go():
        a = await start_node(tmp_path, "a", deflate=True)
        b = await start_node(tmp_path, "b", deflate=False)
        c = await start_node(tmp_path, "c", deflate=True, files={"delta.txt": b"d" * 100})
        try:
            await link(a, b)
            await link(b, c)
            p = RawPeer(deflate=True)
            await p.connect(a)
            assert p.complete.deflate_in and p.complete.deflate_out
            _, raw = query("delta", 3)
            p.send(raw)
            await wait_for(lambda: p.of_type(MSG_QUERYHIT), what="hit across plain and deflate links")
        finally:
            await stop_all(a, b, c)

    run(go)


def test_keepalive_ping_then_bye_406_for_silent_peer(run, tmp_path):
    from gnut.constants import MSG_BYE, MSG_PING

    async def go():
        a = await start_node(tmp_path, "a")
        b = await start_node(tmp_path, "b")
        for n in (a, b):
            n.tick_interval, n.idle_ping_after, n.idle_close_after = 0.05, 0.3, 0.8
        try:
            await link(a, b)  # both answer pings: this link must survive
            p = RawPeer()  # answers nothing
            await p.connect(a)
            await wait_for(lambda: p.of_type(MSG_BYE), timeout=5, what="BYE 406 to the silent peer")
            assert any(m.ttl == 1 for m in p.of_type(MSG_PING)), "a keep-alive ping came first"
            bye = messages.Bye.decode(p.of_type(MSG_BYE)[0].payload)
            assert bye.code == 406
            await wait_for(lambda: p.closed, what="link closed after BYE")
            assert a.events["idle_closed"] == 1
            assert established(a) == 1 and established(b) == 1  # the answering link stays
        finally:
            await stop_all(a, b)

    run(go)


def test_stop_sends_bye_200_to_every_peer(run, tmp_path):
    from gnut.constants import MSG_BYE

    async def go():
        a = await start_node(tmp_path, "a")
        peers = [RawPeer() for _ in range(3)]
        for p in peers:
            await p.connect(a)
        await a.stop()
        for p in peers:
            await wait_for(lambda p=p: p.of_type(MSG_BYE) and p.closed, what="BYE then close")
            assert messages.Bye.decode(p.of_type(MSG_BYE)[0].payload).code == 200

    run(go)


def test_refusal_offers_x_try_ultrapeers_and_dialer_learns_them(run, tmp_path):
    async def go():
        full = await start_node(tmp_path, "full", mode="ultrapeer", max_peers=1)
        other = await start_node(tmp_path, "other", mode="ultrapeer")
        c = await start_node(tmp_path, "c", mode="ultrapeer")
        try:
            await link(full, other)  # takes full's only ultrapeer slot; full dialled it: proven
            c.dial(*full.address)
            await wait_for(lambda: c.events["refused_by_peer"] == 1, what="503 refusal")
            assert full.events["refused"] == 1
            assert other.address in c.hosts  # learned from X-Try-Ultrapeers
            assert not c.hosts.is_good(*other.address)  # a refusal's list is unverified until dialled
        finally:
            await stop_all(full, other, c)

    run(go)


def test_link_counts_follow_connects_and_leaves(run, tmp_path):
    async def go():
        up = await start_node(tmp_path, "up", mode="ultrapeer")
        other = await start_node(tmp_path, "other", mode="ultrapeer")
        leaves = [await start_node(tmp_path, f"leaf{i}", mode="leaf") for i in range(3)]
        try:
            await link(other, up)
            for leaf in leaves:
                await link(leaf, up)
            assert (up.n_ultrapeers, up.n_leaves) == (1, 3)
            await leaves[0].stop()
            await wait_for(lambda: up.n_leaves == 2, what="leaf count drops")
            await other.stop()
            await wait_for(lambda: up.n_ultrapeers == 0, what="ultrapeer count drops")
            live = [p for p in up.peers.values() if p.established]
            assert len(live) == 2 and all(p.role.name == "LEAF" for p in live)
        finally:
            await stop_all(up, *leaves[1:])

    run(go)


def test_rescan_shares_new_files_and_updates_the_leaf_table(run, tmp_path):
    async def go():
        up = await start_node(tmp_path, "up", mode="ultrapeer")
        leaf = await start_node(tmp_path, "leaf", mode="leaf", files={"first song.mp3": b"1" * 100})
        try:
            await link(leaf, up)
            lp = next(p for p in up.peers.values() if p.established)
            await wait_for(lambda: lp.qrp is not None and lp.qrp.table is not None, what="leaf table at the ultrapeer")
            assert not lp.qrp.table.matches(["zeppelin"])
            (tmp_path / "leaf" / "share" / "zeppelin live.ogg").write_bytes(b"2" * 100)
            leaf.tick_interval = 0.05
            leaf.transfers.rescan_every = 0.1
            await wait_for(lambda: leaf.share.by_index(2) is not None, what="rescan picks the new file")
            await wait_for(lambda: lp.qrp.table is not None and lp.qrp.table.matches(["zeppelin"]),
                           what="updated QRP table at the ultrapeer")
            hits = []
            search = up.searches.start("zeppelin")
            q = search.listen()
            hits.append(await asyncio.wait_for(q.get(), 5))
            assert hits[0].name == "zeppelin live.ogg"
        finally:
            await stop_all(up, leaf)

    run(go)


def test_a_stopping_node_admits_no_link_that_completes_late(run, tmp_path):
    """A dial already under way when stop() begins must not become a link to a stopped node."""

    async def go():
        a = await start_node(tmp_path, "a")
        b = await start_node(tmp_path, "b")
        try:
            a.dial(*b.address)  # create_connection is in flight ...
            a.stopping = True  # ... when shutdown begins (stop() sets this first)
            await wait_for(lambda: a.events["refused_stopping"] == 1, what="late dial refused")
            await asyncio.sleep(0.2)
            assert not a.peers
            assert not any(p.established for p in b.peers.values())
        finally:
            a.stopping = False
            await stop_all(a, b)

    run(go)
