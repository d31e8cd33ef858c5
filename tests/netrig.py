"""A closed test network of Linux network namespaces: a public segment, hosts behind NAT, firewalls.

Strategy: every namespace the rig makes carries the rig's unique prefix; a "switch" namespace
holds a bridge, every public host (and every NAT router's outside leg) is one veth pair between
its namespace and the switch. A NATed host sits behind its own router namespace, which
masquerades its private segment (nftables) and forwards only replies inward; a firewalled host
is on the public segment but drops every new inbound connection (nftables input hook). Veth
pairs are created directly inside their namespaces (`ip link add ... netns A peer ... netns B`),
so nothing is ever added to the root namespace, no namespace has a default route, and
`assert_isolated()` proves it after building. `close()` deletes every namespace (and with them
their interfaces and rules). Tests use the `netrig` fixture (import it from this module); it
skips with the reason when the kernel or the user cannot make namespaces. docs/NETNS.md.

Addresses: the public segment is 11.0.0.0/24 (routable-looking: not private, not CGNAT, not a
documentation range, not in gtk-gnutella's bogons list), private segments are 192.168.N.0/24.
Traffic never leaves the namespaces, whatever the addresses say.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PUBLIC_NET = "11.0.0"  # /24, see the module docstring
PUBLIC_PREFIX = 24
# Seconds a rig command may take (ip/nft are instant; a stuck one is a broken kernel).
CMD_TIMEOUT = 20.0
_counter = itertools.count(1)


def unavailable_reason() -> str | None:
    """Why this machine cannot build the rig, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "building network namespaces needs root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install iproute2 nftables)"
    probe = f"gnprobe{os.getpid()}"
    res = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if res.returncode != 0:
        return f"the kernel refused a network namespace: {res.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@dataclass
class Host:
    """One machine of the rig.

    Attributes:
        name: the test's name for it.
        ns: its namespace (run commands with NetRig.run / NetRig.popen).
        ip: its own interface address.
        seen_as: the address other hosts see its connections come from (its NAT's outside address).
        reachable: whether a host on the public segment can open a connection to it.
    """

    name: str
    ns: str
    ip: str
    seen_as: str
    reachable: bool
    procs: list = field(default_factory=list)


