"""The hostiles files on disk (gtk-gnutella's hostiles.txt format) and the trust view for `gnut status`."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from gnut.protocol.addresses import AddressVotes, Hostiles
from gnut.protocol.printable import printable
from gnut.runtime.fsutil import atomic_write_bytes

log = logging.getLogger("gnut.runtime.hostiles")

# The hostiles file in the node's home; `gnut ban` adds to it.
HOSTILES_FILE = "hostiles.txt"
# A hostiles file above this size is not read (gtk-gnutella's full list is ~100 KiB).
HOSTILES_MAX_BYTES = 8 << 20
# Bad lines of a hostiles file logged (the rest are only counted).
BAD_LINES_LOGGED = 5
_HEADER = "# gnut hostiles: one address or CIDR per line (gtk-gnutella's hostiles.txt format)\n"


def load_hostiles(paths: Iterable[Path]) -> Hostiles:
    """Read every hostiles file that exists; unreadable, oversized files and bad lines are logged, skipped."""
    hostiles = Hostiles()
    for path in paths:
        try:
            if path.stat().st_size > HOSTILES_MAX_BYTES:
                log.warning("hostiles file %s is larger than %d bytes: not read", path, HOSTILES_MAX_BYTES)
                continue
            text = path.read_text("utf-8", "replace")
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("could not read hostiles file %s: %s", path, exc)
            continue
        added, bad = hostiles.load_text(text)
        log.info("%d hostile addresses from %s%s", added, path, f" ({len(bad)} bad lines)" if bad else "")
        for line in bad[:BAD_LINES_LOGGED]:
            log.warning("%s: %s", path, printable(line))
    return hostiles


def persist_ban(path: Path, entry: str) -> None:
    """Add `entry` (a normalised address or CIDR) to the hostiles file at `path`, atomically.

    Raises:
        OSError: the file could not be written.
    """
    try:
        old = path.read_text("utf-8", "replace")
    except FileNotFoundError:
        old = _HEADER
    if entry in {line.split("#", 1)[0].strip() for line in old.splitlines()}:
        return
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write_bytes(path, (old + entry + "\n").encode())


def trust_view(router, votes: AddressVotes, address: str, wildcard: bool, hostiles: Hostiles, refused: dict,
               now: float) -> dict:
    """node.stats()["trust"]: route takeovers, our address and its votes, hostiles, refusals by reason."""
    return {
        "route_takeovers": router.dup_ttl_relays,
        "route_takeovers_refused": router.takeovers_refused,
        "address": {"advertised": address, "wildcard": wildcard, "learned": votes.current,
                    "votes": votes.tally(now), "changes": votes.changes},
        "hostiles": len(hostiles),
        "refused": dict(refused),
    }
