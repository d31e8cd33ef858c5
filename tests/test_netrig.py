"""The namespace rig itself: isolation, NAT and firewall really behave as the tests assume."""

from __future__ import annotations

import subprocess
import sys

from netrig import netrig, wait_until  # noqa: F401  (netrig is a fixture)

# A one-connection TCP server that prints the peer address it saw, then exits.
_ECHO_PEER = (
    "import socket,sys\n"
    "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.bind(('0.0.0.0',int(sys.argv[1])));s.listen(4);print('ready',flush=True)\n"
    "c,a=s.accept();print(a[0],flush=True)\n"
)


def _server(rig, host, port):
    proc = rig.popen(host, [sys.executable, "-c", _ECHO_PEER, str(port)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_rig_is_isolated_and_reachability_is_real(netrig):  # noqa: F811
    rig = netrig
    a = rig.public_host("a")
    b = rig.public_host("b")
    n = rig.nat_host("n")
    f = rig.firewalled_host("f")
    rig.assert_isolated()
    assert a.ip.startswith("11.0.0.") and n.ip.startswith("192.168.") and n.seen_as.startswith("11.0.0.")

    srv = _server(rig, b, 7001)
    assert rig.can_connect(a, b.ip, 7001)
    assert srv.stdout.readline().strip() == a.ip

    # A NATed host dials out; the other end sees its router's outside address.
    srv = _server(rig, a, 7002)
    assert rig.can_connect(n, a.ip, 7002)
    assert srv.stdout.readline().strip() == n.seen_as

    # Nobody dials in to it: not at its private address, not at its router's.
    _server(rig, n, 7003)
    assert not rig.can_connect(a, n.ip, 7003, timeout=0.5)
    assert not rig.can_connect(a, n.seen_as, 7003, timeout=0.5)

    # A firewalled public host dials out but takes no inbound connection.
    srv = _server(rig, a, 7004)
    assert rig.can_connect(f, a.ip, 7004)
    assert srv.stdout.readline().strip() == f.ip
    _server(rig, f, 7005)
    assert not rig.can_connect(a, f.ip, 7005, timeout=0.5)


def test_close_removes_every_namespace(netrig):  # noqa: F811
    rig = netrig
    rig.public_host("a")
    rig.nat_host("n")
    names = list(rig.namespaces)
    rig.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(ns in listed for ns in names)
