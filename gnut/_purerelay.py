"""Pure-Python twin of the relay core in gnut/_relay.pxi: RouteMap and RelayCore, same names and errors."""

# Strategy: the comment at the top of gnut/_relay.pxi describes both twins; tests/test_relaycore.py
# holds them together and against routing.Router.route. Imported by gnut._purepath only.

from __future__ import annotations

import re
import sys
from collections import OrderedDict

from gnut import constants
from gnut._purepath import _MAX_SEED, GUID_LEN, HEADER_LEN, GuidCache, Message
from gnut.errors import LocalProtocolError

# The Cython route records hold peer ids and generations in 32-bit fields, and 2^24 routes at most.
MAX_ROUTE_CAPACITY = 1 << 24
_MIN_PEER, _MAX_PEER, _MAX_GEN = -(1 << 31), (1 << 31) - 1, (1 << 32) - 1
# What relay() stopped on: the end of the chunk, a message for Router.route, a relayed query for
# local delivery only.
STOP_END, STOP_ROUTE, STOP_LOCAL = 0, 1, 2
_MODES = ("flood", "ultrapeer", "leaf")
_QRP_MULT = 0x4F1BBCDC  # qrp.QRP_HASH_MULTIPLIER
_QRP_MIN_WORD = 3  # qrp.QRP_MIN_WORD_LENGTH
_WORD_RE = re.compile(rb"[A-Za-z0-9]{%d,}" % _QRP_MIN_WORD)  # maximal ASCII alnum runs, 3+ long
_LOCAL_PEER = -1  # routing.LOCAL_PEER


def _guid_bytes(guid) -> bytes:
    g = bytes(guid)
    if len(g) != GUID_LEN:
        raise LocalProtocolError(f"guid must be {GUID_LEN} bytes, got {len(g)}")
    return g


class RouteMap:
    """Bounded, aged map GUID -> (peer id, peer generation), the twin of routing.RouteTable.

    Eviction policy, in plain words: entries are kept in insertion order (re-putting a GUID moves it
    to the newest end). Putting evicts the oldest entries while the map is full and drops the oldest
    ones whose age reached max_age; a lookup treats an entry aged max_age or more as absent (and
    deletes it).
    """

    __slots__ = ("_capacity", "_max_age", "_entries")

    def __init__(self, capacity: int, max_age: float, seed: int | None = None) -> None:
        """Create an empty map.

        Args:
            capacity: most entries held, 1 .. MAX_ROUTE_CAPACITY.
            max_age: seconds an entry stays valid (> 0).
            seed: hash seed of the Cython twin (0 .. 2^64-1), checked and unused here.

        Raises:
            LocalProtocolError: an argument is out of range.
        """
        if not 1 <= capacity <= MAX_ROUTE_CAPACITY or not max_age > 0:
            raise LocalProtocolError(f"bad route table bounds capacity={capacity} max_age={max_age}")
        if seed is not None and not 0 <= seed <= _MAX_SEED:
            raise LocalProtocolError(f"seed {seed} is outside 0..2^64-1")
        self._capacity = capacity
        self._max_age = float(max_age)
        self._entries: OrderedDict[bytes, tuple[int, int, float]] = OrderedDict()

    @property
    def capacity(self) -> int:
        """Most entries held."""
        return self._capacity

    @property
    def max_age(self) -> float:
        """Seconds an entry stays valid."""
        return self._max_age

    def __len__(self) -> int:
        return len(self._entries)

    def memory_bytes(self) -> int:
        """Approximate bytes of the dict, its keys and value tuples."""
        per_entry = sys.getsizeof(b"x" * GUID_LEN) + sys.getsizeof((0, 0, 0.0)) + sys.getsizeof(0.0)
        return sys.getsizeof(self._entries) + len(self._entries) * per_entry

    def _put(self, g: bytes, peer: int, gen: int, now: float) -> None:
        entries = self._entries
        if g in entries:
            del entries[g]
        while len(entries) >= self._capacity:
            entries.popitem(last=False)
        horizon = now - self._max_age
        while entries and not next(iter(entries.values()))[2] > horizon:
            entries.popitem(last=False)
        entries[g] = (peer, gen, float(now))

    def put(self, guid: bytes, peer: int, gen: int, now: float) -> None:
        """Record that replies for `guid` go to `peer` (generation `gen`) from time `now`.

        Raises:
            LocalProtocolError: guid is not 16 bytes, peer outside -2^31..2^31-1, gen outside 0..2^32-1.
        """
        g = _guid_bytes(guid)
        if not _MIN_PEER <= peer <= _MAX_PEER or not 0 <= gen <= _MAX_GEN:
            raise LocalProtocolError(f"route peer {peer} / generation {gen} out of range")
        self._put(g, peer, gen, now)

    def _get(self, g: bytes, now: float) -> tuple[int, int, float] | None:
        entry = self._entries.get(g)
        if entry is not None and now - entry[2] >= self._max_age:
            del self._entries[g]
            return None
        return entry

    def get(self, guid: bytes, now: float) -> tuple[int, int] | None:
        """Return (peer, generation) for `guid`, or None if unknown or aged out.

        Raises:
            LocalProtocolError: guid is not 16 bytes.
        """
        entry = self._get(_guid_bytes(guid), now)
        return None if entry is None else (entry[0], entry[1])


