"""Bad private material through `provision validate`: exit 1 and one located message per problem.

Each case writes a one-key manifest whose `material` block sits at line 10, column 5, and checks
the exact line the user sees: FILE:LINE:COL: error: key "NAME": SOURCE: WHAT.
"""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from provisioner import sm2
from provisioner.cli import cli
from provisioner.material import fingerprint_of_spki

Enc = serialization.Encoding
Fmt = serialization.PrivateFormat

MANIFEST = """\
version: 1
stack: material-tests
defaults:
  instance: {instance}
  protection: {protection}
keys:
  signer:
    spec: {spec}
    usage: SIGN/VERIFY
    material:
{material}
"""


@cache
def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@cache
def k1() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256K1())


@cache
def rsa2048() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, encryption: bytes | None = None) -> bytes:
    algorithm: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(encryption) if encryption else serialization.NoEncryption()
    )
    return key.private_bytes(Enc.PEM, Fmt.PKCS8, algorithm)


def write_key(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def validate(
    tmp_path: Path, material: list[str], *, spec: str = "EC_P256", env: dict[str, str | None] | None = None,
    offline: bool = False, allow_commands: bool = False,
) -> tuple[Result, str]:
    hsm = spec in ("EC_SM2", "RSA_4096")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        MANIFEST.format(
            instance="kst-local-hardware" if hsm else "kst-local-software",
            protection="HSM" if hsm else "SOFTWARE",
            spec=spec,
            material="\n".join("      " + line for line in material),
        )
    )
    args = ["validate", str(manifest), *(["--offline-material"] if offline else [])]
    args += ["--allow-commands"] if allow_commands else []
    result = CliRunner(env=env).invoke(cli, args)
    return result, f"{manifest}:10:5: error: key \"signer\": "


def assert_one_error(result: Result, expected: str) -> None:
    assert result.exit_code == 1, result.stderr
    assert result.stderr == expected + "\n1 error(s)\n"
    assert result.stdout == ""


def test_good_material_validates_and_offline_skips_reading(tmp_path: Path) -> None:
    key = write_key(tmp_path, "k.pem", pem(p256()))
    result, _ = validate(tmp_path, ["file: k.pem"])
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == "valid: 1 key(s) in 1 file, stack material-tests, material checked\n"
    key.unlink()
    result, _ = validate(tmp_path, ["file: k.pem"], offline=True)
    assert result.exit_code == 0, result.stderr


def test_missing_file(tmp_path: Path) -> None:
    result, at = validate(tmp_path, ["file: keys/none.pem"])
    assert_one_error(result, f"{at}file {tmp_path / 'keys' / 'none.pem'}: no such file")


def test_wrong_spec(tmp_path: Path) -> None:
    write_key(tmp_path, "k.pem", pem(rsa2048()))
    result, at = validate(tmp_path, ["file: k.pem"])
    assert_one_error(
        result, f"{at}file {tmp_path / 'k.pem'}: expected key spec EC_P256 (curve P-256), found RSA_2048"
    )


def test_wrong_curve(tmp_path: Path) -> None:
    write_key(tmp_path, "k.pem", pem(k1()))
    result, at = validate(tmp_path, ["file: k.pem"])
    assert_one_error(
        result,
        f"{at}file {tmp_path / 'k.pem'}: expected key spec EC_P256 (curve P-256), "
        "found EC_P256K (curve secp256k1)",
    )


def test_sm2_spec_with_p256_key(tmp_path: Path) -> None:
    write_key(tmp_path, "k.pem", pem(p256()))
    result, at = validate(tmp_path, ["file: k.pem"], spec="EC_SM2")
    assert_one_error(
        result,
        f"{at}file {tmp_path / 'k.pem'}: expected key spec EC_SM2 (curve SM2), found EC_P256 (curve P-256)",
    )


def test_sm2_key_validates(tmp_path: Path) -> None:
    write_key(tmp_path, "k.pem", sm2.private_key_pkcs8_pem(sm2.generate_private_key()).encode())
    result, _ = validate(tmp_path, ["file: k.pem"], spec="EC_SM2")
    assert result.exit_code == 0, result.stderr


