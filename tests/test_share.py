"""Tests for gnut.runtime.share: scanning real files, the SHA-1 cache, keyword/urn matching and QUERYHIT building."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from gnut.runtime.share import (
    MAX_NAME_BYTES,
    ShareIndex,
    sha1_to_urn,
    urn_to_sha1,
)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def share_dir(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    _write(root / "Beatles - Let It Be.mp3", b"let it be" * 100)
    _write(root / "sub" / "beatles_help.ogg", b"help!")
    _write(root / "Café del Mar.flac", b"cafe")
    _write(root / "readme.txt", b"")
    return root


def test_scan_finds_files_with_sha1_and_urn(share_dir: Path) -> None:
    idx = ShareIndex([share_dir])
    report = idx.scan()
    assert (report.added, report.removed, report.changed, report.rehashed, report.cached) == (4, 0, 0, 4, 0)
    assert len(idx) == 4
    names = {sf.name for sf in idx}
    assert names == {"Beatles - Let It Be.mp3", "beatles_help.ogg", "Café del Mar.flac", "readme.txt"}
    for sf in idx:
        data = sf.path.read_bytes()
        assert sf.size == len(data)
        assert sf.sha1 == hashlib.sha1(data).digest()
        assert sf.urn == sha1_to_urn(sf.sha1)
        assert sf.index > 0
        assert idx.by_index(sf.index) is sf
        assert idx.by_urn(sf.urn) is sf
    assert sorted(sf.index for sf in idx) == [1, 2, 3, 4]
    assert idx.total_kbytes == (900 + 5 + 4) // 1024


def test_urn_roundtrip_and_rejects() -> None:
    sha1 = hashlib.sha1(b"x").digest()
    urn = sha1_to_urn(sha1)
    assert urn.startswith("urn:sha1:") and len(urn) == 41
    assert urn_to_sha1(urn) == sha1
    assert urn_to_sha1("URN:SHA1:" + urn[9:].lower()) == sha1
    for bad in ("", "urn:sha1:", "urn:sha1:" + "1" * 32, "urn:md5:" + urn[9:], urn + "A", urn[:-1]):
        assert urn_to_sha1(bad) is None


def test_hidden_files_and_dirs_are_skipped(tmp_path: Path) -> None:
    root = tmp_path / "share"
    _write(root / "visible.txt", b"v")
    _write(root / ".hidden.txt", b"h")
    _write(root / ".git" / "config", b"c")
    os.symlink(root / ".git", root / "git_alias")  # a visible link into a hidden folder
    os.symlink(root / ".hidden.txt", root / "alias.txt")
    idx = ShareIndex([root])
    idx.scan()
    assert [sf.name for sf in idx] == ["visible.txt"]


def test_symlinks_outside_share_are_skipped_inside_kept_once(tmp_path: Path) -> None:
    root = tmp_path / "share"
    outside = _write(tmp_path / "secret" / "passwd", b"root:x:0:0")
    _write(root / "real.txt", b"real")
    os.symlink(outside, root / "link_out.txt")
    os.symlink(tmp_path / "secret", root / "dir_out")
    os.symlink(root / "real.txt", root / "alias.txt")
    os.symlink(root, root / "loop")
    idx = ShareIndex([root])
    report = idx.scan()
    assert len(idx) == 1
    (sf,) = list(idx)
    assert sf.path == (root / "real.txt").resolve()
    assert report.skipped >= 2
    assert all("secret" not in str(f.path) for f in idx)


def test_fifo_long_names_and_file_limit(tmp_path: Path) -> None:
    root = tmp_path / "share"
    _write(root / "ok.bin", b"ok")
    _write(root / ("é" * 6), b"x")  # 12 bytes in UTF-8
    os.mkfifo(root / "pipe")
    idx = ShareIndex([root], max_name_bytes=10)
    report = idx.scan()
    assert [sf.name for sf in idx] == ["ok.bin"]
    assert report.skipped == 1
    assert MAX_NAME_BYTES == 255
    limited = ShareIndex([root], max_files=1)
    assert limited.scan().skipped == 1 and len(limited) == 1


def test_cache_reuse_across_restart_does_not_rehash(share_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "state" / "sha1cache.json"
    first = ShareIndex([share_dir], cache_path=cache)
    assert first.scan().rehashed == 4
    assert cache.exists()
    assert not [p for p in cache.parent.iterdir() if p.name.endswith(".tmp")]
    second = ShareIndex([share_dir], cache_path=cache)
    report = second.scan()
    assert (report.rehashed, report.cached) == (0, 4)
    assert {(sf.index, sf.sha1) for sf in first} == {(sf.index, sf.sha1) for sf in second}


def test_corrupt_cache_is_ignored(share_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "sha1cache.json"
    for garbage in (b"{not json", b"[]", json.dumps({"version": 1, "files": {"x": [1, 2]}}).encode()):
        cache.write_bytes(garbage)
        idx = ShareIndex([share_dir], cache_path=cache)
        assert idx.scan().rehashed == 4
    # a forged entry with the right stat but a bogus index is not trusted blindly
    data = json.loads(cache.read_bytes())
    assert data["version"] == 1 and len(data["files"]) == 4


def test_rescan_picks_up_added_changed_removed(share_dir: Path) -> None:
    idx = ShareIndex([share_dir])
    idx.scan()
    before = {sf.name: sf for sf in idx}
    report = idx.scan()
    assert (report.added, report.removed, report.changed, report.rehashed, report.cached) == (0, 0, 0, 0, 4)

    (share_dir / "readme.txt").unlink()
    _write(share_dir / "new song.mp3", b"new")
    target = share_dir / "Café del Mar.flac"
    target.write_bytes(b"different content")
    os.utime(target, ns=(1, 1))
    report = idx.scan()
    assert (report.added, report.removed, report.changed, report.rehashed) == (1, 1, 1, 2)
    after = {sf.name: sf for sf in idx}
    assert set(after) == {"Beatles - Let It Be.mp3", "beatles_help.ogg", "Café del Mar.flac", "new song.mp3"}
    # unchanged files keep their index; changed content gets a new one; indices never reused
    assert after["beatles_help.ogg"].index == before["beatles_help.ogg"].index
    assert after["Café del Mar.flac"].index not in {sf.index for sf in before.values()}
    assert after["new song.mp3"].index not in {sf.index for sf in before.values()}
    assert idx.by_index(before["readme.txt"].index) is None
    assert after["Café del Mar.flac"].sha1 == hashlib.sha1(b"different content").digest()
    assert idx.by_urn(before["Café del Mar.flac"].urn) is None


def test_words_come_from_qrp() -> None:
    from gnut.protocol.qrp import keywords, query_words

    idx_words = ShareIndex([]).all_words()
    assert idx_words == frozenset()
    # the catalog uses qrp's canonical words, so QRP routing and local matching agree
    assert query_words("Café_del-Mar") == ["cafe", "del", "mar"]
    assert "beatl" in keywords("Beatles.mp3")


def test_match_keywords_prefix_and_all_words(share_dir: Path) -> None:
    idx = ShareIndex([share_dir])
    idx.scan()

    def names(text: str, **kw) -> list[str]:
        return [sf.name for sf in idx.match(text, **kw)]

    assert sorted(names("beatles")) == ["Beatles - Let It Be.mp3", "beatles_help.ogg"]
    assert names("BEATLES help") == ["beatles_help.ogg"]
    assert names("beat let") == ["Beatles - Let It Be.mp3"]  # word prefixes
    assert names("eatles") == []  # not a substring matcher
    assert names("beatles zzz") == []  # every word must match
    assert names("cafe") == ["Café del Mar.flac"]  # accents dropped on both sides
    assert names("CAFÉ") == ["Café del Mar.flac"]
    assert names("ＣＡＦＥ") == ["Café del Mar.flac"]  # fullwidth folds (NFKD)
    assert names("be") == [] and names("") == [] and names("   ") == []  # words under 3 bytes ignored
    assert len(idx.match("beatles", limit=1)) == 1
    words = idx.all_words()
    assert {"beatles", "beatl", "beat", "let", "help", "ogg", "cafe", "del", "mar", "flac", "readme"} <= words
    assert "be" not in words and "it" not in words


def test_match_by_urn(share_dir: Path) -> None:
    idx = ShareIndex([share_dir])
    idx.scan()
    target = next(sf for sf in idx if sf.name == "readme.txt")
    assert idx.match("", urns=[target.urn]) == [target]
    assert idx.match("\\", urns=[target.urn.lower().replace("urn:sha1:", "URN:SHA1:")]) == [target]
    assert idx.match("", urns=["urn:sha1:" + "A" * 32, "urn:bitprint:xyz"]) == []
    # urn matches come first and are not repeated by the keyword part
    both = idx.match("readme", urns=[target.urn])
    assert both == [target]


GUID = bytes(range(16))


def test_build_hits_decode_back(share_dir: Path) -> None:
    from gnut.constants import VENDOR_CODE
    from gnut.protocol.ggep import find
    from gnut.protocol.messages import QueryHit
    from gnut.runtime.share import HITS_PER_MESSAGE, build_hits

    idx = ShareIndex([share_dir])
    idx.scan()
    files = idx.files
    payloads = build_hits(
        files, servent_guid=GUID, ip="10.1.2.3", port=6346, push=True, busy=False, ggep_h=True
    )
    assert len(payloads) == 1
    hit = QueryHit.decode(payloads[0])
    assert (hit.ip, hit.port, hit.servent_guid, hit.vendor) == ("10.1.2.3", 6346, GUID, VENDOR_CODE)
    assert hit.push and not hit.busy
    assert find(hit.ggep, "BH") == b""
    assert [(r.index, r.size, r.name) for r in hit.results] == [(f.index, f.size, f.name) for f in files]
    for r, f in zip(hit.results, files, strict=True):
        assert r.urns == (f.urn,)
        assert r.sha1 == f.sha1
        assert find(r.ggep, "H") == b"\x01" + f.sha1

    plain = QueryHit.decode(
        build_hits(
            files, servent_guid=GUID, ip="10.1.2.3", port=1, push=False, busy=True, ggep_h=False, browse=False
        )[0]
    )
    assert plain.busy and not plain.push and find(plain.ggep, "BH") is None
    assert all(find(r.ggep, "H") is None and r.urns for r in plain.results)
    assert build_hits([], servent_guid=GUID, ip="1.2.3.4", port=1, push=False, busy=False, ggep_h=True) == []
    assert HITS_PER_MESSAGE == 10


def test_build_hits_batches_and_size_cap(tmp_path: Path) -> None:
    from gnut.constants import MAX_PAYLOAD
    from gnut.errors import LocalProtocolError
    from gnut.protocol.messages import QueryHit
    from gnut.runtime.share import SharedFile, build_hits

    files = [
        SharedFile(
            i,
            tmp_path / str(i),
            f"n{i:03d}" + "x" * 240,
            i,
            bytes(20),
            sha1_to_urn(bytes(20)),
            frozenset(),
            0,
        )
        for i in range(1, 601)
    ]
    payloads = build_hits(
        files, servent_guid=GUID, ip="1.2.3.4", port=1, push=False, busy=False, ggep_h=True, per_message=3
    )
    assert len(payloads) == 200
    payloads = build_hits(
        files, servent_guid=GUID, ip="1.2.3.4", port=1, push=False, busy=False, ggep_h=True, per_message=255
    )
    decoded = [QueryHit.decode(p) for p in payloads]
    assert all(len(p) <= MAX_PAYLOAD for p in payloads)
    assert len(decoded[0].results) < 255  # cut short by size, not by count
    assert [r.index for d in decoded for r in d.results] == list(range(1, 601))
    with pytest.raises(LocalProtocolError):
        build_hits(
            files, servent_guid=GUID, ip="1.2.3.4", port=1, push=False, busy=False, ggep_h=True, per_message=0
        )
