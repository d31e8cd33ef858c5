"""Shared-file catalog: folder scan, cached SHA-1/urn, keyword index, query matching and QUERYHIT building."""

from __future__ import annotations

import base64
import bisect
import hashlib
import os
import stat
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gnut.fsutil import atomic_write_json, read_json

# Strategy
# --------
# scan() walks the share folders, reuses a SHA-1 whenever (resolved path, size, mtime_ns)
# is unchanged (in memory, or in the JSON cache from an earlier run) and hashes the rest.
# It builds a complete new catalog and swaps it in with one attribute assignment, so a
# scan may run in a worker thread while the event loop keeps answering queries from the
# previous catalog.
#
# Identity: a file keeps its index while its path and content stay; a file whose content
# changed gets a NEW index (an old hit's /get/<index>/ must not serve different bytes),
# and indices are never reused while the process runs (they persist through the cache).
#
# Matching: names and queries are split into words the same way (_words). A query word
# matches a file word it is a PREFIX of ("beat" finds "beatles"): gtk-gnutella matches
# query words as substrings of whole names, but a substring index costs far more memory
# and QRP tables (hashed whole words and their prefixes) would not let those queries
# reach a leaf anyway. Prefixes are found by bisecting the sorted vocabulary; the posting
# sets of all query words are intersected smallest first, so no query scans every file.

# Files beyond this count are not shared (gtk-gnutella's library sizes stay far below;
# the inverted index and QRP table stay bounded).
MAX_SHARED_FILES = 100_000
# A name whose UTF-8 form is longer than this is skipped: hits carry the name NUL-ended
# and 255 bytes is the common filesystem limit.
MAX_NAME_BYTES = 255
# Query words shorter than this are ignored (as QRP ignores them): "a" would match everything.
MIN_WORD_CHARS = 2
# Results returned for one query (gtk-gnutella answers with at most ~64 per query).
MAX_RESULTS = 64
# Results per QUERYHIT payload: LimeWire and gtk-gnutella batch about 10 per message.
HITS_PER_MESSAGE = 10
# Hashing reads this much at a time (bounded memory for huge files).
HASH_CHUNK = 1 << 20
# Version of the JSON SHA-1 cache layout; a different version is ignored, not trusted.
CACHE_VERSION = 1
# Speed (kbit/s) advertised in our QUERYHITs: the field is informational today.
HIT_SPEED_KBPS = 1000
SHA1_LEN = 20
URN_PREFIX = "urn:sha1:"
# urn:sha1 base32 form: 160 bits / 5 bits per character.
SHA1_BASE32_LEN = 32
_BASE32_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")


@dataclass(slots=True, frozen=True)
class SharedFile:
    """One file we share, as the catalog knows it at the last scan."""

    index: int
    path: Path
    name: str
    size: int
    sha1: bytes
    urn: str
    words: frozenset[str]
    mtime_ns: int


@dataclass(slots=True, frozen=True)
class ScanReport:
    """What one scan() did: file counts by outcome."""

    added: int
    removed: int
    changed: int
    rehashed: int
    cached: int
    skipped: int = 0


