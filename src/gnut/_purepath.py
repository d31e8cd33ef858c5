"""Pure-Python twin of gnut._fastpath: framing, seen cache, relay rewrite and relay core, same names and errors."""

# Strategy: everything here mirrors gnut/_fastpath.pyx name for name and error for error; the
# differential tests in tests/test_fastpath.py hold the two together.
#
# Framing (Gnutella 0.6 spec, "Message Header"): every message is a 23-byte header
#   GUID(16) | type(1) | TTL(1) | hops(1) | payload length (4, little-endian)
# followed by exactly that many payload bytes. The reader keeps at most ONE partial message
# (the tail of the last chunk); a new chunk first completes that message, then whole messages are
# sliced straight out of the chunk, so no byte is ever copied twice and growth stays linear.
# The header is checked the moment its 23 bytes are complete, before any payload is buffered.

from __future__ import annotations

import os
import sys
from collections import deque

import xxhash

from gnut import constants
from gnut.errors import LocalProtocolError, RemoteProtocolError

HEADER_LEN = constants.HEADER_LEN
GUID_LEN = constants.GUID_LEN
# Offset of the 4-byte little-endian payload length inside the header.
_LEN_OFFSET = 19
# The Cython seen cache packs (fingerprint, probe distance, ring index + 1) into 32-bit slots, which
# caps it at 2^24 entries (see _fastpath.pyx). Both twins refuse the same sizes.
MAX_CACHE_CAPACITY = 1 << 24
# Largest seed XXH3 accepts (its seed is an unsigned 64-bit integer).
_MAX_SEED = (1 << 64) - 1

__all__ = [
    "MAX_CACHE_CAPACITY",
    "MAX_ROUTE_CAPACITY",
    "STOP_END",
    "STOP_LOCAL",
    "STOP_ROUTE",
    "FrameReader",
    "GuidCache",
    "Message",
    "RelayCore",
    "RouteMap",
    "count_frames",
    "hash_guid",
    "query_codes",
    "relay_rewrite",
    "relay_rewrite_into",
]


class Message:
    """One Gnutella message: the 23-byte header fields plus the payload, and the raw bytes as received."""

    __slots__ = ("_raw", "_type", "_ttl", "_hops")

    def __init__(self, raw: bytes) -> None:
        """Wrap the raw bytes of one whole message.

        Args:
            raw: the 23-byte header followed by exactly the declared payload.

        Raises:
            LocalProtocolError: raw is shorter than a header or its length disagrees with the header.
        """
        raw = bytes(raw)
        if len(raw) < HEADER_LEN:
            raise LocalProtocolError(
                f"message of {len(raw)} bytes is shorter than the {HEADER_LEN}-byte header"
            )
        declared = int.from_bytes(raw[_LEN_OFFSET:HEADER_LEN], "little")
        if declared != len(raw) - HEADER_LEN:
            raise LocalProtocolError(
                f"header declares a {declared}-byte payload but {len(raw) - HEADER_LEN} bytes follow"
            )
        self._raw = raw
        self._type = raw[16]
        self._ttl = raw[17]
        self._hops = raw[18]

    @property
    def guid(self) -> bytes:
        """The 16-byte message GUID."""
        return self._raw[:GUID_LEN]

    @property
    def type(self) -> int:
        """The payload descriptor (constants.MSG_*); unknown values are kept as they are."""
        return self._type

    @property
    def ttl(self) -> int:
        """Time to live as received."""
        return self._ttl

    @property
    def hops(self) -> int:
        """Hops as received."""
        return self._hops

    @property
    def payload(self) -> bytes:
        """The payload bytes (everything after the header)."""
        return self._raw[HEADER_LEN:]

    @property
    def raw(self) -> bytes:
        """Header plus payload exactly as received."""
        return self._raw

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Message):
            return self._raw == other._raw
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return (
            f"Message(type=0x{self._type:02x}, ttl={self._ttl}, hops={self._hops}, "
            f"guid={self._raw[:GUID_LEN].hex()}, payload_len={len(self._raw) - HEADER_LEN})"
        )


