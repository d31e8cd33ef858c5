"""The hybrid network: ultrapeers and leaves on real loopback sockets, QRP routing, dynamic querying."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from nethelpers import RawPeer, link, start_node, wait_for

from gnut.constants import MSG_BYE, MSG_QUERY, MSG_QUERYHIT, MSG_VENDOR
from gnut.protocol import messages
from gnut.protocol.guid import new_guid
from gnut.protocol.qrp import keywords
from gnut.protocol.routing import DropReason, PeerRole
from gnut.runtime import dynquery as dq
from gnut.runtime import loops
from gnut.runtime.dynquery import Done, DoneReason, DynamicQuery, LinkInfo, horizon, select_ttl
from gnut.runtime.node import Node

VECTORS = Path(__file__).resolve().parent / "vectors"  # captured real-servent bytes (vectors/README.md)
# Per-hop wait of the dynamic queries in these tests: loopback answers within milliseconds.
HOP = 0.1
# A test network sees a few hundred GUIDs: small seen/route tables start 40 nodes in a blink
# (the default 1M-entry cache costs ~0.1 s per node to allocate).
SMALL = {"seen_cache_size": 1 << 12, "route_table_size": 1 << 12}


def run(coro_fn):
    """Run a test coroutine on a fresh loop; fail if the loop's exception handler was called."""
    errors = []

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        return await coro_fn()

    result = loops.run(main())
    assert not errors, f"event loop exception handler called: {errors}"
    return result


# --- the planner, without sockets ------------------------------------------------------------------


def links(n: int, match: bool | None = True, degree: int = 32, start: int = 1) -> list[LinkInfo]:
    return [LinkInfo(peer_id=i, degree=degree, qrp_match=match) for i in range(start, start + n)]


def test_horizon_is_the_spec_sum():
    assert horizon(32, 1) == 1
    assert horizon(32, 2) == 32
    assert horizon(32, 3) == 1 + 31 + 31**2 == 993
    assert horizon(6, 4) == 1 + 5 + 25 + 125
    assert horizon(1, 4) == 1  # a link with no other neighbour reaches only itself
    assert horizon(32, 0) == 0
    assert horizon(10**9, 2) == dq.DQ_MAX_DEGREE  # absurd X-Degree values are capped


def test_select_ttl_follows_results_per_host_and_rounds_down():
    # Nothing found yet: the highest TTL the link takes.
    assert select_ttl(0, 150, 96, 10, 32, 4) == 4
    # 30 results from 96 hosts, 120 more wanted over 10 links: 38.4 hosts per link -> TTL 2 (32 hosts).
    assert select_ttl(30, 120, 96, 10, 32, 4) == 2
    # Same yield but one link left: 384 hosts wanted; TTL 3 (993) would overshoot, so TTL 2.
    assert select_ttl(30, 120, 96, 1, 32, 4) == 2
    # Rare content (1 result from 1000 hosts): 149,000 hosts wanted, capped by the link's max TTL.
    assert select_ttl(1, 149, 1000, 1, 32, 3) == 3
    # Plenty of results: the smallest TTL.
    assert select_ttl(100, 50, 10, 5, 32, 4) == 1


def test_probe_goes_to_matching_links_with_ttl_2_then_waits_per_hop():
    plan = DynamicQuery(150, links(2, True) + links(3, None, start=3) + links(2, False, start=6), 100.0,
                        hop_wait=2.4)
    step = plan.next_step(100.0, 0)
    assert step == [(1, 2), (2, 2), (3, 2)]  # matching tables first, then links without a table
    assert plan.wake_at == pytest.approx(100.0 + 2 * 2.4)
    assert plan.horizon == 3 * 32
    assert plan.next_step(104.0, 0) == []  # still waiting
    # No result after the probe: one link at a time, at the highest TTL.
    assert plan.next_step(104.8, 0) == [(4, 4)]
    assert plan.wake_at == pytest.approx(104.8 + 4 * 2.4)


def test_common_content_probes_with_ttl_1_only_to_matching_links():
    plan = DynamicQuery(150, links(10, True) + links(5, None, start=11), 0.0)
    step = plan.next_step(0.0, 0)
    assert step == [(1, 1), (2, 1), (3, 1)]
    assert plan.wake_at == pytest.approx(dq.DQ_HOP_WAIT)


def test_rare_content_skips_the_probe():
    plan = DynamicQuery(150, links(4, False), 0.0, max_ttl=3)
    assert plan.next_step(0.0, 0) == [(1, 3)]


