"""The numbered rows of the last `gnut search`, so `gnut get 3` (or `gnut get #3`) can fetch row 3.

Kept as `$GNUT_HOME/last_search.json`, written atomically after each search:
    {"query": "jazz live", "time": 1765141200.0,
     "rows": [{"n": 1, "urn": "urn:sha1:...", "name": "...", "size": 123,
               "sources": [{"host": "127.0.0.1", "port": 6346, ...}, ...]}, ...]}
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from gnut.runtime.fsutil import atomic_write_bytes

FILE_NAME = "last_search.json"
# A row list longer than this is cut: `gnut get N` never needs more, and the file stays small.
MAX_ROWS = 1000


class NoSuchRow(LookupError):
    """`gnut get N` named a row the last search does not have (or there was no search)."""


def path(home: Path) -> Path:
    return Path(home) / FILE_NAME


def save(home: Path, query: str, rows: list[dict]) -> None:
    """Record the rows of a search (each a dict with at least n, urn, name, size)."""
    Path(home).mkdir(parents=True, exist_ok=True)
    doc = {"query": query, "time": time.time(), "rows": rows[:MAX_ROWS]}
    atomic_write_bytes(path(home), json.dumps(doc).encode())


def parse_row_ref(text: str) -> int | None:
    """`3` or `#3` -> 3; anything else (a urn, a magnet link) -> None."""
    t = text[1:] if text.startswith("#") else text
    return int(t) if t.isdigit() and 0 < int(t) <= MAX_ROWS else None


def load_row(home: Path, n: int) -> dict:
    """Row n of the last search.

    Raises:
        NoSuchRow: no search was recorded, the file is unreadable, or it has no row n.
    """
    try:
        doc = json.loads(path(home).read_text())
        rows = doc["rows"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NoSuchRow("no earlier search to take row numbers from: run `gnut search WORDS` first") from exc
    for row in rows:
        if isinstance(row, dict) and row.get("n") == n:
            return row
    raise NoSuchRow(f"the last search ({doc.get('query', '?')!r}) has no row {n}: it had {len(rows)} rows")
