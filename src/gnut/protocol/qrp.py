"""Query Routing Protocol: keyword hashing, routing tables, RESET/PATCH building and applying, matching."""

# Strategy
# --------
# A QRP table is a Bloom filter of 2**bits slots: a shared file's keywords are hashed
# (qrp_hash) and their slots marked present; an ultrapeer forwards a query to a leaf only if
# every query word's slot is present in the leaf's table (last-hop filtering).
#
# * Representation: one byte per slot, 1 = present, 0 = absent (a bytearray). Matching is a
#   plain index per query word, the fastest lookup Python has; a table costs `size` bytes,
#   at most 2**QRP_MAX_TABLE_BITS = 2 MiB. Hop distances are not kept: between a leaf and
#   its ultrapeer only presence matters (gtk-gnutella compacts received tables the same way).
# * Bulk work (patch encode/decode, merge) avoids per-slot Python loops: slots are bytes of
#   0/1, so `bytes.translate` maps codes, strided slices interleave entries, and whole
#   tables are combined with big-int AND/OR/XOR (per-byte values never carry across bytes).
# * Wire semantics (doc/gnutella/QRP, gtk-gnutella qrp.c): RESET gives the table length and
#   "infinity"; PATCH messages 1..seq_size carry one (optionally zlib) stream of signed
#   entries, a delta against the previous table. Like gtk-gnutella and GnutellaBun, a
#   receiver reads only the sign: negative = now present, positive = now absent, zero =
#   unchanged; 1-bit entries are XOR flips. The sender emits the exact spec delta
#   (1 - infinity to appear, infinity - 1 to vanish) so arithmetic receivers (LimeWire) agree.
# * Canonical keywords follow gtk-gnutella's utf8_canonize(): NFKD, lower-case, drop
#   combining marks, anything that is not a letter or digit separates words, NFC. Words
#   shorter than 3 UTF-8 bytes are not routed on; each word is also indexed by its prefixes
#   (up to 5 characters cut, never down to 3 bytes) so that partial words still route.
# * Query URNs ("urn:sha1:<base32>") are OR-ed (gtk-gnutella qrp_can_route): a query that
#   carries URNs is routed when any URN is present, whatever its words.

from __future__ import annotations

import unicodedata
import zlib
from collections.abc import Iterable

from gnut.constants import MAX_PAYLOAD
from gnut.errors import LocalProtocolError, RemoteProtocolError
from gnut.protocol.messages import (
    QRP_COMPRESSOR_NONE,
    QRP_COMPRESSOR_ZLIB,
    QRP_ENTRY_BITS,
    QRP_PATCH_HEADER_LEN,
    QrpPatch,
    QrpReset,
)

# The multiplier of the QRP hash (LimeWire's spec, gtk-gnutella A_INT / GOLDEN_RATIO_31).
QRP_HASH_MULTIPLIER = 0x4F1BBCDC
# Words shorter than this many UTF-8 bytes are neither indexed nor routed on (qrp.h).
QRP_MIN_WORD_LENGTH = 3
# A word is also indexed with up to this many trailing characters cut (qrp.h QRP_MAX_CUT_CHARS).
QRP_MAX_CUT_CHARS = 5
# Received table sizes: gtk-gnutella's empty table has 8 slots, its maximum is 2**21 (2 MiB).
QRP_MIN_TABLE_BITS = 3
QRP_MAX_TABLE_BITS = 21
# Default size of our own table: GnutellaBun uses 2**16, gtk-gnutella 2**14 and up.
QRP_DEFAULT_TABLE_BITS = 16
# Our default infinity: the spec's typical TTL horizon (GnutellaBun sends 7, gtk-gnutella 2).
QRP_DEFAULT_INFINITY = 7
# The sequence number is one byte, numbered from 1 (gtk-gnutella QRT_MAX_SEQSIZE).
QRP_MAX_SEQ_SIZE = 255
# A PATCH message must fit in one Gnutella message.
QRP_MAX_PATCH_CHUNK = MAX_PAYLOAD - QRP_PATCH_HEADER_LEN
# Default patch data per PATCH message (GnutellaBun sends ~4 KiB chunks, gtk-gnutella 512 B).
QRP_DEFAULT_PATCH_CHUNK = 4096
# Query hash vectors are capped like gtk-gnutella's (QRP_HVEC_MAX): 128 words and URNs.
QRP_MAX_QUERY_HASHES = 128