def test_stops_at_target_only_when_the_wait_is_over():
    plan = DynamicQuery(10, links(6, True), 0.0, hop_wait=1.0)
    assert len(plan.next_step(0.0, 0)) == 3
    assert plan.next_step(1.0, 50) == []  # enough results, but the probe's wait is not over
    assert plan.next_step(2.0, 50) == Done(DoneReason.TARGET)
    assert plan.next_step(9.0, 0) == Done(DoneReason.TARGET)  # stays done
    assert not plan.pending


def test_widening_uses_results_so_far_and_exhausts():
    plan = DynamicQuery(150, links(4, True, degree=32), 0.0, hop_wait=1.0)
    assert plan.next_step(0.0, 0) == [(1, 2), (2, 2), (3, 2)]
    # 30 results from 96 hosts: 120 more over 1 link -> 384 hosts -> TTL 2.
    assert plan.next_step(2.0, 30) == [(4, 2)]
    assert plan.next_step(4.0, 40) == Done(DoneReason.EXHAUSTED)
    assert plan.queried == {1: 2, 2: 2, 3: 2, 4: 2}


def test_never_a_last_hop_copy_to_a_link_whose_table_refuses():
    plan = DynamicQuery(20, links(3, True) + links(2, False, start=4), 0.0, hop_wait=1.0)
    plan.next_step(0.0, 0)
    # 19 results: TTL 1 would do for the rest, but the remaining tables refuse the query.
    assert plan.next_step(2.0, 19) == Done(DoneReason.EXHAUSTED)
    assert set(plan.queried) == {1, 2, 3}


def test_links_come_and_go():
    plan = DynamicQuery(150, links(1, True), 0.0, hop_wait=1.0)
    assert plan.next_step(0.0, 0) == [(1, 2)]
    plan.add_link(LinkInfo(peer_id=7, degree=10, max_ttl=3))
    plan.add_link(LinkInfo(peer_id=1))  # already queried: ignored
    plan.add_link(LinkInfo(peer_id=8))
    plan.drop_link(8)
    assert plan.next_step(2.0, 0) == [(7, 3)]  # the link's X-Max-TTL caps the TTL
    assert plan.next_step(5.0, 0) == Done(DoneReason.EXHAUSTED)


def test_unsent_copy_gives_its_horizon_back():
    plan = DynamicQuery(150, links(2, True), 0.0)
    plan.next_step(0.0, 0)
    assert plan.horizon == 64
    plan.unsent(2)
    assert plan.horizon == 32 and 2 not in plan.queried


def test_leaf_guidance_counts_a_third_of_kept_and_stop_is_immediate():
    plan = DynamicQuery(10, links(5, None), 0.0, hop_wait=1.0)
    plan.next_step(0.0, 0)
    plan.guidance(29)  # 29 kept over ~3 ultrapeers: 9 are ours, not enough
    assert plan.effective_results() == 9
    assert plan.next_step(2.0, 20) == [(4, 1)]  # the routed hits no longer count, the leaf's do
    # ... down to a floor: a leaf that keeps a quarter of what we routed is lying to widen its query.
    assert plan.next_step(3.5, 40) == Done(DoneReason.TARGET)
    plan = DynamicQuery(10, links(5, None), 0.0, hop_wait=1.0)
    plan.next_step(0.0, 0)
    plan.guidance(29)
    plan.guidance(30)
    assert plan.next_step(3.0, 0) == Done(DoneReason.TARGET)
    stopped = DynamicQuery(10, links(5, None), 0.0, hop_wait=1.0)
    stopped.next_step(0.0, 0)
    stopped.guidance(dq.QSTAT_STOP)
    assert stopped.next_step(0.5, 0) == Done(DoneReason.STOPPED)  # no need to wait


def test_lifetime_and_horizon_limits():
    plan = DynamicQuery(150, links(50, None, degree=256), 0.0, hop_wait=0.0)
    plan.next_step(0.0, 0)
    steps = 0
    while not isinstance(plan.next_step(1.0, 0), Done):
        steps += 1
    assert plan.done == Done(DoneReason.HORIZON) and plan.horizon >= dq.DQ_MAX_HORIZON
    assert steps < 47  # stopped before the links ran out
    old = DynamicQuery(150, links(5, None), 0.0, hop_wait=0.0)
    old.next_step(0.0, 0)
    assert old.next_step(dq.DQ_MAX_LIFETIME, 0) == Done(DoneReason.LIFETIME)


