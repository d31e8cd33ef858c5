"""THEX (Tiger Tree Hash EXchange): Tiger trees, their breadth-first serialization and DIME framing.

Sans-IO. What gtk-gnutella does (src/lib/tigertree.c, src/core/thex_upload.c, thex_download.c,
dime.c) is the reference for the wire form:

* The tree: leaves are Tiger(0x00 || 1024-byte block), inner nodes Tiger(0x01 || left || right),
  an odd last node promoted unchanged; the root is named `urn:tree:tiger/:<base32>`.
* A server keeps the tree only down to a "good depth" that grows with the file size (at most
  11: 2048 nodes; a 2 GiB file then has 1 MiB per node) and serves it breadth-first, root first,
  each level left to right.
* `/uri-res/N2X?urn:sha1:...` answers with a DIME message of two records: an XML description
  (media type text/xml, MB flag) then the serialized tree (type URI
  http://open-content.net/spec/thex/breadthfirst, ID = the XML's `uri`, ME flag).
* `X-Thex-URI: /uri-res/N2X?urn:sha1:<sha1>;<tth base32>` points to it.

Hostile-input discipline: every parser here accepts bytes of any content and either returns a
value or raises gnut.errors.RemoteProtocolError; sizes are bounded before anything is allocated.
"""

from __future__ import annotations

import base64
import re
import struct
from dataclasses import dataclass

from gnut.errors import LocalProtocolError, RemoteProtocolError
from gnut.tiger import DIGEST_SIZE, LEAF_SIZE, tth_leaves, tth_parents, tth_root

# gtk-gnutella keeps at most this depth (TTH_MAX_DEPTH: 2048 nodes, 1 MiB each on a 2 GiB file,
# 4095 * 24 = 96 KiB serialized).
MAX_DEPTH = 11
# A whole THEX answer larger than this is refused (gtk-gnutella's THEX_DOWNLOAD_MAX_SIZE: room for
# a depth-11 tree and for servers that send a level deeper).
MAX_THEX_BYTES = 260 * 1024
# The XML record describes four attributes; anything longer is not a THEX description.
MAX_XML_BYTES = 4096
# A THEX answer has two records; a few more are tolerated (unknown extras are skipped).
MAX_DIME_RECORDS = 8
# Largest file size the codecs accept (64-bit sizes everywhere).
MAX_FILE_SIZE = (1 << 64) - 1

TTH_URN_PREFIX = "urn:tree:tiger/:"
THEX_TREE_TYPE = "http://open-content.net/spec/thex/breadthfirst"
THEX_HASH_ALGO = "http://open-content.net/spec/digest/tiger"
THEX_DOCTYPE = "http://open-content.net/spec/thex/thex.dtd"

# DIME record header (draft-nielsen-dime-02): version(5 bits) MB ME CF | TNF(4) reserved(4) |
# options length BE16 | ID length BE16 | type length BE16 | data length BE32; each field padded to 4.
DIME_VERSION = 1
DIME_HEADER = struct.Struct(">BBHHHI")
DIME_MB, DIME_ME, DIME_CF = 0x04, 0x02, 0x01
TNF_MEDIA_TYPE, TNF_URI = 0x01, 0x02

# gtk-gnutella's size thresholds for the kept depth: below 256 KiB depth 0, below 512 KiB 1, ...
_GOOD_DEPTH_THRESHOLDS = tuple(
    k * 1024 for k in (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 262144, 1048576)
)


