"""Shared-file catalog: folder scan, cached SHA-1/urn, keyword index, query matching and QUERYHIT building."""

from __future__ import annotations

import base64
import bisect
import dataclasses
import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gnut.constants import MAX_PAYLOAD, VENDOR_CODE
from gnut.errors import LocalProtocolError
from gnut.protocol.messages import GgepItem, HitResult, QueryHit
from gnut.protocol.printable import printable
from gnut.protocol.qrp import keywords, query_words
from gnut.runtime.fsutil import atomic_write_json, read_json

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
# Matching: names and queries are split into words by qrp.query_words (gtk-gnutella's
# canonic form: NFKD, lower-case, accents dropped, 3+ UTF-8 bytes), the words our QRP table
# is built from, so a query that passes our table is judged the same way here. A query word
# matches a file word it is a PREFIX of ("beat" finds "beatles"; the QRP table holds such
# cut prefixes too): gtk-gnutella matches query words as substrings of whole names, but a
# substring index costs far more memory and QRP would not let those queries reach a leaf
# anyway. Prefixes are found by bisecting the sorted vocabulary; the posting
# sets of all query words are intersected smallest first, so no query scans every file.

# Files beyond this count are not shared (gtk-gnutella's library sizes stay far below;
# the inverted index and QRP table stay bounded).
MAX_SHARED_FILES = 100_000
# A name whose UTF-8 form is longer than this is skipped: hits carry the name NUL-ended
# and 255 bytes is the common filesystem limit.
MAX_NAME_BYTES = 255
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
# Room kept in a QUERYHIT payload for its fixed part (11), QHD trailer with GGEP "BH" and
# the servent GUID (16): generous, so results are packed without re-encoding.
HIT_OVERHEAD_BYTES = 64
# GGEP "H" hash-type byte for a plain SHA-1 (0x02 would be a bitprint).
GGEP_H_SHA1 = 0x01


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
    # Device and inode at the scan: uploads open only this very file (0: unknown, not checked).
    dev: int = 0
    ino: int = 0


@dataclass(slots=True, frozen=True)
class ScanReport:
    """What one scan() did: file counts by outcome."""

    added: int
    removed: int
    changed: int
    rehashed: int
    cached: int
    skipped: int = 0
    # Paths that could not be shared, each with the reason in words (for the log and `gnut rescan`).
    problems: tuple[str, ...] = ()
    shared: int = 0

    def describe(self) -> str:
        """One line in words: how many files are shared and what this scan changed."""
        parts = [f"{n} {what}" for n, what in ((self.added, "added"), (self.removed, "removed"),
                                               (self.changed, "changed"), (self.skipped, "skipped")) if n]
        return f"{self.shared} file(s) shared" + (f" ({', '.join(parts)})" if parts else "")


