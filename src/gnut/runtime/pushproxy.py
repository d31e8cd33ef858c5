"""Push proxies (doc/gnutella/push_proxy): an ultrapeer relays PUSH to its firewalled leaves over HTTP.

Strategy
--------
Ultrapeer side: a leaf asks with LIME/21 (message GUID = its servent GUID); we answer LIME/22
with our address and remember servent GUID -> that leaf's link (one GUID per leaf link, so
the table is bounded by our leaf slots). A downloader then sends us
`GET /gnutella/push-proxy?ServerId=<base32 GUID>` (LimeWire) or `GET /gnet/push-proxy?guid=<hex>`
(gtk-gnutella) with `X-Node: ip:port`; we send the leaf a PUSH (TTL 1) and answer 202, or 410
when that leaf is not connected, 400 for a malformed request, 503 when rate limited. The PUSH
always names the requester's own socket IP (the port from X-Node): a request cannot make our
leaf connect to a third party. Requests are limited per requesting IP and in total.

Leaf side: while we are firewalled (runtime/reach.py) we ask each ultrapeer link once with
LIME/21 and keep the proxies that acknowledge; they go in our hits (GGEP "PUSH") and in our
HTTP answers (`X-Push-Proxies`). The proxy address is the ultrapeer link's own address with
the port its LIME/22 gives (an ack cannot point downloaders at a third party).

Downloader side: `contact()` asks a source's proxies over HTTP, until one says 202.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import logging
import time
from typing import Any
from urllib.parse import parse_qs

from gnut.constants import MSG_PUSH, MSG_VENDOR
from gnut.errors import RemoteProtocolError
from gnut.protocol import messages
from gnut.protocol import routing as rt
from gnut.protocol import vmsg_reach as vr

log = logging.getLogger("gnut.runtime.pushproxy")

# Push-proxy HTTP requests served per requesting IP per minute, and in total per minute.
REQUESTS_PER_IP_PER_MINUTE = 10
REQUESTS_PER_MINUTE = 300
# Requesting IPs remembered for the per-IP limit (oldest forgotten first).
REQUEST_MEMORY = 4096
# A downloader waits this long for a proxy's HTTP answer.
CONTACT_TIMEOUT = 5.0
# Bytes of a proxy's answer we read (a status line and a few headers).
ANSWER_MAX = 4096


def guid_base32(guid: bytes) -> str:
    """A servent GUID as LimeWire writes it in ServerId (base32, no padding)."""
    return base64.b32encode(guid).decode().rstrip("=")


def parse_guid(text: str) -> bytes | None:
    """A servent GUID from 32 hex digits or 26 base32 characters (padding optional), else None."""
    text = text.strip()
    if len(text) == 32:
        try:
            return bytes.fromhex(text)
        except ValueError:
            return None
    if 26 <= len(text) <= 32:
        try:
            raw = base64.b32decode(text.upper().rstrip("=") + "=" * 6, casefold=True)
        except (binascii.Error, ValueError):
            return None
        return raw if len(raw) == 16 else None
    return None


class PushProxy:
    """Both roles of the push-proxy scheme for one node."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.leaves: dict[bytes, int] = {}  # servent GUID -> leaf peer id (ultrapeer side)
        self.proxies: dict[int, tuple[str, int]] = {}  # ultrapeer peer id -> proxy address (leaf side)
        self.asked: set[int] = set()  # ultrapeer links we sent LIME/21 (leaf side)
        self._per_ip: collections.OrderedDict[str, collections.deque] = collections.OrderedDict()
        self._all: collections.deque[float] = collections.deque()

    # --- link events -------------------------------------------------------------------------
    def peer_closed(self, peer) -> None:
        guid = getattr(peer, "push_guid", None)
        if guid is not None and self.leaves.get(guid) == peer.id:
            del self.leaves[guid]
        self.proxies.pop(peer.id, None)
        self.asked.discard(peer.id)

    def tick(self) -> None:
        """Leaf side: while firewalled, ask every ultrapeer link (once) to be our push proxy."""
        node = self.node
        if node.cfg.mode != "leaf" or not node.reach.firewalled():
            return
        for p in list(node.peers.values()):
            if p.established and p.role == rt.PeerRole.ULTRAPEER and p.id not in self.asked and not p.closed:
                self.asked.add(p.id)
                node.send_to(p, MSG_VENDOR, vr.push_proxy_request(), 1, guid=node.servent_guid)
                node.events["push_proxy_asked"] += 1

    def is_our_proxy(self, peer) -> bool:
        """The link is an ultrapeer that acknowledged being our push proxy (its PUSHes name others)."""
        return peer is not None and peer.id in self.proxies

    def our_proxies(self) -> list[tuple[str, int]]:
        """Live proxies that acknowledged us, for hits and X-Push-Proxies."""
        return [addr for pid, addr in self.proxies.items() if pid in self.node.peers][: vr.MAX_PUSH_PROXIES]

    # --- vendor messages -------------------------------------------------------------------------
    def on_vendor(self, peer, msg) -> bool:
        """Handle LIME/21 and LIME/22; False for any other vendor message."""
        payload = msg.payload
        node = self.node
        if vr.is_kind(payload, vr.PUSH_PROXY_REQUEST):
            if node.cfg.mode != "ultrapeer" or peer.role != rt.PeerRole.LEAF or node.address_unknown:
                node.events["push_proxy_declined"] += 1
                return True
            holder = self.leaves.get(bytes(msg.guid))
            if holder is not None and holder != peer.id and holder in node.peers:
                node.events["push_proxy_guid_taken"] += 1  # another live leaf has that servent GUID
                return True
            old = getattr(peer, "push_guid", None)
            if old is not None and self.leaves.get(old) == peer.id:
                del self.leaves[old]
            peer.push_guid = bytes(msg.guid)
            self.leaves[peer.push_guid] = peer.id
            host, port = node.address
            node.send_to(peer, MSG_VENDOR, vr.push_proxy_ack(host, port), 1, guid=msg.guid)
            node.events["push_proxy_leaves"] += 1
            return True
        if vr.is_kind(payload, vr.PUSH_PROXY_ACK):
            if peer.role != rt.PeerRole.ULTRAPEER or peer.id not in self.asked:
                node.events["push_proxy_ack_unasked"] += 1
                return True
            try:
                _ip, port = vr.parse_push_proxy_ack(payload)
            except RemoteProtocolError:
                node.events["bad_vendor"] += 1
                return True
            ip = (peer.listen_addr or peer.addr)[0]
            self.proxies[peer.id] = (ip, port)
            node.events["push_proxies_acked"] += 1
            log.info("%s is our push proxy at %s:%d", peer.describe(), ip, port)
            return True
        return False

    # --- HTTP (ultrapeer side) ----------------------------------------------------------------------
    def _rate_ok(self, ip: str, now: float) -> bool:
        window = self._all
        while window and now - window[0] > 60.0:
            window.popleft()
        q = self._per_ip.get(ip)
        if q is None:
            q = self._per_ip[ip] = collections.deque()
            while len(self._per_ip) > REQUEST_MEMORY:
                self._per_ip.popitem(last=False)
        self._per_ip.move_to_end(ip)
        while q and now - q[0] > 60.0:
            q.popleft()
        if len(q) >= REQUESTS_PER_IP_PER_MINUTE or len(window) >= REQUESTS_PER_MINUTE:
            return False
        q.append(now)
        window.append(now)
        return True

    def http_request(self, target: bytes, headers: dict[bytes, bytes], remote_ip: str) -> tuple[int, str]:
        """Answer a push-proxy GET: (status, reason). Sends the PUSH when the leaf is ours."""
        node = self.node
        if not self._rate_ok(remote_ip, time.monotonic()):
            node.events["push_proxy_rate_limited"] += 1
            return 503, "Push Proxy: Too many requests"
        _path, _, query = target.partition(b"?")
        try:
            args = parse_qs(query.decode("ascii"), max_num_fields=8)
        except (UnicodeDecodeError, ValueError):
            return 400, "Push Proxy: Bad Request"
        args = {k.lower(): v[0] for k, v in args.items()}
        raw = args.get("serverid") or args.get("guid")
        guid = parse_guid(raw) if raw else None
        node_hdr = headers.get(b"x-node", b"").decode("latin-1")
        port_text = node_hdr.rpartition(":")[2].strip()
        index_text = args.get("file", "0")
        if guid is None or not port_text.isdigit() or not index_text.isdigit():
            node.events["push_proxy_bad_request"] += 1
            return 400, "Push Proxy: Bad Request"
        port, index = int(port_text), int(index_text)
        if not 0 < port < 65536 or index > 0xFFFFFFFF:
            node.events["push_proxy_bad_request"] += 1
            return 400, "Push Proxy: Bad Request"
        leaf = node.peers.get(self.leaves.get(guid, -1))
        if leaf is None or not leaf.established or leaf.closed:
            node.events["push_proxy_gone"] += 1
            return 410, "Push Proxy: Servent not connected"
        # The GIV goes to whoever asked: the requester's own address, never one from a header.
        push = messages.Push(servent_guid=guid, index=index, ip=remote_ip, port=port)
        node.send_to(leaf, MSG_PUSH, push.encode(), 1)
        node.flush()
        node.events["push_proxy_pushes"] += 1
        return 202, "Push Proxy: Message Sent"


