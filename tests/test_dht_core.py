"""The DHT core: routing table (splitting, replacement, Sybil bounds, collisions), tokens, the
value store (quotas, expiry, spoofed creators), lookups converging on a simulated network, churn,
republication, and the spoofing rules of DhtCore."""

from __future__ import annotations

import random

from gnut.dht import core, store, table, wire
from gnut.dht.core import DhtCore, DhtLimits
from gnut.sim.dht import DhtNetwork, key_of


def _kuid(rng: random.Random, first_bit: int | None = None) -> bytes:
    b = bytearray(rng.randbytes(20))
    if first_bit is not None:
        b[0] = (b[0] & 0x7F) | (first_bit << 7)
    return bytes(b)


def _c(kuid: bytes, i: int) -> wire.Contact:
    return wire.Contact(kuid, f"10.{i >> 8 & 255}.{i & 255}.1", 6346)


# --- routing table ----------------------------------------------------------------------------
def test_bucket_splits_along_own_kuid_and_far_bucket_caps_at_k():
    rng = random.Random(1)
    own = bytes(20)  # first bit 0
    t = table.RoutingTable(own)
    for i in range(200):
        t.add(_c(_kuid(rng, first_bit=0), i), 0.0)
    assert len(t.buckets) > 2 and len(t) > table.K  # the near half kept splitting
    for i in range(200, 260):
        t.add(_c(_kuid(rng, first_bit=1), i), 0.0)
    far = t.buckets[0]
    assert len(far.entries) == table.K and len(far.cache) == table.REPLACEMENT_CACHE
    assert all(table.common_prefix(t.own_id, e.contact.kid) == 0 for e in far.entries.values())


def test_dead_contact_is_replaced_from_the_cache():
    rng = random.Random(2)
    t = table.RoutingTable(bytes(20))
    far = [_c(_kuid(rng, 1), i) for i in range(table.K + 3)]
    for c in far:
        t.add(c, 0.0)
    victim = far[0]
    assert t.failed(victim.kuid) is False  # one miss is not death
    assert t.failed(victim.kuid) is True
    assert t.get(victim.kuid) is None and len(t.buckets[0].entries) == table.K
    assert t.get(far[-1].kuid) is not None  # the most recent replacement took the place


def test_per_net24_bounds_in_bucket_and_table():
    rng = random.Random(3)
    t = table.RoutingTable(bytes(20))
    same_net = [wire.Contact(_kuid(rng, 1), f"10.9.9.{i}", 6346) for i in range(5)]
    results = [t.add(c, 0.0) for c in same_net]
    assert results.count(table.AddResult.ADDED) == table.PER_NET24_BUCKET
    assert results[-1] is table.AddResult.REJECTED_NET
    t2 = table.RoutingTable(bytes(20), per_net24_bucket=100)
    many = [wire.Contact(_kuid(rng), f"10.8.8.{i}", 6346) for i in range(30)]
    added = [t2.add(c, 0.0) for c in many].count(table.AddResult.ADDED)
    assert added == table.PER_NET24_TABLE


def test_kuid_collision_kept_while_holder_answers():
    t = table.RoutingTable(bytes(20))
    kuid = b"\x80" + bytes(19)
    assert t.add(wire.Contact(kuid, "10.0.0.1", 1), 0.0) is table.AddResult.ADDED
    assert t.add(wire.Contact(kuid, "10.0.1.1", 1), 1.0) is table.AddResult.COLLISION
    assert t.get(kuid).contact.host == "10.0.0.1"
    t.failed(kuid)  # the holder stopped answering: the new address may take over
    assert t.add(wire.Contact(kuid, "10.0.1.1", 1), 2.0) is table.AddResult.ADDED
    assert t.add(wire.Contact(bytes(20), "10.0.2.1", 1), 0.0) is table.AddResult.SELF


def test_random_id_in_bucket_falls_in_that_bucket():
    rng = random.Random(4)
    t = table.RoutingTable(_kuid(rng))
    for i in range(300):
        t.add(_c(_kuid(rng), i), 0.0)
    for i in range(len(t.buckets)):
        target = t.random_id_in_bucket(i, rng.getrandbits(160))
        assert t.index(int.from_bytes(target, "big")) == i


