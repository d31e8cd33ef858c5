"""Run a node the way `gnut node` does: the node plus its local control API, until a signal."""

from __future__ import annotations

import asyncio
import logging
import signal

from gnut.app.control import ControlServer
from gnut.runtime.config import NodeConfig
from gnut.runtime.node import Node

log = logging.getLogger("gnut.runtime.node")


async def start_node(cfg: NodeConfig) -> Node:
    """Create the state folder, start a node and (when cfg.control) its control API.

    Returns:
        The running node; `await node.stop()` stops the control API too.
    """
    cfg.home.mkdir(parents=True, exist_ok=True)
    node = Node(cfg)
    if cfg.control:
        node.services.append(ControlServer(node))
    await node.start()
    return node


async def run_node(cfg: NodeConfig, ready: asyncio.Future | None = None) -> int:
    """Run a node until SIGINT/SIGTERM, then BYE 200 to every peer and return 0."""
    # Handlers first: a signal that comes while the node starts (it logs "listening" before its
    # UDP side and services are up) still means a clean stop, never the default kill.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # no signal handlers on this platform/thread
            pass
    node = await start_node(cfg)
    if ready is not None:
        ready.set_result(node)
    signalled = asyncio.ensure_future(stop.wait())
    asked = asyncio.ensure_future(node.shutdown.wait())  # `gnut stop`
    await asyncio.wait({signalled, asked}, return_when=asyncio.FIRST_COMPLETED)
    signalled.cancel()
    asked.cancel()
    log.info("shutting down: BYE 200 to %d peers", len(node.peers))
    await node.stop()
    return 0
