# Included by _fastpath.pyx: the reverse-route table (RouteMap, in _routemap.pxi) and the whole-chunk
# QUERY relay (RelayCore). Same names, semantics and errors as the pure twin in _purepath.py.
#
# Strategy (DESIGN.md "The path of one QUERY", steps 2-4 in C): RelayCore.relay() walks a chunk's
# Messages and settles the common case without building a Python object per message: a QUERY from
# a relay peer (flood peer or ultrapeer), well-formed, not a duplicate, not our own, is recorded
# (seen cache + reverse route), its relayed copy (TTL clamped and decremented, hops + 1) is appended
# straight into the output bytearray of every target (subject to the same flow-control test as
# Peer.enqueue), and the counters are C integers that the Router folds into its Counters when they
# are read. Duplicates and echoes of our own queries are counted and dropped, except a duplicate
# whose relay TTL beats the highest one relayed for its GUID (kept in its reverse-route record)
# and that passes the takeover rule of routerules.py (strictly fewer hops, consistent hops + TTL,
# not ours nor a leaf's, the sender's takeover budget): that copy is relayed again to the same
# targets, not delivered locally, and the reverse route moves to its sender (routing.py,
# "Duplicates"); one that fails the rule is a counted, refused takeover and a duplicate. The walk
# stops at the first message Python must
# see (anything else: other types, leaves, odd TTLs, sizes, a duplicate resent on the link its
# route points to) and at a relayed query that may match our shares (the local filter below); the
# caller handles that one message and calls again from the next. Messages are thus handled in
# order on every link, exactly as Router.route would handle them one by one
# (tests/test_relaycore.py holds the two together).
#
# QRP (ultrapeer with leaves, last-hop filtering between ultrapeers): when a QRP table has a say in
# a query's targets, its words are hashed once in C (_query_codes: plain-ASCII text only, split and
# hashed exactly as qrp.query_words + qrp.qrp_hashcode do) and each table is a reference to the
# peer's QrpTable.slots bytearray, indexed by code >> (32 - bits). A query whose words only Python
# can find (extensions such as urn/GGEP, non-ASCII text) or a table only Python can ask goes to
# Router.route before anything is recorded.
#
# Local filter: a query can only be answered when each of its words is a prefix of a word of a
# shared name (ShareIndex.match). set_local() installs a presence table of every such prefix,
# hashed with the QRP hash; a plain-ASCII query whose word codes are not all present cannot match
# and is not handed over. Anything else that may match (non-ASCII text, extensions, no table
# installed) is handed over.

from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.pyport cimport PY_SSIZE_T_MIN
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport calloc, realloc

# Peer ids and generations live in 32-bit fields of the route records.
cdef object _MIN_PEER = -(1 << 31)
cdef object _MAX_PEER = (1 << 31) - 1
cdef object _MAX_GEN = (1 << 32) - 1
# ... and the highest relay TTL forwarded for a GUID in one byte.
cdef object _MAX_ROUTE_TTL = 255
# The route table's record index sits in 32 bits of a slot; 2^24 routes is ~1 GB of records.
MAX_ROUTE_CAPACITY = 1 << 24

cdef enum:
    ROUTE_FIRST_POOL = 64  # records allocated at first use; the pool doubles up to the capacity
    BUF_FIRST = 4096  # an output bytearray grows to at least this much at once, then doubles
    # Batched lookups in _relay: hash and prefetch slots this many messages ahead, records PF_NEAR
    # ahead (a DRAM miss takes about as long as handling 4-8 messages); the ring holds their hashes.
    PF_FAR = 8
    PF_NEAR = 4
    PF_RING = 16
    PF_MASK = PF_RING - 1
    MODE_FLOOD = 0
    MODE_ULTRAPEER = 1
    MODE_LEAF = 2
    LOCAL_ALL = 0  # no filter installed: every new query is handed over for local delivery
    LOCAL_NONE = 1  # the table is empty (nothing shared): no query can match
    LOCAL_TABLE = 2
    MSG_QUERY_T = 0x80  # constants.MSG_QUERY
    QRP_MULT = 0x4F1BBCDC  # qrp.QRP_HASH_MULTIPLIER
    QRP_MIN_WORD = 3  # qrp.QRP_MIN_WORD_LENGTH
    EXT_SEP_B = 0x1C  # messages.EXT_SEP
    HARD_TTL = 15  # constants.HARD_TTL_LIMIT
    SOFT_TTL = 7  # constants.SOFT_TTL_LIMIT
    QUERY_RELAY_MAX = 256  # constants.MAX_QUERY_RELAY
    # Codes of one query on the C stack: 256 bytes hold at most 63 words of 3+ letters and a
    # separator (below qrp.QRP_MAX_QUERY_HASHES = 128, so Python never caps what C hashes).
    QUERY_WORDS_MAX = 65
    NW_UNKNOWN = -2  # a query's codes not computed yet
    QRP_NONE = 0  # the peer sent no QRP table
    QRP_TABLE = 1  # a table the core reads (QrpTable.slots)
    QRP_OPAQUE = 2  # a matcher only Python can ask: Router.route decides when it has a say
    TAKEOVER_NONE_C = 0  # routerules.TAKEOVER_NONE
    TAKEOVER_OK_C = 1  # routerules.TAKEOVER_OK
    TAKEOVER_REFUSED_C = 2  # routerules.TAKEOVER_REFUSED
    TAKEOVER_BURST = 8  # constants.ROUTE_TAKEOVER_BURST
    TAKEOVERS_PER_MINUTE = 12  # constants.ROUTE_TAKEOVERS_PER_MINUTE

