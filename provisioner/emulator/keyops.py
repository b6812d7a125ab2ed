"""The emulator's cryptography: wrapping key pairs, unwrapping imported asymmetric material, and the
Asymmetric* operations over imported keys, as pure functions over bytes. `ASYMMETRIC` is the emulator's
half of the RSA, EC and SM2 families (specs.FAMILIES names it).

It decides no KMS rule and raises only `CryptoFailure` (a plain message, never key bytes); the engine
(models.py) turns that into the vendor's error codes. It does no I/O.
"""

from __future__ import annotations

import base64
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from provisioner import _der, private_key, sm2, wrapping
from provisioner.errors import MaterialError, WrappingError
from provisioner.model import KeySpec, WrappingAlgorithm
from provisioner.specs import WRAPPING, Family, facts

if TYPE_CHECKING:
    from provisioner.emulator.families import Operation

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
    """Private material as the engine keeps it: PKCS#8 DER (SM2 too), its spec and public key. For a
    symmetric spec `pkcs8_der` holds the key's bytes and `public_key_der` a one-way digest of them
    (symmetric_ops.binding_digest).

    `repr` shows the fingerprint only: the DER must never reach a log or a message."""

    spec: KeySpec
    pkcs8_der: bytes
    public_key_der: bytes
    fingerprint: str

    def __repr__(self) -> str:
        return f"ImportedKey(spec={self.spec}, fingerprint={self.fingerprint})"


# --- wrapping key pairs (KMS side) --------------------------------------------------------------


def _new_sm2_wrapping_key(spec: KeySpec) -> tuple[bytes, bytes]:
    d = sm2.generate_private_key()
    return sm2.private_key_pkcs8_der(d), sm2.spki_der(sm2.public_key(d))


def _new_rsa_wrapping_key(spec: KeySpec) -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=facts(spec).bits)
    private = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def _sm2_wrapping_private_key(der: bytes) -> int:
    d = sm2.parse_private_key_der(der)
    assert d is not None  # we wrote it ourselves
    return d


def _rsa_wrapping_private_key(der: bytes) -> rsa.RSAPrivateKey:
    # The emulator made this key itself: OpenSSL's primality checks would only cost time.
    key = serialization.load_der_private_key(der, password=None, unsafe_skip_rsa_key_validation=True)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@dataclass(frozen=True)
class _WrappingKeyKind:
    """How the emulator makes and reads back a wrapping key of one family."""

    new: Callable[[KeySpec], tuple[bytes, bytes]]
    load: Callable[[bytes], rsa.RSAPrivateKey | int]


#: By the family of the wrapping key spec (specs.WRAPPING).
_WRAPPING_KEYS: Mapping[Family, _WrappingKeyKind] = {
    Family.RSA: _WrappingKeyKind(_new_rsa_wrapping_key, _rsa_wrapping_private_key),
    Family.SM2: _WrappingKeyKind(_new_sm2_wrapping_key, _sm2_wrapping_private_key),
}


def _wrapping_kind(algorithm: WrappingAlgorithm) -> tuple[KeySpec, _WrappingKeyKind]:
    spec = WRAPPING[algorithm].wrapping_key_spec
    return spec, _WRAPPING_KEYS[facts(spec).family]


def new_wrapping_key(algorithm: WrappingAlgorithm) -> tuple[bytes, bytes]:
    """A fresh wrapping key pair: (private key DER to keep KMS-side, public key DER SPKI to hand out)."""
    spec, kind = _wrapping_kind(algorithm)
    return kind.new(spec)


def _unwrap_pkcs8(algorithm: WrappingAlgorithm, wrapping_private_der: bytes, blob: bytes) -> ImportedKey:
    """Unwrap EncryptedKeyMaterial and parse the private key inside.

    Raises WrongWrappingKey when the blob does not open under this wrapping key and
    NotAPrivateKey when what it holds is no usable PKCS#8 private key."""
    try:
        wrapping_key = wrapping_private_key(algorithm, wrapping_private_der)
        if isinstance(wrapping_key, int):
            scalar = wrapping.unwrap_sm2_sm4(wrapping_key, blob)
            try:
                der = sm2.private_key_pkcs8_der(int.from_bytes(scalar, "big"))
            except ValueError as e:
                raise NotAPrivateKey("the unwrapped SM2 scalar is out of range") from e
        else:
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


