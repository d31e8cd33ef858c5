"""`gnut search|get|status`: talk to the running node, or join the network with a short-lived leaf."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path

from gnut.app import actions, control
from gnut.runtime.config import NodeConfig

# How long a stand-alone client waits for its first peer before giving up on it.
JOIN_TIMEOUT = 10.0
# Pause after joining so the ultrapeer installs our QRP table before our first query reaches it.
QRP_SETTLE = 0.2


async def _running_node(home: Path) -> bool:
    path = home / "control.sock"
    if not path.exists():
        return False
    return await control._alive(path)


def _nothing_left_to_try(node) -> bool:
    """No link up or in handshake, no dial under way, and the host cache has no host ready."""
    if node.peers or node._dialing:
        return False
    return not node.hosts.pick(1, time.time(), set(), node.rng)


@contextlib.asynccontextmanager
async def ephemeral_node(home: Path, connect: list[tuple[str, int]], timeout: float):
    """A leaf node on a free loopback port for one command; yields it once a peer is up.

    Args:
        home: state folder (its host cache is read and updated).
        connect: peers to dial; the host cache is used when empty.
        timeout: the command's time budget; joining takes at most min(timeout, JOIN_TIMEOUT).

    Raises:
        ConnectionError: no peer known, or none answered in time.
    """
    from gnut.runtime.node import Node

    cfg = NodeConfig(listen_host="127.0.0.1", listen_port=0, connect=list(connect), mode="leaf", home=home,
                     control=False, out_links=max(1, len(connect)) if connect else 3)
    home.mkdir(parents=True, exist_ok=True)
    node = Node(cfg)
    await node.start()
    try:
        if not connect:
            if not len(node.hosts):
                raise ConnectionError(f"no peers known (host cache {cfg.hosts_path} is empty): "
                                      "give --connect HOST:PORT or start `gnut node`")
            # The user asked now: try the freshest cached hosts even if an old failure backs them off.
            for host, port in node.hosts.pick(cfg.out_links, float("inf"), set(), node.rng):
                node.dial(host, port)
        deadline = time.monotonic() + min(timeout, JOIN_TIMEOUT)
        while not any(p.established for p in node.peers.values()):
            if time.monotonic() > deadline or _nothing_left_to_try(node):
                raise ConnectionError(join_failure(node, connect))
            await asyncio.sleep(0.05)
        # Give the ultrapeer a moment to install our (empty) QRP table before we query.
        await asyncio.sleep(QRP_SETTLE)
        yield node
    finally:
        await node.stop()


def join_failure(node, connect: list[tuple[str, int]]) -> str:
    """Why a stand-alone client could not join, per address tried (refusals with their status)."""
    failures = node.link_failures
    if connect:
        why = "; ".join(f"{h}:{p} {failures.get((h, p), 'did not answer')}" for h, p in connect)
        return f"could not join the network: {why}"
    if failures:
        why = "; ".join(f"{h}:{p} {w}" for (h, p), w in list(failures.items())[-3:])
        return f"could not join the network through the host cache: {why}; give --connect HOST:PORT"
    return "could not join the network: no cached host answered; give --connect HOST:PORT or start `gnut node`"


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
    """`gnut search`: print hits live, through the running node or a short-lived leaf.

    Returns:
        0 after the search window (even with no hits), 1 when the network cannot be reached,
        2 for a bad argument.
    """
    if not args.term.strip():
        print("gnut search: the search text is empty", file=sys.stderr)
        return 2
    if args.timeout <= 0 or args.max_results < 1:
        print("gnut search: --timeout must be > 0 and --max-results >= 1", file=sys.stderr)
        return 2
    out = _Printer(args.json)
    if await _running_node(home):
        try:
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
        except (OSError, ValueError) as exc:
            print(f"gnut search: lost the running node's control socket: {exc}", file=sys.stderr)
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
