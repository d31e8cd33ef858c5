"""The "trust" red-team findings, part A, replayed on real loopback sockets: route theft, routes
learned from unrouted hits, lying hits steering a dynamic query, one peer choosing our address,
host-cache takeover, hostile addresses.

Strategy: each test starts real nodes (tests/nethelpers.py) and attacks from one or more
127.0.0.x addresses (Linux routes all of 127/8 to lo; the attacker's socket is bound there), then
checks that the attack was refused and counted by reason, and that an honest peer is still served.
"""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import pytest
from nethelpers import RawPeer, link, start_node, wait_for

from gnut.constants import MSG_PING, MSG_PONG, MSG_PUSH, MSG_QUERY, MSG_QUERYHIT, ROUTE_TAKEOVER_BURST
from gnut.protocol import connection as cx
from gnut.protocol import messages
from gnut.protocol.addresses import AGREEMENT_NEEDED
from gnut.protocol.guid import new_guid
from gnut.protocol.routing import DropReason
from gnut.runtime import hostcache as hcmod

ATTACKER = "127.0.0.66"


def query(text: str, ttl: int, hops: int, guid: bytes) -> bytes:
    return messages.build(guid, MSG_QUERY, ttl, hops, messages.Query(text=text).encode())


def hit(guid: bytes, servent: bytes, name: str = "needle.txt", ttl: int = 4) -> bytes:
    qh = messages.QueryHit(port=6346, ip="127.0.0.9", speed=100,
                           results=(messages.HitResult(1, 10, name),), servent_guid=servent)
    return messages.build(guid, MSG_QUERYHIT, ttl, 0, qh.encode())


async def close_all(*peers: RawPeer) -> None:
    for p in peers:
        await p.close()


# --- 1. route theft by a higher-TTL duplicate ------------------------------------------------------


def test_neighbour_cannot_steal_the_hits_of_queries_it_relays(run, tmp_path):
    """The attacker resends every query it is relayed, with more TTL (the old rule moved the route
    to it), then with fewer hops (a lie the rule cannot see): the first is always refused, the
    second at most ROUTE_TAKEOVER_BURST times. Every other hit still reaches the honest querier."""

    async def go():
        node = await start_node(tmp_path, "n")
        querier, holder, thief = RawPeer(), RawPeer(), RawPeer()
        await querier.connect(node)
        await holder.connect(node, "127.0.0.3")
        await thief.connect(node, ATTACKER)
        try:
            rounds = ROUTE_TAKEOVER_BURST + 12
            guids = [new_guid() for _ in range(2 * rounds)]
            # The querier relays queries from 2 hops away (TTL 3, hops 2): the node relays them on.
            querier.send(b"".join(query("needle", 3, 2, g) for g in guids))
            await wait_for(lambda: len(thief.of_type(MSG_QUERY)) == len(guids), what="relayed queries")
            # Attack 1, the reported one: the same query, the same hops, the most TTL allowed.
            thief.send(b"".join(query("needle", 13, 2, g) for g in guids[:rounds]))
            # Attack 2: lie about the hops (one hop closer, hops + TTL kept consistent).
            thief.send(b"".join(query("needle", 4, 1, g) for g in guids[rounds:]))
            await wait_for(lambda: node.router.received[MSG_QUERY] == 4 * rounds, what="attack processed")
            r = node.router
            assert r.takeovers_refused == rounds + (rounds - ROUTE_TAKEOVER_BURST)
            assert r.dup_ttl_relays == ROUTE_TAKEOVER_BURST
            # The holder answers every query now: the hits go back along the recorded routes.
            servent = new_guid()
            holder.send(b"".join(hit(g, servent) for g in guids))
            await wait_for(lambda: len(querier.of_type(MSG_QUERYHIT)) + len(thief.of_type(MSG_QUERYHIT))
                           == len(guids), what="all hits routed")
            stolen = {m.guid for m in thief.of_type(MSG_QUERYHIT)}
            assert len(stolen) == ROUTE_TAKEOVER_BURST and stolen <= set(guids[rounds:])
            assert len(querier.of_type(MSG_QUERYHIT)) == 2 * rounds - ROUTE_TAKEOVER_BURST
            st = node.stats()["trust"]
            assert st["route_takeovers"] == ROUTE_TAKEOVER_BURST
            assert st["route_takeovers_refused"] == r.takeovers_refused
        finally:
            await close_all(querier, holder, thief)
            await node.stop()

    run(go)


