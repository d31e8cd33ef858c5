"""Tests for the whole-chunk relay core (RouteMap, RelayCore): against RouteTable and Router.route, and in a node."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gnut.constants import (
    MSG_BYE,
    MSG_PING,
    MSG_PONG,
    MSG_QUERY,
    MSG_QUERYHIT,
)
from gnut.errors import LocalProtocolError
from gnut.protocol.guid import new_guid
from gnut.protocol.qrp import QrpTable, keywords, qrp_hashcode, query_words
from gnut.protocol.routing import DropReason, PeerRole, Router, RouteTable, query_terms

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
        st.tuples(st.sampled_from("pggr"), st.integers(0, 40), st.integers(-1, 6), st.floats(0, 3)),
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
        # `peer` doubles as the TTL, `step` scaled as hops and hops + TTL: every takeover verdict occurs.
        hops, span = int(step * 2), int(step * 3) + max(peer, 0)
        if op == "p":
            ttl = max(peer, 0)
            ref.put(guid, peer, key, now, ttl, hops, span)
            for m in maps:
                m.put(guid, peer, key, now, ttl, hops, span)
        elif op == "r":  # reroute to `peer` by the takeover rule (budget allowed or not)
            allow = key % 3 != 0
            want = ref.reroute(guid, peer, key + 1, max(peer, 0), now, hops, span, allow)
            for m in maps:
                assert m.reroute(guid, peer, key + 1, max(peer, 0), now, hops, span, allow) == want
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
    for bad_ttl in (-1, 256):
        with pytest.raises(LocalProtocolError, match="TTL"):
            m.put(bytes(16), 1, 1, 0.0, bad_ttl)
        with pytest.raises(LocalProtocolError, match="TTL"):
            m.reroute(bytes(16), 1, 1, bad_ttl, 0.0)
    with pytest.raises(LocalProtocolError, match="out of range"):
        m.reroute(bytes(16), 1, -1, 1, 0.0)
    with pytest.raises(LocalProtocolError, match="16 bytes"):
        m.reroute(b"x", 1, 1, 1, 0.0)
    for bad in (-1, 256):
        with pytest.raises(LocalProtocolError, match="hops"):
            m.put(bytes(16), 1, 1, 0.0, 1, bad, 1)
        with pytest.raises(LocalProtocolError, match="span"):
            m.reroute(bytes(16), 1, 1, 1, 0.0, 1, bad)
    core = impl.RelayCore("flood", impl.GuidCache(16, 1.0), m)
    with pytest.raises(LocalProtocolError, match="unknown peer"):
        core.take_over(bytes(16), 3, 1, 1, 2, 0.0)
    core.add_peer(3, 1, True)
    assert core.take_over(bytes(16), 3, 1, 1, 2, 0.0) == 0  # no record
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
        self.tables: dict[int, object] = {}  # this world's own QRP matchers (events carry specs)
        self.stops = Counter()  # relay() stop kinds (with the core)
        self.low, self.high = LOW, HIGH

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
        if q > self.high or (low and q > self.low):
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
            ids = core.slot_ids
            bufs = [self.out.get(p, bytearray()) for p in ids]
            cbases = [bases.get(p, -2) for p in ids]
        while i < len(msgs):
            if self.use_core:
                i, kind = core.relay(sender, msgs, i, now, bufs, cbases, self.low, self.high)
                self.stops[kind] += 1
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
            r.dup_ttl_relays,
            r.takeovers_refused,
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
        elif ev[0] == "table":  # ("table", pid, spec): a fresh matcher of this world's own
            matcher = build_matcher(ev[2])
            world.tables[ev[1]] = matcher
            world.router.set_qrp(ev[1], matcher)
        elif ev[0] == "grow":  # ("grow", pid, word): the peer's table patched in place
            table = world.tables.get(ev[1])
            if isinstance(table, QrpTable):
                table.add_words([ev[2]])
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


# --- QRP in the core: word hashing, then ultrapeers with leaves ----------------------------------


class WordMatcher:
    """A QRP matcher that is not a QrpTable: only Python can ask it (the core hands over)."""

    def __init__(self, words) -> None:
        self.words = set(words)

    def matches(self, words) -> bool:
        words = list(words)
        return bool(words) and all(w in self.words for w in words)


def build_matcher(spec):
    """("table", bits, words) -> a QrpTable with those words and their prefixes; ("opaque", words)."""
    if spec is None:
        return None
    if spec[0] == "opaque":
        return WordMatcher(spec[1])
    table = QrpTable(spec[1])
    for w in spec[2]:
        table.add_words(keywords(w))
    return table


VOCAB = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta9",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu2024",
    "omicron",
    "sigma",
    "upsilon",
    "chi",
    "psi",
    "omega",
    "jazz",
    "live",
    "remix",
]


def query_text(rng: random.Random) -> str:
    """Search text as peers send it: mixed case, punctuation, short words, digits, now and then non-ASCII."""
    r = rng.random()
    if r < 0.04:
        return ""
    if r < 0.07:
        return rng.choice(("ab", "a b", "--", "x y z"))  # no routed word: matches nothing
    words = [rng.choice(VOCAB) for _ in range(rng.choice((1, 1, 2, 2, 3, 4)))]
    words = [
        w.upper() if rng.random() < 0.15 else w[: rng.randrange(3, len(w) + 1)] if rng.random() < 0.2 else w
        for w in words
    ]
    if rng.random() < 0.1:
        words.append(rng.choice(("of", "a", "zzz", "q9")))
    if rng.random() < 0.05:
        words.append("café")
    return rng.choice((" ", "  ", "-", ", ", "_", ".", "/")).join(words)


def qrp_stream(rng: random.Random, mode: str):
    """World events for a router whose peers send QRP tables: leaves (and, in ultrapeer mode,
    ultrapeers) with random tables of random sizes, tables cleared, replaced by opaque matchers and
    patched in place; queries with TTLs that reach the last hop and that are spent at this node."""
    relay_role = PeerRole.FLOOD if mode == "flood" else PeerRole.ULTRAPEER
    live: dict[int, PeerRole] = {}
    next_id = 1
    guids = [rng.randbytes(16) for _ in range(30)]
    now = 0.0

    def spec():
        r = rng.random()
        if r < 0.1:
            return None
        if r < 0.16:
            return ("opaque", rng.sample(VOCAB, 8))
        return ("table", rng.choice((3, 5, 8, 10, 16)), rng.sample(VOCAB, rng.randrange(0, 12)))

    for k in range(rng.randrange(3, 12)):
        role = relay_role if k < 2 or rng.random() < 0.3 else PeerRole.LEAF
        live[next_id] = role
        yield ("add", next_id, role)
        if role == PeerRole.LEAF or (mode == "ultrapeer" and rng.random() < 0.5):
            yield ("table", next_id, spec())
        next_id += 1
    for _ in range(rng.randrange(15, 45)):
        r = rng.random()
        if r < 0.05 and len(live) < 16:
            role = rng.choice((relay_role, PeerRole.LEAF, PeerRole.LEAF))
            live[next_id] = role
            yield ("add", next_id, role)
            next_id += 1
            continue
        if r < 0.08 and len(live) > 2:
            pid = rng.choice(sorted(live))
            del live[pid]
            yield ("remove", pid)
            continue
        if r < 0.16:
            yield ("table", rng.choice(sorted(live)), spec())
            continue
        if r < 0.2:
            yield ("grow", rng.choice(sorted(live)), rng.choice(VOCAB))
            continue
        if r < 0.22:
            yield ("own", rng.choice(guids))
            continue
        now += rng.choice((0.0, 0.01, 0.5, 3.0))
        relays = [p for p, role in live.items() if role != PeerRole.LEAF]
        sender = rng.choice(relays) if relays and rng.random() < 0.9 else rng.choice(sorted(live))
        raws = []
        for _ in range(rng.randrange(1, 30)):
            g = rng.choice(guids) if rng.random() < 0.3 else rng.randbytes(16)
            if rng.random() < 0.9:
                hops = rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 8))
                ttl = min(rng.choice((1, 1, 2, 2, 3, 4, 7)), 15 - hops)
                ext = b"" if rng.random() < 0.9 else rng.choice((b"urn:sha1:ABC", b"\xc3\x82H\x00"))
                raws.append(raw_msg(g, MSG_QUERY, ttl, hops, qpayload(query_text(rng), ext)))
            else:
                raws.append(raw_msg(g, MSG_PING, 1, 0, b""))
        bases = {p: rng.choice((0, 0, 0, 100, 400, 1000, -1)) for p in live}
        yield ("chunk", sender, raws, now, bases)


def dup_stream(rng: random.Random, mode: str):
    """World events where a few GUIDs come back again and again: from every peer (the first sender's
    own link too), at every TTL and hop count, so copies with a higher, equal and lower relay TTL
    than the highest one relayed mix with echoes of our own queries, spent queries, QRP-filtered
    targets (ultrapeer mode), flow control and route records evicted or aged before the seen cache."""
    relay_role = PeerRole.FLOOD if mode == "flood" else PeerRole.ULTRAPEER
    live: dict[int, PeerRole] = {}
    pool = [rng.randbytes(16) for _ in range(rng.choice((2, 4, 8)))]
    now = 0.0
    n_peers = rng.randrange(3, 9)
    for pid in range(1, n_peers + 1):
        role = relay_role if pid <= 2 or rng.random() < 0.6 else PeerRole.LEAF
        live[pid] = role
        yield ("add", pid, role)
        if mode == "ultrapeer" and (role == PeerRole.LEAF or rng.random() < 0.4):
            yield ("table", pid, ("table", rng.choice((5, 8, 12)), rng.sample(VOCAB, rng.randrange(1, 10))))
    for _ in range(rng.randrange(10, 40)):
        r = rng.random()
        if r < 0.04:
            yield ("own", rng.choice(pool))
            continue
        if r < 0.08:
            pool[rng.randrange(len(pool))] = rng.randbytes(16)  # a new query takes a slot
            continue
        now += rng.choice((0.0, 0.0, 0.01, 0.5, 2.0, 6.0))  # 6 s: past the route and seen ages
        relays = [p for p, role in live.items() if role != PeerRole.LEAF]
        sender = rng.choice(relays) if rng.random() < 0.9 else rng.choice(sorted(live))
        raws = []
        for _ in range(rng.randrange(1, 20)):
            g = rng.choice(pool) if rng.random() < 0.85 else rng.randbytes(16)
            hops = rng.choice((0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 9))
            ttl = min(rng.choice((1, 1, 2, 2, 3, 3, 4, 5, 7, 9)), 15 - hops)
            text = " ".join(rng.sample(VOCAB[:6], rng.choice((1, 1, 2))))
            raws.append(raw_msg(g, MSG_QUERY, ttl, hops, qpayload(text)))
        bases = {p: rng.choice((0, 0, 0, 0, 100, 400, 1000, -1)) for p in live}
        yield ("chunk", sender, raws, now, bases)


@pytest.mark.parametrize("mode", ["flood", "ultrapeer", "leaf"])
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_core_relays_higher_ttl_duplicates_exactly_as_router_route(impl, mode, seed):
    events = list(dup_stream(random.Random(seed), mode))
    alone_world = World(impl, mode, use_core=False)
    alone = run_world(alone_world, events)
    assert run_world(World(impl, mode, use_core=True), events) == alone
    if mode == "leaf":
        assert alone_world.router.dup_ttl_relays == 0


def test_dup_streams_exercise_every_duplicate_outcome(impl):
    """The random duplicate streams above do reach each outcome, in C as well as in Python."""
    totals: Counter[str] = Counter()
    for seed in range(40):
        events = list(dup_stream(random.Random(seed), "ultrapeer"))
        w = World(impl, "ultrapeer", use_core=True)
        run_world(w, events)
        r = w.router
        totals["relayed again"] += r.dup_ttl_relays
        totals["refused"] += r.takeovers_refused
        totals["duplicate"] += r.drops[DropReason.DUPLICATE]
        totals["own"] += r.drops[DropReason.OWN_MESSAGE]
        totals["python"] += w.stops[impl.STOP_ROUTE]
    assert min(totals.values()) > 0, totals


@pytest.mark.parametrize("mode", ["ultrapeer", "flood"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_core_routes_on_qrp_tables_exactly_as_router_route(impl, mode, seed):
    events = list(qrp_stream(random.Random(seed), mode))
    alone = run_world(World(impl, mode, use_core=False), events)
    core_world = World(impl, mode, use_core=True)
    assert run_world(core_world, events) == alone  # targets, TTLs, counters, qrp_skips, flow control


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(
        st.characters(min_codepoint=1, max_codepoint=0x7F, blacklist_characters="\x1c"), max_size=250
    )
)
def test_query_codes_are_the_words_gnut_qrp_routes_on(text):
    """Any plain-ASCII text: the core's codes are qrp_hashcode of exactly the words Router.route finds."""
    from gnut import _purepath

    twins = [_purepath]
    try:
        from gnut import _fastpath

        twins.append(_fastpath)
    except ImportError:
        pass
    payload = qpayload(text)
    if len(payload) > 256:
        return
    words, urns = query_terms(payload)
    assert urns == ()
    want = list(dict.fromkeys(qrp_hashcode(w) for w in words))
    for mod in twins:
        codes = mod.query_codes(payload)
        assert codes is not None and list(dict.fromkeys(codes)) == want, (mod.__name__, text)


