"""The pieces a download is built from: sources, the size they agree on, byte ranges, failures.

Kept apart from download.py (the swarm itself) and re-exported by it, so `download.Source`,
`download.needs_push`, `download.DownloadError`, ... stay where callers find them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import h11

from gnut.protocol.addresses import AddrClass, classify

MAX_RESPONSE_HEADER_BYTES = 16 * 1024  # real response heads are < 1 KiB (gtk-gnutella ~700 B)
# Data that failed verification is kept aside (to look at, never as a result) up to these bounds
# per download folder; the oldest copies go first, so repeated poisoning cannot fill the disk.
MAX_CORRUPT_KEPT = 3
MAX_CORRUPT_BYTES = 256 * 1024 * 1024


def prune_corrupt(folder: Path, keep: int = MAX_CORRUPT_KEPT, max_bytes: int = MAX_CORRUPT_BYTES) -> int:
    """Delete the oldest .corrupt-<n> copies in `folder` beyond `keep` files or `max_bytes`; return how many.

    The newest copy is kept even when it alone passes max_bytes (it is the one a user asks about).
    """
    copies = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if ".corrupt-" in entry.name and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    copies.append((st.st_mtime_ns, entry.name, st.st_size, entry.path))
    copies.sort(reverse=True)  # newest first
    kept = total = removed = 0
    for _mtime, _name, size, path in copies:
        if kept == 0 or (kept < keep and total + size <= max_bytes):
            kept += 1
            total += size
            continue
        with contextlib.suppress(OSError):
            os.unlink(path)
            removed += 1
    return removed


class DownloadError(Exception):
    """A download cannot complete (no usable source left, SHA-1 mismatch, local disk error)."""


def agreed_size(sources) -> int | None:
    """The file size to download: the one announced by the most distinct source addresses.

    Strategy: a hit can lie about its size, and whichever size we pick excludes the sources that
    announced another, so the first answer must not decide (a fast liar would steer the download
    away from every honest source). Each IP counts once per size; a tie goes to the smaller size
    (an inflated size costs disk and time, a smaller wrong one fails fast); zero and sizes above
    spam.MAX_PLAUSIBLE_SIZE never count. None when no source announces a usable size.
    """
    from gnut.protocol.spam import MAX_PLAUSIBLE_SIZE

    votes: dict[int, set[str]] = {}
    for s in sources:
        if 0 < s.size <= MAX_PLAUSIBLE_SIZE:
            votes.setdefault(s.size, set()).add(s.host)
    if not votes:
        return None
    return min(votes, key=lambda size: (-len(votes[size]), size))


@dataclass(frozen=True)
class Source:
    """One servent that announced the file in a QUERYHIT."""

    host: str
    port: int
    index: int
    name: str
    size: int
    urn: str | None
    servent_guid: bytes
    firewalled: bool
    push_proxies: tuple[tuple[str, int], ...] = ()
    tls: bool = False  # its hit carried GGEP "TLS": fetch over TLS (plain again if that fails)

    @property
    def key(self) -> str:
        """Identity of the source inside one download (address plus servent GUID)."""
        return f"{self.host}:{self.port}/{self.servent_guid.hex()}"


@dataclass(frozen=True)
class DownloadProgress:
    """A snapshot handed to the progress callback."""

    done: int
    total: int
    sources_active: int
    rate_bps: float
    state: str  # "downloading", "verifying", "restarting", "complete" or "failed"


PushFn = Callable[[Source], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


def needs_push(source: Source, *, assume_private_firewalled: bool = True) -> bool:
    """Tell whether `source` can only be reached through a PUSH (it connects back to us).

    Args:
        source: the candidate.
        assume_private_firewalled: treat loopback/private/link-local addresses as unreachable
            (INTEROP.md: such hits are firewalled); pass False on a loopback test network.

    Returns:
        True when the hit's push flag is set, its port is unusable, its address is unspecified,
        or (with assume_private_firewalled) its address is not publicly routable.
    """
    if source.firewalled or not 0 < source.port < 65536:
        return True
    try:
        ip = ipaddress.ip_address(source.host)
    except ValueError:
        return False  # a host name: leave it to the connect attempt
    if ip.is_unspecified or classify(source.host) is AddrClass.BOGON:
        return True  # multicast, documentation, reserved...: never dialled (protocol/addresses.py)
    return assume_private_firewalled and (ip.is_private or ip.is_loopback or ip.is_link_local)


class _Ranges:
    """Sorted, disjoint, half-open byte ranges [start, end)."""

    def __init__(self, spans: Iterable[tuple[int, int]] = ()) -> None:
        self._spans: list[tuple[int, int]] = []
        for start, end in spans:
            self.add(start, end)

    def add(self, start: int, end: int) -> None:
        if start >= end:
            return
        merged: list[tuple[int, int]] = []
        placed = False
        for a, b in self._spans:
            if b < start:
                merged.append((a, b))
            elif a > end:
                if not placed:
                    merged.append((start, end))
                    placed = True
                merged.append((a, b))
            else:
                start, end = min(a, start), max(b, end)
        if not placed:
            merged.append((start, end))
        self._spans = merged

    def remove(self, start: int, end: int) -> None:
        kept = []
        for a, b in self._spans:
            kept += [(x, y) for x, y in ((a, min(b, start)), (max(a, end), b)) if x < y]
        self._spans = kept

    def total(self) -> int:
        return sum(b - a for a, b in self._spans)

    def spans(self) -> list[tuple[int, int]]:
        return list(self._spans)

    def missing(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of [start, end) not covered."""
        gaps = []
        pos = start
        for a, b in self._spans:
            if b <= pos:
                continue
            if a >= end:
                break
            if a > pos:
                gaps.append((pos, a))
            pos = max(pos, b)
        if pos < end:
            gaps.append((pos, end))
        return gaps


class _SourceFailure(Exception):
    """A source did not deliver; `drop` ends it for good, `delay` overrides the backoff."""

    def __init__(self, reason: str, *, drop: bool = False, delay: float | None = None, queued: bool = False) -> None:
        super().__init__(reason)
        self.queued = queued  # a PARQ place: waiting is not failing
        self.drop = drop
        self.delay = delay


class _SourceState:
    """Bookkeeping for one source during a download."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.key = source.key
        self.failures = 0
        self.dropped = False
        self.last_error = ""
        self.pos = 0  # next byte of the span in flight
        self.end = 0  # end of the span in flight (pos == end: nothing in flight)


class _Conn:
    """One HTTP/1.1 client connection to a source, framed by h11."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEADER_BYTES)

    def close(self) -> None:
        self.writer.close()


def _header_map(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1").strip()
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out
