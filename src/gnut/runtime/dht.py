"""The DHT on a UDP socket: drives gnut.dht.DhtCore with datagrams and the loop's clock.

Strategy: the service speaks to the network only through a small transceiver interface,
`register(msg_type, handler(datagram, addr))` and `send(datagram, addr)`: in a node that is
the node's UDP transceiver (runtime/udp.py: per-source rate limit, bounded queue, the Gnutella
header checked before the handler sees the datagram); `UdpEndpoint` here implements the same
interface on a bare asyncio DatagramProtocol, for a node run with `udp = false` and for
DHT-only processes (the loopback tests run 30 of them).  A tick task drives timeouts, refreshes and republication.  The routing
table (and our KUID: Mojito nodes keep theirs) is saved atomically in $GNUT_HOME/dht.json
and re-pinged at start, so a restart rejoins without a bootstrap address.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from gnut.dht import aloc, wire
from gnut.dht.core import ACTIVE, PASSIVE_LEAF, DhtCore, DhtLimits
from gnut.errors import RemoteProtocolError
from gnut.protocol import ggep
from gnut.runtime.fsutil import atomic_write_json, read_json

log = logging.getLogger("gnut.dht")

# How often the core's timers run (RPC timeouts are seconds; a quarter second is plenty).
TICK = 0.25
# Saved contacts re-pinged at start (the closest buckets' worth; more is wasted datagrams).
MAX_SAVED_CONTACTS = 200
# How often the table is saved and the shared files' ALOCs are brought up to date.
SAVE_EVERY = 300.0
SYNC_SHARES_EVERY = 60.0
# Datagrams shorter than a Gnutella header are not dispatched.
GTA_HEADER_LEN = 23
# Gnutella hosts whose pong said "active DHT node" that we PING, remembered so each is tried once
# (bounded: pongs arrive by the thousand on a busy ultrapeer).
MAX_PONG_SEEDS = 512
# Below this many contacts, pongs of DHT nodes are used to seed the routing table.
SEED_FROM_PONGS_BELOW = 20
# The mode byte of the pong GGEP "DHT" extension (gtk-gnutella's dht_mode_t).
PONG_DHT_MODES = {ACTIVE: 1, "passive": 2, PASSIVE_LEAF: 3}

# Default wait for one lookup (a converged lookup on the Internet takes a few seconds).
LOOKUP_TIMEOUT = 20.0
# Own ALOC publications running at once: a 10,000-file library must not start 10,000 lookups.
PUBLISH_CONCURRENCY = 4


class Transceiver(Protocol):
    """What the DHT needs of a UDP socket."""

    def register(self, msg_type: int, handler: Callable[[bytes, tuple[str, int]], None]) -> None: ...
    def send(self, data: bytes, addr: tuple[str, int]) -> None: ...


class UdpEndpoint(asyncio.DatagramProtocol):
    """A minimal transceiver: one UDP socket, handlers by Gnutella function byte."""

    def __init__(self) -> None:
        self.handlers: dict[int, Callable[[bytes, tuple[str, int]], None]] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.drops: dict[str, int] = {}

    async def open(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        return self.transport.get_extra_info("sockname")[:2]

    def register(self, msg_type: int, handler: Callable[[bytes, tuple[str, int]], None]) -> None:
        self.handlers[msg_type] = handler

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, addr)

    def datagram_received(self, data: bytes, addr) -> None:
        if len(data) < GTA_HEADER_LEN:
            self.drops["short"] = self.drops.get("short", 0) + 1
            return
        handler = self.handlers.get(data[16])
        if handler is None:
            self.drops["unhandled_type"] = self.drops.get("unhandled_type", 0) + 1
            return
        handler(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable and the like
        self.drops["socket_error"] = self.drops.get("socket_error", 0) + 1

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class DhtService:
    """One DHT node on `transceiver`, reachable at `address`."""

    def __init__(
        self,
        transceiver: Transceiver,
        address: tuple[str, int],
        *,
        home: Path | None = None,
        mode: str = ACTIVE,
        bootstrap: Iterable[tuple[str, int]] = (),
        limits: DhtLimits | None = None,
        shared: Callable[[], list[tuple[bytes, int]]] | None = None,
        servent_guid: bytes = bytes(16),
        tcp_port: int | None = None,
        firewalled: bool = False,
    ) -> None:
        self.transceiver = transceiver
        self.path = Path(home) / "dht.json" if home is not None else None
        saved = read_json(self.path, {}) if self.path is not None else {}
        if not isinstance(saved, dict):  # a damaged file: start afresh rather than fail
            saved = {}
        kuid = _hex(saved.get("kuid"), wire.KUID_LEN)
        now = time.monotonic()
        self.core = DhtCore(address[0], address[1], now, kuid=kuid, mode=mode, limits=limits)
        contacts = saved.get("contacts")
        self.saved_contacts = [
            (c[1], c[2])
            for c in (contacts if isinstance(contacts, list) else [])[:MAX_SAVED_CONTACTS]
            if isinstance(c, list)
            and len(c) == 3
            and isinstance(c[1], str)
            and isinstance(c[2], int)
            and 0 < c[2] < 65536
        ]
        self.bootstrap_addrs = list(bootstrap)
        self.shared = shared
        self.servent_guid = servent_guid
        self.tcp_port = tcp_port or address[1]
        self.firewalled = firewalled
        self._task: asyncio.Task | None = None
        self._last_save = now
        self._last_sync = -SYNC_SHARES_EVERY
        self.published_files: set[bytes] = set()
        self.to_publish: dict[bytes, int] = {}  # sha1 -> size, waiting for a publication slot
        self.publishing = 0
        self.endpoint: UdpEndpoint | None = None  # closed on stop when the service opened it
        self.pong_seeds: set[tuple[str, int]] = set()

    @property
    def address(self) -> tuple[str, int]:
        return self.core.me.addr

    async def start(self) -> None:
        self.transceiver.register(wire.MSG_DHT, self.on_datagram)
        now = time.monotonic()
        self.core.bootstrap(self.bootstrap_addrs + self.saved_contacts, now)
        self.flush()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.core.shutdown(time.monotonic())
        self.flush()
        self.save()
        if self.endpoint is not None:
            self.endpoint.close()

    def on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        self.core.receive(data, addr, time.monotonic())
        self.flush()

    def flush(self) -> None:
        for data, addr in self.core.take_outbox():
            self.transceiver.send(data, addr)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            try:
                self.core.tick(now)
                if self.shared is not None and now - self._last_sync >= SYNC_SHARES_EVERY:
                    self._last_sync = now
                    self.sync_shares()
                self.publish_pending(now)
                if now - self._last_save >= SAVE_EVERY:
                    self._last_save = now
                    self.save()
            except Exception:  # a bug here must not stop the DHT for good
                log.exception("DHT tick failed")
            self.flush()

    # --- operations ---------------------------------------------------------------------
    async def _wait(self, start: Callable[[Callable], object], timeout: float):
        fut: asyncio.Future = asyncio.get_running_loop().create_future()

        def done(op) -> None:
            if not fut.done():
                fut.set_result(op)

        start(done)
        self.flush()
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            return None

    async def find_value(
        self, key: bytes, vtype: bytes = wire.VT_ANY, timeout: float = LOOKUP_TIMEOUT
    ) -> list[wire.DhtValue]:
        op = await self._wait(lambda cb: self.core.find_value(key, time.monotonic(), vtype, cb), timeout)
        return op.lookup.unique_values() if op is not None else []

    async def find_sources(self, sha1: bytes, timeout: float = LOOKUP_TIMEOUT) -> list[tuple[str, int]]:
        """Download addresses of the file with this SHA-1, from ALOC values in the DHT."""
        return aloc.sources(await self.find_value(sha1, wire.VT_ALOC, timeout))

    async def publish(self, key: bytes, vtype: bytes, data: bytes, timeout: float = LOOKUP_TIMEOUT) -> int:
        """Store a value of ours; returns how many roots accepted it."""
        op = await self._wait(
            lambda cb: self.core.publish(key, vtype, data, time.monotonic(), callback=cb), timeout
        )
        return op.stores_ok if op is not None else 0

    def pong_ggep(self) -> tuple[ggep.GgepItem, ...]:
        """The GGEP "DHT" item our Gnutella pongs carry: version major, minor, mode (gtk-gnutella's layout)."""
        mode = PONG_DHT_MODES[self.core.mode]
        return (ggep.GgepItem("DHT", bytes((*wire.VERSION, mode))),)

    def offer_pong(self, host: str, port: int, items) -> None:
        """A Gnutella pong: when it says "active DHT node" and our table is thin, PING that address."""
        data = ggep.find(items, "DHT")
        if data is None or len(data) < 3 or data[2] != PONG_DHT_MODES[ACTIVE]:
            return
        addr = (host, port)
        if len(self.core.table) >= SEED_FROM_PONGS_BELOW or addr in self.pong_seeds:
            return
        if len(self.pong_seeds) >= MAX_PONG_SEEDS:
            return
        self.pong_seeds.add(addr)
        self.core.ping(addr, time.monotonic())
        self.flush()

    def aloc_data(self, size: int) -> bytes:
        return aloc.encode_aloc(aloc.Aloc(self.servent_guid, self.tcp_port, size, self.firewalled))

    async def find_alocs(
        self, sha1: bytes, timeout: float = LOOKUP_TIMEOUT
    ) -> list[tuple[str, int, aloc.Aloc]]:
        """(host, port, ALOC) of each reachable source of the file with this SHA-1."""
        out = []
        for v in await self.find_value(sha1, wire.VT_ALOC, timeout):
            try:
                a = aloc.decode_aloc(v.data)
            except RemoteProtocolError:
                continue
            if not a.firewalled and a.port:
                out.append((v.creator.host, a.port, a))
        return out

    def sync_shares(self) -> None:
        """Queue an ALOC for each newly shared file; withdraw the removed ones."""
        files = dict(self.shared())
        for sha1 in (self.published_files | self.to_publish.keys()) - files.keys():
            self.core.unpublish(sha1, wire.VT_ALOC)
            self.published_files.discard(sha1)
            self.to_publish.pop(sha1, None)
        for sha1, size in files.items():
            if sha1 not in self.published_files:
                self.to_publish[sha1] = size

    def publish_pending(self, now: float) -> None:
        """Start queued ALOC publications while fewer than PUBLISH_CONCURRENCY run (once we have contacts)."""
        while self.to_publish and self.publishing < PUBLISH_CONCURRENCY and self.core.bootstrapped:
            sha1 = next(iter(self.to_publish))
            size = self.to_publish.pop(sha1)
            self.publishing += 1
            self.published_files.add(sha1)
            self.core.publish(sha1, wire.VT_ALOC, self.aloc_data(size), now, callback=self._published)

    def _published(self, op) -> None:
        self.publishing -= 1

    def save(self) -> None:
        if self.path is None:
            return
        contacts = self.core.table.closest(self.core.kuid, MAX_SAVED_CONTACTS)
        try:
            atomic_write_json(
                self.path,
                {
                    "kuid": self.core.kuid.hex(),
                    "contacts": [[c.kuid.hex(), c.host, c.port] for c in contacts],
                },
            )
        except OSError as exc:
            log.warning("could not save the DHT routing table: %s", exc)

    def status(self) -> dict:
        st = self.core.status()
        st["published_files"] = len(self.published_files)
        st["publish_queue"] = len(self.to_publish)
        return st


async def start_for_node(node) -> DhtService:
    """Open the node's DHT (UDP on its listen port) and start it; `node` is the runtime Node."""
    cfg = node.cfg
    limits = DhtLimits()
    if cfg.dht_per_net24 is not None:
        n = cfg.dht_per_net24
        limits = DhtLimits(n, max(n, limits.per_net24_table), n, limits.rate_per_source, limits.rate_burst)
    if cfg.dht_rate is not None:
        limits.rate_per_source = cfg.dht_rate
        limits.rate_burst = max(limits.rate_burst, 3 * cfg.dht_rate)
    mode = cfg.dht_mode
    if mode == "auto":
        mode = PASSIVE_LEAF if cfg.firewalled else ACTIVE
    udp = getattr(node, "udp", None)  # the node's UDP transceiver (runtime/udp.py), when it has one
    ep = None
    if udp is not None and udp.address is not None:
        transceiver, bound = udp, udp.address
    else:  # UDP services off (udp = false): the DHT opens the port itself
        ep = UdpEndpoint()
        bound = await ep.open(cfg.listen_host, node.address[1])
        transceiver = ep

    def shared() -> list[tuple[bytes, int]]:
        share = node.share
        return [(sf.sha1, sf.size) for sf in share.files] if share is not None else []

    svc = DhtService(
        transceiver,
        (node.address[0], bound[1]),
        home=cfg.home,
        mode=mode,
        bootstrap=cfg.dht_bootstrap,
        limits=limits,
        shared=shared,
        servent_guid=node.servent_guid,
        tcp_port=node.address[1],
        firewalled=cfg.firewalled,
    )
    svc.endpoint = ep
    await svc.start()
    log.info("DHT %s on UDP %s:%d as %s", mode, *svc.address, svc.core.kuid.hex())
    return svc


def _hex(text, length: int) -> bytes | None:
    try:
        raw = bytes.fromhex(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return raw if raw is not None and len(raw) == length else None
