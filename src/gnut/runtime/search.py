"""Our own searches: send the QUERY, collect QUERYHITs by GUID, hand results to whoever waits."""

# Strategy: a flood node or a leaf sends the query to the peers the Router picks, at once.
# An ultrapeer sends it at once only to its QRP-matching leaves and hands its ultrapeer
# links to a dynamic query (gnut.runtime.dynquery), which widens step by step until enough
# results came back.  A leaf marks its queries leaf-guided (flag 0x1000): it answers its
# ultrapeers' Query Status Requests with the number of results it kept, and tells them to
# stop (count 0xFFFF) when the search is stopped.

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from gnut.constants import MSG_QUERY, MSG_VENDOR
from gnut.protocol import messages, spam
from gnut.protocol import routing as rt
from gnut.protocol.guid import new_guid
from gnut.protocol.printable import printable
from gnut.runtime import dynquery
from gnut.runtime.fsutil import atomic_write_json

if TYPE_CHECKING:
    from gnut.runtime.host import NodeServices
    from gnut.runtime.peer import Peer

log = logging.getLogger("gnut.runtime.search")

# A search nobody asked about for this long is forgotten (its late hits then count as NO_ROUTE
# only after the router's own route table ages them out).
SEARCH_MAX_AGE = 600.0
# Results kept per search: more than any user reads; bounds memory against hit floods.
MAX_RESULTS_KEPT = 2000
# Results kept per search from one servent GUID: one peer (honest library or flooder) cannot
# take the whole MAX_RESULTS_KEPT from the others.
MAX_RESULTS_PER_SERVENT = 250
# Spam-marked results kept per search (for --show-filtered); beyond this they are only counted.
MAX_SPAM_KEPT = 200
# Queued results per listener before the oldest are dropped (a stalled control client).
LISTENER_QUEUE = 4096
# The known-spam list in the node's home folder: one urn:sha1 or base32 SHA-1 a line.
SPAM_LIST_NAME = "spam_sha1.txt"
# The spam filter's observations, kept between runs (a stand-alone `gnut search` is one short run).
SPAM_STATE_NAME = "spam_state.json"
# A spam state file above this is not read (the filter's own bounds keep a real one far smaller).
MAX_SPAM_STATE_BYTES = 8 * 1024 * 1024
# Text of a urn-only source search (LimeWire-family servents send a lone backslash).
URN_QUERY_TEXT = "\\"


@dataclass(slots=True)
class Hit:
    """One search result as users see it."""

    name: str
    size: int
    urn: str | None
    host: str
    port: int
    index: int
    servent_guid: str
    firewalled: bool
    vendor: str
    speed: int
    hops: int
    busy: bool = False
    # One of our own shared files (answered from the share index, not the network).
    local: bool = False
    # Why the spam filter rejected it (a gnut.protocol.spam reason), or None.
    spam: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


class Search:
    """One of our queries in flight."""

    def __init__(self, guid: bytes, text: str, urns: tuple[str, ...], now: float) -> None:
        self.guid = guid
        self.text = text
        self.urns = urns
        self.started = now
        self.last_used = now
        self.results: list[Hit] = []
        self.kept = 0  # results that are not spam: what a Query Status Response reports
        self.spam_kept = 0
        self.per_servent: dict[str, int] = {}
        self.dropped = 0  # results over MAX_RESULTS_KEPT, MAX_RESULTS_PER_SERVENT or MAX_SPAM_KEPT
        self.listeners: list[asyncio.Queue] = []
        self.direct_sent = 0
        self.dq: dynquery.DqRecord | None = None

    @property
    def messages_sent(self) -> int:
        """QUERY copies sent so far: at once, plus the dynamic query's steps (ultrapeer)."""
        return self.direct_sent + (self.dq.sent if self.dq is not None else 0)

    def listen(self) -> asyncio.Queue:
        """A queue that receives every Hit from now on (and the ones already in)."""
        q: asyncio.Queue = asyncio.Queue(LISTENER_QUEUE)
        for h in self.results:
            if not q.full():
                q.put_nowait(h)
        self.listeners.append(q)
        return q

    def add(self, hit: Hit) -> bool:
        """Keep a result and hand it to the listeners; False (counted in `dropped`) over a bound."""
        mine = self.per_servent.get(hit.servent_guid, 0)
        if (len(self.results) >= MAX_RESULTS_KEPT or mine >= MAX_RESULTS_PER_SERVENT
                or (hit.spam is not None and self.spam_kept >= MAX_SPAM_KEPT)):
            self.dropped += 1
            return False
        self.per_servent[hit.servent_guid] = mine + 1  # at most one new key per kept result
        self.results.append(hit)
        if hit.spam is None:
            self.kept += 1
        else:
            self.spam_kept += 1
        for q in self.listeners:
            if q.full():
                q.get_nowait()
            q.put_nowait(hit)
        return True

    def sources(self, urn: str) -> list[Hit]:
        return [h for h in self.results if h.urn == urn]