def test_query_codes_hash_many_words_as_qrp_hashcode(impl):
    rng = random.Random(5)
    alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    for _ in range(20000):
        word = "".join(rng.choice(alnum) for _ in range(rng.randrange(1, 60)))
        want = (qrp_hashcode(word),) if len(word) >= 3 else ()
        assert impl.query_codes(qpayload(word)) == want, word
        assert query_words(word) == ([word.lower()] if len(word) >= 3 else [])
    # gtk-gnutella's test_hash vectors (src/core/qrp.c), for the words the core routes on.
    for word, bits, slot in (
        ("ebc", 13, 7082),
        ("ebcklmenq", 13, 3527),
        ("ndflalem", 16, 37658),
        ("3nja9", 10, 581),
        ("2459345938032343", 10, 146),
        ("zzzzzzzzzzz", 10, 944),
    ):
        assert impl.query_codes(qpayload(word.upper()))[0] >> (32 - bits) == slot
    assert impl.query_codes(qpayload("Jazz, live-JAZZ 2024 of")) == tuple(
        qrp_hashcode(w) for w in ("jazz", "live", "jazz", "2024")
    )


def test_query_codes_leave_to_python_what_only_python_can_split(impl):
    assert impl.query_codes(qpayload("jazz", b"urn:sha1:ABC")) is None  # extensions
    assert impl.query_codes(qpayload("café")) is None  # non-ASCII text
    assert impl.query_codes(b"\x80\x00jazz") is None  # no NUL
    assert impl.query_codes(b"\x80\x00ja\x00zz\x00") is None  # a NUL inside
    assert impl.query_codes(b"\x80\x00ja\x1czz\x00") is None  # the extension separator in the text
    assert impl.query_codes(qpayload("")) == () and impl.query_codes(qpayload("ab cd")) == ()
    for bad in (b"\x80\x00", b"\x80\x00" + b"a" * 254 + b"\x00"):
        with pytest.raises(LocalProtocolError, match="3..256 bytes"):
            impl.query_codes(bad)


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
    bufs = [w.out[p] for p in core.slot_ids]
    assert core.relay(1, msgs, 0, 1.0, bufs, [0, 0, 0], LOW * 100, HIGH * 100) == (11, impl.STOP_END)
    dup = [impl.Message(raw_msg(g, MSG_QUERY, 4, 1, qpayload("beta")))]  # the same query by another path
    assert core.relay(2, dup, 0, 1.0, bufs, [0, 0, 0], LOW * 100, HIGH * 100) == (1, impl.STOP_END)
    # Resent on the link it first came from: the node's replay watch must see it.
    assert core.relay(1, dup, 0, 1.0, bufs, [0, 0, 0], LOW * 100, HIGH * 100) == (0, impl.STOP_ROUTE)
    copies, dups, unseen, rows = core.end_chunk()
    assert (copies, dups, unseen) == (22, 1, 11)
    assert sorted((core.slot_ids[k], a, s, f) for k, a, s, f in rows) == [(2, 11, 0, True), (3, 11, 0, True)]
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
    fresh = impl.Message(raw_msg(new_guid(), MSG_QUERY, 3, 0, qpayload("y")))
    with pytest.raises(LocalProtocolError, match="bytearray"):  # checked when a copy goes to that slot
        core.relay(1, [fresh], 0, 0.0, [bytearray(), b""], [0, 0], LOW, HIGH)
    with pytest.raises(LocalProtocolError, match="already registered"):
        core.add_peer(1, 5, True)
    with pytest.raises(LocalProtocolError, match="unknown peer"):
        core.set_qrp(42, True)
    with pytest.raises(LocalProtocolError, match="2\\*\\*bits"):
        core.set_local(bytes(100), 7)
    with pytest.raises(LocalProtocolError, match="unknown router mode"):
        impl.RelayCore("mesh", impl.GuidCache(4, 1.0), impl.RouteMap(4, 1.0))
    assert not impl.RelayCore("leaf", impl.GuidCache(4, 1.0), impl.RouteMap(4, 1.0)).active


