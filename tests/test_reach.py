"""Firewall detection, connect-back (and its abuse), firewalled behaviour, push proxies and PUSH fallback.

Real sockets on loopback (several 127.0.0.x addresses stand for distinct hosts); the NAT/firewall
cases that loopback cannot show run in the namespace rig (test_reach_netns.py).
"""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from nethelpers import RawPeer, start_node, wait_for

from gnut.constants import MSG_QUERY, MSG_QUERYHIT, MSG_VENDOR
from gnut.protocol import connection as cx
from gnut.protocol import handshake as hs
from gnut.protocol import messages
from gnut.protocol import vmsg_reach as vr
from gnut.runtime import download as dl
from gnut.runtime import pushproxy, reach

FILE = "reachquokka.bin"
DATA = bytes(range(256)) * 300


# --- codecs and the classifier (pure functions: nothing is sent to these addresses) -----------------------
def test_vendor_codecs_round_trip():
    assert vr.parse_connect_back(vr.connect_back(6346)) == 6346
    assert vr.is_kind(vr.connect_back(1, udp=True), vr.UDP_CONNECT_BACK)
    assert vr.parse_push_proxy_ack(vr.push_proxy_ack("11.0.0.2", 6346)) == ("11.0.0.2", 6346)
    assert (b"BEAR", 7) in vr.parse_messages_supported(vr.messages_supported())
    proxies = (("11.0.0.2", 6346), ("11.0.0.3", 7000))
    assert vr.decode_push_proxies(vr.encode_push_proxies(proxies)) == proxies
    assert vr.parse_hostports("11.0.0.2:6346, junk, 11.0.0.3:0,11.0.0.4:1") == [("11.0.0.2", 6346), ("11.0.0.4", 1)]
    g = bytes(range(16))
    assert pushproxy.parse_guid(pushproxy.guid_base32(g)) == g and pushproxy.parse_guid(g.hex()) == g
    assert pushproxy.parse_guid("not a guid") is None


@pytest.mark.parametrize("payload", [vr.connect_back(1)[:9], messages.Vendor.make(b"BEAR", 7, 1, b"\0\0").encode()])
def test_bad_connect_back_is_an_error(payload):
    with pytest.raises(Exception, match="port"):
        vr.parse_connect_back(payload)


def test_messages_supported_count_beyond_payload_is_an_error():
    bad = messages.Vendor.make(b"\0\0\0\0", 0, 0, b"\xff\x00" + b"x" * 8).encode()
    with pytest.raises(Exception, match="entries"):
        vr.parse_messages_supported(bad)


@pytest.mark.parametrize("ip, routable", [("11.0.0.2", True), ("44.1.2.3", True), ("192.168.1.2", False),
                                          ("10.1.1.1", False), ("127.0.0.1", False), ("100.64.0.1", False),
                                          ("203.0.113.5", False), ("169.254.1.1", False), ("nonsense", False)])
def test_routable_classifier(ip, routable):
    assert vr.is_routable_ipv4(ip) is routable


# --- detection ------------------------------------------------------------------------------------
def test_connect_back_shows_the_dialer_reachable(run, tmp_path):
    async def main():
        up = await start_node(tmp_path, "up", mode="ultrapeer")
        leaf = await start_node(tmp_path, "leaf", mode="leaf")
        try:
            assert leaf.reach.tcp()[0] == "unknown"
            leaf.dial(*up.address)
            await wait_for(lambda: leaf.reach.tcp()[0] == "yes", what="connect-back")
            assert up.events["connect_back_probes"] == 1 and leaf.events["connect_back_asked"] == 1
            assert leaf.stats()["reachability"]["tcp"] == "yes"
        finally:
            await up.stop()
            await leaf.stop()

    run(main)


class SilentUltrapeer:
    """A raw ultrapeer listener that ignores vendor messages (never connects back) and records frames."""

    def __init__(self, user_agent: str = "gnut/0.1.0") -> None:
        self.cfg = hs.HandshakeConfig(mode="ultrapeer", listen_ip="127.0.0.1", listen_port=1, user_agent=user_agent)
        self.messages: list = []
        self.writers: list = []

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[:2]

    async def _serve(self, reader, writer) -> None:
        conn = cx.Connection(self.cfg, outgoing=False, remote_ip="127.0.0.1")
        self.conn, self.writer = conn, writer
        self.writers.append(writer)
        while data := await reader.read(65536):  # our own close() ends it with EOF
            conn.receive_data(data)
            while (ev := conn.next_event()) is not cx.NEED_DATA:
                if isinstance(ev, cx.HandshakeRequest):
                    conn.accept()
                elif isinstance(ev, cx.Frames):
                    self.messages.extend(ev.messages)
            if out := conn.data_to_send():
                writer.write(out)

    def send(self, raw: bytes) -> None:
        self.conn.send_raw(raw)
        self.writer.write(self.conn.data_to_send())

    async def stop(self) -> None:
        for w in self.writers:
            w.close()
        self.server.close()
        await self.server.wait_closed()
        await asyncio.sleep(0.05)  # the handlers see EOF and return


