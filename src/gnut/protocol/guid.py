"""New message and servent GUIDs with the modern marking (byte 8 = 0xFF, byte 15 = 0x00)."""

from __future__ import annotations

import os

from gnut.constants import GUID_LEN


def new_guid() -> bytes:
    """Return 16 random bytes marked as a modern (0.6) servent's GUID.

    Returns:
        A GUID whose byte 8 is 0xFF and byte 15 is 0x00, as LimeWire-family and
        gtk-gnutella servents mark theirs.
    """
    raw = bytearray(os.urandom(GUID_LEN))
    raw[8] = 0xFF
    raw[15] = 0x00
    return bytes(raw)


def is_modern(guid: bytes) -> bool:
    """True when `guid` carries the modern marking."""
    return len(guid) == GUID_LEN and guid[8] == 0xFF and guid[15] == 0x00
