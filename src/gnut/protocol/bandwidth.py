"""Token buckets for upload, download and Gnutella traffic (sans-IO: the caller passes the time).

A bucket refills at `rate` bytes per second up to `burst` bytes. Writers ask once per chunk
(`grant(want, now)` returns how many bytes they may move now, possibly 0, and charges them), and
when given nothing sleep `wait(want, now)` seconds: no per-byte Python work. A rate of 0 means
unlimited. `parse_rate("200k")` reads the CLI's rate syntax.
"""

from __future__ import annotations

import re

from gnut.errors import LocalProtocolError

# A bucket holds at most this many seconds of traffic, so an idle link cannot save up a burst
# that would blow through the limit for long (and at least one 16 KiB chunk, so slow rates still
# move whole chunks).
BURST_SECONDS = 0.25
MIN_BURST = 16 * 1024
# A grant is never smaller than this (unless less is wanted): a writer waits for a worthwhile
# piece instead of spinning on a few bytes at a time.
MIN_GRANT = 8 * 1024
# Largest rate accepted: 10 GiB/s (anything above is "unlimited" in practice; a bound keeps the
# arithmetic honest).
MAX_RATE = 10 * 1024**3
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_rate(text: str | int | float) -> int:
    """Bytes per second from `200k`, `1.5M`, `64KiB/s`, `1000` (k = 1024); 0 means unlimited.

    Raises:
        ValueError: not a rate, negative, or above MAX_RATE.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(?:i?[bB])?(?:/s)?\s*", str(text))
        if not m:
            raise ValueError(f"not a rate: {str(text)[:40]!r} (examples: 200k, 1.5M, 0 for unlimited)")
        value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value < 0 or value > MAX_RATE or value != value:
        raise ValueError(f"rate {value:g} B/s is outside 0..{MAX_RATE}")
    return int(value)


def format_rate(rate: float) -> str:
    """`200.0 KiB/s`, `1.5 MiB/s`, `unlimited` for 0."""
    if rate <= 0:
        return "unlimited"
    for unit, scale in (("GiB/s", 1024**3), ("MiB/s", 1024**2), ("KiB/s", 1024)):
        if rate >= scale:
            return f"{rate / scale:.1f} {unit}"
    return f"{rate:.0f} B/s"


class TokenBucket:
    """`rate` bytes/s, at most `burst` bytes saved up (default: BURST_SECONDS of rate)."""

    __slots__ = ("rate", "burst", "_tokens", "_stamp", "granted", "waits")

    def __init__(self, rate: int, now: float, burst: int | None = None) -> None:
        self.rate = 0
        self.burst = 0
        self._tokens = 0.0
        self._stamp = now
        self.granted = 0  # bytes granted in total (for status)
        self.waits = 0  # times a writer was told to wait
        self.set_rate(rate, now, burst)

    @property
    def unlimited(self) -> bool:
        return self.rate == 0

    def set_rate(self, rate: int, now: float, burst: int | None = None) -> None:
        if not isinstance(rate, int) or not 0 <= rate <= MAX_RATE:
            raise LocalProtocolError(f"rate {rate!r} is outside 0..{MAX_RATE}")
        self._refill(now)
        self.rate = rate
        self.burst = burst if burst is not None else max(MIN_BURST, int(rate * BURST_SECONDS))
        self._tokens = min(self._tokens, self.burst)

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = max(self._stamp, now)

    def available(self, now: float) -> int:
        if self.unlimited:
            return MAX_RATE
        self._refill(now)
        return max(0, int(self._tokens))

    def grant(self, want: int, now: float) -> int:
        """Charge and return up to `want` bytes that may move now (0: call wait())."""
        if want <= 0:
            return 0
        if self.unlimited:
            self.granted += want
            return want
        self._refill(now)
        n = min(want, int(self._tokens))
        if n < min(want, MIN_GRANT, self.burst):
            self.waits += 1
            return 0
        self._tokens -= n
        self.granted += n
        return n

    def refund(self, n: int) -> None:
        """Give back `n` granted bytes that were not sent after all."""
        self.granted -= n
        if not self.unlimited:
            self._tokens = min(self.burst, self._tokens + n)

    def charge(self, n: int, now: float) -> None:
        """Record `n` bytes that moved without asking first (reads: the kernel decides the size).

        The balance may go negative; later grants wait until it is paid back.
        """
        self.granted += n
        if not self.unlimited:
            self._refill(now)
            self._tokens -= n

    def wait(self, want: int, now: float) -> float:
        """Seconds until a grant of `want` would give something (MIN_GRANT bytes or all of want)."""
        if self.unlimited:
            return 0.0
        self._refill(now)
        need = min(want, MIN_GRANT, self.burst) - self._tokens
        # One byte more, so that after the wait int(tokens) is surely enough (float rounding).
        return 0.0 if need <= 0 else (need + 1) / self.rate


class Limits:
    """The node's three buckets: uploads, downloads, Gnutella links (each may be unlimited)."""

    __slots__ = ("upload", "download", "gnutella")

    def __init__(self, now: float, upload: int = 0, download: int = 0, gnutella: int = 0) -> None:
        self.upload = TokenBucket(upload, now)
        self.download = TokenBucket(download, now)
        self.gnutella = TokenBucket(gnutella, now)

    def status(self) -> dict[str, dict[str, object]]:
        return {
            name: {"limit": b.rate, "limit_text": format_rate(b.rate), "bytes": b.granted, "waits": b.waits}
            for name, b in (("upload", self.upload), ("download", self.download), ("gnutella", self.gnutella))
        }
