"""One private key as a value: `PrivateMaterial` (its repr is its fingerprint), the SPKI fingerprint,
and parsing one unencrypted DER key. Both the material sources and the emulator build on it.

It does no I/O, reads no environment and runs nothing: that is material.py's job, not this one's.
"""

from __future__ import annotations

import base64
import hashlib
import math
from typing import NoReturn

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from provisioner import sm2
from provisioner.errors import MaterialError
from provisioner.model import KeySpec, WrappingAlgorithm
from provisioner.specs import Family, curve_spec, ec_spec, facts, family_specs, rsa_spec

KeyObject = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | int

NOT_A_KEY_MESSAGE = "does not hold a private key in PEM or DER (PKCS#1, SEC1 or PKCS#8)"
PUBLIC_KEY_MESSAGE = "holds a public key; a private key is needed"


def fingerprint_of_spki(der: bytes) -> str:
    """`sha256:` + hex SHA-256 of a DER SubjectPublicKeyInfo (as given: pass canonical DER)."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _spki_of(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class PrivateMaterial:
    """One private key of a supported spec (a specs.Material). Its repr and str are its spec and
    fingerprint only."""

    __slots__ = ("spec", "fingerprint", "_key", "_spki")

    def __init__(self, key: KeyObject, spec: KeySpec) -> None:
        self._key: KeyObject | None = key
        self.spec = spec
        if isinstance(key, int):
            self._spki = sm2.spki_der(sm2.public_key(key))
        else:
            self._spki = _spki_of(key)
        self.fingerprint = fingerprint_of_spki(self._spki)

    def __repr__(self) -> str:
        return f"PrivateMaterial(spec={self.spec.value}, fingerprint={self.fingerprint})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        # Pickling would write the plaintext key somewhere; a plan file must hold the fingerprint.
        raise TypeError("PrivateMaterial cannot be pickled")

    def _live(self) -> KeyObject:
        if self._key is None:
            raise MaterialError(f"material {self.fingerprint} was wiped after use")
        return self._key

    def private_key(self) -> KeyObject:
        """The key for signing or decrypting: a cryptography key object, or the SM2 scalar."""
        return self._live()

    def public_key_der(self) -> bytes:
        return self._spki

    def public_key_pem(self) -> str:
        body = base64.encodebytes(self._spki).decode("ascii").replace("\n", "")
        lines = [body[i : i + 64] for i in range(0, len(body), 64)]
        return "-----BEGIN PUBLIC KEY-----\n" + "\n".join(lines) + "\n-----END PUBLIC KEY-----\n"

    def pkcs8_der(self) -> bytes:
        """Unencrypted PKCS#8 DER (RSA: RFC 3447 inside; EC: RFC 5915 inside). Use and drop it."""
        key = self._live()
        if isinstance(key, int):
            return sm2.private_key_pkcs8_der(key)
        return key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def sm2_scalar(self) -> bytes:
        """D as exactly 32 big-endian bytes (left-padded), for SM2PKE_SM4_ECB."""
        key = self._live()
        if not isinstance(key, int):
            raise MaterialError(f"{self.spec} material has no SM2 scalar")
        return sm2.scalar_bytes(key)

    def import_payload(self, algorithm: WrappingAlgorithm) -> bytes:
        """What `algorithm` wraps: the bare SM2 scalar for SM2PKE_SM4_ECB, PKCS#8 DER otherwise."""
        if algorithm is WrappingAlgorithm.SM2PKE_SM4_ECB:
            return self.sm2_scalar()
        return self.pkcs8_der()

    def secret_forms(self) -> list[bytes]:
        """PKCS#8 DER, then the traditional (PKCS#1 / SEC1) DER and the secret numbers (SM2: the scalar)."""
        forms = [self.pkcs8_der()]
        key = self._live()
        if isinstance(key, int):
            forms.append(self.sm2_scalar())
            return forms
        forms.append(
            key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        numbers: list[int] = []
        if isinstance(key, rsa.RSAPrivateKey):
            n = key.private_numbers()
            numbers = [n.d, n.p, n.q, n.dmp1, n.dmq1, n.iqmp]
        else:
            numbers = [key.private_numbers().private_value]
        forms.extend(x.to_bytes((x.bit_length() + 7) // 8, "big") for x in numbers)
        return forms

    def wipe(self) -> None:
        """Drop the key. Python cannot overwrite an int or OpenSSL's copy; this ends our reference."""
        self._key = None


# --- parsing -----------------------------------------------------------------------------------


def load_der(der: bytes, passphrase: bytes | None) -> object:
    """cryptography's DER loader without OpenSSL's full RSA check (primality tests: 60-600 ms a key,
    holding the GIL); `_check_rsa_numbers` keeps the consistency part of it at big-int speed."""
    return serialization.load_der_private_key(der, passphrase, unsafe_skip_rsa_key_validation=True)


def _check_rsa_numbers(key: rsa.RSAPrivateKey) -> None:
    """The numbers of an RSA key must fit together, or it signs garbage and KMS refuses it."""
    n = key.private_numbers()
    p, q, d, e = n.p, n.q, n.d, n.public_numbers.e
    fits = (
        p > 1
        and q > 1
        and p * q == n.public_numbers.n
        and (d * e) % math.lcm(p - 1, q - 1) == 1
        and n.dmp1 == d % (p - 1)
        and n.dmq1 == d % (q - 1)
        and (n.iqmp * q) % p == 1
    )
    if not fits:
        raise MaterialError("the RSA private key is inconsistent: its numbers do not fit together")


def classify(key: object) -> PrivateMaterial:
    """The supported key a cryptography key object is, as PrivateMaterial; MaterialError if none."""
    if isinstance(key, rsa.RSAPrivateKey):
        spec = rsa_spec(key.key_size)
        if spec is None:
            names = ", ".join(family_specs(Family.RSA))
            raise MaterialError(f"RSA key of {key.key_size} bits is not a supported spec ({names})")
        _check_rsa_numbers(key)
        return PrivateMaterial(key, spec)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        spec = ec_spec(key.curve.name)
        if spec is None:
            curves = ", ".join(f"{s}: {facts(s).curve_words}" for s in family_specs(Family.EC, Family.SM2))
            raise MaterialError(f"EC key on curve {key.curve.name} is not supported ({curves})")
        return PrivateMaterial(key, spec)
    name = type(key).__name__.lstrip("_").removesuffix("PrivateKey") or "unknown"
    raise MaterialError(f"{name} keys are not supported; expected an RSA or EC private key")


def _is_public_key_der(der: bytes) -> bool:
    if sm2.is_sm2_spki(der):
        return True
    try:
        serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm):
        return False
    return True


def parse_der(der: bytes) -> PrivateMaterial:
    """One unencrypted private key in DER: PKCS#1, SEC1 or PKCS#8 (SM2 in SEC1 or PKCS#8 too)."""
    try:
        scalar = sm2.parse_private_key_der(der)
    except ValueError as e:
        raise MaterialError(f"malformed SM2 private key: {e}") from None
    sm2_spec = curve_spec(sm2.CURVE_NAME)
    if scalar is not None and sm2_spec is not None:
        return PrivateMaterial(scalar, sm2_spec)
    try:
        key = load_der(der, None)
    except UnsupportedAlgorithm as e:
        raise MaterialError(f"unsupported key type: {e}") from None
    except (ValueError, TypeError):
        if _is_public_key_der(der):
            raise MaterialError(PUBLIC_KEY_MESSAGE) from None
        raise MaterialError(NOT_A_KEY_MESSAGE) from None
    return classify(key)
