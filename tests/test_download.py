"""Downloads against real loopback HTTP servers and real files: swarming, resume, verify, PUSH."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path

import pytest

from gnut.errors import LocalProtocolError
from gnut.protocol.guid import new_guid
from gnut.runtime.download import (
    CHUNK_SIZE,
    PARTIAL_DIR,
    Download,
    DownloadError,
    DownloadProgress,
    Source,
    needs_push,
    normalize_urn,
    parse_magnet,
    safe_name,
)

SIZE = 300_000
TEST_DEADLINE = 60.0  # no single test may hang the suite


def aio(fn):
    """Run an async test on a fresh asyncio event loop (the suite uses no asyncio plugin)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(fn(*args, **kwargs), TEST_DEADLINE))

    return run


def on_uvloop(fn):
    """Run an async test on uvloop, the node's production loop."""
    uvloop = pytest.importorskip("uvloop")

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(asyncio.wait_for(fn(*args, **kwargs), TEST_DEADLINE))

    return run


SMALL_CHUNK = 32 * 1024


def make_data(size: int = SIZE, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def urn_of(data: bytes) -> str:
    return "urn:sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode()


class FileServer:
    """A tiny HTTP/1.1 server for one byte string, with Range and configurable faults.

    Faults: die_after (serve that many body bytes in total, then close the socket and stop
    listening), corrupt (flip a byte in every body), busy_first (answer that many 503s
    first), status (answer every request with this status), close_each (Connection: close),
    ignore_range (always 200 with the whole file), extra_body (claim and send more bytes
    than asked), stall (send the head, then nothing), huge_header (a 20 KiB header line),
    throttle (pause between 8 KiB pieces), dribble (every byte of every response in its own
    write), junk (bytes after each body, outside Content-Length), range_shift (a Content-Range
    that does not answer the request), content_urn (an X-Gnutella-Content-URN header).
    """

    def __init__(self, data: bytes, **faults) -> None:
        self.data = data
        self.die_after: int | None = faults.pop("die_after", None)
        self.corrupt: bool = faults.pop("corrupt", False)
        self.busy_first: int = faults.pop("busy_first", 0)
        self.retry_after: str = faults.pop("retry_after", "0")
        self.status: int | None = faults.pop("status", None)
        self.close_each: bool = faults.pop("close_each", False)
        self.ignore_range: bool = faults.pop("ignore_range", False)
        self.extra_body: int = faults.pop("extra_body", 0)
        self.stall: bool = faults.pop("stall", False)
        self.huge_header: bool = faults.pop("huge_header", False)
        self.throttle: float = faults.pop("throttle", 0.0)
        self.dribble: bool = faults.pop("dribble", False)
        self.junk: bytes = faults.pop("junk", b"")
        self.range_shift: int = faults.pop("range_shift", 0)
        self.content_urn: str | None = faults.pop("content_urn", None)
        assert not faults, faults
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.served: list[tuple[int, int]] = []
        self.bytes_sent = 0
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> FileServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    def source(self, *, urn: str | None = "", firewalled: bool = False, name: str = "file.bin") -> Source:
        return Source(
            host="127.0.0.1",
            port=self.port,
            index=3,
            name=name,
            size=len(self.data),
            urn=urn_of(self.data) if urn == "" else urn,
            servent_guid=new_guid(),
            firewalled=firewalled,
        )

    async def _send_body(self, writer: asyncio.StreamWriter, body: bytes, start: int) -> bool:
        """Send `body`; False when the die_after budget ran out (socket closed)."""
        if self.die_after is not None and self.bytes_sent + len(body) > self.die_after:
            body = body[: self.die_after - self.bytes_sent]
            alive = False
        else:
            alive = True
        step = 1 if self.dribble else 8192 if self.throttle else len(body) or 1
        for i in range(0, len(body), step):
            writer.write(body[i : i + step])
            await writer.drain()
            if self.throttle or self.dribble:
                await asyncio.sleep(self.throttle)
        self.bytes_sent += len(body)
        self.served.append((start, start + len(body)))
        if not alive:
            writer.close()
            self.server.close()
        return alive

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                target = lines[0].split(" ")[1]
                headers = {}
                for line in lines[1:]:
                    if line:
                        key, _, value = line.partition(":")
                        headers[key.strip().lower()] = value.strip()
                self.requests.append((target, headers))
                if self.busy_first:
                    self.busy_first -= 1
                    writer.write(
                        b"HTTP/1.1 503 Busy\r\nRetry-After: %s\r\nContent-Length: 0\r\n\r\n"
                        % self.retry_after.encode()
                    )
                    continue
                if self.status is not None:
                    writer.write(b"HTTP/1.1 %d Nope\r\nContent-Length: 0\r\n\r\n" % self.status)
                    continue
                first, _, last = headers["range"].removeprefix("bytes=").partition("-")
                start, end = int(first), min(int(last) + 1, len(self.data))
                if self.ignore_range:
                    start, end = 0, len(self.data)
                body = bytearray(self.data[start:end])
                if self.corrupt:
                    body[len(body) // 2] ^= 0xFF
                body += b"x" * self.extra_body
                lines = ["HTTP/1.1 200 OK" if self.ignore_range else "HTTP/1.1 206 Partial Content"]
                if not self.ignore_range:
                    shifted = start + self.range_shift
                    lines.append(f"Content-Range: bytes {shifted}-{end - 1}/{len(self.data)}")
                lines.append(f"Content-Length: {len(body)}")
                if self.content_urn:
                    lines.append(f"X-Gnutella-Content-URN: {self.content_urn}")
                if self.close_each:
                    lines.append("Connection: close")
                if self.huge_header:
                    lines.append("X-Padding: " + "p" * 20_000)
                head = ("\r\n".join(lines) + "\r\n\r\n").encode()
                for i in range(0, len(head), 1 if self.dribble else len(head)):
                    writer.write(head[i : i + (1 if self.dribble else len(head))])
                    if self.dribble:
                        await writer.drain()
                        await asyncio.sleep(0)
                if self.stall:
                    await asyncio.sleep(3600)
                if not await self._send_body(writer, bytes(body), start) or self.close_each:
                    break
                writer.write(self.junk)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def partial(out: Path, data: bytes, suffix: str) -> Path:
    return out / PARTIAL_DIR / (urn_of(data)[9:] + suffix)


def visible_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name != PARTIAL_DIR)


def download(data: bytes, out: Path, sources: list[Source], **kw) -> Download:
    kw.setdefault("assume_private_firewalled", False)
    kw.setdefault("retry_base", 0.01)
    kw.setdefault("timeout", 5.0)
    return Download(urn_of(data), len(data), kw.pop("name", "file.bin"), out, sources=sources, **kw)


# --- whole downloads --------------------------------------------------------------------


@aio
async def test_single_source_full_download_verified(tmp_path: Path) -> None:
    data = make_data()
    seen: list[DownloadProgress] = []
    async with FileServer(data) as srv:
        path = await download(data, tmp_path, [srv.source()], progress=seen.append).run()
    assert path == tmp_path / "file.bin"
    assert path.read_bytes() == data
    assert srv.bytes_sent == SIZE
    assert srv.connections == 1  # keep-alive carried both chunks
    assert [t for t, _ in srv.requests] == [f"/uri-res/N2R?{urn_of(data)}"] * 2
    _, first = srv.requests[0]
    assert first["range"] == f"bytes=0-{CHUNK_SIZE - 1}"
    assert first["connection"] == "Keep-Alive"
    assert first["user-agent"].startswith("gnut/") and "x-features" in first and "host" in first
    assert seen[-1].state == "complete" and seen[-1].done == seen[-1].total == SIZE
    assert not partial(tmp_path, data, ".part").exists() and not partial(tmp_path, data, ".state").exists()


@on_uvloop
async def test_swarm_with_push_and_failures_on_uvloop(tmp_path: Path) -> None:
    data = make_data()
    async with (
        FileServer(data) as direct,
        FileServer(data, close_each=True) as fw,
        FileServer(data, die_after=1) as dead,
    ):
        pushes = []

        async def push(source: Source) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            pushes.append(source)
            return await asyncio.open_connection("127.0.0.1", fw.port)

        srcs = [direct.source(), fw.source(firewalled=True), dead.source()]
        path = await download(data, tmp_path, srcs, push=push, chunk_size=SMALL_CHUNK, max_failures=2).run()
    assert path.read_bytes() == data
    assert direct.bytes_sent > 0 and fw.bytes_sent > 0
    assert len(pushes) == fw.connections  # close_each: one PUSH per chunk fetched from it
    assert direct.bytes_sent + fw.bytes_sent + dead.bytes_sent == SIZE


@aio
async def test_source_announcing_another_urn_is_dropped(tmp_path: Path) -> None:
    data = make_data(50_000)
    async with FileServer(data, content_urn=urn_of(b"other")) as wrong, FileServer(data) as good:
        d = download(data, tmp_path, [wrong.source(), good.source()], max_parallel=1)
        path = await d.run()
    assert path.read_bytes() == data and len(wrong.requests) == 1
    async with FileServer(data, content_urn=urn_of(data).lower()) as same:
        out = tmp_path / "again"
        assert (await download(data, out, [same.source()]).run()).read_bytes() == data


@aio
async def test_get_by_index_and_name_when_hit_has_no_urn(tmp_path: Path) -> None:
    data = make_data(5000)
    async with FileServer(data) as srv:
        src = srv.source(urn=None, name="a b/ü.txt")
        path = await download(data, tmp_path, [src], name="a b/ü.txt", node_addr="127.0.0.1:6346").run()
    assert path.read_bytes() == data and path.name == "a b_ü.txt"
    target, headers = srv.requests[0]
    assert target == "/get/3/a%20b%2F%C3%BC.txt"
    assert headers["x-node"] == "127.0.0.1:6346"


@aio
async def test_three_sources_share_the_ranges(tmp_path: Path) -> None:
    data = make_data()
    async with FileServer(data) as a, FileServer(data) as b, FileServer(data) as c:
        srcs = [a.source(), b.source(), c.source()]
        path = await download(data, tmp_path, srcs, chunk_size=SMALL_CHUNK, max_parallel=3).run()
        servers = (a, b, c)
    assert path.read_bytes() == data
    assert sum(s.bytes_sent > 0 for s in servers) >= 2
    assert sum(s.bytes_sent for s in servers) == SIZE  # every byte fetched once
    spans = sorted(span for s in servers for span in s.served)
    assert spans[0][0] == 0 and spans[-1][1] == SIZE
    assert all(x[1] == y[0] for x, y in zip(spans, spans[1:], strict=False))


@aio
async def test_max_parallel_one_uses_one_source(tmp_path: Path) -> None:
    data = make_data()
    async with FileServer(data) as a, FileServer(data) as b:
        await download(data, tmp_path, [a.source(), b.source()], chunk_size=SMALL_CHUNK, max_parallel=1).run()
    assert (a.bytes_sent, b.bytes_sent) == (SIZE, 0)


@aio
async def test_killed_source_then_resume_fetches_only_missing_bytes(tmp_path: Path) -> None:
    data = make_data()
    async with FileServer(data, die_after=100_000) as dying:
        with pytest.raises(DownloadError, match="no usable source"):
            await download(data, tmp_path, [dying.source()], chunk_size=SMALL_CHUNK, max_failures=2).run()
    state = json.loads(partial(tmp_path, data, ".state").read_text())
    assert state["done"] == [[0, 100_000]]
    assert visible_files(tmp_path) == []
    async with FileServer(data) as fresh:
        path = await download(data, tmp_path, [fresh.source()], chunk_size=SMALL_CHUNK).run()
    assert path.read_bytes() == data
    assert fresh.bytes_sent == SIZE - 100_000
    assert min(start for start, _ in fresh.served) == 100_000


@aio
async def test_source_closing_each_connection_is_redialed(tmp_path: Path) -> None:
    data = make_data()
    async with FileServer(data, close_each=True) as srv:
        path = await download(data, tmp_path, [srv.source()], chunk_size=SMALL_CHUNK).run()
    assert path.read_bytes() == data
    assert srv.connections == len(srv.requests) == -(-SIZE // SMALL_CHUNK)


@aio
async def test_whole_file_200_is_accepted_from_offset_zero(tmp_path: Path) -> None:
    data = make_data()
    async with FileServer(data, ignore_range=True) as srv:
        path = await download(data, tmp_path, [srv.source()], chunk_size=SMALL_CHUNK).run()
    assert path.read_bytes() == data
    assert len(srv.requests) == 1


@aio
async def test_corrupt_source_set_aside_and_clean_source_used(tmp_path: Path) -> None:
    data = make_data()
    states: list[str] = []
    async with FileServer(data, corrupt=True) as bad, FileServer(data) as good:
        d = download(data, tmp_path, [bad.source(), good.source()], max_parallel=1)
        d_progress = []
        d._progress_cb = lambda p: (states.append(p.state), d_progress.append(p))
        path = await d.run()
    assert path.read_bytes() == data
    assert visible_files(tmp_path) == ["file.bin"]
    aside = partial(tmp_path, data, ".corrupt-1")
    assert aside.stat().st_size == SIZE and aside.read_bytes() != data
    assert bad.bytes_sent == SIZE and good.bytes_sent == SIZE
    assert "restarting" in states and states[-1] == "complete"
    assert d.add_source(bad.source()) is True  # a new key; but the old one stays excluded:
    assert d.add_source(d._sources[next(iter(d._sources))].source) is False


@aio
async def test_corrupt_only_source_raises_and_never_presents_the_file(tmp_path: Path) -> None:
    data = make_data()
    async with FileServer(data, corrupt=True) as bad:
        with pytest.raises(DownloadError, match="sha1 mismatch"):
            await download(data, tmp_path, [bad.source()]).run()
    assert visible_files(tmp_path) == []
    assert partial(tmp_path, data, ".corrupt-1").read_bytes() != data
    assert not partial(tmp_path, data, ".part").exists()


@aio
async def test_busy_503_retry_after_is_honoured(tmp_path: Path) -> None:
    data = make_data(10_000)
    async with FileServer(data, busy_first=1, retry_after="1") as srv:
        t0 = time.monotonic()
        path = await download(data, tmp_path, [srv.source()]).run()
        elapsed = time.monotonic() - t0
    assert path.read_bytes() == data
    assert len(srv.requests) == 2 and elapsed >= 0.9


@pytest.mark.parametrize("status", [404, 410, 416])
@aio
async def test_gone_status_drops_source_without_retry(tmp_path: Path, status: int) -> None:
    data = make_data(10_000)
    async with FileServer(data, status=status) as srv:
        with pytest.raises(DownloadError, match=f"HTTP {status}"):
            await download(data, tmp_path, [srv.source()], max_failures=4).run()
    assert len(srv.requests) == 1


@pytest.mark.parametrize("fault", ["extra_body", "huge_header", "stall", "range_shift"])
@aio
async def test_misbehaving_source_dropped_other_source_finishes(tmp_path: Path, fault: str) -> None:
    data = make_data()
    faults = {
        "extra_body": {"extra_body": 10},
        "huge_header": {"huge_header": True},
        "stall": {"stall": True},
        "range_shift": {"range_shift": 1},
    }
    async with FileServer(data, **faults[fault]) as bad, FileServer(data) as good:
        bad_src = bad.source()
        d = download(data, tmp_path, [bad_src, good.source()], timeout=0.3, max_failures=2)
        path = await d.run()
    assert path.read_bytes() == data
    assert bad.requests and good.bytes_sent == SIZE  # nothing the bad source sent was kept
    assert d._sources[bad_src.key].last_error


@aio
async def test_bad_source_alone_fails_with_reason(tmp_path: Path) -> None:
    data = make_data(10_000)
    async with FileServer(data, extra_body=5) as bad:
        with pytest.raises(DownloadError, match="Content-Length"):
            await download(data, tmp_path, [bad.source()], max_failures=2).run()
    assert len(bad.requests) == 2


@aio
async def test_push_source_is_reached_through_push_callback(tmp_path: Path) -> None:
    data = make_data()
    pushed: list[Source] = []
    async with FileServer(data) as srv:

        async def push(source: Source) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            pushed.append(source)
            return await asyncio.open_connection("127.0.0.1", srv.port)

        # port 1: a direct dial would be refused, so success proves the PUSH path was taken
        src = Source("127.0.0.1", 1, 3, "file.bin", SIZE, urn_of(data), new_guid(), firewalled=True)
        path = await download(data, tmp_path, [src], push=push).run()
    assert path.read_bytes() == data
    assert pushed == [src]  # one GIV connection carried both chunks (keep-alive)
    assert srv.requests[0][0] == f"/uri-res/N2R?{urn_of(data)}"


@aio
async def test_private_address_needs_push_and_fails_without_route(tmp_path: Path) -> None:
    data = make_data(1000)
    src = Source("127.0.0.1", 1, 3, "file.bin", 1000, None, new_guid(), firewalled=False)
    with pytest.raises(DownloadError, match="PUSH"):
        await download(data, tmp_path, [src], assume_private_firewalled=True).run()


@aio
async def test_source_added_while_running_is_used(tmp_path: Path) -> None:
    data = make_data()
    async with FileServer(data, throttle=0.01) as slow, FileServer(data) as fast:
        d = download(data, tmp_path, [slow.source()], chunk_size=SMALL_CHUNK)
        task = asyncio.ensure_future(d.run())
        while slow.bytes_sent == 0:
            await asyncio.sleep(0.01)
        assert d.add_source(fast.source()) is True
        path = await task
    assert path.read_bytes() == data and fast.bytes_sent > 0


@aio
async def test_second_download_of_the_same_file_is_refused(tmp_path: Path) -> None:
    data = make_data()
    async with FileServer(data, throttle=0.01) as srv:
        first = asyncio.ensure_future(download(data, tmp_path, [srv.source()]).run())
        while srv.bytes_sent == 0:
            await asyncio.sleep(0.01)
        with pytest.raises(DownloadError, match="already being downloaded"):
            await download(data, tmp_path, [srv.source()]).run()
        assert (await first).read_bytes() == data


@aio
async def test_existing_name_gets_a_number(tmp_path: Path) -> None:
    data = make_data(2000)
    (tmp_path / "file.bin").write_bytes(b"mine")
    (tmp_path / "file (1).bin").write_bytes(b"mine too")
    async with FileServer(data) as srv:
        path = await download(data, tmp_path, [srv.source()]).run()
    assert path.name == "file (2).bin" and path.read_bytes() == data
    assert (tmp_path / "file.bin").read_bytes() == b"mine"


@aio
async def test_empty_file(tmp_path: Path) -> None:
    path = await download(b"", tmp_path, [], name="empty").run()
    assert path.read_bytes() == b""


def test_add_source_rejects_other_file_and_duplicates(tmp_path: Path) -> None:
    data = make_data(100)
    d = download(data, tmp_path, [])
    src = Source("127.0.0.1", 9, 1, "f", 100, urn_of(data), b"\x01" * 16, False)
    assert d.add_source(src) is True
    assert d.add_source(src) is False
    assert d.add_source(Source("127.0.0.1", 8, 1, "f", 101, None, b"\x01" * 16, False)) is False
    assert d.add_source(Source("127.0.0.1", 7, 1, "f", 100, urn_of(b"x"), b"\x01" * 16, False)) is False
    assert d.add_source(Source("127.0.0.1", 6, 1, "f", 100, "urn:sha1:junk", b"\x01" * 16, False)) is False


# --- crash safety ---------------------------------------------------------------------------

CRASH_SCRIPT = """
import asyncio, sys
from pathlib import Path
from gnut.runtime.download import Download, Source
urn, size, port, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
src = Source("127.0.0.1", port, 1, "f", size, urn, bytes(16), False)
d = Download(urn, size, "f", out, sources=[src], chunk_size=16384, assume_private_firewalled=False)
asyncio.run(d.run())
"""


@pytest.mark.parametrize("kill_at", [20_000, 90_000, 220_000])
@aio
async def test_kill_9_leaves_a_readable_sidecar_that_resumes(tmp_path: Path, kill_at: int) -> None:
    data = make_data()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    async with FileServer(data, throttle=0.05) as srv:  # 220 KB takes > STATE_FLUSH_INTERVAL
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CRASH_SCRIPT, urn_of(data), str(SIZE), str(srv.port), str(tmp_path), env=env
        )
        deadline = time.monotonic() + 20
        while srv.bytes_sent < kill_at and time.monotonic() < deadline and proc.returncode is None:
            await asyncio.sleep(0.001)
        proc.kill()
        await proc.wait()
    assert proc.returncode == -9  # killed mid-transfer, not finished
    sidecar = partial(tmp_path, data, ".state")
    # Killed before its first save, a download legitimately has no sidecar yet.
    done = json.loads(sidecar.read_text())["done"] if sidecar.exists() else []
    part = partial(tmp_path, data, ".part").read_bytes()
    for start, end in done:  # every claimed byte really is on disk
        assert part[start:end] == data[start:end]
    claimed = sum(end - start for start, end in done)
    assert claimed < SIZE
    (sidecar.parent / f".{sidecar.name}.cut.tmp").write_text("{")  # as if killed mid-write
    async with FileServer(data) as fresh:
        path = await download(data, tmp_path, [fresh.source()]).run()
    assert path.read_bytes() == data and fresh.bytes_sent == SIZE - claimed
    assert list((tmp_path / PARTIAL_DIR).iterdir()) == []


def test_foreign_or_broken_sidecar_is_ignored(tmp_path: Path) -> None:
    data = make_data(1000)
    d = download(data, tmp_path, [])
    d.partial_dir.mkdir(parents=True)
    d.part_path.write_bytes(b"\0" * 1000)
    for junk in (
        b"{",
        b"[]",
        b'{"version": 1}',
        json.dumps({"version": 1, "urn": d.urn, "size": 1000, "done": [[0, 5000]], "served": []}).encode(),
    ):
        d.state_path.write_bytes(junk)
        d._open_part()
        os.close(d._fd)
        assert d._have.total() == 0


# --- helpers ----------------------------------------------------------------------------------

B32 = "IC5HK3OJSFIV2FDMQPV7QXEVPPEJHIFI"


def test_parse_magnet_full() -> None:
    uri = f"magnet:?xt=urn:sha1:{B32.lower()}&dn=My+File%20%C3%A9.mp3&xl=12345&tr=x"
    assert parse_magnet(uri) == (f"urn:sha1:{B32}", "My File é.mp3", 12345)


def test_parse_magnet_variants() -> None:
    assert parse_magnet(f"  urn:sha1:{B32}\n") == (f"urn:sha1:{B32}", None, None)
    assert parse_magnet(f"magnet:?xt=urn:bitprint:{B32}.TIGERTIGER&dn=x") == (f"urn:sha1:{B32}", "x", None)
    assert parse_magnet("magnet:?dn=only") == (None, "only", None)
    assert parse_magnet(f"MAGNET:?xt.1=urn:btih:abc&xt.2=urn:sha1:{B32}") == (f"urn:sha1:{B32}", None, None)
    hexdigest = base64.b32decode(B32).hex()
    assert parse_magnet(f"magnet:?xt=urn:sha1:{hexdigest}")[0] == f"urn:sha1:{B32}"


@pytest.mark.parametrize(
    "bad",
    [
        "http://x/",
        "magnet:?xt=urn:btih:abc",
        "magnet:?xt=urn:sha1:TOOSHORT",
        f"magnet:?xt=urn:sha1:{B32[:-1]}1",
        f"magnet:?xt=urn:sha1:{B32}&xl=-5",
        f"magnet:?xt=urn:sha1:{B32}&xl=%C2%B2",
        "magnet:?" + "a" * 9000,
        "",
    ],
)
def test_parse_magnet_rejects(bad: str) -> None:
    with pytest.raises(LocalProtocolError):
        parse_magnet(bad)


def test_normalize_urn() -> None:
    assert normalize_urn(f"URN:SHA1:{B32.lower()}") == f"urn:sha1:{B32}"
    with pytest.raises(LocalProtocolError):
        normalize_urn("urn:tree:tiger:abc")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../x", "_.._x"),
        ("/etc/passwd", "_etc_passwd"),
        ("..\\..\\win.ini", "_.._win.ini"),
        ("con", "_con"),
        ("CON.txt", "_CON.txt"),
        ("lpt1 .log", "_lpt1 .log"),
        ("a\x00b\x1fc\x7fd\u202eexe.txt", "abcdexe.txt"),
        ("...hidden", "hidden"),
        ("   ", "download"),
        ("..", "download"),
        ("trailing. . ", "trailing"),
        ("normal name (1).mp3", "normal name (1).mp3"),
        ('a<b>c:d"e|f?g*h', "a_b_c_d_e_f_g_h"),
    ],
)
def test_safe_name(raw: str, expected: str) -> None:
    assert safe_name(raw) == expected


