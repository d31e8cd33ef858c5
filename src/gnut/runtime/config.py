"""Node configuration: one dataclass built from CLI flags and an optional TOML file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from gnut.constants import DEFAULT_PORT, DEFAULT_TTL, GUID_CACHE_CAPACITY, ROUTE_TABLE_CAPACITY
from gnut.protocol.bandwidth import parse_rate
from gnut.runtime import limits as lim

# `auto` (the default): start as a leaf, become an ultrapeer when reachable (runtime/reach.py).
MODES = ("auto", "ultrapeer", "leaf", "flood")
DHT_MODES = ("auto", "active", "passive", "passive-leaf")


def default_home() -> Path:
    """Where a node keeps its host cache, SHA-1 cache, control socket and downloads."""
    env = os.environ.get("GNUT_HOME")
    return Path(env) if env else Path.home() / ".gnut"


def parse_hostport(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Parse "host:port" (or "[v6]:port", or a bare host) into (host, port).

    Raises:
        ValueError: when the port is not a number in 1..65535.
    """
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    p = int(port) if port else default_port
    if not (0 <= p < 65536) or not host:
        raise ValueError(f"bad address {text!r}: expected HOST:PORT")
    return host, p


@dataclass
class NodeConfig:
    """Everything a node needs to run; CLI flags and the config file fill it."""

    # Every interface, as a servent on the Internet needs; the demo and the tests pass 127.0.0.1.
    listen_host: str = "0.0.0.0"
    listen_port: int = DEFAULT_PORT
    connect: list[tuple[str, int]] = field(default_factory=list)
    share_dirs: list[Path] = field(default_factory=list)
    mode: str = "auto"
    loop: str = "auto"
    # Ultrapeer (or flood) links we accept in total; gtk-gnutella defaults to 32.
    max_peers: int = 32
    # Leaves an ultrapeer shields; gtk-gnutella's default is in this range.
    max_leaves: int = 30
    # Links we dial ourselves and keep up: a leaf keeps 3 ultrapeers, others a few peers.
    out_links: int = 3
    home: Path = field(default_factory=default_home)
    download_dir: Path | None = None
    # Pretend to be firewalled: hits carry the push flag and downloads from us need PUSH.
    firewalled: bool = False
    # A private/loopback source address means "needs PUSH" (true on the Internet, false on a lab LAN).
    private_means_firewalled: bool = False
    control: bool = True
    upload_slots: int = 4
    # Bytes per second all uploads / all downloads together may move; 0: unlimited. The config
    # file may say "200k" or "1.5M" (k = 1024).
    max_upload_rate: int = 0
    max_download_rate: int = 0
    max_results_per_query: int = 64
    query_ttl: int = DEFAULT_TTL
    # Dynamic querying: results wanted before an ultrapeer stops widening (spec default 150).
    dq_target_results: int = 150
    # Ultrapeer: run leaves' and own queries as dynamic queries (False: flood them to all ultrapeers).
    dynamic_query: bool = True
    # Dynamic querying waits this long per hop before widening (LimeWire: 2.4 s; tests use less).
    dq_hop_wait: float = 2.4
    # `gnut search`: the longest a search runs, and the quiet period (no new result) that ends it early.
    search_timeout: float = 10.0
    search_quiet: float = 3.0
    verbose: int = 0
    save_hosts: bool = True
    # Offer and use deflate on links (gtk-gnutella ultrapeers refuse leaves that do not).
    deflate: bool = True
    # Offer and accept TLS on links (gnet-TLS-upgrade, direct TLS): runtime/tls.py.
    tls: bool = True
    # Seen-GUID cache and reverse-route table sizes: the memory bound under a flood of unique GUIDs.
    seen_cache_size: int = GUID_CACHE_CAPACITY
    route_table_size: int = ROUTE_TABLE_CAPACITY
    # UDP on the Gnutella port (PING/PONG, UHC, GUESS, OOB hits, registered kinds such as the DHT).
    udp: bool = True
    # Per-source UDP rate (datagrams/s) and burst: the transceiver's defaults; tests raise them.
    udp_rate: float = 20.0
    udp_burst: float = 60.0
    # Ask for and give out-of-band query hits (needs UDP and a non-firewalled IPv4 address).
    oob: bool = True
    # Also send our searches as GUESS queries over UDP to ultrapeers we are not linked to.
    guess: bool = False
    # Bootstrap: explicit UDP host caches ("host", port) and GWebCache URLs; `bootstrap` adds the
    # shipped public lists (gnut/data/bootstrap.toml): only when the user asks for it.
    uhc: list[tuple[str, int]] = field(default_factory=list)
    gwc: list[str] = field(default_factory=list)
    bootstrap: bool = False
    # Bootstrap pacing: seconds per step, host-cache grace before asking caches, UHC answer wait.
    bootstrap_tick: float = 1.0
    hostcache_grace: float = 10.0
    uhc_timeout: float = 5.0
    # A hostiles file (gtk-gnutella's format) read besides $GNUT_HOME/hostiles.txt; None: only that one.
    hostiles: Path | None = None
    # The Gnutella DHT (Mojito, UDP on the listen port): off unless asked for.
    dht: bool = False
    dht_bootstrap: list[tuple[str, int]] = field(default_factory=list)
    # "auto" (active when reachable, passive-leaf when firewalled), "active", "passive", "passive-leaf".
    dht_mode: str = "auto"
    # Lab networks (many nodes on one /24, e.g. loopback) raise the DHT's per-/24 bounds and rate limit.
    dht_per_net24: int | None = None
    dht_rate: float | None = None
    # Fairness limits (reasons beside the constants in runtime/limits.py). They hold on loopback
    # too: a local test network or the demo raises them here, never by address range.
    max_links_per_ip: int = lim.MAX_LINKS_PER_IP
    max_links_per_24: int = lim.MAX_LINKS_PER_24
    max_pending_per_ip: int = lim.MAX_PENDING_PER_IP
    max_http_per_ip: int = lim.MAX_HTTP_PER_IP
    upload_slots_per_host: int = lim.UPLOAD_SLOTS_PER_HOST
    max_browses: int = lim.MAX_BROWSES
    fd_reserve: int = lim.FD_RESERVE
    # Firewall detection: no incoming connection this long after asking peers to connect back
    # (BEAR/7) means we are not reachable over TCP (runtime/reach.py).
    connect_back_wait: float = 30.0
    # Auto mode: seconds of uptime before a reachable leaf may become an ultrapeer.
    up_min_uptime: float = 600.0
    # Set from mode "auto": `mode` is then the current role, which runtime/reach.py changes.
    auto_role: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.dht_mode not in DHT_MODES:
            raise ValueError(f"dht_mode must be one of {', '.join(DHT_MODES)}, not {self.dht_mode!r}")
        self.dht_bootstrap = [parse_hostport(a) if isinstance(a, str) else tuple(a) for a in self.dht_bootstrap]
        if self.mode == "auto":
            self.auto_role = True
            self.mode = "leaf"
        self.home = Path(self.home)
        self.share_dirs = [Path(p) for p in self.share_dirs]
        if self.download_dir is None:
            self.download_dir = self.home / "downloads"
        self.download_dir = Path(self.download_dir)
        self.uhc = [parse_hostport(u) if isinstance(u, str) else (str(u[0]), int(u[1])) for u in self.uhc]
        self.gwc = [str(u) for u in self.gwc]
        for name in ("max_links_per_ip", "max_links_per_24", "max_pending_per_ip", "max_http_per_ip",
                     "upload_slots_per_host", "max_browses", "upload_slots"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, not {value!r}")
        if not isinstance(self.fd_reserve, int) or isinstance(self.fd_reserve, bool) or self.fd_reserve < 0:
            raise ValueError(f"fd_reserve must be a whole number >= 0, not {self.fd_reserve!r}")
        self.max_upload_rate = parse_rate(self.max_upload_rate)
        self.max_download_rate = parse_rate(self.max_download_rate)

    @property
    def control_path(self) -> Path:
        return self.home / "control.sock"

    @property
    def hosts_path(self) -> Path:
        return self.home / "hosts.json"

    @property
    def bootstrap_path(self) -> Path:
        return self.home / "bootstrap.json"

    @property
    def sha1_cache_path(self) -> Path:
        return self.home / "sha1-cache.json"
