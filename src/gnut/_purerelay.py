"""Pure-Python twin of the relay core in gnut/_relay.pxi: RouteMap and RelayCore, same names and errors."""

# Strategy: the comment at the top of gnut/_relay.pxi describes both twins; tests/test_relaycore.py
# holds them together and against routing.Router.route. Imported by gnut._purepath only.

from __future__ import annotations

import re
import sys
from collections import OrderedDict
from functools import lru_cache

from gnut import constants
from gnut._purepath import _MAX_SEED, GUID_LEN, HEADER_LEN, GuidCache, Message
from gnut.errors import LocalProtocolError

# The Cython route records hold peer ids and generations in 32-bit fields, and 2^24 routes at most.
MAX_ROUTE_CAPACITY = 1 << 24
_MIN_PEER, _MAX_PEER, _MAX_GEN = -(1 << 31), (1 << 31) - 1, (1 << 32) - 1
# ... and the relay TTL in one byte.
_MAX_ROUTE_TTL = 255
# What relay() stopped on: the end of the chunk, a message for Router.route, a relayed query for
# local delivery only.
STOP_END, STOP_ROUTE, STOP_LOCAL = 0, 1, 2
_MODES = ("flood", "ultrapeer", "leaf")
_QRP_MULT = 0x4F1BBCDC  # qrp.QRP_HASH_MULTIPLIER
_QRP_MIN_WORD = 3  # qrp.QRP_MIN_WORD_LENGTH
_WORD_RE = re.compile(rb"[A-Za-z0-9]{%d,}" % _QRP_MIN_WORD)  # maximal ASCII alnum runs, 3+ long
_NOT_PLAIN_RE = re.compile(rb"[^\x01-\x1b\x1d-\x7f]")  # NUL, 0x1C or non-ASCII: Python decodes the text
_LOCAL_PEER = -1  # routing.LOCAL_PEER
# Word codes remembered by the pure twin: a query vocabulary repeats, hashing in Python does not pay.
_CODE_CACHE_SIZE = 1 << 14
_QRP_NONE, _QRP_TABLE, _QRP_OPAQUE = 0, 1, 2  # a peer's QRP table: none, readable, Python-only
# routerules.TAKEOVER_NONE / TAKEOVER_OK / TAKEOVER_REFUSED (this foundation module cannot import it).
_TAKEOVER_NONE, _TAKEOVER_OK, _TAKEOVER_REFUSED = 0, 1, 2


def _takeover_verdict(rec: tuple, out_ttl: int, hops: int, span: int) -> int:
    """routerules.takeover_verdict against a record (peer, gen, t, ttl, hops, span): rules 1-4."""
    if out_ttl <= rec[3]:
        return _TAKEOVER_NONE
    if hops >= rec[4] or (span > rec[5] and rec[5] < constants.SOFT_TTL_LIMIT):
        return _TAKEOVER_REFUSED
    return _TAKEOVER_OK


def _check_route_args(peer: int, gen: int, ttl: int, hops: int, span: int) -> None:
    if not _MIN_PEER <= peer <= _MAX_PEER or not 0 <= gen <= _MAX_GEN:
        raise LocalProtocolError(f"route peer {peer} / generation {gen} out of range")
    if not 0 <= ttl <= _MAX_ROUTE_TTL:
        raise LocalProtocolError(f"route TTL {ttl} out of range 0..255")
    if not 0 <= hops <= _MAX_ROUTE_TTL or not 0 <= span <= _MAX_ROUTE_TTL:
        raise LocalProtocolError(f"route hops {hops} / span {span} out of range 0..255")


def _guid_bytes(guid) -> bytes:
    g = bytes(guid)
    if len(g) != GUID_LEN:
        raise LocalProtocolError(f"guid must be {GUID_LEN} bytes, got {len(g)}")
    return g


