"""The simulator: the real gnut.protocol Router and codecs over an in-memory network of
10^4-10^5 nodes (engine), with topologies, replication rules and sparse QRP tables (overlays).

May import: the foundation modules and gnut.protocol. Never gnut.runtime or gnut.app.
"""
