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
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from gnut.app import actions, queue_ops
from gnut.protocol.printable import printable

if TYPE_CHECKING:
    from gnut.runtime.node import Node

log = logging.getLogger("gnut.app.control")

# A control request line above this is refused (requests are small JSON objects).
MAX_REQUEST = 64 * 1024
# A client must send its request within this many seconds.
REQUEST_TIMEOUT = 10.0
# Hits one control search streams at most (the node keeps MAX_RESULTS_KEPT per search anyway).
MAX_SEARCH_HITS = 2000


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
        elif op == "ban":
            target = req.get("target")
            if not isinstance(target, str) or not target.strip():
                raise ValueError("ban needs a target: an address or ADDR/BITS")
            try:
                entry = node.ban(target)
            except ValueError as exc:
                await send({"error": f"cannot ban {target[:64]!r}: {exc}"})
                return
            except OSError as exc:
                await send({"error": f"banned for this run, but the hostiles file was not written: {exc}"})
                return
            await send({"done": True, "banned": entry, "hostiles": len(node.hostiles)})
        elif op == "search":
            await self._search(req, send, reader)
        elif op in queue_ops.OPS:
            await queue_ops.dispatch(node, op, req, send, reader)
        elif op == "stop":
            await send({"done": True})
            node.request_stop()
        else:
            await send({"error": f"unknown op {op!r}"})

    async def _search(self, req: dict, send, reader: asyncio.StreamReader | None) -> None:
        """The `search` op: stream {"hit": ...} lines, then {"done": true, "count": N}.

        Request keys: text, urns, timeout and quiet (seconds; the node's search_timeout and
        search_quiet settings by default), max_results, local (include our own shared files).
        The search ends at the timeout, after the quiet period, at max_results, or as soon as
        the client hangs up (the node-side search is then stopped at once).
        """
        node = self.node
        cfg = node.cfg
        text = req.get("text", "")
        urns = req.get("urns", [])
        if not isinstance(text, str) or not isinstance(urns, list) or not all(isinstance(u, str) for u in urns):
            raise ValueError("search needs a text string and a list of urn strings")
        timeout = float(req.get("timeout") if "timeout" in req else getattr(cfg, "search_timeout", 10.0))
        quiet = req.get("quiet") if "quiet" in req else getattr(cfg, "search_quiet", None)
        quiet = None if quiet is None else float(quiet)
        max_results = int(req.get("max_results", 100))
        if not timeout > 0 or (quiet is not None and not quiet > 0) or max_results < 1:
            raise ValueError("search needs timeout > 0, quiet > 0 (or null) and max_results >= 1")

        async def stream() -> None:
            count = 0
            gen = actions.search_stream(node, text, timeout, min(max_results, MAX_SEARCH_HITS), tuple(urns),
                                        quiet=quiet, local=bool(req.get("local", False)))
            async with contextlib.aclosing(gen):
                async for hit in gen:
                    count += 1
                    await send({"hit": hit.as_dict()})
            await send({"done": True, "count": count})

        task = asyncio.ensure_future(stream())
        if reader is None:
            await task
            return
        # A request is one line: anything more, or EOF, means the client is done with us.
        gone = asyncio.ensure_future(reader.read(1))
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            abandoned = not task.done()
            if abandoned:
                task.cancel()
                node.events["searches_abandoned"] += 1
                log.info("search %r ended: the control client went away", printable(text))
            gone.cancel()
        if abandoned:
            await asyncio.wait({task})  # let the search stop itself; the client hears nothing more
            return
        await task


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
