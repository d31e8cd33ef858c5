"""PARQ (Passive/Active Remote Queueing, gtk-gnutella doc/gnutella/PARQ 1.1): headers and a fair upload queue.

Sans-IO, time passed in. Headers:

* request `X-Queue: 1.0` (the client understands PARQ), `X-Queued: position=N; ID=<id>` (the
  client's last known place), `X-Node: IP:PORT` (where a QUEUE callback can reach it);
* answer `503` with `X-Queued: position=..; length=..; limit=..; pollMin=..; pollMax=..;
  lifetime=..; ID=..` and `Retry-After`. Parsers also read the legacy Active Queueing form
  (`X-Queue: position=2,length=5,limit=4,pollMin=45,pollMax=120`): ',' or ';' separators,
  case-insensitive names, order not relied upon;
* the callback a server sends to a client that did not come back in time:
  `QUEUE <ID> <IP>:<PORT>\\r\\n`.

The queue (`UploadQueue`): one entry per (host, file); a host may hold at most
`max_per_host` entries; the order is round-robin across hosts (every host's first entry, in
arrival order, before any host's second); the Retry-After shrinks toward the head
(30 + 20 * (position - 1) seconds, at most 600, as PARQ section 4 says); an entry whose client
does not come back before its lifetime is dropped (after at most MAX_CALLBACKS QUEUE callbacks
when the client gave an X-Node); a client that keeps asking too early loses its place.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from gnut.errors import RemoteProtocolError
from gnut.protocol.altloc import parse_hostport

MAX_QUEUE = 5000  # entries (PARQ: "typically 5000 entries or more")
MAX_PER_HOST = 4  # entries one host may hold (one per file it wants)
RETRY_BASE, RETRY_STEP, RETRY_MAX = 30.0, 20.0, 600.0  # PARQ section 4: x = 30 + 20 * (slot - 1)
LIFETIME_GRACE = 300.0  # PARQ's remanence: a place is held this long past the Retry-After
MAX_EARLY = 3  # requests before the Retry-After tolerated in a row; the next one frees the place
MAX_CALLBACKS = 2  # PARQ: two unanswered QUEUE callbacks and the place is freed
MAX_HEADER_LEN = 512  # an X-Queued value longer than this is not PARQ
MAX_FIELDS = 16
_ID = re.compile(r"[0-9A-Fa-f]{8,64}")


@dataclass(slots=True)
class QueueStatus:
    """The fields of X-Queued / legacy X-Queue (None when absent)."""

    position: int
    id: str | None = None
    length: int | None = None
    limit: int | None = None
    eta: int | None = None
    lifetime: int | None = None
    poll_min: int | None = None
    poll_max: int | None = None


_FIELDS = {
    "position": "position",
    "id": "id",
    "length": "length",
    "limit": "limit",
    "eta": "eta",
    "lifetime": "lifetime",
    "pollmin": "poll_min",
    "pollmax": "poll_max",
}


def parse_queued(value: str) -> QueueStatus:
    """Parse X-Queued (PARQ) or a legacy X-Queue status; RemoteProtocolError if malformed."""
    if len(value) > MAX_HEADER_LEN:
        raise RemoteProtocolError(f"X-Queued of {len(value)} characters is over {MAX_HEADER_LEN}")
    found: dict[str, object] = {}
    items = [i.strip() for i in re.split(r"[;,]", value) if i.strip()]
    if len(items) > MAX_FIELDS:
        raise RemoteProtocolError(f"X-Queued has {len(items)} fields, over {MAX_FIELDS}")
    for item in items:
        name, sep, raw = item.partition("=")
        key = _FIELDS.get(name.strip().lower())
        if not sep or key is None:
            continue  # unknown variables are allowed
        raw = raw.strip()
        if key == "id":
            if not _ID.fullmatch(raw):
                raise RemoteProtocolError(f"X-Queued ID is not hex: {raw[:40]!r}")
            found[key] = raw.lower()
        else:
            if not raw.isdigit() or len(raw) > 9:
                raise RemoteProtocolError(
                    f"X-Queued {name.strip()[:20]!r} is not a small number: {raw[:20]!r}"
                )
            found[key] = int(raw)
    if "position" not in found:
        raise RemoteProtocolError("X-Queued has no position")
    return QueueStatus(**found)  # type: ignore[arg-type]


def format_queued(status: QueueStatus) -> str:
    """X-Queued value, PARQ style (';' separated), with the legacy names for pollMin/pollMax."""
    parts = [f"position={status.position}"]
    for name, value in (
        ("length", status.length),
        ("limit", status.limit),
        ("ETA", status.eta),
        ("lifetime", status.lifetime),
        ("pollMin", status.poll_min),
        ("pollMax", status.poll_max),
        ("ID", status.id),
    ):
        if value is not None:
            parts.append(f"{name}={value}")
    return "; ".join(parts)


def parse_queue_version(value: str) -> tuple[int, int] | None:
    """`X-Queue: 1.0` -> (1, 0); None when the value is a legacy status or malformed."""
    m = re.fullmatch(r"\s*(\d{1,3})\.(\d{1,3})\s*", value[:32])
    return (int(m.group(1)), int(m.group(2))) if m else None


def format_queue_line(queue_id: str, host: str, port: int) -> bytes:
    """The QUEUE callback line a server sends to a queued client's X-Node."""
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"QUEUE {queue_id} {hostport}\r\n".encode("ascii")


