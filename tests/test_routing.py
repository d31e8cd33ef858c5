"""Tests for gnut.protocol.routing: rule tables per mode, reverse routes, bounds, and routing properties."""

from __future__ import annotations

import struct

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from gnut.constants import (
    HARD_TTL_LIMIT,
    MAX_QUERY_DISCONNECT,
    MAX_QUERY_RELAY,
    MSG_BYE,
    MSG_PING,
    MSG_PONG,
    MSG_PUSH,
    MSG_QRP,
    MSG_QUERY,
    MSG_QUERYHIT,
    MSG_VENDOR,
    MSG_VENDOR_STD,
    ROUTE_TAKEOVER_BURST,
    ROUTE_TAKEOVERS_PER_MINUTE,
    SOFT_TTL_LIMIT,
)
from gnut.errors import LocalProtocolError
from gnut.fastpath import Message
from gnut.protocol.routing import (
    BYE_LEAF_RELAYED,
    Action,
    DropReason,
    PeerRole,
    RouteDecision,
    Router,
    RouteTable,
    check_query_size,
    check_ttl,
    effective_ttl,
    query_words,
    relay_ttl,
)

UP, LEAF, FLOOD = PeerRole.ULTRAPEER, PeerRole.LEAF, PeerRole.FLOOD
SERVENT = bytes(range(16))  # our own servent GUID
OTHER_SERVENT = bytes(range(100, 116))


class WordSet:
    """A tiny QRP matcher: matches when every query word is in its set (the QRP rule)."""

    def __init__(self, *words: str) -> None:
        self.words = set(words)
        self.calls = 0

    def matches(self, words) -> bool:
        self.calls += 1
        words = list(words)
        return bool(words) and all(w in self.words for w in words)


def guid(n: int) -> bytes:
    return bytes([n]) * 15 + b"\x00"


def message(mtype: int, ttl: int, hops: int, payload: bytes = b"", g: bytes | None = None) -> Message:
    header = (g if g is not None else guid(1)) + bytes([mtype, ttl, hops]) + struct.pack("<I", len(payload))
    return Message(header + payload)


def query_payload(text: str) -> bytes:
    return b"\x00\x80" + text.encode() + b"\x00"


def hit_payload(servent: bytes) -> bytes:
    return bytes(11) + servent


def push_payload(target: bytes) -> bytes:
    return target + bytes(10)


PONG_PAYLOAD = bytes(14)


def make_router(mode: str, peers: dict[int, PeerRole], qrp: dict[int, WordSet] | None = None, **kw) -> Router:
    router = Router(mode, servent_guid=SERVENT, seed=1, **kw)
    for peer_id, role in peers.items():
        router.add_peer(peer_id, role)
    for peer_id, matcher in (qrp or {}).items():
        router.set_qrp(peer_id, matcher)
    return router


# Ultrapeer topology: 1, 2 ultrapeers without tables, 5 ultrapeer with a table {"bar"},
# 3 leaf with table {"foo"}, 4 leaf that never sent a table.
def ultrapeer_router(**kw) -> Router:
    return make_router(
        "ultrapeer", {1: UP, 2: UP, 3: LEAF, 4: LEAF, 5: UP}, {3: WordSet("foo"), 5: WordSet("bar")}, **kw
    )


def flood_router(**kw) -> Router:
    return make_router(
        "flood", {1: FLOOD, 2: FLOOD, 5: FLOOD, 3: LEAF}, {3: WordSet("foo"), 5: WordSet("bar")}, **kw
    )


def leaf_router(**kw) -> Router:
    return make_router("leaf", {1: UP, 2: UP}, **kw)


def assert_decision(d: RouteDecision, action, targets=(), reason=None, ttl=None):
    assert d.action is action
    assert sorted(d.targets) == sorted(targets)
    assert d.reason is reason
    if ttl is not None:
        assert d.ttl == ttl


# --- pure rule functions -------------------------------------------------------------


@pytest.mark.parametrize(
    "ttl, hops, effective, relayed, check",
    [
        (0, 0, 0, 0, DropReason.TTL_EXPIRED),
        (1, 0, 1, 0, None),
        (2, 0, 2, 1, None),
        (4, 0, 4, 3, None),
        (7, 0, 7, 6, None),
        (8, 0, 7, 6, None),  # clamped to the soft limit
        (5, 3, 4, 3, None),  # 5 + 3 > 7: clamped to 4
        (15, 0, 7, 6, None),  # at the hard limit: accepted, clamped
        (16, 0, 7, 6, DropReason.HOP_LIMIT),
        (8, 8, -1, 0, DropReason.HOP_LIMIT),
        (7, 8, -1, 0, None),  # 15: accepted, but no TTL left to relay
        (1, 14, -7, 0, None),
        (1, 6, 1, 0, None),
        (2, 5, 2, 1, None),
    ],
)
def test_ttl_rules(ttl, hops, effective, relayed, check):
    assert effective_ttl(ttl, hops) == effective
    assert relay_ttl(ttl, hops) == relayed
    assert check_ttl(ttl, hops) is check
    if relayed:
        assert relayed + hops + 1 <= SOFT_TTL_LIMIT


@pytest.mark.parametrize(
    "length, reason, disconnect",
    [
        (0, DropReason.MALFORMED, False),
        (2, DropReason.MALFORMED, False),
        (3, None, False),
        (MAX_QUERY_RELAY, None, False),
        (MAX_QUERY_RELAY + 1, DropReason.TOO_BIG_QUERY, False),
        (MAX_QUERY_DISCONNECT, DropReason.TOO_BIG_QUERY, False),
        (MAX_QUERY_DISCONNECT + 1, DropReason.OVERSIZED, True),
    ],
)
def test_query_size_rules(length, reason, disconnect):
    assert check_query_size(length) == (reason, disconnect)


def test_query_words_parses_text_between_flags_and_nul():
    words = query_words(b"\x00\x80Hello World\x00urn:sha1:ABCDEFGH\x1c\xc3junk")
    assert "hello" in words and "world" in words
    assert not any("urn" in w or "abcdefgh" in w for w in words)


@pytest.mark.parametrize(
    "payload",
    [b"\x00\x80", b"\x00\x80abc", b"\x00\x80\xff\xfe\x00", b"\x00\x80\x00", b"\x00\x80" + "é".encode()[:1]],
)
def test_query_words_never_raises(payload):
    assert isinstance(query_words(payload), list)


