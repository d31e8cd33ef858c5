"""Names users and peers hand us: magnet links, urn:sha1 forms and file names safe to create."""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from urllib.parse import parse_qsl

from gnut.errors import LocalProtocolError

MAX_NAME_BYTES = 255  # file name limit of ext4/xfs/btrfs
MAX_MAGNET_LEN = 8192  # a magnet is a pasted URI; longer input is not one
SHA1_B32_LEN = 32  # base32 text of a 20-byte SHA-1

_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"COM{i}" for i in range(1, 10)] + [f"LPT{i}" for i in range(1, 10)]
)
_UNSAFE_CHARS = frozenset('/\\<>:"|?*')
_DROPPED_CATEGORIES = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))  # controls, bidi overrides, surrogates
DIGITS = re.compile(r"\d{1,20}", re.ASCII)


def normalize_urn(urn: str) -> str:
    """Return `urn` as ``urn:sha1:<BASE32>`` (also accepts 40 hex digits after the prefix).

    Raises:
        LocalProtocolError: not a urn:sha1 with a valid 20-byte digest.
    """
    if urn[:9].lower() != "urn:sha1:":
        raise LocalProtocolError(f"not a urn:sha1: {urn[:60]!r}")
    body = urn[9:].strip()
    try:
        if len(body) == 40:
            digest = bytes.fromhex(body)
        elif len(body) == SHA1_B32_LEN:
            digest = base64.b32decode(body.upper())
        else:
            raise ValueError("wrong length")
    except (ValueError, binascii.Error) as exc:
        raise LocalProtocolError(f"bad sha1 in urn {urn[:60]!r}: {exc}") from exc
    return "urn:sha1:" + base64.b32encode(digest).decode("ascii")


def parse_magnet(uri: str) -> tuple[str | None, str | None, int | None]:
    """Parse ``magnet:?xt=urn:sha1:...&dn=...&xl=...`` or a bare ``urn:sha1:...``.

    Args:
        uri: the text the user gave.

    Returns:
        (urn, name, size), each None when the magnet does not carry it. ``urn:bitprint``
        topics yield their SHA-1 half; other hash kinds are ignored.

    Raises:
        LocalProtocolError: not a magnet, a malformed sha1, a non-numeric xl, or neither
            a usable xt nor a dn.
    """
    text = uri.strip()
    if len(text) > MAX_MAGNET_LEN:
        raise LocalProtocolError(f"magnet longer than {MAX_MAGNET_LEN} characters")
    if text[:9].lower() == "urn:sha1:":
        return normalize_urn(text), None, None
    if text[:8].lower() != "magnet:?":
        raise LocalProtocolError(f"not a magnet URI: {text[:60]!r}")
    urn: str | None = None
    name: str | None = None
    size: int | None = None
    for key, value in parse_qsl(text[8:], keep_blank_values=True):
        base = key.split(".", 1)[0].lower()  # numbered forms: xt.1, dn.1
        if base == "xt" and urn is None:
            low = value.lower()
            if low.startswith("urn:sha1:"):
                urn = normalize_urn(value)
            elif low.startswith("urn:bitprint:"):
                urn = normalize_urn("urn:sha1:" + value[13:].split(".", 1)[0])
        elif base == "dn" and name is None:
            name = value or None
        elif base == "xl" and size is None:
            if not DIGITS.fullmatch(value):
                raise LocalProtocolError(f"magnet xl is not a byte count: {value[:30]!r}")
            size = int(value)
    if urn is None and name is None:
        raise LocalProtocolError("magnet carries neither a urn:sha1 nor a dn")
    return urn, name, size


def safe_name(name: str, fallback: str = "download") -> str:
    """Turn a peer-supplied file name into one safe to create inside the download folder.

    Path separators and characters Windows forbids become "_", control/format characters
    are removed, leading dots and surrounding spaces go, Windows device names get a "_"
    prefix, and the result is cut to MAX_NAME_BYTES of UTF-8 keeping the extension.

    Args:
        name: the name from the hit or magnet.
        fallback: used when nothing is left.

    Returns:
        A non-empty name with no directory part.
    """
    chars = []
    for ch in unicodedata.normalize("NFC", name):
        if ch in _UNSAFE_CHARS:
            chars.append("_")
        elif unicodedata.category(ch) not in _DROPPED_CATEGORIES:
            chars.append(ch)
    clean = "".join(chars).strip().lstrip(".").strip().rstrip(". ")
    if not clean:
        clean = fallback
    if clean.split(".", 1)[0].strip().upper() in _WINDOWS_RESERVED:
        clean = "_" + clean
    if len(clean.encode("utf-8")) > MAX_NAME_BYTES:
        stem, dot, ext = clean.rpartition(".")
        if not dot or not stem or len(ext) > 16:
            stem, ext = clean, ""
        suffix = "." + ext if ext else ""
        room = MAX_NAME_BYTES - len(suffix.encode("utf-8"))
        stem = stem.encode("utf-8")[:room].decode("utf-8", "ignore")
        clean = stem + suffix
    return clean
