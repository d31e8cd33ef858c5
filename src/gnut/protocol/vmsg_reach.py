"""Vendor messages and encodings for reachability: connect-back, push-proxy, Messages Supported, GGEP PUSH.

Sans-IO codecs (bytes in, values out; no sockets, no clock):

- BEAR/7 v1 "TCP Connect Back" (gtk-gnutella doc/gnutella/msg/connect_back): payload = the port
  (LE16) the receiver should connect to, at the IP the message came from. The receiver connects,
  writes "\\n\\n" and closes; the sender learns it can take incoming connections.
- GTKG/7 v1 "UDP Connect Back": same payload, answered with a UDP ping (parsed here only, so
  it can be counted: gnut has no UDP yet).
- LIME/21 v2 "PushProxyRequest" (doc/gnutella/push_proxy): empty payload, message GUID = the
  requester's servent GUID. LIME/22 v2 "PushProxyAcknowledgement": IPv4 (4 bytes, network
  order as everywhere in Gnutella addresses) + port LE16 of the proxy, same GUID.
- Messages Supported (LimeWire's null/0 v0): count LE16, then per message vendor(4) +
  selector LE16 + version LE16.
- GGEP "PUSH" in hits: an array of 6-byte IPv4:port entries (the push proxies).
- `is_routable_ipv4`: the classifier for "can an Internet peer reach this address" (private,
  loopback, link-local, CGNAT, documentation, multicast and reserved ranges are not).
"""

from __future__ import annotations

import ipaddress
import struct

from gnut.errors import RemoteProtocolError
from gnut.protocol.messages import Vendor

BEAR = b"BEAR"
GTKG = b"GTKG"
LIME = b"LIME"
NULL_VENDOR = b"\0\0\0\0"
TCP_CONNECT_BACK = (BEAR, 7, 1)
UDP_CONNECT_BACK = (GTKG, 7, 1)
PUSH_PROXY_REQUEST = (LIME, 21, 2)
PUSH_PROXY_ACK = (LIME, 22, 2)
MESSAGES_SUPPORTED = (NULL_VENDOR, 0, 0)
# What gnut answers (our Messages Supported lists these; BEAR/11-12 are dynquery's).
SUPPORTED = ((BEAR, 7, 1), (LIME, 21, 2), (LIME, 22, 2), (BEAR, 11, 1), (BEAR, 12, 1))
# Entries of a peer's Messages Supported we keep (a real servent lists a few dozen).
MAX_SUPPORTED_ENTRIES = 256
# Push proxies carried in one GGEP PUSH (LimeWire and gtk-gnutella send at most 4).
MAX_PUSH_PROXIES = 4

_U16 = struct.Struct("<H")


def kind(payload: bytes) -> tuple[bytes, int, int] | None:
    """(vendor, selector, version) of a vendor payload, None when shorter than its header."""
    v = Vendor(payload)
    if v.vendor is None:
        return None
    return v.vendor, v.selector, v.version


def is_kind(payload: bytes, spec: tuple[bytes, int, int]) -> bool:
    """True when `payload` is vendor message (vendor, selector) of `spec`, any version."""
    k = kind(payload)
    return k is not None and k[0] == spec[0] and k[1] == spec[1]


# --- connect back ------------------------------------------------------------------------------
def connect_back(port: int, udp: bool = False) -> bytes:
    """The payload of BEAR/7 (TCP) or GTKG/7 (UDP) asking the receiver to connect to `port`."""
    vendor, selector, version = UDP_CONNECT_BACK if udp else TCP_CONNECT_BACK
    return Vendor.make(vendor, selector, version, _U16.pack(port)).encode()


def parse_connect_back(payload: bytes) -> int:
    """The port of a BEAR/7 or GTKG/7 payload.

    Raises:
        RemoteProtocolError: no 2-byte port, or port 0.
    """
    data = Vendor(payload).data
    if len(data) < 2:
        raise RemoteProtocolError("connect-back without a port")
    port = _U16.unpack_from(data, 0)[0]
    if port == 0:
        raise RemoteProtocolError("connect-back to port 0")
    return port


# --- push proxy ----------------------------------------------------------------------------------
def push_proxy_request() -> bytes:
    """LIME/21 v2 payload (empty data; the message GUID must be our servent GUID)."""
    vendor, selector, version = PUSH_PROXY_REQUEST
    return Vendor.make(vendor, selector, version).encode()


