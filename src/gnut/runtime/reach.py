"""Reachability: are we firewalled (TCP connect-back, real incoming connections), and role election.

Strategy
--------
TCP reachability is "yes" once another host really opened a connection to us (any accepted
connection whose far end is not our own host: a Gnutella link, an HTTP request, a GIV, or the
"\\n\\n" of a connect-back probe). To learn it early we ask peers for a TCP connect-back
(BEAR/7, gtk-gnutella doc/gnutella/msg/connect_back) on our first outgoing links; when
`connect_back_wait` seconds pass after asking with no incoming connection, it is "no"
(firewalled or NATed), and we ask again every ASK_AGAIN seconds in case that changed.
`--firewalled` forces "no". UDP stays "unknown" (gnut has no UDP yet).

Answering others' requests is the hostile side: a BEAR/7 makes us open a connection, so we
only ever connect to the IP of the link the request came on (never an address named in a
message), at most once per requesting IP per PROBE_INTERVAL, PROBE_MAX_INFLIGHT at once,
PROBE_PER_MINUTE in total, and we send exactly "\\n\\n" and close.

Role election (`--mode auto`, the default): start as a leaf; become an ultrapeer when TCP is
reachable, our address is routable, we have been up `up_min_uptime` seconds and the process
can hold the links (file descriptors for max_peers + max_leaves), unless every ultrapeer we
are linked to says `X-Ultrapeer-Needed: False`: LimeWire's NodeAssigner and gtk-gnutella's
ultra-peers rules without the bandwidth measurement (we do not have one). Step
down to leaf when reachability is lost. A role change says BYE 200 to every link and redials
(peers negotiated our old role in the handshake), at most once per ROLE_HOLD seconds.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import resource
import time
from typing import Any

from gnut.constants import MSG_VENDOR
from gnut.errors import RemoteProtocolError
from gnut.protocol import vmsg_reach as vr
from gnut.protocol.handshake import parse_bool
from gnut.protocol.routing import PeerRole

log = logging.getLogger("gnut.runtime.reach")

# Connect-back requests: at most this many peers are asked per round...
ASK_PEERS = 3
# ...and a new round starts this often while we are not shown reachable.
ASK_AGAIN = 600.0
# Answering requests: one probe per requesting IP per this many seconds (gtk-gnutella: hours).
PROBE_INTERVAL = 600.0
# Probes under way at once, and probes started per minute in total: a flood of requesters from
# many addresses cannot make us a connection cannon.
PROBE_MAX_INFLIGHT = 4
PROBE_PER_MINUTE = 30
# Requesting IPs remembered for PROBE_INTERVAL (oldest forgotten first: memory bound).
PROBE_MEMORY = 4096
# A probe that has not connected by then failed.
PROBE_TIMEOUT = 5.0
# What a connect-back probe writes (the spec's 2-byte string).
PROBE_BYTES = b"\n\n"
# Role changes at most this often (each one drops every link).
ROLE_HOLD = 300.0
# File descriptors kept free for files, HTTP transfers and the listener beyond the links.
FD_SLACK = 64


class Reachability:
    """Firewall detection, connect-back answering and (auto mode) role election for one node."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.incoming = 0  # accepted connections from other hosts
        self.last_incoming_from = ""
        self.connect_backs_received = 0
        self.asked: set[int] = set()  # peer ids asked for a connect-back this round
        self.asked_ips: set[str] = set()  # their addresses (at most ASK_PEERS per round)
        self.asked_capable: set[int] = set()  # ... of which known to answer BEAR/7 (a "no" needs one)
        self.asked_at = 0.0  # when this round's first request went out (monotonic), 0 = not asked
        self.probe_times: collections.OrderedDict[str, float] = collections.OrderedDict()
        self.probe_window: collections.deque[float] = collections.deque()
        self.probes_inflight = 0
        self.role_changed_at = 0.0
        self.role_reason = "configured" if not getattr(node.cfg, "auto_role", False) else "auto: starting as a leaf"

    # --- what we know ----------------------------------------------------------------------
    def tcp(self, now: float | None = None) -> tuple[str, str]:
        """("yes"|"no"|"unknown", why) for TCP reachability."""
        now = time.monotonic() if now is None else now
        if self.node.cfg.firewalled:
            return "no", "--firewalled given"
        if self.incoming:
            return "yes", f"{self.incoming} incoming connection(s) from other hosts (last from {self.last_incoming_from})"
        waited = self.asked_at and now - self.asked_at >= self.node.cfg.connect_back_wait
        if waited and self.asked_capable:
            return "no", (f"no incoming connection {now - self.asked_at:.0f} s after asking {len(self.asked)} "
                          "peer(s) to connect back")
        if waited:
            return "unknown", (f"asked {len(self.asked)} peer(s) to connect back, none known to support it "
                               "(no Messages Supported listing BEAR/7)")
        if self.asked_at:
            return "unknown", f"waiting for the connect-back of {len(self.asked)} peer(s)"
        return "unknown", "no incoming connection yet, no peer asked to connect back"

    def firewalled(self) -> bool:
        """True when we know we are firewalled: hits say push-needed, queries set the flag.

        "unknown" acts as reachable (a downloader that cannot connect falls back to PUSH).
        """
        return self.tcp()[0] == "no"

    def stats(self) -> dict:
        tcp, why = self.tcp()
        return {"tcp": tcp, "tcp_reason": why, "udp": "unknown", "udp_reason": "gnut has no UDP yet",
                "incoming": self.incoming, "connect_backs_received": self.connect_backs_received,
                "role": self.node.cfg.mode, "auto": bool(getattr(self.node.cfg, "auto_role", False)),
                "role_reason": self.role_reason}

    # --- incoming connections -----------------------------------------------------------------
    def on_accept(self, transport) -> None:
        """An accepted connection: proof of reachability unless it comes from our own host."""
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        if not peer or not sock or peer[0] == sock[0]:
            return
        if not self.incoming:
            log.info("reachable over TCP: incoming connection from %s", peer[0])
        self.incoming += 1
        self.last_incoming_from = peer[0]

    def on_connect_back_received(self, transport) -> None:
        """A "\\n\\n" probe arrived. From another host on_accept() counted it already; from our
        own host it still proves the path when it comes from a peer we asked (a loopback network)."""
        self.connect_backs_received += 1
        self.node.events["connect_back_received"] += 1
        peer = transport.get_extra_info("peername") if transport is not None else None
        sock = transport.get_extra_info("sockname") if transport is not None else None
        if peer and sock and peer[0] == sock[0] and peer[0] in self.asked_ips:
            self.incoming += 1
            self.last_incoming_from = peer[0]

    # --- asking -----------------------------------------------------------------------------------
    def on_link_up(self, peer) -> None:
        """A link opened: tell it what we support; ask it to connect back while we do not know."""
        node = self.node
        headers = peer.peer_headers
        if headers is None or headers.get("Vendor-Message") is None:
            return
        node.send_to(peer, MSG_VENDOR, vr.messages_supported(), 1)
        if not peer.outgoing or self.incoming or node.cfg.firewalled or len(self.asked) >= ASK_PEERS:
            return
        if self.asked_at and time.monotonic() - self.asked_at >= node.cfg.connect_back_wait:
            return  # this round is over; tick() starts the next
        if not self.asked_at:
            self.asked_at = time.monotonic()
        self.asked.add(peer.id)
        if _answers_connect_back(peer):
            self.asked_capable.add(peer.id)
        if peer.addr is not None:
            self.asked_ips.add(peer.addr[0])
        node.send_to(peer, MSG_VENDOR, vr.connect_back(node.address[1]), 1)
        node.events["connect_back_asked"] += 1

    def tick(self, now: float) -> None:
        if not self.incoming and self.asked_at and now - self.asked_at > ASK_AGAIN:
            self.asked.clear()
            self.asked_ips.clear()
            self.asked_capable.clear()
            self.asked_at = 0.0
            for p in list(self.node.peers.values()):
                if p.established and p.outgoing:
                    self.on_link_up(p)
        self._elect(now)

    # --- answering -----------------------------------------------------------------------------------
    def on_vendor(self, peer, msg) -> bool:
        """Handle BEAR/7, GTKG/7 and Messages Supported; False for other vendor messages."""
        payload = msg.payload
        if vr.is_kind(payload, vr.TCP_CONNECT_BACK):
            self._connect_back_request(peer, payload)
            return True
        if vr.is_kind(payload, vr.UDP_CONNECT_BACK):
            self.node.events["udp_connect_back_ignored"] += 1  # no UDP yet
            return True
        if vr.is_kind(payload, vr.MESSAGES_SUPPORTED):
            try:
                peer.vendor_supported = vr.parse_messages_supported(payload)
                if peer.id in self.asked and _answers_connect_back(peer):
                    self.asked_capable.add(peer.id)
            except RemoteProtocolError as exc:
                self.node.events["bad_vendor"] += 1
                log.debug("bad Messages Supported from %s: %s", peer.describe(), exc)
            return True
        return False

    def _connect_back_request(self, peer, payload: bytes) -> None:
        node = self.node
        try:
            port = vr.parse_connect_back(payload)
        except RemoteProtocolError:
            node.events["connect_back_bad"] += 1
            return
        if peer.addr is None or not peer.established:
            return
        ip = peer.addr[0]  # the requester's own socket address: never an address from a message
        now = time.monotonic()
        last = self.probe_times.get(ip)
        window = self.probe_window
        while window and now - window[0] > 60.0:
            window.popleft()
        if last is not None and now - last < PROBE_INTERVAL:
            node.events["connect_back_rate_limited"] += 1
            return
        if self.probes_inflight >= PROBE_MAX_INFLIGHT or len(window) >= PROBE_PER_MINUTE:
            node.events["connect_back_busy"] += 1
            return
        self.probe_times[ip] = now
        self.probe_times.move_to_end(ip)
        while len(self.probe_times) > PROBE_MEMORY:
            self.probe_times.popitem(last=False)
        window.append(now)
        self.probes_inflight += 1
        node.events["connect_back_probes"] += 1
        node.spawn(self._probe(ip, port))

    async def _probe(self, ip: str, port: int) -> None:
        try:
            _reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), PROBE_TIMEOUT)
        except (TimeoutError, OSError) as exc:
            log.debug("connect-back to %s:%d failed: %s", ip, port, exc or "timeout")
            self.node.events["connect_back_probe_failed"] += 1
            return
        finally:
            self.probes_inflight -= 1
        try:
            writer.write(PROBE_BYTES)
            await asyncio.wait_for(writer.drain(), PROBE_TIMEOUT)
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()

    # --- role election -------------------------------------------------------------------------------
    def up_capable(self, now: float) -> tuple[bool, str]:
        """Whether we qualify as an ultrapeer now, and why (not)."""
        node = self.node
        cfg = node.cfg
        tcp, why = self.tcp(now)
        if tcp != "yes":
            return False, f"TCP not reachable ({why})"
        if node.address_unknown or not vr.is_routable_ipv4(node.address[0]):
            return False, f"our address {node.address[0]} is not routable"
        up = now - node.started
        if up < cfg.up_min_uptime:
            return False, f"up {up:.0f} s of the {cfg.up_min_uptime:.0f} s needed"
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        need = cfg.max_peers + cfg.max_leaves + FD_SLACK
        if soft != resource.RLIM_INFINITY and soft < need:
            return False, f"file descriptor limit {soft} below the {need} links need"
        return True, "reachable, routable address, enough uptime and link capacity"

    def _elect(self, now: float) -> None:
        node = self.node
        if not getattr(node.cfg, "auto_role", False):
            return
        if self.role_changed_at and now - self.role_changed_at < ROLE_HOLD:
            return
        ok, why = self.up_capable(now)
        if node.cfg.mode == "leaf" and ok and self._ultrapeers_say_enough():
            ok, why = False, "our ultrapeers say no more ultrapeers are needed (X-Ultrapeer-Needed: False)"
        if node.cfg.mode == "leaf" and ok:
            self._change("ultrapeer", f"auto: promoted ({why})", now)
        elif node.cfg.mode == "ultrapeer" and not ok and self.tcp(now)[0] == "no":
            self._change("leaf", f"auto: stepped down ({why})", now)
        elif node.cfg.mode == "leaf":
            self.role_reason = f"auto: leaf ({why})"

    def _ultrapeers_say_enough(self) -> bool:
        """Every ultrapeer we are linked to said `X-Ultrapeer-Needed: False` (LimeWire's leaf guidance)."""
        said = [parse_bool(p.peer_headers.get("X-Ultrapeer-Needed"))
                for p in self.node.peers.values() if p.established and p.peer_headers is not None
                and p.role == PeerRole.ULTRAPEER]
        return bool(said) and all(v is False for v in said)

    def _change(self, mode: str, why: str, now: float) -> None:
        log.info("role: %s -> %s: %s", self.node.cfg.mode, mode, why)
        self.role_reason = why
        self.role_changed_at = now
        self.node.events["role_changes"] += 1
        self.node.set_role(mode)


# Servents known to answer BEAR/7 even before their Messages Supported arrives.
CONNECT_BACK_AGENTS = ("gnut/", "gtk-gnutella/")


def _answers_connect_back(peer) -> bool:
    """The peer listed BEAR/7 in its Messages Supported, or is a servent known to answer it."""
    supported = getattr(peer, "vendor_supported", None)
    if supported is not None and (vr.BEAR, 7) in supported:
        return True
    return (peer.user_agent or "").startswith(CONNECT_BACK_AGENTS)
