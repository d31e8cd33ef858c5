"""Gnutella message header helpers and payload codecs (Ping, Pong, Query, QueryHit, Push, Bye, QRP, vendor)."""

# Strategy: every class is a frozen value with `encode() -> payload bytes` and a
# `decode(payload)` classmethod; `decode(mtype, payload)` dispatches on the header type.
# Decoders read with explicit bounds checks (never struct.error / IndexError) and raise
# RemoteProtocolError naming what was wrong; encoders validate their fields and raise
# LocalProtocolError. Byte order: little-endian everywhere (0.4 spec) except IPv4
# addresses (big-endian) and the QUERY flags word, which modern servents read big-endian
# (gtk-gnutella `0xb900` is sent as b"\xb9\x00"; bit 15 is the top bit of the first byte).
# Extension areas (query tail, hit results) are parsed structurally: a GGEP block by its
# own lengths, anything else as text up to 0x1C (separator) or 0x00. Our encoders always
# emit urns as `urn:sha1:` text (plus whatever GGEP the caller gives), which is canonical.

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import ClassVar

from gnut.constants import (
    GUID_LEN,
    HEADER_LEN,
    MAX_PAYLOAD,
    MAX_QUERY_DISCONNECT,
    MSG_BYE,
    MSG_PING,
    MSG_PONG,
    MSG_PUSH,
    MSG_QRP,
    MSG_QUERY,
    MSG_QUERYHIT,
    MSG_VENDOR,
    MSG_VENDOR_STD,
    VENDOR_CODE,
)
from gnut.errors import LocalProtocolError, RemoteProtocolError
from gnut.protocol.ggep import (
    EXT_SEP,
    GGEP_MAGIC,
    GgepItem,
    decode_ggep,
    decode_int,
    encode_extensions,
    encode_ggep,
    encode_int,
    find,
    parse_extensions,
    sha1_urn,
    urn_digest,
)

# Re-exported: callers take the urn helpers and GGEP items from here with the messages.
__all__ = [
    "GgepItem",
    "sha1_urn",
    "urn_digest",
    "encode_header",
    "build",
    "Ping",
    "Pong",
    "Query",
    "HitResult",
    "QueryHitResult",
    "QueryHit",
    "Push",
    "Bye",
    "QrpReset",
    "QrpPatch",
    "decode_qrp",
    "Vendor",
    "Message",
    "decode",
]

# --- Limits ----------------------------------------------------------------------------
# The result count is one byte on the wire.
MAX_HIT_RESULTS = 255
# Queries over 1 KiB get the sender disconnected (gtk-gnutella): never decode nor build one.
MAX_QUERY_PAYLOAD = MAX_QUERY_DISCONNECT
# The fixed part of a QUERYHIT: result count, port, IPv4, speed.
QUERYHIT_FIXED_LEN = 11
# Each result has index + size (8 bytes) then two NULs at least.
HIT_RESULT_MIN_LEN = 10
# A BearShare-style trailer is a 4-byte vendor code then a one-byte open-data size.
QHD_MIN_LEN = 5
PONG_LEN = 14  # port, IPv4, files, kbytes
PUSH_LEN = 26  # servent GUID, index, IPv4, port
BYE_MIN_LEN = 2  # the code
VENDOR_HEADER_LEN = 8  # vendor code, selector, version
# 32-bit sizes cannot say "4 GiB or more": the GGEP "LF" item then carries the real size.
MAX_SIZE32 = 0xFFFFFFFF

# --- QUERY flags word (big-endian on the wire, see the strategy note) -------------------
QF_FLAGS_IN_USE = 0x8000  # without it the word is a legacy minimum speed (gtk-gnutella drops those)
QF_FIREWALLED = 0x4000
QF_XML = 0x2000
QF_LEAF_GUIDED = 0x1000
QF_GGEP_H = 0x0800
QF_OUT_OF_BAND = 0x0400
QF_FW_TO_FW = 0x0200
# Our own queries: flags in use, and we accept GGEP "H" binary hashes in hits. Not
# firewalled-claiming, not OOB (we have no UDP), not leaf-guided (we do not report status).
QF_DEFAULT = QF_FLAGS_IN_USE | QF_GGEP_H