class RouteMap:
    """Bounded, aged map GUID -> (peer id, peer generation, relay TTL, hops, hops + TTL), the twin of
    routing.RouteTable (route takeovers by routerules' rule).

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
        # GUID -> (peer, generation, time put, highest relay TTL, hops, hops + TTL)
        self._entries: OrderedDict[bytes, tuple[int, int, float, int, int, int]] = OrderedDict()

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
        per_entry = sys.getsizeof(b"x" * GUID_LEN) + sys.getsizeof((0, 0, 0.0, 0, 0, 0)) + sys.getsizeof(0.0)
        return sys.getsizeof(self._entries) + len(self._entries) * per_entry

    def _put(self, g: bytes, peer: int, gen: int, now: float, ttl: int, hops: int = 0, span: int = 0) -> None:
        entries = self._entries
        if g in entries:
            del entries[g]
        while len(entries) >= self._capacity:
            entries.popitem(last=False)
        horizon = now - self._max_age
        while entries and not next(iter(entries.values()))[2] > horizon:
            entries.popitem(last=False)
        entries[g] = (peer, gen, float(now), ttl, hops, span)

    def put(self, guid: bytes, peer: int, gen: int, now: float, ttl: int = 0, hops: int = 0, span: int = 0) -> None:
        """Record that replies for `guid` go to `peer` (generation `gen`) from time `now`.

        Args:
            guid: the 16-byte GUID.
            peer, gen: the peer id (-2^31..2^31-1) and its generation (0..2^32-1).
            now: current time in seconds.
            ttl: the relay TTL the message was forwarded with (0..255; 0 = not forwarded).
            hops, span: hops and raw hops + TTL of the copy (0..255; hops 0: never taken over).

        Raises:
            LocalProtocolError: guid is not 16 bytes, or peer, gen, ttl, hops or span out of range.
        """
        g = _guid_bytes(guid)
        _check_route_args(peer, gen, ttl, hops, span)
        self._put(g, peer, gen, now, ttl, hops, span)

    def _get(self, g: bytes, now: float) -> tuple[int, int, float, int] | None:
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

    def reroute(
        self, guid: bytes, peer: int, gen: int, ttl: int, now: float, hops: int = 0, span: int = 0,
        allow: bool = True,
    ) -> int:
        """Let a duplicate copy take guid's live entry over, by routerules' takeover rule.

        Args:
            guid, peer, gen: the GUID and the duplicate's sender.
            ttl: the duplicate's relay TTL; hops, span: its hops and raw hops + TTL.
            now: current time in seconds.
            allow: False when the sender has no takeover budget left (an OK verdict is refused).

        Returns:
            TAKEOVER_NONE (0: no record, or no higher TTL), TAKEOVER_REFUSED (2), or TAKEOVER_OK (1)
            when the entry now holds `peer`, `gen`, `ttl`, `hops` and `span` (its age and place stay).

        Raises:
            LocalProtocolError: guid is not 16 bytes, or peer, gen, ttl, hops or span out of range.
        """
        g = _guid_bytes(guid)
        _check_route_args(peer, gen, ttl, hops, span)
        entry = self._get(g, now)
        if entry is None:
            return _TAKEOVER_NONE
        verdict = _takeover_verdict(entry, ttl, hops, span)
        if verdict == _TAKEOVER_OK and not allow:
            return _TAKEOVER_REFUSED
        if verdict == _TAKEOVER_OK:
            self._entries[g] = (peer, gen, entry[2], ttl, hops, span)  # an existing key keeps its place
        return verdict


@lru_cache(maxsize=_CODE_CACHE_SIZE)
def _qrp_code(word: bytes) -> int:
    """qrp.qrp_hashcode of an ASCII word (lower-cased here)."""
    word = word.lower()
    x = 0
    for i in range(0, len(word), 4):
        x ^= int.from_bytes(word[i : i + 4], "little")
    return (x * _QRP_MULT) & 0xFFFFFFFF


def _query_codes(payload: bytes) -> list[int] | None:
    """The QRP hash codes of a plain-ASCII QUERY payload's words in order, or None (Python parses it)."""
    if payload[-1] != 0:
        return None  # extensions follow the text (or no NUL)
    text = payload[2:-1]
    if _NOT_PLAIN_RE.search(text):
        return None
    return [_qrp_code(w) for w in _WORD_RE.findall(text)]