def push_proxy_ack(ip: str, port: int) -> bytes:
    """LIME/22 v2 payload: the proxy's IPv4 and port."""
    vendor, selector, version = PUSH_PROXY_ACK
    return Vendor.make(vendor, selector, version, ipaddress.IPv4Address(ip).packed + _U16.pack(port)).encode()


def parse_push_proxy_ack(payload: bytes) -> tuple[str, int]:
    """(ip, port) of a LIME/22 payload.

    Raises:
        RemoteProtocolError: shorter than 6 bytes of data, or port 0.
    """
    data = Vendor(payload).data
    if len(data) < 6:
        raise RemoteProtocolError("push-proxy ack shorter than IPv4 + port")
    port = _U16.unpack_from(data, 4)[0]
    if port == 0:
        raise RemoteProtocolError("push-proxy ack with port 0")
    return str(ipaddress.IPv4Address(data[:4])), port


# --- Messages Supported ------------------------------------------------------------------------------
def messages_supported(entries=SUPPORTED) -> bytes:
    """Our Messages Supported payload (null/0 v0)."""
    body = _U16.pack(len(entries)) + b"".join(v + _U16.pack(s) + _U16.pack(ver) for v, s, ver in entries)
    return Vendor.make(NULL_VENDOR, 0, 0, body).encode()


def parse_messages_supported(payload: bytes) -> set[tuple[bytes, int]]:
    """The (vendor, selector) pairs a peer supports (at most MAX_SUPPORTED_ENTRIES).

    Raises:
        RemoteProtocolError: the count says more entries than the payload holds.
    """
    data = Vendor(payload).data
    if len(data) < 2:
        raise RemoteProtocolError("Messages Supported without a count")
    count = _U16.unpack_from(data, 0)[0]
    if 2 + 8 * count > len(data):
        raise RemoteProtocolError(f"Messages Supported lists {count} entries in {len(data)} bytes")
    out = set()
    for i in range(min(count, MAX_SUPPORTED_ENTRIES)):
        off = 2 + 8 * i
        out.add((bytes(data[off:off + 4]), _U16.unpack_from(data, off + 4)[0]))
    return out


# --- GGEP PUSH -------------------------------------------------------------------------------------
def encode_push_proxies(proxies) -> bytes:
    """GGEP "PUSH" data: up to MAX_PUSH_PROXIES IPv4:port entries (6 bytes each)."""
    out = b""
    for ip, port in list(proxies)[:MAX_PUSH_PROXIES]:
        out += ipaddress.IPv4Address(ip).packed + _U16.pack(port)
    return out


def decode_push_proxies(data: bytes) -> tuple[tuple[str, int], ...]:
    """The proxies of a GGEP "PUSH" item; entries with port 0 or a trailing partial entry are skipped."""
    out = []
    for off in range(0, len(data) - len(data) % 6, 6):
        port = _U16.unpack_from(data, off + 4)[0]
        if port:
            out.append((str(ipaddress.IPv4Address(data[off:off + 4])), port))
        if len(out) >= MAX_PUSH_PROXIES:
            break
    return tuple(out)


def parse_hostports(value: str, limit: int = MAX_PUSH_PROXIES) -> list[tuple[str, int]]:
    """Parse an `X-Push-Proxies` value ("ip:port, ip:port"); garbage entries are skipped."""
    out: list[tuple[str, int]] = []
    for part in value.split(",")[: limit * 4]:
        host, _, port = part.strip().rpartition(":")
        try:
            ip = str(ipaddress.IPv4Address(host))
            p = int(port)
        except ValueError:
            continue
        if 0 < p < 65536 and (ip, p) not in out:
            out.append((ip, p))
        if len(out) >= limit:
            break
    return out


# --- address classes ------------------------------------------------------------------------------
_NOT_ROUTABLE = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/3",
))


def is_routable_ipv4(ip: str) -> bool:
    """True for an IPv4 address an Internet peer could connect to (not private, loopback, etc.)."""
    try:
        addr = ipaddress.IPv4Address(ip)
    except ValueError:
        return False
    return not any(addr in net for net in _NOT_ROUTABLE)
