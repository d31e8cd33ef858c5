"""Pure-Python twin of gnut._tiger: the Tiger hash (Anderson & Biham, 1996) and Tiger-tree levels."""

# Strategy: everything here mirrors gnut/_tiger.pyx name for name and error for error; the
# differential tests in tests/test_tiger.py hold the two together.
#
# Tiger works on 64-bit words: three chaining registers a, b, c; 512-bit blocks read as eight
# little-endian words; three passes of eight rounds (multipliers 5, 7, 9) with a key schedule
# between passes; feed-forward a ^= aa, b -= bb, c += cc. Padding is MD4-style but with a 0x01
# marker byte (the original Tiger, which THEX/TTH uses; "Tiger2" pads with 0x80). The digest is
# a, b, c written little-endian (24 bytes).
#
# The four 256-entry S-boxes are NOT pasted from anywhere: they are generated at import by the
# authors' published procedure (the reference "sboxes.c" of the Tiger paper's distribution):
# every byte column of every entry starts as its index, then for 5 passes, for i in 0..255, for
# each of the 4 boxes, a fresh 64-bit word of Tiger state (one compression of the 64-character
# seed string per three words, compressed with the boxes as generated SO FAR) names, byte column
# by byte column, which entry's byte to swap with entry i's byte in that column.
#
# Tiger tree (THEX, and gtk-gnutella src/lib/tigertree.c): leaves are Tiger(0x00 || block) over
# 1024-byte blocks (the empty file has one leaf, Tiger(0x00)); an inner node is
# Tiger(0x01 || left || right); an odd node at the end of a level is promoted unchanged.

from __future__ import annotations

import struct

MASK64 = (1 << 64) - 1
DIGEST_SIZE = 24
BLOCK_SIZE = 64
# THEX leaf size: every leaf hashes this many bytes of the file (the last one may be shorter).
LEAF_SIZE = 1024

_INIT = (0x0123456789ABCDEF, 0xFEDCBA9876543210, 0xF096A5B4C3B2E187)
_SEED = b"Tiger - A Fast New Hash Function, by Ross Anderson and Eli Biham"
_SBOX_PASSES = 5
_WORDS = struct.Struct("<8Q")
_DIGEST = struct.Struct("<3Q")


def _passes(a: int, b: int, c: int, x: list[int], t1, t2, t3, t4) -> tuple[int, int, int]:
    """One Tiger compression of block x (eight words, modified in place) on state a, b, c."""
    aa, bb, cc = a, b, c
    for pass_no, mul in enumerate((5, 7, 9)):
        if pass_no:
            # Key schedule between passes.
            x[0] = (x[0] - (x[7] ^ 0xA5A5A5A5A5A5A5A5)) & MASK64
            x[1] ^= x[0]
            x[2] = (x[2] + x[1]) & MASK64
            x[3] = (x[3] - (x[2] ^ ((~x[1] << 19) & MASK64))) & MASK64
            x[4] ^= x[3]
            x[5] = (x[5] + x[4]) & MASK64
            x[6] = (x[6] - (x[5] ^ ((~x[4] & MASK64) >> 23))) & MASK64
            x[7] ^= x[6]
            x[0] = (x[0] + x[7]) & MASK64
            x[1] = (x[1] - (x[0] ^ ((~x[7] << 19) & MASK64))) & MASK64
            x[2] ^= x[1]
            x[3] = (x[3] + x[2]) & MASK64
            x[4] = (x[4] - (x[3] ^ ((~x[2] & MASK64) >> 23))) & MASK64
            x[5] ^= x[4]
            x[6] = (x[6] + x[5]) & MASK64
            x[7] = (x[7] - (x[6] ^ 0x0123456789ABCDEF)) & MASK64
        # Eight rounds; the registers' roles rotate (a, b, c) -> (b, c, a) after each round.
        for w in x:
            c ^= w
            a = (
                a - (t1[c & 0xFF] ^ t2[(c >> 16) & 0xFF] ^ t3[(c >> 32) & 0xFF] ^ t4[(c >> 48) & 0xFF])
            ) & MASK64
            b = (
                b + (t4[(c >> 8) & 0xFF] ^ t3[(c >> 24) & 0xFF] ^ t2[(c >> 40) & 0xFF] ^ t1[c >> 56])
            ) & MASK64
            b = (b * mul) & MASK64
            a, b, c = b, c, a
        # Eight rotations are two too many for the next pass's naming (pass 2 starts on c, a, b,
        # pass 3 on b, c, a: exactly where the rotation leaves them), so nothing to undo here.
    # After 24 rotations (a multiple of 3) the names are back in place.
    return a ^ aa, (b - bb) & MASK64, (c + cc) & MASK64