# --- QUERY tables per mode -------------------------------------------------------------

QUERY_ROWS = [
    # (router factory, sender, ttl, hops, text, action, targets, reason, relayed ttl)
    ("ultrapeer", 1, 4, 0, "foo", Action.FORWARD, (2, 5, 3), None, 3),
    ("ultrapeer", 1, 3, 1, "bar", Action.FORWARD, (2, 5), None, 2),
    ("ultrapeer", 1, 2, 1, "foo", Action.FORWARD, (2, 3), None, 1),  # last hop: 5's table says no
    ("ultrapeer", 1, 2, 1, "bar", Action.FORWARD, (2, 5), None, 1),
    ("ultrapeer", 1, 2, 1, "foo bar", Action.FORWARD, (2,), None, 1),  # all words must match
    ("ultrapeer", 1, 1, 3, "foo", Action.FORWARD, (3,), None, 1),  # spent here: matching leaves only
    ("ultrapeer", 1, 1, 3, "zzz", Action.LOCAL, (), None, 0),
    ("ultrapeer", 1, 2, 6, "foo", Action.FORWARD, (3,), None, 1),  # clamped to 1 at hops 6
    ("ultrapeer", 1, 3, 5, "foo", Action.FORWARD, (2, 3), None, 1),  # clamped to 2: last hop
    ("ultrapeer", 1, 1, 7, "foo", Action.LOCAL, (), None, 0),  # beyond the soft horizon
    ("ultrapeer", 1, 7, 3, "zzz", Action.FORWARD, (2, 5), None, 3),  # clamped 7+3 -> 4
    ("ultrapeer", 1, 1, 14, "foo", Action.LOCAL, (), None, 0),
    ("ultrapeer", 1, 8, 8, "foo", Action.DROP, (), DropReason.HOP_LIMIT, 0),
    ("ultrapeer", 1, 0, 0, "foo", Action.DROP, (), DropReason.TTL_EXPIRED, 0),
    ("ultrapeer", 3, 3, 0, "foo", Action.FORWARD, (1, 2, 5), None, 2),  # leaf's own query
    ("ultrapeer", 4, 3, 0, "foo", Action.FORWARD, (1, 2, 5, 3), None, 2),
    ("ultrapeer", 3, 3, 1, "foo", Action.DROP, (), DropReason.LEAF_RELAY, 0),
    ("flood", 1, 4, 0, "foo", Action.FORWARD, (2, 5, 3), None, 3),
    ("flood", 1, 2, 0, "foo", Action.FORWARD, (2, 5, 3), None, 1),  # no last-hop QRP when flooding
    ("flood", 1, 3, 0, "zzz", Action.FORWARD, (2, 5), None, 2),  # leaves still need a match
    ("flood", 5, 1, 0, "foo", Action.LOCAL, (), None, 0),
    ("flood", 1, 16, 0, "foo", Action.DROP, (), DropReason.HOP_LIMIT, 0),
    ("leaf", 1, 3, 2, "foo", Action.LOCAL, (), None, 0),  # a leaf never relays
    ("leaf", 2, 1, 0, "foo", Action.LOCAL, (), None, 0),
]
FACTORIES = {"ultrapeer": ultrapeer_router, "flood": flood_router, "leaf": leaf_router}


@pytest.mark.parametrize("mode, sender, ttl, hops, text, action, targets, reason, out_ttl", QUERY_ROWS)
def test_query_routing_table(mode, sender, ttl, hops, text, action, targets, reason, out_ttl):
    router = FACTORIES[mode]()
    d = router.route(sender, message(MSG_QUERY, ttl, hops, query_payload(text)), 0.0)
    assert_decision(d, action, targets, reason, out_ttl)
    assert d.local is (action is not Action.DROP)
    if reason is DropReason.LEAF_RELAY:
        assert d.disconnect and d.bye_code == BYE_LEAF_RELAYED == 414
    else:
        assert not d.disconnect
    if reason is not None:
        assert router.drops == {reason: 1}


@pytest.mark.parametrize(
    "length, reason, disconnect",
    [
        (MAX_QUERY_RELAY, None, False),
        (MAX_QUERY_RELAY + 1, DropReason.TOO_BIG_QUERY, False),
        (MAX_QUERY_DISCONNECT + 1, DropReason.OVERSIZED, True),
        (2, DropReason.MALFORMED, False),
    ],
)
def test_query_size_in_router(length, reason, disconnect):
    router = ultrapeer_router()
    payload = b"\x00\x80" + b"a" * (length - 3) + b"\x00" if length >= 3 else b"\x00\x80"[:length]
    assert len(payload) == length
    d = router.route(1, message(MSG_QUERY, 3, 0, payload), 0.0)
    assert d.reason is reason
    assert d.disconnect is disconnect
    assert d.action is (Action.FORWARD if reason is None else Action.DROP)


def test_route_query_targets_for_own_queries():
    up = ultrapeer_router()
    assert sorted(up.route_query_targets(None, ["foo"], 4)) == [1, 2, 3, 5]
    assert sorted(up.route_query_targets(None, ["foo"], 1)) == [1, 2, 3]
    assert sorted(up.route_query_targets(2, ["bar"], 1)) == [1, 5]
    assert sorted(up.route_query_targets(None, [], 3)) == [1, 2, 5]  # empty words match no leaf
    leaf = leaf_router()
    assert sorted(leaf.route_query_targets(None, ["foo"], 4)) == [1, 2]
    assert leaf.route_query_targets(1, ["foo"], 4) == ()


def test_qrp_skips_counted_and_words_parsed_lazily():
    flood = make_router("flood", {1: FLOOD, 2: FLOOD})
    matcher = WordSet("foo")
    flood.add_peer(3, LEAF)
    d = flood.route(1, message(MSG_QUERY, 3, 0, query_payload("foo")), 0.0)
    assert d.targets == (2,)  # leaf 3 has no table: nothing, and no word parsing needed
    flood.set_qrp(3, matcher)
    d = flood.route(1, message(MSG_QUERY, 3, 0, query_payload("nope"), guid(2)), 0.0)
    assert d.targets == (2,) and matcher.calls == 1 and flood.qrp_skips == 1
    flood.set_qrp(3, None)
    flood.route(1, message(MSG_QUERY, 3, 0, query_payload("foo"), guid(3)), 0.0)
    assert matcher.calls == 1