# What relay() stopped on: the end of the chunk, a message for Router.route, a relayed query for
# local delivery only.
STOP_END = 0
STOP_ROUTE = 1
STOP_LOCAL = 2
_MODES = {"flood": MODE_FLOOD, "ultrapeer": MODE_ULTRAPEER, "leaf": MODE_LEAF}
if (constants.HARD_TTL_LIMIT, constants.SOFT_TTL_LIMIT, constants.MAX_QUERY_RELAY, constants.MSG_QUERY,
        constants.ROUTE_TAKEOVER_BURST, constants.ROUTE_TAKEOVERS_PER_MINUTE) != (
        HARD_TTL, SOFT_TTL, QUERY_RELAY_MAX, MSG_QUERY_T, TAKEOVER_BURST, TAKEOVERS_PER_MINUTE):
    raise ImportError("gnut._fastpath: relay constants disagree with gnut.constants (rebuild)")


include "_routemap.pxi"


# --- RelayCore --------------------------------------------------------------------------------
cdef inline bint _ascii_alnum(uint8_t c) noexcept nogil:
    return (c >= 0x30 and c <= 0x39) or (c >= 0x61 and c <= 0x7A) or (c >= 0x41 and c <= 0x5A)


cdef Py_ssize_t _query_codes(const uint8_t *p, Py_ssize_t n, uint32_t *codes) noexcept nogil:
    """The qrp.qrp_hashcode of each routed word of a plain-ASCII QUERY payload (3 <= n <= 256), in order.

    Returns the number of codes written (at most QUERY_WORDS_MAX), or -1 when only Python can say
    what the words are: extensions follow the text (the last byte is not its NUL), a NUL inside,
    non-ASCII text or an 0x1C separator. Words split as qrp.query_words splits ASCII text: maximal
    runs of letters and digits, lower-cased, QRP_MIN_WORD bytes or more; each is hashed as it is
    read (XOR of 4-byte little-endian groups times QRP_MULT).
    """
    if p[n - 1] != 0:
        return -1
    cdef Py_ssize_t i, end = n - 1, nw = 0, length
    cdef uint32_t x
    cdef uint8_t c
    for i in range(2, end):
        c = p[i]
        if c == 0 or c >= 0x80 or c == EXT_SEP_B:
            return -1
    i = 2
    while i < end:
        if not _ascii_alnum(p[i]):
            i += 1
            continue
        x = 0
        length = 0
        while i < end and _ascii_alnum(p[i]):
            c = p[i]
            if c <= 0x5A and c >= 0x41:
                c += 0x20
            x ^= <uint32_t>c << (8 * (length & 3))
            length += 1
            i += 1
        if length >= QRP_MIN_WORD:
            codes[nw] = x * <uint32_t>QRP_MULT
            nw += 1
    return nw


cdef inline bint _codes_match(const uint8_t *table, int shift, const uint32_t *codes,
                              Py_ssize_t nw) noexcept nogil:
    """QrpTable.matches_hashes for a query of words only: every word's slot present (no word: no match)."""
    cdef Py_ssize_t j
    if nw <= 0:
        return False
    for j in range(nw):
        if not table[codes[j] >> shift]:
            return False
    return True


def query_codes(payload):
    """Return the QRP hash codes RelayCore routes a QUERY payload on, or None when Python must parse it.

    Args:
        payload: a QUERY payload of 3..MAX_QUERY_RELAY bytes.

    Returns:
        A tuple of 32-bit codes, one per routed word in text order (duplicates kept), or None for
        a payload with extensions, a NUL inside, non-ASCII text or an 0x1C separator.

    Raises:
        LocalProtocolError: the payload is shorter than 3 or longer than MAX_QUERY_RELAY bytes.
    """
    cdef bytes b = bytes(payload)
    cdef Py_ssize_t n = len(b)
    cdef uint32_t codes[QUERY_WORDS_MAX]
    if not 3 <= n <= QUERY_RELAY_MAX:
        raise LocalProtocolError(f"a relayed QUERY payload has 3..{QUERY_RELAY_MAX} bytes, not {n}")
    cdef Py_ssize_t nw = _query_codes(<const uint8_t *>PyBytes_AS_STRING(b), n, codes)
    if nw < 0:
        return None
    return tuple(codes[j] for j in range(nw))


