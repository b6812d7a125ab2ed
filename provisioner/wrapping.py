"""The vendor's two key-wrapping schemes (guide step 3), both directions, as pure functions.

Wrapping runs on the client; unwrapping is here for the emulator, which plays KMS. No I/O, no
logging; errors say what is wrong with the input and never carry key or ESK bytes.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Callable

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from provisioner import sm2
from provisioner.errors import WrappingError
from provisioner.model import KeySpec, WrappingAlgorithm
from provisioner.specs import (
    WRAPPING,
    Family,
    Material,
    OaepHash,
    curve_spec,
    facts,
    family_specs,
    rsa_spec,
    wrapping_key_specs,
)

AES_ESK_BYTES = 32
SM4_ESK_BYTES = 16
SM2_SCALAR_BYTES = 32
#: Cipher(ESK) under SM2: C1 (65) || C3 (32) || C2 (16).
SM2_CIPHER_ESK_BYTES = 65 + 32 + SM4_ESK_BYTES
#: The RSA wrapping key specs KMS hands out (RSA_2048), read from the wrapping table.
_RSA_WRAPPING_SPECS = tuple(s for s in wrapping_key_specs() if s in family_specs(Family.RSA))
RSA_WRAPPING_BITS = facts(_RSA_WRAPPING_SPECS[0]).bits

_BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/=\s]+")
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)


def load_wrapping_public_key(data: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of a wrapping public key given as PEM, DER or base64 DER text
    (what GetParametersForImport returns). Only an RSA_2048 or an SM2 key is accepted."""
    der = _to_der(data)
    wrapping_key_spec(der)
    if sm2.is_sm2_spki(der):
        return sm2.spki_der(sm2.parse_spki(der))
    key = serialization.load_der_public_key(der)
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _to_der(data: bytes) -> bytes:
    if data[:1] == b"\x30" and not _BASE64_TEXT.fullmatch(data):
        return data
    stripped = data.strip()
    match = _PEM_BLOCK.search(stripped)
    if match:
        if match.group(1) not in (b"PUBLIC KEY", b"RSA PUBLIC KEY"):
            raise WrappingError(
                f"wrapping public key: expected a PUBLIC KEY PEM block, found {match.group(1).decode()}"
            )
        if match.group(1) == b"RSA PUBLIC KEY":
            try:
                key = serialization.load_pem_public_key(match.group(0))
            except (ValueError, UnsupportedAlgorithm) as e:
                raise WrappingError("wrapping public key: malformed RSA PUBLIC KEY PEM block") from e
            return key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        return _b64(match.group(2))
    return _b64(stripped)


def _b64(text: bytes) -> bytes:
    try:
        return base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise WrappingError("wrapping public key is neither PEM, DER nor base64 DER") from e


def wrapping_key_spec(der: bytes) -> KeySpec:
    """The spec (one of specs.wrapping_key_specs) of a usable wrapping key; WrappingError otherwise."""
    usable = wrapping_key_specs()
    sm2_spec = curve_spec(sm2.CURVE_NAME)
    if sm2.is_sm2_spki(der) and sm2_spec in usable:
        assert sm2_spec is not None
        return sm2_spec
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise WrappingError("wrapping public key is not a DER SubjectPublicKeyInfo") from e
    if isinstance(key, rsa.RSAPublicKey):
        spec = rsa_spec(key.key_size)
        if spec is None or spec not in usable:
            raise WrappingError(
                f"wrapping public key is RSA of {key.key_size} bits; "
                f"KMS wraps with {' or '.join(_RSA_WRAPPING_SPECS)}"
            )
        return spec
    if isinstance(key, ec.EllipticCurvePublicKey):
        kind = f"EC on curve {key.curve.name}"
    else:
        kind = type(key).__name__.lstrip("_").removesuffix("PublicKey")
    raise WrappingError(f"wrapping public key is {kind}; KMS wraps with {' or '.join(usable)}")


def _require_wrapping_key(public_key_der: bytes, algorithm: WrappingAlgorithm) -> None:
    needed = WRAPPING[algorithm].wrapping_key_spec
    if wrapping_key_spec(public_key_der) is not needed:
        raise WrappingError(f"{algorithm} needs an {needed} wrapping key")


