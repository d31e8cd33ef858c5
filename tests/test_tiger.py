"""Tiger hash and Tiger-tree primitives: published vectors on both implementations, Cython == pure.

Vectors: the authors' test results (Biham's page, "Tiger: A Fast New Hash Function" test
results, also the NESSIE-format file tiger2-test-vectors-nessie-format.dat of the same page) as
reproduced by Crypto++'s validation suite and sphlib's test_tiger.c. TTH values: THEX draft
examples, checked at start-up by gtk-gnutella (src/lib/tigertree.c, tt_check()).
"""

from __future__ import annotations

import base64
import os
import random

import pytest

VECTORS = [
    (b"", "3293AC630C13F0245F92BBB1766E16167A4E58492DDE73F3"),
    (b"a", "77BEFBEF2E7EF8AB2EC8F93BF587A7FC613E247F5F247809"),
    (b"abc", "2AAB1484E8C158F2BFB8C5FF41B57A525129131C957B5F93"),
    (b"message digest", "D981F8CB78201A950DCF3048751E441C517FCA1AA55A29F6"),
    (b"abcdefghijklmnopqrstuvwxyz", "1714A472EEE57D30040412BFCC55032A0B11602FF37BEEE9"),
    (
        b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
        "0F7BF9A19B9C58F2B7610DF7E84F0AC3A71C631E7B53F78E",
    ),
    (
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        "8DCEA680A17583EE502BA38A3C368651890FFBCCDC49A8CC",
    ),
    (b"1234567890" * 8, "1C14795529FD9F207A958F84C52F11E887FA0CABDFD91BFD"),
    (b"Tiger", "DD00230799F5009FEC6DEBC838BB6A27DF2B9D6F110C7937"),
    (
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+-",
        "F71C8583902AFB879EDFE610F82C0D4786A3A534504486B5",
    ),
    (
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZ=abcdefghijklmnopqrstuvwxyz+0123456789",
        "48CEEB6308B87D46E95D656112CDF18D97915F9765658957",
    ),
    (
        b"Tiger - A Fast New Hash Function, by Ross Anderson and Eli Biham",
        "8A866829040A410C729AD23F5ADA711603B3CDD357E4C15E",
    ),
    (
        b"Tiger - A Fast New Hash Function, by Ross Anderson and Eli Biham, proceedings of Fast Software "
        b"Encryption 3, Cambridge.",
        "CE55A6AFD591F5EBAC547FF84F89227F9331DAB0B611C889",
    ),
    (
        b"Tiger - A Fast New Hash Function, by Ross Anderson and Eli Biham, proceedings of Fast Software "
        b"Encryption 3, Cambridge, 1996.",
        "631ABDD103EB9A3D245B6DFD4D77B257FC7439501D1568DD",
    ),
    (
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+-" * 2,
        "C54034E5B43EB8005848A7E0AE6AAC76E4FF590AE715FD25",
    ),
]


@pytest.mark.parametrize("data,expected", VECTORS, ids=[f"len{len(d)}" for d, _ in VECTORS])
def test_published_vectors(tiger_impl, data: bytes, expected: str) -> None:
    assert tiger_impl.tiger(data).hex().upper() == expected


def test_million_a(tiger_impl) -> None:
    assert (
        tiger_impl.tiger(b"a" * 1_000_000).hex().upper() == "6DB0E2729CBEAD93D715C6A7D36302E9B3CEE0D2BC314B41"
    )


def test_bytes_like_inputs_agree(tiger_impl) -> None:
    data = bytes(range(256)) * 3
    want = tiger_impl.tiger(data)
    assert tiger_impl.tiger(bytearray(data)) == want
    assert tiger_impl.tiger(memoryview(data)) == want
    with pytest.raises(TypeError):
        tiger_impl.tiger("text is not bytes")


def test_padding_boundaries_differ_and_are_stable(tiger_impl) -> None:
    # Lengths around the 56-byte padding edge and the 64-byte block edge take both tail paths.
    digests = {n: tiger_impl.tiger(b"\x5a" * n) for n in range(50, 140)}
    assert len(set(digests.values())) == len(digests)
    assert all(len(d) == 24 for d in digests.values())


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "data,root",
    [
        (b"", "LWPNACQDBZRYXW3VHJVCJ64QBZNGHOHHHZWCLNQ"),
        (b"\x00", "VK54ZIEEVTWNAUI5D5RDFIL37LX2IQNSTAXFKSA"),
        (b"A" * 1024, "L66Q4YVNAFWVS23X2HJIRA5ZJ7WXR3F26RSASFA"),
        (b"A" * 1025, "PZMRYHGY6LTBEH63ZWAHDORHSYTLO4LEFUIKHWY"),
    ],
    ids=["empty", "one-nul", "1024A", "1025A"],
)
def test_tth_known_roots(tiger_impl, data: bytes, root: str) -> None:
    level = tiger_impl.tth_leaves(data)
    while len(level) > 24:
        level = tiger_impl.tth_parents(level)
    assert _b32(level) == root


def test_tth_parents_promotes_the_odd_node(tiger_impl) -> None:
    leaves = b"".join(bytes([i]) * 24 for i in range(3))
    up = tiger_impl.tth_parents(leaves)
    assert len(up) == 48
    assert up[:24] == tiger_impl.tiger(b"\x01" + leaves[:48])
    assert up[24:] == leaves[48:]


@pytest.mark.parametrize("bad", [b"", b"x" * 23, b"x" * 25])
def test_tth_parents_rejects_ragged_levels(tiger_impl, bad: bytes) -> None:
    with pytest.raises(ValueError):
        tiger_impl.tth_parents(bad)


def test_leaf_count(tiger_impl) -> None:
    for n, count in ((1, 1), (1023, 1), (1024, 1), (1025, 2), (4096, 4), (4097, 5)):
        assert len(tiger_impl.tth_leaves(b"q" * n)) == 24 * count


@pytest.mark.needs_cython
def test_sboxes_identical() -> None:
    from gnut import _puretiger, _tiger

    boxes = _tiger.sboxes()
    assert boxes == _puretiger.sboxes()
    assert len(boxes) == 1024 and len(set(boxes)) == 1024


@pytest.mark.needs_cython
def test_pure_equals_cython_on_random_inputs() -> None:
    from gnut import _puretiger, _tiger

    rng = random.Random(1996)
    for _ in range(300):
        data = rng.randbytes(rng.choice([rng.randrange(0, 200), rng.randrange(0, 5000)]))
        assert _tiger.tiger(data) == _puretiger.tiger(data)
        assert _tiger.tth_leaves(data) == _puretiger.tth_leaves(data)
    level = os.urandom(24 * 37)
    assert _tiger.tth_parents(level) == _puretiger.tth_parents(level)


def test_selector_matches_the_environment() -> None:
    from gnut import tiger

    want = "python" if os.environ.get("GNUT_NO_EXTENSIONS") else "cython"
    assert tiger.IMPLEMENTATION == want
    assert tiger.tiger(b"abc").hex().upper() == VECTORS[2][1]
    assert _b32(tiger.tth_root(tiger.tth_leaves(b"A" * 1025))) == "PZMRYHGY6LTBEH63ZWAHDORHSYTLO4LEFUIKHWY"
