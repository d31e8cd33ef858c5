"""UDP amplification: bytes a gnut ultrapeer sends per byte of each kind of datagram it receives.

Real sockets on 127.0.0.1: a target ultrapeer with 10 ultrapeer links (so its UHC answers are
full) and a shared file, a bare UDP client, and a querying node two hops away for the OOB case.
Each row sends one datagram (or, for OOB, runs the real exchange) and reads the target
transceiver's own accounting: bytes sent while handling that datagram / its size.
`python bench/run.py udp` prints the table; RELIABILITY.md "UDP" quotes it.
"""

from __future__ import annotations

import asyncio
import tempfile
import zlib
from pathlib import Path

from gnut.constants import HEADER_LEN, MSG_PING, MSG_PONG, MSG_QUERY, MSG_VENDOR
from gnut.protocol import messages, vendor
from gnut.protocol.datagram import build_datagram
from gnut.protocol.ggep import GgepItem
from gnut.protocol.guid import new_guid
from gnut.runtime.config import NodeConfig
from gnut.runtime.node import Node
from gnut.runtime.oob import TOKEN_LEN

SETTLE = 0.3  # seconds for a reply to go out on loopback


async def _node(root: Path, name: str, files: dict[str, bytes] | None = None, **kw) -> Node:
    share = root / name / "share"
    share.mkdir(parents=True)
    for fname, data in (files or {}).items():
        (share / fname).write_bytes(data)
    # Every peer of the bench is 127.0.0.1: raise the per-address link limits for this lab.
    lab = {"max_links_per_ip": 64, "max_links_per_24": 64, "max_pending_per_ip": 64}
    cfg = NodeConfig(listen_host="127.0.0.1", listen_port=0, mode="ultrapeer", home=root / name,
                     share_dirs=[share], control=False, save_hosts=False, out_links=0, **{**lab, **kw})
    node = Node(cfg)
    await node.start()
    return node


async def _established(a: Node, n: int) -> None:
    for _ in range(500):
        if sum(p.established for p in a.peers.values()) >= n:
            return
        await asyncio.sleep(0.01)
    raise RuntimeError("links did not come up")


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        self.got.append(data)


async def _measure() -> dict:
    root = Path(tempfile.mkdtemp(prefix="gnut-bench-udp-"))
    files = {f"song number {i}.mp3": bytes([i]) * 1000 for i in range(40)}
    target = await _node(root, "target", files)
    others = [await _node(root, f"up{i}") for i in range(10)]
    relay = await _node(root, "relay")
    querier = await _node(root, "querier")
    nodes = [target, *others, relay, querier]
    try:
        for o in others:
            o.dial(*target.address)
        relay.dial(*target.address)
        querier.dial(*relay.address)
        await _established(target, 11)
        await _established(querier, 1)
        loop = asyncio.get_running_loop()
        _, cl = await loop.create_datagram_endpoint(_Client, local_addr=("127.0.0.1", 0))
        me = cl.transport.get_extra_info("sockname")[:2]
        key = vendor.query_key(target.udpnode._qk[0], *me)
        rows = []

        async def send(name: str, data: bytes, solicited: str = "no") -> None:
            udp = target.udp
            udp.worst_amplification = 0.0
            before = udp.bytes_out
            cl.transport.sendto(data, target.address)
            await asyncio.sleep(SETTLE)
            out = udp.bytes_out - before
            rows.append({"datagram": name, "bytes_in": len(data), "bytes_out": out,
                         "factor": round(out / len(data), 2), "solicited": solicited})

        g = new_guid
        await send("PING", build_datagram(g(), MSG_PING, 1, 0, b""))
        await send("PING SCP (UHC)", build_datagram(g(), MSG_PING, 1, 0, vendor.scp_ping().encode()))
        await send("PING SCP, can inflate", build_datagram(g(), MSG_PING, 1, 0, messages.Ping(
            (GgepItem("SCP"),)).encode(), can_inflate=True))
        await send("PING QK", build_datagram(g(), MSG_PING, 1, 0, messages.Ping((GgepItem("QK"),)).encode()))
        await send("PING SCP+QK", build_datagram(g(), MSG_PING, 1, 0, messages.Ping(
            (GgepItem("SCP"), GgepItem("QK"))).encode()))
        await send("QUERY (GUESS) no key", build_datagram(g(), MSG_QUERY, 1, 0, messages.Query("song").encode()))
        await send("QUERY (GUESS) valid key", build_datagram(g(), MSG_QUERY, 1, 0, messages.Query(
            "song number 1", ggep=(GgepItem("QK", key),)).encode()), "key sent to this address")
        await send("LIME/11 forged", build_datagram(g(), MSG_VENDOR, 1, 0, vendor.OobReplyAck(255, b"t").encode()))
        await send("LIME/12 forged", build_datagram(g(), MSG_VENDOR, 1, 0, vendor.OobReplyInd(255).encode()))
        await send("PONG unsolicited", build_datagram(g(), MSG_PONG, 1, 0, messages.Pong(
            1, "127.0.0.1", 0, 0, (GgepItem("IPP", bytes(60)),)).encode()))
        await send("garbage", b"\xff" * 100)
        await send("deflate bomb", messages.build(g(), MSG_PONG, 0x81, 0, zlib.compress(bytes(1 << 20))))
        # OOB: the real exchange; the ack the querier sends is the datagram measured.
        target.udp.worst_amplification = 0.0
        before = target.udp.bytes_out
        search = querier.searches.start("song")
        for _ in range(300):
            if querier.oob.events["hits_received"]:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(SETTLE)
        ack_len = HEADER_LEN + len(vendor.OobReplyAck(1, bytes(TOKEN_LEN)).encode())  # what the querier sends
        rows.append({"datagram": "LIME/11 claiming a live offer", "bytes_in": ack_len,
                     "bytes_out": target.udp.bytes_out - before,
                     "factor": round(target.udp.worst_amplification, 2),
                     "solicited": "query named this address", "hits": len(search.results)})
        cl.transport.close()
        unsolicited = [r["factor"] for r in rows if r["solicited"] == "no"]
        return {"rows": rows, "worst_unsolicited": max(unsolicited), "worst_any": max(r["factor"] for r in rows),
                "target_drops": dict(target.udp.drops)}
    finally:
        for n in nodes:
            await n.stop()


def run(quick: bool = False) -> dict:
    return asyncio.run(_measure())


def format_table(result: dict) -> str:
    lines = [f"{'datagram':34} {'in':>6} {'out':>7} {'out/in':>7}  solicited"]
    for r in result["rows"]:
        lines.append(f"{r['datagram']:34} {r['bytes_in']:>6} {r['bytes_out']:>7} {r['factor']:>7}  {r['solicited']}")
    lines.append(f"worst unsolicited factor: {result['worst_unsolicited']}; worst with a prior request: "
                 f"{result['worst_any']}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_table(run()))