def block_count(size: int) -> int:
    """Number of 1024-byte leaves of a file (the empty file has one, empty, leaf)."""
    return max(1, -(-size // LEAF_SIZE))


def full_depth(size: int) -> int:
    """Depth of the complete tree (0 when one leaf is the root)."""
    n, depth = block_count(size), 0
    while n > 1:
        n, depth = (n + 1) // 2, depth + 1
    return depth


def good_depth(size: int) -> int:
    """The depth a server keeps and serves for a file of this size (gtk-gnutella's rule)."""
    depth = sum(1 for t in _GOOD_DEPTH_THRESHOLDS if size >= t)
    return min(depth, MAX_DEPTH, full_depth(size))


def nodes_at_depth(size: int, depth: int) -> int:
    """Number of nodes of the tree level `depth` levels below the root."""
    n = block_count(size)
    while n > (1 << depth):
        n = (n + 1) // 2
    return n


def format_tth_urn(root: bytes) -> str:
    """urn:tree:tiger/:<base32> for a 24-byte root."""
    if len(root) != DIGEST_SIZE:
        raise LocalProtocolError(f"a Tiger-tree root is {DIGEST_SIZE} bytes, not {len(root)}")
    return TTH_URN_PREFIX + b32(root)


def b32(raw: bytes) -> str:
    """Unpadded upper-case base32 (39 characters for a 24-byte hash)."""
    return base64.b32encode(raw).decode("ascii").rstrip("=")


def parse_b32_root(text: str) -> bytes:
    """A 39-character base32 Tiger root; RemoteProtocolError otherwise."""
    text = text.strip().upper()
    if len(text) != 39 or not re.fullmatch(r"[A-Z2-7]{39}", text):
        raise RemoteProtocolError(f"not a base32 Tiger-tree root: {text[:60]!r}")
    return base64.b32decode(text + "=")


def parse_tth_urn(urn: str) -> bytes:
    """The root of `urn:tree:tiger/:<b32>` (or the `urn:tree:tiger:<b32>` magnet form)."""
    low = urn.strip().lower()
    for prefix in (TTH_URN_PREFIX, "urn:tree:tiger:"):
        if low.startswith(prefix):
            return parse_b32_root(urn.strip()[len(prefix) :])
    raise RemoteProtocolError(f"not a Tiger-tree URN: {urn[:80]!r}")


# -------------------------------------------------------------------------------------------------
# The tree


class HashTree:
    """A Tiger tree kept from the root down to `depth`: levels[0] is [root], levels[depth] the kept level.

    `span` bytes of the file hash to each node of the kept level (the last one may be shorter).
    """

    __slots__ = ("size", "depth", "levels", "span")

    def __init__(self, size: int, levels: list[bytes]) -> None:
        self.size = size
        self.levels = levels
        self.depth = len(levels) - 1
        self.span = LEAF_SIZE << (full_depth(size) - self.depth)

    @classmethod
    def from_level(cls, size: int, depth: int, level: bytes) -> HashTree:
        """Build the upper levels above a complete level `depth` of a file of `size` bytes."""
        if len(level) != DIGEST_SIZE * nodes_at_depth(size, depth):
            raise LocalProtocolError(f"level {depth} of a {size}-byte file has a wrong node count")
        levels = [level]
        while len(levels[0]) > DIGEST_SIZE:
            levels.insert(0, tth_parents(levels[0]))
        return cls(size, levels)

    @property
    def root(self) -> bytes:
        return self.levels[0]

    @property
    def urn(self) -> str:
        return format_tth_urn(self.root)

    @property
    def nodes(self) -> int:
        """Nodes of the kept (deepest) level."""
        return len(self.levels[-1]) // DIGEST_SIZE

    def node(self, i: int) -> bytes:
        return self.levels[-1][i * DIGEST_SIZE : (i + 1) * DIGEST_SIZE]

    def node_range(self, i: int) -> tuple[int, int]:
        """Byte range [start, end) of the file that node i of the kept level covers."""
        start = i * self.span
        return start, min(start + self.span, self.size)

    def serialize(self) -> bytes:
        """The breadth-first serialization: root, then each level left to right."""
        return b"".join(self.levels)

    def truncated(self, depth: int) -> HashTree:
        """The same tree kept only down to `depth` (bigger spans, fewer nodes)."""
        if not 0 <= depth <= self.depth:
            raise LocalProtocolError(f"depth {depth} is outside 0..{self.depth}")
        return HashTree(self.size, self.levels[: depth + 1])

    def check(self, offset: int, data) -> tuple[list[int], list[int]]:
        """Check the kept-level nodes that `data` (the file's bytes from `offset`) covers whole.

        Returns:
            (good, bad): node indexes that match and that do not. Nodes only partly inside the
            range are in neither (they wait for the rest of their bytes).
        """
        view = memoryview(data)
        end = offset + len(view)
        first = -(-offset // self.span)
        good: list[int] = []
        bad: list[int] = []
        for i in range(first, self.nodes):
            start, stop = self.node_range(i)
            if stop > end or (start == stop and self.size):
                break
            leaves = tth_leaves(view[start - offset : stop - offset])
            (good if tth_root(leaves) == self.node(i) else bad).append(i)
        return good, bad

    @classmethod
    def from_serialized(cls, size: int, root: bytes, data: bytes, max_depth: int = MAX_DEPTH) -> HashTree:
        """Read a breadth-first tree for a file of `size` bytes whose root must be `root`.

        The deepest level received whole (at most max_depth) is kept; every upper level given is
        recomputed from it and must match, so a tree that names the right root but carries
        forged lower levels is refused.

        Raises:
            RemoteProtocolError: not whole hashes, too big, wrong root, inconsistent levels.
        """
        if not 0 <= size <= MAX_FILE_SIZE:
            raise LocalProtocolError(f"file size {size} is outside 0..2^64-1")
        if len(data) > MAX_THEX_BYTES or len(data) < DIGEST_SIZE or len(data) % DIGEST_SIZE:
            raise RemoteProtocolError(
                f"a serialized Tiger tree of {len(data)} bytes is not 1..N whole hashes"
            )
        if data[:DIGEST_SIZE] != root:
            raise RemoteProtocolError(
                f"THEX tree root {b32(data[:DIGEST_SIZE])} is not the expected {b32(root)}"
            )
        levels, pos = [], 0
        for depth in range(min(max_depth, full_depth(size)) + 1):
            width = DIGEST_SIZE * nodes_at_depth(size, depth)
            if pos + width > len(data):
                break
            levels.append(bytes(data[pos : pos + width]))
            pos += width
        tree = cls.from_level(size, len(levels) - 1, levels[-1])
        for depth, (given, computed) in enumerate(zip(levels, tree.levels, strict=True)):
            if given != computed:
                raise RemoteProtocolError(
                    f"THEX tree level {depth} does not hash up from the levels below it"
                )
        return tree


class TreeHasher:
    """Hash a file of known size fed in pieces; keep only the level at `depth` (bounded memory)."""

    __slots__ = ("size", "depth", "fed", "_group_steps", "_pending", "_leaves", "_kept")

    def __init__(self, size: int, depth: int | None = None) -> None:
        if not isinstance(size, int) or not 0 <= size <= MAX_FILE_SIZE:
            raise LocalProtocolError(f"file size {size!r} is outside 0..2^64-1")
        full = full_depth(size)
        self.size = size
        self.depth = good_depth(size) if depth is None else max(0, min(depth, full, MAX_DEPTH))
        self.fed = 0
        self._group_steps = full - self.depth  # leaves per kept node: 2^steps
        self._pending = bytearray()  # bytes of the current, incomplete leaf
        self._leaves = bytearray()  # leaf hashes not yet folded into a kept node
        self._kept = bytearray()

    def update(self, data) -> None:
        """Feed the next bytes of the file (ValueError past the announced size)."""
        view = memoryview(data).cast("B")
        if self.fed + len(view) > self.size:
            raise ValueError(f"fed {self.fed + len(view)} bytes to a hasher of a {self.size}-byte file")
        self.fed += len(view)
        if self._pending:
            need = LEAF_SIZE - len(self._pending)
            self._pending += view[:need]
            view = view[need:]
            if len(self._pending) < LEAF_SIZE:
                return
            self._leaves += tth_leaves(bytes(self._pending))
            self._pending.clear()
        whole = len(view) - len(view) % LEAF_SIZE
        if whole:
            self._leaves += tth_leaves(view[:whole])
        self._pending += view[whole:]
        self._fold(final=False)

    def _fold(self, final: bool) -> None:
        group = DIGEST_SIZE << self._group_steps
        whole = len(self._leaves) - len(self._leaves) % group
        if whole:
            level = bytes(self._leaves[:whole])
            for _ in range(self._group_steps):
                level = tth_parents(level)
            self._kept += level
            del self._leaves[:whole]
        if final and self._leaves:
            self._kept += tth_root(bytes(self._leaves))
            self._leaves.clear()

    def finish(self) -> HashTree:
        """The tree of everything fed (ValueError if fewer bytes than announced were fed)."""
        if self.fed != self.size:
            raise ValueError(f"fed {self.fed} of {self.size} bytes")
        if self._pending or self.size == 0:
            self._leaves += tth_leaves(bytes(self._pending))
            self._pending.clear()
        self._fold(final=True)
        return HashTree.from_level(self.size, self.depth, bytes(self._kept))


def hash_bytes(data: bytes, depth: int | None = None) -> HashTree:
    """The tree of an in-memory file."""
    hasher = TreeHasher(len(data), depth)
    hasher.update(data)
    return hasher.finish()


# -------------------------------------------------------------------------------------------------
# DIME


@dataclass(frozen=True, slots=True)
class DimeRecord:
    """One DIME record (TNF: 1 media type, 2 absolute URI)."""

    type: str
    data: bytes
    id: str = ""
    tnf: int = TNF_MEDIA_TYPE
    options: bytes = b""


def _pad4(raw: bytes) -> bytes:
    return raw + b"\0" * (-len(raw) % 4)


def encode_dime(records: list[DimeRecord]) -> bytes:
    """A DIME message: MB on the first record, ME on the last, no chunking."""
    if not records:
        raise LocalProtocolError("a DIME message has at least one record")
    out = []
    for i, rec in enumerate(records):
        type_b, id_b = rec.type.encode("ascii"), rec.id.encode("ascii")
        if max(len(type_b), len(id_b), len(rec.options)) > 0xFFFF or len(rec.data) > 0xFFFFFFFF:
            raise LocalProtocolError("a DIME field is longer than its length field can say")
        flags = (DIME_MB if i == 0 else 0) | (DIME_ME if i == len(records) - 1 else 0)
        out.append(
            DIME_HEADER.pack(
                (DIME_VERSION << 3) | flags,
                rec.tnf << 4,
                len(rec.options),
                len(id_b),
                len(type_b),
                len(rec.data),
            )
        )
        out += [_pad4(rec.options), _pad4(id_b), _pad4(type_b), _pad4(bytes(rec.data))]
    return b"".join(out)


def decode_dime(buf: bytes, max_bytes: int = MAX_THEX_BYTES) -> list[DimeRecord]:
    """Parse a whole DIME message (MB first, ME last, nothing after ME, no chunked records).

    Raises:
        RemoteProtocolError: too big, wrong version, truncated field, missing MB/ME, chunked
            records, more than MAX_DIME_RECORDS records, non-ASCII type or ID.
    """
    if len(buf) > max_bytes:
        raise RemoteProtocolError(f"DIME message of {len(buf)} bytes is over the {max_bytes}-byte limit")
    records: list[DimeRecord] = []
    pos = 0
    while True:
        if len(records) >= MAX_DIME_RECORDS:
            raise RemoteProtocolError(f"DIME message has more than {MAX_DIME_RECORDS} records")
        if pos + DIME_HEADER.size > len(buf):
            raise RemoteProtocolError("DIME message ends inside a record header")
        first, second, opt_len, id_len, type_len, data_len = DIME_HEADER.unpack_from(buf, pos)
        if first >> 3 != DIME_VERSION:
            raise RemoteProtocolError(f"DIME version {first >> 3} is not {DIME_VERSION}")
        if bool(first & DIME_MB) != (pos == 0):
            raise RemoteProtocolError("DIME MB flag is not on exactly the first record")
        if first & DIME_CF:
            raise RemoteProtocolError("chunked DIME records are not accepted")
        pos += DIME_HEADER.size
        fields = []
        for length in (opt_len, id_len, type_len, data_len):
            padded = length + (-length % 4)
            if pos + padded > len(buf):
                raise RemoteProtocolError(f"DIME field of {length} bytes runs past the message end")
            fields.append(bytes(buf[pos : pos + length]))
            pos += padded
        try:
            rec_id, rec_type = fields[1].decode("ascii"), fields[2].decode("ascii")
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError("DIME record type or ID is not ASCII") from exc
        records.append(DimeRecord(rec_type, fields[3], rec_id, second >> 4, fields[0]))
        if first & DIME_ME:
            if pos != len(buf):
                raise RemoteProtocolError(f"{len(buf) - pos} bytes after the DIME ME record")
            return records


# -------------------------------------------------------------------------------------------------
# THEX answers (/uri-res/N2X)


def tree_uuid(root: bytes) -> str:
    """The serialized tree's record ID, derived from the root as gtk-gnutella does."""
    a, b, c, d, e, f = struct.unpack("<IHHHIH", root[:16])
    return f"uuid:{a:08x}-{b:04x}-{c:04x}-{d:04x}-{e:08x}{f:04x}"


def thex_xml(size: int, depth: int, uri: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\r\n'
        f'<!DOCTYPE hashtree SYSTEM "{THEX_DOCTYPE}">\r\n'
        "<hashtree>\r\n"
        f'<file size="{size}" segmentsize="{LEAF_SIZE}"/>\r\n'
        f'<digest algorithm="{THEX_HASH_ALGO}" outputsize="{DIGEST_SIZE}"/>\r\n'
        f'<serializedtree depth="{depth}" type="{THEX_TREE_TYPE}" uri="{uri}"/>\r\n'
        "</hashtree>\r\n"
    ).encode("ascii")


def encode_thex(tree: HashTree) -> bytes:
    """The DIME body of a /uri-res/N2X answer: the XML description, then the breadth-first tree."""
    uri = tree_uuid(tree.root)
    return encode_dime(
        [
            DimeRecord("text/xml", thex_xml(tree.size, tree.depth, uri), tnf=TNF_MEDIA_TYPE),
            DimeRecord(THEX_TREE_TYPE, tree.serialize(), uri, tnf=TNF_URI),
        ]
    )


_TAG = re.compile(r"<\s*(file|digest|serializedtree)\b([^<>]*)>", re.IGNORECASE)
_ATTR = re.compile(r"([A-Za-z_][\w.-]*)\s*=\s*(?:\"([^\"]*)\"|'([^']*)')")


def _xml_attributes(xml: bytes) -> dict[str, dict[str, str]]:
    """Attributes of the three THEX elements, by a bounded scan (no DTD, no entities, no parser)."""
    if len(xml) > MAX_XML_BYTES:
        raise RemoteProtocolError(f"THEX XML record of {len(xml)} bytes is over {MAX_XML_BYTES}")
    text = xml.decode("utf-8", "replace")
    found: dict[str, dict[str, str]] = {}
    for tag in _TAG.finditer(text):
        attrs = {
            m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
            for m in _ATTR.finditer(tag.group(2))
        }
        found.setdefault(tag.group(1).lower(), attrs)
    return found


def decode_thex(body: bytes, size: int, root: bytes) -> HashTree:
    """Read a /uri-res/N2X answer for a file of `size` bytes with Tiger root `root`.

    Raises:
        RemoteProtocolError: bad DIME, missing or contradicting XML description, no tree record,
            a tree that does not hash to `root`.
    """
    records = decode_dime(body)
    xml = next((r for r in records if r.type.lower() == "text/xml"), None)
    if xml is None:
        raise RemoteProtocolError("THEX answer has no text/xml record")
    attrs = _xml_attributes(xml.data)
    checks = (
        ("file", "size", str(size)),
        ("file", "segmentsize", str(LEAF_SIZE)),
        ("digest", "algorithm", THEX_HASH_ALGO),
        ("digest", "outputsize", str(DIGEST_SIZE)),
        ("serializedtree", "type", THEX_TREE_TYPE),
    )
    for element, name, want in checks:
        got = attrs.get(element, {}).get(name)
        if got != want:
            shown = got[:60] if got else got
            raise RemoteProtocolError(f"THEX XML {element}/{name} is {shown!r}, not {want!r}")
    uri = attrs["serializedtree"].get("uri", "")
    trees = [r for r in records if r.type.lower() == THEX_TREE_TYPE]
    # gtk-gnutella's rule: the record whose ID is the XML's uri; else the first of the right type
    # (BearShare 5.2 put a stray quote in the ID).
    tree = next((r for r in trees if r.id.lower() == uri.lower()), trees[0] if trees else None)
    if tree is None:
        raise RemoteProtocolError("THEX answer has no breadth-first tree record")
    return HashTree.from_serialized(size, root, tree.data)


def format_thex_uri(sha1_b32: str, root: bytes) -> str:
    """X-Thex-URI value: `/uri-res/N2X?urn:sha1:<sha1>;<tth base32>`."""
    return f"/uri-res/N2X?urn:sha1:{sha1_b32};{b32(root)}"


def parse_thex_uri(value: str) -> tuple[str, bytes]:
    """(URI, root) from an X-Thex-URI value; RemoteProtocolError if malformed."""
    if len(value) > 512 or ";" not in value:
        raise RemoteProtocolError(f"X-Thex-URI is not '<uri>;<root>': {value[:80]!r}")
    uri, _, root = value.strip().rpartition(";")
    uri = uri.strip()
    if not uri.startswith("/") or any(c.isspace() or ord(c) < 0x21 or ord(c) > 0x7E for c in uri):
        raise RemoteProtocolError(f"X-Thex-URI path is not a printable absolute path: {uri[:80]!r}")
    return uri, parse_b32_root(root)