def wrap(material: Material, wrapping_public_key_der: bytes, algorithm: WrappingAlgorithm) -> str:
    """base64(Cipher(ESK) || Cipher(TAKpriv)) for ImportKeyMaterial's EncryptedKeyMaterial."""
    row = facts(material.spec)
    # A client chooses among the symmetric algorithms; asymmetric material has the vendor's pairing.
    accepted = row.accepted_wrapping if row.symmetric else (row.wrapping_algorithm,)
    if algorithm not in accepted:
        raise WrappingError(
            f"{material.spec} material is wrapped with {' or '.join(accepted)}, not {algorithm}"
        )
    row_wrapping = WRAPPING[algorithm]
    key_spec = wrapping_key_spec(wrapping_public_key_der)
    if key_spec is not row_wrapping.wrapping_key_spec:
        raise WrappingError(
            f"{algorithm} needs a {row_wrapping.wrapping_key_spec} wrapping key, got {key_spec}"
        )
    payload = material.import_payload(algorithm)
    if row_wrapping.esk_cipher is None:
        blob = wrap_direct(wrapping_public_key_der, payload, algorithm)
    else:
        blob = _ENVELOPES[algorithm](wrapping_public_key_der, payload)
    return base64.b64encode(blob).decode("ascii")


#: The algorithms that wrap material directly under the wrapping key, with no ephemeral key.
DIRECT_ALGORITHMS = tuple(a for a, row in WRAPPING.items() if row.direct)
_DIGESTS: dict[OaepHash, type[hashes.SHA256 | hashes.SHA1]] = {
    OaepHash.SHA_256: hashes.SHA256, OaepHash.SHA_1: hashes.SHA1,
}  # fmt: skip


def _esk_padding() -> asym_padding.AsymmetricPadding:
    """How RSAES_OAEP_SHA_256_AES_256_ECB_PKCS7_PAD wraps its ephemeral key (its row's OAEP hash)."""
    return _rsa_padding(WrappingAlgorithm.RSA_OAEP_AES_ECB)


def _rsa_padding(algorithm: WrappingAlgorithm) -> asym_padding.AsymmetricPadding:
    oaep_hash = WRAPPING[algorithm].oaep_hash
    if oaep_hash is None:
        # RSAES_PKCS1_V1_5: the vendor's, for symmetric material, beside OAEP; not ours to refuse.
        return asym_padding.PKCS1v15()
    digest = _DIGESTS[oaep_hash]()
    return asym_padding.OAEP(mgf=asym_padding.MGF1(algorithm=digest), algorithm=digest, label=None)


def wrap_direct(public_key_der: bytes, plaintext: bytes, algorithm: WrappingAlgorithm) -> bytes:
    """Symmetric material encrypted directly: RSAES (OAEP SHA-256, OAEP SHA-1, PKCS#1 v1.5) under an
    RSA_2048 wrapping key, or SM2PKE (C1C3C2) under an EC_SM2 one."""
    if algorithm not in DIRECT_ALGORITHMS:
        raise WrappingError(f"{algorithm} is not a direct wrapping algorithm")
    if algorithm is WrappingAlgorithm.SM2PKE:
        try:
            return sm2.encrypt(sm2.parse_spki(public_key_der), plaintext)
        except ValueError as e:
            raise WrappingError("SM2PKE needs an EC_SM2 wrapping key") from e
    _require_wrapping_key(public_key_der, algorithm)
    public = serialization.load_der_public_key(public_key_der)
    assert isinstance(public, rsa.RSAPublicKey)
    return public.encrypt(plaintext, _rsa_padding(algorithm))


def unwrap_direct(
    algorithm: WrappingAlgorithm, wrapping_private_key: rsa.RSAPrivateKey | int, blob: bytes
) -> bytes:
    """The material inside a directly wrapped blob (KMS side): the key is an RSA key or an SM2 scalar."""
    try:
        if isinstance(wrapping_private_key, int):
            if algorithm is not WrappingAlgorithm.SM2PKE:
                raise WrappingError(f"{algorithm} needs an RSA_2048 wrapping key")
            return sm2.decrypt(wrapping_private_key, blob)
        if algorithm not in DIRECT_ALGORITHMS or algorithm is WrappingAlgorithm.SM2PKE:
            raise WrappingError(f"{algorithm} does not unwrap under an RSA_2048 wrapping key")
        return wrapping_private_key.decrypt(blob, _rsa_padding(algorithm))
    except ValueError as e:
        raise WrappingError(f"the material does not decrypt under the wrapping key with {algorithm}") from e


def _fresh_esk(esk: bytes | None, size: int) -> bytearray:
    if esk is None:
        return bytearray(secrets.token_bytes(size))
    if len(esk) != size:
        raise WrappingError(f"ESK must be {size} bytes, got {len(esk)}")
    return bytearray(esk)


def _wipe(buffer: bytearray) -> None:
    buffer[:] = bytes(len(buffer))