async def contact(proxy: tuple[str, int], guid: bytes, index: int, our_addr: tuple[str | None, int]) -> bool:
    """Ask push proxy `proxy` to PUSH servent `guid` (file `index`) to us; True on 202.

    `our_addr`: where the GIV should come (X-Node); ip None = our end of this connection.
    """
    ip, port = proxy
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), CONTACT_TIMEOUT)
    except (TimeoutError, OSError) as exc:
        log.info("push proxy %s:%d unreachable: %s", ip, port, exc or "timeout")
        return False
    our_ip = our_addr[0]
    if our_ip is None:
        sock = writer.get_extra_info("sockname")
        our_ip = sock[0] if sock else "0.0.0.0"
    try:
        writer.write((f"GET /gnutella/push-proxy?ServerId={guid_base32(guid)}&file={index} HTTP/1.1\r\n"
                      f"Host: {ip}:{port}\r\nX-Node: {our_ip}:{our_addr[1]}\r\n"
                      "Connection: close\r\n\r\n").encode())
        line = await asyncio.wait_for(reader.readline(), CONTACT_TIMEOUT)
    except (TimeoutError, OSError, ValueError):
        return False
    finally:
        writer.close()
    parts = line[:ANSWER_MAX].split()
    ok = len(parts) >= 2 and parts[1] == b"202"
    log.info("push proxy %s:%d answered %r", ip, port, line[:80])
    return ok