def _qrp_code(word: bytes) -> int:
    """qrp.qrp_hashcode of a lower-case ASCII word."""
    x = 0
    for i in range(0, len(word), 4):
        x ^= int.from_bytes(word[i : i + 4], "little")
    return (x * _QRP_MULT) & 0xFFFFFFFF


class RelayCore:
    """The whole-chunk QUERY relay of one Router: seen cache, query reverse routes, relay peers.

    Counters (received, forwarded, local queries, duplicates, own echoes, flow-control drops) are
    handed over, and zeroed, by take_counts(); per-chunk figures for the runtime (copies appended
    and shed per relay slot, duplicates, queries not handed over) by end_chunk().
    """

    def __init__(self, mode: str, seen: GuidCache, routes: RouteMap) -> None:
        """Create a core over the Router's seen cache and QUERY reverse-route table.

        Args:
            mode: "flood", "ultrapeer" or "leaf" (a leaf never relays: relay() hands everything over).
            seen: the duplicate cache, shared with Router.route.
            routes: the QUERY reverse routes, shared with Router.route.

        Raises:
            LocalProtocolError: unknown mode.
            TypeError: seen or routes is not of this module's type.
        """
        if mode not in _MODES:
            raise LocalProtocolError(f"unknown router mode {mode!r}")
        if not isinstance(seen, GuidCache) or not isinstance(routes, RouteMap):
            raise TypeError("RelayCore needs this module's GuidCache and RouteMap")
        self._mode = mode
        self._seen = seen
        self._routes = routes
        self._peers: dict[int, list] = {}  # peer id -> [generation, is relay peer, has a QRP table]
        self._relay_ids: tuple[int, ...] = ()
        self._leaf_qrp = self._relay_qrp = 0
        self._local_table: bytes | None = None
        self._local_shift = 32
        self._counts = [0] * 6
        self._chunk = [0, 0, 0]  # copies appended, duplicates, queries not handed over
        self._reset_slots()

    def _reset_slots(self) -> None:
        n = len(self._relay_ids)
        self._app, self._shed, self._filled = [0] * n, [0] * n, [False] * n

    @property
    def active(self) -> bool:
        """Whether relay() can settle anything (False in leaf mode)."""
        return self._mode != "leaf"

    @property
    def relay_ids(self) -> tuple[int, ...]:
        """The relay peers' ids in slot order: relay()'s `bufs` and `bases` follow this order."""
        return self._relay_ids

    def add_peer(self, peer_id: int, gen: int, relay: bool) -> None:
        """Register a live peer (its generation tells reused ids apart); `relay` False for a leaf.

        Raises:
            LocalProtocolError: peer_id already registered or out of range, gen out of range.
        """
        if peer_id in self._peers:
            raise LocalProtocolError(f"peer {peer_id} already registered")
        if not 0 <= peer_id <= _MAX_PEER or not 0 <= gen <= _MAX_GEN:
            raise LocalProtocolError(f"peer {peer_id} / generation {gen} out of range")
        self._peers[peer_id] = [gen, bool(relay), False]
        if relay:
            self._relay_ids += (peer_id,)
            self._reset_slots()

    def remove_peer(self, peer_id: int) -> None:
        """Forget a peer (unknown ids are ignored)."""
        st = self._peers.pop(peer_id, None)
        if st is None:
            return
        self._set_qrp_flag(st, False)
        if st[1]:
            self._relay_ids = tuple(p for p in self._relay_ids if p != peer_id)
            self._reset_slots()

    def set_qrp(self, peer_id: int, has_table: bool) -> None:
        """Say whether a peer has a QRP table (then Router.route decides its queries' targets).

        Raises:
            LocalProtocolError: unknown peer.
        """
        st = self._peers.get(peer_id)
        if st is None:
            raise LocalProtocolError(f"set_qrp on unknown peer {peer_id}")
        self._set_qrp_flag(st, bool(has_table))

    def _set_qrp_flag(self, st: list, has: bool) -> None:
        if st[2] == has:
            return
        st[2] = has
        if st[1]:
            self._relay_qrp += 1 if has else -1
        else:
            self._leaf_qrp += 1 if has else -1

    def set_local(self, table, bits: int = 0) -> None:
        """Install the local filter: a presence table of the QRP hashes of every shared-word prefix.

        Args:
            table: bytes-like of 2**bits presence bytes (non-zero = present), or None to hand
                every new query over for local delivery (no filter).
            bits: log2 of the table size, 1..32.

        Raises:
            LocalProtocolError: bits out of range or the table's size is not 2**bits.
        """
        if table is None:
            self._local_table = None
            return
        t = bytes(table)
        if not 1 <= bits <= 32 or len(t) != 1 << bits:
            raise LocalProtocolError(f"local table must hold 2**bits bytes (bits {bits}, got {len(t)})")
        self._local_table = t if t.count(0) != len(t) else b""
        self._local_shift = 32 - bits

    def _may_match(self, payload: bytes) -> bool:
        """Whether a QUERY payload (3+ bytes) may match our shares (True = hand it over)."""
        table = self._local_table
        if table is None:
            return True
        if not table:
            return False
        if payload[-1] != 0:
            return True  # extensions follow the text (or no NUL): Python decodes them
        text = payload[2:-1]
        if not text.isascii() or 0 in text or 0x1C in text:
            return True
        words = _WORD_RE.findall(text)
        shift = self._local_shift
        for w in words:
            if not table[_qrp_code(w.lower()) >> shift]:
                return False
        return bool(words)  # no word at all matches nothing

    def relay(
        self,
        peer_id: int,
        msgs: list,
        start: int,
        now: float,
        bufs: list,
        bases: list,
        low_water: int,
        high_water: int,
    ) -> tuple[int, int]:
        """Settle the messages of a chunk from `start` on, up to the first one Python must see.

        Args:
            peer_id: the live peer the chunk came from.
            msgs: the chunk's Messages (FrameReader output).
            start: index of the first message to handle.
            now: current time in seconds (monotonic).
            bufs: one output bytearray per relay slot (relay_ids order); the sender's is never written.
            bases: per slot, the bytes queued beside its bytearray (transport buffer) for the
                flow-control test, -1 for a closed peer (every copy a FLOW_CONTROL drop), -2 for
                a peer with no link (nothing counted).
            low_water, high_water: peer.LOW_WATER / HIGH_WATER: a copy is shed when queued bytes
                exceed high_water, or low_water for a query that already made 2+ hops.

        Returns:
            (index, kind): STOP_END with index len(msgs) when every message was settled;
            STOP_ROUTE when msgs[index] is untouched and goes to Router.route; STOP_LOCAL when
            msgs[index] was relayed and only its local delivery is left. Continue from index + 1.

        Raises:
            LocalProtocolError: bufs / bases do not match relay_ids, or an item of bufs is not a bytearray.
        """
        ids = self._relay_ids
        ns = len(ids)
        if len(bufs) != ns or len(bases) != ns:
            raise LocalProtocolError(f"relay() needs {ns} output buffers and bases")
        for k, buf in enumerate(bufs):
            if type(buf) is not bytearray:
                raise LocalProtocolError(f"output buffer {k} is not a bytearray")
        n = len(msgs)
        if start >= n:
            return n, STOP_END
        st = self._peers.get(peer_id)
        if st is None or not st[1] or self._mode == "leaf":
            return start, STOP_ROUTE
        gen = st[0]
        up = self._mode == "ultrapeer"
        routes, seen = self._routes, self._seen
        counts, chunk, app, shed, filled = self._counts, self._chunk, self._app, self._shed, self._filled
        slots = [(k, ids[k], bufs[k], bases[k]) for k in range(ns)]
        for i in range(start, n):
            m = msgs[i]
            if type(m) is not Message:
                return i, STOP_ROUTE
            raw = m._raw
            plen = len(raw) - HEADER_LEN
            ttl = m._ttl
            hops = m._hops
            if (
                m._type != constants.MSG_QUERY
                or ttl == 0
                or ttl + hops > constants.HARD_TTL_LIMIT
                or plen > constants.MAX_QUERY_RELAY
                or plen < 3
            ):
                return i, STOP_ROUTE
            eff = min(ttl, constants.SOFT_TTL_LIMIT - hops)
            out_ttl = eff - 1 if eff >= 2 else 0
            if up and (self._leaf_qrp or (out_ttl == 1 and self._relay_qrp)):
                return i, STOP_ROUTE  # QRP tables decide targets: Router.route
            g = raw[:GUID_LEN]
            route = routes._get(g, now)
            if route is not None:
                if route[0] == _LOCAL_PEER:  # our own query came back
                    counts[0] += 1
                    counts[4] += 1
                    continue
                if route[0] == peer_id and route[1] == gen:
                    return i, STOP_ROUTE  # resent on its own link: the node watches for replayers
            if seen.seen(g, constants.MSG_QUERY, now):
                counts[0] += 1
                counts[3] += 1
                chunk[1] += 1
                continue
            counts[0] += 1
            counts[2] += 1
            routes._put(g, peer_id, gen, now)
            if out_ttl:
                out = raw[:17] + bytes((out_ttl, hops + 1)) + raw[19:]
                low = hops >= 2
                for k, pid, buf, base in slots:
                    if pid == peer_id:
                        continue
                    counts[1] += 1
                    if base < 0:
                        if base == -1:
                            counts[5] += 1
                        continue
                    size = len(buf)
                    if base + size > high_water or (low and base + size > low_water):
                        shed[k] += 1
                        counts[5] += 1
                        continue
                    if not size:
                        filled[k] = True
                    buf += out
                    app[k] += 1
                    chunk[0] += 1
            if self._may_match(raw[HEADER_LEN:]):
                return i, STOP_LOCAL
            chunk[2] += 1
        return n, STOP_END

    def end_chunk(self) -> tuple[int, int, int, list[tuple[int, int, int, bool]]]:
        """Hand over and zero the per-chunk figures.

        Returns:
            (copies appended, duplicates dropped, queries not handed over for local delivery,
            [(slot, appended, shed, filled)] for each slot that was written or shed, where
            filled says the slot's bytearray was empty before its first copy).
        """
        app, shed, filled = self._app, self._shed, self._filled
        rows = [(k, app[k], shed[k], filled[k]) for k in range(len(app)) if app[k] or shed[k]]
        out = (self._chunk[0], self._chunk[1], self._chunk[2], rows)
        self._chunk = [0, 0, 0]
        self._reset_slots()
        return out

    def take_counts(self) -> tuple[int, int, int, int, int, int]:
        """Hand over and zero the cumulative counters.

        Returns:
            (received, forwarded, local, duplicates, own echoes, flow-control drops), QUERYs all.
        """
        out = tuple(self._counts)
        self._counts = [0] * 6
        return out  # type: ignore[return-value]
