"""The servent runtime: listener, dialer, timers, and execution of the Router's decisions."""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from pathlib import Path
from typing import Protocol

from gnut.constants import (
    HANDSHAKE_TIMEOUT,
    IDLE_CLOSE_AFTER,
    IDLE_PING_AFTER,
    MSG_BYE,
    MSG_PING,
    MSG_PONG,
    MSG_PUSH,
    MSG_QRP,
    MSG_QUERY,
    MSG_QUERYHIT,
    MSG_VENDOR,
    MSG_VENDOR_STD,
    SOFT_TTL_LIMIT,
    TYPE_NAMES,
)
from gnut.errors import ProtocolError, RemoteProtocolError
from gnut.fastpath import STOP_END, STOP_LOCAL, relay_rewrite
from gnut.protocol import handshake as hs
from gnut.protocol import messages, qrp
from gnut.protocol import routing as rt
from gnut.protocol.addresses import AddressPolicy, AddressVotes
from gnut.protocol.guid import new_guid
from gnut.protocol.printable import printable
from gnut.runtime.config import NodeConfig
from gnut.runtime.dynquery import DqDriver
from gnut.runtime.hostcache import HostCache
from gnut.runtime.hostiles import HOSTILES_FILE, load_hostiles, persist_ban
from gnut.runtime.limits import Limits
from gnut.runtime.links import ACCEPTS_PER_IP_PER_MINUTE, LinkManager
from gnut.runtime.nodeviews import NodeViews
from gnut.runtime.peer import HIGH_WATER, LOW_WATER, PRIO_KEEP, Peer, shed_priority
from gnut.runtime.pushproxy import PushProxy
from gnut.runtime.reach import Reachability
from gnut.runtime.search import SearchManager
from gnut.runtime.udpnode import start_udp, stop_udp

log = logging.getLogger("gnut.runtime.node")
flow = logging.getLogger("gnut.flow")

# Housekeeping period: deadlines, keep-alives, redials, host-cache saves.
TICK = 1.0
# On stop, seconds to wait for the listener's accepted connections to go after BYE and abort.
SERVER_CLOSE_WAIT = 1.0
# Pongs we keep to answer PINGs without flooding them (pong caching), and how many we return.
PONG_CACHE_SIZE = 64
PONG_REPLY_MAX = 6
# Duplicate floods: a peer that sends the same broadcast GUID twice on its own link more than
# this many times within DUP_WINDOW seconds is replaying traffic; it gets BYE_DUPLICATES.
# Honest servents deduplicate before relaying, so the count of an honest link stays at 0.
DUP_RESENT_MAX = 50
DUP_WINDOW = 60.0
# BYE code for a duplicate flooder (4xx: the peer misbehaved).
BYE_DUPLICATES = 401
# Save the host cache at most this often.
HOSTS_SAVE_EVERY = 30.0
# Hosts remembered as speaking direct TLS (their pongs carried GGEP "TLS"), oldest forgotten first.
TLS_HOSTS_MAX = 4096
# Parallel outgoing dials while filling link slots.
MAX_PARALLEL_DIALS = 4
# Byte rates in `gnut status` are measured over the last RATE_SAMPLES housekeeping ticks.
RATE_SAMPLES = 6
# Listening on these means "every interface": the address we advertise must come from elsewhere.
WILDCARDS = ("0.0.0.0", "::")


def _tls_contexts(home):
    """TLS contexts with our identity from `home`, or None (logged) when they cannot be made."""
    from gnut.runtime.tls import TlsContexts

    try:
        return TlsContexts(home)
    except (OSError, RuntimeError, ValueError) as exc:
        log.warning("TLS is off: %s", exc)
        return None


