"""Micro-benchmark of QRP on the ultrapeer hot path: matching, hashing, patch build/apply, merge."""

# Strategy: build leaf tables the way a leaf does (keywords() of synthetic file names), then
# time what an ultrapeer does per query (hash once with QueryHashes, test every leaf table)
# and per table update (to_messages, QrpReceiver.apply, merge). Each timing is the best of a
# few repeats, so one scheduler hiccup does not count.

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gnut.protocol.qrp import QrpReceiver, QrpTable, QueryHashes, keywords, query_words  # noqa: E402

# Repeats per timing; the best one is kept.
REPEATS = 3
# A typical ultrapeer serves about 30 leaves (gtk-gnutella's default max leaves is 30+).
LEAVES = 30
# Shared files per leaf: a modest library, ~1-2% table fill at 2**16 slots.
FILES_PER_LEAF = 300
VOCABULARY = 5000


def _best(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _leaf_tables(rng: random.Random, vocab: list[str], leaves: int, files: int) -> list[QrpTable]:
    tables = []
    for _ in range(leaves):
        table = QrpTable(16, 7)
        for _ in range(files):
            name = " ".join(rng.sample(vocab, 3)) + ".mp3"
            table.add_words(keywords(name))
        tables.append(table)
    return tables


def run(quick: bool) -> dict:
    """Run the benchmark.

    Args:
        quick: smaller workload (a few seconds) for CI.

    Returns:
        A dict of measurements: per-check and per-query matching cost, hash cost, patch
        build/apply cost and size, merge cost, and the workload parameters.
    """
    rng = random.Random(1234)
    vocab = [f"w{rng.randrange(10**9):x}" for _ in range(VOCABULARY)]
    leaves = LEAVES // 3 if quick else LEAVES
    files = FILES_PER_LEAF // 3 if quick else FILES_PER_LEAF
    n_queries = 2000 if quick else 20000
    tables = _leaf_tables(rng, vocab, leaves, files)
    texts = [" ".join(rng.sample(vocab, rng.randint(1, 3))) for _ in range(n_queries)]
    word_lists = [query_words(t) for t in texts]

    hashes: list[QueryHashes] = []
    t_hash = _best(lambda: hashes.__setitem__(slice(None), [QueryHashes(w, 16) for w in word_lists]))

    def match_all() -> int:
        hits = 0
        for q in hashes:
            for table in tables:
                hits += table.matches_hashes(q)
        return hits

    t_match = _best(match_all)
    hits = match_all()
    t_words = _best(lambda: [table.matches(w) for w in word_lists[: n_queries // 10] for table in tables])

    table = tables[0]
    msgs = table.to_messages(entry_bits=4, compress=True)
    t_build = _best(lambda: table.to_messages(entry_bits=4, compress=True))

    def receive() -> None:
        receiver = QrpReceiver()
        for m in msgs:
            receiver.apply(m)

    t_apply = _best(receive)

    def merge_all() -> None:  # an ultrapeer's own table: the union of its leaves' tables
        merged = QrpTable(16, 7)
        for leaf in tables:
            merged.merge(leaf)

    t_merge = _best(merge_all)
    checks = n_queries * len(tables)
    return {
        "qrp_module": "pure Python (no compiled twin)",
        "leaves": len(tables),
        "files_per_leaf": files,
        "queries": n_queries,
        "fill_ratio": round(sum(t.fill_ratio for t in tables) / len(tables), 4),
        "match_ns_per_table_check": t_match / checks * 1e9,
        "match_queries_per_s": n_queries / t_match,
        "matched_fraction": hits / checks,
        "hash_us_per_query": t_hash / n_queries * 1e6,
        "unhashed_match_us_per_check": t_words / (len(word_lists[: n_queries // 10]) * len(tables)) * 1e6,
        "patch_build_ms": t_build * 1e3,
        "patch_bytes": sum(len(m.encode()) for m in msgs),
        "patch_messages": len(msgs),
        "patch_apply_ms": t_apply * 1e3,
        "merge_all_leaves_ms": t_merge * 1e3,
    }


def format_table(result: dict) -> str:
    """Render a run() result as an aligned two-column text table."""
    rows = []
    for key, value in result.items():
        text = (
            f"{value:,.3f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value
        )
        rows.append((key, str(text)))
    width = max(len(k) for k, _ in rows)
    lines = [f"{'QRP benchmark':<{width}}  value", "-" * (width + 14)]
    lines += [f"{k:<{width}}  {v:>12}" for k, v in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_table(run(quick="--quick" in sys.argv)))