# --- duplicates and our own messages ------------------------------------------------------


def test_duplicate_broadcasts_dropped():
    router = ultrapeer_router()
    first = router.route(1, message(MSG_QUERY, 2, 1, query_payload("x")), 0.0)
    assert first.action is Action.FORWARD
    again = router.route(2, message(MSG_QUERY, 2, 1, query_payload("x")), 1.0)
    assert_decision(again, Action.DROP, (), DropReason.DUPLICATE)
    # Same GUID, different type: not a duplicate (key is (GUID, type)).
    assert router.route(1, message(MSG_PING, 1, 0), 1.0).action is Action.LOCAL
    assert router.route(2, message(MSG_PING, 1, 0), 1.0).reason is DropReason.DUPLICATE
    # A PING is answered, never relayed: a copy with more TTL is a duplicate all the same.
    assert router.route(5, message(MSG_PING, 7, 0), 1.0).reason is DropReason.DUPLICATE
    assert router.drops[DropReason.DUPLICATE] == 3 and router.dup_ttl_relays == 0


# (mode, first copy (sender, ttl, hops), duplicate (sender, ttl, hops), text, action, targets, reason, ttl)
DUP_ROWS = [
    # Relay TTL 3 beats the first copy's 1 at one hop less, same hops + TTL: relayed again to all but
    # its sender (leaf 3 matches "foo").
    ("ultrapeer", (1, 2, 2), (2, 3, 1), "foo", Action.FORWARD, (1, 5, 3), None, 2),
    ("ultrapeer", (1, 2, 1), (2, 3, 0), "bar", Action.FORWARD, (1, 5), None, 2),
    # A higher TTL at the same hops is no shorter path (the route thief's copy): refused.
    ("ultrapeer", (1, 2, 1), (2, 4, 1), "foo", Action.DROP, (), DropReason.DUPLICATE, 0),
    # Fewer hops but more hops + TTL than the first copy (not clamped): inconsistent, refused.
    ("ultrapeer", (1, 2, 1), (2, 5, 0), "foo", Action.DROP, (), DropReason.DUPLICATE, 0),
    ("ultrapeer", (1, 3, 1), (2, 3, 1), "foo", Action.DROP, (), DropReason.DUPLICATE, 0),  # equal
    ("ultrapeer", (1, 4, 0), (2, 2, 1), "foo", Action.DROP, (), DropReason.DUPLICATE, 0),  # lower
    # Compared after the soft-limit clamp: raw TTL 9 at hops 4 relays with 2, as the first copy did.
    ("ultrapeer", (1, 3, 2), (2, 9, 4), "foo", Action.DROP, (), DropReason.DUPLICATE, 0),
    ("ultrapeer", (1, 3, 3), (2, 7, 3), "foo", Action.DROP, (), DropReason.DUPLICATE, 0),  # same hops
    # The first copy was clamped (hops + TTL 8 >= 7): a copy with fewer hops may carry more.
    ("ultrapeer", (1, 4, 4), (2, 7, 2), "foo", Action.FORWARD, (1, 5, 3), None, 4),
    # The first copy was spent here (leaves only, relay TTL 0): a last-hop copy now goes on, QRP applied.
    ("ultrapeer", (1, 1, 3), (2, 2, 1), "foo", Action.FORWARD, (1, 3), None, 1),
    ("ultrapeer", (1, 1, 3), (2, 1, 1), "foo", Action.DROP, (), DropReason.DUPLICATE, 0),  # spent again
    # Resent on its first link with more TTL: an upstream that got the short-path copy late.
    ("ultrapeer", (1, 2, 1), (1, 3, 0), "foo", Action.FORWARD, (2, 5, 3), None, 2),
    ("ultrapeer", (1, 2, 1), (1, 4, 1), "foo", Action.DROP, (), DropReason.DUPLICATE, 0),
    ("ultrapeer", (1, 2, 1), (1, 2, 1), "foo", Action.DROP, (), DropReason.DUPLICATE, 0),
    ("ultrapeer", (1, 2, 1), (4, 4, 0), "foo", Action.DROP, (), DropReason.DUPLICATE, 0),  # from a leaf
    ("flood", (1, 2, 1), (2, 3, 0), "foo", Action.FORWARD, (1, 5, 3), None, 2),
    ("flood", (1, 2, 0), (2, 4, 0), "foo", Action.DROP, (), DropReason.DUPLICATE, 0),
    ("flood", (1, 2, 0), (2, 2, 0), "foo", Action.DROP, (), DropReason.DUPLICATE, 0),
    ("leaf", (1, 2, 1), (2, 4, 0), "foo", Action.DROP, (), DropReason.DUPLICATE, 0),  # a leaf never relays
]


@pytest.mark.parametrize("mode, first, dup, text, action, targets, reason, out_ttl", DUP_ROWS)
def test_duplicate_query_with_higher_relay_ttl_table(
    mode, first, dup, text, action, targets, reason, out_ttl
):
    router = FACTORIES[mode]()
    payload = query_payload(text)
    d1 = router.route(first[0], message(MSG_QUERY, first[1], first[2], payload), 0.0)
    assert d1.action is not Action.DROP and d1.local
    d = router.route(dup[0], message(MSG_QUERY, dup[1], dup[2], payload), 1.0)
    assert_decision(d, action, targets, reason, out_ttl)
    assert not d.local  # answered once, with the first copy
    assert not d.disconnect
    assert router.local[MSG_QUERY] == 1
    if action is Action.FORWARD:
        assert router.dup_ttl_relays == 1 and DropReason.DUPLICATE not in router.drops
        assert router.forwarded[MSG_QUERY] == len(d1.targets) + len(targets)
    else:
        assert router.dup_ttl_relays == 0 and router.drops == {DropReason.DUPLICATE: 1}
        # A higher relay TTL that could not take the route over is a refused takeover.
        higher = relay_ttl(dup[1], dup[2]) > relay_ttl(first[1], first[2])
        assert router.takeovers_refused == (1 if higher and mode != "leaf" and dup[0] != 4 else 0)
    # Replies go back the way of the copy with the most TTL (leaves keep no routes).
    route = dup[0] if action is Action.FORWARD else first[0]
    if mode != "leaf":
        assert router.first_sender(guid(1), MSG_QUERY, 2.0) == route
        hit = router.route(5, message(MSG_QUERYHIT, 3, 1, hit_payload(OTHER_SERVENT)), 2.0)
        assert hit.targets == (route,)


