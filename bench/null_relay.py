"""The null relay of `bench/run.py relay`: Cython framing, no routing, every message to every other link.

Run as a subprocess by bench_relay.RelayProcess (`python bench/null_relay.py`); it prints the
address it listens on to stderr and runs until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
if str(REPO_DIR / "src") not in sys.path:
    sys.path.insert(0, str(REPO_DIR / "src"))

from bench_relay import raise_fd_limit  # noqa: E402

from gnut.protocol import connection as cx  # noqa: E402
from gnut.protocol import handshake as hs  # noqa: E402
from gnut.protocol import messages  # noqa: E402

# Null relay backpressure: pause reading the source while any sink has this much unsent.
NULL_HIGH_WATER = 1024 * 1024


def null_relay_main() -> int:
    """Run the null relay: accept links, handshake, relay every message to every other link.

    Framing is the Cython FrameReader (inside gnut.protocol.connection), writes go straight to the
    transports, one write per target per received chunk, and the sender stops being read
    while a target has NULL_HIGH_WATER bytes unsent: the fastest lossless relay on this stack.
    """
    from gnut.runtime import loops

    raise_fd_limit()
    return loops.run(_null_relay(), "uvloop")


async def _null_relay() -> int:
    loop = asyncio.get_running_loop()
    links: list[_NullLink] = []
    stop = asyncio.Event()
    cfg = hs.HandshakeConfig(
        mode="flood", user_agent="null-relay/1", listen_ip="", listen_port=0, accept_deflate=False
    )
    server = await loop.create_server(lambda: _NullLink(links, cfg), "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"null relay listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    for link in links:
        link.transport.abort()
    return 0


MSG_PING_TYPE = 0x00  # the greeting PING's message type


class _NullLink(asyncio.Protocol):
    def __init__(self, links: list, cfg: hs.HandshakeConfig) -> None:
        self.links = links
        self.cfg = cfg
        self.transport = None
        self.conn = cx.Connection(cfg, outgoing=False)
        self.open = False
        self.blocked = False
        self.waiting: list[_NullLink] = []  # senders paused because of us

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=NULL_HIGH_WATER)
        self.links.append(self)

    def connection_lost(self, exc) -> None:
        if self in self.links:
            self.links.remove(self)

    def pause_writing(self) -> None:
        self.blocked = True

    def resume_writing(self) -> None:
        self.blocked = False
        for sender in self.waiting:
            sender.transport.resume_reading()
        self.waiting.clear()

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        conn.receive_data(data)
        while True:
            ev = conn.next_event()
            if ev is cx.NEED_DATA:
                break
            if isinstance(ev, cx.HandshakeRequest):
                conn.accept()
            elif isinstance(ev, cx.HandshakeComplete):
                self.open = True
                # Like a node, greet each new link with a PING: the load generator waits for one
                # message per link, so no round starts before every link is in the relay set.
                conn.send_raw(messages.build(os.urandom(16), MSG_PING_TYPE, 1, 0, b""))
            elif isinstance(ev, cx.Frames):
                out = b"".join([m.raw for m in ev.messages])
                for other in self.links:
                    if other is not self and other.open:
                        other.transport.write(out)
                        if other.blocked:
                            other.waiting.append(self)
                            self.transport.pause_reading()
            elif isinstance(ev, (cx.ProtocolViolation, cx.ConnectionClosed)):
                self.transport.close()
                return
        out = conn.data_to_send()
        if out:
            self.transport.write(out)


if __name__ == "__main__":
    sys.exit(null_relay_main())
