"""runtime/transfers.py: per-file upload accounting (whole files, not range requests)."""

from __future__ import annotations

import logging

from nethelpers import start_node

from gnut.runtime.transfers import MAX_SESSION_SPANS, _merge_span


def test_merge_span():
    assert _merge_span([], 0, 10) == [(0, 10)]
    assert _merge_span([(0, 10)], 10, 20) == [(0, 20)]
    assert _merge_span([(0, 10), (20, 30)], 5, 25) == [(0, 30)]
    assert _merge_span([(20, 30)], 0, 5) == [(0, 5), (20, 30)]
    spans: list = []
    for i in range(MAX_SESSION_SPANS * 2):
        spans = _merge_span(spans, i * 10, i * 10 + 5)
    assert len(spans) == MAX_SESSION_SPANS


def test_a_file_served_in_overlapping_ranges_counts_once(tmp_path, run, caplog):
    async def go():
        node = await start_node(tmp_path, "src", "ultrapeer", files={"avocet.bin": b"x" * 1000})
        try:
            t = node.transfers
            (sf,) = node.share.files
            with caplog.at_level(logging.INFO, "gnut.runtime.transfers"):
                t.on_upload(("127.0.0.9", 5000), sf, 0, 600)
                t.on_upload(("127.0.0.9", 5001), sf, 400, 400)  # a re-sent range, another connection
                assert t.uploads_completed == 0
                t.on_upload(("127.0.0.9", 5001), sf, 800, 200)
                assert t.uploads_completed == 1 and not t.upload_sessions
                assert "upload complete: 127.0.0.9:5001 got avocet.bin (1000 bytes)" in caplog.text
                t.on_upload(("127.0.0.8", 1), sf, 0, 10)
                t.expire_uploads(float("inf"))
            assert "upload ended: 127.0.0.8:1 got 10 of 1000 bytes of avocet.bin" in caplog.text
        finally:
            await node.stop()

    run(go)
