"""TLS links: the gnet-TLS-upgrade headers (replaying GnutellaBun's captures), the memory-BIO layer,
direct TLS, and gnut <-> gnut TLS links relaying queries and hits on real sockets."""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
from pathlib import Path

import pytest
from nethelpers import start_node, wait_for

from gnut.constants import MSG_QUERY
from gnut.protocol import connection as cx
from gnut.protocol import handshake as hs
from gnut.protocol import messages
from gnut.runtime import tls

VECTORS = Path(__file__).parent / "vectors" / "gnutellabun"
# Bytes standing in for the start of a ClientHello that arrived in the same chunk as a final block.
HELLO_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


def _vec(name: str) -> bytes:
    return (VECTORS / f"{name}.bin").read_bytes()


def _events(conn: cx.Connection) -> list:
    out = []
    while (ev := conn.next_event()) is not cx.NEED_DATA:
        out.append(ev)
    return out


def _cfg(**kw) -> hs.HandshakeConfig:
    return hs.HandshakeConfig(mode="ultrapeer", listen_ip="127.0.0.1", listen_port=6346, **kw)


# --- the handshake, replaying GnutellaBun ------------------------------------------------------
def test_listener_accepts_gnutellabun_upgrade_and_keeps_the_hello_bytes():
    conn = cx.Connection(_cfg(tls=True), outgoing=False, remote_ip="127.0.0.1")
    conn.receive_data(_vec("handshake_request_from_gbun_up"))
    (req,) = _events(conn)
    assert hs.offers_tls_upgrade(req.headers)
    conn.accept()
    _, answer = hs.parse_block(conn.data_to_send())
    assert answer.get("Upgrade") == "TLS/1.0" and answer.get("Connection") == "Upgrade"
    # GnutellaBun's final block, then (same chunk) the first bytes of its ClientHello.
    conn.receive_data(_vec("handshake_final_from_gbun_tls") + HELLO_START)
    (done,) = _events(conn)
    assert isinstance(done, cx.HandshakeComplete) and done.tls_upgrade
    assert conn.tls_leftover == HELLO_START  # for the TLS layer, never for the framing


def test_listener_without_tls_ignores_the_upgrade_offer():
    conn = cx.Connection(_cfg(tls=False), outgoing=False, remote_ip="127.0.0.1")
    conn.receive_data(_vec("handshake_request_from_gbun_up"))
    _events(conn)
    conn.accept()
    _, answer = hs.parse_block(conn.data_to_send())
    assert "Upgrade" not in answer and "Connection" not in answer
    conn.receive_data(_vec("handshake_final_from_gbun_tls"))
    (done,) = _events(conn)
    assert not done.tls_upgrade


def test_dialer_switches_on_gnutellabun_answer():
    conn = cx.Connection(_cfg(tls=True), outgoing=True, remote_ip="127.0.0.1")
    _, connect = hs.parse_block(conn.data_to_send())
    assert connect.get("Upgrade") == "TLS/1.0" and hs.has_token(connect.get("X-Features"), "tls/1.0")
    conn.receive_data(_vec("handshake_response_up_tls"))
    (done,) = _events(conn)
    assert done.tls_upgrade and done.deflate_in  # deflate runs inside TLS
    start, final = hs.parse_block(conn.data_to_send())
    assert start == "GNUTELLA/0.6 200 OK" and final.get("Connection") == "Upgrade"


def test_dialer_stays_plain_when_the_answer_does_not_confirm():
    conn = cx.Connection(_cfg(tls=True), outgoing=True, remote_ip="127.0.0.1")
    conn.data_to_send()
    conn.receive_data(_vec("handshake_response_up_deflate"))
    (done,) = _events(conn)
    assert not done.tls_upgrade
    assert "Connection" not in hs.parse_block(conn.data_to_send())[1]


def test_secure_link_offers_no_upgrade():
    conn = cx.Connection(_cfg(tls=True), outgoing=True, remote_ip="127.0.0.1", secure=True)
    assert "Upgrade" not in hs.parse_block(conn.data_to_send())[1]


# --- identity and the memory-BIO layer -------------------------------------------------------------
def test_identity_is_private_and_reused(tmp_path):
    cert, key = tls.ensure_identity(tmp_path)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cert).st_mode) == 0o600
    before = key.read_bytes()
    assert tls.ensure_identity(tmp_path) == (cert, key) and key.read_bytes() == before


def _pump(a: tls.TlsLayer, b: tls.TlsLayer, wire: bytes) -> bytes:
    """Shuttle wire bytes between two layers until quiet; returns plaintext b received."""
    got_b = b""
    to_b, to_a = wire, b""
    for _ in range(20):
        if to_b:
            plain, to_a = b.receive(to_b)
            got_b += plain
            to_b = b""
        if to_a:
            _plain, to_b = a.receive(to_a)
            to_a = b""
        if not to_a and not to_b:
            break
    return got_b


