"""`gnut get|downloads|pause|resume|cancel|status|stop|shares|rescan`: the node's transfers and state.

With a node running in HOME, `gnut get` queues the download in the node and watches it: Ctrl-C
or a closed pipe only detaches the watcher, the node keeps downloading (`gnut downloads`). With
no node, `gnut get` joins the network with a short-lived leaf and downloads itself, as before.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from gnut.app import actions, control, lastsearch
from gnut.app.client import _print_trust, _running_node, ephemeral_node
from gnut.app.progress import ProgressView, describe, human_bytes, human_rate, human_time
from gnut.errors import LocalProtocolError
from gnut.protocol.printable import printable
from gnut.runtime.download import parse_magnet

# Exit status after Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130
# `gnut stop` waits this long for the node to go.
STOP_WAIT = 15.0
DETACHED = "detached: the node keeps downloading #{id} (gnut downloads)"


def _sock(home: Path) -> Path:
    return home / "control.sock"


async def _ask(home: Path, req: dict) -> dict:
    """One request, its last answer line."""
    last: dict = {"error": "the node closed the control connection"}
    async for line in control.request(_sock(home), req):
        last = line
    return last


def _no_node(cmd: str, home: Path) -> int:
    print(f"gnut {cmd}: no running node (no control socket in {home}); start one with `gnut node`",
          file=sys.stderr)
    return 1


async def _ask_node(cmd: str, home: Path, req: dict) -> dict | None:
    """`gnut CMD`'s one request to the running node: its answer, or None once the reason (no node,
    or the node's error line) was printed, and the command exits 1."""
    if not await _running_node(home):
        _no_node(cmd, home)
        return None
    ans = await _ask(home, req)
    if "error" in ans:
        print(f"gnut {cmd}: {ans['error']}", file=sys.stderr)
        return None
    return ans


class _Target:
    def __init__(self, urn: str, name: str | None, size: int | None, hints: list[dict]) -> None:
        self.urn, self.name, self.size, self.hints = urn, name, size, hints


def _resolve_target(text: str, home: Path) -> _Target:
    """A urn, a magnet link, or `3` / `#3` (row 3 of the last search).

    Raises:
        ValueError: a one-line reason.
    """
    n = lastsearch.parse_row_ref(text)
    if n is not None:
        try:
            row = lastsearch.load_row(home, n)
        except lastsearch.NoSuchRow as exc:
            raise ValueError(str(exc)) from None
        urn = row.get("urn")
        if not isinstance(urn, str) or not urn:
            raise ValueError(f"row {n} of the last search has no urn:sha1 (its source gave none): "
                             "it cannot be fetched by hash")
        sources = row.get("sources") if isinstance(row.get("sources"), list) else []
        size = row.get("size") if isinstance(row.get("size"), int) else None
        return _Target(urn, row.get("name") if isinstance(row.get("name"), str) else None, size, sources)
    try:
        urn, name, size = parse_magnet(text)
    except LocalProtocolError as exc:
        raise ValueError(str(exc)) from None
    if urn is None:
        raise ValueError("the magnet link carries no urn:sha1 (exact topic xt=urn:sha1:...)")
    return _Target(urn, name, size, [])


def _usage_error(args, msg: str) -> int:
    print(f"gnut get: {msg}", file=sys.stderr)
    if args.json:
        print(json.dumps({"error": msg}), flush=True)
    return 2


