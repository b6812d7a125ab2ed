"""Private material: every encoding to one fingerprint, sources, spec and pin checks, no leaks."""

from __future__ import annotations

import base64
import os
import pickle
import sys
from functools import cache
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from provisioner import _der, sm2
from provisioner.errors import MaterialError
from provisioner.material import (
    fingerprint_of_key_file,
    fingerprint_of_public_key,
    fingerprint_of_spki,
    load_material,
    parse_private_key,
    spec_of_spki,
    verify_material,
)
from provisioner.model import KeySpec, Location, MaterialSource, SourceKind

Enc = serialization.Encoding
Fmt = serialization.PrivateFormat
NoEnc = serialization.NoEncryption()
PASS = b"correct horse"


@cache
def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@cache
def ec_key(curve: str) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1() if curve == "p256" else ec.SECP256K1())


def spki(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(Enc.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def encodings(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> list[tuple[bytes, bytes | None]]:
    enc = serialization.BestAvailableEncryption(PASS)
    out: list[tuple[bytes, bytes | None]] = [
        (key.private_bytes(Enc.PEM, Fmt.TraditionalOpenSSL, NoEnc), None),  # PKCS#1 / SEC1
        (key.private_bytes(Enc.DER, Fmt.TraditionalOpenSSL, NoEnc), None),
        (key.private_bytes(Enc.PEM, Fmt.PKCS8, NoEnc), None),
        (key.private_bytes(Enc.DER, Fmt.PKCS8, NoEnc), None),
        (base64.b64encode(key.private_bytes(Enc.DER, Fmt.PKCS8, NoEnc)), None),
        (key.private_bytes(Enc.PEM, Fmt.PKCS8, enc), PASS),
        (key.private_bytes(Enc.DER, Fmt.PKCS8, enc), PASS),
        (key.private_bytes(Enc.PEM, Fmt.TraditionalOpenSSL, enc), PASS),
    ]
    return out


@pytest.mark.parametrize(
    ("make", "spec"),
    [
        (lambda: rsa_key(2048), KeySpec.RSA_2048),
        (lambda: rsa_key(3072), KeySpec.RSA_3072),
        (lambda: ec_key("p256"), KeySpec.EC_P256),
        (lambda: ec_key("k1"), KeySpec.EC_P256K),
    ],
    ids=["RSA_2048", "RSA_3072", "EC_P256", "EC_P256K"],
)
def test_every_encoding_gives_one_fingerprint(make, spec) -> None:  # type: ignore[no-untyped-def]
    key = make()
    expected = fingerprint_of_spki(spki(key))
    pkcs8 = key.private_bytes(Enc.DER, Fmt.PKCS8, NoEnc)
    for data, passphrase in encodings(key):
        material = parse_private_key(data, passphrase)
        assert material.spec is spec
        assert material.fingerprint == expected
        assert material.pkcs8_der() == pkcs8
        assert material.public_key_der() == spki(key)


def test_rsa_4096_is_recognised() -> None:
    key = rsa_key(4096)
    assert parse_private_key(key.private_bytes(Enc.DER, Fmt.PKCS8, NoEnc)).spec is KeySpec.RSA_4096


def test_sm2_encodings_give_one_fingerprint() -> None:
    d = sm2.generate_private_key()
    expected = fingerprint_of_spki(sm2.spki_der(sm2.public_key(d)))
    for data in (
        sm2.private_key_pkcs8_der(d),
        sm2.private_key_pkcs8_pem(d).encode(),
        sm2.private_key_sec1_der(d),
        b"-----BEGIN SM2 PRIVATE KEY-----\n"
        + base64.encodebytes(sm2.private_key_sec1_der(d))
        + b"-----END SM2 PRIVATE KEY-----\n",
        base64.b64encode(sm2.private_key_pkcs8_der(d)),
    ):
        material = parse_private_key(data)
        assert material.spec is KeySpec.EC_SM2
        assert material.fingerprint == expected
        assert material.sm2_scalar() == d.to_bytes(32, "big")
        assert material.private_key() == d
        assert material.pkcs8_der() == sm2.private_key_pkcs8_der(d)


def test_sm2_scalar_only_for_sm2() -> None:
    material = parse_private_key(ec_key("p256").private_bytes(Enc.DER, Fmt.PKCS8, NoEnc))
    with pytest.raises(MaterialError, match="EC_P256 material has no SM2 scalar"):
        material.sm2_scalar()


def test_pem_with_ec_parameters_block_first() -> None:
    # `openssl ecparam -genkey` writes an EC PARAMETERS block before the key.
    params = b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
    data = params + ec_key("p256").private_bytes(Enc.PEM, Fmt.TraditionalOpenSSL, NoEnc)
    assert parse_private_key(data).spec is KeySpec.EC_P256


@pytest.mark.parametrize(
    ("data", "passphrase", "message"),
    [
        (b"", None, "is empty"),
        (b"this is not a key", None, r"does not hold a private key in PEM or DER \(PKCS#1, SEC1 or PKCS#8\)"),
        (b"\x30\x82\x01\x00garbage", None, "does not hold a private key in PEM or DER"),
        (b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n", None, "not valid base64"),
        (b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", None,
         "does not hold a private key"),
    ],
    ids=["empty", "text", "bad-der", "bad-base64", "csr"],
)
def test_garbage_is_refused(data: bytes, passphrase: bytes | None, message: str) -> None:
    with pytest.raises(MaterialError, match=message):
        parse_private_key(data, passphrase)


def test_public_key_instead_of_private() -> None:
    for data in (
        spki(rsa_key()),
        rsa_key().public_key().public_bytes(Enc.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        rsa_key().public_key().public_bytes(Enc.PEM, serialization.PublicFormat.PKCS1),
        sm2.spki_der(sm2.public_key(5)),
        sm2.public_key_pem(sm2.public_key(5)).encode(),
    ):
        with pytest.raises(MaterialError, match="holds a public key; a private key is needed"):
            parse_private_key(data)


def test_encrypted_without_or_with_wrong_passphrase() -> None:
    for data, _ in encodings(rsa_key())[5:]:
        needs = (
            r"encrypted and no passphrase was given: name the environment variable that holds it "
            r"\(material\.passphrase_env in a manifest, --passphrase-env VAR on the command line\)"
        )
        with pytest.raises(MaterialError, match=needs):
            parse_private_key(data)
        with pytest.raises(MaterialError, match="does not decrypt with the given passphrase"):
            parse_private_key(data, b"wrong")


def test_unsupported_keys() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(MaterialError, match=r"RSA key of 1024 bits is not a supported spec \(RSA_2048"):
        parse_private_key(small.private_bytes(Enc.PEM, Fmt.PKCS8, NoEnc))
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(MaterialError, match="EC key on curve secp384r1 is not supported"):
        parse_private_key(p384.private_bytes(Enc.PEM, Fmt.PKCS8, NoEnc))
    edkey = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(MaterialError, match="Ed25519 keys are not supported; expected an RSA or EC"):
        parse_private_key(edkey.private_bytes(Enc.PEM, Fmt.PKCS8, NoEnc))


def test_two_private_keys_in_one_pem() -> None:
    one = rsa_key().private_bytes(Enc.PEM, Fmt.PKCS8, NoEnc)
    with pytest.raises(MaterialError, match="more than one private key"):
        parse_private_key(one + one)


# --- the secret type -----------------------------------------------------------------------------


def test_repr_str_show_only_spec_and_fingerprint() -> None:
    material = parse_private_key(ec_key("p256").private_bytes(Enc.DER, Fmt.PKCS8, NoEnc))
    text = f"PrivateMaterial(spec=EC_P256, fingerprint={material.fingerprint})"
    assert repr(material) == str(material) == text
    assert not hasattr(material, "__dict__")


def test_cannot_be_pickled_and_wipe_ends_use() -> None:
    material = parse_private_key(sm2.private_key_pkcs8_der(sm2.generate_private_key()))
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(material)
    material.wipe()
    with pytest.raises(MaterialError, match="was wiped after use"):
        material.pkcs8_der()
    assert material.fingerprint.startswith("sha256:")


def test_public_key_pem_round_trips() -> None:
    material = parse_private_key(rsa_key().private_bytes(Enc.DER, Fmt.PKCS8, NoEnc))
    loaded = serialization.load_pem_public_key(material.public_key_pem().encode())
    assert loaded.public_bytes(Enc.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == spki(rsa_key())


# --- sources ---------------------------------------------------------------------------------------


def file_source(path: Path, **kw: object) -> MaterialSource:
    return MaterialSource(kind=SourceKind.FILE, file=path, location=Location("m.yaml", 3, 7), **kw)  # type: ignore[arg-type]


def write_key(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_file_source_and_permission_warning(tmp_path: Path) -> None:
    key = write_key(tmp_path / "k.pem", ec_key("k1").private_bytes(Enc.PEM, Fmt.PKCS8, NoEnc))
    warnings: list[str] = []
    assert load_material(file_source(key), warn=warnings.append).spec is KeySpec.EC_P256K
    assert warnings == []
    key.chmod(0o640)
    load_material(file_source(key), warn=warnings.append)
    assert warnings == [
        f"file {key}: key file is readable by group or others (mode 0640); run chmod 600 on it"
    ]


def test_file_source_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(MaterialError, match=f"^file {tmp_path / 'nope.pem'}: no such file$"):
        load_material(file_source(tmp_path / "nope.pem"))
    with pytest.raises(MaterialError, match=f"^file {tmp_path}: is a folder, not a regular file$"):
        load_material(file_source(tmp_path))


def test_file_source_encrypted_needs_passphrase_env(tmp_path: Path) -> None:
    data = rsa_key().private_bytes(Enc.PEM, Fmt.PKCS8, serialization.BestAvailableEncryption(PASS))
    key = write_key(tmp_path / "k.pem", data)
    with pytest.raises(MaterialError, match=f"^file {key}: the private key is encrypted and no passphrase"):
        load_material(file_source(key), environ={})
    source = file_source(key, passphrase_env="KEY_PASS")
    unset = f"^file {key}: passphrase environment variable KEY_PASS is not set$"
    with pytest.raises(MaterialError, match=unset):
        load_material(source, environ={})
    assert load_material(source, environ={"KEY_PASS": PASS.decode()}).spec is KeySpec.RSA_2048


def test_env_source_pem_and_base64(tmp_path: Path) -> None:
    key = ec_key("p256")
    source = MaterialSource(kind=SourceKind.ENV, env="TAK")
    pem = key.private_bytes(Enc.PEM, Fmt.PKCS8, NoEnc).decode()
    b64 = base64.b64encode(key.private_bytes(Enc.DER, Fmt.TraditionalOpenSSL, NoEnc)).decode()
    for value in (pem, b64):
        assert load_material(source, environ={"TAK": value}).fingerprint == fingerprint_of_spki(spki(key))
    with pytest.raises(MaterialError, match="^environment variable TAK: is not set$"):
        load_material(source, environ={})
    with pytest.raises(MaterialError, match="^environment variable TAK: is empty$"):
        load_material(source, environ={"TAK": "  "})
    with pytest.raises(MaterialError, match="^environment variable TAK: does not hold a private key"):
        load_material(source, environ={"TAK": "hunter2"})


def _py(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


@pytest.mark.slow
def test_command_source(tmp_path: Path) -> None:
    key = write_key(tmp_path / "k.der", sm2.private_key_pkcs8_der(12345))
    ok = MaterialSource(kind=SourceKind.COMMAND, command=_py(
        f"import sys; sys.stdout.buffer.write(open({str(key)!r}, 'rb').read())"
    ))
    assert load_material(ok, allow_commands=True).sm2_scalar() == (12345).to_bytes(32, "big")
    failing = MaterialSource(kind=SourceKind.COMMAND, command=_py(
        "import sys; print('fetching'); print('step 1', file=sys.stderr); "
        "print('vault: permission denied for secret/tak', file=sys.stderr); sys.exit(3)"
    ))
    # Its stderr is never shown (a tool may print a token there): the exit status only.
    with pytest.raises(MaterialError, match=r": exited with status 3 \(its standard error is not shown\)$"):
        load_material(failing, allow_commands=True)
    missing = MaterialSource(kind=SourceKind.COMMAND, command=("/nonexistent/fetch-key", "--id", "1"))
    with pytest.raises(
        MaterialError,
        match="^command /nonexistent/fetch-key --id 1: program /nonexistent/fetch-key not found$",
    ):
        load_material(missing, allow_commands=True)
    # No shell: a `;` is an argument, not a command separator.
    no_shell = MaterialSource(kind=SourceKind.COMMAND, command=("echo", "x;", "cat", str(key)))
    with pytest.raises(MaterialError, match="does not hold a private key"):
        load_material(no_shell, allow_commands=True)


@pytest.mark.slow
def test_command_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("provisioner.material.COMMAND_TIMEOUT_SECONDS", 0.5)
    slow = MaterialSource(kind=SourceKind.COMMAND, command=_py("import time; time.sleep(5)"))
    with pytest.raises(MaterialError, match=r": timed out after 0.5 seconds$"):
        load_material(slow, allow_commands=True)


@pytest.mark.slow
def test_command_gets_its_pass_env_from_the_given_environment(tmp_path: Path) -> None:
    key = write_key(tmp_path / "k.pem", ec_key("p256").private_bytes(Enc.PEM, Fmt.PKCS8, NoEnc))
    source = MaterialSource(
        kind=SourceKind.COMMAND,
        command=_py("import os; print(open(os.environ['KEY_PATH']).read())"),
        pass_env=("KEY_PATH",),
    )
    env = {"KEY_PATH": str(key), "PATH": os.environ.get("PATH", "")}
    assert load_material(source, environ=env, allow_commands=True).spec is KeySpec.EC_P256


# --- verify_material ---------------------------------------------------------------------------------


def test_verify_material_spec_curve_and_pin(tmp_path: Path) -> None:
    key = write_key(tmp_path / "k1.pem", ec_key("k1").private_bytes(Enc.PEM, Fmt.PKCS8, NoEnc))
    found = verify_material(file_source(key), KeySpec.EC_P256K)
    assert found.spec is KeySpec.EC_P256K
    with pytest.raises(
        MaterialError,
        match=rf"^file {key}: expected key spec EC_P256 \(curve P-256\), found EC_P256K \(curve secp256k1\)$",
    ):
        verify_material(file_source(key), KeySpec.EC_P256)
    with pytest.raises(MaterialError, match=rf"^file {key}: expected key spec RSA_2048, found EC_P256K"):
        verify_material(file_source(key), KeySpec.RSA_2048)
    rsa_file = write_key(tmp_path / "r.pem", rsa_key(3072).private_bytes(Enc.PEM, Fmt.PKCS8, NoEnc))
    wrong_size = rf"^file {rsa_file}: expected key spec RSA_2048, found RSA_3072$"
    with pytest.raises(MaterialError, match=wrong_size):
        verify_material(file_source(rsa_file), KeySpec.RSA_2048)
    pin = "sha256:" + "ab" * 32
    with pytest.raises(
        MaterialError, match=rf"^file {key}: fingerprint {found.fingerprint} does not match the pinned {pin}$"
    ):
        verify_material(file_source(key, fingerprint=pin), KeySpec.EC_P256K)
    upper = "sha256:" + found.fingerprint.removeprefix("sha256:").upper()
    again = verify_material(file_source(key, fingerprint=upper), KeySpec.EC_P256K)
    assert again.fingerprint == found.fingerprint


# --- public keys and fingerprint files -------------------------------------------------------------


def test_fingerprint_of_key_files(tmp_path: Path) -> None:
    key = rsa_key()
    expected = fingerprint_of_spki(spki(key))
    files = {
        "priv.pem": key.private_bytes(Enc.PEM, Fmt.TraditionalOpenSSL, NoEnc),
        "priv.der": key.private_bytes(Enc.DER, Fmt.PKCS8, NoEnc),
        "pub.pem": key.public_key().public_bytes(Enc.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "pub.der": spki(key),
        "pub-pkcs1.pem": key.public_key().public_bytes(Enc.PEM, serialization.PublicFormat.PKCS1),
    }
    for name, data in files.items():
        assert fingerprint_of_key_file(write_key(tmp_path / name, data)) == expected, name
    d = sm2.generate_private_key()
    sm2_expected = fingerprint_of_spki(sm2.spki_der(sm2.public_key(d)))
    for name, data in {
        "sm2.pem": sm2.private_key_pkcs8_pem(d).encode(),
        "sm2-pub.pem": sm2.public_key_pem(sm2.public_key(d)).encode(),
        "sm2-pub.der": sm2.spki_der(sm2.public_key(d)),
    }.items():
        assert fingerprint_of_key_file(write_key(tmp_path / name, data)) == sm2_expected, name


def test_fingerprint_of_key_file_errors(tmp_path: Path) -> None:
    with pytest.raises(MaterialError, match=f"^file {tmp_path / 'x'}: no such file$"):
        fingerprint_of_key_file(tmp_path / "x")
    junk = write_key(tmp_path / "junk", b"junk")
    with pytest.raises(MaterialError, match=f"^file {junk}: holds no public or private key in PEM or DER"):
        fingerprint_of_key_file(junk)
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    p384_pem = p384.public_bytes(Enc.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    pub = write_key(tmp_path / "p384.pem", p384_pem)
    with pytest.raises(MaterialError, match=f"^file {pub}: public key is not of a supported spec$"):
        fingerprint_of_key_file(pub)


def test_fingerprint_of_public_key_bytes() -> None:
    key = ec_key("k1")
    expected = fingerprint_of_spki(spki(key))
    pem = key.public_key().public_bytes(Enc.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    point = key.public_key().public_bytes(Enc.X962, serialization.PublicFormat.CompressedPoint)
    algorithm = _der.sequence(_der.oid("1.2.840.10045.2.1"), _der.oid("1.3.132.0.10"))
    compressed = _der.sequence(algorithm, _der.bit_string(point))  # a valid SPKI, not the canonical one
    assert compressed != spki(key)
    assert fingerprint_of_public_key(pem) == fingerprint_of_public_key(compressed) == expected
    with pytest.raises(MaterialError, match="^not a PEM or DER public key$"):
        fingerprint_of_public_key(key.private_bytes(Enc.PEM, Fmt.PKCS8, NoEnc))


def test_file_too_large(tmp_path: Path) -> None:
    big = write_key(tmp_path / "big.bin", bytes(2 << 20))
    with pytest.raises(MaterialError, match=rf"^file {big}: 2097152 bytes is too large \(at most 1048576\)$"):
        load_material(file_source(big))


def test_spec_of_spki() -> None:
    assert spec_of_spki(spki(rsa_key(3072))) is KeySpec.RSA_3072
    assert spec_of_spki(spki(ec_key("k1"))) is KeySpec.EC_P256K
    assert spec_of_spki(sm2.spki_der(sm2.public_key(9))) is KeySpec.EC_SM2
    with pytest.raises(MaterialError, match="^not a DER SubjectPublicKeyInfo$"):
        spec_of_spki(b"\x30\x00")


# --- no plaintext anywhere -------------------------------------------------------------------------


def _needles(material_bytes: list[bytes]) -> list[str]:
    """Every form in which plaintext could leak, long enough not to match by chance."""
    out: list[str] = []
    for raw in material_bytes:
        out += [raw.hex(), raw.hex().upper(), base64.b64encode(raw).decode()[8:72]]
        out += [repr(raw)[2:60]]
    return out


def test_no_plaintext_in_reprs_errors_or_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from provisioner.model import WrappingAlgorithm
    from provisioner.wrapping import wrap

    d = sm2.generate_private_key()
    key = ec_key("p256")
    pkcs8 = key.private_bytes(Enc.DER, Fmt.PKCS8, NoEnc)
    pem = key.private_bytes(Enc.PEM, Fmt.PKCS8, NoEnc)
    scalar_ec = key.private_numbers().private_value.to_bytes(32, "big")
    secrets_ = [pkcs8, scalar_ec, d.to_bytes(32, "big"), sm2.private_key_pkcs8_der(d)]
    texts: list[str] = []
    ec_material = parse_private_key(pem)
    sm2_material = parse_private_key(sm2.private_key_pkcs8_der(d))
    texts += [repr(ec_material), str(sm2_material), f"{ec_material!r} {sm2_material}"]
    # Errors raised while holding real key bytes: wrong spec, wrong pin, wrong algorithm, truncation.
    path = write_key(tmp_path / "k.pem", pem, 0o644)
    env_source = MaterialSource(kind=SourceKind.ENV, env="K")
    attempts = [
        lambda: verify_material(file_source(path), KeySpec.EC_P256K, warn=texts.append),
        lambda: verify_material(file_source(path, fingerprint="sha256:" + "0" * 64), KeySpec.EC_P256),
        lambda: parse_private_key(pem[:-40]),
        lambda: parse_private_key(pkcs8[:-3]),
        lambda: parse_private_key(pkcs8 + b"\x00"),
        lambda: load_material(env_source, environ={"K": pem.decode()[:-30]}),
        lambda: wrap(sm2_material, spki(rsa_key()), WrappingAlgorithm.RSA_OAEP_AES_ECB),
        lambda: parse_private_key(sm2.private_key_pkcs8_der(d)[:-2]),
    ]
    for attempt in attempts:
        with pytest.raises(Exception) as info:  # noqa: B017 - every failure is scanned below
            attempt()
        texts.append(str(info.value))
        texts.append(repr(info.value))
        cause = info.value.__cause__ or info.value.__context__
        texts.append(repr(cause))
    captured = capsys.readouterr()
    texts += [captured.out, captured.err, caplog.text]
    blob = "\n".join(texts)
    assert "EC_P256K" in blob and "fingerprint" in blob  # the scan saw real messages
    for needle in _needles(secrets_):
        assert needle not in blob


def test_inconsistent_rsa_key_is_refused() -> None:
    """OpenSSL's slow primality check is skipped; the cheap consistency check must catch a bad CRT value."""
    from cryptography.hazmat.primitives.asymmetric import rsa as _rsa

    from provisioner.material import parse_private_key

    good = _rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
    bad = _rsa.RSAPrivateNumbers(
        p=good.p, q=good.q, d=good.d, dmp1=good.dmp1 ^ 2, dmq1=good.dmq1, iqmp=good.iqmp,
        public_numbers=good.public_numbers,
    ).private_key(unsafe_skip_rsa_key_validation=True)
    from cryptography.hazmat.primitives import serialization as _ser

    der = bad.private_bytes(_ser.Encoding.DER, _ser.PrivateFormat.PKCS8, _ser.NoEncryption())
    with pytest.raises(MaterialError, match="the RSA private key is inconsistent: its numbers do not fit"):
        parse_private_key(der)
