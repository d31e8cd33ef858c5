"""Relay core in context: the local-interest filter against real shares, and real-socket nodes using the core."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nethelpers import RawPeer, link, start_node, wait_for
from test_relaycore import HIGH, LOW, SERVENT, make_router, qpayload, raw_msg  # noqa: F401  (shared helpers)

from gnut.constants import (
    MSG_QRP,
    MSG_QUERY,
    MSG_QUERYHIT,
)
from gnut.protocol import messages
from gnut.protocol.guid import new_guid
from gnut.protocol.qrp import QrpTable, keywords
from gnut.protocol.routing import DropReason, PeerRole, Router
from gnut.runtime import loops
from gnut.runtime.share import ShareIndex

# --- the local filter ----------------------------------------------------------------------------

NAMES = [
    "Alpha Centauri live.mp3",
    "beta-release notes.txt",
    "GAMMA_ray 2024.ogg",
    "delta blues.flac",
    "café del mar.mp3",
    "日本語 song.ogg",
    "xyzzy.bin",
]


@pytest.fixture(scope="module")
def share(tmp_path_factory):
    root = tmp_path_factory.mktemp("share")
    for i, name in enumerate(NAMES):
        (root / name).write_bytes(bytes([i]) * 10)
    index = ShareIndex([root])
    index.scan()
    return index


def local_kind(impl, router: Router, text_payload: bytes) -> int:
    core = router.core
    msg = impl.Message(raw_msg(new_guid(), MSG_QUERY, 2, 0, text_payload))
    ids = core.slot_ids
    i, kind = core.relay(1, [msg], 0, 1.0, [bytearray() for _ in ids], [0] * len(ids), LOW, HIGH)
    core.end_chunk()
    return kind


WORDS = [
    "alpha",
    "alp",
    "al",
    "centauri",
    "cent",
    "live",
    "beta",
    "release",
    "rel",
    "notes",
    "gamma",
    "ray",
    "2024",
    "202",
    "delta",
    "blues",
    "cafe",
    "caf",
    "del",
    "mar",
    "song",
    "xyzzy",
    "xyz",
    "omega",
    "zzz",
    "alphas",
    "blu",
    "bluesy",
    "Notes",
    "RAY",
]


@settings(max_examples=150, deadline=None)
@given(
    words=st.lists(st.sampled_from(WORDS), min_size=0, max_size=3), sep=st.sampled_from([" ", "-", ", ", "_"])
)
def test_local_filter_never_hides_a_query_our_shares_answer(share, words, sep):
    from gnut import _purepath

    twins = [_purepath]
    try:
        from gnut import _fastpath

        twins.append(_fastpath)
    except ImportError:
        pass
    text = sep.join(words)
    answered = bool(share.match(text))
    for impl in twins:
        router = make_router(impl, "flood")
        router.add_peer(1, PeerRole.FLOOD)
        router.set_local_words(share.all_words())
        kind = local_kind(impl, router, qpayload(text))
        if answered:
            assert kind == impl.STOP_LOCAL, (impl.__name__, text)
        elif not text or all(len(w) < 3 for w in text.replace("-", " ").replace(",", " ").split()):
            assert kind == impl.STOP_END  # no routable word matches nothing


def test_local_filter_hands_over_what_it_cannot_parse(impl, share):
    router = make_router(impl, "flood")
    router.add_peer(1, PeerRole.FLOOD)
    router.set_local_words(share.all_words())
    assert local_kind(impl, router, qpayload("omega zeta")) == impl.STOP_END
    assert local_kind(impl, router, qpayload("alpha")) == impl.STOP_LOCAL
    assert local_kind(impl, router, qpayload("omega", b"urn:sha1:X")) == impl.STOP_LOCAL  # extensions
    assert local_kind(impl, router, qpayload("omégа")) == impl.STOP_LOCAL  # non-ASCII text
    assert local_kind(impl, router, b"\x80\x00omega") == impl.STOP_LOCAL  # no NUL: Python counts it
    assert local_kind(impl, router, b"\x80\x00om\x1cega\x00") == impl.STOP_LOCAL  # bad separator
    router.set_local_words(frozenset())  # nothing shared: nothing can match
    assert local_kind(impl, router, qpayload("alpha", b"urn:sha1:X")) == impl.STOP_END
    router.set_local_words(None)
    assert local_kind(impl, router, qpayload("omega")) == impl.STOP_LOCAL


# --- in a node -------------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_node_relays_through_the_core_and_answers_only_what_matches(tmp_path, loop):
    async def go():
        node = await start_node(tmp_path, "n", files={"alpha centauri.txt": b"a" * 100})
        try:
            src, a, b = RawPeer(), RawPeer(), RawPeer()
            for p in (src, a, b):
                await p.connect(node)
            guids = [new_guid() for _ in range(30)]
            stream = [
                raw_msg(g, MSG_QUERY, 3, 1, messages.Query(text=f"omega{i}").encode())
                for i, g in enumerate(guids)
            ]
            stream.append(raw_msg(guids[0], MSG_QUERY, 3, 1, messages.Query(text="omega0").encode()))  # dup
            hit_guid = new_guid()
            stream.append(raw_msg(hit_guid, MSG_QUERY, 3, 1, messages.Query(text="alpha").encode()))
            src.send(b"".join(stream))
            await wait_for(
                lambda: len(a.of_type(MSG_QUERY)) == 31 and len(b.of_type(MSG_QUERY)) == 31,
                what="relayed copies",
            )
            await wait_for(lambda: src.of_type(MSG_QUERYHIT), what="the matching query answered")
            assert [m.guid for m in src.of_type(MSG_QUERYHIT)] == [hit_guid]
            assert all(m.ttl == 2 and m.hops == 2 for m in a.of_type(MSG_QUERY))
            assert not src.of_type(MSG_QUERY)
            assert node.events["queries_seen"] == 31 and node.events["queries_answered"] == 1
            stats = node.stats()
            assert stats["drops"] == {"duplicate": 1}
            assert stats["received"]["QUERY"] == 32 and stats["sent"]["QUERY"] == 62
            links = {p.id: p for p in node.peers.values()}
            src_peer = next(p for p in links.values() if p.msgs_in == 32)
            assert src_peer.dups == 1
            assert sorted(p.msgs_out for p in links.values() if p is not src_peer)[0] >= 31
        finally:
            await node.stop()

    loops.run(go(), loop)


def test_node_with_core_off_routes_the_same(tmp_path):
    async def go():
        node = await start_node(tmp_path, "n")
        node.router.use_core = False
        try:
            src, a = RawPeer(), RawPeer()
            for p in (src, a):
                await p.connect(node)
            src.send(b"".join(raw_msg(new_guid(), MSG_QUERY, 3, 0, qpayload("omega")) for _ in range(5)))
            await wait_for(lambda: len(a.of_type(MSG_QUERY)) == 5, what="relayed copies")
            assert node.router.received[MSG_QUERY] == 5 and node.events["queries_seen"] == 5
        finally:
            await node.stop()

    loops.run(go(), "asyncio")


def test_duplicates_resent_on_their_own_link_still_earn_a_bye(tmp_path):
    async def go():
        node = await start_node(tmp_path, "n")
        try:
            src, a = RawPeer(), RawPeer()
            for p in (src, a):
                await p.connect(node)
            one = raw_msg(new_guid(), MSG_QUERY, 3, 0, qpayload("omega"))
            src.send(one * 60)
            await wait_for(lambda: src.closed, what="BYE for a replayer")
            await asyncio.sleep(0)
            assert node.events["bye_duplicates"] == 1
        finally:
            await node.stop()

    loops.run(go(), "asyncio")


def send_table(peer: RawPeer, words: list[str]) -> None:
    """Send a QRP table (RESET + PATCH) holding `words` over a raw link, as a leaf does."""
    table = QrpTable(14, infinity=2)
    for w in words:
        table.add_words(keywords(w))
    for m in table.to_messages(entry_bits=4):
        peer.send(messages.build(new_guid(), MSG_QRP, 1, 0, m.encode()))


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_ultrapeer_node_relays_to_matching_leaves_through_the_core(tmp_path, loop):
    async def go():
        node = await start_node(tmp_path, "up", mode="ultrapeer")
        try:
            src, other = RawPeer(), RawPeer()
            for p in (src, other):
                await p.connect(node)
            leaves = {"jazz": RawPeer("leaf"), "blues": RawPeer("leaf"), "rock": RawPeer("leaf")}
            for word, leaf in leaves.items():
                await leaf.connect(node)
                send_table(leaf, [f"{word} live.mp3"])
            await wait_for(
                lambda: sum(st.matcher is not None for st in node.router._peers.values()) == 3,
                what="the leaves' QRP tables",
            )
            g = {name: new_guid() for name in ("jazz", "blues", "spent", "none", "live")}
            stream = [
                raw_msg(g["jazz"], MSG_QUERY, 3, 1, qpayload("JAZZ")),
                raw_msg(g["blues"], MSG_QUERY, 2, 1, qpayload("blues, live")),
                # Spent here (TTL 1 hops 4): matching leaves only, with TTL 1.
                raw_msg(g["spent"], MSG_QUERY, 1, 4, qpayload("rock")),
                raw_msg(g["none"], MSG_QUERY, 3, 1, qpayload("polka")),
                raw_msg(g["live"], MSG_QUERY, 3, 0, qpayload("live")),
            ]
            src.send(b"".join(stream))
            await wait_for(lambda: len(other.of_type(MSG_QUERY)) == 4, what="relayed copies")
            await wait_for(
                lambda: all(leaf.of_type(MSG_QUERY) for leaf in leaves.values()), what="leaf copies"
            )
            got = {
                w: [(m.guid, m.ttl, m.hops) for m in leaf.of_type(MSG_QUERY)] for w, leaf in leaves.items()
            }
            assert got == {
                "jazz": [(g["jazz"], 2, 2), (g["live"], 2, 1)],
                "blues": [(g["blues"], 1, 2), (g["live"], 2, 1)],
                "rock": [(g["spent"], 1, 5), (g["live"], 2, 1)],
            }
            assert [m.guid for m in other.of_type(MSG_QUERY)] == [g["jazz"], g["blues"], g["none"], g["live"]]
            # All five were settled in C (taken before anything folds them into the Router's counters):
            # received, copies, new queries, duplicates, own echoes, flow-control drops, QRP skips,
            # duplicates relayed again, refused takeovers.
            assert node.router.core.take_counts() == (5, 10, 5, 0, 0, 0, 2 + 2 + 2 + 3, 0, 0)
            assert node.stats()["sent"]["QUERY"] == 4 + 6
        finally:
            await node.stop()

    loops.run(go(), loop)


# --- duplicates with a higher TTL, on real sockets --------------------------------------------------


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_holder_three_hops_away_found_when_the_long_way_arrived_first(tmp_path, loop):
    """Querier Q has two links: to X (the long way, Q-X-Y-A) and to A (the short way, Q-A-B-T).
    Its TTL 4 query reaches A first the long way (TTL 2 left: A relays it with 1, so B cannot go
    on to T), then the direct copy arrives with TTL 4. A relays that copy again with TTL 3; B, whose
    first copy came from A too, takes the higher-TTL copy on the same link as genuine and relays it
    to T, 3 hops from Q, which answers. The hit goes back the short way (T-B-A-Q): its TTL (hops + 2)
    would not last the first route (T-B-A-Y-X-Q, 5 hops). With duplicates always dropped (the rule
    before), T never saw the query."""

    async def go():
        x, y, a, b = [await start_node(tmp_path, name) for name in ("x", "y", "a", "b")]
        t = await start_node(tmp_path, "t", files={"needle in a haystack.txt": b"n" * 100})
        nodes = (x, y, a, b, t)
        try:
            for u, v in ((x, y), (y, a), (a, b), (b, t)):
                await link(u, v)
            q_long, q_short = RawPeer(), RawPeer()
            await q_long.connect(x)
            await q_short.connect(a)
            guid = new_guid()
            payload = messages.Query(text="needle").encode()
            q_long.send(raw_msg(guid, MSG_QUERY, 4, 0, payload))
            await wait_for(lambda: b.router.received[MSG_QUERY] == 1, what="the long-way copy at B")
            assert t.router.received[MSG_QUERY] == 0  # TTL spent at B: T is out of reach so far
            q_short.send(raw_msg(guid, MSG_QUERY, 4, 0, payload))
            await wait_for(lambda: q_short.of_type(MSG_QUERYHIT), what="T's hit, back the short way")
            hits = q_short.of_type(MSG_QUERYHIT)
            assert [m.guid for m in hits] == [guid] and hits[0].hops == 2
            assert messages.QueryHit.decode(hits[0].payload).servent_guid == t.servent_guid
            assert a.router.dup_ttl_relays == 1 and b.router.dup_ttl_relays == 1
            assert t.router.received[MSG_QUERY] == 1 and t.events["queries_answered"] == 1
            # Relayed again, answered once: nobody handled a copy twice.
            assert all(n.router.local[MSG_QUERY] == 1 for n in nodes)
            assert not q_long.of_type(MSG_QUERYHIT) and not any(n.router.drops for n in (a, b, t))
            # B's same-link copy was no replay: nothing held against A's link.
            assert all(p.dups_resent == 0 for p in b.peers.values())
        finally:
            for n in nodes:
                await n.stop()

    loops.run(go(), loop)


def test_same_link_resends_count_as_replays_unless_they_take_the_route_over(tmp_path):
    async def go():
        node = await start_node(tmp_path, "n")
        try:
            src, a = RawPeer(), RawPeer()
            for p in (src, a):
                await p.connect(node)
            guid = new_guid()
            # TTL 1 .. 7 at hops 6 .. 0 (hops + TTL 7): each copy is one hop shorter and beats the last
            # relay TTL (0, then 1 .. 6), no replay; TTL 8 at hops 0 clamps to relay TTL 6 again:
            # the first replay.
            src.send(b"".join(raw_msg(guid, MSG_QUERY, ttl, 7 - ttl, qpayload("omega")) for ttl in range(1, 8))
                     + raw_msg(guid, MSG_QUERY, 8, 0, qpayload("omega")))
            await wait_for(lambda: len(a.of_type(MSG_QUERY)) == 6, what="six shorter-path copies")
            assert [m.ttl for m in a.of_type(MSG_QUERY)] == [1, 2, 3, 4, 5, 6]
            assert node.router.dup_ttl_relays == 6 and node.router.drops == {DropReason.DUPLICATE: 1}
            assert node.router.takeovers_refused == 0
            # From there on every resend is a replay: BYE 401 after DUP_RESENT_MAX of them.
            src.send(raw_msg(guid, MSG_QUERY, 7, 0, qpayload("omega")) * 60)
            await wait_for(lambda: src.closed, what="BYE for a replayer")
            await asyncio.sleep(0)
            assert node.events["bye_duplicates"] == 1 and len(a.of_type(MSG_QUERY)) == 6
        finally:
            await node.stop()

    loops.run(go(), "asyncio")


def test_node_slot_lists_follow_the_core_through_link_churn(run, tmp_path):
    """Links leave from the middle: the node's per-slot lists move exactly as the core's slots do,
    and relayed queries still reach every remaining link (and only them)."""

    async def go():
        node = await start_node(tmp_path, "hub", max_peers=16)
        raws = []
        try:
            for _ in range(6):
                r = RawPeer(deflate=False)
                await r.connect(node)
                raws.append(r)
            await wait_for(lambda: len(node._slot_peers) == 6, what="six slots")

            def consistent() -> bool:
                ids = list(node.router.core.slot_ids)
                return (
                    [p.id for p in node._slot_peers] == ids
                    and all(b is p.outbuf for b, p in zip(node._slot_bufs, node._slot_peers, strict=True))
                    and all(p.slot == k for k, p in enumerate(node._slot_peers))
                    and len(node._slot_bases) == len(ids)
                )

            assert consistent()
            for k in (1, 3):
                await raws[k].close()
            await wait_for(lambda: len(node._slot_peers) == 4, what="two links gone")
            assert consistent()
            extra = RawPeer(deflate=False)
            await extra.connect(node)
            await wait_for(lambda: len(node._slot_peers) == 5, what="a new link")
            assert consistent()
            live = [raws[0], raws[2], raws[4], raws[5], extra]
            guid = new_guid()
            live[0].send(raw_msg(guid, MSG_QUERY, 3, 0, qpayload("churny words")))
            await wait_for(
                lambda: all(any(m.guid == guid for m in r.of_type(MSG_QUERY)) for r in live[1:]),
                what="the query at every remaining link",
            )
            assert not any(m.guid == guid for m in live[0].of_type(MSG_QUERY))
            raws = live
        finally:
            for r in raws:
                await r.close()
            await node.stop()

    run(go)
