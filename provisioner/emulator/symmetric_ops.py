"""The emulator's half of the symmetric family (Aliyun_AES_256, Aliyun_SM4; DESIGN section 13): material
wrapped directly under the wrapping key, and the operations only symmetric keys answer: Encrypt,
Decrypt and GenerateDataKey, over the emulator's own ciphertext blob. `FAMILY` is named by
specs.FAMILIES; the engine and the RPC layer reach it through emulator/families.py.

Every KMS rule that is not the family's own (the key's state, its version, its usage) is the engine's
(models.py `KmsEngine.key_in_use`); errors never carry key bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from provisioner import wrapping
from provisioner.emulator.families import Operation
from provisioner.emulator.keyops import CryptoFailure, ImportedKey, NotAPrivateKey, WrongWrappingKey
from provisioner.emulator.keyops import wrapping_private_key as load_wrapping_key
from provisioner.emulator.models import (
    KmsError,
    b64_text,
    b64decode_param,
    parse_int,
    parse_json,
    require,
    shown,
)
from provisioner.errors import WrappingError
from provisioner.model import KeySpec, WrappingAlgorithm
from provisioner.specs import BlockCipher, facts, symmetric_spec
from provisioner.symmetric import key_check_value, sizes
from provisioner.wire import ErrorCode

if TYPE_CHECKING:
    from provisioner.emulator.models import Key, KmsEngine

#: Encrypt's plaintext limit (the vendor's: 6 KiB) and GenerateDataKey's sizes.
MAX_PLAINTEXT_BYTES = 6144
MAX_DATA_KEY_BYTES = 1024
DATA_KEY_SPECS: Mapping[str, int] = {"AES_256": 32, "AES_128": 16}

#: The emulator's own ciphertext blob: magic, key id, key version, nonce, then AES-GCM or SM4-GCM
#: over the plaintext with everything before it (and the encryption context) as associated data.
BLOB_MAGIC = b"EKB1"
NONCE_BYTES = 12
TAG_BYTES = 16
VERSION_ID_BYTES = 36  # a UUID in text


# --- import ---------------------------------------------------------------------------------------


def unwrap(
    key_spec: KeySpec, algorithm: WrappingAlgorithm, wrapping_private_der: bytes, blob: bytes
) -> ImportedKey:
    """The symmetric key a blob for a key of `key_spec` holds, wrapped directly under the wrapping key:
    of `key_spec` if it is that spec's length, else of the spec its length names (for the engine's
    "the material is SPEC" refusal)."""
    try:
        secret = wrapping.unwrap_direct(algorithm, load_wrapping_key(algorithm, wrapping_private_der), blob)
    except WrappingError as e:
        raise WrongWrappingKey(str(e)) from e
    spec = key_spec if len(secret) == facts(key_spec).material_bytes else symmetric_spec(len(secret))
    if spec is None:
        raise NotAPrivateKey(f"it is {len(secret)} bytes long; symmetric material is {sizes()} bytes")
    return ImportedKey(spec, secret, binding_digest(secret), key_check_value(secret))


def binding_digest(secret: bytes) -> bytes:
    """What binds a symmetric key to its first material (kept where an asymmetric key keeps its
    public key): a one-way digest, so the row shows nothing of the material."""
    return hashlib.sha256(b"byok-emulator symmetric binding\0" + secret).digest()


# --- the ciphertext blob --------------------------------------------------------------------------


@dataclass(frozen=True)
class BlobHeader:
    key_id: str
    key_version_id: str


#: The primitive of each cipher a symmetric spec names (SpecFacts.cipher).
_CIPHERS: Mapping[BlockCipher, Callable[[bytes], algorithms.AES | algorithms.SM4]] = {
    BlockCipher.AES: algorithms.AES, BlockCipher.SM4: algorithms.SM4,
}  # fmt: skip


def _aead(key: ImportedKey, nonce: bytes) -> Cipher[modes.GCM]:
    cipher = facts(key.spec).cipher
    if cipher is None:
        raise CryptoFailure(f"{key.spec} keys do not encrypt symmetrically")
    return Cipher(_CIPHERS[cipher](key.pkcs8_der), modes.GCM(nonce))


def _header(key_id: str, key_version_id: str) -> bytes:
    ident = key_id.encode("ascii")
    version = key_version_id.encode("ascii")
    if len(ident) > 255 or len(version) != VERSION_ID_BYTES:
        raise CryptoFailure("key id or version id does not fit a ciphertext blob")
    return BLOB_MAGIC + bytes([len(ident)]) + ident + version


def read_blob_header(blob: bytes) -> tuple[BlobHeader, int]:
    """Which key and version a ciphertext blob names, and where its nonce starts."""
    size = blob[len(BLOB_MAGIC)] if len(blob) > len(BLOB_MAGIC) else 0
    end = len(BLOB_MAGIC) + 1 + size + VERSION_ID_BYTES
    if not blob.startswith(BLOB_MAGIC) or size == 0 or len(blob) < end + NONCE_BYTES + TAG_BYTES:
        raise CryptoFailure("it is not a ciphertext blob of this KMS")
    try:
        key_id = blob[len(BLOB_MAGIC) + 1 : len(BLOB_MAGIC) + 1 + size].decode("ascii")
        version = blob[end - VERSION_ID_BYTES : end].decode("ascii")
    except UnicodeDecodeError:
        raise CryptoFailure("it is not a ciphertext blob of this KMS") from None
    return BlobHeader(key_id, version), end


def seal(key: ImportedKey, key_id: str, key_version_id: str, plaintext: bytes, context: bytes) -> bytes:
    """A ciphertext blob of `plaintext` under `key`, naming its key and version."""
    header = _header(key_id, key_version_id)
    nonce = secrets.token_bytes(NONCE_BYTES)
    encryptor = _aead(key, nonce).encryptor()
    encryptor.authenticate_additional_data(header + context)
    body = encryptor.update(plaintext) + encryptor.finalize()
    return header + nonce + body + encryptor.tag


def unseal(key: ImportedKey, blob: bytes, context: bytes) -> bytes:
    """The plaintext of a blob `seal` made under `key` with `context`."""
    _, start = read_blob_header(blob)
    nonce, tag = blob[start : start + NONCE_BYTES], blob[-TAG_BYTES:]
    body = blob[start + NONCE_BYTES : -TAG_BYTES]
    decryptor = Cipher(_aead(key, nonce).algorithm, modes.GCM(nonce, tag)).decryptor()
    decryptor.authenticate_additional_data(blob[:start] + context)
    try:
        return decryptor.update(body) + decryptor.finalize()
    except InvalidTag:
        raise CryptoFailure(
            "it does not decrypt under this key (damaged, or another encryption context)"
        ) from None


# --- the operations ---------------------------------------------------------------------------------


def _context(name: str, value: str | None) -> bytes:
    """An EncryptionContext (JSON object of strings) in canonical form, bound into a blob; b"" for none."""
    parsed = parse_json(name, value) if value else {}
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
    ):
        raise KmsError(ErrorCode.INVALID_PARAMETER, f"{name} must be a JSON object of string values")
    return json.dumps(parsed, sort_keys=True, separators=(",", ":")).encode() if parsed else b""


def encrypt(
    engine: KmsEngine, key_id: str | None, plaintext: bytes, encryption_context: str | None,
    action: str = "Encrypt",
) -> tuple[Key, bytes]:
    """Encrypt with a symmetric key's primary version: the key, and the emulator's ciphertext blob.
    `action` is the call's, for its refusals (GenerateDataKey encrypts too)."""
    if not 1 <= len(plaintext) <= MAX_PLAINTEXT_BYTES:
        raise KmsError(ErrorCode.INVALID_PARAMETER, f"Plaintext must be 1 to {MAX_PLAINTEXT_BYTES} bytes")
    context = _context("EncryptionContext", encryption_context)
    used = engine.key_in_use(key_id, None, action)  # Encrypt always uses the primary version
    return used.key, seal(used.material, used.key.key_id, used.version_id, plaintext, context)