def test_unanswered_connect_back_means_firewalled_and_firewalled_behaviour(run, tmp_path):
    async def main():
        silent = SilentUltrapeer()
        addr = await silent.start()
        leaf = await start_node(tmp_path, "leaf", mode="leaf", files={FILE: DATA}, connect_back_wait=0.3)
        leaf.tick_interval = 0.05
        try:
            leaf.dial(*addr)
            await wait_for(lambda: leaf.reach.tcp()[0] == "no", what="firewalled verdict")
            assert "connect back" in leaf.reach.tcp()[1]
            assert any(vr.is_kind(m.payload, vr.TCP_CONNECT_BACK) for m in silent.messages if m.type == MSG_VENDOR)
            # Our own queries now say firewalled.
            leaf.searches.start("anything")
            await wait_for(lambda: any(m.type == MSG_QUERY for m in silent.messages), what="our query")
            q = messages.Query.decode(next(m for m in silent.messages if m.type == MSG_QUERY).payload)
            assert q.firewalled
            # A firewalled querier gets nothing from us; another gets a push-needed hit.
            fw = messages.Query(text="reachquokka", flags=messages.QF_DEFAULT | messages.QF_FIREWALLED)
            silent.send(messages.build(b"F" * 16, MSG_QUERY, 2, 0, fw.encode()))
            ok = messages.Query(text="reachquokka")
            silent.send(messages.build(b"O" * 16, MSG_QUERY, 2, 0, ok.encode()))
            await wait_for(lambda: any(m.type == MSG_QUERYHIT for m in silent.messages), what="hit")
            await asyncio.sleep(0.1)
            hits = [m for m in silent.messages if m.type == MSG_QUERYHIT]
            assert [h.guid for h in hits] == [b"O" * 16]
            assert messages.QueryHit.decode(hits[0].payload).push
            assert leaf.events["queries_fw_to_fw"] == 1
        finally:
            await leaf.stop()
            await silent.stop()

    run(main)


# --- hostile connect-back ----------------------------------------------------------------------------
async def _listener(ip: str, port: int = 0):
    got: list[tuple[str, bytes]] = []

    async def serve(reader, writer):
        got.append((writer.get_extra_info("peername")[0], await reader.read(128)))
        writer.close()

    server = await asyncio.start_server(serve, ip, port)
    return server, server.sockets[0].getsockname()[1], got


def test_connect_back_flood_probes_only_the_requester_once(run, tmp_path):
    async def main():
        node = await start_node(tmp_path, "n", mode="ultrapeer")
        requester_srv, port, at_requester = await _listener("127.0.0.5")
        third_srv, _, at_third = await _listener("127.0.0.1", port)  # same port, another host
        raw = RawPeer(mode="leaf")
        try:
            await raw.connect(node, local_host="127.0.0.5")
            for _ in range(20):
                raw.send(messages.build(b"C" * 16, MSG_VENDOR, 1, 0, vr.connect_back(port)))
            await wait_for(lambda: at_requester, what="the one probe")
            await asyncio.sleep(0.2)
            assert at_requester[0][1] == b"\n\n"
            assert len(at_requester) == 1 and at_third == []
            assert node.events["connect_back_probes"] == 1
            assert node.events["connect_back_rate_limited"] == 19
        finally:
            await raw.close()
            for s in (requester_srv, third_srv):
                s.close()
                await s.wait_closed()
            await node.stop()

    run(main)


def test_connect_back_requests_from_many_hosts_are_bounded(run, tmp_path, monkeypatch):
    monkeypatch.setattr(reach, "PROBE_PER_MINUTE", 3)

    async def main():
        node = await start_node(tmp_path, "n", mode="ultrapeer")
        raws = []
        try:
            for i in range(6):
                raw = RawPeer(mode="leaf")
                await raw.connect(node, local_host=f"127.0.0.{20 + i}")
                raws.append(raw)
                raw.send(messages.build(bytes([i]) * 16, MSG_VENDOR, 1, 0, vr.connect_back(1)))  # closed port
            await wait_for(lambda: node.events["connect_back_probes"] + node.events["connect_back_busy"] == 6,
                           what="all requests handled")
            assert node.events["connect_back_probes"] == 3 and node.events["connect_back_busy"] == 3
        finally:
            for raw in raws:
                await raw.close()
            await node.stop()

    run(main)