def wrapping_private_key(algorithm: WrappingAlgorithm, der: bytes) -> rsa.RSAPrivateKey | int:
    """The wrapping private key (the emulator's own, from new_wrapping_key) `algorithm` unwraps with."""
    return _wrapping_kind(algorithm)[1].load(der)


# --- using an imported key ------------------------------------------------------------------------


def _load(der: bytes) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    # Checked when it was imported (private_key.parse_der); no need to pay for it on every call.
    loaded = serialization.load_der_private_key(der, password=None, unsafe_skip_rsa_key_validation=True)
    if not isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CryptoFailure("stored material is not an RSA or EC key")
    return loaded


def _load_public(spec: KeySpec, public_key_der: bytes) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    loaded = serialization.load_der_public_key(public_key_der)
    if not isinstance(loaded, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise CryptoFailure(f"public key is not a {spec} key")
    return loaded


def _sm2_scalar(der: bytes) -> int:
    d = sm2.parse_private_key_der(der)
    if d is None:
        raise CryptoFailure("stored SM2 material does not parse")
    return d


def _pss() -> asym_padding.PSS:
    # The vendor's RSA_PSS_SHA_256 uses a salt as long as the digest.
    return asym_padding.PSS(mgf=asym_padding.MGF1(hashes.SHA256()), salt_length=DIGEST_BYTES)


def _rsa_sign_padding(algorithm: str) -> asym_padding.AsymmetricPadding:
    return _pss() if algorithm == "RSA_PSS_SHA_256" else asym_padding.PKCS1v15()


def _oaep(algorithm: str) -> asym_padding.OAEP:
    digest: hashes.HashAlgorithm = hashes.SHA1() if algorithm == "RSAES_OAEP_SHA_1" else hashes.SHA256()
    return asym_padding.OAEP(mgf=asym_padding.MGF1(digest), algorithm=digest, label=None)


# RSA and EC keys: cryptography's, told apart by the loaded key's type.


def _sign(der: bytes, algorithm: str, digest: bytes) -> bytes:
    private = _load(der)
    if isinstance(private, rsa.RSAPrivateKey):
        return private.sign(digest, _rsa_sign_padding(algorithm), Prehashed(hashes.SHA256()))
    return private.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))


def _verify(spec: KeySpec, public_key_der: bytes, algorithm: str, digest: bytes, signature: bytes) -> bool:
    public = _load_public(spec, public_key_der)
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, digest, _rsa_sign_padding(algorithm), Prehashed(hashes.SHA256()))
        else:
            public.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except (InvalidSignature, ValueError):
        return False
    return True


def _encrypt(spec: KeySpec, public_key_der: bytes, algorithm: str, plaintext: bytes) -> bytes:
    public = _load_public(spec, public_key_der)
    if not isinstance(public, rsa.RSAPublicKey):  # the engine refuses first: EC has no encrypt algorithm
        raise CryptoFailure(f"{spec} keys do not encrypt")
    return public.encrypt(plaintext, _oaep(algorithm))


def _decrypt(der: bytes, algorithm: str, ciphertext: bytes) -> bytes:
    private = _load(der)
    if not isinstance(private, rsa.RSAPrivateKey):
        raise CryptoFailure("ciphertext does not decrypt under this key")
    return _decrypting(lambda: private.decrypt(ciphertext, _oaep(algorithm)))


# SM2 keys: sm2.py's.


def _sm2_sign(der: bytes, algorithm: str, digest: bytes) -> bytes:
    return sm2.sign_digest(_sm2_scalar(der), digest)


