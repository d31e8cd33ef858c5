"""Download progress for humans and scripts: one redrawn line on a terminal, plain lines in a log.

Strategy: the view is fed dicts shaped like `downloads.Entry.view()` (state, done, size, speed,
eta, sources, sources_known, name, id). On a TTY it redraws one line, carriage return plus
"erase line" first so a shorter line leaves no stale characters, cut to the terminal width,
at most every TTY_INTERVAL; elsewhere it prints a plain line when the phase changes and every
PLAIN_INTERVAL; with --json one {"progress": ...} object per update goes to stdout. Speed is
measured over a short window when the producer gives none (the stand-alone path).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import deque
from typing import TextIO

from gnut.protocol.printable import printable

# Redraw period of the one-line view on a terminal, and of plain progress lines otherwise.
TTY_INTERVAL = 0.2
PLAIN_INTERVAL = 2.0
JSON_INTERVAL = 0.5
# Speed window (seconds) when the producer gives no speed.
SPEED_WINDOW = 5.0
# Longest file name shown on the progress line (the rest of the line must stay visible).
NAME_WIDTH = 40
# Line width assumed when the terminal's cannot be read.
DEFAULT_WIDTH = 100

PHASES = {
    "queued": "queued",
    "searching": "looking for sources",
    "downloading": "downloading",
    "verifying": "verifying",
    "complete": "done",
    "failed": "failed",
    "paused": "paused",
    "cancelled": "cancelled",
    "restarting": "downloading",
}


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def human_rate(bps: float) -> str:
    return human_bytes(bps) + "/s"


def human_time(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    s = int(seconds + 0.5)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _short(name: str) -> str:
    name = printable(name or "")
    return name if len(name) <= NAME_WIDTH else name[: NAME_WIDTH - 1] + "…"


def describe(v: dict, elapsed: float = 0.0) -> str:
    """One line for a download view."""
    state = v.get("state", "")
    phase = PHASES.get(state, state)
    ident = f"#{v['id']} " if v.get("id") else ""
    name = _short(v.get("name") or v.get("urn", "")[:20])
    size, done = v.get("size") or 0, v.get("done") or 0
    known = v.get("sources_known") or 0
    if state in ("searching", "queued"):
        found = f", {known} found" if known else ""
        return f"{ident}{name}  {phase}… {human_time(elapsed)}{found}"
    if state == "complete":
        secs = v.get("seconds")
        took = f" in {human_time(secs)}" if secs else ""
        fetched = v.get("fetched", size)  # a resumed download fetched only what was missing
        avg = f", {human_rate(fetched / secs)} avg" if secs and fetched else ""
        if fetched and fetched < size:
            avg += f" ({human_bytes(fetched)} fetched, the rest resumed)"
        note = f" ({v['note']})" if v.get("note") else ""
        return f"{ident}{name}  done  {human_bytes(size)}{took}{avg}, {known} source(s){note}"
    if state in ("failed", "cancelled", "paused"):
        err = f": {printable(v.get('error', ''))}" if v.get("error") else ""
        return f"{ident}{name}  {phase}  {human_bytes(done)}/{human_bytes(size)}{err}"
    pct = 100.0 * done / size if size else 0.0
    if state == "verifying":
        return f"{ident}{name}  verifying SHA-1…  {human_bytes(size)}"
    eta = v.get("eta")
    return (f"{ident}{name}  {phase} {pct:5.1f}%  {human_bytes(done)}/{human_bytes(size)}  "
            f"{human_rate(v.get('speed') or 0)}  ETA {human_time(eta)}  {v.get('sources', 0)}/{known} src")


class ProgressView:
    """Shows the progress of one download on `err` (TTY or plain) or as JSON lines on `out`."""

    def __init__(self, as_json: bool, err: TextIO | None = None, out: TextIO | None = None,
                 tty: bool | None = None) -> None:
        self.err = err or sys.stderr
        self.out = out or sys.stdout
        self.as_json = as_json
        self.tty = (not as_json) and (self.err.isatty() if tty is None else tty)
        self.last: dict | None = None
        self._last_draw = 0.0
        self._last_state = ""
        self._drawn = False
        self._phase_start = time.monotonic()
        self._started = time.monotonic()
        self._samples: deque = deque(maxlen=64)

    def _fill_speed(self, v: dict) -> dict:
        if v.get("speed") is not None:
            return v
        now = time.monotonic()
        self._samples.append((now, v.get("done") or 0))
        while len(self._samples) > 2 and now - self._samples[0][0] > SPEED_WINDOW:
            self._samples.popleft()
        t0, d0 = self._samples[0]
        speed = ((v.get("done") or 0) - d0) / (now - t0) if now - t0 > 0.2 else 0.0
        v = dict(v, speed=round(speed))
        size, done = v.get("size") or 0, v.get("done") or 0
        v["eta"] = round((size - done) / speed, 1) if speed > 0 and v.get("state") == "downloading" else None
        return v

    def update(self, v: dict) -> None:
        v = self._fill_speed(dict(v))
        now = time.monotonic()
        changed = v.get("state") != self._last_state
        if changed:
            self._phase_start = now
            self._last_state = v.get("state", "")
        if v.get("state") == "complete" and not v.get("seconds"):
            v["seconds"] = round(now - self._started, 2)
        self.last = v
        if v.get("state") in ("complete", "failed", "cancelled") and not self.as_json:
            return  # final() shows the outcome on a line of its own
        interval = JSON_INTERVAL if self.as_json else TTY_INTERVAL if self.tty else PLAIN_INTERVAL
        if not changed and now - self._last_draw < interval:
            return
        self._draw(v, now)

    def tick(self) -> None:
        """Redraw the last view (the elapsed time of "looking for sources" moves on)."""
        if self.last is not None and self.tty and self.last.get("state") in ("searching", "queued"):
            self._draw(self.last, time.monotonic())

    def _draw(self, v: dict, now: float) -> None:
        self._last_draw = now
        if self.as_json:
            print(json.dumps({"progress": v}), file=self.out, flush=True)
            return
        line = describe(v, now - self._phase_start)
        if self.tty:
            width = self._width()
            if len(line) >= width:
                line = line[: max(10, width - 2)] + "…"
            self.err.write("\r\x1b[2K" + line)
            self.err.flush()
            self._drawn = True
        else:
            print(line, file=self.err, flush=True)

    def _width(self) -> int:
        """Columns of the terminal we draw on (stderr's, even when stdout is a pipe)."""
        try:
            return os.get_terminal_size(self.err.fileno()).columns or DEFAULT_WIDTH
        except (OSError, ValueError, AttributeError):
            return shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns

    def clear(self) -> None:
        """End the redrawn line so the next output starts on a clean line."""
        if self.tty and self._drawn:
            self.err.write("\r\x1b[2K")
            self.err.flush()
            self._drawn = False

    def final(self, v: dict) -> None:
        """Show the final state (done/failed) as a line of its own."""
        v = dict(v)
        if v.get("state") == "complete" and not v.get("seconds"):
            v["seconds"] = round(time.monotonic() - self._started, 2)
        if self.as_json:
            return
        self.clear()
        print(describe(v), file=self.err, flush=True)
