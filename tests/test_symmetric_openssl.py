"""Symmetric wrapping against the OpenSSL command line (issue 16, acceptance 2): `openssl pkeyutl -encrypt`
with OAEP SHA-256, OAEP SHA-1 and PKCS#1 v1.5 (and SM2 for SM2PKE) wraps material that the emulator
imports and then encrypts with; `provision wrap --material-format` output that OpenSSL decrypts. OpenSSL
judges; the provisioner's code is never its own judge (the SM2 C1C3C2 <-> ASN.1 conversion aside)."""

from __future__ import annotations

import base64
import os
import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from emulator_support import HARDWARE
from test_openssl_interop import make_key, openssl

from provisioner import sm2
from provisioner.cli import cli
from provisioner.emulator import symmetric_ops
from provisioner.emulator.models import KmsEngine
from provisioner.model import WrappingAlgorithm
from provisioner.symmetric import key_check_value

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command line"),
]

#: `openssl pkeyutl` options of each RSA algorithm.
RSA_OPTIONS = {
    "RSAES_OAEP_SHA_256": [
        "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256",
        "-pkeyopt", "rsa_mgf1_md:sha256",
    ],
    "RSAES_OAEP_SHA_1": [
        "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha1", "-pkeyopt", "rsa_mgf1_md:sha1",
    ],
    "RSAES_PKCS1_V1_5": ["-pkeyopt", "rsa_padding_mode:pkcs1"],
}  # fmt: skip


@pytest.mark.parametrize("algorithm", list(RSA_OPTIONS))
def test_openssl_wrapped_material_imports_into_the_emulator(
    engine: KmsEngine, tmp_path: Path, algorithm: str
) -> None:
    secret = os.urandom(32)
    key = engine.create_key(key_spec="Aliyun_AES_256", origin="EXTERNAL")  # a default key: all three apply
    params = engine.get_parameters_for_import(key.key_id, "RSA_2048", algorithm)
    public = tmp_path / "PublicKey.der"
    public.write_bytes(params.public_key_der)
    wrapped = openssl(
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-keyform",
        "DER",
        "-inkey",
        public,
        *RSA_OPTIONS[algorithm],
        data=secret,
    )
    engine.import_key_material(key.key_id, base64.b64encode(wrapped).decode(), params.import_token, 0)
    meta = engine.describe_key(key.key_id)
    assert meta.state.value == "Enabled"
    _, blob = symmetric_ops.encrypt(engine, key.key_id, b"interop", None)
    assert symmetric_ops.decrypt(engine, base64.b64encode(blob).decode(), None)[1] == b"interop"
    # The emulator's binding is the material's: the same bytes wrapped by the provisioner re-import.
    code, stdout, err = _run_wrap(tmp_path, public, secret, "raw", algorithm)
    assert code == 0, err
    engine.import_key_material(key.key_id, stdout.strip(), params.import_token, 0)


def test_openssl_sm2_wrapped_sm4_material_imports_into_the_emulator(
    engine: KmsEngine, tmp_path: Path
) -> None:
    secret = os.urandom(16)
    key = engine.create_key(key_spec="Aliyun_SM4", origin="EXTERNAL", instance_id=HARDWARE)
    params = engine.get_parameters_for_import(key.key_id, "EC_SM2", "SM2PKE")
    public = tmp_path / "PublicKey.der"
    public.write_bytes(params.public_key_der)
    asn1 = openssl("pkeyutl", "-encrypt", "-pubin", "-keyform", "DER", "-inkey", public, data=secret)
    wrapped = sm2.asn1_to_c1c3c2(asn1)  # OpenSSL writes GM/T 0009 ASN.1; the vendor takes C1C3C2
    engine.import_key_material(key.key_id, base64.b64encode(wrapped).decode(), params.import_token, 0)
    _, blob = symmetric_ops.encrypt(engine, key.key_id, b"sm4 interop", None)
    assert symmetric_ops.decrypt(engine, base64.b64encode(blob).decode(), None)[1] == b"sm4 interop"


