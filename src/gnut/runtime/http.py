"""HTTP on the Gnutella port, upload side: GET/HEAD of shared files, Range, browse host, GIV hand-off."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import h11

from gnut import __version__
from gnut.constants import GUID_LEN, USER_AGENT_PRODUCT
from gnut.errors import RemoteProtocolError
from gnut.protocol.altloc import parse_hostport
from gnut.protocol.bandwidth import TokenBucket
from gnut.protocol.mesh import Mesh
from gnut.protocol.parq import UploadQueue, format_queued, parse_queued
from gnut.protocol.printable import printable
from gnut.protocol.thex import encode_thex
from gnut.runtime import limits as lim
from gnut.runtime.httpparse import (  # noqa: F401  (re-exported: callers use http.<name>)
    HTTP_PREFIXES,
    MAX_INDEX_DIGITS,
    MAX_RANGE_DIGITS,
    _Escaped,
    _lookup,
    _open_checked,
    _real_path,
    is_http_start,
    parse_giv,
    parse_range,
)
from gnut.runtime.share import SharedFile, ShareIndex
from gnut.runtime.thexcache import ThexCache, upload_mesh_headers

# Strategy
# --------
# h11 frames requests and responses; this module decides what to answer. A file can only
# ever be served through the ShareIndex: the request target is parsed into an index+name
# or a urn:sha1, looked up, and the file is opened by the path the index holds (never a
# path built from the request), without following a symlink, and only while its size and
# mtime still match the scan (a changed file answers 410 until the next rescan).
#
# Ranges: one range is served (206 + Content-Range). With several ranges ("a-b,c-d")
# only the FIRST is served, as gtk-gnutella does; a range that is malformed, reversed
# (b < a) or starts at/after the end answers 416 with "Content-Range: bytes */size".
#
# Slots: a connection takes an upload slot at its first GET of a file and keeps it across
# keep-alive requests that follow one another (gtk-gnutella's model: a downloader fetching
# chunks keeps its place), but gives it back when it sends no new request for
# SLOT_HOLD_IDLE seconds: a keep-alive connection asking one byte now and then cannot
# hold a slot. One host holds at most upload_slots_per_host slots and max_http_per_ip
# connections. With every slot taken the answer is 503 Busy with Retry-After, then close.
#
# Time limits: a new connection's first request (or GIV block) must be complete within
# request_timeout of the connection's start: one TOTAL deadline, not one per read or per
# line. Waiting for the next request on a kept-alive connection is bounded by idle_timeout;
# once its first byte arrived, that request too must be complete within request_timeout
# (slowloris); a stalled downloader is dropped after stall_timeout.
#
# Browse host: the QUERYHIT encoding of the whole share is built once per share generation
# (one build shared by concurrent requests), bounded by BROWSE_MAX_BYTES, kept until a rescan
# changes the catalog, and streamed in SEND_CHUNK pieces with drain. The build runs on the
# event loop in slices (browse_hits may be a generator: the loop gets control back every
# BROWSE_YIELD_EVERY messages), so other peers wait milliseconds, not the whole encoding.
# HEAD never builds it. At most max_browses bodies stream at once.

# Header block limit: real download requests are < 1 KiB; above this answer 431.
MAX_HEADER_BYTES = 8 * 1024
# A started request must be complete within this (slowloris defence), seconds.
REQUEST_TIMEOUT = 10.0
# A kept-alive connection with no new request for this long is closed, seconds.
IDLE_TIMEOUT = 20.0
# Requests served on one connection (chunked downloads use a few dozen); then close.
MAX_REQUESTS_PER_CONNECTION = 100
# A downloader that accepts no data for this long is dropped, seconds.
STALL_TIMEOUT = 60.0
# File data is sent in chunks of this size (read + write + drain).
SEND_CHUNK = 64 * 1024
# With loop.sendfile the file goes in segments of this size, each under STALL_TIMEOUT.
SENDFILE_SEGMENT = 1024 * 1024
# Bytes read from the socket at once while parsing a request.
READ_CHUNK = 16 * 1024
# A GET/HEAD has no body; a body up to this size is read and discarded, beyond: 413.
MAX_REQUEST_BODY = 64 * 1024
# A GIV block ("GIV index:guid/name" + blank line) is short; above this the peer lies.
GIV_MAX_BYTES = 2048
# After refusing a request mid-way we read and drop this much (for this long) before
# closing, so the peer reads our error response instead of a connection reset.
LINGER_BYTES = 256 * 1024
LINGER_TIMEOUT = 1.0
# Retry-After on 503 Busy, seconds (gtk-gnutella asks for about a minute).
RETRY_AFTER = 60
# A keep-alive connection with no new request for this long gives its upload slot back, seconds
# (a swarming downloader asks its next range within milliseconds of the last one).
SLOT_HOLD_IDLE = 5.0
# A browse-host body beyond this is cut (100k files encode to ~11 MiB): memory stays bounded.
BROWSE_MAX_BYTES = 32 * 1024 * 1024
# While encoding browse host, the event loop runs other work after this many QUERYHITs (~100 files).
BROWSE_YIELD_EVERY = 10

BROWSE_MIME = "application/x-gnutella-packets"
# Push-proxy request paths (LimeWire's and gtk-gnutella's), served by HttpContext.push_proxy.
PUSH_PROXY_PATHS = (b"/gnutella/push-proxy", b"/gnet/push-proxy")
# Bytes the node must peek to tell HTTP from a Gnutella handshake with is_http_start().
HTTP_SNIFF_BYTES = max(len(p) for p in HTTP_PREFIXES)

GivCallback = Callable[[int, bytes, str, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(eq=False)
class HttpContext:
    """What the upload side needs from the node, and the counters it keeps."""

    share: ShareIndex
    upload_slots: int = 4
    servent_guid: bytes = bytes(GUID_LEN)
    user_agent: str = f"{USER_AGENT_PRODUCT}/{__version__}"
    # Full QUERYHIT messages (header included) for browse host; None disables browse host.
    # Called once per share generation; an iterator is consumed in slices (see the strategy note).
    browse_hits: Callable[[], Iterable[bytes]] | None = None
    on_giv: GivCallback | None = None
    # Push-proxy requests (runtime/pushproxy.py): (target, headers, requester IP) -> (status, reason).
    push_proxy: Callable[[bytes, dict, str], tuple[int, str]] | None = None
    # Headers added to every answer (X-Push-Proxies while we are firewalled).
    extra_headers: Callable[[], list[tuple[str, str]]] | None = None
    # Tiger trees served at /uri-res/N2X and named by X-Thex-URI; None: no THEX.
    thex: ThexCache | None = None
    # The download mesh: X-Alt/X-Nalt read from requests and sent in answers; None: no alt-locs.
    mesh: Mesh | None = None
    # Shared by every upload: file data waits for its tokens, chunk by chunk; None: unlimited.
    upload_bucket: TokenBucket | None = None
    # PARQ: with a queue, a request finding every slot taken gets a place (503 + X-Queued) in a
    # queue fair across hosts; None: a plain 503 Busy.
    parq: UploadQueue | None = None
    # Called with (client address, SharedFile, first byte, byte count) after each body served.
    on_upload: Callable[[tuple | None, SharedFile, int, int], None] | None = None
    request_timeout: float = REQUEST_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    stall_timeout: float = STALL_TIMEOUT
    max_requests: int = MAX_REQUESTS_PER_CONNECTION
    slot_hold_idle: float = SLOT_HOLD_IDLE
    upload_slots_per_host: int = lim.UPLOAD_SLOTS_PER_HOST
    max_http_per_ip: int = lim.MAX_HTTP_PER_IP
    max_browses: int = lim.MAX_BROWSES
    # Refusal counters and the file-descriptor watch (the node's, shown by `gnut status`).
    limits: lim.Limits = field(default_factory=lim.Limits)
    active_uploads: int = 0
    active_browses: int = 0
    slots_by_ip: collections.Counter = field(default_factory=collections.Counter)
    conns_by_ip: collections.Counter = field(default_factory=collections.Counter)
    browse_cache: _BrowseCache = field(default_factory=lambda: _BrowseCache())
    stats: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            (
                "requests",
                "uploads_started",
                "uploads_finished",
                "uploads_refused",
                "bytes_sent",
                "browses",
                "givs",
                "slots_released_idle",
                "thex_served",
            ),
            0,
        )
    )


class _BrowseCache:
    """The browse-host body, encoded once per share generation and shared by every request."""

    def __init__(self) -> None:
        self.key: object = None
        self.body: bytes = b""
        self.cut = 0  # QUERYHIT messages left out to stay under BROWSE_MAX_BYTES
        self.builds = 0
        self._building: asyncio.Future | None = None
        self._building_key: object = None

    def fresh(self, key: object) -> bytes | None:
        return self.body if key is not None and self.key == key else None

    async def get(self, key: object, build: Callable[[], list[bytes]]) -> bytes:
        """The body for share generation `key`, building it (in a thread) when stale."""
        body = self.fresh(key)
        if body is not None:
            return body
        if self._building is None or self._building_key != key:
            self._building_key = key
            self._building = asyncio.ensure_future(self._encode(build))
            self._building.add_done_callback(lambda f: f.cancelled() or f.exception())
        fut = self._building
        try:
            body, cut = await asyncio.shield(fut)
        except Exception:
            if self._building is fut:  # a failed build is not kept: the next request tries again
                self._building = None
            raise
        if self._building is fut:
            self._building = None
            self.key, self.body, self.cut = key, body, cut
            self.builds += 1
        return body

    @staticmethod
    async def _encode(build: Callable[[], Iterable[bytes]]) -> tuple[bytes, int]:
        kept, size, cut = [], 0, 0
        for n, msg in enumerate(build(), 1):
            if size + len(msg) > BROWSE_MAX_BYTES:
                cut += 1
            else:
                kept.append(msg)
                size += len(msg)
            if n % BROWSE_YIELD_EVERY == 0:
                await asyncio.sleep(0)
        return b"".join(kept), cut


class _Span:
    """Stands in for a file segment in h11's Data event so the body can go out by sendfile."""

    __slots__ = ("length",)

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length


