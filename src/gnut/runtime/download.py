"""Swarmed, resumable, SHA-1 verified file downloads over HTTP/1.1, direct or through PUSH/GIV."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import ssl
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import quote

import h11

from gnut import __version__
from gnut.constants import USER_AGENT_PRODUCT
from gnut.errors import LocalProtocolError, RemoteProtocolError
from gnut.protocol.bandwidth import TokenBucket
from gnut.protocol.magnet import DIGITS, MAX_NAME_BYTES, normalize_urn, parse_magnet, safe_name  # noqa: F401 (re-exported)
from gnut.protocol.parq import parse_queued
from gnut.protocol.thex import MAX_THEX_BYTES
from gnut.protocol.vmsg_reach import parse_hostports
from gnut.runtime.dlmesh import DownloadMesh
from gnut.runtime.dlparts import (  # noqa: F401  (re-exported: callers use download.<name>)
    MAX_CORRUPT_BYTES,
    MAX_CORRUPT_KEPT,
    MAX_RESPONSE_HEADER_BYTES,
    DownloadError,
    DownloadProgress,
    PushFn,
    Source,
    _Conn,
    _header_map,
    _Ranges,
    _SourceFailure,
    _SourceState,
    agreed_size,
    needs_push,
    prune_corrupt,
)
from gnut.runtime.fsutil import atomic_write_bytes
from gnut.runtime.tls import TlsError, open_tls_connection

# Strategy: the file is cut into chunks of the bytes still missing; one worker per source
# (at most `max_parallel`) keeps one keep-alive HTTP connection and takes chunks from a
# shared queue, writing each body piece with os.pwrite at its offset. A chunk that fails
# half-way keeps the bytes already written and puts only its remainder back, so every byte
# is fetched once. Completed ranges are persisted to a JSON sidecar only after the .part
# file was fsynced, and the sidecar is replaced atomically: after kill -9 the sidecar
# never claims bytes that are not on disk. The whole file is verified against the urn's
# SHA-1 before it is renamed into place; bad data is moved aside, never presented.

CHUNK_SIZE = 256 * 1024  # one request's worth: amortises the request, still spreads a 1 MB file
READ_SIZE = 64 * 1024  # bytes asked of the socket per read
log = logging.getLogger("gnut.runtime.download")
DEFAULT_STALL_TIMEOUT = 30.0  # connect, PUSH callback or any read silent this long: the source failed
RETRY_BASE_DELAY = 1.0  # first backoff after a failure, doubled for each consecutive failure
RETRY_MAX_DELAY = 60.0  # ceiling of the exponential backoff
RETRY_AFTER_CAP = 300.0  # a 503's Retry-After is honoured up to 5 minutes, not longer
MAX_SOURCE_FAILURES = 4  # consecutive failures after which a source is dropped
MAX_RESTARTS = 1  # after a SHA-1 mismatch, start over once with the sources that served nothing
STATE_FLUSH_INTERVAL = 1.0  # seconds between sidecar writes on success (failures flush at once)
PROGRESS_INTERVAL = 0.25  # seconds between progress callbacks of the same state
HASH_BLOCK = 1 << 20  # read size while hashing the finished file
MAX_NAME_COLLISIONS = 10_000  # "name (n).ext" candidates tried before giving up
STATE_VERSION = 1  # sidecar format version; another version is ignored (fresh start)
PARTIAL_DIR = ".gnut-partial"  # folder under out_dir holding .part, .state and .corrupt-n files
X_FEATURES = "browse/1.0"  # what our servent offers back (gtk-gnutella sends the same token)

_CONTENT_RANGE = re.compile(r"bytes\s+(\d{1,20})-(\d{1,20})/(\d{1,20}|\*)", re.ASCII | re.IGNORECASE)


class Download:
    """Fetch one file (identified by its urn:sha1) from a swarm of sources.

    Args:
        urn: ``urn:sha1:<base32>`` of the file; the result is verified against it.
        size: file size in bytes.
        name: the name to save under (sanitised with safe_name).
        out_dir: folder receiving the file; partial data goes to ``out_dir/.gnut-partial``.
        sources: initial sources; more may be given with add_source while run() works.
        push: opens a connection to a firewalled source (PUSH routed, GIV consumed) or None.
        max_parallel: sources fetched from at the same time.
        timeout: stall timeout in seconds for connecting, the PUSH callback and each read.
        progress: called with a DownloadProgress as work advances.
        chunk_size: bytes per request.
        retry_base: first backoff delay after a failure (doubles per consecutive failure).
        max_failures: consecutive failures after which a source is dropped.
        assume_private_firewalled: see needs_push.
        node_addr: our own listening "ip:port" sent as X-Node, or None.
        tls_context: client context for sources that accept TLS (None: always plain).
        tree_root: the file's trusted Tiger-tree root (e.g. a magnet's urn:tree:tiger), or None
            to adopt the first root a source names (see runtime/dlmesh.py).
        rate_bucket: token bucket every received body piece is charged to (shared by all
            downloads to cap their total rate), or None.

    Raises:
        LocalProtocolError: a malformed urn or a negative size.
    """

    def __init__(
        self,
        urn: str,
        size: int,
        name: str,
        out_dir: Path,
        *,
        sources: Iterable[Source] = (),
        push: PushFn | None = None,
        max_parallel: int = 4,
        timeout: float = DEFAULT_STALL_TIMEOUT,
        progress: Callable[[DownloadProgress], None] | None = None,
        chunk_size: int = CHUNK_SIZE,
        retry_base: float = RETRY_BASE_DELAY,
        max_failures: int = MAX_SOURCE_FAILURES,
        assume_private_firewalled: bool = True,
        node_addr: str | None = None,
        tls_context=None,
        tree_root: bytes | None = None,
        rate_bucket: TokenBucket | None = None,
    ) -> None:
        self.urn = normalize_urn(urn)
        if size < 0 or max_parallel < 1 or chunk_size < 1 or max_failures < 1:
            raise LocalProtocolError("size must be >= 0; max_parallel, chunk_size, max_failures >= 1")
        self._b32 = self.urn[9:]
        self._sha1 = base64.b32decode(self._b32)
        self.size = size
        self.name = name
        self.out_dir = Path(out_dir)
        self.partial_dir = self.out_dir / PARTIAL_DIR
        self.part_path = self.partial_dir / f"{self._b32}.part"
        self.state_path = self.partial_dir / f"{self._b32}.state"
        self._push = push
        self._max_parallel = max_parallel
        self._timeout = timeout
        self._progress_cb = progress
        self._chunk_size = chunk_size
        self._retry_base = retry_base
        self._max_failures = max_failures
        self._assume_private = assume_private_firewalled
        self._push_only: set[str] = set()  # sources whose direct connect failed: PUSH only
        self._tls = tls_context
        self._tls_failed: set[str] = set()  # sources whose TLS handshake failed: plain from then on
        self._node_addr = node_addr
        self._sources: dict[str, _SourceState] = {}
        self._excluded: set[str] = set()
        self._served: set[str] = set()  # sources whose bytes are in the current .part
        self._have = _Ranges()
        self._pending: deque[tuple[int, int]] = deque()
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._event = asyncio.Event()
        self._fatal: BaseException | None = None
        self._fd = -1
        self._running = False
        self._t0 = 0.0
        self._session_bytes = 0
        self._last_flush = 0.0
        self._last_report = (0.0, "")
        self.mesh = DownloadMesh(size, tree_root)  # X-Alt both ways, THEX tree, chunk checks
        self._bucket = rate_bucket
        self._queue_ids: dict[str, tuple[int, str]] = {}  # source key -> PARQ (position, ID)
        for source in sources:
            self.add_source(source)

    # --- public -------------------------------------------------------------------

    def add_source(self, source: Source) -> bool:
        """Offer another source; it is used at once if a worker slot is free.

        Args:
            source: a hit for this file.

        Returns:
            False when the source is a duplicate, announces another urn or size, or was
            excluded after serving bad data; True when accepted.
        """
        if source.size != self.size or source.key in self._sources or source.key in self._excluded:
            return False
        if source.urn is not None:
            try:
                if normalize_urn(source.urn) != self.urn:
                    return False
            except LocalProtocolError:
                return False
        self._sources[source.key] = _SourceState(source)
        if self._running:
            self._fill()
        return True

    async def run(self) -> Path:
        """Download, verify and move the file into out_dir.

        Returns:
            The final path (``out_dir/<safe name>``, with " (n)" added if it existed).

        Raises:
            DownloadError: no usable source left, a SHA-1 mismatch with no clean source to
                restart from, or a local file error.
            LocalProtocolError: run() called twice.
        """
        if self._running:
            raise LocalProtocolError("Download.run() may be called once")
        self._running = True
        self._t0 = asyncio.get_running_loop().time()
        try:
            self.partial_dir.mkdir(parents=True, exist_ok=True)
            self._open_part()
            restarts = 0
            while True:
                if not await self._swarm():
                    self._report("failed")
                    errors = "; ".join(f"{st.key}: {st.last_error}" for st in self._sources.values())
                    raise DownloadError(
                        f"no usable source left ({self._have.total()}/{self.size} bytes) [{errors}]"
                    )
                self._report("verifying")
                digest = await asyncio.to_thread(self._digest)
                if digest == self._sha1:
                    final = self._finish()
                    self._report("complete")
                    return final
                self._set_aside()
                self._excluded |= self._served
                clean = [k for k, st in self._sources.items() if not st.dropped and k not in self._excluded]
                if restarts >= MAX_RESTARTS or not clean:
                    self._report("failed")
                    raise DownloadError("sha1 mismatch")
                restarts += 1
                self._report("restarting")
                self._open_part()
        except OSError as exc:
            raise DownloadError(f"local file error: {exc}") from exc
        finally:
            self._running = False
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    # --- files ----------------------------------------------------------------------

    def _open_part(self) -> None:
        """Open (or create) the .part file and load the sidecar if it matches it."""
        self._have = _Ranges()
        self._served = set()
        exists = self.part_path.exists()
        self._fd = os.open(self.part_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:  # one Download per .part, across processes too (released when the fd closes)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._fd)
            self._fd = -1
            raise DownloadError(f"{self.urn} is already being downloaded into {self.out_dir}") from exc
        for stale in self.partial_dir.glob(f".{self.state_path.name}.*.tmp"):
            stale.unlink(missing_ok=True)  # a sidecar write cut short by kill -9
        if exists:
            self._load_state()
        os.ftruncate(self._fd, self.size)

    def _load_state(self) -> None:
        try:
            state = json.loads(self.state_path.read_bytes())
            if state["version"] != STATE_VERSION or state["urn"] != self.urn or state["size"] != self.size:
                return
            spans = [(int(a), int(b)) for a, b in state["done"]]
            served = {str(k) for k in state["served"]}
        except (OSError, ValueError, KeyError, TypeError):
            return  # unreadable or foreign sidecar: start from nothing
        if all(0 <= a < b <= self.size for a, b in spans):
            self._have = _Ranges(spans)
            self._served = served

    def _persist(self, force: bool) -> None:
        """fsync the .part, then atomically record the ranges that are now durable."""
        now = asyncio.get_running_loop().time()
        if not force and now - self._last_flush < STATE_FLUSH_INTERVAL:
            return
        self._last_flush = now
        state = {
            "version": STATE_VERSION,
            "urn": self.urn,
            "size": self.size,
            "done": [list(span) for span in self._have.spans()],
            "served": sorted(self._served),
        }
        try:
            os.fsync(self._fd)
            atomic_write_bytes(self.state_path, json.dumps(state).encode())
        except OSError as exc:
            raise DownloadError(f"cannot save download state: {exc}") from exc

    def _digest(self) -> bytes:
        sha1 = hashlib.sha1()
        with open(self.part_path, "rb") as fh:
            while block := fh.read(HASH_BLOCK):
                sha1.update(block)
        return sha1.digest()

    def _close_part(self) -> None:
        os.close(self._fd)
        self._fd = -1
        self.state_path.unlink(missing_ok=True)

    def _finish(self) -> Path:
        """Move the verified .part to a fresh name in out_dir (reserved with O_EXCL)."""
        clean = safe_name(self.name, fallback=f"download-{self._b32[:8]}")
        stem, dot, ext = clean.rpartition(".")
        if not stem:
            stem, dot, ext = clean, "", ""
        for n in range(MAX_NAME_COLLISIONS):
            candidate = self.out_dir / (clean if n == 0 else f"{stem} ({n}){dot}{ext}")
            try:
                os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            except FileExistsError:
                continue
            self._close_part()
            os.replace(self.part_path, candidate)
            return candidate
        raise DownloadError(f"{MAX_NAME_COLLISIONS} files named like {clean!r} already exist")

    def _set_aside(self) -> Path:
        """Move data that failed verification to .corrupt-<n>; it is never the result."""
        self._close_part()
        n = 1
        while (aside := self.partial_dir / f"{self._b32}.corrupt-{n}").exists():
            n += 1
        os.replace(self.part_path, aside)
        prune_corrupt(self.partial_dir)
        return aside

    def _write(self, st: _SourceState, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        offset = st.pos
        try:
            while view:
                written = os.pwrite(self._fd, view, offset)
                offset += written
                view = view[written:]
        except OSError as exc:
            raise DownloadError(f"cannot write {self.part_path}: {exc}") from exc
        self._have.add(st.pos, offset)
        self._served.add(st.key)
        self._session_bytes += offset - st.pos
        st.pos = offset
        self._report("downloading")

    # --- scheduling -------------------------------------------------------------------

    def _wake(self) -> None:
        """Wake everything waiting for a change (work returned, chunk done, worker gone)."""
        self._event.set()
        self._event = asyncio.Event()

    def _complete(self) -> bool:
        return self._have.total() >= self.size

    def _fill(self) -> None:
        """Start workers for idle usable sources while slots and work remain."""
        for key, st in self._sources.items():
            if len(self._workers) >= self._max_parallel or not self._pending:
                return
            if st.dropped or key in self._excluded or key in self._workers:
                continue
            self._workers[key] = asyncio.get_running_loop().create_task(self._run_worker(st))

    async def _swarm(self) -> bool:
        """Run workers until the file is complete (True) or no source can help (False)."""
        self._fatal = None
        self._pending = deque(
            (a, min(a + self._chunk_size, end))
            for start, end in self._have.missing(0, self.size)
            for a in range(start, end, self._chunk_size)
        )
        try:
            while True:
                if self._fatal is not None:
                    raise self._fatal
                if self._complete():
                    return True
                self._fill()
                if not self._workers:
                    return False
                self._report("downloading")
                await self._event.wait()
        finally:
            workers = list(self._workers.values())
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            self._workers.clear()
            if self._fd >= 0:
                self._persist(force=True)

    async def _take_chunk(self) -> tuple[int, int] | None:
        """Next missing span to fetch, waiting while others are in flight; None when done."""
        while True:
            while self._pending:
                start, end = self._pending.popleft()
                gaps = self._have.missing(start, end)  # a 200 answer may have filled it
                if gaps:
                    self._pending.extendleft(reversed(gaps[1:]))
                    return gaps[0]
            if self._complete():
                return None
            await self._event.wait()

    def _give_back(self, st: _SourceState) -> None:
        if st.pos < st.end:
            self._pending.appendleft((st.pos, st.end))
        st.pos = st.end = 0

    async def _run_worker(self, st: _SourceState) -> None:
        try:
            await self._worker(st)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a local error (disk, callback): fail the download
            self._fatal = exc
        finally:
            self._give_back(st)
            self._workers.pop(st.key, None)
            self._wake()

    async def _worker(self, st: _SourceState) -> None:
        conn: _Conn | None = None
        try:
            while True:
                span = await self._take_chunk()
                if span is None or st.key in self._excluded:  # excluded: caught by a late tree check
                    if span is not None:
                        self._pending.appendleft(span)
                    return
                st.pos, st.end = span
                try:
                    if conn is None:
                        conn = await self._connect(st.source)
                    keep_alive = await self._fetch(conn, st)
                except _SourceFailure as exc:
                    failure = exc
                except (OSError, RemoteProtocolError) as exc:  # includes TimeoutError
                    failure = _SourceFailure(str(exc) or type(exc).__name__)
                else:
                    st.failures = 0
                    st.pos = st.end = 0
                    if keep_alive and self.mesh.thex_source == st.key:
                        keep_alive = await self._fetch_thex(conn, st)
                    if not keep_alive:
                        conn.close()
                        conn = None
                    self._persist(force=False)
                    self._wake()
                    continue
                self._give_back(st)
                self._persist(force=True)
                self._wake()
                if conn is not None:
                    conn.close()
                    conn = None
                st.failures += 0 if failure.queued else 1
                st.last_error = str(failure)
                if failure.drop or st.failures >= self._max_failures:
                    st.dropped = True
                    return
                delay = failure.delay
                if delay is None:
                    delay = min(self._retry_base * 2 ** (st.failures - 1), RETRY_MAX_DELAY)
                await asyncio.sleep(delay)
        finally:
            if conn is not None:
                conn.close()

    # --- HTTP -------------------------------------------------------------------------

    async def _connect(self, source: Source) -> _Conn:
        direct = source.key not in self._push_only and not needs_push(
            source, assume_private_firewalled=self._assume_private)
        why = ""
        if direct and source.tls and self._tls is not None and source.key not in self._tls_failed:
            try:
                async with asyncio.timeout(self._timeout):  # not wait_for: 3.11's can swallow a cancel
                    reader, writer = await open_tls_connection(source.host, source.port, self._tls)
                return _Conn(reader, writer)
            except (ssl.SSLError, TlsError) as exc:
                log.info("TLS to %s failed (%s): plain", source.key, exc)
                self._tls_failed.add(source.key)
            except (TimeoutError, OSError):
                pass  # unreachable: the plain attempt below decides (and falls back to PUSH)
        if direct:
            try:
                async with asyncio.timeout(self._timeout):
                    reader, writer = await asyncio.open_connection(source.host, source.port)
                return _Conn(reader, writer)
            except (TimeoutError, OSError) as exc:
                if self._push is None:
                    raise
                # Unreachable directly (NAT, firewall, a private address): PUSH from now on.
                log.info("direct connect to %s failed (%s): trying PUSH", source.key, exc or "timeout")
                self._push_only.add(source.key)
                why = f"direct connect failed ({exc or 'timeout'}), then "
        if self._push is None:
            raise _SourceFailure("source needs a PUSH and no push route is available", drop=True)
        try:
            async with asyncio.timeout(self._timeout):
                reader, writer = await self._push(source)
        except TimeoutError as exc:
            raise _SourceFailure(f"{why}no GIV callback after PUSH") from exc
        except Exception as exc:  # the node's routing may fail in its own ways
            raise _SourceFailure(f"{why}PUSH failed: {exc!r}") from exc
        return _Conn(reader, writer)

    def _request(self, source: Source, start: int, end: int) -> h11.Request:
        if source.urn is not None:
            target = f"/uri-res/N2R?{self.urn}"
        else:
            target = f"/get/{source.index}/{quote(source.name, safe='')}"
        host = f"[{source.host}]" if ":" in source.host else source.host
        headers = [
            ("Host", f"{host}:{source.port}"),
            ("User-Agent", f"{USER_AGENT_PRODUCT}/{__version__}"),
            ("Range", f"bytes={start}-{end - 1}"),
            ("X-Features", X_FEATURES),
            ("Connection", "Keep-Alive"),
        ]
        if self._node_addr:
            headers.append(("X-Node", self._node_addr))
        headers += self.mesh.request_headers(source.host, source.port)
        headers.append(("X-Queue", "1.0"))
        if source.key in self._queue_ids:
            position, queue_id = self._queue_ids[source.key]
            headers.append(("X-Queued", f"position={position}; ID={queue_id}"))
        return h11.Request(method="GET", target=target, headers=headers)

    async def _next_event(self, conn: _Conn) -> h11.Event:
        """Next h11 event of the response, reading with the stall timeout as needed."""
        while True:
            try:
                event = conn.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise RemoteProtocolError(f"bad HTTP response: {exc}") from exc
            if event is h11.NEED_DATA:
                async with asyncio.timeout(self._timeout):  # a pause (cancel) must stop a busy worker
                    data = await conn.reader.read(READ_SIZE)
                conn.h11.receive_data(data)
                continue
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                raise RemoteProtocolError("connection closed before the response ended")
            return event

    async def _fetch(self, conn: _Conn, st: _SourceState) -> bool:
        """Fetch the span [st.pos, st.end) on `conn`, writing as bytes arrive.

        Returns:
            True when the connection may carry the next request (keep-alive).
        """
        start, end = st.pos, st.end
        out = conn.h11.send(self._request(st.source, start, end)) or b""
        out += conn.h11.send(h11.EndOfMessage()) or b""
        conn.writer.write(out)
        async with asyncio.timeout(self._timeout):
            await conn.writer.drain()
        response = await self._next_event(conn)
        if not isinstance(response, h11.Response):
            raise RemoteProtocolError(f"expected a response, got {type(response).__name__}")
        status = response.status_code
        # h11 bounds a head that arrives in pieces; one that arrives whole is measured here.
        head_size = len(response.reason) + sum(len(k) + len(v) + 4 for k, v in response.headers)
        if head_size > MAX_RESPONSE_HEADER_BYTES:
            raise RemoteProtocolError(
                f"response head of {head_size} bytes exceeds {MAX_RESPONSE_HEADER_BYTES}"
            )
        headers = _header_map(response.headers)
        proxies = headers.get("x-push-proxies")
        if proxies is not None:  # the source's current push proxies replace what its hit said (push_proxy 4.2)
            st.source = dataclasses.replace(st.source, push_proxies=tuple(parse_hostports(proxies)))
        if status in (404, 410, 416):
            raise _SourceFailure(f"HTTP {status}", drop=True)
        if status == 503:
            retry = headers.get("retry-after", "")
            delay = min(float(retry), RETRY_AFTER_CAP) if DIGITS.fullmatch(retry) else None
            if "x-queued" in headers:  # PARQ: remember our place, poll again at the Retry-After
                try:
                    place = parse_queued(headers["x-queued"])
                except RemoteProtocolError:
                    place = None
                if place is not None and place.id is not None:
                    self._queue_ids[st.key] = (place.position, place.id)
                    raise _SourceFailure(f"HTTP 503 queued at position {place.position}", delay=delay, queued=True)
            raise _SourceFailure("HTTP 503 busy", delay=delay)
        announced = [u.strip() for u in headers.get("x-gnutella-content-urn", "").split(",")]
        sha1_urns = [u for u in announced if u[:9].lower() == "urn:sha1:"]
        if sha1_urns and not any(u.upper() == self.urn.upper() for u in sha1_urns):
            raise _SourceFailure(f"source serves {sha1_urns[0][:50]}, not {self.urn}", drop=True)
        learned, refuse = self.mesh.read_answer(st.key, headers)
        if refuse:
            raise _SourceFailure(refuse, drop=True)
        self._learn(learned)
        length = headers.get("content-length")
        if status == 200:
            if start != 0:
                raise _SourceFailure("HTTP 200 (whole file) for a range not at 0: Range ignored", drop=True)
            if length is not None and length != str(self.size):
                raise RemoteProtocolError(
                    f"200 with Content-Length {length[:20]} for a {self.size}-byte file"
                )
            end = st.end = self.size  # the source sends everything: take it all
        elif status == 206:
            match = _CONTENT_RANGE.fullmatch(headers.get("content-range", ""))
            if match is None:
                raise RemoteProtocolError(f"206 with bad Content-Range {headers.get('content-range')!r}")
            first, last, total = match.groups()
            if (int(first), int(last) + 1) != (start, end) or total not in ("*", str(self.size)):
                raise RemoteProtocolError(f"Content-Range {match.group(0)} does not answer {start}-{end - 1}")
            if length is not None and length != str(end - start):
                raise RemoteProtocolError(f"Content-Length {length[:20]} for a {end - start}-byte range")
        else:
            raise _SourceFailure(f"HTTP {status}")
        while True:
            event = await self._next_event(conn)
            if isinstance(event, h11.Data):
                if len(event.data) > end - st.pos:
                    raise RemoteProtocolError("response body larger than the range asked")
                self._write(st, event.data)
                if self._bucket is not None:  # charged after the read; the next read waits off the debt
                    self._bucket.charge(len(event.data), asyncio.get_running_loop().time())
                    await asyncio.sleep(self._bucket.wait(1, asyncio.get_running_loop().time()))
            elif isinstance(event, h11.EndOfMessage):
                if st.pos < end:
                    raise RemoteProtocolError(f"response body ended {end - st.pos} bytes short")
                if not self.mesh.check_chunk(st.key, self._pread, start, end):
                    self._reject(st, start, end)
                self.mesh.mark(st.source.host, st.source.port, True)
                h = conn.h11
                if h.our_state is h11.DONE and h.their_state is h11.DONE:
                    h.start_next_cycle()
                    return True
                return False
            else:
                raise RemoteProtocolError(f"unexpected {type(event).__name__} in a response body")

    # --- mesh: alt-locs and the Tiger tree (runtime/dlmesh.py) ----------------------------

    def _learn(self, locs) -> None:
        """Add sources named by a source's X-Alt (urn requests; bounded by the mesh)."""
        known = {(s.source.host, s.source.port) for s in self._sources.values()}
        added = 0
        for loc in locs:
            if loc.key in known:
                continue
            known.add(loc.key)
            source = Source(loc.host, loc.port, 0, self.name, self.size, self.urn, bytes(16), False)
            if not needs_push(source, assume_private_firewalled=self._assume_private):  # no GUID to push to
                added += self.add_source(source)
        self.mesh.counted(added)

    def _pread(self, offset: int, count: int) -> bytes:
        return os.pread(self._fd, count, offset)

    def _reject(self, st: _SourceState, start: int, end: int) -> None:
        """The chunk [start, end) failed the Tiger check: unlearn it, refetch it elsewhere, drop the source."""
        self._unlearn(st, start, end)
        raise _SourceFailure("chunk failed the Tiger-tree check", drop=True)

    def _unlearn(self, st: _SourceState, start: int, end: int) -> None:
        self._have.remove(start, end)
        self._pending.appendleft((start, end))
        self._excluded.add(st.key)
        st.dropped = True
        st.last_error = "chunk failed the Tiger-tree check"
        self.mesh.mark(st.source.host, st.source.port, False)
        self._wake()

    async def _fetch_thex(self, conn: _Conn, st: _SourceState) -> bool:
        """GET the source's THEX tree on the kept-alive connection; True if it stays usable."""
        host = f"[{st.source.host}]" if ":" in st.source.host else st.source.host
        request = h11.Request(
            method="GET",
            target=self.mesh.thex_uri,
            headers=[("Host", f"{host}:{st.source.port}"), ("User-Agent", f"{USER_AGENT_PRODUCT}/{__version__}")],
        )
        body = bytearray()
        try:
            conn.writer.write(conn.h11.send(request) + conn.h11.send(h11.EndOfMessage()))
            await asyncio.wait_for(conn.writer.drain(), self._timeout)
            response = await self._next_event(conn)
            ok = isinstance(response, h11.Response) and response.status_code == 200
            while not isinstance(event := await self._next_event(conn), h11.EndOfMessage):
                if not isinstance(event, h11.Data) or len(body) + len(event.data) > MAX_THEX_BYTES:
                    raise RemoteProtocolError("THEX answer too big or malformed")
                body += event.data
        except (OSError, RemoteProtocolError, h11.LocalProtocolError):
            self.mesh.thex_done(st.key, None)
            return False
        error = self.mesh.thex_done(st.key, bytes(body) if ok else None)
        if error is None:
            for key, start, end in self.mesh.take_unverified():  # chunks that came before the tree
                if key in self._sources and not self.mesh.check(self._pread, start, end):
                    self._unlearn(self._sources[key], start, end)
            # Every chunk from now on covers whole tree nodes.
            size = self.mesh.chunk_size(self._chunk_size)
            spans: list[tuple[int, int]] = []
            for start, end in sorted(self._pending):
                if spans and spans[-1][1] == start:
                    start = spans.pop()[0]
                spans.append((start, end))
            self._pending = deque()
            for start, end in spans:
                self._pending.extend((a, min(end, (a // size + 1) * size)) for a in self._cuts(start, end, size))
        h = conn.h11
        if h.our_state is h11.DONE and h.their_state is h11.DONE:
            h.start_next_cycle()
            return True
        return False

    @staticmethod
    def _cuts(start: int, end: int, size: int) -> list[int]:
        """Chunk starts in [start, end) so that chunks end on multiples of `size`."""
        return [start, *range((start // size + 1) * size, end, size)]

    # --- progress ---------------------------------------------------------------------

    def _report(self, state: str) -> None:
        if self._progress_cb is None:
            return
        now = asyncio.get_running_loop().time()
        last_time, last_state = self._last_report
        if state == last_state and now - last_time < PROGRESS_INTERVAL:
            return
        self._last_report = (now, state)
        rate = self._session_bytes / max(now - self._t0, 1e-3)
        self._progress_cb(DownloadProgress(self._have.total(), self.size, len(self._workers), rate, state))