def test_leaf_queries_are_never_taken_over(run, tmp_path):
    """A leaf's query (and ours) is recorded with hops 0: no copy, whatever its TTL, takes it."""

    async def go():
        node = await start_node(tmp_path, "n", mode="ultrapeer", dynamic_query=False)
        leaf, holder, thief = RawPeer(mode="leaf"), RawPeer(), RawPeer()
        await leaf.connect(node)
        await holder.connect(node, "127.0.0.3")
        await thief.connect(node, ATTACKER)
        try:
            g = new_guid()
            leaf.send(query("needle", 3, 0, g))
            await wait_for(lambda: thief.of_type(MSG_QUERY), what="the leaf's query relayed")
            thief.send(b"".join(query("needle", ttl, 0, g) for ttl in (4, 5, 6, 7)))
            await wait_for(lambda: node.router.drops[DropReason.DUPLICATE] == 4, what="duplicates")
            holder.send(hit(g, new_guid()))
            await wait_for(lambda: leaf.of_type(MSG_QUERYHIT), what="the hit at the leaf")
            assert not thief.of_type(MSG_QUERYHIT) and node.router.dup_ttl_relays == 0
        finally:
            await close_all(leaf, holder, thief)
            await node.stop()

    run(go)


# --- 2. routes learned from messages that had no route ---------------------------------------------------


def test_unsolicited_hits_do_not_steal_push_routes(run, tmp_path):
    async def go():
        node = await start_node(tmp_path, "n")
        querier, holder, thief = RawPeer(), RawPeer(), RawPeer()
        await querier.connect(node)
        await holder.connect(node, "127.0.0.3")
        await thief.connect(node, ATTACKER)
        try:
            g = new_guid()
            servent = new_guid()
            querier.send(query("needle", 3, 0, g))
            await wait_for(lambda: holder.of_type(MSG_QUERY), what="query at the holder")
            holder.send(hit(g, servent))
            await wait_for(lambda: querier.of_type(MSG_QUERYHIT), what="the honest hit")
            # The thief sends hits nobody asked for, naming the holder's servent GUID.
            thief.send(b"".join(hit(new_guid(), servent) for _ in range(20)))
            await wait_for(lambda: node.router.drops[DropReason.NO_ROUTE] == 20, what="unrouted hits dropped")
            push = messages.Push(servent_guid=servent, index=1, ip="127.0.0.1", port=6346).encode()
            querier.send(messages.build(new_guid(), MSG_PUSH, 3, 0, push))
            await wait_for(lambda: holder.of_type(MSG_PUSH), what="PUSH at the holder")
            assert not thief.of_type(MSG_PUSH)
        finally:
            await close_all(querier, holder, thief)
            await node.stop()

    run(go)


# --- 3. a hit that lies about its result count ---------------------------------------------------------


def test_lying_result_count_does_not_end_a_dynamic_query(run, tmp_path):
    """The old driver added the count byte: one hit saying 255 ended a leaf's query at once."""

    async def go():
        node = await start_node(tmp_path, "up", mode="ultrapeer", dq_hop_wait=0.05, dq_target_results=30)
        leaf = RawPeer(mode="leaf")
        ups = [RawPeer() for _ in range(4)]
        await leaf.connect(node)
        await ups[0].connect(node, ATTACKER)
        for i, p in enumerate(ups[1:], 2):
            await p.connect(node, f"127.0.0.{i}")
        try:
            g = new_guid()
            leaf.send(query("needle", 3, 0, g))
            await wait_for(lambda: ups[0].of_type(MSG_QUERY) or len(node.dq.active) == 1, what="DQ started")
            await wait_for(lambda: any(p.of_type(MSG_QUERY) for p in ups), what="the probe")
            first = next(p for p in ups if p.of_type(MSG_QUERY))
            # One of the probed links answers: a count byte of 255 over one result.
            payload = bytearray(messages.QueryHit(port=6346, ip="127.0.0.9", speed=1,
                                                  results=(messages.HitResult(1, 10, "needle"),),
                                                  servent_guid=new_guid()).encode())
            payload[0] = 255
            first.send(messages.build(g, MSG_QUERYHIT, 4, 0, bytes(payload)))
            await wait_for(lambda: node.events["dq_hit_unparsable"] == 1, what="the lie counted as nothing")
            # The query widens on: every ultrapeer link gets it, honest ones answer, the leaf gets them.
            await wait_for(lambda: all(p.of_type(MSG_QUERY) for p in ups), timeout=10, what="all links queried")
            for p in ups[1:]:
                if p is not first:
                    p.send(hit(g, new_guid()))
            await wait_for(lambda: len(leaf.of_type(MSG_QUERYHIT)) >= 2, what="honest hits at the leaf")
            rec = node.dq.recent[-1] if not node.dq.active else node.dq.active[g]
            assert rec.results <= 3
        finally:
            await close_all(leaf, *ups)
            await node.stop()

    run(go)


