"""`gnut get 3`: rows of the last search recorded in the state folder and read back."""

from __future__ import annotations

import pytest

from gnut.app import lastsearch


def test_rows_round_trip_and_row_refs(tmp_path) -> None:
    rows = [{"n": i, "urn": f"urn:sha1:{'A' * 32}", "name": f"f{i}.bin", "size": i} for i in (1, 2, 3)]
    lastsearch.save(tmp_path, "jazz live", rows)
    assert lastsearch.load_row(tmp_path, 3)["name"] == "f3.bin"
    assert [lastsearch.parse_row_ref(t) for t in ("3", "#3", "urn:sha1:X", "0", "#", "-1")] == [3, 3, None, None, None, None]
    with pytest.raises(lastsearch.NoSuchRow, match="has no row 4: it had 3 rows"):
        lastsearch.load_row(tmp_path, 4)


def test_no_search_yet_or_garbage_file_says_what_to_do(tmp_path) -> None:
    with pytest.raises(lastsearch.NoSuchRow, match="run `gnut search WORDS` first"):
        lastsearch.load_row(tmp_path, 1)
    lastsearch.path(tmp_path).write_text("{not json")
    with pytest.raises(lastsearch.NoSuchRow):
        lastsearch.load_row(tmp_path, 1)