# --- tokens and values ------------------------------------------------------------------------
def test_tokens_bind_ip_and_kuid_and_expire():
    tok = store.Tokens(b"seed", 0.0)
    t = tok.make("10.0.0.1", b"k" * 20, 100.0)
    assert tok.check(t, "10.0.0.1", b"k" * 20, 100.0 + store.TOKEN_LIFETIME)
    assert not tok.check(t, "10.0.0.2", b"k" * 20, 100.0)
    assert not tok.check(t, "10.0.0.1", b"j" * 20, 100.0)
    assert not tok.check(t, "10.0.0.1", b"k" * 20, 100.0 + 2 * store.TOKEN_LIFETIME)


def test_value_store_quotas_expiry_and_spoofed_creators():
    vs = store.ValueStore()
    key = b"K" * 20
    sender = wire.Contact(b"S" * 20, "10.0.0.1", 1)

    def val(i: int, host: str, data: bytes = b"x") -> wire.DhtValue:
        return wire.DhtValue(wire.Contact(bytes([i]) * 20, host, 1), key, wire.VT_ALOC, data)

    assert vs.store(val(1, "10.0.0.5"), sender, "10.0.0.1", 0.0) == wire.SC_OK  # a replica
    assert vs.store(val(2, "10.0.0.6"), sender, "10.0.0.1", 0.0) == wire.SC_OK
    assert vs.store(val(3, "10.0.0.7"), sender, "10.0.0.1", 0.0) == wire.SC_OK
    assert vs.store(val(4, "10.0.0.8"), sender, "10.0.0.1", 0.0) == wire.SC_QUOTA  # 4th of one /24
    for i in range(5, 20):
        vs.store(val(i, f"10.{i}.0.1"), sender, "10.0.0.1", 0.0)
    assert len(vs.get(key, wire.VT_ANY, 1.0)) == store.MAX_VALUES_PER_KEY
    assert vs.store(val(30, "10.30.0.1"), sender, "10.0.0.1", 0.0) == wire.SC_FULL
    # a sender claiming to be the creator must send from the creator's address
    own = wire.DhtValue(wire.Contact(b"S" * 20, "10.99.0.1", 1), b"L" * 20, wire.VT_ALOC, b"x")
    assert vs.store(own, sender, "10.0.0.1", 0.0) == wire.SC_BAD_CREATOR
    assert vs.store(val(1, "10.0.0.5", b""), sender, "10.0.0.1", 0.0) == wire.SC_BAD_VALUE  # not its creator
    assert (
        vs.store(wire.DhtValue(sender, key, wire.VT_ANY, b"x"), sender, "10.0.0.1", 0.0) == wire.SC_BAD_TYPE
    )
    assert vs.store(val(40, "0.0.0.0"), sender, "10.0.0.1", 0.0) == wire.SC_BAD_CREATOR
    assert vs.expire(store.VALUE_LIFETIME + 1) == vs.codes[wire.SC_OK] and vs.count == 0


# --- the node ---------------------------------------------------------------------------------
def _pair():
    a = DhtCore("10.0.0.1", 1000, 0.0, rng=random.Random(1))
    b = DhtCore("10.0.1.1", 1000, 0.0, rng=random.Random(2))
    return a, b


def _exchange(nodes: dict, now: float, rounds: int = 20) -> None:
    for _ in range(rounds):
        moved = False
        for n in nodes.values():
            for data, addr in n.take_outbox():
                if addr in nodes:
                    nodes[addr].receive(data, n.me.addr, now)
                    moved = True
        if not moved:
            return


def test_requester_joins_table_only_after_answering_our_ping():
    a, b = _pair()
    nodes = {a.me.addr: a, b.me.addr: b}
    a.ping(b.me.addr, 0.0)
    ((data, _addr),) = a.take_outbox()
    b.receive(data, a.me.addr, 0.0)
    assert b.table.get(a.kuid) is None and a.me.addr in b.verifying  # b pings a back first
    for d, addr in b.take_outbox():
        nodes[addr].receive(d, b.me.addr, 0.0)
    _exchange(nodes, 0.0)
    assert b.table.get(a.kuid) is not None and a.table.get(b.kuid) is not None


def test_reply_from_another_address_or_with_wrong_opcode_is_dropped():
    a, b = _pair()
    a.ping(b.me.addr, 0.0)
    ((data, _),) = a.take_outbox()
    b.receive(data, a.me.addr, 0.0)
    pong = [d for d, addr in b.take_outbox() if wire.decode(d)[0].op == wire.PING_RESPONSE][0]
    a.receive(pong, ("10.0.2.1", 1000), 0.0)
    assert a.drops["response_from_wrong_address"] == 1 and a.table.get(b.kuid) is None
    a.receive(pong, b.me.addr, 0.0)
    assert a.table.get(b.kuid) is not None
    a.receive(pong, b.me.addr, 0.0)  # replayed: no RPC waits for it any more
    assert a.drops["unexpected_response"] == 1