# --- 4. our advertised address -------------------------------------------------------------------------------


class ClaimingPeer(RawPeer):
    """A raw peer that tells the node it sees it as `claim` (Remote-IP)."""

    def __init__(self, claim: str) -> None:
        super().__init__()
        self.conn = cx.Connection(self.cfg, outgoing=True, remote_ip=claim)


def test_one_peer_cannot_choose_our_advertised_address(run, tmp_path):
    async def go():
        node = await start_node(tmp_path, "n", listen_host="0.0.0.0")
        peers = []
        try:
            assert node.wildcard and node.address[0] == "127.0.0.1"
            for src in (ATTACKER, "127.0.0.67"):  # the attacker, from two addresses
                p = ClaimingPeer("127.0.0.99")
                await p.connect(node, src)
                peers.append(p)
            assert node.address[0] == "127.0.0.1"  # the first peer used to set it for good
            assert node.our_pong().ip == "127.0.0.1"
            for i in range(AGREEMENT_NEEDED):  # honest peers agree on what they dialled
                p = ClaimingPeer("127.0.0.1")
                await p.connect(node, f"127.0.0.{10 + i}")
                peers.append(p)
            a = node.stats()["trust"]["address"]
            assert a["learned"] == "127.0.0.1" and a["votes"] == {"127.0.0.99": 2, "127.0.0.1": AGREEMENT_NEEDED}
            # A bogus claim (a bogon from a loopback link) is not even a vote.
            p = ClaimingPeer("224.0.0.1")
            await p.connect(node, "127.0.0.20")
            peers.append(p)
            assert node.stats()["trust"]["refused"]["remote_ip_refused"] == 1
            # Hits point downloaders at the agreed address.
            qh = messages.QueryHit.decode(node.transfers.hit_payloads([], ggep_h=False)[0]) if len(node.share) else None
            assert qh is None or qh.ip == "127.0.0.1"
        finally:
            await close_all(*peers)
            await node.stop()

    run(go)


# --- 5. the host cache -------------------------------------------------------------------------------------


async def refusing_server(host: str, try_hosts: list[str]):
    """A listener that refuses every handshake with a 503 and the given X-Try-Ultrapeers list."""

    async def handle(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"GNUTELLA/0.6 503 Full\r\nX-Try-Ultrapeers: " + ",".join(try_hosts).encode() + b"\r\n\r\n")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, 0)


