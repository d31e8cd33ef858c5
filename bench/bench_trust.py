"""What one attacking address can make a node spend: amplification and held resources.

Usage: python bench/bench_trust.py [--files N] [--json OUT]

Starts one real node on 127.0.0.1 with N shared files and attacks it from 127.0.0.66 over real
sockets (an honest peer comes from 127.0.1.5). It only uses APIs that the tree before the
"trust: fairness and limits" work also has (NodeConfig's basic fields, Node, the sans-IO
protocol), so the same script measures both trees: run it with PYTHONPATH pointing at the other
tree's src/ (see RELIABILITY.md, "Trust: fairness and limits").

Measured:
- amplification (bytes we send / bytes the attacker sent) of a browse-host GET, a browse-host
  HEAD, a QUERY matching many files, a PING and a PUSH naming a third party (connections and
  bytes the third party receives);
- CPU per new link (handshake, our QRP table, first ping);
- what one address holds: Gnutella links, upload slots, pending sockets (and process fds),
  how long a GIV trickling one line every 2 s keeps its socket, memory (RSS) held by 12 unread
  browses, and event-loop CPU per browse request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from gnut.constants import MSG_PING, MSG_PONG, MSG_PUSH, MSG_QUERY, MSG_QUERYHIT
from gnut.protocol import connection as cx
from gnut.protocol import handshake as hs
from gnut.protocol import messages
from gnut.protocol.guid import new_guid
from gnut.runtime.config import NodeConfig
from gnut.runtime.node import Node

ATTACKER = "127.0.0.66"
# Each resource is attacked from its own address (the accept-rate limit counts per address and
# per minute: one phase must not eat the next one's budget).
PHASE_IP = {"links": "127.0.0.67", "slots": "127.0.0.68", "silent": "127.0.0.69", "giv": "127.0.0.70",
            "browse": "127.0.0.71"}
THIRD_PARTY = "127.0.0.99"
HONEST = "127.0.1.5"
ACCEPT = b"Accept: application/x-gnutella-packets\r\n"
GIV_LINE_EVERY = 2.0
GIV_WATCH = 30.0  # a GIV socket still open after this long is reported as "> 30 s"


def rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) - 1


class Raw:
    """A bare Gnutella peer from a chosen source address; counts bytes both ways."""

    def __init__(self, mode: str = "ultrapeer") -> None:
        self.conn = cx.Connection(hs.HandshakeConfig(mode=mode, listen_ip=ATTACKER, listen_port=7000),
                                  outgoing=True, remote_ip="127.0.0.1")
        self.sent = self.received = 0
        self.msgs: list = []
        self.ok: bool | None = None

    async def connect(self, addr, ip: str = ATTACKER) -> bool:
        try:
            self.reader, self.writer = await asyncio.open_connection(*addr, local_addr=(ip, 0))
        except OSError:
            self.ok = False
            return False
        self._out()
        self.task = asyncio.get_running_loop().create_task(self._read())
        t0 = time.monotonic()
        while self.ok is None and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.005)
        return bool(self.ok)

    def _out(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    async def _read(self) -> None:
        while True:
            try:
                data = await self.reader.read(65536)
            except OSError:
                data = b""
            if not data:
                self.ok = self.ok or False
                return
            if self.ok:
                self.received += len(data)
            try:
                self.conn.receive_data(data)
            except Exception:
                self.ok = self.ok or False
                return
            while (ev := self.conn.next_event()) is not cx.NEED_DATA:
                if isinstance(ev, cx.HandshakeComplete):
                    self.ok = True
                elif isinstance(ev, cx.Frames):
                    self.msgs.extend(ev.messages)
                elif isinstance(ev, (cx.HandshakeRefused, cx.ConnectionClosed, cx.ProtocolViolation)):
                    self.ok = self.ok or False
                    return
            self._out()

    def send(self, raw: bytes) -> None:
        self.sent += len(raw)
        self.conn.send_raw(raw)
        self._out()

    def close(self) -> None:
        if hasattr(self, "writer"):
            self.writer.close()
            self.task.cancel()


async def http(addr, raw: bytes, ip: str = ATTACKER, read: bool = True) -> tuple[int, int, bytes]:
    """Send `raw`; return (bytes in, bytes out, first line) after the server closes or 2 s of quiet
    (30 s for the first byte: a first browse of a large share takes a while to encode)."""
    reader, writer = await asyncio.open_connection(*addr, local_addr=(ip, 0))
    writer.write(raw)
    got = bytearray()
    try:
        while read:
            data = await asyncio.wait_for(reader.read(1 << 20), 2.0 if got else 30.0)
            if not data:
                break
            got += data
    except (TimeoutError, OSError):
        pass
    writer.close()
    return len(raw), len(got), bytes(got.split(b"\r\n", 1)[0])


async def measure(files: int) -> dict:
    out: dict = {"files": files}
    with tempfile.TemporaryDirectory(prefix="gnut-trust-") as tmp:
        share = Path(tmp) / "share"
        share.mkdir()
        for i in range(files):
            (share / f"track {i:06d} live album.mp3").write_bytes(i.to_bytes(4, "little"))
        node = Node(NodeConfig(listen_host="127.0.0.1", listen_port=0, mode="ultrapeer", home=Path(tmp) / "home",
                               share_dirs=[share], control=False, save_hosts=False, out_links=0))
        await node.start()
        addr = node.address
        sf = node.share.files[0]
        get1 = (f"GET /uri-res/N2R?{sf.urn} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-0\r\n\r\n").encode()
        browse = b"GET / HTTP/1.1\r\nHost: x\r\n" + ACCEPT + b"Connection: close\r\n\r\n"
        head = b"HEAD / HTTP/1.1\r\nHost: x\r\n" + ACCEPT + b"Connection: close\r\n\r\n"
        try:
            # --- amplification ---------------------------------------------------------------
            amp = {}
            cpu0 = time.process_time()
            n_in, n_out, _ = await http(addr, browse)
            cpu_first = time.process_time() - cpu0
            amp["browse GET"] = [n_in, n_out]
            cpu0 = time.process_time()
            for _ in range(5):
                await http(addr, browse)
            cpu_next = (time.process_time() - cpu0) / 5
            n_in, n_out, _ = await http(addr, head)
            amp["browse HEAD"] = [n_in, n_out]
            p = Raw()
            await p.connect(addr)
            before = p.received
            q = messages.build(new_guid(), MSG_QUERY, 1, 0, messages.Query(text="track").encode())
            p.send(q)
            await asyncio.sleep(0.5)
            hits = [m for m in p.msgs if m.type == MSG_QUERYHIT]
            amp["QUERY 'track'"] = [len(q), sum(23 + len(m.payload) for m in hits)]
            p.msgs.clear()
            ping = messages.build(new_guid(), MSG_PING, 1, 0, b"")
            p.send(ping)
            await asyncio.sleep(0.3)
            amp["PING ttl 1"] = [len(ping), sum(23 + len(m.payload) for m in p.msgs if m.type == MSG_PONG)]
            # PUSH naming a third party: what does the third party receive?
            third = {"conns": 0, "bytes": 0}

            async def victim(r, w):
                third["conns"] += 1
                try:
                    third["bytes"] += len(await asyncio.wait_for(r.read(4096), 1.0))
                except (TimeoutError, OSError):
                    pass
                w.close()

            vsrv = await asyncio.start_server(victim, THIRD_PARTY, 0)
            vport = vsrv.sockets[0].getsockname()[1]
            pushes = 20
            push_bytes = 0
            for _ in range(pushes):
                raw = messages.build(new_guid(), MSG_PUSH, 3, 0,
                                     messages.Push(node.servent_guid, sf.index, THIRD_PARTY, vport).encode())
                push_bytes += len(raw)
                p.send(raw)
            await asyncio.sleep(2.0)
            vsrv.close()
            amp["PUSH to a third party (x20)"] = [push_bytes, third["bytes"]]
            out["push_third_party_connections"] = third["conns"]
            p.close()
            del before
            out["amplification"] = {k: {"in": a, "out": b, "factor": round(b / a, 1)} for k, (a, b) in amp.items()}
            out["browse_cpu_ms"] = {"first": round(cpu_first * 1e3, 1), "next": round(cpu_next * 1e3, 1)}

            # --- resources one address holds --------------------------------------------------
            links = []
            for mode in ("ultrapeer", "leaf"):
                for _ in range(40):
                    r = Raw(mode)
                    await r.connect(addr, PHASE_IP["links"])
                    links.append(r)
            out["links_held"] = sum(1 for r in links if r.ok)
            honest = Raw()
            out["honest_link_after"] = await honest.connect(addr, HONEST)
            honest.close()
            for r in links:
                r.close()
            await asyncio.sleep(0.3)
            # CPU per new link (handshake, our QRP table, first ping), from distinct addresses.
            cpu0 = time.process_time()
            for i in range(5):
                r = Raw()
                await r.connect(addr, f"127.0.2.{i + 1}")
                await asyncio.sleep(0.2)
                r.close()
            out["cpu_per_new_link_ms"] = round((time.process_time() - cpu0) / 5 * 1e3, 1)
            await asyncio.sleep(0.3)

            slots = []
            for _ in range(8):
                reader, writer = await asyncio.open_connection(*addr, local_addr=(PHASE_IP["slots"], 0))
                writer.write(get1)
                line = (await asyncio.wait_for(reader.readline(), 5)).decode()
                slots.append((line, writer))
            out["upload_slots_held"] = sum(1 for line, _ in slots if " 20" in line)
            await asyncio.sleep(6.0)  # quiet keep-alive: is the slot still held?
            _, _, honest_line = await http(addr, get1.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"), HONEST)
            out["honest_upload_after_6s"] = honest_line.decode()
            for _, w in slots:
                w.close()
            await asyncio.sleep(0.3)

            fds0 = open_fds()
            silent = []
            for _ in range(200):
                try:
                    silent.append(await asyncio.open_connection(*addr, local_addr=(PHASE_IP["silent"], 0)))
                except OSError:
                    break
            await asyncio.sleep(1.0)
            # Both ends of each socket live in this process: subtract the attacker's own.
            out["silent_sockets_held"] = open_fds() - fds0 - len(silent)
            for _, w in silent:
                w.close()
            await asyncio.sleep(0.5)

            reader, writer = await asyncio.open_connection(*addr, local_addr=(PHASE_IP["giv"], 0))
            t0 = time.monotonic()
            writer.write(b"GIV 1:" + b"0" * 32 + b"/x\n")
            held = None
            while time.monotonic() - t0 < GIV_WATCH:
                try:
                    writer.write(b"x\n")
                    await writer.drain()
                    if await asyncio.wait_for(reader.read(100), GIV_LINE_EVERY) == b"":
                        held = time.monotonic() - t0
                        break
                except TimeoutError:
                    continue
                except OSError:
                    held = time.monotonic() - t0
                    break
            writer.close()
            out["slow_giv_socket_held_s"] = round(held, 1) if held is not None else f"> {GIV_WATCH:.0f}"

            rss0 = rss_kib()
            unread = []
            for _ in range(12):
                reader, writer = await asyncio.open_connection(*addr, local_addr=(PHASE_IP["browse"], 0),
                                                               limit=1 << 16)
                writer.write(browse)
                unread.append(writer)
            await asyncio.sleep(3.0)
            out["rss_12_unread_browses_kib"] = rss_kib() - rss0
            t0 = time.monotonic()
            honest = Raw()
            await honest.connect(addr, HONEST)
            honest.send(messages.build(new_guid(), MSG_QUERY, 1, 0, messages.Query(text="track").encode()))
            while not any(m.type == MSG_QUERYHIT for m in honest.msgs) and time.monotonic() - t0 < 10:
                await asyncio.sleep(0.01)
            out["honest_query_answered_s"] = round(time.monotonic() - t0, 2)
            honest.close()
            for w in unread:
                w.close()
            stats = node.stats()
            out["limits"] = stats.get("limits", "(none: before)")
        finally:
            await node.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    res = asyncio.run(measure(args.files))
    print(json.dumps(res, indent=1))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
