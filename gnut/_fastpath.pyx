# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython hot path: message framing, the xxhash-keyed seen-GUID cache, the relay rewrite and relay core."""

# Strategy: the names, behaviour and errors are exactly those of gnut/_purepath.py (the
# differential tests hold them together); only the machinery differs.
#
# Framing (Gnutella 0.6 spec, "Message Header"): every message is a 23-byte header
#   GUID(16) | type(1) | TTL(1) | hops(1) | payload length (4, little-endian)
# followed by exactly that many payload bytes. Whole messages inside a chunk are NOT copied: each
# Message points into the received chunk (offset, length) and slices its `raw`/`payload` on first
# access. The reader holds at most ONE partial message: its first 23 bytes in a C array, then, once
# that header is checked, a bytes object of the final size that later chunks fill in place and that
# becomes the message's `raw` with no further copy. The header is checked the moment its 23 bytes
# are complete, before any payload is buffered.

cimport cython
from cpython.bytearray cimport (
    PyByteArray_AS_STRING,
    PyByteArray_CheckExact,
    PyByteArray_GET_SIZE,
    PyByteArray_Resize,
)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memset
from posix.mman cimport MADV_HUGEPAGE, madvise
from posix.stdlib cimport posix_memalign

import os

import xxhash._xxhash as _xxhash_ext

from gnut import constants
from gnut.errors import LocalProtocolError, RemoteProtocolError

cdef extern from "<dlfcn.h>" nogil:
    void *dlopen(const char *filename, int flags)
    void *dlsym(void *handle, const char *symbol)
    char *dlerror()
    int RTLD_NOW

cdef extern from *:
    """
    /* Map a 64-bit hash onto [0, n) without division (Lemire's multiply-shift "fastrange"). */
    static inline uint64_t gnut_fastrange(uint64_t h, uint64_t n) {
        return (uint64_t)(((unsigned __int128)h * n) >> 64);
    }
    """
    uint64_t gnut_fastrange(uint64_t h, uint64_t n) nogil

ctypedef uint64_t (*xxh3_seeded_fn)(const void *data, size_t length, uint64_t seed) noexcept nogil

cdef enum:
    DIST_BITS = 6  # probe distance kept in a slot; DIST_MAX means "this or more: rehash the record"
    DIST_MAX = 63
    HDR = 23  # constants.HEADER_LEN, a compile-time constant for the C header array
    GLEN = 16  # constants.GUID_LEN
    LEN_OFFSET = 19  # offset of the 4-byte little-endian payload length inside the header
# The seen cache packs (fingerprint, probe distance, ring index + 1) into 32-bit table slots; at
# 2^24 entries the index takes 25 bits and the 6-bit distance leaves a 1-bit fingerprint.
MAX_CACHE_CAPACITY = 1 << 24
# Largest seed XXH3 accepts (its seed is an unsigned 64-bit integer).
cdef object _MAX_SEED = (1 << 64) - 1

__all__ = [
    "MAX_CACHE_CAPACITY",
    "MAX_ROUTE_CAPACITY",
    "STOP_END",
    "STOP_LOCAL",
    "STOP_ROUTE",
    "FrameReader",
    "GuidCache",
    "Message",
    "RelayCore",
    "RouteMap",
    "count_frames",
    "hash_guid",
    "relay_rewrite",
    "relay_rewrite_into",
]


# --- XXH3 from the installed xxhash package ---------------------------------------------------
cdef xxh3_seeded_fn _xxh3 = NULL


cdef void _load_xxh3() except *:
    """Resolve XXH3_64bits_withSeed inside the xxhash extension module; ImportError if absent."""
    global _xxh3
    path = os.fsencode(_xxhash_ext.__file__)
    cdef void *handle = dlopen(path, RTLD_NOW)
    if handle == NULL:
        raise ImportError(f"gnut._fastpath: cannot dlopen {_xxhash_ext.__file__}: {dlerror().decode()}")
    cdef void *fn = dlsym(handle, b"XXH3_64bits_withSeed")
    if fn == NULL:
        raise ImportError(f"gnut._fastpath: {_xxhash_ext.__file__} does not export XXH3_64bits_withSeed")
    _xxh3 = <xxh3_seeded_fn>fn