def test_no_links_is_exhausted_at_once():
    assert DynamicQuery(5, [], 0.0).next_step(0.0, 0) == Done(DoneReason.EXHAUSTED)


@pytest.mark.parametrize("kw", [{"target": 0}, {"max_ttl": 0}, {"hop_wait": -1.0}, {"probe_links": 0},
                                {"probe_ttl": 0}])
def test_bad_parameters_are_refused(kw):
    args = {"target": 5, **kw}
    target = args.pop("target")
    with pytest.raises(ValueError):
        DynamicQuery(target, [], 0.0, **args)


def test_status_messages_codec_and_gtk_vector():
    raw = (VECTORS / "gtk-gnutella" / "leaf_vendor_msg.bin").read_bytes()
    assert raw[16] == MSG_VENDOR and raw[17:19] == b"\x01\x00"
    assert dq.parse_status(raw[23:]) == (dq.QSTAT_RESPONSE, 1)
    assert dq.status_response(1) == raw[23:]
    assert dq.parse_status(dq.status_request()) == (dq.QSTAT_REQUEST, None)
    assert dq.parse_status(dq.status_response(dq.QSTAT_STOP)) == (dq.QSTAT_RESPONSE, 0xFFFF)
    assert dq.parse_status(dq.status_response(10**6)) == (dq.QSTAT_RESPONSE, 0xFFFE)
    assert dq.parse_status(b"BEAR\x0c\x00\x01\x00") is None  # response without its count
    assert dq.parse_status(b"GTKG\x0b\x00\x01\x00") is None
    assert dq.parse_status(b"") is None


# --- real networks --------------------------------------------------------------------------------


class Net:
    """Ultrapeers and leaves on loopback; `leaves[name]` with the files each shares."""

    def __init__(self) -> None:
        self.ups: list[Node] = []
        self.leaves: dict[str, Node] = {}
        self.shares: dict[str, list[str]] = {}

    @property
    def nodes(self) -> list[Node]:
        return self.ups + list(self.leaves.values())

    def total_sent(self, *types: int) -> int:
        return sum(n.sent[t] for n in self.nodes for t in types)

    async def stop(self) -> None:
        await asyncio.gather(*(n.stop() for n in self.nodes))


async def build(tmp: Path, tag: str, n_ups: int, up_edges: list[tuple[int, int]],
                leaves: list[tuple[str, tuple[int, ...], list[str]]], **up_kw) -> Net:
    """Start the ultrapeers, link them, attach the leaves, and wait until every QRP table is in place."""
    net = Net()
    try:
        for i in range(n_ups):
            net.ups.append(await start_node(tmp, f"{tag}-up{i}", mode="ultrapeer", dq_hop_wait=HOP, **SMALL,
                                            **up_kw))
        for a, b in up_edges:
            await link(net.ups[a], net.ups[b])
        for name, ups, files in leaves:
            node = await start_node(tmp, f"{tag}-{name}", mode="leaf", files={f: f.encode() * 50 for f in files},
                                    **SMALL)
            net.leaves[name] = node
            net.shares[name] = files
            for u in ups:
                await link(node, net.ups[u])
        await settle_qrp(net)
    except BaseException:
        await net.stop()
        raise
    return net


def up_tables_current(net: Net) -> bool:
    """Every link's stored table equals what the node at the other end would send now."""
    by_addr = {n.address: n for n in net.nodes}
    for up in net.ups:
        for p in up.peers.values():
            other = by_addr.get(p.listen_addr)
            if other is None or not p.established:
                continue
            want = other.our_qrp_table()
            if p.qrp is None or p.qrp.table is None or not p.qrp.table.same_as(want):
                return False
    return True


async def settle_qrp(net: Net) -> None:
    """Leaves' tables reach their ultrapeers, then the merged ultrapeer tables their neighbours."""
    leaf_links = sum(1 for up in net.ups for p in up.peers.values() if p.role == PeerRole.LEAF)
    await wait_for(lambda: sum(1 for up in net.ups for p in up.peers.values()
                               if p.role == PeerRole.LEAF and p.qrp is not None and p.qrp.table is not None)
                   == leaf_links, what="leaf QRP tables")

    def push() -> bool:
        for up in net.ups:
            up.tick(time.monotonic())  # sends our merged table to ultrapeers when it changed
        return up_tables_current(net)

    await wait_for(push, what="ultrapeer QRP tables")


