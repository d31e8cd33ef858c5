"""Message types, wire sizes and every limit gnut enforces, each with its reason."""

from __future__ import annotations

# --- Message types (Gnutella 0.4/0.6 descriptor payload descriptors) -------------
MSG_PING = 0x00
MSG_PONG = 0x01
MSG_BYE = 0x02
MSG_QRP = 0x30  # ROUTE_TABLE_UPDATE
MSG_VENDOR = 0x31
MSG_VENDOR_STD = 0x32
MSG_PUSH = 0x40
MSG_QUERY = 0x80
MSG_QUERYHIT = 0x81

KNOWN_TYPES = frozenset(
    (MSG_PING, MSG_PONG, MSG_BYE, MSG_QRP, MSG_VENDOR, MSG_VENDOR_STD, MSG_PUSH, MSG_QUERY, MSG_QUERYHIT)
)
TYPE_NAMES = {
    MSG_PING: "PING",
    MSG_PONG: "PONG",
    MSG_BYE: "BYE",
    MSG_QRP: "QRP",
    MSG_VENDOR: "VENDOR",
    MSG_VENDOR_STD: "VENDOR_STD",
    MSG_PUSH: "PUSH",
    MSG_QUERY: "QUERY",
    MSG_QUERYHIT: "QUERYHIT",
}

# --- Wire sizes --------------------------------------------------------------------
HEADER_LEN = 23  # 16 GUID + type + TTL + hops + 4-byte LE payload length
GUID_LEN = 16

# --- Limits --------------------------------------------------------------------------
# gtk-gnutella disconnects on payloads above 64 KiB (QUERYHITs are the largest).
MAX_PAYLOAD = 64 * 1024
# TTL+hops above 15 is never legitimate (gtk-gnutella and GnutellaBun drop it).
HARD_TTL_LIMIT = 15
# A received TTL+hops above 7 is clamped (the classic network's maximum horizon).
SOFT_TTL_LIMIT = 7
# Our own queries go out with TTL 4 (X-Max-TTL: 4 as gtk-gnutella and GnutellaBun).
DEFAULT_TTL = 4
MAX_TTL_ADVERTISED = 4
# A QUERYHIT answer carries TTL = query hops + 2 (INTEROP.md: observed margin).
QUERYHIT_TTL_MARGIN = 2
# Queries over 256 bytes are dropped, over 1 KiB the sender is disconnected (gtk-gnutella).
MAX_QUERY_RELAY = 256
MAX_QUERY_DISCONNECT = 1024
# Seen-GUID cache: gtk-gnutella keeps 1M GUIDs for an hour, GnutellaBun 600 s.
GUID_CACHE_CAPACITY = 1 << 20
GUID_CACHE_MAX_AGE = 600.0
# Reverse-route tables (GUID -> peer): same horizon as the seen cache; replies
# arriving later than that have nobody waiting for them.
ROUTE_TABLE_CAPACITY = 1 << 18
ROUTE_MAX_AGE = 600.0
# Route takeovers (a duplicate QUERY from a shorter path moving its reverse route, routerules.py):
# honest ones are rare races between two paths, so each neighbour may do at most this many in a
# burst, refilled at this rate; beyond that a neighbour lying about its hops steals only a trickle.
ROUTE_TAKEOVER_BURST = 8
ROUTE_TAKEOVERS_PER_MINUTE = 12
# Handshake: a header block above 4 KiB is refused (real blocks are < 1 KiB), and a
# peer that has not completed the handshake within 10 s is closed (slowloris).
HANDSHAKE_MAX_HEADER_BYTES = 4096
HANDSHAKE_TIMEOUT = 10.0
# Keep-alive: ping a link that was silent this long, close with BYE 406 if still silent.
IDLE_PING_AFTER = 60.0
IDLE_CLOSE_AFTER = 90.0

# --- Identity ------------------------------------------------------------------------
# Four-letter vendor code in QUERYHIT trailers and GGEP VC; "GNUT" is an old servent.
VENDOR_CODE = b"GNPY"
USER_AGENT_PRODUCT = "gnut"
DEFAULT_PORT = 6346
