"""The mesh on real loopback transfers: THEX served and used, X-Alt both ways, a lying source caught by Tiger.

Upload servers are the node's own HTTP code (runtime/http.py handle_http over real ShareIndex
files); the downloader is runtime/download.py. Every test runs on uvloop and asyncio (`run`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
from pathlib import Path

from gnut.protocol.altloc import AltLoc, parse_x_alt
from gnut.protocol.bandwidth import TokenBucket
from gnut.protocol.mesh import Mesh
from gnut.protocol.thex import decode_thex, hash_bytes, parse_thex_uri
from gnut.runtime.download import Download, Source
from gnut.runtime.http import HttpContext, handle_http
from gnut.runtime.share import ShareIndex
from gnut.runtime.thexcache import ThexCache

DEADLINE = 30.0


class Uploader:
    """A shared folder holding one file, served by handle_http on 127.0.0.1 with THEX and a mesh."""

    def __init__(
        self, root: Path, data: bytes, *, thex: bool = True, corrupt: bool = False, rate: int = 0
    ) -> None:
        root.mkdir(parents=True)
        path = root / "file.bin"
        path.write_bytes(data)
        self.share = ShareIndex([root])
        self.share.scan()
        if corrupt:  # the disk rots under the scan: same size and mtime, other bytes
            st = path.stat()
            bad = bytearray(data)
            for i in range(1000, len(bad), 4096):
                bad[i] ^= 0x55
            path.write_bytes(bytes(bad))
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        self.ctx = HttpContext(
            share=self.share, thex=ThexCache() if thex else None, mesh=Mesh(reporter_prefix=(32, 128))
        )
        self.handlers: list[asyncio.Task] = []
        self.rate = rate

    async def warm(self) -> Uploader:
        """Compute the shared file's tree now (a node does this in the background after a scan)."""
        for sf in self.share:
            assert await self.ctx.thex.get(sf) is not None
        return self

    async def start(self) -> Uploader:
        async def handler(reader, writer):
            self.handlers.append(asyncio.current_task())
            await handle_http(reader, writer, self.ctx)

        if self.rate:
            self.ctx.upload_bucket = TokenBucket(self.rate, asyncio.get_running_loop().time())
        self.server = await asyncio.start_server(handler, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()
        for task in self.handlers:
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)

    def source(self, data: bytes) -> Source:
        return Source("127.0.0.1", self.port, 1, "file.bin", len(data), urn_of(data), bytes(16), False)

    @property
    def loc(self) -> AltLoc:
        return AltLoc("127.0.0.1", self.port)


def urn_of(data: bytes) -> str:
    return "urn:sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode()


async def http_get(port: int, target: str, extra: str = "") -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}\r\n".encode())
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in head.split("\r\n")[1:] if ln)
    }
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    writer.close()
    await writer.wait_closed()
    return int(head.split()[1]), headers, body


def test_thex_served_and_named(tmp_path: Path, run) -> None:
    data = random.Random(1).randbytes(1_500_000)
    tree = hash_bytes(data)

    async def main():
        up = await Uploader(tmp_path / "a", data).start()
        try:
            status, headers, body = await http_get(up.port, f"/uri-res/N2X?{urn_of(data)}")
            assert status == 200 and headers["content-type"] == "application/dime"
            got = decode_thex(body, len(data), tree.root)
            assert got.levels == tree.levels and got.depth == 3  # gtk-gnutella's depth for 1-2 MiB
            status, headers, _ = await http_get(
                up.port, f"/uri-res/N2R?{urn_of(data)}", "Range: bytes=0-9\r\n"
            )
            assert status == 206
            uri, root = parse_thex_uri(headers["x-thex-uri"])
            assert root == tree.root and uri == f"/uri-res/N2X?{urn_of(data)}"
            missing = urn_of(b"not shared")
            assert (await http_get(up.port, f"/uri-res/N2X?{missing}"))[0] == 404
            assert up.ctx.stats["thex_served"] == 1
        finally:
            await up.stop()

    run(lambda: asyncio.wait_for(main(), DEADLINE))


def test_download_starting_with_one_source_learns_three_through_x_alt(tmp_path: Path, run) -> None:
    data = random.Random(2).randbytes(2 * 1024 * 1024)

    async def main():
        # 2 MiB/s each: the first source alone would need a second, time for the others to join.
        ups = [await Uploader(tmp_path / f"u{i}", data, rate=2 * 1024 * 1024).start() for i in range(4)]
        first, others = ups[0], ups[1:]
        try:
            # Earlier downloaders told the first uploader about the other three (upload side reads X-Alt).
            value = ", ".join(f"127.0.0.1:{u.port}" for u in others)
            status, headers, _ = await http_get(
                first.port,
                f"/uri-res/N2R?{urn_of(data)}",
                f"Range: bytes=0-0\r\nX-Alt: {value}\r\nX-Node: 127.0.0.1:9\r\n",
            )
            assert status == 206 and {loc.port for loc in parse_x_alt(headers["x-alt"]).direct} == {
                u.port for u in others
            }
            dl = Download(
                urn_of(data),
                len(data),
                "file.bin",
                tmp_path / "out",
                sources=[first.source(data)],
                assume_private_firewalled=False,
                chunk_size=64 * 1024,
                max_parallel=4,
                timeout=5.0,
                node_addr="127.0.0.1:9",  # who we are (X-Node): uploaders leave out only that address
            )
            path = await dl.run()
            assert path.read_bytes() == data
            assert dl.mesh.stats["alt_learned"] == 3
            for up in others:
                assert up.ctx.stats["requests"] >= 1, "a learned source was never asked"
            # ...and the downloader told the uploaders about each other (X-Alt in requests).
            assert any(len(up.ctx.mesh) for up in others)
        finally:
            for up in ups:
                await up.stop()

    run(lambda: asyncio.wait_for(main(), DEADLINE))


