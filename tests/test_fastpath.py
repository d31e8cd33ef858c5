"""Tests for the hot path, run against both gnut._fastpath (Cython) and gnut._purepath (pure twin)."""

from __future__ import annotations

import collections
import importlib
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gnut import constants
from gnut.errors import LocalProtocolError, RemoteProtocolError

VECTORS = Path(__file__).resolve().parent / "vectors"  # captured real-servent bytes (vectors/README.md)
# First word of a vector's .txt -> the message type its .bin must frame into.
VECTOR_KINDS = {
    "PING": constants.MSG_PING,
    "PONG": constants.MSG_PONG,
    "BYE": constants.MSG_BYE,
    "ROUTE_TABLE_UPDATE": constants.MSG_QRP,
    "QUERY": constants.MSG_QUERY,
    "QUERYHIT": constants.MSG_QUERYHIT,
}


def make(
    guid: bytes = b"G" * 16, kind: int = 0x80, ttl: int = 4, hops: int = 0, payload: bytes = b""
) -> bytes:
    """Raw bytes of one message (test builder: no validation on purpose)."""
    return guid + bytes((kind, ttl, hops)) + len(payload).to_bytes(4, "little") + payload


def header(length: int, ttl: int = 4, hops: int = 0) -> bytes:
    return b"H" * 16 + bytes((0x80, ttl, hops)) + length.to_bytes(4, "little")


STREAM = [
    make(b"\x01" * 16, constants.MSG_PING, 1, 0),
    make(b"\x02" * 16, constants.MSG_QUERY, 4, 1, b"\x00\x80giraffe\x00"),
    make(b"\x03" * 16, 0x77, 2, 2, b"unknown type passes through"),
    make(b"\x04" * 16, constants.MSG_QUERYHIT, 6, 0, bytes(range(256)) * 4),
    make(b"\x05" * 16, constants.MSG_PONG, 1, 0, b"\x00" * 14),
]
STREAM_BYTES = b"".join(STREAM)
GOOD = make(b"\x06" * 16, constants.MSG_QUERY, 2, 0, b"abc")  # within every limit the tests set


def feed_chunks(reader, chunks) -> list:
    out = []
    for chunk in chunks:
        out.extend(reader.feed(chunk))
    return out


def chunkings(data: bytes):
    """Whole, one byte at a time, and split in two at every point."""
    yield "whole", [data]
    yield "bytewise", [data[i : i + 1] for i in range(len(data))]
    for cut in range(len(data) + 1):
        yield f"cut{cut}", [data[:cut], data[cut:]]


def assert_stream(msgs, raws) -> None:
    assert [m.raw for m in msgs] == raws
    for m, raw in zip(msgs, raws, strict=True):
        assert (m.guid, m.type, m.ttl, m.hops, m.payload) == (raw[:16], raw[16], raw[17], raw[18], raw[23:])


# --- Message -------------------------------------------------------------------------------------
def test_message_fields_and_equality(impl):
    raw = make(b"\xaa" * 16, constants.MSG_QUERY, 3, 2, b"payload")
    msg = impl.Message(raw)
    assert (msg.guid, msg.type, msg.ttl, msg.hops, msg.payload, msg.raw) == (
        b"\xaa" * 16,
        constants.MSG_QUERY,
        3,
        2,
        b"payload",
        raw,
    )
    assert msg == impl.Message(bytearray(raw))
    assert msg != impl.Message(make(b"\xab" * 16, constants.MSG_QUERY, 3, 2, b"payload"))
    assert hash(msg) == hash(impl.Message(raw))
    assert msg != raw
    assert "type=0x80" in repr(msg) and "payload_len=7" in repr(msg)
    with pytest.raises(AttributeError):
        msg.ttl = 1