def test_safe_name_length_keeps_extension() -> None:
    out = safe_name("é" * 300 + ".flac")
    assert out.endswith(".flac") and len(out.encode()) <= 255
    out.encode().decode()  # still valid UTF-8 after the cut


def test_needs_push() -> None:
    def src(host: str, port: int = 6346, fw: bool = False) -> Source:
        return Source(host, port, 1, "f", 1, None, bytes(16), fw)

    assert needs_push(src("127.0.0.1")) and needs_push(src("192.168.1.5")) and needs_push(src("10.1.2.3"))
    assert not needs_push(src("127.0.0.1"), assume_private_firewalled=False)
    assert not needs_push(src("8.8.8.8"))  # classification only: nothing is dialed
    assert needs_push(src("8.8.8.8", fw=True))
    assert needs_push(src("8.8.8.8", port=0))
    assert needs_push(src("0.0.0.0"), assume_private_firewalled=False)
    assert not needs_push(src("peer.example"))


# --- against our own upload server ------------------------------------------------------------


@pytest.mark.parametrize("with_urn", [True, False])
@aio
async def test_download_from_gnut_http_upload_server(tmp_path: Path, with_urn: bool) -> None:
    from gnut.runtime.http import HttpContext, handle_http
    from gnut.runtime.share import ShareIndex

    data = make_data()
    music = tmp_path / "music"
    music.mkdir()
    (music / "song one.ogg").write_bytes(data)
    index = ShareIndex([music])
    index.scan()
    (sf,) = index.files
    ctx = HttpContext(share=index)
    server = await asyncio.start_server(lambda r, w: handle_http(r, w, ctx), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        src = Source(
            "127.0.0.1", port, sf.index, sf.name, SIZE, sf.urn if with_urn else None, new_guid(), False
        )
        out = tmp_path / "out"
        path = await download(data, out, [src], name=sf.name, chunk_size=SMALL_CHUNK).run()
    finally:
        server.close()
    assert path == out / "song one.ogg" and path.read_bytes() == data
    assert ctx.stats["bytes_sent"] == SIZE


@aio
async def test_response_split_at_every_byte(tmp_path: Path) -> None:
    data = make_data(3000)
    async with FileServer(data, dribble=True) as srv:
        path = await download(data, tmp_path, [srv.source()], chunk_size=1000).run()
    assert path.read_bytes() == data and srv.connections == 1 and len(srv.requests) == 3


@aio
async def test_trailing_bytes_after_a_response_never_reach_the_file(tmp_path: Path) -> None:
    data = make_data(40_000)
    async with FileServer(data, junk=b"HTTP/1.1 999 junk\r\n\r\nxxxx") as srv:
        d = download(data, tmp_path, [srv.source()], chunk_size=10_000, max_failures=10)
        path = await d.run()
    assert path.read_bytes() == data
    assert srv.connections > 1  # the junk spoiled each kept-alive connection: redialed


GARBAGE_RESPONSES = [
    b"garbage\r\n\r\n",
    b"HTTP/1.1 206 X\r\nContent-Length: abc\r\n\r\n",
    b"HTTP/1.1 206 X\r\nContent-Range: bytes 9-0/10\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 206 X\r\nContent-Range: bytes 0-9/99999999999999999999999\r\nContent-Length: 10\r\n\r\n0123456789",
    b"HTTP/1.1 206 X\r\nContent-Range: bytes 0-9/11\r\nContent-Length: 10\r\n\r\n0123456789",
    b"HTTP/1.1 206 X\r\nTransfer-Encoding: chunked\r\nContent-Range: bytes 0-9/10\r\n\r\nzz\r\n",
    b"HTTP/1.1 206 X\r\nContent-Range: bytes 0-9/10\r\n\r\n0123",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n12345",
    b"HTTP/1.1 200 OK\r\n\r\n" + b"y" * 20,
    b"HTTP/1.1 302 Moved\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"\xff\xfe\x00" * 100,
    b"",
] + [random.Random(seed).randbytes(random.Random(seed).randint(1, 400)) for seed in range(8)]


@pytest.mark.parametrize("blob", GARBAGE_RESPONSES)
@aio
async def test_garbage_responses_fail_cleanly(tmp_path: Path, blob: bytes) -> None:
    """Whatever a source answers, the download ends in DownloadError, never another exception."""
    data = b"0123456789"

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(blob)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    src = Source("127.0.0.1", port, 1, "f", 10, urn_of(data), new_guid(), False)
    try:
        with pytest.raises(DownloadError):
            await download(data, tmp_path, [src], max_failures=2, timeout=1.0).run()
    finally:
        server.close()
    assert visible_files(tmp_path) == []


def test_the_size_most_addresses_announce_wins_not_the_first_answer():
    """A fast liar announcing another size must not steer the download away from honest sources."""
    from gnut.protocol.spam import MAX_PLAUSIBLE_SIZE
    from gnut.runtime.download import Source, agreed_size

    def src(host: str, size: int, port: int = 6346) -> Source:
        return Source(host=host, port=port, index=1, name="x.bin", size=size, urn=None, servent_guid=b"", firewalled=False)

    liar_first = [src("127.0.0.66", 10**12), src("127.0.0.2", 5000), src("127.0.0.3", 5000)]
    assert agreed_size(liar_first) == 5000
    # One address counts once however many ports it answers from.
    sybil = [src("127.0.0.66", 999, port) for port in range(1, 50)] + [src("127.0.0.2", 5000), src("127.0.0.3", 5000)]
    assert agreed_size(sybil) == 5000
    assert agreed_size([src("127.0.0.2", 7000), src("127.0.0.3", 5000)]) == 5000  # a tie: the smaller
    assert agreed_size([src("127.0.0.2", 0), src("127.0.0.3", MAX_PLAUSIBLE_SIZE + 1)]) is None