_load_xxh3()


def hash_guid(guid, seed):
    """XXH3-64 of the 16 GUID bytes with the given seed (the seen cache's key hash).

    Args:
        guid: 16 bytes.
        seed: 0 .. 2^64-1.

    Returns:
        The 64-bit hash as an int.

    Raises:
        LocalProtocolError: guid is not 16 bytes or seed is out of range.
    """
    cdef bytes g = guid if PyBytes_CheckExact(guid) else bytes(guid)
    if PyBytes_GET_SIZE(g) != GLEN:
        raise LocalProtocolError(f"guid must be {GLEN} bytes, got {PyBytes_GET_SIZE(g)}")
    if not 0 <= seed <= _MAX_SEED:
        raise LocalProtocolError(f"seed {seed} is outside 0..2^64-1")
    cdef uint64_t s = seed
    return _xxh3(PyBytes_AS_STRING(g), GLEN, s)


# --- Message -----------------------------------------------------------------------------------
@cython.final
@cython.freelist(1024)  # Messages recycled without the allocator: a feed of small messages reuses them
@cython.no_gc  # holds only a bytes object, so it can never be part of a cycle: spare the collector
cdef class Message:
    """One Gnutella message: the 23-byte header fields plus the payload, and the raw bytes as received.

    A message framed from a chunk keeps a reference to that chunk until `raw` is first read.
    """

    cdef object _buf  # bytes holding the message: its own raw, or the chunk it arrived in
    cdef Py_ssize_t _off  # where the message starts in _buf
    cdef Py_ssize_t _len  # header + payload length
    cdef uint8_t _type, _ttl, _hops

    def __init__(self, raw):
        """Wrap the raw bytes of one whole message.

        Args:
            raw: the 23-byte header followed by exactly the declared payload.

        Raises:
            LocalProtocolError: raw is shorter than a header or its length disagrees with the header.
        """
        cdef bytes b = raw if PyBytes_CheckExact(raw) else bytes(raw)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
        if n < HDR:
            raise LocalProtocolError(f"message of {n} bytes is shorter than the {HDR}-byte header")
        cdef const uint8_t *h = <const uint8_t *>PyBytes_AS_STRING(b)
        cdef uint64_t declared = _read_len(h)
        if declared != <uint64_t>(n - HDR):
            raise LocalProtocolError(f"header declares a {declared}-byte payload but {n - HDR} bytes follow")
        self._buf = b
        self._off = 0
        self._len = n
        self._type = h[16]
        self._ttl = h[17]
        self._hops = h[18]

    cdef inline const char *_ptr(self):
        return PyBytes_AS_STRING(self._buf) + self._off

    @property
    def guid(self):
        """The 16-byte message GUID."""
        return PyBytes_FromStringAndSize(self._ptr(), GLEN)

    @property
    def type(self):
        """The payload descriptor (constants.MSG_*); unknown values are kept as they are."""
        return self._type

    @property
    def ttl(self):
        """Time to live as received."""
        return self._ttl

    @property
    def hops(self):
        """Hops as received."""
        return self._hops

    @property
    def payload(self):
        """The payload bytes (everything after the header)."""
        return PyBytes_FromStringAndSize(self._ptr() + HDR, self._len - HDR)

    @property
    def raw(self):
        """Header plus payload exactly as received."""
        if self._off != 0 or self._len != PyBytes_GET_SIZE(self._buf):
            self._buf = PyBytes_FromStringAndSize(self._ptr(), self._len)
            self._off = 0
        return self._buf

    def __eq__(self, other):
        if not isinstance(other, Message):
            return NotImplemented
        cdef Message o = <Message>other
        return self._len == o._len and memcmp(self._ptr(), o._ptr(), self._len) == 0

    def __hash__(self):
        return hash(self.raw)

    def __repr__(self):
        return (
            f"Message(type=0x{self._type:02x}, ttl={self._ttl}, hops={self._hops}, "
            f"guid={self.guid.hex()}, payload_len={self._len - HDR})"
        )