def ultrapeer_world(impl, use_core: bool, leaves: int = 30) -> World:
    """An ultrapeer with 3 ultrapeer links (peer 3 sent a table) and `leaves` leaves with tables."""
    w = World(impl, "ultrapeer", use_core)
    rng = random.Random(3)
    for pid in (1, 2, 3):
        w.add(pid, PeerRole.ULTRAPEER)
    run_world(w, [("table", 3, ("table", 12, VOCAB[:10]))])
    for pid in range(10, 10 + leaves):
        w.add(pid, PeerRole.LEAF)
        run_world(w, [("table", pid, ("table", rng.choice((8, 14, 16)), rng.sample(VOCAB, 3)))])
    w.router.core.set_local(bytes(1024), 10)  # nothing shared: no query is handed over for that
    w.low = w.high = 1 << 30  # no flow control here
    return w


def test_core_settles_an_ultrapeer_chunk_with_qrp_leaves_in_one_call(impl):
    rng = random.Random(9)
    raws = []
    for i in range(300):
        text = " ".join(rng.sample(VOCAB, rng.choice((1, 1, 2))))
        hops, ttl = rng.choice(((0, 4), (1, 3), (2, 2), (5, 2), (3, 1), (6, 1), (6, 2), (7, 1)))
        raws.append(
            raw_msg(rng.randbytes(16), MSG_QUERY, ttl, hops, qpayload(text.upper() if i % 7 else text))
        )
    alone, core_world = ultrapeer_world(impl, False), ultrapeer_world(impl, True)
    bases = dict.fromkeys(alone.out, 0)
    alone.chunk(1, raws, 1.0, bases)
    core_world.chunk(1, raws, 1.0, bases)
    assert core_world.stops == {impl.STOP_END: 1}  # not one message handed to Python
    assert core_world.state()[:5] == alone.state()[:5] and core_world.state()[6:] == alone.state()[6:]
    assert alone.locals == [bytes.fromhex(r[:16].hex()) for r in raws] and not core_world.locals
    leaf_copies = [impl.Message(r) for pid, buf in core_world.out.items() if pid >= 10 for r in split(buf)]
    assert 0 < len(leaf_copies) < 300 * 30 and core_world.router.qrp_skips > 0
    # Spent here (hops 7 - ... leaves TTL 1 only): matching leaves get it with TTL 1, ultrapeers do not.
    spent = {r[:16] for r in raws if r[17] + r[18] <= 7 and min(r[17], 7 - r[18]) == 1}
    assert spent and all(m.ttl == 1 for m in leaf_copies if m.guid in spent)
    assert not any(m.guid in spent for pid in (2, 3) for m in map(impl.Message, split(core_world.out[pid])))