class Service(Protocol):
    """Something that runs beside a node (Node.services): started after it, stopped before it."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class Node(NodeViews, LinkManager):
    """A running servent. Create, `await start()`, use, `await stop()`."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.servent_guid = new_guid()
        self.rng = random.Random()
        self.router = rt.Router(cfg.mode, servent_guid=self.servent_guid, seen_capacity=cfg.seen_cache_size,
                                route_capacity=cfg.route_table_size)
        self.peers: dict[int, Peer] = {}
        self._next_id = 0
        self._dirty: list[Peer] = []
        # Per relay-core slot: the peer, its output bytearray and its base (links.py keeps them).
        self._slot_peers: list[Peer] = []
        self._slot_bufs: list[bytearray] = []
        self._slot_bases: list[int] = []
        self.hosts = HostCache(cfg.hosts_path if cfg.save_hosts else None)
        # Trust (protocol/addresses.py): refusals by reason, hostile addresses, our address by vote.
        self.trust: collections.Counter[str] = collections.Counter()
        self.hostiles = load_hostiles([cfg.home / HOSTILES_FILE] + ([Path(cfg.hostiles)] if cfg.hostiles else []))
        self.addr_votes = AddressVotes()
        self.hosts.hostiles = self.hostiles
        self.pong_cache: collections.OrderedDict[tuple[str, int], bytes] = collections.OrderedDict()
        self.searches = SearchManager(self)
        self.dq = DqDriver(self)
        self.sent: collections.Counter[int] = collections.Counter()
        self.events: collections.Counter[str] = collections.Counter()
        # Fairness and resource refusals by reason (runtime/limits.py); `gnut status` shows them.
        self.limits = Limits(cfg.fd_reserve)
        self._accepts: dict[str, collections.deque] = {}
        self._dialing: set[tuple[str, int]] = set()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._last_save = 0.0
        self._qrp_dirty = True
        self._qrp_sent: dict[int, qrp.QrpTable] = {}
        # Our QRP table and its full encoding (RESET + PATCH), built once per change and shared by
        # every link that asks for it: a new link costs neither a table build nor a compression.
        self._qrp_table: qrp.QrpTable | None = None
        self._qrp_full: list[bytes] | None = None
        self._share_qrp: tuple[tuple, qrp.QrpTable] | None = None  # (share generation, table of our files)
        self.share = None
        self.transfers = None
        # UDP (runtime/udpnode.start_udp): transceiver, PING/PONG/GUESS, OOB, bootstrap; None without UDP.
        self.udp = self.udpnode = self.oob = self.bootstrap = self.guess = None
        # Things run beside the node (the app's control API): started last, stopped first.
        self.services: list[Service] = []
        self.dht = None  # runtime.dht.DhtService when cfg.dht
        self.started = time.monotonic()
        self.address: tuple[str, int] = (cfg.listen_host, cfg.listen_port)
        self.tls = None  # runtime/tls.TlsContexts once started, when cfg.tls
        self.tls_hosts: collections.OrderedDict[tuple[str, int], bool] = collections.OrderedDict()
        self.wildcard = cfg.listen_host in WILDCARDS
        self.handshake_config = self._handshake_config()
        self.stopping = False
        # Established links by role, kept up to date so admitting a peer is O(1), not O(links).
        self.n_ultrapeers = 0
        self.n_leaves = 0
        # Keep-alive and handshake deadlines (constants; tests shorten them on an instance).
        self.idle_ping_after = IDLE_PING_AFTER
        self.idle_close_after = IDLE_CLOSE_AFTER
        self.handshake_timeout = HANDSHAKE_TIMEOUT
        self.accepts_per_ip_per_minute = ACCEPTS_PER_IP_PER_MINUTE
        self.tick_interval = TICK
        self.reach = Reachability(self)
        self.pushproxy = PushProxy(self)
        # Gnutella link bytes [in, out] (peers add per chunk); samples of all byte counters for rates.
        self.traffic = [0, 0]
        self._samples: collections.deque = collections.deque(maxlen=RATE_SAMPLES)
        self.downloads = None
        # Why the last links to each address failed, in words (a client reports it to its user).
        self.link_failures: collections.OrderedDict[tuple[str, int], str] = collections.OrderedDict()
        # Set by request_stop() (the control API's `gnut stop`): app/runner.py then stops the node.
        self.shutdown = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------
    async def start(self) -> tuple[str, int]:
        """Scan shares, listen, start housekeeping and dial the configured peers.

        Returns:
            The (host, port) actually listened on (port 0 picks a free one).
        """
        from gnut.runtime.downloads import QUEUE_FILE, DownloadQueue
        from gnut.runtime.transfers import Transfers

        loop = asyncio.get_running_loop()
        self.transfers = Transfers(self)
        self.share = self.transfers.share
        if self.cfg.tls:
            self.tls = _tls_contexts(self.cfg.home)
        await self.transfers.scan()
        # The queue is the control API's: a node without one (a client's short-lived leaf, a test
        # node) keeps it in memory and never touches the queue file of a node sharing its home.
        queue_path = self.cfg.home / QUEUE_FILE if self.cfg.control else None
        self.downloads = DownloadQueue(self, self.transfers, queue_path, self.cfg.max_downloads)
        self.downloads.load()
        self._server = await loop.create_server(
            lambda: Peer(self, outgoing=False), self.cfg.listen_host, self.cfg.listen_port, reuse_address=True
        )
        sock = self._server.sockets[0].getsockname()
        # What we advertise (pongs, hits, PUSH, Listen-IP). A wildcard bind has no address of
        # its own: loopback until a peer tells us how it sees us (Remote-IP).
        self.wildcard = sock[0] in WILDCARDS
        self.address = ("127.0.0.1" if self.wildcard else sock[0], sock[1])
        self.handshake_config = self._handshake_config()
        self.address_changed()
        if self.wildcard:
            log.info("listening on %s:%d (every interface; our address is advertised once peers tell it) "
                     "as %s%s (%d file(s) shared)", sock[0], sock[1], self.cfg.mode,
                     " (auto)" if self.cfg.auto_role else "", len(self.share))
        else:
            log.info("listening on %s:%d as %s%s (%d file(s) shared)", *self.address, self.cfg.mode,
                     " (auto)" if self.cfg.auto_role else "", len(self.share))
        await start_udp(self)
        self.spawn(self._housekeeping())
        for host, port in self.cfg.connect:
            # Cached unverified: saved and passed on only once it completed a handshake.
            self.hosts.add(host, port, "config", time.time())
            self.dial(host, port)
        if self.cfg.dht:
            from gnut.runtime.dht import start_for_node

            self.dht = await start_for_node(self)
        for service in self.services:
            await service.start()
        self.downloads.schedule()
        return self.address

    def request_stop(self) -> None:
        """Ask whoever runs the node (app/runner.py) to stop it: BYE 200 to peers, clean exit."""
        log.info("stop requested through the control API")
        self.shutdown.set()

    async def stop(self) -> None:
        """Send BYE 200 to every peer, close the listener and wait for the links to go."""
        if self.stopping:
            return
        self.stopping = True
        for service in reversed(self.services):
            await service.stop()
        self.searches.save_spam_state()
        if self.dht is not None:
            await self.dht.stop()
        if self._server is not None:
            self._server.close()
        stop_udp(self)
        for p in list(self.peers.values()):
            p.send_bye(200, "Servent shutdown")
        if self.downloads is not None:
            await self.downloads.stop()
        for t in list(self._tasks):
            t.cancel()
        if self.transfers is not None:
            await self.transfers.stop()
        await asyncio.sleep(0)
        deadline = time.monotonic() + 2.0
        while self.peers and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for p in list(self.peers.values()):
            if p.transport is not None:
                p.transport.abort()
        if self._server is not None:
            # wait_closed() also waits for connections the server accepted (uvloop, 3.12+):
            # one that a peer opened during shutdown must not hold the exit up.
            try:
                async with asyncio.timeout(SERVER_CLOSE_WAIT):
                    await self._server.wait_closed()
            except TimeoutError:
                log.info("listener closed with connections still attached")
        try:
            self.hosts.save()
        except OSError as exc:
            log.warning("could not save host cache: %s", exc)

    def address_changed(self) -> None:
        """Our advertised address is set or changed: peers' addresses are judged against it."""
        self.hosts.policy = AddressPolicy(self.address[0])

    def ban(self, spec: str) -> str:
        """Add an address or CIDR to the hostiles list at run time and to $GNUT_HOME/hostiles.txt.

        Links from a banned address are closed at once; it is never dialled again.

        Returns:
            The normal form of what was banned.

        Raises:
            ValueError: `spec` is not an address or network.
            OSError: the hostiles file could not be written.
        """
        entry = self.hostiles.add(spec)
        self.trust["bans"] += 1
        log.info("banned %s", entry)
        for p in list(self.peers.values()):
            if p.addr is not None and p.addr[0] in self.hostiles:
                self.trust["closed_banned"] += 1
                if p.established:
                    p.send_bye(403, "Banned")
                else:
                    p.close("banned")
        persist_ban(self.cfg.home / HOSTILES_FILE, entry)
        return entry

    def _handshake_config(self) -> hs.HandshakeConfig:
        # A wildcard bind has no address of its own: advertise none until peers agree on ours.
        listen_ip = "" if self.address_unknown else self.address[0]
        return hs.HandshakeConfig(mode=self.cfg.mode, listen_ip=listen_ip, listen_port=self.address[1],
                                  accept_deflate=self.cfg.deflate, tls=self.tls is not None)

    @property
    def address_unknown(self) -> bool:
        """A wildcard bind whose address our peers have not agreed on yet: nothing to advertise."""
        return self.wildcard and self.addr_votes.current is None

    def on_connect_back(self, peer: Peer) -> None:
        self.reach.on_connect_back_received(peer.transport)

    def set_role(self, mode: str) -> None:
        """Become `mode` (auto role election): BYE 200 to every link (they agreed our old role), redial."""
        for p in list(self.peers.values()):
            p.send_bye(200, "Changing role")
        self.cfg.mode = mode
        self.router.set_mode(mode)
        self.handshake_config = self._handshake_config()
        self._qrp_sent.clear()
        self._qrp_dirty = True

    def tls_context(self, server_side: bool):
        """The TLS context for a link (None when TLS is off or could not be set up)."""
        return self.tls.get(server_side) if self.tls is not None else None

    def spawn(self, coro) -> asyncio.Task:
        """Run `coro` as a task the node cancels on stop."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task failed: %r", task.exception(), exc_info=task.exception())

    def next_peer_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def new_guid(self) -> bytes:
        return new_guid()

    # --- the hot path ---------------------------------------------------------------------
    def mark_dirty(self, peer: Peer) -> None:
        self._dirty.append(peer)

    def flush(self) -> None:
        """Write what this burst queued: one send per target peer."""
        dirty = self._dirty
        if dirty:
            self._dirty = []
            bases = self._slot_bases
            for p in dirty:
                p.flush()
                if p.slot >= 0:
                    bases[p.slot] = self._base_of(p)

    def on_frames(self, peer: Peer, msgs: list) -> None:
        """Route a chunk's messages and queue the relayed copies per target.

        Strategy: the Router's RelayCore settles runs of common relayed QUERYs in C, appending
        copies straight into the targets' output buffers (flow control as Peer.enqueue); it
        stops at each message Python must see, which goes through Router.route (STOP_ROUTE) or,
        already relayed, only to local delivery (STOP_LOCAL). Per-peer counts are folded in once
        per chunk. `-v` (one log line per message) routes everything through Router.route.
        """
        now = time.monotonic()
        router = self.router
        route = router.route
        peers = self.peers
        sent = self.sent
        verbose = self.cfg.verbose > 0  # -v: one log line per message
        # Dynamic querying: an ultrapeer's leaves' queries reach other ultrapeers step by step.
        dq = self.dq if self.dq.enabled else None
        dq_leaf = dq is not None and peer.role == rt.PeerRole.LEAF
        core = router.core if router.use_core and not verbose and router.core.active else None
        if core is not None:
            router.set_local_words(self.share.all_words() if self.share is not None else None)
            targets, bufs, bases = self._slot_peers, self._slot_bufs, self._slot_bases
        n_msgs = len(msgs)
        i = 0
        try:
            while i < n_msgs:
                if core is not None:
                    i, kind = core.relay(peer.id, msgs, i, now, bufs, bases, LOW_WATER, HIGH_WATER)
                    if kind == STOP_END:
                        break
                    msg = msgs[i]
                    i += 1
                    if kind == STOP_LOCAL:
                        try:
                            self._local(peer, msg)
                        except RemoteProtocolError as exc:
                            router.drops[rt.DropReason.MALFORMED] += 1
                            log.debug("malformed QUERY from %s: %s", peer.describe(), printable(str(exc)))
                        if peer.closed:
                            return
                        continue
                else:
                    msg = msgs[i]
                    i += 1
                dec = route(peer.id, msg, now)
                if verbose:
                    flow.debug("%s from %s ttl=%d hops=%d -> %s %s", TYPE_NAMES.get(msg.type, hex(msg.type)),
                               peer.describe(), msg.ttl, msg.hops, dec.action.name,
                               dec.reason.name if dec.reason else "")
                if dec.action == rt.Action.DROP:
                    if dec.disconnect:
                        peer.send_bye(dec.bye_code or 400, dec.reason.name.replace("_", " ").lower())
                        return
                    if dec.reason is rt.DropReason.DUPLICATE and self._duplicate_abuse(peer, msg, now):
                        return
                    continue
                if dq is not None:
                    if msg.type == MSG_QUERYHIT:
                        dq.on_hit(msg)
                    elif dq_leaf and msg.type == MSG_QUERY and dec.targets:
                        dec = dq.on_leaf_query(peer, msg, dec)
                if dec.targets:
                    if dec.ttl == msg.ttl - 1:
                        out = relay_rewrite(msg.raw)
                    else:
                        raw = msg.raw
                        out = raw[:17] + bytes((dec.ttl, msg.hops + 1)) + raw[19:]
                    prio = shed_priority(msg.type, msg.hops)
                    n = 0
                    for t in dec.targets:
                        p = peers.get(t)
                        if p is not None:
                            if p.enqueue(out, prio):
                                n += 1
                            else:
                                router.drops[rt.DropReason.FLOW_CONTROL] += 1
                    sent[msg.type] += n
                if dec.local:
                    try:
                        self._local(peer, msg)
                    except RemoteProtocolError as exc:
                        router.drops[rt.DropReason.MALFORMED] += 1
                        log.debug("malformed %s from %s: %s", TYPE_NAMES.get(msg.type), peer.describe(),
                                  printable(str(exc)))
                if peer.closed:
                    return
        finally:
            if core is not None:
                copies, dups, unseen, rows = core.end_chunk()
                if copies:
                    sent[MSG_QUERY] += copies
                if dups:
                    peer.dups += dups
                if unseen:  # relayed queries that cannot match our shares: seen, not decoded
                    self.events["queries_seen"] += unseen
                for k, appended, shed, filled in rows:
                    p = targets[k]
                    p.msgs_out += appended
                    p.shed += shed
                    if filled:
                        self.mark_dirty(p)

    def _duplicate_abuse(self, peer: Peer, msg, now: float) -> bool:
        """Count a duplicate from `peer`; BYE it (True) when it replays its own broadcasts too often."""
        peer.dups += 1
        if self.router.first_sender(msg.guid, msg.type, now) != peer.id:
            return False  # first seen from another link: normal in a meshed network
        if now - peer.dup_window_start > DUP_WINDOW:
            peer.dup_window_start = now
            peer.dups_resent = 0
        peer.dups_resent += 1
        if peer.dups_resent <= DUP_RESENT_MAX:
            return False
        self.events["bye_duplicates"] += 1
        log.info("%s resent %d broadcasts within %.0f s: BYE", peer.describe(), peer.dups_resent, DUP_WINDOW)
        peer.send_bye(BYE_DUPLICATES, "Too many duplicates")
        return True

    # --- messages for us -------------------------------------------------------------------
    def _local(self, peer: Peer, msg) -> None:
        t = msg.type
        if t == MSG_QUERY:
            self._answer_query(peer, msg)
        elif t == MSG_QUERYHIT:
            self.searches.on_hit(peer, msg)
        elif t == MSG_PING:
            self._answer_ping(peer, msg)
        elif t == MSG_PONG:
            self._on_pong(peer, msg)
        elif t == MSG_PUSH:
            push = messages.Push.decode(msg.payload)
            # A PUSH makes us connect out to the address it names: the same trust as any address
            # a peer hands us (no bogons, no LAN unless we are on it, no hostiles).
            why = self.hosts.check(push.ip, push.port)
            if why is not None:
                self.trust[f"push_{why}"] += 1
                return
            self.transfers.on_push(push, peer, msg.hops)
        elif t == MSG_BYE:
            bye = messages.Bye.decode(msg.payload)
            peer.close(f"peer said BYE {bye.code} {bye.reason}")
        elif t == MSG_QRP:
            self._on_qrp(peer, msg)
        elif t in (MSG_VENDOR, MSG_VENDOR_STD):
            if not (self.reach.on_vendor(peer, msg) or self.pushproxy.on_vendor(peer, msg)
                    or self.dq.on_vendor(peer, msg)):
                self.events["vendor_ignored"] += 1

    def send_to(self, peer: Peer, mtype: int, payload: bytes, ttl: int, guid: bytes | None = None) -> bytes:
        raw = messages.build(guid or new_guid(), mtype, ttl, 0, payload)
        if peer.enqueue(raw, PRIO_KEEP):
            self.sent[mtype] += 1
        return raw

    def _answer_query(self, peer: Peer, msg) -> None:
        q = messages.Query.decode(msg.payload)
        self.events["queries_seen"] += 1
        if q.firewalled and self.reach.firewalled():
            self.events["queries_fw_to_fw"] += 1  # neither side could connect to the other
            return
        files = self.share.match(q.text, q.urns, self.cfg.max_results_per_query)
        if not files:
            return
        self.events["queries_answered"] += 1
        served = self.transfers.hits_served
        for sf in files:
            served[sf.urn] += 1
        ttl = min(msg.hops + 2, SOFT_TTL_LIMIT) if msg.hops else 1
        local = None
        if self.address_unknown and peer.transport is not None:  # no learned address: the one this link reached
            sock = peer.transport.get_extra_info("sockname")
            local = sock[0] if sock else None
        payloads = self.transfers.hit_payloads(files, ggep_h=bool(q.flags & messages.QF_GGEP_H), local_ip=local)
        if self.oob is not None and self.oob.offer(msg, q, payloads, peer.addr[0] if peer.addr else None):
            return  # out of band: the hits go by UDP once the querier claims them
        for payload in payloads:
            self.send_to(peer, MSG_QUERYHIT, payload, ttl=max(ttl, 1), guid=msg.guid)

    def our_pong(self) -> messages.Pong:
        host, port = self.address
        ggep = tuple(self.dht.pong_ggep()) if self.dht is not None else ()
        if self.tls is not None:
            ggep += (messages.GgepItem("TLS", b""),)  # we accept direct TLS
        return messages.Pong(port=port, ip=host, files=len(self.share), kbytes=self.share.total_kbytes, ggep=ggep)

    def _answer_ping(self, peer: Peer, msg) -> None:
        ttl = msg.hops + 1
        crawler = msg.ttl == 2 and msg.hops == 0
        if not crawler and not self.address_unknown:  # unlearned wildcard: no address to advertise yet
            self.send_to(peer, MSG_PONG, self.our_pong().encode(), ttl, guid=msg.guid)
        if msg.ttl > 1:
            # Only proven hosts are passed on: cached pongs of hosts the cache holds as good.
            good = self.hosts.is_good
            rows = [v for k, v in reversed(self.pong_cache.items()) if k != peer.listen_addr and good(*k)]
            for payload in rows[:PONG_REPLY_MAX]:
                self.send_to(peer, MSG_PONG, payload, ttl, guid=msg.guid)

    def _on_pong(self, peer: Peer, msg) -> None:
        pong = messages.Pong.decode(msg.payload)
        key = (pong.ip, pong.port)
        if key == self.address or not pong.port:
            return
        # A pong is solicited when it answers one of our PINGs or is the neighbour's own (hops 0);
        # an unsolicited one (hops > 0, a PING we never sent) names a host nobody vouches for.
        if msg.hops and not self.router.is_own_ping(msg.guid, time.monotonic()):
            self.trust["pong_unsolicited"] += 1
            return
        if self.dht is not None:
            self.dht.offer_pong(pong.ip, pong.port, pong.ggep)  # a pong saying "DHT active" seeds the DHT
        why = self.hosts.add(pong.ip, pong.port, "pong", time.time(), via=peer.addr[0] if peer.addr else None)
        if why is not None:
            self.trust[f"pong_{why}"] += 1
            return
        if messages.find(pong.ggep, "TLS") is not None:
            self.tls_hosts[key] = True  # dial it with direct TLS
            while len(self.tls_hosts) > TLS_HOSTS_MAX:
                self.tls_hosts.popitem(last=False)
        self.pong_cache[key] = msg.payload
        self.pong_cache.move_to_end(key)
        while len(self.pong_cache) > PONG_CACHE_SIZE:
            self.pong_cache.popitem(last=False)

    def send_ping(self, peer: Peer, ttl: int = 1) -> None:
        guid = new_guid()
        self.router.register_own(guid, MSG_PING, time.monotonic())
        self.send_to(peer, MSG_PING, b"", ttl, guid=guid)

    # --- QRP ----------------------------------------------------------------------------------
    def _on_qrp(self, peer: Peer, msg) -> None:
        if peer.qrp is None:
            peer.qrp = qrp.QrpReceiver()
        try:
            done = peer.qrp.apply(messages.decode_qrp(msg.payload))
        except RemoteProtocolError as exc:
            self.events["qrp_rejected"] += 1
            log.info("bad QRP table from %s: %s", peer.describe(), printable(str(exc)))
            peer.send_bye(413, "Bad QRP table")
            return
        if done:
            self.router.set_qrp(peer.id, peer.qrp.table)
            self.qrp_changed()
            log.debug("QRP table from %s installed", peer.describe())

    def wants_our_qrp(self, peer: Peer) -> bool:
        """Leaves send their table to ultrapeers; ultrapeers to ultrapeers that route on it."""
        if self.cfg.mode == "leaf":
            return peer.role == rt.PeerRole.ULTRAPEER
        if self.cfg.mode == "ultrapeer" and peer.role == rt.PeerRole.ULTRAPEER and peer.peer_headers is not None:
            return peer.peer_headers.get("X-Ultrapeer-Query-Routing") is not None
        return False

    def our_qrp_table(self) -> qrp.QrpTable:
        """Our shares' words, merged with our leaves' tables when we are an ultrapeer."""
        # The shares' part is hashed once per share generation (on a 100k-file share that is
        # ~1 s of CPU: rebuilding it for every new link let one address burn the loop by reconnecting).
        key = (id(self.share), self.share.generation)
        if self._share_qrp is None or self._share_qrp[0] != key:
            own = qrp.QrpTable()
            own.add_words(self.share.all_words())
            # URNs too, so urn:sha1 queries (source searches of downloads) reach us through QRP.
            own.add_words(sf.urn for sf in self.share.files)
            self._share_qrp = (key, own)
        table = qrp.QrpTable()
        table.merge(self._share_qrp[1])
        if self.cfg.mode == "ultrapeer":
            for p in self.peers.values():
                if p.role == rt.PeerRole.LEAF and p.qrp is not None and p.qrp.table is not None:
                    table.merge(p.qrp.table)
        return table

    def current_qrp_table(self) -> qrp.QrpTable:
        """our_qrp_table(), built once per change (qrp_changed) and shared by every link."""
        if self._qrp_table is None:
            self._qrp_table = self.our_qrp_table()
            self._qrp_full = None
        return self._qrp_table

    def send_qrp(self, peer: Peer, table: qrp.QrpTable | None = None) -> None:
        if not peer.established or not self.wants_our_qrp(peer):
            return
        table = table or self.current_qrp_table()
        prev = self._qrp_sent.get(peer.id)
        if prev is table or (prev is not None and prev.same_as(table)):
            return
        if prev is None and table is self._qrp_table:
            if self._qrp_full is None:
                self._qrp_full = [m.encode() for m in table.to_messages(None)]
            payloads = self._qrp_full
        else:
            payloads = [m.encode() for m in table.to_messages(prev)]
        for payload in payloads:
            self.send_to(peer, MSG_QRP, payload, 1)
        self._qrp_sent[peer.id] = table

    def qrp_changed(self) -> None:
        """Our table must be rebuilt and sent again (shares, a leaf's table, a leaf gone)."""
        self._qrp_dirty = True
        self._qrp_table = None

    def shares_changed(self) -> None:
        self.qrp_changed()

    # --- housekeeping --------------------------------------------------------------------------
    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.tick_interval)
            try:
                self.tick(time.monotonic())
            except Exception:  # a bug here must not stop keep-alives for good
                log.exception("housekeeping failed")

    def tick(self, now: float) -> None:
        # Forget addresses that stopped connecting: the storm table holds only the last minute.
        for ip in [ip for ip, q in self._accepts.items() if not q or now - q[-1] > 60.0]:
            del self._accepts[ip]
        for p in list(self.peers.values()):
            if p.closed:
                continue
            if not p.established or (p.tls is not None and not p.tls.done):
                if now - p.started > self.handshake_timeout:  # the TLS handshake has the same deadline
                    self.events["handshake_timeouts"] += 1
                    self.limits.refuse("deadline", f"{p.describe()} not through the handshake in time")
                    p.close("handshake timeout")
                continue
            silent = now - p.last_rx
            if silent > self.idle_close_after and p.ping_sent_at:
                self.events["idle_closed"] += 1
                p.send_bye(406, "Ping unanswered")
            elif silent > self.idle_ping_after and (not p.ping_sent_at or now - p.ping_sent_at > self.idle_ping_after):
                p.ping_sent_at = now
                self.events["keepalive_pings"] += 1
                self.send_ping(p, 1)
            elif silent < self.idle_ping_after:
                p.ping_sent_at = 0.0
        if self._qrp_dirty:
            self._qrp_dirty = False
            table = None
            for p in list(self.peers.values()):
                if p.established and self.wants_our_qrp(p):
                    table = table or self.current_qrp_table()
                    self.send_qrp(p, table)
        self.searches.tick(now)
        self.reach.tick(now)
        self.pushproxy.tick()
        self._samples.append((now, *self.byte_counters()))
        if self.transfers is not None:
            self.transfers.maybe_rescan(now)
        self._keep_links(now)
        self.flush()
        if now - self._last_save > HOSTS_SAVE_EVERY:
            self._last_save = now
            try:
                self.hosts.save()
            except OSError as exc:
                log.warning("could not save host cache: %s", exc)

    def _keep_links(self, now: float) -> None:
        """Dial from the host cache until we have `out_links` links (a leaf: ultrapeers)."""
        if self.stopping:
            return
        have = sum(1 for p in self.peers.values() if p.role != rt.PeerRole.LEAF or not p.established)
        want = self.cfg.out_links - have - len(self._dialing)
        if want <= 0:
            return
        exclude = {p.listen_addr for p in self.peers.values() if p.listen_addr} | self._dialing | {self.address}
        for host, port in self.hosts.pick(min(want, MAX_PARALLEL_DIALS), time.time(), exclude, self.rng):
            self.dial(host, port)

    # --- views: runtime/nodeviews.py (stats, traffic, link failures) ---------------------------------


__all__ = ["Node", "Service", "ProtocolError"]
