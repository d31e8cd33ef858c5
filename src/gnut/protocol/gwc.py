"""GWebCache protocol, sans-IO: client requests and replies, and the cache a server keeps.

Facts (gtk-gnutella doc/gnutella/gwcache for spec 1; GWebCache spec 2 as servents send it):
- Spec 2 requests: `?get=1&net=gnutella&client=XXXX&version=V` (hosts and caches),
  `?update=1&ip=A.B.C.D:P&url=http://...&net=gnutella&client=...` (announce), `?ping=1`.
  Spec 1 names (`hostfile=1`, `urlfile=1`, `ip=`/`url=` without `update=1`) are accepted too.
- Spec 2 replies are lines `h|ip:port|age-seconds`, `u|url|age-seconds`, `i|...` (information,
  e.g. `i|update|OK`, `i|pong|name|gnutella`); spec 1 replies are plain `ip:port` or URL lines,
  `OK`, `PONG name`, `ERROR ...`. Lines may end in LF, CRLF or CR.
- The server returns only a few of the newest entries, keeps few, and accepts one update per
  client IP per ~55 minutes; a submitted ip must be the requester's own (spec 1 section 4.1).
"""

from __future__ import annotations

import collections
import ipaddress
import re
import urllib.parse
from dataclasses import dataclass, field

# Lines we read from one reply, and the longest line: a cache cannot make a client hold more.
MAX_REPLY_LINES = 200
MAX_LINE_LEN = 512
# Hosts and cache URLs a server keeps (the spec: "only a few, the newest"), and returns per get.
CACHE_MAX_HOSTS = 100
CACHE_MAX_URLS = 50
REPLY_HOSTS = 20
REPLY_URLS = 10
# One update per client IP per this many seconds (spec 1 section 4.1: ~55 minutes).
UPDATE_INTERVAL = 55 * 60.0
# Client IPs whose last update time we remember (oldest forgotten first).
MAX_UPDATERS = 10000
# A cache URL longer than this is refused.
MAX_URL_LEN = 256
# Query-string parameters we read from one request (real ones have at most six).
MAX_FIELDS = 32
# The network name we serve and ask for.
NET = "gnutella"

_URL_RE = re.compile(r"^http://[A-Za-z0-9.\-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~\-/%]*)?$")


def client_query(kind: str, client: str, version: str, ip: tuple[str, int] | None = None,
                 url: str | None = None) -> str:
    """The query string of a spec-2 request: kind is "get", "update" or "ping"."""
    params = {kind: "1", "net": NET, "client": client, "version": version}
    if ip is not None:
        params["ip"] = f"{ip[0]}:{ip[1]}"
    if url is not None:
        params["url"] = url
    return urllib.parse.urlencode(params)


def valid_url(url: str) -> bool:
    """True for an http:// cache URL we store or contact (no credentials, no spaces, bounded)."""
    return len(url) <= MAX_URL_LEN and bool(_URL_RE.match(url))


