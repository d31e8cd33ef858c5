"""What a DHT node keeps for others: values with expiry and quotas, security tokens, rate limits.

Values: under one key at most `MAX_VALUES_PER_KEY` (one per creator KUID), at most
`per_net24_per_key` from one /24 of creators (a farm cannot crowd honest sources out of a key),
at most `MAX_VALUES` in all (memory), each at most wire.VALUE_MAX_LEN bytes and expiring after
its type's lifetime unless republished.

Tokens: a FIND_NODE_RESPONSE gives the requester a 4-byte token bound to its source IP and
KUID; a STORE must bring it back.  Secrets rotate every TOKEN_LIFETIME seconds and the previous
one stays valid, so a token lives 1-2 periods (gtk-gnutella's token.c keeps them ~5 minutes).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass

from gnut.dht import wire
from gnut.dht.table import net24

# One value per creator under a key, ten creators at most (gtk-gnutella keys.c MAX_VALUES).
MAX_VALUES_PER_KEY = 10
# Values held for others in all: 65536 x at most 512 bytes + overhead stays under ~64 MiB.
MAX_VALUES = 65536
# Creators from one /24 under one key.
PER_NET24_PER_KEY = 3
# Values from creators of one /24 across all keys: one network cannot take the whole store
# (a node sharing 10,000 files in a 10,000-node DHT leaves ~20 ALOCs on each storing node).
PER_NET24_TOTAL = 512
# Lifetime of a stored value: one hour (gtk-gnutella DHT_VALUE_ALOC_EXPIRE / PROX / NOPE);
# publishers republish before that.
VALUE_LIFETIME = 3600.0
# Token secret rotation period (a token stays valid 1-2 periods).
TOKEN_LIFETIME = 300.0
TOKEN_LEN = 4
# Per-source-address rate limit: sustained messages per second and burst.  A busy Mojito node
# receives a few per second from one peer; 20/s with a burst of 60 leaves honest lookups alone.
RATE_PER_SOURCE = 20.0
RATE_BURST = 60.0
# Sources whose rate buckets are remembered (LRU): memory stays bounded under spoofed floods.
RATE_SOURCES = 4096


@dataclass(slots=True)
class Stored:
    value: wire.DhtValue
    expires: float
    original: bool  # stored by its creator itself (not a replica)


class ValueStore:
    """Values held for the DHT, keyed by (key, creator KUID)."""

    def __init__(
        self,
        per_net24_per_key: int = PER_NET24_PER_KEY,
        max_values: int = MAX_VALUES,
        per_net24_total: int = PER_NET24_TOTAL,
    ) -> None:
        self.keys: dict[bytes, dict[bytes, Stored]] = {}
        self.count = 0
        self.per_net24_per_key = per_net24_per_key
        self.per_net24_total = per_net24_total
        self.max_values = max_values
        self.codes: dict[int, int] = {}
        self.by_net: dict[str, int] = {}

    def _net_count(self, host: str, delta: int) -> None:
        net = net24(host)
        n = self.by_net.get(net, 0) + delta
        if n > 0:
            self.by_net[net] = n
        else:
            self.by_net.pop(net, None)

    def _code(self, code: int) -> int:
        self.codes[code] = self.codes.get(code, 0) + 1
        return code

    def store(self, v: wire.DhtValue, sender: wire.Contact, sender_ip: str, now: float) -> int:
        """Store `v` sent by `sender` (whose datagram came from `sender_ip`); returns a status code."""
        if v.vtype == wire.VT_ANY:
            return self._code(wire.SC_BAD_TYPE)
        if len(v.data) > wire.VALUE_MAX_LEN:
            return self._code(wire.SC_TOO_LARGE)
        if not _usable_creator(v.creator.host):
            return self._code(wire.SC_BAD_CREATOR)
        original = v.creator.kuid == sender.kuid
        if original and v.creator.host != sender_ip:
            return self._code(wire.SC_BAD_CREATOR)  # claims to be its creator from elsewhere
        slot = self.keys.get(v.key)
        old = slot.get(v.creator.kuid) if slot else None
        if not v.data:  # removal: only the creator itself may remove
            if not original:
                return self._code(wire.SC_BAD_VALUE)
            if old is not None:
                del slot[v.creator.kuid]
                self.count -= 1
                self._net_count(old.value.creator.host, -1)
                if not slot:
                    del self.keys[v.key]
            return self._code(wire.SC_OK)
        if old is not None:
            if not original and old.value.data != v.data and old.original:
                return self._code(wire.SC_DATA_MISMATCH)
            self._net_count(old.value.creator.host, -1)
            self._net_count(v.creator.host, 1)
            old.value = v
            old.expires = now + VALUE_LIFETIME
            old.original = original or old.original
            return self._code(wire.SC_OK)
        if slot is not None and len(slot) >= MAX_VALUES_PER_KEY:
            return self._code(wire.SC_FULL)
        if self.count >= self.max_values:
            return self._code(wire.SC_EXHAUSTED)
        net = net24(v.creator.host)
        if slot is not None and sum(1 for s in slot.values() if net24(s.value.creator.host) == net) >= (
            self.per_net24_per_key
        ):
            return self._code(wire.SC_QUOTA)
        if self.by_net.get(net, 0) >= self.per_net24_total:
            return self._code(wire.SC_QUOTA)
        self.keys.setdefault(v.key, {})[v.creator.kuid] = Stored(v, now + VALUE_LIFETIME, original)
        self.count += 1
        self._net_count(v.creator.host, 1)
        return self._code(wire.SC_OK)

    def get(
        self, key: bytes, vtype: bytes, now: float, secondary: list[bytes] | None = None
    ) -> list[wire.DhtValue]:
        slot = self.keys.get(key)
        if not slot:
            return []
        out = []
        for kuid, s in slot.items():
            if s.expires <= now or (secondary and kuid not in secondary):
                continue
            if vtype in (wire.VT_ANY, s.value.vtype):
                out.append(s.value)
        return out

    def expire(self, now: float) -> int:
        gone = 0
        for key in list(self.keys):
            slot = self.keys[key]
            for kuid in [k for k, s in slot.items() if s.expires <= now]:
                self._net_count(slot.pop(kuid).value.creator.host, -1)
                gone += 1
            if not slot:
                del self.keys[key]
        self.count -= gone
        return gone


def _usable_creator(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not (
        ip.is_unspecified
        or ip.is_multicast
        or (ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255"))
    )


class Tokens:
    """Security tokens bound to (source IP, KUID), with rotating secrets."""

    def __init__(self, seed: bytes, now: float) -> None:
        self.seed = seed
        self.epoch = int(now // TOKEN_LIFETIME)

    def _mac(self, epoch: int, ip: str, kuid: bytes) -> bytes:
        key = self.seed + epoch.to_bytes(8, "big", signed=True)
        return hmac.new(key, ip.encode() + b"|" + kuid, hashlib.sha1).digest()[:TOKEN_LEN]

    def make(self, ip: str, kuid: bytes, now: float) -> bytes:
        return self._mac(int(now // TOKEN_LIFETIME), ip, kuid)

    def check(self, token: bytes, ip: str, kuid: bytes, now: float) -> bool:
        epoch = int(now // TOKEN_LIFETIME)
        return any(hmac.compare_digest(token, self._mac(e, ip, kuid)) for e in (epoch, epoch - 1))


class RateLimiter:
    """Token buckets per source IP, LRU-bounded."""

    def __init__(
        self, rate: float = RATE_PER_SOURCE, burst: float = RATE_BURST, sources: int = RATE_SOURCES
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.sources = sources
        self.buckets: OrderedDict[str, list[float]] = OrderedDict()

    def allow(self, ip: str, now: float) -> bool:
        b = self.buckets.get(ip)
        if b is None:
            b = self.buckets[ip] = [self.burst, now]
            if len(self.buckets) > self.sources:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(ip)
            b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
            b[1] = now
        if b[0] < 1.0:
            return False
        b[0] -= 1.0
        return True
