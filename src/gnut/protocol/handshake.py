"""Gnutella 0.6 (and 0.4 accept) handshake: header blocks, our headers, admission policy; no I/O."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import gnut
from gnut.constants import HANDSHAKE_MAX_HEADER_BYTES, MAX_TTL_ADVERTISED
from gnut.errors import RemoteProtocolError

# Strategy
# --------
# The 0.6 handshake is three header blocks, each a start line, "Name: value" lines and a
# blank line (spec 0.6 section 2.2, RFC 822 style):
#     dialer   -> "GNUTELLA CONNECT/0.6" + headers
#     listener -> "GNUTELLA/0.6 <code> <reason>" + headers
#     dialer   -> "GNUTELLA/0.6 <code> <reason>" + headers   (200 = link is open)
# Parsing is lenient in form (CRLF or bare LF, any header case, continuation lines,
# repeated headers joined with ", ") and strict in size (HANDSHAKE_MAX_HEADER_BYTES).
# Bytes are decoded as UTF-8 with replacement so no UnicodeDecodeError can escape.
# Policy (who we admit) is pure functions returning a Verdict; the Connection and the
# node only execute it. Deflate is per direction: a side compresses what it sends only
# after its own 200 carried "Content-Encoding: deflate", which it sends only when the
# other side announced "Accept-Encoding: deflate".

MODES = ("ultrapeer", "leaf", "flood")
# The only content type a Gnutella link carries; an Accept header must list it (INTEROP.md).
GNUTELLA_CONTENT_TYPE = "application/x-gnutella-packets"
# Version strings we announce for the optional features we implement (INTEROP.md values).
QUERY_ROUTING_VERSION = "0.2"
UP_QUERY_ROUTING_VERSION = "0.1"
DYNAMIC_QUERYING_VERSION = "0.1"
PONG_CACHING_VERSION = "0.1"
GGEP_VERSION = "0.5"
BYE_PACKET_VERSION = "0.1"
VENDOR_MESSAGE_VERSION = "0.2"
# gnet-TLS-upgrade: the protocol a plain link may switch to after the handshake (dialer = TLS client).
TLS_UPGRADE_PROTOCOL = "TLS/1.0"
# X-Features token for TLS support (doc/gnutella/x-features format, gtk-gnutella's name).
TLS_FEATURE = "tls/1.0"
# A 0.4 peer sends "GNUTELLA CONNECT/0.4\n\n" and expects exactly this answer (spec 0.4).
GNUTELLA_04_OK = b"GNUTELLA OK\n\n"
# Codes we use when refusing: 503 = no slot / wrong role (GnutellaBun, gtk-gnutella),
# 406 = the peer's Accept header excludes Gnutella packets (HTTP's Not Acceptable).
CODE_OK = 200
CODE_UNAVAILABLE = 503
CODE_NOT_ACCEPTABLE = 406


class Headers:
    """A small case-insensitive header mapping; repeated names were joined with ", "."""

    __slots__ = ("_items",)

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self._items: dict[str, tuple[str, str]] = {}
        for name, value in pairs:
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        """Add one header; a repeated name is joined to the earlier value with ", "."""
        key = name.lower()
        old = self._items.get(key)
        if old is None:
            self._items[key] = (name, value)
        else:
            self._items[key] = (old[0], f"{old[1]}, {value}" if old[1] else value)

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return the value of header `name` (any case), or `default`."""
        item = self._items.get(name.lower())
        return default if item is None else item[1]

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return (item[0] for item in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, str]]:
        """Return (name, value) pairs in arrival order, names as first spelled by the peer."""
        return list(self._items.values())

    def updated(self, other: Headers) -> Headers:
        """Return a copy where every header of `other` replaces ours of the same name."""
        merged = Headers()
        merged._items = dict(self._items)
        for key, item in other._items.items():
            merged._items[key] = item
        return merged

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return {k: v[1] for k, v in self._items.items()} == {k: v[1] for k, v in other._items.items()}

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"


