"""Fuzz targets for everything gnut reads from UDP and from GWebCaches (merged into targets.TARGETS).

- udp_datagram: one datagram through the real receive path (UdpTransceiver.handle with the
  node's PING/PONG/GUESS and OOB handlers attached): only counted drops, never a handler error;
  and no datagram we did not solicit makes us send more than AMP_BOUND times its size.
- udp_payloads: the UDP payload codecs (LIME/11, LIME/12, IPP, PHC, query keys): parse or
  RemoteProtocolError; bounded outputs.
- gwc: GWebCache replies (client) and requests (server cache): never raise, bounded.
"""

from __future__ import annotations

import collections
from pathlib import Path

from gnut.errors import RemoteProtocolError
from gnut.protocol import gwc, messages, vendor
from gnut.protocol.datagram import MAX_DATAGRAM, Datagram, UdpDrop, build_datagram, parse_datagram
from gnut.protocol.ggep import GgepItem
from gnut.runtime.config import NodeConfig
from gnut.runtime.hostcache import HostCache
from gnut.runtime.oob import OobManager
from gnut.runtime.search import SearchManager
from gnut.runtime.share import build_hits
from gnut.runtime.udp import UdpTransceiver
from gnut.runtime.udpnode import UdpGnutella

MAX_INPUT = 256 * 1024
# Bytes out per byte in that any single unsolicited datagram may cause (see RELIABILITY.md "UDP").
AMP_BOUND = 5.0


class _Wire:
    """Where the transceiver's sends go in the harness: their sizes are kept, nothing leaves."""

    def __init__(self) -> None:
        self.sent: list[int] = []

    def sendto(self, data: bytes, addr) -> None:
        self.sent.append(len(data))

    def close(self) -> None:
        pass


class _Host:
    """The parts of a node the UDP handlers use, built from real components (no sockets)."""

    def __init__(self, share) -> None:
        self.cfg = NodeConfig(listen_host="127.0.0.1", listen_port=6346, mode="ultrapeer", control=False,
                              save_hosts=False, home=Path("/nonexistent-gnut-fuzz"))
        self.address = ("127.0.0.1", 6346)
        self.servent_guid = bytes(range(16))
        self.peers: dict = {}
        self.pong_cache: collections.OrderedDict = collections.OrderedDict(
            ((f"127.0.0.{i}", 6346), b"") for i in range(1, 12))
        self.hosts = HostCache(None)
        self.share = share
        self.transfers = self
        self.searches = SearchManager(self)
        self.events: collections.Counter = collections.Counter()

    def our_pong(self) -> messages.Pong:
        return messages.Pong(6346, "127.0.0.1", len(self.share), self.share.total_kbytes)

    def hit_payloads(self, files, ggep_h: bool) -> list[bytes]:
        return build_hits(files, servent_guid=self.servent_guid, ip="127.0.0.1", port=6346, push=False,
                          busy=False, ggep_h=ggep_h)


_WORLD = None


def _world(share):
    global _WORLD
    if _WORLD is None:
        host = _Host(share)
        udp = UdpTransceiver()
        udp.transport = _Wire()  # type: ignore[assignment]
        udp.address = host.address
        _WORLD = (host, udp, UdpGnutella(host, udp), OobManager(host, udp))
    return _WORLD


def udp_datagram(data: bytes, share) -> None:
    """A datagram through parse + dispatch: counted drops only; no amplification beyond AMP_BOUND."""
    host, udp, _, _ = _world(share)
    data = data[:MAX_DATAGRAM + 16]
    res = parse_datagram(data)
    assert isinstance(res, (Datagram, UdpDrop))
    if isinstance(res, Datagram):
        assert len(res.payload) <= MAX_DATAGRAM
    wire = udp.transport
    before = len(wire.sent)
    udp.handle(data, ("127.0.0.1", 40000))
    assert udp.drops.get("handler_error", 0) == 0, "a UDP handler raised"
    out = sum(wire.sent[before:])
    assert out <= AMP_BOUND * max(len(data), 1) or not data, f"{len(data)} bytes in made {out} bytes out"
    del wire.sent[:]
    assert len(host.hosts) <= host.hosts.capacity


def udp_payloads(data: bytes) -> None:
    """LIME/11, LIME/12 (via the vendor header), IPP, PHC: parse or RemoteProtocolError, bounded."""
    body = data[:MAX_INPUT]
    try:
        m = vendor.decode_vendor(body)
        if isinstance(m, vendor.OobReplyAck):
            assert 1 <= m.wanted <= 255 and len(m.token) <= vendor.SO_MAX_LEN
    except RemoteProtocolError:
        pass
    assert len(vendor.decode_ipp(body)) <= 64
    assert len(vendor.decode_phc(body)) <= vendor.PHC_MAX_LINES
    assert not vendor.check_query_key([b"s"], "127.0.0.1", 1, body[:16])


def gwc_text(data: bytes) -> None:
    """GWebCache replies and request query strings: never raise, bounded."""
    body = data[:MAX_INPUT]
    r = gwc.parse_reply(body)
    assert len(r.hosts) + len(r.urls) <= gwc.MAX_REPLY_LINES
    cache = gwc.GwcCache(update_interval=0.0)
    req = gwc.parse_request(body.decode("latin-1"))
    out = cache.handle(req, "127.0.0.1", 0.0)
    assert len(cache.hosts) <= 1 and len(cache.urls) <= 1 and len(out) < 4096


TARGETS = {"udp_payloads": udp_payloads, "gwc": gwc_text}


def seeds(name: str) -> list[bytes]:
    g = bytes(range(16))
    if name == "udp_datagram":
        return [
            build_datagram(g, 0x00, 1, 0, b""),
            build_datagram(g, 0x00, 1, 0, vendor.scp_ping().encode(), can_inflate=True),
            build_datagram(g, 0x00, 1, 0, messages.Ping((GgepItem("QK"),)).encode()),
            build_datagram(g, 0x80, 1, 0, messages.Query("song", ggep=(GgepItem("QK", b"12345678"),)).encode()),
            build_datagram(g, 0x31, 1, 0, vendor.OobReplyAck(3, b"tok").encode()),
            build_datagram(g, 0x31, 1, 0, vendor.OobReplyInd(3).encode()),
            build_datagram(g, 0x01, 1, 0, messages.Pong(1, "1.2.3.4", 0, 0, (GgepItem("IPP", bytes(12)),)).encode(),
                           deflate=True),
        ]
    if name == "udp_payloads":
        return [vendor.OobReplyAck(3, b"tok").encode(), vendor.OobReplyInd(3).encode(),
                vendor.encode_ipp([("1.2.3.4", 5)]), b"host.example:6346\tx\nother:1\n"]
    if name == "gwc":
        return [b"h|1.2.3.4:6346|10\nu|http://x.example/|3\ni|update|OK\n",
                b"update=1&ip=127.0.0.1:6346&url=http://a.example/&net=gnutella&client=GNPY&version=1"]
    raise KeyError(name)
