"""What users touch: the `gnut` command, the local control API (server and client), the
config file, the actions both share (search, fetch) and the demo.

May import: everything below it (foundation, gnut.protocol, gnut.runtime). Nothing imports it
but `python -m gnut`.
"""
