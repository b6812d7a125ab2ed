"""The emulator's cryptography: wrapping key pairs, unwrapping imported material, and the Asymmetric*
operations over imported keys, as pure functions over bytes.

It decides no KMS rule and raises only `CryptoFailure` (a plain message, never key bytes); the engine
(models.py) turns that into the vendor's error codes. It does no I/O.
"""

from __future__ import annotations

import base64
import textwrap
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from provisioner import _der, private_key, sm2, wrapping
from provisioner.errors import MaterialError, WrappingError
from provisioner.model import KeySpec, WrappingAlgorithm
from provisioner.specs import Family, facts

DIGEST_BYTES = 32


class CryptoFailure(Exception):
    """An operation that cannot be done on these bytes; the message names no secret."""


class WrongWrappingKey(CryptoFailure):
    """EncryptedKeyMaterial does not open under the wrapping key it was presented with."""


class NotAPrivateKey(CryptoFailure):
    """What the wrapping held is not a usable PKCS#8 private key."""


def _is_pkcs8(der: bytes) -> bool:
    """PrivateKeyInfo shape: SEQUENCE { INTEGER, SEQUENCE (algorithm), OCTET STRING, ... }.

    The guide demands PKCS#8 DER; private_key.parse_der would also take PKCS#1 or SEC1."""
    try:
        parts = _der.children(_der.read_single(der, _der.SEQUENCE).content)
    except ValueError:
        return False
    return (
        len(parts) >= 3
        and parts[0].tag == _der.INTEGER
        and parts[1].tag == _der.SEQUENCE
        and parts[2].tag == _der.OCTET_STRING
    )


@dataclass(frozen=True)
class ImportedKey:
    """Private material as the engine keeps it: PKCS#8 DER (SM2 too), its spec and public key.

    `repr` shows the fingerprint only: the DER must never reach a log or a message."""

    spec: KeySpec
    pkcs8_der: bytes
    public_key_der: bytes
    fingerprint: str

    def __repr__(self) -> str:
        return f"ImportedKey(spec={self.spec}, fingerprint={self.fingerprint})"


# --- wrapping key pairs (KMS side) --------------------------------------------------------------


def new_wrapping_key(algorithm: WrappingAlgorithm) -> tuple[bytes, bytes]:
    """A fresh wrapping key pair: (private key DER to keep KMS-side, public key DER SPKI to hand out)."""
    if algorithm is WrappingAlgorithm.SM2PKE_SM4_ECB:
        d = sm2.generate_private_key()
        return sm2.private_key_pkcs8_der(d), sm2.spki_der(sm2.public_key(d))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def unwrap(algorithm: WrappingAlgorithm, wrapping_private_der: bytes, blob: bytes) -> ImportedKey:
    """Unwrap EncryptedKeyMaterial and parse the private key inside.

    Raises WrongWrappingKey when the blob does not open under this wrapping key and
    NotAPrivateKey when what it holds is no usable PKCS#8 private key."""
    try:
        if algorithm is WrappingAlgorithm.SM2PKE_SM4_ECB:
            d = sm2.parse_private_key_der(wrapping_private_der)
            assert d is not None  # we wrote it ourselves
            scalar = wrapping.unwrap_sm2_sm4(d, blob)
            try:
                der = sm2.private_key_pkcs8_der(int.from_bytes(scalar, "big"))
            except ValueError as e:
                raise NotAPrivateKey("the unwrapped SM2 scalar is out of range") from e
        else:
            # The emulator made this key itself: OpenSSL's primality checks would only cost time.
            wrapping_key = serialization.load_der_private_key(
                wrapping_private_der, password=None, unsafe_skip_rsa_key_validation=True
            )
            assert isinstance(wrapping_key, rsa.RSAPrivateKey)
            der = wrapping.unwrap_rsa_aes(wrapping_key, blob)
    except WrappingError as e:
        raise WrongWrappingKey(str(e)) from e
    if not _is_pkcs8(der):
        raise NotAPrivateKey("it is not a PKCS#8 DER private key")
    try:
        parsed = private_key.parse_der(der)
    except (MaterialError, ValueError) as e:
        raise NotAPrivateKey(str(e)) from e
    return ImportedKey(parsed.spec, parsed.pkcs8_der(), parsed.public_key_der(), parsed.fingerprint)


