# Included by _fastpath.pyx (before _relay.pxi, whose RelayCore shares it): GuidCache, the seen-GUID
# cache, xxhash-keyed, that grows with use. Same names, semantics and errors as the pure twin in
# _purepath.py.

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
    /* ... and ahead of a read. */
    static inline void gnut_prefetch_r(const void *p) { __builtin_prefetch(p, 0, 3); }
    """
    void gnut_prefetch_w(const void *p) nogil
    void gnut_prefetch_r(const void *p) nogil


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

        Returns False when the memory cannot be had: the tables stay as they were and the cache is
        marked never to try again (it evicts at its current size from then on).
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

    cdef inline void _prefetch_slot(self, uint64_t h) noexcept nogil:
        """Batched lookups, step 1: ask for the home slot of hash h (RelayCore runs it a few
        messages ahead, so the table miss overlaps the work on earlier messages)."""
        gnut_prefetch_r(&self._slots[self._home(h)])

    cdef inline void _prefetch_record(self, uint64_t h) noexcept nogil:
        """Step 2, once the slot is in cache: ask for the record it points to (a hit compares it)."""
        cdef uint32_t s = self._slots[self._home(h)]
        if s != 0:
            gnut_prefetch_r(&self._ring[(s & self._imask) - 1])

    cdef bint _seen(self, const uint8_t *guid, uint8_t kind, double now) noexcept nogil:
        return self._seen_h(guid, kind, now, self._hash(guid, kind))

    cdef bint _seen_h(self, const uint8_t *guid, uint8_t kind, double now, uint64_t h) noexcept nogil:
        """_seen with the hash already computed (h == _hash(guid, kind))."""
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