def _canon(text: str) -> str:
    """Fold `text` for matching: NFKC, case-folded, accents removed ("Café" -> "cafe")."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return unicodedata.normalize("NFKC", stripped)


def _words(text: str) -> list[str]:
    """Split `text` into matching words: canonical form, runs of alphanumerics, 2+ characters."""
    out: list[str] = []
    word: list[str] = []
    for ch in _canon(text) + " ":
        if ch.isalnum():
            word.append(ch)
        elif word:
            if len(word) >= MIN_WORD_CHARS:
                out.append("".join(word))
            word = []
    return out


def sha1_to_urn(sha1: bytes) -> str:
    """Return "urn:sha1:<base32>" for a 20-byte digest."""
    return URN_PREFIX + base64.b32encode(sha1).decode("ascii")


def urn_to_sha1(urn: str) -> bytes | None:
    """Parse "urn:sha1:<base32>" (prefix case-insensitive); None when it is not one."""
    if len(urn) != len(URN_PREFIX) + SHA1_BASE32_LEN or urn[: len(URN_PREFIX)].lower() != URN_PREFIX:
        return None
    b32 = urn[len(URN_PREFIX) :].upper()
    if not set(b32) <= _BASE32_ALPHABET:
        return None
    return base64.b32decode(b32)


def _hash_file(path: Path) -> bytes:
    """SHA-1 of a file, read in bounded chunks."""
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.digest()


class _Catalog:
    """An immutable snapshot of the share: lookups by index, urn and word."""

    __slots__ = ("by_index", "by_sha1", "postings", "vocab", "total_bytes")

    def __init__(self, files: Iterable[SharedFile]) -> None:
        self.by_index: dict[int, SharedFile] = {}
        self.by_sha1: dict[bytes, SharedFile] = {}
        self.postings: dict[str, set[int]] = {}
        self.total_bytes = 0
        for sf in files:
            self.by_index[sf.index] = sf
            self.by_sha1.setdefault(sf.sha1, sf)
            self.total_bytes += sf.size
            for word in sf.words:
                self.postings.setdefault(word, set()).add(sf.index)
        self.vocab: list[str] = sorted(self.postings)

    def prefix_postings(self, prefix: str) -> set[int]:
        """Indices of files having a word that starts with `prefix`."""
        lo = bisect.bisect_left(self.vocab, prefix)
        hi = bisect.bisect_left(self.vocab, prefix + "\U0010ffff", lo)
        if hi - lo == 1:
            return self.postings[self.vocab[lo]]
        out: set[int] = set()
        for word in self.vocab[lo:hi]:
            out |= self.postings[word]
        return out


class ShareIndex:
    """The catalog of shared files, rebuilt by scan() and queried by match()."""

    def __init__(
        self,
        dirs: list[Path],
        cache_path: Path | None = None,
        *,
        max_files: int = MAX_SHARED_FILES,
        max_name_bytes: int = MAX_NAME_BYTES,
    ) -> None:
        """Create an empty index; call scan() to fill it (scan is not re-entrant: one at a time).

        Args:
            dirs: folders whose regular, non-hidden files are shared (recursively).
            cache_path: JSON file keeping SHA-1s across runs; None keeps them in memory only.
            max_files: files beyond this count are skipped.
            max_name_bytes: files whose UTF-8 name is longer are skipped.
        """
        self.max_files = max_files
        self.max_name_bytes = max_name_bytes
        self.dirs = [Path(d) for d in dirs]
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self._catalog = _Catalog(())
        # resolved path -> SharedFile of the last scan (also what the cache holds).
        self._by_path: dict[str, SharedFile] = {}
        self._next_index = 1
        self._cache_loaded = False

    # --- scanning -------------------------------------------------------------------
    def _load_cache(self) -> dict[str, tuple[int, int, bytes, int]]:
        """Entries of the cache file: path -> (size, mtime_ns, sha1, index); {} when unusable."""
        if self.cache_path is None:
            return {}
        data = read_json(self.cache_path, {})
        out: dict[str, tuple[int, int, bytes, int]] = {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return out
        entries = data.get("files")
        if isinstance(entries, dict):
            for path, entry in entries.items():
                try:
                    size, mtime_ns, sha1_hex, index = entry
                    sha1 = bytes.fromhex(sha1_hex)
                except (TypeError, ValueError):
                    continue
                if (
                    isinstance(size, int)
                    and isinstance(mtime_ns, int)
                    and isinstance(index, int)
                    and index > 0
                    and len(sha1) == SHA1_LEN
                ):
                    out[path] = (size, mtime_ns, sha1, index)
        next_index = data.get("next_index")
        if isinstance(next_index, int) and next_index > self._next_index:
            self._next_index = next_index
        return out

    def _save_cache(self) -> None:
        if self.cache_path is None:
            return
        files = {p: [sf.size, sf.mtime_ns, sf.sha1.hex(), sf.index] for p, sf in self._by_path.items()}
        atomic_write_json(
            self.cache_path, {"version": CACHE_VERSION, "next_index": self._next_index, "files": files}
        )

    def _walk(self) -> tuple[list[tuple[Path, os.stat_result]], int]:
        """Regular, non-hidden files under the share dirs, resolved and inside them; and a skip count."""
        roots = []
        for d in self.dirs:
            try:
                roots.append(d.resolve(strict=True))
            except (OSError, RuntimeError):
                continue
        found: list[tuple[Path, os.stat_result]] = []
        seen_files: set[Path] = set()
        seen_dirs: set[Path] = set()
        skipped = 0
        stack = list(roots)
        while stack:
            folder = stack.pop()
            if folder in seen_dirs:
                continue
            seen_dirs.add(folder)
            try:
                entries = list(os.scandir(folder))
            except OSError:
                skipped += 1
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    real = Path(entry.path).resolve(strict=True)
                    st = real.stat()
                except (OSError, RuntimeError):
                    skipped += 1
                    continue
                # A symlink (or a path through one) that leaves every share root is not shared.
                if not any(real == r or real.is_relative_to(r) for r in roots):
                    skipped += 1
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append(real)
                elif stat.S_ISREG(st.st_mode) and real not in seen_files:
                    seen_files.add(real)
                    found.append((real, st))
        found.sort(key=lambda item: str(item[0]))
        return found, skipped

    def scan(self) -> ScanReport:
        """Walk the share dirs, hash new or changed files, and swap in the new catalog.

        Returns:
            A ScanReport counting added, removed, changed, rehashed, cached and skipped files.
        """
        cache: dict[str, tuple[int, int, bytes, int]] = {}
        if not self._cache_loaded:
            cache = self._load_cache()
            self._cache_loaded = True
        found, skipped = self._walk()
        new_by_path: dict[str, SharedFile] = {}
        added = changed = rehashed = cached = 0
        used_indices: set[int] = {sf.index for sf in self._by_path.values()}
        used_indices.update(entry[3] for entry in cache.values())
        assigned: set[int] = set()
        for real, st in found:
            name = real.name
            too_long = len(name.encode("utf-8", "surrogateescape")) > self.max_name_bytes
            if too_long or len(new_by_path) >= self.max_files:
                skipped += 1
                continue
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:  # undecodable bytes in the name: not representable in a hit
                skipped += 1
                continue
            key = str(real)
            old = self._by_path.get(key)
            entry = cache.get(key)
            index = 0
            sha1 = None
            if old is not None:
                if (old.size, old.mtime_ns) == (st.st_size, st.st_mtime_ns):
                    new_by_path[key] = old
                    assigned.add(old.index)
                    cached += 1
                    continue
                changed += 1
            elif entry is not None and entry[:2] == (st.st_size, st.st_mtime_ns):
                sha1, index = entry[2], entry[3]
                cached += 1
            elif entry is not None:
                changed += 1
            else:
                added += 1
            if sha1 is None:
                try:
                    sha1 = _hash_file(real)
                except OSError:
                    skipped += 1
                    continue
                rehashed += 1
            if index == 0 or index in assigned:
                while self._next_index in used_indices:
                    self._next_index += 1
                index = self._next_index
                self._next_index += 1
            used_indices.add(index)
            assigned.add(index)
            new_by_path[key] = SharedFile(
                index=index,
                path=real,
                name=name,
                size=st.st_size,
                sha1=sha1,
                urn=sha1_to_urn(sha1),
                words=frozenset(_words(name)),
                mtime_ns=st.st_mtime_ns,
            )
        removed = sum(1 for key in self._by_path if key not in new_by_path)
        dirty = added or removed or changed or rehashed or set(cache) != set(new_by_path)
        self._by_path = new_by_path
        self._catalog = _Catalog(new_by_path.values())
        if dirty:
            self._save_cache()
        return ScanReport(added, removed, changed, rehashed, cached, skipped)

    # --- lookups ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._catalog.by_index)

    def __iter__(self):
        return iter(sorted(self._catalog.by_index.values(), key=lambda sf: sf.index))

    @property
    def total_kbytes(self) -> int:
        """Total shared size in KiB (the PONG's "kilobytes shared" field)."""
        return self._catalog.total_bytes // 1024

    def by_index(self, index: int) -> SharedFile | None:
        """The file with this index, or None."""
        return self._catalog.by_index.get(index)

    def by_urn(self, urn: str) -> SharedFile | None:
        """The file whose content has this "urn:sha1:<base32>" (case-insensitive prefix), or None."""
        sha1 = urn_to_sha1(urn.strip())
        return None if sha1 is None else self._catalog.by_sha1.get(sha1)

    def all_words(self) -> frozenset[str]:
        """Every keyword of every shared name (what the QRP table is built from)."""
        return frozenset(self._catalog.postings)

    def match(self, text: str, urns: Iterable[str] = (), limit: int = MAX_RESULTS) -> list[SharedFile]:
        """Files answering a query: by urn:sha1, then by keywords (every word must prefix a name word).

        Args:
            text: the query's search text (may be empty for urn-only queries).
            urns: "urn:sha1:..." strings from the query's extensions; other urns are ignored.
            limit: the maximum number of files returned.

        Returns:
            Matching files, urn matches first, then keyword matches by index; no duplicates.
        """
        catalog = self._catalog
        out: list[SharedFile] = []
        taken: set[int] = set()
        for urn in urns:
            sha1 = urn_to_sha1(urn.strip())
            sf = catalog.by_sha1.get(sha1) if sha1 is not None else None
            if sf is not None and sf.index not in taken and len(out) < limit:
                out.append(sf)
                taken.add(sf.index)
        words = set(_words(text))
        if not words or len(out) >= limit:
            return out
        sets = sorted((catalog.prefix_postings(w) for w in words), key=len)
        hits = set(sets[0])
        for postings in sets[1:]:
            if not hits:
                break
            hits &= postings
        for index in sorted(hits - taken):
            if len(out) >= limit:
                break
            out.append(catalog.by_index[index])
        return out
