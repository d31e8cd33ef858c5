"""The narrow interfaces the runtime's parts see of the node, so none of them imports node.py.

Strategy: `Node` (node.py) composes Peer links, the search manager, the dynamic-query driver
and the file side (transfers). Each of those is handed the node at construction, but types it
only as one of the Protocols below: the methods and attributes it really calls. node.py imports
them; they import only this module, so the runtime has no import circle and a part can be
driven by anything that offers the same few callbacks (the tests and benchmarks do).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gnut.protocol.handshake import HandshakeConfig
    from gnut.protocol.routing import Router
    from gnut.runtime.config import NodeConfig


class LinkHost(Protocol):
    """What one Peer link calls on its owner: lifecycle, frames, handshake outcomes, flushing."""

    handshake_config: HandshakeConfig
    events: Counter
    # Gnutella link bytes [received, sent] over the node's life (the links add per chunk).
    traffic: list[int]

    def next_peer_id(self) -> int: ...
    def new_guid(self) -> bytes: ...
    def peer_opened(self, peer: Any) -> None: ...
    def peer_closed(self, peer: Any) -> None: ...
    def protocol_error(self, peer: Any, exc: Exception) -> None: ...
    def switch_to_http(self, peer: Any, first: bytes) -> None: ...
    def on_frames(self, peer: Any, msgs: list) -> None: ...
    def on_handshake_request(self, peer: Any, ev: Any) -> None: ...
    def on_established(self, peer: Any, ev: Any) -> None: ...
    def on_refused(self, peer: Any, ev: Any) -> None: ...
    def mark_dirty(self, peer: Any) -> None: ...
    def output_changed(self, peer: Any) -> None: ...
    def flush(self) -> None: ...
    def tls_context(self, server_side: bool) -> Any: ...
    def on_connect_back(self, peer: Any) -> None: ...


class NodeServices(Protocol):
    """What the node's components (searches, dynamic queries, transfers) use of the node."""

    cfg: NodeConfig
    router: Router
    peers: dict[int, Any]
    events: Counter
    sent: Counter
    servent_guid: bytes
    address: tuple[str, int]
    searches: Any
    dq: Any
    limits: Any  # runtime/limits.Limits: refusal counters and the fd watch
    reach: Any  # runtime/reach.Reachability
    pushproxy: Any  # runtime/pushproxy.PushProxy

    def spawn(self, coro: Any) -> asyncio.Task: ...
    def new_guid(self) -> bytes: ...
    def flush(self) -> None: ...
    def send_to(self, peer: Any, mtype: int, payload: bytes, ttl: int, guid: bytes | None = None) -> bytes: ...
    def shares_changed(self) -> None: ...
