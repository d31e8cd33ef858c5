"""bench/bench_tiger.py runs (quick) and reports both implementations and the SHA-1 reference."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))


@pytest.mark.skipif(bool(os.environ.get("GNUT_NO_EXTENSIONS")), reason="compares against the Cython build")
def test_quick_run_reports_every_row() -> None:
    import bench_tiger

    result = bench_tiger.run(quick=True)
    impls = {(r["workload"], r["impl"]) for r in result["rows"] if "error" not in r}
    assert ("sha1 (hashlib, reference)", "hashlib") in impls
    assert {impl for _, impl in impls} == {"cython", "python", "hashlib"}
    assert all(r["mb_per_s"] > 0 for r in result["rows"])
    table = bench_tiger.format_table(result)
    assert "cython/python" in table and "cython/sha1" in table