def test_pongs_and_x_try_cannot_take_over_the_host_cache(run, tmp_path):
    async def go():
        honest = await start_node(tmp_path, "honest", mode="ultrapeer")
        node = await start_node(tmp_path, "n", mode="ultrapeer", save_hosts=True, out_links=1)
        node.tick_interval = 0.05
        thief = RawPeer()
        server = await refusing_server(ATTACKER, [f"127.0.0.{i % 200 + 30}:{7000 + i}" for i in range(200)])
        try:
            await link(node, honest)  # dialled and answered: a good entry
            assert node.hosts.is_good(*honest.address)
            await thief.connect(node, ATTACKER)
            await wait_for(lambda: thief.of_type(MSG_PING), what="the node's ping")
            ping = thief.of_type(MSG_PING)[0]
            pongs = []
            for i in range(300):  # unsolicited (a PING nobody sent) and solicited ones
                guid = ping.guid if i % 2 else new_guid()
                pong = messages.Pong(port=8000 + i, ip=f"127.0.{i % 250}.{i % 7 + 1}", files=1, kbytes=1)
                pongs.append(messages.build(guid, MSG_PONG, 1, 1, pong.encode()))
            thief.send(b"".join(pongs))
            await wait_for(lambda: node.router.received[MSG_PONG] >= 300, what="the pong flood")
            # The thief's refusal hands over 200 addresses.
            node.dial(ATTACKER, server.sockets[0].getsockname()[1])
            await wait_for(lambda: node.events["refused_by_peer"] == 1, what="the refusal")
            hc = node.hosts.stats()
            assert node.trust["pong_unsolicited"] == 150
            assert hc["added"].get("pong", 0) <= hcmod.PONG_NEW_PER_MINUTE
            assert hc["added"].get("x-try", 0) <= hcmod.XTRY_NEW_MAX
            # 200 X-Try entries in one /24: PER_SUBNET of them at most, the rest refused.
            assert hc["pools"]["ultrapeer"]["good"] == 1
            assert hc["refused"].get("list_cap", 0) + hc["refused"].get("subnet_full", 0) >= 200 - hcmod.XTRY_NEW_MAX
            # Only proven hosts are passed on and saved.
            assert node.hosts.sample_good(10) == [honest.address]
            assert node.try_hosts() == [f"{honest.address[0]}:{honest.address[1]}"]
            # The honest link drops: the node dials the proven host first, not the attacker's picks.
            for p in list(node.peers.values()):
                if p.listen_addr == honest.address:
                    p.close("test: link lost")
            await wait_for(lambda: any(p.established and p.listen_addr == honest.address
                                       for p in node.peers.values()), what="redial of the honest host")
        finally:
            server.close()
            await thief.close()
            await node.stop()
            await honest.stop()
        saved = json.loads((tmp_path / "n" / "hosts.json").read_text())
        assert [(r["host"], r["port"]) for r in saved] == [honest.address]

    run(go)


def test_connect_address_that_refused_is_not_saved(run, tmp_path):
    async def go():
        # A closed port on loopback: the --connect dial fails.
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        closed = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        node = await start_node(tmp_path, "n", save_hosts=True, connect=[("127.0.0.1", closed)])
        try:
            await wait_for(lambda: node.events["dial_failed"] == 1, what="the failed dial")
            assert node.hosts.sample_good(5) == []
        finally:
            await node.stop()
        path = tmp_path / "n" / "hosts.json"
        assert not path.exists() or json.loads(path.read_text()) == []

    run(go)


# --- 6. hostile addresses -------------------------------------------------------------------------------------


def test_hostiles_file_and_ban_refuse_at_accept(run, tmp_path):
    from gnut.app import client
    from gnut.app.control import ControlServer

    async def go():
        home = tmp_path / "n"
        home.mkdir()
        (home / "hostiles.txt").write_text(f"# test list\n{ATTACKER}\n10.0.0.0/8  # lab\nnot an address\n")
        node = await start_node(tmp_path, "n")
        server = ControlServer(node)
        await server.start()
        try:
            assert len(node.hostiles) == 2
            thief = RawPeer()
            with pytest.raises(AssertionError, match="handshake refused"):
                await thief.connect(node, ATTACKER)
            assert node.trust["refused_hostile"] == 1
            # `gnut ban` at run time, through the control API: persisted, applied to new links.
            rc = await client.ban(SimpleNamespace(target="127.0.0.67/32"), home)
            assert rc == 0 and "127.0.0.67" in (home / "hostiles.txt").read_text()
            with pytest.raises(AssertionError, match="handshake refused"):
                await RawPeer().connect(node, "127.0.0.67")
            assert await client.ban(SimpleNamespace(target="nonsense"), home) == 1
            node.dial("127.0.0.67", 6346)  # never dialled
            assert node.trust["dial_hostile"] == 1 and not node._dialing
            # An honest peer is still served.
            honest = RawPeer()
            await honest.connect(node, "127.0.0.5")
            await honest.close()
            st = node.stats()["trust"]
            assert st["hostiles"] == 3 and st["refused"]["refused_hostile"] == 2 and st["refused"]["bans"] == 1
        finally:
            await server.stop()
            await node.stop()
        # The ban survives a restart.
        again = await start_node(tmp_path, "n")
        try:
            assert "127.0.0.67" in again.hostiles
        finally:
            await again.stop()

    run(go)