def _why(exc: BaseException) -> str:
    """An OS error in words ("permission denied"), without Python's repr."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


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

    __slots__ = ("by_index", "by_sha1", "postings", "vocab", "total_bytes", "qrp_words")

    def __init__(self, files: Iterable[SharedFile]) -> None:
        self.by_index: dict[int, SharedFile] = {}
        self.by_sha1: dict[bytes, SharedFile] = {}
        self.postings: dict[str, set[int]] = {}
        self.total_bytes = 0
        self.qrp_words: frozenset[str] | None = None  # computed on first all_words()
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
        # Resolved share roots of the last scan (uploads re-check that a file is still inside one).
        self._roots: tuple[str, ...] = ()
        # Bumped whenever a scan changes the catalog (browse host caches its encoding per value).
        self.generation = 0

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
        """Regular, non-hidden files under the share dirs, resolved and inside them; and a skip count.

        Each share folder that is missing or unreadable, and each entry that cannot be read, is
        recorded in self.problems (path and reason in words).
        """
        roots = []
        self.problems: list[str] = []
        for d in self.dirs:
            try:
                root = d.resolve(strict=True)
            except FileNotFoundError:
                self.problems.append(f"{d}: share folder does not exist")
                continue
            except (OSError, RuntimeError) as exc:
                self.problems.append(f"{d}: cannot open the share folder ({_why(exc)})")
                continue
            if not root.is_dir():
                self.problems.append(f"{d}: not a folder")
                continue
            roots.append(root)
        self._roots = tuple(str(r) for r in roots)
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
            except OSError as exc:
                self.problems.append(f"{folder}: cannot list the folder ({_why(exc)})")
                skipped += 1
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    real = Path(entry.path).resolve(strict=True)
                    st = real.stat()
                except (OSError, RuntimeError) as exc:
                    self.problems.append(f"{entry.path}: cannot read ({_why(exc)})")
                    skipped += 1
                    continue
                # A symlink (or a path through one) that leaves every share root is not shared,
                # nor one that leads into a hidden file or folder inside a root.
                root = next((r for r in roots if real == r or real.is_relative_to(r)), None)
                if root is None or any(part.startswith(".") for part in real.relative_to(root).parts):
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
                why = f"name longer than {self.max_name_bytes} bytes" if too_long else \
                    f"more than {self.max_files} files shared"
                self.problems.append(f"{printable(str(real))}: not shared ({why})")
                skipped += 1
                continue
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:  # undecodable bytes in the name: not representable in a hit
                self.problems.append(f"{printable(str(real), 0)}: not shared (the name is not valid UTF-8)")
                skipped += 1
                continue
            key = str(real)
            old = self._by_path.get(key)
            entry = cache.get(key)
            index = 0
            sha1 = None
            if old is not None:
                if (old.size, old.mtime_ns) == (st.st_size, st.st_mtime_ns):
                    if (old.dev, old.ino) != (st.st_dev, st.st_ino):  # same content, new inode
                        old = dataclasses.replace(old, dev=st.st_dev, ino=st.st_ino)
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
                except OSError as exc:
                    self.problems.append(f"{real}: cannot read ({_why(exc)})")
                    skipped += 1
                    if entry is not None or old is not None:
                        changed -= 1
                    else:
                        added -= 1  # counted once, as skipped: the counts add up to what is shared
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
                words=frozenset(query_words(name)),
                mtime_ns=st.st_mtime_ns,
                dev=st.st_dev,
                ino=st.st_ino,
            )
        removed = sum(1 for key in self._by_path if key not in new_by_path)
        dirty = added or removed or changed or rehashed or set(cache) != set(new_by_path)
        if dirty or set(self._by_path) != set(new_by_path):
            self.generation += 1
        self._by_path = new_by_path
        self._catalog = _Catalog(new_by_path.values())
        if dirty:
            self._save_cache()
        return ScanReport(added, removed, changed, rehashed, cached, skipped, tuple(self.problems),
                          len(new_by_path))

    # --- lookups ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._catalog.by_index)

    def __iter__(self) -> Iterator[SharedFile]:
        return iter(self.files)

    @property
    def total_kbytes(self) -> int:
        """Total shared size in KiB (the PONG's "kilobytes shared" field)."""
        return self._catalog.total_bytes // 1024

    def inside_roots(self, real_path: str) -> bool:
        """True when the resolved `real_path` is inside one of the share roots of the last scan."""
        return any(real_path == r or real_path.startswith(r.rstrip(os.sep) + os.sep) for r in self._roots)

    def by_index(self, index: int) -> SharedFile | None:
        """The file with this index, or None."""
        return self._catalog.by_index.get(index)

    def by_urn(self, urn: str) -> SharedFile | None:
        """The file whose content has this "urn:sha1:<base32>" (case-insensitive prefix), or None."""
        sha1 = urn_to_sha1(urn.strip())
        return None if sha1 is None else self._catalog.by_sha1.get(sha1)

    @property
    def files(self) -> list[SharedFile]:
        """Every shared file, by index (what browse host lists)."""
        return sorted(self._catalog.by_index.values(), key=lambda sf: sf.index)

    def all_words(self) -> frozenset[str]:
        """What our QRP table is built from: qrp.keywords() of every name (words and their cut prefixes).

        Returns:
            The union over all shared names; hash each string as is (no further expansion).
        """
        catalog = self._catalog
        if catalog.qrp_words is None:
            catalog.qrp_words = frozenset().union(*(keywords(sf.name) for sf in catalog.by_index.values()))
        return catalog.qrp_words

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
        words = set(query_words(text))
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


def build_hits(
    files: Iterable[SharedFile],
    *,
    servent_guid: bytes,
    ip: str,
    port: int,
    push: bool,
    busy: bool,
    ggep_h: bool,
    browse: bool = True,
    per_message: int = HITS_PER_MESSAGE,
    speed: int = HIT_SPEED_KBPS,
    push_proxies: bytes = b"",
    tls: bool = False,
) -> list[bytes]:
    """Encode QUERYHIT payloads (no header) answering with `files`, per_message results at most each.

    Each result carries its "urn:sha1:" text extension and, with ggep_h, a GGEP "H" binary
    hash; each trailer carries our vendor code, the push/busy flags and, with browse,
    GGEP "BH" (browse host supported). A batch that would pass MAX_PAYLOAD is cut short.

    Args:
        files: the files to announce (e.g. ShareIndex.match() results).
        servent_guid: our 16-byte servent GUID (last in every payload, routes PUSH to us).
        ip: our IPv4 address as text; port: our listening port.
        push: we are firewalled (downloaders must send a PUSH).
        busy: every upload slot is taken.
        ggep_h: the query's flags accept GGEP "H" hashes (QF_GGEP_H).
        browse: announce browse host.
        per_message: results per payload (1..255).
        speed: advertised speed in kbit/s.
        push_proxies: GGEP "PUSH" data (our push proxies, vmsg_reach.encode_push_proxies).
        tls: we accept TLS connections (GGEP "TLS" in the trailer, as gtk-gnutella sends).

    Returns:
        The payloads, in file order; [] when there are no files.

    Raises:
        LocalProtocolError: bad ip/port/GUID/per_message (from the QUERYHIT encoder or here).
    """
    if not 1 <= per_message <= 255:
        raise LocalProtocolError(f"per_message must be 1..255, not {per_message}")
    results = []
    for sf in files:
        ggep = (GgepItem("H", bytes((GGEP_H_SHA1,)) + sf.sha1),) if ggep_h else ()
        results.append(HitResult(sf.index, sf.size, sf.name, urns=(sf.urn,), ggep=ggep))
    trailer_ggep = (GgepItem("BH", b""),) if browse else ()
    if push_proxies:
        trailer_ggep += (GgepItem("PUSH", push_proxies),)
    if tls:
        trailer_ggep += (GgepItem("TLS", b""),)
    out: list[bytes] = []
    batch: list[HitResult] = []
    used = HIT_OVERHEAD_BYTES

    def flush() -> None:
        hit = QueryHit(
            port,
            ip,
            speed,
            tuple(batch),
            servent_guid,
            vendor=VENDOR_CODE,
            push=push,
            busy=busy,
            ggep=trailer_ggep,
        )
        out.append(hit.encode())
        batch.clear()

    for result in results:
        size = len(result.encode())
        if batch and (len(batch) >= per_message or used + size > MAX_PAYLOAD):
            flush()
            used = HIT_OVERHEAD_BYTES
        batch.append(result)
        used += size
    if batch:
        flush()
    return out
