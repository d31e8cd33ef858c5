"""The node's download queue: downloads belong to the node, clients only watch them.

Strategy: each entry (id, urn, name, size, folder, state) runs as one task of the node: look
for sources (hints from the last search plus a urn query on the network), then drive a
`download.Download` (swarming, sidecar resume, SHA-1 check). A client (`gnut get`) adds an
entry and listens to its progress; when the client goes away nothing happens to the task.
Pause cancels the task (Download persists its ranges in the sidecar when cancelled), resume
starts a new one that resumes from that sidecar, cancel also deletes the partial data. The
queue is kept in HOME/downloads.json (atomic writes) so queued, paused and partial downloads
survive a restart; running ones come back as queued.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gnut.errors import LocalProtocolError
from gnut.protocol.magnet import normalize_urn, safe_name
from gnut.protocol.printable import printable
from gnut.runtime import download as dl
from gnut.runtime.fsutil import atomic_write_bytes

if TYPE_CHECKING:
    from gnut.runtime.host import NodeServices

log = logging.getLogger("gnut.runtime.downloads")

QUEUE_FILE = "downloads.json"
QUEUE_VERSION = 1
# Entries the queue holds: a client cannot grow the node's memory or its state file without bound.
MAX_ENTRIES = 500
# Finished (complete/failed/cancelled) entries kept for `gnut downloads`; older ones are forgotten.
MAX_FINISHED_KEPT = 50
# Source hints kept per entry (from the last search's row): more add nothing to a swarm.
MAX_HINTS = 32
# After the first source answers, listen this long for more before starting.
SOURCE_GATHER = 1.0
# Default seconds to look for sources before an entry fails (`gnut resume ID` tries again).
SOURCE_TIMEOUT = 60.0
# While no source answered, the urn query is sent again this often (peers come and go).
REQUERY_EVERY = 10.0
# How often the source search looks whether the DHT lookup has finished.
DHT_POLL = 0.2
# How often a download waiting for the node's first link checks again.
LINK_POLL = 0.2
# Text sent with a urn-only query: LimeWire-family servents use a lone backslash.
URN_QUERY_TEXT = "\\"
# Speed is measured over this window (seconds), so it follows the transfer, not its average.
SPEED_WINDOW = 5.0
# Progress listeners per entry (clients watching it), and events queued for a slow one.
MAX_LISTENERS = 16
LISTENER_BACKLOG = 64
# The queue file is rewritten at most this often for byte counts (state changes save at once).
SAVE_EVERY = 5.0
HASH_BLOCK = 1 << 20

ACTIVE = ("queued", "searching", "downloading", "verifying")
FINISHED = ("complete", "failed", "cancelled")


class QueueError(Exception):
    """A queue operation that cannot be done (no such id, wrong state, queue full)."""


@dataclass(eq=False)
class Entry:
    """One download of the queue."""

    id: int
    urn: str
    name: str
    size: int
    out: str
    state: str = "queued"
    done: int = 0
    error: str = ""
    path: str = ""
    added: float = field(default_factory=time.time)
    source_timeout: float = SOURCE_TIMEOUT
    hints: list[dict] = field(default_factory=list)
    # Not persisted:
    speed: float = 0.0
    active: int = 0
    known: int = 0
    started: float = 0.0
    note: str = ""
    start_done: int = 0  # bytes on disk when this run started (a resumed run fetches the rest)
    seconds: float = 0.0  # how long the last run took
    samples: deque = field(default_factory=lambda: deque(maxlen=64))
    listeners: list = field(default_factory=list)
    task: asyncio.Task | None = None
    stopping: asyncio.Task | None = None  # the task a pause cancelled, until its sidecar is saved

    PERSISTED = ("id", "urn", "name", "size", "out", "state", "done", "error", "path", "added",
                 "source_timeout", "hints")

    def view(self) -> dict:
        """What clients see (JSON-ready)."""
        eta = None
        if self.state == "downloading" and self.speed > 0 and self.size:
            eta = round(max(0, self.size - self.done) / self.speed, 1)
        return {"id": self.id, "urn": self.urn, "name": self.name, "size": self.size, "done": self.done,
                "state": self.state, "speed": round(self.speed), "eta": eta, "sources": self.active,
                "sources_known": self.known, "error": self.error, "path": self.path, "out": self.out,
                "note": self.note, "seconds": round(self.seconds, 2),
                "fetched": max(0, self.done - self.start_done)}


def source_from_hint(h: dict, urn: str, size: int, name: str) -> dl.Source | None:
    """A download source from a search row's source dict; None when it lacks an address."""
    try:
        host, port = str(h["host"]), int(h["port"])
        guid = bytes.fromhex(str(h.get("servent_guid") or "")) or bytes(16)
        proxies = tuple((str(a), int(b)) for a, b in (h.get("push_proxies") or ())[:PROXIES_PER_SOURCE])
        return dl.Source(host=host, port=port, index=int(h.get("index", 0)), name=str(h.get("name") or name),
                         size=int(h.get("size") or size), urn=urn, servent_guid=guid,
                         firewalled=bool(h.get("firewalled", False)), push_proxies=proxies,
                         tls=bool(h.get("tls", False)))
    except (KeyError, ValueError, TypeError):
        return None


