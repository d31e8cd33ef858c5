"""GGEP (Gnutella Generic Extension Protocol 0.5) blocks with COBS and deflate, and 0x1C extension areas."""

# Strategy: a block is the magic byte 0xC3 followed by items; each item is
#   flags (bit7 last, bit6 COBS, bit5 deflate, bit4 reserved = 0, bits 3-0 id length 1-15)
#   id (1-15 bytes, none 0x00)
#   data length: 1-3 chunks "MLxxxxxx", M = more chunks follow, L = last chunk,
#                the 6-bit payloads concatenated big-endian (0x40 = 0, 0x8140 = 64)
#   data (the raw wire bytes: deflate applied first, then COBS, so decode undoes COBS first).
# The decoder trusts nothing: every length is checked against the buffer, a deflated item
# may not inflate past GGEP_MAX_INFLATED, and a block may not hold more than GGEP_MAX_ITEMS.

from __future__ import annotations

import base64
import binascii
import zlib
from dataclasses import dataclass

from gnut.constants import MAX_PAYLOAD
from gnut.errors import LocalProtocolError, RemoteProtocolError

GGEP_MAGIC = 0xC3

GGEP_F_LAST = 0x80
GGEP_F_COBS = 0x40
GGEP_F_DEFLATE = 0x20
GGEP_F_RESERVED = 0x10
GGEP_F_IDLEN = 0x0F

_LEN_MORE = 0x80
_LEN_LAST = 0x40
_LEN_BITS = 0x3F

# The spec allows 1-15 id bytes (the id length lives in 4 flag bits, 0 is invalid).
GGEP_MAX_ID_LEN = 15
# Three 6-bit length chunks at most (spec), so data length <= 2**18 - 1.
GGEP_MAX_LEN_BYTES = 3
GGEP_MAX_DATA_LEN = (1 << (6 * GGEP_MAX_LEN_BYTES)) - 1
# Deflate bomb guard: no item can usefully inflate past a whole message (64 KiB payload cap).
GGEP_MAX_INFLATED = MAX_PAYLOAD
# Extension areas (GGEP spec "peaceful co-existence", HUGE): items separated by 0x1C.
EXT_SEP = 0x1C
SHA1_LEN = 20
URN_SHA1_PREFIX = "urn:sha1:"
_URN_BITPRINT_PREFIX = "urn:bitprint:"
_SHA1_B32_LEN = 32
_GGEP_H_SHA1 = 0x01  # GGEP "H" hash types: 1 = SHA1, 2 = bitprint (SHA1 then Tiger)
_GGEP_H_BITPRINT = 0x02
# Real blocks carry at most a dozen items (gtk-gnutella pongs: VC, DU, UP, LOC...); 64 bounds the work.
GGEP_MAX_ITEMS = 64


@dataclass(frozen=True, slots=True)
class GgepItem:
    """One GGEP extension: its id (1-15 ASCII-ish characters) and its decoded data."""

    id: str
    data: bytes = b""


def find(items: list[GgepItem] | tuple[GgepItem, ...], id: str) -> bytes | None:
    """Return the data of the first item called `id`.

    Args:
        items: decoded GGEP items.
        id: the extension id to look for (case-sensitive, as on the wire).

    Returns:
        The item's data, or None when no item has that id.
    """
    for item in items:
        if item.id == id:
            return item.data
    return None


