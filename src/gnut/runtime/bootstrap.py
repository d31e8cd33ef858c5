"""Finding a first peer: the host cache, then UDP host caches, then GWebCaches, with back-off.

Strategy: `Bootstrap.run` wakes every `tick` seconds while the node has no established link:
1. host cache: if it holds addresses, the node's own link keeper dials them; we give it
   `hostcache_grace` seconds before asking anyone else;
2. UHCs: ping the next UHC whose back-off has passed with GGEP SCP (runtime/udpnode.py takes
   its pong: IPP hosts go to the host cache, PHC caches to our UHC list), wait `uhc_timeout`;
3. GWebCaches: `get` from the next cache whose back-off has passed; its `h|` hosts go to the
   host cache, its `u|` URLs to our GWC list.
It stops as soon as the node has a link. Each UHC/GWC entry keeps its failures, last success
and next-try time (back-off doubling to BACKOFF_MAX), bounded (MAX_UHCS, MAX_GWCS) and saved
atomically in bootstrap.json. The shipped public lists (gnut/data/bootstrap.toml) are used only
when the user asked (`--bootstrap` / `bootstrap = true`); `--uhc`/`--gwc` entries always are.
Ultrapeers that accept connections announce themselves (`update`) to their configured caches.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.resources
import logging
import random
import socket
import time
import tomllib
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h11

from gnut import __version__
from gnut.constants import VENDOR_CODE
from gnut.protocol import gwc, vendor
from gnut.protocol.printable import printable
from gnut.runtime.fsutil import atomic_write_json, read_json

log = logging.getLogger("gnut.runtime.bootstrap")

# UHC and GWC entries we keep (user-given and learned): more is stale weight.
MAX_UHCS = 64
MAX_GWCS = 64
# Back-off after a failure: doubles from BACKOFF_BASE up to BACKOFF_MAX seconds.
BACKOFF_BASE = 30.0
BACKOFF_MAX = 6 * 3600.0
# A cache that answered is not asked again for this long (gtk-gnutella: one hour per GHC).
RETRY_AFTER_SUCCESS = 3600.0
# GWebCache HTTP: connect+reply deadline, and the largest reply we read.
GWC_TIMEOUT = 15.0
GWC_MAX_REPLY = 64 * 1024
# Hosts taken from one cache reply (gtk-gnutella parses at most 500; 100 fill a host cache well).
MAX_HOSTS_PER_REPLY = 100
# Announce ourselves to a cache at most this often (spec 1: every 60 minutes).
ANNOUNCE_EVERY = 3600.0
# Client name in GWC requests.
CLIENT = VENDOR_CODE.decode()


@dataclass
class CacheEntry:
    """One UHC ("host:port") or GWC (URL) with its history."""

    key: str
    source: str = "config"
    failures: int = 0
    next_try: float = 0.0
    last_success: float = 0.0
    last_failure: float = 0.0
    attempts: int = 0


def load_public_lists() -> tuple[list[str], list[str]]:
    """The shipped public UHC and GWC lists (gnut/data/bootstrap.toml)."""
    text = importlib.resources.files("gnut").joinpath("data", "bootstrap.toml").read_text()
    data = tomllib.loads(text)
    return list(data.get("uhc", {}).get("hosts", [])), list(data.get("gwc", {}).get("urls", []))


class CacheList:
    """A bounded list of caches with back-off (wall-clock times, persisted)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: collections.OrderedDict[str, CacheEntry] = collections.OrderedDict()

    def add(self, key: str, source: str) -> None:
        if key in self.entries:
            return
        if len(self.entries) >= self.capacity:
            # Forget a learned entry first; user-given ones stay.
            victim = next((k for k, e in self.entries.items() if e.source != "config"), None)
            if victim is None:
                return
            del self.entries[victim]
        self.entries[key] = CacheEntry(key, source)

    def ready(self, now: float) -> list[CacheEntry]:
        rows = [e for e in self.entries.values() if e.next_try <= now]
        rows.sort(key=lambda e: (e.source != "config", e.failures, e.attempts))
        return rows

    def failed(self, key: str, now: float) -> None:
        e = self.entries.get(key)
        if e is not None:
            e.failures += 1
            e.last_failure = now
            e.next_try = now + min(BACKOFF_MAX, BACKOFF_BASE * (2 ** min(e.failures - 1, 20)))

    def succeeded(self, key: str, now: float) -> None:
        e = self.entries.get(key)
        if e is not None:
            e.failures = 0
            e.last_success = now
            e.next_try = now + RETRY_AFTER_SUCCESS

    def rows(self) -> list[dict]:
        return [asdict(e) for e in self.entries.values()]

    def load(self, rows: Any) -> None:
        if not isinstance(rows, list):
            return
        for row in rows[: self.capacity]:
            try:
                e = CacheEntry(**{k: row[k] for k in CacheEntry.__dataclass_fields__ if k in row})
                e.key = str(e.key)
            except (TypeError, KeyError, ValueError):
                continue
            if e.key not in self.entries and len(self.entries) < self.capacity:
                self.entries[e.key] = e


