"""`gnut search|get|status`: talk to the running node, or join the network with a short-lived leaf."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
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


# Redraws of the live table while no hit arrives (so its clock moves), in seconds.
TICK = 0.25
# `gnut search` defaults when neither the command line nor a config file says otherwise.
SEARCH_TIMEOUT = 10.0
SEARCH_QUIET = 3.0
# Hits a search takes in at most (grouped into rows): bounds a flood of results.
MAX_STREAMED_HITS = 2000


def _search_settings(args: argparse.Namespace, home: Path) -> dict:
    """search_timeout/search_quiet from --config FILE or $GNUT_HOME/config.toml (when present)."""
    from gnut.app.configfile import load_config_file

    given = getattr(args, "config", None)
    path = Path(given) if given else home / "config.toml"
    if not path.exists():
        if given:
            raise ValueError(f"config file {path} not found")
        return {}
    kw = load_config_file(path)
    return {k: kw[k] for k in ("search_timeout", "search_quiet") if k in kw}


def _load_spam_list(path: Path | None) -> set[bytes]:
    if path is None:
        return set()
    from gnut.protocol import spam

    with open(path, "rb") as fh:
        found, _ = spam.parse_list(fh.read(spam.MAX_LIST_BYTES).decode("utf-8", "replace"))
    return found


async def _hits_from_node(home: Path, args: argparse.Namespace, req: dict):
    """Hits (dicts) from the running node's control API; ConnectionError when it fails."""
    try:
        for host, port in args.connect:
            async for _ in control.request(home / "control.sock", {"op": "connect", "host": host, "port": port}):
                pass
        async for line in control.request(home / "control.sock", req):
            if "hit" in line:
                yield line["hit"]
            elif "error" in line:
                raise ConnectionError(str(line["error"]))
    except (OSError, ValueError) as exc:
        raise ConnectionError(f"lost the running node's control socket: {exc}") from None


async def _hits_standalone(home: Path, args: argparse.Namespace, text: str, timeout: float, quiet: float):
    async with ephemeral_node(home, args.connect, timeout) as node:
        gen = actions.search_stream(node, text, timeout, MAX_STREAMED_HITS, quiet=quiet)
        async with contextlib.aclosing(gen):
            async for hit in gen:
                yield hit.as_dict()


async def search(args: argparse.Namespace, home: Path) -> int:
    """`gnut search WORDS`: a live table of files (or --json lines), via the running node or a short-lived leaf.

    Returns:
        0 when a file was found, 1 when nothing was (or the network cannot be reached),
        2 for a bad argument.
    """
    from gnut.app import lastsearch, searchview

    words = getattr(args, "words", None)
    text = " ".join(words if words is not None else [args.term]).strip()
    if not text:
        print("gnut search: the search text is empty", file=sys.stderr)
        return 2
    try:
        conf = _search_settings(args, home)
        known = _load_spam_list(getattr(args, "spam_list", None))
    except (OSError, ValueError) as exc:
        print(f"gnut search: {exc}", file=sys.stderr)
        return 2
    timeout = args.timeout if args.timeout is not None else float(conf.get("search_timeout", SEARCH_TIMEOUT))
    given_quiet = getattr(args, "quiet", None)
    quiet = given_quiet if given_quiet is not None else float(conf.get("search_quiet", SEARCH_QUIET))
    if not (timeout > 0 and quiet > 0) or args.max_results < 1:  # `not >` also refuses nan
        print("gnut search: --timeout and --quiet must be > 0 and --max-results >= 1", file=sys.stderr)
        return 2
    filters = searchview.Filters(min_size=getattr(args, "min_size", None), max_size=getattr(args, "max_size", None),
                                 exts=searchview.parse_exts(getattr(args, "ext", None)),
                                 show_filtered=bool(getattr(args, "show_filtered", False)))
    results = searchview.Results(text, filters, getattr(args, "sort", None) or "sources", known)
    if await _running_node(home):
        req = {"op": "search", "text": text, "max_results": MAX_STREAMED_HITS, "local": True}
        # Unset on the command line and in a config file: the node's own settings apply.
        if args.timeout is not None or "search_timeout" in conf:
            req["timeout"] = timeout
        if given_quiet is not None or "search_quiet" in conf:
            req["quiet"] = quiet
        hits = _hits_from_node(home, args, req)
    else:
        hits = _hits_standalone(home, args, text, timeout, quiet)
    live = sys.stdout.isatty() and not os.environ.get("NO_COLOR") and not args.json
    started = time.monotonic()
    try:
        if live:
            await _run_live(results, hits, args.max_results)
        else:
            await _collect(results, hits, args.max_results, status=sys.stderr.isatty() and not args.json)
    except ConnectionError as exc:
        print(f"gnut search: {exc}", file=sys.stderr)
        return 1
    records = results.records(args.max_results)
    try:
        lastsearch.save(home, text, records)
    except OSError as exc:
        print(f"gnut search: could not record the rows for `gnut get N`: {exc}", file=sys.stderr)
    if args.json:
        for rec in records:
            print(json.dumps(rec), flush=True)
    elif not live:
        rows = results.rows()[:args.max_results]
        if rows:
            print("\n".join(searchview.plain_lines(rows)), flush=True)
    if not live:
        print(results.summary(time.monotonic() - started), file=sys.stderr)
    return 0 if results.clean_rows() else 1