def parse_hostport(text: str) -> tuple[str, int] | None:
    """A numeric IPv4 "a.b.c.d:port" (port 1..65535), else None."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()):
        return None
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return None
    p = int(port)
    return (host, p) if 0 < p < 65536 else None


@dataclass
class GwcReply:
    """What a cache answered: hosts, cache URLs, info lines, and whether it said OK/PONG/ERROR."""

    hosts: list[tuple[str, int]] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)
    ok: bool = False
    pong: bool = False
    error: str | None = None


def parse_reply(body: bytes) -> GwcReply:
    """Parse a cache reply (spec 2 or spec 1); bounded, never raises."""
    r = GwcReply()
    text = body.decode("latin-1")
    for line in re.split(r"\r\n|\r|\n", text)[:MAX_REPLY_LINES]:
        line = line.strip()
        if not line or len(line) > MAX_LINE_LEN:
            continue
        parts = line.split("|")
        tag = parts[0].lower()
        if len(parts) >= 2 and tag == "h":
            hp = parse_hostport(parts[1])
            if hp is not None:
                r.hosts.append(hp)
        elif len(parts) >= 2 and tag == "u":
            if valid_url(parts[1]):
                r.urls.append(parts[1])
        elif len(parts) >= 2 and tag == "i":
            r.info.append(line)
            low = [p.lower() for p in parts[1:]]
            if low[0] == "pong":
                r.pong = True
            if "ok" in low:
                r.ok = True
            if low[0] == "error" or "error" in low:
                r.error = line
        elif line.upper().startswith("PONG"):
            r.pong = True
        elif line.upper().startswith("OK"):
            r.ok = True
        elif line.upper().startswith("ERROR"):
            r.error = line
        else:
            hp = parse_hostport(line)
            if hp is not None:
                r.hosts.append(hp)
            elif valid_url(line):
                r.urls.append(line)
    return r


# --- the server's side ------------------------------------------------------------------------
@dataclass
class GwcRequest:
    kind: str  # "get", "update", "ping", "hostfile", "urlfile", "statfile", "info" or "bad"
    net: str
    ip: str | None
    url: str | None
    client: str
    version: str
    spec2: bool


def parse_request(query: str) -> GwcRequest:
    """Parse a request's query string (unknown parameters ignored; bounded by the HTTP layer).

    More than MAX_FIELDS parameters make a request of kind "bad" (answered with an error line).
    """
    try:
        q = urllib.parse.parse_qs(query, keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except ValueError:
        return GwcRequest("bad", NET, None, None, "", "", False)

    def one(*names: str) -> str | None:
        for n in names:
            if n in q and q[n]:
                return q[n][0][:MAX_URL_LEN + 8]
        return None

    ip, url = one("ip", "ip1"), one("url", "url1")
    if one("ping") is not None:
        kind = "ping"
    elif one("update") is not None or ip is not None or url is not None:
        kind = "update"
    elif one("get") is not None:
        kind = "get"
    elif one("hostfile") is not None:
        kind = "hostfile"
    elif one("urlfile") is not None:
        kind = "urlfile"
    elif one("statfile") is not None:
        kind = "statfile"
    else:
        kind = "info"
    spec2 = one("get", "update") is not None or one("net") is not None
    return GwcRequest(kind, (one("net") or NET).lower(), ip, url, one("client") or "", one("version") or "", spec2)


class GwcCache:
    """The bounded store of a GWebCache server; `handle(request, client_ip, now)` -> reply body."""

    def __init__(self, name: str = "gnut", update_interval: float = UPDATE_INTERVAL) -> None:
        self.name = name
        self.update_interval = update_interval
        self.hosts: collections.OrderedDict[tuple[str, int], float] = collections.OrderedDict()
        self.urls: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._updaters: collections.OrderedDict[str, float] = collections.OrderedDict()
        self.counts: collections.Counter[str] = collections.Counter()

    def _update_allowed(self, client_ip: str, now: float) -> bool:
        last = self._updaters.get(client_ip)
        if last is not None and now - last < self.update_interval:
            return False
        self._updaters[client_ip] = now
        self._updaters.move_to_end(client_ip)
        while len(self._updaters) > MAX_UPDATERS:
            self._updaters.popitem(last=False)
        return True

    def handle(self, req: GwcRequest, client_ip: str, now: float) -> str:
        self.counts[req.kind] += 1
        if req.kind == "bad":
            return "ERROR Bad request\n"
        if req.net != NET:
            self.counts["wrong_net"] += 1
            return f"i|NET-NOT-SUPPORTED|{NET}\n" if req.spec2 else "ERROR Network not supported\n"
        if req.kind == "ping":
            return f"i|pong|{self.name}|{NET}\n" if req.spec2 else f"PONG {self.name}\n"
        if req.kind == "update":
            return self._update(req, client_ip, now)
        if req.kind == "statfile":
            return f"{sum(self.counts.values())}\n0\n0\n"
        if req.kind == "info":
            return f"i|{self.name} GWebCache ({NET}): use ?get=1&net={NET}\n"
        lines = []
        if req.kind in ("get", "hostfile"):
            for (h, p), t in list(reversed(self.hosts.items()))[:REPLY_HOSTS]:
                lines.append(f"h|{h}:{p}|{max(0, int(now - t))}" if req.kind == "get" else f"{h}:{p}")
        if req.kind in ("get", "urlfile"):
            for u, t in list(reversed(self.urls.items()))[:REPLY_URLS]:
                lines.append(f"u|{u}|{max(0, int(now - t))}" if req.kind == "get" else u)
        if req.kind == "get" and not lines:
            lines.append("i|NO-URL-NO-HOSTS")
        return "".join(line + "\n" for line in lines)

    def _update(self, req: GwcRequest, client_ip: str, now: float) -> str:
        if not self._update_allowed(client_ip, now):
            self.counts["update_too_soon"] += 1
            return "i|update|WARNING|Returned too soon\n" if req.spec2 else "OK\nWARNING: Returned too soon\n"
        notes = []
        if req.ip is not None:
            hp = parse_hostport(req.ip)
            if hp is None or hp[0] != client_ip:
                notes.append("Invalid IP")
                self.counts["update_bad_ip"] += 1
            else:
                self.hosts.pop(hp, None)
                self.hosts[hp] = now
                while len(self.hosts) > CACHE_MAX_HOSTS:
                    self.hosts.popitem(last=False)
        if req.url is not None:
            if not valid_url(req.url):
                notes.append("Invalid URL")
                self.counts["update_bad_url"] += 1
            else:
                self.urls.pop(req.url, None)
                self.urls[req.url] = now
                while len(self.urls) > CACHE_MAX_URLS:
                    self.urls.popitem(last=False)
        if req.spec2:
            return "i|update|OK\n" + "".join(f"i|update|WARNING|{n}\n" for n in notes)
        return "OK\n" + "".join(f"WARNING: {n}\n" for n in notes)
