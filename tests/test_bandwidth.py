"""Token buckets and the rate syntax (time is passed in: no sleeping, no timing assertions)."""

from __future__ import annotations

import pytest

from gnut.errors import LocalProtocolError
from gnut.protocol import bandwidth
from gnut.protocol.bandwidth import TokenBucket


@pytest.mark.parametrize(
    "text,rate",
    [
        ("200k", 200 * 1024),
        ("1.5M", 1536 * 1024),
        ("64KiB/s", 65536),
        ("1000", 1000),
        ("0", 0),
        ("2g", 2 * 1024**3),
        (300, 300),
    ],
)
def test_parse_rate(text, rate: int) -> None:
    assert bandwidth.parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "fast", "-5k", "1.5.5M", "200x", "99g", "1e9"])
def test_parse_rate_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        bandwidth.parse_rate(text)


def test_format_rate() -> None:
    assert bandwidth.format_rate(0) == "unlimited"
    assert bandwidth.format_rate(200 * 1024) == "200.0 KiB/s"
    assert bandwidth.format_rate(1536 * 1024) == "1.5 MiB/s"


def test_unlimited_grants_everything() -> None:
    b = TokenBucket(0, now=0)
    assert b.grant(10**9, now=0) == 10**9 and b.wait(10**9, now=0) == 0


def test_rate_over_simulated_time_is_exact() -> None:
    rate = 200 * 1024
    b = TokenBucket(rate, now=0)
    now, moved, chunk = 0.0, 0, 64 * 1024
    while now < 20.0:
        n = b.grant(chunk, now)
        moved += n
        if n == 0:
            now += b.wait(chunk, now)
    # Over 20 simulated seconds: the rate times the time, plus at most the initial burst.
    assert rate * 20 - chunk <= moved <= rate * 20 + b.burst


def test_burst_is_capped_and_partial_grants() -> None:
    b = TokenBucket(100_000, now=0, burst=50_000)
    assert b.grant(10**6, now=100) == 50_000  # an idle hour saves only the burst
    assert b.grant(10, now=100) == 0
    assert b.wait(10_000, now=100) == pytest.approx((bandwidth.MIN_GRANT + 1) / 100_000)
    assert b.grant(10**6, now=100.05) == 0  # 5000 bytes saved: less than a worthwhile grant
    assert b.grant(4000, now=100.05) == 4000  # but enough for a small want
    assert b.grant(10**6, now=100.2) in (15999, 16000)  # float time


def test_charge_goes_into_debt() -> None:
    b = TokenBucket(1000, now=0, burst=1000)
    b.charge(3000, now=0)
    assert b.grant(1, now=1.0) == 0
    assert b.wait(1, now=1.0) == pytest.approx(2.002)  # buckets start empty: 3 s of debt, 1 s paid (+1 byte)
    assert b.grant(500, now=3.5) == 500


def test_set_rate_and_bounds() -> None:
    b = TokenBucket(1000, now=0)
    b.set_rate(0, now=1)
    assert b.unlimited
    with pytest.raises(LocalProtocolError):
        b.set_rate(-1, now=1)
    limits = bandwidth.Limits(now=0, upload=200 * 1024)
    status = limits.status()
    assert status["upload"]["limit_text"] == "200.0 KiB/s" and status["download"]["limit_text"] == "unlimited"