# Push proxies taken from one search row's source (a hit carries a handful; the rest is noise).
PROXIES_PER_SOURCE = 8

# Types of the persisted fields (the queue file is ours, but a damaged one must not stop the node).
_ROW_TYPES = {"id": int, "urn": str, "name": str, "size": int, "out": str, "state": str, "done": int,
              "error": str, "path": str, "added": (int, float), "source_timeout": (int, float), "hints": list}


def _entry_from_row(row) -> Entry | None:
    """An Entry from a queue-file row, or None when the row is damaged."""
    if not isinstance(row, dict) or not all(k in row for k in ("id", "urn", "out")):
        return None
    kw = {k: row[k] for k in Entry.PERSISTED if k in row}
    if not all(isinstance(v, _ROW_TYPES[k]) and not isinstance(v, bool) for k, v in kw.items()):
        return None
    if kw.get("state", "queued") not in ACTIVE + FINISHED + ("paused",) or kw["id"] < 1 or kw.get("size", 0) < 0:
        return None
    try:
        kw["urn"] = normalize_urn(kw["urn"])
    except LocalProtocolError:
        return None
    kw["hints"] = [h for h in kw.get("hints", []) if isinstance(h, dict)][:MAX_HINTS]
    return Entry(**kw)


def _digest(urn: str) -> bytes:
    return base64.b32decode(normalize_urn(urn)[9:])


def _sha1_of(path: Path) -> bytes:
    sha1 = hashlib.sha1()
    with open(path, "rb") as fh:
        while block := fh.read(HASH_BLOCK):
            sha1.update(block)
    return sha1.digest()


