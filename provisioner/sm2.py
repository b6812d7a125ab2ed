"""SM2 (GB/T 32918) on curve sm2p256v1: keys, public-key encryption (C1C3C2) and signatures.

pyca/cryptography has SM3 and SM4 but no SM2 curve, so the point arithmetic is done here with
Python integers. It is not constant-time: use it for wrapping and for the local emulator, not as
a long-running signing oracle. It must not log or put key bytes in exceptions.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import textwrap

from cryptography.hazmat.primitives import hashes

from provisioner import _der

#: The curve's name in the spec table (specs.SpecFacts.curve), as cryptography would name it.
CURVE_NAME = "sm2"
# sm2p256v1, the curve GB/T 32918.5 recommends.
P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
A = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC
B = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
GX = 0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7
GY = 0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0
G = (GX, GY)

OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
OID_SM2 = "1.2.156.10197.1.301"
DEFAULT_USER_ID = b"1234567812345678"

Point = tuple[int, int]
_Jacobian = tuple[int, int, int]  # Z == 0 is the point at infinity

_SPKI_PREFIX = _der.sequence(_der.oid(OID_EC_PUBLIC_KEY), _der.oid(OID_SM2))


def sm3(*parts: bytes) -> bytes:
    h = hashes.Hash(hashes.SM3())
    for part in parts:
        h.update(part)
    return h.finalize()


# --- point arithmetic (Jacobian coordinates: one inversion per scalar multiplication) ---------


def _double(p1: _Jacobian) -> _Jacobian:
    x1, y1, z1 = p1
    if z1 == 0 or y1 == 0:
        return (1, 1, 0)
    yy = y1 * y1 % P
    s = 4 * x1 * yy % P
    zz = z1 * z1 % P
    m = (3 * x1 * x1 + A * zz * zz) % P
    x3 = (m * m - 2 * s) % P
    y3 = (m * (s - x3) - 8 * yy * yy) % P
    z3 = 2 * y1 * z1 % P
    return (x3, y3, z3)


def _add(p1: _Jacobian, p2: _Jacobian) -> _Jacobian:
    x1, y1, z1 = p1
    x2, y2, z2 = p2
    if z1 == 0:
        return p2
    if z2 == 0:
        return p1
    z1z1 = z1 * z1 % P
    z2z2 = z2 * z2 % P
    u1 = x1 * z2z2 % P
    u2 = x2 * z1z1 % P
    s1 = y1 * z2 * z2z2 % P
    s2 = y2 * z1 * z1z1 % P
    if u1 == u2:
        return _double(p1) if s1 == s2 else (1, 1, 0)
    h = (u2 - u1) % P
    r = (s2 - s1) % P
    hh = h * h % P
    hhh = h * hh % P
    v = u1 * hh % P
    x3 = (r * r - hhh - 2 * v) % P
    y3 = (r * (v - x3) - s1 * hhh) % P
    z3 = h * z1 * z2 % P
    return (x3, y3, z3)


def _to_affine(p1: _Jacobian) -> Point | None:
    x, y, z = p1
    if z == 0:
        return None
    zinv = pow(z, -1, P)
    zinv2 = zinv * zinv % P
    return (x * zinv2 % P, y * zinv2 * zinv % P)


def _multiply_jacobian(k: int, point: Point) -> _Jacobian:
    result: _Jacobian = (1, 1, 0)
    addend: _Jacobian = (point[0], point[1], 1)
    for bit in bin(k)[2:]:
        result = _double(result)
        if bit == "1":
            result = _add(result, addend)
    return result


def multiply(k: int, point: Point) -> Point | None:
    """k * point in affine coordinates; None for the point at infinity."""
    return _to_affine(_multiply_jacobian(k % N, point))


def _combine(k1: int, p1: Point, k2: int, p2: Point) -> Point | None:
    return _to_affine(_add(_multiply_jacobian(k1 % N, p1), _multiply_jacobian(k2 % N, p2)))


def is_on_curve(point: Point) -> bool:
    x, y = point
    if not (0 <= x < P and 0 <= y < P):
        return False
    return (y * y - (x * x * x + A * x + B)) % P == 0


def _check_public(pub: Point) -> None:
    # The cofactor is 1, so any affine point on the curve is in the prime-order group.
    if not is_on_curve(pub):
        raise ValueError("SM2 public key is not a point on sm2p256v1")


def _check_scalar(d: int) -> None:
    # GB/T 32918.1: d in [1, n-2] (d = n-1 makes (1+d) non-invertible in signing).
    if not 1 <= d <= N - 2:
        raise ValueError("SM2 private scalar out of range")


# --- keys --------------------------------------------------------------------------------------


def generate_private_key() -> int:
    return 1 + secrets.randbelow(N - 2)


def public_key(d: int) -> Point:
    _check_scalar(d)
    point = multiply(d, G)
    assert point is not None  # d in range, G has order N
    return point


def scalar_bytes(d: int) -> bytes:
    """D as exactly 32 big-endian bytes: left-padded with zeros, never truncated or zeroed."""
    _check_scalar(d)
    return d.to_bytes(32, "big")


def encode_point(pub: Point) -> bytes:
    return b"\x04" + pub[0].to_bytes(32, "big") + pub[1].to_bytes(32, "big")


def decode_point(data: bytes) -> Point:
    if len(data) != 65 or data[0] != 4:
        raise ValueError("SM2 point must be 65 bytes, uncompressed (04||x||y)")
    point = (int.from_bytes(data[1:33], "big"), int.from_bytes(data[33:], "big"))
    _check_public(point)
    return point


def spki_der(pub: Point) -> bytes:
    _check_public(pub)
    return _der.sequence(_SPKI_PREFIX, _der.bit_string(encode_point(pub)))


def parse_spki(der: bytes) -> Point:
    """The point of an SM2 SubjectPublicKeyInfo; ValueError if it is not one."""
    outer = _der.children(_der.read_single(der, _der.SEQUENCE).content)
    if len(outer) != 2 or outer[0].tag != _der.SEQUENCE:
        raise ValueError("not a SubjectPublicKeyInfo")
    if _algorithm_curve(outer[0]) != OID_SM2:
        raise ValueError("not an SM2 public key")
    return decode_point(_der.decode_bit_string(outer[1]))


def is_sm2_spki(der: bytes) -> bool:
    try:
        parse_spki(der)
    except ValueError:
        return False
    return True


def _pem(label: str, der: bytes) -> str:
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode("ascii"), 64))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"


def public_key_pem(pub: Point) -> str:
    return _pem("PUBLIC KEY", spki_der(pub))


def _algorithm_curve(algorithm: _der.Element) -> str | None:
    """The curve OID of an id-ecPublicKey AlgorithmIdentifier; SM2's own OID counts as SM2."""
    parts = _der.children(algorithm.content)
    if not parts:
        return None
    kind = _der.decode_oid(parts[0])
    if kind == OID_SM2:
        return OID_SM2
    if kind != OID_EC_PUBLIC_KEY or len(parts) != 2 or parts[1].tag != _der.OID:
        return None
    return _der.decode_oid(parts[1])


