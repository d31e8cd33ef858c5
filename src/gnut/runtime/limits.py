"""Fairness and resource limits: what one address may hold, and file-descriptor headroom.

Strategy: every limit that keeps one peer (or one address, or one /24) from taking what
honest peers need is a named constant here with its reason; NodeConfig's fields default to
them and a test network or the demo raises them in its own config. No address range is
exempt: every attack the red team ran came from 127.0.0.x, so loopback obeys the same rules.

`Limits` holds the refusal counters (`gnut status` shows them under "limits", by reason) and
the file-descriptor watch; `net_key()` names the /24 (IPv4) or /64 (IPv6) of an address.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import os
import time

log = logging.getLogger("gnut.runtime.limits")

# Gnutella links (either direction) with one IP address. gtk-gnutella allows one per IP
# unless the two listen on distinct ports; a second covers two servents behind one NAT.
MAX_LINKS_PER_IP = 2
# Gnutella links with one IPv4 /24 (IPv6 /64): one provider's block or one rented subnet
# must not fill the 32 ultrapeer + 30 leaf slots; 6 is about a tenth of them.
MAX_LINKS_PER_24 = 6
# Incoming sockets of one IP still in the sniff/handshake phase: an honest servent opens one
# at a time; above this, a new socket is closed at once (stops fd exhaustion below the
# accept-rate limit).
MAX_PENDING_PER_IP = 4
# HTTP connections (uploads, browses, GIVs) of one IP open at once: a downloader uses one
# per file it fetches from us, and it gets one upload slot anyway.
MAX_HTTP_PER_IP = 4
# Upload slots one host may hold: gtk-gnutella also limits uploads per IP; with the default
# 4 slots one host taking two would leave two hosts the whole node.
UPLOAD_SLOTS_PER_HOST = 1
# Browse-host responses streamed at once (each holds a socket and a writer for minutes).
MAX_BROWSES = 2
# File descriptors kept free below RLIMIT_NOFILE: files to upload, .part files, the SHA-1 and
# host caches, the control socket and a log file must still open when peers press on the
# limit. Accepts, dials and new uploads are refused (logged, counted) inside this reserve.
FD_RESERVE = 64
# Uploads need one fd more than the socket: they are refused only in the last half of the reserve.
FD_RESERVE_UPLOADS = FD_RESERVE // 2
# Counting open fds lists /proc/self/fd; under an accept storm it is redone at most this often.
FD_COUNT_EVERY = 0.05
# A refusal reason is logged at most once per this many seconds (the counters keep the rest).
REFUSAL_LOG_EVERY = 10.0
# Where open descriptors are listed (Linux; /dev/fd on the BSDs and macOS).
_FD_DIRS = ("/proc/self/fd", "/dev/fd")


def net_key(ip: str) -> str:
    """The /24 of an IPv4 address (the /64 of an IPv6 one) as text; the address itself if unparsable."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    prefix = 24 if addr.version == 4 else 64
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def fd_soft_limit() -> int:
    """RLIMIT_NOFILE's soft limit, or 0 when unknown or unlimited."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 0
    return 0 if soft == resource.RLIM_INFINITY or soft <= 0 else int(soft)


def count_open_fds() -> int:
    """Descriptors this process has open, or -1 when the platform cannot tell."""
    for d in _FD_DIRS:
        try:
            return len(os.listdir(d)) - 1  # listdir's own descriptor is listed too
        except OSError:
            continue
    return -1


class Limits:
    """Refusal counters by reason and the file-descriptor headroom check."""

    def __init__(self, fd_reserve: int = FD_RESERVE) -> None:
        self.refused: collections.Counter[str] = collections.Counter()
        self.fd_reserve = fd_reserve
        self.fd_limit = fd_soft_limit()
        self._fds = 0
        self._fds_at = -1.0
        self._logged: dict[str, float] = {}

    def refuse(self, reason: str, what: str = "") -> None:
        """Count a refusal by `reason`; log it at most once per REFUSAL_LOG_EVERY per reason.

        Args:
            reason: a short key (per_ip, per_24, fd_headroom, deadline, browse_busy, ...).
            what: already-escaped detail for the log line (the address, the limit).
        """
        self.refused[reason] += 1
        now = time.monotonic()
        if now - self._logged.get(reason, -REFUSAL_LOG_EVERY) >= REFUSAL_LOG_EVERY:
            self._logged[reason] = now
            log.warning("refused (%s, %d so far): %s", reason, self.refused[reason], what)

    def open_fds(self, fresh: bool = False) -> int:
        now = time.monotonic()
        if fresh or now - self._fds_at >= FD_COUNT_EVERY:
            self._fds = count_open_fds()
            self._fds_at = now
        return self._fds

    def fd_room(self, reserve: int | None = None) -> bool:
        """True while more than `reserve` (default fd_reserve) descriptors are left below the soft limit."""
        if not self.fd_limit:
            return True
        n = self.open_fds()
        if n < 0:
            return True
        self._fds = n + 1  # the work we admit now takes one: the cached count stays pessimistic
        return n < self.fd_limit - (self.fd_reserve if reserve is None else reserve)

    def stats(self) -> dict:
        out = dict(self.refused)
        out["open_fds"] = self.open_fds(fresh=True)
        out["fd_limit"] = self.fd_limit
        return out