def parse_queue_line(line: bytes) -> tuple[str, str, int]:
    """(ID, server host, server port) from a QUEUE line; RemoteProtocolError if malformed."""
    if len(line) > 200:
        raise RemoteProtocolError("QUEUE line is too long")
    try:
        text = line.decode("ascii").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError("QUEUE line is not ASCII") from exc
    parts = text.split(" ")
    if len(parts) != 3 or parts[0] != "QUEUE" or not _ID.fullmatch(parts[1]):
        raise RemoteProtocolError(f"not a QUEUE line: {text[:80]!r}")
    hp = parse_hostport(parts[2], default_port=None)
    if hp is None:
        raise RemoteProtocolError(f"QUEUE line address is not IP:PORT: {parts[2][:60]!r}")
    return parts[1].lower(), hp[0], hp[1]


def retry_after(position: int) -> float:
    """PARQ's Retry-After for a queue position (1 = next to be served)."""
    return min(RETRY_MAX, RETRY_BASE + RETRY_STEP * (position - 1))


# -------------------------------------------------------------------------------------------------
# The queue


@dataclass(slots=True)
class Entry:
    host: str
    file: object
    id: str
    arrived: float
    ordinal: int  # this host's n-th live entry (0 first): the round-robin key
    next_allowed: float = 0.0
    deadline: float = 0.0
    early: int = 0
    callbacks: int = 0
    x_node: tuple[str, int] | None = None
    position: int = 0


@dataclass(slots=True)
class Decision:
    """What to answer: serve now, or 503 with the entry's place, or refuse (reason says why)."""

    serve: bool
    entry: Entry | None = None
    length: int = 0
    retry_after: float = 0.0
    lifetime: float = 0.0
    reason: str = ""

    def status(self, slots: int) -> QueueStatus | None:
        if self.entry is None or self.serve:
            return None
        return QueueStatus(
            position=self.entry.position,
            id=self.entry.id,
            length=self.length,
            limit=slots,
            lifetime=int(self.lifetime),
            poll_min=int(self.retry_after),
            poll_max=int(self.lifetime),
        )


