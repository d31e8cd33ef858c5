"""gnut.protocol.spam: the known-spam list and each heuristic, with time passed in."""

from __future__ import annotations

import base64
import hashlib

import pytest

from gnut.protocol import spam


def urn(data: bytes) -> str:
    return "urn:sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode()


def test_sha1_forms_and_list_parsing():
    digest = hashlib.sha1(b"x").digest()
    b32 = base64.b32encode(digest).decode()
    for form in (f"urn:sha1:{b32}", b32, b32.lower(), f"URN:SHA1:{b32}", f"SHA1 {b32}", digest.hex()):
        assert spam.sha1_of(form) == digest, form
    assert spam.sha1_of("urn:sha1:TOOSHORT") is None and spam.sha1_of("") is None
    text = f"# comment\n\n{b32}\nSHA1 {base64.b32encode(hashlib.sha1(b'y').digest()).decode()}\nADDED 2006\nEND\nnot a sha1\n"
    found, bad = spam.parse_list(text)
    assert found == {digest, hashlib.sha1(b"y").digest()} and bad == 1


def test_list_is_bounded(monkeypatch):
    monkeypatch.setattr(spam, "MAX_LIST_ENTRIES", 3)
    lines = "\n".join(urn(bytes([i])) for i in range(10))
    found, _ = spam.parse_list(lines)
    assert len(found) == 3
    f = spam.SpamFilter()
    f.add_known(hashlib.sha1(bytes([i])).digest() for i in range(10))
    assert len(f.known) == 3


@pytest.mark.parametrize("query, name, spammy", [
    ("jazz live", "jazz live.exe", True),
    ("jazz live", "Jazz  Live.EXE", True),
    ("jazz live", "jazz_live.scr", True),
    ("jazz live", "jazz live.wmv.exe", True),
    ("jazz live", "jazz live.vbs", True),
    ("jazz live", "jazz live.mp3", False),
    ("jazz live", "jazz live 1969.exe", False),  # more than the query: a real (if risky) file
    ("jazz live", "jazz live.txt.mp3", False),
    ("setup", "setup.exe", True),
    ("", ".exe", False),
])
def test_exe_named_after_the_query(query, name, spammy):
    assert spam.exe_named_after(query, name) is spammy


def test_known_zero_huge_and_size_mismatch():
    f = spam.SpamFilter(known={hashlib.sha1(b"bad").digest()})
    assert f.classify("q", "a.mp3", 10, urn(b"bad"), "g1", 0.0) == spam.KNOWN
    assert f.classify("q", "a.mp3", 0, urn(b"a"), "g1", 0.0) == spam.ZERO_SIZE
    assert f.classify("q", "a.mp3", spam.MAX_PLAUSIBLE_SIZE + 1, urn(b"a"), "g1", 0.0) == spam.HUGE_SIZE
    assert f.classify("q", "a.mp3", 1000, urn(b"a"), "g1", 0.0) is None
    assert f.classify("q", "a.mp3", 1000, urn(b"a"), "g2", 1.0) is None  # same size elsewhere: fine
    assert f.classify("q", "a.mp3", 999, urn(b"a"), "g3", 2.0) == spam.SIZE_MISMATCH
    assert f.stats()["filtered"] == {spam.KNOWN: 1, spam.ZERO_SIZE: 1, spam.HUGE_SIZE: 1, spam.SIZE_MISMATCH: 1}
    assert f.stats()["checked"] == 6


def test_exe_spammer_is_convicted_for_its_other_results():
    f = spam.SpamFilter()
    assert f.classify("jazz", "jazz notes.txt", 10, urn(b"n"), "evil", 0.0) is None
    assert f.classify("jazz", "jazz.exe", 10, urn(b"e"), "evil", 0.0) == spam.EXE_NAME
    assert f.classify("jazz", "jazz other.txt", 10, urn(b"o"), "evil", 1.0) == spam.SPAM_SERVENT
    assert f.classify("jazz", "jazz other.txt", 10, urn(b"o"), "honest", 1.0) is None
    # The conviction fades after the window.
    assert f.classify("rock", "rock.txt", 10, urn(b"r"), "evil", spam.SPAM_WINDOW + 2) is None


def test_same_urn_for_unrelated_queries_under_their_names():
    f = spam.SpamFilter()
    one = urn(b"payload")
    assert f.classify("ocelot", "ocelot.mp3", 5, one, "s1", 0.0) is None
    assert f.classify("tundra", "tundra.mp3", 5, one, "s2", 1.0) is None
    assert f.classify("marimba", "marimba.mp3", 5, one, "s3", 2.0) == spam.URN_EVERY_QUERY
    assert f.classify("zeppelin", "zeppelin.mp3", 5, one, "s4", 3.0) == spam.URN_EVERY_QUERY


def test_a_real_file_found_by_different_words_is_not_spam():
    f = spam.SpamFilter()
    real = urn(b"coltrane")
    for k, q in enumerate(("jazz", "coltrane", "1969", "live", "saxophone")):
        assert f.classify(q, "jazz live 1969 coltrane saxophone.mp3", 5, real, f"s{k}", float(k)) is None


def test_urn_burst_needs_the_answers_within_the_window():
    f = spam.SpamFilter()
    one = urn(b"payload")
    assert f.classify("ocelot", "ocelot.mp3", 5, one, "s1", 0.0) is None
    assert f.classify("tundra", "tundra.mp3", 5, one, "s2", 200.0) is None
    assert f.classify("marimba", "marimba.mp3", 5, one, "s3", 400.0) is None  # "ocelot" has faded


