"""The DHT on the simulator: thousands of real gnut.dht.DhtCore nodes on a virtual clock.

Strategy: each simulated node is a DhtCore (the code the runtime runs) with a label address
(never sent to: datagrams go through a heap in memory, encoded and decoded by the real Mojito
codecs).  Joining 10^4 nodes one by one through real bootstrap lookups would cost hours of
CPU, so routing tables are filled (lazily, when a node is first touched) by an oracle that gives every node what a long-lived
Kademlia node converges to: for each bucket depth d, up to k random contacts from the id
range sharing exactly d bits with it, inserted through RoutingTable.add (splitting, /24
bounds and all).  Publications and lookups then run the real iterative algorithms; every
datagram put on the network is one message.  Churn marks a share of nodes dead after the
tables are built: their datagrams vanish, their RPCs time out (the real timeout path).
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import random
from collections.abc import Sequence
from dataclasses import dataclass

from gnut.dht import wire
from gnut.dht.core import RPC_TIMEOUT, DhtCore, DhtLimits
from gnut.dht.table import ID_BITS, K

# One-way latency of a simulated datagram (virtual seconds), as the flood simulator's links.
LATENCY = 0.05
# The oracle gives each bucket depth this many candidate contacts (k: a full bucket).
FILL_PER_BUCKET = K


def label_address(i: int) -> tuple[str, int]:
    """Node i's address label: its own /24 each (labels only; the simulator never sends)."""
    return (f"{1 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.1", 6346)


def key_of(obj: int) -> bytes:
    """The DHT key of simulated object `obj` (an ALOC key is the file's SHA-1)."""
    return hashlib.sha1(b"gnut-sim-object-%d" % obj).digest()


@dataclass
class LookupRecord:
    ok: bool
    messages: int  # datagrams the lookup caused (requests and replies)
    rpcs: int
    hops: int
    timeouts: int


class _Nodes(Sequence):
    """The network's DhtCore nodes, each built (and its table filled) the first time it is touched."""

    def __init__(self, net: DhtNetwork) -> None:
        self.net = net

    def __len__(self) -> int:
        return self.net.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.net.node(j) for j in range(*i.indices(self.net.n))]
        return self.net.node(i)


