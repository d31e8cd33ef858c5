"""The routing table: k-buckets split along our own KUID, replacement caches, Sybil bounds.

Bucket i holds the contacts whose KUID shares exactly i leading bits with ours; the last bucket
holds everything sharing at least as many bits.  Only that last bucket (the one holding our own
KUID) is ever split, so the table stays O(k log N) (the classic Kademlia tree, as Mojito's and
gtk-gnutella's routing.c build it).

Defences (gtk-gnutella's routing table has the same kind): at most `per_net24_bucket` contacts
from one /24 in a bucket and `per_net24_table` in the whole table (a Sybil farm on one network
cannot fill a bucket or eclipse a key); a KUID already held at another address is not taken
over while its holder still answers (KUID collision or spoofing); firewalled senders are never
added (the caller checks the flag).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

from gnut.dht.wire import KUID_LEN, Contact

K = 20  # bucket size (Mojito and gtk-gnutella KDA_K)
ID_BITS = KUID_LEN * 8
# Replacement cache per bucket: contacts seen while the bucket was full, promoted when a
# member dies.  k entries is what Mojito keeps.
REPLACEMENT_CACHE = K
# Failed RPCs in a row after which a contact is evicted in favour of a cached replacement
# (Mojito's default for "dead" nodes).
MAX_FAILURES = 2
# Contacts from one /24 allowed in a bucket, and in the whole table: a /24 is one operator.
PER_NET24_BUCKET = 3
PER_NET24_TABLE = 10


class AddResult(Enum):
    ADDED = "added"
    UPDATED = "updated"
    CACHED = "cached"  # bucket full: kept in the replacement cache
    REJECTED_NET = "rejected_net24"  # too many contacts from that /24
    COLLISION = "kuid_collision"  # KUID held by a live contact at another address
    SELF = "self"  # our own KUID (or a spoofer claiming it)


@dataclass(slots=True)
class Entry:
    contact: Contact
    last_seen: float
    net: str = ""
    failures: int = 0


def net24(host: str) -> str:
    """The /24 (IPv4) or /48 (IPv6) a host belongs to: the unit of the Sybil bounds."""
    if ":" not in host:  # dotted IPv4, as the codecs produce it
        return host.rpartition(".")[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if ip.version == 4:
        return ".".join(host.split(".")[:3])
    return ipaddress.ip_network(f"{host}/48", strict=False).network_address.compressed


def common_prefix(a: int, b: int) -> int:
    """Leading bits two 160-bit ids share (160 for equal ids)."""
    return ID_BITS - (a ^ b).bit_length()


class _Bucket:
    __slots__ = ("entries", "cache", "last_lookup")

    def __init__(self) -> None:
        self.entries: OrderedDict[bytes, Entry] = OrderedDict()  # least recently seen first
        self.cache: OrderedDict[bytes, Entry] = OrderedDict()
        self.last_lookup = 0.0


class RoutingTable:
    """k-buckets around `own` (20-byte KUID)."""

    def __init__(
        self,
        own: bytes,
        k: int = K,
        per_net24_bucket: int = PER_NET24_BUCKET,
        per_net24_table: int = PER_NET24_TABLE,
        splittable: bool = True,
    ) -> None:
        self.own = own
        self.own_id = int.from_bytes(own, "big")
        self.k = k
        self.per_net24_bucket = per_net24_bucket
        self.per_net24_table = per_net24_table
        self.splittable = splittable  # passive leaves keep one LRU list of k
        self.buckets: list[_Bucket] = [_Bucket()]
        self.nets: dict[str, int] = {}
        self.counts: dict[str, int] = {r.value: 0 for r in AddResult}

    # --- queries ------------------------------------------------------------------------
    def __len__(self) -> int:
        return sum(len(b.entries) for b in self.buckets)

    def index(self, kid: int) -> int:
        return min(common_prefix(self.own_id, kid), len(self.buckets) - 1)

    def get(self, kuid: bytes) -> Entry | None:
        return self.buckets[self.index(int.from_bytes(kuid, "big"))].entries.get(kuid)

    def contacts(self) -> list[Contact]:
        return [e.contact for b in self.buckets for e in b.entries.values()]

    def closest(self, target: bytes, n: int | None = None, exclude: bytes | None = None) -> list[Contact]:
        """The `n` (default k) live contacts closest to `target` by XOR distance."""
        t = int.from_bytes(target, "big")
        live = [
            e.contact
            for b in self.buckets
            for e in b.entries.values()
            if e.failures < MAX_FAILURES and e.contact.kuid != exclude
        ]
        live.sort(key=lambda c: c.kid ^ t)
        return live[: n or self.k]

    def stale_oldest(self, now: float, max_age: float) -> list[Contact]:
        """Per bucket, the least recently seen contact when not heard from in `max_age` s."""
        out = []
        for b in self.buckets:
            if b.entries:
                e = next(iter(b.entries.values()))
                if now - e.last_seen > max_age:
                    out.append(e.contact)
        return out

    def bucket_ranges(self) -> list[tuple[int, int]]:
        """(depth, contacts) per bucket, for status output."""
        return [(i, len(b.entries)) for i, b in enumerate(self.buckets)]

    # --- updates ------------------------------------------------------------------------
    def _count(self, result: AddResult) -> AddResult:
        self.counts[result.value] += 1
        return result

    def _net_add(self, host: str, delta: int) -> None:
        n = net24(host)
        v = self.nets.get(n, 0) + delta
        if v > 0:
            self.nets[n] = v
        else:
            self.nets.pop(n, None)

    def add(self, c: Contact, now: float) -> AddResult:
        """A contact we heard from directly (its message reached us from its address)."""
        if c.kuid == self.own:
            return self._count(AddResult.SELF)
        b = self.buckets[self.index(c.kid)]
        e = b.entries.get(c.kuid)
        if e is not None:
            if e.contact.host == c.host and e.contact.port == c.port:
                e.contact = c
                e.last_seen = now
                e.failures = 0
                b.entries.move_to_end(c.kuid)
                return self._count(AddResult.UPDATED)
            if e.failures == 0:
                return self._count(AddResult.COLLISION)
            self._remove(b, c.kuid)  # the old holder stopped answering: the new address wins
        net = net24(c.host)
        if self.nets.get(net, 0) >= self.per_net24_table:
            return self._count(AddResult.REJECTED_NET)
        if sum(1 for x in b.entries.values() if x.net == net) >= self.per_net24_bucket:
            return self._count(AddResult.REJECTED_NET)
        while len(b.entries) >= self.k and self._can_split(b):
            self._split()
            b = self.buckets[self.index(c.kid)]
        if len(b.entries) < self.k:
            b.entries[c.kuid] = Entry(c, now, net)
            b.cache.pop(c.kuid, None)
            self._net_add(c.host, 1)
            return self._count(AddResult.ADDED)
        for kuid, old in b.entries.items():  # a dead member makes room at once
            if old.failures >= MAX_FAILURES:
                self._remove(b, kuid)
                b.entries[c.kuid] = Entry(c, now, net)
                self._net_add(c.host, 1)
                return self._count(AddResult.ADDED)
        b.cache[c.kuid] = Entry(c, now, net)
        b.cache.move_to_end(c.kuid)
        while len(b.cache) > REPLACEMENT_CACHE:
            b.cache.popitem(last=False)
        return self._count(AddResult.CACHED)

    def _can_split(self, b: _Bucket) -> bool:
        return self.splittable and b is self.buckets[-1] and len(self.buckets) < ID_BITS

    def _split(self) -> None:
        depth = len(self.buckets) - 1
        old = self.buckets[-1]
        near = _Bucket()
        for kuid, e in list(old.entries.items()):
            if common_prefix(self.own_id, e.contact.kid) > depth:
                near.entries[kuid] = old.entries.pop(kuid)
        for kuid, e in list(old.cache.items()):
            if common_prefix(self.own_id, e.contact.kid) > depth:
                near.cache[kuid] = old.cache.pop(kuid)
        self.buckets.append(near)

    def _remove(self, b: _Bucket, kuid: bytes) -> None:
        e = b.entries.pop(kuid)
        self._net_add(e.contact.host, -1)

    def seen(self, kuid: bytes, now: float) -> None:
        """A contact answered an RPC."""
        e = self.get(kuid)
        if e is not None:
            e.last_seen = now
            e.failures = 0

    def failed(self, kuid: bytes) -> bool:
        """A contact missed an RPC; returns True when it was evicted (a replacement took its place)."""
        b = self.buckets[self.index(int.from_bytes(kuid, "big"))]
        e = b.entries.get(kuid)
        if e is None:
            b.cache.pop(kuid, None)
            return False
        e.failures += 1
        if e.failures < MAX_FAILURES or not b.cache:
            return False
        self._remove(b, kuid)
        while b.cache:
            _, repl = b.cache.popitem(last=True)  # most recently seen replacement first
            if self.nets.get(net24(repl.contact.host), 0) < self.per_net24_table:
                b.entries[repl.contact.kuid] = repl
                self._net_add(repl.contact.host, 1)
                break
        return True

    def mark_dead(self, kuid: bytes) -> None:
        """The contact said it shuts down: never hand it out, keep it (it may come back)."""
        e = self.get(kuid)
        if e is not None:
            e.failures = MAX_FAILURES

    def touch_bucket(self, target: bytes, now: float) -> None:
        self.buckets[self.index(int.from_bytes(target, "big"))].last_lookup = now

    def stale_buckets(self, now: float, period: float) -> list[int]:
        return [i for i, b in enumerate(self.buckets) if now - b.last_lookup > period]

    def random_id_in_bucket(self, i: int, rnd: int) -> bytes:
        """An id sharing exactly i leading bits with ours (i = last bucket: at least i bits)."""
        depth = i
        mask_keep = ((1 << depth) - 1) << (ID_BITS - depth) if depth else 0
        kid = (self.own_id & mask_keep) | (rnd & ((1 << (ID_BITS - depth)) - 1))
        if i < len(self.buckets) - 1:
            bit = 1 << (ID_BITS - depth - 1)
            kid = (kid & ~bit) | ((self.own_id & bit) ^ bit)
        return kid.to_bytes(KUID_LEN, "big")
