"""Gnutella DHT values: ALOC ("this servent shares the file with this SHA-1") and PROX (push proxies).

The value (type ALOC, version 0.1) is one GGEP block with client-id (the servent GUID, 16
bytes), firewalled (1 byte), port (2 bytes, big-endian), length (file size, GGEP integer) and
optionally tls (no data), avail (bytes available of a partial file) and ttroot (TTH root).
The key is the SHA-1 itself (gtk-gnutella's gdht_kuid_from_sha1).  The host to download from
is the value's creator contact address.

PROX (version 0.0) is keyed by SHA-1(servent GUID) and lists a firewalled servent's push
proxies: client-id, features, fwt-version, port (big-endian), proxies (each: address length,
address, big-endian port), tls (bit field).
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from gnut.dht import wire
from gnut.errors import RemoteProtocolError
from gnut.protocol import ggep

ALOC_VERSION = (0, 1)


@dataclass(slots=True)
class Aloc:
    guid: bytes
    port: int
    length: int
    firewalled: bool = False
    tls: bool = False


def encode_aloc(a: Aloc) -> bytes:
    items = [
        ggep.GgepItem("client-id", a.guid),
        ggep.GgepItem("firewalled", b"\x01" if a.firewalled else b"\x00"),
        ggep.GgepItem("length", ggep.encode_int(a.length)),
        ggep.GgepItem("port", a.port.to_bytes(2, "big")),
    ]
    if a.tls:
        items.append(ggep.GgepItem("tls", b""))
    return ggep.encode_ggep(items)


def decode_aloc(data: bytes) -> Aloc:
    """Parse an ALOC value's data; raises RemoteProtocolError when a mandatory key is missing or bad."""
    items, end = ggep.decode_ggep(data, 0)
    if end != len(data):
        raise RemoteProtocolError("ALOC: bytes after the GGEP block")
    guid = ggep.find(items, "client-id")
    port = ggep.find(items, "port")
    length = ggep.find(items, "length")
    fw = ggep.find(items, "firewalled")
    if guid is None or len(guid) != 16:
        raise RemoteProtocolError("ALOC: client-id missing or not 16 bytes")
    if port is None or len(port) != 2:
        raise RemoteProtocolError("ALOC: port missing or not 2 bytes")
    if length is None:
        raise RemoteProtocolError("ALOC: length missing")
    return Aloc(
        guid,
        int.from_bytes(port, "big"),
        ggep.decode_int(length),
        bool(fw and fw[0]),
        ggep.find(items, "tls") is not None,
    )


@dataclass(slots=True)
class Prox:
    guid: bytes
    port: int
    proxies: list[tuple[str, int]]


# Push proxies one PROX value may list (gtk-gnutella PDHT_MAX_PROXIES is in this range).
MAX_PROXIES = 16


def guid_key(guid: bytes) -> bytes:
    """The DHT key of a servent's PROX value: SHA-1 of its GUID (gtk-gnutella gdht_kuid_from_guid)."""
    return hashlib.sha1(guid).digest()


def decode_prox(data: bytes) -> Prox:
    """Parse a PROX value's data; RemoteProtocolError when client-id, port or proxies are bad."""
    items, end = ggep.decode_ggep(data, 0)
    if end != len(data):
        raise RemoteProtocolError("PROX: bytes after the GGEP block")
    guid = ggep.find(items, "client-id")
    port = ggep.find(items, "port")
    raw = ggep.find(items, "proxies") or b""
    if guid is None or len(guid) != 16 or port is None or len(port) != 2:
        raise RemoteProtocolError("PROX: client-id or port missing or malformed")
    proxies, pos = [], 0
    while pos < len(raw):
        n = raw[pos]
        if n not in (4, 16) or pos + 1 + n + 2 > len(raw) or len(proxies) >= MAX_PROXIES:
            raise RemoteProtocolError("PROX: malformed proxies list")
        host = str(ipaddress.ip_address(raw[pos + 1 : pos + 1 + n]))
        proxies.append((host, int.from_bytes(raw[pos + 1 + n : pos + 3 + n], "big")))
        pos += 3 + n
    return Prox(guid, int.from_bytes(port, "big"), proxies)


def sources(values: list[wire.DhtValue]) -> list[tuple[str, int]]:
    """Download addresses from ALOC values: the creator's IP and the ALOC port (reachable ones only)."""
    out: list[tuple[str, int]] = []
    for v in values:
        if v.vtype != wire.VT_ALOC:
            continue
        try:
            a = decode_aloc(v.data)
        except RemoteProtocolError:
            continue
        if a.firewalled or a.port == 0:
            continue
        addr = (v.creator.host, a.port)
        if addr not in out:
            out.append(addr)
    return out
