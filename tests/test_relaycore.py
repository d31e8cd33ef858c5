"""Tests for the whole-chunk relay core (RouteMap, RelayCore): against RouteTable and Router.route, and in a node."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nethelpers import RawPeer, start_node, wait_for

from gnut import loops, messages
from gnut.constants import (
    MSG_BYE,
    MSG_PING,
    MSG_PONG,
    MSG_QUERY,
    MSG_QUERYHIT,
)
from gnut.errors import LocalProtocolError
from gnut.guid import new_guid
from gnut.qrp import QrpTable
from gnut.routing import DropReason, PeerRole, Router, RouteTable
from gnut.share import ShareIndex

SERVENT = bytes(range(16))
SEED = 12345
# Small water marks so that the random streams exercise flow control.
LOW, HIGH = 300, 900


def raw_msg(guid: bytes, mtype: int, ttl: int, hops: int, payload: bytes) -> bytes:
    return guid + bytes((mtype, ttl, hops)) + len(payload).to_bytes(4, "little") + payload


def qpayload(text: str, ext: bytes = b"") -> bytes:
    return b"\x80\x00" + text.encode() + b"\x00" + ext


# --- RouteMap ------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    cap=st.integers(1, 150),
    ops=st.lists(
        st.tuples(st.sampled_from("pgg"), st.integers(0, 40), st.integers(-1, 5), st.floats(0, 3)),
        max_size=400,
    ),
)
def test_routemap_behaves_as_routetable(cap, ops):
    from gnut import _purepath

    twins = [_purepath]
    try:
        from gnut import _fastpath

        twins.append(_fastpath)
    except ImportError:  # GNUT_NO_EXTENSIONS runs without the build
        pass
    ref = RouteTable(cap, 10.0)
    maps = [mod.RouteMap(cap, 10.0, seed=SEED) for mod in twins]
    now = 0.0
    for op, key, peer, step in ops:
        now += step
        guid = key.to_bytes(16, "little")
        if op == "p":
            ref.put(guid, peer, key, now)
            for m in maps:
                m.put(guid, peer, key, now)
        else:
            want = ref.get(guid, now)
            for m in maps:
                assert m.get(guid, now) == want
        for m in maps:
            assert len(m) == len(ref)


def test_routemap_grows_past_its_first_pool_and_keeps_every_entry(impl):
    m = impl.RouteMap(5000, 100.0, seed=SEED)
    guids = [random.Random(i).randbytes(16) for i in range(5000)]
    for i, g in enumerate(guids):
        m.put(g, i, i + 1, 1.0)
    assert len(m) == 5000
    assert all(m.get(g, 2.0) == (i, i + 1) for i, g in enumerate(guids))
    m.put(b"\xff" * 16, 7, 7, 3.0)  # full: the oldest goes
    assert m.get(guids[0], 3.0) is None and len(m) == 5000
    assert m.get(guids[1], 3.0) == (1, 2)
    assert m.memory_bytes() > 0


def test_routemap_argument_errors(impl):
    for cap, age in ((0, 1.0), (1, 0.0), (impl.MAX_ROUTE_CAPACITY + 1, 1.0)):
        with pytest.raises(LocalProtocolError, match="bad route table bounds"):
            impl.RouteMap(cap, age)
    m = impl.RouteMap(4, 1.0)
    with pytest.raises(LocalProtocolError, match="16 bytes"):
        m.put(b"short", 1, 1, 0.0)
    with pytest.raises(LocalProtocolError, match="out of range"):
        m.put(bytes(16), 1 << 31, 1, 0.0)
    with pytest.raises(LocalProtocolError, match="out of range"):
        m.put(bytes(16), 1, -1, 0.0)
    with pytest.raises(LocalProtocolError, match="16 bytes"):
        m.get(b"", 0.0)
    assert m.capacity == 4 and m.max_age == 1.0


# --- RelayCore against Router.route --------------------------------------------------------------


def make_router(impl, mode: str) -> Router:
    """A Router whose seen cache, QUERY routes and core come from `impl` (white-box swap, before peers)."""
    r = Router(
        mode,
        servent_guid=SERVENT,
        seen_capacity=64,
        seen_max_age=5.0,
        route_capacity=48,
        route_max_age=5.0,
        seed=SEED,
    )
    r._seen = impl.GuidCache(64, 5.0, SEED)
    r._query_routes = impl.RouteMap(48, 5.0, seed=SEED)
    r.core = impl.RelayCore(mode, r._seen, r._query_routes)
    return r


class World:
    """One Router plus per-peer output buffers, executed like node.on_frames (with or without the core)."""

    def __init__(self, impl, mode: str, use_core: bool) -> None:
        self.impl = impl
        self.router = make_router(impl, mode)
        self.use_core = use_core
        self.out: dict[int, bytearray] = {}
        self.locals: list[bytes] = []  # guids of queries delivered locally
        self.sent = 0
        self.msgs_out: Counter[int] = Counter()
        self.shed: Counter[int] = Counter()
        self.dups = 0
        self.closed: set[int] = set()

    def add(self, pid: int, role: PeerRole) -> None:
        self.router.add_peer(pid, role)
        self.out[pid] = bytearray()

    def remove(self, pid: int) -> None:
        self.router.remove_peer(pid)
        self.out.pop(pid, None)

    def _enqueue(self, pid: int, data: bytes, low: bool, bases: dict[int, int]) -> bool:
        base = bases[pid]
        if base == -1:
            return False
        q = base + len(self.out[pid])
        if q > HIGH or (low and q > LOW):
            self.shed[pid] += 1
            return False
        self.out[pid] += data
        self.msgs_out[pid] += 1
        return True

    def chunk(self, sender: int, raws: list[bytes], now: float, bases: dict[int, int]) -> None:
        msgs = [self.impl.Message(r) for r in raws]
        router, core = self.router, self.router.core
        i = 0
        if self.use_core:
            ids = core.relay_ids
            bufs = [self.out.get(p, bytearray()) for p in ids]
            cbases = [bases.get(p, -2) for p in ids]
        while i < len(msgs):
            if self.use_core:
                i, kind = core.relay(sender, msgs, i, now, bufs, cbases, LOW, HIGH)
                if kind == self.impl.STOP_END:
                    break
                msg = msgs[i]
                i += 1
                if kind == self.impl.STOP_LOCAL:
                    self.locals.append(msg.guid)
                    continue
            else:
                msg = msgs[i]
                i += 1
            dec = router.route(sender, msg, now)
            if dec.reason is DropReason.DUPLICATE:
                self.dups += 1
            if dec.disconnect:
                break
            if dec.targets:
                out = msg.raw[:17] + bytes((dec.ttl, msg.hops + 1)) + msg.raw[19:]
                low = msg.type == MSG_QUERY and msg.hops >= 2
                for t in dec.targets:
                    if t in self.out:
                        if self._enqueue(t, out, low, bases):
                            self.sent += 1
                        else:
                            router.drops[DropReason.FLOW_CONTROL] += 1
            if dec.local and msg.type == MSG_QUERY:
                self.locals.append(msg.guid)
        if self.use_core:
            copies, dups, _, rows = core.end_chunk()
            self.sent += copies
            self.dups += dups
            for k, appended, shed, _filled in rows:
                if appended:
                    self.msgs_out[ids[k]] += appended
                if shed:
                    self.shed[ids[k]] += shed

    def state(self) -> tuple:
        r = self.router
        return (
            {p: bytes(b) for p, b in self.out.items()},
            dict(r.drops),
            dict(r.received),
            dict(r.forwarded),
            dict(r.local),
            self.locals,
            self.sent,
            dict(self.msgs_out),
            dict(self.shed),
            self.dups,
            r.qrp_skips,
        )


def random_stream(rng: random.Random, mode: str):
    """Yield world events: ("add", pid, role), ("remove", pid), ("qrp", pid, table|None), ("own", guid),
    ("chunk", sender, raws, now, bases)."""
    roles = [PeerRole.FLOOD] if mode == "flood" else [PeerRole.ULTRAPEER, PeerRole.ULTRAPEER, PeerRole.LEAF]
    live: dict[int, PeerRole] = {}
    next_id = 1
    guids = [rng.randbytes(16) for _ in range(40)]
    texts = ["alpha beta", "gamma", "alphabet soup", "delta", "zz", "x" * 300]
    table = QrpTable(10)
    table.add_words(["alpha", "beta", "gamma"])
    now = 0.0
    for _ in range(3):
        yield ("add", next_id, rng.choice(roles))
        live[next_id] = roles[0]
        next_id += 1
    for _ in range(rng.randrange(20, 60)):
        r = rng.random()
        if r < 0.06 and len(live) < 7:
            role = rng.choice(roles)
            live[next_id] = role
            yield ("add", next_id, role)
            next_id += 1
            continue
        if r < 0.1 and len(live) > 2:
            pid = rng.choice(sorted(live))
            del live[pid]
            yield ("remove", pid)
            continue
        if r < 0.14 and mode == "ultrapeer":
            yield ("qrp", rng.choice(sorted(live)), rng.choice((table, None)))
            continue
        if r < 0.17:
            yield ("own", rng.choice(guids))
            continue
        now += rng.choice((0.0, 0.01, 0.5, 3.0))
        sender = rng.choice(sorted(live))
        raws = []
        for _ in range(rng.randrange(1, 25)):
            g = rng.choice(guids) if rng.random() < 0.5 else rng.randbytes(16)
            kind = rng.random()
            hops = rng.choice((0, 0, 1, 2, 3, 6, 7, 9))
            ttl = rng.choice((0, 1, 2, 3, 4, 5, 7, 8))
            ttl = min(ttl, 15 - hops)
            if kind < 0.75:
                text = rng.choice(texts)
                ext = rng.choice((b"", b"", b"urn:sha1:ABC", b"\x1cjunk"))
                payload = (
                    qpayload(text, ext) if rng.random() > 0.03 else rng.choice((b"\x80", b"\x80" * 1100))
                )
                raws.append(raw_msg(g, MSG_QUERY, ttl, hops, payload))
            elif kind < 0.85:
                raws.append(raw_msg(g, MSG_QUERYHIT, ttl, hops, bytes(27) + rng.randbytes(16)))
            elif kind < 0.93:
                raws.append(raw_msg(g, MSG_PING, ttl, hops, b""))
            elif kind < 0.98:
                raws.append(raw_msg(g, MSG_PONG, ttl, hops, bytes(14)))
            else:
                raws.append(raw_msg(g, MSG_BYE, 1, 0, b"\xc8\x00bye\x00"))
        bases = {p: rng.choice((0, 0, 0, 100, 400, 1000, -1)) for p in live}
        yield ("chunk", sender, raws, now, bases)


def run_world(world: World, events: list) -> tuple:
    for ev in events:
        if ev[0] == "add":
            world.add(ev[1], ev[2])
        elif ev[0] == "remove":
            world.remove(ev[1])
        elif ev[0] == "qrp":
            world.router.set_qrp(ev[1], ev[2])
        elif ev[0] == "own":
            world.router.register_own(ev[1], MSG_QUERY, 0.0)
        else:
            world.chunk(*ev[1:])
    return world.state()


@pytest.mark.parametrize("mode", ["flood", "ultrapeer", "leaf"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_core_decides_exactly_as_router_route(impl, mode, seed):
    events = list(random_stream(random.Random(seed), mode))
    alone = run_world(World(impl, mode, use_core=False), events)
    with_core = run_world(World(impl, mode, use_core=True), events)
    assert with_core == alone


def test_core_settles_a_flood_chunk_without_python(impl):
    w = World(impl, "flood", use_core=True)
    for pid in (1, 2, 3):
        w.add(pid, PeerRole.FLOOD)
    core = w.router.core
    g = new_guid()
    raws = [raw_msg(new_guid(), MSG_QUERY, 4, 1, qpayload("alpha")) for _ in range(10)]
    raws.append(raw_msg(g, MSG_QUERY, 4, 1, qpayload("beta")))
    msgs = [impl.Message(r) for r in raws]
    core.set_local(bytes(1024), 10)  # nothing shared: nothing to deliver
    bufs = [w.out[p] for p in core.relay_ids]
    assert core.relay(1, msgs, 0, 1.0, bufs, [0, 0, 0], LOW * 100, HIGH * 100) == (11, impl.STOP_END)
    dup = [impl.Message(raw_msg(g, MSG_QUERY, 4, 1, qpayload("beta")))]  # the same query by another path
    assert core.relay(2, dup, 0, 1.0, bufs, [0, 0, 0], LOW * 100, HIGH * 100) == (1, impl.STOP_END)
    # Resent on the link it first came from: the node's replay watch must see it.
    assert core.relay(1, dup, 0, 1.0, bufs, [0, 0, 0], LOW * 100, HIGH * 100) == (0, impl.STOP_ROUTE)
    copies, dups, unseen, rows = core.end_chunk()
    assert (copies, dups, unseen) == (22, 1, 11)
    assert sorted((core.relay_ids[k], a, s, f) for k, a, s, f in rows) == [(2, 11, 0, True), (3, 11, 0, True)]
    first = w.out[2][:23]
    assert first[17:19] == bytes((3, 2)) and w.out[2][23 : 23 + len(raws[0]) - 23] == raws[0][23:]
    assert w.out[1] == b""
    assert w.router.drops == {DropReason.DUPLICATE: 1}
    assert w.router.received[MSG_QUERY] == 12 and w.router.forwarded[MSG_QUERY] == 22
    assert core.end_chunk() == (0, 0, 0, [])


def test_core_hands_over_and_checks_its_arguments(impl):
    w = World(impl, "flood", use_core=True)
    w.add(1, PeerRole.FLOOD)
    w.add(2, PeerRole.FLOOD)
    core = w.router.core
    ping = impl.Message(raw_msg(new_guid(), MSG_PING, 1, 0, b""))
    q = impl.Message(raw_msg(new_guid(), MSG_QUERY, 3, 0, qpayload("x")))
    bufs = [bytearray(), bytearray()]
    assert core.relay(1, [ping, q], 0, 0.0, bufs, [0, 0], LOW, HIGH) == (0, impl.STOP_ROUTE)
    assert core.relay(99, [q], 0, 0.0, bufs, [0, 0], LOW, HIGH) == (0, impl.STOP_ROUTE)  # unknown peer
    assert core.relay(1, [q], 1, 0.0, bufs, [0, 0], LOW, HIGH) == (1, impl.STOP_END)
    assert core.relay(1, [q], 0, 0.0, bufs, [0, 0], LOW, HIGH) == (0, impl.STOP_LOCAL)  # no filter
    with pytest.raises(LocalProtocolError, match="output buffers"):
        core.relay(1, [q], 0, 0.0, bufs[:1], [0, 0], LOW, HIGH)
    with pytest.raises(LocalProtocolError, match="bytearray"):
        core.relay(1, [q], 0, 0.0, [b"", bytearray()], [0, 0], LOW, HIGH)
    with pytest.raises(LocalProtocolError, match="already registered"):
        core.add_peer(1, 5, True)
    with pytest.raises(LocalProtocolError, match="unknown peer"):
        core.set_qrp(42, True)
    with pytest.raises(LocalProtocolError, match="2\\*\\*bits"):
        core.set_local(bytes(100), 7)
    with pytest.raises(LocalProtocolError, match="unknown router mode"):
        impl.RelayCore("mesh", impl.GuidCache(4, 1.0), impl.RouteMap(4, 1.0))
    assert not impl.RelayCore("leaf", impl.GuidCache(4, 1.0), impl.RouteMap(4, 1.0)).active


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
    ids = core.relay_ids
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