def test_each_duplicate_relay_must_raise_the_ttl_and_lower_the_hops_again():
    router = flood_router()
    payload = query_payload("zzz")
    router.route(1, message(MSG_QUERY, 1, 4, payload), 0.0)  # hops + TTL 5, relayed with 0 (spent)
    d = router.route(2, message(MSG_QUERY, 2, 3, payload), 1.0)  # one hop shorter: relay TTL 1 beats 0
    assert_decision(d, Action.FORWARD, (1, 5), None, 1)
    assert router.route(5, message(MSG_QUERY, 2, 3, payload), 1.0).reason is DropReason.DUPLICATE
    assert router.route(1, message(MSG_QUERY, 3, 3, payload), 1.0).reason is DropReason.DUPLICATE  # same hops
    d = router.route(5, message(MSG_QUERY, 4, 1, payload), 1.0)
    assert_decision(d, Action.FORWARD, (1, 2), None, 3)
    assert router.route(2, message(MSG_QUERY, 14, 0, payload), 1.0).reason is DropReason.DUPLICATE  # 14 > 5
    assert router.dup_ttl_relays == 2 and router.drops == {DropReason.DUPLICATE: 3}
    assert router.takeovers_refused == 2
    assert router.local[MSG_QUERY] == 1


def test_takeovers_per_peer_are_budgeted():
    """An honest takeover is a rare race between two paths: a peer gets ROUTE_TAKEOVER_BURST, then a trickle."""
    router = flood_router()
    payload = query_payload("zzz")
    taken = 0
    for k in range(ROUTE_TAKEOVER_BURST + 3):
        g = guid(100 + k)
        router.route(1, message(MSG_QUERY, 1, 3, payload, g), 0.0)
        taken += router.route(2, message(MSG_QUERY, 2, 2, payload, g), 0.0).action is Action.FORWARD
    assert taken == ROUTE_TAKEOVER_BURST and router.takeovers_refused == 3
    assert router.first_sender(guid(100), MSG_QUERY, 1.0) == 2
    assert router.first_sender(guid(100 + ROUTE_TAKEOVER_BURST), MSG_QUERY, 1.0) == 1
    # Another peer has its own budget; the first one's refills at ROUTE_TAKEOVERS_PER_MINUTE.
    g = guid(200)
    router.route(1, message(MSG_QUERY, 1, 3, payload, g), 0.0)
    assert router.route(5, message(MSG_QUERY, 2, 2, payload, g), 0.0).action is Action.FORWARD
    g = guid(201)
    router.route(1, message(MSG_QUERY, 1, 3, payload, g), 0.0)
    later = 60.0 / ROUTE_TAKEOVERS_PER_MINUTE
    assert router.route(2, message(MSG_QUERY, 2, 2, payload, g), later).action is Action.FORWARD


def test_leaf_and_own_query_routes_are_never_taken_over():
    router = ultrapeer_router()
    payload = query_payload("foo")
    router.route(3, message(MSG_QUERY, 3, 0, payload), 0.0)  # a leaf's query
    for sender, ttl, hops in ((1, 4, 0), (2, 7, 0), (1, 6, 0)):
        assert router.route(sender, message(MSG_QUERY, ttl, hops, payload), 1.0).reason is DropReason.DUPLICATE
    assert router.first_sender(guid(1), MSG_QUERY, 1.0) == 3
    router.register_own(guid(9), MSG_QUERY, 0.0)
    d = router.route(1, message(MSG_QUERY, 7, 0, payload, guid(9)), 1.0)
    assert d.reason is DropReason.OWN_MESSAGE


def test_duplicate_relay_with_no_target_is_no_drop_and_needs_a_live_record():
    lone = make_router("flood", {1: FLOOD})
    lone.route(1, message(MSG_QUERY, 1, 1, query_payload("x")), 0.0)  # spent: nobody to relay to
    d = lone.route(1, message(MSG_QUERY, 2, 0, query_payload("x")), 1.0)
    assert_decision(d, Action.FORWARD, (), None, 1)  # only its own sender to go to: no replay either
    assert not d.local and lone.dup_ttl_relays == 1 and not lone.drops
    # The reverse route (and the TTL it holds) ages out before the seen cache: a plain duplicate.
    router = flood_router(seen_max_age=100.0, route_max_age=5.0)
    router.route(1, message(MSG_QUERY, 2, 1, query_payload("x")), 0.0)
    d = router.route(2, message(MSG_QUERY, 3, 0, query_payload("x")), 6.0)
    assert_decision(d, Action.DROP, (), DropReason.DUPLICATE)


def test_own_query_echo_with_higher_ttl_is_still_own():
    router = ultrapeer_router()
    router.register_own(guid(9), MSG_QUERY, 0.0)
    d = router.route(1, message(MSG_QUERY, 7, 0, query_payload("x"), guid(9)), 1.0)
    assert_decision(d, Action.DROP, (), DropReason.OWN_MESSAGE)
    assert router.dup_ttl_relays == 0


def test_duplicate_cache_ages_out():
    router = ultrapeer_router(seen_max_age=10.0)
    assert router.route(1, message(MSG_QUERY, 3, 0, query_payload("x")), 0.0).action is Action.FORWARD
    assert router.route(1, message(MSG_QUERY, 3, 0, query_payload("x")), 9.0).reason is DropReason.DUPLICATE
    assert router.route(1, message(MSG_QUERY, 3, 0, query_payload("x")), 10.0).action is Action.FORWARD


@pytest.mark.parametrize("kind", [MSG_PING, MSG_QUERY])
def test_own_broadcast_echo_dropped(kind):
    router = ultrapeer_router()
    router.register_own(guid(9), kind, 0.0)
    payload = query_payload("x") if kind == MSG_QUERY else b""
    d = router.route(1, message(kind, 3, 2, payload, guid(9)), 1.0)
    assert_decision(d, Action.DROP, (), DropReason.OWN_MESSAGE)


def test_register_own_rejects_bad_arguments():
    router = ultrapeer_router()
    with pytest.raises(LocalProtocolError):
        router.register_own(guid(1), MSG_QUERYHIT, 0.0)
    with pytest.raises(LocalProtocolError):
        router.register_own(b"short", MSG_QUERY, 0.0)


