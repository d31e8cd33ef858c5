"""Host cache: pools, good vs unverified, bounded per source and subnet, backoff, saved atomically."""

from __future__ import annotations

import json
import random

from gnut.protocol.addresses import AddressPolicy, Hostiles
from gnut.runtime import hostcache as hcmod
from gnut.runtime.hostcache import DIAL_BACKOFF_BASE, HostCache


def test_add_pick_and_persist_only_good_entries(tmp_path):
    path = tmp_path / "hosts.json"
    hc = HostCache(path)
    assert hc.add("127.0.0.1", 6346, "pong", now=10.0) is None
    assert hc.add("127.0.0.2", 6347, "x-try", now=11.0) is None
    assert hc.add("127.0.0.3", 0, "pong", now=12.0) == "bad_port"
    assert hc.add("not-an-ip", 6348, "pong", now=12.0) == "invalid"
    assert len(hc) == 2
    hc.mark_good("127.0.0.1", 6346, now=13.0)  # it answered a handshake we dialled
    hc.save()
    again = HostCache(path)
    # Only the proven entry was saved; the unverified one dies with the process.
    assert ("127.0.0.1", 6346) in again and ("127.0.0.2", 6347) not in again
    assert again.is_good("127.0.0.1", 6346)
    assert again.pick(5, now=100.0, exclude=set(), rng=random.Random(1)) == [("127.0.0.1", 6346)]
    assert again.pick(5, now=100.0, exclude={("127.0.0.1", 6346)}, rng=random.Random(1)) == []


def test_a_connect_address_that_never_answered_is_neither_saved_nor_passed_on(tmp_path):
    path = tmp_path / "hosts.json"
    hc = HostCache(path)
    hc.add("127.0.0.9", 1, "config", now=0.0)  # --connect: dialled, refused
    hc.mark_failed("127.0.0.9", 1, now=0.0)
    hc.add("127.0.0.8", 2, "config", now=0.0)  # --connect: answered
    hc.mark_good("127.0.0.8", 2, now=1.0)
    assert hc.sample_good(10) == [("127.0.0.8", 2)]
    hc.save()
    assert [(r["host"], r["port"]) for r in json.loads(path.read_text())] == [("127.0.0.8", 2)]


def test_backoff_success_and_failing_out():
    hc = HostCache(None)
    hc.add("127.0.0.1", 1000, "pong", now=0.0)
    hc.mark_failed("127.0.0.1", 1000, now=0.0)
    rng = random.Random(0)
    assert hc.pick(1, now=DIAL_BACKOFF_BASE, exclude=set(), rng=rng) == []
    assert hc.pick(1, now=DIAL_BACKOFF_BASE * 2 + 0.1, exclude=set(), rng=rng) == [("127.0.0.1", 1000)]
    hc.mark_good("127.0.0.1", 1000, now=1.0)
    assert hc.pick(1, now=1.0, exclude=set(), rng=rng) == [("127.0.0.1", 1000)]
    # An unverified entry goes after UNVERIFIED_MAX_FAILURES failures; a good one after GOOD_MAX_FAILURES.
    hc.add("127.0.0.2", 1000, "pong", now=0.0)
    for _ in range(hcmod.UNVERIFIED_MAX_FAILURES):
        hc.mark_failed("127.0.0.2", 1000, now=2.0)
    assert ("127.0.0.2", 1000) not in hc
    for _ in range(hcmod.GOOD_MAX_FAILURES - 1):
        hc.mark_failed("127.0.0.1", 1000, now=2.0)
    assert ("127.0.0.1", 1000) in hc
    hc.mark_failed("127.0.0.1", 1000, now=2.0)
    assert ("127.0.0.1", 1000) not in hc and hc.stats()["refused"]["failed_out"] == 2


def test_unverified_entries_expire_good_ones_stay():
    hc = HostCache(None)
    hc.add("127.0.0.1", 1, "pong", now=0.0)
    hc.mark_good("127.0.0.2", 2, now=0.0)
    later = hcmod.UNVERIFIED_MAX_AGE + 1
    assert hc.pick_for_dial(5, later, rng=random.Random(0)) == [("127.0.0.2", 2)]
    assert ("127.0.0.1", 1) not in hc and hc.expired == 1


def test_unsolicited_data_cannot_evict_proven_entries():
    hc = HostCache(None, capacity=20)
    hc.per_subnet = 1000
    for i in range(5):
        hc.mark_good("127.0.1.1", 100 + i, now=0.0)
    for i in range(500):  # a flood of pongs from an attacker
        hc.add("127.0.2.1", 1000 + i, "x-try", now=1.0 + i)
    st = hc.stats()["pools"]["ultrapeer"]
    assert st["good"] == 5 and st["unverified"] == 20 - 20 // 2  # the good share stays reserved
    assert all(hc.is_good("127.0.1.1", 100 + i) for i in range(5))
    # Dialling prefers the proven entries; only they are passed on.
    first = hc.pick_for_dial(5, 600.0, rng=random.Random(3))
    assert sorted(first) == [("127.0.1.1", 100 + i) for i in range(5)]
    assert sorted(hc.sample_good(10)) == sorted(first)