def _ec_private_key(d: int, *, with_curve: bool) -> bytes:
    """RFC 5915 ECPrivateKey: the scalar as exactly 32 octets, and the public point."""
    items = [_der.integer(1), _der.octet_string(scalar_bytes(d))]
    if with_curve:
        items.append(_der.explicit(0, _der.oid(OID_SM2)))
    items.append(_der.explicit(1, _der.bit_string(encode_point(public_key(d)))))
    return _der.sequence(*items)


def private_key_pkcs8_der(d: int) -> bytes:
    """PKCS#8 PrivateKeyInfo, shaped as OpenSSL writes SM2 keys."""
    return _der.sequence(
        _der.integer(0), _SPKI_PREFIX, _der.octet_string(_ec_private_key(d, with_curve=False))
    )


def private_key_pkcs8_pem(d: int) -> str:
    return _pem("PRIVATE KEY", private_key_pkcs8_der(d))


def private_key_sec1_der(d: int) -> bytes:
    return _ec_private_key(d, with_curve=True)


def _parse_ec_private_key(content: bytes, curve: str | None) -> int | None:
    parts = _der.children(content)
    if len(parts) < 2 or _der.decode_integer(parts[0]) != 1 or parts[1].tag != _der.OCTET_STRING:
        if curve == OID_SM2:
            raise ValueError("SM2 PKCS#8 key does not hold an ECPrivateKey")
        return None
    public: bytes | None = None
    for part in parts[2:]:
        if part.tag == 0xA0:
            inner = _der.read_single(part.content, _der.OID)
            named = _der.decode_oid(inner)
            if curve is not None and named != curve:
                raise ValueError("curve parameters disagree with the algorithm identifier")
            curve = named
        elif part.tag == 0xA1:
            public = _der.decode_bit_string(_der.read_single(part.content, _der.BIT_STRING))
    if curve != OID_SM2:
        return None
    raw = parts[1].content
    if not 1 <= len(raw) <= 32:
        raise ValueError("SM2 private scalar must be 1 to 32 bytes")
    # Some encoders drop leading zero bytes: read the value as an integer, never reject or zero it.
    d = int.from_bytes(raw, "big")
    _check_scalar(d)
    if public is not None and decode_point(public) != public_key(d):
        raise ValueError("SM2 private key's embedded public key does not match its scalar")
    return d