def seen(node: Node) -> int:
    return node.events["queries_seen"]


async def quiet(net: Net, period: float = 0.2) -> None:
    """Wait until no message has moved for `period` seconds."""
    def moved() -> int:
        return sum(sum(n.router.received.values()) for n in net.nodes)

    last = -1
    while (now := moved()) != last:
        last = now
        await asyncio.sleep(period)


COLORS = ["red", "green"]
ANIMALS = ["fox", "owl", "lynx"]


def test_query_reaches_exactly_the_matching_leaves_and_leaves_never_relay(tmp_path):
    """3 ultrapeers, 20 leaves (some on two ultrapeers): only QRP-matching leaves see the query."""

    async def go():
        spec = []
        dual = {2, 6, 10, 14, 18}
        for i in range(20):
            up = i // 7  # leaf6 on up0, leaf12 on up1, leaf18 on up2: each ultrapeer has a match
            ups = (up, (up + 1) % 3) if i in dual else (up,)
            spec.append((f"leaf{i}", ups, [f"{COLORS[i % 2]} {ANIMALS[i % 3]} take{i}.ogg"]))
        net = await build(tmp_path, "x", 3, [(0, 1), (1, 2), (0, 2)], spec)
        try:
            querier = net.leaves["leaf0"]
            search = querier.searches.start("red fox")
            assert search.messages_sent == 1  # to its ultrapeer only
            want = {name for name, files in net.shares.items() if name != "leaf0"
                    and all(any(w in keywords(f) for f in files) for w in ("red", "fox"))}
            partial = {name for name, files in net.shares.items()
                       if any("red" in f or "fox" in f for f in files)} - want - {"leaf0"}
            assert want == {"leaf6", "leaf12", "leaf18"} and partial  # the scenario has both kinds
            await wait_for(lambda: len(search.results) == len(want), what="hits from every matching leaf")
            await quiet(net)
            for name, node in net.leaves.items():
                if name != "leaf0":
                    assert seen(node) == (1 if name in want else 0), name
                    assert node.sent[MSG_QUERY] == 0, f"{name} relayed a query"
            assert {h.servent_guid for h in search.results} == {net.leaves[n].servent_guid.hex() for n in want}
            assert all(up.router.drops[DropReason.LEAF_RELAY] == 0 for up in net.ups)
            assert sum(up.router.qrp_skips for up in net.ups) >= len(net.leaves) - 1 - len(want)
            # Dual-homed leaves that match got the query from both ultrapeers and handled it once.
            for name in ("leaf6", "leaf18"):
                assert net.leaves[name].router.drops[DropReason.DUPLICATE] == 1, name

            # A peer that presents as a leaf and relays a query loses its link with BYE 414.
            bad = RawPeer(mode="leaf")
            await bad.connect(net.ups[1])
            relayed = messages.build(new_guid(), MSG_QUERY, 3, 1, messages.Query(text="red").encode())
            bad.send(relayed)
            await wait_for(lambda: bad.of_type(MSG_BYE) or bad.closed, what="BYE to the relaying leaf")
            assert messages.Bye.decode(bad.of_type(MSG_BYE)[0].payload).code == 414
            assert net.ups[1].router.drops[DropReason.LEAF_RELAY] == 1
            await bad.close()
        finally:
            await net.stop()

    run(go)


def test_last_hop_qrp_filters_ultrapeer_neighbours(tmp_path):
    async def go():
        spec = [("a0", (1,), ["walrus tusk.flac"]), ("a1", (1,), ["walrus song.flac"]),
                ("b0", (2,), ["pelican dive.flac"])]
        net = await build(tmp_path, "lh", 3, [(0, 1), (0, 2)], spec)
        try:
            up0, up1, up2 = net.ups
            raw = RawPeer(mode="ultrapeer")
            await raw.connect(up0)
            assert up0.peers[max(up0.peers)].role == PeerRole.ULTRAPEER
            skips = up0.router.qrp_skips
            # TTL 2 from an ultrapeer neighbour: up0 relays with TTL 1, the last hop.
            raw.send(messages.build(new_guid(), MSG_QUERY, 2, 0, messages.Query(text="walrus").encode()))
            await wait_for(lambda: len(raw.of_type(MSG_QUERYHIT)) == 2, what="walrus hits via up1")
            await quiet(net)
            assert up1.router.received[MSG_QUERY] == 1
            assert up2.router.received[MSG_QUERY] == 0  # its table has no walrus
            assert up0.router.qrp_skips == skips + 1
            # With TTL 3 the copy to up2 is not a last hop: it goes, and up2's leaves are filtered there.
            raw.send(messages.build(new_guid(), MSG_QUERY, 3, 0, messages.Query(text="walrus").encode()))
            await wait_for(lambda: up2.router.received[MSG_QUERY] == 1, what="TTL 2 copy to up2")
            await quiet(net)
            assert seen(net.leaves["b0"]) == 0
            await raw.close()
        finally:
            await net.stop()

    run(go)


