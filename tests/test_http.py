"""Tests for gnut.runtime.http: real files and loopback sockets on asyncio and uvloop, real servents' requests."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest
import uvloop

from gnut.constants import HEADER_LEN, MSG_QUERYHIT
from gnut.errors import RemoteProtocolError
from gnut.protocol import messages
from gnut.runtime.http import (
    HTTP_SNIFF_BYTES,
    MAX_HEADER_BYTES,
    HttpContext,
    handle_http,
    is_http_start,
    parse_giv,
    parse_range,
)
from gnut.runtime.share import ShareIndex, build_hits

VECTORS = Path(__file__).resolve().parent / "vectors"  # captured real-servent bytes (vectors/README.md)
TEST_DEADLINE = 30.0
SERVENT_GUID = bytes(range(16))
BIG = random.Random(3).randbytes(300_000)
SECRET = b"root:x:0:0:SECRET"


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest):
    """Run a coroutine on the standard loop (native sendfile) and on uvloop (chunked fallback)."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(coro):
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(asyncio.wait_for(coro, TEST_DEADLINE))

    return runner


@pytest.fixture
def share(tmp_path: Path) -> ShareIndex:
    root = tmp_path / "share"
    root.mkdir()
    (root / "hello world.txt").write_bytes(b"0123456789")
    (root / "big file.bin").write_bytes(BIG)
    (root / "empty.dat").write_bytes(b"")
    (root / "Café ü.txt").write_bytes(b"unicode name")
    (tmp_path / "secret").write_bytes(SECRET)
    idx = ShareIndex([root])
    idx.scan()
    return idx


def file_named(share: ShareIndex, name: str):
    return next(sf for sf in share if sf.name == name)


def quote(name: str) -> str:
    from urllib.parse import quote as q

    return q(name)


