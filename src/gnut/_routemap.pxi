# Included by _relay.pxi (after its constants): RouteMap, the reverse-route table GUID -> (peer id,
# generation, highest relay TTL, hops and hops + TTL of the copy that set it) that RelayCore and
# Router.route share for QUERYs. Same names, semantics and errors as the pure twin in _purerelay.py.
# Route takeovers follow routerules.py's rule (stated there); _takeover_verdict is its rules 1-4.

# --- RouteMap ---------------------------------------------------------------------------------
cdef packed struct RouteRec:
    uint8_t guid[GLEN]
    double t
    int32_t peer
    uint32_t gen
    int32_t prev  # insertion order (oldest first), -1 at the ends; `prev` also links free records
    int32_t next
    uint8_t ttl  # highest relay TTL forwarded for this GUID (a duplicate above it is relayed again)
    uint8_t hops  # hops of the copy that set the route (0: ours or a leaf's: never taken over)
    uint8_t span  # raw hops + TTL of that copy (the takeover consistency rule)


cdef inline int _takeover_verdict(const RouteRec *rec, int out_ttl, int hops, int span) noexcept nogil:
    """routerules.takeover_verdict: TAKEOVER_NONE, TAKEOVER_OK or TAKEOVER_REFUSED for a duplicate."""
    if out_ttl <= rec.ttl:
        return TAKEOVER_NONE_C
    if hops >= rec.hops or (span > rec.span and rec.span < SOFT_TTL):
        return TAKEOVER_REFUSED_C
    return TAKEOVER_OK_C


