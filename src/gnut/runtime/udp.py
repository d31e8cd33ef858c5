"""The UDP transceiver on the Gnutella port: bounded, rate-limited receive; handlers by message type.

Strategy: one datagram socket bound to the TCP listener's host and port number. Each datagram
first spends a token of its source IP's bucket (named rates below; loopback gets no exemption),
then waits in a bounded queue that is drained in batches on the event loop, so a flood can
neither grow memory nor starve the TCP links. A drained datagram is checked by the sans-IO
`protocol.datagram.parse_datagram` (the TCP limits and codecs) and handed to the handler
registered for its message type. Other parts register handlers (`register` for raw bytes,
as the DHT's Mojito 0x44 does; `register_parsed` for a checked `Datagram`) and send with `send`.
Every drop is counted by reason; `stats()` feeds node.stats()["udp"].
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any

from gnut.protocol.datagram import MAX_DATAGRAM, Datagram, UdpDrop, parse_datagram
from gnut.protocol.printable import printable

log = logging.getLogger("gnut.runtime.udp")

# Datagrams one source IP may send per second, sustained, and in one burst: a GUESS querier or
# an OOB exchange needs a few per second; more from one address is a flood.
UDP_RATE_PER_SOURCE = 20.0
UDP_BURST_PER_SOURCE = 60.0
# Source IPs whose buckets we remember; the least recently seen is forgotten beyond this
# (spoofed floods from many addresses cannot grow the table).
UDP_MAX_SOURCES = 4096
# Datagrams waiting to be handled; over this the newest are dropped and counted.
UDP_QUEUE_MAX = 1024
# Datagrams handled per event-loop turn before yielding to other work.
UDP_DRAIN_BATCH = 64
# Bytes per second we send to one destination IP that did not ask by a datagram of its own
# (LIME/12 indications go to the address in a query GUID): caps what a forged query can aim at a victim.
UDP_UNSOLICITED_BYTES_PER_DEST = 2048.0
# How many recent (type, size) samples of datagrams in/out are kept for amplification stats.
AMP_WINDOW = 256

RawHandler = Callable[[bytes, tuple[str, int]], Any]
ParsedHandler = Callable[[Datagram, tuple[str, int]], Any]


class TokenBuckets:
    """Per-key token buckets (rate per second, burst), LRU-bounded in the number of keys."""

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._b: collections.OrderedDict[str, list[float]] = collections.OrderedDict()

    def take(self, key: str, now: float, cost: float = 1.0) -> bool:
        b = self._b.get(key)
        if b is None:
            if len(self._b) >= self.max_keys:
                self._b.popitem(last=False)
            b = self._b[key] = [self.burst, now]
        else:
            self._b.move_to_end(key)
            b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
            b[1] = now
        if b[0] < cost:
            return False
        b[0] -= cost
        return True

    def __len__(self) -> int:
        return len(self._b)


class UdpTransceiver(asyncio.DatagramProtocol):
    """The node's UDP socket. `await start(host, port)`, `register...`, `send`, `close()`."""

    def __init__(self, rate: float = UDP_RATE_PER_SOURCE, burst: float = UDP_BURST_PER_SOURCE,
                 queue_max: int = UDP_QUEUE_MAX) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.address: tuple[str, int] | None = None
        self.buckets = TokenBuckets(rate, burst, UDP_MAX_SOURCES)
        self.unsolicited = TokenBuckets(UDP_UNSOLICITED_BYTES_PER_DEST, UDP_UNSOLICITED_BYTES_PER_DEST,
                                        UDP_MAX_SOURCES)
        self.queue_max = queue_max
        self._queue: collections.deque[tuple[bytes, tuple[str, int]]] = collections.deque()
        self._draining = False
        self._raw: dict[int, RawHandler] = {}
        self._parsed: dict[int, ParsedHandler] = {}
        self.drops: collections.Counter[str] = collections.Counter()
        self.received: collections.Counter[str] = collections.Counter()
        self.sent: collections.Counter[str] = collections.Counter()
        self.datagrams_in = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.send_errors = 0
        # Largest bytes-out / bytes-in ratio seen for one received datagram (see `reply_budget`).
        self.worst_amplification = 0.0
        self._reply_in: int | None = None
        self._reply_out = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind host:port (raises OSError when taken) and start receiving."""
        self._loop = asyncio.get_running_loop()
        await self._loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        return self.address  # type: ignore[return-value]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.address = transport.get_extra_info("sockname")[:2]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        self._queue.clear()

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable and the like
        self.send_errors += 1

    # --- registration and sending ------------------------------------------------------------------
    def register(self, msg_type: int, handler: RawHandler) -> None:
        """Hand every datagram of `msg_type` (whole header and payload, as received) to `handler`."""
        self._raw[msg_type] = handler

    def register_parsed(self, msg_type: int, handler: ParsedHandler) -> None:
        """Hand every checked Gnutella message of `msg_type` (a Datagram) to `handler`."""
        self._parsed[msg_type] = handler

    def send(self, data: bytes, addr: tuple[str, int], kind: str = "other") -> bool:
        """Send one datagram; False when there is no socket, it is too large or the send failed."""
        if self.transport is None or len(data) > MAX_DATAGRAM:
            self.send_errors += 1
            return False
        try:
            self.transport.sendto(data, addr)
        except (OSError, ValueError, TypeError):
            self.send_errors += 1
            return False
        self.sent[kind] += 1
        self.bytes_out += len(data)
        if self._reply_in is not None:
            self._reply_out += len(data)
        return True

    def send_unsolicited(self, data: bytes, addr: tuple[str, int], kind: str, now: float) -> bool:
        """Send to an address that did not ask by datagram: within its per-destination byte budget."""
        if not self.unsolicited.take(addr[0], now, float(len(data))):
            self.drops["unsolicited_budget"] += 1
            return False
        return self.send(data, addr, kind)

    # --- receiving ----------------------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: Any) -> None:
        addr = (addr[0], addr[1])
        self.datagrams_in += 1
        self.bytes_in += len(data)
        loop = self._loop
        if loop is None:
            return
        if not self.buckets.take(addr[0], loop.time()):
            self.drops[UdpDrop.RATE_LIMITED.value] += 1
            return
        if len(self._queue) >= self.queue_max:
            self.drops[UdpDrop.QUEUE_FULL.value] += 1
            return
        self._queue.append((data, addr))
        if not self._draining:
            self._draining = True
            loop.call_soon(self._drain)

    def _drain(self) -> None:
        q = self._queue
        for _ in range(UDP_DRAIN_BATCH):
            if not q:
                break
            data, addr = q.popleft()
            self.handle(data, addr)
        if q and self._loop is not None:
            self._loop.call_soon(self._drain)
        else:
            self._draining = False

    def handle(self, data: bytes, addr: tuple[str, int]) -> None:
        """Check one datagram and dispatch it (the drained path; tests call it directly too)."""
        res = parse_datagram(data, self._raw.keys())
        if isinstance(res, UdpDrop):
            self.drops[res.value] += 1
            return
        raw = self._raw.get(res.type)
        parsed = self._parsed.get(res.type)
        if raw is None and parsed is None:
            self.drops[UdpDrop.NOT_ALLOWED.value] += 1
            return
        self.received[f"0x{res.type:02x}"] += 1
        if res.deflated:
            self.received["deflated"] += 1
        self._reply_in, self._reply_out = len(data), 0
        try:
            if raw is not None:
                raw(bytes(data), addr)
            else:
                parsed(res, addr)
        except Exception:  # a handler bug must not stop the socket
            self.drops["handler_error"] += 1
            log.exception("UDP handler for 0x%02x failed on a datagram from %s", res.type, printable(str(addr)))
        finally:
            if self._reply_out:
                self.worst_amplification = max(self.worst_amplification, self._reply_out / len(data))
            self._reply_in = None

    def stats(self) -> dict:
        return {
            "address": f"{self.address[0]}:{self.address[1]}" if self.address else None,
            "datagrams_in": self.datagrams_in,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "received": dict(self.received),
            "sent": dict(self.sent),
            "drops": dict(self.drops),
            "send_errors": self.send_errors,
            "queued": len(self._queue),
            "sources_tracked": len(self.buckets),
            "worst_amplification": round(self.worst_amplification, 2),
        }
