"""Host cache: bounded, backoff per host, saved atomically and read back."""

from __future__ import annotations

import json
import random

from gnut.runtime.hostcache import DIAL_BACKOFF_BASE, HostCache


def test_add_pick_and_persist(tmp_path):
    path = tmp_path / "hosts.json"
    hc = HostCache(path)
    hc.add("127.0.0.1", 6346, "pong", now=10.0)
    hc.add("127.0.0.2", 6347, "x-try", now=11.0)
    hc.add("127.0.0.3", 0, "pong", now=12.0)  # invalid port: ignored
    hc.add("0.0.0.0", 6348, "pong", now=12.0)  # unspecified address: ignored
    assert len(hc) == 2
    hc.save()
    again = HostCache(path)
    assert ("127.0.0.1", 6346) in again and ("127.0.0.2", 6347) in again
    picked = again.pick(5, now=100.0, exclude={("127.0.0.1", 6346)}, rng=random.Random(1))
    assert picked == [("127.0.0.2", 6347)]


def test_backoff_and_success(tmp_path):
    hc = HostCache(None)
    hc.add("127.0.0.1", 1000, "pong", now=0.0)
    hc.failed("127.0.0.1", 1000, now=0.0)
    rng = random.Random(0)
    assert hc.pick(1, now=DIAL_BACKOFF_BASE, exclude=set(), rng=rng) == []
    assert hc.pick(1, now=DIAL_BACKOFF_BASE * 2 + 0.1, exclude=set(), rng=rng) == [("127.0.0.1", 1000)]
    hc.failed("127.0.0.1", 1000, now=0.0)
    hc.succeeded("127.0.0.1", 1000, now=1.0)
    assert hc.pick(1, now=1.0, exclude=set(), rng=rng) == [("127.0.0.1", 1000)]


def test_capacity_evicts_least_recently_seen():
    hc = HostCache(None, capacity=3)
    for i in range(5):
        hc.add("127.0.0.1", 2000 + i, "pong", now=float(i))
    assert len(hc) == 3
    assert ("127.0.0.1", 2000) not in hc and ("127.0.0.1", 2004) in hc


def test_corrupt_or_hostile_file_is_ignored(tmp_path):
    path = tmp_path / "hosts.json"
    path.write_text("{not json")
    assert len(HostCache(path)) == 0
    path.write_text(json.dumps([{"host": "127.0.0.1", "port": "x"}, {"port": 5}, 7, {"host": "h", "port": 70000},
                                {"host": "127.0.0.1", "port": 6346}]))
    hc = HostCache(path)
    assert len(hc) == 1 and ("127.0.0.1", 6346) in hc


def test_save_leaves_no_temp_files(tmp_path):
    path = tmp_path / "hosts.json"
    hc = HostCache(path)
    for i in range(50):
        hc.add("127.0.0.1", 3000 + i, "pong", now=float(i))
        hc.save()
    assert [p.name for p in tmp_path.iterdir()] == ["hosts.json"]
    assert len(json.loads(path.read_text())) == 50