def wrap_rsa_aes(public_key_der: bytes, plaintext: bytes, *, esk: bytes | None = None) -> bytes:
    """RSAES_OAEP_SHA_256_AES_256_ECB_PKCS7_PAD. `esk` is for tests; by default 32 fresh bytes."""
    _require_wrapping_key(public_key_der, WrappingAlgorithm.RSA_OAEP_AES_ECB)
    public = serialization.load_der_public_key(public_key_der)
    assert isinstance(public, rsa.RSAPublicKey)
    key = _fresh_esk(esk, AES_ESK_BYTES)
    try:
        cipher_esk = public.encrypt(bytes(key), _esk_padding())
        padder = padding.PKCS7(128).padder()
        padded = padder.update(plaintext) + padder.finalize()
        # ECB is the vendor's scheme, not our choice: the plaintext is a random-looking key.
        encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
        cipher_tak = encryptor.update(padded) + encryptor.finalize()
    finally:
        _wipe(key)
    return cipher_esk + cipher_tak


def wrap_sm2_sm4(
    public_key_der: bytes, scalar: bytes, *, esk: bytes | None = None, k: int | None = None
) -> bytes:
    """SM2PKE_SM4_ECB over the raw 32-byte scalar D. `esk` and `k` are for known-answer tests."""
    if len(scalar) != SM2_SCALAR_BYTES:
        raise WrappingError(f"SM2 private scalar must be {SM2_SCALAR_BYTES} bytes, got {len(scalar)}")
    try:
        point = sm2.parse_spki(public_key_der)
    except ValueError as e:
        raise WrappingError("SM2PKE_SM4_ECB needs an EC_SM2 wrapping key") from e
    key = _fresh_esk(esk, SM4_ESK_BYTES)
    try:
        cipher_esk = sm2.encrypt(point, bytes(key), k=k)
        encryptor = Cipher(algorithms.SM4(bytes(key)), modes.ECB()).encryptor()
        cipher_tak = encryptor.update(scalar) + encryptor.finalize()
    except ValueError as e:
        raise WrappingError(f"SM2 encryption failed: {e}") from e
    finally:
        _wipe(key)
    return cipher_esk + cipher_tak


def unwrap_rsa_aes(wrapping_private_key: rsa.RSAPrivateKey, blob: bytes) -> bytes:
    """The PKCS#8 DER inside an RSAES_OAEP_SHA_256_AES_256_ECB_PKCS7_PAD blob (KMS side)."""
    size = wrapping_private_key.key_size // 8
    cipher_tak = blob[size:]
    if len(blob) <= size or len(cipher_tak) % 16:
        raise WrappingError("wrapped material has the wrong length for RSA-OAEP + AES-256-ECB")
    try:
        key = bytearray(wrapping_private_key.decrypt(blob[:size], _esk_padding()))
    except ValueError as e:
        raise WrappingError("Cipher(ESK) does not decrypt under the wrapping key") from e
    try:
        if len(key) != AES_ESK_BYTES:
            raise WrappingError(f"ESK is {len(key)} bytes, expected {AES_ESK_BYTES}")
        decryptor = Cipher(algorithms.AES(key), modes.ECB()).decryptor()
        padded = decryptor.update(cipher_tak) + decryptor.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        try:
            return unpadder.update(padded) + unpadder.finalize()
        except ValueError as e:
            raise WrappingError("Cipher(TAKpriv) has invalid PKCS#7 padding") from e
    finally:
        _wipe(key)


def unwrap_sm2_sm4(wrapping_private_scalar: int, blob: bytes) -> bytes:
    """The 32-byte scalar D inside an SM2PKE_SM4_ECB blob (KMS side)."""
    if len(blob) != SM2_CIPHER_ESK_BYTES + SM2_SCALAR_BYTES:
        raise WrappingError(
            f"wrapped SM2 material must be {SM2_CIPHER_ESK_BYTES + SM2_SCALAR_BYTES} bytes, got {len(blob)}"
        )
    try:
        key = bytearray(sm2.decrypt(wrapping_private_scalar, blob[:SM2_CIPHER_ESK_BYTES]))
    except ValueError as e:
        raise WrappingError("Cipher(ESK) does not decrypt under the SM2 wrapping key") from e
    try:
        decryptor = Cipher(algorithms.SM4(bytes(key)), modes.ECB()).decryptor()
        return decryptor.update(blob[SM2_CIPHER_ESK_BYTES:]) + decryptor.finalize()
    finally:
        _wipe(key)


#: The schemes that wrap an ephemeral key (WRAPPING's esk_cipher), each one's implementation.
_ENVELOPES: dict[WrappingAlgorithm, Callable[[bytes, bytes], bytes]] = {
    WrappingAlgorithm.RSA_OAEP_AES_ECB: wrap_rsa_aes,
    WrappingAlgorithm.SM2PKE_SM4_ECB: wrap_sm2_sm4,
}
