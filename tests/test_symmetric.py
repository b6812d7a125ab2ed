"""Symmetric BYOK (issue 16, DESIGN section 13) below the end-to-end level: the key check value, the
material formats and their located validation errors, the spec rules, direct wrapping round trips,
and the emulator's import, Encrypt, Decrypt and GenerateDataKey with imported material."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from cli_support import example_workdir, run_main
from emulator_support import HARDWARE, SOFTWARE, imported, kms_error

from provisioner import wrapping
from provisioner.emulator import families, keyops, symmetric_ops
from provisioner.emulator.models import KmsEngine
from provisioner.emulator.responses import KmsResponses
from provisioner.errors import MaterialError
from provisioner.model import KeySpec, MaterialFormat, ProtectionLevel, WrappingAlgorithm
from provisioner.specs import Family, facts, wrapping_refusal
from provisioner.symmetric import SymmetricMaterial, key_check_value, parse_symmetric, parse_symmetric_any

AES = bytes(range(32))
SM4 = bytes(range(16))
DIRECT = [
    WrappingAlgorithm.RSAES_OAEP_SHA_256,
    WrappingAlgorithm.RSAES_PKCS1_V1_5,
    WrappingAlgorithm.RSAES_OAEP_SHA_1,
]


# --- identity ---------------------------------------------------------------------------------------------


def test_key_check_value_is_the_designs_hmac() -> None:
    # Known answers from `openssl dgst -sha256 -mac HMAC -macopt hexkey:<material>` over the label.
    assert key_check_value(AES) == "kcv:2eddb53b960a4fb2"
    assert key_check_value(SM4) == "kcv:a6830f13f74eb46e"


def test_material_shows_its_check_value_only_and_wipes() -> None:
    m = SymmetricMaterial(KeySpec.AES_256, AES)
    assert repr(m) == str(m) == "SymmetricMaterial(spec=Aliyun_AES_256, fingerprint=kcv:2eddb53b960a4fb2)"
    assert m.import_payload(WrappingAlgorithm.RSAES_OAEP_SHA_256) == AES
    assert m.secret_forms() == [AES]
    m.wipe()
    with pytest.raises(MaterialError) as info:
        m.key_bytes()
    assert str(info.value) == "material kcv:2eddb53b960a4fb2 was wiped after use"


# --- formats ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (AES, MaterialFormat.RAW),
        (AES.hex().encode() + b"\n", MaterialFormat.HEX),
        (AES.hex().upper().encode(), MaterialFormat.HEX),
        (base64.b64encode(AES) + b"\r\n", MaterialFormat.BASE64),
    ],
)
def test_every_format_decodes_to_the_same_key(data: bytes, encoding: MaterialFormat) -> None:
    assert parse_symmetric(data, encoding, KeySpec.AES_256).fingerprint == key_check_value(AES)


@pytest.mark.parametrize(
    ("data", "encoding", "spec", "message"),
    [
        (AES[:31], MaterialFormat.RAW, KeySpec.AES_256,
         "Aliyun_AES_256 material is 32 bytes; the source holds 31 (raw)"),
        (AES + b"\0", MaterialFormat.RAW, KeySpec.AES_256,
         "Aliyun_AES_256 material is 32 bytes; the source holds 33 (raw)"),
        (SM4.hex().encode(), MaterialFormat.HEX, KeySpec.AES_256,
         "Aliyun_AES_256 material is 32 bytes; the source holds 16 (hex)"),
        (AES.hex().encode(), MaterialFormat.HEX, KeySpec.SM4,
         "Aliyun_SM4 material is 16 bytes; the source holds 32 (hex)"),
        (b"zz" + AES.hex().encode()[2:], MaterialFormat.HEX, KeySpec.AES_256,
         "format hex: holds a character that is not a hex digit"),
        (AES.hex().encode()[1:], MaterialFormat.HEX, KeySpec.AES_256,
         "format hex: 63 hex digits is not a whole number of bytes"),
        (base64.urlsafe_b64encode(b"\xfb" * 32), MaterialFormat.BASE64, KeySpec.AES_256,
         "format base64: is not standard base64 (A-Z a-z 0-9 + /, padded with =)"),
        (base64.b64encode(AES).rstrip(b"="), MaterialFormat.BASE64, KeySpec.AES_256,
         "format base64: is not standard base64 (A-Z a-z 0-9 + /, padded with =)"),
    ],
)  # fmt: skip
def test_bad_material_is_refused_with_what_is_wrong(
    data: bytes, encoding: MaterialFormat, spec: KeySpec, message: str
) -> None:
    with pytest.raises(MaterialError) as info:
        parse_symmetric(data, encoding, spec)
    assert str(info.value) == message


def test_wrap_without_a_manifest_takes_the_spec_from_the_length() -> None:
    assert parse_symmetric_any(SM4, MaterialFormat.RAW).spec is KeySpec.SM4
    with pytest.raises(MaterialError) as info:
        parse_symmetric_any(AES[:24], MaterialFormat.RAW)
    assert str(info.value) == (
        "holds 24 bytes (raw); symmetric material is 32 (Aliyun_AES_256) or 16 (Aliyun_SM4) bytes"
    )


# --- the rules of section 13 ------------------------------------------------------------


@pytest.mark.parametrize("spec", [KeySpec.AES_256, KeySpec.SM4])
def test_symmetric_rows(spec: KeySpec) -> None:
    row = facts(spec)
    assert row.family is Family.SYMMETRIC and row.default_key
    assert row.usages == (row.default_usage,) and row.default_usage.value == "ENCRYPT/DECRYPT"
    assert row.protections == frozenset(ProtectionLevel)  # the guide's table: default, software, hardware
    assert row.wrapping_algorithm is WrappingAlgorithm.RSAES_OAEP_SHA_256
    assert (WrappingAlgorithm.SM2PKE in row.accepted_wrapping) == (spec is KeySpec.SM4)


def test_wrapping_refusals() -> None:
    hsm, soft = ProtectionLevel.HSM, ProtectionLevel.SOFTWARE
    assert wrapping_refusal(KeySpec.AES_256, WrappingAlgorithm.RSAES_OAEP_SHA_1, soft, False) is None
    assert wrapping_refusal(KeySpec.AES_256, WrappingAlgorithm.RSAES_OAEP_SHA_1, soft, True) == (
        "RSAES_OAEP_SHA_1 is offered for default keys only; a key in a KMS instance lacks it"
    )
    assert wrapping_refusal(KeySpec.SM4, WrappingAlgorithm.SM2PKE, hsm, True) is None
    assert wrapping_refusal(KeySpec.SM4, WrappingAlgorithm.SM2PKE, soft, True) == (
        "SM2PKE is offered for Aliyun_SM4 keys of protection HSM only, not SOFTWARE"
    )
    assert wrapping_refusal(KeySpec.AES_256, WrappingAlgorithm.SM2PKE, hsm, True) == (
        "Aliyun_AES_256 material is wrapped with RSAES_OAEP_SHA_256 or RSAES_PKCS1_V1_5 or RSAES_OAEP_SHA_1, "
        "not SM2PKE"
    )


# --- validate through the CLI: located errors ---------------------------------------------------------------

HEADER = "stack: sym\nkeys:\n  k:\n"


def _validate(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    body: str,
    material: bytes = AES,
) -> tuple[int, str, str]:
    work = example_workdir(tmp_path, monkeypatch)
    key = work / "k.bin"
    key.write_bytes(material)
    key.chmod(0o600)
    (work / "m.yaml").write_text(HEADER + body)
    return run_main(["validate", "m.yaml"], capsys)


GOOD = "    spec: Aliyun_AES_256\n    usage: ENCRYPT/DECRYPT\n"


@pytest.mark.parametrize(
    ("body", "material", "error"),
    [
        (GOOD + "    material: {file: k.bin, format: raw}\n", AES[:31],
         "m.yaml:6:15: error: key \"k\": file {work}/k.bin: Aliyun_AES_256 material is 32 bytes; the source "
         "holds 31 (raw)"),
        (GOOD + "    material: {file: k.bin, format: raw}\n", AES + b"!",
         "m.yaml:6:15: error: key \"k\": file {work}/k.bin: Aliyun_AES_256 material is 32 bytes; the source "
         "holds 33 (raw)"),
        (GOOD + "    material: {file: k.bin, format: raw}\n", SM4,
         "m.yaml:6:15: error: key \"k\": file {work}/k.bin: Aliyun_AES_256 material is 32 bytes; the source "
         "holds 16 (raw)"),
        (GOOD + "    material: {file: k.bin, format: hex}\n", b"g" * 64,
         "m.yaml:6:15: error: key \"k\": file {work}/k.bin: format hex: holds a character that is not a hex "
         "digit"),
        (GOOD + "    material: {file: k.bin, format: base64}\n", b"!!!!" * 11,
         "m.yaml:6:15: error: key \"k\": file {work}/k.bin: format base64: is not standard base64 (A-Z a-z "
         "0-9 + /, padded with =)"),
        ("    spec: Aliyun_SM4\n    usage: SIGN/VERIFY\n    material: {file: k.bin, format: raw}\n", SM4,
         "m.yaml:5:12: error: key \"k\": spec \"Aliyun_SM4\" takes usage ENCRYPT/DECRYPT only, not "
         "SIGN/VERIFY"),
        (GOOD + "    material: {env: SYM_KEY, format: raw}\n", AES,
         "m.yaml:6:38: error: key \"k\": format raw is for file and command sources only: an environment "
         "variable cannot hold a NUL byte; write the key as hex or base64"),
        (GOOD + "    instance: kst-a\n    material: {file: k.bin, format: raw, wrapping: RSAES_OAEP_SHA_1}\n",
         AES,
         "m.yaml:7:52: error: key \"k\": material.wrapping RSAES_OAEP_SHA_1: RSAES_OAEP_SHA_1 is offered for "
         "default keys only; a key in a KMS instance lacks it"),
        ("    spec: Aliyun_SM4\n    usage: ENCRYPT/DECRYPT\n"
         "    material: {file: k.bin, format: raw, wrapping: SM2PKE}\n", SM4,
         "m.yaml:6:52: error: key \"k\": material.wrapping SM2PKE: SM2PKE is offered for Aliyun_SM4 keys of "
         "protection HSM only, not SOFTWARE"),
        (GOOD + "    material: {file: k.bin}\n", AES,
         "m.yaml:6:15: error: key \"k\": Aliyun_AES_256 material needs format: raw, hex or base64 (how the "
         "source writes its bytes)"),
        (GOOD + "    material: {file: k.bin, format: raw, fingerprint: \"sha256:" + "0" * 64 + "\"}\n", AES,
         "m.yaml:6:55: error: key \"k\": a Aliyun_AES_256 key is pinned by its key check value: "
         "kcv:<16 hex>, "
         "not sha256:" + "0" * 64),
        (GOOD + "    material: {file: k.bin, format: raw, fingerprint: \"kcv:0000000000000000\"}\n", AES,
         "m.yaml:6:15: error: key \"k\": file {work}/k.bin: fingerprint kcv:2eddb53b960a4fb2 does not match "
         "the pinned kcv:0000000000000000"),
        ("    spec: RSA_2048\n    usage: SIGN/VERIFY\n    instance: kst-a\n"
         "    material: {file: k.bin, format: raw}\n", AES,
         "m.yaml:7:37: error: key \"k\": material.format is for symmetric keys only (Aliyun_AES_256, "
         "Aliyun_SM4), not RSA_2048"),
        ("    spec: RSA_2048\n    usage: SIGN/VERIFY\n    material: {file: k.bin}\n", AES,
         "m.yaml:3:3: error: key \"k\" has no KMS instance: asymmetric import needs one; set instance on the "
         "key or under defaults"),
    ],
    ids=[
        "31-bytes", "33-bytes", "16-bytes-for-aes", "bad-hex", "bad-base64", "sign-verify", "raw-env",
        "oaep-sha1-on-instance", "sm2pke-software", "no-format", "sha256-pin", "kcv-mismatch",
        "format-on-rsa", "rsa-default-key",
    ],
)  # fmt: skip
def test_validation_errors_are_located(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    body: str,
    material: bytes,
    error: str,
) -> None:
    monkeypatch.setenv("SYM_KEY", "x")
    code, out, err = _validate(tmp_path, monkeypatch, capsys, body, material)
    assert code == 1, out
    assert error.format(work=tmp_path) in err.splitlines(), err
    assert "Traceback" not in err and AES.hex() not in err and SM4.hex() not in err


@pytest.mark.parametrize(
    ("body", "material"),
    [
        (GOOD + "    material: {file: k.bin, format: raw, wrapping: RSAES_OAEP_SHA_1}\n", AES),
        (GOOD + "    material: {file: k.bin, format: hex, fingerprint: kcv:2eddb53b960a4fb2}\n",
         AES.hex().encode() + b"\n"),
        ("    spec: Aliyun_SM4\n    usage: ENCRYPT/DECRYPT\n    instance: kst-h\n    protection: HSM\n"
         "    material: {file: k.bin, format: base64, wrapping: SM2PKE}\n", base64.b64encode(SM4)),
        (GOOD + "    instance: kst-a\n"
         "    material: {file: k.bin, format: raw, wrapping: RSAES_PKCS1_V1_5}\n", AES),
    ],
    ids=["oaep-sha1-default-key", "hex-pinned", "sm4-sm2pke-hsm", "pkcs1-on-instance"],
)  # fmt: skip
def test_valid_symmetric_keys(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    body: str,
    material: bytes,
) -> None:
    code, out, err = _validate(tmp_path, monkeypatch, capsys, body, material)
    assert (code, out) == (0, "valid: 1 key(s) in 1 file, stack sym, material checked\n"), err


# --- direct wrapping and the emulator ------------------------------------------------------------


@pytest.mark.parametrize("algorithm", [*DIRECT, WrappingAlgorithm.SM2PKE])
def test_direct_wrapping_round_trips_through_the_emulators_unwrap(algorithm: WrappingAlgorithm) -> None:
    spec, secret = (KeySpec.SM4, SM4) if algorithm is WrappingAlgorithm.SM2PKE else (KeySpec.AES_256, AES)
    private, public = keyops.new_wrapping_key(algorithm)
    blob = base64.b64decode(wrapping.wrap(SymmetricMaterial(spec, secret), public, algorithm))
    assert secret not in blob
    unwrapped = families.unwrap(spec, algorithm, private, blob)
    assert (unwrapped.spec, unwrapped.pkcs8_der, unwrapped.fingerprint) == (
        spec,
        secret,
        key_check_value(secret),
    )
    assert repr(unwrapped) == f"ImportedKey(spec={spec}, fingerprint={key_check_value(secret)})"


def test_symmetric_material_is_never_wrapped_with_an_ephemeral_key_scheme() -> None:
    _, public = keyops.new_wrapping_key(WrappingAlgorithm.RSA_OAEP_AES_ECB)
    with pytest.raises(wrapping.WrappingError) as info:
        wrapping.wrap(SymmetricMaterial(KeySpec.AES_256, AES), public, WrappingAlgorithm.RSA_OAEP_AES_ECB)
    assert str(info.value) == (
        "Aliyun_AES_256 material is wrapped with RSAES_OAEP_SHA_256 or RSAES_PKCS1_V1_5 or RSAES_OAEP_SHA_1, "
        "not RSAES_OAEP_SHA_256_AES_256_ECB_PKCS7_PAD"
    )


def _imported(
    engine: KmsEngine, spec: KeySpec, secret: bytes, instance: str | None, algorithm: WrappingAlgorithm
) -> str:
    key = engine.create_key(key_spec=spec.value, origin="EXTERNAL", instance_id=instance)
    params = engine.get_parameters_for_import(key.key_id, algorithm.wrapping_key_spec.value, algorithm.value)
    blob = wrapping.wrap(SymmetricMaterial(spec, secret), params.public_key_der, algorithm)
    engine.import_key_material(key.key_id, blob, params.import_token, 0)
    return key.key_id


def test_default_key_has_no_instance_and_either_protection(engine: KmsEngine) -> None:
    soft = engine.create_key(key_spec="Aliyun_AES_256", origin="EXTERNAL")
    hsm = engine.create_key(key_spec="Aliyun_SM4", origin="EXTERNAL", protection_level="HSM")
    assert (soft.instance_id, soft.protection.value, soft.usage.value) == ("", "SOFTWARE", "ENCRYPT/DECRYPT")
    assert (hsm.instance_id, hsm.protection.value) == ("", "HSM")
    with kms_error("MissingParameter", 400, "DKMSInstanceId"):
        engine.create_key(key_spec="RSA_2048", origin="EXTERNAL")
    with kms_error(
        "InvalidParameter", 400, "KeyUsage SIGN/VERIFY is not available for KeySpec Aliyun_AES_256"
    ):
        engine.create_key(key_spec="Aliyun_AES_256", key_usage="SIGN/VERIFY", origin="EXTERNAL")


def test_instance_without_asymmetric_import_still_takes_symmetric_keys() -> None:
    from provisioner.emulator.models import InstanceSetup

    engine = KmsEngine(instances={"kst-x": InstanceSetup("hardware", asymmetric_import=False)})
    try:
        assert (
            engine.create_key(key_spec="Aliyun_SM4", origin="EXTERNAL", instance_id="kst-x").instance_id
            == "kst-x"
        )
        with kms_error("Unsupported.Origin", 400, "does not take asymmetric keys"):
            engine.create_key(key_spec="EC_SM2", origin="EXTERNAL", instance_id="kst-x")
    finally:
        engine.close()


def test_import_parameters_follow_section_13(engine: KmsEngine) -> None:
    on_instance = engine.create_key(key_spec="Aliyun_AES_256", origin="EXTERNAL", instance_id=SOFTWARE).key_id
    with kms_error(
        "InvalidParameter",
        400,
        "WrappingAlgorithm RSAES_OAEP_SHA_1: RSAES_OAEP_SHA_1 is offered for default keys only",
    ):
        engine.get_parameters_for_import(on_instance, "RSA_2048", "RSAES_OAEP_SHA_1")
    soft_sm4 = engine.create_key(key_spec="Aliyun_SM4", origin="EXTERNAL", instance_id=SOFTWARE).key_id
    with kms_error("InvalidParameter", 400, "SM2PKE is offered for Aliyun_SM4 keys of protection HSM only"):
        engine.get_parameters_for_import(soft_sm4, "EC_SM2", "SM2PKE")
    rsa = engine.create_key(key_spec="RSA_2048", origin="EXTERNAL", instance_id=SOFTWARE).key_id
    with kms_error(
        "InvalidParameter", 400, "WrappingAlgorithm RSAES_OAEP_SHA_256 wraps Aliyun_AES_256, Aliyun_SM4"
    ):
        engine.get_parameters_for_import(rsa, "RSA_2048", "RSAES_OAEP_SHA_256")


@pytest.mark.parametrize(
    ("spec", "secret", "instance", "algorithm"),
    [
        (KeySpec.AES_256, AES, None, WrappingAlgorithm.RSAES_OAEP_SHA_1),
        (KeySpec.AES_256, AES, SOFTWARE, WrappingAlgorithm.RSAES_PKCS1_V1_5),
        (KeySpec.SM4, SM4, HARDWARE, WrappingAlgorithm.SM2PKE),
        (KeySpec.SM4, SM4, None, WrappingAlgorithm.RSAES_OAEP_SHA_256),
    ],
)
def test_encrypt_decrypt_and_data_keys(
    engine: KmsEngine, spec: KeySpec, secret: bytes, instance: str | None, algorithm: WrappingAlgorithm
) -> None:
    key_id = _imported(engine, spec, secret, instance, algorithm)
    _, blob = symmetric_ops.encrypt(engine, key_id, b"attack at dawn", '{"app":"pay"}')
    assert secret not in blob and b"attack" not in blob
    key, plain = symmetric_ops.decrypt(engine, base64.b64encode(blob).decode(), '{"app":"pay"}')
    assert (key.key_id, plain) == (key_id, b"attack at dawn")
    with kms_error("InvalidParameter", 400, "CiphertextBlob: it does not decrypt under this key"):
        symmetric_ops.decrypt(engine, base64.b64encode(blob).decode(), '{"app":"other"}')
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with kms_error("InvalidParameter", 400, "CiphertextBlob: it does not decrypt under this key"):
        symmetric_ops.decrypt(engine, base64.b64encode(bytes(tampered)).decode(), '{"app":"pay"}')
    _, data_key, data_blob = symmetric_ops.generate_data_key(engine, key_id, "AES_128", None, None)
    assert len(data_key) == 16
    data_b64 = base64.b64encode(data_blob).decode()
    assert symmetric_ops.decrypt(engine, data_b64, None)[1] == base64.b64encode(data_key)
    assert len(symmetric_ops.generate_data_key(engine, key_id, None, 48, None)[1]) == 48


def test_a_blob_binds_its_key_and_version(engine: KmsEngine) -> None:
    first = _imported(engine, KeySpec.AES_256, AES, None, WrappingAlgorithm.RSAES_OAEP_SHA_256)
    other = _imported(engine, KeySpec.AES_256, os.urandom(32), None, WrappingAlgorithm.RSAES_OAEP_SHA_256)
    _, blob = symmetric_ops.encrypt(engine, first, b"x", None)
    header, _ = symmetric_ops.read_blob_header(blob)
    assert (header.key_id, header.key_version_id) == (first, engine.describe_key(first).primary_key_version)
    # The same bytes under another key's id name a version that key does not have; with that key's own
    # version too, the header is authenticated, so the blob does not open there either.
    swapped = blob.replace(first.encode(), other.encode())
    with kms_error("Forbidden.KeyNotFound", 404, "The specified key version is not found"):
        symmetric_ops.decrypt(engine, base64.b64encode(swapped).decode(), None)
    other_version = engine.describe_key(other).primary_key_version.encode()
    swapped = swapped.replace(header.key_version_id.encode(), other_version)
    with kms_error("InvalidParameter", 400, "CiphertextBlob: it does not decrypt under this key"):
        symmetric_ops.decrypt(engine, base64.b64encode(swapped).decode(), None)
    with kms_error("InvalidParameter", 400, "CiphertextBlob: it is not a ciphertext blob of this KMS"):
        symmetric_ops.decrypt(engine, base64.b64encode(b"garbage that is long enough" * 4).decode(), None)
    engine.disable_key(first)
    with kms_error("Rejected.Disabled", 409, f"key {first} is Disabled"):
        symmetric_ops.decrypt(engine, base64.b64encode(blob).decode(), None)


def test_symmetric_and_asymmetric_calls_do_not_mix(engine: KmsEngine) -> None:
    key_id = _imported(engine, KeySpec.AES_256, AES, None, WrappingAlgorithm.RSAES_OAEP_SHA_256)
    version = engine.describe_key(key_id).primary_key_version
    with kms_error(
        "Rejected.UnsupportedOperation", 400, "GetPublicKey is not supported for Aliyun_AES_256 keys"
    ):
        engine.get_public_key(key_id, version)
    with kms_error(
        "Rejected.UnsupportedOperation", 400, "AsymmetricEncrypt is not supported for Aliyun_AES_256"
    ):
        engine.asymmetric_encrypt(key_id, version, "RSAES_OAEP_SHA_256", base64.b64encode(b"x").decode())
    rsa = engine.create_key(
        key_spec="RSA_2048", key_usage="ENCRYPT/DECRYPT", origin="EXTERNAL", instance_id=SOFTWARE
    )
    with kms_error("Rejected.PendingImport", 409, "is PendingImport"):
        symmetric_ops.encrypt(engine, rsa.key_id, b"x", None)
    # An enabled RSA key with material: the symmetric family's actions are not its family's.
    enabled, _ = imported(engine, KeySpec.RSA_2048, "ENCRYPT/DECRYPT")
    rpc = KmsResponses(engine)
    for action, params in (
        ("Encrypt", {"KeyId": enabled.key_id, "Plaintext": "x"}),
        ("GenerateDataKey", {"KeyId": enabled.key_id}),
    ):
        with kms_error(
            "Rejected.UnsupportedOperation", 400,
            f"{action} is not supported for RSA_2048 keys (key {enabled.key_id})",
        ):  # fmt: skip
            rpc.handle(action, params)
    with kms_error(
        "Rejected.UnsupportedOperation", 400,
        f"Encrypt is not supported for RSA_2048 keys (key {enabled.key_id}); an asymmetric key encrypts "
        "with AsymmetricEncrypt",
    ):  # fmt: skip
        rpc.handle("Encrypt", {"KeyId": enabled.key_id, "Plaintext": "x"})


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        (SM4, "is Aliyun_AES_256 but the material is Aliyun_SM4"),
        (
            os.urandom(24),
            "it is 24 bytes long; symmetric material is 32 (Aliyun_AES_256) or 16 (Aliyun_SM4) bytes",
        ),
    ],
)
def test_import_of_material_of_another_length_is_refused(
    engine: KmsEngine, secret: bytes, message: str
) -> None:
    """The key's own spec is asked first (a spec is not told by its length alone), then the length's."""
    key = engine.create_key(key_spec="Aliyun_AES_256", origin="EXTERNAL")
    algorithm = WrappingAlgorithm.RSAES_OAEP_SHA_256
    params = engine.get_parameters_for_import(key.key_id, "RSA_2048", algorithm.value)
    blob = base64.b64encode(wrapping.wrap_direct(params.public_key_der, secret, algorithm)).decode()
    with kms_error("InvalidKeyMaterial", 400, message):
        engine.import_key_material(key.key_id, blob, params.import_token, 0)


def test_reimport_takes_the_first_material_only(engine: KmsEngine) -> None:
    key_id = _imported(engine, KeySpec.AES_256, AES, None, WrappingAlgorithm.RSAES_OAEP_SHA_256)
    engine.delete_key_material(key_id)
    assert engine.describe_key(key_id).state.value == "PendingImport"
    algorithm = WrappingAlgorithm.RSAES_OAEP_SHA_256
    params = engine.get_parameters_for_import(key_id, "RSA_2048", algorithm.value)
    other = wrapping.wrap(SymmetricMaterial(KeySpec.AES_256, AES[::-1]), params.public_key_der, algorithm)
    with kms_error("InvalidKeyMaterial", 400, f"key {key_id} is bound to its first symmetric material"):
        engine.import_key_material(key_id, other, params.import_token, 0)
    same = wrapping.wrap(SymmetricMaterial(KeySpec.AES_256, AES), params.public_key_der, algorithm)
    engine.import_key_material(key_id, same, params.import_token, 0)
    assert engine.describe_key(key_id).state.value == "Enabled"
    wrong_size = wrapping.wrap_direct(params.public_key_der, AES[:24], algorithm)
    with kms_error(
        "InvalidKeyMaterial", 400, "it is 24 bytes long; symmetric material is 32 (Aliyun_AES_256)"
    ):
        engine.import_key_material(key_id, base64.b64encode(wrong_size).decode(), params.import_token, 0)


# --- the saved plan ------------------------------------------------------------------------------------


def test_a_saved_plan_keeps_format_and_wrapping_and_refuses_other_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from provisioner.plan.planfile import load_plan, save_plan

    body = GOOD + "    material: {file: k.bin, format: raw, wrapping: RSAES_PKCS1_V1_5}\n"
    code, _, err = _validate(tmp_path, monkeypatch, capsys, body)
    assert code == 0, err
    code, _, err = run_main(["plan", "m.yaml", "--out", "plan.json"], capsys)
    assert code == 0, err
    text = (tmp_path / "plan.json").read_text()
    change = json.loads(text)["changes"][0]
    assert change["material"]["format"] == "raw" and change["material"]["wrapping"] == "RSAES_PKCS1_V1_5"
    plan = load_plan(text)
    material = plan.changes[0].material
    assert material is not None
    assert (material.format, material.wrapping) == (MaterialFormat.RAW, WrappingAlgorithm.RSAES_PKCS1_V1_5)
    assert json.loads(save_plan(plan)) == json.loads(text)
    # Another word is no plan the planner made: the change is unrecorded, and apply --plan refuses it.
    edited = text.replace('"RSAES_PKCS1_V1_5"', '"RSAES_OAEP_SHA_512"')
    assert (load_plan(edited).unrecorded, load_plan(edited).changes[0].material) == ((0,), None)
    (tmp_path / "plan.json").write_text(edited)
    code, _, err = run_main(["apply", "--plan", "plan.json", "m.yaml"], capsys)
    assert (code, err.splitlines()[-1]) == (
        1, "error: plan file: changes[0] (key 'k'): before/after are not what the planner records (was the "
        "file edited by hand?): make a new plan",
    )