def test_limits_per_list_per_source_and_per_subnet():
    hc = HostCache(None)
    rows = [(f"8.{i}.0.1", 6346) for i in range(200)]
    assert hc.add_list(rows, "x-try", 0.0, via="127.0.0.66") == hcmod.XTRY_NEW_MAX
    assert hc.stats()["refused"]["list_cap"] == 200 - hcmod.XTRY_NEW_MAX
    # PONGs relayed by one peer: PONG_NEW_PER_MINUTE new entries a minute, other peers unaffected.
    took = sum(hc.add(f"9.{i}.1.1", 6346, "pong", 0.0, via="127.0.0.66") is None for i in range(100))
    assert took == hcmod.PONG_NEW_PER_MINUTE
    assert hc.add("9.200.1.1", 6346, "pong", 0.0, via="127.0.0.7") is None
    assert hc.add("9.201.1.1", 6346, "pong", 60.0, via="127.0.0.66") is None  # refilled
    # One /24: PER_SUBNET unverified entries at most.
    took = sum(hc.add("1.2.3.4", 1000 + i, "handshake", 0.0) is None for i in range(50))
    assert took == hcmod.PER_SUBNET and hc.refused["subnet_full"] == 50 - hcmod.PER_SUBNET


def test_policy_hostiles_and_pools():
    hc = HostCache(None)
    hc.policy = AddressPolicy("8.8.8.8")  # a node on a public address
    for host, why in (("127.0.0.5", "loopback"), ("10.1.2.3", "private"), ("224.0.0.1", "bogon"),
                      ("192.0.2.7", "bogon"), ("0.1.2.3", "bogon")):
        assert hc.add(host, 6346, "pong", 0.0) == why
    hc.hostiles = Hostiles()
    hc.hostiles.add("5.6.0.0/16")
    assert hc.add("5.6.7.8", 6346, "pong", 0.0) == "hostile"
    assert hc.add("5.7.7.8", 6346, "pong", 0.0) is None
    assert hc.add("5.7.7.9", 6346, "handshake", 0.0, pool="leaf") == "leaf_pool"
    assert hc.add("5.7.7.9", 6346, "bootstrap", 0.0, pool="uhc") is None
    assert hc.pick_for_dial(5, 1.0, pool="uhc") == [("5.7.7.9", 6346)]
    assert hc.sample_good(5, pool="uhc") == [("5.7.7.9", 6346)]  # a trusted source
    # A ban after the fact: never picked again.
    hc.hostiles.add("5.7.7.8")
    assert hc.pick_for_dial(5, 1.0) == []
    loop = HostCache(None)
    loop.policy = AddressPolicy("127.0.0.1")  # a test network: loopback peers are fine
    assert loop.add("127.0.0.5", 6346, "pong", 0.0) is None and loop.add("10.0.0.1", 1, "pong", 0.0) == "private"


def test_corrupt_or_hostile_file_is_ignored(tmp_path):
    path = tmp_path / "hosts.json"
    path.write_text("{not json")
    assert len(HostCache(path)) == 0
    path.write_text(json.dumps([{"host": "127.0.0.1", "port": "x"}, {"port": 5}, 7, {"host": "h", "port": 70000},
                                {"host": "127.0.0.1", "port": 6346}, {"host": "1.2.3.4", "port": 1, "pool": "x"}]))
    hc = HostCache(path)
    # The old format (no version): loaded, but unverified.
    assert len(hc) == 1 and ("127.0.0.1", 6346) in hc and not hc.is_good("127.0.0.1", 6346)


def test_save_leaves_no_temp_files(tmp_path):
    path = tmp_path / "hosts.json"
    hc = HostCache(path)
    for i in range(50):
        hc.mark_good("127.0.0.1", 3000 + i, now=float(i))
        hc.save()
    assert [p.name for p in tmp_path.iterdir()] == ["hosts.json"]
    assert len(json.loads(path.read_text())) == 50


def test_host_cache_pools_take_names_and_bootstrap_lists():
    """uhc/gwc pools (fed by the bootstrap code) hold host names; the ultrapeer pool only addresses."""
    hc = HostCache(None)
    hc.policy = AddressPolicy("8.8.8.8")
    assert hc.add("uhc.example.net", 6346, "bootstrap", 0.0, pool="uhc") is None
    assert hc.add("gwc.example.org", 80, "bootstrap", 0.0, pool="gwc") is None
    assert hc.add("uhc.example.net", 6346, "pong", 0.0) == "invalid"  # not in the ultrapeer pool
    assert hc.add("bad..name", 1, "bootstrap", 0.0, pool="uhc") == "invalid"
    assert hc.add("-x.example", 1, "bootstrap", 0.0, pool="uhc") == "invalid"
    # A bootstrap list is trusted: not capped per subnet, saved and passed on before it is proven.
    for i in range(hcmod.PER_SUBNET + 5):
        assert hc.add(f"u{i}.example.net", 6346, "bootstrap", 0.0, pool="uhc") is None
    # Names from untrusted sources are capped per domain like addresses per /24.
    took = sum(hc.add(f"h{i}.evil.example", 1, "pong", 0.0, pool="uhc") is None for i in range(30))
    assert took == hcmod.PER_SUBNET
    assert ("uhc.example.net", 6346) in hc.sample_good(100, pool="uhc")
    assert hc.pick_for_dial(1, 1.0, pool="gwc") == [("gwc.example.org", 80)]
    assert hc.mark_good("uhc.example.net", 6346, 1.0, pool="uhc")


def test_bootstrap_entries_are_saved_and_reloaded(tmp_path):
    path = tmp_path / "hosts.json"
    hc = HostCache(path)
    hc.add("uhc.example.net", 6346, "bootstrap", 0.0, pool="uhc")
    hc.add("1.2.3.4", 6346, "pong", 0.0, pool="uhc")  # unverified, untrusted: not saved
    hc.save()
    again = HostCache(path)
    assert again.get("uhc.example.net", 6346, "uhc") is not None and len(again) == 1
    again.dirty = True
    again.save()  # a second restart keeps it too
    assert HostCache(path).get("uhc.example.net", 6346, "uhc").source == "bootstrap"