# 9 ultrapeers: A(0) links B, C, D, E (1-4) and B-C; behind E: E-F, E-H, F-G, F-I (5-8).
DQ_UPS = 9
DQ_EDGES = [(0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (4, 5), (4, 7), (5, 6), (5, 8)]


def dq_leaves(popular_per_up: int = 3) -> list:
    """A querier on A, `popular_per_up` leaves sharing a popular file on every ultrapeer, a rare file on G."""
    spec = [("querier", (0,), ["nothing shared here.txt"])]
    for u in range(DQ_UPS):
        for k in range(popular_per_up):
            spec.append((f"pop{u}-{k}", (u,), [f"popular anthem v{u}{k}.mp3"]))
    spec.append(("rare", (6,), ["rarest bootleg recording.mp3"]))  # G: 3 ultrapeer hops from A
    return spec


def test_dynamic_query_stops_early_for_popular_and_still_finds_rare(tmp_path):
    """Same network and query twice: dynamic querying vs a flood of the same TTL (4)."""

    async def go():
        spec = dq_leaves()
        # A leaf's query aims at 24 // 3 = 8 results: A's 3 leaves and one probe round give 12.
        dyn = await build(tmp_path, "dq", DQ_UPS, DQ_EDGES, spec, dq_target_results=24)
        try:
            q = dyn.leaves["querier"]
            a = dyn.ups[0]
            search = q.searches.start("popular anthem")
            await wait_for(lambda: not a.dq.active and a.dq.recent, what="dynamic query done", timeout=10)
            await quiet(dyn)
            rec = a.dq.recent[-1]
            assert rec.reason is DoneReason.TARGET
            assert len(rec.plan.queried) == 3 and set(rec.plan.queried.values()) == {2}  # the probe only
            assert len(search.results) >= rec.results >= 8
            # One of A's neighbours and everything behind E never saw the query.
            assert sum(1 for up in dyn.ups[1:5] if up.router.received[MSG_QUERY] == 0) == 1
            assert all(up.router.received[MSG_QUERY] == 0 for up in dyn.ups[5:])
            dq_queries = dyn.total_sent(MSG_QUERY)
            dq_total = dyn.total_sent(MSG_QUERY, MSG_QUERYHIT)

            # The rare file sits 3 ultrapeer hops away and no neighbour's table has it.
            rare = q.searches.start("rarest bootleg")
            await wait_for(lambda: rare.results, what="the rare file", timeout=15)
            assert rare.results[0].servent_guid == dyn.leaves["rare"].servent_guid.hex()
            await wait_for(lambda: not a.dq.active, what="rare dynamic query done", timeout=15)
            rec = a.dq.recent[-1]
            assert rec.reason is DoneReason.EXHAUSTED and rec.results == 1
            assert set(rec.plan.queried.values()) == {4}  # nothing found: each link at the highest TTL
        finally:
            await dyn.stop()

        flood = await build(tmp_path, "fl", DQ_UPS, DQ_EDGES, spec, dynamic_query=False)
        try:
            q = flood.leaves["querier"]
            search = q.searches.start("popular anthem")
            await wait_for(lambda: len(search.results) == 3 * DQ_UPS, what="every popular file", timeout=10)
            await quiet(flood)
            assert not flood.ups[0].dq.recent
            fl_queries = flood.total_sent(MSG_QUERY)
            fl_total = flood.total_sent(MSG_QUERY, MSG_QUERYHIT)
        finally:
            await flood.stop()
        # Dynamic querying stopped at the target: clearly fewer messages for the same answer quality.
        assert dq_queries * 3 <= fl_queries * 2, (dq_queries, fl_queries)
        print(f"popular query: dynamic {dq_queries} queries / {dq_total} messages, "
              f"flood {fl_queries} / {fl_total}")
        assert dq_total * 2 <= fl_total, (dq_total, fl_total)

    run(go)


def test_ultrapeer_own_search_is_dynamic(tmp_path):
    async def go():
        net = await build(tmp_path, "own", DQ_UPS, DQ_EDGES, dq_leaves(popular_per_up=1), dq_target_results=4)
        try:
            a = net.ups[0]
            search = a.searches.start("popular anthem")
            assert search.messages_sent == 1  # only its matching leaf so far
            assert search.dq is not None and search.dq.origin is None
            await wait_for(lambda: not a.dq.active, what="own dynamic query done", timeout=10)
            assert search.dq.reason is DoneReason.TARGET
            assert search.messages_sent == 1 + search.dq.sent == 4
            assert len(search.results) >= 4
            assert a.stats()["dynamic_queries"]["finished"] == {"target": 1}
        finally:
            await net.stop()

    run(go)


def test_leaf_guidance_stops_the_dynamic_query(tmp_path):
    """A leaf-guided query: the leaf's Query Status Response 0xFFFF ends the widening at once."""

    async def go():
        net = await build(tmp_path, "lg", 4, [(0, 1), (0, 2), (0, 3)], [])
        try:
            a = net.ups[0]
            leaf = RawPeer(mode="leaf")
            await leaf.connect(a)
            guid = new_guid()
            flags = messages.QF_DEFAULT | messages.QF_LEAF_GUIDED
            leaf.send(messages.build(guid, MSG_QUERY, 4, 0, messages.Query(text="unobtainium", flags=flags).encode()))
            await wait_for(lambda: a.dq.active.get(guid) and a.dq.active[guid].sent == 1, what="first step")
            leaf.send(messages.build(guid, MSG_VENDOR, 1, 0, dq.status_response(dq.QSTAT_STOP)))
            await wait_for(lambda: guid not in a.dq.active, what="guided stop", timeout=3)
            rec = a.dq.recent[-1]
            assert rec.reason is DoneReason.STOPPED and rec.sent == 1
            assert a.events["dq_guidance"] == 1
            # A status for someone else's query, or garbage vendor data, changes nothing.
            leaf.send(messages.build(new_guid(), MSG_VENDOR, 1, 0, dq.status_response(5)))
            leaf.send(messages.build(new_guid(), MSG_VENDOR, 1, 0, b"BEAR\x0c\x00"))
            await wait_for(lambda: a.events["vendor_ignored"] == 1, what="short vendor message ignored")
            assert not leaf.closed

            # Without guidance the same query widens over all 3 ultrapeer links, then ends.
            guid2 = new_guid()
            leaf.send(messages.build(guid2, MSG_QUERY, 3, 0, messages.Query(text="unobtainium").encode()))
            await wait_for(lambda: guid2 not in a.dq.active and a.dq.recent[-1].guid == guid2,
                           what="unguided query exhausted", timeout=5)
            assert a.dq.recent[-1].reason is DoneReason.EXHAUSTED and a.dq.recent[-1].sent == 3
            await leaf.close()
        finally:
            await net.stop()

    run(go)


def test_dynamic_queries_are_bounded_per_leaf_and_end_with_their_leaf(tmp_path):
    async def go():
        net = await build(tmp_path, "lim", 4, [(0, 1), (0, 2), (0, 3)], [])
        try:
            a = net.ups[0]
            leaf = RawPeer(mode="leaf")
            await leaf.connect(a)
            for i in range(dq.DQ_MAX_PER_LEAF + 1):
                leaf.send(messages.build(new_guid(), MSG_QUERY, 3, 0, messages.Query(text=f"nowhere{i}").encode()))
            await wait_for(lambda: a.events["dq_refused"] == 1, what="the query over the limit")
            assert len(a.dq.active) == dq.DQ_MAX_PER_LEAF
            # The leaf goes away: its queries stop widening at their next step.
            await leaf.close()
            await wait_for(lambda: not a.dq.active, what="queries of a gone leaf ended", timeout=3)
            assert a.dq.finished == {DoneReason.STOPPED: dq.DQ_MAX_PER_LEAF}
            assert all(r.sent == 1 for r in a.dq.recent)
            assert not a.dq._per_leaf
            # Our own search, stopped by its user, stops its dynamic query too.
            search = a.searches.start("nowhere at all")
            assert search.dq is not None
            a.searches.stop(search)
            await wait_for(lambda: search.dq.reason is DoneReason.STOPPED, what="own query stopped", timeout=3)
            assert search.messages_sent == 0  # stopped before its first step ran
        finally:
            await net.stop()

    run(go)


def test_gnut_leaf_answers_status_requests_and_says_stop(tmp_path):
    async def go():
        leaf = await start_node(tmp_path, "leaf", mode="leaf")
        up = RawPeer(mode="ultrapeer")
        try:
            await up.connect(leaf)
            search = leaf.searches.start("zeppelin")
            await wait_for(lambda: up.of_type(MSG_QUERY), what="the leaf's query")
            query = up.of_type(MSG_QUERY)[0]
            assert messages.Query.decode(query.payload).flags & messages.QF_LEAF_GUIDED
            up.send(messages.build(query.guid, MSG_VENDOR, 1, 0, dq.status_request()))
            await wait_for(lambda: up.of_type(MSG_VENDOR), what="status response")
            answer = up.of_type(MSG_VENDOR)[0]
            assert answer.guid == query.guid and dq.parse_status(answer.payload) == (dq.QSTAT_RESPONSE, 0)
            leaf.searches.stop(search)
            await wait_for(lambda: len(up.of_type(MSG_VENDOR)) == 2, what="stop")
            stop = up.of_type(MSG_VENDOR)[1]
            assert stop.guid == query.guid and dq.parse_status(stop.payload) == (dq.QSTAT_RESPONSE, 0xFFFF)
            # Asked again about the stopped search: stop again.
            up.send(messages.build(query.guid, MSG_VENDOR, 1, 0, dq.status_request()))
            await wait_for(lambda: len(up.of_type(MSG_VENDOR)) == 3, what="stop again")
            assert dq.parse_status(up.of_type(MSG_VENDOR)[2].payload) == (dq.QSTAT_RESPONSE, 0xFFFF)
            await up.close()
        finally:
            await leaf.stop()

    run(go)


def test_gnut_leaf_behind_gnut_ultrapeer_answers_and_its_table_follows_its_shares(tmp_path):
    async def go():
        spec = [("mine", (0,), ["kestrel hover clip.mkv", "otter slide.mkv"]), ("asker", (1,), [])]
        net = await build(tmp_path, "lf", 2, [(0, 1)], spec)
        try:
            up0 = net.ups[0]
            mine = net.leaves["mine"]
            (link_peer,) = [p for p in up0.peers.values() if p.role == PeerRole.LEAF]
            table = link_peer.qrp.table
            for f in net.shares["mine"]:
                assert table.matches(sorted(keywords(f)))
            assert not table.matches(["zebra"])
            assert table.same_as(mine.our_qrp_table())
            # A leaf on the other ultrapeer finds the file through both ultrapeers.
            search = net.leaves["asker"].searches.start("kestrel")
            await wait_for(lambda: search.results, what="hit from the leaf behind up0")
            assert search.results[0].servent_guid == mine.servent_guid.hex()
            assert mine.events["queries_answered"] == 1 and mine.sent[MSG_QUERY] == 0
            # New shares: the leaf sends a patch and the ultrapeer's view follows.
            share = mine.cfg.share_dirs[0]
            (share / "zebra crossing.mkv").write_bytes(b"z" * 500)
            await mine.transfers.scan()
            mine.tick(time.monotonic())
            await wait_for(lambda: link_peer.qrp.table.matches(["zebra"]), what="patched table")
            await settle_qrp(net)
            search = net.leaves["asker"].searches.start("zebra crossing")
            await wait_for(lambda: search.results, what="hit for the new file")
        finally:
            await net.stop()

    run(go)


def test_ultrapeer_refuses_leaves_beyond_its_slots_with_x_try(tmp_path):
    async def go():
        full = await start_node(tmp_path, "full", mode="ultrapeer", max_leaves=1)
        other = await start_node(tmp_path, "other", mode="ultrapeer")
        l1 = await start_node(tmp_path, "l1", mode="leaf")
        l2 = await start_node(tmp_path, "l2", mode="leaf")
        try:
            await link(full, other)
            await link(l1, full)
            l2.dial(*full.address)
            await wait_for(lambda: l2.events["refused_by_peer"] == 1, what="503 for the second leaf")
            assert full.events["refused"] == 1
            assert other.address in l2.hosts  # from X-Try-Ultrapeers
        finally:
            for n in (full, other, l1, l2):
                await n.stop()

    run(go)
