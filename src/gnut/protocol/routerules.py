"""Routing vocabulary and rules: decisions, drop reasons, TTL and size rules, the reverse-route table.

gnut.protocol.routing's Router applies these; they are small pure functions and plain data so each
rule is tested by a table of rows (tests/test_routing.py) and shared with the relay core.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from gnut.constants import HARD_TTL_LIMIT, MAX_QUERY_DISCONNECT, MAX_QUERY_RELAY, SOFT_TTL_LIMIT
from gnut.errors import LocalProtocolError, ProtocolError
from gnut.protocol.messages import Query
from gnut.protocol.qrp import QrpTable, QueryHashes
from gnut.protocol.qrp import query_words as qrp_query_words

# A QUERY payload is a 2-byte flags word then NUL-ended text: 3 bytes at the least.
MIN_QUERY_PAYLOAD = 3


class DropReason(enum.Enum):
    """Why a message was dropped; every drop is counted under one of these."""

    DUPLICATE = "duplicate"  # (GUID, type) of a broadcast already seen
    TTL_EXPIRED = "ttl_expired"  # TTL 0 on receipt, or no TTL left to relay a reply
    HOP_LIMIT = "hop_limit"  # TTL + hops above the hard limit
    NO_ROUTE = "no_route"  # reply or PUSH with no live reverse route
    OVERSIZED = "oversized"  # payload above a disconnect limit
    MALFORMED = "malformed"  # payload too short for its type
    FLOW_CONTROL = "flow_control"  # shed by the runtime's output queue (counted via count_drop)
    LEAF_RELAY = "leaf_relay"  # a leaf sent something with hops > 0
    UNKNOWN_TYPE = "unknown_type"  # message type we do not know
    OWN_MESSAGE = "own_message"  # a broadcast carrying one of our own GUIDs came back
    HOPS_NONZERO = "hops_nonzero"  # BYE / QRP / vendor message that was relayed
    TOO_BIG_QUERY = "too_big_query"  # query payload above the relay limit (not a disconnect)
    ROUTE_LOOP = "route_loop"  # a reply or PUSH whose route leads back to the peer that sent it


class Action(enum.IntEnum):
    """What the runtime does with a received message."""

    DROP = 0
    LOCAL = 1
    FORWARD = 2
    ROUTE_BACK = 3


class PeerRole(enum.IntEnum):
    """Role of a neighbour as negotiated in the handshake."""

    ULTRAPEER = 0
    LEAF = 1
    FLOOD = 2  # classic 0.4-style peer: every node relays, no QRP


@dataclass(slots=True)
class RouteDecision:
    """One routing decision for the runtime to execute.

    `targets` get a copy with TTL = `ttl` and hops + 1; `local` asks the node to
    handle the message itself too.  FORWARD may have no targets (a higher-TTL
    duplicate QUERY with nobody left to relay it to: not a drop).  DROP never has
    local=True: a PONG that cannot be relayed is LOCAL (it still names a host) with
    `reason` saying why the relay was dropped (and counted in Router.drops).
    """

    action: Action
    targets: tuple[int, ...] = ()
    local: bool = False
    reason: DropReason | None = None
    disconnect: bool = False
    bye_code: int = 0
    ttl: int = 0


class QrpMatcher(Protocol):
    """What set_qrp() needs from a peer's QRP table."""

    def matches(self, words: Iterable[str]) -> bool: ...


class _Peer:
    """A live neighbour: role, generation (tells reused ids apart), QRP matcher."""

    __slots__ = ("role", "gen", "matcher")

    def __init__(self, role: PeerRole, gen: int) -> None:
        self.role = role
        self.gen = gen
        self.matcher: QrpMatcher | None = None


# Route takeover (the rule every twin applies: RouteTable.reroute here, RouteMap.reroute and the
# C relay loop in _routemap.pxi/_relay.pxi, and the pure twin _purerelay.py).
# A duplicate QUERY may move the reverse route of its GUID to its sender only when that sender
# could really be on a shorter path from the querier:
#   1. it is useful: its relay TTL beats the highest one relayed so far (else it is a plain DUPLICATE);
#   2. its hops count is strictly lower than the recorded copy's (a higher TTL at the same or more
#      hops is no shorter path, only a louder claim: the old "higher TTL wins" rule let any
#      neighbour take every route, and with it every QUERYHIT, by resending the GUID with more TTL);
#   3. its hops + TTL is consistent with the recorded copy's: an honest copy of one query carries the
#      same hops + TTL on every path, less what a soft-limit clamp took off, so it may exceed the
#      recorded sum only when that record was clamped (sum at the soft limit or above);
#   4. the recorded copy is not ours nor a leaf's: those are recorded with hops 0 (and ours as
#      LOCAL_PEER, whose echoes are OWN_MESSAGE first), and no copy has fewer hops than 0;
#   5. the sender has takeover budget left (ROUTE_TAKEOVER_BURST, refilled at
#      ROUTE_TAKEOVERS_PER_MINUTE; a token bucket per peer kept by the relay core, RelayCore
#      take_over/_spend_takeover in both twins): honest takeovers are races between two paths and
#      rare, so a neighbour that lies about its hops steals at most a trickle, never the stream.
# A copy that passes 1 and fails 2-5 is a refused takeover: dropped as a DUPLICATE and counted.
TAKEOVER_NONE = 0  # not a takeover candidate (no higher relay TTL): a plain duplicate
TAKEOVER_OK = 1  # rules 1-4 hold (the caller still checks the sender's budget)
TAKEOVER_REFUSED = 2  # higher relay TTL, but the copy cannot be on a shorter path


