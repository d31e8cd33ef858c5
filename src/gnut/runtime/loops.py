"""Event-loop choice: uvloop by default, the stock asyncio loop on request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

LOOP_CHOICES = ("auto", "uvloop", "asyncio")


def loop_factory(kind: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """Return a factory for the requested event loop.

    Args:
        kind: "auto" (uvloop when installed), "uvloop" (required) or "asyncio".

    Returns:
        A zero-argument callable creating a new event loop.

    Raises:
        ValueError: for an unknown kind; ImportError when "uvloop" is asked and missing.
    """
    if kind not in LOOP_CHOICES:
        raise ValueError(f"unknown loop {kind!r}; choose one of {', '.join(LOOP_CHOICES)}")
    if kind == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if kind == "uvloop":
            raise
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def loop_name(kind: str = "auto") -> str:
    """Name of the loop `kind` resolves to, with its version (for `gnut --version`)."""
    factory = loop_factory(kind)
    if factory is asyncio.new_event_loop:
        return "asyncio"
    import uvloop

    return f"uvloop {uvloop.__version__}"


def run(main, kind: str = "auto"):
    """Run coroutine `main` to completion on a fresh loop of the requested kind."""
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(main)
