"""Sans-IO address trust: which addresses may enter the host cache or be dialled, hostiles lists,
and learning our own external address by agreement of several peers.

Rules (each applied where peers hand us addresses: PONGs, X-Try headers, hits, handshakes):

- `classify(ip)` puts an address in one class: PUBLIC, LOOPBACK, PRIVATE (RFC 1918, carrier-grade
  NAT 100.64/10, link-local 169.254/16, IPv6 ULA and link-local) or BOGON (this network 0/8, IETF
  192.0.0/24, documentation 192.0.2/24 198.51.100/24 203.0.113/24, benchmarking 198.18/15,
  multicast 224/4, reserved 240/4, broadcast, and the IPv6 equivalents), or INVALID (not an IP).
- `AddressPolicy` allows PUBLIC always, LOOPBACK or PRIVATE only when the node itself is on such an
  address (a test network on 127.0.0.1, a lab LAN), and BOGON never: a peer must not make us dial
  our own LAN, a multicast group or a documentation range.
- `Hostiles`: gtk-gnutella's hostiles.txt format (one address or CIDR per line, `#` comments);
  a listed address is refused at accept, before the handshake, and never dialled.
- `AddressVotes`: an external address is learned only when AGREEMENT_NEEDED distinct reporters
  (by /16 for public reporters, by address for loopback/private ones) say the same thing, and is
  corrected later by the same rule: one peer cannot choose where every later hit and pong points.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections import OrderedDict

# Distinct reporters that must agree on our external address before we advertise it (gtk-gnutella
# also waits for several peers); one lying peer, or two from the same /16, cannot choose it.
AGREEMENT_NEEDED = 3
# Reporters remembered for the vote (oldest forgotten first): a bounded table, recent opinions.
VOTES_KEPT = 64
# A report older than this no longer counts (our address may have changed since).
VOTE_MAX_AGE = 3600.0
# Entries a hostiles list holds at most (gtk-gnutella's shipped list is a few hundred lines).
HOSTILES_MAX = 100_000
# Longest line of a hostiles file we parse (an address with a comment fits in far less).
HOSTILES_MAX_LINE = 256


class AddrClass(enum.Enum):
    """What kind of address a peer handed us."""

    PUBLIC = "public"
    LOOPBACK = "loopback"
    PRIVATE = "private"
    BOGON = "bogon"
    INVALID = "invalid"


_V4_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
_V4_PRIVATE = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16")
)
_V4_BOGON = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "192.0.0.0/24", "192.0.2.0/24", "198.18.0.0/15", "198.51.100.0/24",
        "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
    )
)
_V6_PRIVATE = tuple(ipaddress.ip_network(n) for n in ("fc00::/7", "fe80::/10"))
_V6_BOGON = tuple(
    ipaddress.ip_network(n)
    for n in ("::/128", "::/96", "100::/64", "2001:db8::/32", "ff00::/8", "64:ff9b::/96")
)


_V4_RE = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})", re.ASCII)


def _v4_int(text: str) -> int | None:
    """The value of a strict dotted-quad IPv4 address, or None (the fast path: ipaddress costs ~10x).

    Strict as ipaddress is: four decimal parts 0..255, no leading zeros (ambiguous octal).
    """
    m = _V4_RE.fullmatch(text)
    if m is None:
        return None
    a, b, c, d = m.groups()
    value = 0
    for part in (a, b, c, d):
        if len(part) > 1 and part[0] == "0":
            return None
        n = int(part)
        if n > 255:
            return None
        value = value << 8 | n
    return value


def ip_value(text: str) -> tuple[int, int] | None:
    """(IP version, address as an integer) of `text` (IPv4-mapped IPv6 as IPv4), or None."""
    v = _v4_int(text) if isinstance(text, str) else None
    if v is not None:
        return 4, v
    ip = parse_ip(text)
    return None if ip is None else (ip.version, int(ip))


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address in `text` (IPv4-mapped IPv6 unwrapped), or None when it is not an IP address."""
    try:
        ip = ipaddress.ip_address(str(text).strip())
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


# IPv4 ranges as (first, last, class) integers, looked up in order (loopback, bogons, private).
_V4_RANGES = tuple(
    (int(n.network_address), int(n.broadcast_address), c)
    for nets, c in ((_V4_LOOPBACK, AddrClass.LOOPBACK), (_V4_BOGON, AddrClass.BOGON), (_V4_PRIVATE, AddrClass.PRIVATE))
    for n in nets
)


def classify_value(version: int, value: int) -> AddrClass:
    """classify() of an address already parsed by ip_value()."""
    if version == 4:
        for first, last, c in _V4_RANGES:
            if first <= value <= last:
                return c
        return AddrClass.PUBLIC
    return classify(str(ipaddress.IPv6Address(value)))


def classify(text: str) -> AddrClass:
    """Classify an address given as text (never sends anything anywhere)."""
    v = _v4_int(text) if isinstance(text, str) else None
    if v is not None:
        return classify_value(4, v)
    ip = parse_ip(text)
    if ip is None:
        return AddrClass.INVALID
    if ip.version == 4:
        return classify_value(4, int(ip))
    if ip == ipaddress.IPv6Address("::1"):
        return AddrClass.LOOPBACK
    if any(ip in n for n in _V6_PRIVATE):
        return AddrClass.PRIVATE
    if any(ip in n for n in _V6_BOGON):
        return AddrClass.BOGON
    return AddrClass.PUBLIC


