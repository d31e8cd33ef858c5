"""The upload server's request parsing and path checks: what a first line is, GIV blocks, Range
values, request targets, and opening a shared file only while it is still the file we scanned.

Pure functions over bytes and the share index (no sockets); runtime/http.py re-exports them.
"""

from __future__ import annotations

import os
import stat
from urllib.parse import unquote_to_bytes

from gnut.constants import GUID_LEN
from gnut.errors import RemoteProtocolError
from gnut.runtime.share import SharedFile, ShareIndex

# Range numbers longer than this many digits are garbage (a 64-bit size has 20 digits).
MAX_RANGE_DIGITS = 20
# File indices longer than this many digits are garbage (our indices are small ints).
MAX_INDEX_DIGITS = 10
# The first bytes of what the listening port takes as HTTP rather than a Gnutella handshake.
HTTP_PREFIXES = (b"GET ", b"HEAD ", b"GIV ")
def is_http_start(first_bytes: bytes) -> bool:
    """True when a connection's first bytes are an HTTP request or a GIV (not a Gnutella handshake).

    Args:
        first_bytes: at least HTTP_SNIFF_BYTES bytes for a definite answer ("HEAD " is 5 bytes).

    Returns:
        Whether the bytes start with "GET ", "HEAD " or "GIV ".
    """
    return first_bytes.startswith(HTTP_PREFIXES)


def parse_giv(block: bytes) -> tuple[int, bytes, str]:
    """Parse a GIV block: "GIV <index>:<servent guid hex>/<name>" followed by a blank line.

    Args:
        block: the bytes up to and including the blank line (LF or CRLF line ends).

    Returns:
        (file index, 16-byte servent GUID, file name); undecodable name bytes become U+FFFD.

    Raises:
        RemoteProtocolError: when the line does not have that shape.
    """
    line = block.split(b"\n", 1)[0].rstrip(b"\r")
    if not line.startswith(b"GIV "):
        raise RemoteProtocolError(f"GIV line expected, got {line[:40]!r}")
    head, slash, name = line[4:].partition(b"/")
    index_text, colon, guid_hex = head.partition(b":")
    if not slash or not colon:
        raise RemoteProtocolError(f"GIV line is not 'GIV index:guid/name': {line[:80]!r}")
    if not index_text.isdigit() or len(index_text) > MAX_INDEX_DIGITS:
        raise RemoteProtocolError(f"GIV index is not a number: {index_text[:20]!r}")
    try:
        guid = bytes.fromhex(guid_hex.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        guid = b""
    if len(guid) != GUID_LEN:
        raise RemoteProtocolError(f"GIV servent GUID is not 32 hex digits: {guid_hex[:40]!r}")
    return int(index_text), guid, name.decode("utf-8", "replace")


def parse_range(value: bytes, size: int) -> tuple[int, int] | None:
    """Resolve a Range header against a file size (first range only, see the strategy note).

    Args:
        value: the header value, e.g. b"bytes=0-499", b"bytes=500-", b"bytes=-100".
        size: the file size in bytes.

    Returns:
        (first, last) inclusive byte positions to send, or None when the range is malformed
        or unsatisfiable (answer 416).
    """
    unit, eq, specs = value.partition(b"=")
    if not eq or unit.strip().lower() != b"bytes":
        return None
    spec = next((s.strip() for s in specs.split(b",") if s.strip()), b"")
    first_text, dash, last_text = spec.partition(b"-")
    first_text, last_text = first_text.strip(), last_text.strip()
    for text in (first_text, last_text):
        if text and (not text.isdigit() or len(text) > MAX_RANGE_DIGITS):
            return None
    if not dash or (not first_text and not last_text):
        return None
    if not first_text:  # suffix range "-n": the last n bytes
        n = int(last_text)
        if n == 0 or size == 0:
            return None
        return max(0, size - n), size - 1
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if last < first or first >= size:
        return None
    return first, min(last, size - 1)


def _lookup(target: bytes, share: ShareIndex) -> SharedFile | None:
    """The shared file a request target names, or None (never touches the filesystem)."""
    path, _, query = target.partition(b"?")
    if path.startswith(b"/get/"):
        index_text, slash, raw_name = path[5:].partition(b"/")
        if not slash or not index_text.isdigit() or len(index_text) > MAX_INDEX_DIGITS:
            return None
        sf = share.by_index(int(index_text))
        try:
            name = unquote_to_bytes(raw_name).decode("utf-8")
        except UnicodeDecodeError:
            return None
        return sf if sf is not None and name == sf.name else None
    if path.lower() == b"/uri-res/n2r":
        try:
            urn = unquote_to_bytes(query).decode("ascii")
        except UnicodeDecodeError:
            return None
        return share.by_urn(urn)
    return None


def _open_checked(sf: SharedFile, share: ShareIndex | None = None):
    """Open the indexed file read-only if it is still the file we scanned; None otherwise.

    Raises:
        _Escaped: the opened file is not the scanned inode or lies outside every shared root
            now (a folder swapped for a symlink after the scan).
    """
    flags = (
        os.O_RDONLY
        | getattr(os, "O_NOFOLLOW", 0)
        | getattr(os, "O_NONBLOCK", 0)
        | getattr(os, "O_CLOEXEC", 0)
    )
    try:
        fd = os.open(sf.path, flags)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != sf.size or st.st_mtime_ns != sf.mtime_ns:
            os.close(fd)
            return None
        # O_NOFOLLOW guards the last component only: a parent folder swapped for a symlink is
        # caught by the inode of the scan and by re-resolving where the open file really is.
        moved = sf.ino and (st.st_dev, st.st_ino) != (sf.dev, sf.ino)
        if moved or (share is not None and not share.inside_roots(_real_path(fd, sf.path))):
            os.close(fd)
            raise _Escaped(str(sf.path))
        return open(fd, "rb", buffering=0)  # noqa: SIM115 - closed by the caller
    except OSError:
        os.close(fd)
        return None


def _real_path(fd: int, path) -> str:
    """Where the open descriptor `fd` really is (Linux /proc), else the resolved `path`."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)


class _Escaped(Exception):
    """A shared file's path now leads outside the shared folders."""