def test_bad_source_dropped_after_its_first_chunk_fails_the_tiger_check(tmp_path: Path, run) -> None:
    data = random.Random(3).randbytes(4 * 1024 * 1024)

    async def main():
        # The good source uploads at 4 MiB/s (its upload bucket): the file takes ~1 s, time
        # enough for the liar to join once the tree is in.
        good = await (await Uploader(tmp_path / "good", data, rate=4 * 1024 * 1024).start()).warm()
        liar = await Uploader(tmp_path / "liar", data, thex=False, corrupt=True).start()
        states: list[str] = []
        added = []

        async def add_liar_once_the_tree_is_in() -> None:
            while dl.mesh.tree is None:
                await asyncio.sleep(0.005)
            added.append(dl.add_source(liar.source(data)))

        try:
            dl = Download(
                urn_of(data),
                len(data),
                "file.bin",
                tmp_path / "out",
                sources=[good.source(data)],
                assume_private_firewalled=False,
                timeout=5.0,
                progress=lambda p: states.append(p.state),
            )
            watcher = asyncio.get_running_loop().create_task(add_liar_once_the_tree_is_in())
            path = await dl.run()
            await watcher
            assert added == [True]
            assert path.read_bytes() == data
            assert "restarting" not in states  # caught by Tiger, never by the final SHA-1
            assert dl.mesh.stats["thex_fetched"] == 1 and dl.mesh.stats["tiger_bad_chunks"] == 1
            assert liar.ctx.stats["uploads_started"] == 1  # one chunk, then dropped
            liar_state = next(st for st in dl._sources.values() if st.source.port == liar.port)
            assert liar_state.dropped and "Tiger" in liar_state.last_error
            assert liar.loc.key in dl.mesh.bad
        finally:
            await good.stop()
            await liar.stop()

    run(lambda: asyncio.wait_for(main(), DEADLINE))


def test_liar_caught_when_its_chunks_came_before_the_tree(tmp_path: Path, run) -> None:
    data = random.Random(4).randbytes(4 * 1024 * 1024)

    async def main():
        # The liar (2 MiB/s) delivers its first chunks before the good source (1 MiB/s) has
        # finished one and been asked for its tree: they are checked when the tree arrives.
        good = await (await Uploader(tmp_path / "good", data, rate=1024 * 1024).start()).warm()
        liar = await Uploader(tmp_path / "liar", data, thex=False, corrupt=True, rate=2 * 1024 * 1024).start()
        states: list[str] = []
        try:
            dl = Download(
                urn_of(data),
                len(data),
                "file.bin",
                tmp_path / "out",
                sources=[liar.source(data), good.source(data)],
                assume_private_firewalled=False,
                timeout=5.0,
                progress=lambda p: states.append(p.state),
            )
            path = await dl.run()
            assert path.read_bytes() == data
            assert "restarting" not in states
            assert dl.mesh.stats["tiger_bad_chunks"] >= 1
        finally:
            await good.stop()
            await liar.stop()

    run(lambda: asyncio.wait_for(main(), DEADLINE))


def test_parq_one_slot_five_downloaders_each_queued_and_served_in_order(tmp_path: Path, run) -> None:
    from gnut.protocol.parq import UploadQueue

    data = random.Random(6).randbytes(400_000)

    async def main():
        up = Uploader(tmp_path / "up", data, thex=False, rate=1024 * 1024)  # ~0.4 s per download
        # One slot; the Retry-After ladder shrunk 50x through the queue's settings (30 s -> 0.6 s).
        up.ctx.upload_slots = 1
        up.ctx.parq = UploadQueue(slots=1, retry_scale=0.02)
        await up.start()
        finished: list[int] = []

        async def one(i: int) -> None:
            await asyncio.sleep(0.05 * i)  # arrive in order
            dl = Download(
                urn_of(data),
                len(data),
                "file.bin",
                tmp_path / f"out{i}",
                sources=[up.source(data)],
                assume_private_firewalled=False,
                timeout=10.0,
                node_addr=f"127.0.0.1:{7000 + i}",  # five servents behind one address: told apart by X-Node
            )
            assert (await dl.run()).read_bytes() == data
            finished.append(i)

        try:
            await asyncio.gather(*(one(i) for i in range(5)))
        finally:
            await up.stop()
        assert finished == [0, 1, 2, 3, 4]
        counters = up.ctx.parq.counters
        assert counters["queued"] == 4 and counters["served"] == 5
        assert counters["expired"] == 0 and counters["dropped_early"] == 0

    run(lambda: asyncio.wait_for(main(), DEADLINE))