def _generate_sboxes() -> list[int]:
    """The 1024 S-box words (t1 = [0:256], t2 = [256:512], ...) by the authors' procedure."""
    table = [(i & 0xFF) * 0x0101010101010101 for i in range(1024)]
    seed = list(_WORDS.unpack(_SEED))
    state = _INIT
    abc = 2
    for _ in range(_SBOX_PASSES):
        for i in range(256):
            for sb in range(0, 1024, 256):
                abc += 1
                if abc == 3:
                    abc = 0
                    # Compressed with the boxes as generated so far, as the reference does.
                    state = _passes(
                        *state, list(seed), table[0:256], table[256:512], table[512:768], table[768:1024]
                    )
                word = state[abc]
                here = sb + i
                for col in range(8):
                    shift = 8 * col
                    mask = 0xFF << shift
                    other = sb + ((word >> shift) & 0xFF)
                    mine, theirs = table[here] & mask, table[other] & mask
                    table[here] = (table[here] & ~mask) | theirs
                    table[other] = (table[other] & ~mask) | mine
    return table


_TABLE = _generate_sboxes()
_T1, _T2, _T3, _T4 = _TABLE[0:256], _TABLE[256:512], _TABLE[512:768], _TABLE[768:1024]


def sboxes() -> tuple[int, ...]:
    """The generated S-boxes as 1024 64-bit words (t1..t4 in order); for the differential tests."""
    return tuple(_TABLE)


def tiger(data) -> bytes:
    """Tiger/192 digest (24 bytes) of a bytes-like object."""
    data = bytes(data)
    n = len(data)
    tail = data[n - n % BLOCK_SIZE :] + b"\x01"
    tail += b"\0" * ((56 - len(tail)) % BLOCK_SIZE) + struct.pack("<Q", (n * 8) & MASK64)
    a, b, c = _INIT
    t1, t2, t3, t4 = _T1, _T2, _T3, _T4
    unpack = _WORDS.unpack_from
    for off in range(0, n - n % BLOCK_SIZE, BLOCK_SIZE):
        a, b, c = _passes(a, b, c, list(unpack(data, off)), t1, t2, t3, t4)
    for off in range(0, len(tail), BLOCK_SIZE):
        a, b, c = _passes(a, b, c, list(unpack(tail, off)), t1, t2, t3, t4)
    return _DIGEST.pack(a, b, c)


def tth_leaves(data) -> bytes:
    """The Tiger-tree leaf hashes of `data` cut in 1024-byte blocks, concatenated (24 bytes each).

    Empty input gives one leaf, Tiger(0x00) (the empty file's tree). A caller hashing a file in
    pieces passes pieces that are multiples of 1024 bytes except the last.
    """
    data = bytes(data)
    if not data:
        return tiger(b"\x00")
    return b"".join(tiger(b"\x00" + data[off : off + LEAF_SIZE]) for off in range(0, len(data), LEAF_SIZE))


def tth_parents(level) -> bytes:
    """The next level up of a Tiger tree: Tiger(0x01 || left || right) per pair, an odd last node promoted.

    Raises:
        ValueError: the level is empty or not a whole number of 24-byte hashes.
    """
    level = bytes(level)
    if not level or len(level) % DIGEST_SIZE:
        raise ValueError(f"a tree level is a non-empty multiple of {DIGEST_SIZE} bytes, not {len(level)}")
    out = []
    pair = 2 * DIGEST_SIZE
    whole = len(level) - len(level) % pair
    for off in range(0, whole, pair):
        out.append(tiger(b"\x01" + level[off : off + pair]))
    if whole < len(level):
        out.append(level[whole:])
    return b"".join(out)