@pytest.mark.parametrize(
    "raw, text",
    [
        (b"", "shorter than the 23-byte header"),
        (make()[:22], "shorter than the 23-byte header"),
        (make(payload=b"abc")[:-1], "declares a 3-byte payload but 2 bytes follow"),
        (make(payload=b"abc") + b"x", "declares a 3-byte payload but 4 bytes follow"),
    ],
)
def test_message_rejects_inconsistent_raw(impl, raw, text):
    with pytest.raises(LocalProtocolError, match=text):
        impl.Message(raw)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    guid=st.binary(min_size=16, max_size=16),
    kind=st.integers(0, 255),
    ttl=st.integers(0, 255),
    hops=st.integers(0, 255),
    payload=st.binary(max_size=300),
)
def test_message_round_trip(impl, guid, kind, ttl, hops, payload):
    raw = make(guid, kind, ttl, hops, payload)
    msg = impl.Message(raw)
    assert (msg.guid, msg.type, msg.ttl, msg.hops, msg.payload, msg.raw) == (
        guid,
        kind,
        ttl,
        hops,
        payload,
        raw,
    )
    assert impl.Message(msg.raw) == msg
    assert_stream(impl.FrameReader(max_payload=300, hard_ttl=510).feed(raw + raw[:5]), [raw])


# --- FrameReader: splitting --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, chunks", list(chunkings(STREAM_BYTES[:200])) + [("stream-whole", [STREAM_BYTES])]
)
def test_frame_reader_any_chunking(impl, name, chunks):
    data = b"".join(chunks)
    reader = impl.FrameReader()
    msgs = feed_chunks(reader, chunks)
    expected = []
    pos = 0
    for raw in STREAM:
        if pos + len(raw) <= len(data):
            expected.append(raw)
        pos += len(raw)
    assert_stream(msgs, expected)
    assert reader.buffered == len(data) - sum(map(len, expected))


def test_frame_reader_whole_stream_every_split(impl):
    for name, chunks in chunkings(STREAM_BYTES):
        reader = impl.FrameReader()
        assert_stream(feed_chunks(reader, chunks), STREAM), name
        assert reader.buffered == 0


@pytest.mark.parametrize("trailing", [1, 5, 22, 23, 24, 30])
def test_frame_reader_keeps_trailing_partial(impl, trailing):
    nxt = make(b"\x09" * 16, constants.MSG_QUERY, 3, 0, b"x" * 20)
    for name, chunks in chunkings(STREAM_BYTES + nxt[:trailing]):
        reader = impl.FrameReader()
        assert_stream(feed_chunks(reader, chunks), STREAM), name
        assert reader.buffered == trailing
        assert_stream(reader.feed(nxt[trailing:]), [nxt])
        assert reader.buffered == 0


def test_frame_reader_empty_and_non_bytes_chunks(impl):
    reader = impl.FrameReader()
    assert reader.feed(b"") == []
    msgs = reader.feed(bytearray(STREAM[1])) + reader.feed(memoryview(STREAM[2]))
    assert_stream(msgs, STREAM[1:3])


def test_frame_reader_large_message_in_many_chunks(impl):
    raw = make(payload=os.urandom(constants.MAX_PAYLOAD))
    reader = impl.FrameReader()
    msgs = feed_chunks(reader, [raw[i : i + 1000] for i in range(0, len(raw), 1000)])
    assert_stream(msgs, [raw])


def test_frame_reader_limits_are_inclusive(impl):
    reader = impl.FrameReader(max_payload=10, hard_ttl=7)
    ok = [make(ttl=7, hops=0, payload=b"x" * 10), make(ttl=0, hops=7), make(ttl=3, hops=4)]
    assert_stream(reader.feed(b"".join(ok)), ok)


# --- FrameReader: errors -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, text, kwargs",
    [
        (header(70000), "payload length 70000 exceeds limit 65536", {}),
        (header(0xFFFFFFFF), "payload length 4294967295 exceeds limit 65536", {}),
        (header(11), "payload length 11 exceeds limit 10", {"max_payload": 10}),
        (header(0, ttl=10, hops=6), "ttl 10 \\+ hops 6 exceeds limit 15", {}),
        (header(0, ttl=255, hops=255), "ttl 255 \\+ hops 255 exceeds limit 15", {}),
        (header(0, ttl=4, hops=1), "ttl 4 \\+ hops 1 exceeds limit 4", {"hard_ttl": 4}),
    ],
)
def test_bad_header_raises_before_payload(impl, bad, text, kwargs):
    # The header alone triggers the error: the (huge) payload never has to arrive.
    for name, chunks in chunkings(GOOD + bad):
        reader = impl.FrameReader(**kwargs)
        data = b""
        with pytest.raises(RemoteProtocolError, match=text) as info:
            for chunk in chunks:
                data += chunk
                reader.feed(chunk)
        assert len(data) == len(GOOD) + len(bad), name  # raised by the chunk completing the header
        assert reader.buffered == 0
        if len(chunks[-1]) >= len(GOOD) + len(bad):
            assert_stream(info.value.messages, [GOOD])
        # Poisoned: whatever comes next is refused.
        for later in (b"", GOOD):
            with pytest.raises(RemoteProtocolError, match="already failed"):
                reader.feed(later)


