"""X-Alt / X-Nalt / X-Falt values and the download mesh's rules."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from gnut.protocol import altloc, mesh
from gnut.protocol.altloc import AltLoc

GUID = bytes(range(16))


def test_spec_example_direct_and_push() -> None:
    b32 = base64.b32encode(GUID).decode().rstrip("=")
    parsed = altloc.parse_x_alt(f"1.2.3.4:5, 6.7.8.9, {b32};10.0.0.1:7;10.0.0.2:8")
    assert parsed.direct == [AltLoc("1.2.3.4", 5), AltLoc("6.7.8.9", 6346)]
    assert parsed.push == [altloc.PushAltLoc(GUID, (AltLoc("10.0.0.1", 7), AltLoc("10.0.0.2", 8)))]
    assert parsed.bad == 0


def test_tls_bits_msb_first() -> None:
    parsed = altloc.parse_x_alt("tls=A, 1.1.1.1:1, 2.2.2.2:2, 3.3.3.3:3, 4.4.4.4:4, 5.5.5.5:5")
    assert [loc.tls for loc in parsed.direct] == [True, False, True, False, False]
    back = altloc.format_x_alt(parsed.direct)
    assert back == "tls=A, 1.1.1.1:1, 2.2.2.2:2, 3.3.3.3:3, 4.4.4.4:4, 5.5.5.5:5"
    assert altloc.format_x_alt([AltLoc("1.1.1.1", 1, True)]) == "tls=8, 1.1.1.1:1"
    assert altloc.format_x_alt([AltLoc("1.1.1.1", 1)]) == "1.1.1.1:1"
    assert altloc.format_x_alt([]) == ""


def test_ipv6_and_malformed_elements_are_counted() -> None:
    parsed = altloc.parse_x_alt(
        "[::1]:6000, ::1, 1.2.3.4:0, 1.2.3.4:70000, 999.1.1.1:5, 0.0.0.0:5, 224.0.0.1:5, junk,"
    )
    assert parsed.direct == [AltLoc("::1", 6000)]
    assert parsed.bad == 7
    assert altloc.format_x_alt(parsed.direct) == "[::1]:6000"


def test_header_bounds() -> None:
    value = ", ".join(f"10.0.{i // 250}.{i % 250 + 1}:6346" for i in range(500))
    parsed = altloc.parse_x_alt(value)
    assert len(parsed.direct) <= altloc.MAX_ALTS_PER_HEADER
    assert parsed.skipped > 0
    out = altloc.format_x_alt(
        [AltLoc(f"10.0.{i // 250}.{i % 250 + 1}", 6346, i % 3 == 0) for i in range(500)]
    )
    assert len(out) <= altloc.MAX_HEADER_LEN
    assert len(altloc.parse_x_alt(out).direct) == altloc.MAX_ALTS_PER_HEADER


def test_x_falt_gtk_example() -> None:
    value = "9DBC52EEEBCA2C8A79036D626B959900;fwt/1;26252:85.182.49.3;pptls=E;69.12.88.95:1085;64.53.20.48:804;66.17.23.159:343"
    parsed = altloc.parse_x_falt(value)
    assert parsed.bad == 0
    (push,) = parsed.push
    assert push.guid.hex().upper() == "9DBC52EEEBCA2C8A79036D626B959900"
    assert [(p.host, p.port, p.tls) for p in push.proxies] == [
        ("69.12.88.95", 1085, True),
        ("64.53.20.48", 804, True),
        ("66.17.23.159", 343, True),
    ]
    again = altloc.parse_x_falt(altloc.format_x_falt(parsed.push))
    assert again.push == parsed.push
    assert altloc.parse_x_falt("nothex;1.2.3.4:5").bad == 1


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_parses(value: str) -> None:
    for fn in (altloc.parse_x_alt, altloc.parse_x_falt):
        parsed = fn(value)
        assert len(parsed.direct) <= altloc.MAX_ALTS_PER_HEADER


SHA = b"s" * 20
A, B, C = AltLoc("10.0.0.1", 1), AltLoc("10.0.0.2", 2), AltLoc("10.0.0.3", 3)


def test_mesh_add_refresh_expire() -> None:
    m = mesh.Mesh(lifetime=100)
    assert m.add(SHA, A, now=0, reporter="9.9.9.9")
    assert m.add(SHA, A, now=50, reporter="9.9.9.9")
    assert m.sources(SHA, now=60) == [A]
    assert m.sources(SHA, now=151) == []
    assert m.counters["expired"] == 1


def test_mesh_bounded_per_file_and_keeps_good_sources() -> None:
    m = mesh.Mesh(max_per_file=3, max_per_reporter=100)
    m.mark_good(SHA, A, now=0)
    m.add(SHA, B, now=1, reporter="9.9.9.9")
    m.add(SHA, C, now=2, reporter="9.9.9.9")
    d = AltLoc("10.0.0.4", 4)
    m.add(SHA, d, now=3, reporter="9.9.9.9")
    assert set(m.sources(SHA, now=3)) == {A, C, d}  # B, the stalest unverified, made room
    assert m.sources(SHA, now=3)[0] == A


def test_one_reporter_cannot_fill_a_file() -> None:
    m = mesh.Mesh(max_per_reporter=5)
    added = sum(m.add(SHA, AltLoc(f"10.1.0.{i}", 6346), now=0, reporter="6.6.6.6") for i in range(1, 50))
    assert added == 5
    assert m.add(SHA, A, now=0, reporter="7.7.7.7")
    assert m.counters["refused_reporter_cap"] == 44


def test_bad_source_is_banned_and_goes_out_in_nalt() -> None:
    m = mesh.Mesh(ban_lifetime=100)
    m.add(SHA, A, now=0)
    m.add(SHA, B, now=0)
    m.mark_bad(SHA, A, now=10)
    assert not m.add(SHA, A, now=20, reporter="9.9.9.9")
    alts, nalts = m.to_send(SHA, now=20)
    assert alts == [B] and nalts == [A]
    assert m.add(SHA, A, now=111, reporter="9.9.9.9")  # the ban ran out


def test_nalt_needs_distinct_networks() -> None:
    m = mesh.Mesh(min_bad_reports=3)
    m.add(SHA, A, now=0)
    assert not m.negative(SHA, A, "1.1.0.1", now=1)
    assert not m.negative(SHA, A, "1.1.200.9", now=1)  # same /16: one report
    assert not m.negative(SHA, A, "2.2.0.1", now=1)
    assert m.sources(SHA, now=1) == [A]
    assert m.negative(SHA, A, "3.3.0.1", now=1)
    assert m.sources(SHA, now=1) == []
    # Loopback tests raise the resolution through the constructor, not by exempting addresses.
    m2 = mesh.Mesh(min_bad_reports=2, reporter_prefix=(32, 128))
    m2.add(SHA, A, now=0)
    assert not m2.negative(SHA, A, "127.0.0.1", now=1)
    assert m2.negative(SHA, A, "127.0.0.2", now=1)


def test_propagation_rules() -> None:
    m = mesh.Mesh()
    m.add(SHA, A, now=0, reporter="9.9.9.9")
    m.mark_good(SHA, B, now=1)
    m.add(SHA, C, now=2, reporter="9.9.9.9")
    m.negative(SHA, C, "5.5.0.1", now=3)
    alts, _ = m.to_send(SHA, now=4, complete=True)
    assert set(alts) == {A, B}  # C has a bad report
    alts, _ = m.to_send(SHA, now=4, complete=False)
    assert alts == [B]  # while downloading, only verified sources
    alts, _ = m.to_send(SHA, now=4, peer_host="10.0.0.2")
    assert B not in alts  # never a peer's own address back to it
    alts, _ = m.to_send(SHA, now=4, since=1.5)
    assert alts == []  # A and B were sent before; C is not sendable


def test_mesh_bounded_files() -> None:
    m = mesh.Mesh(max_files=3)
    for i in range(10):
        m.add(bytes([i]) * 20, A, now=i)
    assert len(m) == 3
    assert m.sources(bytes([9]) * 20, now=10) == [A]
    assert m.sources(bytes([0]) * 20, now=10) == []
