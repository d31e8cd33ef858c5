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


include "_guidcache.pxi"
include "_relay.pxi"