def _new_message(raw: bytes) -> Message:
    """Build a Message from bytes whose length the reader already checked."""
    msg = Message.__new__(Message)
    msg._raw = raw
    msg._type = raw[16]
    msg._ttl = raw[17]
    msg._hops = raw[18]
    return msg


def _check_header(header, pos: int, max_payload: int, hard_ttl: int) -> int:
    """Validate the header at header[pos:pos+23] and return the whole message length.

    Raises:
        RemoteProtocolError: the declared payload or TTL+hops exceeds its limit.
    """
    length = int.from_bytes(header[pos + _LEN_OFFSET : pos + HEADER_LEN], "little")
    if length > max_payload:
        raise RemoteProtocolError(f"payload length {length} exceeds limit {max_payload}")
    ttl = header[pos + 17]
    hops = header[pos + 18]
    if ttl + hops > hard_ttl:
        raise RemoteProtocolError(f"ttl {ttl} + hops {hops} exceeds limit {hard_ttl}")
    return HEADER_LEN + length


def _check_limits(max_payload: int, hard_ttl: int) -> None:
    if not 0 <= max_payload <= 0xFFFFFFFF:
        raise LocalProtocolError(f"max_payload {max_payload} is outside 0..2^32-1")
    if not 0 <= hard_ttl <= 510:
        raise LocalProtocolError(f"hard_ttl {hard_ttl} is outside 0..510")