def split_url(url: str) -> tuple[str, int, str] | None:
    """(host, port, path?query) of an http:// URL, else None."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        return None
    try:
        port = u.port or 80
    except ValueError:
        return None
    return u.hostname, port, (u.path or "/")


async def gwc_request(url: str, query: str, timeout: float = GWC_TIMEOUT) -> bytes:
    """GET url?query over HTTP/1.1 (h11); returns the body (at most GWC_MAX_REPLY bytes).

    The IP the cache answered from is in the returned bytes' `peer_ip` attribute (a GwcBody).

    Raises:
        OSError, TimeoutError, ValueError: unreachable, too slow, not http://, bad reply or status.
    """
    parts = split_url(url)
    if parts is None:
        raise ValueError(f"not an http:// URL: {url!r}")
    host, port, path = parts

    async def go() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        peer_ip = (writer.get_extra_info("peername") or ("",))[0]
        try:
            conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=16384)
            target = f"{path}?{query}"
            writer.write(conn.send(h11.Request(method="GET", target=target, headers=[
                ("Host", f"{host}:{port}"), ("User-Agent", f"gnut/{__version__}"), ("Connection", "close")])))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            body = bytearray()
            status = 0
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    conn.receive_data(await reader.read(8192))
                    continue
                if isinstance(ev, h11.Response):
                    status = ev.status_code
                elif isinstance(ev, h11.Data):
                    body += ev.data
                    if len(body) > GWC_MAX_REPLY:
                        raise ValueError("GWC reply too large")
                elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
            if status != 200:
                raise ValueError(f"GWC answered HTTP {status}")
            return GwcBody(bytes(body), peer_ip)
        except h11.ProtocolError as exc:
            raise ValueError(f"bad HTTP reply: {exc}") from None
        finally:
            writer.close()

    return await asyncio.wait_for(go(), timeout)


class GwcBody(bytes):
    """A GWebCache reply body that remembers the IP it came from (for address-scope checks)."""

    peer_ip: str

    def __new__(cls, data: bytes, peer_ip: str) -> GwcBody:
        obj = super().__new__(cls, data)
        obj.peer_ip = peer_ip
        return obj


class Bootstrap:
    """The bootstrap policy of one node (see the module strategy)."""

    def __init__(self, node: Any, udpnode: Any, path: Path | None) -> None:
        self.node = node
        self.udpnode = udpnode
        self.path = path
        cfg = node.cfg
        self.uhcs = CacheList(MAX_UHCS)
        self.gwcs = CacheList(MAX_GWCS)
        if path is not None:
            state = read_json(path, {})
            if isinstance(state, dict):
                self.uhcs.load(state.get("uhc"))
                self.gwcs.load(state.get("gwc"))
        for host, port in cfg.uhc:
            self.uhcs.add(f"{host}:{port}", "config")
        for url in cfg.gwc:
            self.gwcs.add(url, "config")
        if cfg.bootstrap:
            uhcs, gwcs = load_public_lists()
            for hp in uhcs:
                self.uhcs.add(hp, "public")
            for url in gwcs:
                self.gwcs.add(url, "public")
        self.events: collections.Counter[str] = collections.Counter()
        self.phase = "idle"
        self.rng = random.Random()
        self._uhc_pending: tuple[str, float] | None = None
        self._uhc_addr: tuple[str, int] | None = None
        self._last_announce = 0.0
        self._dirty = True
        if udpnode is not None:
            udpnode.on_uhc_reply = self._on_uhc_reply

    @property
    def enabled(self) -> bool:
        return bool(self.uhcs.entries or self.gwcs.entries)

    def has_links(self) -> bool:
        return any(p.established for p in self.node.peers.values())

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        atomic_write_json(self.path, {"uhc": self.uhcs.rows(), "gwc": self.gwcs.rows()})
        self._dirty = False

    # --- the loop ----------------------------------------------------------------------------------
    async def run(self) -> None:
        cfg = self.node.cfg
        started = time.monotonic()
        while True:
            try:
                await self._step(started)
            except Exception:  # a bug in one step must not end bootstrapping for good
                self.events["step_errors"] += 1
                log.exception("bootstrap step failed")
            await asyncio.sleep(cfg.bootstrap_tick)

    async def _step(self, started: float) -> None:
        """One round: done when linked; else the host cache's grace, then a UHC, then a GWC."""
        cfg = self.node.cfg
        now = time.monotonic()
        if self.has_links():
            if self.phase != "done":
                self.phase = "done"
                self.events["joined"] += 1
                log.info("bootstrap: linked to the network")
        else:
            self.phase = "bootstrapping"
            if len(self.node.hosts) and now - started < cfg.hostcache_grace:
                pass  # the node dials its host cache by itself
            elif not await self._try_uhc(now):
                await self._try_gwc()
        await self._announce()
        self.save()

    async def _try_uhc(self, now: float) -> bool:
        """Ping one UHC if one is due; True while a ping waits for its answer."""
        if self.udpnode is None or self.udpnode.udp.transport is None:
            return False
        pending = self._uhc_pending
        if pending is not None:
            if now - pending[1] < self.node.cfg.uhc_timeout:
                return True
            self.uhcs.failed(pending[0], time.time())
            self.events["uhc_timeouts"] += 1
            self._uhc_pending = None
            self._dirty = True
        for e in self.uhcs.ready(time.time()):
            host, _, port = e.key.rpartition(":")
            e.attempts += 1
            self._dirty = True
            if not (port.isascii() and port.isdigit()):
                self.uhcs.failed(e.key, time.time())
                continue
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, int(port), family=socket.AF_INET,
                                                                     type=socket.SOCK_DGRAM)
            except OSError:
                self.events["uhc_resolve_failed"] += 1
                self.uhcs.failed(e.key, time.time())
                continue
            addr = (infos[0][4][0], infos[0][4][1])
            self._uhc_pending = (e.key, now)
            self._uhc_addr = addr
            self.udpnode.ping_uhc(addr)
            self.events["uhc_pings"] += 1
            log.info("bootstrap: pinging UDP host cache %s", printable(e.key))
            return True
        return False

    def _on_uhc_reply(self, addr: tuple[str, int], hosts: list, caches: list) -> None:
        self.events["uhc_replies"] += 1
        self.events["uhc_hosts"] += len(hosts)
        pending = self._uhc_pending
        if pending is not None and self._uhc_addr == addr:
            self.uhcs.succeeded(pending[0], time.time())
            self._uhc_pending = None
        for host, port in caches:
            self.uhcs.add(f"{host}:{port}", "phc")
        self._dirty = True

    async def _try_gwc(self) -> None:
        ready = self.gwcs.ready(time.time())
        if not ready:
            return
        e = ready[0]
        e.attempts += 1
        self.events["gwc_requests"] += 1
        log.info("bootstrap: asking GWebCache %s", printable(e.key))
        try:
            body = await gwc_request(e.key, gwc.client_query("get", CLIENT, __version__))
        except (OSError, TimeoutError, ValueError) as exc:
            self.events["gwc_failures"] += 1
            log.info("bootstrap: GWebCache %s failed: %s", printable(e.key), printable(str(exc)))
            self.gwcs.failed(e.key, time.time())
            self._dirty = True
            return
        reply = gwc.parse_reply(body)
        wall = time.time()
        if reply.error and not reply.hosts:
            self.gwcs.failed(e.key, wall)
            self.events["gwc_errors"] += 1
        else:
            self.gwcs.succeeded(e.key, wall)
        hosts = [h for h in reply.hosts[:MAX_HOSTS_PER_REPLY] if vendor.may_reach(h[0], body.peer_ip)]
        self.events["gwc_hosts_refused"] += min(len(reply.hosts), MAX_HOSTS_PER_REPLY) - len(hosts)
        for host, port in hosts:
            if (host, port) != tuple(self.node.address):
                self.node.hosts.add(host, port, "gwc", wall)
        self.events["gwc_hosts"] += len(hosts)
        for url in reply.urls:
            self.gwcs.add(url, "gwc")
        self._dirty = True

    async def _announce(self) -> None:
        """An ultrapeer that takes connections tells its configured caches where it is, hourly."""
        cfg = self.node.cfg
        if cfg.mode != "ultrapeer" or cfg.firewalled or not cfg.gwc or self.node.wildcard:
            return
        now = time.monotonic()
        if self._last_announce and now - self._last_announce < ANNOUNCE_EVERY:
            return
        self._last_announce = now
        for url in cfg.gwc:
            # Spec 1 section 3: pass on the URL of another cache, one that answered us.
            working = [e.key for e in self.gwcs.entries.values() if e.last_success and e.key != url]
            query = gwc.client_query("update", CLIENT, __version__, ip=tuple(self.node.address),
                                     url=self.rng.choice(working) if working else None)
            try:
                reply = gwc.parse_reply(await gwc_request(url, query))
                self.events["gwc_updates_ok" if reply.ok else "gwc_updates_refused"] += 1
            except (OSError, TimeoutError, ValueError):
                self.events["gwc_update_failures"] += 1

    def stats(self) -> dict:
        return {"phase": self.phase, **self.events, "uhcs_known": len(self.uhcs.entries),
                "gwcs_known": len(self.gwcs.entries)}
