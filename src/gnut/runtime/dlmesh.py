"""What a download learns and tells about its file: alt-locs (X-Alt both ways) and the Tiger tree (THEX).

One `DownloadMesh` per Download. It reads the answers' X-Alt (new sources, bounded) and
X-Thex-URI (where the tree is, and its root), holds the tree once fetched and checks each
finished chunk against it, and writes the requests' X-Alt (sources that served verified data)
and X-Nalt (sources caught serving bad data).

Trust: the root comes from the caller (a magnet's urn:tree:tiger) when it has one; otherwise
the first root a source names is adopted (trust on first use) and a source naming another root
for the same SHA-1 is refused. Whatever root is used, the final SHA-1 check still decides.
"""

from __future__ import annotations

from collections.abc import Callable

from gnut.errors import RemoteProtocolError
from gnut.protocol import altloc
from gnut.protocol.altloc import AltLoc
from gnut.protocol.thex import HashTree, decode_thex, parse_thex_uri

# Sources one download may learn from X-Alt (each costs at most a connection attempt or a few).
MAX_LEARNED_SOURCES = 32
# Alt-locs named in one request (X-Alt and X-Nalt each).
ALTS_PER_REQUEST = 10
# Chunks received before the tree arrived, kept to be checked when it does (beyond this, the
# final SHA-1 check alone covers them).
MAX_UNVERIFIED = 4096


class DownloadMesh:
    """Alt-locs and the Tiger tree of one download."""

    def __init__(
        self, size: int, trusted_root: bytes | None = None, max_learned: int = MAX_LEARNED_SOURCES
    ) -> None:
        self.size = size
        self.root = trusted_root
        self.trusted = trusted_root is not None
        self.tree: HashTree | None = None
        self.thex_source: str | None = None  # key of a source that offers the tree, not yet fetched
        self.thex_uri = ""
        self.thex_failed: set[str] = set()  # sources whose THEX answer was unusable
        self.max_learned = max_learned
        self.learned = 0
        self.good: dict[tuple[str, int], AltLoc] = {}
        self.bad: dict[tuple[str, int], AltLoc] = {}
        self.unverified: list[tuple[str, int, int]] = []  # (source key, start, end) awaiting the tree
        self.stats = {
            "alt_learned": 0,
            "alt_refused": 0,
            "thex_fetched": 0,
            "thex_failed": 0,
            "tiger_bad_chunks": 0,
        }

    # -- answers ----------------------------------------------------------------------------------

    def read_answer(self, source_key: str, headers: dict[str, str]) -> tuple[list[AltLoc], str | None]:
        """Learn from an answer's headers.

        Returns:
            (new sources to add, a reason to drop this source or None).
        """
        value = headers.get("x-thex-uri")
        if value:
            try:
                uri, root = parse_thex_uri(value)
            except RemoteProtocolError:
                uri, root = "", None
            if root is not None:
                if self.root is None:
                    self.root = root
                if root != self.root:
                    return [], "source names another Tiger-tree root for this file"
                if self.tree is None and self.thex_source is None and source_key not in self.thex_failed:
                    self.thex_source, self.thex_uri = source_key, uri
        new = []
        for loc in altloc.parse_x_alt(headers.get("x-alt", "")).direct:
            if loc.key in self.bad:
                continue
            if self.learned >= self.max_learned:
                self.stats["alt_refused"] += 1
                continue
            new.append(loc)
        return new, None

    def counted(self, added: int) -> None:
        """`added` of the offered sources were new to the download."""
        self.learned += added
        self.stats["alt_learned"] += added

    def thex_done(self, source_key: str, body: bytes | None) -> str | None:
        """The THEX answer of `source_key` (None: it failed); returns an error text or None."""
        self.thex_source = None
        if body is None:
            self.thex_failed.add(source_key)
            self.stats["thex_failed"] += 1
            return "THEX request failed"
        try:
            assert self.root is not None
            self.tree = decode_thex(body, self.size, self.root)
        except RemoteProtocolError as exc:
            self.thex_failed.add(source_key)
            self.stats["thex_failed"] += 1
            return f"bad THEX answer: {exc}"
        self.stats["thex_fetched"] += 1
        return None

    # -- chunks -----------------------------------------------------------------------------------

    def chunk_size(self, default: int) -> int:
        """With a tree, chunks are whole multiples of its node span, so every chunk can be checked."""
        if self.tree is None:
            return default
        span = self.tree.span
        return max(span, -(-default // span) * span)

    def check(self, read: Callable[[int, int], bytes], start: int, end: int) -> bool:
        """Check the tree nodes lying wholly in [start, end); False if one does not match."""
        if self.tree is None or end <= start:
            return True
        span = self.tree.span
        first = -(-start // span) * span
        last = min(end, self.size) if end >= self.size else end - end % span
        if last <= first:
            return True
        _, bad = self.tree.check(first, read(first, last - first))
        if bad:
            self.stats["tiger_bad_chunks"] += 1
            return False
        return True

    def check_chunk(self, source_key: str, read: Callable[[int, int], bytes], start: int, end: int) -> bool:
        """Check a finished chunk now, or keep it for when the tree arrives (True: not known bad)."""
        if self.tree is None:
            if len(self.unverified) < MAX_UNVERIFIED:
                self.unverified.append((source_key, start, end))
            return True
        return self.check(read, start, end)

    def take_unverified(self) -> list[tuple[str, int, int]]:
        chunks, self.unverified = self.unverified, []
        return chunks

    # -- requests ---------------------------------------------------------------------------------

    def mark(self, host: str, port: int, good: bool) -> None:
        loc = AltLoc(host, port)
        if good:
            if loc.key not in self.bad:
                self.good.setdefault(loc.key, loc)
        else:
            self.good.pop(loc.key, None)
            self.bad[loc.key] = loc

    def request_headers(self, host: str, port: int) -> list[tuple[str, str]]:
        """X-Alt (sources that served verified data) and X-Nalt (sources caught lying) for a request to host:port."""
        out = []
        alts = [loc for key, loc in self.good.items() if key != (host, port)][:ALTS_PER_REQUEST]
        if alts:
            out.append(("X-Alt", altloc.format_x_alt(alts)))
        nalts = list(self.bad.values())[:ALTS_PER_REQUEST]
        if nalts:
            out.append(("X-Nalt", altloc.format_x_alt(nalts)))
        return out
