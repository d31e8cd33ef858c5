"""Control API ops for the node's download queue and its shares.

get       {"urn", "name"?, "size"?, "out"?, "timeout"?, "sources"?, "follow"?}: queue a download;
          with follow, stream {"progress": view} lines until it ends ({"done"} or {"error"}).
          The download is the node's: a client that goes away only stops the stream.
downloads {}: {"done", "downloads": [view, ...]}
pause | resume | cancel {"id"}: {"done", "entry": view} or {"error"}
shares    {}: {"done", "files": [{name, size, urn, hits, path}], "problems": [...]}
rescan    {}: {"done", "report": {...}}
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from gnut.errors import LocalProtocolError
from gnut.protocol.magnet import parse_magnet
from gnut.runtime.downloads import FINISHED, SOURCE_TIMEOUT, QueueError

if TYPE_CHECKING:
    from gnut.runtime.node import Node

OPS = ("get", "downloads", "pause", "resume", "cancel", "shares", "rescan")
# Shared files listed by one `shares` answer (the answer is one JSON line).
MAX_SHARES_LISTED = 10_000


def _ident(req: dict) -> int:
    ident = req.get("id")
    if isinstance(ident, bool) or not isinstance(ident, int):
        raise ValueError("needs a download id (a number, see `gnut downloads`)")
    return ident


async def dispatch(node: Node, op: str, req: dict, send, reader: asyncio.StreamReader | None) -> None:
    q = node.downloads
    try:
        if op == "get":
            await _get(node, req, send, reader)
        elif op == "downloads":
            await send({"done": True, "downloads": q.views()})
        elif op in ("pause", "resume", "cancel"):
            entry = getattr(q, op)(_ident(req))
            await send({"done": True, "entry": entry.view()})
        elif op == "shares":
            hits = node.transfers.hits_served
            files = [{"name": sf.name, "size": sf.size, "urn": sf.urn, "hits": hits.get(sf.urn, 0),
                      "path": str(sf.path)} for sf in list(node.share.files)[:MAX_SHARES_LISTED]]
            await send({"done": True, "files": files, "problems": list(getattr(node.share, "problems", []))})
        elif op == "rescan":
            if not node.cfg.share_dirs:
                await send({"done": True, "report": None, "shared": 0})
                return
            report = await node.transfers.scan()
            if report is None:
                await send({"error": "a scan is already under way; try again in a moment"})
                return
            await send({"done": True, "shared": report.shared, "report": {
                "added": report.added, "removed": report.removed, "changed": report.changed,
                "skipped": report.skipped, "problems": list(report.problems), "text": report.describe()}})
    except QueueError as exc:
        await send({"error": str(exc)})


async def _get(node: Node, req: dict, send, reader: asyncio.StreamReader | None) -> None:
    target = req.get("urn")
    if not isinstance(target, str):
        raise ValueError("get needs a urn (or magnet) string")
    try:
        urn, m_name, m_size = parse_magnet(target)
    except LocalProtocolError as exc:
        await send({"error": str(exc)})
        return
    if urn is None:
        await send({"error": "the magnet link carries no urn:sha1"})
        return
    name = req.get("name") if isinstance(req.get("name"), str) else m_name
    size = req.get("size") if isinstance(req.get("size"), int) and not isinstance(req.get("size"), bool) else m_size
    out = Path(req["out"]) if isinstance(req.get("out"), str) else node.cfg.download_dir
    timeout = req.get("timeout")
    timeout = float(timeout) if isinstance(timeout, (int, float)) and timeout > 0 else SOURCE_TIMEOUT
    hints = req.get("sources") if isinstance(req.get("sources"), list) else []
    entry = node.downloads.add(urn, name, size, out, hints, timeout)
    if not req.get("follow"):
        await send({"done": True, "entry": entry.view()})
        return
    lines = node.downloads.listen(entry)
    gone = asyncio.ensure_future(reader.read(1)) if reader is not None else None
    try:
        while True:
            getter = asyncio.ensure_future(lines.get())
            waits = {getter, gone} if gone is not None else {getter}
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:  # the client closed its end: it detached, the download goes on
                getter.cancel()
                return
            view = getter.result()
            await send({"progress": view})
            if view["state"] in FINISHED:
                if view["state"] == "complete":
                    await send({"done": True, "path": view["path"], "entry": view})
                else:
                    await send({"error": view["error"] or f"download {view['state']}", "entry": view})
                return
            if view["state"] == "paused":
                await send({"error": f"download #{view['id']} paused (gnut resume {view['id']})", "entry": view})
                return
    finally:
        node.downloads.unlisten(entry, lines)
        if gone is not None:
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
                await gone