# --- replies: QUERYHIT, PONG, PUSH ------------------------------------------------------


def test_queryhit_routes_back_and_learns_push_route():
    router = ultrapeer_router()
    router.route(1, message(MSG_QUERY, 4, 0, query_payload("x"), guid(7)), 0.0)
    d = router.route(2, message(MSG_QUERYHIT, 3, 1, hit_payload(OTHER_SERVENT), guid(7)), 1.0)
    assert_decision(d, Action.ROUTE_BACK, (1,), None, 2)
    assert not d.local
    assert router.push_route(OTHER_SERVENT, 1.0) == 2
    push = router.route(1, message(MSG_PUSH, 3, 0, push_payload(OTHER_SERVENT), guid(8)), 2.0)
    assert_decision(push, Action.ROUTE_BACK, (2,), None, 2)
    assert router.forwarded[MSG_QUERYHIT] == 1 and router.forwarded[MSG_PUSH] == 1


REPLY_ROWS = [
    # (type, ttl, hops, payload, registered as, action, targets, reason)
    (MSG_QUERYHIT, 3, 1, hit_payload(OTHER_SERVENT), "peer1", Action.ROUTE_BACK, (1,), None),
    (MSG_QUERYHIT, 3, 1, hit_payload(OTHER_SERVENT), "own", Action.LOCAL, (), None),
    (MSG_QUERYHIT, 3, 1, hit_payload(OTHER_SERVENT), "none", Action.DROP, (), DropReason.NO_ROUTE),
    (MSG_QUERYHIT, 3, 1, hit_payload(OTHER_SERVENT), "removed", Action.DROP, (), DropReason.NO_ROUTE),
    (MSG_QUERYHIT, 3, 1, hit_payload(OTHER_SERVENT), "reused", Action.DROP, (), DropReason.NO_ROUTE),
    (MSG_QUERYHIT, 1, 1, hit_payload(OTHER_SERVENT), "peer1", Action.DROP, (), DropReason.TTL_EXPIRED),
    (MSG_QUERYHIT, 1, 1, hit_payload(OTHER_SERVENT), "own", Action.LOCAL, (), None),
    (MSG_QUERYHIT, 0, 1, hit_payload(OTHER_SERVENT), "own", Action.DROP, (), DropReason.TTL_EXPIRED),
    (MSG_QUERYHIT, 3, 1, bytes(26), "peer1", Action.DROP, (), DropReason.MALFORMED),
    (MSG_PONG, 3, 1, PONG_PAYLOAD, "peer1", Action.ROUTE_BACK, (1,), None),
    (MSG_PONG, 3, 1, PONG_PAYLOAD, "own", Action.LOCAL, (), None),
    (MSG_PONG, 1, 0, PONG_PAYLOAD, "none", Action.LOCAL, (), None),  # neighbour's own pong
    # A pong that cannot be relayed is still host info: LOCAL, with the relay drop counted.
    (MSG_PONG, 3, 1, PONG_PAYLOAD, "none", Action.LOCAL, (), DropReason.NO_ROUTE),
    (MSG_PONG, 3, 1, PONG_PAYLOAD, "removed", Action.LOCAL, (), DropReason.NO_ROUTE),
    (MSG_PONG, 1, 2, PONG_PAYLOAD, "peer1", Action.LOCAL, (), DropReason.TTL_EXPIRED),
    (MSG_PONG, 3, 1, bytes(13), "peer1", Action.DROP, (), DropReason.MALFORMED),
]


@pytest.mark.parametrize("mtype, ttl, hops, payload, registered, action, targets, reason", REPLY_ROWS)
def test_reply_routing_table(mtype, ttl, hops, payload, registered, action, targets, reason):
    router = ultrapeer_router()
    g = guid(7)
    kind = MSG_QUERY if mtype == MSG_QUERYHIT else MSG_PING
    if registered == "own":
        router.register_own(g, kind, 0.0)
    elif registered != "none":
        router.route(1, message(kind, 1, 0, query_payload("x") if kind == MSG_QUERY else b"", g), 0.0)
        if registered in ("removed", "reused"):
            router.remove_peer(1)
        if registered == "reused":
            router.add_peer(1, UP)  # same id, new connection: old routes must not apply
    d = router.route(2, message(mtype, ttl, hops, payload, g), 1.0)
    assert_decision(d, action, targets, reason)
    # Pongs always carry host info for the node; hits are local only when the query was ours.
    assert d.local is (mtype == MSG_PONG and reason is not DropReason.MALFORMED or action is Action.LOCAL)
    assert router.drops == ({reason: 1} if reason else {})


PUSH_ROWS = [
    # (target, learned from a hit via peer 2, remove peer 2, ttl, hops, payload len, action, targets, reason)
    (OTHER_SERVENT, True, False, 3, 0, 26, Action.ROUTE_BACK, (2,), None),
    (SERVENT, False, False, 3, 2, 26, Action.LOCAL, (), None),
    (OTHER_SERVENT, False, False, 3, 0, 26, Action.DROP, (), DropReason.NO_ROUTE),
    (OTHER_SERVENT, True, True, 3, 0, 26, Action.DROP, (), DropReason.NO_ROUTE),
    (OTHER_SERVENT, True, False, 1, 0, 26, Action.DROP, (), DropReason.TTL_EXPIRED),
    (OTHER_SERVENT, True, False, 3, 0, 25, Action.DROP, (), DropReason.MALFORMED),
]


@pytest.mark.parametrize("target, learned, removed, ttl, hops, length, action, targets, reason", PUSH_ROWS)
def test_push_routing_table(target, learned, removed, ttl, hops, length, action, targets, reason):
    router = ultrapeer_router()
    if learned:  # a hit routed back for a query peer 1 relayed to us
        router.route(1, message(MSG_QUERY, 3, 0, query_payload("x"), guid(5)), 0.0)
        assert router.route(2, message(MSG_QUERYHIT, 3, 0, hit_payload(target), guid(5)), 0.0).targets == (1,)
    if removed:
        router.remove_peer(2)
        assert router.push_route(target, 0.5) is None
    d = router.route(1, message(MSG_PUSH, ttl, hops, push_payload(target)[:length], guid(6)), 1.0)
    assert_decision(d, action, targets, reason)


