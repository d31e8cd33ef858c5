"""The download mesh: known sources per SHA-1, bounded and aged, with bad-source rules (sans-IO, time passed in).

Rules (after gtk-gnutella's dmesh.c):

* At most MAX_PER_FILE entries per SHA-1 and MAX_FILES SHA-1s; an entry not seen for
  ENTRY_LIFETIME is dropped. When a file is full, the stalest entry not known good makes room.
* Fairness: one reporting address may put at most MAX_PER_REPORTER entries in one file's mesh,
  so a single peer cannot fill it with made-up sources.
* A source that failed for us (bad data, refused the file) is removed and banned for
  BAN_LIFETIME: it cannot come back through X-Alt, and it goes out in our X-Nalt.
* An X-Nalt from others only counts: the entry goes when MIN_BAD_REPORTS reporters from
  different networks (/16 for IPv4, /64 for IPv6 by default) named it. Until then it stays.
* What we send (X-Alt): when we hold the complete file, every entry without negative reports;
  while downloading, only entries we have verified (good). Never the peer's own address, never
  entries the peer already had from us (`since`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from gnut.protocol.altloc import AltLoc

MAX_PER_FILE = 256  # gtk-gnutella's MAX_ENTRIES
MAX_FILES = 2048  # SHA-1s with a mesh; the least recently updated goes first
MAX_PER_REPORTER = 32  # entries one address may introduce per file
MAX_BANNED_PER_FILE = 256  # banned sources remembered per file (oldest forgotten first)
ENTRY_LIFETIME = 12 * 3600.0  # half a day, gtk-gnutella's MAX_LIFETIME
BAN_LIFETIME = 2 * 3600.0  # gtk-gnutella's BAN_LIFETIME
MIN_BAD_REPORTS = 3  # gtk-gnutella's MIN_BAD_REPORT: distinct reporter networks before eviction


@dataclass(slots=True)
class Entry:
    loc: AltLoc
    inserted: float
    seen: float
    reporter: str | None
    good: bool = False
    bad_nets: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _FileMesh:
    entries: dict[tuple[str, int], Entry] = field(default_factory=dict)
    banned: dict[tuple[str, int], float] = field(default_factory=dict)  # key -> when banned
    per_reporter: dict[str, int] = field(default_factory=dict)
    updated: float = 0.0


class Mesh:
    """Sources per SHA-1 (20-byte digests or any hashable key)."""

    def __init__(
        self,
        max_per_file: int = MAX_PER_FILE,
        max_files: int = MAX_FILES,
        max_per_reporter: int = MAX_PER_REPORTER,
        min_bad_reports: int = MIN_BAD_REPORTS,
        reporter_prefix: tuple[int, int] = (16, 64),
        lifetime: float = ENTRY_LIFETIME,
        ban_lifetime: float = BAN_LIFETIME,
    ) -> None:
        self.max_per_file = max_per_file
        self.max_files = max_files
        self.max_per_reporter = max_per_reporter
        self.min_bad_reports = min_bad_reports
        self.reporter_prefix = reporter_prefix
        self.lifetime = lifetime
        self.ban_lifetime = ban_lifetime
        self._files: dict[object, _FileMesh] = {}
        self.counters = {
            "added": 0,
            "refreshed": 0,
            "refused_banned": 0,
            "refused_reporter_cap": 0,
            "evicted_full": 0,
            "expired": 0,
            "banned": 0,
            "nalt_reports": 0,
            "nalt_evictions": 0,
        }

    # -- updates ----------------------------------------------------------------------------------

    def _file(self, sha1: object, now: float) -> _FileMesh:
        fm = self._files.get(sha1)
        if fm is None:
            if len(self._files) >= self.max_files:
                stalest = min(self._files, key=lambda k: self._files[k].updated)
                del self._files[stalest]
            fm = self._files[sha1] = _FileMesh()
        fm.updated = now
        return fm

    def add(
        self, sha1: object, loc: AltLoc, now: float, reporter: str | None = None, good: bool = False
    ) -> bool:
        """Learn (or refresh) a source; `reporter` is the address that told us (None: we saw it ourselves).

        Returns:
            True if the source is in the mesh afterwards.
        """
        fm = self._file(sha1, now)
        banned_at = fm.banned.get(loc.key)
        if banned_at is not None:
            if now - banned_at < self.ban_lifetime:
                self.counters["refused_banned"] += 1
                return False
            del fm.banned[loc.key]
        entry = fm.entries.get(loc.key)
        if entry is not None:
            entry.seen = now
            entry.good = entry.good or good
            if loc.tls and not entry.loc.tls:
                entry.loc = loc
            self.counters["refreshed"] += 1
            return True
        if reporter is not None and fm.per_reporter.get(reporter, 0) >= self.max_per_reporter:
            self.counters["refused_reporter_cap"] += 1
            return False
        if len(fm.entries) >= self.max_per_file:
            self._expire_file(fm, now)
        if len(fm.entries) >= self.max_per_file:
            victim = min(fm.entries.values(), key=lambda e: (e.good, e.seen))
            if victim.good and not good:
                return False  # a full mesh of verified sources keeps them
            self._remove(fm, victim)
            self.counters["evicted_full"] += 1
        fm.entries[loc.key] = Entry(loc, now, now, reporter, good)
        if reporter is not None:
            fm.per_reporter[reporter] = fm.per_reporter.get(reporter, 0) + 1
        self.counters["added"] += 1
        return True

    def _remove(self, fm: _FileMesh, entry: Entry) -> None:
        del fm.entries[entry.loc.key]
        if entry.reporter is not None:
            left = fm.per_reporter.get(entry.reporter, 1) - 1
            if left > 0:
                fm.per_reporter[entry.reporter] = left
            else:
                fm.per_reporter.pop(entry.reporter, None)

    def mark_good(self, sha1: object, loc: AltLoc, now: float) -> None:
        """We downloaded verified data from this source: keep it and propagate it."""
        self.add(sha1, loc, now, good=True)

    def mark_bad(self, sha1: object, loc: AltLoc, now: float) -> None:
        """The source failed us (bad data, 404): remove it, ban it, name it in our X-Nalt."""
        fm = self._file(sha1, now)
        entry = fm.entries.get(loc.key)
        if entry is not None:
            self._remove(fm, entry)
        fm.banned[loc.key] = now
        self.counters["banned"] += 1
        while len(fm.banned) > MAX_BANNED_PER_FILE:
            del fm.banned[next(iter(fm.banned))]

    def _network(self, reporter: str) -> str:
        try:
            addr = ipaddress.ip_address(reporter)
        except ValueError:
            return reporter
        prefix = self.reporter_prefix[0] if addr.version == 4 else self.reporter_prefix[1]
        return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))

    def negative(self, sha1: object, loc: AltLoc, reporter: str, now: float) -> bool:
        """An X-Nalt from `reporter` names `loc`; True if that was the report that evicted it."""
        fm = self._files.get(sha1)
        entry = fm.entries.get(loc.key) if fm else None
        if fm is None or entry is None:
            return False
        self.counters["nalt_reports"] += 1
        entry.bad_nets.add(self._network(reporter))
        if len(entry.bad_nets) < self.min_bad_reports:
            return False
        self._remove(fm, entry)
        fm.banned[loc.key] = now
        self.counters["nalt_evictions"] += 1
        return True

    # -- queries ----------------------------------------------------------------------------------

    def _expire_file(self, fm: _FileMesh, now: float) -> None:
        for entry in [e for e in fm.entries.values() if now - e.seen >= self.lifetime]:
            self._remove(fm, entry)
            self.counters["expired"] += 1
        for key in [k for k, t in fm.banned.items() if now - t >= self.ban_lifetime]:
            del fm.banned[key]

    def expire(self, now: float) -> None:
        """Drop aged entries and bans, and files left empty."""
        for sha1 in list(self._files):
            fm = self._files[sha1]
            self._expire_file(fm, now)
            if not fm.entries and not fm.banned:
                del self._files[sha1]

    def sources(self, sha1: object, now: float) -> list[AltLoc]:
        """Live sources of a file, verified ones first, then the most recently seen."""
        fm = self._files.get(sha1)
        if fm is None:
            return []
        self._expire_file(fm, now)
        ordered = sorted(fm.entries.values(), key=lambda e: (not e.good, -e.seen))
        return [e.loc for e in ordered]

    def is_banned(self, sha1: object, loc: AltLoc, now: float) -> bool:
        fm = self._files.get(sha1)
        banned_at = fm.banned.get(loc.key) if fm else None
        return banned_at is not None and now - banned_at < self.ban_lifetime

    def to_send(
        self,
        sha1: object,
        now: float,
        peer_host: str | None = None,
        since: float | None = None,
        peer_port: int | None = None,
        complete: bool = True,
        limit: int = 20,
    ) -> tuple[list[AltLoc], list[AltLoc]]:
        """(X-Alt entries, X-Nalt entries) for one peer.

        Args:
            peer_host: the peer's address (its own entries are not sent back to it).
            peer_port: the peer's listening port when it said (X-Node): then only that exact
                address is left out, not other servents behind the same address.
            since: when we last sent this peer alt-locs for this file (only newer entries go).
            complete: we hold the whole file (send all entries without bad reports) or are
                still downloading it (send only verified ones).
            limit: at most this many of each.
        """
        fm = self._files.get(sha1)
        if fm is None:
            return [], []
        self._expire_file(fm, now)
        alts = []
        for e in sorted(fm.entries.values(), key=lambda e: -e.seen):
            mine = e.loc.host == peer_host and (peer_port is None or e.loc.port == peer_port)
            if mine or (since is not None and e.inserted <= since and e.seen <= since):
                continue
            if (complete and not e.bad_nets) or e.good:
                alts.append(e.loc)
                if len(alts) >= limit:
                    break
        nalts = [
            AltLoc(host, port)
            for (host, port), t in sorted(fm.banned.items(), key=lambda kv: -kv[1])
            if since is None or t > since
        ][:limit]
        return alts, nalts

    def __len__(self) -> int:
        return sum(len(fm.entries) for fm in self._files.values())
