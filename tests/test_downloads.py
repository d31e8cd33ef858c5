"""The node's download queue (runtime/downloads.py) in-process on both loops: sources from hints
and from the network, persistence, pause/resume/cancel rules, bounded watchers, bad queue files."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os

import pytest
from nethelpers import link, start_node, wait_for

from gnut.runtime import downloads as dq
from gnut.runtime.downloads import DownloadQueue, QueueError


def urn_of(data: bytes) -> str:
    return "urn:sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode()


def test_queue_downloads_from_hints_and_from_the_network_and_persists(tmp_path, run):
    a_data, b_data = os.urandom(300_000), os.urandom(40_000)

    async def go():
        src = await start_node(tmp_path, "src", "ultrapeer", files={"ibis.bin": a_data, "tern.bin": b_data})
        me = await start_node(tmp_path, "me", "ultrapeer")
        try:
            await link(me, src)
            path = tmp_path / "queue.json"
            q = DownloadQueue(me, me.transfers, path, max_running=2)
            hint = {"host": src.address[0], "port": src.address[1], "index": 1, "name": "ibis.bin",
                    "size": len(a_data), "servent_guid": src.servent_guid.hex()}
            e1 = q.add(urn_of(a_data), "ibis.bin", len(a_data), tmp_path / "out", [hint])
            e2 = q.add(urn_of(b_data), None, None, tmp_path / "out")  # name and size learned from hits
            assert q.add(urn_of(a_data), None, None, tmp_path / "out") is e1  # same file, same folder
            watcher = q.listen(e2)
            await wait_for(lambda: e1.state == "complete" and e2.state == "complete", 15, "both complete")
            assert (tmp_path / "out" / "ibis.bin").read_bytes() == a_data
            assert (tmp_path / "out" / "tern.bin").read_bytes() == b_data
            states = []
            while not watcher.empty():
                states.append(watcher.get_nowait()["state"])
            assert states[0] == "queued" and "searching" in states and states[-1] == "complete"
            assert e2.name == "tern.bin" and e2.size == len(b_data) and e2.known == 1
            assert q.bytes_received == len(a_data) + len(b_data) and q.completed == 2
            with pytest.raises(QueueError, match="is complete: nothing to pause"):
                q.pause(e1.id)
            with pytest.raises(QueueError, match="no download #99"):
                q.cancel(99)
            saved = json.loads(path.read_text())
            assert [r["state"] for r in saved["entries"]] == ["complete", "complete"]
            again = DownloadQueue(me, me.transfers, path, 2)
            again.load()
            assert [(e.id, e.state, e.name) for e in again.entries.values()] == [
                (1, "complete", "ibis.bin"), (2, "complete", "tern.bin")]
        finally:
            await me.stop()
            await src.stop()

    run(go)


def test_no_source_fails_then_resume_looks_again(tmp_path, run):
    async def go():
        me = await start_node(tmp_path, "me", "ultrapeer")
        try:
            q = DownloadQueue(me, me.transfers, None, 1)
            e = q.add(urn_of(b"nobody"), "x", 6, tmp_path / "out", source_timeout=0.2)
            await wait_for(lambda: e.state == "failed", 5, "failed")
            assert "no source found within 1 s (`gnut resume 1` looks again)" in e.error
            q.resume(e.id)
            assert e.state in ("queued", "searching") and e.error == ""
            q.pause(e.id)
            assert e.state == "paused"
            q.cancel(e.id)
            assert e.state == "cancelled"
            with pytest.raises(QueueError, match="already cancelled"):
                q.cancel(e.id)
            with pytest.raises(QueueError, match="bad sha1|urn"):
                q.add("urn:sha1:XYZ", None, None, tmp_path)
        finally:
            await me.stop()

    run(go)


def test_watchers_are_bounded(tmp_path, run):
    async def go():
        me = await start_node(tmp_path, "me", "ultrapeer")
        try:
            q = DownloadQueue(me, me.transfers, None, 1)
            e = q.add(urn_of(b"w"), "w", 1, tmp_path, source_timeout=30)
            watchers = [q.listen(e) for _ in range(dq.MAX_LISTENERS)]
            with pytest.raises(QueueError, match="watchers already"):
                q.listen(e)
            for _ in range(dq.LISTENER_BACKLOG * 3):  # a watcher that never reads keeps only the latest lines
                q._notify(e)
            assert all(w.qsize() <= dq.LISTENER_BACKLOG for w in watchers)
            q.cancel(e.id)
        finally:
            await me.stop()

    run(go)


@pytest.mark.parametrize("content", [b"not json", b'{"version": 1, "entries": 5}', b'{"version": 1, "entries": '
                                     b'[{"id": 1, "urn": "nonsense", "name": "x", "size": 1, "out": "."}]}'])
def test_a_bad_queue_file_is_an_empty_queue(tmp_path, run, content):
    async def go():
        me = await start_node(tmp_path, "me", "ultrapeer")
        try:
            path = tmp_path / "queue.json"
            path.write_bytes(content)
            q = DownloadQueue(me, me.transfers, path, 1)
            q.load()
            assert q.entries == {}
        finally:
            await me.stop()

    run(go)


def test_running_entries_come_back_queued(tmp_path, run):
    async def go():
        me = await start_node(tmp_path, "me", "ultrapeer")
        try:
            path = tmp_path / "queue.json"
            rows = [{"id": 4, "urn": urn_of(b"a"), "name": "a", "size": 1, "out": str(tmp_path), "state": s}
                    for s in ("downloading",)] + [
                {"id": 5, "urn": urn_of(b"b"), "name": "b", "size": 1, "out": str(tmp_path), "state": "paused"}]
            path.write_text(json.dumps({"version": 1, "entries": rows}))
            q = DownloadQueue(me, me.transfers, path, 1)
            q.load()
            assert {e.id: e.state for e in q.entries.values()} == {4: "queued", 5: "paused"}
            assert q.add(urn_of(b"c"), "c", 1, tmp_path, source_timeout=30).id == 6
            for e in list(q.entries.values()):
                if e.state not in dq.FINISHED:
                    q.cancel(e.id)
            await asyncio.sleep(0)
        finally:
            await me.stop()

    run(go)


def test_a_download_queued_before_any_link_waits_for_one_and_asks_again(tmp_path, run):
    data = os.urandom(20_000)

    async def go():
        src = await start_node(tmp_path, "src", "ultrapeer", files={"curlew.bin": data})
        me = await start_node(tmp_path, "me", "ultrapeer")
        try:
            q = DownloadQueue(me, me.transfers, None, 1)
            e = q.add(urn_of(data), None, None, tmp_path / "out", source_timeout=20)
            await asyncio.sleep(0.5)
            assert e.state == "searching" and not me.searches.active  # no link: nothing sent yet
            await link(me, src)
            await wait_for(lambda: e.state == "complete", 15, "complete after the first link")
            assert (tmp_path / "out" / "curlew.bin").read_bytes() == data
        finally:
            await me.stop()
            await src.stop()

    run(go)
