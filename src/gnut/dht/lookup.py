"""Iterative Kademlia lookups (FIND_NODE, FIND_VALUE) as a sans-IO state machine.

The caller asks `next_queries()` for the contacts to query now (never more than `alpha` in
flight), reports each outcome (`on_nodes`, `on_values`, `on_failure`) and reads `done`.  A
node lookup ends when the k closest contacts known have all answered or failed; a value lookup
ends at the first answer holding values (plus the answers already in flight).  Contacts a peer
hands out are only candidates: they join the routing table when they answer us themselves.

Bounds: the shortlist keeps the `SHORTLIST` closest candidates (a hostile peer listing
thousands of far or fake contacts cannot grow it), and one lookup sends at most `MAX_RPCS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gnut.dht.table import PER_NET24_BUCKET, K, net24
from gnut.dht.wire import Contact, DhtValue

ALPHA = 3  # queries in flight per lookup (Mojito and gtk-gnutella KDA_ALPHA)
# Candidates kept: the closest 4k (enough to replace the k closest when some die).
SHORTLIST = 4 * K
# RPCs one lookup may send: a converged lookup in 10^5 nodes needs ~40; 150 bounds a lookup
# fed by hostile peers that keep answering with fresh far contacts.
MAX_RPCS = 150

NEW, INFLIGHT, ANSWERED, FAILED = range(4)


def usable_address(host: str, port: int) -> bool:
    """An address a lookup may send to: IPv4 (our socket's family), a port, not 0/multicast/broadcast."""
    if port == 0 or ":" in host:
        return False
    first = host.split(".", 1)[0]
    return host not in ("0.0.0.0", "255.255.255.255") and first.isdigit() and not 224 <= int(first) <= 239


@dataclass(slots=True)
class _Cand:
    contact: Contact
    hop: int
    state: int = NEW
    token: bytes = b""


@dataclass
class Lookup:
    """One iterative lookup towards `target`; `values=True` makes it a FIND_VALUE."""

    target: bytes
    seeds: list[Contact]
    values: bool = False
    k: int = K
    alpha: int = ALPHA
    exclude: bytes = b""  # our own KUID: never a candidate
    # Candidates from one /24: a peer listing 40 "contacts" in one victim network cannot make
    # the lookup spray it (reflection), nor fill the shortlist with one operator's nodes.
    per_net24: int = PER_NET24_BUCKET
    cands: dict[bytes, _Cand] = field(default_factory=dict)
    found: list[DhtValue] = field(default_factory=list)
    found_from: list[Contact] = field(default_factory=list)
    rpcs: int = 0
    replies: int = 0
    timeouts: int = 0
    hops: int = 0  # deepest hop that answered
    value_hop: int = 0  # hop at which the first value arrived
    stopped: bool = False

    def __post_init__(self) -> None:
        self.tid = int.from_bytes(self.target, "big")
        self.nets: dict[str, int] = {}
        self.rejected = 0
        for c in self.seeds:
            self._add(c, 1)

    def _add(self, c: Contact, hop: int) -> None:
        if c.kuid == self.exclude or c.kuid in self.cands or len(c.kuid) != 20:
            return
        net = net24(c.host)
        if not usable_address(c.host, c.port) or self.nets.get(net, 0) >= self.per_net24:
            self.rejected += 1
            return
        self.nets[net] = self.nets.get(net, 0) + 1
        self.cands[c.kuid] = _Cand(c, hop)
        if len(self.cands) > SHORTLIST:
            far = max(
                (x for x in self.cands.values() if x.state == NEW),
                key=lambda x: x.contact.kid ^ self.tid,
                default=None,
            )
            if far is not None:
                del self.cands[far.contact.kuid]
                fnet = net24(far.contact.host)
                self.nets[fnet] -= 1

    def _ranked(self) -> list[_Cand]:
        return sorted(
            (c for c in self.cands.values() if c.state != FAILED), key=lambda c: c.contact.kid ^ self.tid
        )

    @property
    def inflight(self) -> int:
        return sum(1 for c in self.cands.values() if c.state == INFLIGHT)

    def next_queries(self) -> list[tuple[Contact, int]]:
        """(contact, hop) pairs to query now; marks them in flight."""
        if self.done or (self.values and self.found):
            return []
        out = []
        room = self.alpha - self.inflight
        for c in self._ranked()[: self.k]:
            if room <= 0 or self.rpcs >= MAX_RPCS:
                break
            if c.state == NEW:
                c.state = INFLIGHT
                self.rpcs += 1
                room -= 1
                out.append((c.contact, c.hop))
        return out

    def _answered(self, c: Contact) -> _Cand | None:
        cand = self.cands.get(c.kuid)
        if cand is None or cand.state != INFLIGHT:
            return None
        cand.state = ANSWERED
        self.replies += 1
        self.hops = max(self.hops, cand.hop)
        return cand

    def on_nodes(self, c: Contact, contacts: list[Contact], token: bytes = b"") -> None:
        cand = self._answered(c)
        if cand is None:
            return
        cand.token = token
        for x in contacts:
            self._add(x, cand.hop + 1)

    def on_values(self, c: Contact, values: list[DhtValue]) -> None:
        cand = self._answered(c)
        if cand is None:
            return
        if values:
            if not self.found:
                self.value_hop = cand.hop
            self.found.extend(v for v in values if v.key == self.target)
            self.found_from.append(c)

    def on_failure(self, c: Contact) -> None:
        cand = self.cands.get(c.kuid)
        if cand is not None and cand.state == INFLIGHT:
            cand.state = FAILED
            self.timeouts += 1

    @property
    def done(self) -> bool:
        if self.stopped:
            return True
        if self.values and self.found:
            return self.inflight == 0
        top = self._ranked()[: self.k]
        if any(c.state == INFLIGHT for c in self.cands.values()):
            return False
        return self.rpcs >= MAX_RPCS or all(c.state == ANSWERED for c in top)

    def closest_answered(self) -> list[tuple[Contact, bytes]]:
        """The k closest contacts that answered, with the token each gave (STORE targets)."""
        return [(c.contact, c.token) for c in self._ranked() if c.state == ANSWERED][: self.k]

    def unique_values(self) -> list[DhtValue]:
        seen: dict[tuple[bytes, bytes], DhtValue] = {}
        for v in self.found:
            seen.setdefault((v.creator.kuid, v.vtype), v)
        return list(seen.values())
