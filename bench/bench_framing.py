"""Framing benchmark: FrameReader.feed over 64 KiB chunks of a realistic message mix, Cython vs pure."""

# Strategy: one seeded stream of messages sized like live traffic (30% 14-byte pongs, 60% short
# queries of 10-60 bytes, 10% hits of 100-400 bytes; about 73 bytes per message with the header),
# cut into 64 KiB chunks as a socket read delivers them. Each implementation frames the same
# chunks in several modes; the "bare C-loop limit" walks the headers without creating objects.

from __future__ import annotations

import importlib
import random

from run import measure

# A socket read returns at most this much per data_received call (uvloop reads 256 KiB at most,
# asyncio 64 KiB: the smaller one is the harder case).
CHUNK = 64 * 1024
MESSAGES_FULL = 200_000
MESSAGES_QUICK = 40_000
REPEATS_FULL = 7
REPEATS_QUICK = 3
IMPLS = {"cython": "gnut._fastpath", "python": "gnut._purepath"}


def build_stream(count: int, seed: int = 1) -> bytes:
    """The benchmark's message stream (deterministic for a given seed)."""
    rng = random.Random(seed)
    parts = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.3:
            kind, size = 0x01, 14
        elif roll < 0.9:
            kind, size = 0x80, rng.randrange(10, 60)
        else:
            kind, size = 0x81, rng.randrange(100, 400)
        parts.append(
            rng.randbytes(16) + bytes((kind, 3, 1)) + size.to_bytes(4, "little") + rng.randbytes(size)
        )
    return b"".join(parts)


def _modes(mod, chunks: list[bytes], data: bytes) -> dict:
    def feed_only() -> None:
        reader = mod.FrameReader()
        for chunk in chunks:
            reader.feed(chunk)

    def feed_access() -> None:
        reader = mod.FrameReader()
        for chunk in chunks:
            for msg in reader.feed(chunk):
                _ = msg.type

    def feed_raw() -> None:
        reader = mod.FrameReader()
        for chunk in chunks:
            for msg in reader.feed(chunk):
                _ = msg.raw

    def headers_only() -> None:
        mod.count_frames(data)

    return {
        "feed (Message objects)": feed_only,
        "feed + read m.type": feed_access,
        "feed + read m.raw": feed_raw,
        "bare header walk (count_frames)": headers_only,
    }


def run(quick: bool) -> dict:
    """Frame the stream with both implementations.

    Args:
        quick: fewer messages and repeats.

    Returns:
        {"messages", "bytes", "chunk", "modes": {mode: {impl: measure(...)}}, "ratios": {mode: x}}.
    """
    count = MESSAGES_QUICK if quick else MESSAGES_FULL
    repeats = REPEATS_QUICK if quick else REPEATS_FULL
    data = build_stream(count)
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    modes: dict[str, dict] = {}
    for impl, modname in IMPLS.items():
        mod = importlib.import_module(modname)
        assert mod.count_frames(data) == count
        for mode, fn in _modes(mod, chunks, data).items():
            fig = measure(fn, count, repeats)
            fig["mb_per_s"] = len(data) / fig["median_s"] / 1e6
            modes.setdefault(mode, {})[impl] = fig
    ratios = {mode: figs["cython"]["ops_per_s"] / figs["python"]["ops_per_s"] for mode, figs in modes.items()}
    return {"messages": count, "bytes": len(data), "chunk": CHUNK, "modes": modes, "ratios": ratios}


def format_table(result: dict) -> str:
    """The result as a Markdown table (millions of messages per second, median of the repeats)."""
    lines = [
        f"{result['messages']} messages, {result['bytes']} bytes "
        f"({result['bytes'] / result['messages']:.1f} B/msg), {result['chunk']} B chunks",
        "",
        "| mode | cython M msg/s | (MB/s) | spread | python M msg/s | spread | cython/python |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, figs in result["modes"].items():
        cy, py = figs["cython"], figs["python"]
        lines.append(
            f"| {mode} | {cy['ops_per_s'] / 1e6:.1f} | {cy['mb_per_s']:.0f} | {cy['spread_pct']:.0f}% "
            f"| {py['ops_per_s'] / 1e6:.2f} | {py['spread_pct']:.0f}% | {result['ratios'][mode]:.1f}x |"
        )
    return "\n".join(lines)