cdef inline uint64_t _read_len(const uint8_t *h) noexcept nogil:
    return (<uint64_t>h[LEN_OFFSET] | (<uint64_t>h[LEN_OFFSET + 1] << 8)
            | (<uint64_t>h[LEN_OFFSET + 2] << 16) | (<uint64_t>h[LEN_OFFSET + 3] << 24))


cdef inline bint _header_ok(const uint8_t *h, uint64_t max_payload, int hard_ttl) noexcept nogil:
    return _read_len(h) <= max_payload and <int>h[17] + <int>h[18] <= hard_ttl


cdef object _header_error(const uint8_t *h, uint64_t max_payload, int hard_ttl):
    """The RemoteProtocolError for a header that failed _header_ok (same text as the pure twin)."""
    cdef uint64_t length = _read_len(h)
    if length > max_payload:
        return RemoteProtocolError(f"payload length {length} exceeds limit {max_payload}")
    return RemoteProtocolError(f"ttl {h[17]} + hops {h[18]} exceeds limit {hard_ttl}")


cdef void _check_limits(object max_payload, object hard_ttl) except *:
    if not 0 <= max_payload <= 0xFFFFFFFF:
        raise LocalProtocolError(f"max_payload {max_payload} is outside 0..2^32-1")
    if not 0 <= hard_ttl <= 510:
        raise LocalProtocolError(f"hard_ttl {hard_ttl} is outside 0..510")


# --- FrameReader ------------------------------------------------------------------------------
@cython.final
cdef class FrameReader:
    """Split a byte stream into Messages, checking each header before its payload is buffered."""

    cdef uint64_t _max_payload
    cdef int _hard_ttl
    cdef uint8_t _head[HDR]  # the first bytes of a partial message whose header is incomplete
    cdef Py_ssize_t _have  # bytes of the partial message held
    cdef Py_ssize_t _need  # whole length of the partial message once its header is checked, else 0
    cdef object _partial  # bytes object of size _need being filled in place (when _need > 0)
    cdef object _error  # text of the error that poisoned the reader, or None

    def __init__(self, max_payload=constants.MAX_PAYLOAD, hard_ttl=constants.HARD_TTL_LIMIT):
        """Create a reader.

        Args:
            max_payload: largest payload accepted; a larger declared length is a protocol error.
            hard_ttl: largest TTL + hops accepted.

        Raises:
            LocalProtocolError: a limit is out of range.
        """
        _check_limits(max_payload, hard_ttl)
        self._max_payload = max_payload
        self._hard_ttl = hard_ttl
        self._have = 0
        self._need = 0
        self._partial = None
        self._error = None

    @property
    def buffered(self):
        """Bytes held for an incomplete message."""
        return self._have

    cdef int _fail(self, const uint8_t *h, list out) except -1:
        exc = _header_error(h, self._max_payload, self._hard_ttl)
        self._error = str(exc)
        self._have = 0
        self._need = 0
        self._partial = None
        exc.messages = out  # the whole messages that preceded the bad header in this chunk
        raise exc

    cdef int _start_partial(self, const uint8_t *h, const uint8_t *src, Py_ssize_t n) except -1:
        """Hold the first n bytes of a message whose checked header is h, in a bytes of final size."""
        self._need = HDR + <Py_ssize_t>_read_len(h)
        self._partial = PyBytes_FromStringAndSize(NULL, self._need)
        memcpy(PyBytes_AS_STRING(self._partial), src, n)
        self._have = n
        return 0

    def feed(self, chunk):
        """Consume a chunk of the stream.

        Args:
            chunk: the next bytes received (any length, b"" allowed).

        Returns:
            Every message completed by this chunk, in order.

        Raises:
            RemoteProtocolError: a header broke a limit (the error's ``messages`` attribute holds the
                messages that preceded it in this chunk, [] when the reader had already failed).
        """
        if self._error is not None:
            exc = RemoteProtocolError(f"frame reader already failed: {self._error}")
            exc.messages = []
            raise exc
        cdef bytes data = chunk if PyBytes_CheckExact(chunk) else bytes(chunk)
        cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t pos = 0, take, total
        cdef uint64_t max_payload = self._max_payload
        cdef int hard_ttl = self._hard_ttl
        cdef const uint8_t *h
        cdef Message m
        cdef list out = []
        if self._have:
            if self._need == 0:
                take = min(HDR - self._have, n)
                memcpy(self._head + self._have, p, take)
                self._have += take
                pos = take
                if self._have < HDR:
                    return out
                if not _header_ok(self._head, max_payload, hard_ttl):
                    self._fail(self._head, out)
                self._start_partial(self._head, self._head, HDR)
            take = min(self._need - self._have, n - pos)
            memcpy(PyBytes_AS_STRING(self._partial) + self._have, p + pos, take)
            self._have += take
            pos += take
            if self._have < self._need:
                return out
            m = Message.__new__(Message)
            m._buf = self._partial
            m._off = 0
            m._len = self._need
            h = <const uint8_t *>PyBytes_AS_STRING(self._partial)
            m._type = h[16]
            m._ttl = h[17]
            m._hops = h[18]
            out.append(m)
            self._partial = None
            self._have = 0
            self._need = 0
        while n - pos >= HDR:
            h = p + pos
            if not _header_ok(h, max_payload, hard_ttl):
                self._fail(h, out)
            total = HDR + <Py_ssize_t>_read_len(h)
            if total > n - pos:
                self._start_partial(h, h, n - pos)
                return out
            m = Message.__new__(Message)
            m._buf = data
            m._off = pos
            m._len = total
            m._type = h[16]
            m._ttl = h[17]
            m._hops = h[18]
            out.append(m)
            pos += total
        if pos < n:
            memcpy(self._head, p + pos, n - pos)
            self._have = n - pos
        return out


