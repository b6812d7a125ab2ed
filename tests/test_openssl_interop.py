"""Interop with the OpenSSL command line: keys it makes, `provision wrap` output it unwraps, its fingerprints.

Every key here is made by `openssl`, and every check decrypts or hashes with `openssl`, so the
provisioner's code is never its own judge. SM2 ciphertexts are converted from the vendor's C1C3C2
to the GM/T 0009 ASN.1 form OpenSSL reads; that conversion is the only step done in Python.
"""

from __future__ import annotations

import base64
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from provisioner import sm2
from provisioner.cli import cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command line"),
]

OAEP_DECRYPT = [
    "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt", "rsa_mgf1_md:sha256",
]


def openssl(*args: str | Path, data: bytes | None = None) -> bytes:
    result = subprocess.run(
        ["openssl", *map(str, args)], input=data, capture_output=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def sha256sum(data: bytes) -> str:
    result = subprocess.run(["sha256sum"], input=data, capture_output=True, check=True, timeout=10)
    return result.stdout.decode().split()[0]


def run(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def make_key(tmp: Path, name: str, spec: str) -> Path:
    path = tmp / f"{name}.pem"
    if spec.startswith("RSA_"):
        openssl("genrsa", "-out", path, spec.removeprefix("RSA_"))
    elif spec == "EC_SM2":
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:SM2", "-out", path)
    else:
        curve = {"EC_P256": "prime256v1", "EC_P256K": "secp256k1"}[spec]
        openssl("ecparam", "-name", curve, "-genkey", "-out", path)
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def rsa_wrapping(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("iwk")
    private = make_key(tmp, "iwk", "RSA_2048")
    public = tmp / "publickey.bin"
    public.write_bytes(openssl("pkey", "-in", private, "-pubout", "-outform", "DER"))
    return private, public


@pytest.mark.parametrize("spec", ["RSA_2048", "RSA_3072", "RSA_4096", "EC_P256", "EC_P256K"])
def test_wrap_unwraps_with_openssl(tmp_path: Path, rsa_wrapping: tuple[Path, Path], spec: str) -> None:
    iwk_private, iwk_public = rsa_wrapping
    tak = make_key(tmp_path, "tak", spec)
    out = tmp_path / "EncryptedKeyMaterial_base64.txt"
    code, _, err = run("wrap", "--public-key", iwk_public, "--material", tak, "--out", out)
    assert code == 0, err
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    blob = base64.b64decode(out.read_text())
    cipher_esk, cipher_tak = blob[:256], blob[256:]
    esk = openssl("pkeyutl", "-decrypt", "-inkey", iwk_private, *OAEP_DECRYPT, data=cipher_esk)
    assert len(esk) == 32
    takpriv = openssl("enc", "-d", "-aes-256-ecb", "-K", esk.hex(), "-nosalt", data=cipher_tak)
    assert takpriv == openssl("pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in", tak)

    expected = "sha256:" + sha256sum(openssl("pkey", "-in", tak, "-pubout", "-outform", "DER"))
    code, stdout, _ = run("fingerprint", tak)
    assert (code, stdout) == (0, expected + "\n")
    public_pem = tmp_path / "tak.pub.pem"
    public_pem.write_bytes(openssl("pkey", "-in", tak, "-pubout"))
    assert run("fingerprint", public_pem)[1] == expected + "\n"


def test_wrap_prints_base64_and_accepts_pem_and_base64_public_keys(
    tmp_path: Path, rsa_wrapping: tuple[Path, Path]
) -> None:
    iwk_private, iwk_public = rsa_wrapping
    tak = make_key(tmp_path, "tak", "EC_P256")
    pem = tmp_path / "PublicKey.pem"
    pem.write_bytes(openssl("pkey", "-in", iwk_private, "-pubout"))
    as_base64 = tmp_path / "PublicKey.b64"  # GetParametersForImport's PublicKey field, saved as is
    as_base64.write_text(base64.b64encode(iwk_public.read_bytes()).decode())
    outputs = []
    for public in (iwk_public, pem, as_base64):
        code, stdout, err = run("wrap", "--public-key", public, "--material", tak)
        assert code == 0, err
        blob = base64.b64decode(stdout.strip(), validate=True)
        esk = openssl("pkeyutl", "-decrypt", "-inkey", iwk_private, *OAEP_DECRYPT, data=blob[:256])
        takpriv = openssl("enc", "-d", "-aes-256-ecb", "-K", esk.hex(), "-nosalt", data=blob[256:])
        assert takpriv == openssl("pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in", tak)
        outputs.append(stdout)
    assert len(set(outputs)) == 3  # a fresh ESK every time


def _openssl_sm2_scalar(key: Path) -> bytes:
    text = openssl("pkey", "-in", key, "-text", "-noout").decode()
    match = re.search(r"priv:\n((?:\s+[0-9a-f:]+\n)+)", text)
    assert match, text
    hex_digits = re.sub(r"[\s:]", "", match.group(1))
    return int(hex_digits, 16).to_bytes(32, "big")


def test_sm2_wrap_unwraps_with_openssl(tmp_path: Path) -> None:
    iwk = make_key(tmp_path, "iwk-sm2", "EC_SM2")
    iwk_public = tmp_path / "publickey.bin"
    iwk_public.write_bytes(openssl("pkey", "-in", iwk, "-pubout", "-outform", "DER"))
    tak = make_key(tmp_path, "tak-sm2", "EC_SM2")
    code, stdout, err = run("wrap", "--public-key", iwk_public, "--material", tak)
    assert code == 0, err
    blob = base64.b64decode(stdout.strip())
    assert len(blob) == 113 + 32 and blob[0] == 4
    esk = openssl("pkeyutl", "-decrypt", "-inkey", iwk, data=sm2.c1c3c2_to_asn1(blob[:113]))
    assert len(esk) == 16
    d = openssl("enc", "-d", "-sm4-ecb", "-nopad", "-K", esk.hex(), "-nosalt", data=blob[113:])
    assert d == _openssl_sm2_scalar(tak)

    expected = "sha256:" + sha256sum(openssl("pkey", "-in", tak, "-pubout", "-outform", "DER"))
    assert run("fingerprint", tak)[1] == expected + "\n"


def test_sm2_openssl_encrypts_and_signs_for_us(tmp_path: Path) -> None:
    """The reverse direction, which the emulator relies on: OpenSSL's SM2PKE and SM2DSA outputs."""
    key = make_key(tmp_path, "sm2", "EC_SM2")
    public = tmp_path / "sm2.pub.pem"
    public.write_bytes(openssl("pkey", "-in", key, "-pubout"))
    d = int.from_bytes(_openssl_sm2_scalar(key), "big")
    message = b"sixteen byte esk"
    asn1 = openssl("pkeyutl", "-encrypt", "-pubin", "-inkey", public, data=message)
    assert sm2.decrypt(d, sm2.asn1_to_c1c3c2(asn1)) == message
    msg_file = tmp_path / "msg"
    msg_file.write_bytes(message)
    signature = openssl(
        "pkeyutl", "-sign", "-inkey", key, "-rawin", "-digest", "sm3", "-in", msg_file,
        "-pkeyopt", "distid:1234567812345678",
    )
    pub = sm2.public_key(d)
    assert sm2.verify_digest(pub, sm2.digest_message(pub, message), signature)
    # ...and OpenSSL verifies ours.
    sig_file = tmp_path / "sig"
    sig_file.write_bytes(sm2.sign_digest(d, sm2.digest_message(pub, message)))
    verified = openssl(
        "pkeyutl", "-verify", "-pubin", "-inkey", public, "-rawin", "-digest", "sm3", "-in", msg_file,
        "-sigfile", sig_file, "-pkeyopt", "distid:1234567812345678",
    )
    assert b"Signature Verified Successfully" in verified


def test_encrypted_openssl_keys_load(tmp_path: Path) -> None:
    """PKCS#8 (PBES2) and traditional PEM encryption, as OpenSSL writes them, SM2 included."""
    rsa_key = make_key(tmp_path, "r", "RSA_2048")
    sm2_key = make_key(tmp_path, "s", "EC_SM2")
    forms = {
        "r.p8.pem": openssl("pkcs8", "-topk8", "-in", rsa_key, "-passout", "pass:pw"),
        "r.trad.pem": openssl("rsa", "-in", rsa_key, "-aes256", "-passout", "pass:pw"),
        "s.p8.pem": openssl("pkcs8", "-topk8", "-in", sm2_key, "-passout", "pass:pw"),
        "s.p8.der": openssl("pkcs8", "-topk8", "-in", sm2_key, "-passout", "pass:pw", "-outform", "DER"),
        "s.trad.pem": openssl("ec", "-in", sm2_key, "-aes128", "-passout", "pass:pw"),
    }
    fingerprints = {name: run("fingerprint", rsa_key if name[0] == "r" else sm2_key)[1] for name in forms}
    for name, data in forms.items():
        path = tmp_path / name
        path.write_bytes(data)
        result = CliRunner(env={"PW": "pw"}).invoke(cli, ["fingerprint", str(path), "--passphrase-env", "PW"])
        assert (result.exit_code, result.stdout) == (0, fingerprints[name]), (name, result.stderr)
        code, _, err = run("fingerprint", path)
        assert code == 1
        assert err == f"error: file {path}: the private key is encrypted and no passphrase was given: " \
            "name the environment variable that holds it (material.passphrase_env in a manifest, " \
            "--passphrase-env VAR on the command line)\n"