class _Upload:
    """One HTTP connection: reads requests with h11, answers them, keeps slot and timers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: HttpContext) -> None:
        self.reader = reader
        self.writer = writer
        self.ctx = ctx
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.loop = asyncio.get_running_loop()
        self.has_slot = False
        self.served = 0
        self.method = b"GET"  # of the request being answered (HEAD responses carry no body)
        self.keep_open = False  # True once a GIV handed the socket to ctx.on_giv
        self.linger = False  # refused mid-request: drain the rest before closing (no RST)
        peer = writer.get_extra_info("peername")
        self.ip = str(peer[0]) if peer else "?"
        # The first request (or GIV block) must be whole by then: one total deadline.
        self.head_deadline = self.loop.time() + ctx.request_timeout
        self.parq_key: tuple[str, object] | None = None  # the PARQ slot this connection holds

    def _headers(self, extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
        more = self.ctx.extra_headers() if self.ctx.extra_headers is not None else []
        return [("Server", self.ctx.user_agent), ("X-Features", "browse/1.0"), *more, *extra]

    async def _write(self, data: bytes) -> None:
        if data:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), self.ctx.stall_timeout)

    async def _simple(
        self, status: int, reason: str, extra: list[tuple[str, str]] | None = None, close: bool = False
    ) -> None:
        body = f"{status} {reason}\r\n".encode()
        headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), *(extra or [])]
        if close:
            headers.append(("Connection", "close"))
        out = self.conn.send(h11.Response(status_code=status, reason=reason, headers=self._headers(headers)))
        if self.method != b"HEAD":
            out += self.conn.send(h11.Data(data=body))
        out += self.conn.send(h11.EndOfMessage())
        await self._write(out)

    async def _read_request(self) -> h11.Request | None:
        """Next complete request (its body discarded), or None when the peer is done or idle."""
        if self.served == 0:
            deadline = self.head_deadline
        else:
            deadline = self.loop.time() + self.ctx.request_timeout if self.conn.trailing_data[0] else None
        idle_until = self.loop.time() + self.ctx.idle_timeout
        request = None
        body = 0
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                if deadline is None:
                    timeout = idle_until - self.loop.time()
                    if self.has_slot:  # idle with a slot: give it back after slot_hold_idle
                        timeout = min(timeout, self.ctx.slot_hold_idle)
                else:
                    timeout = deadline - self.loop.time()
                    if timeout <= 0:
                        self.ctx.limits.refuse("deadline", f"HTTP request from {printable(self.ip)} too slow")
                        raise TimeoutError
                try:
                    data = await asyncio.wait_for(self.reader.read(READ_CHUNK), max(timeout, 0.0))
                except TimeoutError:
                    if deadline is None:
                        if self.has_slot and self.loop.time() < idle_until:
                            self.release()
                            self.ctx.stats["slots_released_idle"] += 1
                            continue
                        return None
                    self.ctx.limits.refuse("deadline", f"HTTP request from {printable(self.ip)} too slow")
                    raise
                if data and deadline is None:
                    deadline = self.loop.time() + self.ctx.request_timeout
                self.conn.receive_data(data)
            elif isinstance(event, h11.Request):
                # h11 bounds only an incomplete block; one that arrived whole is measured here.
                size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
                if size > MAX_HEADER_BYTES:
                    raise _Refused(431, "Request Header Fields Too Large")
                request = event
            elif isinstance(event, h11.Data):
                body += len(event.data)
                if body > MAX_REQUEST_BODY:
                    raise _Refused(413, "Content Too Large")
            elif isinstance(event, h11.EndOfMessage):
                return request
            else:  # ConnectionClosed
                return None

    async def run(self) -> None:
        try:
            first = await asyncio.wait_for(self.reader.readexactly(4), self.head_deadline - self.loop.time())
        except TimeoutError:
            self.ctx.limits.refuse("deadline", f"HTTP request from {printable(self.ip)} too slow")
            return
        except (asyncio.IncompleteReadError, OSError):
            return
        if first == b"GIV ":
            await self._giv(first)
            return
        self.conn.receive_data(first)
        while True:
            self.method = b"GET"
            try:
                request = await self._read_request()
            except h11.RemoteProtocolError as exc:
                self.linger = True
                if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    status = exc.error_status_hint
                    reason = "Request Header Fields Too Large" if status == 431 else "Bad Request"
                    await self._simple(status, reason, close=True)
                return
            except _Refused as exc:
                self.linger = True
                await self._simple(exc.status, exc.reason, close=True)
                return
            except TimeoutError:
                if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await self._simple(408, "Request Timeout", close=True)
                return
            if request is None:
                return
            self.served += 1
            self.ctx.stats["requests"] += 1
            self.method = request.method
            await self._answer(request)
            if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                return
            self.conn.start_next_cycle()

    async def _giv(self, first: bytes) -> None:
        block = first
        try:
            # One deadline for the whole block (a line every few seconds must not hold the socket).
            async with asyncio.timeout_at(self.head_deadline):
                while not block.endswith((b"\n\n", b"\n\r\n")):
                    line = await self.reader.readline()
                    if not line or len(block) + len(line) > GIV_MAX_BYTES:
                        return
                    block += line
            index, guid, name = parse_giv(block)
        except TimeoutError:
            self.ctx.limits.refuse("deadline", f"GIV from {printable(self.ip)} too slow")
            return
        except (ValueError, OSError, RemoteProtocolError):
            return
        self.ctx.stats["givs"] += 1
        if self.ctx.on_giv is not None:
            self.keep_open = True
            await self.ctx.on_giv(index, guid, name, self.reader, self.writer)

    async def _answer(self, request: h11.Request) -> None:
        ctx = self.ctx
        last = self.served >= ctx.max_requests
        if request.method not in (b"GET", b"HEAD"):
            await self._simple(405, "Method Not Allowed", [("Allow", "GET, HEAD")], close=last)
            return
        target = request.target
        if ctx.push_proxy is not None and target.partition(b"?")[0].lower() in PUSH_PROXY_PATHS:
            peer = self.writer.get_extra_info("peername")
            status, reason = ctx.push_proxy(target, dict(request.headers), peer[0] if peer else "")
            await self._simple(status, reason, close=last)
            return
        if target == b"/" or target.startswith(b"/?"):
            await self._browse(request, last)
            return
        if target.partition(b"?")[0].lower() == b"/uri-res/n2x":
            await self._thex(target, request, last)
            return
        sf = _lookup(target, ctx.share)
        if sf is None:
            await self._simple(404, "Not Found", close=last)
            return
        try:
            fh = _open_checked(sf, ctx.share)
        except _Escaped as exc:
            ctx.limits.refuse("share_escape", f"{printable(str(exc))} now leads outside the shared folders")
            await self._simple(404, "Not Found", close=last)
            return
        if fh is None:
            await self._simple(410, "Gone", close=last)
            return
        with fh:
            ranges = b",".join(v for k, v in request.headers if k == b"range")
            urn = [("X-Gnutella-Content-URN", sf.urn)]
            if ranges:
                span = parse_range(ranges, sf.size)
                if span is None:
                    await self._simple(
                        416,
                        "Range Not Satisfiable",
                        [("Content-Range", f"bytes */{sf.size}"), *urn],
                        close=last,
                    )
                    return
                status, reason = 206, "Partial Content"
                extra = [("Content-Range", f"bytes {span[0]}-{span[1]}/{sf.size}")]
            else:
                span = (0, sf.size - 1)
                status, reason, extra = 200, "OK", []
            if request.method == b"GET" and not self.has_slot:
                queued = self._parq(sf, request) if ctx.parq is not None else None
                if queued is not None:
                    ctx.stats["uploads_refused"] += 1
                    await self._simple(503, "Queued" if queued[0][0] == "X-Queued" else "Busy", queued, close=True)
                    return
                refusal = self._slot_refusal()
                if refusal is not None:
                    ctx.stats["uploads_refused"] += 1
                    await self._simple(503, refusal, [("Retry-After", str(RETRY_AFTER))], close=True)
                    return
                ctx.active_uploads += 1
                ctx.slots_by_ip[self.ip] += 1
                self.has_slot = True
            count = span[1] - span[0] + 1
            headers = [
                ("Content-Type", "application/binary"),
                ("Content-Length", str(count)),
                ("Accept-Ranges", "bytes"),
                *extra,
                *urn,
                *self._mesh_headers(sf, request),
            ]
            if last:
                headers.append(("Connection", "close"))
            head = self.conn.send(
                h11.Response(status_code=status, reason=reason, headers=self._headers(headers))
            )
            await self._write(head)
            if request.method == b"GET" and count:
                ctx.stats["uploads_started"] += 1
                await self._send_file(fh, span[0], count)
                ctx.stats["uploads_finished"] += 1
                if ctx.on_upload is not None:
                    ctx.on_upload(self.writer.get_extra_info("peername"), sf, span[0], count)
            await self._write(self.conn.send(h11.EndOfMessage()))

    def _slot_refusal(self) -> str | None:
        """The 503 reason when this connection may not take an upload slot now, else None."""
        ctx = self.ctx
        if ctx.active_uploads >= ctx.upload_slots:
            return "Busy"
        if ctx.slots_by_ip[self.ip] >= ctx.upload_slots_per_host:
            ctx.limits.refuse("upload_per_host", f"{printable(self.ip)} already holds its upload slots")
            return "Busy (one upload per host)"
        if not ctx.limits.fd_room(lim.FD_RESERVE_UPLOADS):
            ctx.limits.refuse("fd_headroom", f"upload to {printable(self.ip)} (file descriptors near the limit)")
            return "Busy"
        return None

    def _parq(self, sf: SharedFile, request: h11.Request) -> list[tuple[str, str]] | None:
        """Ask the PARQ queue for a slot: None when granted, else the 503's headers.

        A client is its address, plus its X-Node port when X-Node names that address (servents
        sharing one NAT address are told apart by the port they listen on).
        """
        peer = self.writer.get_extra_info("peername")
        ip = peer[0] if peer else "?"
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        node = parse_hostport(headers.get("x-node", ""), default_port=None)
        host = f"{ip}:{node[1]}" if node is not None and node[0] == ip else ip
        queue_id = None
        if "x-queued" in headers:
            with contextlib.suppress(RemoteProtocolError):
                queue_id = parse_queued(headers["x-queued"]).id
        assert self.ctx.parq is not None
        decision = self.ctx.parq.request(host, sf.sha1, self.loop.time(), queue_id=queue_id, x_node=node)
        if decision.serve:
            self.parq_key = (host, sf.sha1)
            return None
        status = decision.status(self.ctx.parq.slots)
        if status is None:  # refused (queue full, too many files queued for this host)
            return [("Retry-After", str(RETRY_AFTER))]
        return [("X-Queued", format_queued(status)), ("Retry-After", str(max(1, -int(-decision.retry_after // 1))))]

    async def _tokens(self, want: int) -> int:
        """Bytes of file data this upload may send now (the shared upload bucket), waiting if none."""
        bucket = self.ctx.upload_bucket
        if bucket is None:
            return want
        while not (n := bucket.grant(want, self.loop.time())):
            await asyncio.sleep(bucket.wait(want, self.loop.time()))
        return n

    def _mesh_headers(self, sf: SharedFile, request: h11.Request) -> list[tuple[str, str]]:
        if self.ctx.thex is None and self.ctx.mesh is None:
            return []
        peer = self.writer.get_extra_info("peername")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        host = peer[0] if peer else None
        return upload_mesh_headers(self.ctx.mesh, self.ctx.thex, sf, headers, host, self.loop.time())

    async def _thex(self, target: bytes, request: h11.Request, last: bool) -> None:
        """/uri-res/N2X?urn:sha1:...: the file's Tiger tree as gtk-gnutella serves it (DIME)."""
        sf = _lookup(b"/uri-res/N2R?" + target.partition(b"?")[2], self.ctx.share)
        tree = await self.ctx.thex.get(sf) if sf is not None and self.ctx.thex is not None else None
        if tree is None:
            await self._simple(404, "Not Found", close=last)
            return
        body = encode_thex(tree)
        self.ctx.stats["thex_served"] += 1
        headers = [("Content-Type", "application/dime"), ("Content-Length", str(len(body)))]
        headers.append(("X-Gnutella-Content-URN", sf.urn))
        if last:
            headers.append(("Connection", "close"))
        out = self.conn.send(h11.Response(status_code=200, reason="OK", headers=self._headers(headers)))
        if request.method == b"GET":
            out += self.conn.send(h11.Data(data=body))
        out += self.conn.send(h11.EndOfMessage())
        await self._write(out)

    async def _send_file(self, fh, offset: int, count: int) -> None:
        """Send `count` bytes of `fh` from `offset` as the response body (sendfile when the loop has it)."""
        self.conn.send_with_data_passthrough(h11.Data(data=_Span(count)))
        sent = 0
        transport = self.writer.transport
        try:
            if not getattr(transport, "sendfile_ok", True):  # e.g. TLS: the bytes must pass write()
                raise NotImplementedError
            while sent < count:
                seg = await self._tokens(min(SENDFILE_SEGMENT, count - sent))
                if transport.is_closing():  # the peer hung up while we waited for tokens
                    raise ConnectionError("connection closed during upload")
                try:
                    n = await asyncio.wait_for(
                        self.loop.sendfile(transport, fh, offset + sent, seg), self.ctx.stall_timeout
                    )
                except NotImplementedError:
                    raise
                except RuntimeError as exc:  # asyncio says "Transport is closing" once the peer is gone
                    raise ConnectionError(str(exc)) from exc
                if n != seg:
                    raise ConnectionError("file shrank during upload")
                sent += n
                self.ctx.stats["bytes_sent"] += n
            return
        except NotImplementedError:  # uvloop: no loop.sendfile; nothing was sent yet
            if sent:
                raise
            if self.ctx.upload_bucket is not None:
                self.ctx.upload_bucket.refund(seg)
        fh.seek(offset)
        while sent < count:
            chunk = fh.read(await self._tokens(min(SEND_CHUNK, count - sent)))
            if not chunk:
                raise ConnectionError("file shrank during upload")
            await self._write(chunk)
            sent += len(chunk)
            self.ctx.stats["bytes_sent"] += len(chunk)

    async def _browse(self, request: h11.Request, last: bool) -> None:
        accept = b",".join(v for k, v in request.headers if k == b"accept").lower()
        if self.ctx.browse_hits is None:
            await self._simple(404, "Not Found", close=last)
            return
        if BROWSE_MIME.encode() not in accept:
            await self._simple(406, "Not Acceptable", close=last)
            return
        ctx = self.ctx
        key = ctx.share.generation
        cache = ctx.browse_cache
        if request.method == b"HEAD":  # never builds: the length only when the body is at hand
            body = cache.fresh(key)
            headers = [("Content-Type", BROWSE_MIME)]
            if body is not None:
                headers.append(("Content-Length", str(len(body))))
            if last:
                headers.append(("Connection", "close"))
            out = self.conn.send(h11.Response(status_code=200, reason="OK", headers=self._headers(headers)))
            await self._write(out + self.conn.send(h11.EndOfMessage()))
            return
        if ctx.active_browses >= ctx.max_browses:
            ctx.limits.refuse("browse_busy", f"browse from {printable(self.ip)}: {ctx.max_browses} under way")
            await self._simple(503, "Busy", [("Retry-After", str(RETRY_AFTER))], close=True)
            return
        ctx.active_browses += 1
        try:
            body = await cache.get(key, ctx.browse_hits)
            ctx.stats["browses"] += 1
            headers = [("Content-Type", BROWSE_MIME), ("Content-Length", str(len(body)))]
            if last:
                headers.append(("Connection", "close"))
            await self._write(self.conn.send(h11.Response(status_code=200, reason="OK",
                                                          headers=self._headers(headers))))
            view = memoryview(body)
            for pos in range(0, len(body), SEND_CHUNK):
                await self._write(self.conn.send(h11.Data(data=view[pos : pos + SEND_CHUNK])))
            await self._write(self.conn.send(h11.EndOfMessage()))
        finally:
            ctx.active_browses -= 1

    async def drain_input(self) -> None:
        """Half-close and discard what the peer still sends, so our error response is not lost to a RST."""
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            if self.writer.can_write_eof():
                self.writer.write_eof()
            async with asyncio.timeout(LINGER_TIMEOUT):
                left = LINGER_BYTES
                while left > 0 and (data := await self.reader.read(READ_CHUNK)):
                    left -= len(data)

    def release(self) -> None:
        if self.parq_key is not None and self.ctx.parq is not None:
            self.ctx.parq.done(*self.parq_key)
            self.parq_key = None
        if self.has_slot:
            self.has_slot = False
            self.ctx.active_uploads -= 1
            self.ctx.slots_by_ip[self.ip] -= 1
            if self.ctx.slots_by_ip[self.ip] <= 0:
                del self.ctx.slots_by_ip[self.ip]


