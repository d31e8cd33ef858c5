"""Known servent addresses by pool, with per-entry trust, kept on disk atomically (good ones only)."""

# Strategy (after gtk-gnutella's hcache: fresh/valid host lists, good vs. unverified)
# --------
# Each pool ("ultrapeer", and "uhc" / "gwc" for host caches the bootstrap code feeds; leaves are
# never cached: they come and go and take no links) holds two ordered maps keyed by (host, port):
#
#   - good: entries that completed a handshake we dialled (mark_good), least recently proven
#     first. Only a newer good entry evicts a good one: unsolicited data can never push them out.
#     The pool reserves GOOD_SHARE of its capacity for them.
#   - unverified: everything peers told us (PONGs, X-Try, Listen-IP of incoming peers, disk rows
#     of the old format), least recently heard first. Eviction and expiry pop from the front.
#
# Every operation is O(1) amortised: a dict probe, an ordered-dict insert/move, pops from the
# front (the old cache scanned every entry to evict one: ~85 us per PONG at 2000 entries).
#
# What a peer can put in (the trust rules, each a named limit below):
#   - nothing the AddressPolicy refuses (bogons always; loopback/private unless we are on them)
#     nor anything on the hostiles list;
#   - an X-Try list adds at most XTRY_NEW_MAX new entries; one peer's PONGs at most
#     PONG_NEW_PER_MINUTE new entries a minute (token bucket per (source, peer address));
#   - at most PER_SUBNET unverified entries per /24 (IPv6: /48): one attacker's address block
#     cannot fill the cache;
#   - failing entries back off exponentially and are dropped after UNVERIFIED_MAX_FAILURES
#     (unverified) or GOOD_MAX_FAILURES (good) failures in a row; unverified entries expire
#     UNVERIFIED_MAX_AGE after they were last heard of, good ones GOOD_MAX_AGE after their last
#     success.
# What goes out: only good entries, and entries from a TRUSTED_SOURCES list, are saved to disk and
# passed on (X-Try, pongs): a --connect address that refused or did not resolve is never saved nor
# handed to other nodes, and a poisoned entry dies with the process.

from __future__ import annotations

import collections
import random
import re
import zlib
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path

from gnut.protocol.addresses import AddressPolicy, Hostiles, ip_value
from gnut.runtime.fsutil import atomic_write_json, read_json

# gtk-gnutella keeps a few thousand hosts; more is stale weight in a file we rewrite often.
HOST_CACHE_CAPACITY = 2000
# Share of a pool reserved for good (handshake-proven) entries: unverified ones never use it.
GOOD_SHARE = 0.5
# Redial backoff after a failed connect: doubles from BASE up to MAX seconds.
DIAL_BACKOFF_BASE = 2.0
DIAL_BACKOFF_MAX = 300.0
# Failures in a row after which an entry goes: an unverified address gets two chances (a peer may
# just be full), a proven one more (it answered before; it may be restarting).
UNVERIFIED_MAX_FAILURES = 2
GOOD_MAX_FAILURES = 6
# An unverified entry nobody mentioned for this long is stale; a good one unproven for a week too.
UNVERIFIED_MAX_AGE = 2 * 3600.0
GOOD_MAX_AGE = 7 * 86400.0
# New entries one X-Try list may add (a refusal offers ~10; 200 is an attempt to fill the cache).
XTRY_NEW_MAX = 10
# New entries one peer's PONGs may add per minute (pong caching answers a ping with ~6-10).
PONG_NEW_PER_MINUTE = 20
# Unverified entries per /24 (IPv6 /48): honest hosts are spread out, an attacker's block is not.
PER_SUBNET = 8
# Per-source rate buckets remembered (oldest forgotten): a bounded table under address churn.
SOURCE_BUCKETS_KEPT = 1024
# Pools this cache keeps; "leaf" is refused (leaves come and go and take no links).
POOLS = ("ultrapeer", "uhc", "gwc")
# Sources whose entries are saved and passed on before they are proven (bootstrap lists shipped or
# configured by the user for the uhc/gwc pools); the per-subnet cap does not apply to them.
TRUSTED_SOURCES = frozenset({"bootstrap"})
# Pools whose entries may be host names (host caches are named; the code that resolves a name
# checks the addresses it gets with protocol/addresses.py before sending anything).
NAMED_POOLS = frozenset({"uhc", "gwc"})
# A host name: dot-separated labels of letters, digits and hyphens (RFC 1123), 253 characters at most.
_NAME_RE = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?",
                      re.ASCII)