class NetRig:
    """Build hosts on a private public segment; close() tears everything down."""

    def __init__(self) -> None:
        self.prefix = f"gn{os.getpid() % 100000}r{next(_counter)}"
        self.namespaces: list[str] = []
        self.hosts: dict[str, Host] = {}
        self._next_public = 1
        self._next_private = 1
        self._root_links = self._links(None)
        self.switch = self._ns("sw")
        self.sh(self.switch, "ip", "link", "add", "br0", "type", "bridge")
        self.sh(self.switch, "ip", "link", "set", "br0", "up")
        self._ports = itertools.count(1)

    # --- building ------------------------------------------------------------------------
    def _ns(self, suffix: str) -> str:
        ns = f"{self.prefix}-{suffix}"
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, timeout=CMD_TIMEOUT)
        self.namespaces.append(ns)
        self.sh(ns, "ip", "link", "set", "lo", "up")
        return ns

    def _public_ip(self) -> str:
        self._next_public += 1
        return f"{PUBLIC_NET}.{self._next_public}"

    def _plug(self, ns: str, ifname: str, ip: str) -> None:
        """A veth pair from `ns` (as ifname, with ip/24) to the switch's bridge."""
        port = f"p{next(self._ports)}"
        self.sh(None, "ip", "link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", port,
                "netns", self.switch)
        self.sh(self.switch, "ip", "link", "set", port, "master", "br0")
        self.sh(self.switch, "ip", "link", "set", port, "up")
        self.sh(ns, "ip", "addr", "add", f"{ip}/{PUBLIC_PREFIX}", "dev", ifname)
        self.sh(ns, "ip", "link", "set", ifname, "up")

    def public_host(self, name: str) -> Host:
        """A host with an address on the public segment, reachable by every other public host."""
        ns = self._ns(name)
        ip = self._public_ip()
        self._plug(ns, "eth0", ip)
        return self._add(Host(name, ns, ip, ip, True))

    def firewalled_host(self, name: str) -> Host:
        """A public address whose own firewall drops every new inbound connection (replies pass)."""
        host = self.public_host(name)
        self.nft(host.ns, """
            table inet gnutfw {
              chain input {
                type filter hook input priority 0; policy drop;
                ct state established,related accept
                iifname "lo" accept
              }
            }""")
        host.reachable = False
        return host

    def nat_host(self, name: str) -> Host:
        """A host on its own private segment behind a masquerading router on the public segment."""
        n = self._next_private
        self._next_private += 1
        router = self._ns(f"{name}-nat")
        ns = self._ns(name)
        outside = self._public_ip()
        self._plug(router, "wan0", outside)
        gw, ip = f"192.168.{n}.1", f"192.168.{n}.2"
        self.sh(None, "ip", "link", "add", "lan0", "netns", router, "type", "veth", "peer", "name", "eth0",
                "netns", ns)
        self.sh(router, "ip", "addr", "add", f"{gw}/24", "dev", "lan0")
        self.sh(router, "ip", "link", "set", "lan0", "up")
        self.sh(ns, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
        self.sh(ns, "ip", "link", "set", "eth0", "up")
        # The public segment only, via the router: never a default route.
        self.sh(ns, "ip", "route", "add", f"{PUBLIC_NET}.0/{PUBLIC_PREFIX}", "via", gw)
        self.sh(router, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
        self.nft(router, """
            table ip gnutnat {
              chain postrouting {
                type nat hook postrouting priority 100;
                oifname "wan0" masquerade
              }
              chain forward {
                type filter hook forward priority 0; policy drop;
                ct state established,related accept
                iifname "lan0" oifname "wan0" accept
              }
            }""")
        return self._add(Host(name, ns, ip, outside, False))

    def _add(self, host: Host) -> Host:
        self.hosts[host.name] = host
        return host

    # --- running -------------------------------------------------------------------------
    def sh(self, ns: str | None, *argv: str) -> str:
        """Run a command in namespace `ns` (None: the root namespace, for `ip link add` only)."""
        cmd = list(argv) if ns is None else ["ip", "netns", "exec", ns, *argv]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=CMD_TIMEOUT)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr.strip()}")
        return res.stdout

    def nft(self, ns: str, ruleset: str) -> None:
        cmd = ["ip", "netns", "exec", ns, "nft", "-f", "-"]
        res = subprocess.run(cmd, input=ruleset, capture_output=True, text=True, timeout=CMD_TIMEOUT)
        if res.returncode != 0:
            raise RuntimeError(f"nft in {ns} failed: {res.stderr.strip()}")

    def popen(self, host: Host, argv: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
        """Start a process inside `host`'s namespace; close() kills it if still running."""
        proc = subprocess.Popen(["ip", "netns", "exec", host.ns, *argv], env=env, **kw)
        host.procs.append(proc)
        return proc

    def gnut_env(self, home: Path) -> dict[str, str]:
        env = dict(os.environ)
        env["GNUT_HOME"] = str(home)
        env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def can_connect(self, src: Host, dst: str, port: int, timeout: float = 1.0) -> bool:
        """Whether a TCP connection from `src` to dst:port opens (a real probe inside the rig)."""
        code = (f"import socket\ns=socket.socket();s.settimeout({timeout})\n"
                f"try:\n s.connect(({dst!r},{port}));print('open')\nexcept OSError as e:\n print('closed',e)")
        return self.sh(src.ns, sys.executable, "-c", code).startswith("open")

    # --- checks --------------------------------------------------------------------------
    @staticmethod
    def _links(ns: str | None) -> set[str]:
        cmd = ["ip", "-o", "link", "show"] if ns is None else ["ip", "netns", "exec", ns, "ip", "-o", "link", "show"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=CMD_TIMEOUT).stdout
        return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}

    def assert_isolated(self) -> None:
        """Nothing of the rig touches the root namespace and nothing can leave the rig.

        Checks: the root namespace has no interface it did not have before the rig; no rig
        namespace has a default route; in every rig namespace a route lookup for an outside
        address (a lookup only: nothing is sent) fails.
        """
        added = self._links(None) - self._root_links
        assert not added, f"the rig added interfaces to the root namespace: {added}"
        for ns in self.namespaces:
            routes = self.sh(ns, "ip", "route", "show")
            assert "default" not in routes, f"{ns} has a default route: {routes}"
            for outside in ("8.8.8.8", "1.1.1.1", "10.0.0.1", "172.17.0.1"):
                res = subprocess.run(["ip", "netns", "exec", ns, "ip", "route", "get", outside],
                                     capture_output=True, text=True, timeout=CMD_TIMEOUT)
                assert res.returncode != 0, f"{ns} has a route to {outside}: {res.stdout.strip()}"

    def close(self) -> None:
        for host in self.hosts.values():
            for proc in host.procs:
                if proc.poll() is None:
                    proc.terminate()
            for proc in host.procs:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=CMD_TIMEOUT)
        self.namespaces.clear()


def wait_until(cond, timeout: float, what: str, step: float = 0.1):
    """Poll `cond()` until it returns something true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


@pytest.fixture
def netrig():
    """A NetRig (empty: the test adds hosts); skips when namespaces cannot be built here."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    rig = NetRig()
    try:
        yield rig
    finally:
        rig.close()
