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
import math
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
# Ranges of the numbers a request may carry (outside: a clear "bad request" line, no exception).
SEARCH_TIMEOUT_MAX = 3600.0  # a search longer than an hour is a mistake
GET_TIMEOUT_MAX = 7 * 24 * 3600.0  # a download may run for days, not forever
MAX_RESULTS_MAX = 100_000  # more hits than a network answers in practice
MAX_FILE_SIZE = 2**63 - 1  # what a 64-bit file offset can address
MAX_TEXT = 4096  # search text, names, paths and urns are short
MAX_URNS = 16  # urns one search carries


def req_number(req: dict, key: str, default, lo, hi, kind=float, nullable: bool = False):
    """`req[key]` as `kind` within lo..hi (default when absent; null only when `nullable`).

    Raises:
        ValueError: with a message naming the field and its range (not a bool, NaN or infinity).
    """
    if key not in req:
        return default
    value = req[key]
    if value is None and nullable:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number in {lo}..{hi}, not {value!r}"[:200])
    if kind is int and (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{key} must be a whole number in {lo}..{hi}, not {value!r}")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ValueError(f"{key} must be in {lo}..{hi}, not {value!r}"[:200])
    return kind(value)


def req_text(req: dict, key: str, default: str | None = None) -> str | None:
    """`req[key]` as a string of at most MAX_TEXT characters (default when absent or null).

    Raises:
        ValueError: when it is not a string or too long.
    """
    value = req.get(key)
    if value is None:
        return default
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ValueError(f"{key} must be a string of at most {MAX_TEXT} characters")
    return value


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
        except Exception as exc:  # a bug of ours costs this request only, never the node
            log.exception("control request failed")
            try:
                await send({"error": f"internal error: {type(exc).__name__}"})
            except ConnectionError:
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
            if (not isinstance(host, str) or not host or len(host) > 255 or isinstance(port, bool)
                    or not isinstance(port, int) or not 0 < port < 65536):
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
        elif op == "dht":
            from gnut.app.dhtcli import control_dht

            await send(await control_dht(node, req))
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
        if len(text) > MAX_TEXT or len(urns) > MAX_URNS or any(len(u) > MAX_TEXT for u in urns):
            raise ValueError(f"search text and urns are at most {MAX_TEXT} characters, at most {MAX_URNS} urns")
        # Every number typed and ranged (a bool, NaN, infinity or 1e308 is a clear error, not a raise later).
        timeout = req_number(req, "timeout", getattr(cfg, "search_timeout", 10.0), 0.1, SEARCH_TIMEOUT_MAX)
        quiet = (req_number(req, "quiet", None, 0.01, SEARCH_TIMEOUT_MAX, nullable=True) if "quiet" in req
                 else getattr(cfg, "search_quiet", None))
        max_results = req_number(req, "max_results", 100, 1, MAX_RESULTS_MAX, int)

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