# Sources that are rate-limited per peer (with the peer's address as `via`), and their budgets.
_RATED = {"pong": PONG_NEW_PER_MINUTE}
# File format version of hosts.json rows (rows without it are the old, unverified format).
FILE_VERSION = 2


@dataclass(slots=True)
class HostEntry:
    """One known address with its history."""

    host: str
    port: int
    pool: str = "ultrapeer"
    source: str = "pong"
    added: float = 0.0
    seen: float = 0.0  # last time someone told us about it (or it answered)
    last_success: float = 0.0
    last_failure: float = 0.0
    failures: int = 0  # in a row
    next_try: float = 0.0
    good: bool = False
    subnet: tuple[int, int] = (0, 0)  # the /24 (IPv6 /48) it is counted in while unverified

    def as_row(self) -> dict:
        return {"v": FILE_VERSION, "host": self.host, "port": self.port, "pool": self.pool,
                "source": self.source, "seen": self.seen, "last_success": self.last_success,
                "good": self.good}


def _subnet(version: int, value: int) -> tuple[int, int]:
    """The /24 (IPv6: /48) of an address parsed by ip_value(); version 0 is a host name's domain."""
    return (4, value >> 8) if version == 4 else (6, value >> 80) if version == 6 else (0, value)


def _name_value(host: str) -> tuple[int, int] | None:
    """(0, a key of its last two labels) for a host name, None when `host` is not one."""
    if _NAME_RE.fullmatch(host) is None:
        return None
    return 0, zlib.crc32(".".join(host.lower().rstrip(".").split(".")[-2:]).encode())


class _Pool:
    __slots__ = ("name", "capacity", "good", "unverified", "subnets")

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        self.good: OrderedDict[tuple[str, int], HostEntry] = OrderedDict()
        self.unverified: OrderedDict[tuple[str, int], HostEntry] = OrderedDict()
        self.subnets: Counter[tuple[int, int]] = collections.Counter()

    def __len__(self) -> int:
        return len(self.good) + len(self.unverified)

    def get(self, key: tuple[str, int]) -> HostEntry | None:
        return self.good.get(key) or self.unverified.get(key)

    def drop_unverified(self, key: tuple[str, int]) -> None:
        e = self.unverified.pop(key, None)
        if e is not None:
            self._uncount(e)

    def _uncount(self, e: HostEntry) -> None:
        sub = e.subnet
        self.subnets[sub] -= 1
        if self.subnets[sub] <= 0:
            del self.subnets[sub]

    def pop_oldest_unverified(self) -> None:
        _, e = self.unverified.popitem(last=False)
        self._uncount(e)

    @property
    def unverified_room(self) -> int:
        """Unverified entries the pool takes: what good ones leave, never their reserved share."""
        return self.capacity - max(len(self.good), int(self.capacity * GOOD_SHARE))


