"""gnut.dht: a sans-IO Kademlia DHT speaking the Gnutella DHT (LimeWire Mojito) wire format.

May import: the foundation (gnut.constants, gnut.errors) and gnut.protocol, and itself.
Never imports gnut.runtime, gnut.app or gnut.sim (they import it: the runtime drives it over
UDP, the simulator over an in-memory network, the app shows its state).

No sockets, no clock: every entry point takes `now` (seconds, float) and returns or queues
bytes to send.  Modules:

    wire     Mojito codecs: the 61-byte header, contacts, DHT values, the eight message bodies
    table    the routing table: k-buckets split along our KUID, replacement caches, /24 bounds
    lookup   iterative FIND_NODE / FIND_VALUE with bounded parallelism (alpha)
    store    stored values (expiry, per-key and per-network quotas), security tokens, rate limits
    core     DhtCore: RPCs, request handling, publishing, refresh and republication
"""