@dataclass
class HandshakeConfig:
    """What we announce in a handshake and how we admit peers.

    `flood` presents itself on the wire as an ultrapeer (it is gnut's classic all-relay
    network) but never advertises QRP or dynamic querying, which it does not do.
    """

    mode: str = "ultrapeer"
    user_agent: str = f"gnut/{gnut.__version__}"
    listen_ip: str = "127.0.0.1"
    listen_port: int = 6346
    accept_deflate: bool = True
    query_routing: bool = True
    max_ttl: int = MAX_TTL_ADVERTISED
    degree: int = 32
    ultrapeer_needed: bool = True
    # Offer (dialing) and accept (listening) the gnet-TLS-upgrade of a plain link.
    tls: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")


@dataclass(frozen=True)
class PeerCounts:
    """The node's current link counts and slot limits, input to evaluate_incoming."""

    ultrapeers: int
    leaves: int
    max_ultrapeers: int
    max_leaves: int


@dataclass(frozen=True)
class Verdict:
    """An admission decision: code 200 admits, anything else refuses.

    Attributes:
        code, reason: the status to answer (incoming) or that was decided (dialing).
        peer_is_ultrapeer: the role we treat the peer as.
        deflate_out: we compress what we send (our 200 carries Content-Encoding: deflate).
        headers: extra headers for our answer (X-Try-Ultrapeers on refusals).
        try_hosts: hosts to try instead, parsed (refusals).
        deflate_in: the peer compresses what it sends (dialing side only: its 200 said so).
        note: a remark for logs, e.g. the peer sent no X-Ultrapeer header.
    """

    code: int
    reason: str
    peer_is_ultrapeer: bool
    deflate_out: bool
    headers: tuple[tuple[str, str], ...] = ()
    try_hosts: tuple[tuple[str, int], ...] = ()
    deflate_in: bool = False
    note: str = ""

    @property
    def accepted(self) -> bool:
        """True when the verdict admits the link."""
        return self.code == CODE_OK


# --- Block framing and parsing -------------------------------------------------------


def find_block_end(buf: bytes | bytearray, start: int = 0) -> int:
    """Find the end of the header block at the start of `buf`.

    Args:
        buf: received bytes, beginning with a handshake block.
        start: an offset already searched without success (lets callers avoid rescans).

    Returns:
        The index just after the blank line that ends the block, or -1 if incomplete.

    Raises:
        RemoteProtocolError: the block is (or already grew) larger than HANDSHAKE_MAX_HEADER_BYTES.
    """
    # A blank line is "\n\n" or "\n\r\n"; back up 2 so a terminator split by the last
    # search is still found.
    begin = max(0, start - 2)
    ends = [i + len(sep) for sep in (b"\n\n", b"\n\r\n") if (i := buf.find(sep, begin)) != -1]
    if ends:
        end = min(ends)
        if end > HANDSHAKE_MAX_HEADER_BYTES:
            raise RemoteProtocolError(f"handshake block of {end} bytes exceeds {HANDSHAKE_MAX_HEADER_BYTES}")
        return end
    if len(buf) > HANDSHAKE_MAX_HEADER_BYTES:
        raise RemoteProtocolError(
            f"handshake block still open after {len(buf)} bytes (limit {HANDSHAKE_MAX_HEADER_BYTES})"
        )
    return -1


