"""Search-result spam filtering, sans-IO: a known-spam SHA-1 list plus heuristics over time windows.

Strategy (the facts come from gtk-gnutella's spam.c/spam_sha1.c and LimeWire's spam filter):
spammers answer every query with synthesized results. They show in four ways, each a reason:

- `known_spam`: the SHA-1 is on the user's list (`$GNUT_HOME/spam_sha1.txt`, `--spam-list`).
- `exe_named_query`: the file name is the query itself plus an executable extension
  ("jazz live.exe", "jazz live.wmv.exe", "jazz live.scr"): nobody names a real file that way.
- `zero_size` / `huge_size` / `size_mismatch`: a size no file has (0, above MAX_PLAUSIBLE_SIZE), or
  one that disagrees with the size the same urn had elsewhere (a SHA-1 names exactly one content).
- `urn_every_query`: the same urn (or, for hits without urn, the same size) comes back under
  different names for unrelated queries (no word in common) within SPAM_WINDOW: one payload
  renamed after each query.
- `servent_every_query`: one servent GUID answered SERVENT_BURST unrelated queries in the window.
- `servent_sent_spam`: any other result of a servent caught sending an executable named after
  the query, within the window.

Observations are kept per urn/size key and per servent GUID in bounded LRU maps, so memory stays
fixed however many hits arrive; a servent or key once convicted stays convicted for SPAM_WINDOW.
Time is passed in (`now`, seconds on any monotonic clock).
"""

from __future__ import annotations

import base64
import binascii
import collections
import re
from collections import OrderedDict
from dataclasses import dataclass, field

# How long an answer is remembered (and a conviction lasts): a burst of searches by one user.
SPAM_WINDOW = 300.0
# Unrelated queries one urn (or size) must answer under different names to be convicted.
URN_BURST = 3
# Unrelated queries one servent must answer in the window to be convicted: an honest library
# rarely matches this many queries that share no word; a synthesizing spammer matches them all.
SERVENT_BURST = 4
# A file larger than this (1 TiB) is a lie: no shared file on Gnutella comes near it.
MAX_PLAUSIBLE_SIZE = 1 << 40
# Urns/sizes and servents observed at once (LRU): the memory bound under a flood of unique keys.
MAX_TRACKED = 4096
# Queries remembered per urn/servent: a conviction needs only URN_BURST/SERVENT_BURST of them.
MAX_QUERIES_PER_KEY = 16
# Sizes remembered per urn for the size_mismatch check (LRU).
MAX_URN_SIZES = 8192
# Convicted servents/keys remembered: beyond it the oldest conviction is forgotten.
MAX_CONVICTED = 1024
# Entries read from a spam list, and the largest list file read: bounds a hostile or huge list.
MAX_LIST_ENTRIES = 200_000
MAX_LIST_BYTES = 16 * 1024 * 1024

# Extensions that run code when opened on the usual desktop systems.
EXECUTABLE_EXTS = frozenset({
    "exe", "scr", "vbs", "vbe", "com", "bat", "cmd", "pif", "js", "jse", "wsf", "wsh", "msi", "lnk", "hta",
})
# Media/document extensions spammers put before the executable one ("query.wmv.exe").
DISGUISE_EXTS = frozenset({
    "wmv", "wma", "asf", "avi", "mpg", "mpeg", "mp3", "mp4", "mkv", "mov", "jpg", "jpeg", "gif", "pdf",
    "zip", "rar", "doc", "txt",
})

# Format of `SpamFilter.export()`; another version is ignored on restore.
STATE_VERSION = 1

KNOWN = "known_spam"
EXE_NAME = "exe_named_query"
ZERO_SIZE = "zero_size"
HUGE_SIZE = "huge_size"
SIZE_MISMATCH = "size_mismatch"
URN_EVERY_QUERY = "urn_every_query"
SERVENT_EVERY_QUERY = "servent_every_query"
SPAM_SERVENT = "servent_sent_spam"
REASONS = (KNOWN, EXE_NAME, ZERO_SIZE, HUGE_SIZE, SIZE_MISMATCH, URN_EVERY_QUERY, SERVENT_EVERY_QUERY, SPAM_SERVENT)

_WORD = re.compile(r"[^\W_]+")
_BASE32 = re.compile(r"[A-Z2-7]{32}")
_HEX = re.compile(r"[0-9a-fA-F]{40}")


def words(text: str) -> frozenset[str]:
    """The lower-case words of a query or file name (letters and digits; punctuation separates)."""
    return frozenset(_WORD.findall(text.lower()))


