"""Fairness and resource limits against attackers on real sockets from 127.0.0.x source addresses.

Strategy: each test starts a real node with the DEFAULT per-address limits (the lab network of
tests/nethelpers.py raises them; these tests pass the defaults back), attacks it from one or more
127.0.0.x addresses (`local_addr`), checks the attack was bounded and counted under
stats()["limits"], and ends with an honest peer from another address still being served.
Deadlines are shortened on the instance (handshake_timeout, tick_interval, ctx.request_timeout),
as tests/test_hostile.py does, so that each test stays short.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from pathlib import Path

import pytest
from nethelpers import RawPeer, established, start_node, wait_for

from gnut.app.control import ControlServer, request
from gnut.constants import MSG_BYE, MSG_PUSH, MSG_QUERY, MSG_QUERYHIT
from gnut.protocol import messages
from gnut.protocol.guid import new_guid
from gnut.runtime import limits as lim
from gnut.runtime.download import prune_corrupt
from gnut.runtime.transfers import PUSH_CALLBACKS_PER_TARGET_PER_MINUTE, push_target_refusal

ATTACKER = "127.0.0.66"
HONEST = "127.0.1.5"  # another /24 of loopback: the per-/24 limit does not lump it with the attackers
DEFAULT_LIMITS = {
    "max_links_per_ip": lim.MAX_LINKS_PER_IP,
    "max_links_per_24": lim.MAX_LINKS_PER_24,
    "max_pending_per_ip": lim.MAX_PENDING_PER_IP,
    "max_http_per_ip": lim.MAX_HTTP_PER_IP,
    "upload_slots_per_host": lim.UPLOAD_SLOTS_PER_HOST,
    "max_browses": lim.MAX_BROWSES,
}
FILES = {"honest answer.txt": b"h" * 4096}
ACCEPT = "Accept: application/x-gnutella-packets\r\n"


async def node_with_defaults(tmp: Path, files=None, **kw):
    return await start_node(tmp, "n", "ultrapeer", files or FILES, **{**DEFAULT_LIMITS, **kw})


async def open_from(node, ip: str):
    return await asyncio.open_connection(*node.address, local_addr=(ip, 0))


def http_get(target: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


async def read_head(reader) -> tuple[int, dict[str, str]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), headers


async def http_once(node, ip: str, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await open_from(node, ip)
    try:
        writer.write(raw)
        status, headers = await read_head(reader)
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), 10)
        return status, headers, body
    finally:
        writer.close()


async def honest_search(node, text: str = "honest") -> None:
    p = RawPeer()
    await p.connect(node, local_host=HONEST)
    try:
        p.send(messages.build(new_guid(), MSG_QUERY, 2, 0, messages.Query(text=text).encode()))
        await wait_for(lambda: p.of_type(MSG_QUERYHIT), what="a hit for an honest peer")
    finally:
        await p.close()


# --- links per IP and per /24 ----------------------------------------------------------------------


def test_one_ip_cannot_take_every_link(run, tmp_path: Path) -> None:
    async def go():
        node = await node_with_defaults(tmp_path, max_peers=64)
        attackers = []
        try:
            for _ in range(60):  # 60 links asked from one address, one after the other
                p = RawPeer()
                await p.connect(node, local_host=ATTACKER, expect=False)
                attackers.append(p)
            from_attacker = sum(1 for p in node.peers.values() if p.established and p.addr[0] == ATTACKER)
            for i in range(20):  # then 20 more addresses of the same /24
                p = RawPeer()
                await p.connect(node, local_host=f"127.0.0.{100 + i}", expect=False)
                attackers.append(p)
            from_net = sum(1 for p in node.peers.values() if p.established and p.addr[0].startswith("127.0.0."))
            await honest_search(node)
            return from_attacker, from_net, node.stats()["limits"]
        finally:
            for p in attackers:
                await p.close()
            await node.stop()

    from_attacker, from_net, limits = run(go)
    assert from_attacker == lim.MAX_LINKS_PER_IP
    assert from_net == lim.MAX_LINKS_PER_24
    assert limits["per_ip"] >= 58 and limits["per_24"] >= 1


def test_pending_sockets_per_ip_are_capped_and_time_out(run, tmp_path: Path) -> None:
    async def go():
        node = await node_with_defaults(tmp_path)
        node.handshake_timeout = 1.0
        node.tick_interval = 0.1
        socks = [await open_from(node, ATTACKER) for _ in range(20)]  # connect, say nothing
        await asyncio.sleep(0.2)
        pending = sum(1 for p in node.peers.values() if p.addr and p.addr[0] == ATTACKER)
        await honest_search(node)  # another address is not affected
        t0 = time.monotonic()
        closed = await asyncio.gather(*(asyncio.wait_for(r.read(), 5) for r, _ in socks))
        waited = time.monotonic() - t0
        for _, w in socks:
            w.close()
        limits = node.stats()["limits"]
        await node.stop()
        return pending, closed, waited, limits

    pending, closed, waited, limits = run(go)
    assert pending == lim.MAX_PENDING_PER_IP
    assert all(c == b"" for c in closed) and waited < 3.0  # the total deadline closed the silent ones
    assert limits["pending_per_ip"] == 20 - lim.MAX_PENDING_PER_IP and limits["deadline"] >= 1


def test_fd_headroom_refuses_new_work_and_recovers(run, tmp_path: Path, caplog) -> None:
    async def go():
        node = await node_with_defaults(tmp_path, max_pending_per_ip=64)
        limits = node.limits
        # Lower the limit the node sees to a little above what is open now (as RLIMIT_NOFILE would be).
        limits.fd_limit = limits.open_fds(fresh=True) + limits.fd_reserve + 6
        socks = []
        for i in range(20):
            r, w = await open_from(node, f"127.0.0.{10 + i}")
            socks.append((r, w))
            await asyncio.sleep(0.06)  # past FD_COUNT_EVERY: each accept sees a fresh count
        refused = limits.refused["fd_headroom"]
        node.dial("127.0.0.1", 1)  # a dial inside the reserve is refused too (never attempted)
        dial_refused = limits.refused["fd_headroom"] - refused
        for _, w in socks:
            w.close()
        await asyncio.sleep(0.2)
        limits.open_fds(fresh=True)
        await honest_search(node)
        await node.stop()
        return refused, dial_refused

    with caplog.at_level(logging.WARNING, logger="gnut.runtime.limits"):
        refused, dial_refused = run(go)
    assert refused >= 10 and dial_refused == 1
    assert any("fd_headroom" in r.getMessage() for r in caplog.records)


# --- uploads ---------------------------------------------------------------------------------------


def test_one_host_cannot_hold_the_upload_slots(run, tmp_path: Path) -> None:
    async def go():
        node = await node_with_defaults(tmp_path, upload_slots=2)
        ctx = node.transfers.ctx
        ctx.slot_hold_idle = 0.5
        sf = node.share.files[0]
        target = http_get(f"/uri-res/N2R?{sf.urn}", extra="Range: bytes=0-0\r\n")
        r1, w1 = await open_from(node, ATTACKER)
        w1.write(target)
        first = await read_head(r1)
        await r1.readexactly(1)
        second = await http_once(node, ATTACKER, target)  # a second slot for the same host: no
        honest = await http_once(node, HONEST, target)  # the other slot is there for others
        # The attacker's keep-alive connection goes quiet: its slot comes back after slot_hold_idle.
        await wait_for(lambda: ctx.active_uploads == 0, timeout=3, what="idle slot released")
        again = await http_once(node, ATTACKER, target)
        w1.close()
        stats, limits = dict(ctx.stats), node.stats()["limits"]
        await node.stop()
        return first, second, honest, again, stats, limits

    first, second, honest, again, stats, limits = run(go)
    assert first[0] == 206 and second[0] == 503 and honest[0] == 206 and again[0] == 206
    assert limits["upload_per_host"] == 1 and stats["slots_released_idle"] == 1


def test_keepalive_trickle_cannot_keep_a_slot(run, tmp_path: Path) -> None:
    """One byte asked every so often on keep-alive: between requests the slot goes back."""

    async def go():
        node = await node_with_defaults(tmp_path, upload_slots=1)
        ctx = node.transfers.ctx
        ctx.slot_hold_idle = 0.3
        sf = node.share.files[0]
        target = http_get(f"/uri-res/N2R?{sf.urn}", extra="Range: bytes=0-0\r\n")
        r1, w1 = await open_from(node, ATTACKER)
        served = []
        for _ in range(3):
            w1.write(target)
            served.append((await read_head(r1))[0])
            await r1.readexactly(1)
            await asyncio.sleep(0.5)  # longer than slot_hold_idle, shorter than idle_timeout
            served.append((await http_once(node, HONEST, target))[0])
            await wait_for(lambda: ctx.active_uploads == 0, what="honest slot back")
        w1.close()
        await node.stop()
        return served

    assert run(go) == [206, 206] * 3


def test_http_connections_per_ip(run, tmp_path: Path) -> None:
    async def go():
        node = await node_with_defaults(tmp_path)
        socks = []
        for _ in range(lim.MAX_HTTP_PER_IP + 3):
            r, w = await open_from(node, ATTACKER)
            w.write(b"GET / HTTP/1.1\r\n")  # an HTTP request head that is never finished
            socks.append((r, w))
        await asyncio.sleep(0.3)
        closed = 0
        for r, _ in socks:
            try:
                closed += await asyncio.wait_for(r.read(), 0.05) == b""
            except (TimeoutError, ConnectionError):
                pass
        sf = node.share.files[0]
        honest = await http_once(node, HONEST, http_get(f"/uri-res/N2R?{sf.urn}"))
        for _, w in socks:
            w.close()
        limits = node.stats()["limits"]
        await node.stop()
        return closed, honest, limits

    closed, honest, limits = run(go)
    assert closed == 3 and limits["http_per_ip"] == 3
    assert honest[0] == 200 and honest[2] == FILES["honest answer.txt"]


# --- total deadlines -------------------------------------------------------------------------------


@pytest.mark.parametrize("attack", ["giv", "head"])
def test_slow_giv_or_request_head_hits_the_total_deadline(run, tmp_path: Path, attack: str) -> None:
    """A line (or a header) every 0.2 s: the per-read timeout never fires, the total deadline does."""

    async def go():
        node = await node_with_defaults(tmp_path)
        node.transfers.ctx.request_timeout = 1.0
        reader, writer = await open_from(node, ATTACKER)
        lines = [b"GIV 1:" + b"0" * 32 + b"/x\n"] if attack == "giv" else [b"GET / HTTP/1.1\r\n"]
        lines += [b"X-Pad: a\r\n"] * 50
        t0 = time.monotonic()
        closed_after = None
        for line in lines:
            try:
                writer.write(line)
                await writer.drain()
                data = await asyncio.wait_for(reader.read(4096), 0.2)
            except TimeoutError:
                continue
            except ConnectionError:
                data = b""
            if not data or b"408" in data:
                closed_after = time.monotonic() - t0
                break
        writer.close()
        await honest_search(node)
        limits = node.stats()["limits"]
        await node.stop()
        return closed_after, limits

    closed_after, limits = run(go)
    assert closed_after is not None and closed_after < 2.5
    assert limits["deadline"] >= 1


# --- browse host -----------------------------------------------------------------------------------


def test_browse_host_is_encoded_once_streamed_and_bounded(run, tmp_path: Path) -> None:
    files = {f"track {i:04d} of the album.mp3": os.urandom(16) for i in range(3000)}
    files.update(FILES)

    async def go():
        node = await node_with_defaults(tmp_path, files=files)
        ctx = node.transfers.ctx
        cache = ctx.browse_cache
        # HEAD (pipelined, many) costs nothing: nothing is encoded.
        reader, writer = await open_from(node, ATTACKER)
        writer.write(http_get("/", "HEAD", ACCEPT) * 20)
        heads = [(await read_head(reader))[0] for _ in range(20)]
        writer.close()
        builds_after_head = cache.builds
        cpu0 = time.process_time()
        first = await http_once(node, ATTACKER, http_get("/", extra=ACCEPT))
        cpu_build = time.process_time() - cpu0
        cpu0 = time.process_time()
        for _ in range(10):
            again = await http_once(node, ATTACKER, http_get("/", extra=ACCEPT))
        cpu_cached = (time.process_time() - cpu0) / 10
        # Unread browses: at most max_browses stream at once, the rest are refused at once.
        unread = []
        for i in range(6):
            r, w = await open_from(node, f"127.0.0.{70 + i}")
            w.write(http_get("/", extra=ACCEPT))
            unread.append((r, w))
        await asyncio.sleep(0.3)
        busy = ctx.limits.refused["browse_busy"]
        await honest_search(node, "album")  # queries are still answered meanwhile
        held = len(cache.body)
        for _, w in unread:
            w.close()
        # A rescan that changes the share invalidates the encoding.
        (node.cfg.share_dirs[0] / "brand new.txt").write_bytes(b"new")
        await node.transfers.scan()
        third = await http_once(node, HONEST, http_get("/", extra=ACCEPT))
        out = (heads, builds_after_head, first, again, busy, cache.builds, third, cpu_build, cpu_cached, held)
        await node.stop()
        return out

    heads, builds_after_head, first, again, busy, builds, third, cpu_build, cpu_cached, held = run(go)
    assert heads == [200] * 20 and builds_after_head == 0
    assert first[0] == 200 and again[2] == first[2] and len(first[2]) == held
    assert busy == 6 - lim.MAX_BROWSES
    assert builds == 2 and b"brand new.txt" in third[2] and b"brand new.txt" not in first[2]
    print(f"browse of 3001 files: first request {cpu_build * 1e3:.1f} ms CPU, cached {cpu_cached * 1e3:.1f} ms CPU, "
          f"{len(first[2])} bytes held once")


# --- PUSH reflection -------------------------------------------------------------------------------


def test_push_target_classifier() -> None:
    """Pure classification (nothing is contacted)."""
    assert push_target_refusal("127.0.0.9", 6346, "127.0.0.1") is None
    assert push_target_refusal("127.0.0.9", 6346, "203.0.113.5") == "push_bogus"  # loopback from a public node
    for ip, port in (("0.0.0.0", 6346), ("224.0.0.1", 6346), ("255.255.255.255", 6346), ("240.0.0.1", 6346),
                     ("169.254.1.1", 6346), ("203.0.113.9", 0), ("203.0.113.9", 25), ("not an ip", 6346)):
        assert push_target_refusal(ip, port, "203.0.113.5") == "push_bogus", (ip, port)
    assert push_target_refusal("203.0.113.9", 6346, "203.0.113.5") is None


def test_push_reflection_towards_third_parties(run, tmp_path: Path) -> None:
    async def go():
        node = await node_with_defaults(tmp_path)
        index = node.share.files[0].index
        victims = {}
        servers = []
        for ip in ("127.0.0.99", ATTACKER):  # a third party, and the attacker itself
            victims[ip] = 0

            def on_conn(r, w, ip=ip):
                victims[ip] += 1
                w.close()

            srv = await asyncio.start_server(on_conn, ip, 0)
            servers.append(srv)
            victims[ip + ":port"] = srv.sockets[0].getsockname()[1]
        p = RawPeer()
        await p.connect(node, local_host=ATTACKER)

        def push(ip: str, hops: int) -> None:
            payload = messages.Push(node.servent_guid, index, ip, victims[ip + ":port"]).encode()
            p.send(messages.build(new_guid(), MSG_PUSH, 3, hops, payload))

        for _ in range(10):
            push("127.0.0.99", 0)  # sent by the neighbour itself, naming someone else: never
        await asyncio.sleep(0.3)
        reflected_direct = victims["127.0.0.99"]
        for _ in range(10):
            push("127.0.0.99", 2)  # relayed: plausible, but bounded per target per minute
        push(ATTACKER, 0)  # the neighbour's own address: served
        await wait_for(lambda: victims[ATTACKER] == 1, what="connect-back to the requester")
        await asyncio.sleep(0.3)
        limits = node.stats()["limits"]
        await p.close()
        for s in servers:
            s.close()
        await honest_search(node)
        await node.stop()
        return reflected_direct, victims["127.0.0.99"], limits

    reflected_direct, relayed, limits = run(go)
    assert reflected_direct == 0 and limits["push_reflection"] == 10
    assert relayed == PUSH_CALLBACKS_PER_TARGET_PER_MINUTE and limits["push_rate"] == 10 - relayed


# --- disk, shares, text ----------------------------------------------------------------------------


def test_corrupt_copies_are_bounded(tmp_path: Path) -> None:
    for i in range(10):
        f = tmp_path / f"ABC.corrupt-{i + 1}"
        f.write_bytes(b"x" * 1000)
        os.utime(f, ns=(i * 10**9, i * 10**9))
    (tmp_path / "other.part").write_bytes(b"keep me")
    assert prune_corrupt(tmp_path, keep=3, max_bytes=10**6) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ABC.corrupt-10", "ABC.corrupt-8", "ABC.corrupt-9",
                                                          "other.part"]
    assert prune_corrupt(tmp_path, keep=3, max_bytes=1500) == 2  # bytes bound: the newest stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ABC.corrupt-10", "other.part"]


def test_shared_folder_swapped_for_a_symlink_is_not_served(run, tmp_path: Path) -> None:
    secret_dir = tmp_path / "outside"
    secret_dir.mkdir()

    async def go():
        node = await node_with_defaults(tmp_path)
        share = node.cfg.share_dirs[0]
        sub = share / "music"
        sub.mkdir()
        (sub / "song.mp3").write_bytes(b"s" * 64)
        await node.transfers.scan()
        sf = next(f for f in node.share.files if f.name == "song.mp3")
        # After the scan the folder is swapped for a symlink to a folder with a same-named,
        # same-sized, same-mtime file outside the share.
        secret = secret_dir / "song.mp3"
        secret.write_bytes(b"S" * 64)
        os.utime(secret, ns=(sf.mtime_ns, sf.mtime_ns))
        sub.rename(share / ".old-music")
        os.symlink(secret_dir, sub)
        status, _, body = await http_once(node, ATTACKER, http_get(f"/uri-res/N2R?{sf.urn}"))
        honest = await http_once(node, HONEST, http_get(f"/uri-res/N2R?{node.share.files[0].urn}"))
        limits = node.stats()["limits"]
        await node.stop()
        return status, body, honest, limits

    status, body, honest, limits = run(go)
    assert status == 404 and b"S" * 64 not in body and limits["share_escape"] == 1
    assert honest[0] == 200


EVIL = "\x1b[31mred\x1b[0m\nFORGED 127.0.0.1 line\r\u202eevil"


def test_peer_text_is_escaped_in_logs_and_socket_address_logged(run, tmp_path: Path, caplog) -> None:
    async def go():
        node = await node_with_defaults(tmp_path)
        # A header value cannot hold a line break; escapes and bidi overrides it can.
        p = RawPeer(listen_ip="127.0.0.200", user_agent="\x1b[31mred\x1b[0m \u202eevil")  # claims another address
        await p.connect(node, local_host=ATTACKER)
        p.send(messages.build(new_guid(), MSG_BYE, 1, 0, messages.Bye(400, EVIL).encode()))
        await wait_for(lambda: established(node) == 0, what="BYE handled")
        await node.stop()

    with caplog.at_level(logging.DEBUG, logger="gnut"):
        run(go)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("gnut")]
    assert any("FORGED" in m for m in lines)  # the text is there, escaped
    for m in lines:
        assert "\x1b" not in m and "\n" not in m and "\r" not in m and "\u202e" not in m, m
    connected = next(m for m in lines if m.startswith("connected from"))
    assert f"{ATTACKER}:" in connected and "listens on 127.0.0.200:1" in connected


# --- control API -----------------------------------------------------------------------------------

BAD_VALUES = [-1, 0, 10**30, -(10**30), 1e308, "NaN", "x", True, None, [], {}, [1, 2], 3.5, "", "9" * 400]


def test_control_api_survives_bad_numbers(run, tmp_path: Path) -> None:
    rng = random.Random(7)

    async def go():
        node = await node_with_defaults(tmp_path)
        ctl = ControlServer(node, tmp_path / "ctl.sock")
        await ctl.start()
        answers = []
        try:
            for _ in range(300):
                op = rng.choice(["connect", "search", "get"])
                req = {"op": op}
                for key in {"connect": ["host", "port"], "search": ["text", "timeout", "max_results", "urns"],
                            "get": ["urn", "name", "size", "out", "timeout"]}[op]:
                    if rng.random() < 0.7:
                        req[key] = rng.choice(BAD_VALUES)
                if op == "connect" and isinstance(req.get("port"), int) and 0 < req["port"] < 65536:
                    req["port"] = 0  # never dial anything from a fuzz run
                if op == "search":
                    req["timeout"] = rng.choice([-1, 0, 1e308, "x", True, [], 10**30])  # never a real wait
                if op == "get":
                    req["timeout"] = rng.choice([-1, 0, 1e308, "x", True, [], 10**30])
                raw = json.dumps(req).replace('"NaN"', "NaN")
                reader, writer = await asyncio.open_unix_connection(str(ctl.path))
                writer.write(raw.encode() + b"\n")
                line = await asyncio.wait_for(reader.readline(), 5)
                writer.close()
                answers.append(json.loads(line))
            status = [a async for a in request(ctl.path, {"op": "status"})]
        finally:
            await ctl.stop()
            await node.stop()
        return answers, status

    answers, status = run(go)
    assert all("error" in a for a in answers), [a for a in answers if "error" not in a][:3]
    assert not any("internal error" in a["error"] for a in answers)
    assert status[-1]["done"] and "limits" in status[-1]["status"]


def test_limits_are_config_fields_and_keys(tmp_path: Path) -> None:
    from gnut.app.configfile import load_config_file
    from gnut.runtime.config import NodeConfig

    cfg = NodeConfig(home=tmp_path)
    assert (cfg.max_links_per_ip, cfg.max_links_per_24, cfg.upload_slots_per_host) == (
        lim.MAX_LINKS_PER_IP, lim.MAX_LINKS_PER_24, lim.UPLOAD_SLOTS_PER_HOST)
    conf = tmp_path / "lab.toml"
    conf.write_text("max_links_per_ip = 64\nmax_browses = 3\nfd_reserve = 128\n")
    cfg = NodeConfig(home=tmp_path, **load_config_file(conf))
    assert (cfg.max_links_per_ip, cfg.max_browses, cfg.fd_reserve) == (64, 3, 128)
    for bad in ({"max_links_per_ip": 0}, {"upload_slots_per_host": -1}, {"max_browses": True}, {"fd_reserve": -5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            NodeConfig(home=tmp_path, **bad)


def test_net_key_groups_by_24_and_64() -> None:
    assert lim.net_key("127.0.0.66") == lim.net_key("127.0.0.200") == "127.0.0.0/24"
    assert lim.net_key("127.0.1.5") != lim.net_key("127.0.0.5")
    assert lim.net_key("::ffff:10.1.2.3") == "10.1.2.0/24"
    assert lim.net_key("2001:db8:1:2::5") == lim.net_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert lim.net_key("not an address") == "not an address"
