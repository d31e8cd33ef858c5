"""GWebCache: the sans-IO protocol, and `gnut gwc` as a real process on loopback spoken to by our client."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gnut.protocol import gwc
from gnut.runtime.bootstrap import gwc_request

REPO = Path(__file__).resolve().parents[1]
SERVING_RE = re.compile(r"serving a GWebCache on (http://127\.0\.0\.1:\d+/)")


def test_parse_spec2_and_spec1_replies():
    r = gwc.parse_reply(b"h|1.2.3.4:6346|120\r\nu|http://cache.example/gwc.php|30\ni|update|OK\n"
                        b"h|999.1.1.1:1|0\nh|1.2.3.5:0|1\nu|ftp://x/|1\n" + b"h|" + b"9" * 600 + b"\n")
    assert r.hosts == [("1.2.3.4", 6346)] and r.urls == ["http://cache.example/gwc.php"] and r.ok
    r1 = gwc.parse_reply(b"5.6.7.8:1234\rhttp://other.example/\nPONG 1.0\n")
    assert r1.hosts == [("5.6.7.8", 1234)] and r1.urls == ["http://other.example/"] and r1.pong
    assert gwc.parse_reply(b"ERROR nope").error
    assert len(gwc.parse_reply(b"1.1.1.1:1\n" * 10000).hosts) == gwc.MAX_REPLY_LINES


def test_cache_is_bounded_rate_limited_and_checks_the_submitter():
    c = gwc.GwcCache(update_interval=60.0)
    upd = gwc.parse_request("update=1&ip=10.0.0.1:6346&url=http://a.example/&net=gnutella&client=GNPY")
    assert c.handle(upd, "10.0.0.1", 0.0) == "i|update|OK\n"
    assert "too soon" in c.handle(upd, "10.0.0.1", 1.0)
    forged = gwc.parse_request("update=1&ip=10.9.9.9:6346&net=gnutella")
    assert "Invalid IP" in c.handle(forged, "10.0.0.2", 2.0)
    get = c.handle(gwc.parse_request("get=1&net=gnutella&client=TEST&version=1"), "10.0.0.3", 30.0)
    assert get == "h|10.0.0.1:6346|30\nu|http://a.example/|30\n"
    for i in range(gwc.CACHE_MAX_HOSTS + 50):
        c.handle(gwc.parse_request(f"update=1&ip=10.1.{i // 250}.{i % 250}:1&net=gnutella"),
                 f"10.1.{i // 250}.{i % 250}", 100.0 + i)
    assert len(c.hosts) == gwc.CACHE_MAX_HOSTS
    lines = c.handle(gwc.parse_request("get=1&net=gnutella"), "x", 500.0).splitlines()
    assert sum(line.startswith("h|") for line in lines) == gwc.REPLY_HOSTS
    assert c.handle(gwc.parse_request("ping=1"), "x", 0).startswith("PONG")
    assert c.handle(gwc.parse_request("ping=1&net=gnutella"), "x", 0).startswith("i|pong|")
    assert "NET-NOT-SUPPORTED" in c.handle(gwc.parse_request("get=1&net=gnutella2"), "x", 0)
    assert c.handle(gwc.parse_request("hostfile=1"), "x", 600.0).splitlines()[0].count(":") == 1


def test_finding_request_with_too_many_fields_is_an_error_line_not_an_exception():
    # fuzz/regressions/gwc/crash-e2ed66005fb58208: parse_qs raised ValueError past max_num_fields.
    req = gwc.parse_request("&" * 100)
    assert req.kind == "bad" and gwc.GwcCache().handle(req, "127.0.0.1", 0.0).startswith("ERROR")


def test_finding_non_ascii_digits_are_not_ports():
    # fuzz/regressions/gwc/crash-76113f21e0724ece, udp_payloads/crash-a2e06bb2a2226b18: str.isdigit()
    # accepts superscript digits that int() refuses.
    from gnut.protocol import vendor

    assert gwc.parse_hostport("1.2.3.4:636\u00b346") is None
    assert vendor.decode_phc("host:\u00b2".encode("latin-1")) == []


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_gwc(*extra: str) -> tuple[subprocess.Popen, str]:
    """`gnut gwc --listen 127.0.0.1:0` as a process; returns it and its URL."""
    proc = subprocess.Popen([sys.executable, "-m", "gnut", "gwc", "--listen", "127.0.0.1:0", *extra],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    line = proc.stdout.readline()
    m = SERVING_RE.search(line)
    if m is None:
        proc.kill()
        pytest.fail(f"gnut gwc did not start: {line!r} {proc.stderr.read()!r}")
    return proc, m.group(1)


def stop_gwc(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    err = proc.stderr.read()
    assert "Traceback" not in err, err


def test_gwc_process_answers_update_get_ping(run):
    proc, url = start_gwc("--update-interval", "3600")

    async def body():
        ping = gwc.parse_reply(await gwc_request(url, gwc.client_query("ping", "GNPY", "0.1")))
        assert ping.pong
        upd = await gwc_request(url, gwc.client_query("update", "GNPY", "0.1", ip=("127.0.0.1", 4242),
                                                      url="http://127.0.0.1:1/other"))
        assert gwc.parse_reply(upd).ok
        again = await gwc_request(url, gwc.client_query("update", "GNPY", "0.1", ip=("127.0.0.1", 4343)))
        assert b"too soon" in again
        got = gwc.parse_reply(await gwc_request(url, gwc.client_query("get", "GNPY", "0.1")))
        assert got.hosts == [("127.0.0.1", 4242)] and got.urls == ["http://127.0.0.1:1/other"]
        # Garbage and a slow half request do not hurt it.
        r, w = await asyncio.open_connection(*url[7:-1].split(":"))
        w.write(b"\x16\x03\x01garbage\r\n\r\n")
        await w.drain()
        assert await asyncio.wait_for(r.read(), 5) == b""  # closed, no reply
        w.close()
        assert gwc.parse_reply(await gwc_request(url, gwc.client_query("get", "GNPY", "0.1"))).hosts

    try:
        run(body)
    finally:
        stop_gwc(proc)