def test_hits_carrying_our_servent_guid_teach_no_push_route():
    router = ultrapeer_router()
    router.route(1, message(MSG_QUERY, 3, 0, query_payload("x"), guid(5)), 0.0)
    router.route(2, message(MSG_QUERYHIT, 3, 0, hit_payload(SERVENT), guid(5)), 0.0)
    assert router.push_route(SERVENT, 0.0) is None


@pytest.mark.parametrize("why", ["no_route", "route_loop", "ttl", "gone"])
def test_hits_we_did_not_route_teach_no_push_route(why):
    """A PUSH route is learned only from a hit we accepted and routed: an unsolicited hit (no
    reverse route), one sent back along its own route, one out of TTL or one for a peer that left
    would let anyone point PUSHes for any servent at itself."""
    router = ultrapeer_router()
    router.route(1, message(MSG_QUERY, 3, 0, query_payload("x"), guid(5)), 0.0)
    sender, ttl, g = {"no_route": (2, 3, guid(6)), "route_loop": (1, 3, guid(5)), "ttl": (2, 1, guid(5)),
                      "gone": (2, 3, guid(5))}[why]
    if why == "gone":
        router.remove_peer(1)
    d = router.route(sender, message(MSG_QUERYHIT, ttl, 1, hit_payload(OTHER_SERVENT), g), 0.0)
    assert d.action is Action.DROP
    assert router.push_route(OTHER_SERVENT, 0.0) is None
    d = router.route(5, message(MSG_PUSH, 3, 0, push_payload(OTHER_SERVENT), guid(8)), 0.0)
    assert d.reason is DropReason.NO_ROUTE


def test_leaf_mode_replies():
    router = leaf_router()
    router.register_own(guid(1), MSG_QUERY, 0.0)
    d = router.route(1, message(MSG_QUERYHIT, 3, 2, hit_payload(OTHER_SERVENT), guid(1)), 1.0)
    assert_decision(d, Action.LOCAL)
    assert router.push_route(OTHER_SERVENT, 1.0) == 1  # for our own downloads
    # A query answered locally leaves no route: a hit for it is not relayed by a leaf.
    router.route(1, message(MSG_QUERY, 3, 1, query_payload("x"), guid(2)), 1.0)
    d = router.route(2, message(MSG_QUERYHIT, 3, 1, hit_payload(OTHER_SERVENT), guid(2)), 2.0)
    assert_decision(d, Action.DROP, (), DropReason.NO_ROUTE)
    push = router.route(2, message(MSG_PUSH, 3, 1, push_payload(OTHER_SERVENT), guid(3)), 2.0)
    assert_decision(push, Action.DROP, (), DropReason.NO_ROUTE)
    # Pings are answered, not recorded.
    assert router.route(2, message(MSG_PING, 1, 0, b"", guid(4)), 2.0).action is Action.LOCAL
    pong = router.route(1, message(MSG_PONG, 3, 1, PONG_PAYLOAD, guid(4)), 2.0)
    assert_decision(pong, Action.LOCAL, (), DropReason.NO_ROUTE)


# --- PING and link-level messages --------------------------------------------------------


@pytest.mark.parametrize("mode", ["flood", "ultrapeer", "leaf"])
@pytest.mark.parametrize("ttl, hops", [(1, 0), (2, 0), (7, 0), (3, 2)])
def test_pings_are_answered_not_flooded(mode, ttl, hops):
    router = FACTORIES[mode]()
    d = router.route(1, message(MSG_PING, ttl, hops), 0.0)
    assert_decision(d, Action.LOCAL)
    assert d.local and d.ttl == 0
    assert router.local[MSG_PING] == 1


LINK_ROWS = [
    # (type, sender, hops, action, reason)
    (MSG_BYE, 1, 0, Action.LOCAL, None),
    (MSG_BYE, 1, 1, Action.DROP, DropReason.HOPS_NONZERO),
    (MSG_QRP, 3, 0, Action.LOCAL, None),
    (MSG_QRP, 1, 2, Action.DROP, DropReason.HOPS_NONZERO),
    (MSG_VENDOR, 1, 0, Action.LOCAL, None),
    (MSG_VENDOR, 1, 1, Action.DROP, DropReason.HOPS_NONZERO),
    (MSG_VENDOR_STD, 4, 0, Action.LOCAL, None),
    (MSG_VENDOR_STD, 2, 3, Action.DROP, DropReason.HOPS_NONZERO),
    (0x99, 1, 0, Action.DROP, DropReason.UNKNOWN_TYPE),
    (0x03, 2, 1, Action.DROP, DropReason.UNKNOWN_TYPE),
]


@pytest.mark.parametrize("mtype, sender, hops, action, reason", LINK_ROWS)
def test_link_messages_table(mtype, sender, hops, action, reason):
    router = ultrapeer_router()
    d = router.route(sender, message(mtype, 1, hops, b"\x01\x02"), 0.0)
    assert_decision(d, action, (), reason)
    assert router.received[mtype] == 1


@pytest.mark.parametrize(
    "mtype, payload",
    [
        (MSG_PING, b""),
        (MSG_PONG, PONG_PAYLOAD),
        (MSG_QUERY, query_payload("foo")),
        (MSG_QUERYHIT, hit_payload(OTHER_SERVENT)),
        (MSG_PUSH, push_payload(OTHER_SERVENT)),
        (MSG_BYE, b"\xc8\x00bye\x00"),
        (MSG_QRP, b"\x00"),
        (MSG_VENDOR, b""),
        (0x99, b""),
    ],
)
def test_anything_relayed_by_a_leaf_costs_the_link(mtype, payload):
    router = ultrapeer_router()
    d = router.route(3, message(mtype, 2, 1, payload), 0.0)
    assert_decision(d, Action.DROP, (), DropReason.LEAF_RELAY)
    assert d.disconnect and d.bye_code == 414
    assert router.drops[DropReason.LEAF_RELAY] == 1


# --- route tables: capacity, ageing, peers -------------------------------------------------