class Server:
    """handle_http behind asyncio.start_server on 127.0.0.1, port 0."""

    def __init__(self, ctx: HttpContext) -> None:
        self.ctx = ctx
        self.tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> Server:
        async def handler(reader, writer):
            self.tasks.append(asyncio.current_task())
            await handle_http(reader, writer, self.ctx)

        self.server = await asyncio.start_server(handler, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def connect(self):
        return await asyncio.open_connection("127.0.0.1", self.port)


async def read_response(reader: asyncio.StreamReader, head: bool = False):
    """(status, {lower name: value}, body) of one response; body read by Content-Length."""
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = b""
    if not head:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def request(srv: Server, raw: bytes, head: bool = False):
    reader, writer = await srv.connect()
    writer.write(raw)
    await writer.drain()
    try:
        return await read_response(reader, head)
    finally:
        writer.close()


def get(target: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


# --- pure helpers ---------------------------------------------------------------------------------
def test_is_http_start() -> None:
    for start in (b"GET / HTTP/1.1", b"HEAD /get/1/x HTTP/1.1", b"GIV 1:00/x\n\n"):
        assert is_http_start(start[:HTTP_SNIFF_BYTES])
    for start in (b"GNUTELLA CONNECT/0.6\r\n", b"GET", b"get / HTTP/1.1", b"POST / HTTP/1.1", b""):
        assert not is_http_start(start)


@pytest.mark.parametrize(
    ("value", "size", "expected"),
    [
        (b"bytes=0-0", 10, (0, 0)),
        (b"bytes=9-9", 10, (9, 9)),
        (b"bytes=9-", 10, (9, 9)),
        (b"bytes=0-", 10, (0, 9)),
        (b"bytes=2-5", 10, (2, 5)),
        (b"bytes=5-500", 10, (5, 9)),
        (b"bytes=-3", 10, (7, 9)),
        (b"bytes=-100", 10, (0, 9)),
        (b"BYTES = 1-2", 10, (1, 2)),
        (b"bytes=1-2,4-5", 10, (1, 2)),  # several ranges: the first is served
        (b"bytes=,3-4", 10, (3, 4)),
        (b"bytes=10-", 10, None),  # starts at the end
        (b"bytes=11-20", 10, None),
        (b"bytes=5-4", 10, None),  # reversed
        (b"bytes=-0", 10, None),
        (b"bytes=-", 10, None),
        (b"bytes=", 10, None),
        (b"bytes=a-b", 10, None),
        (b"bytes=1-2-3", 10, None),
        (b"bytes=+1-2", 10, None),
        (b"bytes=\xff-1", 10, None),
        (b"items=0-1", 10, None),
        (b"0-1", 10, None),
        (b"garbage", 10, None),
        (b"bytes=" + b"9" * 30 + b"-", 10, None),
        (b"bytes=0-0", 0, None),  # nothing is satisfiable in an empty file
        (b"bytes=-5", 0, None),
    ],
)
def test_parse_range(value: bytes, size: int, expected) -> None:
    assert parse_range(value, size) == expected


def test_parse_giv_vector_and_errors() -> None:
    path = VECTORS / "gnutellabun" / "giv_from_gbun.bin"
    index, guid, name = parse_giv(path.read_bytes())
    assert (index, guid.hex(), name) == (1, "02507692f1f71d62ff48b573eb7ca300", "interopzebra sample.bin")
    assert parse_giv(b"GIV 7:" + b"AB" * 16 + b"/x\r\n\r\n") == (7, b"\xab" * 16, "x")
    assert parse_giv(b"GIV 7:" + b"AB" * 16 + b"/\xff\n\n")[2] == "\ufffd"
    for bad in (
        b"GIV 1:" + b"ab" * 15 + b"/x\n\n",
        b"GIV x:" + b"ab" * 16 + b"/x\n\n",
        b"GIV 1" + b"ab" * 16 + b"/x\n\n",
        b"GIV 1:" + b"ab" * 16 + b"x\n\n",
        b"GIV 1:" + b"zz" * 16 + b"/x\n\n",
        b"GIV 1:" + "é".encode() * 16 + b"/x\n\n",
        b"GIV 99999999999:" + b"ab" * 16 + b"/x\n\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"",
    ):
        with pytest.raises(RemoteProtocolError):
            parse_giv(bad)


# --- uploads over loopback ----------------------------------------------------------------------
def test_get_and_head_both_paths(run, share: ShareIndex) -> None:
    ctx = HttpContext(share=share)
    for name in ("hello world.txt", "big file.bin", "Café ü.txt", "empty.dat"):
        sf = file_named(share, name)
        data = sf.path.read_bytes()
        for target in (f"/get/{sf.index}/{quote(name)}", f"/uri-res/N2R?{sf.urn}"):

            async def go(target=target):
                async with Server(ctx) as srv:
                    got = await request(srv, get(target))
                    head = await request(srv, get(target, "HEAD"), head=True)
                return got, head

            (status, headers, body), (hstatus, hheaders, _) = run(go())
            assert status == 200 and body == data
            assert headers["content-length"] == str(len(data))
            assert headers["x-gnutella-content-urn"] == sf.urn
            assert headers["server"].startswith("gnut/")
            assert hstatus == 200 and hheaders["content-length"] == str(len(data))
            assert hheaders["x-gnutella-content-urn"] == sf.urn
    assert ctx.stats["bytes_sent"] == 2 * (10 + len(BIG) + 12)
    assert ctx.stats["uploads_finished"] == 6 and ctx.active_uploads == 0


def test_ranges_over_the_wire(run, share: ShareIndex) -> None:
    sf = file_named(share, "big file.bin")
    n = sf.size
    cases = [
        ("bytes=0-0", 206, (0, 0)),
        (f"bytes={n - 1}-{n - 1}", 206, (n - 1, n - 1)),
        (f"bytes={n - 1}-", 206, (n - 1, n - 1)),
        ("bytes=-1000000", 206, (0, n - 1)),
        ("bytes=1000-199999", 206, (1000, 199999)),
        ("bytes=10-19, 30-39", 206, (10, 19)),
        (f"bytes={n}-", 416, None),
        ("bytes=20-10", 416, None),
        ("bytes=zz", 416, None),
        ("pages=1-2", 416, None),
    ]

    async def go():
        out = []
        async with Server(HttpContext(share=share)) as srv:
            for rng, _, _ in cases:
                out.append(await request(srv, get(f"/uri-res/N2R?{sf.urn}", extra=f"Range: {rng}\r\n")))
        return out

    for (rng, status, span), (got_status, headers, got_body) in zip(cases, run(go()), strict=True):
        assert got_status == status, rng
        if status == 206:
            assert got_body == BIG[span[0] : span[1] + 1], rng
            assert headers["content-range"] == f"bytes {span[0]}-{span[1]}/{n}"
        else:
            assert headers["content-range"] == f"bytes */{n}"


def test_keep_alive_and_pipelining(run, share: ShareIndex) -> None:
    sf = file_named(share, "hello world.txt")
    target = f"/get/{sf.index}/{quote(sf.name)}"

    async def go():
        async with Server(HttpContext(share=share)) as srv:
            reader, writer = await srv.connect()
            writer.write(get(target, extra="Range: bytes=0-3\r\n"))
            first = await read_response(reader)
            writer.write(get(target, extra="Range: bytes=4-\r\n"))
            second = await read_response(reader)
            # two more pipelined in one write, the second sent one byte at a time after it
            writer.write(get(f"/uri-res/N2R?{sf.urn}") + get("/nothing"))
            third = await read_response(reader)
            fourth = await read_response(reader)
            for byte in get(target, "HEAD"):
                writer.write(bytes((byte,)))
                await writer.drain()
            fifth = await read_response(reader, head=True)
            writer.close()
            return first, second, third, fourth, fifth

    first, second, third, fourth, fifth = run(go())
    assert (first[0], first[2]) == (206, b"0123")
    assert (second[0], second[2]) == (206, b"456789")
    assert (third[0], third[2]) == (200, b"0123456789")
    assert fourth[0] == 404
    assert fifth[0] == 200 and fifth[1]["content-length"] == "10"


def test_request_limit_closes(run, share: ShareIndex) -> None:
    sf = file_named(share, "hello world.txt")

    async def go():
        async with Server(HttpContext(share=share, max_requests=2)) as srv:
            reader, writer = await srv.connect()
            writer.write(get(f"/uri-res/N2R?{sf.urn}") * 3)
            a = await read_response(reader)
            b = await read_response(reader)
            rest = await reader.read()
            writer.close()
            return a, b, rest

    a, b, rest = run(go())
    assert a[0] == b[0] == 200 and "connection" not in a[1]
    assert b[1]["connection"] == "close" and rest == b""


def test_slots_full_gives_503(run, share: ShareIndex) -> None:
    sf = file_named(share, "hello world.txt")
    ctx = HttpContext(share=share, upload_slots=1)
    target = get(f"/uri-res/N2R?{sf.urn}")

    async def go():
        async with Server(ctx) as srv:
            r1, w1 = await srv.connect()
            w1.write(target)
            first = await read_response(r1)  # keep-alive: this connection keeps its slot
            busy = await request(srv, target)
            head_ok = await request(srv, get(f"/uri-res/N2R?{sf.urn}", "HEAD"), head=True)
            w1.write(target)
            again = await read_response(r1)  # the slot holder is still served
            w1.close()
            await w1.wait_closed()
            for _ in range(100):
                if ctx.active_uploads == 0:
                    break
                await asyncio.sleep(0.01)
            after = await request(srv, target)
            return first, busy, head_ok, again, after

    first, busy, head_ok, again, after = run(go())
    assert first[0] == 200 and again[0] == 200 and after[0] == 200
    assert busy[0] == 503 and busy[1]["retry-after"].isdigit() and busy[1]["connection"] == "close"
    assert head_ok[0] == 200
    assert ctx.stats["uploads_refused"] == 1


TRAVERSALS = [
    "/get/1/../../secret",
    "/get/1/..%2f..%2fsecret",
    "/get/1/%2e%2e%2f%2e%2e%2fsecret",
    "/get/1/%252e%252e%252fsecret",
    "/get/1/%2E%2E/%2E%2E/secret",
    "/get/1//etc/passwd",
    "/get/1/%2Fetc%2Fpasswd",
    "/etc/passwd",
    "/secret",
    "/../secret",
    "/get/../../secret",
    "/get/1/hello%20world.txt%00.secret",
    "/get/1/..\\..\\secret",
    "/get/1/%5c..%5c..%5csecret",
    "/uri-res/N2R?../../secret",
    "/uri-res/N2R?file:///etc/passwd",
    "/uri-res/N2R?urn:sha1:../../../secret",
    "/get/-1/x",
    "/get/0x1/hello%20world.txt",
    "/get/%31/hello%20world.txt",
    "/get/99999999999999999999/x",
    "http://127.0.0.1/get/1/../secret",
    "/get/1/%ff%fe",
]


def test_path_traversal_never_serves_outside(run, share: ShareIndex) -> None:
    async def go():
        out = []
        async with Server(HttpContext(share=share)) as srv:
            for target in TRAVERSALS:
                out.append(await request(srv, get(target)))
            for raw in (
                b"GET /get/1/a\x00b HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /get/1/a b HTTP/1.1\r\nHost: x\r\n\r\n",
            ):
                out.append(await request(srv, raw))
        return out

    for target, (status, _, body) in zip([*TRAVERSALS, "NUL", "space"], run(go()), strict=True):
        assert status in (400, 404), target
        assert SECRET not in body


def test_changed_file_is_gone_until_rescan(run, share: ShareIndex) -> None:
    sf = file_named(share, "hello world.txt")
    sf.path.write_bytes(b"changed content!")

    status, _, body = run(_one(share, get(f"/get/{sf.index}/{quote(sf.name)}")))
    assert status == 410 and b"changed" not in body
    share.scan()
    fresh = file_named(share, "hello world.txt")
    status, _, body = run(_one(share, get(f"/uri-res/N2R?{fresh.urn}")))
    assert (status, body) == (200, b"changed content!")


def test_symlink_swapped_after_scan_is_not_followed(run, share: ShareIndex, tmp_path: Path) -> None:
    sf = file_named(share, "hello world.txt")
    os.unlink(sf.path)
    os.symlink(tmp_path / "secret", sf.path)
    status, _, body = run(_one(share, get(f"/uri-res/N2R?{sf.urn}")))
    assert status == 410 and SECRET not in body


async def _one(share: ShareIndex, raw: bytes, head: bool = False, **ctx_kw):
    async with Server(HttpContext(share=share, **ctx_kw)) as srv:
        return await request(srv, raw, head)


def test_bad_requests(run, share: ShareIndex) -> None:
    assert run(_one(share, b"BLAH\r\n\r\n"))[0] == 400
    assert run(_one(share, b"GET / HTTP/1.1\r\nno colon here\r\n\r\n"))[0] == 400
    assert run(_one(share, b"GET / HTTP/1.1\r\n\r\n"))[0] == 400  # HTTP/1.1 without Host (h11)
    assert run(_one(share, get("/", "POST")))[0] == 405
    huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n"
    assert run(_one(share, huge))[0] == 431
    endless = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (4 * MAX_HEADER_BYTES)  # never ends
    assert run(_one(share, endless))[0] == 431
    body = b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"z" * 100000
    assert run(_one(share, body))[0] == 413


def test_slow_sender_gets_408_and_idle_closes(run, share: ShareIndex) -> None:
    sf = file_named(share, "hello world.txt")

    async def go():
        async with Server(HttpContext(share=share, request_timeout=0.3, idle_timeout=0.3)) as srv:
            reader, writer = await srv.connect()
            writer.write(b"GET /uri-res/N2R?")  # ... and nothing more
            slow = await read_response(reader)
            rest = await reader.read()
            writer.close()
            reader, writer = await srv.connect()
            writer.write(get(f"/uri-res/N2R?{sf.urn}"))
            ok = await read_response(reader)
            idle_eof = await reader.read()  # idle on keep-alive: the server closes
            writer.close()
            reader, writer = await srv.connect()
            silent_eof = await reader.read()  # never sends a byte
            writer.close()
            return slow, rest, ok, idle_eof, silent_eof

    slow, rest, ok, idle_eof, silent_eof = run(go())
    assert slow[0] == 408 and rest == b""
    assert ok[0] == 200 and idle_eof == b"" and silent_eof == b""


def test_client_disconnect_mid_upload_releases_slot(run, share: ShareIndex) -> None:
    sf = file_named(share, "big file.bin")
    big = sf.path.parent / "huge.bin"
    big.write_bytes(os.urandom(8 * 1024 * 1024))
    share.scan()
    huge = file_named(share, "huge.bin")
    ctx = HttpContext(share=share, upload_slots=1)

    async def go():
        async with Server(ctx) as srv:
            reader, writer = await srv.connect()
            writer.write(get(f"/uri-res/N2R?{huge.urn}"))
            await reader.readexactly(1000)
            writer.transport.abort()
            for _ in range(300):
                if ctx.active_uploads == 0 and srv.tasks and all(t.done() for t in srv.tasks):
                    break
                await asyncio.sleep(0.01)
            return await request(srv, get(f"/uri-res/N2R?{sf.urn}"))

    status, _, body = run(go())
    assert status == 200 and body == BIG
    assert ctx.stats["uploads_finished"] == 1 and ctx.stats["uploads_started"] == 2


# --- browse host and GIV --------------------------------------------------------------------------
def _browse_ctx(share: ShareIndex) -> HttpContext:
    def hits() -> list[bytes]:
        payloads = build_hits(
            share.files,
            servent_guid=SERVENT_GUID,
            ip="127.0.0.1",
            port=6346,
            push=False,
            busy=False,
            ggep_h=True,
            per_message=2,
        )
        return [messages.build(bytes(16), MSG_QUERYHIT, 1, 0, p) for p in payloads]

    return HttpContext(share=share, browse_hits=hits)


def _decode_packets(body: bytes) -> list[messages.QueryHit]:
    out, pos = [], 0
    while pos < len(body):
        length = int.from_bytes(body[pos + 19 : pos + 23], "little")
        assert body[pos + 16] == MSG_QUERYHIT
        out.append(messages.QueryHit.decode(body[pos + HEADER_LEN : pos + HEADER_LEN + length]))
        pos += HEADER_LEN + length
    return out


def test_browse_host(run, share: ShareIndex) -> None:
    ctx = _browse_ctx(share)
    accept = "Accept: application/x-gnutella-packets\r\n"
    status, headers, body = run(_one(share, get("/", extra=accept), browse_hits=ctx.browse_hits))
    assert status == 200 and headers["content-type"] == "application/x-gnutella-packets"
    hits = _decode_packets(body)
    assert len(hits) == 2
    assert sorted(r.name for h in hits for r in h.results) == sorted(sf.name for sf in share)
    assert all(h.servent_guid == SERVENT_GUID for h in hits)
    assert run(_one(share, get("/")))[0] == 404  # no browse callback: no browse host
    assert run(_one(share, get("/"), browse_hits=ctx.browse_hits))[0] == 406  # wrong Accept
    # HEAD never encodes the share: no length before a GET built the body, its length after.
    head = run(_one(share, get("/", "HEAD", accept), head=True, browse_hits=ctx.browse_hits))
    assert head[0] == 200 and "content-length" not in head[1]

    async def get_then_head():
        async with Server(ctx) as srv:
            await request(srv, get("/", extra=accept))
            return await request(srv, get("/", "HEAD", accept), head=True)

    head = run(get_then_head())
    assert head[0] == 200 and head[1]["content-length"] == str(len(body))
    assert ctx.browse_cache.builds == 1


def test_giv_calls_on_giv(run, share: ShareIndex) -> None:
    path = VECTORS / "gnutellabun" / "giv_from_gbun.bin"
    giv = path.read_bytes()
    calls = []

    async def on_giv(index, guid, name, reader, writer):
        # the socket is ours now: what follows the GIV block is still in the reader
        calls.append((index, guid.hex(), name, await reader.readexactly(5)))
        writer.write(b"GET /")
        await writer.drain()
        writer.close()

    async def go(split: bool):
        async with Server(HttpContext(share=share, on_giv=on_giv)) as srv:
            reader, writer = await srv.connect()
            if split:
                for byte in giv + b"extra":
                    writer.write(bytes((byte,)))
                    await writer.drain()
            else:
                writer.write(giv + b"extra")
            got = await reader.read()
            writer.close()
            return got

    assert run(go(False)) == b"GET /"
    assert run(go(True)) == b"GET /"
    assert calls == [(1, "02507692f1f71d62ff48b573eb7ca300", "interopzebra sample.bin", b"extra")] * 2

    async def bad():
        async with Server(HttpContext(share=share, on_giv=on_giv)) as srv:
            reader, writer = await srv.connect()
            writer.write(b"GIV nonsense\n\n")
            got = await reader.read()
            writer.close()
            return got

    assert run(bad()) == b"" and len(calls) == 2


# --- real servents' requests ----------------------------------------------------------------------
def _vector(name: str) -> bytes:
    path = VECTORS / name
    return path.read_bytes()


@pytest.mark.parametrize(
    "name", ["gtk-gnutella/leaf_http_req_from_gtkg.bin", "gtk-gnutella/ultra_http_req_from_gtkg.bin"]
)
def test_gtkg_request_replayed(run, share: ShareIndex, name: str) -> None:
    raw = _vector(name)
    sf = file_named(share, "big file.bin")
    start = raw.index(b"urn:sha1:")
    status, _, _ = run(_one(share, raw))
    assert status == 404  # their urn is not ours
    ours = raw[:start] + sf.urn.encode() + raw[start + 41 :]
    status, headers, body = run(_one(share, ours))
    assert status == 200 and body == BIG and headers["x-gnutella-content-urn"] == sf.urn


def test_gnutellabun_requests_replayed(run, share: ShareIndex) -> None:
    raw = _vector("gnutellabun/http_request_from_gbun.bin")
    sf = file_named(share, "big file.bin")
    start = raw.index(b"urn:sha1:")
    ours = raw[:start] + sf.urn.encode() + raw[start + 41 :]
    status, headers, body = run(_one(share, ours))
    assert status == 206 and body == BIG
    assert headers["content-range"] == f"bytes 0-{sf.size - 1}/{sf.size}"

    browse = _vector("gnutellabun/http_browse_request_from_gbun.bin")
    status, headers, body = run(_one(share, browse, browse_hits=_browse_ctx(share).browse_hits))
    assert status == 200 and headers["connection"] == "close"
    assert len(_decode_packets(body)) == 2


def test_response_head_matches_real_servents(run, share: ShareIndex) -> None:
    """Our 200 carries the headers gtk-gnutella's and GnutellaBun's responses carry."""
    ref_names = set()
    for name in ("gtk-gnutella/leaf_http_resp_head_get.bin", "gnutellabun/http_get_response_head.bin"):
        lines = _vector(name).decode("latin-1").split("\r\n")
        ref_names |= {line.split(":")[0].lower() for line in lines[1:] if line}
    sf = file_named(share, "hello world.txt")
    _, headers, _ = run(_one(share, get(f"/get/{sf.index}/{quote(sf.name)}")))
    must = {"server", "content-length", "content-type", "x-gnutella-content-urn"}
    assert must <= ref_names and must <= set(headers)


# --- parsers never raise anything but RemoteProtocolError -------------------------------------------
def test_parsers_on_arbitrary_bytes() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=80), st.integers(min_value=0, max_value=1 << 40))
    def check(raw: bytes, size: int) -> None:
        span = parse_range(raw, size)
        assert span is None or 0 <= span[0] <= span[1] < size
        for block in (raw, b"GIV " + raw, b"GIV 1:" + SERVENT_GUID.hex().encode() + b"/" + raw):
            try:
                index, guid, name = parse_giv(block)
            except RemoteProtocolError:
                continue
            assert index >= 0 and len(guid) == 16 and isinstance(name, str)

    check()


def test_parse_giv_prefixes_and_trailing_bytes() -> None:
    block = b"GIV 12:" + SERVENT_GUID.hex().encode() + b"/some file.mp3\n\n"
    assert parse_giv(block + b"GET /get/12/some%20file.mp3 HTTP/1.1\r\n") == (
        12,
        SERVENT_GUID,
        "some file.mp3",
    )
    for cut in range(len(block)):
        try:
            parse_giv(block[:cut])
        except RemoteProtocolError:
            continue
        assert cut > block.index(b"/")  # only a truncated name can still parse
