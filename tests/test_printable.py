"""Peer-supplied text escaped before it reaches a log or a terminal."""

from __future__ import annotations

from gnut.protocol.printable import MAX_PRINTABLE, printable


def test_controls_and_escapes_become_visible() -> None:
    assert printable("ok\x1b[2J\rforged\nline\x00") == "ok\\x1b[2J\\rforged\\nline\\x00"
    assert printable("evil\u202etxt.exe") == "evil\\u202etxt.exe"
    assert printable(b"caf\xc3\xa9 \xff") == "café \ufffd"
    assert printable("\x9b31m") == "\\x9b31m"  # C1 CSI
    assert printable(None) == ""


def test_length_is_bounded() -> None:
    out = printable("x" * 10_000)
    assert len(out) == MAX_PRINTABLE + 1 and out.endswith("…")
    assert printable("abc", limit=0) == "abc"