# --- QUERYHIT trailer flags: bit positions shared by both open-data bytes ---------------
QHD_PUSH = 0x01
QHD_BAD = 0x02  # historic "bad" bit, reserved
QHD_BUSY = 0x04
QHD_UPLOADED = 0x08
QHD_SPEED = 0x10
QHD_GGEP = 0x20
# Byte 1 holds "valid" bits for busy/uploaded/speed/GGEP but the *value* of push;
# byte 2 holds the values for busy/uploaded/speed/GGEP but the *valid* bit of push (0.4 spec A.1.2).
_QHD_SWAPPED = QHD_PUSH
QHD_ALL_VALID = QHD_PUSH | QHD_BUSY | QHD_UPLOADED | QHD_SPEED | QHD_GGEP

# --- QRP ROUTE_TABLE_UPDATE --------------------------------------------------------------
QRP_RESET = 0x00
QRP_PATCH = 0x01
QRP_COMPRESSOR_NONE = 0
QRP_COMPRESSOR_ZLIB = 1
QRP_ENTRY_BITS = (1, 2, 4, 8)  # the entry widths real servents send (INTEROP.md)
# LimeWire-family inter-ultrapeer tables top out at 2**20 slots; twice that bounds our memory.
QRP_MAX_TABLE_SIZE = 1 << 21
QRP_RESET_LEN = 6
QRP_PATCH_HEADER_LEN = 5

_WORD_RE = re.compile(r"[^\W_]+")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_HEADER = struct.Struct("<16sBBBI")


# --- small helpers ------------------------------------------------------------------------
def _u16(buf: bytes, pos: int, what: str) -> int:
    if pos + 2 > len(buf):
        raise RemoteProtocolError(f"{what} truncated")
    return _U16.unpack_from(buf, pos)[0]


def _u32(buf: bytes, pos: int, what: str) -> int:
    if pos + 4 > len(buf):
        raise RemoteProtocolError(f"{what} truncated")
    return _U32.unpack_from(buf, pos)[0]


def _ip_bytes(ip: str) -> bytes:
    parts = ip.split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts):
        raise LocalProtocolError(f"not an IPv4 address: {ip!r}")
    return bytes(int(p) for p in parts)


def _ip_str(raw: bytes) -> str:
    return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or not low <= value <= high:
        raise LocalProtocolError(f"{name} must be in {low}..{high}, got {value!r}")


def _text(raw: bytes) -> str:
    # UTF-8 first; old servents send Latin-1, which always decodes.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _ggep_tail(buf: bytes, pos: int, what: str) -> tuple[GgepItem, ...]:
    """Decode GGEP blocks from `pos` to the end of `buf` (empty tail -> no items)."""
    items: list[GgepItem] = []
    while pos < len(buf):
        if buf[pos] != GGEP_MAGIC:
            raise RemoteProtocolError(f"{what}: unexpected byte 0x{buf[pos]:02x} where GGEP was expected")
        block, pos = decode_ggep(buf, pos)
        items += block
    return tuple(items)


def _ggep_bytes(items: tuple[GgepItem, ...], cobs: bool = False) -> bytes:
    return encode_ggep(items, cobs=cobs) if items else b""


# --- header --------------------------------------------------------------------------------
def encode_header(guid: bytes, mtype: int, ttl: int, hops: int, length: int) -> bytes:
    """Build the 23-byte descriptor header.

    Args:
        guid: 16-byte message GUID.
        mtype: payload descriptor (MSG_*).
        ttl: time to live, 0-255.
        hops: hops so far, 0-255.
        length: payload length, 0..MAX_PAYLOAD.

    Returns:
        The header bytes.

    Raises:
        LocalProtocolError: any argument out of range.
    """
    if not isinstance(guid, bytes | bytearray) or len(guid) != GUID_LEN:
        raise LocalProtocolError(f"GUID must be {GUID_LEN} bytes")
    _check_range("message type", mtype, 0, 255)
    _check_range("TTL", ttl, 0, 255)
    _check_range("hops", hops, 0, 255)
    _check_range("payload length", length, 0, MAX_PAYLOAD)
    return _HEADER.pack(bytes(guid), mtype, ttl, hops, length)