def test_servent_answering_every_unrelated_query():
    f = spam.SpamFilter()
    words = ["ocelot", "tundra", "marimba", "zeppelin", "quasar"]
    got = [f.classify(w, f"{w} remix.mp3", 5 + k, urn(w.encode()), "burst", float(k)) for k, w in enumerate(words)]
    assert got == [None, None, None, spam.SERVENT_EVERY_QUERY, spam.SERVENT_EVERY_QUERY]


def test_related_queries_do_not_make_a_burst():
    f = spam.SpamFilter()
    qs = ["jazz", "jazz live", "live jazz 1969", "jazz coltrane", "coltrane jazz live"]
    for k, q in enumerate(qs):
        assert f.classify(q, f"{q}.mp3", 10 + k, urn(q.encode()), "library", float(k)) is None


def test_urn_only_source_searches_skip_the_query_heuristics():
    f = spam.SpamFilter()
    one = urn(b"popular")
    for k in range(10):
        assert f.classify("\\", "popular.mp3", 5, one, f"s{k}", float(k), text_query=False) is None
    assert f.classify("\\", "x.exe", 0, urn(b"z"), "s", 0.0, text_query=False) == spam.ZERO_SIZE


def test_memory_is_bounded(monkeypatch):
    monkeypatch.setattr(spam, "MAX_TRACKED", 50)
    monkeypatch.setattr(spam, "MAX_URN_SIZES", 60)
    f = spam.SpamFilter()
    for k in range(5000):
        f.classify(f"word{k}", f"file{k}.mp3", 100 + k, urn(str(k).encode()), f"servent{k}", float(k) / 100)
    st = f.stats()
    assert st["tracked_keys"] <= 50 and st["tracked_servents"] <= 50 and len(f._sizes) <= 60
    # One key answering many queries keeps a bounded history.
    one = urn(b"x")
    for k in range(100):
        f.classify(f"q{k} common", "same name.mp3", 7, one, "s", 100.0)
    assert max(len(s.queries) for s in f._keys.values()) <= spam.MAX_QUERIES_PER_KEY


def test_one_servent_cannot_fill_a_search():
    from gnut.runtime import search as rs

    s = rs.Search(b"g" * 16, "jazz", (), 0.0)

    def hit(guid: str, k: int, reason=None) -> rs.Hit:
        return rs.Hit(name=f"jazz {k}.mp3", size=10 + k, urn=None, host="127.0.0.1", port=1, index=k,
                      servent_guid=guid, firewalled=False, vendor="", speed=0, hops=1, spam=reason)

    taken = sum(s.add(hit("flood", k)) for k in range(rs.MAX_RESULTS_PER_SERVENT + 50))
    assert taken == rs.MAX_RESULTS_PER_SERVENT and s.dropped == 50
    assert s.add(hit("honest", 1)) and s.kept == rs.MAX_RESULTS_PER_SERVENT + 1
    spam_taken = sum(s.add(hit(f"sp{k}", k, "zero_size")) for k in range(rs.MAX_SPAM_KEPT + 5))
    assert spam_taken == rs.MAX_SPAM_KEPT and s.kept == rs.MAX_RESULTS_PER_SERVENT + 1


def test_export_and_restore_carry_the_windows_over():
    f = spam.SpamFilter()
    words = ["ocelot", "tundra", "marimba"]
    for k, w in enumerate(words):
        assert f.classify(w, f"{w} remix.mp3", 5 + k, urn(w.encode()), "burst", 1000.0 + k) is None
    f.classify("x", "x.mp3", 9, urn(b"u"), "s", 1000.0)
    f.classify("y", "y.mp3", 0, None, "z", 1000.0)
    state = spam.SpamFilter().export(0.0)
    assert state == {"version": 1, "keys": [], "servents": [], "sizes": [], "convicted": []}
    import json

    doc = json.loads(json.dumps(f.export(1003.0)))
    g = spam.SpamFilter()
    assert g.restore(doc, 1004.0) > 0
    assert g.classify("zeppelin", "zeppelin remix.mp3", 99, urn(b"zep"), "burst", 1004.0) == spam.SERVENT_EVERY_QUERY
    assert g.classify("x", "x.mp3", 10, urn(b"u"), "s2", 1004.0) == spam.SIZE_MISMATCH
    late = spam.SpamFilter()
    assert late.restore(doc, 1003.0 + spam.SPAM_WINDOW + 10) == len(doc["sizes"])  # only sizes do not expire
    assert late.classify("zeppelin", "zeppelin remix.mp3", 99, urn(b"zep2"), "burst", 2000.0) is None


@pytest.mark.parametrize("doc", [{}, {"version": 2}, {"version": 1, "keys": 5, "servents": [], "sizes": [],
                                                           "convicted": []},
                                 {"version": 1, "keys": [], "servents": [], "sizes": [], "convicted": [[["x", 1], 0, "zero_size"]]},
                                 {"version": 1, "keys": [[["key", True], [[["a"], "soon", "n"]]]], "servents": [],
                                  "sizes": [], "convicted": []}])
def test_restore_rejects_bad_state(doc):
    with pytest.raises(ValueError):
        spam.SpamFilter().restore(doc, 0.0)