def _sm2_verify(spec: KeySpec, public_der: bytes, algorithm: str, digest: bytes, signature: bytes) -> bool:
    return sm2.verify_digest(sm2.parse_spki(public_der), digest, signature)


def _sm2_encrypt(spec: KeySpec, public_key_der: bytes, algorithm: str, plaintext: bytes) -> bytes:
    return sm2.encrypt(sm2.parse_spki(public_key_der), plaintext)


def _sm2_decrypt(der: bytes, algorithm: str, ciphertext: bytes) -> bytes:
    scalar = _sm2_scalar(der)
    return _decrypting(lambda: sm2.decrypt(scalar, ciphertext))


def _decrypting(decrypt_it: Callable[[], bytes]) -> bytes:
    try:
        return decrypt_it()
    except ValueError as e:
        raise CryptoFailure("ciphertext does not decrypt under this key") from e


@dataclass(frozen=True)
class _Primitives:
    """The Asymmetric* operations of one asymmetric family, over stored DER."""

    sign: Callable[[bytes, str, bytes], bytes]
    verify: Callable[[KeySpec, bytes, str, bytes, bytes], bool]
    encrypt: Callable[[KeySpec, bytes, str, bytes], bytes]
    decrypt: Callable[[bytes, str, bytes], bytes]


#: By family (SpecFacts.family); a symmetric key has none of these (its family's operations instead).
PRIMITIVES: Mapping[Family, _Primitives] = {
    Family.RSA: _Primitives(_sign, _verify, _encrypt, _decrypt),
    Family.EC: _Primitives(_sign, _verify, _encrypt, _decrypt),
    Family.SM2: _Primitives(_sm2_sign, _sm2_verify, _sm2_encrypt, _sm2_decrypt),
}


def _primitives(spec: KeySpec) -> _Primitives:
    family = facts(spec).family
    if family not in PRIMITIVES:
        raise CryptoFailure(f"{spec} keys have no asymmetric operations")
    return PRIMITIVES[family]


def sign(key: ImportedKey, algorithm: str, digest: bytes) -> bytes:
    return _primitives(key.spec).sign(key.pkcs8_der, algorithm, digest)


def verify(spec: KeySpec, public_key_der: bytes, algorithm: str, digest: bytes, signature: bytes) -> bool:
    return _primitives(spec).verify(spec, public_key_der, algorithm, digest, signature)


def encrypt(spec: KeySpec, public_key_der: bytes, algorithm: str, plaintext: bytes) -> bytes:
    try:
        return _primitives(spec).encrypt(spec, public_key_der, algorithm, plaintext)
    except ValueError as e:
        raise CryptoFailure(f"plaintext cannot be encrypted: {e}") from e


def decrypt(key: ImportedKey, algorithm: str, ciphertext: bytes) -> bytes:
    return _primitives(key.spec).decrypt(key.pkcs8_der, algorithm, ciphertext)


def public_key_pem(public_key_der: bytes) -> str:
    """PEM `PUBLIC KEY` armour around the SPKI DER (works for SM2, which cryptography cannot load)."""
    body = "\n".join(textwrap.wrap(base64.b64encode(public_key_der).decode("ascii"), 64))
    return f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n"


class _Asymmetric:
    """The emulator's half of the asymmetric families (emulator.families.EmulatedFamily): a wrapped
    PKCS#8 private key; their Asymmetric* operations are the engine's own, as every KMS key has them."""

    def unwrap(
        self, spec: KeySpec, algorithm: WrappingAlgorithm, wrapping_private_der: bytes, blob: bytes
    ) -> ImportedKey:
        # The private key says its own spec; the engine compares it with the key's.
        return _unwrap_pkcs8(algorithm, wrapping_private_der, blob)

    @property
    def operations(self) -> Mapping[str, Operation]:
        return {}


#: Named by specs.FAMILIES for the RSA, EC and SM2 families.
ASYMMETRIC = _Asymmetric()
