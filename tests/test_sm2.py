"""SM2 by hand: the standard's known answers, round trips, encodings, and refusals."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner import _der, sm2

# GB/T 32918.5 worked example on sm2p256v1 (also quoted in kms-api-notes.md, Wrapping).
KAT_D = 0x3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8
KAT_K = 0x59276E27D506861A16680F3AD9C02DCCEF3CC1FA3CDBE4CE6D54B80DEAC1BC21
KAT_PUB = (
    0x09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020,
    0xCCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13,
)
# x1 starts with byte 0x04: the notes print C1 as "04" + x1 + y1 but lost that byte when
# splitting the hex. C3 and C2 (which do not depend on that split) match the notes verbatim.
KAT_C1 = bytes.fromhex(
    "04"
    "04EBFC718E8D1798620432268E77FEB6415E2EDE0E073C0F4F640ECD2E149A73"
    "E858F9D81E5430A57B36DAAB8F950A3C64E6EE6A63094D99283AFF767E124DF0"
)
KAT_C3 = bytes.fromhex("59983C18F809E262923C53AEC295D30383B54E39D609D160AFCB1908D0BD8766")
KAT_C2 = bytes.fromhex("21886CA989CA9C7D58087307CA93092D651EFA")
# GB/T 32918.5 signature example with ID 1234567812345678, message "message digest".
KAT_R = 0xF5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3
KAT_S = 0xB1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA


def test_curve_constants_are_consistent() -> None:
    assert sm2.is_on_curve(sm2.G)
    assert sm2.multiply(sm2.N, sm2.G) is None
    assert sm2.multiply(sm2.N - 1, sm2.G) == (sm2.GX, (-sm2.GY) % sm2.P)


def test_public_key_kat() -> None:
    assert sm2.public_key(KAT_D) == KAT_PUB


def test_encrypt_kat_c1c3c2() -> None:
    ciphertext = sm2.encrypt(KAT_PUB, b"encryption standard", k=KAT_K)
    assert ciphertext[:65] == KAT_C1
    assert ciphertext[65:97] == KAT_C3
    assert ciphertext[97:] == KAT_C2
    assert sm2.decrypt(KAT_D, ciphertext) == b"encryption standard"


def test_sign_kat() -> None:
    e = sm2.digest_message(KAT_PUB, b"message digest")
    assert e == sm2.sm3(sm2.compute_z(KAT_PUB), b"message digest")
    signature = sm2.sign_digest(KAT_D, e, k=KAT_K)
    assert signature == _der.sequence(_der.integer(KAT_R), _der.integer(KAT_S))
    assert sm2.verify_digest(KAT_PUB, e, signature)


def test_decrypt_rejects_tampered_c3_and_c2() -> None:
    ciphertext = bytearray(sm2.encrypt(KAT_PUB, b"sixteen byte esk"))
    for index in (70, len(ciphertext) - 1):
        tampered = bytearray(ciphertext)
        tampered[index] ^= 1
        with pytest.raises(ValueError, match="C3 does not match"):
            sm2.decrypt(KAT_D, bytes(tampered))


def test_decrypt_rejects_point_off_curve_and_short_input() -> None:
    ciphertext = bytearray(sm2.encrypt(KAT_PUB, b"x"))
    ciphertext[64] ^= 1
    with pytest.raises(ValueError, match="not a point on sm2p256v1"):
        sm2.decrypt(KAT_D, bytes(ciphertext))
    with pytest.raises(ValueError, match="too short"):
        sm2.decrypt(KAT_D, bytes(97))


def test_decrypt_with_wrong_key_fails_on_c3() -> None:
    ciphertext = sm2.encrypt(KAT_PUB, b"sixteen byte esk")
    with pytest.raises(ValueError, match="C3 does not match"):
        sm2.decrypt(KAT_D + 1, ciphertext)


def test_encryptions_differ() -> None:
    a = sm2.encrypt(KAT_PUB, b"same")
    b = sm2.encrypt(KAT_PUB, b"same")
    assert a != b and len(a) == len(b) == 65 + 32 + 4


@settings(max_examples=15, deadline=None)
@given(d=st.integers(min_value=1, max_value=sm2.N - 2), message=st.binary(min_size=1, max_size=70))
def test_encrypt_decrypt_and_sign_verify_round_trip(d: int, message: bytes) -> None:
    pub = sm2.public_key(d)
    assert sm2.decrypt(d, sm2.encrypt(pub, message)) == message
    e = sm2.digest_message(pub, message)
    signature = sm2.sign_digest(d, e)
    assert sm2.verify_digest(pub, e, signature)
    assert not sm2.verify_digest(pub, bytes(a ^ 1 for a in e), signature)


def test_verify_rejects_garbage_signature() -> None:
    e = sm2.digest_message(KAT_PUB, b"m")
    assert not sm2.verify_digest(KAT_PUB, e, b"\x30\x00")
    assert not sm2.verify_digest(KAT_PUB, e, _der.sequence(_der.integer(0), _der.integer(1)))
    assert not sm2.verify_digest(KAT_PUB, e, _der.sequence(_der.integer(sm2.N), _der.integer(1)))


def test_spki_round_trip_and_fixed_prefix() -> None:
    der = sm2.spki_der(KAT_PUB)
    assert der[:27] == bytes.fromhex("3059301306072a8648ce3d020106082a811ccf5501822d03420004")
    assert len(der) == 91
    assert sm2.parse_spki(der) == KAT_PUB
    assert "BEGIN PUBLIC KEY" in sm2.public_key_pem(KAT_PUB)


def test_parse_spki_rejects_other_curves_and_bad_points() -> None:
    p256 = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200") + sm2.encode_point(KAT_PUB)
    with pytest.raises(ValueError, match="not an SM2 public key"):
        sm2.parse_spki(p256)
    bad = bytearray(sm2.spki_der(KAT_PUB))
    bad[-1] ^= 1
    with pytest.raises(ValueError, match="not a point on sm2p256v1"):
        sm2.parse_spki(bytes(bad))


def test_private_key_encodings_round_trip() -> None:
    assert sm2.parse_private_key_der(sm2.private_key_pkcs8_der(KAT_D)) == KAT_D
    assert sm2.parse_private_key_der(sm2.private_key_sec1_der(KAT_D)) == KAT_D
    assert "BEGIN PRIVATE KEY" in sm2.private_key_pkcs8_pem(KAT_D)


def test_short_scalar_is_left_padded_not_zeroed() -> None:
    # The vendor's Java sample returns 32 zero bytes when D has fewer than 32 significant bytes.
    d = 0x00FF << 240 | 12345
    assert d.bit_length() <= 248
    assert sm2.scalar_bytes(d) == d.to_bytes(32, "big")
    assert sm2.scalar_bytes(d)[0] == 0 and any(sm2.scalar_bytes(d))
    # An encoder that strips leading zeros writes a 31-byte octet string; we still read D.
    pub = sm2.public_key(d)
    stripped = _der.sequence(
        _der.integer(1),
        _der.octet_string(d.to_bytes(31, "big")),
        _der.explicit(0, _der.oid(sm2.OID_SM2)),
        _der.explicit(1, _der.bit_string(sm2.encode_point(pub))),
    )
    assert sm2.parse_private_key_der(stripped) == d
    inner = sm2.private_key_pkcs8_der(d)
    assert d.to_bytes(32, "big") in inner


def test_parse_private_key_der_other_kinds_and_mismatch() -> None:
    assert sm2.parse_private_key_der(b"garbage") is None
    p256_sec1 = _der.sequence(
        _der.integer(1),
        _der.octet_string(bytes(31) + b"\x01"),
        _der.explicit(0, _der.oid("1.2.840.10045.3.1.7")),
    )
    assert sm2.parse_private_key_der(p256_sec1) is None
    wrong_pub = _der.sequence(
        _der.integer(1),
        _der.octet_string(sm2.scalar_bytes(KAT_D)),
        _der.explicit(0, _der.oid(sm2.OID_SM2)),
        _der.explicit(1, _der.bit_string(sm2.encode_point(sm2.G))),
    )
    with pytest.raises(ValueError, match="embedded public key does not match"):
        sm2.parse_private_key_der(wrong_pub)
    sm2_curve = _der.explicit(0, _der.oid(sm2.OID_SM2))
    zero = _der.sequence(_der.integer(1), _der.octet_string(bytes(32)), sm2_curve)
    with pytest.raises(ValueError, match="scalar out of range"):
        sm2.parse_private_key_der(zero)


def test_asn1_ciphertext_conversion_round_trips() -> None:
    ciphertext = sm2.encrypt(KAT_PUB, b"sixteen byte esk")
    assert sm2.asn1_to_c1c3c2(sm2.c1c3c2_to_asn1(ciphertext)) == ciphertext


def test_generate_private_key_in_range() -> None:
    d = sm2.generate_private_key()
    assert 1 <= d <= sm2.N - 2
    assert sm2.is_on_curve(sm2.public_key(d))
    with pytest.raises(ValueError, match="out of range"):
        sm2.public_key(0)