class AddressPolicy:
    """Which addresses a node accepts from peers, given the address it is on itself.

    PUBLIC is always allowed; LOOPBACK and PRIVATE only when the node's own address is of that
    class (a node on 127.0.0.1 accepts 127.x peers; a node on a LAN its LAN); BOGON and INVALID
    never.
    """

    __slots__ = ("_allowed",)

    def __init__(self, own_host: str) -> None:
        own = classify(own_host)
        self._allowed = {AddrClass.PUBLIC}
        if own in (AddrClass.LOOPBACK, AddrClass.PRIVATE):
            self._allowed.add(own)

    def verdict(self, host: str) -> AddrClass | None:
        """None when `host` is allowed, else the class that refuses it (counted by that name)."""
        c = classify(host)
        return None if c in self._allowed else c

    def verdict_value(self, version: int, value: int) -> AddrClass | None:
        """verdict() of an address already parsed by ip_value()."""
        c = classify_value(version, value)
        return None if c in self._allowed else c

    def allows(self, host: str) -> bool:
        return self.verdict(host) is None


class Hostiles:
    """A set of hostile addresses and networks (gtk-gnutella's hostiles.txt format).

    Strategy: networks are kept per prefix length as sets of network integers, so a lookup is one
    set probe per distinct prefix length in the list (a handful), whatever the list's size.
    """

    __slots__ = ("_nets", "_count")

    def __init__(self) -> None:
        self._nets: dict[tuple[int, int], set[int]] = {}  # (version, prefix) -> network ints
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, spec: str) -> str:
        """Add an address or CIDR network; return its normal form.

        Raises:
            ValueError: `spec` is not an address or network, or the list is full.
        """
        net = ipaddress.ip_network(spec.strip(), strict=False)
        if net.version == 6 and net.prefixlen >= 96 and net.network_address.ipv4_mapped is not None:
            net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
        key = (net.version, net.prefixlen)
        bucket = self._nets.setdefault(key, set())
        value = int(net.network_address)
        if value not in bucket:
            if self._count >= HOSTILES_MAX:
                raise ValueError(f"hostiles list is full ({HOSTILES_MAX} entries)")
            bucket.add(value)
            self._count += 1
        return str(net) if net.num_addresses > 1 else str(net.network_address)

    def load_text(self, text: str) -> tuple[int, list[str]]:
        """Add every entry of a hostiles file's text.

        Returns:
            (entries added, bad lines as "line N: reason") - bad lines are skipped, not fatal.
        """
        added, bad = 0, []
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if len(line) > HOSTILES_MAX_LINE:
                bad.append(f"line {n}: longer than {HOSTILES_MAX_LINE} characters")
                continue
            try:
                before = self._count
                self.add(line.split()[0])
                added += self._count - before
            except ValueError as exc:
                bad.append(f"line {n}: {exc}")
        return added, bad

    def __contains__(self, host: object) -> bool:
        parsed = ip_value(str(host))
        return parsed is not None and self.contains_value(*parsed)

    def contains_value(self, version: int, value: int) -> bool:
        """`in` for an address already parsed by ip_value()."""
        width = 32 if version == 4 else 128
        for (v, prefix), bucket in self._nets.items():
            if v == version and (value >> (width - prefix) << (width - prefix)) in bucket:
                return True
        return False


def _reporter_key(reporter: str) -> str:
    """Who a vote counts as: a public IPv4 reporter by its /16, an IPv6 one by its /48, others by address."""
    ip = parse_ip(reporter)
    if ip is None:
        return reporter
    if classify(reporter) is not AddrClass.PUBLIC:
        return str(ip)
    prefix = 16 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


class AddressVotes:
    """Our external address as several peers see it (Remote-IP), adopted only by agreement.

    Each reporter (keyed by /16 when public) holds one vote, its latest claim; votes older than
    VOTE_MAX_AGE lapse and at most VOTES_KEPT reporters are remembered. `current` becomes the
    claim that AGREEMENT_NEEDED reporters share, and moves to another claim only when that one
    reaches AGREEMENT_NEEDED with more votes than the current one.
    """

    __slots__ = ("current", "_votes", "changes")

    def __init__(self) -> None:
        self.current: str | None = None
        self._votes: OrderedDict[str, tuple[str, float]] = OrderedDict()  # reporter key -> (claim, time)
        self.changes = 0

    def report(self, reporter: str, claim: str, now: float) -> str | None:
        """Record that `reporter` sees us as `claim`; return the newly adopted address, or None."""
        key = _reporter_key(reporter)
        self._votes.pop(key, None)
        self._votes[key] = (claim, now)
        while len(self._votes) > VOTES_KEPT:
            self._votes.popitem(last=False)
        tally = self.tally(now)
        best = max(tally.items(), key=lambda kv: kv[1], default=None)
        if best is None or best[0] == self.current or best[1] < AGREEMENT_NEEDED:
            return None
        if self.current is not None and best[1] <= tally.get(self.current, 0):
            return None
        self.current = best[0]
        self.changes += 1
        return best[0]

    def tally(self, now: float) -> dict[str, int]:
        """Live votes per claimed address."""
        out: dict[str, int] = {}
        for claim, t in self._votes.values():
            if now - t < VOTE_MAX_AGE:
                out[claim] = out.get(claim, 0) + 1
        return out
