"""`gnut search|get|status`: talk to the running node, or join the network with a short-lived leaf."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path

from gnut import actions, control
from gnut.config import NodeConfig

# How long a stand-alone client waits for its first peer before giving up on it.
JOIN_TIMEOUT = 10.0


async def _running_node(home: Path) -> bool:
    path = home / "control.sock"
    if not path.exists():
        return False
    return await control._alive(path)


@contextlib.asynccontextmanager
async def ephemeral_node(home: Path, connect: list[tuple[str, int]], timeout: float):
    """A leaf node on a free loopback port for one command; yields it once a peer is up."""
    from gnut.node import Node

    cfg = NodeConfig(listen_host="127.0.0.1", listen_port=0, connect=list(connect), mode="leaf", home=home,
                     control=False, out_links=max(1, len(connect)) if connect else 3)
    home.mkdir(parents=True, exist_ok=True)
    node = Node(cfg)
    await node.start()
    try:
        deadline = time.monotonic() + min(timeout, JOIN_TIMEOUT)
        while not any(p.established for p in node.peers.values()):
            if time.monotonic() > deadline:
                raise ConnectionError("could not join the network: no peer answered "
                                      "(give --connect HOST:PORT or start `gnut node`)")
            await asyncio.sleep(0.05)
        # Give the ultrapeer a moment to install our (empty) QRP table before we query.
        await asyncio.sleep(0.2)
        yield node
    finally:
        await node.stop()


class _Printer:
    """Live result lines: sources per urn, size, name, address, urn."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.sources: dict[str, int] = {}
        self.count = 0

    def hit(self, h: dict) -> None:
        self.count += 1
        key = h.get("urn") or f"{h['host']}:{h['port']}/{h['index']}"
        self.sources[key] = self.sources.get(key, 0) + 1
        if self.as_json:
            print(json.dumps(h), flush=True)
        else:
            urn = h.get("urn") or "-"
            print(f"{self.sources[key]:>3} src  {h['size']:>12,}  {h['name']}  {h['host']}:{h['port']}  {urn}",
                  flush=True)

    def done(self) -> None:
        if not self.as_json:
            print(f"-- {self.count} result(s) from {len(self.sources)} distinct file(s)", file=sys.stderr)


async def search(args: argparse.Namespace, home: Path) -> int:
    out = _Printer(args.json)
    if await _running_node(home):
        for host, port in args.connect:
            async for _ in control.request(home / "control.sock", {"op": "connect", "host": host, "port": port}):
                pass
        req = {"op": "search", "text": args.term, "timeout": args.timeout, "max_results": args.max_results}
        async for line in control.request(home / "control.sock", req):
            if "hit" in line:
                out.hit(line["hit"])
            elif "error" in line:
                print(f"gnut search: {line['error']}", file=sys.stderr)
                return 1
        out.done()
        return 0
    try:
        async with ephemeral_node(home, args.connect, args.timeout) as node:
            async for hit in actions.search_stream(node, args.term, args.timeout, args.max_results):
                out.hit(hit.as_dict())
    except ConnectionError as exc:
        print(f"gnut search: {exc}", file=sys.stderr)
        return 1
    out.done()
    return 0


class _Progress:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, p) -> None:
        d = p if isinstance(p, dict) else {"done": p.done, "total": p.total, "sources": p.sources_active,
                                            "rate": round(p.rate_bps), "state": p.state}
        if self.as_json:
            print(json.dumps({"progress": d}), flush=True)
            return
        now = time.monotonic()
        if now - self.last < 0.2 and d["done"] < d["total"]:
            return
        self.last = now
        total = max(1, d["total"])
        width = 30
        fill = int(width * d["done"] / total)
        bar = "#" * fill + "-" * (width - fill)
        line = f"[{bar}] {100 * d['done'] / total:5.1f}% {d['done']:,}/{d['total']:,} B  {d['sources']} src  {d['state']}"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)


async def get(args: argparse.Namespace, home: Path) -> int:
    progress = _Progress(args.json)
    out = args.out.resolve()
    if await _running_node(home):
        req = {"op": "get", "urn": args.target, "out": str(out), "timeout": args.timeout}
        async for line in control.request(home / "control.sock", req):
            if "progress" in line:
                progress(line["progress"])
            elif "error" in line:
                return _failed(args, line["error"])
            elif line.get("done"):
                return _finished(args, line["path"])
        return _failed(args, "the node closed the control connection")
    try:
        async with ephemeral_node(home, args.connect, args.timeout) as node:
            path = await actions.fetch(node, args.target, None, None, out, args.timeout, progress)
    except (ConnectionError, actions.FetchError) as exc:
        return _failed(args, str(exc))
    return _finished(args, str(path))


def _finished(args, path: str) -> int:
    if args.json:
        print(json.dumps({"done": True, "path": path}), flush=True)
    else:
        print(f"\ncomplete and verified: {path}" if sys.stderr.isatty() else f"complete and verified: {path}")
    return 0


def _failed(args, msg: str) -> int:
    if args.json:
        print(json.dumps({"error": msg}), flush=True)
    print(f"gnut get: {msg}", file=sys.stderr)
    return 1


async def status(args: argparse.Namespace, home: Path) -> int:
    if not await _running_node(home):
        print(f"gnut status: no running node (no control socket in {home})", file=sys.stderr)
        return 1
    async for line in control.request(home / "control.sock", {"op": "status"}):
        st = line.get("status")
        if st is None:
            continue
        if args.json:
            print(json.dumps(st, indent=1))
            return 0
        print(f"node {st['address']} mode {st['mode']} up {st['uptime']} s, {st['shared_files']} files shared, "
              f"{st['hosts_known']} hosts known")
        print(f"peers ({len(st['peers'])}):")
        for p in st["peers"]:
            print(f"  #{p['id']:<4} {p['host']}:{p['port']:<6} {p['role']:<10} {'out' if p['outgoing'] else 'in ':<4}"
                  f" in {p['msgs_in']:<8} out {p['msgs_out']:<8} shed {p['shed']:<5} {p['user_agent']}")
        print("received: " + ", ".join(f"{k} {v}" for k, v in st["received"].items()))
        print("sent:     " + ", ".join(f"{k} {v}" for k, v in st["sent"].items()))
        print("drops:    " + (", ".join(f"{k} {v}" for k, v in st["drops"].items()) or "none"))
        t = st.get("transfers", {})
        print(f"uploads: {t.get('uploads_active', 0)} active, {t.get('uploads_done', 0)} done; "
              f"downloads: {len(t.get('downloads', []))}")
        for d in t.get("downloads", []):
            print(f"  {d['name']}  {d['done']:,}/{d['size']:,}  {d['state']}")
        return 0
    return 1
