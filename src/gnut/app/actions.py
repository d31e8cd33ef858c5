"""What users do with a node, shared by the control API and the stand-alone CLI: search, fetch."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gnut.constants import VENDOR_CODE
from gnut.errors import LocalProtocolError
from gnut.runtime import download as dl
from gnut.runtime.downloads import source_from_hint
from gnut.runtime.search import SEARCH_MAX_AGE, Hit

if TYPE_CHECKING:
    from gnut.runtime.node import Node

# How long `fetch` listens for more sources after the first one answered before starting.
SOURCE_GATHER = 1.0
# Text sent with a urn-only query: LimeWire-family servents use a lone backslash.
URN_QUERY_TEXT = "\\"


# While a DHT lookup runs beside the flood, `fetch` looks at it this often (seconds).
DHT_POLL = 0.2


def dht_sources(node: Node, urn: str, timeout: float) -> asyncio.Task | None:
    """A task finding the urn's ALOC sources in the DHT (download Sources), None without a DHT."""
    from gnut.runtime.share import urn_to_sha1

    sha1 = urn_to_sha1(urn)
    if getattr(node, "dht", None) is None or sha1 is None:
        return None

    async def lookup() -> list[dl.Source]:
        name = urn.split(":")[-1]
        return [dl.Source(host=h, port=p, index=0, name=name, size=a.length, urn=urn, servent_guid=a.guid,
                          firewalled=False) for h, p, a in await node.dht.find_alocs(sha1, timeout)]

    return asyncio.get_running_loop().create_task(lookup())


def _dht_found(task: asyncio.Task | None) -> list[dl.Source]:
    """The DHT sources once the lookup finished well; [] while it runs, or if it failed."""
    if task is None or not task.done() or task.cancelled() or task.exception() is not None:
        return []
    return task.result()


class FetchError(Exception):
    """A download that could not complete (no source, timeout, verification failed)."""


async def search_stream(node: Node, text: str, timeout: float, max_results: int,
                        urns: tuple[str, ...] = (), quiet: float | None = None,
                        local: bool = False) -> AsyncIterator[Hit]:
    """Send a query and yield its hits as they arrive, until `timeout`, `quiet` or `max_results`.

    Args:
        timeout: the longest the search runs, in seconds.
        max_results: hits yielded at most (spam-marked hits included).
        quiet: end early once no hit came from the network for this many seconds (since the
            start, or since the last hit); None waits for the whole `timeout`.
        local: first yield the node's own shared files that match, marked `local`.

    The node-side search is stopped when the stream ends or its consumer goes away (the
    generator is closed or cancelled), so its dynamic query and the ultrapeers' work end too.
    """
    search = node.searches.start(text, urns)
    q = search.listen()
    started = time.monotonic()
    deadline = started + min(timeout, SEARCH_MAX_AGE)  # the node forgets older searches anyway
    last = started
    count = 0
    try:
        if local and node.share is not None:
            for h in local_hits(node, text, urns, max_results):
                count += 1
                yield h
        while count < max_results:
            now = time.monotonic()
            left = deadline - now
            if quiet is not None:
                left = min(left, last + quiet - now)
            if left <= 0:
                return
            try:
                async with asyncio.timeout(left):  # not wait_for: 3.11's can swallow a Ctrl-C cancel
                    hit = await q.get()
            except TimeoutError:
                return
            count += 1
            last = time.monotonic()
            yield hit
    finally:
        if q in search.listeners:
            search.listeners.remove(q)
        if not search.listeners:
            node.searches.stop(search)


def local_hits(node: Node, text: str, urns: tuple[str, ...], limit: int) -> list[Hit]:
    """The node's own shared files matching a query, as hits marked `local`."""
    host, port = node.address
    return [Hit(name=sf.name, size=sf.size, urn=sf.urn, host=host, port=port, index=sf.index,
                servent_guid=node.servent_guid.hex(), firewalled=bool(node.cfg.firewalled),
                vendor=VENDOR_CODE.decode(), speed=0, hops=0, local=True)
            for sf in node.share.match(text, urns, limit)]


def hit_source(h: Hit) -> dl.Source:
    """A download source from a search hit."""
    return dl.Source(host=h.host, port=h.port, index=h.index, name=h.name, size=h.size, urn=h.urn,
                     servent_guid=bytes.fromhex(h.servent_guid), firewalled=h.firewalled,
                     push_proxies=tuple(h.push_proxies), tls=h.tls)