def test_layer_pair_handshakes_and_carries_queued_plaintext(tmp_path):
    ctx = tls.TlsContexts(tmp_path)
    client, server = tls.TlsLayer(ctx.client, False), tls.TlsLayer(ctx.server, True)
    assert server.start() == b""
    hello = client.start()
    assert tls.looks_like_client_hello(hello)
    assert client.send(b"early") == b""  # waits for the handshake
    got = _pump(client, server, hello)
    assert client.done and server.done and client.version.startswith("TLS")
    assert got == b"early"
    plain, _ = server.receive(client.send(b"x" * 100_000))
    assert plain == b"x" * 100_000


def test_layer_rejects_garbage(tmp_path):
    server = tls.TlsLayer(tls.TlsContexts(tmp_path).server, True)
    server.start()
    with pytest.raises(tls.TlsError):
        server.receive(b"\x16\x03\x01\x00\x05hello" + b"\x00" * 64)


def test_stalled_handshake_output_is_bounded(tmp_path):
    client = tls.TlsLayer(tls.TlsContexts(tmp_path).client, False)
    client.start()
    with pytest.raises(tls.TlsError):
        for _ in range(tls.MAX_PENDING_PLAINTEXT // 4096 + 2):
            client.send(b"q" * 4096)


# --- real sockets ------------------------------------------------------------------------------------
def _tls_of(node) -> list[str]:
    """The TLS version of each established link ("" when plain); connect-back probes are not links."""
    return [p["tls"] for p in node.stats()["peers"] if p["role"] != "handshake"]


def test_gnut_to_gnut_tls_links_relay_queries_and_hits(run, tmp_path):
    async def main():
        a = await start_node(tmp_path, "a")
        b = await start_node(tmp_path, "b")
        c = await start_node(tmp_path, "c", files={"tlsquokka.txt": b"secret" * 100})
        try:
            a.dial(*b.address)
            b.dial(*c.address)
            await wait_for(lambda: len(_tls_of(b)) == 2 and all(_tls_of(b)) and all(_tls_of(a) + _tls_of(c)),
                           what="TLS links")
            assert all(v.startswith("TLSv1.") for v in _tls_of(b))
            assert all(p["deflate"] for p in b.stats()["peers"])  # deflate runs inside TLS
            assert a.events["tls_links"] == 1 and b.events["tls_links"] == 2
            search = a.searches.start("tlsquokka")
            await wait_for(lambda: search.results, what="hit over two TLS hops")
            assert search.results[0].name == "tlsquokka.txt"
            assert b.router.received[MSG_QUERY] >= 1
        finally:
            for n in (a, b, c):
                await n.stop()

    run(main)


def test_tls_node_and_plain_node_link_in_clear(run, tmp_path):
    async def main():
        a = await start_node(tmp_path, "a")
        b = await start_node(tmp_path, "b", tls=False)
        try:
            a.dial(*b.address)
            await wait_for(lambda: any(p.established for p in a.peers.values())
                           and any(p.established for p in b.peers.values()), what="link")
            assert _tls_of(a) == [""] and _tls_of(b) == [""]
        finally:
            await a.stop()
            await b.stop()

    run(main)


def test_direct_tls_connection_is_served(run, tmp_path):
    """A peer that opens with a ClientHello (it knew we speak TLS) gets a Gnutella link inside TLS."""

    async def main():
        node = await start_node(tmp_path, "n")
        try:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            reader, writer = await asyncio.open_connection(*node.address, ssl=ctx)
            conn = cx.Connection(_cfg(tls=True), outgoing=True, remote_ip="127.0.0.1", secure=True)
            writer.write(conn.data_to_send())
            done = None
            while done is None:
                data = await asyncio.wait_for(reader.read(65536), 5)
                assert data, "node closed the TLS link"
                conn.receive_data(data)
                for ev in _events(conn):
                    if isinstance(ev, cx.HandshakeComplete):
                        done = ev
            assert not done.tls_upgrade
            writer.write(conn.data_to_send())
            ping = messages.build(os.urandom(16), 0x00, 1, 0, b"")
            conn.send_raw(ping)
            writer.write(conn.data_to_send())
            await wait_for(lambda: any(p["tls"] and p["msgs_in"] >= 1 for p in node.stats()["peers"]),
                           what="ping over direct TLS")
            writer.close()
        finally:
            await node.stop()

    run(main)


def test_pong_advertises_tls_and_the_next_dial_is_direct_tls(run, tmp_path):
    async def main():
        a = await start_node(tmp_path, "a", mode="leaf")  # a leaf's first PING has TTL 1: b answers itself
        b = await start_node(tmp_path, "b", mode="ultrapeer")
        try:
            a.dial(*b.address)
            await wait_for(lambda: b.address in a.tls_hosts, what="b's pong with GGEP TLS")
            for p in list(a.peers.values()):
                p.close("test: redial")
            await wait_for(lambda: not a.peers and not b.peers, what="links gone")
            a.dial(*b.address)
            await wait_for(lambda: any(p.established and p.tls is not None and p.tls.done for p in b.peers.values()),
                           what="direct TLS link")
            (bp,) = b.peers.values()
            assert "Upgrade" not in bp.peer_headers  # TLS from the first byte, not an upgrade
            assert a.events["tls_links"] == 2
        finally:
            await a.stop()
            await b.stop()

    run(main)


# --- hostile ---------------------------------------------------------------------------------------------
def _raw_upgrade_cfg() -> hs.HandshakeConfig:
    return hs.HandshakeConfig(mode="leaf", listen_ip="127.0.0.1", listen_port=1, tls=True)


def test_garbage_after_an_agreed_upgrade_closes_the_link(run, tmp_path):
    async def main():
        node = await start_node(tmp_path, "n", mode="ultrapeer")
        try:
            reader, writer = await asyncio.open_connection(*node.address)
            conn = cx.Connection(_raw_upgrade_cfg(), outgoing=True, remote_ip="127.0.0.1")
            writer.write(conn.data_to_send())
            while not any(isinstance(ev, cx.HandshakeComplete) for ev in _events_after(conn, await reader.read(4096))):
                pass
            writer.write(conn.data_to_send())  # final block with Connection: Upgrade
            writer.write(b"\x16\x03\x01\x00\x05" + b"\xff" * 64)  # not a ClientHello
            await wait_for(lambda: node.events["tls_failed"] == 1 and not node.peers, what="link closed")
            writer.close()
        finally:
            await node.stop()

    run(main)


def test_stalled_tls_handshake_hits_the_handshake_deadline(run, tmp_path):
    async def main():
        node = await start_node(tmp_path, "n", mode="ultrapeer")
        node.handshake_timeout = 0.3
        node.tick_interval = 0.05
        try:
            reader, writer = await asyncio.open_connection(*node.address)
            conn = cx.Connection(_raw_upgrade_cfg(), outgoing=True, remote_ip="127.0.0.1")
            writer.write(conn.data_to_send())
            while not any(isinstance(ev, cx.HandshakeComplete) for ev in _events_after(conn, await reader.read(4096))):
                pass
            writer.write(conn.data_to_send())  # agree, then never start TLS
            await wait_for(lambda: node.events["handshake_timeouts"] == 1 and not node.peers, what="deadline")
            writer.close()
        finally:
            await node.stop()

    run(main)


def _events_after(conn: cx.Connection, data: bytes) -> list:
    assert data, "node closed during the handshake"
    conn.receive_data(data)
    return _events(conn)


def test_wildcard_node_advertises_no_listen_ip_before_learning(tmp_path):
    from gnut.runtime.config import NodeConfig
    from gnut.runtime.node import Node

    node = Node(NodeConfig(listen_host="0.0.0.0", listen_port=6346, home=tmp_path, control=False))  # not started
    assert node.handshake_config.listen_ip == ""
    names = [n for n, _ in hs.our_headers(node.handshake_config, "11.0.0.7", False, False)]
    assert "Listen-IP" not in names and "X-My-Address" not in names
    # Once peers agreed on our address (protocol/addresses.AddressVotes), it is advertised.
    node.addr_votes.current = "11.0.0.7"
    node.address = ("11.0.0.7", 6346)
    node.handshake_config = node._handshake_config()
    assert node.handshake_config.listen_ip == "11.0.0.7" and not node.address_unknown


def test_http_upload_over_direct_tls(run, tmp_path):
    """A download over TLS (gtk-gnutella fetches over TLS from TLS-capable hosts): the upload side
    runs on the plaintext of the TLS layer, with its flow control."""
    big = bytes(range(256)) * 8192  # 2 MiB

    async def main():
        node = await start_node(tmp_path, "n", files={"tlsfile.bin": big})
        try:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            reader, writer = await asyncio.open_connection(*node.address, ssl=ctx)
            urn = node.share.files[0].urn
            writer.write(f"GET /uri-res/N2R?{urn} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {len(big)}".encode() in head
            body = await asyncio.wait_for(reader.readexactly(len(big)), 20)
            assert body == big
            writer.close()
        finally:
            await node.stop()

    run(main)


def test_hits_say_tls_and_downloads_use_it(run, tmp_path):
    data = b"tls download " * 5000

    async def main():
        from gnut.app.actions import hit_source

        up = await start_node(tmp_path, "up", mode="ultrapeer")
        holder = await start_node(tmp_path, "h", mode="leaf", files={"tlsdl.txt": data})
        plain = await start_node(tmp_path, "p", mode="leaf", files={"tlsdl plain.txt": data}, tls=False)
        try:
            holder.dial(*up.address)
            plain.dial(*up.address)
            await wait_for(lambda: up.n_leaves == 2, what="leaves")
            await asyncio.sleep(0.3)  # QRP tables installed
            search = up.searches.start("tlsdl")
            await wait_for(lambda: len(search.results) == 2, what="both hits")
            by_name = {h.name: h for h in search.results}
            assert by_name["tlsdl.txt"].tls and not by_name["tlsdl plain.txt"].tls
            before = holder.events["tls_links"]
            h = by_name["tlsdl.txt"]
            path = await up.transfers.download(h.urn, h.size, h.name, [hit_source(h)], out_dir=tmp_path / "got",
                                               timeout=20)
            assert path.read_bytes() == data
            assert holder.events["tls_links"] == before + 1  # the upload came over TLS
        finally:
            for n in (holder, plain, up):
                await n.stop()

    run(main)