@cython.final
cdef class RouteMap:
    """Bounded, aged map GUID -> (peer id, peer generation, relay TTL), the C twin of routing.RouteTable.

    Eviction policy, in plain words: entries are kept in insertion order (re-putting a GUID moves it
    to the newest end). Putting evicts the oldest entries while the map is full and drops the oldest
    ones whose age reached max_age; a lookup treats an entry aged max_age or more as absent (and
    deletes it).

    Layout: records in a pool that starts small and doubles up to the capacity (memory follows use),
    chained oldest -> newest, and an open-addressing table of 64-bit slots (linear probing,
    backward-shift deletion, load at most 1/2): hash bits << 32 | (record index + 1), 0 = empty.
    The hash is XXH3-64 of the GUID with a per-map seed; its high 32 bits give the home bucket.
    """

    cdef RouteRec *_recs
    cdef uint64_t *_slots
    cdef Py_ssize_t _capacity, _pool, _used, _count
    cdef int32_t _head, _tail, _free
    cdef uint64_t _mask, _seed
    cdef double _max_age

    def __cinit__(self):
        self._recs = NULL
        self._slots = NULL

    def __init__(self, capacity, max_age, seed=None):
        """Create an empty map.

        Args:
            capacity: most entries held, 1 .. MAX_ROUTE_CAPACITY.
            max_age: seconds an entry stays valid (> 0).
            seed: hash seed (0 .. 2^64-1); random per map when None.

        Raises:
            LocalProtocolError: an argument is out of range.
        """
        if not 1 <= capacity <= MAX_ROUTE_CAPACITY or not max_age > 0:
            raise LocalProtocolError(f"bad route table bounds capacity={capacity} max_age={max_age}")
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        if not 0 <= seed <= _MAX_SEED:
            raise LocalProtocolError(f"seed {seed} is outside 0..2^64-1")
        if self._slots != NULL:
            raise LocalProtocolError("RouteMap is already initialised")
        self._capacity = capacity
        self._max_age = max_age
        self._seed = seed
        self._head = self._tail = self._free = -1
        self._pool = self._used = self._count = 0
        self._grow()

    def __dealloc__(self):
        free(self._recs)
        free(self._slots)

    @property
    def capacity(self):
        """Most entries held."""
        return self._capacity

    @property
    def max_age(self):
        """Seconds an entry stays valid."""
        return self._max_age

    def __len__(self):
        return self._count

    def memory_bytes(self):
        """Bytes of the record pool and the slot table as allocated now."""
        return sizeof(RouteRec) * self._pool + sizeof(uint64_t) * (self._mask + 1)

    cdef int _grow(self) except -1:
        """Double the record pool (up to the capacity) and rebuild the slot table for it."""
        cdef Py_ssize_t pool = ROUTE_FIRST_POOL if self._pool == 0 else 2 * self._pool
        if pool > self._capacity:
            pool = self._capacity
        cdef RouteRec *recs = <RouteRec *>realloc(self._recs, sizeof(RouteRec) * pool)
        if recs == NULL:
            raise MemoryError()
        self._recs = recs
        self._pool = pool
        cdef uint64_t size = 4
        while size < <uint64_t>(2 * pool):
            size <<= 1
        cdef uint64_t *slots = <uint64_t *>calloc(size, sizeof(uint64_t))
        if slots == NULL:
            raise MemoryError()
        free(self._slots)
        self._slots = slots
        self._mask = size - 1
        cdef int32_t r = self._head
        while r != -1:
            self._insert_slot(r, self._hash(self._recs[r].guid))
            r = self._recs[r].next
        return 0

    cdef inline uint64_t _hash(self, const uint8_t *guid) noexcept nogil:
        return _xxh3(guid, GLEN, self._seed) >> 32

    cdef inline void _insert_slot(self, int32_t r, uint64_t h) noexcept nogil:
        cdef uint64_t i = h & self._mask
        while self._slots[i] != 0:
            i = (i + 1) & self._mask
        self._slots[i] = (h << 32) | <uint64_t>(r + 1)

    cdef int64_t _find(self, const uint8_t *guid, uint64_t h) noexcept nogil:
        """Slot position of guid, or -1."""
        cdef uint64_t i = h & self._mask, s
        cdef int32_t r
        while True:
            s = self._slots[i]
            if s == 0:
                return -1
            if (s >> 32) == h:
                r = <int32_t>(<uint32_t>s) - 1
                if memcmp(self._recs[r].guid, guid, GLEN) == 0:
                    return <int64_t>i
            i = (i + 1) & self._mask

    cdef void _remove(self, int64_t pos) noexcept nogil:
        """Delete the entry in slot pos: unlink its record, free it, shift the cluster back."""
        cdef uint64_t mask = self._mask
        cdef uint64_t i = <uint64_t>pos, j = i, home, s
        cdef int32_t r = <int32_t>(<uint32_t>self._slots[i]) - 1
        cdef RouteRec *rec = &self._recs[r]
        if rec.prev == -1:
            self._head = rec.next
        else:
            self._recs[rec.prev].next = rec.next
        if rec.next == -1:
            self._tail = rec.prev
        else:
            self._recs[rec.next].prev = rec.prev
        rec.prev = self._free
        self._free = r
        self._count -= 1
        while True:
            j = (j + 1) & mask
            s = self._slots[j]
            if s == 0:
                break
            home = (s >> 32) & mask
            # The entry at j stays when its home lies cyclically in (i, j].
            if (i < j and i < home <= j) or (j < i and (home > i or home <= j)):
                continue
            self._slots[i] = s
            i = j
        self._slots[i] = 0

    cdef inline void _remove_oldest(self) noexcept nogil:
        cdef const uint8_t *g = self._recs[self._head].guid
        self._remove(self._find(g, self._hash(g)))

    cdef inline void _prefetch_slot(self, uint64_t h) noexcept nogil:
        """Batched lookups, step 1 (see GuidCache._prefetch_slot): the slot of hash h."""
        gnut_prefetch_r(&self._slots[h & self._mask])

    cdef inline void _prefetch_record(self, uint64_t h) noexcept nogil:
        """Step 2: the record the slot of hash h points to."""
        cdef uint64_t s = self._slots[h & self._mask]
        if s != 0:
            gnut_prefetch_r(&self._recs[<int32_t>(<uint32_t>s) - 1])

    cdef int _put(self, const uint8_t *guid, int32_t peer, uint32_t gen, double now, uint8_t ttl,
                  bint absent=False, uint8_t hops=0, uint8_t span=0) except -1:
        """Insert or refresh guid's entry; `absent` says a lookup just found none (skips a probe)."""
        return self._put_h(guid, peer, gen, now, ttl, absent, self._hash(guid), hops, span)

    cdef int _put_h(self, const uint8_t *guid, int32_t peer, uint32_t gen, double now, uint8_t ttl,
                    bint absent, uint64_t h, uint8_t hops=0, uint8_t span=0) except -1:
        """_put with the hash already computed (h == _hash(guid))."""
        cdef int64_t pos = -1 if absent else self._find(guid, h)
        if pos >= 0:
            self._remove(pos)
        while self._count >= self._capacity:
            self._remove_oldest()
        cdef double horizon = now - self._max_age
        while self._count and not self._recs[self._head].t > horizon:
            self._remove_oldest()
        cdef int32_t r
        if self._free != -1:
            r = self._free
            self._free = self._recs[r].prev
        else:
            if self._used == self._pool:
                self._grow()
            r = <int32_t>self._used
            self._used += 1
        cdef RouteRec *rec = &self._recs[r]
        memcpy(rec.guid, guid, GLEN)
        rec.t = now
        rec.peer = peer
        rec.gen = gen
        rec.ttl = ttl
        rec.hops = hops
        rec.span = span
        rec.next = -1
        rec.prev = self._tail
        if self._tail == -1:
            self._head = r
        else:
            self._recs[self._tail].next = r
        self._tail = r
        self._insert_slot(r, h)
        self._count += 1
        return 0

    cdef RouteRec *_get(self, const uint8_t *guid, double now) noexcept nogil:
        """The live record of guid, or NULL (an aged entry is deleted)."""
        return self._get_h(guid, now, self._hash(guid))

    cdef RouteRec *_get_h(self, const uint8_t *guid, double now, uint64_t h) noexcept nogil:
        """_get with the hash already computed (h == _hash(guid))."""
        cdef int64_t pos = self._find(guid, h)
        if pos < 0:
            return NULL
        cdef RouteRec *rec = &self._recs[<int32_t>(<uint32_t>self._slots[pos]) - 1]
        if now - rec.t >= self._max_age:
            self._remove(pos)
            return NULL
        return rec

    def put(self, guid, peer, gen, double now, ttl=0, hops=0, span=0):
        """Record that replies for `guid` go to `peer` (generation `gen`) from time `now`.

        Args:
            guid: the 16-byte GUID.
            peer, gen: the peer id (-2^31..2^31-1) and its generation (0..2^32-1).
            now: current time in seconds.
            ttl: the relay TTL the message was forwarded with (0..255; 0 = not forwarded).
            hops, span: hops and raw hops + TTL of the copy (0..255; hops 0: never taken over).

        Raises:
            LocalProtocolError: guid is not 16 bytes, or peer, gen, ttl, hops or span out of range.
        """
        cdef bytes g = _guid_bytes(guid)
        _check_route_args(peer, gen, ttl, hops, span)
        self._put(<const uint8_t *>PyBytes_AS_STRING(g), <int32_t>peer, <uint32_t>gen, now, <uint8_t>ttl,
                  False, <uint8_t>hops, <uint8_t>span)

    def get(self, guid, double now):
        """Return (peer, generation) for `guid`, or None if unknown or aged out.

        Raises:
            LocalProtocolError: guid is not 16 bytes.
        """
        cdef bytes g = _guid_bytes(guid)
        cdef RouteRec *rec = self._get(<const uint8_t *>PyBytes_AS_STRING(g), now)
        if rec == NULL:
            return None
        return rec.peer, rec.gen

    def reroute(self, guid, peer, gen, ttl, double now, hops=0, span=0, allow=True):
        """Let a duplicate copy take guid's live entry over, by routerules' takeover rule.

        Args:
            guid, peer, gen: the GUID and the duplicate's sender.
            ttl: the duplicate's relay TTL; hops, span: its hops and raw hops + TTL.
            now: current time in seconds.
            allow: False when the sender has no takeover budget left (an OK verdict is refused).

        Returns:
            TAKEOVER_NONE (0: no record, or no higher TTL), TAKEOVER_REFUSED (2), or TAKEOVER_OK (1)
            when the entry now holds `peer`, `gen`, `ttl`, `hops` and `span` (its age and place stay).

        Raises:
            LocalProtocolError: guid is not 16 bytes, or peer, gen, ttl, hops or span out of range.
        """
        cdef bytes g = _guid_bytes(guid)
        _check_route_args(peer, gen, ttl, hops, span)
        cdef RouteRec *rec = self._get(<const uint8_t *>PyBytes_AS_STRING(g), now)
        if rec == NULL:
            return TAKEOVER_NONE_C
        cdef int verdict = _takeover_verdict(rec, ttl, hops, span)
        if verdict == TAKEOVER_OK_C and not allow:
            return TAKEOVER_REFUSED_C
        if verdict == TAKEOVER_OK_C:
            _take_route(rec, peer, gen, ttl, hops, span)
        return verdict