def build(guid: bytes, mtype: int, ttl: int, hops: int, payload: bytes) -> bytes:
    """Return a whole message: header then payload.

    Args:
        guid: 16-byte message GUID.
        mtype: payload descriptor (MSG_*).
        ttl: time to live.
        hops: hops so far.
        payload: encoded payload (at most MAX_PAYLOAD bytes).

    Returns:
        HEADER_LEN + len(payload) bytes.

    Raises:
        LocalProtocolError: any argument out of range.
    """
    return encode_header(guid, mtype, ttl, hops, len(payload)) + bytes(payload)


assert _HEADER.size == HEADER_LEN


# --- PING / PONG ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Ping:
    """PING (0x00): empty, or a GGEP block (e.g. SCP)."""

    ggep: tuple[GgepItem, ...] = ()
    MTYPE: ClassVar[int] = MSG_PING

    def encode(self) -> bytes:
        """Return the payload bytes."""
        return _ggep_bytes(self.ggep)

    @classmethod
    def decode(cls, payload: bytes) -> Ping:
        """Decode a PING payload; RemoteProtocolError for anything but GGEP blocks."""
        return cls(_ggep_tail(payload, 0, "PING"))


@dataclass(frozen=True, slots=True)
class Pong:
    """PONG (0x01): port LE16, IPv4, shared files LE32, shared kB LE32, optional GGEP."""

    port: int
    ip: str
    files: int
    kbytes: int
    ggep: tuple[GgepItem, ...] = ()
    MTYPE: ClassVar[int] = MSG_PONG

    def encode(self) -> bytes:
        """Return the payload bytes; LocalProtocolError for out-of-range fields."""
        _check_range("port", self.port, 0, 0xFFFF)
        _check_range("files", self.files, 0, MAX_SIZE32)
        _check_range("kbytes", self.kbytes, 0, MAX_SIZE32)
        return (
            _U16.pack(self.port)
            + _ip_bytes(self.ip)
            + _U32.pack(self.files)
            + _U32.pack(self.kbytes)
            + _ggep_bytes(self.ggep)
        )

    @classmethod
    def decode(cls, payload: bytes) -> Pong:
        """Decode a PONG payload; RemoteProtocolError when short or followed by non-GGEP bytes."""
        if len(payload) < PONG_LEN:
            raise RemoteProtocolError(f"PONG payload of {len(payload)} bytes, at least {PONG_LEN} needed")
        port, files, kbytes = _U16.unpack_from(payload, 0)[0], *struct.unpack_from("<II", payload, 6)
        return cls(port, _ip_str(payload[2:6]), files, kbytes, _ggep_tail(payload, PONG_LEN, "PONG"))


