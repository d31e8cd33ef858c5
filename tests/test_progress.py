"""app/progress.py: the one-line progress of a download on a terminal, in a log, and as JSON."""

from __future__ import annotations

import io
import json

from gnut.app.progress import ProgressView, describe, human_bytes, human_time

BASE = {"id": 2, "name": "a.bin", "urn": "urn:sha1:" + "A" * 32, "size": 10 * 1024 * 1024, "done": 0,
        "sources": 0, "sources_known": 0, "speed": 0, "eta": None}


def test_describe_every_phase():
    assert describe(dict(BASE, state="searching"), 3.2) == "#2 a.bin  looking for sources… 0:03"
    assert describe(dict(BASE, state="searching", sources_known=2), 0) == "#2 a.bin  looking for sources… 0:00, 2 found"
    line = describe(dict(BASE, state="downloading", done=5 * 1024 * 1024, speed=1024 * 1024, eta=5, sources=2,
                         sources_known=3))
    assert line == "#2 a.bin  downloading  50.0%  5.0 MiB/10.0 MiB  1.0 MiB/s  ETA 0:05  2/3 src"
    assert describe(dict(BASE, state="verifying")) == "#2 a.bin  verifying SHA-1…  10.0 MiB"
    done = describe(dict(BASE, state="complete", done=BASE["size"], seconds=4, fetched=BASE["size"], sources_known=3))
    assert done == "#2 a.bin  done  10.0 MiB in 0:04, 2.5 MiB/s avg, 3 source(s)"
    failed = describe(dict(BASE, state="failed", error="no usable source left\x1b[2J"))
    assert failed == "#2 a.bin  failed  0 B/10.0 MiB: no usable source left\\x1b[2J"  # peer text escaped


def test_tty_redraw_erases_the_line_and_fits_the_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    err = io.StringIO()
    view = ProgressView(as_json=False, err=err, tty=True)
    view.update(dict(BASE, state="searching"))
    view.update(dict(BASE, state="downloading", done=1024, speed=10))
    frames = err.getvalue().split("\r\x1b[2K")[1:]
    assert len(frames) == 2 and all("\n" not in f and len(f) <= 40 for f in frames), frames
    view.final(dict(BASE, state="complete", done=BASE["size"], sources_known=1))
    assert err.getvalue().endswith("\r\x1b[2K#2 a.bin  done  10.0 MiB, 1 source(s)\n")  # its own full line


def test_plain_lines_only_on_phase_changes_and_periodically():
    err = io.StringIO()
    view = ProgressView(as_json=False, err=err, tty=False)
    for done in range(0, 100, 10):
        view.update(dict(BASE, state="downloading", done=done))
    view.update(dict(BASE, state="verifying"))
    lines = err.getvalue().splitlines()
    assert len(lines) == 2 and "downloading" in lines[0] and "verifying" in lines[1]
    assert "\r" not in err.getvalue() and "\x1b" not in err.getvalue()


def test_json_lines_carry_speed_and_eta_when_the_producer_has_none():
    out = io.StringIO()
    view = ProgressView(as_json=True, out=out)
    view.update({"state": "downloading", "done": 0, "size": 1000})
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert rows[0]["progress"]["state"] == "downloading" and "speed" in rows[0]["progress"]
    assert "eta" in rows[0]["progress"]


def test_human_units():
    assert (human_bytes(512), human_bytes(1536), human_bytes(3 * 1024 ** 3)) == ("512 B", "1.5 KiB", "3.0 GiB")
    assert (human_time(None), human_time(65), human_time(3725)) == ("--:--", "1:05", "1:02:05")