def test_fingerprint_pin_mismatch(tmp_path: Path) -> None:
    write_key(tmp_path, "k.pem", pem(p256()))
    actual = fingerprint_of_spki(
        p256().public_key().public_bytes(Enc.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    pin = "sha256:" + "0" * 64
    result, at = validate(tmp_path, ["file: k.pem", f"fingerprint: {pin}"])
    assert_one_error(
        result, f"{at}file {tmp_path / 'k.pem'}: fingerprint {actual} does not match the pinned {pin}"
    )
    result, _ = validate(tmp_path, ["file: k.pem", f"fingerprint: {actual}"])
    assert result.exit_code == 0, result.stderr


def test_encrypted_without_passphrase(tmp_path: Path) -> None:
    write_key(tmp_path, "k.pem", pem(p256(), b"s3cret"))
    result, at = validate(tmp_path, ["file: k.pem"])
    assert_one_error(
        result,
        f"{at}file {tmp_path / 'k.pem'}: the private key is encrypted and no passphrase was given: "
        "name the environment variable that holds it (material.passphrase_env in a manifest, "
        "--passphrase-env VAR on the command line)",
    )


def test_passphrase_env_unset_and_wrong(tmp_path: Path) -> None:
    write_key(tmp_path, "k.pem", pem(p256(), b"s3cret"))
    lines = ["file: k.pem", "passphrase_env: SIGNER_PASS"]
    result, at = validate(tmp_path, lines, env={"SIGNER_PASS": None})
    assert_one_error(
        result, f"{at}file {tmp_path / 'k.pem'}: passphrase environment variable SIGNER_PASS is not set"
    )
    result, at = validate(tmp_path, lines, env={"SIGNER_PASS": "wrong"})
    assert_one_error(
        result, f"{at}file {tmp_path / 'k.pem'}: the private key does not decrypt with the given passphrase"
    )
    result, _ = validate(tmp_path, lines, env={"SIGNER_PASS": "s3cret"})
    assert result.exit_code == 0, result.stderr


def test_public_key_instead_of_private(tmp_path: Path) -> None:
    public = p256().public_key().public_bytes(Enc.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    write_key(tmp_path, "k.pub.pem", public)
    result, at = validate(tmp_path, ["file: k.pub.pem"])
    assert_one_error(
        result, f"{at}file {tmp_path / 'k.pub.pem'}: holds a public key; a private key is needed"
    )


def test_unset_env(tmp_path: Path) -> None:
    result, at = validate(tmp_path, ["env: SIGNER_KEY_PEM"], env={"SIGNER_KEY_PEM": None})
    assert_one_error(result, f"{at}environment variable SIGNER_KEY_PEM: is not set")


def test_env_with_pem_validates(tmp_path: Path) -> None:
    result, _ = validate(tmp_path, ["env: SIGNER_KEY_PEM"], env={"SIGNER_KEY_PEM": pem(p256()).decode()})
    assert result.exit_code == 0, result.stderr


@pytest.mark.slow
def test_failing_command(tmp_path: Path) -> None:
    script = tmp_path / "fetch.py"
    script.write_text(
        "import sys\nprint('-----BEGIN PRIVATE KEY-----')\n"
        "print('vault: connection refused', file=sys.stderr)\nsys.exit(2)\n"
    )
    result, at = validate(tmp_path, [f"command: [{sys.executable}, {script}]"], allow_commands=True)
    assert_one_error(
        result,
        f"{at}command {sys.executable} {script}: exited with status 2 (its standard error is not shown)",
    )
    assert "BEGIN PRIVATE KEY" not in result.output
    assert "vault" not in result.output


def test_garbage(tmp_path: Path) -> None:
    write_key(tmp_path, "k.pem", b"this is not a key\n")
    result, at = validate(tmp_path, ["file: k.pem"])
    assert_one_error(
        result,
        f"{at}file {tmp_path / 'k.pem'}: does not hold a private key in PEM or DER (PKCS#1, SEC1 or PKCS#8)",
    )


def test_loose_permissions_warn_but_validate(tmp_path: Path) -> None:
    key = write_key(tmp_path, "k.pem", pem(p256()))
    key.chmod(0o644)
    result, at = validate(tmp_path, ["file: k.pem"])
    assert result.exit_code == 0
    warning = at.replace(": error: ", ": warning: ")
    assert result.stderr == (
        f"{warning}file {key}: key file is readable by group or others (mode 0644); run chmod 600 on it\n"
    )
