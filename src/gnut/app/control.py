"""Local control API of a running node: JSON lines over a Unix socket only its user can reach.

Strategy: one request line per connection ({"op": ...}); the answer is one or more JSON
lines, streamed for searches and downloads, ending with a line that has "done" or "error".
Downloads are the node's (app/queue_ops.py): a client only watches one, so a client that goes
away (Ctrl-C, a closed pipe) ends its stream, never the download.
The socket lives in the node's home folder with mode 0600, so it is never reachable from
another host and not by other local users.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from gnut.app import actions, queue_ops

if TYPE_CHECKING:
    from gnut.runtime.node import Node

log = logging.getLogger("gnut.app.control")

# A control request line above this is refused (requests are small JSON objects).
MAX_REQUEST = 64 * 1024
# A client must send its request within this many seconds.
REQUEST_TIMEOUT = 10.0


class ControlServer:
    """Serves the control API of `node` on its home folder's control.sock."""

    def __init__(self, node: Node, path: Path | None = None) -> None:
        self.node = node
        self.path = Path(path or node.cfg.control_path)
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            # A stale socket from a killed node; a live one answers, so refuse to steal it.
            if await _alive(self.path):
                log.warning("another node serves %s; control API disabled for this one", self.path)
                return
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._handle, path=str(self.path), limit=MAX_REQUEST)
        finally:
            os.umask(old)
        log.info("control API on %s", self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def write(obj: dict) -> None:
            if writer.is_closing():  # the client went away (Ctrl-C, a closed pipe): stop talking to it
                raise ConnectionResetError("control client gone")
            writer.write(json.dumps(obj).encode() + b"\n")

        async def send(obj: dict) -> None:
            write(obj)
            await writer.drain()

        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                line = await reader.readline()
            if not line:
                return  # a liveness probe (`_alive`) or a client that left before asking
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("request must be a JSON object")
            await self.dispatch(req, send, write, reader)
        except (TimeoutError, ValueError, TypeError, asyncio.LimitOverrunError) as exc:
            try:
                await send({"error": f"bad request: {exc}"})
            except (ConnectionError, RuntimeError):
                pass
        except (ConnectionError, RuntimeError):  # RuntimeError: a write on a transport closed under us
            pass
        except asyncio.CancelledError:  # the node is stopping (`gnut stop`): this answer is over
            pass
        finally:
            writer.close()

    async def dispatch(self, req: dict, send, write, reader: asyncio.StreamReader | None = None) -> None:
        node = self.node
        op = req.get("op")
        if op == "status":
            await send({"done": True, "status": node.stats()})
        elif op == "peers":
            await send({"done": True, "peers": node.stats()["peers"]})
        elif op == "connect":
            host, port = req.get("host"), req.get("port")
            if not isinstance(host, str) or not isinstance(port, int) or not 0 < port < 65536:
                raise ValueError("connect needs a host string and a port in 1..65535")
            node.dial(host, port)
            await send({"done": True})
        elif op == "search":
            count = 0
            async for hit in actions.search_stream(node, str(req.get("text", "")), float(req.get("timeout", 10)),
                                                   int(req.get("max_results", 100)), tuple(req.get("urns", ()))):
                count += 1
                await send({"hit": hit.as_dict()})
            await send({"done": True, "count": count})
        elif op in queue_ops.OPS:
            await queue_ops.dispatch(node, op, req, send, reader)
        elif op == "stop":
            await send({"done": True})
            node.request_stop()
        else:
            await send({"error": f"unknown op {op!r}"})


async def _alive(path: Path) -> bool:
    try:
        _, w = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 1.0)
    except (TimeoutError, OSError):
        return False
    w.close()
    return True


async def request(path: Path, req: dict):
    """Client side: send one request to a node's control socket and yield its answer lines.

    Raises:
        OSError: when no node listens there.
    """
    reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_REQUEST * 16)
    try:
        writer.write(json.dumps(req).encode() + b"\n")
        await writer.drain()
        while True:
            line = await reader.readline()
            if not line:
                return
            yield json.loads(line)
    finally:
        writer.close()