async def fetch(node: Node, target: str, name: str | None, size: int | None, out: Path, timeout: float,
                progress: Callable | None = None, hints: list[dict] | tuple = ()) -> Path:
    """Find sources for a urn or magnet and download the file, verified.

    Args:
        target: "urn:sha1:..." or a magnet link.
        name, size: known from the magnet or a previous search; learned from hits otherwise.
        out: folder for the finished file.
        timeout: overall seconds for finding sources and downloading.
        progress: called with download.DownloadProgress.
        hints: sources already known (the rows of `gnut search`, app/lastsearch.py): used at once,
            beside what the urn query finds.

    Raises:
        FetchError: no source answered, the download failed or did not verify.
    """
    try:
        urn, m_name, m_size = dl.parse_magnet(target)
    except LocalProtocolError as exc:
        raise FetchError(str(exc)) from None
    if urn is None:
        raise FetchError(f"not a urn:sha1 or magnet link with one: {target!r}")
    name = name or m_name
    size = size or m_size
    deadline = time.monotonic() + timeout
    search = node.searches.start(URN_QUERY_TEXT, (urn,))
    q = search.listen()
    sources: dict[tuple[str, int, int], Hit] = {}
    known = [s for s in (source_from_hint(h, urn, size or 0, name or "") for h in hints) if s is not None and s.size]
    dht_lookup = dht_sources(node, urn, timeout)  # ALOC sources from the DHT, beside the flood
    first_at = time.monotonic() if known else None
    try:
        while True:
            now = time.monotonic()
            if first_at is None and _dht_found(dht_lookup):
                first_at = now
            wait = (first_at + SOURCE_GATHER - now) if first_at else (deadline - now)
            if wait <= 0:
                break
            try:
                async with asyncio.timeout(min(wait, DHT_POLL) if dht_lookup is not None else wait):
                    h = await q.get()
            except TimeoutError:
                continue
            if h.urn and h.urn.lower() == urn.lower():
                sources[(h.host, h.port, h.index)] = h
                first_at = first_at or time.monotonic()
    finally:
        search.listeners.remove(q)
        if dht_lookup is not None and not dht_lookup.done():
            dht_lookup.cancel()
    found = {s.key: s for s in known + [hit_source(h) for h in sources.values()]}
    for s in _dht_found(dht_lookup):
        if all((s.host, s.port) != (f.host, f.port) for f in found.values()):
            found[s.key] = s
    if not found:
        raise FetchError(f"no source found for {urn} within {timeout:.0f} s")
    # The size most distinct addresses announce (dl.agreed_size), never just the first answer's.
    size = size or dl.agreed_size(found.values())
    if not size:
        raise FetchError(f"no source of {urn} announced a usable size (zero or implausibly large)")
    name = name or next(s.name for s in found.values() if s.size == size)
    left = max(1.0, deadline - time.monotonic())
    have = await _already_there(out, name, size, urn)
    if have is not None:
        return have
    try:
        return await node.transfers.download(urn, size, name, [s for s in found.values() if s.size == size], out,
                                             progress, left)
    except TimeoutError:
        raise FetchError(f"download of {urn} timed out after {timeout:.0f} s "
                         f"(the partial file is kept; run the command again to resume)") from None
    except (dl.DownloadError, OSError) as exc:
        raise FetchError(f"download of {urn} failed: {exc}") from exc


async def _already_there(out: Path, name: str, size: int, urn: str) -> Path | None:
    """`out/name` when it already holds this very file (same size and SHA-1): nothing to fetch."""
    candidate = Path(out) / dl.safe_name(name, fallback=f"download-{urn[9:17]}")
    try:
        if not candidate.is_file() or candidate.stat().st_size != size:
            return None
    except OSError:
        return None

    def digest() -> bytes:
        sha1 = hashlib.sha1()
        with open(candidate, "rb") as fh:
            while block := fh.read(1 << 20):
                sha1.update(block)
        return sha1.digest()

    try:
        same = await asyncio.to_thread(digest) == base64.b32decode(dl.normalize_urn(urn)[9:])
    except OSError:
        return None
    return candidate if same else None