def test_bad_header_after_trailing_bytes_in_same_chunk(impl):
    reader = impl.FrameReader()
    with pytest.raises(RemoteProtocolError, match="payload length 70000") as info:
        reader.feed(STREAM[0] + STREAM[1] + header(70000) + b"junk")
    assert_stream(info.value.messages, STREAM[:2])


@pytest.mark.parametrize(
    "kwargs", [{"max_payload": -1}, {"max_payload": 1 << 32}, {"hard_ttl": -1}, {"hard_ttl": 511}]
)
def test_frame_reader_rejects_bad_limits(impl, kwargs):
    with pytest.raises(LocalProtocolError):
        impl.FrameReader(**kwargs)


def test_count_frames(impl):
    assert impl.count_frames(STREAM_BYTES) == len(STREAM)
    assert impl.count_frames(STREAM_BYTES + STREAM[0][:10]) == len(STREAM)
    assert impl.count_frames(STREAM_BYTES + STREAM[1][:-1]) == len(STREAM)
    assert impl.count_frames(b"") == 0
    with pytest.raises(RemoteProtocolError, match="payload length 70000 exceeds limit 65536"):
        impl.count_frames(STREAM_BYTES + header(70000))
    with pytest.raises(RemoteProtocolError, match="ttl 9 \\+ hops 9"):
        impl.count_frames(header(0, ttl=9, hops=9))


# --- Real captured messages ----------------------------------------------------------------------
def _vector_messages():
    found = []
    for txt in sorted(VECTORS.glob("*/*.txt")):
        text = txt.read_text()
        word = text.split()[0]
        kind = VECTOR_KINDS.get(word)
        if kind is None and "vendor message" in text:
            kind = constants.MSG_VENDOR
        if kind is not None:
            found.append(pytest.param(txt.with_suffix(".bin"), kind, id=txt.stem))
    return found


@pytest.mark.parametrize("path, kind", _vector_messages())
def test_captured_message_frames_into_one(impl, path, kind):
    data = path.read_bytes()
    for name, chunks in chunkings(data):
        reader = impl.FrameReader()
        msgs = feed_chunks(reader, chunks)
        assert len(msgs) == 1 and msgs[0].type == kind and msgs[0].raw == data, name
        assert reader.buffered == 0
    assert impl.Message(data).type == kind


def test_captured_vectors_are_all_found():
    assert len(_vector_messages()) >= 19  # 9 GnutellaBun + 10 gtk-gnutella messages


# --- Differential: Cython and pure give identical results ------------------------------------------
def _random_stream(rng: random.Random) -> bytes:
    parts = []
    for _ in range(rng.randrange(1, 40)):
        roll = rng.random()
        if roll < 0.02:
            parts.append(header(rng.choice([65537, 70000, 1 << 31])))
        elif roll < 0.04:
            parts.append(header(0, ttl=rng.randrange(8, 256), hops=rng.randrange(8, 256)))
        else:
            payload = rng.randbytes(rng.choice([0, 1, 14, 50, 300, 5000]))
            parts.append(
                make(rng.randbytes(16), rng.randrange(256), rng.randrange(8), rng.randrange(8), payload)
            )
    data = b"".join(parts)
    return data[: rng.randrange(len(data) + 1)] if rng.random() < 0.3 else data


def _run_reader(mod, chunks):
    reader = mod.FrameReader()
    events = []
    for chunk in chunks:
        try:
            events.append([m.raw for m in reader.feed(chunk)])
        except RemoteProtocolError as exc:
            events.append(("error", str(exc), [m.raw for m in exc.messages]))
    return events, reader.buffered