class SearchManager:
    """Starts our queries and routes the QUERYHITs that come back for them."""

    def __init__(self, node: NodeServices) -> None:
        self.node = node
        self.active: dict[bytes, Search] = {}
        self.spam = spam.SpamFilter()
        self.load_spam_list()
        self.load_spam_state()

    def load_spam_state(self) -> int:
        """Restore the spam filter's recent observations from $GNUT_HOME/spam_state.json (if any)."""
        path = self.node.cfg.home / SPAM_STATE_NAME
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_SPAM_STATE_BYTES + 1)
            if len(data) > MAX_SPAM_STATE_BYTES:
                raise ValueError(f"larger than {MAX_SPAM_STATE_BYTES} bytes")
            return self.spam.restore(json.loads(data), time.time())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.warning("spam state %s ignored: %s", path, exc)
            return 0

    def save_spam_state(self) -> None:
        """Write the spam filter's observations still inside its window (on node stop)."""
        path = self.node.cfg.home / SPAM_STATE_NAME
        state = self.spam.export(time.time())
        if not any(v for k, v in state.items() if k != "version") and not path.exists():
            return
        try:
            atomic_write_json(path, state)
        except OSError as exc:
            log.warning("spam state %s not saved: %s", path, exc)

    def load_spam_list(self) -> int:
        """Read $GNUT_HOME/spam_sha1.txt (if any) into the spam filter; returns the SHA-1s it held."""
        path = self.node.cfg.home / SPAM_LIST_NAME
        try:
            with open(path, "rb") as fh:
                data = fh.read(spam.MAX_LIST_BYTES)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("spam list %s unreadable: %s", path, exc)
            return 0
        found, bad = spam.parse_list(data.decode("utf-8", "replace"))
        self.spam.add_known(found)
        log.info("spam list %s: %d SHA-1s%s", path, len(found), f", {bad} bad line(s) skipped" if bad else "")
        return len(found)

    def start(self, text: str, urns: tuple[str, ...] = (), ttl: int | None = None) -> Search:
        """Send a QUERY for `text` (and/or urns) to our peers and return its Search.

        Args:
            text: the search words (may be empty for a urn-only query).
            urns: e.g. ("urn:sha1:...",).
            ttl: TTL of the query; the node's configured query TTL by default.
        """
        node = self.node
        now = time.monotonic()
        # Out-of-band hits (runtime/oob.py): a GUID carrying our UDP address, flag 0x0400, GGEP SO.
        oob_guid = node.oob.query_guid() if getattr(node, "oob", None) is not None else None
        guid = oob_guid or new_guid()
        search = Search(guid, text, tuple(urns), now)
        self.active[guid] = search
        node.router.register_own(guid, MSG_QUERY, now)
        flags = messages.QF_DEFAULT | (messages.QF_LEAF_GUIDED if node.cfg.mode == "leaf" else 0)
        if oob_guid is not None:
            flags |= messages.QF_OUT_OF_BAND
        q = messages.Query(text=text, flags=flags, urns=tuple(urns),
                           ggep=(messages.GgepItem("SO", b""),) if oob_guid is not None else ())
        ttl = ttl or node.cfg.query_ttl
        payload = q.encode()
        raw = messages.build(guid, MSG_QUERY, ttl, 0, payload)
        targets = node.router.route_query_targets(None, None, ttl, payload=payload)
        dynamic = node.dq.enabled
        ups = 0
        for pid in targets:
            p = node.peers.get(pid)
            if p is None:
                continue
            if dynamic and p.role != rt.PeerRole.LEAF:
                ups += 1  # reached by the dynamic query below
            elif p.enqueue(raw):
                search.direct_sent += 1
                node.sent[MSG_QUERY] += 1
        node.flush()
        if ups:
            search.dq = node.dq.start(guid, payload, hops=0, origin=None, max_ttl=ttl,
                                      target=node.dq.target_for(payload, leaf=False))
        if getattr(node, "guess", None) is not None:
            node.guess.start(search)  # GUESS over UDP too (runtime/guess.py; config `guess = true`)
        log.info("search %r sent to %d peers%s (guid %s)", text, search.direct_sent,
                 f", {ups} ultrapeers by dynamic query" if ups else "", guid.hex())
        return search

    def on_hit(self, peer: Peer, msg) -> None:
        """A QUERYHIT the router delivered locally: one of our searches' results."""
        search = self.active.get(msg.guid)
        if search is None:
            self.node.router.drops[rt.DropReason.NO_ROUTE] += 1
            return
        qh = messages.QueryHit.decode(msg.payload)
        vendor = qh.vendor.decode("latin-1") if qh.vendor else ""
        now = time.time()  # wall clock: the spam observations outlive this process
        text_query = bool(search.text.strip()) and search.text != URN_QUERY_TEXT
        guid_hex = qh.servent_guid.hex()
        for r in qh.results:
            urn = next((u for u in r.urns if u.lower().startswith("urn:sha1:")), None)
            reason = self.spam.classify(search.text, r.name, r.size, urn, guid_hex, now, text_query)
            if reason is not None:
                log.debug("spam (%s) from %s:%d: %s", reason, qh.ip, qh.port, printable(r.name))
            if not search.add(Hit(
                name=r.name, size=r.size, urn=urn, host=qh.ip, port=qh.port, index=r.index,
                servent_guid=guid_hex, firewalled=bool(qh.push), vendor=vendor,
                speed=qh.speed, hops=msg.hops, busy=bool(qh.busy), spam=reason,
            )):
                self.node.events["search_results_over_limit"] += 1

    def get(self, guid: bytes) -> Search | None:
        return self.active.get(guid)

    def stop(self, search: Search) -> None:
        """Forget a search: its dynamic query ends, a leaf tells its ultrapeers to stop it."""
        if self.active.pop(search.guid, None) is None:
            return
        node = self.node
        node.dq.cancel(search.guid)
        if node.cfg.mode == "leaf":
            for p in list(node.peers.values()):
                if p.established and p.role == rt.PeerRole.ULTRAPEER:
                    node.send_to(p, MSG_VENDOR, dynquery.status_response(dynquery.QSTAT_STOP), 1, guid=search.guid)
            node.flush()

    def on_status_request(self, peer: Peer, guid: bytes) -> None:
        """An ultrapeer asks how many results of our query `guid` we kept (BEAR/11): answer BEAR/12.

        A query we no longer run gets 0xFFFF, which tells the ultrapeer to stop it.
        """
        search = self.active.get(guid)
        kept = dynquery.QSTAT_STOP if search is None else search.kept
        self.node.send_to(peer, MSG_VENDOR, dynquery.status_response(kept), 1, guid=guid)

    def spam_stats(self) -> dict:
        """The spam filter's counters, for node.stats()["spam"]."""
        return self.spam.stats()

    def tick(self, now: float) -> None:
        for guid, s in list(self.active.items()):
            if now - s.started > SEARCH_MAX_AGE and not s.listeners:
                del self.active[guid]