def test_route_table_capacity_evicts_oldest_and_reput_refreshes():
    table = RouteTable(2, 100.0)
    table.put(guid(1), 1, 1, 0.0)
    table.put(guid(2), 2, 1, 1.0)
    table.put(guid(1), 3, 1, 2.0)  # re-put moves guid 1 to the newest end
    table.put(guid(3), 4, 1, 3.0)  # evicts guid 2, the oldest
    assert len(table) == 2
    assert table.get(guid(2), 3.0) is None
    assert table.get(guid(1), 3.0) == (3, 1)
    assert table.get(guid(3), 3.0) == (4, 1)


def test_route_table_ageing():
    table = RouteTable(10, 5.0)
    table.put(guid(1), 1, 1, 0.0)
    table.put(guid(2), 2, 1, 3.0)
    assert table.get(guid(1), 4.999) == (1, 1)
    assert table.get(guid(1), 5.0) is None
    table.put(guid(3), 3, 1, 8.0)  # prunes guid 2 (aged 5) from the front
    assert len(table) == 1
    with pytest.raises(LocalProtocolError):
        RouteTable(0, 1.0)
    with pytest.raises(LocalProtocolError):
        RouteTable(1, 0.0)


def test_route_table_reroute():
    from gnut.protocol.routerules import TAKEOVER_NONE, TAKEOVER_OK, TAKEOVER_REFUSED

    table = RouteTable(10, 5.0)
    table.put(guid(1), 1, 1, 0.0, 2, 3, 6)  # relay TTL 2 from a copy at hops 3, hops + TTL 6
    assert table.reroute(guid(1), 2, 7, 2, 1.0, 2, 6) == TAKEOVER_NONE  # no higher TTL
    assert table.reroute(guid(1), 2, 7, 3, 1.0, 3, 7) == TAKEOVER_REFUSED  # same hops
    assert table.reroute(guid(1), 2, 7, 3, 1.0, 2, 7) == TAKEOVER_REFUSED  # hops + TTL grew (not clamped)
    assert table.reroute(guid(1), 2, 7, 3, 1.0, 2, 6, allow=False) == TAKEOVER_REFUSED  # no budget
    assert table.get(guid(1), 1.0) == (1, 1)
    assert table.reroute(guid(1), 2, 7, 3, 1.0, 2, 6) == TAKEOVER_OK
    assert table.reroute(guid(1), 3, 8, 3, 1.0, 1, 6) == TAKEOVER_NONE
    assert table.get(guid(1), 1.0) == (2, 7)
    assert table.reroute(guid(2), 2, 7, 4, 1.0, 0, 6) == TAKEOVER_NONE  # unknown
    assert table.reroute(guid(1), 2, 7, 6, 5.0, 0, 6) == TAKEOVER_NONE  # aged out (no refresh)
    assert len(table) == 0
    table.put(guid(3), 4, 1, 6.0, 3)  # hops 0: ours or a leaf's, never taken over
    assert table.reroute(guid(3), 2, 7, 6, 6.0, 0, 7) == TAKEOVER_REFUSED


def test_router_route_capacity_and_age():
    router = ultrapeer_router(route_capacity=2, route_max_age=30.0)
    for n in (1, 2, 3):
        router.route(1, message(MSG_QUERY, 3, 0, query_payload("x"), guid(n)), float(n))
    hit = hit_payload(OTHER_SERVENT)
    assert router.route(2, message(MSG_QUERYHIT, 3, 0, hit, guid(1)), 4.0).reason is DropReason.NO_ROUTE
    assert router.route(2, message(MSG_QUERYHIT, 3, 0, hit, guid(2)), 4.0).action is Action.ROUTE_BACK
    assert router.route(2, message(MSG_QUERYHIT, 3, 0, hit, guid(3)), 33.0).reason is DropReason.NO_ROUTE


def test_peer_management_errors():
    with pytest.raises(LocalProtocolError):
        Router("mesh", servent_guid=SERVENT)
    with pytest.raises(LocalProtocolError):
        Router("flood", servent_guid=b"x")
    router = leaf_router()
    with pytest.raises(LocalProtocolError):
        router.add_peer(1, UP)
    with pytest.raises(LocalProtocolError):
        router.add_peer(-1, UP)
    with pytest.raises(LocalProtocolError):
        router.set_qrp(9, WordSet("x"))
    with pytest.raises(LocalProtocolError):
        router.route(9, message(MSG_PING, 1, 0), 0.0)
    router.remove_peer(9)  # unknown: ignored
    router.remove_peer(1)
    assert router.peer_role(1) is None and router.peer_role(2) is UP


def test_counters():
    router = ultrapeer_router()
    router.route(1, message(MSG_QUERY, 4, 0, query_payload("foo"), guid(1)), 0.0)
    router.route(2, message(MSG_QUERY, 4, 0, query_payload("foo"), guid(1)), 0.0)
    router.route(1, message(MSG_PING, 0, 0, b"", guid(2)), 0.0)
    router.count_drop(DropReason.FLOW_CONTROL)
    assert router.received == {MSG_QUERY: 2, MSG_PING: 1}
    assert router.forwarded == {MSG_QUERY: 3}
    assert router.local == {MSG_QUERY: 1}
    assert router.drops == {DropReason.DUPLICATE: 1, DropReason.TTL_EXPIRED: 1, DropReason.FLOW_CONTROL: 1}
    assert router.qrp_skips == 0


# --- property: never back to the sender, never to a leaf without a matching table ----------

WORDS = ["foo", "bar", "baz"]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 7), st.sampled_from(list(PeerRole))),
        st.tuples(st.just("remove"), st.integers(0, 7)),
        st.tuples(st.just("qrp"), st.integers(0, 7), st.none() | st.sets(st.sampled_from(WORDS))),
        st.tuples(
            st.just("query"),
            st.integers(0, 7),
            st.integers(1, 4) | st.integers(0, HARD_TTL_LIMIT + 1),
            st.integers(0, 2) | st.integers(0, 9),
            st.lists(st.sampled_from(WORDS), max_size=3),
            st.integers(0, 3),
        ),
        st.tuples(
            st.just("reply"),
            st.integers(0, 7),
            st.sampled_from([MSG_QUERYHIT, MSG_PONG, MSG_PUSH]),
            st.integers(0, 3),
        ),
    ),
    max_size=40,
)


initial_peers = st.dictionaries(
    st.integers(0, 7),
    st.tuples(st.sampled_from(list(PeerRole)), st.none() | st.sets(st.sampled_from(WORDS))),
    min_size=2,
)


