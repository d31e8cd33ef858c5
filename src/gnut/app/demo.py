"""`gnut demo`: a local network of in-process nodes on loopback that searches and downloads for real."""

from __future__ import annotations

import asyncio
import collections
import random
import tempfile
import time
from pathlib import Path

from gnut.app import actions
from gnut.runtime.config import NodeConfig
from gnut.runtime.node import Node

# Name parts for the generated sample files: varied, overlapping words so queries hit a few.
SUBJECTS = ["jazz", "sunset", "mountain", "ocean", "river", "city", "forest", "desert", "piano", "guitar",
            "lecture", "recipe", "garden", "winter", "summer", "harbor", "comet", "galaxy", "robot", "dragon"]
KINDS = ["live", "photo", "notes", "mix", "demo", "album", "report", "sketch", "map", "tutorial"]
EXTS = [".mp3", ".jpg", ".txt", ".ogg", ".png", ".pdf", ".flac", ".md"]
# Searches: a few words drawn from the generated names (so some match several files) and one
# word that no file has (its query is answered by nobody: the cost of a miss).
N_QUERIES = 5
MISS_QUERY = "nonexistentword"
# One in this many nodes is an ultrapeer; the rest are leaves under two ultrapeers each.
LEAVES_PER_ULTRAPEER = 4
# Every demo node listens on 127.0.0.1: the per-address fairness limits are raised in the
# nodes' own config (never by exempting loopback).
LAB_LIMITS = {"max_links_per_ip": 256, "max_links_per_24": 256, "max_pending_per_ip": 64,
              "max_http_per_ip": 64, "upload_slots_per_host": 8}
# Seconds each demo search listens for hits.
SEARCH_WINDOW = 2.0


def make_files(folder: Path, rng: random.Random, count: int) -> list[str]:
    """Write `count` sample files with generated names and seeded random content."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for _ in range(count):
        name = f"{rng.choice(SUBJECTS)} {rng.choice(KINDS)} {rng.randint(1, 99)}{rng.choice(EXTS)}"
        size = rng.randint(2_000, 300_000)
        (folder / name).write_bytes(rng.randbytes(size))
        names.append(name)
    return names


async def _wait(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def run_demo(n_nodes: int = 20, seed: int = 7, out=print) -> int:
    """Build the network, run the searches and one download, print what happened.

    Returns:
        0 when searches found files and the download verified, 1 otherwise.
    """
    rng = random.Random(seed)
    n_ups = max(2, n_nodes // (LEAVES_PER_ULTRAPEER + 1))
    nodes: list[Node] = []
    with tempfile.TemporaryDirectory(prefix="gnut-demo-") as tmp:
        root = Path(tmp)
        t0 = time.monotonic()
        for i in range(n_nodes):
            mode = "ultrapeer" if i < n_ups else "leaf"
            share = root / f"node{i:02d}" / "share"
            make_files(share, rng, rng.randint(2, 6))
            cfg = NodeConfig(listen_host="127.0.0.1", listen_port=0, mode=mode, home=root / f"node{i:02d}",
                             share_dirs=[share], control=False, save_hosts=False,
                             out_links=2 if mode == "leaf" else 3, max_leaves=64,
                             # every demo node is 127.0.0.1: one UDP source for the per-IP limit
                             udp_rate=2000.0, udp_burst=4000.0, **LAB_LIMITS)
            node = Node(cfg)
            await node.start()
            nodes.append(node)
        ups, leaves = nodes[:n_ups], nodes[n_ups:]
        for i, up in enumerate(ups):  # a ring of ultrapeers plus a chord
            for j in {(i + 1) % n_ups, (i + n_ups // 2) % n_ups} - {i}:
                up.dial(*ups[j].address)
        for i, leaf in enumerate(leaves):
            for up in (ups[i % n_ups], ups[(i + 1) % n_ups]):
                leaf.dial(*up.address)
        await _wait(lambda: all(any(p.established for p in n.peers.values()) for n in nodes), 10.0)
        await asyncio.sleep(1.5)  # QRP tables travel leaf -> ultrapeer -> ultrapeer
        links = sum(sum(1 for p in n.peers.values() if p.established) for n in nodes) // 2
        total_files = sum(len(n.share) for n in nodes)
        out(f"gnut demo: {n_nodes} nodes ({n_ups} ultrapeers, {len(leaves)} leaves), {links} links, "
            f"{total_files} files shared; up in {time.monotonic() - t0:.1f} s")

        words = sorted({w for n in nodes for f in n.share.files for w in f.name.split()[:2]})
        queries = rng.sample(words, min(N_QUERIES - 1, len(words)))
        queries.insert(2, " ".join(nodes[-1].share.files[0].name.split()[:2]))
        queries.append(MISS_QUERY)
        found_any = None
        for k, text in enumerate(queries):
            searcher = leaves[k % len(leaves)] if leaves else ups[0]
            started = time.monotonic()
            first = None
            hits = []
            async for hit in actions.search_stream(searcher, text, SEARCH_WINDOW, 200):
                first = first or time.monotonic() - started
                hits.append(hit)
            files = {h.urn for h in hits}
            timing = f"first hit after {first * 1000:.0f} ms" if first is not None else "no hits"
            out(f"\nsearch {text!r} from {searcher.address[0]}:{searcher.address[1]}: "
                f"{len(hits)} hit(s), {len(files)} distinct file(s), {timing}")
            for h in hits[:5]:
                out(f"   {h.size:>9,} B  {h.name:<28} at {h.host}:{h.port}  {h.urn}")
            if len(hits) > 5:
                out(f"   ... and {len(hits) - 5} more")
            if hits and found_any is None:
                found_any = (searcher, hits[0])

        ok = found_any is not None
        if found_any is not None:
            searcher, hit = found_any
            # Someone who does not have the file yet fetches it from the network.
            downloader = next(n for n in reversed(nodes) if n.share.by_urn(hit.urn) is None)
            dest = root / "downloads"
            started = time.monotonic()
            try:
                path = await actions.fetch(downloader, hit.urn, hit.name, hit.size, dest, 30.0)
                out(f"\ndownload {hit.name!r} ({hit.size:,} B) by {downloader.address[1]}: verified "
                    f"{hit.urn} in {time.monotonic() - started:.2f} s -> {path.name}")
            except actions.FetchError as exc:
                out(f"\ndownload {hit.name!r} failed: {exc}")
                ok = False

        sent = collections.Counter()
        drops = collections.Counter()
        for n in nodes:
            st = n.stats()
            sent.update(st["sent"])
            drops.update(st["drops"])
        out("\nmessages sent across the network: " + ", ".join(f"{k} {v}" for k, v in sorted(sent.items())))
        out("drops: " + (", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none"))
        for n in nodes:
            await n.stop()
        out(f"demo {'finished' if ok else 'FAILED'} in {time.monotonic() - t0:.1f} s")
        return 0 if ok else 1