def parse_block(data: bytes | bytearray) -> tuple[str, Headers]:
    """Parse one header block (start line, headers, optional blank line).

    Args:
        data: the block's bytes; CRLF or bare LF line ends.

    Returns:
        (start_line, headers).

    Raises:
        RemoteProtocolError: oversized block, empty start line, a header line without a
            colon or with an empty name, a continuation line before any header.
    """
    if len(data) > HANDSHAKE_MAX_HEADER_BYTES:
        raise RemoteProtocolError(
            f"handshake block of {len(data)} bytes exceeds {HANDSHAKE_MAX_HEADER_BYTES}"
        )
    text = bytes(data).decode("utf-8", errors="replace")
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    while lines and lines[-1] == "":
        lines.pop()
    if not lines or not lines[0].strip():
        raise RemoteProtocolError("handshake block has an empty start line")
    start_line = lines[0].strip()
    pairs: list[list[str]] = []
    for line in lines[1:]:
        if line == "":
            raise RemoteProtocolError("blank line inside a handshake block")
        if line[0] in " \t":
            # RFC 822 folding: a line starting with white space continues the previous value.
            if not pairs:
                raise RemoteProtocolError("continuation line before any header")
            pairs[-1][1] = f"{pairs[-1][1]} {line.strip()}".strip()
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not name:
            raise RemoteProtocolError(f"malformed header line {line[:64]!r}")
        pairs.append([name, value.strip()])
    return start_line, Headers((name, value) for name, value in pairs)


def parse_request_line(line: str) -> str:
    """Parse "GNUTELLA CONNECT/<version>".

    Args:
        line: the start line of a dialer's first block.

    Returns:
        "0.4" for a 0.4 peer, "0.6" for 0.6 and any later 0.x (the spec says to answer 0.6).

    Raises:
        RemoteProtocolError: not a Gnutella CONNECT line, or an unusable version.
    """
    word, _, version = line.partition(" CONNECT/")
    if word != "GNUTELLA" or not version:
        raise RemoteProtocolError(f"not a Gnutella CONNECT line: {line[:64]!r}")
    return _normalize_version(version.strip(), line)


def parse_status_line(line: str) -> tuple[str, int, str]:
    """Parse "GNUTELLA/<version> <code> <reason>".

    Args:
        line: the start line of a response block (second or third handshake step).

    Returns:
        (version, code, reason) with version normalized as in parse_request_line.

    Raises:
        RemoteProtocolError: not a Gnutella status line or the code is not 3 digits.
    """
    proto, _, rest = line.partition(" ")
    name, slash, version = proto.partition("/")
    code_text, _, reason = rest.strip().partition(" ")
    if name != "GNUTELLA" or not slash:
        raise RemoteProtocolError(f"not a Gnutella status line: {line[:64]!r}")
    if len(code_text) != 3 or not code_text.isdigit() or not code_text.isascii():
        raise RemoteProtocolError(f"bad status code in {line[:64]!r}")
    return _normalize_version(version, line), int(code_text), reason.strip()


def _normalize_version(version: str, line: str) -> str:
    major, dot, minor = version.partition(".")
    if not (dot and major.isdigit() and minor.isdigit() and major.isascii() and minor.isascii()):
        raise RemoteProtocolError(f"bad protocol version in {line[:64]!r}")
    if int(major) == 0 and int(minor) < 6:
        if int(minor) == 4:
            return "0.4"
        raise RemoteProtocolError(f"unsupported protocol version {version!r}")
    return "0.6"


# --- Header values -------------------------------------------------------------------


def has_token(value: str | None, token: str) -> bool:
    """True when comma-separated `value` lists `token` (case-insensitive, ";params" ignored)."""
    if not value:
        return False
    token = token.lower()
    return any(part.split(";", 1)[0].strip().lower() == token for part in value.split(","))


def content_is_deflated(headers: Headers) -> bool:
    """Whether a block's Content-Encoding says what follows it is deflated.

    Args:
        headers: a 200 block's headers.

    Returns:
        True for "deflate", False when absent or "identity".

    Raises:
        RemoteProtocolError: any other encoding (we could not read the stream).
    """
    value = headers.get("Content-Encoding")
    if value is None or not value.strip() or value.strip().lower() == "identity":
        return False
    if value.strip().lower() == "deflate":
        return True
    raise RemoteProtocolError(f"unsupported Content-Encoding {value[:64]!r}")


def parse_bool(value: str | None) -> bool | None:
    """Parse a "True"/"False" header value; None when absent or neither."""
    if value is None:
        return None
    text = value.strip().lower()
    if text == "true":
        return True
    if text == "false":
        return False
    return None


