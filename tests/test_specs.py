"""The spec table against the code that reads it: every KeySpec has a row, and each row's facts are
what material parsing, wrapping, the emulator and apply actually do."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable

import pytest
from emulator_support import HARDWARE, SOFTWARE, kms_error, material

from provisioner import wrapping
from provisioner.apply import READ_BACK
from provisioner.emulator import keyops
from provisioner.emulator.models import KmsEngine
from provisioner.manifest import manifest_schema
from provisioner.material import parse_private_key, spec_of_spki
from provisioner.model import KeySpec, KeyUsage, ProtectionLevel, WrappingAlgorithm
from provisioner.specs import SPECS, Family, facts, importable_specs, wrapping_key_specs

ALL = list(KeySpec)
#: The specs of asymmetric material: the tests below that sign, wrap PKCS#8 or read public keys.
ASYMMETRIC = [s for s in KeySpec if facts(s).family is not Family.SYMMETRIC]
DIGEST_B64 = base64.b64encode(hashlib.sha256(b"message").digest()).decode()
INSTANCES = {ProtectionLevel.SOFTWARE: SOFTWARE, ProtectionLevel.HSM: HARDWARE}
#: How each wrapping algorithm wraps a payload, without wrap()'s pairing check.
WRAP: dict[WrappingAlgorithm, Callable[[bytes, bytes], bytes]] = {
    WrappingAlgorithm.RSA_OAEP_AES_ECB: wrapping.wrap_rsa_aes,
    WrappingAlgorithm.SM2PKE_SM4_ECB: wrapping.wrap_sm2_sm4,
}


def test_every_key_spec_has_exactly_one_row() -> None:
    assert list(SPECS) == ALL
    assert all(row.spec is spec for spec, row in SPECS.items())


#: The vendor's facts, written out by hand (DESIGN section 3, the BYOK guide, kms-api-notes.md), so that
#: a wrong row fails here and not only in code that reads the same row.
VENDOR = {
    # spec: (family, bits or curve, protections, client wrapping, sign algorithms, encrypt algorithms)
    "RSA_2048": ("asymmetric-rsa", 2048, "SOFTWARE HSM", "RSAES_OAEP_SHA_256_AES_256_ECB_PKCS7_PAD",
                 "RSA_PSS_SHA_256 RSA_PKCS1_SHA_256", "RSAES_OAEP_SHA_1 RSAES_OAEP_SHA_256"),
    "RSA_3072": ("asymmetric-rsa", 3072, "SOFTWARE HSM", "RSAES_OAEP_SHA_256_AES_256_ECB_PKCS7_PAD",
                 "RSA_PSS_SHA_256 RSA_PKCS1_SHA_256", "RSAES_OAEP_SHA_1 RSAES_OAEP_SHA_256"),
    "RSA_4096": ("asymmetric-rsa", 4096, "HSM", "RSAES_OAEP_SHA_256_AES_256_ECB_PKCS7_PAD",
                 "RSA_PSS_SHA_256 RSA_PKCS1_SHA_256", "RSAES_OAEP_SHA_1 RSAES_OAEP_SHA_256"),
    "EC_P256": ("asymmetric-ec", "secp256r1", "SOFTWARE HSM", "RSAES_OAEP_SHA_256_AES_256_ECB_PKCS7_PAD",
                "ECDSA_SHA_256", ""),
    "EC_P256K": ("asymmetric-ec", "secp256k1", "SOFTWARE HSM", "RSAES_OAEP_SHA_256_AES_256_ECB_PKCS7_PAD",
                 "ECDSA_SHA_256", ""),
    "EC_SM2": ("asymmetric-sm2", "sm2", "HSM", "SM2PKE_SM4_ECB", "SM2DSA", "SM2PKE"),
}  # fmt: skip


@pytest.mark.parametrize("spec", ASYMMETRIC)
def test_row_says_what_the_vendor_says(spec: KeySpec) -> None:
    row = facts(spec)
    got = (
        row.family.value, row.bits or row.curve, " ".join(sorted(row.protections, reverse=True)),
        row.wrapping_algorithm.value, " ".join(row.sign_algorithms), " ".join(row.encrypt_algorithms),
    )  # fmt: skip
    assert got == VENDOR[spec.value]
    assert row.verification.value == "public key fingerprint"


def test_manifest_schema_lists_the_tables_specs() -> None:
    spec = manifest_schema()["$defs"]["key"]["properties"]["spec"]
    assert spec["enum"] == [s.value for s in SPECS]
    software, hsm_only = spec["description"].split("; HSM also ")

    def named(text: str) -> set[str]:
        return {s for s in spec["enum"] if re.search(rf"\b{s}\b", text)}

    soft, hsm = importable_specs(ProtectionLevel.SOFTWARE), importable_specs(ProtectionLevel.HSM)
    assert (named(software), named(hsm_only)) == (set(soft), set(hsm - soft))


@pytest.mark.parametrize("spec", ALL)
def test_row_is_consistent(spec: KeySpec) -> None:
    row = facts(spec)
    assert row.wrapping_algorithm in row.accepted_wrapping
    assert row.wrapping_key_spec in wrapping_key_specs()
    assert row.default_usage in row.usages
    assert row.protections
    assert (row.bits > 0) == (row.family is Family.RSA)
    assert (row.curve is None) == (row.family in (Family.RSA, Family.SYMMETRIC))
    assert (row.material_bytes > 0) == (row.family is Family.SYMMETRIC) == row.default_key
    assert READ_BACK[row.verification] is not None  # apply knows how to verify an import of it


@pytest.mark.parametrize("spec", ASYMMETRIC)
def test_material_of_a_spec_parses_back_to_that_spec(spec: KeySpec) -> None:
    m = material(spec)
    assert parse_private_key(m.pkcs8_der()).spec is spec
    assert spec_of_spki(m.public_key_der()) is spec


@pytest.mark.parametrize("spec", ASYMMETRIC)
def test_wrap_and_unwrap_round_trip_through_the_table(spec: KeySpec) -> None:
    row = facts(spec)
    m = material(spec)
    for algorithm in row.accepted_wrapping:
        private, public = keyops.new_wrapping_key(algorithm)
        assert wrapping.wrapping_key_spec(public) is algorithm.wrapping_key_spec
        if algorithm is row.wrapping_algorithm:
            blob = base64.b64decode(wrapping.wrap(m, public, algorithm))
        else:
            blob = WRAP[algorithm](public, m.import_payload(algorithm))
        unwrapped = keyops.unwrap(algorithm, private, blob)
        assert (unwrapped.spec, unwrapped.fingerprint) == (spec, m.fingerprint), algorithm


@pytest.mark.parametrize("spec", ASYMMETRIC)
def test_wrap_refuses_every_algorithm_but_the_rows(spec: KeySpec) -> None:
    row = facts(spec)
    for algorithm in set(WrappingAlgorithm) - {row.wrapping_algorithm}:
        _, public = keyops.new_wrapping_key(algorithm)
        with pytest.raises(wrapping.WrappingError) as info:
            wrapping.wrap(material(spec), public, algorithm)
        assert str(info.value) == f"{spec} material is wrapped with {row.wrapping_algorithm}, not {algorithm}"


@pytest.mark.parametrize("protection", list(ProtectionLevel))
@pytest.mark.parametrize("spec", ASYMMETRIC)
def test_emulator_creates_exactly_the_tables_specs_by_protection(
    engine: KmsEngine, spec: KeySpec, protection: ProtectionLevel
) -> None:
    create = {"key_spec": spec.value, "origin": "EXTERNAL", "instance_id": INSTANCES[protection]}
    assert (spec in importable_specs(protection)) == (protection in facts(spec).protections)
    if protection in facts(spec).protections:
        key = engine.create_key(**create)
        assert (key.spec, key.protection, key.usage) == (spec, protection, facts(spec).default_usage)
    else:
        with kms_error("InvalidParameter", 400, f"KeySpec {spec} is only available in a hardware instance"):
            engine.create_key(**create)


def _key_id(engine: KmsEngine, spec: KeySpec, usage: KeyUsage = KeyUsage.SIGN_VERIFY) -> str:
    instance = INSTANCES[min(facts(spec).protections)]  # HSM sorts before SOFTWARE: either will do
    return engine.create_key(
        key_spec=spec.value, key_usage=usage.value, origin="EXTERNAL", instance_id=instance
    ).key_id


@pytest.mark.parametrize("spec", ASYMMETRIC)
def test_emulator_issues_import_parameters_for_exactly_the_accepted_algorithms(
    engine: KmsEngine, spec: KeySpec
) -> None:
    key_id = _key_id(engine, spec)
    for algorithm in WrappingAlgorithm:
        call = (key_id, algorithm.wrapping_key_spec.value, algorithm.value)
        if algorithm in facts(spec).accepted_wrapping:
            assert engine.get_parameters_for_import(*call).key_id == key_id
        else:
            with kms_error("InvalidParameter", 400, f"WrappingAlgorithm {algorithm} wraps "):
                engine.get_parameters_for_import(*call)


def _imported(engine: KmsEngine, spec: KeySpec, usage: KeyUsage) -> tuple[str, str]:
    """(key id, its version) of a new key of `spec` holding its material."""
    key_id = _key_id(engine, spec, usage)
    algorithm = facts(spec).wrapping_algorithm
    params = engine.get_parameters_for_import(key_id, algorithm.wrapping_key_spec.value, algorithm.value)
    blob = wrapping.wrap(material(spec), params.public_key_der, algorithm)
    engine.import_key_material(key_id, blob, params.import_token, 0)
    return key_id, engine.describe_key(key_id).primary_key_version


@pytest.mark.parametrize("spec", ASYMMETRIC)
def test_emulator_signs_with_exactly_the_tables_algorithms(engine: KmsEngine, spec: KeySpec) -> None:
    key_id, version = _imported(engine, spec, KeyUsage.SIGN_VERIFY)
    offered = {a for row in SPECS.values() for a in row.sign_algorithms}
    for algorithm in sorted(offered):
        if algorithm in facts(spec).sign_algorithms:
            _, signature = engine.asymmetric_sign(key_id, version, algorithm, DIGEST_B64)
            value = base64.b64encode(signature).decode()
            assert engine.asymmetric_verify(key_id, version, algorithm, DIGEST_B64, value)[1] is True
        else:
            with kms_error("InvalidParameter", 400, algorithm):
                engine.asymmetric_sign(key_id, version, algorithm, DIGEST_B64)


@pytest.mark.parametrize("spec", ASYMMETRIC)
def test_emulator_encrypts_with_exactly_the_tables_algorithms(engine: KmsEngine, spec: KeySpec) -> None:
    key_id, version = _imported(engine, spec, KeyUsage.ENCRYPT_DECRYPT)
    plaintext = base64.b64encode(b"secret data").decode()
    allowed = facts(spec).encrypt_algorithms
    if not allowed:
        with kms_error(
            "Rejected.UnsupportedOperation", 400, f"AsymmetricEncrypt is not supported for {spec} keys"
        ):
            engine.asymmetric_encrypt(key_id, version, "RSAES_OAEP_SHA_256", plaintext)
        return
    offered = {a for row in SPECS.values() for a in row.encrypt_algorithms}
    for algorithm in sorted(offered):
        if algorithm in allowed:
            _, ciphertext = engine.asymmetric_encrypt(key_id, version, algorithm, plaintext)
            back = base64.b64encode(ciphertext).decode()
            assert engine.asymmetric_decrypt(key_id, version, algorithm, back)[1] == b"secret data"
        else:
            with kms_error("InvalidParameter", 400, algorithm):
                engine.asymmetric_encrypt(key_id, version, algorithm, plaintext)