def split(buf: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(buf):
        n = 23 + int.from_bytes(buf[i + 19 : i + 23], "little")
        out.append(bytes(buf[i : i + n]))
        i += n
    return out


def test_core_hands_to_router_the_qrp_queries_only_python_can_route(impl):
    w = ultrapeer_world(impl, True, leaves=3)
    core = w.router.core

    def kind(payload: bytes, ttl: int = 3, hops: int = 1) -> int:
        msg = impl.Message(raw_msg(new_guid(), MSG_QUERY, ttl, hops, payload))
        ids = core.slot_ids
        bufs = [bytearray() for _ in ids]
        i, k = core.relay(1, [msg], 0, 1.0, bufs, [0] * len(ids), LOW, HIGH)
        core.end_chunk()
        if k == impl.STOP_ROUTE:  # untouched: Router.route still sees a new query
            assert w.router.route(1, msg, 1.0).reason is None
        return k

    assert kind(qpayload("alpha beta")) == impl.STOP_END
    assert kind(qpayload("alpha", b"urn:sha1:ABC")) == impl.STOP_ROUTE  # extensions: URN rule
    assert kind(qpayload("álpha")) == impl.STOP_ROUTE  # non-ASCII words: Python canonicalises
    run_world(w, [("table", 10, ("opaque", ["alpha"]))])
    assert kind(qpayload("alpha")) == impl.STOP_ROUTE  # a matcher only Python can ask
    run_world(w, [("table", 10, ("table", 10, ["alpha"]))])
    assert kind(qpayload("alpha")) == impl.STOP_END
    w.tables[10].slots.extend(b"\x00")  # resized behind the core's back: no longer readable
    assert kind(qpayload("alpha")) == impl.STOP_ROUTE
    for pid in range(10, 13):
        w.router.set_qrp(pid, None)
    # No leaf table: only the last hop consults ultrapeer 3's table.
    assert kind(qpayload("álpha"), ttl=4) == impl.STOP_END  # settled (nothing shared: no local match)
    assert kind(qpayload("álpha"), ttl=2) == impl.STOP_ROUTE
    run_world(w, [("table", 3, ("opaque", ["alpha"]))])
    assert kind(qpayload("alpha"), ttl=2) == impl.STOP_ROUTE
    assert kind(qpayload("alpha"), ttl=3) == impl.STOP_END


def test_core_set_qrp_checks_its_arguments(impl):
    core = impl.RelayCore("ultrapeer", impl.GuidCache(4, 1.0), impl.RouteMap(4, 1.0))
    core.add_peer(1, 1, False)
    with pytest.raises(LocalProtocolError, match="2\\*\\*bits"):
        core.set_qrp(1, True, bytearray(100), 7)
    with pytest.raises(LocalProtocolError, match="2\\*\\*bits"):
        core.set_qrp(1, True, bytes(128), 7)
    with pytest.raises(LocalProtocolError, match="2\\*\\*bits"):
        core.set_qrp(1, True, bytearray(1), 0)
    with pytest.raises(LocalProtocolError, match="without a table"):
        core.set_qrp(1, False, bytearray(128), 7)
    with pytest.raises(LocalProtocolError, match="unknown peer"):
        core.set_qrp(2, True, bytearray(128), 7)
    core.set_qrp(1, True, bytearray(128), 7)
    core.set_qrp(1, True)
    core.set_qrp(1, False)
    core.remove_peer(1)
    assert core.slot_ids == ()
