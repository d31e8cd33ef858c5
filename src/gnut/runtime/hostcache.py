"""Known servent addresses, learned from PONGs, X-Try headers and hits, kept on disk atomically."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from gnut.runtime.fsutil import atomic_write_json, read_json

# gtk-gnutella keeps a few thousand hosts; more is stale weight in a file we rewrite often.
HOST_CACHE_CAPACITY = 2000
# Redial backoff after a failed connect: doubles from BASE up to MAX seconds.
DIAL_BACKOFF_BASE = 2.0
DIAL_BACKOFF_MAX = 300.0


@dataclass(slots=True)
class HostEntry:
    """One known address with its dial history."""

    host: str
    port: int
    source: str = "pong"
    seen: float = 0.0
    failures: int = 0
    next_try: float = 0.0


class HostCache:
    """A bounded set of host:port entries with per-host dial backoff.

    Strategy: newest first; when full, the entry seen longest ago goes. `pick` returns
    hosts whose backoff has passed, in random order among the freshest, so a network of
    gnut nodes does not all dial the same host at once.
    """

    def __init__(self, path: Path | None = None, capacity: int = HOST_CACHE_CAPACITY) -> None:
        self.path = path
        self.capacity = capacity
        self._hosts: dict[tuple[str, int], HostEntry] = {}
        self.dirty = False
        if path is not None:
            for row in read_json(path, []):
                try:
                    e = HostEntry(str(row["host"]), int(row["port"]), str(row.get("source", "disk")),
                                  float(row.get("seen", 0.0)))
                except (KeyError, TypeError, ValueError):
                    continue
                if 0 < e.port < 65536:
                    self._hosts[(e.host, e.port)] = e

    def __len__(self) -> int:
        return len(self._hosts)

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self._hosts

    def add(self, host: str, port: int, source: str, now: float) -> None:
        """Record `host:port` as seen at `now` (ignored when the port is invalid)."""
        if not (0 < port < 65536) or not host or host == "0.0.0.0":
            return
        e = self._hosts.get((host, port))
        if e is None:
            if len(self._hosts) >= self.capacity:
                oldest = min(self._hosts.values(), key=lambda h: h.seen)
                del self._hosts[(oldest.host, oldest.port)]
            self._hosts[(host, port)] = HostEntry(host, port, source, now)
        else:
            e.seen = now
        self.dirty = True

    def failed(self, host: str, port: int, now: float) -> None:
        """Back off from `host:port` after a failed dial or refusal."""
        e = self._hosts.get((host, port))
        if e is None:
            return
        e.failures += 1
        e.next_try = now + min(DIAL_BACKOFF_MAX, DIAL_BACKOFF_BASE * (2 ** min(e.failures, 16)))
        self.dirty = True

    def succeeded(self, host: str, port: int, now: float) -> None:
        """Clear the backoff of `host:port` after a good connection."""
        e = self._hosts.get((host, port))
        if e is not None:
            e.failures = 0
            e.next_try = 0.0
            e.seen = now
            self.dirty = True

    def pick(self, n: int, now: float, exclude: set[tuple[str, int]], rng: random.Random) -> list[tuple[str, int]]:
        """Up to `n` dialable hosts not in `exclude`, fresher first with some shuffling."""
        ready = [e for k, e in self._hosts.items() if e.next_try <= now and k not in exclude]
        ready.sort(key=lambda e: -e.seen)
        head = ready[: max(n * 4, n)]
        rng.shuffle(head)
        return [(e.host, e.port) for e in head[:n]]

    def sample(self, n: int) -> list[tuple[str, int]]:
        """The `n` most recently seen hosts (for X-Try-Ultrapeers)."""
        rows = sorted(self._hosts.values(), key=lambda e: -e.seen)[:n]
        return [(e.host, e.port) for e in rows]

    def save(self) -> None:
        """Write the cache to its file atomically if it changed."""
        if self.path is None or not self.dirty:
            return
        rows = [{"host": e.host, "port": e.port, "source": e.source, "seen": e.seen} for e in self._hosts.values()]
        atomic_write_json(self.path, rows)
        self.dirty = False
