"""`gnut search` results as a table: one numbered row per file (hits grouped by urn), live or plain.

Strategy: `Results` is the model (hits in, rows out: grouping, spam bookkeeping, the user's
filters and sort order). Three renderers read it: `LiveView` redraws a `rich` table in place on a
terminal, `plain_lines` prints aligned text for pipes and NO_COLOR, `Row.as_dict` is the JSON line
and the `gnut get N` record. Every peer-supplied string passes through `printable()` and reaches
rich only inside `Text` objects, never as markup.
"""

from __future__ import annotations

import argparse
import collections
import re
import time
from dataclasses import dataclass, field

from rich import box
from rich.cells import cell_len
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from gnut.protocol import spam
from gnut.protocol.printable import printable

SORTS = ("sources", "size", "name")
# A file name in a table cell is cut to this many characters (the JSON line keeps it whole).
MAX_NAME_CELL = 60
# The live table is redrawn at most this often (seconds): smooth without flooding a terminal.
REDRAW_EVERY = 0.1
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """"700k", "10M", "1.5G", "123" -> bytes (binary multiples); argparse's error for anything else."""
    m = _SIZE_RE.fullmatch(text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: expected a number with an optional k, M, G or T")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_exts(values: list[str] | None) -> frozenset[str]:
    """["mp3,ogg", ".FLAC"] -> {"mp3", "ogg", "flac"}."""
    out = set()
    for v in values or ():
        out.update(e.strip().lstrip(".").lower() for e in v.split(",") if e.strip().lstrip("."))
    return frozenset(out)


def human_size(n: int) -> str:
    """1536 -> "1.5 KiB"; bytes below 1 KiB are shown whole."""
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    return f"{n:.1f} TiB"  # pragma: no cover


@dataclass
class Filters:
    """What the user asked to see."""

    min_size: int | None = None
    max_size: int | None = None
    exts: frozenset[str] = frozenset()
    show_filtered: bool = False

    def keeps(self, name: str, size: int) -> bool:
        if self.min_size is not None and size < self.min_size:
            return False
        if self.max_size is not None and size > self.max_size:
            return False
        if self.exts:
            _, dot, ext = name.rpartition(".")
            if not dot or ext.lower() not in self.exts:
                return False
        return True


def _source(h: dict) -> dict:
    """What `gnut get N` needs to fetch from one source of a row (kept in last_search.json)."""
    return {"host": h["host"], "port": h["port"], "index": h["index"], "servent_guid": h["servent_guid"],
            "push": bool(h.get("firewalled")), "firewalled": bool(h.get("firewalled")),
            "busy": bool(h.get("busy")), "speed": int(h.get("speed") or 0), "vendor": h.get("vendor", ""),
            "local": bool(h.get("local"))}


@dataclass
class Row:
    """One file: every hit with the same urn (or, without urn, the same name and size)."""

    urn: str | None
    name: str
    size: int
    order: int
    sources: dict = field(default_factory=dict)  # (host, port, index) -> source dict
    spam_sources: dict = field(default_factory=dict)
    reasons: collections.Counter = field(default_factory=collections.Counter)

    def add(self, h: dict) -> None:
        key = (h["host"], h["port"], h["index"])
        if h.get("spam"):
            if key not in self.sources:
                self.spam_sources[key] = _source(h)
                self.reasons[h["spam"]] += 1
        else:
            self.spam_sources.pop(key, None)
            self.sources[key] = _source(h)

    @property
    def spam(self) -> str | None:
        """The spam reason when every source of this file was filtered, else None."""
        if self.sources or not self.reasons:
            return None
        return self.reasons.most_common(1)[0][0]

    def shown_sources(self) -> list[dict]:
        return list((self.sources or self.spam_sources).values())

    @property
    def local(self) -> bool:
        return any(s["local"] for s in self.shown_sources())

    @property
    def speed(self) -> int:
        return max((s["speed"] for s in self.shown_sources()), default=0)

    def flags(self) -> list[str]:
        src = self.shown_sources()
        out = []
        if self.local:
            out.append("local")
        if src and all(s["push"] for s in src):
            out.append("firewalled")
        if src and all(s["busy"] for s in src):
            out.append("busy")
        if self.spam:
            out.append(f"spam:{self.spam}")
        return out

    def as_dict(self, n: int) -> dict:
        """The JSON line and the `gnut get N` record: every field the table shows, and the sources."""
        src = self.shown_sources()
        return {"n": n, "urn": self.urn, "name": self.name, "size": self.size, "source_count": len(src),
                "speed": self.speed, "flags": self.flags(), "local": self.local,
                "firewalled": "firewalled" in self.flags(), "busy": "busy" in self.flags(),
                "spam": self.spam, "sources": src}


class Results:
    """The model of one search: hits in, numbered rows out."""

    def __init__(self, query: str, filters: Filters | None = None, sort: str = "sources",
                 known_spam: set[bytes] | frozenset[bytes] = frozenset()) -> None:
        if sort not in SORTS:
            raise ValueError(f"sort must be one of {', '.join(SORTS)}")
        self.query = query
        self.filters = filters or Filters()
        self.sort = sort
        self.known_spam = known_spam
        self.by_key: dict = {}
        self.hits = 0
        self.spam_hits: collections.Counter[str] = collections.Counter()
        self.hidden = 0  # hits left out by --min-size/--max-size/--ext

    def add(self, h: dict) -> None:
        """One hit (a runtime.search.Hit as a dict)."""
        self.hits += 1
        if not h.get("spam") and h.get("urn") and spam.sha1_of(h["urn"]) in self.known_spam:
            h = dict(h, spam=spam.KNOWN)
        if not self.filters.keeps(h["name"], h["size"]):
            self.hidden += 1
            return
        if h.get("spam"):
            self.spam_hits[h["spam"]] += 1
        key = ("urn", h["urn"].upper()) if h.get("urn") else ("name", h["name"].lower(), h["size"])
        row = self.by_key.get(key)
        if row is None:
            row = self.by_key[key] = Row(urn=h.get("urn"), name=h["name"], size=h["size"], order=len(self.by_key))
        row.add(h)

    def rows(self) -> list[Row]:
        """The rows to show, in the user's order (filtered spam rows only with --show-filtered)."""
        rows = [r for r in self.by_key.values() if r.sources or (self.filters.show_filtered and r.spam_sources)]
        if self.sort == "size":
            rows.sort(key=lambda r: (-r.size, -len(r.shown_sources()), r.order))
        elif self.sort == "name":
            rows.sort(key=lambda r: (r.name.casefold(), r.order))
        else:
            rows.sort(key=lambda r: (r.spam is not None, -len(r.shown_sources()), -r.size, r.order))
        return rows

    def clean_rows(self) -> int:
        return sum(1 for r in self.by_key.values() if r.sources)

    def records(self, limit: int | None = None) -> list[dict]:
        """Numbered rows as dicts (what --json prints and `gnut get N` loads)."""
        rows = self.rows()[:limit]
        return [r.as_dict(n) for n, r in enumerate(rows, 1)]

    def summary(self, seconds: float, done: bool = True) -> str:
        files = self.clean_rows()
        sources = sum(len(r.sources) for r in self.by_key.values())
        head = ("" if done else "searching… ") + (
            f"{files} file{'s' * (files != 1)} from {sources} source{'s' * (sources != 1)}"
            if files else f"no results for {printable(self.query)!r}")
        parts = [f"{head} in {seconds:.1f} s"]
        filtered = sum(self.spam_hits.values())
        if filtered:
            why = ", ".join(f"{k} {v}" for k, v in self.spam_hits.most_common())
            parts.append(f"{filtered} filtered ({why})" + ("" if self.filters.show_filtered else
                                                          ": --show-filtered shows them"))
        if self.hidden:
            parts.append(f"{self.hidden} hidden by --min-size/--max-size/--ext")
        return " · ".join(parts)


COLUMNS = ("#", "Name", "Size", "Src", "Speed", "Flags")
_RIGHT = {"#", "Size", "Src", "Speed"}


def cells(n: int, r: Row) -> tuple[str, ...]:
    """One row's cells as display text (peer strings escaped)."""
    speed = f"{r.speed} kb/s" if r.speed else "-"
    return (str(n), printable(r.name, MAX_NAME_CELL), human_size(r.size), str(len(r.shown_sources())), speed,
            " ".join(r.flags()) or "-")


def plain_lines(rows: list[Row]) -> list[str]:
    """The table as aligned plain text (a header, then one line per row), by display cells."""
    body = [COLUMNS] + [cells(n, r) for n, r in enumerate(rows, 1)]
    widths = [max(cell_len(line[i]) for line in body) for i in range(len(COLUMNS))]
    out = []
    for line in body:
        parts = []
        for i, (c, w) in enumerate(zip(line, widths, strict=True)):
            pad = " " * (w - cell_len(c))
            parts.append(pad + c if COLUMNS[i] in _RIGHT else (c + pad if i < len(COLUMNS) - 1 else c))
        out.append("  ".join(parts).rstrip())
    return out


def rich_table(rows: list[Row]) -> Table:
    """The table for a terminal: Text cells only, so a name can never be read as markup."""
    t = Table(header_style="bold", box=box.SIMPLE_HEAD, expand=False)
    for c in COLUMNS:
        t.add_column(c, justify="right" if c in _RIGHT else "left", no_wrap=True,
                     overflow="ellipsis", max_width=MAX_NAME_CELL if c == "Name" else None)
    for n, r in enumerate(rows, 1):
        style = "dim" if r.spam else ("green" if r.local else "")
        t.add_row(*(Text(c) for c in cells(n, r)), style=style)
    return t


class LiveView:
    """The live table on a terminal: rows update in place as sources arrive."""

    def __init__(self, results: Results, limit: int, console: Console | None = None) -> None:
        self.results = results
        self.limit = limit
        self.console = console or Console(highlight=False)
        self.started = time.monotonic()
        # Transient: the live region (cut to the terminal's height) is erased at the end and the
        # whole final table printed once, so every row lands in the scrollback.
        self.live = Live(self._render(False), console=self.console, auto_refresh=False, transient=True)
        self.last_draw = 0.0
        self.done = False

    def _render(self, done: bool):
        r = self.results
        foot = Text(r.summary(time.monotonic() - self.started, done), style="dim" if not done else "")
        parts = [rich_table(r.rows()[:self.limit]), foot]
        if done and r.clean_rows():
            parts.append(Text("gnut get N downloads row N", style="dim"))
        return Group(*parts)

    def __enter__(self) -> LiveView:
        self.live.start(refresh=True)
        return self

    def redraw(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_draw >= REDRAW_EVERY:
            self.last_draw = now
            self.live.update(self._render(False), refresh=True)

    def finish(self) -> None:
        """The search ended normally: the final table says so (not "searching…")."""
        self.done = True

    def __exit__(self, *exc) -> None:
        self.live.stop()
        # Also after Ctrl-C: what was found so far stays on screen.
        self.console.print(self._render(self.done))
