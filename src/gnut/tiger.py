"""The Tiger hash and Tiger-tree primitives: the compiled gnut._tiger or, with GNUT_NO_EXTENSIONS=1, its pure twin.

`tiger(data) -> 24 bytes`; `tth_leaves(data)` (leaf hashes over 1024-byte blocks),
`tth_parents(level)` (one level up); `tth_root(level)` folds a level to the root. Streaming
hashing, the serialized tree, DIME and chunk verification live in gnut.protocol.thex.
"""

from __future__ import annotations

import os

if os.environ.get("GNUT_NO_EXTENSIONS"):
    from gnut import _puretiger as _impl

    IMPLEMENTATION = "python"
else:
    # No silent fallback, as for gnut.fastpath: a missing build is one line saying what to run.
    try:
        from gnut import _tiger as _impl  # type: ignore[no-redef]
    except ImportError as exc:
        from gnut.errors import FastPathMissing

        raise FastPathMissing(
            f"gnut's compiled Tiger hash gnut._tiger cannot be loaded ({exc}); build it with "
            "`python3 -m pip install .` (or `pip install -e .` in a checkout), or set GNUT_NO_EXTENSIONS=1 "
            "to run the pure-Python twin"
        ) from exc

    IMPLEMENTATION = "cython"

DIGEST_SIZE = 24
LEAF_SIZE = 1024

tiger = _impl.tiger
tth_leaves = _impl.tth_leaves
tth_parents = _impl.tth_parents


def tth_root(leaves: bytes) -> bytes:
    """Fold a level of 24-byte hashes up to the tree's root (ValueError on an empty or ragged level)."""
    level = leaves
    while len(level) > DIGEST_SIZE:
        level = tth_parents(level)
    if len(level) != DIGEST_SIZE:
        raise ValueError(f"a tree level is a non-empty multiple of {DIGEST_SIZE} bytes, not {len(level)}")
    return level


__all__ = [
    "IMPLEMENTATION",
    "DIGEST_SIZE",
    "LEAF_SIZE",
    "tiger",
    "tth_leaves",
    "tth_parents",
    "tth_root",
]