_MASK32 = 0xFFFFFFFF
# Unicode categories canonicalisation deletes (diacritics) or keeps as word characters.
_DROP_CATEGORIES = frozenset(("Mn", "Me"))
_WORD_CATEGORIES = frozenset(("Ll", "Lm", "Lo", "Nd"))
_ASCII_UPPER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")


# --- Hash -------------------------------------------------------------------------------------


def _hash_units(word: str) -> bytes:
    """The bytes the hash XORs: low byte of each UTF-16 code unit, ASCII A-Z lowered."""
    if word.isascii():
        return word.encode("ascii").translate(_ASCII_UPPER)
    out = bytearray()
    for ch in word:
        cp = ord(ch)
        if 0x41 <= cp <= 0x5A:
            cp += 0x20
        if cp > 0xFFFF:  # a surrogate pair: high then low unit (gtk-gnutella test_hash)
            v = cp - 0x10000
            out.append((0xD800 + (v >> 10)) & 0xFF)
            cp = 0xDC00 + (v & 0x3FF)
        out.append(cp & 0xFF)
    return bytes(out)


def qrp_hashcode(word: bytes | str) -> int:
    """Return the full 32-bit QRP hash code of `word` (restrict it with `>> (32 - bits)`).

    Args:
        word: a keyword; bytes are read as UTF-8 up to the first invalid sequence (as
            gtk-gnutella does).

    Returns:
        The 32-bit product of the XOR-folded word and QRP_HASH_MULTIPLIER.
    """
    if isinstance(word, (bytes, bytearray, memoryview)):
        raw = bytes(word)
        try:
            word = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            word = raw[: exc.start].decode("utf-8")
    units = _hash_units(word)
    x = 0
    for i in range(0, len(units), 4):
        x ^= int.from_bytes(units[i : i + 4], "little")
    return (x * QRP_HASH_MULTIPLIER) & _MASK32


def qrp_hash(word: bytes | str, bits: int) -> int:
    """Return the slot of `word` in a table of 2**bits slots (the standard QRP hash).

    XOR of the word's bytes (lowercased ASCII; the low byte of each UTF-16 unit for other
    characters) in 4-byte little-endian groups, times 0x4F1BBCDC, top `bits` bits.

    Args:
        word: the keyword, str or UTF-8 bytes.
        bits: log2 of the table size, 1..32.

    Returns:
        The slot index, 0 <= index < 2**bits.

    Raises:
        LocalProtocolError: bits outside 1..32.
    """
    if not 1 <= bits <= 32:
        raise LocalProtocolError(f"QRP hash bits must be 1..32, not {bits}")
    return qrp_hashcode(word) >> (32 - bits)


# --- Keywords ---------------------------------------------------------------------------------


def canonicalize(text: str) -> str:
    """Return `text` in gtk-gnutella's canonic form: words of lowercase letters/digits, spaces.

    Args:
        text: a file name or search text.

    Returns:
        NFKD, lowercased, combining marks dropped, every other non letter/digit replaced by
        a space, recomposed to NFC.
    """
    decomposed = unicodedata.normalize("NFKD", text).lower()
    if decomposed.isascii():
        out = [ch if ch.isalnum() else " " for ch in decomposed]
    else:
        out = []
        for ch in decomposed:
            cat = unicodedata.category(ch)
            if cat in _WORD_CATEGORIES:
                out.append(ch)
            elif cat not in _DROP_CATEGORIES:
                out.append(" ")
    return unicodedata.normalize("NFC", "".join(out))


def _long_enough(word: str) -> bool:
    return len(word.encode("utf-8")) >= QRP_MIN_WORD_LENGTH


def query_words(text: str) -> list[str]:
    """Return the words of a search text that QRP routes on, in order, without duplicates.

    Args:
        text: the query's search string (URN extensions are passed separately).

    Returns:
        Canonical words at least QRP_MIN_WORD_LENGTH UTF-8 bytes long.
    """
    return list(dict.fromkeys(w for w in canonicalize(text).split() if _long_enough(w)))