def _detach_stdout() -> None:
    """stdout's reader is gone (`| head`): point stdout at /dev/null so exiting does not complain."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


async def get(args: argparse.Namespace, home: Path) -> int:
    """`gnut get`: queue in the running node and watch, or download stand-alone.

    Returns:
        0 when the file is complete and verified; 1 when it is not; 2 for a bad target or --out;
        130 after Ctrl-C (a node's download goes on).
    """
    try:
        target = _resolve_target(args.target, home)
    except ValueError as exc:
        return _usage_error(args, str(exc))
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        return _usage_error(args, f"--out {out} is an existing file: give the folder to download into")
    if args.timeout <= 0:
        return _usage_error(args, "--timeout must be > 0")
    out = out.resolve()
    view = ProgressView(args.json)
    try:
        if await _running_node(home):
            return await _get_through_node(args, home, target, out, view)
        return await _get_standalone(args, home, target, out, view)
    except BrokenPipeError:
        _detach_stdout()
        view.clear()
        print("gnut get: output closed; stopped", file=sys.stderr)
        return 1


async def _get_through_node(args, home: Path, t: _Target, out: Path, view: ProgressView) -> int:
    req = {"op": "get", "urn": t.urn, "name": t.name, "size": t.size, "out": str(out), "timeout": args.timeout,
           "sources": t.hints, "follow": True}
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
    ticker = asyncio.ensure_future(_tick(view))
    ident = None
    stream = control.request(_sock(home), req)
    try:
        while True:
            nxt = asyncio.ensure_future(anext(stream))
            stop = asyncio.ensure_future(interrupted.wait())
            await asyncio.wait({nxt, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if interrupted.is_set():
                nxt.cancel()
                view.clear()
                print(DETACHED.format(id=ident or "?"), file=sys.stderr, flush=True)
                return EXIT_INTERRUPTED
            try:
                line = nxt.result()
            except StopAsyncIteration:
                return _failed(args, view, "the node closed the control connection")
            except (OSError, ValueError) as exc:
                return _failed(args, view, f"lost the running node's control socket: {exc}")
            if "progress" in line:
                ident = line["progress"].get("id", ident)
                try:
                    view.update(line["progress"])
                except BrokenPipeError:
                    _detach_stdout()
                    view.clear()
                    print(DETACHED.format(id=ident or "?"), file=sys.stderr, flush=True)
                    return 0
            elif "error" in line:
                return _failed(args, view, line["error"], line.get("entry"))
            elif line.get("done"):
                return _finished(args, view, line["path"], line.get("entry"))
    finally:
        ticker.cancel()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGINT)
        with contextlib.suppress(Exception):
            await stream.aclose()


async def _tick(view: ProgressView) -> None:
    while True:
        await asyncio.sleep(1.0)
        view.tick()


async def _get_standalone(args, home: Path, t: _Target, out: Path, view: ProgressView) -> int:
    view.update({"state": "searching", "name": t.name or "", "urn": t.urn, "size": t.size or 0, "done": 0})
    ticker = asyncio.ensure_future(_tick(view))

    joined: list = []

    def progress(p) -> None:
        state = {"complete": "verifying", "restarting": "downloading"}.get(p.state, p.state)
        if not t.name and joined:  # learned from the hits once the download started
            t.name = next((d["name"] for u, d in joined[0].transfers.downloads.items()
                           if u.upper() == t.urn.upper()), None)
        view.update({"state": state, "name": t.name or "", "urn": t.urn, "size": p.total, "done": p.done,
                     "sources": p.sources_active, "sources_known": max(p.sources_active, len(t.hints))})

    try:
        async with ephemeral_node(home, args.connect, args.timeout) as node:
            joined.append(node)
            path = await actions.fetch(node, t.urn, t.name, t.size, out, args.timeout, progress, t.hints)
            known = next((d.get("sources_known") for u, d in node.transfers.downloads.items()
                          if u.upper() == t.urn.upper()), None)
    except (ConnectionError, actions.FetchError) as exc:
        return _failed(args, view, str(exc))
    finally:
        ticker.cancel()
    size = path.stat().st_size if path.exists() else 0
    entry = {"state": "complete", "name": path.name, "size": size, "done": size, "path": str(path),
             "sources_known": known or (view.last or {}).get("sources_known", 0)}
    return _finished(args, view, str(path), entry)


def _finished(args, view: ProgressView, path: str, entry: dict | None = None) -> int:
    if entry:
        view.final(entry)
    else:
        view.clear()
    if args.json:
        print(json.dumps({"done": True, "path": path}), flush=True)
    else:
        print(f"complete and verified: {path}", flush=True)
    return 0


def _failed(args, view: ProgressView, msg: str, entry: dict | None = None) -> int:
    view.clear()
    if args.json:
        print(json.dumps({"error": msg}), flush=True)
    print(f"gnut get: {printable(msg, 0)}", file=sys.stderr)
    return 1


# --- the queue ---------------------------------------------------------------------------------

async def downloads(args: argparse.Namespace, home: Path) -> int:
    ans = await _ask_node("downloads", home, {"op": "downloads"})
    if ans is None:
        return 1
    rows = ans["downloads"]
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    if not rows:
        print("no downloads (gnut get URN|N queues one)")
        return 0
    print(f"{'ID':>4}  {'STATE':<11} {'PROGRESS':>20}  {'SPEED':>11}  {'SRC':>5}  NAME")
    for r in rows:
        size = r["size"] or 0
        pct = f"{100 * r['done'] / size:5.1f}%" if size else "    -"
        prog = f"{pct} of {human_bytes(size)}" if size else "-"
        speed = human_rate(r["speed"]) if r["state"] == "downloading" else "-"
        src = f"{r['sources']}/{r['sources_known']}" if r["state"] == "downloading" else str(r["sources_known"])
        name = printable(r["name"] or r["urn"])
        extra = f"  ({printable(r['error'])})" if r.get("error") else f"  -> {r['path']}" if r.get("path") else ""
        print(f"{r['id']:>4}  {r['state']:<11} {prog:>20}  {speed:>11}  {src:>5}  {name}{extra}")
    return 0


def _parse_id(text: str) -> int | None:
    t = text[1:] if text.startswith("#") else text
    return int(t) if t.isdigit() else None


async def queue_op(args: argparse.Namespace, home: Path) -> int:
    """`gnut pause|resume|cancel ID`."""
    op = args.command
    ident = _parse_id(args.id)
    if ident is None:
        print(f"gnut {op}: {args.id!r} is not a download id (a number from `gnut downloads`)", file=sys.stderr)
        return 2
    ans = await _ask_node(op, home, {"op": op, "id": ident})
    if ans is None:
        return 1
    e = ans["entry"]
    print(f"{ {'pause': 'paused', 'resume': 'resumed', 'cancel': 'cancelled'}[op]} #{e['id']} "
          f"{printable(e['name'] or e['urn'])} ({e['state']})")
    return 0


# --- node state ----------------------------------------------------------------------------------

async def stop(args: argparse.Namespace, home: Path) -> int:
    ans = await _ask_node("stop", home, {"op": "stop"})
    if ans is None:
        return 1
    deadline = time.monotonic() + STOP_WAIT
    while time.monotonic() < deadline:
        if not _sock(home).exists() or not await control._alive(_sock(home)):
            print("node stopped (BYE 200 sent to its peers)")
            return 0
        await asyncio.sleep(0.1)
    print(f"gnut stop: the node was asked to stop but still answers after {STOP_WAIT:.0f} s", file=sys.stderr)
    return 1


async def shares(args: argparse.Namespace, home: Path) -> int:
    ans = await _ask_node("shares", home, {"op": "shares"})
    if ans is None:
        return 1
    files = ans["files"]
    if args.json:
        for f in files:
            print(json.dumps(f))
        return 0
    for p in ans.get("problems", []):
        print(f"warning: cannot share {p}", file=sys.stderr)
    if not files:
        print("no files shared (gnut node --share DIR)")
        return 0
    print(f"{'SIZE':>10}  {'HITS':>5}  {'URN':<41}  NAME")
    for f in sorted(files, key=lambda f: f["name"].lower()):
        print(f"{human_bytes(f['size']):>10}  {f['hits']:>5}  {f['urn']:<41}  {printable(f['name'])}")
    total = sum(f["size"] for f in files)
    print(f"-- {len(files)} file(s), {human_bytes(total)}")
    return 0


async def rescan(args: argparse.Namespace, home: Path) -> int:
    ans = await _ask_node("rescan", home, {"op": "rescan"})
    if ans is None:
        return 1
    rep = ans.get("report")
    if rep is None:
        print("no folders shared (gnut node --share DIR)")
        return 0
    for p in rep["problems"]:
        print(f"warning: cannot share {p}", file=sys.stderr)
    print(rep["text"])
    return 0


async def status(args: argparse.Namespace, home: Path) -> int:
    """`gnut status`: role, uptime, shares, traffic (bytes and rates), peers, transfers, drops."""
    if not await _running_node(home):
        print(f"gnut status: no running node (no control socket in {home})", file=sys.stderr)
        return 1
    ans = await _ask(home, {"op": "status"})
    st = ans.get("status")
    if st is None:
        print(f"gnut status: {ans.get('error', 'no answer')}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(st, indent=1))
        return 0
    print(f"node {st['address']}  role {st['mode']}  up {human_time(st['uptime'])}  "
          f"{st['shared_files']} file(s) shared ({human_bytes(st.get('shared_bytes', 0))})  "
          f"{st['hosts_known']} hosts known")
    r = st.get("reachability")
    if r:
        print(f"reachable TCP: {r['tcp']} ({r['tcp_reason']}); UDP: {r['udp']} ({r['udp_reason']})")
        print(f"role: {r['role']}{' (auto)' if r['auto'] else ''}: {r['role_reason']}")
    tr = st.get("traffic", {})
    if tr:
        def row(label: str, key_in: str, key_out: str) -> str:
            i, o = tr[key_in], tr[key_out]
            return (f"{label:<9} in {human_bytes(i['bytes']):>10} ({human_rate(i['rate'])})   "
                    f"out {human_bytes(o['bytes']):>10} ({human_rate(o['rate'])})")
        print(row("gnutella", "gnutella_in", "gnutella_out"))
        print(row("files", "http_in", "http_out") + "   (in: downloads, out: uploads)")
    print(f"peers ({len(st['peers'])}):")
    for p in st["peers"]:
        claimed = p.get("listen", "")  # an incoming peer's claimed listen address (escaped by the node)
        claimed = f" listens {claimed}" if claimed and claimed != f"{p['host']}:{p['port']}" else ""
        print(f"  #{p['id']:<4} {p['host']}:{p['port']:<6} {p['role']:<10} {'out' if p['outgoing'] else 'in ':<4}"
              f" msgs in {p['msgs_in']:<7} out {p['msgs_out']:<7} "
              f"bytes in {human_bytes(p.get('bytes_in', 0)):>9} out {human_bytes(p.get('bytes_out', 0)):>9}"
              f"  {p.get('tls') or 'plain':<8} {printable(p['user_agent'])}{claimed}")
    print("messages received: " + (", ".join(f"{k} {v}" for k, v in st["received"].items()) or "none"))
    print("messages sent:     " + (", ".join(f"{k} {v}" for k, v in st["sent"].items()) or "none"))
    print("drops:    " + (", ".join(f"{k} {v}" for k, v in st["drops"].items()) or "none"))
    u = st.get("udp") or {}
    if u.get("enabled"):
        oob = u.get("oob", {})
        print(f"udp:      {u['address']} datagrams in {u['datagrams_in']} out {sum(u['sent'].values())}, "
              f"OOB hits in {oob.get('hits_received', 0)} out {oob.get('hits_sent', 0)}, "
              f"bootstrap {u['bootstrap']['phase']}; drops "
              + (", ".join(f"{k} {v}" for k, v in u["drops"].items()) or "none"))
    lim = dict(st.get("limits", {}))
    if lim:
        fds = f"fds {lim.pop('open_fds', '?')}/{lim.pop('fd_limit', '?') or 'unlimited'}"
        print("limits:   " + ", ".join([*(f"{k} {v}" for k, v in sorted(lim.items())), fds]))
    t = st.get("transfers", {})
    queue = st.get("queue", [])
    running = [d for d in queue if d["state"] in ("searching", "downloading", "verifying")]
    print(f"uploads:   {t.get('uploads_active', 0)} active, {t.get('uploads_done', 0)} file(s) served whole")
    print(f"downloads: {len(running)} active, {sum(1 for d in queue if d['state'] == 'complete')} complete, "
          f"{sum(1 for d in queue if d['state'] in ('queued', 'paused'))} queued or paused")
    for d in running:
        print("  " + describe(d))
    for kind, rl in t.get("limits", {}).items():
        if kind != "gnutella":  # not applied to links yet
            print(f"{kind} limit: {rl['limit_text']}, {rl['bytes']:,} bytes moved, {rl['waits']} waits")
    _print_trust(st)
    return 0
