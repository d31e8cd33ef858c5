"""Sans-IO Gnutella: bytes in, decisions and bytes out; no sockets, no clock, no asyncio.

Message and GGEP codecs, the 0.6 handshake, one link's state machine (Connection), QRP,
the Router and its rules, GUIDs and magnet links. Time is passed in as `now`.

May import: the top-level foundation modules (gnut.constants, gnut.errors, gnut.fastpath)
and each other. Never gnut.runtime, gnut.app or gnut.sim.
"""