def count_frames(data, max_payload=constants.MAX_PAYLOAD, hard_ttl=constants.HARD_TTL_LIMIT):
    """Walk the headers of a buffer without building objects (a validator and the benchmark floor).

    Args:
        data: a buffer that starts on a message boundary.
        max_payload: as for FrameReader.
        hard_ttl: as for FrameReader.

    Returns:
        How many whole messages the buffer holds (a trailing partial message is not counted).

    Raises:
        RemoteProtocolError: a header breaks a limit.
        LocalProtocolError: a limit is out of range.
    """
    _check_limits(max_payload, hard_ttl)
    cdef bytes b = data if PyBytes_CheckExact(data) else bytes(data)
    cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(b)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b), pos = 0, count = 0
    cdef uint64_t mp = max_payload
    cdef int ht = hard_ttl
    while n - pos >= HDR:
        if not _header_ok(p + pos, mp, ht):
            raise _header_error(p + pos, mp, ht)
        pos += HDR + <Py_ssize_t>_read_len(p + pos)
        if pos > n:
            break
        count += 1
    return count


# --- relay rewrite ----------------------------------------------------------------------------
cdef bytes _relay_source(object raw, Py_ssize_t *off, Py_ssize_t *n):
    """The bytes holding raw (bytes-like or Message) and where the message lies in it, once checked."""
    cdef Message m
    cdef bytes b
    if isinstance(raw, Message):
        m = <Message>raw
        b = m._buf
        off[0] = m._off
        n[0] = m._len
    else:
        b = raw if PyBytes_CheckExact(raw) else bytes(raw)
        off[0] = 0
        n[0] = PyBytes_GET_SIZE(b)
        if n[0] < HDR:
            raise LocalProtocolError(f"message of {n[0]} bytes is shorter than the {HDR}-byte header")
        declared = _read_len(<const uint8_t *>PyBytes_AS_STRING(b))
        if declared != <uint64_t>(n[0] - HDR):
            raise LocalProtocolError(
                f"header declares a {declared}-byte payload but {n[0] - HDR} bytes follow"
            )
    cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(b) + off[0]
    if p[17] == 0:
        raise LocalProtocolError("cannot relay a message whose TTL is 0")
    if p[18] == 255:
        raise LocalProtocolError("cannot relay a message whose hops is 255")
    return b