# --- push proxies -------------------------------------------------------------------------------------
async def _proxied_pair(tmp_path):
    up = await start_node(tmp_path, "up", mode="ultrapeer")
    leaf = await start_node(tmp_path, "leaf", mode="leaf", files={FILE: DATA}, firewalled=True)
    leaf.tick_interval = 0.05
    leaf.dial(*up.address)
    await wait_for(lambda: leaf.pushproxy.our_proxies() == [up.address], what="push proxy ack")
    return up, leaf


def _source(leaf, proxies, host="127.0.0.1", port=1, firewalled=True) -> dl.Source:
    sf = leaf.share.files[0]
    return dl.Source(host=host, port=port, index=sf.index, name=sf.name, size=sf.size, urn=sf.urn,
                     servent_guid=leaf.servent_guid, firewalled=firewalled, push_proxies=tuple(proxies))


def test_push_proxy_download_and_advertising(run, tmp_path):
    async def main():
        up, leaf = await _proxied_pair(tmp_path)
        downloader = await start_node(tmp_path, "d", mode="leaf")  # no links at all: proxies only
        try:
            assert up.events["push_proxy_leaves"] == 1
            # Hits carry the push flag and GGEP PUSH with the proxy.
            search = up.searches.start("reachquokka")
            await wait_for(lambda: search.results, what="hit from the leaf")
            hit = search.results[0]
            assert hit.firewalled and hit.push_proxies == (up.address,)
            # Download through the proxy, with no Gnutella route at all.
            sf = leaf.share.files[0]
            path = await downloader.transfers.download(sf.urn, sf.size, sf.name, [_source(leaf, [up.address])],
                                                       out_dir=tmp_path / "got", timeout=20)
            assert hashlib.sha1(path.read_bytes()).digest() == hashlib.sha1(DATA).digest()
            assert downloader.events["push_proxy_used"] == 1 and up.events["push_proxy_pushes"] == 1
            assert leaf.events["giv_sent"] == 1
            # X-Push-Proxies in the leaf's HTTP answers.
            reader, writer = await asyncio.open_connection(*leaf.address)
            writer.write(b"HEAD /get/1/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            head = await asyncio.wait_for(reader.read(4096), 5)
            writer.close()
            assert f"X-Push-Proxies: {up.address[0]}:{up.address[1]}".encode() in head
        finally:
            for n in (downloader, leaf, up):
                await n.stop()

    run(main)


def test_direct_failure_falls_back_to_push(run, tmp_path):
    async def main():
        up, leaf = await _proxied_pair(tmp_path)
        downloader = await start_node(tmp_path, "d", mode="leaf")
        try:
            sf = leaf.share.files[0]
            # The hit claims reachable, but its port is closed: direct fails, PUSH through the proxy works.
            src = _source(leaf, [up.address], port=1, firewalled=False)
            path = await downloader.transfers.download(sf.urn, sf.size, sf.name, [src],
                                                       out_dir=tmp_path / "got", timeout=20)
            assert path.read_bytes() == DATA
            assert downloader.events["push_proxy_used"] == 1
        finally:
            for n in (downloader, leaf, up):
                await n.stop()

    run(main)


async def _http(addr, target: str, headers: str = "X-Node: 127.0.0.1:9\r\n", local_ip: str | None = None) -> int:
    reader, writer = await asyncio.open_connection(*addr, local_addr=(local_ip, 0) if local_ip else None)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode())
    line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    return int(line.split()[1])


def test_push_proxy_requests_hostile(run, tmp_path):
    async def main():
        up, leaf = await _proxied_pair(tmp_path)
        try:
            b32 = pushproxy.guid_base32(leaf.servent_guid)
            ok = f"/gnutella/push-proxy?ServerId={b32}"
            assert await _http(up.address, "/gnutella/push-proxy?ServerId=nonsense", local_ip="127.0.0.30") == 400
            assert await _http(up.address, ok, headers="", local_ip="127.0.0.30") == 400  # no X-Node
            assert await _http(up.address, ok + "&file=99999999999", local_ip="127.0.0.30") == 400
            other = pushproxy.guid_base32(b"\x01" * 16)
            assert await _http(up.address, f"/gnet/push-proxy?guid={'01' * 16}", local_ip="127.0.0.31") == 410
            assert await _http(up.address, f"/gnutella/push-proxy?ServerId={other}", local_ip="127.0.0.31") == 410
            # A PUSH to a bogus file index reaches the leaf, which refuses it without connecting.
            assert await _http(up.address, ok + "&file=4242", local_ip="127.0.0.32") == 202
            await wait_for(lambda: leaf.events["push_ignored"] == 1, what="bogus index ignored")
            assert leaf.events["giv_sent"] == 0
            # A flood from one address: the per-address limit answers 503, the leaf gets no more.
            codes = [await _http(up.address, ok + "&file=4242", local_ip="127.0.0.33") for _ in range(15)]
            assert codes.count(202) == pushproxy.REQUESTS_PER_IP_PER_MINUTE and codes.count(503) == 5
            assert up.events["push_proxy_rate_limited"] == 5
            await wait_for(lambda: leaf.events["push_ignored"] == 1 + pushproxy.REQUESTS_PER_IP_PER_MINUTE,
                           what="pushes at the leaf")
        finally:
            await leaf.stop()
            await up.stop()

    run(main)


