"""The two wrapping schemes: layout, round trips through the KMS-side unwrap, and refusals."""

from __future__ import annotations

import base64
import os
import stat
from functools import cache
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner import sm2
from provisioner.cli import cli
from provisioner.errors import WrappingError
from provisioner.material import PrivateMaterial, parse_private_key
from provisioner.model import KeySpec, WrappingAlgorithm
from provisioner.wrapping import (
    load_wrapping_public_key,
    unwrap_rsa_aes,
    unwrap_sm2_sm4,
    wrap,
    wrap_rsa_aes,
    wrap_sm2_sm4,
    wrapping_key_spec,
)

RSA_OAEP = WrappingAlgorithm.RSA_OAEP_AES_ECB
SM2PKE = WrappingAlgorithm.SM2PKE_SM4_ECB


@cache
def rsa_wrapping_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def spki(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@cache
def sm2_wrapping_scalar() -> int:
    return sm2.generate_private_key()


def sm2_wrapping_spki() -> bytes:
    return sm2.spki_der(sm2.public_key(sm2_wrapping_scalar()))


def p256_material() -> PrivateMaterial:
    key = ec.generate_private_key(ec.SECP256R1())
    return parse_private_key(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )


def sm2_material(d: int | None = None) -> PrivateMaterial:
    return parse_private_key(sm2.private_key_pkcs8_der(d or sm2.generate_private_key()))


def test_rsa_wrap_layout_and_unwrap() -> None:
    material = p256_material()
    blob = base64.b64decode(wrap(material, spki(rsa_wrapping_key()), RSA_OAEP))
    pkcs8 = material.pkcs8_der()
    # 256 bytes of OAEP, then AES-ECB with PKCS#7: always at least one byte of padding.
    assert len(blob) == 256 + (len(pkcs8) // 16 + 1) * 16
    assert unwrap_rsa_aes(rsa_wrapping_key(), blob) == pkcs8


def test_rsa_wrap_with_fixed_esk_matches_independent_aes() -> None:
    esk = bytes(range(32))
    blob = wrap_rsa_aes(spki(rsa_wrapping_key()), b"sixteen bytes!!!", esk=esk)
    expected_tak = Cipher(algorithms.AES(esk), modes.ECB()).encryptor().update(
        b"sixteen bytes!!!" + bytes([16]) * 16
    )
    assert blob[256:] == expected_tak
    assert unwrap_rsa_aes(rsa_wrapping_key(), blob) == b"sixteen bytes!!!"


def test_two_wraps_differ() -> None:
    material = p256_material()
    first = wrap(material, spki(rsa_wrapping_key()), RSA_OAEP)
    second = wrap(material, spki(rsa_wrapping_key()), RSA_OAEP)
    assert first != second
    sm2_key = sm2_material()
    assert wrap(sm2_key, sm2_wrapping_spki(), SM2PKE) != wrap(sm2_key, sm2_wrapping_spki(), SM2PKE)


def test_sm2_wrap_layout_and_unwrap() -> None:
    d = 0x1234  # a scalar far shorter than 32 bytes: must travel left-padded
    material = sm2_material(d)
    blob = base64.b64decode(wrap(material, sm2_wrapping_spki(), SM2PKE))
    assert len(blob) == 65 + 32 + 16 + 32
    assert blob[0] == 4
    assert unwrap_sm2_sm4(sm2_wrapping_scalar(), blob) == d.to_bytes(32, "big")


def test_sm2_wrap_with_fixed_esk_and_k_is_deterministic() -> None:
    esk = bytes(range(16))
    scalar = (7).to_bytes(32, "big")
    one = wrap_sm2_sm4(sm2_wrapping_spki(), scalar, esk=esk, k=12345)
    two = wrap_sm2_sm4(sm2_wrapping_spki(), scalar, esk=esk, k=12345)
    assert one == two
    assert sm2.decrypt(sm2_wrapping_scalar(), one[:113]) == esk
    assert one[113:] == Cipher(algorithms.SM4(esk), modes.ECB()).encryptor().update(scalar)


def test_algorithm_must_fit_material() -> None:
    with pytest.raises(WrappingError, match="EC_P256 material is wrapped with RSAES_OAEP"):
        wrap(p256_material(), sm2_wrapping_spki(), SM2PKE)
    with pytest.raises(WrappingError, match="EC_SM2 material is wrapped with SM2PKE_SM4_ECB"):
        wrap(sm2_material(), spki(rsa_wrapping_key()), RSA_OAEP)


def test_wrapping_key_must_fit_algorithm() -> None:
    with pytest.raises(WrappingError, match="SM2PKE_SM4_ECB needs a EC_SM2 wrapping key, got RSA_2048"):
        wrap(sm2_material(), spki(rsa_wrapping_key()), SM2PKE)
    with pytest.raises(WrappingError, match="needs a RSA_2048 wrapping key, got EC_SM2"):
        wrap(p256_material(), sm2_wrapping_spki(), RSA_OAEP)


def test_load_wrapping_public_key_accepts_der_pem_and_base64() -> None:
    der = spki(rsa_wrapping_key())
    pem = rsa_wrapping_key().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pkcs1 = rsa_wrapping_key().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )
    for form in (der, pem, pkcs1, base64.b64encode(der), base64.b64encode(der) + b"\n"):
        assert load_wrapping_public_key(form) == der
    sm2_der = sm2_wrapping_spki()
    assert load_wrapping_public_key(base64.b64encode(sm2_der)) == sm2_der
    sm2_pem = sm2.public_key_pem(sm2.public_key(sm2_wrapping_scalar())).encode()
    assert load_wrapping_public_key(sm2_pem) == sm2_der
    assert wrapping_key_spec(sm2_der) is KeySpec.EC_SM2


def test_load_wrapping_public_key_refusals() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(WrappingError, match="RSA of 1024 bits; KMS wraps with RSA_2048"):
        load_wrapping_public_key(spki(small))
    with pytest.raises(WrappingError, match="is EC on curve secp256r1; KMS wraps with RSA_2048 or EC_SM2"):
        load_wrapping_public_key(spki(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(WrappingError, match="neither PEM, DER nor base64 DER"):
        load_wrapping_public_key(b"not a key at all!")
    with pytest.raises(WrappingError, match="not a DER SubjectPublicKeyInfo"):
        load_wrapping_public_key(base64.b64encode(b"\x30\x03\x02\x01\x00"))
    private_pem = small.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(WrappingError, match="expected a PUBLIC KEY PEM block, found PRIVATE KEY"):
        load_wrapping_public_key(private_pem)


def test_unwrap_rsa_refusals() -> None:
    blob = wrap_rsa_aes(spki(rsa_wrapping_key()), b"payload")
    with pytest.raises(WrappingError, match="wrong length"):
        unwrap_rsa_aes(rsa_wrapping_key(), blob[:256])
    with pytest.raises(WrappingError, match="wrong length"):
        unwrap_rsa_aes(rsa_wrapping_key(), blob[:-1])
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(WrappingError, match="does not decrypt under the wrapping key"):
        unwrap_rsa_aes(other, blob)
    short_esk = rsa_wrapping_key().public_key().encrypt(bytes(16), _oaep())
    with pytest.raises(WrappingError, match="ESK is 16 bytes, expected 32"):
        unwrap_rsa_aes(rsa_wrapping_key(), short_esk + blob[256:])
    tampered = blob[:256] + bytes(16)
    with pytest.raises(WrappingError, match="invalid PKCS#7 padding"):
        unwrap_rsa_aes(rsa_wrapping_key(), tampered)


def _oaep() -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def test_unwrap_sm2_refusals() -> None:
    blob = wrap_sm2_sm4(sm2_wrapping_spki(), bytes(31) + b"\x01")
    with pytest.raises(WrappingError, match="must be 145 bytes, got 144"):
        unwrap_sm2_sm4(sm2_wrapping_scalar(), blob[:-1])
    tampered = bytearray(blob)
    tampered[100] ^= 1
    with pytest.raises(WrappingError, match="does not decrypt under the SM2 wrapping key"):
        unwrap_sm2_sm4(sm2_wrapping_scalar(), bytes(tampered))
    with pytest.raises(WrappingError, match="SM2 private scalar must be 32 bytes, got 31"):
        wrap_sm2_sm4(sm2_wrapping_spki(), bytes(31))
    with pytest.raises(WrappingError, match="ESK must be 16 bytes, got 32"):
        wrap_sm2_sm4(sm2_wrapping_spki(), bytes(32), esk=bytes(32))


# --- the `wrap` command ------------------------------------------------------------------------------


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _key_files(tmp_path: Path) -> tuple[Path, Path]:
    material = _write(
        tmp_path / "tak.pem",
        ec.generate_private_key(ec.SECP256K1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    public = _write(tmp_path / "publickey.bin", spki(rsa_wrapping_key()), 0o644)
    return material, public


def test_wrap_command_out_file_is_owner_only_from_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    material, public = _key_files(tmp_path)
    out = _write(tmp_path / "wrapped.txt", b"old", 0o644)
    modes: list[int] = []
    real_open = os.open

    def spy_open(path: str, flags: int, mode: int = 0o777, *args: object, **kw: object) -> int:
        fd = real_open(path, flags, mode, *args, **kw)  # type: ignore[arg-type]
        if flags & os.O_CREAT:  # files the command creates, not the inputs it reads
            modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return fd

    monkeypatch.setattr(os, "open", spy_open)
    old_umask = os.umask(0)  # the widest umask: the mode must not depend on it
    try:
        result = CliRunner().invoke(
            cli, ["wrap", "--public-key", str(public), "--material", str(material), "--out", str(out)]
        )
    finally:
        os.umask(old_umask)
    assert result.exit_code == 0, result.stderr
    assert modes == [0o600]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    blob = base64.b64decode(out.read_text())
    assert unwrap_rsa_aes(rsa_wrapping_key(), blob) == parse_private_key(material.read_bytes()).pkcs8_der()
    fingerprint = parse_private_key(material.read_bytes()).fingerprint
    assert result.stderr == f"wrote {RSA_OAEP} wrapped material for {fingerprint} to {out}\n"
    assert result.stdout == ""
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    pkcs8 = parse_private_key(material.read_bytes()).pkcs8_der()
    for needle in (pkcs8.hex(), base64.b64encode(pkcs8).decode()[8:72]):
        assert needle not in result.output and needle not in out.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--public-key", "{tmp}/none.bin", "--material", "{material}"],
         "error: --public-key {tmp}/none.bin: no such file\n"),
        (["--public-key", "{material}", "--material", "{material}"],
         "error: --public-key {material}: wrapping public key: expected a PUBLIC KEY PEM block, "
         "found PRIVATE KEY\n"),
        (["--public-key", "{public}", "--material", "{tmp}/none.pem"],
         "error: --material: file {tmp}/none.pem: no such file\n"),
        (["--public-key", "{public}", "--material", "{public}"],
         "error: --material: file {public}: holds a public key; a private key is needed\n"),
        (["--public-key", "{public}", "--material", "{material}", "--algorithm", "SM2PKE_SM4_ECB"],
         "error: EC_P256K material is wrapped with RSAES_OAEP_SHA_256_AES_256_ECB_PKCS7_PAD, "
         "not SM2PKE_SM4_ECB\n"),
    ],
    ids=["missing-public", "private-as-public", "missing-material", "public-as-material", "wrong-algorithm"],
)
def test_wrap_command_errors(tmp_path: Path, args: list[str], message: str) -> None:
    material, public = _key_files(tmp_path)
    names = {"tmp": str(tmp_path), "material": str(material), "public": str(public)}
    result = CliRunner().invoke(cli, ["wrap", *(a.format(**names) for a in args)])
    assert result.exit_code == 1
    assert result.stderr == message.format(**names)
    assert result.stdout == ""


def test_fingerprint_command_errors(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["fingerprint", str(tmp_path / "none.pem")])
    assert (result.exit_code, result.stderr) == (1, f"error: file {tmp_path / 'none.pem'}: no such file\n")
    garbage = _write(tmp_path / "g.pem", b"garbage")
    result = CliRunner().invoke(cli, ["fingerprint", str(garbage)])
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: file {garbage}: holds no public or private key in PEM or DER (public: SubjectPublicKeyInfo "
        "or PKCS#1; private: PKCS#1, SEC1 or PKCS#8); give the key file itself\n"
    )
    result = CliRunner(env={"PW": None}).invoke(cli, ["fingerprint", str(garbage), "--passphrase-env", "PW"])
    assert (result.exit_code, result.stderr) == (
        1, "error: --passphrase-env: environment variable PW is not set\n"
    )


@settings(max_examples=25, deadline=None)
@given(plaintext=st.binary(min_size=0, max_size=300), esk=st.binary(min_size=32, max_size=32))
def test_rsa_wrap_round_trips_any_length(plaintext: bytes, esk: bytes) -> None:
    blob = wrap_rsa_aes(spki(rsa_wrapping_key()), plaintext, esk=esk)
    assert len(blob) == 256 + (len(plaintext) // 16 + 1) * 16
    assert unwrap_rsa_aes(rsa_wrapping_key(), blob) == plaintext


@settings(max_examples=10, deadline=None)
@given(d=st.integers(min_value=1, max_value=sm2.N - 2))
def test_sm2_wrap_round_trips_any_scalar(d: int) -> None:
    blob = base64.b64decode(wrap(sm2_material(d), sm2_wrapping_spki(), SM2PKE))
    assert unwrap_sm2_sm4(sm2_wrapping_scalar(), blob) == d.to_bytes(32, "big")


def test_wrap_command_out_into_missing_folder_is_one_clear_error(tmp_path: Path) -> None:
    material, public = _key_files(tmp_path)
    out = tmp_path / "no-such-folder" / "wrapped.txt"
    result = CliRunner().invoke(
        cli, ["wrap", "--public-key", str(public), "--material", str(material), "--out", str(out)]
    )
    assert result.exit_code == 1
    assert result.stderr == f"error: --out {out}: cannot write: No such file or directory\n"
    assert "Traceback" not in result.output
    assert not out.parent.exists()
