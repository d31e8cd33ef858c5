"""DhtCore: one DHT node, sans-IO.  Datagrams and the time go in; datagrams come out of `outbox`.

The runtime (gnut.runtime.dht) feeds it the node's UDP socket and a clock; the simulator
(gnut.sim.dht) feeds it an in-memory network and a virtual clock.  Both run this same code.

What it does: answers PING / FIND_NODE / FIND_VALUE / STORE; runs lookups (table.RoutingTable +
lookup.Lookup) and publications (node lookup, then STORE with each root's token); times RPCs
out; refreshes idle buckets; republishes its own values; expires stored ones.

Spoofing rules: a reply is accepted only from the address the request went to and only for
the opcode expected; a node that sends us a request joins the table only after it answered a
PING of ours (its source address is then proven); contacts handed out by others are lookup
candidates, never table entries.  Every drop is counted by reason in `drops`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from gnut.dht import wire
from gnut.dht.lookup import Lookup
from gnut.dht.store import (
    MAX_VALUES,
    PER_NET24_PER_KEY,
    PER_NET24_TOTAL,
    RATE_BURST,
    RATE_PER_SOURCE,
    RateLimiter,
    Tokens,
    ValueStore,
)
from gnut.dht.table import PER_NET24_BUCKET, PER_NET24_TABLE, AddResult, K, RoutingTable
from gnut.errors import ProtocolError, RemoteProtocolError

ACTIVE, PASSIVE, PASSIVE_LEAF = "active", "passive", "passive-leaf"
MODES = (ACTIVE, PASSIVE, PASSIVE_LEAF)

# An RPC unanswered after 3 s has failed (Mojito waits a few seconds; loopback answers in ms).
RPC_TIMEOUT = 3.0
# RPCs awaiting an answer at once: bounds memory and what one node can make us send.
MAX_PENDING = 1024
# Lookups running at once (user searches, publications, refreshes together).
MAX_LOOKUPS = 64
# A bucket nobody looked into for an hour is refreshed (Kademlia's tRefresh).
REFRESH_PERIOD = 3600.0
# Our own values are stored again every 30 minutes (they expire after store.VALUE_LIFETIME).
REPUBLISH_PERIOD = 1800.0
# Republications running at once: 10,000 shared files fall due together every 30 minutes and
# must not all start lookups at the same moment (MAX_LOOKUPS would refuse most of them).
REPUBLISH_SLOTS = 8
# Values we publish ourselves (shared files' ALOCs and the like).
MAX_OWN_VALUES = 50_000
# Unknown senders we are verifying with a PING at once (each costs one datagram).
MAX_VERIFY = 256
# A FIND_VALUE_RESPONSE stays under one Ethernet MTU; values that do not fit go as secondary keys.
MAX_VALUE_RESPONSE = 1400
# How often the stored values are swept for expiry.
EXPIRE_SWEEP = 60.0
# Lookups remembered for `gnut dht status` (recent outcomes).
HISTORY = 64


@dataclass
class DhtLimits:
    """Limits a deployment (or a loopback test) may raise through config."""

    per_net24_bucket: int = PER_NET24_BUCKET
    per_net24_table: int = PER_NET24_TABLE
    per_net24_per_key: int = PER_NET24_PER_KEY
    rate_per_source: float = RATE_PER_SOURCE
    rate_burst: float = RATE_BURST
    max_values: int = MAX_VALUES
    per_net24_total: int = PER_NET24_TOTAL


@dataclass
class _Rpc:
    kind: str  # "ping", "lookup", "fetch", "store", "verify"
    contact: wire.Contact | None  # None: a bootstrap PING to an address whose KUID is unknown
    addr: tuple[str, int]
    expect: int
    deadline: float
    op: _Op | None = None


@dataclass
class _Op:
    """A running lookup, possibly the first half of a publication."""

    lookup: Lookup
    kind: str  # "node", "value", "publish", "refresh"
    callback: Callable[[_Op], None] | None = None
    value: wire.DhtValue | None = None  # publish
    stores_sent: int = 0
    stores_ok: int = 0
    stores_pending: int = 0
    finished: bool = False
    started: float = 0.0


@dataclass
class _Own:
    value: wire.DhtValue
    next_publish: float
    last_roots: int = 0


@dataclass
class DhtStats:
    sent: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    lookups: dict[str, int] = field(default_factory=lambda: {"started": 0, "succeeded": 0, "failed": 0})
    rpc_timeouts: int = 0


class DhtCore:
    """One DHT node at `host:port` (the address peers reach us at)."""

    def __init__(
        self,
        host: str,
        port: int,
        now: float,
        kuid: bytes | None = None,
        mode: str = ACTIVE,
        limits: DhtLimits | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"DHT mode must be one of {MODES}")
        self.rng = rng or random.Random()
        self.kuid = kuid or self.rng.randbytes(wire.KUID_LEN)
        self.mode = mode
        self.limits = limits or DhtLimits()
        self.me = wire.Contact(self.kuid, host, port)
        self.table = RoutingTable(
            self.kuid,
            per_net24_bucket=self.limits.per_net24_bucket,
            per_net24_table=self.limits.per_net24_table,
            splittable=mode != PASSIVE_LEAF,
        )
        self.values = ValueStore(
            self.limits.per_net24_per_key, self.limits.max_values, self.limits.per_net24_total
        )
        self.tokens = Tokens(self.rng.randbytes(16), now)
        self.rate = RateLimiter(self.limits.rate_per_source, self.limits.rate_burst)
        self.outbox: list[tuple[bytes, tuple[str, int]]] = []
        self.pending: dict[bytes, _Rpc] = {}
        self.ops: list[_Op] = []
        self.own: dict[tuple[bytes, bytes], _Own] = {}
        self.verifying: dict[tuple[str, int], float] = {}
        self.drops: dict[str, int] = {}
        self.stats = DhtStats()
        self.history: list[dict] = []
        self.instance = self.rng.randrange(256)
        self.bootstrapped = False
        self.shutting_down = False
        self._next_sweep = now + EXPIRE_SWEEP
        self._last_refresh_check = now
        self._next_republish_check = now

    # --- sending ----------------------------------------------------------------------
    @property
    def flags(self) -> int:
        f = wire.F_FIREWALLED if self.mode != ACTIVE else 0
        return f | (wire.F_SHUTDOWN if self.shutting_down else 0)

    def _send(self, op: int, body: bytes, addr: tuple[str, int], muid: bytes | None = None) -> bytes:
        muid = muid or self.rng.randbytes(16)
        hdr = wire.Header(muid, op, self.me, self.instance, self.flags)
        self.outbox.append((wire.encode(hdr, body), addr))
        name = wire.OP_NAMES[op]
        self.stats.sent[name] = self.stats.sent.get(name, 0) + 1
        return muid

    def _request(self, op: int, body: bytes, rpc: _Rpc) -> bool:
        if len(self.pending) >= MAX_PENDING:
            self._drop("pending_full")
            return False
        muid = self._send(op, body, rpc.addr)
        self.pending[muid] = rpc
        return True

    def take_outbox(self) -> list[tuple[bytes, tuple[str, int]]]:
        out, self.outbox = self.outbox, []
        return out

    def _drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    # --- public operations --------------------------------------------------------------
    def ping(
        self, addr: tuple[str, int], now: float, contact: wire.Contact | None = None, kind: str = "ping"
    ) -> None:
        self._request(
            wire.PING_REQUEST,
            wire.encode_ping(),
            _Rpc(kind, contact, addr, wire.PING_RESPONSE, now + RPC_TIMEOUT),
        )

    def bootstrap(self, addrs: list[tuple[str, int]], now: float) -> None:
        """PING known DHT nodes; the first answer starts a lookup of our own KUID."""
        for addr in addrs:
            self.ping(addr, now)

    def find_node(
        self, target: bytes, now: float, callback: Callable[[_Op], None] | None = None, kind="node"
    ) -> _Op:
        return self._start(self._lookup(target), kind, now, callback)

    def _lookup(self, target: bytes, values: bool = False) -> Lookup:
        return Lookup(
            target,
            self.table.closest(target),
            values=values,
            exclude=self.kuid,
            per_net24=self.limits.per_net24_bucket,
        )

    def find_value(
        self,
        key: bytes,
        now: float,
        vtype: bytes = wire.VT_ANY,
        callback: Callable[[_Op], None] | None = None,
    ) -> _Op:
        lk = self._lookup(key, values=True)
        lk.vtype = vtype  # type: ignore[attr-defined]
        return self._start(lk, "value", now, callback)

    def publish(
        self,
        key: bytes,
        vtype: bytes,
        data: bytes,
        now: float,
        version: tuple[int, int] = (0, 1),
        callback: Callable[[_Op], None] | None = None,
    ) -> _Op | None:
        """Store a value of ours under `key` on the k closest nodes, and again every 30 minutes."""
        value = wire.DhtValue(self.me, key, vtype, data, version)
        if (key, vtype) not in self.own and len(self.own) >= MAX_OWN_VALUES:
            self._drop("own_values_full")
            return None
        self.own[(key, vtype)] = _Own(value, now + REPUBLISH_PERIOD)
        return self._publish(value, now, callback)

    def unpublish(self, key: bytes, vtype: bytes) -> None:
        self.own.pop((key, vtype), None)

    def _publish(self, value: wire.DhtValue, now: float, callback=None) -> _Op:
        op = self._start(self._lookup(value.key), "publish", now, callback)
        op.value = value
        return op

    def _start(self, lk: Lookup, kind: str, now: float, callback) -> _Op:
        op = _Op(lk, kind, callback, started=now)
        self.table.touch_bucket(lk.target, now)
        if len([o for o in self.ops if not o.finished]) >= MAX_LOOKUPS:
            self._drop("too_many_lookups")
            lk.stopped = True
        self.ops.append(op)
        self.stats.lookups["started"] += 1
        self._pump(op, now)
        return op

    def _pump(self, op: _Op, now: float) -> None:
        lk = op.lookup
        for c, _hop in lk.next_queries():
            if lk.values:
                body = wire.encode_find_value(
                    wire.FindValueRequest(lk.target, [], getattr(lk, "vtype", wire.VT_ANY))
                )
                sent = self._request(
                    wire.FIND_VALUE_REQUEST,
                    body,
                    _Rpc("lookup", c, c.addr, wire.FIND_VALUE_RESPONSE, now + RPC_TIMEOUT, op),
                )
            else:
                body = wire.encode_find_node(lk.target)
                sent = self._request(
                    wire.FIND_NODE_REQUEST,
                    body,
                    _Rpc("lookup", c, c.addr, wire.FIND_NODE_RESPONSE, now + RPC_TIMEOUT, op),
                )
            if not sent:
                lk.on_failure(c)
        if lk.done and not op.finished and op.stores_sent == 0:
            if op.kind == "publish" and op.value is not None:
                self._send_stores(op, now)
                if op.stores_pending:
                    return
            self._finish(op, now)

    def _send_stores(self, op: _Op, now: float) -> None:
        for c, token in op.lookup.closest_answered():
            body = wire.encode_store(wire.StoreRequest(token, [op.value]))
            if self._request(
                wire.STORE_REQUEST, body, _Rpc("store", c, c.addr, wire.STORE_RESPONSE, now + RPC_TIMEOUT, op)
            ):
                op.stores_sent += 1
                op.stores_pending += 1

    def _finish(self, op: _Op, now: float | None = None) -> None:
        op.finished = True
        lk = op.lookup
        if op.kind == "value" and now is not None:  # values we hold ourselves count too
            lk.found.extend(self.values.get(lk.target, getattr(lk, "vtype", wire.VT_ANY), now))
        ok = (
            bool(lk.found)
            if op.kind == "value"
            else (op.stores_ok > 0 if op.kind == "publish" else lk.replies > 0)
        )
        self.stats.lookups["succeeded" if ok else "failed"] += 1
        if op.kind == "value" or op.kind == "publish":
            self.history.append(
                {
                    "kind": op.kind,
                    "key": lk.target.hex(),
                    "ok": ok,
                    "rpcs": lk.rpcs,
                    "hops": lk.hops,
                    "values": len(lk.unique_values()),
                    "stored": op.stores_ok,
                }
            )
            del self.history[:-HISTORY]
        if op.kind in ("node", "refresh", "publish") and lk.target == self.kuid and lk.replies:
            self.bootstrapped = True
        if op.callback is not None:
            op.callback(op)

    # --- receiving ----------------------------------------------------------------------
    def receive(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        """Handle one datagram from `addr`; anything wrong is a counted drop, never an exception."""
        if not self.rate.allow(addr[0], now):
            self._drop("rate_limited")
            return
        try:
            header, body = wire.decode_message(data)
        except RemoteProtocolError:
            self._drop("unparseable")
            return
        name = wire.OP_NAMES[header.op]
        self.stats.received[name] = self.stats.received.get(name, 0) + 1
        sender = header.sender
        if sender.kuid == self.kuid:
            self._drop("own_kuid")  # our KUID from elsewhere: a collision or a spoofer
            return
        # The address we can prove is the datagram's source; the header's port is kept when its IP agrees.
        port = sender.port if sender.host == addr[0] else addr[1]
        peer = wire.Contact(sender.kuid, addr[0], port, sender.vendor, sender.version)
        try:
            if header.op in (
                wire.PING_REQUEST,
                wire.FIND_NODE_REQUEST,
                wire.FIND_VALUE_REQUEST,
                wire.STORE_REQUEST,
            ):
                self._on_request(header, body, peer, addr, now)
            else:
                self._on_response(header, body, peer, addr, now)
        except ProtocolError:
            self._drop("bad_message")

    def _learn(self, header: wire.Header, peer: wire.Contact, now: float, proven: bool) -> None:
        if header.flags & wire.F_SHUTDOWN:
            self.table.mark_dead(peer.kuid)
            return
        if header.flags & wire.F_FIREWALLED:
            return  # passive nodes never join routing tables
        known = self.table.get(peer.kuid)
        if proven or (
            known is not None and known.contact.host == peer.host and known.contact.port == peer.port
        ):
            res = self.table.add(peer, now)
            if res is AddResult.ADDED and not self.bootstrapped and self.mode != PASSIVE_LEAF:
                if not any(o.lookup.target == self.kuid and not o.finished for o in self.ops):
                    self.find_node(self.kuid, now)
        elif peer.addr not in self.verifying and len(self.verifying) < MAX_VERIFY:
            self.verifying[peer.addr] = now + RPC_TIMEOUT
            self.ping(peer.addr, now, peer, kind="verify")

    def _on_request(self, header: wire.Header, body, peer: wire.Contact, addr, now: float) -> None:
        self._learn(header, peer, now, proven=False)
        if header.op == wire.PING_REQUEST:
            self._send(
                wire.PING_RESPONSE, wire.encode_pong(wire.Pong(addr, self.size_estimate())), addr, header.muid
            )
        elif header.op == wire.FIND_NODE_REQUEST:
            self._send_nodes(body, peer, addr, header.muid, now)
        elif header.op == wire.FIND_VALUE_REQUEST:
            req: wire.FindValueRequest = body
            found = self.values.get(req.key, req.vtype, now, req.secondary or None)
            if not found:
                self._send_nodes(req.key, peer, addr, header.muid, now)
                return
            vals, size, secondary = [], 4 + 1 + 1, []
            for v in sorted(found, key=lambda v: len(v.data)):
                need = wire.HEADER_LEN + 61 + len(v.data)
                if not secondary and size + need + 20 * (len(found) - len(vals)) <= MAX_VALUE_RESPONSE:
                    vals.append(v)
                    size += need - wire.HEADER_LEN
                else:
                    secondary.append(v.creator.kuid)
            resp = wire.FindValueResponse(0.0, vals, secondary[: wire.MAX_SECONDARY_KEYS])
            self._send(wire.FIND_VALUE_RESPONSE, wire.encode_find_value_response(resp), addr, header.muid)
        elif header.op == wire.STORE_REQUEST:
            req2: wire.StoreRequest = body
            valid = self.tokens.check(req2.token, addr[0], peer.kuid, now)
            statuses = []
            for v in req2.values:
                code = self.values.store(v, peer, addr[0], now) if valid else wire.SC_BAD_TOKEN
                if not valid:
                    self.values._code(code)
                statuses.append(wire.StoreStatus(v.key, v.creator.kuid, code))
            if not valid:
                self._drop("bad_token")
            self._send(wire.STORE_RESPONSE, wire.encode_store_response(statuses[:30]), addr, header.muid)

    def _send_nodes(self, target: bytes, peer: wire.Contact, addr, muid: bytes, now: float) -> None:
        token = self.tokens.make(addr[0], peer.kuid, now)
        contacts = self.table.closest(target, K, exclude=peer.kuid)
        if self.mode == ACTIVE and len(contacts) < K:
            contacts.append(self.me)  # we are a candidate too (Mojito lists itself when close)
        self._send(
            wire.FIND_NODE_RESPONSE,
            wire.encode_find_node_response(wire.FindNodeResponse(token, contacts)),
            addr,
            muid,
        )

    def _on_response(self, header: wire.Header, body, peer: wire.Contact, addr, now: float) -> None:
        rpc = self.pending.get(header.muid)
        if rpc is None:
            self._drop("unexpected_response")
            return
        if rpc.addr != addr:
            self._drop("response_from_wrong_address")
            return
        expect_any = rpc.kind == "lookup" and rpc.expect == wire.FIND_VALUE_RESPONSE
        if header.op != rpc.expect and not (expect_any and header.op == wire.FIND_NODE_RESPONSE):
            self._drop("response_wrong_opcode")
            return
        if rpc.contact is not None and rpc.contact.kuid != peer.kuid:
            self._drop("response_kuid_changed")
            return
        del self.pending[header.muid]
        self._learn(header, peer, now, proven=True)
        self.table.seen(peer.kuid, now)
        if rpc.kind == "verify":
            self.verifying.pop(addr, None)
        op = rpc.op
        if rpc.kind == "lookup" and op is not None:
            if header.op == wire.FIND_VALUE_RESPONSE:
                resp: wire.FindValueResponse = body
                op.lookup.on_values(rpc.contact, [v for v in resp.values if v.key == op.lookup.target])
                missing = [k for k in resp.secondary if k not in {v.creator.kuid for v in resp.values}]
                if missing:
                    req = wire.FindValueRequest(
                        op.lookup.target, missing, getattr(op.lookup, "vtype", wire.VT_ANY)
                    )
                    self._request(
                        wire.FIND_VALUE_REQUEST,
                        wire.encode_find_value(req),
                        _Rpc("fetch", rpc.contact, addr, wire.FIND_VALUE_RESPONSE, now + RPC_TIMEOUT, op),
                    )
            else:
                resp2: wire.FindNodeResponse = body
                op.lookup.on_nodes(rpc.contact, resp2.contacts, resp2.token)
            self._pump(op, now)
        elif rpc.kind == "fetch" and op is not None and header.op == wire.FIND_VALUE_RESPONSE:
            op.lookup.found.extend(v for v in body.values if v.key == op.lookup.target)
        elif rpc.kind == "store" and op is not None:
            statuses: list[wire.StoreStatus] = body
            if any(s.code == wire.SC_OK for s in statuses):
                op.stores_ok += 1
            self._store_done(op)

    def _store_done(self, op: _Op) -> None:
        op.stores_pending -= 1
        if op.stores_pending <= 0 and not op.finished:
            self._finish(op)

    # --- time ---------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Time out RPCs, drive lookups, refresh buckets, republish and expire values."""
        for muid in [m for m, r in self.pending.items() if r.deadline <= now]:
            rpc = self.pending.pop(muid)
            self.stats.rpc_timeouts += 1
            if rpc.contact is not None:
                self.table.failed(rpc.contact.kuid)
            if rpc.kind == "verify":
                self.verifying.pop(rpc.addr, None)
            op = rpc.op
            if op is not None and not op.finished:
                if rpc.kind == "lookup":
                    op.lookup.on_failure(rpc.contact)
                    self._pump(op, now)
                elif rpc.kind == "store":
                    self._store_done(op)
        self.ops = [o for o in self.ops if not o.finished]
        for addr in [a for a, t in self.verifying.items() if t <= now]:
            del self.verifying[addr]
        if now >= self._next_republish_check:
            self._next_republish_check = now + 1.0
            running = sum(1 for o in self.ops if o.kind == "publish" and not o.finished)
            for own in self.own.values():
                if running >= REPUBLISH_SLOTS:
                    break  # the rest stay due: picked up in a later second
                if own.next_publish <= now:
                    own.next_publish = now + REPUBLISH_PERIOD
                    self._publish(own.value, now)
                    running += 1
        if now >= self._next_sweep:
            self._next_sweep = now + EXPIRE_SWEEP
            self.values.expire(now)
        if self.mode != PASSIVE_LEAF and len(self.table) and now - self._last_refresh_check >= 60.0:
            self._last_refresh_check = now
            for i in self.table.stale_buckets(now, REFRESH_PERIOD)[:2]:
                self.find_node(
                    self.table.random_id_in_bucket(i, self.rng.getrandbits(160)), now, kind="refresh"
                )

    def shutdown(self, now: float) -> None:
        """Tell our closest contacts we leave (SHUTDOWN flag on a last PING)."""
        self.shutting_down = True
        for c in self.table.closest(self.kuid, 8):
            self._send(wire.PING_REQUEST, wire.encode_ping(), c.addr)

    # --- state --------------------------------------------------------------------------
    def size_estimate(self) -> int:
        near = self.table.closest(self.kuid, K)
        if len(near) < K:
            return len(near) + 1
        far = near[-1].kid ^ self.me.kid
        return max(len(near) + 1, (K << 160) // max(far, 1))

    def status(self) -> dict:
        return {
            "kuid": self.kuid.hex(),
            "mode": self.mode,
            "address": f"{self.me.host}:{self.me.port}",
            "bootstrapped": self.bootstrapped,
            "contacts": len(self.table),
            "buckets": [{"depth": d, "contacts": n} for d, n in self.table.bucket_ranges() if n],
            "bucket_count": len(self.table.buckets),
            "size_estimate": self.size_estimate(),
            "stored_values": self.values.count,
            "stored_keys": len(self.values.keys),
            "own_values": len(self.own),
            "pending_rpcs": len(self.pending),
            "lookups": dict(self.stats.lookups),
            "rpc_timeouts": self.stats.rpc_timeouts,
            "sent": dict(self.stats.sent),
            "received": dict(self.stats.received),
            "drops": dict(self.drops),
            "table_adds": dict(self.table.counts),
            "store_codes": {str(k): v for k, v in self.values.codes.items()},
            "recent": list(self.history[-10:]),
        }
