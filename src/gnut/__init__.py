"""gnut: a Gnutella 0.6 servent in Python with a Cython hot path.

Layers (imports point down only; tests/test_layers.py checks it):

    gnut.app        the `gnut` command, control API, config file, demo
    gnut.runtime    the servent on uvloop: node, links, HTTP, transfers, searches
    gnut.sim        simulator: the real Router (and DHT core) over an in-memory network
    gnut.dht        sans-IO Kademlia DHT in the Gnutella DHT (Mojito) wire format
    gnut.protocol   sans-IO Gnutella: codecs, handshake, Connection, QRP, routing
    gnut (top)      foundation: constants, errors, and the hot path: gnut.fastpath selects
                    the compiled gnut._fastpath or its pure-Python twin gnut._purepath

`gnut.Node` is the servent (gnut.runtime.node.Node), imported on first use.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Node":
        from gnut.runtime.node import Node

        return Node
    raise AttributeError(f"module 'gnut' has no attribute {name!r}")