class DhtNetwork:
    """n DhtCore nodes with oracle-filled routing tables, delivering datagrams in virtual time.

    Nodes are built lazily: a node that no datagram and no operation ever reaches costs one
    Contact (what other nodes' tables hold), so 10^5-node networks fit in memory; a node's
    table is the same oracle fill whether it is built first or last.
    """

    def __init__(self, n: int, seed: int = 0, latency: float = LATENCY) -> None:
        self.rng = random.Random(seed)
        self.n = n
        self.latency = latency
        self.now = 0.0
        self.limits = DhtLimits()
        self.contacts = [wire.Contact(self.rng.randbytes(wire.KUID_LEN), *label_address(i)) for i in range(n)]
        self._seeds = [self.rng.getrandbits(64) for _ in range(n)]
        self.by_addr = {c.addr: i for i, c in enumerate(self.contacts)}
        order = sorted(range(n), key=lambda i: self.contacts[i].kid)
        self._order = order
        self._keys = [self.contacts[i].kid for i in order]
        self._cores: dict[int, DhtCore] = {}
        self.nodes = _Nodes(self)
        self.alive = bytearray(b"\x01") * n
        self.messages = 0
        self._heap: list = []
        self._seq = 0

    @property
    def built(self) -> int:
        """Nodes built so far (touched by a datagram or an operation)."""
        return len(self._cores)

    def built_nodes(self) -> list[DhtCore]:
        """The nodes built so far (only they can hold anything)."""
        return list(self._cores.values())

    def node(self, i: int) -> DhtCore:
        core = self._cores.get(i)
        if core is None:
            c = self.contacts[i]
            core = DhtCore(
                c.host, c.port, self.now, kuid=c.kuid, limits=self.limits, rng=random.Random(self._seeds[i])
            )
            self._fill(core, random.Random(self._seeds[i] ^ 0x5EED))
            self._cores[i] = core
        return core

    def _fill(self, core: DhtCore, rng: random.Random) -> None:
        keys, order = self._keys, self._order
        own = core.me.kid
        for d in range(ID_BITS):
            shift = ID_BITS - d - 1
            span = 1 << shift
            lo = ((own >> shift) ^ 1) * span
            a, b = bisect.bisect_left(keys, lo), bisect.bisect_left(keys, lo + span)
            if b > a:
                picks = range(a, b) if b - a <= FILL_PER_BUCKET else rng.sample(range(a, b), FILL_PER_BUCKET)
                for j in picks:
                    core.table.add(self.contacts[order[j]], 0.0)
            near = bisect.bisect_left(keys, (own >> shift) * span)
            far = bisect.bisect_left(keys, ((own >> shift) + 1) * span)
            if far - near <= 1:  # nobody else shares d+1 bits: deeper buckets are empty
                break
        core.bootstrapped = True

    def kill(self, share: float) -> list[int]:
        """Churn: mark `share` of the nodes dead (they stop answering); returns them."""
        dead = self.rng.sample(range(self.n), int(self.n * share))
        for i in dead:
            self.alive[i] = 0
        return dead

    # --- delivery -----------------------------------------------------------------------
    def _flush(self, i: int) -> int:
        sent = 0
        core = self.node(i)
        src = core.me.addr
        for data, addr in core.take_outbox():
            sent += 1
            self._seq += 1
            heapq.heappush(self._heap, (self.now + self.latency, self._seq, "msg", data, src, addr))
        if sent:
            self._seq += 1
            heapq.heappush(self._heap, (self.now + RPC_TIMEOUT + 0.001, self._seq, "tick", i, None, None))
        return sent

    def run(self) -> int:
        """Deliver until quiet; returns the datagrams sent meanwhile."""
        sent = 0
        while self._heap:
            t, _, kind, a, b, c = heapq.heappop(self._heap)
            self.now = max(self.now, t)
            if kind == "tick":
                if self.alive[a]:
                    self.node(a).tick(self.now)
                    sent += self._flush(a)
                continue
            dst = self.by_addr.get(c)
            if dst is None or not self.alive[dst]:
                continue
            self.node(dst).receive(a, b, self.now)
            sent += self._flush(dst)
        self.messages += sent
        return sent

    # --- operations ---------------------------------------------------------------------
    def publish(self, i: int, key: bytes, data: bytes) -> tuple[int, int]:
        """Node i stores a value of its own under `key`; returns (roots that stored it, messages)."""
        box: list = []
        self.node(i).publish(key, wire.VT_ALOC, data, self.now, callback=box.append)
        msgs = self._flush(i) + self.run()
        return (box[0].stores_ok if box else 0), msgs

    def find_value(self, i: int, key: bytes) -> LookupRecord:
        box: list = []
        self.node(i).find_value(key, self.now, wire.VT_ALOC, callback=box.append)
        msgs = self._flush(i) + self.run()
        lk = box[0].lookup if box else None
        if lk is None:
            return LookupRecord(False, msgs, 0, 0, 0)
        return LookupRecord(bool(lk.found), msgs, lk.rpcs, lk.value_hop if lk.found else lk.hops, lk.timeouts)

    def find_node(self, i: int, target: bytes) -> LookupRecord:
        box: list = []
        self.node(i).find_node(target, self.now, callback=box.append)
        msgs = self._flush(i) + self.run()
        lk = box[0].lookup
        closest = min((c.kid ^ int.from_bytes(target, "big") for c, _ in lk.closest_answered()), default=None)
        t = int.from_bytes(target, "big")
        best = min(c.kid ^ t for j, c in enumerate(self.contacts) if self.alive[j] and j != i)
        return LookupRecord(closest == best, msgs, lk.rpcs, lk.hops, lk.timeouts)

    def random_alive(self) -> int:
        while True:
            i = self.rng.randrange(self.n)
            if self.alive[i]:
                return i