def cobs_encode(data: bytes) -> bytes:
    """COBS-encode `data` so that the result holds no 0x00 byte.

    Args:
        data: any bytes.

    Returns:
        The encoding (gtk-gnutella's variant: no trailing code after a final full 0xFF block).
    """
    out = bytearray()
    code_pos = 0
    out.append(0)
    code = 1
    last_code = 0
    for byte in data:
        if byte == 0:
            out[code_pos] = last_code = code
            code_pos = len(out)
            out.append(0)
            code = 1
        else:
            out.append(byte)
            code += 1
            if code == 0xFF:
                out[code_pos] = last_code = code
                code_pos = len(out)
                out.append(0)
                code = 1
    if last_code != 0xFF or code != 1:
        out[code_pos] = code
    else:
        del out[code_pos]
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Undo COBS.

    Args:
        data: COBS-encoded bytes (at least one code byte).

    Returns:
        The decoded bytes.

    Raises:
        RemoteProtocolError: empty input, a 0x00 byte, or a code running past the end.
    """
    if not data:
        raise RemoteProtocolError("GGEP: empty COBS-encoded data")
    if 0 in data:
        raise RemoteProtocolError("GGEP: COBS-encoded data contains a NUL byte")
    out = bytearray()
    pos = 0
    end = len(data)
    while pos < end:
        code = data[pos]
        pos += 1
        if pos + code - 1 > end:
            raise RemoteProtocolError("GGEP: COBS code runs past the end of the data")
        out += data[pos : pos + code - 1]
        pos += code - 1
        if code != 0xFF and pos < end:
            out.append(0)
    return bytes(out)


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, GGEP_MAX_INFLATED + 1)
    except zlib.error as exc:
        raise RemoteProtocolError(f"GGEP: bad deflate data ({exc})") from None
    if len(out) > GGEP_MAX_INFLATED or inflater.unconsumed_tail:
        raise RemoteProtocolError(f"GGEP: deflated item inflates past {GGEP_MAX_INFLATED} bytes")
    if not inflater.eof:
        raise RemoteProtocolError("GGEP: truncated deflate stream")
    if inflater.unused_data:
        raise RemoteProtocolError("GGEP: bytes after the end of the deflate stream")
    return out


def decode_ggep(buf: bytes, offset: int = 0) -> tuple[list[GgepItem], int]:
    """Decode the GGEP block that starts at `buf[offset]`.

    Args:
        buf: the buffer holding the block (it may hold more after it).
        offset: index of the 0xC3 magic byte.

    Returns:
        (items, end): the items in wire order and the index just after the block.

    Raises:
        RemoteProtocolError: missing magic, truncation, bad flags, id or length, bad
            COBS or deflate data, or more than GGEP_MAX_ITEMS items.
    """
    end = len(buf)
    if offset >= end or buf[offset] != GGEP_MAGIC:
        raise RemoteProtocolError("GGEP: block does not start with the 0xC3 magic byte")
    pos = offset + 1
    items: list[GgepItem] = []
    while True:
        if len(items) >= GGEP_MAX_ITEMS:
            raise RemoteProtocolError(f"GGEP: more than {GGEP_MAX_ITEMS} items in one block")
        if pos >= end:
            raise RemoteProtocolError("GGEP: block truncated before its last item")
        flags = buf[pos]
        pos += 1
        if flags & GGEP_F_RESERVED:
            raise RemoteProtocolError(f"GGEP: reserved flag bit set (flags 0x{flags:02x})")
        id_len = flags & GGEP_F_IDLEN
        if id_len == 0:
            raise RemoteProtocolError("GGEP: item id length is 0")
        if pos + id_len > end:
            raise RemoteProtocolError("GGEP: item id truncated")
        raw_id = buf[pos : pos + id_len]
        pos += id_len
        if 0 in raw_id:
            raise RemoteProtocolError("GGEP: item id contains a NUL byte")
        length = 0
        for chunk_no in range(GGEP_MAX_LEN_BYTES + 1):
            if chunk_no == GGEP_MAX_LEN_BYTES:
                raise RemoteProtocolError(f"GGEP: data length longer than {GGEP_MAX_LEN_BYTES} bytes")
            if pos >= end:
                raise RemoteProtocolError("GGEP: data length truncated")
            chunk = buf[pos]
            pos += 1
            marks = chunk & (_LEN_MORE | _LEN_LAST)
            length = (length << 6) | (chunk & _LEN_BITS)
            if marks == _LEN_LAST:
                break
            if marks != _LEN_MORE:
                raise RemoteProtocolError(f"GGEP: bad data length byte 0x{chunk:02x}")
        if pos + length > end:
            raise RemoteProtocolError(f"GGEP: item data truncated ({length} bytes announced)")
        data = bytes(buf[pos : pos + length])
        pos += length
        if flags & GGEP_F_COBS:
            data = cobs_decode(data)
        if flags & GGEP_F_DEFLATE:
            data = _inflate(data)
        items.append(GgepItem(raw_id.decode("latin-1"), data))
        if flags & GGEP_F_LAST:
            return items, pos


def _encode_length(length: int) -> bytes:
    if length < 0x40:
        return bytes((_LEN_LAST | length,))
    if length < 0x1000:
        return bytes((_LEN_MORE | (length >> 6), _LEN_LAST | (length & _LEN_BITS)))
    return bytes(
        (
            _LEN_MORE | (length >> 12),
            _LEN_MORE | ((length >> 6) & _LEN_BITS),
            _LEN_LAST | (length & _LEN_BITS),
        )
    )


def encode_ggep(
    items: list[GgepItem] | tuple[GgepItem, ...], compress: bool = False, cobs: bool = False
) -> bytes:
    """Encode `items` as one GGEP block.

    Args:
        items: at least one item; ids of 1-15 Latin-1 characters without NUL.
        compress: deflate an item's data when that makes it shorter.
        cobs: COBS-encode an item whose (possibly deflated) data holds a 0x00 byte, as
            needed where the block sits in a NUL-terminated field (query hit results).

    Returns:
        The block, starting with the 0xC3 magic byte.

    Raises:
        LocalProtocolError: no items, too many items, a bad id, or data too long.
    """
    if not items:
        raise LocalProtocolError("GGEP: a block needs at least one item")
    if len(items) > GGEP_MAX_ITEMS:
        raise LocalProtocolError(f"GGEP: more than {GGEP_MAX_ITEMS} items in one block")
    out = bytearray((GGEP_MAGIC,))
    last = len(items) - 1
    for n, item in enumerate(items):
        try:
            raw_id = item.id.encode("latin-1")
        except UnicodeEncodeError:
            raise LocalProtocolError(f"GGEP: id {item.id!r} is not Latin-1") from None
        if not 1 <= len(raw_id) <= GGEP_MAX_ID_LEN or 0 in raw_id:
            raise LocalProtocolError(f"GGEP: id {item.id!r} must be 1-15 bytes without NUL")
        flags = len(raw_id)
        data = bytes(item.data)
        if compress and data:
            packed = zlib.compress(data, 9)
            if len(packed) < len(data):
                data = packed
                flags |= GGEP_F_DEFLATE
        if cobs and 0 in data:
            data = cobs_encode(data)
            flags |= GGEP_F_COBS
        if len(data) > GGEP_MAX_DATA_LEN:
            raise LocalProtocolError(f"GGEP: item {item.id!r} data exceeds {GGEP_MAX_DATA_LEN} bytes")
        if n == last:
            flags |= GGEP_F_LAST
        out.append(flags)
        out += raw_id
        out += _encode_length(len(data))
        out += data
    return bytes(out)


def encode_int(value: int) -> bytes:
    """Encode a non-negative integer as GGEP does (little-endian, fewest bytes, 0 -> 1 byte).

    Args:
        value: the integer (below 2**64).

    Returns:
        Its little-endian bytes without trailing zero bytes.

    Raises:
        LocalProtocolError: negative or 2**64 and above.
    """
    if not 0 <= value < 1 << 64:
        raise LocalProtocolError(f"GGEP: integer {value} out of range")
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "little")


def decode_int(data: bytes, max_len: int = 8) -> int:
    """Decode a GGEP little-endian integer of 1 to `max_len` bytes.

    Args:
        data: the item data.
        max_len: the most bytes the integer may take.

    Returns:
        The integer.

    Raises:
        RemoteProtocolError: empty or longer than `max_len`.
    """
    if not 1 <= len(data) <= max_len:
        raise RemoteProtocolError(f"GGEP: integer of {len(data)} bytes (1-{max_len} allowed)")
    return int.from_bytes(data, "little")


# --- extension areas: GGEP blocks beside HUGE urn text and other text, 0x1C between -------
def sha1_urn(digest: bytes) -> str:
    """Return the `urn:sha1:` text of a SHA1 digest.

    Args:
        digest: 20 bytes.

    Returns:
        "urn:sha1:" followed by 32 upper-case base32 characters.

    Raises:
        LocalProtocolError: the digest is not 20 bytes.
    """
    if len(digest) != SHA1_LEN:
        raise LocalProtocolError(f"a SHA1 digest is {SHA1_LEN} bytes, got {len(digest)}")
    return URN_SHA1_PREFIX + base64.b32encode(digest).decode("ascii")


def urn_digest(urn: str) -> bytes | None:
    """Return the SHA1 digest named by a `urn:sha1:` (or `urn:bitprint:`) urn.

    Args:
        urn: urn text, any case.

    Returns:
        The 20-byte digest, or None when `urn` is not a well-formed SHA1/bitprint urn.
    """
    low = urn.lower()
    if low.startswith(URN_SHA1_PREFIX):
        b32 = urn[len(URN_SHA1_PREFIX) :]
    elif low.startswith(_URN_BITPRINT_PREFIX):
        b32 = urn[len(_URN_BITPRINT_PREFIX) :].split(".", 1)[0]
    else:
        return None
    if len(b32) != _SHA1_B32_LEN:
        return None
    try:
        return base64.b32decode(b32.upper())
    except (binascii.Error, ValueError):
        return None


def ggep_h_urn(ggep: tuple[GgepItem, ...]) -> str | None:
    """The urn:sha1 of a GGEP "H" item (type 1 SHA1 or 2 bitprint), None when absent or unknown."""
    data = find(ggep, "H")
    if data and data[0] in (_GGEP_H_SHA1, _GGEP_H_BITPRINT) and len(data) >= 1 + SHA1_LEN:
        return sha1_urn(data[1 : 1 + SHA1_LEN])
    return None


def parse_extensions(
    buf: bytes, pos: int, stop_at_nul: bool, what: str
) -> tuple[tuple[str, ...], tuple[bytes, ...], tuple[GgepItem, ...], int]:
    """Parse a 0x1C-separated extension area (urn text, GGEP blocks, other text).

    Returns (urns, extra, ggep, pos): with `stop_at_nul` the area ends at a NUL, which is
    consumed (and must be present); otherwise it runs to the end of `buf` and NULs are
    tolerated as separators (legacy "urn:\\0" queries).
    """
    urns: list[str] = []
    extra: list[bytes] = []
    ggep: list[GgepItem] = []
    end = len(buf)
    while True:
        if pos >= end:
            if stop_at_nul:
                raise RemoteProtocolError(f"{what}: extension area not NUL-terminated")
            break
        byte = buf[pos]
        if byte == 0 and stop_at_nul:
            pos += 1
            break
        if byte in (0, EXT_SEP):
            pos += 1
        elif byte == GGEP_MAGIC:
            items, pos = decode_ggep(buf, pos)
            ggep += items
            if len(ggep) > GGEP_MAX_ITEMS:  # several blocks together: same cap as one block (encodable)
                raise RemoteProtocolError(f"{what}: more than {GGEP_MAX_ITEMS} GGEP items in the extension area")
        else:
            stop = pos
            while stop < end and buf[stop] not in (0, EXT_SEP):
                stop += 1
            raw = bytes(buf[pos:stop])
            if raw[:4].lower() == b"urn:":
                urns.append(raw.decode("latin-1"))
            else:
                extra.append(raw)
            pos = stop
    items_t = tuple(ggep)
    h_urn = ggep_h_urn(items_t)
    if h_urn is not None and h_urn not in urns:
        urns.append(h_urn)
    return tuple(urns), tuple(extra), items_t, pos


def encode_extensions(
    urns: tuple[str, ...], extra: tuple[bytes, ...], ggep: tuple[GgepItem, ...], what: str
) -> bytes:
    """Encode an extension area: urn texts, other texts, then one GGEP block (COBS, no NUL).

    Raises:
        LocalProtocolError: a urn or text that holds NUL/0x1C or could be mistaken for another kind.
    """
    parts: list[bytes] = []
    for urn in urns:
        try:
            raw = urn.encode("latin-1")
        except UnicodeEncodeError:
            raise LocalProtocolError(f"{what}: urn {urn!r} is not Latin-1") from None
        if not raw.lower().startswith(b"urn:") or 0 in raw or EXT_SEP in raw:
            raise LocalProtocolError(f"{what}: bad urn {urn!r}")
        parts.append(raw)
    for raw in extra:
        if not raw or 0 in raw or EXT_SEP in raw or raw[0] == GGEP_MAGIC or raw[:4].lower() == b"urn:":
            raise LocalProtocolError(f"{what}: bad extension {raw!r}")
        parts.append(bytes(raw))
    if ggep:
        parts.append(encode_ggep(ggep, cobs=True))
    return bytes((EXT_SEP,)).join(parts)