async def _collect(results, hits, limit: int, status: bool) -> None:
    """Take hits until the stream ends or `limit` files are in; a one-line count on a terminal's stderr."""
    started = time.monotonic()
    async with contextlib.aclosing(hits):
        async for h in hits:
            results.add(h)
            if status:
                print("\r\x1b[K" + results.summary(time.monotonic() - started, done=False), end="",
                      file=sys.stderr, flush=True)
            if results.clean_rows() >= limit:
                break
    if status:
        print("\r\x1b[K", end="", file=sys.stderr, flush=True)


async def _run_live(results, hits, limit: int) -> None:
    """The live table: redrawn as hits arrive and every TICK seconds; left on screen at the end."""
    from gnut.app.searchview import LiveView

    with LiveView(results, limit) as view:
        async def ticker() -> None:
            while True:
                await asyncio.sleep(TICK)
                view.redraw()

        tick = asyncio.ensure_future(ticker())
        try:
            async with contextlib.aclosing(hits):
                async for h in hits:
                    results.add(h)
                    view.redraw()
                    if results.clean_rows() >= limit:
                        break
        finally:
            tick.cancel()
        view.finish()


def _print_trust(st: dict) -> None:
    """The trust section of `gnut status`: our address, route takeovers, host cache, refusals."""
    tr, hc = st.get("trust"), st.get("hosts")
    if not tr or not hc:
        return
    a = tr["address"]
    how = f"agreed by {a['votes'].get(a['learned'], 0)} peers" if a["learned"] else "as bound"
    print(f"trust:   address {a['advertised']} ({how}), route takeovers {tr['route_takeovers']} (refused {tr['route_takeovers_refused']}), "
          f"{tr['hostiles']} hostile entries")
    print("         refused: " + (", ".join(f"{k} {v}" for k, v in sorted(tr["refused"].items())) or "none"))
    pools = ", ".join(f"{k} {v['good']} good/{v['unverified']} unverified" for k, v in hc["pools"].items())
    print(f"hosts:   {pools}; refused: " + (", ".join(f"{k} {v}" for k, v in sorted(hc["refused"].items())) or "none"))


async def ban(args: argparse.Namespace, home: Path) -> int:
    """`gnut ban ADDR[/BITS]`: the running node refuses and never dials it, and saves it in hostiles.txt.

    Returns:
        0 when banned, 1 when no node runs or the node refused the entry.
    """
    if not await _running_node(home):
        print(f"gnut ban: no running node (no control socket in {home})", file=sys.stderr)
        return 1
    async for line in control.request(home / "control.sock", {"op": "ban", "target": args.target}):
        if "error" in line:
            print(f"gnut ban: {line['error']}", file=sys.stderr)
            return 1
        if line.get("done"):
            print(f"banned {line['banned']} ({line['hostiles']} hostile entries)")
            return 0
    return 1
