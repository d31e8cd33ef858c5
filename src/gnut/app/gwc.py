"""`gnut gwc --listen HOST:PORT`: a small GWebCache server (spec 1 and 2) over h11.

Strategy: asyncio streams framed by h11; each connection serves at most MAX_REQUESTS_PER_CONN
GET requests with a bounded head (h11's max_incomplete_event_size) and a deadline per request;
at most MAX_CONNECTIONS at once (more are closed at once). The cache logic (storage bounds,
per-IP update interval, reply format) is the sans-IO `gnut.protocol.gwc.GwcCache`.
"""

from __future__ import annotations

import asyncio
import logging
import time

import h11

from gnut.protocol import gwc
from gnut.protocol.printable import printable

log = logging.getLogger("gnut.app.gwc")

# Concurrent connections served; more are closed on accept (a cache answers in milliseconds).
MAX_CONNECTIONS = 256
# Requests one kept-alive connection may make, and the seconds each may take to arrive.
MAX_REQUESTS_PER_CONN = 16
REQUEST_TIMEOUT = 10.0
# Largest request head (line + headers) we read: GWC requests are a few hundred bytes.
MAX_HEAD = 8192


class GwcServer:
    """A GWebCache on one address. `await start()`, `await stop()`."""

    def __init__(self, host: str, port: int, update_interval: float = gwc.UPDATE_INTERVAL) -> None:
        self.host, self.port = host, port
        self.cache = gwc.GwcCache(update_interval=update_interval)
        self._server: asyncio.base_events.Server | None = None
        self._conns = 0
        self.refused = 0

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True)
        self.host, self.port = self._server.sockets[0].getsockname()[:2]
        return self.host, self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            try:
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()
            except TimeoutError:
                pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._conns >= MAX_CONNECTIONS:
            self.refused += 1
            writer.close()
            return
        self._conns += 1
        peer = writer.get_extra_info("peername") or ("?", 0)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            for _ in range(MAX_REQUESTS_PER_CONN):
                req = await asyncio.wait_for(self._next_request(reader, conn), REQUEST_TIMEOUT)
                if req is None:
                    break
                status, body = self._respond(req, peer[0])
                writer.write(conn.send(h11.Response(status_code=status, headers=[
                    ("Content-Type", "text/plain"), ("Content-Length", str(len(body))), ("Server", "gnut-gwc")])))
                writer.write(conn.send(h11.Data(data=body)))
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except (TimeoutError, h11.ProtocolError, ConnectionError, OSError) as exc:
            log.debug("gwc connection from %s ended: %s", printable(str(peer[0])), printable(str(exc)))
        finally:
            self._conns -= 1
            writer.close()

    async def _next_request(self, reader: asyncio.StreamReader, conn: h11.Connection) -> h11.Request | None:
        req = None
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = await reader.read(4096)
                conn.receive_data(data)
                if not data and conn.their_state is h11.IDLE:
                    return None
                continue
            if isinstance(ev, h11.Request):
                req = ev
            elif isinstance(ev, h11.EndOfMessage):
                return req
            elif isinstance(ev, h11.ConnectionClosed):
                return None

    def _respond(self, req: h11.Request, client_ip: str) -> tuple[int, bytes]:
        if req.method != b"GET":
            return 405, b"ERROR Method not allowed\n"
        _, _, query = req.target.decode("latin-1").partition("?")
        parsed = gwc.parse_request(query)
        body = self.cache.handle(parsed, client_ip, time.monotonic())
        if parsed.kind == "update":
            log.info("update from %s: %s", printable(client_ip), printable(body.strip()))
        return 200, body.encode("latin-1", "replace")


async def run_gwc(host: str, port: int, update_interval: float) -> int:
    """Serve until interrupted."""
    server = GwcServer(host, port, update_interval)
    h, p = await server.start()
    print(f"gnut gwc: serving a GWebCache on http://{h}:{p}/", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
    return 0