class FrameReader:
    """Split a byte stream into Messages, checking each header before its payload is buffered."""

    __slots__ = ("_max_payload", "_hard_ttl", "_pending", "_need", "_error")

    def __init__(self, max_payload: int = constants.MAX_PAYLOAD, hard_ttl: int = constants.HARD_TTL_LIMIT):
        """Create a reader.

        Args:
            max_payload: largest payload accepted; a larger declared length is a protocol error.
            hard_ttl: largest TTL + hops accepted.

        Raises:
            LocalProtocolError: a limit is out of range.
        """
        _check_limits(max_payload, hard_ttl)
        self._max_payload = max_payload
        self._hard_ttl = hard_ttl
        # The partial message: fewer than 23 bytes, or a checked header plus part of its payload.
        self._pending = bytearray()
        self._need = 0  # whole length of the pending message once its header is checked, else 0
        self._error: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete message."""
        return len(self._pending)

    def _fail(self, exc: RemoteProtocolError, out: list) -> None:
        self._error = str(exc)
        self._pending = bytearray()
        exc.messages = out  # the whole messages that preceded the bad header in this chunk
        raise exc

    def feed(self, chunk: bytes) -> list[Message]:
        """Consume a chunk of the stream.

        Args:
            chunk: the next bytes received (any length, b"" allowed).

        Returns:
            Every message completed by this chunk, in order.

        Raises:
            RemoteProtocolError: a header broke a limit (the error's ``messages`` attribute holds the
                messages that preceded it in this chunk, [] when the reader had already failed).
        """
        if self._error is not None:
            exc = RemoteProtocolError(f"frame reader already failed: {self._error}")
            exc.messages = []
            raise exc
        if type(chunk) is not bytes:
            chunk = bytes(chunk)
        out: list[Message] = []
        n = len(chunk)
        pos = 0
        pending = self._pending
        if pending:
            need = self._need
            if not need:
                take = min(HEADER_LEN - len(pending), n)
                pending += chunk[:take]
                pos = take
                if len(pending) < HEADER_LEN:
                    return out
                try:
                    need = _check_header(pending, 0, self._max_payload, self._hard_ttl)
                except RemoteProtocolError as exc:
                    self._fail(exc, out)
                self._need = need
            take = min(need - len(pending), n - pos)
            pending += chunk[pos : pos + take]
            pos += take
            if len(pending) < need:
                return out
            out.append(_new_message(bytes(pending)))
            self._pending = pending = bytearray()
            self._need = 0
        max_payload = self._max_payload
        hard_ttl = self._hard_ttl
        while n - pos >= HEADER_LEN:
            try:
                total = _check_header(chunk, pos, max_payload, hard_ttl)
            except RemoteProtocolError as exc:
                self._fail(exc, out)
            end = pos + total
            if end > n:
                self._need = total
                break
            out.append(_new_message(chunk[pos:end]))
            pos = end
        if pos < n:
            pending += chunk[pos:]
        return out


def count_frames(
    data: bytes, max_payload: int = constants.MAX_PAYLOAD, hard_ttl: int = constants.HARD_TTL_LIMIT
) -> int:
    """Walk the headers of a buffer without building objects (a validator and the benchmark floor).

    Args:
        data: a buffer that starts on a message boundary.
        max_payload: as for FrameReader.
        hard_ttl: as for FrameReader.

    Returns:
        How many whole messages the buffer holds (a trailing partial message is not counted).

    Raises:
        RemoteProtocolError: a header breaks a limit.
        LocalProtocolError: a limit is out of range.
    """
    _check_limits(max_payload, hard_ttl)
    data = bytes(data)
    n = len(data)
    pos = 0
    count = 0
    while n - pos >= HEADER_LEN:
        pos += _check_header(data, pos, max_payload, hard_ttl)
        if pos > n:
            break
        count += 1
    return count


def _relay_source(raw) -> bytes:
    """The raw bytes of raw (bytes-like or Message), once checked that they can be relayed."""
    if isinstance(raw, Message):
        raw = raw.raw
    elif type(raw) is not bytes:
        raw = bytes(raw)
    if len(raw) < HEADER_LEN:
        raise LocalProtocolError(f"message of {len(raw)} bytes is shorter than the {HEADER_LEN}-byte header")
    declared = int.from_bytes(raw[_LEN_OFFSET:HEADER_LEN], "little")
    if declared != len(raw) - HEADER_LEN:
        raise LocalProtocolError(
            f"header declares a {declared}-byte payload but {len(raw) - HEADER_LEN} bytes follow"
        )
    if raw[17] == 0:
        raise LocalProtocolError("cannot relay a message whose TTL is 0")
    if raw[18] == 255:
        raise LocalProtocolError("cannot relay a message whose hops is 255")
    return raw


def relay_rewrite(raw: bytes) -> bytes:
    """Return the message as it is relayed: TTL - 1, hops + 1, everything else unchanged.

    Args:
        raw: header plus payload of one whole message (bytes-like), or a Message.

    Returns:
        The rewritten raw bytes.

    Raises:
        LocalProtocolError: raw is not one whole message, its TTL is 0 or its hops is 255.
    """
    out = bytearray(_relay_source(raw))
    out[17] -= 1
    out[18] += 1
    return bytes(out)


def relay_rewrite_into(out: bytearray, raw: bytes) -> None:
    """Append the relayed form of raw (TTL - 1, hops + 1) to out.

    Args:
        out: the bytearray to extend.
        raw: header plus payload of one whole message (bytes-like), or a Message.

    Raises:
        TypeError: out is not a bytearray.
        LocalProtocolError: as relay_rewrite; out is left unchanged.
    """
    if type(out) is not bytearray:
        raise TypeError(f"out must be a bytearray, not {type(out).__name__}")
    raw = _relay_source(raw)
    start = len(out)
    out += raw
    out[start + 17] -= 1
    out[start + 18] += 1


def hash_guid(guid: bytes, seed: int) -> int:
    """XXH3-64 of the 16 GUID bytes with the given seed (the seen cache's key hash).

    Args:
        guid: 16 bytes.
        seed: 0 .. 2^64-1.

    Returns:
        The 64-bit hash as an int.

    Raises:
        LocalProtocolError: guid is not 16 bytes or seed is out of range.
    """
    if len(guid) != GUID_LEN:
        raise LocalProtocolError(f"guid must be {GUID_LEN} bytes, got {len(guid)}")
    if not 0 <= seed <= _MAX_SEED:
        raise LocalProtocolError(f"seed {seed} is outside 0..2^64-1")
    return xxhash.xxh3_64_intdigest(bytes(guid), seed=seed)


class GuidCache:
    """Remember (GUID, kind) pairs for max_age seconds, at most capacity of them, oldest evicted first.

    Eviction policy, in plain words: entries leave in the order they arrived. An entry expires
    max_age seconds after it was first recorded (seeing it again does not make it younger); when the
    cache is full, recording a new entry evicts the oldest one. If `now` goes backwards it is treated
    as equal to the latest `now` seen.
    """

    __slots__ = ("_capacity", "_max_age", "_seed", "_times", "_order", "_now")

    def __init__(self, capacity: int, max_age: float, seed: int | None = None):
        """Create an empty cache.

        Args:
            capacity: most entries held, 1 .. MAX_CACHE_CAPACITY.
            max_age: seconds an entry stays (> 0).
            seed: hash seed (0 .. 2^64-1); a random per-process value when None.

        Raises:
            LocalProtocolError: an argument is out of range.
        """
        if not 1 <= capacity <= MAX_CACHE_CAPACITY:
            raise LocalProtocolError(f"capacity {capacity} is outside 1..{MAX_CACHE_CAPACITY}")
        if not max_age > 0:
            raise LocalProtocolError(f"max_age {max_age} must be positive")
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        if not 0 <= seed <= _MAX_SEED:
            raise LocalProtocolError(f"seed {seed} is outside 0..2^64-1")
        self._capacity = capacity
        self._max_age = float(max_age)
        self._seed = seed
        self._times: dict[bytes, float] = {}  # key -> time recorded
        self._order: deque[tuple[float, bytes]] = deque()  # FIFO of (time, key), oldest on the left
        self._now = float("-inf")

    @property
    def seed(self) -> int:
        """The hash seed in use."""
        return self._seed

    @property
    def capacity(self) -> int:
        """Most entries held."""
        return self._capacity

    @property
    def max_age(self) -> float:
        """Seconds an entry stays."""
        return self._max_age

    def __len__(self) -> int:
        return len(self._times)

    def seen(self, guid: bytes, kind: int, now: float) -> bool:
        """Check and record one (guid, kind).

        Args:
            guid: 16 bytes.
            kind: 0..255 (the message type for broadcasts).
            now: current time in seconds, non-decreasing (earlier values count as the latest).

        Returns:
            True if the pair was recorded and has not expired, else False (and it is now recorded).

        Raises:
            LocalProtocolError: guid is not 16 bytes or kind is outside 0..255.
        """
        if len(guid) != GUID_LEN:
            raise LocalProtocolError(f"guid must be {GUID_LEN} bytes, got {len(guid)}")
        if not 0 <= kind <= 255:
            raise LocalProtocolError(f"kind {kind} is outside 0..255")
        if now < self._now:
            now = self._now
        self._now = now
        times = self._times
        order = self._order
        max_age = self._max_age
        # Expired means now - t >= max_age, computed exactly so in both twins (floats).
        while order and now - order[0][0] >= max_age:
            del times[order.popleft()[1]]
        key = bytes(guid) + bytes((kind,))
        if key in times:
            return True
        if len(times) >= self._capacity:
            del times[order.popleft()[1]]
        times[key] = now
        order.append((now, key))
        return False

    def memory_bytes(self) -> int:
        """Approximate bytes held by the dict, the FIFO and their keys, tuples and floats."""
        n = len(self._times)
        per_entry = sys.getsizeof(b"x" * (GUID_LEN + 1)) + sys.getsizeof((0.0, b"")) + sys.getsizeof(0.0)
        return sys.getsizeof(self._times) + sys.getsizeof(self._order) + n * per_entry



# The relay core's twin lives in its own module (it needs GuidCache and Message, defined above).
from gnut._purerelay import (  # noqa: E402
    MAX_ROUTE_CAPACITY,
    STOP_END,
    STOP_LOCAL,
    STOP_ROUTE,
    RelayCore,
    RouteMap,
    query_codes,
)
