"""Files above 4 GiB end to end: scanned, answered in a QUERYHIT with GGEP "LF", served with a Range near the end.

The file is sparse (truncate), so it costs no disk. Its SHA-1 comes from the share's SHA-1 cache,
as a restarted node has it, because hashing 4 GiB of zeros takes ~35 s here; the digest value is
carried, never asserted: what is under test is the size, in every codec and on the wire.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from gnut.protocol import ggep, messages
from gnut.runtime.http import HttpContext, handle_http, parse_range
from gnut.runtime.share import CACHE_VERSION, ShareIndex, build_hits

SIZE = (1 << 32) + 12_345  # past 2^32: no 32-bit field can hold it
TAIL = b"--the last bytes of a big file--"


@pytest.fixture
def big_share(tmp_path: Path) -> ShareIndex:
    root = tmp_path / "share"
    root.mkdir()
    path = root / "big image.iso"
    with open(path, "wb") as fh:
        fh.truncate(SIZE - len(TAIL))
        fh.seek(SIZE - len(TAIL))
        fh.write(TAIL)
    st = path.stat()
    assert st.st_size == SIZE
    cache = tmp_path / "sha1cache.json"
    stand_in = hashlib.sha1(b"cached digest of big image.iso").hexdigest()
    cache.write_text(
        json.dumps(
            {
                "version": CACHE_VERSION,
                "next_index": 2,
                "files": {str(path.resolve()): [st.st_size, st.st_mtime_ns, stand_in, 1]},
            }
        )
    )
    idx = ShareIndex([root], cache_path=cache)
    report = idx.scan()
    assert report.rehashed == 0
    return idx


def test_scan_keeps_the_64_bit_size(big_share: ShareIndex) -> None:
    (sf,) = list(big_share)
    assert sf.size == SIZE
    assert big_share.match("image")[0].size == SIZE


def test_queryhit_carries_lf_and_all_ones_legacy_size(big_share: ShareIndex) -> None:
    (payload,) = build_hits(
        big_share.match("image"),
        servent_guid=bytes(range(16)),
        ip="127.0.0.1",
        port=6346,
        push=False,
        busy=False,
        ggep_h=True,
    )
    hit = messages.QueryHit.decode(payload)
    (result,) = hit.results
    assert result.size == SIZE
    lf = ggep.find(result.ggep, "LF")
    assert lf is not None and ggep.decode_int(lf) == SIZE
    # The legacy 32-bit field says "look at LF": all ones (filesize64 / LimeWire practice).
    index_and_size = payload[11:19]
    assert int.from_bytes(index_and_size[4:8], "little") == 0xFFFFFFFF


def test_range_resolution_above_4_gib() -> None:
    assert parse_range(f"bytes={SIZE - 10}-".encode(), SIZE) == (SIZE - 10, SIZE - 1)
    assert parse_range(b"bytes=-10", SIZE) == (SIZE - 10, SIZE - 1)
    assert parse_range(f"bytes={1 << 32}-{(1 << 32) + 1}".encode(), SIZE) == (1 << 32, (1 << 32) + 1)
    assert parse_range(f"bytes={SIZE}-".encode(), SIZE) is None


def test_served_with_a_range_near_the_end(big_share: ShareIndex, run) -> None:
    (sf,) = list(big_share)

    async def main():
        ctx = HttpContext(share=big_share)
        handlers: list[asyncio.Task] = []

        async def handler(reader, writer):
            handlers.append(asyncio.current_task())
            await handle_http(reader, writer, ctx)

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            out = []
            for target in (f"/get/{sf.index}/big%20image.iso", f"/uri-res/N2R?{sf.urn}"):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                start = SIZE - len(TAIL)
                writer.write(
                    f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nRange: bytes={start}-\r\n\r\n".encode()
                )
                head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (ln.partition(":") for ln in head.split("\r\n")[1:] if ln)
                }
                body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
                writer.close()
                await writer.wait_closed()
                out.append((head.split()[1], headers, body))
            await asyncio.wait_for(asyncio.gather(*handlers), 10)  # each upload ends when we hang up
            return out
        finally:
            server.close()
            await server.wait_closed()

    for status, headers, body in run(main):
        assert status == "206"
        assert headers["content-range"] == f"bytes {SIZE - len(TAIL)}-{SIZE - 1}/{SIZE}"
        assert body == TAIL
