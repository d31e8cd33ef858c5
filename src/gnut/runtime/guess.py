"""Our GUESS queries (opt-in, config `guess = true`): ask ultrapeers one at a time over UDP.

Strategy (gtk-gnutella doc/gnutella/GUESS, query_keys): after a search goes out on TCP, walk up to
GUESS_MAX_HOSTS candidate ultrapeers we are not linked to (pong cache, host cache), one every
GUESS_PACE seconds: get the host's query key with a TTL-1 "QK" ping if we have none (waiting at
most GUESS_KEY_WAIT), then send it the query with the key in GGEP "QK" and register a claim so
its hit datagrams (at most GUESS_HITS_ACCEPTED) are accepted by the OOB receive path. Stop when
the search is gone or has GUESS_ENOUGH results. Everything is bounded and counted.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

from gnut.constants import MSG_QUERY
from gnut.protocol import messages, vendor
from gnut.protocol.datagram import build_datagram
from gnut.protocol.ggep import GgepItem

log = logging.getLogger("gnut.runtime.guess")

# Hosts one search asks, the pause between two, and the wait for a query key.
GUESS_MAX_HOSTS = 20
GUESS_PACE = 0.2
GUESS_KEY_WAIT = 1.0
# Results after which we stop asking more hosts.
GUESS_ENOUGH = 100
# Hit datagrams accepted from one queried host (it sends at most 4, see udpnode.GUESS_MAX_HITS).
GUESS_HITS_ACCEPTED = 4
# GUESS walks running at once (one per search; more searches wait for TCP results only).
GUESS_MAX_WALKS = 8


class GuessClient:
    """Runs the GUESS walk of our searches through the node's UdpGnutella and OobManager."""

    def __init__(self, node: Any, udpnode: Any, oob: Any) -> None:
        self.node = node
        self.udpnode = udpnode
        self.oob = oob
        self.walks = 0
        self.events: collections.Counter[str] = collections.Counter()

    def start(self, search: Any) -> None:
        """Begin the GUESS walk for `search` (no-op when too many walks run)."""
        if self.walks >= GUESS_MAX_WALKS:
            self.events["walks_skipped"] += 1
            return
        self.walks += 1
        self.node.spawn(self._walk(search))

    def _candidates(self) -> list[tuple[str, int]]:
        node = self.node
        linked = {p.listen_addr for p in node.peers.values() if p.listen_addr}
        rows = self.udpnode.fresh_ultrapeers(tuple(node.address), GUESS_MAX_HOSTS * 2)
        # Probing is ours to do (like dialling): unverified host-cache entries are candidates too,
        # though only proven ones are ever passed on to others (fresh_ultrapeers).
        rows += node.hosts.pick_for_dial(GUESS_MAX_HOSTS * 2, time.time(), exclude=linked)
        out: list[tuple[str, int]] = []
        for a in rows:
            if a not in linked and a not in out and a != tuple(node.address):
                out.append(a)
        return out[:GUESS_MAX_HOSTS]

    async def _walk(self, search: Any) -> None:
        try:
            self.events["walks"] += 1
            for addr in self._candidates():
                if self.node.searches.get(search.guid) is None or len(search.results) >= GUESS_ENOUGH:
                    break
                key = self.udpnode.query_keys.get(addr)
                if key is None:
                    self.udpnode.send_ping(addr, "qk", (GgepItem("QK"),))
                    self.events["key_requests"] += 1
                    deadline = time.monotonic() + GUESS_KEY_WAIT
                    while key is None and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                        key = self.udpnode.query_keys.get(addr)
                    if key is None:
                        self.events["no_key"] += 1
                        continue
                q = messages.Query(search.text, urns=search.urns,
                                   ggep=(GgepItem("QK", key), GgepItem("SCP", bytes((vendor.SCP_F_ULTRA,)))))
                self.oob.expect_hits(search.guid, addr, GUESS_HITS_ACCEPTED)
                self.udpnode.expect_pong(search.guid, addr, "guess_ack")
                raw = build_datagram(search.guid, MSG_QUERY, 1, 0, q.encode(), can_inflate=True)
                if self.udpnode.udp.send(raw, addr, "guess_query"):
                    self.events["queries_sent"] += 1
                await asyncio.sleep(GUESS_PACE)
        finally:
            self.walks -= 1

    def stats(self) -> dict:
        return dict(self.events)
