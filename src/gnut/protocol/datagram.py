"""Gnutella over UDP, sans-IO: one message per datagram, deflated UDP, and the drop reasons.

Strategy: a datagram holds exactly one Gnutella message (23-byte header, then the payload the
header's length field announces). `parse_datagram` checks it with the same limits as a TCP
link (payload cap, TTL/hops sanity, the payload codecs of protocol/messages.py) and returns
either a `Datagram` or the reason it is dropped; it never raises. Deflated UDP
(gtk-gnutella doc/gnutella/deflated_udp): a request whose TTL has bit 3 set (0x08) says the
sender can take deflated replies; a reply whose TTL has bit 7 set (0x80) carries a deflated
payload and the length field counts the deflated bytes. Inflation is capped at MAX_PAYLOAD.
"""

from __future__ import annotations

import enum
import zlib
from dataclasses import dataclass

from gnut.constants import HARD_TTL_LIMIT, HEADER_LEN, KNOWN_TYPES, MAX_PAYLOAD
from gnut.protocol import messages

# TTL bit a request sets to say "you may deflate your replies" (deflated_udp section 3: TTL 9).
TTL_CAN_INFLATE = 0x08
# TTL bit of a reply whose payload is deflated (deflated_udp section 4: TTL 129).
TTL_DEFLATED = 0x80
# The largest datagram we read: one header plus the TCP payload cap (IPv4 UDP tops out at 65507).
MAX_DATAGRAM = HEADER_LEN + MAX_PAYLOAD
# Deflate a reply only when it is at least this long: shorter payloads do not shrink.
DEFLATE_MIN = 128


class UdpDrop(enum.Enum):
    """Why a datagram was dropped (the TCP reasons where they apply, plus the UDP ones)."""

    TRUNCATED = "truncated"  # shorter than a header
    LENGTH_MISMATCH = "length_mismatch"  # the header's length is not the datagram's payload size
    OVERSIZED = "oversized"  # payload (or inflated payload) above the cap
    BAD_INFLATE = "bad_inflate"  # deflated flag set but the payload does not inflate
    TTL_EXPIRED = "ttl_expired"  # TTL 0
    HOP_LIMIT = "hop_limit"  # TTL + hops above the hard limit
    UNKNOWN_TYPE = "unknown_type"  # a message type no handler takes
    MALFORMED = "malformed"  # the payload codec refused it
    RATE_LIMITED = "rate_limited"  # the source address spent its token bucket
    QUEUE_FULL = "queue_full"  # the bounded receive queue was full
    UNSOLICITED = "unsolicited"  # a reply we never asked for (OOB hits, UHC pongs, acks)
    BAD_TOKEN = "bad_token"  # an OOB hit without the security token we sent
    NOT_ALLOWED = "not_allowed"  # a type we never take over UDP (BYE, QRP, PUSH to a leaf...)


@dataclass(frozen=True, slots=True)
class Datagram:
    """One received UDP message: header fields, the (inflated) payload, and the raw bytes."""

    guid: bytes
    type: int
    ttl: int  # with the TTL_CAN_INFLATE / TTL_DEFLATED bits removed
    hops: int
    payload: bytes
    can_inflate: bool  # the sender accepts deflated replies
    deflated: bool  # the payload came deflated

    @property
    def raw(self) -> bytes:
        """The message as it would be on a TCP link (inflated, TTL bits cleared)."""
        return messages.build(self.guid, self.type, self.ttl, self.hops, self.payload)


def _inflate(data: bytes) -> bytes | None:
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, MAX_PAYLOAD + 1)
    except zlib.error:
        return None
    if len(out) > MAX_PAYLOAD or d.unconsumed_tail:
        return None
    return out


def parse_datagram(data: bytes, extra_types: frozenset[int] | set[int] = frozenset()) -> Datagram | UdpDrop:
    """Check one datagram and return the message in it, or why it is dropped.

    Args:
        data: the datagram bytes.
        extra_types: message types beyond the Gnutella ones that a handler takes (e.g. 0x44,
            Mojito DHT): their payloads are not decoded here.
    """
    n = len(data)
    if n < HEADER_LEN:
        return UdpDrop.TRUNCATED
    if n > MAX_DATAGRAM:
        return UdpDrop.OVERSIZED
    length = int.from_bytes(data[19:23], "little")
    if length != n - HEADER_LEN:
        return UdpDrop.LENGTH_MISMATCH
    mtype, ttl_byte, hops = data[16], data[17], data[18]
    if mtype not in KNOWN_TYPES and mtype not in extra_types:
        return UdpDrop.UNKNOWN_TYPE
    deflated = bool(ttl_byte & TTL_DEFLATED)
    can_inflate = bool(ttl_byte & TTL_CAN_INFLATE)
    ttl = ttl_byte & ~(TTL_DEFLATED | TTL_CAN_INFLATE)
    payload = bytes(data[HEADER_LEN:])
    if deflated:
        inflated = _inflate(payload)
        if inflated is None:
            return UdpDrop.BAD_INFLATE
        payload = inflated
    if ttl == 0 and mtype in KNOWN_TYPES:
        return UdpDrop.TTL_EXPIRED
    if ttl + hops > HARD_TTL_LIMIT and mtype in KNOWN_TYPES:
        return UdpDrop.HOP_LIMIT
    if mtype in KNOWN_TYPES:
        try:
            messages.decode(mtype, payload)
        except Exception:  # noqa: BLE001  (any codec refusal is a counted drop, never a crash)
            return UdpDrop.MALFORMED
    return Datagram(bytes(data[:16]), mtype, ttl, hops, payload, can_inflate, deflated)


def build_datagram(guid: bytes, mtype: int, ttl: int, hops: int, payload: bytes, *,
                   deflate: bool = False, can_inflate: bool = False) -> bytes:
    """Build one UDP message.

    Args:
        deflate: the peer said it can inflate (its request had TTL bit 3): deflate the payload
            when that makes it shorter and mark TTL bit 7.
        can_inflate: mark this request so the peer may deflate its replies (TTL bit 3).
    """
    flags = TTL_CAN_INFLATE if can_inflate else 0
    if deflate and len(payload) >= DEFLATE_MIN:
        packed = zlib.compress(payload, 6)
        if len(packed) < len(payload):
            return messages.build(guid, mtype, ttl | TTL_DEFLATED | flags, hops, packed)
    return messages.build(guid, mtype, ttl | flags, hops, payload)