def _run_wrap(
    tmp_path: Path, public: Path, secret: bytes, fmt: str, algorithm: str | None, out: Path | None = None
) -> tuple[int, str, str]:
    material = tmp_path / f"material.{fmt}"
    material.write_bytes(
        {"raw": secret, "hex": secret.hex().encode() + b"\n", "base64": base64.b64encode(secret)}[fmt]
    )
    material.chmod(0o600)
    args = ["wrap", "--public-key", str(public), "--material", str(material), "--material-format", fmt]
    args += ["--algorithm", algorithm] if algorithm else []
    args += ["--out", str(out)] if out else []
    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def rsa_wrapping(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("iwk")
    private = make_key(tmp, "iwk", "RSA_2048")
    public = tmp / "publickey.bin"
    public.write_bytes(openssl("pkey", "-in", private, "-pubout", "-outform", "DER"))
    return private, public


@pytest.mark.parametrize("fmt", ["raw", "hex", "base64"])
@pytest.mark.parametrize("algorithm", [None, *RSA_OPTIONS])
def test_provision_wrap_of_symmetric_material_decrypts_with_openssl(
    tmp_path: Path, rsa_wrapping: tuple[Path, Path], algorithm: str | None, fmt: str
) -> None:
    private, public = rsa_wrapping
    secret = os.urandom(32)
    out = tmp_path / "EncryptedKeyMaterial_base64.txt"
    code, stdout, err = _run_wrap(tmp_path, public, secret, fmt, algorithm, out)
    assert code == 0, err
    assert stdout == "" and stat.S_IMODE(out.stat().st_mode) == 0o600
    chosen = algorithm or "RSAES_OAEP_SHA_256"  # the default
    assert err == f"wrote {chosen} wrapped material for {key_check_value(secret)} to {out}\n"
    wrapped = base64.b64decode(out.read_text().strip(), validate=True)
    assert len(wrapped) == 256  # wrapped directly: one RSA block, no ephemeral key
    assert openssl("pkeyutl", "-decrypt", "-inkey", private, *RSA_OPTIONS[chosen], data=wrapped) == secret
    assert secret.hex() not in err and base64.b64encode(secret).decode() not in err


def test_provision_wrap_sm2pke_decrypts_with_openssl(tmp_path: Path) -> None:
    iwk = make_key(tmp_path, "iwk-sm2", "EC_SM2")
    public = tmp_path / "publickey.bin"
    public.write_bytes(openssl("pkey", "-in", iwk, "-pubout", "-outform", "DER"))
    secret = os.urandom(16)
    code, stdout, err = _run_wrap(tmp_path, public, secret, "hex", "SM2PKE")
    assert code == 0, err
    wrapped = base64.b64decode(stdout.strip())
    assert len(wrapped) == 65 + 32 + 16 and wrapped[0] == 4
    assert openssl("pkeyutl", "-decrypt", "-inkey", iwk, data=sm2.c1c3c2_to_asn1(wrapped)) == secret


@pytest.mark.parametrize(
    ("secret", "fmt", "algorithm", "message"),
    [
        (b"\1" * 31, "raw", None,
         "error: --material: holds 31 bytes (raw); symmetric material is 32 (Aliyun_AES_256) or 16 "
         "(Aliyun_SM4) bytes\n"),
        (b"\1" * 32, "raw", "SM2PKE",
         "error: Aliyun_AES_256 material is wrapped with RSAES_OAEP_SHA_256 or RSAES_PKCS1_V1_5 or "
         "RSAES_OAEP_SHA_1, not SM2PKE\n"),
        (b"\1" * 16, "raw", "SM2PKE", "error: SM2PKE needs a EC_SM2 wrapping key, got RSA_2048\n"),
    ],
)  # fmt: skip
def test_provision_wrap_refusals(
    tmp_path: Path,
    rsa_wrapping: tuple[Path, Path],
    secret: bytes,
    fmt: str,
    algorithm: str | None,
    message: str,
) -> None:
    code, stdout, err = _run_wrap(tmp_path, rsa_wrapping[1], secret, fmt, algorithm)
    assert (code, stdout, err) == (1, "", message)


def test_wrap_algorithms_the_cli_offers() -> None:
    result = CliRunner().invoke(cli, ["wrap", "--help"])
    for algorithm in WrappingAlgorithm:
        assert algorithm.value in result.stdout
    assert "--material-format [raw|hex|base64]" in result.stdout


@pytest.mark.parametrize("fmt", ["raw", "hex", "base64"])
def test_fingerprint_prints_the_key_check_value_openssl_computes(tmp_path: Path, fmt: str) -> None:
    secret = os.urandom(16)
    material = tmp_path / "k"
    material.write_bytes(
        {"raw": secret, "hex": secret.hex().encode(), "base64": base64.b64encode(secret)}[fmt]
    )
    result = CliRunner().invoke(cli, ["fingerprint", str(material), "--material-format", fmt])
    label = b"byok-provisioner key check value"
    mac = openssl("dgst", "-sha256", "-mac", "HMAC", "-macopt", f"hexkey:{secret.hex()}", data=label)
    assert (result.exit_code, result.stdout) == (0, f"kcv:{mac.decode().split()[-1][:16]}\n")
    assert secret.hex() not in result.stdout + result.stderr


def test_fingerprint_refuses_what_is_no_symmetric_key(tmp_path: Path) -> None:
    material = tmp_path / "k"
    material.write_bytes(b"\1" * 20)
    result = CliRunner().invoke(cli, ["fingerprint", str(material), "--material-format", "raw"])
    assert (result.exit_code, result.stdout, result.stderr) == (
        1,
        "",
        "error: FILE: holds 20 bytes (raw); symmetric material is 32 (Aliyun_AES_256) or 16 "
        "(Aliyun_SM4) bytes\n",
    )
