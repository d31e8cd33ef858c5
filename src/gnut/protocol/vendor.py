"""UDP-side vendor messages and GGEP payloads, sans-IO: OOB (LIME/11, LIME/12), UHC (SCP, IPP, PHC), GUESS keys.

Facts from gtk-gnutella's doc/gnutella (out-of-band, out-of-band-v3, query_keys, GUESS) and
what its src/core/vmsg.c sends:
- LIME/12 "OOB Reply Indication" (v2, v3): payload [hits (1..255, 255 = 255 or more),
  flags (bit 0: can receive unsolicited UDP)]; v3 means the responder supports the security
  token. Extra bytes after the two are allowed (v3 says do not discard them).
- LIME/11 "OOB Reply Ack": [wanted hits], v3 adds a GGEP block with "SO" = security token
  (at least one byte); the query hits must then carry the same "SO" in their trailer GGEP.
- An OOB query has QUERY flag 0x0400 and its GUID carries the querier's IPv4 in bytes 0-3
  and its UDP port little-endian in bytes 13-14; an empty GGEP "SO" in the query says v3.
- UHC: a PING with GGEP "SCP" (optional flags byte: bit 0 wants ultrapeers) asks for
  addresses; the PONG carries "IPP" (6 bytes per host: IPv4, port LE) and may carry "PHC"
  (more UDP host caches, "host:port" lines) and "UDPHC" (the responder is a UHC).
- GUESS query keys: a TTL-1 UDP PING with empty "QK" asks for a key; the PONG carries "QK"
  (4..16 bytes), a UDP QUERY must carry it back. Keys are a keyed hash of (ip, port).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from dataclasses import dataclass

from gnut.errors import RemoteProtocolError
from gnut.protocol import messages
from gnut.protocol.ggep import GgepItem, decode_ggep, encode_ggep, find

LIME = b"LIME"
GTKG = b"GTKG"
# LIME selectors (vendor_msg; gtk-gnutella vmsg.c).
OOB_REPLY_ACK = 11
OOB_REPLY_IND = 12
OOB_PROXY_VETO = 13
# Versions we send: v3 carries the security token; v2 is understood too.
OOB_VERSION = 3
OOB_VERSION_MIN = 2
# LIME/12 flags byte: bit 0 = the responder can receive unsolicited UDP.
OOB_IND_CAN_RECEIVE = 0x01
# "255 means 255 or more" (out-of-band section C.2).
OOB_MAX_COUNT = 255
# A security token longer than this is refused (v3: "kept to a minimum"; gtk sends 4-8 bytes).
SO_MAX_LEN = 16
# SCP flags byte (gtk-gnutella pcache.h): bit 0 wants ultrapeers, bit 1 TLS, bit 2 IPv6.
SCP_F_ULTRA = 0x01
# IPP entry: IPv4 (4 bytes, network order) + port (2 bytes, little-endian).
IPP_ENTRY = 6
# At most this many IPP entries in one pong: 10 hosts (gtk-gnutella's UHC reply size) keeps the
# reply near 100 bytes, so a forged small ping cannot make us send a large datagram.
IPP_MAX_HOSTS = 10
# PHC lines we read from one pong, and the longest line: bounds what a cache can make us store.
PHC_MAX_LINES = 16
PHC_MAX_LINE = 256
# Query-key length we hand out (query_keys 2.x.1: 4 <= n <= 16).
QK_LEN = 8
QK_MIN, QK_MAX = 4, 16
# GUESS version advertised in pongs (GGEP "GUE", gtk-gnutella sends 0.2 as 0x02).
GUESS_VERSION = 0x02


# --- LIME/11, LIME/12 --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OobReplyInd:
    """LIME/12: `hits` results waiting for the query's GUID."""

    hits: int
    can_receive: bool = True
    version: int = OOB_VERSION

    def encode(self) -> bytes:
        flags = OOB_IND_CAN_RECEIVE if self.can_receive else 0
        data = bytes((max(1, min(self.hits, OOB_MAX_COUNT)), flags))
        return messages.Vendor.make(LIME, OOB_REPLY_IND, self.version, data).encode()


@dataclass(frozen=True, slots=True)
class OobReplyAck:
    """LIME/11: deliver up to `wanted` hits; v3 echoes `token` in every hit."""

    wanted: int
    token: bytes = b""
    version: int = OOB_VERSION

    def encode(self) -> bytes:
        data = bytes((max(1, min(self.wanted, OOB_MAX_COUNT)),))
        if self.token:
            data += encode_ggep([GgepItem("SO", self.token)])
        return messages.Vendor.make(LIME, OOB_REPLY_ACK, self.version, data).encode()


def decode_vendor(payload: bytes) -> OobReplyInd | OobReplyAck | messages.Vendor:
    """Decode a vendor payload into an OOB message, or return it opaque (not ours).

    Raises:
        RemoteProtocolError: a LIME/11 or LIME/12 with a bad body or version.
    """
    v = messages.Vendor.decode(payload)
    if v.vendor != LIME or v.selector not in (OOB_REPLY_ACK, OOB_REPLY_IND):
        return v
    if not (OOB_VERSION_MIN <= (v.version or 0) <= OOB_VERSION):
        raise RemoteProtocolError(f"LIME/{v.selector} version {v.version} is not 2 or 3")
    data = v.data
    if v.selector == OOB_REPLY_IND:
        if len(data) < 1 or data[0] == 0:
            raise RemoteProtocolError("LIME/12 without a hit count")
        return OobReplyInd(data[0], bool(len(data) > 1 and data[1] & OOB_IND_CAN_RECEIVE), v.version)
    if len(data) < 1 or data[0] == 0:
        raise RemoteProtocolError("LIME/11 without a wanted count")
    token = b""
    if len(data) > 1:
        items, _ = decode_ggep(data, 1)
        token = find(items, "SO") or b""
        if len(token) > SO_MAX_LEN:
            raise RemoteProtocolError(f"LIME/11 security token of {len(token)} bytes")
    return OobReplyAck(data[0], token, v.version)


