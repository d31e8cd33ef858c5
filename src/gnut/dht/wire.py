"""Mojito (Gnutella DHT) codecs: header, contacts, values, the eight message bodies.

Layout as LimeWire's "Mojito Message Format" page and gtk-gnutella's if/dht/kademlia.h give it:
a Gnutella header whose function byte is 0x44 ('D'), whose TTL/hops bytes carry the message
version and whose length counts everything after byte 23; then the opcode, the sender's contact
(vendor, version, KUID, IPv4 address and big-endian port: "unlike Gnutella"), an instance id, a
flags byte (FIREWALLED, SHUTDOWN) and a big-endian extended-header length.

Every decoder takes the whole input and either returns a value or raises RemoteProtocolError:
truncation, trailing bytes, counts above our limits and bad address lengths are all errors.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass, field

from gnut.errors import LocalProtocolError, RemoteProtocolError

MSG_DHT = 0x44  # Gnutella function byte of every Mojito message
KUID_LEN = 20
GTA_HEADER_LEN = 23
HEADER_LEN = 61  # the whole Mojito header (Gnutella header + Kademlia fields)
CONTACT_OFFSET = 24

PING_REQUEST = 0x01
PING_RESPONSE = 0x02
STORE_REQUEST = 0x03
STORE_RESPONSE = 0x04
FIND_NODE_REQUEST = 0x05
FIND_NODE_RESPONSE = 0x06
FIND_VALUE_REQUEST = 0x07
FIND_VALUE_RESPONSE = 0x08
OP_NAMES = {
    PING_REQUEST: "PING",
    PING_RESPONSE: "PONG",
    STORE_REQUEST: "STORE",
    STORE_RESPONSE: "STORE_RESPONSE",
    FIND_NODE_REQUEST: "FIND_NODE",
    FIND_NODE_RESPONSE: "FIND_NODE_RESPONSE",
    FIND_VALUE_REQUEST: "FIND_VALUE",
    FIND_VALUE_RESPONSE: "FIND_VALUE_RESPONSE",
}

F_FIREWALLED = 0x01  # sender cannot take unsolicited UDP: never put it in a routing table
F_SHUTDOWN = 0x02  # sender is going away: mark it dead, do not hand it out

# Value types (four ASCII bytes, big-endian on the wire).
VT_BINARY = b"\x00\x00\x00\x00"
VT_ALOC = b"ALOC"  # alternate location of a file, keyed by its SHA-1
VT_PROX = b"PROX"  # push proxies of a firewalled servent, keyed by its GUID
VT_NOPE = b"NOPE"  # node push entry
VT_TEXT = b"TEXT"
VT_TEST = b"TEST"
VT_ANY = b"****"  # requests only: never a stored value's type

# Store status codes (LimeWire's GDF posts, as gtk-gnutella's if/dht/value.h numbers them).
SC_OK = 1
SC_ERROR = 2
SC_FULL = 3
SC_LOADED = 4
SC_FULL_LOADED = 5
SC_TOO_LARGE = 6
SC_EXHAUSTED = 7
SC_BAD_CREATOR = 8
SC_BAD_VALUE = 9
SC_BAD_TYPE = 10
SC_QUOTA = 11
SC_DATA_MISMATCH = 12
SC_BAD_TOKEN = 13
SC_EXPIRED = 14

VENDOR = b"GNUT"  # our vendor code in contacts
VERSION = (0, 0)  # message version gtk-gnutella and LimeWire send

# --- limits ------------------------------------------------------------------------------
# A value's data above 512 bytes is refused (gtk-gnutella DHT_VALUE_MAX_LEN; ALOC is ~60 bytes).
VALUE_MAX_LEN = 512
# A whole datagram above 16 KiB is not a Mojito message we answer (the largest legitimate one,
# a FIND_VALUE_RESPONSE, is kept under ~1.4 KiB by senders to avoid IP fragmentation).
MAX_DATAGRAM = 16 * 1024
# Contacts in one FIND_NODE_RESPONSE: k = 20 is what peers send; twice that is accepted.
MAX_CONTACTS = 40
# Security tokens are 4 bytes (TEA / our HMAC); over 32 is not a token.
MAX_TOKEN_LEN = 32
# Secondary keys in one FIND_VALUE request or response: 255 fit the count byte, 64 is plenty
# for a key that holds at most store.MAX_VALUES_PER_KEY values.
MAX_SECONDARY_KEYS = 64
# A header extension (unused by every known servent) above 256 bytes is refused.
MAX_EXTENDED_HEADER = 256
# A status description above 256 bytes is refused (gtk-gnutella sends none).
MAX_STATUS_DESCRIPTION = 256


@dataclass(slots=True)
class Contact:
    """A DHT node: its KUID and where to reach it (host as dotted text, port)."""

    kuid: bytes
    host: str
    port: int
    vendor: bytes = VENDOR
    version: tuple[int, int] = VERSION
    kid: int = field(default=0, repr=False, compare=False)  # the KUID as an int (distance arithmetic)

    def __post_init__(self) -> None:
        self.kid = int.from_bytes(self.kuid, "big")

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)

    def same(self, other: Contact) -> bool:
        return self.kuid == other.kuid and self.host == other.host and self.port == other.port


@dataclass(slots=True)
class DhtValue:
    """A value stored under `key`: its creator, type (4 bytes), version and data."""

    creator: Contact
    key: bytes
    vtype: bytes
    data: bytes
    version: tuple[int, int] = (0, 0)


@dataclass(slots=True)
class Header:
    """The Kademlia part of a Mojito header."""

    muid: bytes
    op: int
    sender: Contact
    instance: int = 0
    flags: int = 0
    version: tuple[int, int] = VERSION


@dataclass(slots=True)
class Pong:
    requester: tuple[str, int]  # how the responder sees us
    size_estimate: int


@dataclass(slots=True)
class StoreRequest:
    token: bytes
    values: list[DhtValue]


@dataclass(slots=True)
class StoreStatus:
    key: bytes
    secondary: bytes  # the creator's KUID
    code: int
    description: str = ""


@dataclass(slots=True)
class FindNodeResponse:
    token: bytes
    contacts: list[Contact]


@dataclass(slots=True)
class FindValueRequest:
    key: bytes
    secondary: list[bytes]
    vtype: bytes


@dataclass(slots=True)
class FindValueResponse:
    load: float
    values: list[DhtValue]
    secondary: list[bytes]


# --- a bounded reader ----------------------------------------------------------------------
class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise RemoteProtocolError(f"DHT: truncated {what} ({len(self.buf) - self.pos} of {n} bytes)")
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def be16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def end(self, what: str) -> None:
        if self.pos != len(self.buf):
            raise RemoteProtocolError(f"DHT: {len(self.buf) - self.pos} trailing bytes after {what}")


def _read_addr(r: _Reader, what: str) -> tuple[str, int]:
    n = r.u8(what)
    if n == 4:
        host = socket.inet_ntop(socket.AF_INET, r.take(4, what))
    elif n == 16:
        host = str(ipaddress.IPv6Address(r.take(16, what)))
    else:
        raise RemoteProtocolError(f"DHT: {what} address length {n} (4 or 16 allowed)")
    return host, r.be16(what)


def _write_addr(out: bytearray, host: str, port: int) -> None:
    try:
        packed = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except (OSError, ValueError):
        raise LocalProtocolError(f"DHT: {host!r} is not an IP address") from None
    if not 0 <= port <= 0xFFFF:
        raise LocalProtocolError(f"DHT: port {port} out of range")
    out.append(len(packed))
    out += packed
    out += port.to_bytes(2, "big")


def _read_contact(r: _Reader) -> Contact:
    vendor = r.take(4, "contact vendor")
    major, minor = r.take(2, "contact version")
    kuid = r.take(KUID_LEN, "contact KUID")
    host, port = _read_addr(r, "contact")
    return Contact(kuid, host, port, vendor, (major, minor))


def _write_contact(out: bytearray, c: Contact) -> None:
    if len(c.kuid) != KUID_LEN or len(c.vendor) != 4:
        raise LocalProtocolError("DHT: contact needs a 20-byte KUID and a 4-byte vendor")
    out += c.vendor
    out += bytes(c.version)
    out += c.kuid
    _write_addr(out, c.host, c.port)


def _read_value(r: _Reader) -> DhtValue:
    creator = _read_contact(r)
    key = r.take(KUID_LEN, "value key")
    vtype = r.take(4, "value type")
    major, minor = r.take(2, "value version")
    length = r.be16("value length")
    if length > VALUE_MAX_LEN:
        raise RemoteProtocolError(f"DHT: value of {length} bytes (at most {VALUE_MAX_LEN})")
    return DhtValue(creator, key, vtype, r.take(length, "value data"), (major, minor))


def _write_value(out: bytearray, v: DhtValue) -> None:
    if len(v.key) != KUID_LEN or len(v.vtype) != 4 or len(v.data) > VALUE_MAX_LEN:
        raise LocalProtocolError("DHT: value needs a 20-byte key, a 4-byte type and at most 512 bytes")
    _write_contact(out, v.creator)
    out += v.key
    out += v.vtype
    out += bytes(v.version)
    out += len(v.data).to_bytes(2, "big")
    out += v.data


def _read_token(r: _Reader) -> bytes:
    n = r.u8("token length")
    if n > MAX_TOKEN_LEN:
        raise RemoteProtocolError(f"DHT: security token of {n} bytes (at most {MAX_TOKEN_LEN})")
    return r.take(n, "security token")


def _count(r: _Reader, limit: int, what: str) -> int:
    n = r.u8(what)
    if n > limit:
        raise RemoteProtocolError(f"DHT: {n} {what} (at most {limit})")
    return n


def _kuid(b: bytes, what: str) -> bytes:
    if len(b) != KUID_LEN:
        raise LocalProtocolError(f"DHT: {what} must be {KUID_LEN} bytes")
    return b


# --- header ---------------------------------------------------------------------------------
def encode(header: Header, body: bytes) -> bytes:
    """Return the whole datagram: the 61-byte header then `body`."""
    if len(header.muid) != 16:
        raise LocalProtocolError("DHT: MUID must be 16 bytes")
    out = bytearray(header.muid)
    out.append(MSG_DHT)
    out += bytes(header.version)
    out += struct.pack("<I", HEADER_LEN - GTA_HEADER_LEN + len(body))
    out.append(header.op)
    _write_contact(out, header.sender)
    if len(out) != HEADER_LEN - 4:
        raise LocalProtocolError("DHT: the header's contact must carry an IPv4 address")
    out.append(header.instance & 0xFF)
    out.append(header.flags & 0xFF)
    out += b"\x00\x00"  # no extended header
    out += body
    return bytes(out)


def decode(data: bytes) -> tuple[Header, bytes]:
    """Split a datagram into its header and body.

    Raises:
        RemoteProtocolError: not a Mojito message, a length that disagrees with the datagram,
            an unknown opcode, a non-IPv4 header contact or an oversized extension.
    """
    if len(data) > MAX_DATAGRAM:
        raise RemoteProtocolError(f"DHT: datagram of {len(data)} bytes (at most {MAX_DATAGRAM})")
    if len(data) < HEADER_LEN:
        raise RemoteProtocolError(f"DHT: datagram of {len(data)} bytes is shorter than the header")
    if data[16] != MSG_DHT:
        raise RemoteProtocolError(f"DHT: function 0x{data[16]:02x} is not 0x44")
    (length,) = struct.unpack_from("<I", data, 19)
    if length != len(data) - GTA_HEADER_LEN:
        raise RemoteProtocolError(f"DHT: header says {length} payload bytes, datagram has {len(data) - 23}")
    op = data[23]
    if op not in OP_NAMES:
        raise RemoteProtocolError(f"DHT: unknown opcode 0x{op:02x}")
    if data[CONTACT_OFFSET + 26] != 4:
        raise RemoteProtocolError("DHT: header contact address is not IPv4")
    r = _Reader(data, CONTACT_OFFSET)
    sender = _read_contact(r)
    instance, flags = data[57], data[58]
    ext = int.from_bytes(data[59:61], "big")
    if ext > MAX_EXTENDED_HEADER:
        raise RemoteProtocolError(f"DHT: extended header of {ext} bytes (at most {MAX_EXTENDED_HEADER})")
    if HEADER_LEN + ext > len(data):
        raise RemoteProtocolError("DHT: truncated extended header")
    hdr = Header(bytes(data[:16]), op, sender, instance, flags, (data[17], data[18]))
    return hdr, bytes(data[HEADER_LEN + ext :])


# --- bodies ---------------------------------------------------------------------------------
def encode_ping() -> bytes:
    return b""


def decode_ping(body: bytes) -> None:
    _Reader(body).end("PING")


def encode_pong(p: Pong) -> bytes:
    out = bytearray()
    _write_addr(out, *p.requester)
    size = max(0, min(p.size_estimate, (1 << 160) - 1))
    raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
    out.append(len(raw))
    out += raw
    return bytes(out)


def decode_pong(body: bytes) -> Pong:
    r = _Reader(body)
    requester = _read_addr(r, "requester")
    n = r.u8("size length")
    if n > KUID_LEN:
        raise RemoteProtocolError(f"DHT: size estimate of {n} bytes (at most {KUID_LEN})")
    size = int.from_bytes(r.take(n, "size estimate"), "big")
    r.end("PONG")
    return Pong(requester, size)


def encode_store(s: StoreRequest) -> bytes:
    if len(s.token) > MAX_TOKEN_LEN or not 1 <= len(s.values) <= 255:
        raise LocalProtocolError("DHT: STORE needs a short token and 1-255 values")
    out = bytearray((len(s.token),))
    out += s.token
    out.append(len(s.values))
    for v in s.values:
        _write_value(out, v)
    return bytes(out)


def decode_store(body: bytes) -> StoreRequest:
    r = _Reader(body)
    token = _read_token(r)
    n = r.u8("value count")
    if n == 0:
        raise RemoteProtocolError("DHT: STORE with no value")
    values = [_read_value(r) for _ in range(n)]
    r.end("STORE")
    return StoreRequest(token, values)


def encode_store_response(statuses: list[StoreStatus]) -> bytes:
    if len(statuses) > 255:
        raise LocalProtocolError("DHT: at most 255 store statuses")
    out = bytearray((len(statuses),))
    for s in statuses:
        desc = s.description.encode()[:MAX_STATUS_DESCRIPTION]
        out += _kuid(s.key, "status key") + _kuid(s.secondary, "status secondary key")
        out += s.code.to_bytes(2, "big") + len(desc).to_bytes(2, "big") + desc
    return bytes(out)


def decode_store_response(body: bytes) -> list[StoreStatus]:
    r = _Reader(body)
    out = []
    for _ in range(r.u8("status count")):
        key = r.take(KUID_LEN, "status key")
        secondary = r.take(KUID_LEN, "status secondary key")
        code = r.be16("status code")
        n = r.be16("status description length")
        if n > MAX_STATUS_DESCRIPTION:
            raise RemoteProtocolError(f"DHT: status description of {n} bytes")
        desc = r.take(n, "status description").decode("utf-8", "replace")
        out.append(StoreStatus(key, secondary, code, desc))
    r.end("STORE_RESPONSE")
    return out


def encode_find_node(target: bytes) -> bytes:
    return _kuid(target, "target")


def decode_find_node(body: bytes) -> bytes:
    r = _Reader(body)
    target = r.take(KUID_LEN, "target KUID")
    r.end("FIND_NODE")
    return target


def encode_find_node_response(resp: FindNodeResponse) -> bytes:
    if len(resp.token) > MAX_TOKEN_LEN or len(resp.contacts) > MAX_CONTACTS:
        raise LocalProtocolError("DHT: FIND_NODE_RESPONSE token or contact count too large")
    out = bytearray((len(resp.token),))
    out += resp.token
    out.append(len(resp.contacts))
    for c in resp.contacts:
        _write_contact(out, c)
    return bytes(out)


def decode_find_node_response(body: bytes) -> FindNodeResponse:
    r = _Reader(body)
    token = _read_token(r)
    contacts = [_read_contact(r) for _ in range(_count(r, MAX_CONTACTS, "contacts"))]
    r.end("FIND_NODE_RESPONSE")
    return FindNodeResponse(token, contacts)


def encode_find_value(req: FindValueRequest) -> bytes:
    if len(req.secondary) > MAX_SECONDARY_KEYS or len(req.vtype) != 4:
        raise LocalProtocolError("DHT: FIND_VALUE secondary keys or type invalid")
    out = bytearray(_kuid(req.key, "key"))
    out.append(len(req.secondary))
    for k in req.secondary:
        out += _kuid(k, "secondary key")
    out += req.vtype
    return bytes(out)


def decode_find_value(body: bytes) -> FindValueRequest:
    r = _Reader(body)
    key = r.take(KUID_LEN, "key")
    secondary = [
        r.take(KUID_LEN, "secondary key") for _ in range(_count(r, MAX_SECONDARY_KEYS, "secondary keys"))
    ]
    vtype = r.take(4, "value type")
    r.end("FIND_VALUE")
    return FindValueRequest(key, secondary, vtype)


def encode_find_value_response(resp: FindValueResponse) -> bytes:
    if len(resp.values) > 255 or len(resp.secondary) > MAX_SECONDARY_KEYS:
        raise LocalProtocolError("DHT: FIND_VALUE_RESPONSE holds too many values or keys")
    out = bytearray(struct.pack(">f", resp.load))
    out.append(len(resp.values))
    for v in resp.values:
        _write_value(out, v)
    out.append(len(resp.secondary))
    for k in resp.secondary:
        out += _kuid(k, "secondary key")
    return bytes(out)


def decode_find_value_response(body: bytes) -> FindValueResponse:
    r = _Reader(body)
    (load,) = struct.unpack(">f", r.take(4, "request load"))
    if load != load:  # NaN: nothing a peer measures
        load = 0.0
    values = [_read_value(r) for _ in range(r.u8("value count"))]
    secondary = [
        r.take(KUID_LEN, "secondary key") for _ in range(_count(r, MAX_SECONDARY_KEYS, "secondary keys"))
    ]
    r.end("FIND_VALUE_RESPONSE")
    return FindValueResponse(load, values, secondary)


DECODERS = {
    PING_REQUEST: decode_ping,
    PING_RESPONSE: decode_pong,
    STORE_REQUEST: decode_store,
    STORE_RESPONSE: decode_store_response,
    FIND_NODE_REQUEST: decode_find_node,
    FIND_NODE_RESPONSE: decode_find_node_response,
    FIND_VALUE_REQUEST: decode_find_value,
    FIND_VALUE_RESPONSE: decode_find_value_response,
}


ENCODERS = {
    PING_REQUEST: lambda _body: encode_ping(),
    PING_RESPONSE: encode_pong,
    STORE_REQUEST: encode_store,
    STORE_RESPONSE: encode_store_response,
    FIND_NODE_REQUEST: encode_find_node,
    FIND_NODE_RESPONSE: encode_find_node_response,
    FIND_VALUE_REQUEST: encode_find_value,
    FIND_VALUE_RESPONSE: encode_find_value_response,
}


def encode_message(header: Header, body: object) -> bytes:
    """The datagram for `header` and a decoded body of its opcode (inverse of decode_message)."""
    return encode(header, ENCODERS[header.op](body))


def decode_message(data: bytes) -> tuple[Header, object]:
    """Decode a whole datagram: the header and its decoded body (None for a PING)."""
    header, body = decode(data)
    return header, DECODERS[header.op](body)