@pytest.mark.needs_cython
def test_differential_random_streams():
    fast = importlib.import_module("gnut._fastpath")
    pure = importlib.import_module("gnut._purepath")
    for seed in range(300):
        rng = random.Random(seed)
        data = _random_stream(rng)
        cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(0, 30)))
        bounds = [0, *cuts, len(data)]
        chunks = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
        assert _run_reader(fast, chunks) == _run_reader(pure, chunks), seed


# --- relay rewrite -----------------------------------------------------------------------------------
def test_relay_rewrite(impl):
    raw = make(b"\x07" * 16, constants.MSG_QUERY, 4, 2, b"body")
    out = impl.relay_rewrite(raw)
    assert out == raw[:17] + bytes((3, 3)) + raw[19:]
    assert impl.relay_rewrite(impl.Message(raw)) == out
    assert impl.relay_rewrite(bytearray(raw)) == out
    assert raw[17] == 4  # the input is untouched


def test_relay_rewrite_of_framed_message(impl):
    msgs = impl.FrameReader().feed(STREAM_BYTES)
    buf = bytearray(b"prefix")
    for m in msgs:
        impl.relay_rewrite_into(buf, m)
    expected = b"prefix" + b"".join(r[:17] + bytes((r[17] - 1, r[18] + 1)) + r[19:] for r in STREAM)
    assert bytes(buf) == expected
    assert [m.raw for m in msgs] == STREAM  # the source messages are untouched


@pytest.mark.parametrize(
    "raw, text",
    [
        (make(ttl=0), "TTL is 0"),
        (make(hops=255), "hops is 255"),
        (make()[:10], "shorter than the 23-byte header"),
        (make(payload=b"ab")[:-1], "declares a 2-byte payload but 1 bytes follow"),
    ],
)
def test_relay_rewrite_refuses(impl, raw, text):
    with pytest.raises(LocalProtocolError, match=text):
        impl.relay_rewrite(raw)
    buf = bytearray(b"keep")
    with pytest.raises(LocalProtocolError, match=text):
        impl.relay_rewrite_into(buf, raw)
    assert buf == b"keep"


def test_relay_rewrite_into_needs_bytearray(impl):
    with pytest.raises(TypeError):
        impl.relay_rewrite_into(b"", make())


# --- hash_guid ---------------------------------------------------------------------------------------
def test_hash_guid_equals_xxhash_package(impl):
    rng = random.Random(7)
    seeds = [0, 1, 0x80, (1 << 64) - 1] + [rng.getrandbits(64) for _ in range(100)]
    for seed in seeds:
        for _ in range(20):
            guid = rng.randbytes(16)
            assert impl.hash_guid(guid, seed) == xxhash.xxh3_64_intdigest(guid, seed=seed)


@pytest.mark.parametrize(
    "guid, seed", [(b"x" * 15, 0), (b"x" * 17, 0), (b"x" * 16, -1), (b"x" * 16, 1 << 64)]
)
def test_hash_guid_rejects(impl, guid, seed):
    with pytest.raises(LocalProtocolError):
        impl.hash_guid(guid, seed)


def test_guids_sharing_a_prefix_still_spread(impl):
    # An attacker fixing the first 8 bytes must not pile GUIDs into a few buckets.
    rng = random.Random(3)
    prefix = b"\x00" * 8
    buckets = 1 << 12
    counts = collections.Counter(
        (impl.hash_guid(prefix + rng.randbytes(8), 0x1234) * buckets) >> 64 for _ in range(buckets * 8)
    )
    assert len(counts) > buckets * 0.99
    assert max(counts.values()) < 30  # Poisson(8): P(>= 30) is about 1e-9 per bucket


# --- GuidCache ---------------------------------------------------------------------------------------
def g(i: int) -> bytes:
    return i.to_bytes(16, "big")


def test_guid_cache_basic(impl):
    cache = impl.GuidCache(100, 10.0, seed=42)
    assert cache.seed == 42
    assert not cache.seen(g(1), constants.MSG_QUERY, 0.0)
    assert cache.seen(g(1), constants.MSG_QUERY, 1.0)
    assert not cache.seen(g(1), constants.MSG_PING, 1.0)  # the kind is part of the key
    assert cache.seen(bytearray(g(1)), constants.MSG_PING, 1.0)
    assert len(cache) == 2