def test_status_text_shows_the_trust_section(run, tmp_path, capsys):
    from gnut.app import client

    async def go():
        node = await start_node(tmp_path, "n")
        try:
            client._print_trust(node.stats())
        finally:
            await node.stop()

    run(go)
    out = capsys.readouterr().out
    assert "trust:   address 127.0.0.1 (as bound), route takeovers 0 (refused 0)" in out
    assert "hosts:   ultrapeer 0 good/0 unverified" in out
    assert time.time() > 0


def test_push_to_a_hostile_address_is_not_followed(run, tmp_path):
    """A PUSH makes the node connect out: the address it names gets the same trust as any other.
    (A hostile loopback address stands in for a bogon: a test never sends to a bogon.)"""

    async def go():
        node = await start_node(tmp_path, "n")
        peer = RawPeer()
        await peer.connect(node)
        try:
            node.ban("127.0.0.77")
            push = messages.Push(servent_guid=node.servent_guid, index=1, ip="127.0.0.77", port=9).encode()
            peer.send(messages.build(new_guid(), MSG_PUSH, 3, 0, push))
            await wait_for(lambda: node.trust["push_hostile"] == 1, what="the PUSH refused")
            assert node.router.local[MSG_PUSH] == 1
        finally:
            await peer.close()
            await node.stop()

    run(go)


def test_hostiles_flag_config_key_and_ban_subcommand_parse(tmp_path):
    from gnut.app.cli import build_parser, node_config
    from gnut.app.configfile import load_config_file

    lst = tmp_path / "list.txt"
    cfg = node_config(build_parser().parse_args(["--home", str(tmp_path), "node", "--hostiles", str(lst)]))
    assert cfg.hostiles == lst
    conf = tmp_path / "gnut.toml"
    conf.write_text(f'hostiles = "{lst}"\n')
    assert load_config_file(conf)["hostiles"] == str(lst)
    args = build_parser().parse_args(["ban", "10.0.0.0/8"])
    assert args.command == "ban" and args.target == "10.0.0.0/8"


def test_hostiles_given_by_flag_are_read_beside_the_home_list(run, tmp_path):
    async def go():
        lst = tmp_path / "shared-list.txt"
        lst.write_text("127.0.0.88\n")
        node = await start_node(tmp_path, "n", hostiles=lst)
        try:
            assert "127.0.0.88" in node.hostiles
            with pytest.raises(AssertionError, match="handshake refused"):
                await RawPeer().connect(node, "127.0.0.88")
            assert node.trust["refused_hostile"] == 1
        finally:
            await node.stop()

    run(go)


def test_ban_closes_a_live_link_from_the_banned_address(run, tmp_path):
    async def go():
        node = await start_node(tmp_path, "n")
        victim_of_ban, honest = RawPeer(), RawPeer()
        await victim_of_ban.connect(node, "127.0.0.68")
        await honest.connect(node, "127.0.0.5")
        try:
            assert node.ban("127.0.0.64/30") == "127.0.0.64/30"  # .64 - .67: not the link's address
            assert node.trust["closed_banned"] == 0
            assert node.ban("127.0.0.68") == "127.0.0.68"
            await wait_for(lambda: victim_of_ban.closed, what="the banned link closed")
            assert node.trust["closed_banned"] == 1
            assert not honest.closed
        finally:
            await close_all(victim_of_ban, honest)
            await node.stop()

    run(go)


def test_a_connect_name_that_answered_is_saved_as_its_address(run, tmp_path):
    async def go():
        up = await start_node(tmp_path, "up", mode="ultrapeer")
        node = await start_node(tmp_path, "n", save_hosts=True, connect=[("localhost", up.address[1])])
        try:
            await wait_for(lambda: node.hosts.sample_good(5), what="the answered --connect host")
            assert node.hosts.sample_good(5) == [("127.0.0.1", up.address[1])]
        finally:
            await node.stop()
            await up.stop()

    run(go)