# --- address scopes ---------------------------------------------------------------------------
def address_scope(ip: str) -> str:
    """"global", "private", "loopback", "link_local", or "bad" (multicast, reserved, unspecified, junk)."""
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return "bad"
    if a.is_multicast or a.is_unspecified or a.is_reserved or (a.version == 4 and ip == "255.255.255.255"):
        return "bad"
    if a.is_loopback:
        return "loopback"
    if a.is_link_local:
        return "link_local"
    if a.is_private:
        return "private"
    return "global"


def may_reach(target_ip: str, told_by_ip: str) -> bool:
    """May an address learned from `told_by_ip` (a UHC, a GWC, a querier) be contacted?

    Global addresses always; loopback, private and link-local ones only when the peer that
    named them is in that same scope (a test network on 127.0.0.1, a LAN): a host on the
    Internet must not make us send to our own loopback or LAN services.
    """
    scope = address_scope(target_ip)
    if scope == "bad":
        return False
    return scope == "global" or scope == address_scope(told_by_ip)


# --- OOB query GUIDs --------------------------------------------------------------------------
def oob_guid(random16: bytes, ip: str, port: int) -> bytes:
    """A query GUID that carries our IPv4 (bytes 0-3) and UDP port (bytes 13-14, LE)."""
    g = bytearray(random16)
    g[0:4] = ipaddress.IPv4Address(ip).packed
    g[13:15] = struct.pack("<H", port)
    return bytes(g)


def oob_return_address(guid: bytes) -> tuple[str, int]:
    """The (ip, port) an OOB query's GUID names."""
    return str(ipaddress.IPv4Address(guid[0:4])), struct.unpack_from("<H", guid, 13)[0]


def query_wants_v3(q: messages.Query) -> bool:
    """True when the query's GGEP has "SO" (the querier checks security tokens)."""
    return find(q.ggep, "SO") is not None


# --- UHC: SCP, IPP, PHC ----------------------------------------------------------------------
def scp_ping(want_ultrapeers: bool = True) -> messages.Ping:
    """A UHC PING: GGEP SCP with the flags byte."""
    return messages.Ping((GgepItem("SCP", bytes((SCP_F_ULTRA if want_ultrapeers else 0,))),))


def encode_ipp(hosts: list[tuple[str, int]]) -> bytes:
    """Pack IPv4 hosts as IPP entries (others are skipped), at most IPP_MAX_HOSTS."""
    out = bytearray()
    for host, port in hosts:
        try:
            packed = ipaddress.IPv4Address(host).packed
        except ValueError:
            continue
        if not 0 < port < 65536:
            continue
        out += packed + struct.pack("<H", port)
        if len(out) >= IPP_MAX_HOSTS * IPP_ENTRY:
            break
    return bytes(out)


def decode_ipp(data: bytes, limit: int = 64) -> list[tuple[str, int]]:
    """Unpack IPP entries (a trailing partial entry is ignored); at most `limit` of them."""
    out = []
    for pos in range(0, len(data) - IPP_ENTRY + 1, IPP_ENTRY):
        port = struct.unpack_from("<H", data, pos + 4)[0]
        if port:
            out.append((str(ipaddress.IPv4Address(data[pos:pos + 4])), port))
        if len(out) >= limit:
            break
    return out


def decode_phc(data: bytes) -> list[tuple[str, int]]:
    """Read "host:port" lines of a PHC item (extra tab-separated fields ignored), bounded."""
    out = []
    for line in data.split(b"\n")[:PHC_MAX_LINES]:
        line = line.split(b"\t")[0].strip()
        if not line or len(line) > PHC_MAX_LINE:
            continue
        host, sep, port = line.decode("latin-1").rpartition(":")
        if not (sep and host and port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            continue
        if all(c.isascii() and (c.isalnum() or c in ".-") for c in host):
            out.append((host, int(port)))
    return out


def encode_phc(caches: list[tuple[str, int]]) -> bytes:
    return "\n".join(f"{h}:{p}" for h, p in caches[:PHC_MAX_LINES]).encode("latin-1")


# --- GUESS query keys -----------------------------------------------------------------------
def query_key(secret: bytes, ip: str, port: int) -> bytes:
    """The query key for (ip, port) under `secret`: truncated HMAC-SHA1 (query_keys 2.x.4.2)."""
    msg = ip.encode("ascii", "replace") + b":" + str(port).encode()
    return hmac.new(secret, msg, hashlib.sha1).digest()[:QK_LEN]


def check_query_key(secrets: list[bytes], ip: str, port: int, key: bytes | None) -> bool:
    """True when `key` is the key of (ip, port) under any live secret (current, previous)."""
    if key is None or not QK_MIN <= len(key) <= QK_MAX:
        return False
    return any(hmac.compare_digest(query_key(s, ip, port), key) for s in secrets)
