"""runtime/thexcache.py: trees computed once per (path, size, mtime), off the loop, LRU-bounded."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from gnut.protocol.thex import hash_bytes
from gnut.runtime.share import ShareIndex
from gnut.runtime.thexcache import ThexCache


def _share(tmp_path: Path, n: int) -> tuple[ShareIndex, dict[str, bytes]]:
    root = tmp_path / "share"
    root.mkdir()
    datas = {}
    for i in range(n):
        datas[f"f{i}.bin"] = random.Random(i).randbytes(3000 + 1000 * i)
        (root / f"f{i}.bin").write_bytes(datas[f"f{i}.bin"])
    share = ShareIndex([root])
    share.scan()
    return share, datas


def test_concurrent_gets_share_one_computation(tmp_path: Path, run) -> None:
    share, datas = _share(tmp_path, 1)
    (sf,) = list(share)

    async def main():
        cache = ThexCache()
        assert cache.peek(sf) is None
        trees = await asyncio.gather(*(cache.get(sf) for _ in range(5)))
        assert all(t is trees[0] for t in trees)
        assert trees[0].root == hash_bytes(datas[sf.name]).root
        assert cache.stats["computed"] == 1 and cache.peek(sf) is trees[0]

    run(main)


def test_lru_bound_and_changed_file(tmp_path: Path, run) -> None:
    share, _ = _share(tmp_path, 3)
    files = sorted(share, key=lambda f: f.name)

    async def main():
        cache = ThexCache(max_trees=2)
        for sf in files:
            assert await cache.get(sf) is not None
        assert cache.stats["evicted"] == 1 and cache.peek(files[0]) is None
        files[1].path.write_bytes(b"x" * (files[1].size + 10))  # grew since the scan
        cache2 = ThexCache()
        assert await cache2.get(files[1]) is None and cache2.stats["failed"] == 1

    run(main)


def test_close_stops_a_computation_at_the_next_block(tmp_path: Path, run) -> None:
    root = tmp_path / "share"
    root.mkdir()
    with open(root / "big.bin", "wb") as fh:
        fh.truncate(64 * 1024 * 1024)
    share = ShareIndex([root])
    share.scan()
    (sf,) = list(share)

    async def main():
        cache = ThexCache()
        cache.close()  # as Transfers.stop does: nothing new starts, a running hash gives up
        assert await cache.get(sf) is None
        cache.warm(sf)
        assert cache.stats["failed"] == 1

    run(main)