# --- QUERY --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Query:
    """QUERY (0x80): flags word, NUL-ended search text, extensions (urns, GGEP, other text)."""

    text: str
    flags: int = QF_DEFAULT
    urns: tuple[str, ...] = ()
    ggep: tuple[GgepItem, ...] = ()
    extra: tuple[bytes, ...] = ()
    MTYPE: ClassVar[int] = MSG_QUERY

    @property
    def words(self) -> list[str]:
        """The lower-cased alphanumeric words of the search text."""
        return _WORD_RE.findall(self.text.lower())

    @property
    def flags_in_use(self) -> bool:
        """True when the first word is a modern flags word rather than a legacy minimum speed."""
        return bool(self.flags & QF_FLAGS_IN_USE)

    @property
    def min_speed(self) -> int | None:
        """The legacy minimum speed (kbit/s, little-endian word) when the flags bit is clear, else None."""
        return None if self.flags_in_use else int.from_bytes(self.flags.to_bytes(2, "big"), "little")

    @property
    def firewalled(self) -> bool:
        """True when the querier says it is firewalled (needs PUSH to download)."""
        return self.flags_in_use and bool(self.flags & QF_FIREWALLED)

    def encode(self) -> bytes:
        """Return the payload bytes; LocalProtocolError for bad text, flags or size."""
        _check_range("query flags", self.flags, 0, 0xFFFF)
        raw = self.text.encode("utf-8")
        if 0 in raw or EXT_SEP in raw:
            raise LocalProtocolError("query text may not contain NUL or 0x1C")
        out = self.flags.to_bytes(2, "big") + raw + b"\0"
        out += encode_extensions(self.urns, self.extra, self.ggep, "QUERY")
        if len(out) > MAX_QUERY_PAYLOAD:
            raise LocalProtocolError(f"QUERY payload of {len(out)} bytes exceeds {MAX_QUERY_PAYLOAD}")
        return out

    @classmethod
    def decode(cls, payload: bytes) -> Query:
        """Decode a QUERY payload.

        Raises:
            RemoteProtocolError: too short or long, text not NUL-terminated, bad GGEP.
        """
        if len(payload) > MAX_QUERY_PAYLOAD:
            raise RemoteProtocolError(f"QUERY payload of {len(payload)} bytes exceeds {MAX_QUERY_PAYLOAD}")
        if len(payload) < 3:
            raise RemoteProtocolError("QUERY payload truncated (flags and NUL needed)")
        nul = payload.find(b"\0", 2)
        if nul < 0:
            raise RemoteProtocolError("QUERY search text is not NUL-terminated")
        if EXT_SEP in payload[2:nul]:
            raise RemoteProtocolError("QUERY search text contains the 0x1C extension separator")
        urns, extra, ggep, _ = parse_extensions(payload, nul + 1, False, "QUERY")
        flags = (payload[0] << 8) | payload[1]
        return cls(_text(bytes(payload[2:nul])), flags, urns, ggep, extra)


# --- QUERYHIT -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HitResult:
    """One QUERYHIT result: index, size, name, urns (text and GGEP "H"), GGEP, other extensions."""

    index: int
    size: int
    name: str
    urns: tuple[str, ...] = ()
    ggep: tuple[GgepItem, ...] = ()
    extra: tuple[bytes, ...] = ()

    @property
    def sha1(self) -> bytes | None:
        """The SHA1 digest of the first sha1/bitprint urn, if any."""
        for urn in self.urns:
            digest = urn_digest(urn)
            if digest is not None:
                return digest
        return None

    def encode(self) -> bytes:
        """Return the result bytes; LocalProtocolError for bad fields."""
        _check_range("file index", self.index, 0, MAX_SIZE32)
        _check_range("file size", self.size, 0, (1 << 64) - 1)
        ggep = self.ggep
        if self.size > MAX_SIZE32 and find(ggep, "LF") is None:
            ggep = (*ggep, GgepItem("LF", encode_int(self.size)))
        name = self.name.encode("utf-8")
        if 0 in name:
            raise LocalProtocolError("file name may not contain NUL")
        ext = encode_extensions(self.urns, self.extra, ggep, "QUERYHIT result")
        return _U32.pack(self.index) + _U32.pack(min(self.size, MAX_SIZE32)) + name + b"\0" + ext + b"\0"

    @classmethod
    def decode_from(cls, buf: bytes, pos: int) -> tuple[HitResult, int]:
        """Decode the result at `buf[pos]`.

        Returns:
            (result, index just after it).

        Raises:
            RemoteProtocolError: truncated result, missing NUL, bad GGEP or LF size.
        """
        if pos + HIT_RESULT_MIN_LEN > len(buf):
            raise RemoteProtocolError("QUERYHIT result truncated")
        index, size = struct.unpack_from("<II", buf, pos)
        nul = buf.find(b"\0", pos + 8)
        if nul < 0:
            raise RemoteProtocolError("QUERYHIT result name is not NUL-terminated")
        name = _text(bytes(buf[pos + 8 : nul]))
        urns, extra, ggep, end = parse_extensions(buf, nul + 1, True, "QUERYHIT result")
        large = find(ggep, "LF")
        if large is not None:
            size = decode_int(large)
        return cls(index, size, name, urns, ggep, extra), end


