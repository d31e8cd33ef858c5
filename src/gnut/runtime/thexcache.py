"""Tiger trees of shared files (computed on demand off the event loop, bounded cache) and the upload side's mesh headers."""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict

from gnut.protocol import altloc
from gnut.protocol.mesh import Mesh
from gnut.protocol.thex import HashTree, TreeHasher, format_thex_uri
from gnut.runtime.share import SharedFile

# Trees kept (a depth-11 tree is ~96 KiB; most are far smaller): the least recently used go first.
MAX_TREES = 512
# Bytes read at once while hashing a file for its tree.
READ_BLOCK = 1 << 20
# Trees computed at the same time (each keeps one core busy in C for size / ~300 MB/s).
MAX_CONCURRENT = 1


def _key(sf: SharedFile) -> tuple[str, int, int]:
    return str(sf.path), sf.size, sf.mtime_ns


def _hash_file(sf: SharedFile, stop: threading.Event) -> HashTree | None:
    hasher = TreeHasher(sf.size)
    try:
        with open(sf.path, "rb") as fh:
            while block := fh.read(READ_BLOCK):
                if stop.is_set():
                    return None  # the node is stopping: do not hold its exit for a big file
                if hasher.fed + len(block) > sf.size:
                    return None  # the file grew since the scan: not the file we announced
                hasher.update(block)
        return hasher.finish()
    except (OSError, ValueError):
        return None  # unreadable or shrank: no tree (the upload itself answers 410)


class ThexCache:
    """`peek(sf)` a known tree; `await get(sf)` computes it once (concurrent callers share the work)."""

    def __init__(self, max_trees: int = MAX_TREES, max_concurrent: int = MAX_CONCURRENT) -> None:
        self.max_trees = max_trees
        self._trees: OrderedDict[tuple[str, int, int], HashTree] = OrderedDict()
        self._running: dict[tuple[str, int, int], asyncio.Future[HashTree | None]] = {}
        self._gate = asyncio.Semaphore(max_concurrent)
        self.stats = {"computed": 0, "failed": 0, "hits": 0, "evicted": 0}
        self._stop = threading.Event()

    def close(self) -> None:
        """Stop computing: a hashing thread gives up at its next block (node shutdown)."""
        self._stop.set()

    def peek(self, sf: SharedFile) -> HashTree | None:
        tree = self._trees.get(_key(sf))
        if tree is not None:
            self._trees.move_to_end(_key(sf))
        return tree

    async def get(self, sf: SharedFile) -> HashTree | None:
        key = _key(sf)
        tree = self.peek(sf)
        if tree is not None:
            self.stats["hits"] += 1
            return tree
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[HashTree | None] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            async with self._gate:
                tree = await asyncio.to_thread(_hash_file, sf, self._stop)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # retrieved: waiters re-raise it, nobody logs "never retrieved"
            raise
        finally:
            self._running.pop(key, None)
        future.set_result(tree)
        if tree is None:
            self.stats["failed"] += 1
            return None
        self.stats["computed"] += 1
        self._trees[key] = tree
        while len(self._trees) > self.max_trees:
            self._trees.popitem(last=False)
            self.stats["evicted"] += 1
        return tree

    def warm(self, sf: SharedFile) -> None:
        """Start computing a tree in the background (the next answer can then name it)."""
        if self.peek(sf) is None and _key(sf) not in self._running and not self._stop.is_set():
            task = asyncio.get_running_loop().create_task(self.get(sf))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())


# Alt-locs named in one upload answer (X-Alt and X-Nalt each).
ALTS_PER_ANSWER = 10


def upload_mesh_headers(
    mesh: Mesh | None,
    thex: ThexCache | None,
    sf: SharedFile,
    request_headers: dict[str, str],
    peer_host: str | None,
    now: float,
) -> list[tuple[str, str]]:
    """Learn the downloader's X-Alt/X-Nalt for a file we share; our X-Thex-URI, X-Alt and X-Nalt for it.

    Args:
        request_headers: lower-case name -> value of the request.
        peer_host: the downloader's address (its own entries are not sent back; it reports).
    """
    out: list[tuple[str, str]] = []
    if thex is not None:
        tree = thex.peek(sf)
        if tree is None:
            thex.warm(sf)  # named from the next answer on
        else:
            out.append(("X-Thex-URI", format_thex_uri(sf.urn[9:], tree.root)))
    if mesh is None:
        return out
    for loc in altloc.parse_x_alt(request_headers.get("x-alt", "")).direct:
        mesh.add(sf.sha1, loc, now, reporter=peer_host)
    if peer_host is not None:
        for loc in altloc.parse_x_alt(request_headers.get("x-nalt", "")).direct:
            mesh.negative(sf.sha1, loc, peer_host, now)
    node = altloc.parse_hostport(request_headers.get("x-node", ""), default_port=None)
    peer_port = node[1] if node is not None and node[0] == peer_host else None
    alts, nalts = mesh.to_send(
        sf.sha1, now, peer_host=peer_host, peer_port=peer_port, complete=True, limit=ALTS_PER_ANSWER
    )
    if alts:
        out.append(("X-Alt", altloc.format_x_alt(alts)))
    if nalts:
        out.append(("X-Nalt", altloc.format_x_alt(nalts)))
    return out
