"""The key-material scan: every encoding and alignment DESIGN names is found, and nothing else."""

from __future__ import annotations

import base64
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.leakscan import MaterialIndex, holds_pem_begin

MATERIAL = bytes(range(256)) + os.urandom(300)


def index() -> MaterialIndex:
    return MaterialIndex([MATERIAL])


def encodings(piece: bytes) -> list[str]:
    b64 = base64.b64encode(piece).decode()
    url = base64.urlsafe_b64encode(piece).decode()
    return [
        piece.hex(), piece.hex().upper(), "a" + piece.hex(), "z" + piece.hex().upper() + "q",
        b64, b64.rstrip("="), url, url.rstrip("="), "\n".join(b64[i : i + 5] for i in range(0, len(b64), 5)),
    ]


@settings(max_examples=200, deadline=None)
@given(start=st.integers(0, len(MATERIAL) - 16), length=st.integers(16, 40), prefix=st.text(max_size=5))
def test_any_16_bytes_in_any_encoding_and_alignment_are_found(start: int, length: int, prefix: str) -> None:
    piece = MATERIAL[start : start + length]
    if len(piece) < 16:
        return
    scan = index()
    assert scan.found_in_bytes(b"xx" + piece + b"yy")
    for text in encodings(piece):
        assert scan.found_in(prefix + text), text
        assert scan.found_in(prefix + text + " trailing words"), text


@settings(max_examples=200, deadline=None)
@given(start=st.integers(0, len(MATERIAL) - 15))
def test_15_bytes_are_not_a_leak(start: int) -> None:
    piece = MATERIAL[start : start + 15]
    scan = index()
    assert not scan.found_in_bytes(piece)
    for text in encodings(piece):
        assert not scan.found_in(text), text


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=300))
def test_unrelated_text_is_not_a_leak(text: str) -> None:
    assert not index().found_in(text)


def test_an_empty_index_finds_nothing_and_short_materials_are_ignored() -> None:
    assert not MaterialIndex().found_in(MATERIAL.hex())
    short = MaterialIndex([b"0123456789"])
    assert not short and not short.found_in("0123456789")


def test_materials_sharing_chunks_are_each_confirmed() -> None:
    common = b"\x30\x82\x04\xbe\x02\x01\x00\x30"  # a DER header every RSA key shares
    a, b = common + os.urandom(40), common + os.urandom(40)
    scan = MaterialIndex([a, b])
    assert scan.found_in(b[:24].hex()) and scan.found_in(a[:24].hex())
    assert not scan.found_in((common + os.urandom(8)).hex())


def test_pem_begin() -> None:
    assert holds_pem_begin("x -----BEGIN RSA PRIVATE KEY-----")
    assert not holds_pem_begin("----BEGIN")