def keywords(name: str) -> set[str]:
    """Return every string a shared file named `name` puts in our QRP table.

    The canonical words of the whole name (extension included: "notes.txt" gives "notes"
    and "txt"), each with its prefixes of up to QRP_MAX_CUT_CHARS characters cut while the
    prefix stays longer than QRP_MIN_WORD_LENGTH bytes (gtk-gnutella unique_substr,
    GnutellaBun qrpIndexTerms).

    Args:
        name: a file name (a path's last component).

    Returns:
        The set of words and word prefixes to add to the table.
    """
    out: set[str] = set()
    for word in query_words(name):
        out.add(word)
        cut = word
        for _ in range(QRP_MAX_CUT_CHARS):
            cut = cut[:-1]
            if len(cut.encode("utf-8")) <= QRP_MIN_WORD_LENGTH:
                break
            out.add(cut)
    return out


# --- Query hashes -----------------------------------------------------------------------------


class QueryHashes:
    """A query's words and URNs hashed once, reusable across every table of the same size.

    Attributes:
        bits: the table size these slots are for.
        word_slots: one slot per routed word (all must be present).
        urn_slots: one slot per URN (any present suffices).
    """

    __slots__ = ("bits", "word_slots", "urn_slots", "_word_codes", "_urn_codes", "_rescaled")

    def __init__(self, words: Iterable[str], bits: int, urns: Iterable[str] = ()) -> None:
        """Hash `words` (canonical query words) and `urns` ("urn:sha1:..." strings) for 2**bits slots.

        Raises:
            LocalProtocolError: bits outside 1..32.
        """
        word_codes = tuple(dict.fromkeys(qrp_hashcode(w) for w in words))[:QRP_MAX_QUERY_HASHES]
        urn_codes = tuple(dict.fromkeys(qrp_hashcode(u) for u in urns))[:QRP_MAX_QUERY_HASHES]
        self._init(word_codes, urn_codes, bits)

    def _init(self, word_codes: tuple[int, ...], urn_codes: tuple[int, ...], bits: int) -> None:
        if not 1 <= bits <= 32:
            raise LocalProtocolError(f"QRP hash bits must be 1..32, not {bits}")
        shift = 32 - bits
        self.bits = bits
        self._word_codes = word_codes
        self._urn_codes = urn_codes
        self.word_slots = tuple(c >> shift for c in word_codes)
        self.urn_slots = tuple(c >> shift for c in urn_codes)
        self._rescaled: dict[int, QueryHashes] = {}

    def for_bits(self, bits: int) -> QueryHashes:
        """Return the same query hashed for 2**bits slots, reusing the 32-bit codes (cached per size)."""
        if bits == self.bits:
            return self
        other = self._rescaled.get(bits)
        if other is None:
            other = QueryHashes.__new__(QueryHashes)
            other._init(self._word_codes, self._urn_codes, bits)
            self._rescaled[bits] = other
        return other

    def __repr__(self) -> str:
        return f"QueryHashes(bits={self.bits}, words={self.word_slots}, urns={self.urn_slots})"


# --- Patch entry codecs -----------------------------------------------------------------------

# Per-slot change codes used while building a patch.
_UNCHANGED, _APPEARS, _VANISHES = 0, 1, 2