class DownloadQueue:
    """The node's downloads; `node.downloads`."""

    def __init__(self, node: NodeServices, transfers: Any, path: Path | None, max_running: int) -> None:
        """`path` None: a queue kept in memory only (a short-lived client node must never overwrite
        the queue file of the user's node in the same home)."""
        self.node = node
        self.transfers = transfers
        self.path = Path(path) if path is not None else None
        self.max_running = max_running
        self.entries: dict[int, Entry] = {}
        self._next_id = 1
        self._last_save = 0.0
        self.completed = 0
        self.bytes_received = 0

    # --- persistence ------------------------------------------------------------------
    def load(self) -> None:
        """Read the queue file; entries that were running come back queued."""
        if self.path is None:
            return
        try:
            doc = json.loads(self.path.read_bytes())
            rows = doc["entries"] if doc.get("version") == QUEUE_VERSION else []
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("download queue %s unreadable (%s): starting with an empty queue", self.path, exc)
            return
        if not isinstance(rows, list):
            log.warning("download queue %s unreadable (no list of entries): starting with an empty queue", self.path)
            return
        for row in rows[:MAX_ENTRIES]:
            e = _entry_from_row(row)
            if e is None:
                log.warning("download queue %s: an unreadable entry was skipped", self.path)
                continue
            if e.state in ACTIVE:
                e.state = "queued"
            self.entries[e.id] = e
            self._next_id = max(self._next_id, e.id + 1)
        n = sum(1 for e in self.entries.values() if e.state == "queued")
        if n:
            log.info("download queue: %d download(s) to resume from %s", n, self.path)

    def save(self) -> None:
        if self.path is None:
            return
        rows = [{k: getattr(e, k) for k in Entry.PERSISTED} for e in self.entries.values()]
        try:
            atomic_write_bytes(self.path, json.dumps({"version": QUEUE_VERSION, "entries": rows}).encode())
        except OSError as exc:
            log.warning("could not save the download queue %s: %s", self.path, exc)
        self._last_save = time.monotonic()

    # --- operations -----------------------------------------------------------------------
    def add(self, urn: str, name: str | None, size: int | None, out: Path, hints: list[dict] | None = None,
            source_timeout: float = SOURCE_TIMEOUT) -> Entry:
        """Queue a download (or return the unfinished one of the same file into the same folder).

        Raises:
            QueueError: a malformed urn, or the queue is full of unfinished downloads.
        """
        try:
            urn = normalize_urn(urn)
        except LocalProtocolError as exc:
            raise QueueError(str(exc)) from None
        out_s = str(Path(out))
        for e in self.entries.values():
            if e.urn == urn and e.out == out_s and e.state not in FINISHED:
                if e.state == "paused":
                    self.resume(e.id)
                return e
        self._trim()
        if len(self.entries) >= MAX_ENTRIES:
            raise QueueError(f"the download queue is full ({MAX_ENTRIES} unfinished downloads)")
        e = Entry(id=self._next_id, urn=urn, name=name or "", size=int(size or 0), out=out_s,
                  source_timeout=max(1.0, float(source_timeout)),
                  hints=[h for h in (hints or []) if isinstance(h, dict)][:MAX_HINTS])
        self._next_id += 1
        self.entries[e.id] = e
        self.save()
        self.schedule()
        return e

    def get(self, ident: int) -> Entry:
        e = self.entries.get(ident)
        if e is None:
            raise QueueError(f"no download #{ident} (gnut downloads lists them)")
        return e

    def pause(self, ident: int) -> Entry:
        e = self.get(ident)
        if e.state in FINISHED:
            raise QueueError(f"download #{ident} is {e.state}: nothing to pause")
        if e.state != "paused":
            self._stop_task(e)
            self._set(e, "paused")
            self.schedule()
        return e

    def resume(self, ident: int) -> Entry:
        e = self.get(ident)
        if e.state == "complete" or e.state == "cancelled":
            raise QueueError(f"download #{ident} is {e.state}: nothing to resume")
        if e.state in ("paused", "failed"):
            e.error = ""
            self._set(e, "queued", "")
            self.schedule()
        return e

    def cancel(self, ident: int) -> Entry:
        e = self.get(ident)
        if e.state in FINISHED:
            raise QueueError(f"download #{ident} is already {e.state}")
        self._stop_task(e)
        self._set(e, "cancelled")
        if e.size:
            self.node.spawn(self._discard_partial(e, e.stopping))
        self.schedule()
        return e

    async def _discard_partial(self, e: Entry, stopping: asyncio.Task | None) -> None:
        """Delete a cancelled download's partial data once its task has closed (and saved) it."""
        if stopping is not None:
            await asyncio.gather(stopping, return_exceptions=True)
        with contextlib.suppress(LocalProtocolError, OSError):
            d = dl.Download(e.urn, e.size, e.name or "x", Path(e.out))
            d.part_path.unlink(missing_ok=True)
            d.state_path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                d.partial_dir.rmdir()

    def listen(self, e: Entry) -> asyncio.Queue:
        if len(e.listeners) >= MAX_LISTENERS:
            raise QueueError(f"download #{e.id} has {MAX_LISTENERS} watchers already")
        q: asyncio.Queue = asyncio.Queue(LISTENER_BACKLOG)
        e.listeners.append(q)
        q.put_nowait(e.view())
        return q

    def unlisten(self, e: Entry, q: asyncio.Queue) -> None:
        with contextlib.suppress(ValueError):
            e.listeners.remove(q)

    def views(self) -> list[dict]:
        return [e.view() for e in self.entries.values()]

    def schedule(self) -> None:
        """Start queued entries while fewer than max_running run."""
        if getattr(self.node, "stopping", False):
            return
        running = sum(1 for e in self.entries.values() if e.task is not None and not e.task.done())
        for e in self.entries.values():
            if running >= self.max_running:
                return
            if e.state == "queued" and (e.task is None or e.task.done()):
                e.task = self.node.spawn(self._run(e))
                running += 1

    async def stop(self) -> None:
        """Node shutdown: stop the tasks (their sidecars persist), keep entries for the next start."""
        tasks = [e.task for e in self.entries.values() if e.task is not None and not e.task.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.save()

    # --- internals ------------------------------------------------------------------------
    def _trim(self) -> None:
        done = [e for e in self.entries.values() if e.state in FINISHED]
        for e in done[:max(0, len(done) - MAX_FINISHED_KEPT + 1)]:
            del self.entries[e.id]

    def _stop_task(self, e: Entry) -> None:
        if e.task is not None and not e.task.done():
            e.task.cancel()
            e.stopping = e.task
        e.task = None
        e.active = 0
        e.speed = 0.0

    def _notify(self, e: Entry) -> None:
        view = e.view()
        for q in list(e.listeners):
            if q.full():  # a watcher that does not read loses old lines, never the node's memory
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(view)

    def _set(self, e: Entry, state: str, note: str | None = None) -> None:
        e.state = state
        if note is not None:
            e.note = note
        self._notify(e)
        self.save()

    def _on_progress(self, e: Entry, p: dl.DownloadProgress, owner: asyncio.Task | None = None) -> None:
        now = time.monotonic()
        first = owner is e.task and not e.samples  # the sidecar's bytes, not received now
        if p.done > e.done and not first:
            self.bytes_received += p.done - e.done
        if owner is not e.task:  # a paused or cancelled run finishing its last write: bytes only
            e.done = p.done
            return
        if not e.samples:
            e.start_done = p.done
        e.done = p.done
        e.active = p.sources_active
        e.samples.append((now, p.done))
        while len(e.samples) > 2 and now - e.samples[0][0] > SPEED_WINDOW:
            e.samples.popleft()
        t0, d0 = e.samples[0]
        e.speed = (p.done - d0) / (now - t0) if now - t0 > 0.2 else e.speed
        state = {"restarting": "downloading", "complete": "verifying", "failed": e.state}.get(p.state, p.state)
        if state != e.state:
            e.state = state
            self.save()
        elif now - self._last_save > SAVE_EVERY:
            self.save()
        self._notify(e)

    async def _run(self, e: Entry) -> None:
        me = asyncio.current_task()
        if e.stopping is not None and e.stopping is not me:  # a pause's task still closing its .part
            await asyncio.gather(e.stopping, return_exceptions=True)
            e.stopping = None
        e.started = time.monotonic()
        e.start_done = e.done
        e.samples.clear()  # the first progress of this run sets start_done from the sidecar
        try:
            path = await self._fetch(e)
        except asyncio.CancelledError:
            e.active = 0
            raise
        except (dl.DownloadError, QueueError, LocalProtocolError, OSError) as exc:
            e.error = str(exc)
            e.active = 0
            e.speed = 0.0
            log.info("download #%d %s failed: %s", e.id, printable(e.name or e.urn), e.error)
            self._set(e, "failed")
        else:
            e.path = str(path)
            e.done = e.size
            e.active = 0
            self.completed += 1
            secs = e.seconds = time.monotonic() - e.started
            log.info("download #%d complete: %s (%d bytes from %d source(s) in %.1f s) -> %s", e.id,
                     printable(e.name), e.size, e.known, secs, printable(str(path)))
            self._set(e, "complete")
        finally:
            if e.task is me:
                e.task = None
            if not getattr(self.node, "stopping", False):
                asyncio.get_running_loop().call_soon(self.schedule)

    async def _fetch(self, e: Entry) -> Path:
        out = Path(e.out)
        out.mkdir(parents=True, exist_ok=True)
        mine = self.transfers.share.by_urn(e.urn)
        if mine is not None:  # the node shares it: copy our own file, checked
            e.name = e.name or mine.name
            e.size = mine.size
            e.known = 1
            return await self._copy_own(e, mine.path, out)
        sources = await self._find_sources(e)
        have = self._already_there(e, out)
        if have is not None and await asyncio.to_thread(_sha1_of, have) == _digest(e.urn):
            e.note = "already there"
            e.done = e.start_done = e.size
            log.info("download #%d: %s is already in %s (same SHA-1): nothing to fetch", e.id,
                     printable(e.name), printable(str(out)))
            return have
        self._set(e, "downloading")
        cfg = self.node.cfg
        me = asyncio.current_task()
        rates = getattr(self.transfers, "rates", None)
        d = dl.Download(e.urn, e.size, e.name, out, sources=sources, push=self.transfers.push_connect,
                        tls_context=self.node.tls_context(False) if hasattr(self.node, "tls_context") else None,
                        progress=lambda p: self._on_progress(e, p, me),
                        assume_private_firewalled=cfg.private_means_firewalled,
                        rate_bucket=None if rates is None or rates.download.unlimited else rates.download)
        path = await d.run()
        with contextlib.suppress(OSError):  # only when no other partial file is in there
            (out / dl.PARTIAL_DIR).rmdir()
        return path

    def _already_there(self, e: Entry, out: Path) -> Path | None:
        candidate = out / safe_name(e.name, fallback=f"download-{e.urn[9:17]}")
        try:
            return candidate if candidate.is_file() and candidate.stat().st_size == e.size else None
        except OSError:
            return None

    async def _copy_own(self, e: Entry, src: Path, out: Path) -> Path:
        self._set(e, "verifying", "copying from our own shares")
        dest = out / safe_name(e.name, fallback=f"download-{e.urn[9:17]}")
        if dest.exists():
            if dest.resolve() == Path(src).resolve() or (
                    dest.stat().st_size == e.size and await asyncio.to_thread(_sha1_of, dest) == _digest(e.urn)):
                e.note = "already there"
                return dest
            raise QueueError(f"{dest} exists with other content (and the node shares this file as {src})")
        tmp = out / f".{dest.name}.gnut-copy"
        await asyncio.to_thread(shutil.copyfile, src, tmp)
        if await asyncio.to_thread(_sha1_of, tmp) != _digest(e.urn):
            tmp.unlink(missing_ok=True)
            raise QueueError(f"our shared copy {src} changed since it was hashed; run `gnut rescan`")
        os.replace(tmp, dest)
        e.note = "copied from our own shares"
        return dest

    def _dht_lookup(self, e: Entry) -> asyncio.Task | None:
        """A task finding the file's ALOC sources in the node's DHT, or None without one."""
        dht = getattr(self.node, "dht", None)
        if dht is None:
            return None
        sha1 = _digest(e.urn)

        async def lookup() -> list[dl.Source]:
            return [dl.Source(host=h, port=p, index=0, name=e.name or e.urn[9:], size=a.length, urn=e.urn,
                              servent_guid=a.guid, firewalled=False)
                    for h, p, a in await dht.find_alocs(sha1, e.source_timeout)]

        return asyncio.get_running_loop().create_task(lookup())

    def _linked(self) -> bool:
        return any(getattr(p, "established", False) for p in self.node.peers.values())

    async def _find_sources(self, e: Entry) -> list[dl.Source]:
        """Hints first, then a urn query; waits up to e.source_timeout for the first answer."""
        self._set(e, "searching")
        found: dict[str, dl.Source] = {}
        for h in e.hints:
            s = source_from_hint(h, e.urn, e.size, e.name)
            if s is not None and s.size:
                found[s.key] = s
        deadline = time.monotonic() + e.source_timeout
        first_at = time.monotonic() if found else None
        # A node that just started (a queue resumed at start-up) has no link yet: a query now
        # would reach nobody, so wait for the first link, and ask again every REQUERY_EVERY.
        while not first_at and not self._linked() and getattr(self.node, "dht", None) is None \
                and time.monotonic() < deadline:
            await asyncio.sleep(LINK_POLL)
        search = q = None
        asked = 0.0
        dht = self._dht_lookup(e)  # ALOC sources from the DHT, beside the flood (None without a DHT)
        try:
            while True:
                now = time.monotonic()
                if dht is not None and dht.done():
                    for s in ([] if dht.cancelled() or dht.exception() is not None else dht.result()):
                        if s.size and all((s.host, s.port) != (f.host, f.port) for f in found.values()):
                            found[s.key] = s
                    dht = None
                    if found and not first_at:
                        first_at = now
                        e.known = len(found)
                        self._notify(e)
                if search is None or (not first_at and now - asked >= REQUERY_EVERY):
                    if search is not None:
                        with contextlib.suppress(ValueError):
                            search.listeners.remove(q)
                    search = self.node.searches.start(URN_QUERY_TEXT, (e.urn,))
                    q = search.listen()
                    asked = now
                wait = (first_at + SOURCE_GATHER - now) if first_at else min(deadline - now, asked + REQUERY_EVERY - now)
                if first_at and wait <= 0 or now >= deadline:
                    break
                try:
                    async with asyncio.timeout(max(0.0, min(wait, DHT_POLL) if dht is not None else wait)):
                        h = await q.get()
                except TimeoutError:
                    continue
                if not h.urn or h.urn.upper() != e.urn.upper():
                    continue
                s = dl.Source(host=h.host, port=h.port, index=h.index, name=h.name, size=h.size, urn=h.urn,
                              servent_guid=bytes.fromhex(h.servent_guid), firewalled=h.firewalled,
                              push_proxies=tuple(h.push_proxies), tls=h.tls)
                found[s.key] = s
                first_at = first_at or time.monotonic()
                e.known = len(found)
                self._notify(e)
        finally:
            if search is not None:
                with contextlib.suppress(ValueError):
                    search.listeners.remove(q)
            if dht is not None and not dht.done():
                dht.cancel()
        if not found:
            raise QueueError(f"no source found within {e.source_timeout:.0f} s "
                             f"(`gnut resume {e.id}` looks again)")
        # The size most distinct addresses announce (dl.agreed_size), never just the first answer's.
        e.size = e.size or dl.agreed_size(found.values()) or 0
        if not e.size:
            raise QueueError("no source announced a usable size (zero or implausibly large)")
        e.name = e.name or next(s.name for s in found.values() if s.size == e.size)
        sources = [s for s in found.values() if s.size == e.size]
        e.known = len(sources)
        return sources
