"""Tests for gnut.protocol.qrp: hash vectors, keywords, tables, RESET/PATCH round trips, captured tables, abuse."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gnut.errors import LocalProtocolError, RemoteProtocolError
from gnut.protocol.messages import QrpPatch, QrpReset, decode_qrp
from gnut.protocol.qrp import (
    QRP_MAX_SEQ_SIZE,
    QRP_MAX_TABLE_BITS,
    QrpReceiver,
    QrpTable,
    QueryHashes,
    canonicalize,
    keywords,
    qrp_hash,
    qrp_hashcode,
    query_words,
)

VECTORS = Path(__file__).resolve().parent / "vectors"  # captured real-servent bytes (vectors/README.md)
HEADER_LEN = 23

# gtk-gnutella src/core/qrp.c test_hash() and qrp_init().
ASCII_VECTORS = [
    ("", 13, 0),
    ("eb", 13, 6791),
    ("ebc", 13, 7082),
    ("ebck", 13, 6698),
    ("ebckl", 13, 3179),
    ("ebcklm", 13, 3235),
    ("ebcklme", 13, 6438),
    ("ebcklmen", 13, 1062),
    ("ebcklmenq", 13, 3527),
    ("", 16, 0),
    ("n", 16, 65003),
    ("nd", 16, 54193),
    ("ndf", 16, 4953),
    ("ndfl", 16, 58201),
    ("ndfla", 16, 34830),
    ("ndflal", 16, 36910),
    ("ndflale", 16, 34586),
    ("ndflalem", 16, 37658),
    ("ndflaleme", 16, 45559),
    ("ol2j34lj", 10, 318),
    ("asdfas23", 10, 503),
    ("9um3o34fd", 10, 758),
    ("a234d", 10, 281),
    ("a3f", 10, 767),
    ("3nja9", 10, 581),
    ("2459345938032343", 10, 146),
    ("7777a88a8a8a8", 10, 342),
    ("asdfjklkj3k", 10, 861),
    ("adfk32l", 10, 1011),
    ("zzzzzzzzzzz", 10, 944),
]
UNICODE_VECTORS = [
    ((0x30A2, 0x30CB, 0x30E1), 46),  # a-ni-me
    ((0x30E9,), 0),  # ra
    ((0x58F0, 0x512A), 731),  # voice actor
    ((0x10400,), 316),  # DESERET CAPITAL LETTER LONG I: a surrogate pair, not lowercased
    ((0x10428,), 658),  # DESERET SMALL LETTER LONG I
    ((0x0001, 0x0028), 658),  # same low bytes as the pair above
    ((0xFF01, 0x9428), 658),
    ((0x1001, 0x2000), 316),
]


def _vector(name: str) -> bytes:
    path = VECTORS / name
    return path.read_bytes()[HEADER_LEN:]


def _wire(msgs: list[QrpReset | QrpPatch]) -> list[QrpReset | QrpPatch]:
    """Encode then decode each message: what a peer really receives."""
    return [decode_qrp(m.encode()) for m in msgs]


def _receive(msgs: list[QrpReset | QrpPatch], receiver: QrpReceiver | None = None) -> QrpTable:
    receiver = receiver or QrpReceiver()
    done = [receiver.apply(m) for m in _wire(msgs)]
    assert done[-1] is True and not any(done[:-1])
    assert receiver.table is not None and not receiver.in_progress
    return receiver.table


def _table(words: list[str], bits: int = 12, infinity: int = 7) -> QrpTable:
    table = QrpTable(bits, infinity)
    table.add_words(words)
    return table


# --- hash ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("word", "bits", "expected"), ASCII_VECTORS)
def test_hash_gtk_gnutella_vectors(word: str, bits: int, expected: int) -> None:
    assert qrp_hash(word, bits) == expected
    assert qrp_hash(word.encode(), bits) == expected
    assert qrp_hash(word.upper(), bits) == expected  # ASCII is lowercased by the hash


@pytest.mark.parametrize(("codepoints", "expected"), UNICODE_VECTORS)
def test_hash_non_ascii_vectors(codepoints: tuple[int, ...], expected: int) -> None:
    word = "".join(map(chr, codepoints))
    assert qrp_hash(word, 10) == expected
    assert qrp_hash(word.encode("utf-8"), 10) == expected


def test_hash_properties() -> None:
    assert qrp_hash("FAIL", 16) != 37458
    assert qrp_hashcode("ndflalem") >> 16 == 37658
    # Invalid UTF-8 ends the word, as gtk-gnutella's decoder does.
    assert qrp_hash(b"eb\xff\xfezz", 13) == 6791
    for bits in (0, 33):
        with pytest.raises(LocalProtocolError):
            qrp_hash("x", bits)


# --- keywords -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Hello_World.MP3", ["hello", "world", "mp3"]),
        ("Café Déjà  Vu (live).ogg", ["cafe", "deja", "live", "ogg"]),
        ("ＡＢＣ－ｄｅｆ", ["abc", "def"]),  # NFKD folds full-width forms
        ("a bc de fgh a bc fgh", ["fgh"]),  # under 3 bytes dropped, duplicates once
        ("東京 x", ["東京"]),  # 6 UTF-8 bytes: long enough
        ("Straße", ["straße"]),  # lower(), not casefold(): gtk-gnutella keeps the sharp s
        ("", []),
        ("--- ...", []),
    ],
)
def test_query_words(text: str, words: list[str]) -> None:
    assert query_words(text) == words


def test_canonicalize() -> None:
    assert canonicalize("Ünïcödé!Name") == "unicode name"
    assert canonicalize("한국어") == "한국어"  # Hangul survives NFKD + NFC


def test_keywords_prefixes_like_real_servents() -> None:
    assert keywords("interopokapi leaf notes.txt") == {
        "interopokapi",
        "interopokap",
        "interopoka",
        "interopok",
        "interopo",
        "interop",  # 5 characters cut at most
        "leaf",
        "notes",
        "note",  # never cut down to 3 bytes
        "txt",
    }
    assert keywords("ab.c") == set()
    assert keywords("Leaf") == {"leaf"}


# --- matching -----------------------------------------------------------------------------------


def test_matches_all_words_rule() -> None:
    table = _table(sorted(keywords("interopokapi leaf notes.txt")), bits=16)
    assert table.matches(["interopokapi", "notes"])
    assert table.matches(query_words("INTEROP note"))  # prefix indexing
    assert not table.matches(["interopokapi", "zebra"])
    assert not table.matches([])  # nothing to route on: never forwarded
    assert table.contains("leaf") and not table.contains("zebra")


def test_matches_urns_are_ored() -> None:
    urn = "urn:sha1:MFPCK47GUWY5JU2AD2BONA4CKFWKBU67"
    table = _table(["alpha", urn])
    assert table.matches([], urns=[urn])
    assert table.matches(["zebra"], urns=["urn:sha1:NOTHERE", urn.lower()])
    assert not table.matches(["alpha"], urns=["urn:sha1:NOTHERE"])


def test_query_hashes_reused_across_sizes() -> None:
    words = ["alpha", "bravo"]
    small, big = _table(words, bits=10), _table(words, bits=16)
    query = QueryHashes(words, 16)
    assert query.word_slots == (qrp_hash("alpha", 16), qrp_hash("bravo", 16))
    assert query.for_bits(10).word_slots == (qrp_hash("alpha", 10), qrp_hash("bravo", 10))
    assert query.for_bits(16) is query
    assert query.for_bits(10) is query.for_bits(10)  # rescaled once per size
    assert big.matches_hashes(query) and small.matches_hashes(query)
    assert small.matches(query) and not small.matches(QueryHashes(["charlie"], 10))


# --- table operations ---------------------------------------------------------------------------


def test_fill_ratio_and_set_count() -> None:
    table = QrpTable(10)
    assert table.fill_ratio == 0.0 and table.size == 1024
    table.add_words(["alpha", "bravo", "alpha"])
    assert table.set_count == 2
    assert table.fill_ratio == 2 / 1024


@pytest.mark.parametrize(("dst_bits", "src_bits"), [(12, 12), (14, 10), (10, 14)])
def test_merge_rescales(dst_bits: int, src_bits: int) -> None:
    words = [f"word{i}" for i in range(40)]
    dst = _table(["local"], bits=dst_bits)
    dst.merge(_table(words, bits=src_bits))
    assert dst.contains("local")
    assert all(dst.contains(w) for w in words)
    if dst_bits <= src_bits:  # folding: exactly the slots of the words
        assert dst == _table(["local", *words], bits=dst_bits)
    else:  # expansion: each source slot covers 2**(dst-src) slots
        assert dst.set_count <= 1 + 40 * 2 ** (dst_bits - src_bits)


def test_table_limits() -> None:
    for bits in (2, QRP_MAX_TABLE_BITS + 1):
        with pytest.raises(LocalProtocolError):
            QrpTable(bits)
    with pytest.raises(LocalProtocolError):
        QrpTable(10, infinity=0)


# --- to_messages -> QrpReceiver round trips -----------------------------------------------------


@pytest.mark.parametrize("entry_bits", [1, 2, 4, 8])
@pytest.mark.parametrize("compress", [False, True])
def test_round_trip(entry_bits: int, compress: bool) -> None:
    infinity = 2 if entry_bits == 2 else 7
    table = _table([f"w{i}" for i in range(300)], bits=13, infinity=infinity)
    msgs = table.to_messages(entry_bits=entry_bits, compress=compress, max_patch_chunk=256)
    assert isinstance(msgs[0], QrpReset) and msgs[0].table_size == 8192 and msgs[0].infinity == infinity
    patches = msgs[1:]
    assert [p.seq_no for p in patches] == list(range(1, len(patches) + 1))
    assert all(p.seq_size == len(patches) and p.entry_bits == entry_bits for p in patches)
    assert all(p.compressor == int(compress) and len(p.data) <= 256 for p in patches)
    assert _receive(msgs) == table


@pytest.mark.parametrize("entry_bits", [1, 2, 4, 8])
def test_incremental_patch(entry_bits: int) -> None:
    old = _table(["alpha", "bravo", "charlie"], bits=10, infinity=2)
    new = _table(["bravo", "delta", "echo"], bits=10, infinity=2)
    receiver = QrpReceiver()
    _receive(old.to_messages(entry_bits=entry_bits), receiver)
    update = new.to_messages(prev=old, entry_bits=entry_bits)
    assert update and not any(isinstance(m, QrpReset) for m in update)
    assert receiver.table == old  # still the old table until the update completes
    assert _receive(update, receiver) == new
    assert new.to_messages(prev=new.copy()) == []
    resized = _table(["bravo"], bits=11, infinity=2).to_messages(prev=old)
    assert isinstance(resized[0], QrpReset)


def test_wire_values_match_spec_and_gtk_gnutella() -> None:
    table = QrpTable(3, infinity=2)
    table.slots[0] = table.slots[3] = 1
    (_, patch) = table.to_messages(entry_bits=4, compress=False)
    assert patch.data == bytes([0xF0, 0x0F, 0x00, 0x00])  # -1 = INFINITY 2 -> 1, as gtk-gnutella
    (_, patch) = QrpTable(3, infinity=7).to_messages(entry_bits=8, compress=False)
    assert patch.data == bytes(8)
    table7 = QrpTable(3, infinity=7)
    table7.slots[7] = 1
    (_, patch) = table7.to_messages(entry_bits=8, compress=False)
    assert patch.data[7] == 0xFA  # 1 - 7 = -6
    (_, patch) = table7.to_messages(entry_bits=1, compress=False)
    assert patch.data == b"\x01"


def test_chunking_caps_the_sequence() -> None:
    table = _table([f"w{i}" for i in range(50)], bits=16)
    msgs = table.to_messages(entry_bits=8, compress=False, max_patch_chunk=1)
    assert len(msgs) - 1 == QRP_MAX_SEQ_SIZE  # 65536 bytes need 258-byte chunks
    assert all(len(m.data) <= 258 for m in msgs[1:])
    assert _receive(msgs) == table


def test_to_messages_rejects_bad_arguments() -> None:
    table = QrpTable(10, infinity=7)
    with pytest.raises(LocalProtocolError):
        table.to_messages(entry_bits=3)
    with pytest.raises(LocalProtocolError):
        table.to_messages(entry_bits=2)  # 1 - 7 does not fit in 2 signed bits
    with pytest.raises(LocalProtocolError):
        table.to_messages(max_patch_chunk=0)
    with pytest.raises(LocalProtocolError):
        QrpTable(10, infinity=1).to_messages(entry_bits=4)


@settings(max_examples=40, deadline=None)
@given(
    words=st.sets(st.text(min_size=1, max_size=12), max_size=60),
    later=st.sets(st.text(min_size=1, max_size=12), max_size=60),
    bits=st.integers(min_value=3, max_value=14),
    entry_bits=st.sampled_from([1, 2, 4, 8]),
    compress=st.booleans(),
    chunk=st.integers(min_value=1, max_value=600),
)
def test_random_word_sets_round_trip(
    words: set[str], later: set[str], bits: int, entry_bits: int, compress: bool, chunk: int
) -> None:
    first, second = _table(sorted(words), bits, 2), _table(sorted(later), bits, 2)
    receiver = QrpReceiver()
    assert _receive(
        first.to_messages(entry_bits=entry_bits, compress=compress, max_patch_chunk=chunk), receiver
    )
    assert receiver.table == first and all(receiver.table.contains(w) for w in words)
    update = second.to_messages(prev=first, entry_bits=entry_bits, compress=compress, max_patch_chunk=chunk)
    if update:
        _receive(update, receiver)
    assert receiver.table == second


# --- captured tables from real servents ---------------------------------------------------------


def _captured(reset: str, patch: str) -> tuple[QrpReset, QrpPatch]:
    r, p = decode_qrp(_vector(reset)), decode_qrp(_vector(patch))
    assert isinstance(r, QrpReset) and isinstance(p, QrpPatch)
    return r, p


def test_gtk_gnutella_leaf_table() -> None:
    reset, patch = _captured("gtk-gnutella/leaf_qrp_reset.bin", "gtk-gnutella/leaf_qrp_patch.bin")
    assert (reset.table_size, reset.infinity) == (16384, 2)
    assert (patch.seq_no, patch.seq_size, patch.compressor, patch.entry_bits) == (1, 1, 1, 4)
    receiver = QrpReceiver()
    assert receiver.apply(reset) is False and receiver.table is None
    assert receiver.apply(patch) is True
    table = receiver.table
    assert table is not None and table.size == 16384 and table.set_count == 14
    # The gtk-gnutella leaf shares interop_alpha.txt (its QUERYHIT vector).
    assert table.matches(query_words("interop alpha txt"))
    assert all(table.contains(w) for w in keywords("interop_alpha.txt"))


def test_gnutellabun_tables() -> None:
    reset, patch = _captured("gnutellabun/qrp_reset_from_gbun.bin", "gnutellabun/qrp_patch_from_gbun.bin")
    assert (reset.table_size, reset.infinity, patch.entry_bits, patch.compressor) == (65536, 7, 1, 1)
    receiver = QrpReceiver()
    receiver.apply(reset)
    assert receiver.apply(patch) is True and receiver.table is not None
    assert receiver.table.set_count == 10


def test_gnutellabun_leaf_table_is_exactly_our_keywords() -> None:
    reset, patch = _captured(
        "gnutellabun/qrp_reset_from_gbun.bin", "gnutellabun/qrp_patch_from_gbun_leaf.bin"
    )
    receiver = QrpReceiver()
    receiver.apply(reset)
    assert receiver.apply(patch) is True
    ours = _table(sorted(keywords("interopokapi leaf notes.txt")), bits=16, infinity=7)
    assert receiver.table == ours
    assert receiver.table.matches(query_words("interopokapi leaf notes"))
    assert not receiver.table.matches(query_words("interopokapi zebra"))


@pytest.mark.parametrize(
    ("reset_name", "patch_name"),
    [
        ("gtk-gnutella/leaf_qrp_reset.bin", "gtk-gnutella/leaf_qrp_patch.bin"),
        ("gnutellabun/qrp_reset_from_gbun.bin", "gnutellabun/qrp_patch_from_gbun_leaf.bin"),
    ],
)
def test_captured_stream_split_everywhere(reset_name: str, patch_name: str) -> None:
    reset, patch = _captured(reset_name, patch_name)
    whole = QrpReceiver()
    whole.apply(reset)
    whole.apply(patch)
    data = patch.data
    for cut in range(len(data)):  # the stream may not end before the last message
        parts = [data[:cut], data[cut:]]
        msgs = [QrpPatch(i + 1, 2, patch.compressor, patch.entry_bits, part) for i, part in enumerate(parts)]
        assert _receive([reset, *msgs]) == whole.table
    one_byte = [QrpPatch(i + 1, len(data), 1, patch.entry_bits, data[i : i + 1]) for i in range(len(data))]
    assert _receive([reset, *one_byte]) == whole.table


# --- abuse: every violation is a RemoteProtocolError --------------------------------------------


def _started(bits: int = 10, infinity: int = 2) -> QrpReceiver:
    receiver = QrpReceiver()
    receiver.apply(QrpReset(1 << bits, infinity))
    return receiver


@pytest.mark.parametrize(
    "reset",
    [
        QrpReset(1000, 7),
        QrpReset(1 << 22, 7),
        QrpReset(4, 7),
        QrpReset(0, 7),
        QrpReset(1024, 0),
        QrpReset(1024, 256),
    ],
)
def test_bad_reset_rejected(reset: QrpReset) -> None:
    with pytest.raises(RemoteProtocolError):
        QrpReceiver().apply(reset)


def test_receiver_size_cap() -> None:
    with pytest.raises(RemoteProtocolError):
        QrpReceiver(max_bits=16).apply(QrpReset(1 << 17, 7))


@pytest.mark.parametrize(
    "patch",
    [
        QrpPatch(2, 2, 0, 4, bytes(256)),  # sequence must start at 1
        QrpPatch(1, 1, 0, 3, bytes(384)),  # 3-bit entries
        QrpPatch(1, 1, 2, 4, bytes(512)),  # unknown compressor
        QrpPatch(1, 0, 0, 4, bytes(512)),  # empty sequence
        QrpPatch(1, 1, 0, 4, bytes(513)),  # overflows the 1024 slots
        QrpPatch(1, 1, 0, 4, bytes(511)),  # leaves slots uncovered
        QrpPatch(1, 1, 1, 4, b"not zlib at all"),  # corrupt stream
        QrpPatch(1, 1, 1, 4, zlib.compress(bytes(512)) + b"junk"),  # bytes after the stream end
        QrpPatch(1, 1, 1, 8, zlib.compress(bytes(1024))[:-6]),  # truncated: table not covered
    ],
)
def test_bad_patch_rejected(patch: QrpPatch) -> None:
    receiver = _started()
    with pytest.raises(RemoteProtocolError):
        receiver.apply(patch)
    assert receiver.table is None and not receiver.in_progress


def test_decompression_bomb_is_bounded() -> None:
    bomb = zlib.compress(bytes(64 << 20), 9)  # 64 MiB of zeros in ~64 KiB
    receiver = _started(bits=10)
    with pytest.raises(RemoteProtocolError, match="inflates beyond"):
        receiver.apply(QrpPatch(1, 1, 1, 8, bomb))


def test_sequence_violations() -> None:
    with pytest.raises(RemoteProtocolError, match="before any RESET"):
        QrpReceiver().apply(QrpPatch(1, 1, 0, 8, bytes(1024)))
    half = bytes(256)
    for bad in (
        QrpPatch(3, 2, 0, 4, half),  # skipped #2
        QrpPatch(1, 2, 0, 4, half),  # repeated #1
        QrpPatch(2, 3, 0, 4, half),  # seq size changed
        QrpPatch(2, 2, 1, 4, half),  # compressor changed
        QrpPatch(2, 2, 0, 8, half),  # entry bits changed
    ):
        receiver = _started()
        assert receiver.apply(QrpPatch(1, 2, 0, 4, half)) is False and receiver.in_progress
        with pytest.raises(RemoteProtocolError):
            receiver.apply(bad)
        assert not receiver.in_progress
    stream = zlib.compress(bytes(512))
    receiver = _started()
    with pytest.raises(RemoteProtocolError, match="ended before the last"):
        receiver.apply(QrpPatch(1, 2, 1, 4, stream))


def test_reset_discards_table_and_restarts() -> None:
    table = _table(["alpha"], bits=10, infinity=2)
    receiver = QrpReceiver()
    _receive(table.to_messages(), receiver)
    receiver.apply(QrpReset(1024, 2))
    assert receiver.table is None
    with pytest.raises(RemoteProtocolError):
        receiver.apply(QrpPatch(2, 2, 0, 4, bytes(256)))
    assert _receive(table.to_messages(), receiver) == table  # usable again after a fresh RESET


def test_apply_rejects_non_qrp() -> None:
    with pytest.raises(LocalProtocolError):
        QrpReceiver().apply(b"\x00")  # type: ignore[arg-type]