def relay_rewrite(raw):
    """Return the message as it is relayed: TTL - 1, hops + 1, everything else unchanged.

    Args:
        raw: header plus payload of one whole message (bytes-like), or a Message.

    Returns:
        The rewritten raw bytes.

    Raises:
        LocalProtocolError: raw is not one whole message, its TTL is 0 or its hops is 255.
    """
    cdef Py_ssize_t off, n
    cdef bytes src = _relay_source(raw, &off, &n)
    out = PyBytes_FromStringAndSize(PyBytes_AS_STRING(src) + off, n)
    cdef uint8_t *q = <uint8_t *>PyBytes_AS_STRING(out)
    q[17] -= 1
    q[18] += 1
    return out


def relay_rewrite_into(out, raw):
    """Append the relayed form of raw (TTL - 1, hops + 1) to out.

    Args:
        out: the bytearray to extend.
        raw: header plus payload of one whole message (bytes-like), or a Message.

    Raises:
        TypeError: out is not a bytearray.
        LocalProtocolError: as relay_rewrite; out is left unchanged.
    """
    if not PyByteArray_CheckExact(out):
        raise TypeError(f"out must be a bytearray, not {type(out).__name__}")
    cdef Py_ssize_t off, n
    cdef bytes src = _relay_source(raw, &off, &n)
    cdef const char *p = PyBytes_AS_STRING(src) + off
    cdef Py_ssize_t start = PyByteArray_GET_SIZE(out)
    PyByteArray_Resize(out, start + n)
    cdef uint8_t *q = <uint8_t *>PyByteArray_AS_STRING(out) + start
    memcpy(q, p, n)
    q[17] -= 1
    q[18] += 1


# --- GuidCache --------------------------------------------------------------------------------
cdef enum:
    # Tables this large are 2 MiB-aligned and advised into transparent huge pages: lookups are
    # random, and with 4 KiB pages a 1M-entry cache (31 MB) misses the TLB on nearly every one.
    HUGE_PAGE = 2 * 1024 * 1024
    # A new cache holds this many entries (its capacity if smaller) and doubles when they are all
    # live: 256 entries are 8 KB, so a quiet servent or each of 100k simulated nodes pays 8 KB, not
    # the 31 MB of a full 1M-entry cache; the 12 doublings to 2^20 cost ~15 ms in all, once.
    INITIAL_ENTRIES = 256
    # Records rehashed per batch when the cache doubles: their slot prefetches are in flight together.
    REHASH_BATCH = 32
# The same number for tests and benchmarks (where the doublings happen); the pure twin has no table.
_CACHE_INITIAL_ENTRIES = INITIAL_ENTRIES

cdef extern from *:
    """
    /* Ask for the cache line at p ahead of a write (a hint: it changes no result). */
    static inline void gnut_prefetch_w(const void *p) { __builtin_prefetch(p, 1, 1); }
    """
    void gnut_prefetch_w(const void *p) nogil


cdef void *_table_alloc(size_t nbytes, bint zero) noexcept nogil:
    """Memory for a cache table, in huge pages when it is large, zeroed if asked (NULL when out of memory)."""
    cdef void *p = NULL
    if nbytes < HUGE_PAGE:
        p = malloc(nbytes)
    elif posix_memalign(&p, HUGE_PAGE, nbytes) != 0:
        p = NULL
    else:
        madvise(p, nbytes, MADV_HUGEPAGE)  # advice only: without THP the table still works
    if p != NULL and zero:
        memset(p, 0, nbytes)
    return p