class _Refused(Exception):
    """A request we answer with `status` and then close (too large header block or body)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def handle_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: HttpContext,
                      elapsed: float = 0.0) -> None:
    """Serve one connection that starts with an HTTP request or a GIV.

    Args:
        reader: the connection's stream, still holding the bytes the node peeked.
        writer: its writer; closed on return unless a GIV handed the socket to ctx.on_giv.
        ctx: shares, slots, callbacks and counters.
        elapsed: seconds the connection already spent before (sniffing on the Gnutella port);
            they count against the first request's total deadline.

    Only network errors and timeouts end a connection early; none escapes this coroutine.
    """
    upload = _Upload(reader, writer, ctx)
    upload.head_deadline -= elapsed
    ip = upload.ip
    if ctx.conns_by_ip[ip] >= ctx.max_http_per_ip:
        ctx.limits.refuse("http_per_ip", f"{printable(ip)} has {ctx.conns_by_ip[ip]} HTTP connections open")
        writer.transport.abort()
        return
    ctx.conns_by_ip[ip] += 1
    try:
        await upload.run()
    except (OSError, TimeoutError, asyncio.IncompleteReadError, h11.ProtocolError):
        pass
    finally:
        ctx.conns_by_ip[ip] -= 1
        if ctx.conns_by_ip[ip] <= 0:
            del ctx.conns_by_ip[ip]
        upload.release()
        if upload.linger:
            await upload.drain_input()
        if not upload.keep_open:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