def parse_host(entry: str) -> tuple[str, int] | None:
    """Parse "ip:port" ("[v6]:port" too), ignoring anything after white space.

    Args:
        entry: one host entry, e.g. "1.2.3.4:6346 2024-06-01T00:00Z".

    Returns:
        (ip, port), or None for garbage (bad address, port 0 or above 65535).
    """
    words = entry.split()
    if not words:
        return None
    host, colon, port_text = words[0].rpartition(":")
    if not colon or not port_text.isdigit() or not port_text.isascii() or len(port_text) > 5:
        return None
    port = int(port_text)
    if not 0 < port <= 0xFFFF:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return str(address), port


def parse_try_hosts(value: str) -> list[tuple[str, int]]:
    """Parse an X-Try-Ultrapeers / X-Try value, skipping garbage entries.

    Args:
        value: "ip:port,ip:port" with optional timestamps after each address.

    Returns:
        The well-formed (ip, port) pairs in order, duplicates removed.
    """
    hosts: list[tuple[str, int]] = []
    for entry in value.split(","):
        host = parse_host(entry)
        if host is not None and host not in hosts:
            hosts.append(host)
    return hosts


def peer_listen_address(headers: Headers) -> tuple[str, int] | None:
    """The peer's own listening address from Listen-IP, X-My-Address or Node, if valid."""
    for name in ("Listen-IP", "X-My-Address", "Node"):
        value = headers.get(name)
        if value:
            host = parse_host(value.split(",", 1)[0])
            if host is not None:
                return host
    return None


# --- Building our blocks ---------------------------------------------------------------


def offers_tls_upgrade(headers: Headers) -> bool:
    """The peer proposes (CONNECT) or selected (200) the TLS upgrade: `Upgrade: TLS/1.0`."""
    return has_token(headers.get("Upgrade"), TLS_UPGRADE_PROTOCOL)


def confirms_upgrade(headers: Headers) -> bool:
    """The block carries `Connection: Upgrade` (the answer's readiness, the dialer's go)."""
    return has_token(headers.get("Connection"), "Upgrade")


def presents_as_ultrapeer(cfg: HandshakeConfig) -> bool:
    """True when we announce X-Ultrapeer: True (ultrapeer and flood modes)."""
    return cfg.mode != "leaf"


def our_headers(
    cfg: HandshakeConfig,
    remote_ip: str | None,
    for_response: bool,
    peer_accepts_deflate: bool,
    tls_upgrade: bool = False,
) -> list[tuple[str, str]]:
    """The headers of our CONNECT (dialing) or of our 200 answer (listening).

    Args:
        cfg: our configuration.
        remote_ip: the peer's address as we see it (Remote-IP), if known.
        for_response: True for our 200 answer to a CONNECT, False for our CONNECT.
        peer_accepts_deflate: the peer's CONNECT carried Accept-Encoding: deflate.
        tls_upgrade: CONNECT: propose the TLS upgrade; answer: accept the one the peer proposed.

    Returns:
        (name, value) pairs in the order to send them.
    """
    up = presents_as_ultrapeer(cfg)
    qrp = cfg.query_routing and cfg.mode != "flood"
    out = [("User-Agent", cfg.user_agent), ("X-Ultrapeer", "True" if up else "False")]
    if up:
        out.append(("X-Ultrapeer-Needed", "True" if cfg.ultrapeer_needed else "False"))
    if qrp:
        out.append(("X-Query-Routing", QUERY_ROUTING_VERSION))
        if up:
            out.append(("X-Ultrapeer-Query-Routing", UP_QUERY_ROUTING_VERSION))
        out.append(("X-Dynamic-Querying", DYNAMIC_QUERYING_VERSION))
    out += [("X-Degree", str(cfg.degree)), ("X-Max-TTL", str(cfg.max_ttl))]
    if cfg.accept_deflate:
        out.append(("Accept-Encoding", "deflate"))
        if for_response and peer_accepts_deflate:
            out.append(("Content-Encoding", "deflate"))
    out += [
        ("Pong-Caching", PONG_CACHING_VERSION),
        ("GGEP", GGEP_VERSION),
        ("Bye-Packet", BYE_PACKET_VERSION),
        ("Vendor-Message", VENDOR_MESSAGE_VERSION),
    ]
    if remote_ip:
        out.append(("Remote-IP", remote_ip))
    if cfg.listen_ip and cfg.listen_ip not in ("0.0.0.0", "::") and 0 < cfg.listen_port <= 0xFFFF:
        address = f"{cfg.listen_ip}:{cfg.listen_port}"
        out += [("Listen-IP", address), ("X-My-Address", address)]
    if cfg.tls:
        out.append(("X-Features", TLS_FEATURE))  # gtk-gnutella's token: we accept TLS (direct or upgrade)
    if tls_upgrade:
        out.append(("Upgrade", TLS_UPGRADE_PROTOCOL))
        if for_response:
            out.append(("Connection", "Upgrade"))
    out += list(cfg.extra.items())
    return out


