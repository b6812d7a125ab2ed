"""The emulator's rules, called on the engine directly (no RPC parsing, no HTTP)."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from emulator_support import (
    HARDWARE,
    SOFTWARE,
    START,
    FakeClock,
    create,
    imported,
    kms_error,
    material,
    new_material,
    wrap_for,
)

from provisioner import sm2, wrapping
from provisioner.emulator.models import KmsEngine
from provisioner.model import KeySpec, KeyState, WrappingAlgorithm
from provisioner.specs import Family, facts

RSA_WRAP = ("RSA_2048", "RSAES_OAEP_SHA_256_AES_256_ECB_PKCS7_PAD")
DIGEST = hashlib.sha256(b"message").digest()
DIGEST_B64 = base64.b64encode(DIGEST).decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- CreateKey ---------------------------------------------------------------------------------


def test_create_key_starts_pending_import_with_a_version(engine: KmsEngine) -> None:
    key = create(engine)
    assert re.fullmatch(r"key-[a-z0-9]{24}", key.key_id)
    assert key.arn == f"acs:kms:cn-hangzhou:1234567890123456:key/{key.key_id}"
    assert key.state is KeyState.PENDING_IMPORT
    assert re.fullmatch(r"[0-9a-f-]{36}", key.primary_key_version)
    assert (key.protection.value, key.instance_id, key.creation_date) == ("SOFTWARE", SOFTWARE, START)
    assert key.material_expire_time is None and key.delete_date is None


def test_create_key_in_hardware_instance_is_hsm(engine: KmsEngine) -> None:
    key = create(engine, KeySpec.RSA_4096)
    assert (key.protection.value, key.instance_id) == ("HSM", HARDWARE)


@pytest.mark.parametrize(
    ("kwargs", "code", "message"),
    [
        ({"key_spec": None}, "MissingParameter", "KeySpec"),
        ({"key_spec": "Aliyun_AES_128"}, "InvalidParameter", "KeySpec 'Aliyun_AES_128' is not one of"),
        ({"key_usage": "WRAP"}, "InvalidParameter", "KeyUsage 'WRAP' is not one of"),
        ({"origin": "Aliyun_KMS"}, "Unsupported.Origin", "Origin Aliyun_KMS is not supported"),
        ({"origin": None}, "Unsupported.Origin", "Origin Aliyun_KMS is not supported"),
        ({"instance_id": None}, "MissingParameter", "DKMSInstanceId"),
        ({"instance_id": "kst-nope"}, "InvalidParameter", "DKMSInstanceId kst-nope is not a KMS instance"),
        ({"protection_level": "HSM"}, "Unsupported.ProtectionLevel", "HSM is not available in software"),
        ({"key_spec": "RSA_4096"}, "InvalidParameter", "RSA_4096 is only available in a hardware instance"),
        ({"key_spec": "EC_SM2"}, "InvalidParameter", "EC_SM2 is only available in a hardware instance"),
        ({"description": "x" * 8193}, "InvalidParameter", "Description is longer than 8192"),
        ({"tags": [("aliyun:x", "v")]}, "InvalidParameter", "must not start with aliyun or acs:"),
    ],
)
def test_create_key_refusals(engine: KmsEngine, kwargs: dict[str, object], code: str, message: str) -> None:
    args: dict[str, object] = {
        "key_spec": "RSA_2048",
        "key_usage": "SIGN/VERIFY",
        "origin": "EXTERNAL",
        "instance_id": SOFTWARE,
    }
    args.update(kwargs)
    with kms_error(code, 400, message):
        engine.create_key(**args)  # type: ignore[arg-type]
    assert engine.list_keys().total_count == 0


def test_software_level_in_hardware_instance_is_refused(engine: KmsEngine) -> None:
    with kms_error("Unsupported.ProtectionLevel", 400, "SOFTWARE is not available in hardware instance"):
        engine.create_key(
            key_spec="RSA_2048", origin="EXTERNAL", instance_id=HARDWARE, protection_level="SOFTWARE"
        )


def test_create_key_with_tags(engine: KmsEngine) -> None:
    key = engine.create_key(
        key_spec="EC_P256",
        key_usage="SIGN/VERIFY",
        origin="EXTERNAL",
        instance_id=SOFTWARE,
        tags=[("b", "2"), ("a", "1")],
    )
    assert engine.list_resource_tags(key.key_id) == (key.key_id, [("a", "1"), ("b", "2")])


# --- DescribeKey and key references ---------------------------------------------------------------


def test_key_id_alias_and_arns_all_name_the_key(engine: KmsEngine) -> None:
    key = create(engine)
    engine.create_alias("alias/app", key.key_id)
    for ref in (key.key_id, "alias/app", key.arn, "acs:kms:cn-hangzhou:1234567890123456:alias/app"):
        assert engine.describe_key(ref).key_id == key.key_id


def test_unknown_key_and_alias(engine: KmsEngine) -> None:
    with kms_error("Forbidden.KeyNotFound", 404, "The specified Key is not found: key-nope"):
        engine.describe_key("key-nope")
    with kms_error("Forbidden.AliasNotFound", 404, "The specified Alias is not found: alias/nope"):
        engine.describe_key("alias/nope")
    with kms_error("Forbidden.KeyNotFound", 404, "not found"):
        engine.describe_key("acs:kms:cn-beijing:1234567890123456:key/key-x")
    with kms_error("MissingParameter", 400, "The input parameter KeyId that is mandatory"):
        engine.describe_key(None)


# --- ListKeys ------------------------------------------------------------------------------------


def test_list_keys_pages_in_creation_order(engine: KmsEngine) -> None:
    ids = [create(engine).key_id for _ in range(5)]
    first = engine.list_keys(1, 2)
    last = engine.list_keys(3, 2)
    assert [k.key_id for k in first.items] == ids[:2] and first.total_count == 5
    assert [k.key_id for k in last.items] == ids[4:]
    assert engine.list_keys(4, 2).items == []


def test_list_keys_filters(engine: KmsEngine) -> None:
    rsa_key = create(engine)
    ec_key, _ = imported(engine, KeySpec.EC_P256)
    sm2_key = create(engine, KeySpec.EC_SM2, "ENCRYPT/DECRYPT")

    def ids(filters: list[tuple[str, list[str]]]) -> set[str]:
        return {k.key_id for k in engine.list_keys(1, 100, filters).items}

    assert ids([("KeyState", ["Enabled"])]) == {ec_key.key_id}
    assert ids([("KeyState", ["PendingImport"]), ("KeySpec", ["RSA_2048", "EC_SM2"])]) == {
        rsa_key.key_id,
        sm2_key.key_id,
    }
    assert ids([("KeyUsage", ["ENCRYPT/DECRYPT"])]) == {sm2_key.key_id}
    assert ids([("ProtectionLevel", ["HSM"])]) == {sm2_key.key_id}
    assert ids([("CreatorType", ["User"])]) == {rsa_key.key_id, ec_key.key_id, sm2_key.key_id}
    assert ids([("CreatorType", ["Service"])]) == set()
    with kms_error("InvalidParameter", 400, "Filters key 'Colour' is not one of"):
        engine.list_keys(filters=[("Colour", ["red"])])
    with kms_error("InvalidParameter", 400, "Filters key KeyState needs at least one value"):
        engine.list_keys(filters=[("KeyState", [])])


@pytest.mark.parametrize(
    ("number", "size", "message"),
    [
        (0, 10, "PageNumber must be between 1 and 1000000000, got 0"),
        (10**12, 10, "PageNumber must be between 1 and 1000000000"),
        (1, 0, "PageSize must be between 1 and 100, got 0"),
        (1, 101, "PageSize must be between 1 and 100, got 101"),
    ],
)
def test_paging_bounds(engine: KmsEngine, number: int, size: int, message: str) -> None:
    with kms_error("InvalidParameter", 400, message):
        engine.list_keys(number, size)
    with kms_error("InvalidParameter", 400, message):
        engine.list_aliases(number, size)


# --- import: round trips ----------------------------------------------------------------------------


def _verify_outside(spec: KeySpec, public_pem: str, algorithm: str, signature: bytes) -> None:
    """Check a signature with the public key only, the way a relying party would."""
    if spec is KeySpec.EC_SM2:
        der = base64.b64decode("".join(public_pem.strip().splitlines()[1:-1]))
        assert sm2.verify_digest(sm2.parse_spki(der), DIGEST, signature)
        return
    public = serialization.load_pem_public_key(public_pem.encode())
    if isinstance(public, rsa.RSAPublicKey):
        pad: asym_padding.AsymmetricPadding = asym_padding.PKCS1v15()
        if algorithm == "RSA_PSS_SHA_256":
            pad = asym_padding.PSS(asym_padding.MGF1(hashes.SHA256()), salt_length=32)
        public.verify(signature, DIGEST, pad, Prehashed(hashes.SHA256()))
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(signature, DIGEST, ec.ECDSA(Prehashed(hashes.SHA256())))


SIGNING_CASES = [
    (KeySpec.RSA_2048, "RSA_PKCS1_SHA_256"),
    (KeySpec.RSA_2048, "RSA_PSS_SHA_256"),
    (KeySpec.RSA_3072, "RSA_PSS_SHA_256"),
    (KeySpec.RSA_4096, "RSA_PKCS1_SHA_256"),
    (KeySpec.EC_P256, "ECDSA_SHA_256"),
    (KeySpec.EC_P256K, "ECDSA_SHA_256"),
    (KeySpec.EC_SM2, "SM2DSA"),
]


@pytest.mark.parametrize(("spec", "algorithm"), SIGNING_CASES)
def test_import_round_trip_and_sign(engine: KmsEngine, spec: KeySpec, algorithm: str) -> None:
    key, m = imported(engine, spec)
    assert key.state is KeyState.ENABLED
    _, pem = engine.get_public_key(key.key_id, key.primary_key_version)
    assert pem == m.public_key_pem()
    _, signature = engine.asymmetric_sign(key.key_id, key.primary_key_version, algorithm, DIGEST_B64)
    _verify_outside(spec, pem, algorithm, signature)
    assert engine.asymmetric_verify(
        key.key_id, key.primary_key_version, algorithm, DIGEST_B64, b64(signature)
    )[1]
    other = b64(hashlib.sha256(b"other").digest())
    assert not engine.asymmetric_verify(
        key.key_id, key.primary_key_version, algorithm, other, b64(signature)
    )[1]


@pytest.mark.parametrize(
    ("spec", "algorithm"),
    [
        (KeySpec.RSA_2048, "RSAES_OAEP_SHA_1"),
        (KeySpec.RSA_3072, "RSAES_OAEP_SHA_256"),
        (KeySpec.EC_SM2, "SM2PKE"),
    ],
)
def test_encrypt_decrypt_round_trip(engine: KmsEngine, spec: KeySpec, algorithm: str) -> None:
    key, m = imported(engine, spec, "ENCRYPT/DECRYPT")
    version = key.primary_key_version
    _, ciphertext = engine.asymmetric_encrypt(key.key_id, version, algorithm, b64(b"secret data"))
    assert engine.asymmetric_decrypt(key.key_id, version, algorithm, b64(ciphertext))[1] == b"secret data"
    if facts(spec).family is Family.RSA:  # the ciphertext opens with the material outside the emulator too
        private = m.private_key()
        assert isinstance(private, rsa.RSAPrivateKey)
        digest: hashes.HashAlgorithm = hashes.SHA1() if algorithm.endswith("SHA_1") else hashes.SHA256()
        oaep = asym_padding.OAEP(asym_padding.MGF1(digest), digest, None)
        assert private.decrypt(ciphertext, oaep) == b"secret data"


def test_sm2_material_under_rsa_wrapping_is_accepted(engine: KmsEngine) -> None:
    key = create(engine, KeySpec.EC_SM2)
    params = engine.get_parameters_for_import(key.key_id, *RSA_WRAP)
    blob = wrapping.wrap_rsa_aes(params.public_key_der, material(KeySpec.EC_SM2).pkcs8_der())
    engine.import_key_material(key.key_id, b64(blob), params.import_token, 0)
    assert engine.describe_key(key.key_id).state is KeyState.ENABLED


def test_sm2_wrapping_only_for_sm2_keys(engine: KmsEngine) -> None:
    key = create(engine, KeySpec.EC_P256)
    with kms_error("InvalidParameter", 400, "SM2PKE_SM4_ECB wraps EC_SM2 material only"):
        engine.get_parameters_for_import(key.key_id, "EC_SM2", "SM2PKE_SM4_ECB")


def test_first_import_binds_the_material(engine: KmsEngine) -> None:
    key, first = imported(engine)
    blob, token = wrap_for(engine, key.key_id, material(KeySpec.RSA_2048, 1))
    with kms_error("InvalidKeyMaterial", 400, f"bound to the material with public key {first.fingerprint}"):
        engine.import_key_material(key.key_id, blob, token, 0)
    _, pem = engine.get_public_key(key.key_id, key.primary_key_version)
    assert pem == first.public_key_pem()
    blob, token = wrap_for(engine, key.key_id, first)
    engine.import_key_material(key.key_id, blob, token, 0)  # the same material: accepted


def test_material_of_another_spec_is_refused(engine: KmsEngine) -> None:
    key = create(engine, KeySpec.RSA_3072)
    blob, token = wrap_for(engine, key.key_id, material(KeySpec.RSA_2048))
    with kms_error("InvalidKeyMaterial", 400, "is RSA_3072 but the material is RSA_2048"):
        engine.import_key_material(key.key_id, blob, token, 0)
    key = create(engine, KeySpec.EC_P256)
    blob, token = wrap_for(engine, key.key_id, material(KeySpec.EC_P256K))
    with kms_error("InvalidKeyMaterial", 400, "is EC_P256 but the material is EC_P256K"):
        engine.import_key_material(key.key_id, blob, token, 0)
    assert engine.describe_key(key.key_id).state is KeyState.PENDING_IMPORT


def test_wrapped_garbage_is_invalid_key_material(engine: KmsEngine) -> None:
    key = create(engine)
    params = engine.get_parameters_for_import(key.key_id, *RSA_WRAP)
    blob = wrapping.wrap_rsa_aes(params.public_key_der, b"not a key at all")
    with kms_error("InvalidKeyMaterial", 400, "the unwrapped key material is not a private key"):
        engine.import_key_material(key.key_id, b64(blob), params.import_token, 0)


def test_material_must_be_pkcs8_der(engine: KmsEngine) -> None:
    m = material(KeySpec.RSA_2048)
    private = m.private_key()
    assert isinstance(private, rsa.RSAPrivateKey)
    pkcs1 = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key = create(engine)
    for wrong in (pkcs1, pem):
        params = engine.get_parameters_for_import(key.key_id, *RSA_WRAP)
        blob = wrapping.wrap_rsa_aes(params.public_key_der, wrong)
        with kms_error("InvalidKeyMaterial", 400, "not a private key: it is not a PKCS#8 DER private key"):
            engine.import_key_material(key.key_id, b64(blob), params.import_token, 0)


def test_encrypted_material_must_be_base64(engine: KmsEngine) -> None:
    key = create(engine)
    with kms_error("InvalidParameter", 400, "EncryptedKeyMaterial is not valid base64"):
        engine.import_key_material(key.key_id, "!!!", "token", 0)
    with kms_error("MissingParameter", 400, "ImportToken"):
        engine.import_key_material(key.key_id, "AAAA", None, 0)


# --- import tokens -------------------------------------------------------------------------------------


def test_token_is_reusable_within_its_life_and_expires_after_24h(engine: KmsEngine, clock: FakeClock) -> None:
    key = create(engine)
    m = material(KeySpec.RSA_2048)
    params = engine.get_parameters_for_import(key.key_id, *RSA_WRAP)
    assert params.token_expire_time == START.replace(day=2)
    blob = wrapping.wrap(m, params.public_key_der, WrappingAlgorithm.RSA_OAEP_AES_ECB)
    engine.import_key_material(key.key_id, blob, params.import_token, 0)
    clock.advance(hours=23, minutes=59)
    engine.import_key_material(key.key_id, blob, params.import_token, 0)
    clock.advance(minutes=1)
    with kms_error("ExpiredImportToken", 400, "the import token has expired"):
        engine.import_key_material(key.key_id, blob, params.import_token, 0)
    clock.advance(days=10)
    with kms_error("ExpiredImportToken", 400, "the import token has expired"):
        engine.import_key_material(key.key_id, blob, params.import_token, 0)


def test_token_of_another_key_is_refused(engine: KmsEngine) -> None:
    key, other = create(engine), create(engine)
    blob, token = wrap_for(engine, other.key_id, material(KeySpec.RSA_2048))
    with kms_error("InvalidImportToken", 400, f"the import token was not issued for key {key.key_id}"):
        engine.import_key_material(key.key_id, blob, token, 0)
    with kms_error("InvalidImportToken", 400, "not issued for key"):
        engine.import_key_material(key.key_id, blob, "made-up-token", 0)


def test_token_of_another_download_is_refused(engine: KmsEngine) -> None:
    key = create(engine)
    first = engine.get_parameters_for_import(key.key_id, *RSA_WRAP)
    second = engine.get_parameters_for_import(key.key_id, *RSA_WRAP)
    assert first.public_key_der != second.public_key_der
    blob = wrapping.wrap(
        material(KeySpec.RSA_2048), second.public_key_der, WrappingAlgorithm.RSA_OAEP_AES_ECB
    )
    with kms_error(
        "InvalidImportToken", 400, "not wrapped with the public key issued with this import token"
    ):
        engine.import_key_material(key.key_id, blob, first.import_token, 0)
    engine.import_key_material(key.key_id, blob, second.import_token, 0)


@pytest.mark.parametrize(
    ("spec", "algorithm", "code", "message"),
    [
        (
            "RSA_2048",
            "SM2PKE_SM4_ECB",
            "InvalidParameter",
            "WrappingAlgorithm SM2PKE_SM4_ECB needs WrappingKeySpec EC_SM2, not RSA_2048",
        ),
        ("EC_SM2", RSA_WRAP[1], "InvalidParameter", "needs WrappingKeySpec RSA_2048, not EC_SM2"),
        ("RSA_3072", RSA_WRAP[1], "InvalidParameter", "WrappingKeySpec 'RSA_3072' is not one of"),
        ("RSA_2048", "RSAES_OAEP_SHA_9", "InvalidParameter", "WrappingAlgorithm 'RSAES_OAEP_SHA_9' is not"),
        (None, RSA_WRAP[1], "MissingParameter", "WrappingKeySpec"),
        ("RSA_2048", None, "MissingParameter", "WrappingAlgorithm"),
    ],
)
def test_get_parameters_for_import_refusals(
    engine: KmsEngine, spec: str | None, algorithm: str | None, code: str, message: str
) -> None:
    key = create(engine)
    with kms_error(code, 400, message):
        engine.get_parameters_for_import(key.key_id, spec, algorithm)


def test_tokens_are_stored_hashed_only(tmp_path: Path) -> None:
    db = tmp_path / "kms.db"
    engine = KmsEngine(str(db))
    key = create(engine)
    token = engine.get_parameters_for_import(key.key_id, *RSA_WRAP).import_token
    engine.close()
    data = _file_bytes(db)
    assert token.encode() not in data
    assert hashlib.sha256(token.encode()).hexdigest().encode() in data


# --- expiry, deletion of material ---------------------------------------------------------------------


def test_expire_in_the_past_is_refused(engine: KmsEngine) -> None:
    key = create(engine)
    blob, token = wrap_for(engine, key.key_id, material(KeySpec.RSA_2048))
    for absurd in (-1, 2**70):
        with kms_error("InvalidParameter", 400, "KeyMaterialExpireUnix must be between 0 and 253402300799"):
            engine.import_key_material(key.key_id, blob, token, absurd)
    past = int(START.timestamp()) - 1
    with kms_error("InvalidParameter", 400, f"KeyMaterialExpireUnix {past} is earlier than the current time"):
        engine.import_key_material(key.key_id, blob, token, past)


def test_material_expiry_returns_the_key_to_pending_import(engine: KmsEngine, clock: FakeClock) -> None:
    expire = int(START.timestamp()) + 3600
    key, m = imported(engine, expire=expire)
    assert key.state is KeyState.ENABLED and key.material_expire_time is not None
    clock.advance(hours=1)
    expired = engine.describe_key(key.key_id)
    assert expired.state is KeyState.PENDING_IMPORT
    assert expired.material_expire_time == key.material_expire_time  # still says when it expired
    with kms_error("Rejected.PendingImport", 409, f"key {key.key_id} is PendingImport"):
        engine.asymmetric_sign(key.key_id, key.primary_key_version, "RSA_PSS_SHA_256", DIGEST_B64)
    blob, token = wrap_for(engine, key.key_id, m)
    engine.import_key_material(key.key_id, blob, token, 0)
    restored = engine.describe_key(key.key_id)
    assert (restored.state, restored.material_expire_time) == (KeyState.ENABLED, None)
    engine.asymmetric_sign(key.key_id, key.primary_key_version, "RSA_PSS_SHA_256", DIGEST_B64)


def test_expiry_during_pending_deletion_keeps_pending_deletion(engine: KmsEngine, clock: FakeClock) -> None:
    key, _ = imported(engine, expire=int(START.timestamp()) + 60)
    engine.schedule_key_deletion(key.key_id, 7)
    clock.advance(minutes=5)
    assert engine.describe_key(key.key_id).state is KeyState.PENDING_DELETION
    engine.cancel_key_deletion(key.key_id)
    assert engine.describe_key(key.key_id).state is KeyState.PENDING_IMPORT


def test_reimport_resets_expiry(engine: KmsEngine, clock: FakeClock) -> None:
    key, m = imported(engine, expire=int(START.timestamp()) + 60)
    blob, token = wrap_for(engine, key.key_id, m)
    engine.import_key_material(key.key_id, blob, token, int(START.timestamp()) + 7200)
    clock.advance(minutes=30)
    assert engine.describe_key(key.key_id).state is KeyState.ENABLED


def test_delete_key_material(engine: KmsEngine) -> None:
    key, m = imported(engine)
    engine.delete_key_material(key.key_id)
    after = engine.describe_key(key.key_id)
    assert (after.state, after.material_expire_time) == (KeyState.PENDING_IMPORT, None)
    with kms_error("Rejected.PendingImport", 409, "is PendingImport"):
        engine.get_public_key(key.key_id, key.primary_key_version)
    blob, token = wrap_for(engine, key.key_id, material(KeySpec.RSA_2048, 1))
    with kms_error("InvalidKeyMaterial", 400, "only that material can be imported again"):
        engine.import_key_material(key.key_id, blob, token, 0)
    blob, token = wrap_for(engine, key.key_id, m)
    engine.import_key_material(key.key_id, blob, token, 0)
    assert engine.describe_key(key.key_id).state is KeyState.ENABLED


def test_disabled_key_stays_disabled_on_reimport(engine: KmsEngine) -> None:
    key, m = imported(engine)
    engine.disable_key(key.key_id)
    blob, token = wrap_for(engine, key.key_id, m)
    engine.import_key_material(key.key_id, blob, token, 0)
    assert engine.describe_key(key.key_id).state is KeyState.DISABLED


def test_no_import_in_pending_deletion(engine: KmsEngine) -> None:
    key = create(engine)
    blob, token = wrap_for(engine, key.key_id, material(KeySpec.RSA_2048))
    engine.schedule_key_deletion(key.key_id, 7)
    with kms_error(
        "Rejected.StateModifiedFailed", 409, "is PendingDeletion; ImportKeyMaterial is not allowed"
    ):
        engine.import_key_material(key.key_id, blob, token, 0)
    with kms_error("Rejected.StateModifiedFailed", 409, "GetParametersForImport is not allowed"):
        engine.get_parameters_for_import(key.key_id, *RSA_WRAP)


# --- crypto refusals ------------------------------------------------------------------------------------


def test_crypto_refused_unless_enabled(engine: KmsEngine) -> None:
    key, _ = imported(engine)
    version = key.primary_key_version
    engine.disable_key(key.key_id)
    with kms_error("Rejected.Disabled", 409, f"key {key.key_id} is Disabled"):
        engine.asymmetric_sign(key.key_id, version, "RSA_PSS_SHA_256", DIGEST_B64)
    with kms_error("Rejected.Disabled", 409, "is Disabled"):
        engine.get_public_key(key.key_id, version)
    engine.schedule_key_deletion(key.key_id, 30)
    with kms_error("Rejected.PendingDeletion", 409, "is PendingDeletion"):
        engine.asymmetric_verify(key.key_id, version, "RSA_PSS_SHA_256", DIGEST_B64, "AAAA")
    pending = create(engine)
    with kms_error("Rejected.PendingImport", 409, "is PendingImport"):
        engine.get_public_key(pending.key_id, pending.primary_key_version)


def test_crypto_parameter_rules(engine: KmsEngine) -> None:
    key, _ = imported(engine)
    version = key.primary_key_version
    with kms_error(
        "Rejected.UnsupportedOperation", 400, "AsymmetricEncrypt needs a key of usage ENCRYPT/DECRYPT"
    ):
        engine.asymmetric_encrypt(key.key_id, version, "RSAES_OAEP_SHA_256", b64(b"x"))
    with kms_error("InvalidParameter", 400, "Algorithm ECDSA_SHA_256 does not fit a RSA_2048 key"):
        engine.asymmetric_sign(key.key_id, version, "ECDSA_SHA_256", DIGEST_B64)
    with kms_error("InvalidParameter", 400, "Digest must be the 32-byte digest, got 5 bytes"):
        engine.asymmetric_sign(key.key_id, version, "RSA_PSS_SHA_256", b64(b"short"))
    with kms_error("Forbidden.KeyNotFound", 404, "The specified key version is not found"):
        engine.asymmetric_sign(key.key_id, "not-a-version", "RSA_PSS_SHA_256", DIGEST_B64)
    with kms_error("MissingParameter", 400, "KeyVersionId"):
        engine.get_public_key(key.key_id, None)
    with kms_error("MissingParameter", 400, "Algorithm"):
        engine.asymmetric_sign(key.key_id, version, None, DIGEST_B64)
    enc, _ = imported(engine, KeySpec.RSA_2048, "ENCRYPT/DECRYPT")
    with kms_error("InvalidParameter", 400, "Plaintext must be 1 to 214 bytes for RSA_2048"):
        engine.asymmetric_encrypt(enc.key_id, enc.primary_key_version, "RSAES_OAEP_SHA_1", b64(b"x" * 215))
    with kms_error("InvalidParameter", 400, "CiphertextBlob: ciphertext does not decrypt"):
        engine.asymmetric_decrypt(enc.key_id, enc.primary_key_version, "RSAES_OAEP_SHA_1", b64(b"x" * 256))


def test_ec_encryption_is_unsupported(engine: KmsEngine) -> None:
    key, _ = imported(engine, KeySpec.EC_P256, "ENCRYPT/DECRYPT")
    with kms_error(
        "Rejected.UnsupportedOperation", 400, "AsymmetricEncrypt is not supported for EC_P256 keys"
    ):
        engine.asymmetric_encrypt(key.key_id, key.primary_key_version, "SM2PKE", b64(b"x"))


def test_key_versions(engine: KmsEngine) -> None:
    key = create(engine)
    page = engine.list_key_versions(key.key_id)
    assert [(v.key_version_id, v.creation_date) for v in page.items] == [(key.primary_key_version, START)]
    assert engine.describe_key_version(key.key_id, key.primary_key_version).key_id == key.key_id
    with kms_error("Forbidden.KeyNotFound", 404, "key version is not found"):
        engine.describe_key_version(key.key_id, "v2")


# --- aliases ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("app", "must be alias/ followed by"),
        ("alias/", "must be alias/ followed by"),
        ("alias/a b", "must be alias/ followed by"),
        ("alias/" + "a" * 256, "must be alias/ followed by"),
        ("alias/acs/ecs", "must not start with alias/acs"),
        ("alias/ACSx", "must not start with alias/acs"),
    ],
)
def test_alias_name_rules(engine: KmsEngine, name: str, message: str) -> None:
    key = create(engine)
    with kms_error("InvalidParameter", 400, message):
        engine.create_alias(name, key.key_id)


def test_alias_lifecycle(engine: KmsEngine) -> None:
    a, b = create(engine), create(engine)
    engine.create_alias("alias/x/y_z-1", a.key_id)
    engine.create_alias("alias/second", a.key_id)
    with kms_error("AliasAlreadyExists", 400, "The alias already exists: alias/second"):
        engine.create_alias("alias/second", b.key_id)
    engine.update_alias("alias/second", b.key_id)
    assert [x.alias_name for x in engine.list_aliases_by_key_id(a.key_id).items] == ["alias/x/y_z-1"]
    assert [x.key_id for x in engine.list_aliases().items] == [a.key_id, b.key_id]
    with kms_error("Forbidden.AliasNotFound", 404, "alias/none"):
        engine.update_alias("alias/none", a.key_id)
    with kms_error("Forbidden.KeyNotFound", 404, "key-none"):
        engine.update_alias("alias/second", "key-none")
    engine.delete_alias("alias/second")
    with kms_error("Forbidden.AliasNotFound", 404, "alias/second"):
        engine.delete_alias("alias/second")
    assert engine.list_aliases().total_count == 1


# --- tags -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        (("", "v"), "tag key '' must be 1 to 128"),
        (("k" * 129, "v"), "must be 1 to 128"),
        (("a#b", "v"), "tag key 'a#b' must be 1 to 128"),
        (("k", ""), "value of tag 'k' must be 1 to 128"),
        (("k", "v!"), "value of tag 'k'"),
        (("Aliyun-x", "v"), "must not start with aliyun or acs:"),
        (("acs:x", "v"), "must not start with aliyun or acs:"),
    ],
)
def test_tag_rules(engine: KmsEngine, tag: tuple[str, str], message: str) -> None:
    key = create(engine)
    with kms_error("InvalidParameter", 400, message):
        engine.tag_resource(key.key_id, [tag])


def test_tag_limit_and_overwrite(engine: KmsEngine) -> None:
    key = create(engine)
    engine.tag_resource(key.key_id, [(f"k{i}", "v") for i in range(20)])
    engine.tag_resource(key.key_id, [("k0", "new value /\\_-.+=:@")])  # overwriting adds none
    with kms_error("Rejected.LimitExceeded", 400, "a key carries at most 20 tags"):
        engine.tag_resource(key.key_id, [("k20", "v")])
    engine.untag_resource(key.key_id, ["k1", "absent"])
    engine.tag_resource(key.key_id, [("k20", "v")])
    tags = dict(engine.list_resource_tags(key.key_id)[1])
    assert len(tags) == 20 and tags["k0"] == "new value /\\_-.+=:@" and "k1" not in tags


def test_tag_resources_is_all_or_nothing(engine: KmsEngine) -> None:
    key = create(engine)
    with kms_error("Forbidden.KeyNotFound", 404, "key-missing"):
        engine.tag_resources("key", [key.key_id, "key-missing"], [("a", "1")])
    assert engine.list_resource_tags(key.key_id)[1] == []
    with kms_error("InvalidParameter", 400, "ResourceType 'secret' is not supported"):
        engine.tag_resources("secret", [key.key_id], [("a", "1")])
    with kms_error("MissingParameter", 400, "Tag.1.Key"):
        engine.tag_resources("key", [key.key_id], [])


def test_untag_resources(engine: KmsEngine) -> None:
    a, b = create(engine), create(engine)
    engine.tag_resources("key", [a.key_id, b.key_id], [("x", "1"), ("y", "2")])
    engine.untag_resources("key", [a.key_id], ["x"])
    engine.untag_resources("key", [b.key_id], [], all_tags=True)
    assert engine.list_resource_tags(a.key_id)[1] == [("y", "2")]
    assert engine.list_resource_tags(b.key_id)[1] == []
    with kms_error("MissingParameter", 400, "TagKey.1"):
        engine.untag_resources("key", [a.key_id], [])


def test_list_tag_resources_by_ids_and_by_tags(engine: KmsEngine) -> None:
    a, b, c = create(engine), create(engine), create(engine)
    engine.tag_resource(a.key_id, [("stack", "s1"), ("name", "a"), ("env", "prod")])
    engine.tag_resource(b.key_id, [("stack", "s1"), ("name", "b")])
    engine.tag_resource(c.key_id, [("stack", "s2"), ("name", "c"), ("env", "prod")])
    rows, token = engine.list_tag_resources("key", [b.key_id, "key-unknown"])
    assert token == "" and {(r.resource_id, r.tag_key) for r in rows} == {
        (b.key_id, "stack"),
        (b.key_id, "name"),
    }
    rows, _ = engine.list_tag_resources("key", tags=[("stack", "s1")])
    # every tag of each matching key, not only the matching tag
    assert [(r.resource_id, r.tag_key) for r in rows] == [
        (a.key_id, "env"),
        (a.key_id, "name"),
        (a.key_id, "stack"),
        (b.key_id, "name"),
        (b.key_id, "stack"),
    ]
    rows, _ = engine.list_tag_resources("key", tags=[("stack", "s1"), ("env", "prod")])
    assert {r.resource_id for r in rows} == {a.key_id}
    rows, _ = engine.list_tag_resources("key", [c.key_id], [("env", "prod")])
    assert {r.resource_id for r in rows} == {c.key_id}
    with kms_error("InvalidParameter", 400, "at most 50 ResourceId values, got 51"):
        engine.list_tag_resources("key", [f"key-{i}" for i in range(51)])
    with kms_error("MissingParameter", 400, "ResourceId.1 or Tag.1.Key"):
        engine.list_tag_resources("key")
    with kms_error("InvalidParameter", 400, "NextToken is not one this service issued"):
        engine.list_tag_resources("key", [a.key_id], next_token="%%%")
    with kms_error("InvalidParameter", 400, "NextToken is not one this service issued"):
        engine.list_tag_resources("key", [a.key_id], next_token=base64.urlsafe_b64encode(b"-5").decode())


def test_list_tag_resources_pages_by_200(engine: KmsEngine) -> None:
    ids = [create(engine).key_id for _ in range(11)]
    for key_id in ids:
        engine.tag_resource(key_id, [("stack", "big")] + [(f"t{i:02}", "v") for i in range(19)])
    seen: list[tuple[str, str]] = []
    token: str | None = None
    pages = 0
    while True:
        rows, token = engine.list_tag_resources("key", tags=[("stack", "big")], next_token=token)
        pages += 1
        assert len(rows) <= 200
        seen.extend((r.resource_id, r.tag_key) for r in rows)
        if not token:
            break
    assert pages == 2 and len(seen) == 220 == len(set(seen))


# --- key lifecycle ---------------------------------------------------------------------------------


def test_enable_disable(engine: KmsEngine) -> None:
    key, _ = imported(engine)
    engine.disable_key(key.key_id)
    engine.disable_key(key.key_id)
    assert engine.describe_key(key.key_id).state is KeyState.DISABLED
    engine.enable_key(key.key_id)
    assert engine.describe_key(key.key_id).state is KeyState.ENABLED
    pending = create(engine)
    with kms_error("Rejected.StateModifiedFailed", 409, "is PendingImport; only an Enabled or Disabled key"):
        engine.enable_key(pending.key_id)


def test_schedule_and_cancel_deletion(engine: KmsEngine, clock: FakeClock) -> None:
    key, _ = imported(engine)
    engine.create_alias("alias/doomed", key.key_id)
    for days in (6, 367):
        with kms_error("InvalidParameter", 400, f"PendingWindowInDays must be between 7 and 366, got {days}"):
            engine.schedule_key_deletion(key.key_id, days)
    with kms_error("MissingParameter", 400, "PendingWindowInDays"):
        engine.schedule_key_deletion(key.key_id, None)
    with kms_error("Rejected.StateModifiedFailed", 409, "is Enabled, not PendingDeletion"):
        engine.cancel_key_deletion(key.key_id)
    scheduled = engine.schedule_key_deletion(key.key_id, 7)
    assert scheduled.state is KeyState.PENDING_DELETION and scheduled.delete_date == START.replace(day=8)
    with kms_error("Rejected.StateModifiedFailed", 409, "is already PendingDeletion"):
        engine.schedule_key_deletion(key.key_id, 7)
    engine.cancel_key_deletion(key.key_id)
    assert engine.describe_key(key.key_id).state is KeyState.ENABLED
    engine.schedule_key_deletion(key.key_id, 7)
    clock.advance(days=7)
    with kms_error("Forbidden.KeyNotFound", 404, key.key_id):
        engine.describe_key(key.key_id)
    assert engine.list_aliases().total_count == 0


def test_deletion_protection_blocks_schedule(engine: KmsEngine) -> None:
    key = create(engine)
    engine.set_deletion_protection(key.arn, True, "keep")
    described = engine.describe_key(key.key_id)
    assert (described.deletion_protection, described.deletion_protection_description) == (True, "keep")
    with kms_error("Forbidden.NoPermission", 403, "has deletion protection enabled"):
        engine.schedule_key_deletion(key.key_id, 7)
    engine.set_deletion_protection(key.arn, False)
    engine.schedule_key_deletion(key.key_id, 7)
    with kms_error("InvalidParameter", 400, "ProtectedResourceArn 'key-x' is not a key Arn"):
        engine.set_deletion_protection("key-x", True)
    with kms_error("MissingParameter", 400, "EnableDeletionProtection"):
        engine.set_deletion_protection(key.arn, None)


def test_update_description(engine: KmsEngine) -> None:
    key = create(engine)
    engine.update_key_description(key.key_id, "new")
    assert engine.describe_key(key.key_id).description == "new"
    engine.update_key_description(key.key_id, "")
    assert engine.describe_key(key.key_id).description == ""
    with kms_error("MissingParameter", 400, "Description"):
        engine.update_key_description(key.key_id, None)


# --- instances ---------------------------------------------------------------------------------------


def test_instances(clock: FakeClock) -> None:
    engine = KmsEngine(instances={"kst-a": "hardware"}, clock=clock)
    try:
        page = engine.list_kms_instances()
        assert [(i.instance_id, i.kind) for i in page.items] == [("kst-a", "hardware")]
        create_args = {"key_spec": "EC_SM2", "origin": "EXTERNAL", "instance_id": "kst-a"}
        engine.create_key(**create_args)
        instance, count = engine.get_kms_instance("kst-a")
        assert (instance.arn, count) == ("acs:kms:cn-hangzhou:1234567890123456:keystore/kst-a", 1)
        with kms_error("InvalidParameter", 400, "KmsInstanceId kst-local-software is not a KMS instance"):
            engine.get_kms_instance(SOFTWARE)
    finally:
        engine.close()
    with pytest.raises(ValueError, match="kind must be software or hardware"):
        KmsEngine(instances={"kst-a": "cloud"})


# --- persistence and private material ---------------------------------------------------------------


def test_state_survives_reopen(tmp_path: Path, clock: FakeClock) -> None:
    db = str(tmp_path / "kms.db")
    engine = KmsEngine(db, clock=clock)
    key, _ = imported(engine, KeySpec.EC_P256)
    engine.create_alias("alias/kept", key.key_id)
    engine.tag_resource(key.key_id, [("t", "v")])
    engine.disable_key(key.key_id)
    engine.close()
    engine = KmsEngine(db, clock=clock)
    try:
        again = engine.describe_key("alias/kept")
        assert (again.key_id, again.state) == (key.key_id, KeyState.DISABLED)
        assert engine.list_resource_tags(key.key_id)[1] == [("t", "v")]
        engine.enable_key(key.key_id)
        engine.asymmetric_sign(key.key_id, key.primary_key_version, "ECDSA_SHA_256", DIGEST_B64)
    finally:
        engine.close()


def _file_bytes(db: Path) -> bytes:
    """The database with its write-ahead log and journal, if any: everything SQLite wrote."""
    data = db.read_bytes()
    for suffix in ("-journal", "-wal"):
        extra = db.with_name(db.name + suffix)
        if extra.exists():
            data += extra.read_bytes()
    return data


def _private_fragments(spec: KeySpec, m: object) -> list[bytes]:
    from provisioner.material import PrivateMaterial

    assert isinstance(m, PrivateMaterial)
    key = m.private_key()
    if isinstance(key, int):
        return [sm2.scalar_bytes(key)]
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.private_numbers()
        return [m.pkcs8_der(), numbers.d.to_bytes(256, "big")[:32], numbers.p.to_bytes(128, "big")[:32]]
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return [m.pkcs8_der(), key.private_numbers().private_value.to_bytes(32, "big")]


@pytest.mark.parametrize("spec", [KeySpec.RSA_2048, KeySpec.EC_P256, KeySpec.EC_SM2])
def test_unpersisted_private_keys_never_reach_the_file(
    tmp_path: Path, clock: FakeClock, spec: KeySpec
) -> None:
    db = tmp_path / "kms.db"
    engine = KmsEngine(str(db), clock=clock, persist_private_keys=False)
    m = new_material(spec)
    key = create(engine, spec)
    blob, token = wrap_for(engine, key.key_id, m)
    engine.import_key_material(key.key_id, blob, token, 0)
    algorithm = {KeySpec.RSA_2048: "RSA_PSS_SHA_256", KeySpec.EC_P256: "ECDSA_SHA_256"}.get(spec, "SM2DSA")
    engine.asymmetric_sign(key.key_id, key.primary_key_version, algorithm, DIGEST_B64)  # works in-process
    while_open = _file_bytes(db)
    engine.close()
    data = _file_bytes(db)
    for fragment in _private_fragments(spec, m):
        assert fragment not in data and fragment not in while_open
    assert m.public_key_der() in data
    assert token.encode() not in data

    engine = KmsEngine(str(db), clock=clock, persist_private_keys=False)
    try:
        assert engine.describe_key(key.key_id).state is KeyState.ENABLED
        assert engine.get_public_key(key.key_id, key.primary_key_version)[1] == m.public_key_pem()
        with kms_error("Rejected.UnsupportedOperation", 400, "was kept only in the memory of the process"):
            engine.asymmetric_sign(key.key_id, key.primary_key_version, algorithm, DIGEST_B64)
        blob, token = wrap_for(engine, key.key_id, m)
        engine.import_key_material(key.key_id, blob, token, 0)
        engine.asymmetric_sign(key.key_id, key.primary_key_version, algorithm, DIGEST_B64)
    finally:
        engine.close()


def test_persisted_private_keys_sign_after_reopen(tmp_path: Path, clock: FakeClock) -> None:
    db = str(tmp_path / "kms.db")
    engine = KmsEngine(db, clock=clock)
    key, _ = imported(engine, KeySpec.EC_SM2)
    engine.close()
    engine = KmsEngine(db, clock=clock)
    try:
        _, signature = engine.asymmetric_sign(key.key_id, key.primary_key_version, "SM2DSA", DIGEST_B64)
        assert engine.asymmetric_verify(
            key.key_id, key.primary_key_version, "SM2DSA", DIGEST_B64, b64(signature)
        )[1]
    finally:
        engine.close()


def test_deleted_material_is_scrubbed_from_the_file(tmp_path: Path) -> None:
    db = tmp_path / "kms.db"
    engine = KmsEngine(str(db))
    m = new_material(KeySpec.EC_P256)
    key = create(engine, KeySpec.EC_P256)
    blob, token = wrap_for(engine, key.key_id, m)
    engine.import_key_material(key.key_id, blob, token, 0)
    assert m.pkcs8_der() in _file_bytes(db)  # persisted while the key has material
    engine.delete_key_material(key.key_id)
    engine.close()
    assert m.pkcs8_der() not in _file_bytes(db)


def test_schema_version_is_checked(tmp_path: Path) -> None:
    db = tmp_path / "kms.db"
    KmsEngine(str(db)).close()
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE meta SET value = '0' WHERE name = 'schema_version'")
    conn.close()
    with pytest.raises(ValueError, match="emulator schema version 0, expected 1"):
        KmsEngine(str(db))


def test_failed_operation_changes_nothing_in_the_file(tmp_path: Path) -> None:
    db = tmp_path / "kms.db"
    engine = KmsEngine(str(db))
    key = create(engine)
    with kms_error("Rejected.LimitExceeded", 400, "at most 20 tags"):
        engine.tag_resources("key", [key.key_id], [(f"k{i}", "v") for i in range(21)])
    engine.close()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT COUNT(*) FROM tags").fetchone() == (0,)
    finally:
        conn.close()


@pytest.mark.slow
def test_crash_mid_operation_leaves_no_half_change(tmp_path: Path) -> None:
    db = tmp_path / "kms.db"
    # The child creates one key, then dies (os._exit: no cleanup, no rollback) half-way through a
    # second CreateKey, after the key row is written and before its tags are.
    script = textwrap.dedent(
        f"""
        import os
        from provisioner.emulator.models import KmsEngine
        engine = KmsEngine({str(db)!r})
        engine.create_key(key_spec="RSA_2048", origin="EXTERNAL", instance_id="kst-local-software")
        engine._put_tags = lambda *args: os._exit(3)
        engine.create_key(
            key_spec="RSA_2048", origin="EXTERNAL", instance_id="kst-local-software", tags=[("a", "b")]
        )
        """
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    result = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, timeout=120, check=False)
    assert result.returncode == 3
    engine = KmsEngine(str(db))
    try:
        assert engine.list_keys().total_count == 1
        assert engine.list_tag_resources("key", tags=[("a", "b")]) == ([], "")
    finally:
        engine.close()


def test_concurrent_operations(engine: KmsEngine) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(10):
                key = create(engine)
                engine.tag_resource(key.key_id, [("t", "v")])
                engine.describe_key(key.key_id)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and engine.list_keys(1, 100).total_count == 40


def test_clock_must_be_aware() -> None:
    from datetime import datetime

    engine = KmsEngine(clock=lambda: datetime(2026, 1, 1))
    try:
        with pytest.raises(ValueError, match="timezone-aware"):
            engine.list_keys()
    finally:
        engine.close()
