# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython Tiger hash (Anderson & Biham, 1996) and Tiger-tree levels; twin of gnut/_puretiger.py."""

# Strategy: names, results and errors are exactly those of gnut/_puretiger.py (the differential
# tests in tests/test_tiger.py hold them together); see that file for the algorithm notes. The
# S-boxes are generated at import by the authors' published procedure (5 passes over the seed
# string, compressing with the boxes as generated so far), never pasted from a table. Every loop
# runs without the GIL; words are read little-endian byte by byte so the result does not depend
# on the host's byte order.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy, memset

DIGEST_SIZE = 24
BLOCK_SIZE = 64
LEAF_SIZE = 1024

cdef enum:
    _DIGEST = 24
    _BLOCK = 64
    _LEAF = 1024

cdef uint64_t _table[1024]
cdef const char *_SEED = b"Tiger - A Fast New Hash Function, by Ross Anderson and Eli Biham"


cdef inline uint64_t _load64(const uint8_t *p) noexcept nogil:
    return (<uint64_t>p[0] | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16) | (<uint64_t>p[3] << 24)
            | (<uint64_t>p[4] << 32) | (<uint64_t>p[5] << 40) | (<uint64_t>p[6] << 48)
            | (<uint64_t>p[7] << 56))


cdef inline void _store64(uint8_t *p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = <uint8_t>(v >> (8 * i))


cdef inline void _round(uint64_t *a, uint64_t *b, uint64_t *c, uint64_t x, uint64_t mul) noexcept nogil:
    cdef uint64_t cc = c[0] ^ x
    c[0] = cc
    a[0] -= (_table[cc & 0xFF] ^ _table[256 + ((cc >> 16) & 0xFF)]
             ^ _table[512 + ((cc >> 32) & 0xFF)] ^ _table[768 + ((cc >> 48) & 0xFF)])
    b[0] += (_table[768 + ((cc >> 8) & 0xFF)] ^ _table[512 + ((cc >> 24) & 0xFF)]
             ^ _table[256 + ((cc >> 40) & 0xFF)] ^ _table[cc >> 56])
    b[0] *= mul


cdef inline void _pass(uint64_t *a, uint64_t *b, uint64_t *c, uint64_t *x, uint64_t mul) noexcept nogil:
    _round(a, b, c, x[0], mul)
    _round(b, c, a, x[1], mul)
    _round(c, a, b, x[2], mul)
    _round(a, b, c, x[3], mul)
    _round(b, c, a, x[4], mul)
    _round(c, a, b, x[5], mul)
    _round(a, b, c, x[6], mul)
    _round(b, c, a, x[7], mul)


cdef inline void _schedule(uint64_t *x) noexcept nogil:
    x[0] -= x[7] ^ 0xA5A5A5A5A5A5A5A5ULL
    x[1] ^= x[0]
    x[2] += x[1]
    x[3] -= x[2] ^ ((~x[1]) << 19)
    x[4] ^= x[3]
    x[5] += x[4]
    x[6] -= x[5] ^ ((~x[4]) >> 23)
    x[7] ^= x[6]
    x[0] += x[7]
    x[1] -= x[0] ^ ((~x[7]) << 19)
    x[2] ^= x[1]
    x[3] += x[2]
    x[4] -= x[3] ^ ((~x[2]) >> 23)
    x[5] ^= x[4]
    x[6] += x[5]
    x[7] -= x[6] ^ 0x0123456789ABCDEFULL


cdef void _compress_words(uint64_t *state, uint64_t *x) noexcept nogil:
    """Compress eight words (modified in place) into the three-word state."""
    cdef uint64_t a = state[0], b = state[1], c = state[2]
    _pass(&a, &b, &c, x, 5)
    _schedule(x)
    _pass(&c, &a, &b, x, 7)
    _schedule(x)
    _pass(&b, &c, &a, x, 9)
    state[0] = a ^ state[0]
    state[1] = b - state[1]
    state[2] = c + state[2]


cdef inline void _compress(uint64_t *state, const uint8_t *block) noexcept nogil:
    cdef uint64_t x[8]
    cdef int i
    for i in range(8):
        x[i] = _load64(block + 8 * i)
    _compress_words(state, x)


cdef void _tiger(const uint8_t *data, Py_ssize_t n, uint8_t *out) noexcept nogil:
    """Tiger/192 of n bytes at data into out[0:24] (original 0x01 padding)."""
    cdef uint64_t state[3]
    cdef uint8_t tail[128]
    cdef Py_ssize_t whole = n - n % _BLOCK, rest = n - whole, tail_len, off
    state[0] = 0x0123456789ABCDEFULL
    state[1] = 0xFEDCBA9876543210ULL
    state[2] = 0xF096A5B4C3B2E187ULL
    off = 0
    while off < whole:
        _compress(state, data + off)
        off += _BLOCK
    memset(tail, 0, sizeof(tail))
    if rest:
        memcpy(tail, data + whole, rest)
    tail[rest] = 0x01
    tail_len = _BLOCK if rest < 56 else 2 * _BLOCK
    _store64(tail + tail_len - 8, (<uint64_t>n) << 3)
    _compress(state, tail)
    if tail_len > _BLOCK:
        _compress(state, tail + _BLOCK)
    _store64(out, state[0])
    _store64(out + 8, state[1])
    _store64(out + 16, state[2])


cdef void _generate() noexcept nogil:
    cdef uint64_t state[3]
    cdef uint64_t seed[8]
    cdef uint64_t x[8]
    cdef int i, sb, col, abc = 2, _pass_no, here, other
    cdef uint64_t word, shift, mask, mine, theirs
    for i in range(1024):
        _table[i] = (<uint64_t>(i & 0xFF)) * 0x0101010101010101ULL
    for i in range(8):
        seed[i] = _load64(<const uint8_t *>_SEED + 8 * i)
    state[0] = 0x0123456789ABCDEFULL
    state[1] = 0xFEDCBA9876543210ULL
    state[2] = 0xF096A5B4C3B2E187ULL
    for _pass_no in range(5):
        for i in range(256):
            for sb in range(0, 1024, 256):
                abc += 1
                if abc == 3:
                    abc = 0
                    memcpy(x, seed, sizeof(x))
                    _compress_words(state, x)
                word = state[abc]
                here = sb + i
                for col in range(8):
                    shift = 8 * col
                    mask = (<uint64_t>0xFF) << shift
                    other = sb + <int>((word >> shift) & 0xFF)
                    mine = _table[here] & mask
                    theirs = _table[other] & mask
                    _table[here] = (_table[here] & ~mask) | theirs
                    _table[other] = (_table[other] & ~mask) | mine


_generate()


def sboxes():
    """The generated S-boxes as 1024 64-bit words (t1..t4 in order); for the differential tests."""
    return tuple(_table[i] for i in range(1024))


def tiger(data):
    """Tiger/192 digest (24 bytes) of a bytes-like object."""
    cdef const uint8_t[::1] view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    cdef bytes out = PyBytes_FromStringAndSize(NULL, _DIGEST)
    cdef uint8_t *o = <uint8_t *>PyBytes_AS_STRING(out)
    cdef Py_ssize_t n = view.shape[0]
    cdef const uint8_t *p = &view[0] if n else <const uint8_t *>b""
    with nogil:
        _tiger(p, n, o)
    return out


def tth_leaves(data):
    """The Tiger-tree leaf hashes of `data` cut in 1024-byte blocks, concatenated (24 bytes each).

    Empty input gives one leaf, Tiger(0x00) (the empty file's tree). A caller hashing a file in
    pieces passes pieces that are multiples of 1024 bytes except the last.
    """
    cdef const uint8_t[::1] view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    cdef Py_ssize_t n = view.shape[0]
    cdef Py_ssize_t count = (n + _LEAF - 1) // _LEAF if n else 1
    cdef bytes out = PyBytes_FromStringAndSize(NULL, count * _DIGEST)
    cdef uint8_t *o = <uint8_t *>PyBytes_AS_STRING(out)
    cdef const uint8_t *p = &view[0] if n else <const uint8_t *>b""
    cdef uint8_t block[_LEAF + 1]
    cdef Py_ssize_t k, take
    with nogil:
        block[0] = 0
        for k in range(count):
            take = n - k * _LEAF
            if take > _LEAF:
                take = _LEAF
            if take > 0:
                memcpy(block + 1, p + k * _LEAF, take)
            else:
                take = 0
            _tiger(block, take + 1, o + k * _DIGEST)
    return out


def tth_parents(level):
    """The next level up of a Tiger tree: Tiger(0x01 || left || right) per pair, an odd last node promoted.

    Raises:
        ValueError: the level is empty or not a whole number of 24-byte hashes.
    """
    cdef const uint8_t[::1] view = memoryview(level).cast("B") if not isinstance(level, bytes) else level
    cdef Py_ssize_t n = view.shape[0]
    if n == 0 or n % _DIGEST:
        raise ValueError(f"a tree level is a non-empty multiple of {_DIGEST} bytes, not {n}")
    cdef Py_ssize_t nodes = n // _DIGEST, pairs = nodes // 2
    cdef Py_ssize_t up = pairs + (nodes & 1)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, up * _DIGEST)
    cdef uint8_t *o = <uint8_t *>PyBytes_AS_STRING(out)
    cdef const uint8_t *p = &view[0]
    cdef uint8_t buf[2 * _DIGEST + 1]
    cdef Py_ssize_t k
    with nogil:
        buf[0] = 1
        for k in range(pairs):
            memcpy(buf + 1, p + 2 * k * _DIGEST, 2 * _DIGEST)
            _tiger(buf, 2 * _DIGEST + 1, o + k * _DIGEST)
        if nodes & 1:
            memcpy(o + pairs * _DIGEST, p + (nodes - 1) * _DIGEST, _DIGEST)
    return out
