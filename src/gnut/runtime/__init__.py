"""The servent on uvloop (asyncio as fallback): it executes what gnut.protocol decides.

The node and its links (node, links, peer), our searches and dynamic queries, the file side
(share index, HTTP uploads, downloads, PUSH/GIV), the host cache and the node's settings.
Parts of the node see it only through the Protocols in gnut.runtime.host, so nothing here
imports node.py but the code that composes it.

May import: the foundation modules, gnut.protocol and each other. Never gnut.app or gnut.sim.
"""