def test_push_proxy_request_from_a_non_leaf_is_declined(run, tmp_path):
    async def main():
        up = await start_node(tmp_path, "up", mode="ultrapeer")
        raw = RawPeer(mode="ultrapeer")
        try:
            await raw.connect(up)
            raw.send(messages.build(b"G" * 16, MSG_VENDOR, 1, 0, vr.push_proxy_request()))
            await wait_for(lambda: up.events["push_proxy_declined"] == 1, what="declined")
            assert up.pushproxy.leaves == {}
        finally:
            await raw.close()
            await up.stop()

    run(main)


# --- role ---------------------------------------------------------------------------------------------
def test_role_change_says_bye_and_relinks_in_the_new_role(run, tmp_path):
    async def main():
        up = await start_node(tmp_path, "up", mode="ultrapeer")
        node = await start_node(tmp_path, "n", mode="auto")
        try:
            assert node.cfg.mode == "leaf" and node.cfg.auto_role
            node.dial(*up.address)
            await wait_for(lambda: any(p.established for p in up.peers.values()), what="leaf link")
            assert [p.role.name for p in up.peers.values()] == ["LEAF"]
            node.set_role("ultrapeer")
            assert node.router.mode == "ultrapeer" and node.handshake_config.mode == "ultrapeer"
            await wait_for(lambda: not up.peers, what="BYE on role change")
            node.dial(*up.address)
            await wait_for(lambda: any(p.established for p in up.peers.values()), what="relink")
            assert [p.role.name for p in up.peers.values()] == ["ULTRAPEER"]
        finally:
            await node.stop()
            await up.stop()

    run(main)


def test_auto_election_rules(tmp_path):
    from gnut.runtime.config import NodeConfig
    from gnut.runtime.node import Node

    cfg = NodeConfig(listen_host="11.0.0.9", listen_port=6346, mode="auto", home=tmp_path, up_min_uptime=5.0,
                     control=False, save_hosts=False)
    node = Node(cfg)  # never started: the rules only read its state (no socket is opened)
    node.wildcard = False
    r = node.reach
    now = node.started + 1.0
    ok, why = r.up_capable(now)
    assert not ok and "TCP not reachable" in why
    r.incoming = 1  # as if another host had connected
    ok, why = r.up_capable(now)
    assert not ok and "uptime" not in why and "needed" in why
    assert r.up_capable(node.started + 6.0)[0]
    r.tick(node.started + 6.0)
    assert cfg.mode == "ultrapeer" and r.role_reason.startswith("auto: promoted")
    # Reachability lost (here: --firewalled): it steps down, but not within ROLE_HOLD of the last change.
    cfg.firewalled = True
    r.tick(node.started + 7.0)
    assert cfg.mode == "ultrapeer"
    r.tick(node.started + 7.0 + reach.ROLE_HOLD)
    assert cfg.mode == "leaf" and r.role_reason.startswith("auto: stepped down")
    node.address = ("127.0.0.1", 6346)
    cfg.firewalled = False
    assert r.up_capable(node.started + 10_000)[1].endswith("is not routable")