def test_guid_cache_expiry_boundary_and_no_refresh(impl):
    cache = impl.GuidCache(100, 10.0, seed=1)
    assert not cache.seen(g(1), 0, 5.0)
    assert cache.seen(g(1), 0, 14.999)  # a duplicate does not refresh the time
    assert not cache.seen(g(1), 0, 15.0)  # now - t == max_age: expired, recorded anew at 15
    assert cache.seen(g(1), 0, 24.5)
    assert len(cache) == 1
    assert not cache.seen(g(2), 0, 25.0)
    assert len(cache) == 1  # g(1) (t=15) expired at 25


def test_guid_cache_time_going_backwards_counts_as_latest(impl):
    cache = impl.GuidCache(100, 10.0, seed=1)
    assert not cache.seen(g(1), 0, 100.0)
    assert not cache.seen(g(2), 0, 50.0)  # recorded at 100, not 50
    assert cache.seen(g(2), 0, 109.0)
    assert not cache.seen(g(2), 0, 110.0)


def test_guid_cache_evicts_oldest_when_full(impl):
    cache = impl.GuidCache(3, 1000.0, seed=1)
    for i in range(3):
        assert not cache.seen(g(i), 0, float(i))
    assert cache.seen(g(0), 0, 3.0)  # a hit does not make g(0) younger
    assert not cache.seen(g(3), 0, 4.0)  # evicts g(0)
    assert len(cache) == 3
    assert [cache.seen(g(i), 0, 5.0) for i in (1, 2, 3)] == [True, True, True]
    assert not cache.seen(g(0), 0, 6.0)


def test_guid_cache_capacity_one(impl):
    cache = impl.GuidCache(1, 10.0, seed=9)
    for i in range(50):
        assert not cache.seen(g(i % 2), 0, float(i))
    assert cache.seen(g(1), 0, 49.0)
    assert len(cache) == 1


@pytest.mark.parametrize(
    "args, text",
    [
        ((0, 1.0), "capacity 0"),
        (((1 << 24) + 1, 1.0), "capacity"),
        ((10, 0.0), "max_age"),
        ((10, -1.0), "max_age"),
        ((10, 1.0, -1), "seed"),
        ((10, 1.0, 1 << 64), "seed"),
    ],
)
def test_guid_cache_rejects_bad_arguments(impl, args, text):
    with pytest.raises(LocalProtocolError, match=text):
        impl.GuidCache(*args)


@pytest.mark.parametrize("guid, kind", [(b"x" * 15, 0), (b"x" * 17, 0), (b"x" * 16, -1), (b"x" * 16, 256)])
def test_guid_cache_rejects_bad_keys(impl, guid, kind):
    cache = impl.GuidCache(10, 1.0)
    with pytest.raises(LocalProtocolError):
        cache.seen(guid, kind, 0.0)
    assert len(cache) == 0


def test_guid_cache_random_seed(impl):
    seeds = {impl.GuidCache(10, 1.0).seed for _ in range(5)}
    assert len(seeds) == 5 and all(0 <= s < 1 << 64 for s in seeds)


def test_guid_cache_prefix_collisions_and_churn(impl):
    # All GUIDs share their first 8 bytes; entries churn through eviction and expiry.
    cache = impl.GuidCache(5000, 50.0, seed=5)
    rng = random.Random(11)
    guids = [b"\xee" * 8 + rng.randbytes(8) for _ in range(20000)]
    for i, guid in enumerate(guids):
        assert not cache.seen(guid, 0x80, i / 1000)
    assert len(cache) == 5000
    assert all(cache.seen(guid, 0x80, 20.0) for guid in guids[-5000:])
    assert not any(cache.seen(guid, 0x80, 20.0) for guid in guids[10000:12000])


def test_guid_cache_memory(impl):
    cache = impl.GuidCache(1 << 16, 1.0)
    assert cache.memory_bytes() > 0
    if impl.__name__ == "gnut._fastpath":
        assert cache.memory_bytes() <= 32 * (1 << 16)


