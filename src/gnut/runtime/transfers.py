"""The node's file side: shares, HTTP uploads on the Gnutella port, downloads, PUSH and GIV."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from gnut.constants import DEFAULT_TTL, MSG_PUSH, MSG_QUERYHIT
from gnut.protocol import messages
from gnut.protocol import vmsg_reach as vr
from gnut.protocol.bandwidth import Limits
from gnut.protocol.mesh import Mesh
from gnut.protocol.parq import UploadQueue
from gnut.protocol.printable import printable
from gnut.runtime import download as dl
from gnut.runtime import http, pushproxy
from gnut.runtime.share import ShareIndex, build_hits
from gnut.runtime.thexcache import ThexCache

if TYPE_CHECKING:
    from gnut.runtime.host import NodeServices

log = logging.getLogger("gnut.runtime.transfers")

# How long we wait for a firewalled servent's GIV after routing it a PUSH.
PUSH_WAIT = 15.0
# PUSH callbacks we make at once (each is an outgoing connection we open on request).
MAX_PUSH_CALLBACKS = 8
# StreamReader buffer for HTTP connections taken over from the Gnutella port.
HTTP_READ_LIMIT = 64 * 1024
# Share rescan period: new and changed files get picked up and the QRP table refreshed.
RESCAN_EVERY = 300.0
# Upload sessions (client ip, file) tracked for the per-file log line; the oldest is logged and dropped.
MAX_UPLOAD_SESSIONS = 1024
# A client silent this long on a file has stopped: its upload is logged as ended.
UPLOAD_SESSION_IDLE = 60.0
# Disjoint byte spans remembered per upload session (a client asking scattered ranges stays bounded).
MAX_SESSION_SPANS = 64


def _merge_span(spans: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """Sorted disjoint spans plus [start, end), merged; at most MAX_SESSION_SPANS kept (the lowest)."""
    out: list[tuple[int, int]] = []
    for a, b in sorted([*spans, (start, end)]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out[:MAX_SESSION_SPANS]


# Browse host encodes this many files per step (hits pack 10 per message: whole messages per batch).
BROWSE_BATCH_FILES = 100
# Connect-backs (GIV) to one IP address per minute, whatever the ports and file indices:
# PUSH must not turn us into a connection cannon aimed at a third party.
PUSH_CALLBACKS_PER_TARGET_PER_MINUTE = 4
# Target addresses whose recent connect-backs we remember (oldest forgotten first).
PUSH_TARGETS_TRACKED = 1024
# No servent listens below this port; a PUSH naming one aims us at a well-known service.
PUSH_MIN_PORT = 1024


def push_target_refusal(ip: str, port: int, our_ip: str) -> str | None:
    """Why a PUSH's connect-back address is bogus (counter key), or None when we may dial it.

    Pure: classifies the address, never contacts it. Unspecified, multicast, broadcast,
    reserved and link-local addresses are never dialled, nor ports below PUSH_MIN_PORT; a
    loopback address only when we ourselves listen on loopback (a lab network).
    """
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return "push_bogus"
    if not PUSH_MIN_PORT <= port <= 65535:
        return "push_bogus"
    if addr.is_unspecified or addr.is_multicast or addr.is_reserved or addr.is_link_local:
        return "push_bogus"
    if addr.is_loopback:
        try:
            ours = ipaddress.ip_address(our_ip)
        except ValueError:
            return "push_bogus"
        if not ours.is_loopback:
            return "push_bogus"
    return None


class Transfers:
    """Glue between the node and share.py / http.py / download.py."""

    def __init__(self, node: NodeServices) -> None:
        self.node = node
        cfg = node.cfg
        self.share = ShareIndex(cfg.share_dirs, cache_path=cfg.sha1_cache_path if cfg.share_dirs else None)
        # Rate limits (token buckets on the loop's clock) and the download mesh shared by uploads.
        self.rates = Limits(time.monotonic(), upload=cfg.max_upload_rate, download=cfg.max_download_rate)
        self.ctx = http.HttpContext(
            share=self.share,
            upload_slots=cfg.upload_slots,
            servent_guid=node.servent_guid,
            browse_hits=self.browse_hits,
            on_giv=self.on_giv,
            upload_slots_per_host=cfg.upload_slots_per_host,
            max_http_per_ip=cfg.max_http_per_ip,
            max_browses=cfg.max_browses,
            limits=node.limits,
            push_proxy=node.pushproxy.http_request,
            extra_headers=self._proxy_headers,
            thex=ThexCache(),
            mesh=Mesh(),
            parq=UploadQueue(slots=cfg.upload_slots),
            upload_bucket=None if self.rates.upload.unlimited else self.rates.upload,
        )
        # Target IP -> times of our recent connect-backs to it (PUSH reflection bound).
        self._push_targets: collections.OrderedDict[str, collections.deque] = collections.OrderedDict()
        self._giv_waiters: dict[tuple[bytes, int], asyncio.Future] = {}
        self._push_callbacks = 0
        self._scanning = False
        self._first_scan = True
        self._last_scan = time.monotonic()
        self.rescan_every = RESCAN_EVERY
        self.downloads: dict[str, dict] = {}
        self.ctx.on_upload = self.on_upload
        # Per (client ip, urn): bytes served so far, to log and count whole files, not requests.
        self.upload_sessions: dict[tuple[str, str], dict] = {}
        self.uploads_completed = 0
        # Query hits sent per urn (`gnut shares`).
        self.hits_served: collections.Counter[str] = collections.Counter()
        self._problems_logged: set[str] = set()
        self._tasks: set[asyncio.Task] = set()

    async def scan(self):
        """Scan the share folders in a worker thread (hashing can take a while).

        Returns:
            The share.ScanReport, or None when no folder is shared or a scan is under way.
        """
        if not self.node.cfg.share_dirs or self._scanning:
            return None
        self._scanning = True
        try:
            report = await asyncio.get_running_loop().run_in_executor(None, self.share.scan)
        finally:
            self._scanning = False
            self._last_scan = time.monotonic()
        new_problems = set(report.problems) - self._problems_logged
        for problem in report.problems:
            if problem in new_problems:  # each unreadable path is named once, not every rescan
                log.warning("cannot share %s", problem)
        self._problems_logged = set(report.problems)
        if report.added or report.removed or report.changed or self._first_scan or new_problems:
            log.info("shares scanned: %s", report.describe())
            self.node.shares_changed()
        self._first_scan = False
        return report

    def on_upload(self, peer: tuple | None, sf, start: int, count: int) -> None:
        """http.py served bytes [start, start+count) of `sf` to `peer`: log each file once, when the
        client has had every byte of it (ranges are merged, so a re-sent range is not counted twice)."""
        who = f"{peer[0]}:{peer[1]}" if peer else "?"
        key = (peer[0] if peer else "?", sf.urn)
        sess = self.upload_sessions.pop(key, None) or {"bytes": 0, "who": who, "name": sf.name, "size": sf.size,
                                                       "spans": []}
        sess["bytes"] += count
        sess["last"] = time.monotonic()
        sess["spans"] = _merge_span(sess["spans"], start, start + count)
        self.upload_sessions[key] = sess  # re-inserted: the dict stays in last-use order
        if sess["spans"] == [(0, sf.size)]:
            del self.upload_sessions[key]
            self.uploads_completed += 1
            log.info("upload complete: %s got %s (%d bytes)", who, printable(sf.name), sf.size)
        while len(self.upload_sessions) > MAX_UPLOAD_SESSIONS:
            self._end_session(next(iter(self.upload_sessions)))

    def _end_session(self, key) -> None:
        sess = self.upload_sessions.pop(key)
        have = sum(b - a for a, b in sess["spans"])
        log.info("upload ended: %s got %d of %d bytes of %s", sess["who"], have, sess["size"],
                 printable(sess["name"]))

    def expire_uploads(self, now: float) -> None:
        for key in [k for k, v in self.upload_sessions.items() if now - v["last"] > UPLOAD_SESSION_IDLE]:
            self._end_session(key)

    def maybe_rescan(self, now: float) -> None:
        self.expire_uploads(now)
        """Rescan every RESCAN_EVERY seconds: new and changed files get shared, QRP tables follow."""
        if self.node.cfg.share_dirs and not self._scanning and now - self._last_scan >= self.rescan_every:
            self._spawn(self.scan())

    def _spawn(self, coro) -> asyncio.Task:
        task = self.node.spawn(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def stop(self) -> None:
        if self.ctx.thex is not None:
            self.ctx.thex.close()  # a tree being computed must not hold the node's exit
        for t in list(self._tasks):
            t.cancel()

    # --- answering queries and browse host ---------------------------------------------------
    def hit_payloads(self, files, ggep_h: bool, local_ip: str | None = None) -> list[bytes]:
        """QUERYHIT payloads for `files`; `local_ip`: our end of the query's link, used while a
        wildcard-bound node has not learned its address (a non-routable one then says push-needed)."""
        host, port = self.node.address
        firewalled = self.node.reach.firewalled()
        if getattr(self.node, "address_unknown", False):
            host = local_ip if local_ip and ":" not in local_ip else "0.0.0.0"
            firewalled = firewalled or not vr.is_routable_ipv4(host)
        proxies = vr.encode_push_proxies(self.node.pushproxy.our_proxies()) if firewalled else b""
        return build_hits(
            files, servent_guid=self.node.servent_guid, ip=host, port=port,
            push=firewalled, busy=self.ctx_busy(), ggep_h=ggep_h, push_proxies=proxies,
            tls=getattr(self.node, "tls", None) is not None,
        )

    def _proxy_headers(self) -> list[tuple[str, str]]:
        """X-Push-Proxies while we are firewalled and have proxies (push_proxy 4.2)."""
        if not self.node.reach.firewalled():
            return []
        proxies = self.node.pushproxy.our_proxies()
        return [("X-Push-Proxies", ",".join(f"{h}:{p}" for h, p in proxies))] if proxies else []

    def ctx_busy(self) -> bool:
        return self.ctx.active_uploads >= self.ctx.upload_slots

    def browse_hits(self):
        """Browse host's QUERYHIT messages, generated a batch of files at a time (the HTTP side
        encodes them once per share generation, giving the event loop control between batches)."""
        guid = self.node.new_guid()
        files = self.share.files
        for i in range(0, len(files), BROWSE_BATCH_FILES):
            for p in self.hit_payloads(files[i : i + BROWSE_BATCH_FILES], ggep_h=True):
                yield messages.build(guid, MSG_QUERYHIT, 1, 0, p)

    # --- HTTP on the Gnutella port ------------------------------------------------------------
    def take_http(self, transport: asyncio.Transport, first: bytes, elapsed: float = 0.0) -> None:
        """Switch a sniffed connection to an HTTP stream and serve it.

        Args:
            elapsed: seconds the connection already spent (sniffing): they count against the
                first request's total deadline.
        """
        if not http.is_http_start(first):
            self.node.events["not_gnutella_or_http"] += 1
            transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            transport.close()
            return
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=HTTP_READ_LIMIT, loop=loop)
        proto = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport.set_protocol(proto)
        proto.connection_made(transport)
        writer = asyncio.StreamWriter(transport, proto, reader, loop)
        reader.feed_data(first)
        self._spawn(self._serve(reader, writer, elapsed))

    async def _serve(self, reader, writer, elapsed: float = 0.0) -> None:
        try:
            await http.handle_http(reader, writer, self.ctx, elapsed=elapsed)
        finally:
            if not writer.is_closing():
                writer.close()

    # --- PUSH: we are the firewalled side --------------------------------------------------------
    def on_push(self, push, peer=None, hops: int = -1) -> None:
        """A PUSH for us: connect back to the requester, say GIV, serve its GET.

        Args:
            push: the decoded PUSH.
            peer: the link it arrived on; hops: its hop count on arrival (0: that neighbour sent it).
        """
        if push.servent_guid != self.node.servent_guid:
            return
        # Index 0 is a push proxy's PUSH (push_proxy section 5): GIV 0, the downloader's GET names the file.
        f = self.share.by_index(push.index) if push.index else None
        if (f is None and push.index) or self._push_callbacks >= MAX_PUSH_CALLBACKS:
            self.node.events["push_ignored"] += 1
            return
        refusal = self._push_refusal(push, peer, hops)
        if refusal is not None:
            self.node.events["push_ignored"] += 1
            self.node.limits.refuse(refusal, f"PUSH asking us to connect to {printable(push.ip)}:{push.port}")
            return
        self._push_callbacks += 1
        self._spawn(self._giv(push, f.name if f is not None else ""))

    def _push_refusal(self, push, peer, hops: int) -> str | None:
        """Why we will not connect back for this PUSH (counter key), or None (and the dial is counted)."""
        bogus = push_target_refusal(push.ip, push.port, self.node.address[0])
        if bogus is not None:
            return bogus
        addr = getattr(peer, "addr", None)
        # Sent by the neighbour itself: the requester is that neighbour, at its socket's address.
        # ... unless it is our push proxy relaying a downloader's request (push_proxy section 5).
        if hops == 0 and addr and addr[0] != push.ip and not self.node.pushproxy.is_our_proxy(peer):
            return "push_reflection"
        if not self.node.limits.fd_room():
            return "fd_headroom"
        now = time.monotonic()
        times = self._push_targets.pop(push.ip, None) or collections.deque()
        while times and now - times[0] > 60.0:
            times.popleft()
        self._push_targets[push.ip] = times
        while len(self._push_targets) > PUSH_TARGETS_TRACKED:
            self._push_targets.popitem(last=False)
        if len(times) >= PUSH_CALLBACKS_PER_TARGET_PER_MINUTE:
            return "push_rate"
        times.append(now)
        return None

    async def _giv(self, push, name: str) -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(push.ip, push.port), 10.0)
        except (TimeoutError, OSError) as exc:
            log.info("push callback to %s:%d failed: %s", printable(push.ip), push.port, exc)
            self._push_callbacks -= 1
            return
        try:
            writer.write(f"GIV {push.index}:{self.node.servent_guid.hex().upper()}/{name}\n\n".encode())
            self.node.events["giv_sent"] += 1
            await http.handle_http(reader, writer, self.ctx)
        finally:
            self._push_callbacks -= 1
            writer.close()

    # --- PUSH: we are the downloader --------------------------------------------------------------
    async def on_giv(self, index: int, guid: bytes, name: str, reader, writer) -> None:
        fut = self._giv_waiters.pop((guid, index), None)
        if fut is None:  # a proxy may have pushed index 0: any download waiting on that servent
            key = next((k for k in self._giv_waiters if k[0] == guid), None)
            fut = self._giv_waiters.pop(key) if key is not None else None
        if fut is None or fut.done():
            self.node.events["giv_unexpected"] += 1
            writer.close()
            return
        fut.set_result((reader, writer))
        # Keep this handler alive while the downloader uses the socket.
        await writer.wait_closed() if hasattr(writer, "wait_closed") else None

    async def push_connect(self, source: dl.Source):
        """PUSH `source`'s servent (routed, and through its push proxies) and wait for its GIV."""
        node = self.node
        peer_id = node.router.push_route(source.servent_guid, time.monotonic())
        peer = node.peers.get(peer_id) if peer_id is not None else None
        if peer is None and not source.push_proxies:
            raise dl.DownloadError(f"no route and no push proxy for PUSH to {source.servent_guid.hex()}")
        host, port = node.address
        if getattr(node, "address_unknown", False) and peer is not None and peer.transport is not None:
            sock = peer.transport.get_extra_info("sockname")  # no learned address: this link's end
            host = sock[0] if sock and ":" not in sock[0] else host
        fut = asyncio.get_running_loop().create_future()
        key = (source.servent_guid, source.index)
        self._giv_waiters[key] = fut
        # Its push proxies first (one HTTP request to a host with a direct link to it, push_proxy
        # section 2); the routed PUSH only when none of them accepted.
        asked = False
        for proxy in source.push_proxies:
            our_ip = None if getattr(node, "address_unknown", False) else host  # None: the proxy link's own end
            if await pushproxy.contact(proxy, source.servent_guid, source.index, (our_ip, port)):
                node.events["push_proxy_used"] += 1
                asked = True
                break
            node.events["push_proxy_failed"] += 1
        if not asked and peer is not None:
            payload = messages.Push(servent_guid=source.servent_guid, index=source.index, ip=host,
                                    port=port).encode()
            node.send_to(peer, MSG_PUSH, payload, DEFAULT_TTL)
            node.flush()
            node.events["push_sent"] += 1
        elif not asked:
            self._giv_waiters.pop(key, None)
            raise dl.DownloadError(f"no push proxy of {source.servent_guid.hex()} accepted our request")
        try:
            async with asyncio.timeout(PUSH_WAIT):  # not wait_for: 3.11's can swallow a cancel
                return await fut
        finally:
            self._giv_waiters.pop(key, None)

    # --- downloads ----------------------------------------------------------------------------------
    async def download(self, urn: str, size: int, name: str, sources: list, out_dir: Path | None = None,
                       progress=None, timeout: float = 600.0) -> Path:
        """Download `urn` from `sources` (Source objects), verify it, return the final path."""
        out = Path(out_dir or self.node.cfg.download_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {"urn": urn, "name": name, "size": size, "done": 0, "state": "running", "sources": len(sources),
                 "sources_known": len(sources), "out": str(out)}
        self.downloads[urn] = state

        def on_progress(p) -> None:
            state.update(done=p.done, state=p.state, sources=p.sources_active, rate=p.rate_bps)
            if progress is not None:
                progress(p)

        d = dl.Download(urn, size, name, out, sources=sources, push=self.push_connect,
                        tls_context=self.node.tls_context(False) if hasattr(self.node, "tls_context") else None,
                        progress=on_progress, assume_private_firewalled=self.node.cfg.private_means_firewalled,
                        rate_bucket=None if self.rates.download.unlimited else self.rates.download)
        try:
            async with asyncio.timeout(timeout):
                path = await d.run()
        except BaseException as exc:
            state["state"] = f"failed: {exc}"
            raise
        state.update(state="complete", done=size, path=str(path))
        if not any(d is not state and d.get("out") == str(out)
                   and not str(d["state"]).startswith(("complete", "failed"))
                   for d in self.downloads.values()):
            with contextlib.suppress(OSError):  # rmdir: only when no other partial file is in there
                (out / dl.PARTIAL_DIR).rmdir()
        return path

    def stats(self) -> dict:
        c = self.ctx
        return {
            "uploads_active": c.active_uploads,
            "uploads_done": self.uploads_completed,
            "upload_requests": c.stats.get("uploads_finished", 0) if isinstance(c.stats, dict) else 0,
            "upload_bytes": c.stats.get("bytes_sent", 0) if isinstance(c.stats, dict) else 0,
            "downloads": list(self.downloads.values()),
            "limits": self.rates.status(),
            "mesh_sources": len(c.mesh) if c.mesh is not None else 0,
            "upload_queue": len(c.parq.entries) if c.parq is not None else 0,
            "thex_served": c.stats.get("thex_served", 0) if isinstance(c.stats, dict) else 0,
        }