@cython.final
cdef class RelayCore:
    """The whole-chunk QUERY relay of one Router: seen cache, query reverse routes, targets in C.

    Every live peer has a slot (relay peers and leaves, in the order they were added); a peer's QRP
    table is held by reference to its QrpTable.slots bytearray (1 byte per slot, 2**bits slots),
    so tables patched in place are seen at the next relay() call. Target rules are Router's
    _select_targets: relay peers get every query but the sender's own, on the last hop (ultrapeer
    mode, TTL 1 out) only when their table matches or they sent none; leaves only when their table
    matches; a query spent here (ultrapeer mode) goes to matching leaves with TTL 1. A table the
    core cannot read (an opaque matcher) hands every query it would be consulted for to Python.

    Counters (received, forwarded, local queries, duplicates, own echoes, flow-control drops, QRP
    skips, duplicates relayed again for a higher TTL (route takeovers), refused takeovers) are kept in C
    and handed over, and zeroed, by
    take_counts(); per-chunk figures for the runtime (copies appended and shed per slot, duplicates,
    queries not handed over) by end_chunk().
    """

    cdef GuidCache _seen
    cdef RouteMap _routes
    cdef int _mode
    cdef dict _peers  # peer id -> [generation, is relay peer, QRP kind, slots bytearray or None, bits, slot,
    #                              takeover tokens, time of the last takeover or None]
    cdef list _ids  # per slot: the peer id (a removed slot is refilled by the last one)
    cdef list _tables  # per slot: the peer's QRP slots bytearray, or None
    cdef int64_t *_rid
    cdef Py_ssize_t *_base  # per slot, from its first touch this call: queued bytes beside the bytearray
    cdef Py_ssize_t *_size  # per slot, from its first touch this call: bytes written in its bytearray
    cdef uint32_t *_touch  # per slot: the call (epoch) that last read its base and size
    cdef uint32_t _epoch
    cdef Py_ssize_t *_tlist  # slots touched this call (their bytearrays get their length back)
    cdef Py_ssize_t _ntouch
    cdef Py_ssize_t *_clist  # slots written or shed this chunk (end_chunk's rows)
    cdef Py_ssize_t _nchunk
    cdef Py_ssize_t *_cand  # slots that may get copies: relay peers, and leaves with a table
    cdef Py_ssize_t *_cpos  # per slot: its index in _cand, or -1
    cdef Py_ssize_t _ncand
    cdef Py_ssize_t *_tabs  # slots whose table the core reads (QRP_TABLE)
    cdef Py_ssize_t *_tpos  # per slot: its index in _tabs, or -1
    cdef Py_ssize_t _ntabs
    cdef uint32_t *_app
    cdef uint32_t *_shed
    cdef uint8_t *_filled
    cdef uint8_t *_leaf  # per slot: the peer is a leaf
    cdef uint8_t *_qkind  # per slot: QRP_NONE / QRP_TABLE / QRP_OPAQUE
    cdef uint8_t *_qshift  # per slot: 32 - table bits
    cdef const uint8_t **_qtab  # per slot, this call: the table's bytes (NULL when unreadable)
    cdef Py_ssize_t _nslots, _alloc
    cdef Py_ssize_t _leaf_qrp, _relay_qrp, _leaf_opaque, _relay_opaque
    cdef Py_ssize_t _op_leaf, _op_relay  # this call: tables consulted that the core cannot read
    cdef int _local_mode, _local_shift
    cdef bytes _local_table
    cdef const uint8_t *_local_ptr  # points into _local_table
    cdef uint64_t _n_received, _n_forwarded, _n_local, _n_dup, _n_own, _n_flow, _n_skips, _n_dup_ttl
    cdef uint64_t _n_refused
    cdef uint64_t _c_sent, _c_dups, _c_unseen

    def __cinit__(self):
        self._rid = NULL
        self._base = NULL
        self._size = NULL
        self._touch = NULL
        self._tlist = NULL
        self._clist = NULL
        self._cand = NULL
        self._cpos = NULL
        self._tabs = NULL
        self._tpos = NULL
        self._app = NULL
        self._shed = NULL
        self._filled = NULL
        self._leaf = NULL
        self._qkind = NULL
        self._qshift = NULL
        self._qtab = NULL

    def __init__(self, mode, GuidCache seen not None, RouteMap routes not None):
        """Create a core over the Router's seen cache and QUERY reverse-route table.

        Args:
            mode: "flood", "ultrapeer" or "leaf" (a leaf never relays: relay() hands everything over).
            seen: the duplicate cache, shared with Router.route.
            routes: the QUERY reverse routes, shared with Router.route.

        Raises:
            LocalProtocolError: unknown mode.
        """
        if mode not in _MODES:
            raise LocalProtocolError(f"unknown router mode {mode!r}")
        self._mode = _MODES[mode]
        self._seen = seen
        self._routes = routes
        self._peers = {}
        self._ids = []
        self._tables = []
        self._nslots = self._alloc = 0
        self._ntouch = self._nchunk = self._ncand = self._ntabs = 0
        self._epoch = 1
        self._leaf_qrp = self._relay_qrp = self._leaf_opaque = self._relay_opaque = 0
        self._local_mode = LOCAL_ALL
        self._local_table = b""
        self._local_shift = 32

    def __dealloc__(self):
        free(self._rid)
        free(self._base)
        free(self._size)
        free(self._touch)
        free(self._tlist)
        free(self._clist)
        free(self._cand)
        free(self._cpos)
        free(self._tabs)
        free(self._tpos)
        free(self._app)
        free(self._shed)
        free(self._filled)
        free(self._leaf)
        free(self._qkind)
        free(self._qshift)
        free(<void *>self._qtab)

    @property
    def active(self):
        """Whether relay() can settle anything (False in leaf mode)."""
        return self._mode != MODE_LEAF

    @property
    def slot_ids(self):
        """Every peer's id in slot order (relay peers and leaves): relay()'s `bufs` and `bases` follow it.

        A new peer takes the next slot; a removed peer's slot is taken by the last one (so a link
        change costs O(1), and the caller's per-slot lists follow with the same two moves).
        """
        return tuple(self._ids)

    # --- peers -------------------------------------------------------------------------
    def add_peer(self, peer_id, gen, relay):
        """Register a live peer (its generation tells reused ids apart); `relay` False for a leaf.

        Raises:
            LocalProtocolError: peer_id already registered or out of range, gen out of range.
        """
        if peer_id in self._peers:
            raise LocalProtocolError(f"peer {peer_id} already registered")
        if not 0 <= peer_id <= _MAX_PEER or not 0 <= gen <= _MAX_GEN:
            raise LocalProtocolError(f"peer {peer_id} / generation {gen} out of range")
        cdef Py_ssize_t k = self._nslots
        self._grow(k + 1)
        st = [gen, bool(relay), QRP_NONE, None, 0, k, float(TAKEOVER_BURST), None]
        self._peers[peer_id] = st
        self._ids.append(peer_id)
        self._tables.append(None)
        self._rid[k] = peer_id
        self._touch[k] = 0
        self._app[k] = self._shed[k] = 0
        self._filled[k] = 0
        self._cpos[k] = self._tpos[k] = -1
        self._nslots = k + 1
        self._slot_qrp(k, st)
        return k

    def remove_peer(self, peer_id):
        """Forget a peer (unknown ids are ignored).

        Returns:
            (slot, moved): the slot it held and the id of the peer moved into it from the last slot
            (-1 when it held the last slot itself); None for an unknown id.
        """
        st = self._peers.pop(peer_id, None)
        if st is None:
            return None
        self._count_qrp(st, -1)
        cdef Py_ssize_t k = st[5], last = self._nslots - 1
        self._cand_del(k)
        self._tab_del(k)
        if self._app[k] or self._shed[k]:  # drop its row from this chunk's figures
            self._chunk_del(k)
            self._app[k] = self._shed[k] = 0
            self._filled[k] = 0
        moved = -1
        if k != last:
            moved = self._ids[last]
            mst = self._peers[moved]
            self._cand_del(last)
            self._tab_del(last)
            if self._app[last] or self._shed[last]:  # its row of this chunk moves with it
                self._chunk_move(last, k)
            self._ids[k] = moved
            self._tables[k] = self._tables[last]
            self._rid[k] = self._rid[last]
            self._touch[k] = 0
            self._app[k] = self._app[last]
            self._shed[k] = self._shed[last]
            self._filled[k] = self._filled[last]
            mst[5] = k
            self._slot_qrp(k, mst)
        self._ids.pop()
        self._tables.pop()
        self._nslots = last
        return (k, moved)

    def set_qrp(self, peer_id, has_table, slots=None, bits=0):
        """Install, replace or clear a peer's QRP table.

        Args:
            peer_id: a registered peer.
            has_table: False clears the table (the peer sent none).
            slots: the table's presence bytes (QrpTable.slots: a bytearray of 2**bits bytes, non-zero
                = present), held by reference; None with has_table True installs a table the core
                cannot read, and every query it would be consulted for goes to Router.route.
            bits: log2 of the table size, 1..32 (with slots).

        Raises:
            LocalProtocolError: unknown peer; slots not a bytearray of 2**bits bytes, or given
                with has_table False.
        """
        st = self._peers.get(peer_id)
        if st is None:
            raise LocalProtocolError(f"set_qrp on unknown peer {peer_id}")
        if slots is not None:
            if not has_table:
                raise LocalProtocolError("set_qrp: slots given for a peer without a table")
            if not PyByteArray_CheckExact(slots) or not 1 <= bits <= 32 or len(slots) != 1 << bits:
                raise LocalProtocolError(f"QRP slots must be a bytearray of 2**bits bytes (bits {bits})")
        self._count_qrp(st, -1)
        st[2] = QRP_NONE if not has_table else QRP_OPAQUE if slots is None else QRP_TABLE
        st[3] = slots
        st[4] = bits if slots is not None else 0
        self._count_qrp(st, 1)
        self._slot_qrp(st[5], st)

    cdef _count_qrp(self, list st, int d):
        if st[2] == QRP_NONE:
            return
        if st[1]:
            self._relay_qrp += d
            if st[2] == QRP_OPAQUE:
                self._relay_opaque += d
        else:
            self._leaf_qrp += d
            if st[2] == QRP_OPAQUE:
                self._leaf_opaque += d

    cdef _slot_qrp(self, Py_ssize_t k, list st):
        """Copy a peer's role and table into slot k and keep the candidate and table lists right."""
        self._leaf[k] = not st[1]
        self._qkind[k] = st[2]
        self._qshift[k] = 32 - st[4] if st[2] == QRP_TABLE else 0
        self._qtab[k] = NULL
        self._tables[k] = st[3]
        if st[1] or st[2] != QRP_NONE:  # a leaf without a table gets nothing: not a candidate
            self._cand_add(k)
        else:
            self._cand_del(k)
        if st[2] == QRP_TABLE:
            self._tab_add(k)
        else:
            self._tab_del(k)

    cdef _grow(self, Py_ssize_t n):
        cdef Py_ssize_t size
        if n <= self._alloc:
            return
        size = max(n, 2 * self._alloc, 8)
        self._rid = <int64_t *>_grow_array(self._rid, size * sizeof(int64_t))
        self._base = <Py_ssize_t *>_grow_array(self._base, size * sizeof(Py_ssize_t))
        self._size = <Py_ssize_t *>_grow_array(self._size, size * sizeof(Py_ssize_t))
        self._touch = <uint32_t *>_grow_array(self._touch, size * sizeof(uint32_t))
        self._tlist = <Py_ssize_t *>_grow_array(self._tlist, size * sizeof(Py_ssize_t))
        self._clist = <Py_ssize_t *>_grow_array(self._clist, size * sizeof(Py_ssize_t))
        self._cand = <Py_ssize_t *>_grow_array(self._cand, size * sizeof(Py_ssize_t))
        self._cpos = <Py_ssize_t *>_grow_array(self._cpos, size * sizeof(Py_ssize_t))
        self._tabs = <Py_ssize_t *>_grow_array(self._tabs, size * sizeof(Py_ssize_t))
        self._tpos = <Py_ssize_t *>_grow_array(self._tpos, size * sizeof(Py_ssize_t))
        self._app = <uint32_t *>_grow_array(self._app, size * sizeof(uint32_t))
        self._shed = <uint32_t *>_grow_array(self._shed, size * sizeof(uint32_t))
        self._filled = <uint8_t *>_grow_array(self._filled, size * sizeof(uint8_t))
        self._leaf = <uint8_t *>_grow_array(self._leaf, size * sizeof(uint8_t))
        self._qkind = <uint8_t *>_grow_array(self._qkind, size * sizeof(uint8_t))
        self._qshift = <uint8_t *>_grow_array(self._qshift, size * sizeof(uint8_t))
        self._qtab = <const uint8_t **>_grow_array(<void *>self._qtab, size * sizeof(uint8_t *))
        self._alloc = size

    cdef inline void _cand_add(self, Py_ssize_t k) noexcept:
        if self._cpos[k] < 0:
            self._cpos[k] = self._ncand
            self._cand[self._ncand] = k
            self._ncand += 1

    cdef inline void _cand_del(self, Py_ssize_t k) noexcept:
        cdef Py_ssize_t j = self._cpos[k], t
        if j < 0:
            return
        self._ncand -= 1
        t = self._cand[self._ncand]
        self._cand[j] = t
        self._cpos[t] = j
        self._cpos[k] = -1

    cdef inline void _tab_add(self, Py_ssize_t k) noexcept:
        if self._tpos[k] < 0:
            self._tpos[k] = self._ntabs
            self._tabs[self._ntabs] = k
            self._ntabs += 1

    cdef inline void _tab_del(self, Py_ssize_t k) noexcept:
        cdef Py_ssize_t j = self._tpos[k], t
        if j < 0:
            return
        self._ntabs -= 1
        t = self._tabs[self._ntabs]
        self._tabs[j] = t
        self._tpos[t] = j
        self._tpos[k] = -1

    cdef void _chunk_move(self, Py_ssize_t old, Py_ssize_t new) noexcept:
        cdef Py_ssize_t j
        for j in range(self._nchunk):
            if self._clist[j] == old:
                self._clist[j] = new
                return

    cdef void _chunk_del(self, Py_ssize_t k) noexcept:
        cdef Py_ssize_t j
        for j in range(self._nchunk):
            if self._clist[j] == k:
                self._nchunk -= 1
                self._clist[j] = self._clist[self._nchunk]
                return

    # --- local filter --------------------------------------------------------------------
    def set_local(self, table, bits=0):
        """Install the local filter: a presence table of the QRP hashes of every shared-word prefix.

        Args:
            table: bytes-like of 2**bits presence bytes (non-zero = present), or None to hand
                every new query over for local delivery (no filter).
            bits: log2 of the table size, 1..32.

        Raises:
            LocalProtocolError: bits out of range or the table's size is not 2**bits.
        """
        if table is None:
            self._local_mode = LOCAL_ALL
            self._local_table = b""
            return
        t = bytes(table)
        if not 1 <= bits <= 32 or len(t) != 1 << bits:
            raise LocalProtocolError(f"local table must hold 2**bits bytes (bits {bits}, got {len(t)})")
        self._local_table = t
        self._local_ptr = <const uint8_t *>PyBytes_AS_STRING(t)
        self._local_shift = 32 - bits
        self._local_mode = LOCAL_TABLE if t.count(0) != len(t) else LOCAL_NONE

    cdef bint _may_match(self, const uint8_t *p, Py_ssize_t n, uint32_t *codes, Py_ssize_t nw) noexcept nogil:
        """Whether a QUERY payload (3..256 bytes) may match our shares (True = hand it over).

        `nw` is the number of its codes already in `codes`, or NW_UNKNOWN.
        """
        if self._local_mode == LOCAL_ALL:
            return True
        if self._local_mode == LOCAL_NONE:
            return False
        if nw == NW_UNKNOWN:
            nw = _query_codes(p, n, codes)
        if nw < 0:
            return True  # extensions, non-ASCII text, ...: Python decodes it
        cdef Py_ssize_t j
        for j in range(nw):
            if not self._local_ptr[codes[j] >> self._local_shift]:
                return False
        return nw > 0  # no word at all matches nothing

    # --- the chunk -----------------------------------------------------------------------
    def relay(self, int peer_id, list msgs not None, Py_ssize_t start, double now,
              list bufs not None, list bases not None, Py_ssize_t low_water, Py_ssize_t high_water):
        """Settle the messages of a chunk from `start` on, up to the first one Python must see.

        Args:
            peer_id: the live peer the chunk came from.
            msgs: the chunk's Messages (FrameReader output).
            start: index of the first message to handle.
            now: current time in seconds (monotonic).
            bufs: one output bytearray per slot (slot_ids order); the sender's is never written.
            bases: per slot, the bytes queued beside its bytearray (transport buffer) for the
                flow-control test, -1 for a closed peer (every copy a FLOW_CONTROL drop), -2 for
                a peer with no link (nothing counted).
            low_water, high_water: peer.LOW_WATER / HIGH_WATER: a copy is shed when queued bytes
                exceed high_water, or low_water for a query that already made 2+ hops.

        Returns:
            (index, kind): STOP_END with index len(msgs) when every message was settled;
            STOP_ROUTE when msgs[index] is untouched and goes to Router.route; STOP_LOCAL when
            msgs[index] was relayed and only its local delivery is left. Continue from index + 1.

        Raises:
            LocalProtocolError: bufs / bases do not match slot_ids, or an item of bufs is not a bytearray.
        """
        # Strategy: nothing here walks every slot. A slot's buffer and base are read when a copy
        # first goes to it in this call (an epoch per slot says whether it was), its table pointer
        # is refreshed over the slots that have tables only, and only the slots touched get their
        # bytearray's length back at the end: a chunk costs O(its messages x their targets), not
        # O(links), so thousands of quiet links cost nothing per chunk.
        cdef Py_ssize_t n = PyList_GET_SIZE(msgs), ns = self._nslots, i = start, j, k
        if PyList_GET_SIZE(bufs) != ns or PyList_GET_SIZE(bases) != ns:
            raise LocalProtocolError(f"relay() needs {ns} output buffers and bases")
        st = self._peers.get(peer_id)
        if i >= n:
            return n, STOP_END
        if st is None or not st[1] or self._mode == MODE_LEAF:
            return i, STOP_ROUTE
        self._epoch += 1
        if self._epoch == 0:  # wrapped: no slot may look touched
            memset(self._touch, 0, self._alloc * sizeof(uint32_t))
            self._epoch = 1
        self._ntouch = 0
        self._load_tables()
        try:
            i = self._relay(peer_id, <uint32_t>st[0], st, msgs, i, now, bufs, bases, low_water, high_water)
        finally:
            # Buffers grow ahead in doubling steps: give each back its written length (a shrink by
            # less than half keeps the allocation, so the next call appends without a realloc).
            for j in range(self._ntouch):
                k = self._tlist[j]
                buf = <object>PyList_GET_ITEM(bufs, k)
                if PyByteArray_GET_SIZE(buf) != self._size[k]:
                    PyByteArray_Resize(buf, self._size[k])
        if i < 0:
            return -i - 1, STOP_LOCAL
        if i < n:
            return i, STOP_ROUTE
        return n, STOP_END

    cdef _load_tables(self):
        """Point at each table's bytes for this call; a table resized since set_qrp counts as unreadable."""
        cdef Py_ssize_t j, k
        self._op_leaf = self._leaf_opaque
        self._op_relay = self._relay_opaque
        for j in range(self._ntabs):
            k = self._tabs[j]
            self._qtab[k] = NULL
            t = self._tables[k]
            if PyByteArray_GET_SIZE(t) == (<Py_ssize_t>1) << (32 - self._qshift[k]):
                self._qtab[k] = <const uint8_t *>PyByteArray_AS_STRING(t)
            elif self._leaf[k]:
                self._op_leaf += 1
            else:
                self._op_relay += 1

    cdef bint _spend_takeover(self, list st, double now) except -1:
        """Rule 5 of routerules' takeover rule: spend one token of the sender's bucket (False: none left)."""
        cdef double tokens = st[6]
        if st[7] is not None:
            tokens = tokens + (now - <double>st[7]) * TAKEOVERS_PER_MINUTE / 60.0
            if tokens > TAKEOVER_BURST:
                tokens = TAKEOVER_BURST
        st[7] = now
        if tokens < 1.0:
            st[6] = tokens
            return False
        st[6] = tokens - 1.0
        return True

    cdef int _take_over(self, RouteRec *route, int peer_id, list st, int out_ttl, int hops, int span,
                        double now) except -1:
        """The takeover rule for a duplicate against its live route record: take it (counted) or refuse."""
        cdef int verdict = _takeover_verdict(route, out_ttl, hops, span)
        if verdict == TAKEOVER_OK_C and not self._spend_takeover(st, now):
            verdict = TAKEOVER_REFUSED_C
        if verdict == TAKEOVER_OK_C:
            _take_route(route, peer_id, <uint32_t>st[0], out_ttl, hops, span)
            self._n_dup_ttl += 1
        elif verdict == TAKEOVER_REFUSED_C:
            self._n_refused += 1
        return verdict

    def take_over(self, guid, peer_id, out_ttl, hops, span, double now):
        """Apply the takeover rule to a duplicate QUERY Router.route handles (counted as in relay()).

        Args:
            guid: the query's GUID; peer_id: its live sender.
            out_ttl: the duplicate's relay TTL; hops, span: its hops and raw hops + TTL (0..255).
            now: current time in seconds.

        Returns:
            0 (TAKEOVER_NONE: no live record or no higher TTL), 1 (TAKEOVER_OK: the route is now
            the sender's) or 2 (TAKEOVER_REFUSED).

        Raises:
            LocalProtocolError: unknown peer, guid not 16 bytes, or a value out of range.
        """
        st = self._peers.get(peer_id)
        if st is None:
            raise LocalProtocolError(f"take_over from unknown peer {peer_id}")
        cdef bytes g = _guid_bytes(guid)
        _check_route_args(peer_id, st[0], out_ttl, hops, span)
        cdef RouteRec *route = self._routes._get(<const uint8_t *>PyBytes_AS_STRING(g), now)
        if route == NULL:
            return TAKEOVER_NONE_C
        return self._take_over(route, peer_id, st, out_ttl, hops, span, now)

    cdef Py_ssize_t _relay(self, int peer_id, uint32_t gen, list st, list msgs, Py_ssize_t i, double now,
                           list bufs, list bases, Py_ssize_t low_water,
                           Py_ssize_t high_water) except? PY_SSIZE_T_MIN:
        """relay()'s loop: the index it stopped at (STOP_ROUTE, or n at the end), -index-1 for STOP_LOCAL."""
        cdef Py_ssize_t n = PyList_GET_SIZE(msgs), plen, nw
        cdef bint up = self._mode == MODE_ULTRAPEER
        cdef object obj
        cdef Message m
        cdef const uint8_t *h
        cdef int ttl, hops, eff, out_ttl
        cdef RouteRec *route
        cdef bint last, leaves_only
        cdef uint32_t codes[QUERY_WORDS_MAX]
        # Batched lookups: the GUIDs PF_FAR messages ahead are hashed and their seen-cache and
        # route-table slots prefetched; PF_NEAR ahead, the records those slots point to. By the
        # time a message is handled, both its lookups are (mostly) cache hits instead of DRAM misses.
        cdef uint64_t pf_seen[PF_RING]
        cdef uint64_t pf_route[PF_RING]
        cdef Py_ssize_t pf_idx[PF_RING]
        cdef Py_ssize_t j, jend
        cdef uint64_t hseen, hroute
        for j in range(PF_RING):
            pf_idx[j] = -1
        jend = i + PF_FAR if i + PF_FAR < n else n
        for j in range(i, jend):
            self._prefetch1(msgs, j, pf_seen, pf_route, pf_idx)
        while i < n:
            j = i + PF_FAR
            if j < n:
                self._prefetch1(msgs, j, pf_seen, pf_route, pf_idx)
            j = i + PF_NEAR
            if j < n and pf_idx[j & PF_MASK] == j:
                self._seen._prefetch_record(pf_seen[j & PF_MASK])
                self._routes._prefetch_record(pf_route[j & PF_MASK])
            obj = <object>PyList_GET_ITEM(msgs, i)
            if type(obj) is not Message:
                return i
            m = <Message>obj
            plen = m._len - HDR
            ttl = m._ttl
            hops = m._hops
            if (m._type != MSG_QUERY_T or ttl == 0 or ttl + hops > HARD_TTL
                    or plen > QUERY_RELAY_MAX or plen < 3):
                return i
            eff = SOFT_TTL - hops
            if ttl < eff:
                eff = ttl
            out_ttl = eff - 1 if eff >= 2 else 0
            last = up and out_ttl == 1
            h = <const uint8_t *>m._ptr()
            nw = NW_UNKNOWN
            if self._leaf_qrp or (last and self._relay_qrp):
                # QRP tables choose the targets: hash the words before anything is recorded, or
                # leave the whole message to Router.route.
                if self._op_leaf or (last and self._op_relay):
                    return i
                nw = _query_codes(h + HDR, plen, codes)
                if nw < 0:
                    return i
            if pf_idx[i & PF_MASK] == i:
                hseen = pf_seen[i & PF_MASK]
                hroute = pf_route[i & PF_MASK]
            else:
                hseen = self._seen._hash(h, MSG_QUERY_T)
                hroute = self._routes._hash(h)
            route = self._routes._get_h(h, now, hroute)
            if route != NULL:
                if route.peer == -1:  # routing.LOCAL_PEER: our own query came back
                    self._n_received += 1
                    self._n_own += 1
                    i += 1
                    continue
                if route.peer == peer_id and route.gen == gen:
                    return i  # resent on its own link: the node watches for replayers
            if self._seen._seen_h(h, MSG_QUERY_T, now, hseen):
                self._n_received += 1
                if route != NULL and self._take_over(route, peer_id, st, out_ttl, hops, ttl + hops,
                                                     now) == TAKEOVER_OK_C:
                    # A duplicate that may have come a shorter way (routerules' takeover rule):
                    # relayed again, not handled again, and replies now go back its way.
                    self._emit(peer_id, m, out_ttl, hops, last, False, codes, nw, bufs, bases,
                               low_water, high_water)
                    i += 1
                    continue
                self._n_dup += 1
                self._c_dups += 1
                i += 1
                continue
            self._n_received += 1
            self._n_local += 1
            self._routes._put_h(h, peer_id, gen, now, <uint8_t>out_ttl, route == NULL, hroute, <uint8_t>hops,
                                <uint8_t>(ttl + hops))
            leaves_only = False
            if out_ttl == 0 and up and eff >= 1 and self._leaf_qrp:
                out_ttl = 1  # spent here: matching leaves still get it (Router._route_query)
                leaves_only = True
            if out_ttl:
                self._emit(peer_id, m, out_ttl, hops, last, leaves_only, codes, nw, bufs, bases,
                           low_water, high_water)
            if self._may_match(h + HDR, plen, codes, nw):
                return -i - 1
            self._c_unseen += 1
            i += 1
        return n

    cdef inline void _prefetch1(self, list msgs, Py_ssize_t j, uint64_t *pf_seen, uint64_t *pf_route,
                                Py_ssize_t *pf_idx):
        """Step 1 of the batched lookups for msgs[j] (a QUERY): hash its GUID, prefetch both slots."""
        obj = <object>PyList_GET_ITEM(msgs, j)
        if type(obj) is not Message or (<Message>obj)._type != MSG_QUERY_T:
            return
        cdef const uint8_t *g = <const uint8_t *>(<Message>obj)._ptr()
        cdef uint64_t hs = self._seen._hash(g, MSG_QUERY_T), hr = self._routes._hash(g)
        self._seen._prefetch_slot(hs)
        self._routes._prefetch_slot(hr)
        pf_seen[j & PF_MASK] = hs
        pf_route[j & PF_MASK] = hr
        pf_idx[j & PF_MASK] = j

    cdef inline Py_ssize_t _emit(self, int peer_id, Message m, int out_ttl, int hops, bint last,
                                 bint leaves_only, const uint32_t *codes, Py_ssize_t nw, list bufs,
                                 list bases, Py_ssize_t low_water, Py_ssize_t high_water) except -1:
        """Append m's relayed copy (TTL out_ttl, hops + 1) to every target's buffer (Router._select_targets
        rules, flow control as Peer.enqueue); return the number of targets chosen (sheds included)."""
        cdef Py_ssize_t nc = self._ncand, j, k, size, room, base, mlen = m._len, chosen = 0
        cdef const uint8_t *h = <const uint8_t *>m._ptr()
        cdef uint8_t *q
        cdef bint low = hops >= 2
        cdef object buf
        for j in range(nc):
            k = self._cand[j]
            if self._rid[k] == peer_id:
                continue
            if self._leaf[k]:
                if self._qkind[k] == QRP_NONE:
                    continue  # a leaf without a table gets nothing
                if not _codes_match(self._qtab[k], self._qshift[k], codes, nw):
                    self._n_skips += 1
                    continue
            elif leaves_only:
                continue
            elif last and self._qkind[k] != QRP_NONE:
                if not _codes_match(self._qtab[k], self._qshift[k], codes, nw):
                    self._n_skips += 1
                    continue
            chosen += 1
            self._n_forwarded += 1
            if self._touch[k] != self._epoch:
                self._touch_slot(k, bufs, bases)
            base = self._base[k]
            if base < 0:
                if base == -1:
                    self._n_flow += 1
                continue
            buf = <object>PyList_GET_ITEM(bufs, k)
            size = self._size[k]
            if base + size > high_water or (low and base + size > low_water):
                if not self._app[k] and not self._shed[k]:
                    self._clist[self._nchunk] = k
                    self._nchunk += 1
                self._shed[k] += 1
                self._n_flow += 1
                continue
            room = PyByteArray_GET_SIZE(buf)
            if size + mlen > room:
                room = 2 * room if 2 * room > size + mlen else size + mlen
                PyByteArray_Resize(buf, room if room > BUF_FIRST else BUF_FIRST)
            q = <uint8_t *>PyByteArray_AS_STRING(buf) + size
            self._size[k] = size + mlen
            memcpy(q, h, mlen)
            q[17] = <uint8_t>out_ttl
            q[18] = <uint8_t>(hops + 1)
            if size == 0:
                self._filled[k] = 1
            if not self._app[k] and not self._shed[k]:
                self._clist[self._nchunk] = k
                self._nchunk += 1
            self._app[k] += 1
            self._c_sent += 1
        return chosen

    cdef int _touch_slot(self, Py_ssize_t k, list bufs, list bases) except -1:
        """First copy to slot k in this call: read its buffer's length and its base."""
        buf = <object>PyList_GET_ITEM(bufs, k)
        if not PyByteArray_CheckExact(buf):
            raise LocalProtocolError(f"output buffer {k} is not a bytearray")
        self._base[k] = <object>PyList_GET_ITEM(bases, k)
        self._size[k] = PyByteArray_GET_SIZE(buf)
        self._touch[k] = self._epoch
        self._tlist[self._ntouch] = k
        self._ntouch += 1
        return 0

    def end_chunk(self):
        """Hand over and zero the per-chunk figures.

        Returns:
            (copies appended, duplicates dropped, queries not handed over for local delivery,
            [(slot, appended, shed, filled)] for each slot that was written or shed, where
            filled says the slot's bytearray was empty before its first copy).
        """
        rows = []
        cdef Py_ssize_t j, k
        for j in range(self._nchunk):
            k = self._clist[j]
            rows.append((k, self._app[k], self._shed[k], bool(self._filled[k])))
            self._app[k] = 0
            self._shed[k] = 0
            self._filled[k] = 0
        self._nchunk = 0
        rows.sort()
        out = (self._c_sent, self._c_dups, self._c_unseen, rows)
        self._c_sent = self._c_dups = self._c_unseen = 0
        return out

    def take_counts(self):
        """Hand over and zero the cumulative counters.

        Returns:
            (received, forwarded, local, duplicates, own echoes, flow-control drops, QRP skips,
            duplicates relayed again for their higher TTL (route takeovers), refused takeovers),
            QUERYs all.
        """
        out = (self._n_received, self._n_forwarded, self._n_local, self._n_dup, self._n_own, self._n_flow,
               self._n_skips, self._n_dup_ttl, self._n_refused)
        self._n_received = self._n_forwarded = self._n_local = 0
        self._n_dup = self._n_own = self._n_flow = self._n_skips = self._n_dup_ttl = self._n_refused = 0
        return out


cdef void *_grow_array(void *p, size_t nbytes) except NULL:
    cdef void *q = realloc(p, nbytes)
    if q == NULL:
        raise MemoryError()
    return q
