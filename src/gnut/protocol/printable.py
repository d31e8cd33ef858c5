"""Peer-supplied text made safe for a log line or a terminal: no control characters, bounded length.

Strategy: anything a remote peer chose (BYE reasons, User-Agent, file names in hits, GIV names,
HTTP headers) may carry ANSI escape sequences, carriage returns that rewrite a line, newlines that
forge a second log record, or megabytes of text. `printable()` keeps ordinary Unicode text, turns
every C0/C1 control character (and DEL, and the bidi overrides that reorder a line) into a visible
escape (`\\x1b`, `\\n`, `\\u202e`), and cuts the result to a bound with an ellipsis.
"""

from __future__ import annotations

# A log line about one peer never needs more of its text than this.
MAX_PRINTABLE = 200
# Bidirectional overrides and isolates: they make a terminal show text in another order.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str | bytes | None, limit: int = MAX_PRINTABLE) -> str:
    """`text` with control characters escaped, at most about `limit` characters long.

    Args:
        text: peer-supplied text; bytes are decoded as UTF-8 with replacement.
        limit: the longest result (before the escapes' own width), 0 for no bound.
    """
    if text is None:
        return ""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "replace")
    cut = bool(limit) and len(text) > limit
    if cut:
        text = text[:limit]
    out = [
        _escape(ch) if (ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 or ch in _BIDI) else ch
        for ch in text
    ]
    return "".join(out) + ("…" if cut else "")
