"""Alternate locations: the X-Alt, X-Nalt and X-Falt HTTP header values (sans-IO).

Formats (gtk-gnutella doc/gnutella/x-alt; dmesh.c; LimeWire's TLS and firewalled extensions):

* X-Alt: comma-separated `IP[:PORT]` (port 6346 when omitted; IPv6 as `[addr]:port`). A leading
  `tls=<hex>` element is a bit field, most significant bit first, whose bit i says the i-th
  direct entry accepts TLS (`tls=8`: the first one). The original spec also allows push
  alt-locs inline: `<base32 GUID>;IP:PORT;IP:PORT` (the GUID of a firewalled servent and its push
  proxies).
* X-Nalt: the same direct list, naming sources that failed for the sender.
* X-Falt (firewalled alt-locs): `<hex GUID>;[fwt/1;][port:IP;][pptls=<hex>;]proxy;proxy...`.

Every header is bounded (MAX_ALTS_PER_HEADER entries, MAX_HEADER_LEN characters): what lies
beyond is counted and ignored. Parsers never raise on peer input: malformed elements are counted
in `bad` so the caller can log or drop, and the good ones are kept.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass, field

# Entries read from one header: a server sends ~10-20; more is noise or a flood.
MAX_ALTS_PER_HEADER = 64
# Characters of one header value we look at (a 64-entry IPv6 list fits).
MAX_HEADER_LEN = 4096
# Push proxies kept per firewalled alt-loc (gtk-gnutella's FW_MAX_PROXIES).
MAX_PROXIES = 4
DEFAULT_PORT = 6346


@dataclass(frozen=True, slots=True)
class AltLoc:
    """A directly reachable source: host (IP literal, canonical text), port, TLS capability."""

    host: str
    port: int
    tls: bool = field(default=False, compare=False)

    @property
    def key(self) -> tuple[str, int]:
        return self.host, self.port

    def compact(self) -> str:
        """`IP:PORT` (`[v6]:PORT` for IPv6)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PushAltLoc:
    """A firewalled source: its servent GUID and up to MAX_PROXIES push proxies."""

    guid: bytes
    proxies: tuple[AltLoc, ...] = ()


@dataclass(slots=True)
class Parsed:
    """What one header gave: direct sources, push sources, elements refused, elements beyond the cap."""

    direct: list[AltLoc] = field(default_factory=list)
    push: list[PushAltLoc] = field(default_factory=list)
    bad: int = 0
    skipped: int = 0