def _codes_match(table: bytearray, shift: int, codes: list[int]) -> bool:
    """QrpTable.matches_hashes for a query of words only: every word's slot present (no word: no match)."""
    if not codes:
        return False
    for c in codes:
        if not table[c >> shift]:
            return False
    return True


def query_codes(payload) -> tuple[int, ...] | None:
    """Return the QRP hash codes RelayCore routes a QUERY payload on, or None when Python must parse it.

    Args:
        payload: a QUERY payload of 3..MAX_QUERY_RELAY bytes.

    Returns:
        A tuple of 32-bit codes, one per routed word in text order (duplicates kept), or None for
        a payload with extensions, a NUL inside, non-ASCII text or an 0x1C separator.

    Raises:
        LocalProtocolError: the payload is shorter than 3 or longer than MAX_QUERY_RELAY bytes.
    """
    b = bytes(payload)
    if not 3 <= len(b) <= constants.MAX_QUERY_RELAY:
        raise LocalProtocolError(
            f"a relayed QUERY payload has 3..{constants.MAX_QUERY_RELAY} bytes, not {len(b)}"
        )
    codes = _query_codes(b)
    return None if codes is None else tuple(codes)


class RelayCore:
    """The whole-chunk QUERY relay of one Router: seen cache, query reverse routes, targets.

    Every live peer has a slot (relay peers and leaves, in the order they were added); a peer's QRP
    table is held by reference to its QrpTable.slots bytearray. Target rules are Router's
    _select_targets (see the Cython twin's docstring). Counters (received, forwarded, local
    queries, duplicates, own echoes, flow-control drops, QRP skips, duplicates relayed again for a
    higher TTL (route takeovers), refused takeovers) are handed over, and zeroed, by
    take_counts(); per-chunk figures for the runtime (copies appended and shed per slot,
    duplicates, queries not handed over) by end_chunk().
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
        # peer id -> [generation, is relay peer, QRP kind, slots bytearray or None, bits, slot,
        #             takeover tokens, time of the last takeover or None]
        self._peers: dict[int, list] = {}
        self._ids: list[int] = []  # per slot: the peer id (a removed slot is refilled by the last one)
        self._cand: dict[int, None] = {}  # peers that may get copies: relay peers, leaves with a table
        self._tabs: dict[int, None] = {}  # peers whose table the core reads (QRP_TABLE)
        self._rows: dict[int, list] = {}  # this chunk: slot -> [appended, shed, filled]
        self._leaf_qrp = self._relay_qrp = self._leaf_opaque = self._relay_opaque = 0
        self._local_table: bytes | None = None
        self._local_shift = 32
        self._counts = [0] * 9
        self._chunk = [0, 0, 0]  # copies appended, duplicates, queries not handed over

    @property
    def active(self) -> bool:
        """Whether relay() can settle anything (False in leaf mode)."""
        return self._mode != "leaf"

    @property
    def slot_ids(self) -> tuple[int, ...]:
        """Every peer's id in slot order (relay peers and leaves): relay()'s `bufs` and `bases` follow it.

        A new peer takes the next slot; a removed peer's slot is taken by the last one (so a link
        change costs O(1), and the caller's per-slot lists follow with the same two moves).
        """
        return tuple(self._ids)

    def add_peer(self, peer_id: int, gen: int, relay: bool) -> None:
        """Register a live peer (its generation tells reused ids apart); `relay` False for a leaf.

        Raises:
            LocalProtocolError: peer_id already registered or out of range, gen out of range.
        """
        if peer_id in self._peers:
            raise LocalProtocolError(f"peer {peer_id} already registered")
        if not 0 <= peer_id <= _MAX_PEER or not 0 <= gen <= _MAX_GEN:
            raise LocalProtocolError(f"peer {peer_id} / generation {gen} out of range")
        k = len(self._ids)
        self._peers[peer_id] = st = [gen, bool(relay), _QRP_NONE, None, 0, k,
                                     float(constants.ROUTE_TAKEOVER_BURST), None]
        self._ids.append(peer_id)
        self._place(peer_id, st)
        return k

    def remove_peer(self, peer_id: int) -> tuple[int, int] | None:
        """Forget a peer (unknown ids are ignored).

        Returns:
            (slot, moved): the slot it held and the id of the peer moved into it from the last slot
            (-1 when it held the last slot itself); None for an unknown id.
        """
        st = self._peers.pop(peer_id, None)
        if st is None:
            return None
        self._count_qrp(st, -1)
        self._cand.pop(peer_id, None)
        self._tabs.pop(peer_id, None)
        k, last = st[5], len(self._ids) - 1
        self._rows.pop(k, None)  # its row of this chunk goes with it
        moved = -1
        if k != last:
            moved = self._ids[last]
            self._ids[k] = moved
            self._peers[moved][5] = k
            row = self._rows.pop(last, None)
            if row is not None:  # the moved peer's row of this chunk moves with it
                self._rows[k] = row
        self._ids.pop()
        return (k, moved)

    def _place(self, peer_id: int, st: list) -> None:
        """Keep the candidate and table sets right after a peer's role or table changed."""
        if st[1] or st[2] != _QRP_NONE:  # a leaf without a table gets nothing: not a candidate
            self._cand[peer_id] = None
        else:
            self._cand.pop(peer_id, None)
        if st[2] == _QRP_TABLE:
            self._tabs[peer_id] = None
        else:
            self._tabs.pop(peer_id, None)

    def set_qrp(self, peer_id: int, has_table: bool, slots: bytearray | None = None, bits: int = 0) -> None:
        """Install, replace or clear a peer's QRP table.

        Args:
            peer_id: a registered peer.
            has_table: False clears the table (the peer sent none).
            slots: the table's presence bytes (QrpTable.slots: a bytearray of 2**bits bytes, non-zero
                = present), held by reference; None with has_table True installs a table the core
                cannot read, and every query it would be consulted for goes to Router.route.
            bits: log2 of the table size, 1..32 (with slots).

        Raises:
            LocalProtocolError: unknown peer; slots not a bytearray of 2**bits bytes, or given
                with has_table False.
        """
        st = self._peers.get(peer_id)
        if st is None:
            raise LocalProtocolError(f"set_qrp on unknown peer {peer_id}")
        if slots is not None:
            if not has_table:
                raise LocalProtocolError("set_qrp: slots given for a peer without a table")
            if type(slots) is not bytearray or not 1 <= bits <= 32 or len(slots) != 1 << bits:
                raise LocalProtocolError(f"QRP slots must be a bytearray of 2**bits bytes (bits {bits})")
        self._count_qrp(st, -1)
        st[2] = _QRP_NONE if not has_table else _QRP_OPAQUE if slots is None else _QRP_TABLE
        st[3] = slots
        st[4] = bits if slots is not None else 0
        self._count_qrp(st, 1)
        self._place(peer_id, st)

    def _count_qrp(self, st: list, d: int) -> None:
        if st[2] == _QRP_NONE:
            return
        opaque = d if st[2] == _QRP_OPAQUE else 0
        if st[1]:
            self._relay_qrp += d
            self._relay_opaque += opaque
        else:
            self._leaf_qrp += d
            self._leaf_opaque += opaque

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

    def _may_match(self, payload: bytes, codes: list[int] | None, known: bool) -> bool:
        """Whether a QUERY payload (3..256 bytes) may match our shares (True = hand it over).

        `codes` are its word codes when `known` (None: Python must parse it).
        """
        table = self._local_table
        if table is None:
            return True
        if not table:
            return False
        if not known:
            codes = _query_codes(payload)
        if codes is None:
            return True  # extensions, non-ASCII text, ...: Python decodes it
        shift = self._local_shift
        for c in codes:
            if not table[c >> shift]:
                return False
        return bool(codes)  # no word at all matches nothing

    def _targets(self) -> tuple[list, int, int]:
        """This call's candidate rows (slot, id, leaf, QRP kind, table, shift) and the counts of
        consulted tables the core cannot read (leaves, relay peers). O(candidates), never O(links)."""
        op_leaf, op_relay = self._leaf_opaque, self._relay_opaque
        peers = self._peers
        for pid in self._tabs:
            st = peers[pid]
            if len(st[3]) != 1 << st[4]:  # resized since set_qrp: unreadable this call
                if st[1]:
                    op_relay += 1
                else:
                    op_leaf += 1
        rows = []
        for pid in self._cand:
            st = peers[pid]
            kind, table = st[2], st[3]
            if kind == _QRP_TABLE and len(table) != 1 << st[4]:
                kind, table = _QRP_OPAQUE, None
            rows.append((st[5], pid, not st[1], kind, table, 32 - st[4]))
        return rows, op_leaf, op_relay

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
            bufs: one output bytearray per slot (slot_ids order); the sender's is never written.
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
            LocalProtocolError: bufs / bases do not match slot_ids, or an item of bufs is not a bytearray.
        """
        ns = len(self._ids)
        if len(bufs) != ns or len(bases) != ns:
            raise LocalProtocolError(f"relay() needs {ns} output buffers and bases")
        n = len(msgs)
        if start >= n:
            return n, STOP_END
        st = self._peers.get(peer_id)
        if st is None or not st[1] or self._mode == "leaf":
            return start, STOP_ROUTE
        gen = st[0]
        up = self._mode == "ultrapeer"
        routes, seen = self._routes, self._seen
        counts, chunk, rows = self._counts, self._chunk, self._rows
        slots, op_leaf, op_relay = self._targets()
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
            last = up and out_ttl == 1
            codes = None
            known = False
            if self._leaf_qrp or (last and self._relay_qrp):
                # QRP tables choose the targets: hash the words before anything is recorded, or
                # leave the whole message to Router.route.
                if op_leaf or (last and op_relay):
                    return i, STOP_ROUTE
                codes = _query_codes(raw[HEADER_LEN:])
                if codes is None:
                    return i, STOP_ROUTE
                known = True
            g = raw[:GUID_LEN]
            route = routes._get(g, now)
            if route is not None:
                if route[0] == _LOCAL_PEER:  # our own query came back
                    counts[0] += 1
                    counts[4] += 1
                    continue
                if route[0] == peer_id and route[1] == gen:
                    return i, STOP_ROUTE  # resent on its own link: the node watches for replayers
            counts[0] += 1
            leaves_only = False
            fresh = not seen.seen(g, constants.MSG_QUERY, now)
            if fresh:
                counts[2] += 1
                routes._put(g, peer_id, gen, now, out_ttl, hops, ttl + hops)
                if out_ttl == 0 and up and eff >= 1 and self._leaf_qrp:
                    out_ttl = 1  # spent here: matching leaves still get it (Router._route_query)
                    leaves_only = True
            elif (route is not None
                  and self._take_over(g, route, peer_id, st, out_ttl, hops, ttl + hops, now) == _TAKEOVER_OK):
                # A duplicate that may have come a shorter way (routerules' takeover rule): relayed
                # again below, not handled again, and replies now go back its way.
                pass
            else:
                counts[3] += 1
                chunk[1] += 1
                continue
            if out_ttl:
                out = raw[:17] + bytes((out_ttl, hops + 1)) + raw[19:]
                low = hops >= 2
                for k, pid, leaf, kind, table, shift in slots:
                    if pid == peer_id:
                        continue
                    if leaf:
                        if kind == _QRP_NONE:
                            continue  # a leaf without a table gets nothing
                        if not _codes_match(table, shift, codes):
                            counts[6] += 1
                            continue
                    elif leaves_only:
                        continue
                    elif last and kind != _QRP_NONE:
                        if not _codes_match(table, shift, codes):
                            counts[6] += 1
                            continue
                    counts[1] += 1
                    buf = bufs[k]
                    if type(buf) is not bytearray:
                        raise LocalProtocolError(f"output buffer {k} is not a bytearray")
                    base = bases[k]
                    if base < 0:
                        if base == -1:
                            counts[5] += 1
                        continue
                    size = len(buf)
                    row = rows.get(k)
                    if row is None:
                        row = rows[k] = [0, 0, False]
                    if base + size > high_water or (low and base + size > low_water):
                        row[1] += 1
                        counts[5] += 1
                        continue
                    if not size:
                        row[2] = True
                    buf += out
                    row[0] += 1
                    chunk[0] += 1
            if not fresh:
                continue
            if self._may_match(raw[HEADER_LEN:], codes, known):
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
        rows = sorted((k, a, s, f) for k, (a, s, f) in self._rows.items())
        out = (self._chunk[0], self._chunk[1], self._chunk[2], rows)
        self._chunk = [0, 0, 0]
        self._rows = {}
        return out

    def _spend_takeover(self, st: list, now: float) -> bool:
        """Rule 5 of routerules' takeover rule: spend one token of the sender's bucket (False: none left)."""
        tokens = st[6]
        if st[7] is not None:
            tokens = tokens + (now - st[7]) * constants.ROUTE_TAKEOVERS_PER_MINUTE / 60.0
            if tokens > constants.ROUTE_TAKEOVER_BURST:
                tokens = float(constants.ROUTE_TAKEOVER_BURST)
        st[7] = float(now)
        if tokens < 1.0:
            st[6] = tokens
            return False
        st[6] = tokens - 1.0
        return True

    def _take_over(self, g: bytes, route: tuple, peer_id: int, st: list, out_ttl: int, hops: int, span: int,
                   now: float) -> int:
        """The takeover rule for a duplicate against its live record: take it or refuse it (counted)."""
        verdict = _takeover_verdict(route, out_ttl, hops, span)
        if verdict == _TAKEOVER_OK and not self._spend_takeover(st, now):
            verdict = _TAKEOVER_REFUSED
        if verdict == _TAKEOVER_OK:
            self._routes._entries[g] = (peer_id, st[0], route[2], out_ttl, hops, span)
            self._counts[7] += 1
        elif verdict == _TAKEOVER_REFUSED:
            self._counts[8] += 1
        return verdict

    def take_over(self, guid: bytes, peer_id: int, out_ttl: int, hops: int, span: int, now: float) -> int:
        """Apply the takeover rule to a duplicate QUERY Router.route handles (counted as in relay()).

        Args:
            guid: the query's GUID; peer_id: its live sender.
            out_ttl: the duplicate's relay TTL; hops, span: its hops and raw hops + TTL (0..255).
            now: current time in seconds.

        Returns:
            0 (TAKEOVER_NONE: no live record or no higher TTL), 1 (TAKEOVER_OK: the route is now
            the sender's) or 2 (TAKEOVER_REFUSED).

        Raises:
            LocalProtocolError: unknown peer, guid not 16 bytes, or a value out of range.
        """
        st = self._peers.get(peer_id)
        if st is None:
            raise LocalProtocolError(f"take_over from unknown peer {peer_id}")
        g = _guid_bytes(guid)
        _check_route_args(peer_id, st[0], out_ttl, hops, span)
        route = self._routes._get(g, now)
        if route is None:
            return _TAKEOVER_NONE
        return self._take_over(g, route, peer_id, st, out_ttl, hops, span, now)

    def take_counts(self) -> tuple[int, int, int, int, int, int, int, int, int]:
        """Hand over and zero the cumulative counters.

        Returns:
            (received, forwarded, local, duplicates, own echoes, flow-control drops, QRP skips,
            duplicates relayed again for their higher TTL (route takeovers), refused takeovers),
            QUERYs all.
        """
        out = tuple(self._counts)
        self._counts = [0] * 9
        return out  # type: ignore[return-value]
