"""Node configuration: one dataclass built from CLI flags and an optional TOML file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from gnut.constants import DEFAULT_PORT, DEFAULT_TTL, GUID_CACHE_CAPACITY, ROUTE_TABLE_CAPACITY
from gnut.protocol.bandwidth import parse_rate
from gnut.runtime import limits as lim

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
    if port and not port.isdigit():
        raise ValueError(f"bad address {text!r}: expected HOST:PORT with a numeric port")
    p = int(port) if port else default_port
    if not (0 <= p < 65536) or not host:
        raise ValueError(f"bad address {text!r}: expected HOST:PORT")
    return host, p


class ConfigError(ValueError):
    """A setting with a wrong type or value; `key` names it (the TOML/flag spelling is the caller's)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.detail = message


def _opt(default, doc: str, factory=None):
    """A NodeConfig field with its one-line documentation (shown by `gnut config --defaults`)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass
class NodeConfig:
    """Everything a node needs to run; CLI flags and the config file fill it.

    Every field is typed and documented (metadata "doc"); __post_init__ rejects a wrong type
    or an out-of-range value with a ConfigError naming the field, so a bad setting stops the
    node before it starts instead of failing later on the first peer.
    """

    # Every interface, as a servent on the Internet needs; the demo and the tests pass 127.0.0.1.
    listen_host: str = _opt("0.0.0.0", "address to listen on (the TOML key `listen` takes \"HOST:PORT\")")
    listen_port: int = _opt(DEFAULT_PORT, "port to listen on (0: any free port)")
    connect: list[tuple[str, int]] = _opt(None, "peers to dial at start, as \"HOST:PORT\" strings", list)
    share_dirs: list[Path] = _opt(None, "folders to share (TOML key `share`)", list)
    mode: str = _opt("auto", "auto (a leaf that becomes an ultrapeer when reachable), ultrapeer, leaf, or flood "
                           "(the classic network where every node relays)")
    loop: str = _opt("auto", "event loop: auto (uvloop when installed), uvloop or asyncio")
    # Ultrapeer (or flood) links we accept in total; gtk-gnutella defaults to 32.
    max_peers: int = _opt(32, "ultrapeer (or flood) links accepted")
    # Leaves an ultrapeer shields; gtk-gnutella's default is in this range.
    max_leaves: int = _opt(30, "leaves an ultrapeer takes")
    # Links we dial ourselves and keep up: a leaf keeps 3 ultrapeers, others a few peers.
    out_links: int = _opt(3, "links we dial ourselves and keep up")
    home: Path = _opt(None, "state folder: host cache, SHA-1 cache, control socket, download queue", default_home)
    download_dir: Path | None = _opt(None, "where downloads go (default HOME/downloads)")
    # Pretend to be firewalled: hits carry the push flag and downloads from us need PUSH.
    firewalled: bool = _opt(False, "act as firewalled: hits carry the push flag, downloads from us need PUSH")
    # A private/loopback source address means "needs PUSH" (true on the Internet, false on a lab LAN).
    private_means_firewalled: bool = _opt(False, "treat private/loopback sources as firewalled (need PUSH)")
    control: bool = _opt(True, "serve the local control API (a Unix socket in HOME)")
    upload_slots: int = _opt(4, "uploads served at the same time")
    # Bytes per second all uploads / all downloads together may move; 0: unlimited. The config
    # file may say "200k" or "1.5M" (k = 1024).
    max_upload_rate: int = _opt(0, 'bytes/s all uploads may move together, 0 unlimited ("200k", "1.5M" welcome)')
    max_download_rate: int = _opt(0, 'bytes/s all downloads may move together, 0 unlimited ("200k", "1.5M" welcome)')
    max_results_per_query: int = _opt(64, "results we return for one query")
    query_ttl: int = _opt(DEFAULT_TTL, "TTL of our own queries")
    # Dynamic querying: results wanted before an ultrapeer stops widening (spec default 150).
    dq_target_results: int = _opt(150, "dynamic querying: results wanted before an ultrapeer stops widening")
    # Ultrapeer: run leaves' and own queries as dynamic queries (False: flood them to all ultrapeers).
    dynamic_query: bool = _opt(True, "ultrapeer: run leaves' and own queries as dynamic queries")
    # Dynamic querying waits this long per hop before widening (LimeWire: 2.4 s; tests use less).
    dq_hop_wait: float = _opt(2.4, "dynamic querying: seconds waited per hop before widening")
    # `gnut search`: the longest a search runs, and the quiet period (no new result) that ends it early.
    search_timeout: float = _opt(10.0, "gnut search: the longest a search runs (seconds)")
    search_quiet: float = _opt(3.0, "gnut search: a quiet period this long (no new result) ends it early")
    verbose: int = _opt(0, "log detail: 2 and up logs every routed message")
    save_hosts: bool = _opt(True, "keep the host cache in HOME/hosts.json")
    # Offer and use deflate on links (gtk-gnutella ultrapeers refuse leaves that do not).
    deflate: bool = _opt(True, "offer and use deflate compression on links")
    # Offer and accept TLS on links (gnet-TLS-upgrade, direct TLS): runtime/tls.py.
    tls: bool = _opt(True, "offer and accept TLS on links (self-signed key kept in HOME)")
    # Seen-GUID cache and reverse-route table sizes: the memory bound under a flood of unique GUIDs.
    seen_cache_size: int = _opt(GUID_CACHE_CAPACITY, "seen-GUID cache entries (memory bound under floods)")
    route_table_size: int = _opt(ROUTE_TABLE_CAPACITY, "reverse-route table entries")
    # UDP on the Gnutella port (PING/PONG, UHC, GUESS, OOB hits, registered kinds such as the DHT).
    udp: bool = _opt(True, "UDP on the Gnutella port (ping/pong, host caches, GUESS, out-of-band hits)")
    # Per-source UDP rate (datagrams/s) and burst: the transceiver's defaults; tests raise them.
    udp_rate: float = _opt(20.0, "UDP datagrams per second accepted from one source")
    udp_burst: float = _opt(60.0, "UDP burst accepted from one source (datagrams)")
    # Ask for and give out-of-band query hits (needs UDP and a non-firewalled IPv4 address).
    oob: bool = _opt(True, "ask for and give out-of-band query hits (needs UDP)")
    # Also send our searches as GUESS queries over UDP to ultrapeers we are not linked to.
    guess: bool = _opt(False, "also send our searches as GUESS queries over UDP")
    # Bootstrap: explicit UDP host caches ("host", port) and GWebCache URLs; `bootstrap` adds the
    # shipped public lists (gnut/data/bootstrap.toml): only when the user asks for it.
    uhc: list[tuple[str, int]] = _opt(None, 'UDP host caches to ask for peers, as "HOST:PORT" strings', list)
    gwc: list[str] = _opt(None, "GWebCache URLs to ask for peers", list)
    bootstrap: bool = _opt(False, "also use the shipped public host-cache lists (only when asked)")
    # Bootstrap pacing: seconds per step, host-cache grace before asking caches, UHC answer wait.
    bootstrap_tick: float = _opt(1.0, "bootstrap: seconds per step")
    hostcache_grace: float = _opt(10.0, "bootstrap: seconds the host cache gets before caches are asked")
    uhc_timeout: float = _opt(5.0, "bootstrap: seconds to wait for a UDP host cache's answer")
    # A hostiles file (gtk-gnutella's format) read besides $GNUT_HOME/hostiles.txt; None: only that one.
    hostiles: Path | None = _opt(None, "a hostiles file (gtk-gnutella's format) read besides HOME/hostiles.txt")
    # The Gnutella DHT (Mojito, UDP on the listen port): off unless asked for.
    dht: bool = _opt(False, "the Gnutella DHT (Mojito, UDP on the listen port)")
    dht_bootstrap: list[tuple[str, int]] = _opt(None, 'DHT nodes to bootstrap from, as "HOST:PORT" strings', list)
    # "auto" (active when reachable, passive-leaf when firewalled), "active", "passive", "passive-leaf".
    dht_mode: str = _opt("auto", "DHT role: auto, active, passive or passive-leaf")
    # Lab networks (many nodes on one /24, e.g. loopback) raise the DHT's per-/24 bounds and rate limit.
    dht_per_net24: int | None = _opt(None, "DHT: contacts kept per /24 (lab networks raise it)")
    dht_rate: float | None = _opt(None, "DHT: messages per second accepted from one address (lab networks raise it)")
    # Fairness limits (reasons beside the constants in runtime/limits.py). They hold on loopback
    # too: a local test network or the demo raises them here, never by address range.
    max_links_per_ip: int = _opt(lim.MAX_LINKS_PER_IP, "Gnutella links accepted from one IP address")
    max_links_per_24: int = _opt(lim.MAX_LINKS_PER_24, "Gnutella links accepted from one /24 network")
    max_pending_per_ip: int = _opt(lim.MAX_PENDING_PER_IP, "handshakes in progress from one IP address")
    max_http_per_ip: int = _opt(lim.MAX_HTTP_PER_IP, "HTTP connections from one IP address")
    upload_slots_per_host: int = _opt(lim.UPLOAD_SLOTS_PER_HOST, "upload slots one host may hold")
    max_browses: int = _opt(lim.MAX_BROWSES, "browse-host requests served at the same time")
    fd_reserve: int = _opt(lim.FD_RESERVE, "file descriptors kept free for the node's own use")
    log_file: Path | None = _opt(None, "also write the log to this file")
    max_downloads: int = _opt(3, "downloads of the node's queue running at the same time")
    # Firewall detection: no incoming connection this long after asking peers to connect back
    # (BEAR/7) means we are not reachable over TCP (runtime/reach.py).
    connect_back_wait: float = _opt(30.0, "firewall detection: seconds to wait for a requested connect-back")
    # Auto mode: seconds of uptime before a reachable leaf may become an ultrapeer.
    up_min_uptime: float = _opt(600.0, "mode auto: seconds of uptime before a reachable leaf may become an ultrapeer")
    # Set from mode "auto": `mode` is then the current role, which runtime/reach.py changes.
    auto_role: bool = _opt(False, "set by mode auto (the role then follows reachability); not a user setting")

    def __post_init__(self) -> None:
        for name in ("max_upload_rate", "max_download_rate"):  # "200k" / "1.5M" in a config file
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    setattr(self, name, parse_rate(value))
                except ValueError as exc:
                    raise ConfigError(name, str(exc)) from None
        for name in ("uhc", "dht_bootstrap"):  # "host:port" strings are welcome here (the TOML form)
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                try:
                    setattr(self, name, [parse_hostport(u) if isinstance(u, str) else u for u in value])
                except ValueError as exc:
                    raise ConfigError(name, str(exc)) from None
        for f in fields(self):
            setattr(self, f.name, _check(f.name, f.type, getattr(self, f.name)))
        if self.mode not in MODES:
            raise ConfigError("mode", f"must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.dht_mode not in DHT_MODES:
            raise ConfigError("dht_mode", f"must be one of {', '.join(DHT_MODES)}, not {self.dht_mode!r}")
        if self.loop not in LOOP_KINDS:
            raise ConfigError("loop", f"must be one of {', '.join(LOOP_KINDS)}, not {self.loop!r}")
        if not 0 <= self.listen_port < 65536:
            raise ConfigError("listen_port", f"must be in 0..65535, not {self.listen_port}")
        for name in _AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be at least 1, not {getattr(self, name)}")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", "int | None") and v is not None and v < 0:
                raise ConfigError(f.name, f"must not be negative, not {v}")
        if self.dq_hop_wait <= 0:
            raise ConfigError("dq_hop_wait", f"must be above 0, not {self.dq_hop_wait}")
        if self.download_dir is None:
            self.download_dir = self.home / "downloads"
        if self.mode == "auto":
            self.auto_role = True
            self.mode = "leaf"

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


# Loop kinds (runtime/loops.py's LOOP_CHOICES; repeated here so config stays import-light).
LOOP_KINDS = ("auto", "uvloop", "asyncio")
# Fields that make no sense at 0 (a node with no upload slot or a zero-sized table).
_AT_LEAST_ONE = ("upload_slots", "max_results_per_query", "query_ttl", "seen_cache_size", "route_table_size",
                 "max_downloads", "max_links_per_ip", "max_links_per_24", "max_pending_per_ip", "max_http_per_ip",
                 "upload_slots_per_host", "max_browses")

# What each annotation accepts, in words (for errors) and as a converter.
TYPE_WORDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "int | None": "an integer",
    "float | None": "a number",
    "bool": "true or false",
    "Path": "a path string",
    "Path | None": "a path string",
    "list[Path]": "a list of path strings",
    "list[str]": "a list of strings",
    "list[tuple[str, int]]": 'a list of "HOST:PORT" strings',
}


def _bad(name: str, kind: str, value) -> ConfigError:
    shown = repr(value) if isinstance(value, (str, int, float, bool)) else type(value).__name__
    return ConfigError(name, f"must be {TYPE_WORDS[kind]}, not {shown}")


def _check(name: str, kind: str, value):
    """Return `value` converted to the field's type, or raise ConfigError naming `name`."""
    if kind == "str":
        if not isinstance(value, str):
            raise _bad(name, kind, value)
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(name, kind, value)
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(name, kind, value)
        return float(value)
    if kind in ("int | None", "float | None"):
        return None if value is None else _check(name, kind.split(" |")[0], value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise _bad(name, kind, value)
        return value
    if kind in ("Path", "Path | None"):
        if value is None and kind == "Path | None":
            return None
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            raise _bad(name, kind, value)
        return Path(value).expanduser()  # "~/x" in a config file means what it means in a shell
    if kind == "list[str]":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise _bad(name, kind, value)
        return list(value)
    if kind == "list[Path]":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, os.PathLike)) for v in value):
            raise _bad(name, kind, value)
        return [Path(v).expanduser() for v in value]
    if kind == "list[tuple[str, int]]":
        if not isinstance(value, (list, tuple)):
            raise _bad(name, kind, value)
        out = []
        for v in value:
            if (not isinstance(v, (list, tuple)) or len(v) != 2 or not isinstance(v[0], str)
                    or isinstance(v[1], bool) or not isinstance(v[1], int) or not 0 < v[1] < 65536):
                raise _bad(name, kind, value)
            out.append((v[0], v[1]))
        return out
    raise ConfigError(name, f"has an unchecked type {kind}")  # a new field must get a rule above