def _host(text: str) -> str | None:
    """Canonical text of a usable unicast IP literal, else None."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if addr.is_unspecified or addr.is_multicast or (addr.version == 4 and text == "255.255.255.255"):
        return None
    return str(addr)


def parse_hostport(text: str, default_port: int | None = DEFAULT_PORT) -> tuple[str, int] | None:
    """(host, port) from `IP[:PORT]` or `[IPv6]:PORT`; None if malformed."""
    text = text.strip()
    if text.startswith("["):
        host_text, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host_text, _, port_text = text.partition(":")
    elif ":" in text:
        return None  # bare IPv6 without brackets: the port cannot be told apart
    else:
        host_text, port_text = text, None
    host = _host(host_text)
    if host is None:
        return None
    if port_text is None:
        if default_port is None:
            return None
        return host, default_port
    if not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) < 65536:
        return None
    return host, int(port_text)


def _tls_bits(hex_text: str) -> list[bool] | None:
    hex_text = hex_text.strip()
    if (
        not hex_text
        or len(hex_text) > MAX_ALTS_PER_HEADER
        or any(c not in "0123456789abcdefABCDEF" for c in hex_text)
    ):
        return None
    return [bool(int(c, 16) & (8 >> b)) for c in hex_text for b in range(4)]


def _tls_hex(flags: list[bool]) -> str:
    if not any(flags):
        return ""
    flags = flags + [False] * (-len(flags) % 4)
    digits = [sum(8 >> b for b in range(4) if flags[i + b]) for i in range(0, len(flags), 4)]
    return "".join(f"{d:X}" for d in digits).rstrip("0") or "0"


def _guid(text: str) -> bytes | None:
    text = text.strip()
    try:
        if len(text) == 32:
            return binascii.unhexlify(text)
        if len(text) == 26:
            return base64.b32decode(text.upper() + "======")
    except (binascii.Error, ValueError):
        return None
    return None


def _elements(value: str, parsed: Parsed) -> list[str]:
    if len(value) > MAX_HEADER_LEN:
        value = value[:MAX_HEADER_LEN].rpartition(",")[0]
        parsed.skipped += 1
    elements = [e.strip() for e in value.split(",") if e.strip()]
    if len(elements) > MAX_ALTS_PER_HEADER + 1:  # +1: a leading tls= element
        parsed.skipped += len(elements) - MAX_ALTS_PER_HEADER - 1
        elements = elements[: MAX_ALTS_PER_HEADER + 1]
    return elements


def parse_x_alt(value: str) -> Parsed:
    """Parse an X-Alt (or X-Nalt) value: direct sources with TLS flags, inline push alt-locs."""
    parsed = Parsed()
    tls: list[bool] = []
    for i, element in enumerate(_elements(value, parsed)):
        if i == 0 and element.lower().startswith("tls="):
            bits = _tls_bits(element[4:])
            if bits is None:
                parsed.bad += 1
            else:
                tls = bits
            continue
        if len(parsed.direct) + len(parsed.push) >= MAX_ALTS_PER_HEADER:
            parsed.skipped += 1
            continue
        if ";" in element:
            push = _parse_push(element.split(";"), hex_guid=False)
            if push is None:
                parsed.bad += 1
            else:
                parsed.push.append(push)
            continue
        hp = parse_hostport(element)
        if hp is None:
            parsed.bad += 1
            continue
        index = len(parsed.direct)
        parsed.direct.append(AltLoc(hp[0], hp[1], index < len(tls) and tls[index]))
    return parsed


def _parse_push(parts: list[str], hex_guid: bool) -> PushAltLoc | None:
    guid = _guid(parts[0])
    if guid is None or (hex_guid and len(parts[0].strip()) != 32):
        return None
    proxies: list[AltLoc] = []
    pptls: list[bool] = []
    for part in parts[1:]:
        part = part.strip()
        if not part or "/" in part:
            continue  # options such as fwt/1
        if part.lower().startswith("pptls="):
            pptls = _tls_bits(part[6:]) or []
            continue
        hp = parse_hostport(part, default_port=None)
        if hp is None:
            continue  # the servent's own port:IP, timestamps and unknown items are skipped
        if len(proxies) < MAX_PROXIES and all(p.key != hp for p in proxies):
            proxies.append(AltLoc(hp[0], hp[1], len(proxies) < len(pptls) and pptls[len(proxies)]))
    return PushAltLoc(guid, tuple(proxies))


def parse_x_falt(value: str) -> Parsed:
    """Parse an X-Falt value: comma-separated `<hex GUID>;...;proxy;proxy` firewalled sources."""
    parsed = Parsed()
    for element in _elements(value, parsed):
        push = _parse_push(element.split(";"), hex_guid=True)
        if push is None:
            parsed.bad += 1
        else:
            parsed.push.append(push)
    return parsed


def format_x_alt(
    locs: list[AltLoc], max_entries: int = MAX_ALTS_PER_HEADER, max_len: int = MAX_HEADER_LEN
) -> str:
    """X-Alt (or X-Nalt) value for direct sources, `tls=<hex>` first when any accepts TLS; '' if none."""
    chosen: list[AltLoc] = []
    length = 0
    budget = max_len - len("tls=, ") - -(-max_entries // 4)  # room kept for the tls= element
    for loc in locs[:max_entries]:
        text = loc.compact()
        if length + len(text) + 2 > budget:
            break
        chosen.append(loc)
        length += len(text) + 2
    if not chosen:
        return ""
    items = [loc.compact() for loc in chosen]
    tls = _tls_hex([loc.tls for loc in chosen])
    return ", ".join(([f"tls={tls}"] if tls else []) + items)


def format_x_falt(locs: list[PushAltLoc], max_entries: int = MAX_ALTS_PER_HEADER) -> str:
    """X-Falt value: `<hex GUID>;[pptls=<hex>;]proxy;...` per firewalled source."""
    out = []
    for loc in locs[:max_entries]:
        parts = [loc.guid.hex().upper()]
        tls = _tls_hex([p.tls for p in loc.proxies])
        if tls:
            parts.append(f"pptls={tls}")
        parts += [p.compact() for p in loc.proxies[:MAX_PROXIES]]
        out.append(";".join(parts))
    return ", ".join(out)