def _render(start_line: str, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [start_line] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def build_connect(cfg: HandshakeConfig, remote_ip: str | None = None, secure: bool = False) -> bytes:
    """Our first block: "GNUTELLA CONNECT/0.6" and our headers.

    Args:
        cfg: our configuration.
        remote_ip: the address we dial, announced as Remote-IP.
        secure: the link already runs over TLS (no upgrade is proposed then).

    Returns:
        The block's bytes, CRLF lines, blank line included.
    """
    return _render("GNUTELLA CONNECT/0.6", our_headers(cfg, remote_ip, False, False, cfg.tls and not secure))


def build_response(code: int, reason: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """A response block ("GNUTELLA/0.6 200 OK" + headers), second or third handshake step.

    Args:
        code: status code (200 admits).
        reason: reason phrase.
        headers: (name, value) pairs.

    Returns:
        The block's bytes, CRLF lines, blank line included.
    """
    return _render(f"GNUTELLA/0.6 {code} {reason}", headers)


def refusal_headers(
    cfg: HandshakeConfig, remote_ip: str | None, try_hosts: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """Headers of a refusal: who we are, what we are, and where else to go.

    Args:
        cfg: our configuration.
        remote_ip: the peer's address as we see it.
        try_hosts: "ip:port" strings for X-Try-Ultrapeers.

    Returns:
        (name, value) pairs.
    """
    out = [("User-Agent", cfg.user_agent), ("X-Ultrapeer", "True" if presents_as_ultrapeer(cfg) else "False")]
    if remote_ip:
        out.append(("Remote-IP", remote_ip))
    hosts = ",".join(try_hosts)
    if hosts:
        out.append(("X-Try-Ultrapeers", hosts))
    return out


# --- Admission policy ------------------------------------------------------------------


def _peer_role(headers: Headers) -> tuple[bool, str]:
    role = parse_bool(headers.get("X-Ultrapeer"))
    if role is None:
        # Lenient where gtk-gnutella is strict (403 "Normal nodes refused"): an old or
        # unknown node relays everything, so it is an ultrapeer-equivalent to us.
        return True, "no usable X-Ultrapeer header: treated as an ultrapeer-equivalent"
    return role, ""


def _refuse(code: int, reason: str, peer_up: bool, try_hosts: Sequence[str], note: str) -> Verdict:
    hosts = ",".join(try_hosts)
    return Verdict(
        code,
        reason,
        peer_up,
        False,
        headers=(("X-Try-Ultrapeers", hosts),) if hosts else (),
        try_hosts=tuple(parse_try_hosts(hosts)),
        note=note,
    )


def evaluate_incoming(
    cfg: HandshakeConfig, headers: Headers, counts: PeerCounts, try_hosts: Sequence[str] = ()
) -> Verdict:
    """Decide whether to admit a peer that sent us a CONNECT.

    Args:
        cfg: our configuration.
        headers: the peer's CONNECT headers.
        counts: our current link counts and slot limits.
        try_hosts: "ip:port" strings to offer in X-Try-Ultrapeers when refusing.

    Returns:
        A Verdict: 200 admits; 406 when an Accept header excludes Gnutella packets;
        503 when we are a leaf and the peer is not an ultrapeer, or the slots for the
        peer's role are full (a flood node has one kind of slot: every peer is equal).
    """
    peer_up, note = _peer_role(headers)
    accept = headers.get("Accept")
    if accept is not None and not has_token(accept, GNUTELLA_CONTENT_TYPE):
        return _refuse(CODE_NOT_ACCEPTABLE, "Not Acceptable", peer_up, (), note)
    if cfg.mode == "leaf":
        if not peer_up:
            return _refuse(CODE_UNAVAILABLE, "Shielded leaf node", peer_up, try_hosts, note)
        if counts.ultrapeers >= counts.max_ultrapeers:
            reason = f"Shielded leaf node ({counts.max_ultrapeers} ultrapeers max)"
            return _refuse(CODE_UNAVAILABLE, reason, peer_up, try_hosts, note)
    elif cfg.mode == "flood":
        # The classic network: every peer is equal. A client that calls itself a leaf (a
        # stand-alone `gnut search`) is admitted as one more flood peer within the same slots.
        if counts.ultrapeers >= counts.max_ultrapeers:
            return _refuse(CODE_UNAVAILABLE, f"Too many peers ({counts.max_ultrapeers} max)", peer_up, try_hosts, note)
    elif peer_up and counts.ultrapeers >= counts.max_ultrapeers:
        return _refuse(CODE_UNAVAILABLE, "Too many ultrapeers", peer_up, try_hosts, note)
    elif not peer_up and counts.leaves >= counts.max_leaves:
        return _refuse(CODE_UNAVAILABLE, "Too many leaves", peer_up, try_hosts, note)
    deflate_out = cfg.accept_deflate and has_token(headers.get("Accept-Encoding"), "deflate")
    return Verdict(CODE_OK, "OK", peer_up, deflate_out, note=note)


def evaluate_response(cfg: HandshakeConfig, code: int, headers: Headers, reason: str = "") -> Verdict:
    """Decide, on the dialing side, what the listener's answer means for us.

    Args:
        cfg: our configuration.
        code: the listener's status code.
        headers: the listener's headers.
        reason: the listener's reason phrase (reported back on refusals).

    Returns:
        A Verdict. Non-200: refused with the listener's code, reason and X-Try(-Ultrapeers)
        hosts. 200 from a non-ultrapeer while we are a leaf: 503 (we send that as our
        third step). 200 with an Accept header excluding Gnutella packets: 406.
        Otherwise 200 with deflate_out (we compress: the peer accepts deflate and so do
        we) and deflate_in (its 200 carried Content-Encoding: deflate).

    Raises:
        RemoteProtocolError: a 200 whose Content-Encoding is neither deflate nor identity.
    """
    peer_up, note = _peer_role(headers)
    hosts = parse_try_hosts(
        ", ".join(v for v in (headers.get("X-Try-Ultrapeers"), headers.get("X-Try")) if v)
    )
    if code != CODE_OK:
        return Verdict(code, reason, peer_up, False, try_hosts=tuple(hosts), note=note)
    accept = headers.get("Accept")
    if accept is not None and not has_token(accept, GNUTELLA_CONTENT_TYPE):
        return Verdict(
            CODE_NOT_ACCEPTABLE, "Not Acceptable", peer_up, False, try_hosts=tuple(hosts), note=note
        )
    if cfg.mode == "leaf" and not peer_up:
        return Verdict(
            CODE_UNAVAILABLE, "Shielded leaf node", peer_up, False, try_hosts=tuple(hosts), note=note
        )
    deflate_out = cfg.accept_deflate and has_token(headers.get("Accept-Encoding"), "deflate")
    deflate_in = content_is_deflated(headers)
    return Verdict(CODE_OK, "OK", peer_up, deflate_out, deflate_in=deflate_in, note=note)