class HostCache:
    """Pools of host:port entries: good (proven) and unverified, with per-host backoff.

    API for the node and the bootstrap code: add (or add_list for X-Try), mark_good,
    mark_failed, pick_for_dial, sample_good, save, stats. `policy` (AddressPolicy) and
    `hostiles` (addresses.Hostiles) are set by the node and may be replaced at any time.
    """

    def __init__(self, path: Path | None = None, capacity: int = HOST_CACHE_CAPACITY) -> None:
        self.path = path
        self.capacity = capacity
        self._pools = {name: _Pool(name, capacity) for name in POOLS}
        self.policy: AddressPolicy | None = None
        self.hostiles: Hostiles | None = None
        self.per_subnet = PER_SUBNET  # tests on one loopback /24 raise it
        self.xtry_new_max = XTRY_NEW_MAX
        self.refused: Counter[str] = collections.Counter()  # entries not taken, by reason
        self.added: Counter[str] = collections.Counter()  # new entries, by source
        self.expired = 0
        self._buckets: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        self.dirty = False
        if path is not None:
            self._load(path)

    # --- reading ---------------------------------------------------------------------------------
    def _load(self, path: Path) -> None:
        for row in read_json(path, []):
            try:
                host, port = str(row["host"]), int(row["port"])
                pool = str(row.get("pool", "ultrapeer"))
                good = row.get("v") == FILE_VERSION and row.get("good") is True
                seen = float(row.get("seen", 0.0))
                success = float(row.get("last_success", 0.0))
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
            parsed = ip_value(host) or (_name_value(host) if pool in NAMED_POOLS else None)
            if not 0 < port < 65536 or pool not in self._pools or parsed is None:
                continue
            # Old-format rows may hold anything a peer once sent: they come back unverified.
            if good:
                e = HostEntry(host, port, pool, str(row.get("source", "disk")), seen, seen, success, good=True)
                self._pools[pool].good[(host, port)] = e
            else:
                src = str(row.get("source", "disk"))
                self._add_unverified(self._pools[pool], host, port, src if src in TRUSTED_SOURCES else "disk", seen,
                                     parsed)

    def __len__(self) -> int:
        return sum(len(p) for p in self._pools.values())

    def __contains__(self, key: tuple[str, int]) -> bool:
        return any(p.get(key) is not None for p in self._pools.values())

    def get(self, host: str, port: int, pool: str = "ultrapeer") -> HostEntry | None:
        """The entry for host:port in `pool`, or None."""
        p = self._pools.get(pool)
        return None if p is None else p.get((host, port))

    def is_good(self, host: str, port: int, pool: str = "ultrapeer") -> bool:
        e = self.get(host, port, pool)
        return e is not None and e.good

    # --- adding ----------------------------------------------------------------------------------
    def check(self, host: str, port: int, pool: str = "ultrapeer") -> str | None:
        """Why host:port may not enter `pool` (a refusal reason), or None when it may."""
        return self._check(host, port, pool)[0]

    def _check(self, host: str, port: int, pool: str = "ultrapeer") -> tuple[str | None, tuple[int, int] | None]:
        """(refusal reason or None, the address parsed by ip_value(), or a host name's key)."""
        if not 0 < port < 65536 or not host:
            return "bad_port", None
        parsed = ip_value(host)
        if parsed is None:
            named = _name_value(host) if pool in NAMED_POOLS else None
            return ("invalid", None) if named is None else (None, named)
        if self.policy is not None:
            c = self.policy.verdict_value(*parsed)
            if c is not None:
                return c.value, parsed
        if self.hostiles is not None and self.hostiles.contains_value(*parsed):
            return "hostile", parsed
        return None, parsed

    def add(self, host: str, port: int, source: str, now: float, pool: str = "ultrapeer",
            via: str | None = None) -> str | None:
        """Record that `source` (via the peer at address `via`) told us about host:port.

        A known entry is refreshed (seen = now); a new one enters the pool's unverified list
        within the limits above.

        Returns:
            None when the entry is (now) known, else the reason it was refused (also counted in
            `refused`): bad_port, invalid, loopback/private/bogon, hostile, leaf_pool, rate,
            subnet_full.
        """
        p = self._pools.get(pool)
        if p is None:
            return self._refuse("leaf_pool" if pool == "leaf" else "unknown_pool")
        key = (host, port)
        e = p.get(key)
        if e is not None:  # checked when it came in (a later ban is checked when picking)
            e.seen = now
            if not e.good:
                p.unverified.move_to_end(key)
            return None
        why, parsed = self._check(host, port, pool)
        if why is not None:
            return self._refuse(why)
        budget = _RATED.get(source)
        if budget is not None and via is not None and not self._spend(source, via, budget, now):
            return self._refuse("rate")
        return self._add_unverified(p, host, port, source, now, parsed)

    def add_list(self, rows, source: str, now: float, pool: str = "ultrapeer", via: str | None = None) -> int:
        """Add an X-Try-style list: at most `xtry_new_max` new entries from one list.

        Returns:
            The number of new entries taken (the rest are counted as refused "list_cap").
        """
        taken = 0
        for host, port in rows:
            if taken >= self.xtry_new_max:
                if self.get(host, port, pool) is None:
                    self._refuse("list_cap")
                continue
            before = len(self._pools[pool]) if pool in self._pools else 0
            if self.add(host, port, source, now, pool, via) is None and pool in self._pools:
                taken += len(self._pools[pool]) > before
        return taken

    def _add_unverified(self, p: _Pool, host: str, port: int, source: str, now: float,
                        parsed: tuple[int, int]) -> str | None:
        self._expire(p, now)
        sub = _subnet(*parsed)
        if p.subnets[sub] >= self.per_subnet and source not in TRUSTED_SOURCES:
            return self._refuse("subnet_full")
        room = p.unverified_room
        if room <= 0:
            return self._refuse("full")
        while len(p.unverified) >= room:
            p.pop_oldest_unverified()
        p.unverified[(host, port)] = HostEntry(host, port, p.name, source, now, now, subnet=sub)
        p.subnets[sub] += 1
        self.added[source] += 1
        self.dirty = True
        return None

    def _refuse(self, why: str) -> str:
        self.refused[why] += 1
        return why

    def _spend(self, source: str, via: str, per_minute: int, now: float) -> bool:
        key = (source, via)
        b = self._buckets.pop(key, None)
        if b is None:
            b = [float(per_minute), now]
        tokens = min(float(per_minute), b[0] + (now - b[1]) * per_minute / 60.0)
        self._buckets[key] = b
        while len(self._buckets) > SOURCE_BUCKETS_KEPT:
            self._buckets.popitem(last=False)
        b[1] = now
        if tokens < 1.0:
            b[0] = tokens
            return False
        b[0] = tokens - 1.0
        return True

    def _expire(self, p: _Pool, now: float) -> None:
        """Drop unverified entries not heard of for UNVERIFIED_MAX_AGE (oldest first: O(1) amortised)."""
        while p.unverified:
            e = next(iter(p.unverified.values()))
            if now - e.seen < UNVERIFIED_MAX_AGE:
                break
            p.pop_oldest_unverified()
            self.expired += 1

    # --- outcomes --------------------------------------------------------------------------------
    def mark_good(self, host: str, port: int, now: float, pool: str = "ultrapeer", source: str = "handshake") -> bool:
        """host:port completed a handshake we dialled: it becomes (or stays) good.

        An address not known yet enters as good (e.g. a --connect address that answered). A good
        entry evicts only the least recently proven good entry when the pool is full of them.

        Returns:
            False when the address is refused (policy, hostiles, pool), True otherwise.
        """
        p = self._pools.get(pool)
        if p is None or self.check(host, port, pool) is not None:
            return False
        key = (host, port)
        e = p.good.pop(key, None)
        if e is None:
            e = p.unverified.get(key)
            if e is not None:
                p.drop_unverified(key)
            else:
                e = HostEntry(host, port, pool, source, now, now)
        e.good = True
        e.failures = 0
        e.next_try = 0.0
        e.seen = e.last_success = now
        while len(p.good) >= p.capacity:
            p.good.popitem(last=False)
        p.good[key] = e
        while len(p.unverified) > max(0, p.unverified_room):
            p.pop_oldest_unverified()
        self.dirty = True
        return True

    def mark_failed(self, host: str, port: int, now: float, pool: str = "ultrapeer") -> None:
        """A dial to host:port failed or was refused: back off, and forget it after too many."""
        p = self._pools.get(pool)
        if p is None:
            return
        key = (host, port)
        e = p.get(key)
        if e is None:
            return
        e.failures += 1
        e.last_failure = now
        e.next_try = now + min(DIAL_BACKOFF_MAX, DIAL_BACKOFF_BASE * (2 ** min(e.failures, 16)))
        if e.failures >= (GOOD_MAX_FAILURES if e.good else UNVERIFIED_MAX_FAILURES):
            if e.good:
                del p.good[key]
            else:
                p.drop_unverified(key)
            self.refused["failed_out"] += 1
        self.dirty = True

    # Names of the first host cache API, still used by callers.
    def succeeded(self, host: str, port: int, now: float) -> None:
        self.mark_good(host, port, now)

    def failed(self, host: str, port: int, now: float) -> None:
        self.mark_failed(host, port, now)

    # --- choosing --------------------------------------------------------------------------------
    def pick_for_dial(self, n: int, now: float, exclude: set[tuple[str, int]] | None = None,
                      rng: random.Random | None = None, pool: str = "ultrapeer") -> list[tuple[str, int]]:
        """Up to `n` hosts to dial now: good ones first (most recently proven, shuffled among
        the 4n freshest), then unverified ones (most recently heard of, shuffled likewise).

        Only entries whose backoff has passed and that the policy and hostiles list still allow.
        """
        p = self._pools.get(pool)
        if p is None or n <= 0:
            return []
        exclude = exclude or set()
        rng = rng or random.Random()
        self._expire(p, now)
        out: list[tuple[str, int]] = []
        for table in (p.good, p.unverified):
            want = n - len(out)
            if want <= 0:
                break
            head = []
            for key in reversed(table):
                e = table[key]
                if e.next_try <= now and key not in exclude and self.check(*key, pool) is None:
                    head.append(key)
                    if len(head) >= 4 * want:
                        break
            rng.shuffle(head)
            out += head[:want]
        return out

    def pick(self, n: int, now: float, exclude: set[tuple[str, int]], rng: random.Random) -> list[tuple[str, int]]:
        """pick_for_dial for the ultrapeer pool (the first API's name)."""
        return self.pick_for_dial(n, now, exclude, rng)

    def sample_good(self, n: int, pool: str = "ultrapeer") -> list[tuple[str, int]]:
        """The `n` most recently proven hosts, and trusted-source ones: what we pass on (X-Try, pongs)."""
        p = self._pools.get(pool)
        if p is None:
            return []
        out = []
        for table in (p.good, p.unverified):
            for key in reversed(table):
                if len(out) >= n:
                    return out
                e = table[key]
                if (e.good or e.source in TRUSTED_SOURCES) and self.check(*key, pool) is None:
                    out.append(key)
        return out

    def sample(self, n: int) -> list[tuple[str, int]]:
        """sample_good for the ultrapeer pool (the first API's name)."""
        return self.sample_good(n)

    # --- views and disk --------------------------------------------------------------------------
    def stats(self) -> dict:
        """Counts for `gnut status`: entries per pool, refusals by reason, additions by source."""
        return {
            "pools": {name: {"good": len(p.good), "unverified": len(p.unverified)} for name, p in self._pools.items()},
            "refused": dict(self.refused),
            "added": dict(self.added),
            "expired": self.expired,
        }

    def save(self) -> None:
        """Write good and trusted-source entries atomically, if anything changed."""
        if self.path is None or not self.dirty:
            return
        rows = []
        for p in self._pools.values():
            rows += [e.as_row() for e in p.good.values()]
            rows += [e.as_row() for e in p.unverified.values() if e.source in TRUSTED_SOURCES]
        atomic_write_json(self.path, rows)
        self.dirty = False