@pytest.mark.needs_cython
def test_cython_cache_is_at_most_32_bytes_per_entry_at_1m():
    # Measured full, after every doubling: 2^20 is reached by doubling 4096, 10^6 by a last
    # step that stops at the capacity.
    fast = importlib.import_module("gnut._fastpath")
    for capacity in (1 << 20, 1_000_000):
        cache = fast.GuidCache(capacity, 600.0, seed=3)
        blob = os.urandom(16 * (capacity + 10))
        for i in range(0, len(blob), 16):
            cache.seen(blob[i : i + 16], 0x80, 0.0)
        assert len(cache) == capacity
        assert cache.memory_bytes() / capacity <= 32


FRESH_CACHE_MAX_BYTES = 256 * 1024  # a new 1M-entry cache must not hold more than this


def test_guid_cache_starts_small_and_grows_with_entries(impl):
    cache = impl.GuidCache(1 << 20, 600.0, seed=8)
    fresh = cache.memory_bytes()
    assert 0 < fresh <= FRESH_CACHE_MAX_BYTES
    sizes = []
    for i in range(20000):
        assert not cache.seen(g(i), 0x80, 0.0)
        if i % 1000 == 999:
            sizes.append(cache.memory_bytes())
    assert sizes == sorted(sizes) and sizes[-1] > 2 * fresh  # grows, never shrinks while filling
    assert all(cache.seen(g(i), 0x80, 1.0) for i in range(20000))  # growth lost nothing
    assert len(cache) == 20000
    if impl.__name__ == "gnut._fastpath":
        # Doubling leaves at most half the ring unused: under 64 bytes per live entry.
        assert cache.memory_bytes() <= 64 * 20000