def parse_private_key_der(der: bytes) -> int | None:
    """D from an SM2 private key in PKCS#8 or SEC1 DER; None if it is a well-formed key of another
    kind. ValueError if it is SM2 but malformed."""
    try:
        top = _der.read_single(der, _der.SEQUENCE)
        parts = _der.children(top.content)
    except ValueError:
        return None
    if len(parts) >= 3 and parts[0].tag == _der.INTEGER and parts[1].tag == _der.SEQUENCE:
        # PKCS#8 PrivateKeyInfo (version 0) or OneAsymmetricKey (version 1)
        if _algorithm_curve(parts[1]) != OID_SM2:
            return None
        if parts[2].tag != _der.OCTET_STRING:
            raise ValueError("PKCS#8 privateKey is not an OCTET STRING")
        inner = _der.read_single(parts[2].content, _der.SEQUENCE)
        return _parse_ec_private_key(inner.content, OID_SM2)
    if len(parts) >= 2 and parts[0].tag == _der.INTEGER and parts[1].tag == _der.OCTET_STRING:
        # SEC1 ECPrivateKey: the curve is named in its [0] parameters
        return _parse_ec_private_key(top.content, None)
    return None


# --- public-key encryption (GB/T 32918.4), C1C3C2 ----------------------------------------------


def _kdf(z: bytes, length: int) -> bytes:
    out = bytearray()
    counter = 1
    while len(out) < length:
        out += sm3(z, counter.to_bytes(4, "big"))
        counter += 1
    return bytes(out[:length])


def encrypt(pub: Point, message: bytes, *, k: int | None = None) -> bytes:
    """C1 || C3 || C2 with C1 = 04||x||y (65 bytes) and C3 = SM3(x2||M||y2) (32 bytes).

    `k` is for known-answer tests only; by default it is drawn from `secrets` for every attempt."""
    _check_public(pub)
    if not message:
        raise ValueError("SM2 cannot encrypt an empty message")
    while True:
        nonce = k if k is not None else 1 + secrets.randbelow(N - 1)
        if not 1 <= nonce < N:
            raise ValueError("SM2 k out of range")
        c1 = multiply(nonce, G)
        shared = multiply(nonce, pub)
        assert c1 is not None and shared is not None  # nonce in range, prime order, h = 1
        x2 = shared[0].to_bytes(32, "big")
        y2 = shared[1].to_bytes(32, "big")
        t = _kdf(x2 + y2, len(message))
        if any(t):
            break
        if k is not None:
            raise ValueError("SM2 KDF output is all zero for this k")
    c2 = bytes(a ^ b for a, b in zip(message, t, strict=True))
    c3 = sm3(x2, message, y2)
    return encode_point(c1) + c3 + c2


def decrypt(d: int, ciphertext: bytes) -> bytes:
    """Inverse of `encrypt`; ValueError on a malformed ciphertext or a C3 mismatch."""
    _check_scalar(d)
    if len(ciphertext) < 65 + 32 + 1:
        raise ValueError("SM2 ciphertext too short")
    c1 = decode_point(ciphertext[:65])
    c3 = ciphertext[65:97]
    c2 = ciphertext[97:]
    shared = multiply(d, c1)
    if shared is None:
        raise ValueError("SM2 ciphertext point is invalid")
    x2 = shared[0].to_bytes(32, "big")
    y2 = shared[1].to_bytes(32, "big")
    t = _kdf(x2 + y2, len(c2))
    if not any(t):
        raise ValueError("SM2 KDF output is all zero")
    message = bytes(a ^ b for a, b in zip(c2, t, strict=True))
    if not hmac.compare_digest(sm3(x2, message, y2), c3):
        raise ValueError("SM2 ciphertext hash C3 does not match")
    return message