def _entry_tables() -> dict[int, tuple[tuple[bytes, bytes], ...]]:
    """For each entry size and position k in a byte: (set, clear) translate tables byte -> 0/1.

    "set" is 1 where entry k is negative (for 1-bit entries: where it flips the slot),
    "clear" is 1 where entry k is positive.
    """
    tables: dict[int, tuple[tuple[bytes, bytes], ...]] = {}
    for bits in QRP_ENTRY_BITS:
        mask, sign = (1 << bits) - 1, 1 << (bits - 1)
        per_k = []
        for k in range(8 // bits):
            shift = 8 - bits * (k + 1)
            entries = [(b >> shift) & mask for b in range(256)]
            if bits == 1:
                sets, clears = bytes(entries), bytes(256)
            else:
                sets = bytes(1 if e & sign else 0 for e in entries)
                clears = bytes(1 if e and not e & sign else 0 for e in entries)
            per_k.append((sets, clears))
        tables[bits] = tuple(per_k)
    return tables


_ENTRY_TABLES = _entry_tables()


def _entry_values(bits: int, infinity: int) -> tuple[int, int]:
    """Return the (appears, vanishes) entry values for `bits`-bit entries, masked to `bits` bits.

    Raises:
        LocalProtocolError: bits not 1/2/4/8, or the spec delta (1 - infinity) does not fit.
    """
    if bits not in QRP_ENTRY_BITS:
        raise LocalProtocolError(f"QRP entry bits must be one of {QRP_ENTRY_BITS}, not {bits}")
    if bits == 1:
        return 1, 1
    if infinity < 2:
        raise LocalProtocolError(f"QRP infinity must be at least 2 to encode presence, not {infinity}")
    mask = (1 << bits) - 1
    if 1 - infinity < -(1 << (bits - 1)):
        raise LocalProtocolError(f"QRP infinity {infinity} does not fit {bits}-bit signed entries")
    return (1 - infinity) & mask, (infinity - 1) & mask


def _pack_entries(codes: bytes, bits: int, infinity: int) -> bytes:
    """Pack one change code per slot into `bits`-bit entries, first slot in the high bits."""
    appears, vanishes = _entry_values(bits, infinity)
    per_byte = 8 // bits
    acc = 0
    for k in range(per_byte):
        shift = 8 - bits * (k + 1)
        table = bytearray(256)
        table[_APPEARS] = appears << shift
        table[_VANISHES] = vanishes << shift
        acc |= int.from_bytes(codes[k::per_byte].translate(table), "big")
    return acc.to_bytes(len(codes) // per_byte, "big")


def _apply_entries(slots: bytearray, pos: int, data: bytes, bits: int) -> int:
    """Apply patch entries `data` to `slots` from slot `pos`; return the next slot position."""
    per_byte = 8 // bits
    n = len(data) * per_byte
    sets = bytearray(n)
    clears = bytearray(n)
    for k, (set_table, clear_table) in enumerate(_ENTRY_TABLES[bits]):
        sets[k::per_byte] = data.translate(set_table)
        clears[k::per_byte] = data.translate(clear_table)
    old = int.from_bytes(slots[pos : pos + n], "big")
    if bits == 1:
        new = old ^ int.from_bytes(sets, "big")
    else:
        new = (old & ~int.from_bytes(clears, "big")) | int.from_bytes(sets, "big")
    slots[pos : pos + n] = new.to_bytes(n, "big")
    return pos + n


# --- Tables -----------------------------------------------------------------------------------


class QrpTable:
    """A QRP routing table: 2**size_bits presence slots, one byte each (1 = present).

    Attributes:
        size_bits: log2 of the number of slots.
        infinity: the RESET "infinity" value advertised for this table.
        slots: the presence bytes (read them; change them through the methods).
    """

    __slots__ = ("size_bits", "infinity", "slots")

    def __init__(self, size_bits: int = QRP_DEFAULT_TABLE_BITS, infinity: int = QRP_DEFAULT_INFINITY) -> None:
        """Create an empty table (every slot absent).

        Raises:
            LocalProtocolError: size_bits outside QRP_MIN/MAX_TABLE_BITS or infinity outside 1..255.
        """
        if not QRP_MIN_TABLE_BITS <= size_bits <= QRP_MAX_TABLE_BITS:
            raise LocalProtocolError(
                f"QRP table bits must be {QRP_MIN_TABLE_BITS}..{QRP_MAX_TABLE_BITS}, not {size_bits}"
            )
        if not 1 <= infinity <= 255:
            raise LocalProtocolError(f"QRP infinity must be 1..255, not {infinity}")
        self.size_bits = size_bits
        self.infinity = infinity
        self.slots = bytearray(1 << size_bits)

    @property
    def size(self) -> int:
        """Number of slots."""
        return len(self.slots)

    @property
    def set_count(self) -> int:
        """Number of present slots."""
        return self.slots.count(1)

    @property
    def fill_ratio(self) -> float:
        """Fraction of present slots, 0.0..1.0."""
        return self.slots.count(1) / len(self.slots)

    def copy(self) -> QrpTable:
        """Return an independent copy."""
        other = QrpTable.__new__(QrpTable)
        other.size_bits, other.infinity, other.slots = self.size_bits, self.infinity, bytearray(self.slots)
        return other

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QrpTable):
            return NotImplemented
        return self.infinity == other.infinity and self.slots == other.slots

    __hash__ = None  # type: ignore[assignment]  # mutable

    def same_as(self, other: QrpTable) -> bool:
        """Return whether `other` has the same size, infinity and present slots (no update needed)."""
        return self == other

    def __repr__(self) -> str:
        return f"QrpTable(size=2**{self.size_bits}, infinity={self.infinity}, set={self.set_count})"

    def add_words(self, words: Iterable[str]) -> None:
        """Mark the slot of each word present (words as keywords() returns them, or URNs)."""
        slots, shift = self.slots, 32 - self.size_bits
        for word in words:
            slots[qrp_hashcode(word) >> shift] = 1

    def contains(self, word: str) -> bool:
        """Return whether the slot of `word` is present (a Bloom filter: false positives happen)."""
        return bool(self.slots[qrp_hashcode(word) >> (32 - self.size_bits)])

    def matches(self, words: Iterable[str] | QueryHashes, urns: Iterable[str] = ()) -> bool:
        """Return whether a query may match this table (the QRP rule).

        Args:
            words: canonical query words (query_words()) or a QueryHashes (then `urns` is ignored).
            urns: the query's "urn:sha1:..." strings.

        Returns:
            With URNs: True when any URN's slot is present. Otherwise True when every word's
            slot is present; a query with neither words nor URNs matches nothing.
        """
        if not isinstance(words, QueryHashes):
            words = QueryHashes(words, self.size_bits, urns)
        return self.matches_hashes(words)

    def matches_hashes(self, query: QueryHashes) -> bool:
        """The hot-path form of matches(): `query` was hashed once for many tables."""
        if query.bits != self.size_bits:
            query = query.for_bits(self.size_bits)
        slots = self.slots
        if query.urn_slots:
            for slot in query.urn_slots:
                if slots[slot]:
                    return True
            return False
        if not query.word_slots:
            return False
        for slot in query.word_slots:
            if not slots[slot]:
                return False
        return True

    def merge(self, other: QrpTable) -> None:
        """OR `other` into this table, rescaling when the sizes differ.

        Slot i of a 2**b table covers slots [i*r, (i+1)*r) of a 2**(b+log2 r) table (the
        hash keeps the top bits), so a smaller table is expanded and a larger one folded.
        """
        n = len(self.slots)
        if other.size_bits == self.size_bits:
            src = other.slots
        elif other.size_bits < self.size_bits:
            ratio = n // len(other.slots)
            src = bytearray(n)
            for k in range(ratio):
                src[k::ratio] = other.slots
        else:
            ratio = len(other.slots) // n
            acc = 0
            for k in range(ratio):
                acc |= int.from_bytes(other.slots[k::ratio], "big")
            src = acc.to_bytes(n, "big")
        merged = int.from_bytes(self.slots, "big") | int.from_bytes(src, "big")
        self.slots[:] = merged.to_bytes(n, "big")

    def to_messages(
        self,
        prev: QrpTable | None = None,
        entry_bits: int = 4,
        compress: bool = True,
        max_patch_chunk: int = QRP_DEFAULT_PATCH_CHUNK,
    ) -> list[QrpReset | QrpPatch]:
        """Build the ROUTE_TABLE_UPDATE messages that bring a peer from `prev` to this table.

        Without `prev` (or when its size or infinity differ) that is a RESET then a full
        patch against the empty table; otherwise only PATCH messages carrying the change,
        and nothing at all when the tables are equal. The patch (zlib-compressed as one
        stream when `compress`) is cut into at most QRP_MAX_SEQ_SIZE PATCH messages of
        `max_patch_chunk` data bytes (more per message when 255 would not suffice).

        Args:
            prev: the table the peer holds (the last one we completely sent it), or None.
            entry_bits: 1, 2, 4 or 8 bits per entry.
            compress: zlib-compress the patch (compressor 1).
            max_patch_chunk: data bytes per PATCH message, 1..QRP_MAX_PATCH_CHUNK.

        Returns:
            The messages in sending order.

        Raises:
            LocalProtocolError: unsupported entry_bits, an infinity the entries cannot encode,
                or a chunk size out of range.
        """
        if not 1 <= max_patch_chunk <= QRP_MAX_PATCH_CHUNK:
            raise LocalProtocolError(
                f"QRP patch chunk must be 1..{QRP_MAX_PATCH_CHUNK}, not {max_patch_chunk}"
            )
        out: list[QrpReset | QrpPatch] = []
        if prev is None or prev.size_bits != self.size_bits or prev.infinity != self.infinity:
            _entry_values(entry_bits, self.infinity)  # validate before emitting anything
            out.append(QrpReset(table_size=self.size, infinity=self.infinity))
            codes = bytes(self.slots)  # present (1) == _APPEARS against the empty table
        else:
            if prev.slots == self.slots:
                return out
            new = int.from_bytes(self.slots, "big")
            old = int.from_bytes(prev.slots, "big")
            changed = (new & ~old) | ((old & ~new) << 1)  # per byte: 1 appears, 2 vanishes
            codes = changed.to_bytes(self.size, "big")
        raw = _pack_entries(codes, entry_bits, self.infinity)
        data = zlib.compress(raw) if compress else raw
        chunk = max(max_patch_chunk, -(-len(data) // QRP_MAX_SEQ_SIZE))
        if chunk > QRP_MAX_PATCH_CHUNK:
            raise LocalProtocolError(
                f"QRP patch of {len(data)} bytes does not fit {QRP_MAX_SEQ_SIZE} messages"
            )
        pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
        compressor = QRP_COMPRESSOR_ZLIB if compress else QRP_COMPRESSOR_NONE
        for seq_no, piece in enumerate(pieces, start=1):
            out.append(
                QrpPatch(
                    seq_no=seq_no,
                    seq_size=len(pieces),
                    compressor=compressor,
                    entry_bits=entry_bits,
                    data=piece,
                )
            )
        return out


# --- Receiving --------------------------------------------------------------------------------


class QrpReceiver:
    """One peer's incoming ROUTE_TABLE_UPDATE stream, turned into complete QrpTables.

    RESET discards the peer's table and announces the size of the next one; PATCH messages
    1..seq_size then fill it (or, without a RESET, patch a copy of the current table).
    `table` only ever shows a complete table. Every violation raises RemoteProtocolError
    (the node answers BYE 413) and abandons the sequence in progress.
    """

    def __init__(self, max_bits: int = QRP_MAX_TABLE_BITS) -> None:
        """Create a receiver that accepts tables of up to 2**max_bits slots."""
        self._max_bits = min(max_bits, QRP_MAX_TABLE_BITS)
        self._table: QrpTable | None = None
        self._fresh: QrpTable | None = None  # announced by RESET, not yet patched
        self._building: QrpTable | None = None
        self._next_seq = 1
        self._seq_size = 0
        self._compressor = 0
        self._entry_bits = 0
        self._pos = 0
        self._inflater: zlib._Decompress | None = None

    @property
    def table(self) -> QrpTable | None:
        """The peer's last complete table, or None (none yet, or discarded by a RESET)."""
        return self._table

    @property
    def in_progress(self) -> bool:
        """Whether a PATCH sequence is half received."""
        return self._building is not None

    def apply(self, msg: QrpReset | QrpPatch) -> bool:
        """Apply one decoded ROUTE_TABLE_UPDATE message.

        Args:
            msg: a QrpReset or QrpPatch from gnut.protocol.messages.decode_qrp.

        Returns:
            True when this message completed a new table (now in `table`).

        Raises:
            RemoteProtocolError: bad size or infinity, PATCH without RESET, sequence out of
                order, changed parameters mid-sequence, unknown entry bits or compressor,
                corrupt or oversized compressed data, data not exactly filling the table.
            LocalProtocolError: `msg` is not a QRP message.
        """
        try:
            if isinstance(msg, QrpReset):
                self._reset(msg)
                return False
            if isinstance(msg, QrpPatch):
                return self._patch(msg)
        except RemoteProtocolError:
            self._abandon()
            raise
        raise LocalProtocolError(f"not a QRP message: {type(msg).__name__}")

    def _abandon(self) -> None:
        self._building = None
        self._inflater = None
        self._next_seq = 1

    def _reset(self, msg: QrpReset) -> None:
        size = msg.table_size
        if size <= 0 or size & (size - 1):
            raise RemoteProtocolError(f"QRP RESET table size {size} is not a power of two")
        bits = size.bit_length() - 1
        if not QRP_MIN_TABLE_BITS <= bits <= self._max_bits:
            raise RemoteProtocolError(
                f"QRP RESET table size {size} outside 2**{QRP_MIN_TABLE_BITS}..2**{self._max_bits}"
            )
        if not 1 <= msg.infinity <= 255:
            raise RemoteProtocolError(f"QRP RESET infinity {msg.infinity} invalid")
        self._abandon()
        self._table = None
        self._fresh = QrpTable(bits, msg.infinity)

    def _start(self, msg: QrpPatch) -> None:
        if msg.seq_size < 1:
            raise RemoteProtocolError(f"QRP PATCH sequence size {msg.seq_size} invalid")
        if msg.entry_bits not in QRP_ENTRY_BITS:
            raise RemoteProtocolError(f"QRP PATCH entry bits {msg.entry_bits} unsupported")
        if msg.compressor not in (QRP_COMPRESSOR_NONE, QRP_COMPRESSOR_ZLIB):
            raise RemoteProtocolError(f"QRP PATCH compressor {msg.compressor} unsupported")
        if self._fresh is not None:
            self._building, self._fresh = self._fresh, None
        elif self._table is not None:
            self._building = self._table.copy()
        else:
            raise RemoteProtocolError("QRP PATCH received before any RESET")
        self._seq_size = msg.seq_size
        self._compressor = msg.compressor
        self._entry_bits = msg.entry_bits
        self._pos = 0
        self._inflater = zlib.decompressobj() if msg.compressor == QRP_COMPRESSOR_ZLIB else None

    def _patch(self, msg: QrpPatch) -> bool:
        if msg.seq_no != self._next_seq:
            raise RemoteProtocolError(f"QRP PATCH seq {msg.seq_no}, expected {self._next_seq}")
        if msg.seq_no == 1:
            self._start(msg)
        elif (msg.seq_size, msg.compressor, msg.entry_bits) != (
            self._seq_size,
            self._compressor,
            self._entry_bits,
        ):
            raise RemoteProtocolError(
                f"QRP PATCH #{msg.seq_no} changed seq size/compressor/entry bits to "
                f"{msg.seq_size}/{msg.compressor}/{msg.entry_bits}"
            )
        table = self._building
        assert table is not None  # set by _start for seq 1, kept until the sequence ends
        last = msg.seq_no == self._seq_size
        data = self._inflate(bytes(msg.data), last) if self._inflater is not None else bytes(msg.data)
        room = (table.size - self._pos) * self._entry_bits // 8
        if len(data) > room:
            raise RemoteProtocolError(f"QRP PATCH #{msg.seq_no} overflows the {table.size}-slot table")
        if data:
            self._pos = _apply_entries(table.slots, self._pos, data, self._entry_bits)
        self._next_seq += 1
        if not last:
            return False
        if self._pos != table.size:
            covered = self._pos
            raise RemoteProtocolError(
                f"QRP {self._entry_bits}-bit patch covered {covered}/{table.size} slots"
            )
        self._table = table
        self._building = None
        self._inflater = None
        self._next_seq = 1
        return True

    def _inflate(self, data: bytes, last: bool) -> bytes:
        """Inflate the next piece of the patch stream, never beyond what the table still needs.

        Strategy: inflate with max_length = bytes still needed + 1, so a decompression bomb
        costs at most one byte more than the table; that extra byte proves an overflow.
        """
        inflater = self._inflater
        table = self._building
        assert inflater is not None and table is not None
        if inflater.eof:
            if data:
                raise RemoteProtocolError("QRP PATCH data after the end of the zlib stream")
            return b""
        need = (table.size - self._pos) * self._entry_bits // 8
        out = bytearray()
        pending = data
        try:
            while True:
                piece = inflater.decompress(pending, need + 1 - len(out))
                out += piece
                if len(out) > need:
                    raise RemoteProtocolError(f"QRP PATCH inflates beyond the {table.size}-slot table")
                tail = inflater.unconsumed_tail
                if not tail or (not piece and tail == pending):
                    break
                pending = tail
        except zlib.error as exc:
            raise RemoteProtocolError(f"QRP PATCH zlib data corrupt: {exc}") from None
        if inflater.eof:
            if inflater.unused_data:
                raise RemoteProtocolError("QRP PATCH data after the end of the zlib stream")
            if not last:
                raise RemoteProtocolError("QRP PATCH zlib stream ended before the last message")
        return bytes(out)