def takeover_verdict(rec_ttl: int, rec_hops: int, rec_span: int, out_ttl: int, hops: int, span: int) -> int:
    """Rules 1-4 above for a duplicate QUERY against its route record.

    Args:
        rec_ttl, rec_hops, rec_span: the record's highest relay TTL, and the hops and raw
            hops + TTL of the copy that set it.
        out_ttl: the duplicate's relay TTL; hops, span: its hops and raw hops + TTL.

    Returns:
        TAKEOVER_NONE, TAKEOVER_OK or TAKEOVER_REFUSED.
    """
    if out_ttl <= rec_ttl:
        return TAKEOVER_NONE
    if hops >= rec_hops or (span > rec_span and rec_span < SOFT_TTL_LIMIT):
        return TAKEOVER_REFUSED
    return TAKEOVER_OK


class RouteTable:
    """Bounded, aged map GUID -> (peer id, peer generation, relay TTL, hops, hops + TTL).

    Strategy: an OrderedDict in insertion-time order (a re-insert moves the key to
    the end).  Inserting evicts the oldest entries while the table is full and pops
    entries older than max_age from the front, so both bounds cost amortised O(1).
    A lookup also treats an entry aged max_age or more as absent.
    """

    __slots__ = ("capacity", "max_age", "_entries")

    def __init__(self, capacity: int, max_age: float) -> None:
        """Args:
        capacity: most entries held (>= 1).
        max_age: seconds an entry stays valid.

        Raises:
            LocalProtocolError: capacity < 1 or max_age <= 0.
        """
        if capacity < 1 or max_age <= 0:
            raise LocalProtocolError(f"bad route table bounds capacity={capacity} max_age={max_age}")
        self.capacity = capacity
        self.max_age = max_age
        # GUID -> (peer, generation, time put, highest relay TTL, hops, hops + TTL)
        self._entries: OrderedDict[bytes, tuple[int, int, float, int, int, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, guid: bytes, peer: int, gen: int, now: float, ttl: int = 0, hops: int = 0, span: int = 0) -> None:
        """Record that replies for `guid` go to `peer` (generation `gen`) from time `now`.

        Args:
            guid: the GUID.
            peer, gen: the peer id and its generation.
            now: current time in seconds.
            ttl: the relay TTL the message was forwarded with (0 = not forwarded).
            hops, span: hops and raw hops + TTL of the copy (0: ours or a leaf's, never taken over).
        """
        entries = self._entries
        if guid in entries:
            del entries[guid]
        while len(entries) >= self.capacity:
            entries.popitem(last=False)
        horizon = now - self.max_age
        while entries:
            oldest = next(iter(entries.values()))
            if oldest[2] > horizon:
                break
            entries.popitem(last=False)
        entries[guid] = (peer, gen, now, ttl, hops, span)

    def _live(self, guid: bytes, now: float) -> tuple[int, int, float, int, int, int] | None:
        entry = self._entries.get(guid)
        if entry is not None and now - entry[2] >= self.max_age:
            del self._entries[guid]
            return None
        return entry

    def get(self, guid: bytes, now: float) -> tuple[int, int] | None:
        """Return (peer, generation) for `guid`, or None if unknown or aged out."""
        entry = self._live(guid, now)
        return None if entry is None else (entry[0], entry[1])

    def reroute(
        self, guid: bytes, peer: int, gen: int, ttl: int, now: float, hops: int = 0, span: int = 0,
        allow: bool = True,
    ) -> int:
        """Let a duplicate copy take guid's live entry over, by the takeover rule above.

        Args:
            guid, peer, gen: the GUID and the duplicate's sender.
            ttl: the duplicate's relay TTL; hops, span: its hops and raw hops + TTL.
            now: current time in seconds.
            allow: False when the sender has no takeover budget left (an OK verdict is refused).

        Returns:
            TAKEOVER_NONE (no record, or no higher TTL), TAKEOVER_REFUSED, or TAKEOVER_OK when
            the entry now holds `peer`, `gen`, `ttl`, `hops` and `span` (its age and place stay).
        """
        entry = self._live(guid, now)
        if entry is None:
            return TAKEOVER_NONE
        verdict = takeover_verdict(entry[3], entry[4], entry[5], ttl, hops, span)
        if verdict == TAKEOVER_OK and not allow:
            return TAKEOVER_REFUSED
        if verdict == TAKEOVER_OK:
            self._entries[guid] = (peer, gen, entry[2], ttl, hops, span)  # an existing key keeps its place
        return verdict


def effective_ttl(ttl: int, hops: int) -> int:
    """Return the received TTL after the soft-limit clamp (ttl + hops <= SOFT_TTL_LIMIT).

    Args:
        ttl: TTL as received.
        hops: hops as received.

    Returns:
        min(ttl, SOFT_TTL_LIMIT - hops), possibly <= 0 when hops alone reach the limit.
    """
    return min(ttl, SOFT_TTL_LIMIT - hops)


def relay_ttl(ttl: int, hops: int) -> int:
    """Return the TTL for a relayed copy, or 0 when the message must not travel further.

    Strategy: clamp to the soft limit, then decrement; a copy is sent only if it
    still carries TTL >= 1 (a TTL 0 message is invalid for its receiver).
    """
    left = effective_ttl(ttl, hops) - 1
    return left if left >= 1 else 0


def check_ttl(ttl: int, hops: int) -> DropReason | None:
    """Return the drop reason for an invalid TTL/hops pair, or None when acceptable.

    Args:
        ttl: TTL as received.
        hops: hops as received.

    Returns:
        TTL_EXPIRED for TTL 0, HOP_LIMIT when ttl + hops exceeds HARD_TTL_LIMIT, else None.
    """
    if ttl == 0:
        return DropReason.TTL_EXPIRED
    if ttl + hops > HARD_TTL_LIMIT:
        return DropReason.HOP_LIMIT
    return None


def check_query_size(length: int) -> tuple[DropReason | None, bool]:
    """Return (drop reason, disconnect) for a QUERY payload of `length` bytes.

    Strategy (gtk-gnutella): above 1 KiB the sender is abusive and loses the link;
    above 256 bytes the query is dropped; below 3 bytes it cannot hold flags + NUL.
    """
    if length > MAX_QUERY_DISCONNECT:
        return DropReason.OVERSIZED, True
    if length > MAX_QUERY_RELAY:
        return DropReason.TOO_BIG_QUERY, False
    if length < MIN_QUERY_PAYLOAD:
        return DropReason.MALFORMED, False
    return None, False


def query_terms(payload: bytes) -> tuple[list[str], tuple[str, ...]]:
    """Return the QRP words and URNs of a QUERY payload.

    Words are the search text normalised by gnut.protocol.qrp.query_words (so they agree with
    the QRP tables); URNs come from the extensions ("urn:sha1:..." text or GGEP H).
    A payload whose extensions do not decode still yields the words of its text.

    Args:
        payload: the QUERY payload (2-byte flags, NUL-ended text, extensions).

    Returns:
        (words, urns), either possibly empty.
    """
    try:
        query = Query.decode(payload)
    except ProtocolError:
        end = payload.find(b"\x00", 2)
        text = payload[2 : end if end >= 0 else len(payload)].decode("utf-8", "replace")
        return qrp_query_words(text), ()
    return qrp_query_words(query.text), tuple(query.urns)


def query_words(payload: bytes) -> list[str]:
    """Return the search words of a QUERY payload (see query_terms)."""
    return query_terms(payload)[0]


class _QueryView:
    """One query as QRP sees it: parsed on first use, hashed once for all QrpTables.

    Strategy: the flood path never builds one; the ultrapeer path parses the payload
    only when a peer's table is consulted, and hashes the words once (QueryHashes),
    reused across every table (rescaled by QrpTable for other sizes).
    """

    __slots__ = ("payload", "words", "urns", "hashes")

    def __init__(self, payload: bytes | None, words: list[str] | None) -> None:
        self.payload = payload
        self.words = words
        self.urns: tuple[str, ...] = ()
        self.hashes: QueryHashes | None = None

    def matches(self, matcher: QrpMatcher) -> bool:
        if self.words is None:
            self.words, self.urns = query_terms(self.payload or b"")
        if isinstance(matcher, QrpTable):
            if self.hashes is None:
                self.hashes = QueryHashes(self.words, matcher.size_bits, self.urns)
            return matcher.matches_hashes(self.hashes)
        return matcher.matches(self.words)