def test_pushes_naming_one_address_are_rate_limited_at_the_leaf(run, tmp_path):
    """Index-0 PUSHes (LimeWire-style proxy requests) are answered with GIV 0, but one address
    gets at most PUSH_CALLBACKS_PER_TARGET_PER_MINUTE callbacks, whoever asks."""
    from gnut.runtime import transfers

    async def main():
        up, leaf = await _proxied_pair(tmp_path)
        srv, port, got = await _listener("127.0.0.34")
        try:
            b32 = pushproxy.guid_base32(leaf.servent_guid)
            codes = [await _http(up.address, f"/gnutella/push-proxy?ServerId={b32}",
                                 headers=f"X-Node: 127.0.0.99:{port}\r\n", local_ip="127.0.0.34")
                     for _ in range(pushproxy.REQUESTS_PER_IP_PER_MINUTE)]
            assert codes == [202] * pushproxy.REQUESTS_PER_IP_PER_MINUTE
            limit = transfers.PUSH_CALLBACKS_PER_TARGET_PER_MINUTE
            await wait_for(lambda: len(got) == limit and leaf.limits.refused["push_rate"]
                           == pushproxy.REQUESTS_PER_IP_PER_MINUTE - limit, what="bounded callbacks")
            # The GIVs went to the requester's own address (not X-Node's 127.0.0.99), for index 0.
            assert all(g[1].startswith(b"GIV 0:" + leaf.servent_guid.hex().upper().encode()) for g in got)
        finally:
            srv.close()
            await srv.wait_closed()
            await leaf.stop()
            await up.stop()

    run(main)


def test_x_push_proxies_from_the_source_replace_the_hits_list(run, tmp_path):
    async def main():
        up, leaf = await _proxied_pair(tmp_path)
        downloader = await start_node(tmp_path, "d", mode="leaf")
        try:
            sf = leaf.share.files[0]
            src = _source(leaf, [], host=leaf.address[0], port=leaf.address[1], firewalled=False)
            d = dl.Download(sf.urn, sf.size, sf.name, tmp_path / "got", sources=[src],
                            push=downloader.transfers.push_connect, assume_private_firewalled=False)
            path = await asyncio.wait_for(d.run(), 20)
            assert path.read_bytes() == DATA
            assert d._sources[src.key].source.push_proxies == (up.address,)
        finally:
            for n in (downloader, leaf, up):
                await n.stop()

    run(main)


def test_unlearned_wildcard_node_never_advertises_loopback_in_hits(run, tmp_path):
    """A node bound to every interface that has not learned its address answers with the address
    the query's link reached (push-needed when not routable), never 127.0.0.1 (no traffic here:
    hit payloads are only built and decoded)."""

    async def main():
        node = await start_node(tmp_path, "n", mode="leaf", files={FILE: DATA})
        try:
            node.wildcard = True  # as after a bind to 0.0.0.0, before any peer told us our address
            files = list(node.share.files)
            hit = messages.QueryHit.decode(node.transfers.hit_payloads(files, True, local_ip="192.168.1.2")[0])
            assert (hit.ip, hit.push) == ("192.168.1.2", True)
            hit = messages.QueryHit.decode(node.transfers.hit_payloads(files, True, local_ip="11.0.0.5")[0])
            assert (hit.ip, hit.push) == ("11.0.0.5", False)
            hit = messages.QueryHit.decode(node.transfers.hit_payloads(files, True)[0])
            assert (hit.ip, hit.push) == ("0.0.0.0", True)
        finally:
            await node.stop()

    run(main)


def test_a_leaf_cannot_take_over_another_leafs_push_proxy_slot(run, tmp_path):
    async def main():
        up, leaf = await _proxied_pair(tmp_path)
        raw = RawPeer(mode="leaf")
        try:
            await raw.connect(up)
            raw.send(messages.build(leaf.servent_guid, MSG_VENDOR, 1, 0, vr.push_proxy_request()))
            await wait_for(lambda: up.events["push_proxy_guid_taken"] == 1, what="hijack refused")
            leaf_peer = next(p for p in up.peers.values() if p.listen_addr == leaf.address)
            assert up.pushproxy.leaves[leaf.servent_guid] == leaf_peer.id
        finally:
            await raw.close()
            await leaf.stop()
            await up.stop()

    run(main)


def test_no_firewalled_verdict_from_peers_that_do_not_support_connect_back(run, tmp_path):
    async def main():
        silent = SilentUltrapeer(user_agent="OtherServent/1.0")  # no Messages Supported either
        addr = await silent.start()
        leaf = await start_node(tmp_path, "leaf", mode="leaf", connect_back_wait=0.2)
        try:
            leaf.dial(*addr)
            await wait_for(lambda: "none known to support it" in leaf.reach.tcp()[1], what="verdict")
            assert leaf.reach.tcp()[0] == "unknown" and not leaf.reach.firewalled()
            # Its Messages Supported, listing BEAR/7, makes the silence mean something.
            silent.send(messages.build(b"M" * 16, MSG_VENDOR, 1, 0, vr.messages_supported()))
            await wait_for(lambda: leaf.reach.tcp()[0] == "no", what="firewalled verdict")
        finally:
            await leaf.stop()
            await silent.stop()

    run(main)
