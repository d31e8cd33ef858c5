"""The one place that chooses between the Cython hot path and its pure-Python twin."""

from __future__ import annotations

import os

if os.environ.get("GNUT_NO_EXTENSIONS"):
    from gnut import _purepath as _impl

    IMPLEMENTATION = "python"
else:
    # No silent fallback: a missing or broken build is an ImportError here, with one line that
    # says what to run (the CLI prints just that line; tests that import it fail loudly).
    try:
        from gnut import _fastpath as _impl  # type: ignore[no-redef]
    except ImportError as exc:
        from gnut.errors import FastPathMissing

        raise FastPathMissing(
            f"gnut's compiled fast path gnut._fastpath cannot be loaded ({exc}); build it with "
            "`python3 -m pip install .` (or `pip install -e .` in a checkout), or set GNUT_NO_EXTENSIONS=1 "
            "to run the pure-Python twin"
        ) from exc

    IMPLEMENTATION = "cython"

FrameReader = _impl.FrameReader
GuidCache = _impl.GuidCache
Message = _impl.Message
relay_rewrite = _impl.relay_rewrite
relay_rewrite_into = _impl.relay_rewrite_into
count_frames = _impl.count_frames
hash_guid = _impl.hash_guid
MAX_CACHE_CAPACITY = _impl.MAX_CACHE_CAPACITY
RouteMap = _impl.RouteMap
RelayCore = _impl.RelayCore
MAX_ROUTE_CAPACITY = _impl.MAX_ROUTE_CAPACITY
STOP_END = _impl.STOP_END
STOP_ROUTE = _impl.STOP_ROUTE
STOP_LOCAL = _impl.STOP_LOCAL

__all__ = [
    "IMPLEMENTATION",
    "FrameReader",
    "GuidCache",
    "Message",
    "relay_rewrite",
    "relay_rewrite_into",
    "count_frames",
    "hash_guid",
    "MAX_CACHE_CAPACITY",
    "RouteMap",
    "RelayCore",
    "MAX_ROUTE_CAPACITY",
    "STOP_END",
    "STOP_ROUTE",
    "STOP_LOCAL",
]
