"""Test helpers for real-socket node tests: nodes on 127.0.0.1 port 0 and a raw Gnutella client."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from gnut.protocol import connection as cx
from gnut.protocol import handshake as hs
from gnut.runtime.config import NodeConfig
from gnut.runtime.node import Node

LOOPS = ["uvloop", "asyncio"]
# Fairness limits of a lab network where every node shares one address (NodeConfig fields).
LAB_LIMITS = {"max_links_per_ip": 256, "max_links_per_24": 256, "max_pending_per_ip": 64,
              "max_http_per_ip": 64, "upload_slots_per_host": 8}


async def start_node(tmp: Path, name: str, mode: str = "flood", files: dict[str, bytes] | None = None,
                     **kw) -> Node:
    """A node on a free loopback port with `files` written to its share folder."""
    home = tmp / name
    share = home / "share"
    share.mkdir(parents=True, exist_ok=True)
    for fname, data in (files or {}).items():
        (share / fname).write_bytes(data)
    kw.setdefault("out_links", 0)
    kw.setdefault("listen_host", "127.0.0.1")
    kw.setdefault("save_hosts", False)
    # Every node of a test network sits on 127.0.0.1: raise the per-address fairness limits
    # (tests of the limits pass the defaults back explicitly).
    for key, value in LAB_LIMITS.items():
        kw.setdefault(key, value)
    cfg = NodeConfig(listen_port=0, mode=mode, home=home, share_dirs=[share], control=False, **kw)
    node = Node(cfg)
    await node.start()
    return node


async def wait_for(cond, timeout: float = 5.0, what: str = "condition") -> None:
    """Poll `cond()` until true; fail the test with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def established(node: Node) -> int:
    return sum(1 for p in node.peers.values() if p.established)


async def link(a: Node, b: Node) -> None:
    """Dial b from a and wait until both ends are up."""
    before_a, before_b = established(a), established(b)
    a.dial(*b.address)
    await wait_for(lambda: established(a) > before_a and established(b) > before_b, what="link up")


class RawPeer:
    """A bare Gnutella peer built from gnut's sans-IO Connection over a real socket."""

    def __init__(self, mode: str = "ultrapeer", deflate: bool = True, listen_ip: str = "127.0.0.1",
                 user_agent: str | None = None) -> None:
        extra = {} if user_agent is None else {"user_agent": user_agent}
        self.cfg = hs.HandshakeConfig(mode=mode, listen_ip=listen_ip, listen_port=1, accept_deflate=deflate, **extra)
        self.conn = cx.Connection(self.cfg, outgoing=True, remote_ip="127.0.0.1")
        self.messages: list = []
        self.complete = None
        self.closed = False

    async def connect(self, node: Node, local_host: str | None = None, port: int | None = None,
                      expect: bool = True) -> bool:
        """Handshake with `node` (from `local_host`, e.g. 127.0.0.66: all of 127/8 is loopback).

        Returns False when refused and not `expect` (else a refusal fails the test).
        """
        addr = ("127.0.0.1" if node.address[0] in ("0.0.0.0", "::") else node.address[0], port or node.address[1])
        local = (local_host, 0) if local_host else None
        self.reader, self.writer = await asyncio.open_connection(*addr, local_addr=local)
        self._pump_out()
        self.task = asyncio.get_running_loop().create_task(self._read())
        await wait_for(lambda: self.complete is not None or self.closed, what="raw handshake")
        assert self.complete is not None or not expect, "handshake refused"
        return self.complete is not None

    def _pump_out(self) -> None:
        out = self.conn.data_to_send()
        if out:
            self.writer.write(out)

    async def _read(self) -> None:
        while True:
            try:
                data = await self.reader.read(65536)
            except OSError:
                data = b""
            self.conn.receive_data(data)
            while True:
                ev = self.conn.next_event()
                if ev is cx.NEED_DATA:
                    break
                if isinstance(ev, cx.HandshakeComplete):
                    self.complete = ev
                elif isinstance(ev, cx.Frames):
                    self.messages.extend(ev.messages)
                elif isinstance(ev, (cx.ConnectionClosed, cx.HandshakeRefused, cx.ProtocolViolation)):
                    self.closed = True
                    return
            self._pump_out()
            if not data:
                self.closed = True
                return

    def send(self, raw: bytes) -> None:
        self.conn.send_raw(raw)
        self._pump_out()

    def of_type(self, mtype: int) -> list:
        return [m for m in self.messages if m.type == mtype]

    async def close(self) -> None:
        self.writer.close()
        self.task.cancel()