def decrypt(
    engine: KmsEngine, ciphertext_blob: str | None, encryption_context: str | None
) -> tuple[Key, bytes]:
    """The plaintext of a blob Encrypt or GenerateDataKey made; the blob names its key and version."""
    blob = b64decode_param("CiphertextBlob", require("CiphertextBlob", ciphertext_blob))
    context = _context("EncryptionContext", encryption_context)
    try:
        header, _ = read_blob_header(blob)
    except CryptoFailure as e:
        raise KmsError(ErrorCode.INVALID_PARAMETER, f"CiphertextBlob: {e}") from None
    used = engine.key_in_use(header.key_id, header.key_version_id, "Decrypt")
    try:
        return used.key, unseal(used.material, blob, context)
    except CryptoFailure as e:
        raise KmsError(ErrorCode.INVALID_PARAMETER, f"CiphertextBlob: {e}") from None


def generate_data_key(
    engine: KmsEngine, key_id: str | None, key_spec: str | None, number_of_bytes: int | None,
    encryption_context: str | None,
) -> tuple[Key, bytes, bytes]:
    """A fresh data key: (key, its plaintext bytes, the blob of their base64 text under the key),
    so that Decrypt of the blob answers GenerateDataKey's Plaintext."""
    if number_of_bytes is not None:
        if not 1 <= number_of_bytes <= MAX_DATA_KEY_BYTES:
            raise KmsError(ErrorCode.INVALID_PARAMETER, f"NumberOfBytes must be 1 to {MAX_DATA_KEY_BYTES}")
        size = number_of_bytes
    else:
        size = DATA_KEY_SPECS.get(key_spec or "AES_256", 0)
        if not size:
            raise KmsError(
                ErrorCode.INVALID_PARAMETER, f"KeySpec {shown(key_spec or '')} is not one of AES_256, AES_128"
            )
    data_key = secrets.token_bytes(size)
    key, blob = encrypt(engine, key_id, base64.b64encode(data_key), encryption_context, "GenerateDataKey")
    return key, data_key, blob


