"""Rate limits end to end: CLI flags and config keys, buckets charged by real loopback uploads and downloads.

Speed is measured in bench/ (bench/run.py ratelimit); here only what was charged and waited is checked.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
from pathlib import Path

import pytest

from gnut.app import cli
from gnut.app.configfile import load_config_file
from gnut.protocol.bandwidth import TokenBucket
from gnut.runtime.config import NodeConfig
from gnut.runtime.download import Download, Source
from gnut.runtime.http import HttpContext, handle_http
from gnut.runtime.share import ShareIndex


def test_cli_flags(tmp_path: Path) -> None:
    args = cli.build_parser().parse_args(
        ["--home", str(tmp_path), "node", "--max-upload-rate", "200k", "--max-download-rate", "1.5M"]
    )
    cfg = cli.node_config(args)
    assert (cfg.max_upload_rate, cfg.max_download_rate) == (200 * 1024, 1536 * 1024)
    assert (
        cli.node_config(cli.build_parser().parse_args(["--home", str(tmp_path), "node"])).max_upload_rate == 0
    )
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["node", "--max-upload-rate", "fast"])


def test_config_file_keys(tmp_path: Path) -> None:
    path = tmp_path / "gnut.toml"
    path.write_text('max_upload_rate = "64k"\nmax_download_rate = 1000\n')
    cfg = NodeConfig(home=tmp_path, **load_config_file(path))
    assert (cfg.max_upload_rate, cfg.max_download_rate) == (65536, 1000)
    with pytest.raises(ValueError):
        NodeConfig(home=tmp_path, max_upload_rate="-1k")


def test_buckets_charged_by_a_real_transfer(tmp_path: Path, run) -> None:
    data = random.Random(5).randbytes(300_000)
    root = tmp_path / "share"
    root.mkdir()
    (root / "f.bin").write_bytes(data)
    share = ShareIndex([root])
    share.scan()
    urn = "urn:sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode()

    async def main():
        now = asyncio.get_running_loop().time()
        up = TokenBucket(512 * 1024, now)
        down = TokenBucket(1024 * 1024, now)
        ctx = HttpContext(share=share, upload_bucket=up)
        handlers: list[asyncio.Task] = []

        async def handler(reader, writer):
            handlers.append(asyncio.current_task())
            await handle_http(reader, writer, ctx)

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            source = Source("127.0.0.1", port, 1, "f.bin", len(data), urn, bytes(16), False)
            dl = Download(
                urn,
                len(data),
                "f.bin",
                tmp_path / "out",
                sources=[source],
                assume_private_firewalled=False,
                rate_bucket=down,
                timeout=10.0,
            )
            path = await dl.run()
        finally:
            server.close()
            await server.wait_closed()
            await asyncio.gather(*handlers, return_exceptions=True)
        assert path.read_bytes() == data
        assert up.granted == len(data) and up.waits > 0  # buckets start empty: the upload waited
        assert down.granted == len(data)

    run(main)


def test_downloader_hanging_up_on_a_throttled_upload_ends_it_cleanly(tmp_path: Path, run) -> None:
    """Regression: sendfile on a closed transport raised RuntimeError out of handle_http."""
    root = tmp_path / "share"
    root.mkdir()
    with open(root / "big.bin", "wb") as fh:
        fh.truncate(8 * 1024 * 1024)
    share = ShareIndex([root])
    share.scan()
    sf = next(iter(share))

    async def main():
        ctx = HttpContext(
            share=share, upload_bucket=TokenBucket(256 * 1024, asyncio.get_running_loop().time())
        )
        handlers: list[asyncio.Task] = []

        async def handler(reader, writer):
            handlers.append(asyncio.current_task())
            await handle_http(reader, writer, ctx)

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /get/{sf.index}/big.bin HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(100_000)
        writer.close()
        server.close()
        await asyncio.wait_for(asyncio.gather(*handlers), 10)  # ends by itself, raising nothing
        assert ctx.stats["bytes_sent"] < 8 * 1024 * 1024

    run(main)