def test_store_with_a_bad_token_is_refused_and_counted():
    a, b = _pair()
    v = wire.DhtValue(a.me, b"K" * 20, wire.VT_ALOC, b"data")
    hdr = wire.Header(b"m" * 16, wire.STORE_REQUEST, a.me)
    b.receive(wire.encode_message(hdr, wire.StoreRequest(b"bad!", [v])), a.me.addr, 0.0)
    resp = [
        wire.decode_message(d)[1] for d, _ in b.take_outbox() if wire.decode(d)[0].op == wire.STORE_RESPONSE
    ]
    assert resp[0][0].code == wire.SC_BAD_TOKEN and b.values.count == 0 and b.drops["bad_token"] == 1
    good = b.tokens.make(a.me.host, a.kuid, 0.0)
    b.receive(wire.encode_message(hdr, wire.StoreRequest(good, [v])), a.me.addr, 0.0)
    assert b.values.count == 1


def test_rate_limit_per_source_address():
    a, b = _pair()
    hdr = wire.Header(b"m" * 16, wire.PING_REQUEST, a.me)
    for _ in range(int(store.RATE_BURST) + 10):
        b.receive(wire.encode(hdr, b""), a.me.addr, 0.0)
    assert b.drops["rate_limited"] == 10
    lifted = DhtCore("10.0.3.1", 1, 0.0, limits=DhtLimits(rate_burst=1000))
    for _ in range(100):
        lifted.receive(wire.encode(hdr, b""), a.me.addr, 0.0)
    assert "rate_limited" not in lifted.drops


def test_lookups_converge_on_a_simulated_network():
    net = DhtNetwork(400, seed=5)
    for i in range(10):
        rec = net.find_node(net.random_alive(), key_of(100 + i))
        assert rec.ok and rec.rpcs <= 60, rec
    stored, _ = net.publish(3, key_of(1), b"value")
    assert stored >= table.K - 2
    found = [net.find_value(net.random_alive(), key_of(1)) for _ in range(10)]
    assert all(r.ok for r in found)
    assert net.find_value(7, key_of(999)).ok is False  # nothing stored: a full lookup, no value


def test_lookups_survive_30_percent_churn():
    net = DhtNetwork(400, seed=6)
    net.publish(3, key_of(2), b"value")
    net.kill(0.30)
    net.alive[3] = 1
    found = [net.find_value(net.random_alive(), key_of(2)) for _ in range(20)]
    assert sum(r.ok for r in found) >= 19
    assert sum(r.timeouts for r in found) > 0  # dead nodes were really queried and timed out


def test_values_expire_and_own_values_are_republished():
    net = DhtNetwork(200, seed=7)
    net.publish(3, key_of(3), b"mine")
    holders = [n for n in net.built_nodes() if n.values.get(key_of(3), wire.VT_ANY, 0.0)]
    assert holders
    t = 0.0
    while t < store.VALUE_LIFETIME * 1.5:  # only the publisher needs its clock: stored values expire on read
        t += 300.0
        net.now = t
        net.node(3).tick(t)
        net._flush(3)
        net.run()
    assert net.nodes[3].own[(key_of(3), wire.VT_ALOC)].next_publish > 2 * core.REPUBLISH_PERIOD
    assert net.find_value(50, key_of(3)).ok  # the first copies expired after an hour: these are republished
    stale = DhtCore("10.0.0.9", 1, 0.0)
    stale.values.store(wire.DhtValue(stale.me, b"X" * 20, wire.VT_ALOC, b"x"), stale.me, "10.0.0.9", 0.0)
    stale.tick(store.VALUE_LIFETIME + core.EXPIRE_SWEEP + 1)
    assert stale.values.count == 0


def test_passive_modes_flag_firewalled_and_never_join_tables():
    a = DhtCore("10.0.0.1", 1000, 0.0, mode=core.PASSIVE, rng=random.Random(1))
    b = DhtCore("10.0.1.1", 1000, 0.0, rng=random.Random(2))
    nodes = {a.me.addr: a, b.me.addr: b}
    a.bootstrap([b.me.addr], 0.0)
    _exchange(nodes, 0.0)
    assert a.table.get(b.kuid) is not None  # the passive node uses the DHT...
    assert b.table.get(a.kuid) is None  # ...but is never routed to
    leaf = DhtCore("10.0.2.1", 1000, 0.0, mode=core.PASSIVE_LEAF)
    assert leaf.flags & wire.F_FIREWALLED and not leaf.table.splittable