# The name some callers use for a result.
QueryHitResult = HitResult


@dataclass(frozen=True, slots=True)
class QueryHit:
    """QUERYHIT (0x81): results, optional BearShare-style QHD trailer, servent GUID last.

    `vendor` None means no trailer (old servents); then the flags are all False and
    ggep/private empty. `flag_mask` says which QHD_* flags the trailer marks valid.
    """

    port: int
    ip: str
    speed: int
    results: tuple[HitResult, ...]
    servent_guid: bytes
    vendor: bytes | None = VENDOR_CODE
    push: bool = False
    busy: bool = False
    uploaded: bool = False
    measured_speed: bool = False
    ggep: tuple[GgepItem, ...] = ()
    private: bytes = b""
    flag_mask: int = QHD_ALL_VALID
    open_extra: bytes = b""
    MTYPE: ClassVar[int] = MSG_QUERYHIT

    @property
    def firewalled(self) -> bool:
        """True when the responder asks for a PUSH to download from it."""
        return self.push

    def _trailer(self) -> bytes:
        if self.vendor is None:
            if self.push or self.busy or self.uploaded or self.measured_speed or self.ggep or self.private:
                raise LocalProtocolError("QUERYHIT flags, GGEP or private data need a vendor trailer")
            if self.open_extra:
                raise LocalProtocolError("QUERYHIT open data needs a vendor trailer")
            return b""
        if len(self.vendor) != 4:
            raise LocalProtocolError("QUERYHIT vendor code must be 4 bytes")
        _check_range("QHD flag mask", self.flag_mask, 0, QHD_ALL_VALID)
        values = (
            (QHD_BUSY if self.busy else 0)
            | (QHD_UPLOADED if self.uploaded else 0)
            | (QHD_SPEED if self.measured_speed else 0)
            | (QHD_GGEP if self.ggep else 0)
        ) & self.flag_mask
        flag1 = (self.flag_mask & ~_QHD_SWAPPED) | (QHD_PUSH if self.push else 0)
        flag2 = values | (self.flag_mask & _QHD_SWAPPED)
        open_data = bytes((flag1, flag2)) + bytes(self.open_extra)
        if len(open_data) > 0xFF:
            raise LocalProtocolError("QUERYHIT open data exceeds 255 bytes")
        return (
            bytes(self.vendor) + bytes((len(open_data),)) + open_data + _ggep_bytes(self.ggep) + self.private
        )

    def encode(self) -> bytes:
        """Return the payload bytes; LocalProtocolError for bad fields or size."""
        _check_range("port", self.port, 0, 0xFFFF)
        _check_range("speed", self.speed, 0, MAX_SIZE32)
        if len(self.results) > MAX_HIT_RESULTS:
            raise LocalProtocolError(f"at most {MAX_HIT_RESULTS} results per QUERYHIT")
        if len(self.servent_guid) != GUID_LEN:
            raise LocalProtocolError(f"servent GUID must be {GUID_LEN} bytes")
        out = bytearray((len(self.results),))
        out += _U16.pack(self.port) + _ip_bytes(self.ip) + _U32.pack(self.speed)
        for result in self.results:
            out += result.encode()
        out += self._trailer() + bytes(self.servent_guid)
        if len(out) > MAX_PAYLOAD:
            raise LocalProtocolError(f"QUERYHIT payload of {len(out)} bytes exceeds {MAX_PAYLOAD}")
        return bytes(out)

    @classmethod
    def decode(cls, payload: bytes) -> QueryHit:
        """Decode a QUERYHIT payload.

        Raises:
            RemoteProtocolError: truncation, fewer results than announced, a trailer
                shorter than its open-data size, bad result extensions.
        """
        if len(payload) > MAX_PAYLOAD:
            raise RemoteProtocolError(f"QUERYHIT payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
        if len(payload) < QUERYHIT_FIXED_LEN + GUID_LEN:
            raise RemoteProtocolError("QUERYHIT payload truncated")
        body = bytes(payload[:-GUID_LEN])
        guid = bytes(payload[-GUID_LEN:])
        count = body[0]
        port = _U16.unpack_from(body, 1)[0]
        speed = _U32.unpack_from(body, 7)[0]
        pos = QUERYHIT_FIXED_LEN
        results = []
        for _ in range(count):
            result, pos = HitResult.decode_from(body, pos)
            results.append(result)
        hit = cls(port, _ip_str(body[3:7]), speed, tuple(results), guid, vendor=None, flag_mask=0)
        rest = body[pos:]
        if not rest:
            return hit
        return _decode_trailer(hit, rest)


def _decode_trailer(hit: QueryHit, rest: bytes) -> QueryHit:
    if len(rest) < QHD_MIN_LEN:
        raise RemoteProtocolError(f"QUERYHIT trailer of {len(rest)} bytes is too short")
    vendor = rest[:4]
    open_len = rest[4]
    if QHD_MIN_LEN + open_len > len(rest):
        raise RemoteProtocolError(f"QUERYHIT open data size {open_len} runs past the trailer")
    open_data = rest[QHD_MIN_LEN : QHD_MIN_LEN + open_len]
    private = rest[QHD_MIN_LEN + open_len :]
    flag1 = open_data[0] if open_len >= 1 else 0
    flag2 = open_data[1] if open_len >= 2 else 0
    mask = (flag1 & QHD_ALL_VALID & ~_QHD_SWAPPED) | (flag2 & _QHD_SWAPPED) if open_len >= 2 else 0
    values = flag2 & mask
    ggep: tuple[GgepItem, ...] = ()
    if values & QHD_GGEP and private[:1] == bytes((GGEP_MAGIC,)):
        # Private data is vendor-defined: an unparsable block stays opaque private bytes.
        try:
            items, used = decode_ggep(private, 0)
        except RemoteProtocolError:
            items, used = [], 0
        ggep, private = tuple(items), private[used:]
    return QueryHit(
        hit.port,
        hit.ip,
        hit.speed,
        hit.results,
        hit.servent_guid,
        vendor=vendor,
        push=bool(flag1 & QHD_PUSH),
        busy=bool(values & QHD_BUSY),
        uploaded=bool(values & QHD_UPLOADED),
        measured_speed=bool(values & QHD_SPEED),
        ggep=ggep,
        private=private,
        flag_mask=mask,
        open_extra=open_data[2:],
    )


# --- PUSH / BYE -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Push:
    """PUSH (0x40): servent GUID, file index LE32, IPv4 and port LE16 to connect back to, GGEP."""

    servent_guid: bytes
    index: int
    ip: str
    port: int
    ggep: tuple[GgepItem, ...] = ()
    MTYPE: ClassVar[int] = MSG_PUSH

    def encode(self) -> bytes:
        """Return the payload bytes; LocalProtocolError for bad fields."""
        if len(self.servent_guid) != GUID_LEN:
            raise LocalProtocolError(f"servent GUID must be {GUID_LEN} bytes")
        _check_range("file index", self.index, 0, MAX_SIZE32)
        _check_range("port", self.port, 0, 0xFFFF)
        return (
            bytes(self.servent_guid)
            + _U32.pack(self.index)
            + _ip_bytes(self.ip)
            + _U16.pack(self.port)
            + _ggep_bytes(self.ggep)
        )

    @classmethod
    def decode(cls, payload: bytes) -> Push:
        """Decode a PUSH payload; RemoteProtocolError when short or followed by non-GGEP bytes."""
        if len(payload) < PUSH_LEN:
            raise RemoteProtocolError(f"PUSH payload of {len(payload)} bytes, at least {PUSH_LEN} needed")
        return cls(
            bytes(payload[:16]),
            _U32.unpack_from(payload, 16)[0],
            _ip_str(payload[20:24]),
            _U16.unpack_from(payload, 24)[0],
            _ggep_tail(payload, PUSH_LEN, "PUSH"),
        )


@dataclass(frozen=True, slots=True)
class Bye:
    """BYE (0x02): code LE16 then reason text, NUL-ended (the NUL and a final CRLF are optional)."""

    code: int
    reason: str = ""
    MTYPE: ClassVar[int] = MSG_BYE

    def encode(self) -> bytes:
        """Return the payload bytes; LocalProtocolError for a bad code or a NUL in the reason."""
        _check_range("BYE code", self.code, 0, 0xFFFF)
        raw = self.reason.encode("utf-8")
        if 0 in raw:
            raise LocalProtocolError("BYE reason may not contain NUL")
        return _U16.pack(self.code) + raw + b"\0"

    @classmethod
    def decode(cls, payload: bytes) -> Bye:
        """Decode a BYE payload; RemoteProtocolError when shorter than the code."""
        code = _u16(payload, 0, "BYE payload")
        raw = bytes(payload[BYE_MIN_LEN:]).split(b"\0", 1)[0]
        return cls(code, _text(raw).rstrip("\r\n"))


# --- QRP ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class QrpReset:
    """ROUTE_TABLE_UPDATE RESET (variant 0x00): table size LE32 (slots), infinity byte."""

    table_size: int
    infinity: int
    MTYPE: ClassVar[int] = MSG_QRP

    def encode(self) -> bytes:
        """Return the payload bytes; LocalProtocolError for a bad size or infinity."""
        _check_table_size(self.table_size, LocalProtocolError)
        _check_range("QRP infinity", self.infinity, 1, 255)
        return bytes((QRP_RESET,)) + _U32.pack(self.table_size) + bytes((self.infinity,))


@dataclass(frozen=True, slots=True)
class QrpPatch:
    """ROUTE_TABLE_UPDATE PATCH (variant 0x01): seq no, seq size, compressor, entry bits, data."""

    seq_no: int
    seq_size: int
    compressor: int
    entry_bits: int
    data: bytes
    MTYPE: ClassVar[int] = MSG_QRP

    def encode(self) -> bytes:
        """Return the payload bytes; LocalProtocolError for bad sequence, compressor or bits."""
        _check_patch(self.seq_no, self.seq_size, self.compressor, self.entry_bits, LocalProtocolError)
        return bytes((QRP_PATCH, self.seq_no, self.seq_size, self.compressor, self.entry_bits)) + bytes(
            self.data
        )


def _check_table_size(size: int, error: type[Exception]) -> None:
    if not isinstance(size, int) or size <= 0 or size & (size - 1) or size > QRP_MAX_TABLE_SIZE:
        raise error(f"QRP table size {size} is not a power of two in 1..{QRP_MAX_TABLE_SIZE}")


def _check_patch(
    seq_no: int, seq_size: int, compressor: int, entry_bits: int, error: type[Exception]
) -> None:
    if not (isinstance(seq_size, int) and isinstance(seq_no, int) and 1 <= seq_no <= seq_size <= 255):
        raise error(f"QRP patch sequence {seq_no}/{seq_size} is not 1 <= no <= size <= 255")
    if compressor not in (QRP_COMPRESSOR_NONE, QRP_COMPRESSOR_ZLIB):
        raise error(f"QRP patch compressor {compressor} is neither 0 (none) nor 1 (zlib)")
    if entry_bits not in QRP_ENTRY_BITS:
        raise error(f"QRP patch entry bits {entry_bits} not in {QRP_ENTRY_BITS}")


def decode_qrp(payload: bytes) -> QrpReset | QrpPatch:
    """Decode a ROUTE_TABLE_UPDATE payload.

    Args:
        payload: the message payload.

    Returns:
        QrpReset or QrpPatch.

    Raises:
        RemoteProtocolError: unknown variant, wrong length, table size not a power of two
            (or above QRP_MAX_TABLE_SIZE), infinity 0, bad sequence/compressor/entry bits.
    """
    if not payload:
        raise RemoteProtocolError("QRP payload is empty")
    variant = payload[0]
    if variant == QRP_RESET:
        if len(payload) != QRP_RESET_LEN:
            raise RemoteProtocolError(f"QRP RESET payload of {len(payload)} bytes, {QRP_RESET_LEN} expected")
        size = _U32.unpack_from(payload, 1)[0]
        _check_table_size(size, RemoteProtocolError)
        if payload[5] == 0:
            raise RemoteProtocolError("QRP RESET infinity is 0")
        return QrpReset(size, payload[5])
    if variant == QRP_PATCH:
        if len(payload) < QRP_PATCH_HEADER_LEN:
            raise RemoteProtocolError("QRP PATCH header truncated")
        seq_no, seq_size, compressor, bits = payload[1:5]
        _check_patch(seq_no, seq_size, compressor, bits, RemoteProtocolError)
        return QrpPatch(seq_no, seq_size, compressor, bits, bytes(payload[QRP_PATCH_HEADER_LEN:]))
    raise RemoteProtocolError(f"unknown QRP variant 0x{variant:02x}")


# --- vendor messages ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Vendor:
    """Vendor message (0x31/0x32), kept opaque: vendor code, selector LE16, version LE16, data."""

    payload: bytes

    @classmethod
    def make(cls, vendor: bytes, selector: int, version: int, data: bytes = b"") -> Vendor:
        """Build a vendor message; LocalProtocolError for a bad vendor code or numbers."""
        if len(vendor) != 4:
            raise LocalProtocolError("vendor code must be 4 bytes")
        _check_range("vendor selector", selector, 0, 0xFFFF)
        _check_range("vendor version", version, 0, 0xFFFF)
        return cls(bytes(vendor) + _U16.pack(selector) + _U16.pack(version) + bytes(data))

    @property
    def vendor(self) -> bytes | None:
        """The 4-byte vendor code, None when the payload is shorter than 8 bytes."""
        return self.payload[:4] if len(self.payload) >= VENDOR_HEADER_LEN else None

    @property
    def selector(self) -> int | None:
        """The message selector, None when the payload is shorter than 8 bytes."""
        return _U16.unpack_from(self.payload, 4)[0] if len(self.payload) >= VENDOR_HEADER_LEN else None

    @property
    def version(self) -> int | None:
        """The message version, None when the payload is shorter than 8 bytes."""
        return _U16.unpack_from(self.payload, 6)[0] if len(self.payload) >= VENDOR_HEADER_LEN else None

    @property
    def data(self) -> bytes:
        """What follows the 8-byte vendor header (empty when there is none)."""
        return self.payload[VENDOR_HEADER_LEN:]

    def encode(self) -> bytes:
        """Return the payload bytes unchanged."""
        return bytes(self.payload)

    @classmethod
    def decode(cls, payload: bytes) -> Vendor:
        """Wrap any payload (unknown vendor messages are ignored, never an error)."""
        return cls(bytes(payload))


Message = Ping | Pong | Query | QueryHit | Push | Bye | QrpReset | QrpPatch | Vendor

_DECODERS = {
    MSG_PING: Ping.decode,
    MSG_PONG: Pong.decode,
    MSG_BYE: Bye.decode,
    MSG_QRP: decode_qrp,
    MSG_VENDOR: Vendor.decode,
    MSG_VENDOR_STD: Vendor.decode,
    MSG_PUSH: Push.decode,
    MSG_QUERY: Query.decode,
    MSG_QUERYHIT: QueryHit.decode,
}


def decode(mtype: int, payload: bytes) -> Message:
    """Decode `payload` according to the header's message type.

    Args:
        mtype: payload descriptor from the header (MSG_*).
        payload: the payload bytes (without the 23-byte header).

    Returns:
        The decoded message object.

    Raises:
        RemoteProtocolError: unknown type or malformed payload.
    """
    decoder = _DECODERS.get(mtype)
    if decoder is None:
        raise RemoteProtocolError(f"unknown message type 0x{mtype:02x}")
    return decoder(payload)