# One remembered (GUID, kind): 25 bytes packed, so 1M entries fit in 25 MB of ring.
cdef packed struct Record:
    uint8_t guid[GLEN]
    double t
    uint8_t kind


@cython.final
cdef class GuidCache:
    """Remember (GUID, kind) pairs for max_age seconds, at most capacity of them, oldest evicted first.

    Eviction policy, in plain words: entries leave in the order they arrived. An entry expires
    max_age seconds after it was first recorded (seeing it again does not make it younger); when the
    cache is full, recording a new entry evicts the oldest one. If `now` goes backwards it is treated
    as equal to the latest `now` seen.

    Layout: a FIFO ring of fixed-size Records (oldest at the tail, newest at the head) and an
    open-addressing hash table of 32-bit slots (linear probing, backward-shift deletion, load at
    most 2/3). A slot holds fingerprint | probe distance | (ring index + 1), 0 meaning empty. The
    fingerprint (low hash bits) spares reading a record on most probes; the distance from the home
    bucket lets a deletion shift the cluster back without reading or rehashing the records it
    moves. The bucket is XXH3-64 of the GUID seeded with (seed ^ kind), mapped by multiply-shift.
    Expiry and eviction pop the ring's tail and delete its slot: every operation is amortised O(1).

    Growth: the ring starts at INITIAL_ENTRIES records (capacity if smaller), the table at 1.5 times
    that. When every record is live and a new one arrives, both double (the last step stops at
    capacity): the ring is unrolled oldest-first into the new one and every record is rehashed into
    the new table, O(n) once per doubling, so O(1) amortised and memory follows the live count. At
    capacity the oldest entry is evicted instead. If the memory for a doubling cannot be had, the
    cache keeps its current size for good and evicts from there: it never fails a lookup.
    """

    cdef Record *_ring
    cdef uint32_t *_slots
    cdef Py_ssize_t _capacity, _size, _tsize, _head, _count  # _size: records the ring holds now
    cdef int _ibits  # bits of (ring index + 1); the distance sits above them, the fingerprint on top
    cdef uint32_t _imask, _fmask
    cdef uint64_t _seed
    cdef double _max_age, _now
    cdef bint _grow_failed
    cdef object _seed_obj

    def __cinit__(self):
        self._ring = NULL
        self._slots = NULL

    def __init__(self, capacity, max_age, seed=None):
        """Create an empty cache (small: the ring and table grow as entries arrive).

        Args:
            capacity: most entries held, 1 .. MAX_CACHE_CAPACITY.
            max_age: seconds an entry stays (> 0).
            seed: hash seed (0 .. 2^64-1); a random per-process value when None.

        Raises:
            LocalProtocolError: an argument is out of range.
        """
        if not 1 <= capacity <= MAX_CACHE_CAPACITY:
            raise LocalProtocolError(f"capacity {capacity} is outside 1..{MAX_CACHE_CAPACITY}")
        if not max_age > 0:
            raise LocalProtocolError(f"max_age {max_age} must be positive")
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        if not 0 <= seed <= _MAX_SEED:
            raise LocalProtocolError(f"seed {seed} is outside 0..2^64-1")
        if self._ring != NULL:
            raise LocalProtocolError("GuidCache is already initialised")
        self._capacity = capacity
        self._size = min(capacity, INITIAL_ENTRIES)
        self._tsize = self._size + self._size // 2 + 1  # load factor <= 2/3, always an empty slot
        # Index bits for the final capacity: slot values keep one layout through every doubling.
        self._ibits = (<object>capacity).bit_length()
        self._imask = (1u << self._ibits) - 1
        self._fmask = ~((1u << (self._ibits + DIST_BITS)) - 1)
        self._seed = seed
        self._seed_obj = seed
        self._max_age = max_age
        self._now = float("-inf")
        self._head = 0
        self._count = 0
        self._grow_failed = False
        self._ring = <Record *>_table_alloc(sizeof(Record) * self._size, False)
        self._slots = <uint32_t *>_table_alloc(sizeof(uint32_t) * self._tsize, True)
        if self._ring == NULL or self._slots == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self._ring)
        free(self._slots)

    @property
    def seed(self):
        """The hash seed in use."""
        return self._seed_obj

    @property
    def capacity(self):
        """Most entries held."""
        return self._capacity

    @property
    def max_age(self):
        """Seconds an entry stays."""
        return self._max_age

    def __len__(self):
        return self._count

    def memory_bytes(self):
        """Bytes of the ring and the hash table allocated now (they double with the live entries)."""
        return sizeof(Record) * self._size + sizeof(uint32_t) * self._tsize

    cdef inline uint64_t _hash(self, const uint8_t *guid, uint8_t kind) noexcept nogil:
        return _xxh3(guid, GLEN, self._seed ^ kind)

    cdef inline Py_ssize_t _home(self, uint64_t h) noexcept nogil:
        return <Py_ssize_t>gnut_fastrange(h, <uint64_t>self._tsize)

    cdef inline uint32_t _fp(self, uint64_t h) noexcept nogil:
        return <uint32_t>(h << (self._ibits + DIST_BITS))

    cdef inline uint32_t _dist_bits(self, Py_ssize_t d) noexcept nogil:
        return <uint32_t>(d if d < DIST_MAX else DIST_MAX) << self._ibits

    cdef inline Py_ssize_t _dist(self, uint32_t s, Py_ssize_t j) noexcept nogil:
        """Probe distance of slot value s found at position j (rehashing its record if saturated)."""
        cdef Py_ssize_t d = (s >> self._ibits) & DIST_MAX
        cdef Record *r
        if d == DIST_MAX:
            r = &self._ring[(s & self._imask) - 1]
            d = j - self._home(self._hash(r.guid, r.kind))
            if d < 0:
                d += self._tsize
        return d

    cdef bint _grow(self) noexcept nogil:
        """Double a full ring and its table (at most to capacity), rehashing every record.

        Returns False, and changes nothing, when the memory cannot be had (then never tries again).
        """
        cdef Py_ssize_t size = self._size * 2
        if size > self._capacity:
            size = self._capacity
        cdef Py_ssize_t tsize = size + size // 2 + 1
        cdef Record *ring = <Record *>_table_alloc(sizeof(Record) * size, False)
        cdef uint32_t *slots = <uint32_t *>_table_alloc(sizeof(uint32_t) * tsize, True)
        if ring == NULL or slots == NULL:
            free(ring)
            free(slots)
            self._grow_failed = True
            return False
        # The ring is full, so its oldest record sits at the head: unroll it oldest-first from 0.
        cdef Py_ssize_t n = self._count, older = self._size - self._head
        memcpy(ring, self._ring + self._head, sizeof(Record) * older)
        memcpy(ring + older, self._ring, sizeof(Record) * self._head)
        free(self._ring)
        free(self._slots)
        self._ring = ring
        self._slots = slots
        self._size = size
        self._tsize = tsize
        self._head = n
        # Hash a batch of records and prefetch their home slots, then insert the batch: the slot
        # misses of a batch overlap instead of each waiting for the last (2^19 -> 2^20: 16 -> 7 ms).
        cdef uint64_t hs[REHASH_BATCH]
        cdef Py_ssize_t base = 0, k, m, i, home, d
        cdef Record *r
        while base < n:
            m = n - base if n - base < REHASH_BATCH else REHASH_BATCH
            for k in range(m):
                r = &ring[base + k]
                hs[k] = self._hash(r.guid, r.kind)
                gnut_prefetch_w(&slots[self._home(hs[k])])
            for k in range(m):
                home = self._home(hs[k])
                i = home
                while slots[i] != 0:
                    i += 1
                    if i == tsize:
                        i = 0
                d = i - home
                if d < 0:
                    d += tsize
                slots[i] = self._fp(hs[k]) | self._dist_bits(d) | <uint32_t>(base + k + 1)
            base += m
        return True

    cdef void _delete_tail(self) noexcept nogil:
        """Drop the oldest record: find its slot, then shift the cluster after it back."""
        cdef Py_ssize_t tail = self._head - self._count
        if tail < 0:
            tail += self._size
        cdef Record *r = &self._ring[tail]
        cdef uint32_t want = <uint32_t>(tail + 1)
        cdef Py_ssize_t i = self._home(self._hash(r.guid, r.kind))
        while (self._slots[i] & self._imask) != want:
            i += 1
            if i == self._tsize:
                i = 0
        # Backward shift: walk the cluster after the hole; an entry at distance d from its home
        # moves into the hole when the hole is no farther back than its home (gap <= d).
        cdef Py_ssize_t j = i, d, gap
        cdef uint32_t s
        while True:
            j += 1
            if j == self._tsize:
                j = 0
            s = self._slots[j]
            if s == 0:
                break
            d = self._dist(s, j)
            gap = j - i
            if gap < 0:
                gap += self._tsize
            if d < gap:
                continue
            self._slots[i] = (s & (self._fmask | self._imask)) | self._dist_bits(d - gap)
            i = j
        self._slots[i] = 0
        self._count -= 1

    cdef bint _seen(self, const uint8_t *guid, uint8_t kind, double now) noexcept nogil:
        cdef Record *r
        if now < self._now:
            now = self._now
        self._now = now
        cdef Py_ssize_t tail
        while self._count:
            tail = self._head - self._count
            if tail < 0:
                tail += self._size
            if now - self._ring[tail].t >= self._max_age:
                self._delete_tail()
            else:
                break
        cdef uint64_t h = self._hash(guid, kind)
        cdef uint32_t fp = self._fp(h)
        cdef uint32_t fmask = self._fmask
        cdef Py_ssize_t home = self._home(h)
        cdef Py_ssize_t i = home
        cdef uint32_t s
        while True:
            s = self._slots[i]
            if s == 0:
                break
            if (s & fmask) == fp:
                r = &self._ring[(s & self._imask) - 1]
                if r.kind == kind and memcmp(r.guid, guid, GLEN) == 0:
                    return True
            i += 1
            if i == self._tsize:
                i = 0
        if self._count == self._size:
            if self._size < self._capacity and not self._grow_failed and self._grow():
                home = self._home(h)  # a new table: a new home and a new first empty slot
            else:
                self._delete_tail()  # the shift may have moved entries: find the first empty slot again
            i = home
            while self._slots[i] != 0:
                i += 1
                if i == self._tsize:
                    i = 0
        r = &self._ring[self._head]
        memcpy(r.guid, guid, GLEN)
        r.t = now
        r.kind = kind
        cdef Py_ssize_t d = i - home
        if d < 0:
            d += self._tsize
        self._slots[i] = fp | self._dist_bits(d) | <uint32_t>(self._head + 1)
        self._head += 1
        if self._head == self._size:
            self._head = 0
        self._count += 1
        return False

    def seen(self, guid, int kind, double now):
        """Check and record one (guid, kind).

        Args:
            guid: 16 bytes.
            kind: 0..255 (the message type for broadcasts).
            now: current time in seconds, non-decreasing (earlier values count as the latest).

        Returns:
            True if the pair was recorded and has not expired, else False (and it is now recorded).

        Raises:
            LocalProtocolError: guid is not 16 bytes or kind is outside 0..255.
        """
        cdef bytes g = guid if PyBytes_CheckExact(guid) else bytes(guid)
        if PyBytes_GET_SIZE(g) != GLEN:
            raise LocalProtocolError(f"guid must be {GLEN} bytes, got {PyBytes_GET_SIZE(g)}")
        if kind < 0 or kind > 255:
            raise LocalProtocolError(f"kind {kind} is outside 0..255")
        return self._seen(<const uint8_t *>PyBytes_AS_STRING(g), <uint8_t>kind, now)


include "_relay.pxi"