@dataclass
class UploadQueue:
    """Upload slots and the PARQ queue in front of them, fair across hosts."""

    slots: int
    max_queue: int = MAX_QUEUE
    max_per_host: int = MAX_PER_HOST
    retry_scale: float = 1.0  # tests shrink the Retry-After ladder through config, not exemptions
    new_id: Callable[[], str] = field(default=lambda: secrets.token_hex(16))
    active: set[tuple[str, object]] = field(default_factory=set)
    entries: dict[tuple[str, object], Entry] = field(default_factory=dict)
    counters: dict[str, int] = field(
        default_factory=lambda: {
            "served": 0,
            "queued": 0,
            "refused_host_limit": 0,
            "refused_full": 0,
            "expired": 0,
            "dropped_early": 0,
            "callbacks": 0,
        }
    )

    def _order(self) -> list[Entry]:
        ranked = sorted(self.entries.values(), key=lambda e: (e.ordinal, e.arrived))
        for pos, entry in enumerate(ranked, 1):
            entry.position = pos
        return ranked

    def _drop(self, entry: Entry) -> None:
        del self.entries[(entry.host, entry.file)]
        # The host's later entries move up one round.
        for other in self.entries.values():
            if other.host == entry.host and other.ordinal > entry.ordinal:
                other.ordinal -= 1

    def expire(self, now: float) -> None:
        for entry in [e for e in self.entries.values() if now > e.deadline]:
            self._drop(entry)
            self.counters["expired"] += 1

    def _retry(self, position: int) -> float:
        return retry_after(position) * self.retry_scale

    def request(
        self,
        host: str,
        file: object,
        now: float,
        queue_id: str | None = None,
        x_node: tuple[str, int] | None = None,
    ) -> Decision:
        """A download request from `host` for `file` (the caller's key: SHA-1 or share index)."""
        self.expire(now)
        key = (host, file)
        if key in self.active:
            return Decision(True, reason="already uploading")
        entry = self.entries.get(key)
        if entry is None and queue_id is not None:
            # PARQ lets a client ask for another file with the same place (slot reservation).
            entry = next((e for e in self.entries.values() if e.id == queue_id and e.host == host), None)
            if entry is not None:
                del self.entries[(entry.host, entry.file)]
                entry.file = file
                self.entries[key] = entry
        free = self.slots - len(self.active)
        if entry is None:
            if free > 0 and not self.entries:
                return self._serve(key)
            host_entries = sum(1 for e in self.entries.values() if e.host == host)
            if host_entries >= self.max_per_host:
                self.counters["refused_host_limit"] += 1
                return Decision(False, reason=f"{host_entries} files already queued for this host")
            if len(self.entries) >= self.max_queue:
                self.counters["refused_full"] += 1
                return Decision(False, reason="upload queue is full")
            entry = Entry(host, file, self.new_id(), now, host_entries, x_node=x_node)
            self.entries[key] = entry
            self.counters["queued"] += 1
        elif now < entry.next_allowed:
            entry.early += 1
            if entry.early > MAX_EARLY:
                self._drop(entry)
                self.counters["dropped_early"] += 1
                return Decision(False, reason="asked again too soon, too often: place freed")
        else:
            entry.early = 0
        if x_node is not None:
            entry.x_node = x_node
        entry.callbacks = 0
        ranked = self._order()
        if free > 0 and entry.position <= free:
            self._drop(entry)
            return self._serve(key)
        wait = self._retry(entry.position)
        if now >= entry.next_allowed:
            entry.next_allowed = now + wait
        else:
            wait = entry.next_allowed - now
        lifetime = wait + LIFETIME_GRACE * self.retry_scale
        entry.deadline = now + lifetime
        return Decision(False, entry, len(ranked), wait, lifetime, "queued")

    def _serve(self, key: tuple[str, object]) -> Decision:
        self.active.add(key)
        self.counters["served"] += 1
        return Decision(True, reason="slot free")

    def done(self, host: str, file: object) -> None:
        """The upload for (host, file) ended: its slot is free again."""
        self.active.discard((host, file))

    def callbacks_due(self, now: float) -> list[tuple[str, tuple[str, int]]]:
        """(ID, X-Node) of entries past their Retry-After whose client gave an X-Node: send QUEUE.

        Each call counts one callback per entry; the entry's lifetime is extended by one
        Retry-After each time, and after MAX_CALLBACKS unanswered callbacks it expires normally.
        """
        due = []
        for entry in self._order():
            if entry.x_node is None or now < entry.next_allowed or entry.callbacks >= MAX_CALLBACKS:
                continue
            entry.callbacks += 1
            wait = self._retry(entry.position)
            entry.next_allowed = now + wait
            entry.deadline = max(entry.deadline, now + wait + LIFETIME_GRACE * self.retry_scale)
            due.append((entry.id, entry.x_node))
            self.counters["callbacks"] += 1
        return due

    def snapshot(self) -> list[tuple[int, str, object]]:
        """(position, host, file) of every queued entry, head first (for `gnut status`)."""
        return [(e.position, e.host, e.file) for e in self._order()]