# --- using an imported key ------------------------------------------------------------------------


def _load(key: ImportedKey) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | int:
    if facts(key.spec).family is Family.SM2:
        d = sm2.parse_private_key_der(key.pkcs8_der)
        if d is None:
            raise CryptoFailure("stored SM2 material does not parse")
        return d
    # Checked when it was imported (private_key.parse_der); no need to pay for it on every call.
    loaded = serialization.load_der_private_key(
        key.pkcs8_der, password=None, unsafe_skip_rsa_key_validation=True
    )
    if not isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CryptoFailure("stored material is not an RSA or EC key")
    return loaded


def _load_public(spec: KeySpec, public_key_der: bytes) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    loaded = serialization.load_der_public_key(public_key_der)
    if not isinstance(loaded, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise CryptoFailure(f"public key is not a {spec} key")
    return loaded


def _pss() -> asym_padding.PSS:
    # The vendor's RSA_PSS_SHA_256 uses a salt as long as the digest.
    return asym_padding.PSS(mgf=asym_padding.MGF1(hashes.SHA256()), salt_length=DIGEST_BYTES)


def _oaep(algorithm: str) -> asym_padding.OAEP:
    digest: hashes.HashAlgorithm = hashes.SHA1() if algorithm == "RSAES_OAEP_SHA_1" else hashes.SHA256()
    return asym_padding.OAEP(mgf=asym_padding.MGF1(digest), algorithm=digest, label=None)


def sign(key: ImportedKey, algorithm: str, digest: bytes) -> bytes:
    private = _load(key)
    if isinstance(private, int):
        return sm2.sign_digest(private, digest)
    if isinstance(private, rsa.RSAPrivateKey):
        pad: asym_padding.AsymmetricPadding = (
            _pss() if algorithm == "RSA_PSS_SHA_256" else asym_padding.PKCS1v15()
        )
        return private.sign(digest, pad, Prehashed(hashes.SHA256()))
    return private.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))


def verify(spec: KeySpec, public_key_der: bytes, algorithm: str, digest: bytes, signature: bytes) -> bool:
    if facts(spec).family is Family.SM2:
        return sm2.verify_digest(sm2.parse_spki(public_key_der), digest, signature)
    public = _load_public(spec, public_key_der)
    try:
        if isinstance(public, rsa.RSAPublicKey):
            pad: asym_padding.AsymmetricPadding = (
                _pss() if algorithm == "RSA_PSS_SHA_256" else asym_padding.PKCS1v15()
            )
            public.verify(signature, digest, pad, Prehashed(hashes.SHA256()))
        else:
            public.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except (InvalidSignature, ValueError):
        return False
    return True


def encrypt(spec: KeySpec, public_key_der: bytes, algorithm: str, plaintext: bytes) -> bytes:
    try:
        if facts(spec).family is Family.SM2:
            return sm2.encrypt(sm2.parse_spki(public_key_der), plaintext)
        public = _load_public(spec, public_key_der)
        assert isinstance(public, rsa.RSAPublicKey)  # the engine sends only RSA keys here
        return public.encrypt(plaintext, _oaep(algorithm))
    except ValueError as e:
        raise CryptoFailure(f"plaintext cannot be encrypted: {e}") from e


def decrypt(key: ImportedKey, algorithm: str, ciphertext: bytes) -> bytes:
    private = _load(key)
    try:
        if isinstance(private, int):
            return sm2.decrypt(private, ciphertext)
        assert isinstance(private, rsa.RSAPrivateKey)
        return private.decrypt(ciphertext, _oaep(algorithm))
    except ValueError as e:
        raise CryptoFailure("ciphertext does not decrypt under this key") from e


def public_key_pem(public_key_der: bytes) -> str:
    """PEM `PUBLIC KEY` armour around the SPKI DER (works for SM2, which cryptography cannot load)."""
    body = "\n".join(textwrap.wrap(base64.b64encode(public_key_der).decode("ascii"), 64))
    return f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n"