# --- the RPC handlers -----------------------------------------------------------------------------------


def _encrypt_call(engine: KmsEngine, p: Mapping[str, str]) -> dict[str, Any]:
    # Plaintext is taken as the text it is; Decrypt gives the same text back.
    plaintext = require("Plaintext", p.get("Plaintext")).encode("utf-8")
    key, blob = encrypt(engine, p.get("KeyId"), plaintext, p.get("EncryptionContext"))
    return {"KeyId": key.key_id, "KeyVersionId": key.primary_key_version, "CiphertextBlob": b64_text(blob)}


def _decrypt_call(engine: KmsEngine, p: Mapping[str, str]) -> dict[str, Any]:
    key, plaintext = decrypt(engine, p.get("CiphertextBlob"), p.get("EncryptionContext"))
    return {
        "KeyId": key.key_id,
        "KeyVersionId": key.primary_key_version,
        "Plaintext": plaintext.decode("utf-8", errors="replace"),
    }


def _generate_data_key_call(engine: KmsEngine, p: Mapping[str, str]) -> dict[str, Any]:
    key, data_key, blob = generate_data_key(
        engine, p.get("KeyId"), p.get("KeySpec"), parse_int("NumberOfBytes", p.get("NumberOfBytes")),
        p.get("EncryptionContext"),
    )  # fmt: skip
    return {
        "KeyId": key.key_id,
        "KeyVersionId": key.primary_key_version,
        "Plaintext": b64_text(data_key),
        "CiphertextBlob": b64_text(blob),
    }


class _Symmetric:
    """The emulator's half of the symmetric family (emulator.families.EmulatedFamily)."""

    def unwrap(
        self, spec: KeySpec, algorithm: WrappingAlgorithm, wrapping_private_der: bytes, blob: bytes
    ) -> ImportedKey:
        return unwrap(spec, algorithm, wrapping_private_der, blob)

    @property
    def operations(self) -> Mapping[str, Operation]:
        return _OPERATIONS


#: The vendor's quota group of all three: crypto (200/s).
_OPERATIONS: Mapping[str, Operation] = {
    "Encrypt": Operation(_encrypt_call, "crypto", "an asymmetric key encrypts with AsymmetricEncrypt"),
    "Decrypt": Operation(_decrypt_call, "crypto", "an asymmetric key decrypts with AsymmetricDecrypt"),
    "GenerateDataKey": Operation(_generate_data_key_call, "crypto"),
}

#: Named by specs.FAMILIES for the symmetric family.
FAMILY = _Symmetric()
