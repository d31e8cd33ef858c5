"""PARQ headers (gtk-gnutella doc/gnutella/PARQ examples) and the fair upload queue."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gnut.errors import RemoteProtocolError
from gnut.protocol import parq


def test_parse_parq_spec_example() -> None:
    s = parq.parse_queued(
        "position=1503; length=1840; ETA=4200; lifetime=3600;\r\n ID=6a074979f3201edbf323b6425fef4a53"
    )
    assert (s.position, s.length, s.eta, s.lifetime, s.id) == (
        1503,
        1840,
        4200,
        3600,
        "6a074979f3201edbf323b6425fef4a53",
    )


def test_parse_legacy_active_queueing() -> None:
    s = parq.parse_queued("position=2,length=5,limit=4,pollMin=45,pollMax=120")
    assert (s.position, s.length, s.limit, s.poll_min, s.poll_max, s.id) == (2, 5, 4, 45, 120, None)
    assert parq.parse_queue_version("1.0") == (1, 0)
    assert parq.parse_queue_version("position=2,length=5") is None


def test_format_round_trip() -> None:
    status = parq.QueueStatus(3, "ab" * 16, length=7, limit=1, lifetime=390, poll_min=90, poll_max=390)
    text = parq.format_queued(status)
    assert text.startswith("position=3; length=7; limit=1;")
    assert parq.parse_queued(text) == status


@pytest.mark.parametrize(
    "value",
    [
        "",
        "length=5",
        "position=x",
        "position=-1",
        "position=1; ID=zz",
        "position=1234567890",
        "a=b;" * 20,
        "p" * 600,
    ],
)
def test_parse_rejects(value: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parq.parse_queued(value)


def test_queue_line() -> None:
    line = parq.format_queue_line("6a074979f3201edbf323b6425fef4a53", "45.56.67.78", 1234)
    assert line == b"QUEUE 6a074979f3201edbf323b6425fef4a53 45.56.67.78:1234\r\n"
    assert parq.parse_queue_line(line) == ("6a074979f3201edbf323b6425fef4a53", "45.56.67.78", 1234)
    for bad in (
        b"QUEUE x 1.2.3.4:5\r\n",
        b"GIV 0:abc/x\r\n",
        b"QUEUE 6a07 1.2.3.4\r\n",
        b"\xff" * 10,
        b"Q" * 300,
    ):
        with pytest.raises(RemoteProtocolError):
            parq.parse_queue_line(bad)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_value_parses_or_raises_remote_error(value: str) -> None:
    try:
        parq.parse_queued(value)
    except RemoteProtocolError:
        pass


def test_retry_ladder() -> None:
    assert parq.retry_after(1) == 30 and parq.retry_after(2) == 50 and parq.retry_after(100) == 600


def _ids():
    counter = itertools.count()
    return lambda: f"{next(counter):032x}"


def test_one_slot_five_downloaders_served_in_order() -> None:
    q = parq.UploadQueue(slots=1, new_id=_ids())
    hosts = [f"10.0.0.{i}" for i in range(1, 6)]
    assert q.request(hosts[0], "f", now=0).serve
    places = {}
    for t, h in enumerate(hosts[1:], 1):
        d = q.request(h, "f", now=t)
        assert not d.serve and d.entry is not None
        places[h] = d.entry.position
    assert places == {hosts[1]: 1, hosts[2]: 2, hosts[3]: 3, hosts[4]: 4}
    served = [hosts[0]]
    now = 10.0
    current = hosts[0]
    while len(served) < 5:
        q.done(current, "f")
        now += 100  # past every Retry-After (<= 90 s here), inside every lifetime; only the head wins
        winners = [h for h in hosts if h not in served and q.request(h, "f", now=now).serve]
        assert len(winners) == 1
        current = winners[0]
        served.append(current)
    assert served == hosts
    assert q.counters["expired"] == 0 and q.counters["queued"] == 4


def test_round_robin_across_hosts() -> None:
    q = parq.UploadQueue(slots=1, new_id=_ids())
    assert q.request("9.9.9.9", "busy", now=0).serve
    greedy = [q.request("1.1.1.1", f"file{i}", now=1 + i) for i in range(3)]
    polite = q.request("2.2.2.2", "one", now=10)
    assert [d.entry.position for d in greedy] == [1, 3, 4]
    assert polite.entry.position == 2


def test_per_host_limit_and_queue_bound() -> None:
    q = parq.UploadQueue(slots=1, max_per_host=2, max_queue=3, new_id=_ids())
    q.request("9.9.9.9", "busy", now=0)
    assert not q.request("1.1.1.1", "a", now=1).serve
    assert q.request("1.1.1.1", "b", now=1).entry is not None
    refused = q.request("1.1.1.1", "c", now=1)
    assert refused.entry is None and "already queued" in refused.reason
    q.request("2.2.2.2", "a", now=1)
    full = q.request("3.3.3.3", "a", now=1)
    assert full.entry is None and "full" in full.reason
    assert q.counters["refused_host_limit"] == 1 and q.counters["refused_full"] == 1


def test_entries_expire_when_the_client_does_not_come_back() -> None:
    q = parq.UploadQueue(slots=1, new_id=_ids())
    q.request("9.9.9.9", "busy", now=0)
    d = q.request("1.1.1.1", "f", now=0)
    q.request("2.2.2.2", "f", now=1)
    assert q.request("2.2.2.2", "f", now=60).entry.position == 2
    later = d.lifetime + 1
    assert q.request("2.2.2.2", "f", now=later).entry.position == 1
    assert q.counters["expired"] == 1


def test_too_early_too_often_loses_the_place() -> None:
    q = parq.UploadQueue(slots=1, new_id=_ids())
    q.request("9.9.9.9", "busy", now=0)
    first = q.request("1.1.1.1", "f", now=0)
    for i in range(parq.MAX_EARLY):
        again = q.request("1.1.1.1", "f", now=1 + i)
        assert again.entry is first.entry and again.retry_after < first.retry_after
    dropped = q.request("1.1.1.1", "f", now=5)
    assert not dropped.serve and dropped.entry is None and q.counters["dropped_early"] == 1


def test_same_id_switches_file_and_keeps_the_place() -> None:
    q = parq.UploadQueue(slots=1, new_id=_ids())
    q.request("9.9.9.9", "busy", now=0)
    d = q.request("1.1.1.1", "f", now=0)
    q.request("2.2.2.2", "f", now=1)
    again = q.request("1.1.1.1", "g", now=40, queue_id=d.entry.id)
    assert again.entry.position == 1 and again.entry.file == "g"


def test_queue_callbacks() -> None:
    q = parq.UploadQueue(slots=1, new_id=_ids())
    q.request("9.9.9.9", "busy", now=0)
    d = q.request("1.1.1.1", "f", now=0, x_node=("1.1.1.1", 6000))
    assert q.callbacks_due(now=1) == []
    assert q.callbacks_due(now=d.retry_after + 1) == [(d.entry.id, ("1.1.1.1", 6000))]
    t = d.retry_after + 1 + 600
    assert len(q.callbacks_due(now=t)) == 1
    assert q.callbacks_due(now=t + 600) == []  # two unanswered callbacks: no third
    q.expire(now=t + 10_000)
    assert q.snapshot() == []


def test_status_header_of_a_decision() -> None:
    q = parq.UploadQueue(slots=2, new_id=_ids())
    q.request("9.9.9.9", "a", now=0)
    q.request("9.9.9.8", "a", now=0)
    d = q.request("1.1.1.1", "f", now=0)
    st_ = d.status(q.slots)
    assert st_.position == 1 and st_.limit == 2 and st_.poll_min == 30 and st_.id == d.entry.id
    assert parq.parse_queued(parq.format_queued(st_)) == st_