def test_guid_cache_growth_matches_reference_model(impl):
    # The ring wraps before it grows (expiry frees its start first), the last doubling stops at a
    # capacity that is not a power of two, then eviction at capacity takes over; every answer and
    # the length are checked against the reference model through all of it.
    initial = getattr(impl, "_CACHE_INITIAL_ENTRIES", 256)  # the pure twin has no table: any size
    capacity = 40 * initial + 5  # six doublings, then a last step to a capacity not a power of two
    cache = impl.GuidCache(capacity, 10.0, seed=21)
    ref = ReferenceCache(capacity, 10.0)
    rng = random.Random(4)

    def check(guid: bytes, kind: int, now: float) -> bool:
        answer = cache.seen(guid, kind, now)
        assert answer == ref.seen(guid, kind, now), (guid, now)
        assert len(cache) == len(ref.times)
        return answer

    first, second = initial * 3 // 4, initial * 3 // 2
    for i in range(first):
        check(g(i), 0x80, 0.0)
    for i in range(second):  # the first call at t=10 expires the whole first batch
        check(g(10**6 + i), 0x80, 10.0 + i * 1e-6)
    assert len(cache) == second
    # Expiry must pop the grown ring oldest-first: the older half of the second batch goes, exactly.
    now = 20.0 + (second // 2) * 1e-6
    still = [check(g(10**6 + i), 0x80, now) for i in range(second)]
    assert 0 < sum(still) < second and still == sorted(still)
    recent = [g(10**6 + i) for i in range(second)]
    now += 0.5
    for _step in range(2 * capacity):
        now += rng.choice([0.0, 0.0, 0.0, 1e-4])
        if rng.random() < 0.3:
            check(rng.choice(recent), 0x80, now)
        else:
            guid = rng.randbytes(16)
            recent.append(guid)
            check(guid, rng.choice([0x00, 0x80]), now)
    assert len(cache) == capacity  # it reached the bound and evicted from there


@pytest.mark.needs_cython
def test_cython_cache_out_of_memory_keeps_its_size_and_evicts(tmp_path):
    # A real process under an address-space limit: the doubling from 2^17 entries cannot be had,
    # so the cache stays at 2^17 (evicting the oldest) and never fails a lookup.
    script = tmp_path / "oom.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, resource
            from gnut._fastpath import GuidCache
            live = 1 << 17
            cache = GuidCache(1 << 20, 600.0, seed=1)
            guids = [i.to_bytes(16, "big") for i in range(live + 50000)]
            for guid in guids[:live]:
                cache.seen(guid, 0x80, 0.0)
            before = cache.memory_bytes()
            vm = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            resource.setrlimit(resource.RLIMIT_AS, (vm + (2 << 20), resource.RLIM_INFINITY))
            fresh = [cache.seen(guid, 0x80, 1.0) for guid in guids[live:]]
            resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            assert not any(fresh)
            assert len(cache) == live and cache.memory_bytes() == before
            assert not any(cache.seen(guid, 0x80, 2.0) for guid in guids[:100])  # evicted oldest
            cache.seen(os.urandom(16), 0x80, 2.0)  # memory is back, but it does not try again
            assert len(cache) == live and cache.memory_bytes() == before
            print("ok", before)
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok ")


class ReferenceCache:
    """The specification in its plainest form: a dict of times and a FIFO of keys."""

    def __init__(self, capacity: int, max_age: float):
        self.capacity, self.max_age = capacity, max_age
        self.times: dict[bytes, float] = {}
        self.fifo: collections.deque[bytes] = collections.deque()
        self.now = float("-inf")

    def seen(self, guid: bytes, kind: int, now: float) -> bool:
        self.now = now = max(now, self.now)
        while self.fifo and now - self.times[self.fifo[0]] >= self.max_age:
            del self.times[self.fifo.popleft()]
        key = guid + bytes((kind,))
        if key in self.times:
            return True
        if len(self.fifo) == self.capacity:
            del self.times[self.fifo.popleft()]
        self.times[key] = now
        self.fifo.append(key)
        return False


_ops = st.lists(
    st.tuples(
        st.integers(0, 12),
        st.sampled_from([0x00, 0x80, 0x31]),
        st.sampled_from([0.0, 0.0, 0.5, 1.0, 3.0, -2.0]),
    ),
    max_size=150,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    capacity=st.integers(1, 10),
    max_age=st.sampled_from([0.5, 1.0, 2.5, 10.0]),
    ops=_ops,
    seed=st.integers(0, 3),
)
def test_guid_cache_matches_reference_model(impl, capacity, max_age, ops, seed):
    cache = impl.GuidCache(capacity, max_age, seed=seed)
    ref = ReferenceCache(capacity, max_age)
    now = 0.0
    for guid_index, kind, step in ops:
        now += step  # negative steps exercise time going backwards
        guid = b"\x00" * 8 + guid_index.to_bytes(8, "big")  # shared prefix on purpose
        expected = ref.seen(guid, kind, now)
        assert cache.seen(guid, kind, now) == expected
        assert len(cache) == len(ref.times)


@pytest.mark.needs_cython
def test_guid_cache_differential_at_scale():
    # Thousands of evictions and expiries exercise the Cython table's backward-shift deletion.
    fast = importlib.import_module("gnut._fastpath")
    pure = importlib.import_module("gnut._purepath")
    rng = random.Random(99)
    caches = [mod.GuidCache(997, 3.0, seed=77) for mod in (fast, pure)]
    pool = [b"\x11" * 8 + rng.randbytes(8) for _ in range(3000)]
    now = 0.0
    for _ in range(60000):
        now += rng.choice([0.0, 0.0, 0.0, 0.001, 0.01])
        guid, kind = rng.choice(pool), rng.choice([0x00, 0x80])
        assert caches[0].seen(guid, kind, now) == caches[1].seen(guid, kind, now)
    assert len(caches[0]) == len(caches[1])


def test_guid_cache_one_long_cluster(impl):
    # GUIDs chosen (knowing the seed) to share one home bucket of the Cython table, whose size is
    # capacity * 3/2 + 1: probe distances pass the 6-bit saturation point, so deletions must
    # rehash records to shift the cluster. The pure twin must agree with the same reference model.
    capacity, seed = 120, 2024
    tsize = capacity + capacity // 2 + 1
    rng = random.Random(5)
    same_home = []
    while len(same_home) < 150:
        guid = rng.randbytes(16)
        if (impl.hash_guid(guid, seed ^ 0x80) * tsize) >> 64 == 17:
            same_home.append(guid)
    cache = impl.GuidCache(capacity, 5.0, seed=seed)
    ref = ReferenceCache(capacity, 5.0)
    now = 0.0
    for step in range(3000):
        now += 0.01 if step % 7 else 0.0
        guid = rng.choice(same_home)
        assert cache.seen(guid, 0x80, now) == ref.seen(guid, 0x80, now), step
        assert len(cache) == len(ref.times)
