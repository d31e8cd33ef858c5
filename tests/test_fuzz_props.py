"""Hypothesis properties across every parser: any input parses or raises RemoteProtocolError; twins agree."""

# Strategy: the entry points live in fuzz/targets.py, shared with the atheris harness (fuzz/run.py),
# so the coverage-guided runs and this suite check the very same invariants.  Here each target
# gets (1) arbitrary bytes, (2) captured real-servent bytes with random mutations (byte flips,
# truncation, splices, insertions), and (3) every stored fuzz finding in fuzz/regressions/ plus
# every seed, replayed as a fixed regression input.  Per-parser property tests that already
# exist stay in their own files (test_fastpath, test_messages, test_ggep, test_handshake,
# test_connection, test_qrp, test_http); this file is the one cross-cutting statement.

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
sys.path.insert(0, str(FUZZ))
import targets  # noqa: E402  (fuzz/targets.py, shared with the atheris harness)

NAMES = sorted(targets.TARGETS)
SEEDS = {name: targets.seeds(name) for name in NAMES}
PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw, name: str) -> bytes:
    """A seed of `name` with a few random edits: the shape the real servents send, slightly wrong."""
    seeds = SEEDS[name]
    data = bytearray(draw(st.sampled_from(seeds)) if seeds else b"")
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "splice", "byte"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            i = min(pos, len(data) - 1)
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and data:
            data[min(pos, len(data) - 1)] = draw(
                st.sampled_from([0x00, 0x0A, 0x0D, 0x1C, 0x7F, 0x80, 0xC3, 0xFF])
            )
        elif op == "cut":
            data = data[:pos]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(max_size=24))
        elif op == "splice" and seeds:
            other = draw(st.sampled_from(seeds))
            data[pos:] = other[draw(st.integers(0, len(other))) :]
    return bytes(data)


@pytest.mark.parametrize("name", NAMES)
@PROPS
@given(data=st.data())
def test_any_bytes_parse_or_raise_remote_error(name, data):
    targets.TARGETS[name](data.draw(st.binary(max_size=600)))


@pytest.mark.parametrize("name", NAMES)
@PROPS
@given(data=st.data())
def test_mutated_real_traffic_parses_or_raises_remote_error(name, data):
    targets.TARGETS[name](data.draw(mutated(name)))


def _fixed_inputs() -> list:
    rows = [pytest.param(name, s, id=f"seed-{name}-{i}") for name in NAMES for i, s in enumerate(SEEDS[name])]
    for path in sorted((FUZZ / "regressions").glob("*/*")):
        rows.append(
            pytest.param(path.parent.name, path.read_bytes(), id=f"finding-{path.parent.name}-{path.name}")
        )
    return rows


@pytest.mark.parametrize("name, blob", _fixed_inputs())
def test_seeds_and_stored_findings(name, blob):
    targets.TARGETS[name](blob)


def test_every_seed_set_uses_real_captures():
    assert targets.VECTORS.is_dir(), f"captured vectors missing at {targets.VECTORS}"
    for name in ("frame_reader", "message_codecs", "handshake", "http", "open_link"):
        assert len(SEEDS[name]) >= 3, f"{name} has no captured seeds"


@pytest.mark.needs_cython
def test_differential_targets_really_run_the_cython_module():
    assert targets.CYTHON is not None and targets.CYTHON.__name__ == "gnut._fastpath"
    assert targets.IMPLS == [targets.CYTHON, targets.PURE]


def test_finding_query_with_more_ggep_items_than_one_block_may_hold():
    # fuzz/regressions/message_codecs/crash-3ee0726bd0490e0d: several GGEP blocks in one query held
    # more items together than encode_ggep accepts in a block, so a decoded query did not re-encode.
    from gnut.errors import RemoteProtocolError
    from gnut.protocol import messages
    from gnut.protocol.ggep import GGEP_MAX_ITEMS, GgepItem, encode_ggep

    block = encode_ggep([GgepItem(f"X{i}", b"") for i in range(GGEP_MAX_ITEMS // 2 + 1)])
    payload = b"\x80\x00text\x00" + block + b"\x1c" + block
    with pytest.raises(RemoteProtocolError, match="GGEP items"):
        messages.Query.decode(payload)
    one = b"\x80\x00text\x00" + block
    assert messages.Query.decode(one).encode() == one