cdef inline void _take_route(RouteRec *rec, int32_t peer, uint32_t gen, int ttl, int hops,
                             int span) noexcept nogil:
    rec.peer = peer
    rec.gen = gen
    rec.ttl = <uint8_t>ttl
    rec.hops = <uint8_t>hops
    rec.span = <uint8_t>span


cdef _check_route_args(peer, gen, ttl, hops, span):
    if not _MIN_PEER <= peer <= _MAX_PEER or not 0 <= gen <= _MAX_GEN:
        raise LocalProtocolError(f"route peer {peer} / generation {gen} out of range")
    if not 0 <= ttl <= _MAX_ROUTE_TTL:
        raise LocalProtocolError(f"route TTL {ttl} out of range 0..255")
    if not 0 <= hops <= _MAX_ROUTE_TTL or not 0 <= span <= _MAX_ROUTE_TTL:
        raise LocalProtocolError(f"route hops {hops} / span {span} out of range 0..255")


cdef bytes _guid_bytes(object guid):
    cdef bytes g = guid if PyBytes_CheckExact(guid) else bytes(guid)
    if PyBytes_GET_SIZE(g) != GLEN:
        raise LocalProtocolError(f"guid must be {GLEN} bytes, got {PyBytes_GET_SIZE(g)}")
    return g