def test_messages_claiming_our_kuid_or_garbage_are_counted_drops():
    a, b = _pair()
    spoof = wire.Contact(b.kuid, "10.0.0.1", 1000)
    b.receive(wire.encode(wire.Header(b"m" * 16, wire.PING_REQUEST, spoof), b""), a.me.addr, 0.0)
    b.receive(b"\x00" * 70, a.me.addr, 0.0)
    assert b.drops == {"own_kuid": 1, "unparseable": 1} and not b.take_outbox()


def test_find_node_response_contacts_are_candidates_not_table_entries():
    a, b = _pair()
    a.table.add(b.me, 0.0)
    op = a.find_node(b"\x11" * 20, 0.0)
    ((req, _),) = a.take_outbox()
    fake = [wire.Contact(bytes([i]) * 20, f"10.5.{i}.1", 1) for i in range(1, 30)]
    hdr = wire.decode(req)[0]
    resp = wire.FindNodeResponse(b"tokn", fake)
    a.receive(wire.encode_message(wire.Header(hdr.muid, wire.FIND_NODE_RESPONSE, b.me), resp), b.me.addr, 0.0)
    assert len(a.table) == 1  # only b, who answered
    assert len(op.lookup.cands) > 1 and len(a.take_outbox()) == 3  # alpha queries to the new candidates


def test_lookup_refuses_unusable_and_crowded_candidates():
    from gnut.dht.lookup import Lookup

    rng = random.Random(9)
    lk = Lookup(bytes(20), [])
    bad = [
        wire.Contact(_kuid(rng), "0.0.0.0", 1),
        wire.Contact(_kuid(rng), "224.0.0.1", 1),
        wire.Contact(_kuid(rng), "10.0.0.1", 0),
        wire.Contact(_kuid(rng), "::1", 1),
    ]
    victim = [wire.Contact(_kuid(rng), f"10.66.66.{i}", 1) for i in range(40)]
    src = wire.Contact(_kuid(rng), "10.1.1.1", 1)
    lk._add(src, 1)
    lk.next_queries()
    lk.on_nodes(src, bad + victim)
    assert len(lk.cands) == 1 + table.PER_NET24_BUCKET and lk.rejected == 4 + 40 - table.PER_NET24_BUCKET


def test_one_network_cannot_take_the_whole_store():
    vs = store.ValueStore(per_net24_total=5)
    sender = wire.Contact(b"S" * 20, "10.0.0.1", 1)
    codes = [
        vs.store(
            wire.DhtValue(wire.Contact(bytes([i]) * 20, "10.7.7.7", 1), bytes([i]) * 20, wire.VT_ALOC, b"x"),
            sender,
            "10.0.0.1",
            0.0,
        )
        for i in range(8)
    ]
    assert codes.count(wire.SC_OK) == 5 and codes[-1] == wire.SC_QUOTA
    other = wire.DhtValue(wire.Contact(b"o" * 20, "10.8.8.8", 1), b"o" * 20, wire.VT_ALOC, b"x")
    assert vs.store(other, sender, "10.0.0.1", 0.0) == wire.SC_OK
    vs.expire(store.VALUE_LIFETIME + 1)
    assert vs.by_net == {} and vs.count == 0


def test_republication_of_many_values_is_paced():
    net = DhtNetwork(150, seed=11)
    node = net.node(4)
    for i in range(40):
        node.own[(key_of(500 + i), wire.VT_ALOC)] = core._Own(
            wire.DhtValue(node.me, key_of(500 + i), wire.VT_ALOC, b"x"), 0.0
        )
    node.tick(1.0)
    running = [o for o in node.ops if o.kind == "publish" and not o.finished]
    assert len(running) == core.REPUBLISH_SLOTS and "too_many_lookups" not in node.drops
    net._flush(4)
    net.run()  # lookups and STOREs complete; later ticks start the rest
    for t in range(2, 40):
        net.now = float(t)
        node.tick(float(t))
        net._flush(4)
        net.run()
    assert all(o.next_publish > 1.0 for o in node.own.values())