def _normal(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def sha1_of(text: str) -> bytes | None:
    """The 20-byte SHA-1 of "urn:sha1:BASE32", a bare base32 string, "SHA1 BASE32" or 40 hex digits."""
    t = text.strip()
    if t[:5].upper() == "SHA1 ":
        t = t[5:].strip()
    if t[:9].lower() == "urn:sha1:":
        t = t[9:]
    t = t.upper()
    if _BASE32.fullmatch(t):
        return base64.b32decode(t)
    if _HEX.fullmatch(t):
        return binascii.unhexlify(t)
    return None


def parse_list(text: str) -> tuple[set[bytes], int]:
    """A spam list: one urn, base32 or hex SHA-1 a line (gtk-gnutella's "SHA1 ..." lines too).

    Blank lines, `#` comments and gtk-gnutella's other tags (ADDED, END, NAME, SIZE) are skipped.

    Returns:
        (the SHA-1s, the number of lines that were neither a SHA-1 nor skippable).
    """
    found: set[bytes] = set()
    bad = 0
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.split(" ", 1)[0].upper() in ("ADDED", "END", "NAME", "SIZE"):
            continue
        sha1 = sha1_of(line)
        if sha1 is None:
            bad += 1
        elif len(found) < MAX_LIST_ENTRIES:
            found.add(sha1)
    return found, bad


def exe_named_after(query: str, name: str) -> bool:
    """True when `name` is the query plus an executable extension (a disguise extension allowed before it)."""
    stem, dot, ext = name.rpartition(".")
    if not dot or ext.lower() not in EXECUTABLE_EXTS:
        return False
    inner, dot2, ext2 = stem.rpartition(".")
    q = _normal(query)
    if not q:
        return False
    return _normal(stem) == q or bool(dot2 and ext2.lower() in DISGUISE_EXTS and _normal(inner) == q)


def _disjoint_count(queries: list[frozenset[str]]) -> int:
    """How many of `queries` (most relevant first) are pairwise unrelated (no word in common), greedily."""
    kept: list[frozenset[str]] = []
    for q in queries:
        if q and all(q.isdisjoint(k) for k in kept):
            kept.append(q)
    return len(kept)


@dataclass(slots=True)
class _Seen:
    """What one urn/size key or one servent was seen answering: query words -> (time, name)."""

    queries: OrderedDict = field(default_factory=OrderedDict)

    def note(self, q: frozenset[str], name: str, now: float) -> None:
        self.queries[q] = (now, name)
        self.queries.move_to_end(q)
        while len(self.queries) > MAX_QUERIES_PER_KEY:
            self.queries.popitem(last=False)

    def recent(self, now: float, window: float) -> list[tuple[frozenset[str], str]]:
        """(query words, name) answered within the window, newest first."""
        return [(q, name) for q, (t, name) in reversed(self.queries.items()) if now - t <= window]


def _state_key(k) -> tuple:
    """A ("key", base32 or size) / ("servent", hex) pair back from its JSON list."""
    kind, ident = k
    if kind not in ("key", "servent") or not isinstance(ident, (str, int)) or isinstance(ident, bool):
        raise TypeError(f"bad key {k!r}")
    return (kind, ident)


def _touch(lru: OrderedDict, key, make, bound: int):
    item = lru.get(key)
    if item is None:
        item = lru[key] = make()
        while len(lru) > bound:
            lru.popitem(last=False)
    else:
        lru.move_to_end(key)
    return item


class SpamFilter:
    """Classifies search results as spam (a reason) or not (None), learning across searches."""

    def __init__(self, known: set[bytes] | frozenset[bytes] = frozenset(), window: float = SPAM_WINDOW,
                 urn_burst: int = URN_BURST, servent_burst: int = SERVENT_BURST) -> None:
        self.known: set[bytes] = set(known)
        self.window = window
        self.urn_burst = urn_burst
        self.servent_burst = servent_burst
        self.counts: collections.Counter[str] = collections.Counter()
        self.checked = 0
        self._keys: OrderedDict = OrderedDict()
        self._servents: OrderedDict = OrderedDict()
        self._sizes: OrderedDict = OrderedDict()
        self._convicted: OrderedDict = OrderedDict()  # ("key"|"servent", id) -> (time, reason)

    def add_known(self, sha1s) -> None:
        """More known-spam SHA-1s (20-byte digests), up to MAX_LIST_ENTRIES in all."""
        for s in sha1s:
            if len(self.known) >= MAX_LIST_ENTRIES:
                break
            self.known.add(bytes(s))

    def _convict(self, who: tuple, reason: str, now: float) -> None:
        _touch(self._convicted, who, lambda: (now, reason), MAX_CONVICTED)
        self._convicted[who] = (now, reason)

    def _convicted_for(self, who: tuple, now: float) -> str | None:
        c = self._convicted.get(who)
        if c is None:
            return None
        if now - c[0] > self.window:
            del self._convicted[who]
            return None
        return c[1]

    def classify(self, query: str, name: str, size: int, urn: str | None, servent_guid: str,
                 now: float, text_query: bool = True) -> str | None:
        """The spam reason for one result of `query`, or None; counts it by reason.

        Args:
            query: the search text the result answers.
            name, size, urn: the result (urn "urn:sha1:..." or None).
            servent_guid: the answering servent's GUID (any stable string: hex).
            now: the current time in seconds.
            text_query: False for urn-only source searches, which legitimately return one urn for
                every query and have no words: only the list and the size checks apply.
        """
        self.checked += 1
        reason = self._reason(query, name, size, urn, servent_guid, now, text_query)
        if reason is not None:
            self.counts[reason] += 1
        return reason

    def _reason(self, query, name, size, urn, servent, now, text_query) -> str | None:
        # The base32 text is the key (decoding every hit's urn costs more than the rest of the checks).
        sha1 = urn[9:].upper() if urn and urn[:9].lower() == "urn:sha1:" and len(urn) == 41 else None
        if sha1 is not None and self.known and sha1_of(sha1) in self.known:
            return KNOWN
        if size <= 0:
            return ZERO_SIZE
        if size > MAX_PLAUSIBLE_SIZE:
            return HUGE_SIZE
        if sha1 is not None:
            first = _touch(self._sizes, sha1, lambda: size, MAX_URN_SIZES)
            if first != size:
                return SIZE_MISMATCH
        if text_query and exe_named_after(query, name):
            self._convict(("servent", servent), SPAM_SERVENT, now)
            return EXE_NAME
        key = ("key", sha1) if sha1 is not None else ("key", size)
        reason = self._convicted_for(("servent", servent), now) or self._convicted_for(key, now)
        if reason is not None or not text_query:
            return reason
        q = words(query)
        seen = _touch(self._keys, key, _Seen, MAX_TRACKED)
        seen.note(q, _normal(name), now)
        recent = seen.recent(now, self.window)
        names = {n for _, n in recent}
        if len(names) >= self.urn_burst and _disjoint_count([w for w, _ in recent]) >= self.urn_burst:
            self._convict(key, URN_EVERY_QUERY, now)
            return URN_EVERY_QUERY
        by = _touch(self._servents, servent, _Seen, MAX_TRACKED)
        by.note(q, "", now)
        if _disjoint_count([w for w, _ in by.recent(now, self.window)]) >= self.servent_burst:
            self._convict(("servent", servent), SERVENT_EVERY_QUERY, now)
            return SERVENT_EVERY_QUERY
        return None

    def export(self, now: float) -> dict:
        """The observations still inside the window, as JSON-able data (for a restart or the next client).

        Times are whatever clock `classify` was given: use wall-clock time when the state is kept
        across processes.
        """
        w = self.window

        def seen(lru: OrderedDict) -> list:
            out = []
            for k, v in lru.items():
                qs = [[sorted(q), t, n] for q, (t, n) in v.queries.items() if now - t <= w]
                if qs:
                    out.append([list(k) if isinstance(k, tuple) else k, qs])
            return out

        return {"version": STATE_VERSION, "keys": seen(self._keys), "servents": seen(self._servents),
                "sizes": [[k, v] for k, v in self._sizes.items()],
                "convicted": [[list(k), t, r] for k, (t, r) in self._convicted.items() if now - t <= w]}

    def restore(self, doc: dict, now: float) -> int:
        """Take back what `export` gave (stale entries skipped, every bound applied); returns entries taken.

        Raises:
            ValueError: the data is not an export of this version (nothing half-restored counts as an error).
        """
        try:
            if doc.get("version") != STATE_VERSION:
                raise ValueError(f"spam state version {doc.get('version')!r}, expected {STATE_VERSION}")
            taken = 0
            for field_name, lru in (("keys", self._keys), ("servents", self._servents)):
                for k, qs in doc[field_name][:MAX_TRACKED]:
                    key = _state_key(k) if field_name == "keys" else str(k)
                    for q, t, name in qs[-MAX_QUERIES_PER_KEY:]:
                        if now - float(t) <= self.window:
                            _touch(lru, key, _Seen, MAX_TRACKED).note(frozenset(map(str, q)), str(name), float(t))
                            taken += 1
            for k, size in doc["sizes"][-MAX_URN_SIZES:]:
                _touch(self._sizes, str(k), lambda size=size: int(size), MAX_URN_SIZES)
                taken += 1
            for k, t, reason in doc["convicted"][-MAX_CONVICTED:]:
                if reason in REASONS and now - float(t) <= self.window:
                    self._convict(_state_key(k), reason, float(t))
                    taken += 1
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed spam state: {exc!r}") from None
        return taken

    def stats(self) -> dict:
        """Results checked, filtered by reason, known SHA-1s, what is tracked now (for node.stats())."""
        return {"checked": self.checked, "filtered": {r: self.counts[r] for r in REASONS if self.counts[r]},
                "known_sha1": len(self.known), "tracked_keys": len(self._keys),
                "tracked_servents": len(self._servents), "convicted": len(self._convicted)}
