"""protocol/addresses.py: the classifier (called, never sent to), hostiles lists, address votes."""

from __future__ import annotations

import pytest

from gnut.protocol.addresses import (
    AGREEMENT_NEEDED,
    VOTE_MAX_AGE,
    VOTES_KEPT,
    AddrClass,
    AddressPolicy,
    AddressVotes,
    Hostiles,
    classify,
)

CLASS_ROWS = [
    ("8.8.8.8", AddrClass.PUBLIC),
    ("1.1.1.1", AddrClass.PUBLIC),
    ("2a00:1450::1", AddrClass.PUBLIC),
    ("127.0.0.1", AddrClass.LOOPBACK),
    ("127.255.0.66", AddrClass.LOOPBACK),
    ("::1", AddrClass.LOOPBACK),
    ("::ffff:127.0.0.1", AddrClass.LOOPBACK),  # IPv4-mapped: judged as the IPv4 address
    ("10.1.2.3", AddrClass.PRIVATE),
    ("172.16.0.1", AddrClass.PRIVATE),
    ("172.31.255.255", AddrClass.PRIVATE),
    ("172.32.0.1", AddrClass.PUBLIC),
    ("192.168.1.1", AddrClass.PRIVATE),
    ("100.64.0.1", AddrClass.PRIVATE),
    ("169.254.1.1", AddrClass.PRIVATE),
    ("fd00::1", AddrClass.PRIVATE),
    ("fe80::1", AddrClass.PRIVATE),
    ("0.0.0.0", AddrClass.BOGON),
    ("0.1.2.3", AddrClass.BOGON),
    ("192.0.0.8", AddrClass.BOGON),
    ("192.0.2.1", AddrClass.BOGON),
    ("198.18.0.1", AddrClass.BOGON),
    ("198.19.255.1", AddrClass.BOGON),
    ("198.51.100.7", AddrClass.BOGON),
    ("203.0.113.9", AddrClass.BOGON),
    ("224.0.0.1", AddrClass.BOGON),
    ("239.255.255.250", AddrClass.BOGON),
    ("240.0.0.1", AddrClass.BOGON),
    ("255.255.255.255", AddrClass.BOGON),
    ("::", AddrClass.BOGON),
    ("2001:db8::1", AddrClass.BOGON),
    ("ff02::1", AddrClass.BOGON),
    ("::ffff:224.0.0.1", AddrClass.BOGON),
    ("example.com", AddrClass.INVALID),
    ("300.1.1.1", AddrClass.INVALID),
    ("", AddrClass.INVALID),
]


@pytest.mark.parametrize("addr, want", CLASS_ROWS)
def test_classify(addr, want):
    assert classify(addr) is want


def test_policy_allows_loopback_and_private_only_when_we_are_on_them():
    public, loop, lan = AddressPolicy("8.8.8.8"), AddressPolicy("127.0.0.1"), AddressPolicy("192.168.1.5")
    assert public.allows("1.2.3.4") and loop.allows("1.2.3.4") and lan.allows("1.2.3.4")
    assert not public.allows("127.0.0.66") and loop.allows("127.0.0.66") and not lan.allows("127.0.0.66")
    assert not public.allows("10.0.0.1") and not loop.allows("10.0.0.1") and lan.allows("10.0.0.1")
    for p in (public, loop, lan):
        assert p.verdict("224.0.0.1") is AddrClass.BOGON and p.verdict("x") is AddrClass.INVALID


def test_hostiles_format_and_lookup():
    h = Hostiles()
    added, bad = h.load_text(
        "# gtk-gnutella style\n1.2.3.4\n5.6.0.0/16   # a block\n\n  10.0.0.0/8\nbogus line\n2001:db8::/32\n"
        + "x" * 300 + "\n::ffff:9.9.9.9\n1.2.3.4\n"
    )
    assert added == 5 and len(h) == 5 and len(bad) == 2
    assert "1.2.3.4" in h and "1.2.3.5" not in h
    assert "5.6.255.1" in h and "5.7.0.1" not in h
    assert "10.200.0.1" in h and "2001:db8::77" in h and "9.9.9.9" in h and "::ffff:9.9.9.9" in h
    assert "not-an-ip" not in h
    assert h.add("7.7.7.7/32") == "7.7.7.7" and h.add("7.7.0.9/16") == "7.7.0.0/16"
    with pytest.raises(ValueError):
        h.add("nonsense")


def test_address_votes_need_agreement_and_can_be_corrected():
    v = AddressVotes()
    assert v.report("127.0.0.66", "127.0.0.99", 0.0) is None  # one liar
    assert v.report("127.0.0.66", "127.0.0.99", 1.0) is None  # the same liar again: still one vote
    assert v.report("127.0.0.67", "127.0.0.99", 1.0) is None  # two
    assert v.current is None
    for i in range(AGREEMENT_NEEDED - 1):
        assert v.report(f"127.0.0.{10 + i}", "127.0.0.1", 2.0) is None
    assert v.report("127.0.0.20", "127.0.0.1", 2.0) == "127.0.0.1"
    assert v.current == "127.0.0.1"
    # Public reporters count by /16: many addresses of one block are one vote.
    w = AddressVotes()
    for i in range(10):
        assert w.report(f"8.8.{i}.1", "9.9.9.9", 0.0) is None
    assert w.tally(0.0) == {"9.9.9.9": 1}
    assert w.report("1.1.0.1", "9.9.9.9", 0.0) is None
    assert w.report("2.2.0.1", "9.9.9.9", 0.0) == "9.9.9.9"
    # Our address changed: a new majority of distinct reporters moves it; a tie does not.
    for k in (3, 4, 5):
        w.report(f"{k}.{k}.0.1", "7.7.7.7", 10.0)
    assert w.current == "9.9.9.9"  # 3 against 3
    w.report("6.6.0.1", "7.7.7.7", 10.0)
    assert w.current == "7.7.7.7" and w.changes == 2
    # Old votes lapse; the table is bounded.
    assert w.tally(VOTE_MAX_AGE + 11.0) == {}
    for i in range(VOTES_KEPT * 2):
        w.report(f"{i % 250 + 1}.{i // 250}.0.1", "7.7.7.7", 20.0)
    assert sum(w.tally(20.0).values()) == VOTES_KEPT