@settings(max_examples=500, deadline=None)
@given(mode=st.sampled_from(["flood", "ultrapeer", "leaf"]), peers=initial_peers, script=ops)
def test_property_no_echo_and_leaves_only_on_match(mode, peers, script):
    router = Router(mode, servent_guid=SERVENT, seed=3)
    live: dict[int, PeerRole] = {}
    tables: dict[int, WordSet | None] = {}
    for peer_id, (role, table) in peers.items():
        router.add_peer(peer_id, role)
        live[peer_id] = role
        tables[peer_id] = None if table is None else WordSet(*table)
        router.set_qrp(peer_id, tables[peer_id])

    def check_targets(targets, sender, words):
        assert sender not in targets
        assert len(set(targets)) == len(targets)
        for t in targets:
            assert t in live
            if live[t] is LEAF:
                assert tables[t] is not None and tables[t].matches(words)

    now = 0.0
    for op in script:
        now += 1.0
        if op[0] == "add" and op[1] not in live:
            router.add_peer(op[1], op[2])
            live[op[1]], tables[op[1]] = op[2], None
        elif op[0] == "remove":
            router.remove_peer(op[1])
            live.pop(op[1], None)
        elif op[0] == "qrp" and op[1] in live:
            tables[op[1]] = None if op[2] is None else WordSet(*op[2])
            router.set_qrp(op[1], tables[op[1]])
        elif op[0] == "query" and live:
            _, pick, ttl, hops, words, g = op
            sender = sorted(live)[pick % len(live)]
            d = router.route(
                sender, message(MSG_QUERY, ttl, hops, query_payload(" ".join(words)), guid(g)), now
            )
            check_targets(d.targets, sender, words)
            event(f"query {d.action.name} {d.reason} to leaves={any(live[t] is LEAF for t in d.targets)}")
            if d.targets:
                # Only a query spent here goes on, to leaves alone, beyond the soft horizon.
                leaves_only = all(live[t] is LEAF for t in d.targets)
                assert 1 <= d.ttl and (d.ttl + hops + 1 <= SOFT_TTL_LIMIT or (leaves_only and d.ttl == 1))
            check_targets(router.route_query_targets(None, words, 1 + g % 4), None, words)
        elif op[0] == "reply" and live:
            _, pick, mtype, g = op
            sender = sorted(live)[pick % len(live)]
            payload = {MSG_QUERYHIT: hit_payload(OTHER_SERVENT), MSG_PONG: PONG_PAYLOAD}.get(
                mtype, push_payload(OTHER_SERVENT)
            )
            d = router.route(sender, message(mtype, 3, 1, payload, guid(g)), now)
            event(f"reply {d.action.name}")
            assert sender not in d.targets
            for t in d.targets:
                assert t in live


@pytest.mark.parametrize("mtype", [MSG_QUERYHIT, MSG_PONG, MSG_PUSH])
def test_reply_never_routed_back_to_its_sender(mtype):
    router = ultrapeer_router()
    router.route(1, message(MSG_QUERY, 3, 0, query_payload("x"), guid(7)), 0.0)
    router.route(1, message(MSG_PING, 3, 0, b"", guid(7)), 0.0)
    router.route(2, message(MSG_QUERY, 3, 0, query_payload("y"), guid(6)), 0.0)
    router.route(1, message(MSG_QUERYHIT, 3, 1, hit_payload(OTHER_SERVENT), guid(6)), 0.0)  # routed to 2
    payload = {MSG_QUERYHIT: hit_payload(OTHER_SERVENT), MSG_PONG: PONG_PAYLOAD}.get(
        mtype, push_payload(OTHER_SERVENT)
    )
    d = router.route(1, message(mtype, 3, 1, payload, guid(7)), 1.0)
    assert_decision(d, Action.LOCAL if mtype == MSG_PONG else Action.DROP, (), DropReason.ROUTE_LOOP)


URN = "urn:sha1:PLSTHIPQGSSZTS5FJUPAKUZWUGYQYPFB"


def test_real_qrp_tables_as_matchers():
    from gnut.protocol.messages import Query
    from gnut.protocol.qrp import QrpTable

    small, big = QrpTable(14), QrpTable(16)  # different sizes: hashes are rescaled per table
    small.add_words(["hello", "world"])
    big.add_words(["music", URN])
    router = make_router("ultrapeer", {1: UP, 2: UP, 3: LEAF, 4: LEAF}, {3: small, 4: big, 2: big})
    rows = [
        # (search text, urns, relayed ttl, targets)
        ("Hello World", (), 3, (2, 3)),
        ("hello there", (), 3, (2,)),
        ("music", (), 3, (2, 4)),
        ("", (URN,), 3, (2, 4)),  # a URN-only query reaches the leaf sharing that file
        ("hello", (), 1, (3,)),  # last hop: ultrapeer 2's table does not match
        ("music", (), 1, (2, 4)),
    ]
    for n, (text, urns, out_ttl, targets) in enumerate(rows):
        payload = Query(text, urns=urns).encode()
        d = router.route(1, message(MSG_QUERY, out_ttl + 1, 0, payload, guid(n + 1)), 0.0)
        assert sorted(d.targets) == sorted(targets), (text, urns)
        assert d.ttl == out_ttl


def test_query_terms_with_bad_extensions_keep_the_text_words():
    words = query_words(b"\x00\x80hello music\x00\xc3\xff\xff")
    assert words == ["hello", "music"]


@settings(max_examples=400, deadline=None)
@given(
    body=st.binary(max_size=MAX_QUERY_RELAY - 2)
    | st.lists(st.sampled_from([b"\x00", b"\x1c", b"\xc3", b"urn:sha1:", b"hello", b"\xff", b"\x82"])).map(
        b"".join
    ),
    ttl=st.integers(0, 9),
)
def test_any_query_payload_gets_a_decision(body, ttl):
    from gnut.protocol.qrp import QrpTable

    table = QrpTable(12)
    table.add_words(["hello"])
    router = make_router("ultrapeer", {1: UP, 2: UP, 3: LEAF}, {2: WordSet("hello"), 3: table})
    payload = (b"\x00\x80" + body)[:MAX_QUERY_RELAY]
    d = router.route(1, message(MSG_QUERY, ttl, 0, payload), 0.0)
    assert isinstance(d.action, Action)
    assert 1 not in d.targets
    assert isinstance(query_words(payload), list)