def c1c3c2_to_asn1(ciphertext: bytes) -> bytes:
    """GM/T 0009 ASN.1 form (what OpenSSL's SM2 decrypt reads): SEQUENCE{x, y, C3, C2}."""
    if len(ciphertext) < 98 or ciphertext[0] != 4:
        raise ValueError("not a C1C3C2 SM2 ciphertext")
    x = int.from_bytes(ciphertext[1:33], "big")
    y = int.from_bytes(ciphertext[33:65], "big")
    return _der.sequence(
        _der.integer(x), _der.integer(y), _der.octet_string(ciphertext[65:97]),
        _der.octet_string(ciphertext[97:]),
    )


def asn1_to_c1c3c2(der: bytes) -> bytes:
    parts = _der.children(_der.read_single(der, _der.SEQUENCE).content)
    if len(parts) != 4 or parts[2].tag != _der.OCTET_STRING or parts[3].tag != _der.OCTET_STRING:
        raise ValueError("not an ASN.1 SM2 ciphertext")
    point = (_der.decode_integer(parts[0]), _der.decode_integer(parts[1]))
    _check_public(point)
    return encode_point(point) + parts[2].content + parts[3].content


# --- signatures (GB/T 32918.2) -----------------------------------------------------------------


def compute_z(pub: Point, user_id: bytes = DEFAULT_USER_ID) -> bytes:
    """Z_A = SM3(ENTL || ID || a || b || xG || yG || xA || yA)."""
    _check_public(pub)
    bits = len(user_id) * 8
    if bits > 0xFFFF:
        raise ValueError("SM2 user id too long")
    fields = (A, B, GX, GY, pub[0], pub[1])
    return sm3(bits.to_bytes(2, "big"), user_id, *(v.to_bytes(32, "big") for v in fields))


def digest_message(pub: Point, message: bytes, user_id: bytes = DEFAULT_USER_ID) -> bytes:
    """e = SM3(Z || M): what KMS's AsymmetricSign takes as Digest for SM2DSA."""
    return sm3(compute_z(pub, user_id), message)


def _encode_signature(r: int, s: int) -> bytes:
    return _der.sequence(_der.integer(r), _der.integer(s))


def _decode_signature(der: bytes) -> tuple[int, int]:
    parts = _der.children(_der.read_single(der, _der.SEQUENCE).content)
    if len(parts) != 2:
        raise ValueError("not a DER SM2 signature")
    return _der.decode_integer(parts[0]), _der.decode_integer(parts[1])


def sign_digest(d: int, e: bytes, *, k: int | None = None) -> bytes:
    """DER SEQUENCE(r, s) over the 32-byte digest e. `k` is for known-answer tests only."""
    _check_scalar(d)
    if len(e) != 32:
        raise ValueError("SM2 digest must be 32 bytes")
    e_int = int.from_bytes(e, "big")
    d_inv = pow(1 + d, -1, N)
    while True:
        nonce = k if k is not None else 1 + secrets.randbelow(N - 1)
        if not 1 <= nonce < N:
            raise ValueError("SM2 k out of range")
        point = multiply(nonce, G)
        assert point is not None
        r = (e_int + point[0]) % N
        s = d_inv * (nonce - r * d) % N
        if r != 0 and r + nonce != N and s != 0:
            return _encode_signature(r, s)
        if k is not None:
            raise ValueError("SM2 k gives a degenerate signature")


def verify_digest(pub: Point, e: bytes, signature_der: bytes) -> bool:
    try:
        _check_public(pub)
        r, s = _decode_signature(signature_der)
    except ValueError:
        return False
    if len(e) != 32 or not (1 <= r < N and 1 <= s < N):
        return False
    t = (r + s) % N
    if t == 0:
        return False
    point = _combine(s, G, t, pub)
    if point is None:
        return False
    return (int.from_bytes(e, "big") + point[0]) % N == r
