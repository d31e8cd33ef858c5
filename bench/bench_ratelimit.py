"""Rate-limit accuracy: a real loopback upload through the node's HTTP code with a 200 KiB/s upload bucket."""

# Strategy: one handle_http server (runtime/http.py, the code a node runs) shares a 64 MiB file
# and owns a TokenBucket of the target rate; a plain client asks for the whole file and reads
# as fast as it can for `seconds`, then hangs up. Achieved rate = bytes received / elapsed time
# on the client side. Run for both loops (uvloop has no loop.sendfile: the chunked path is
# measured there). The target is within +-10 % of the configured rate.

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gnut.protocol.bandwidth import TokenBucket  # noqa: E402
from gnut.runtime import loops  # noqa: E402
from gnut.runtime.http import HttpContext, handle_http  # noqa: E402
from gnut.runtime.share import ShareIndex  # noqa: E402

RATE = 200 * 1024
FILE_SIZE = 64 * 1024 * 1024


async def _measure(share: ShareIndex, rate: int, seconds: float) -> dict:
    ctx = HttpContext(share=share, upload_bucket=TokenBucket(rate, asyncio.get_running_loop().time()))
    handlers: list[asyncio.Task] = []

    async def handler(reader, writer):
        handlers.append(asyncio.current_task())
        await handle_http(reader, writer, ctx)

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sf = next(iter(share))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /get/{sf.index}/{sf.name} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    start = time.perf_counter()
    received = 0
    try:
        async with asyncio.timeout(seconds):
            while data := await reader.read(65536):
                received += len(data)
    except TimeoutError:
        pass
    elapsed = time.perf_counter() - start
    writer.close()
    server.close()
    # The upload notices the hang-up at its next write (within one bucket wait) and ends.
    await asyncio.wait_for(asyncio.gather(*handlers, return_exceptions=True), 10)
    achieved = received / elapsed
    return {
        "rate": rate,
        "seconds": elapsed,
        "bytes": received,
        "achieved": achieved,
        "error_pct": 100.0 * (achieved - rate) / rate,
        "waits": ctx.upload_bucket.waits,
    }


def run(quick: bool) -> dict:
    seconds = 5.0 if quick else 20.0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with open(root / "big.bin", "wb") as fh:
            fh.truncate(FILE_SIZE)
        share = ShareIndex([root])
        share.scan()
        for loop in ("uvloop", "asyncio"):
            rows.append({"loop": loop, **loops.run(_measure(share, RATE, seconds), loop)})
    return {"rows": rows, "target_pct": 10.0}


def format_table(result: dict) -> str:
    lines = [
        "| loop | limit B/s | seconds | bytes | achieved B/s | error | bucket waits |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['loop']} | {r['rate']} | {r['seconds']:.1f} | {r['bytes']:,} | {r['achieved']:.0f} "
            f"| {r['error_pct']:+.1f}% | {r['waits']} |"
        )
    ok = all(abs(r["error_pct"]) <= result["target_pct"] for r in result["rows"])
    lines.append(f"\nwithin +-{result['target_pct']:.0f}% of the limit: {'yes' if ok else 'NO'}")
    return "\n".join(lines)
