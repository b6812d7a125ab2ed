"""No byte of symmetric material in anything the tool prints or writes (issue 16, acceptance 4).

Three symmetric keys read their material as raw bytes from a file, as hex from the environment and as
base64 from a command; the whole flow runs in-process (validate, plan --out, apply --plan, drift with
--verify-material, plan json and markdown, show, a reimport, a blocked apply with other material, wrap
--out, an apply through the SDK to the emulator) and every output, log record and file written is
scanned for the material in raw, hex (both cases) and base64 (standard and URL-safe, any alignment),
in pieces of 8 bytes, and for every import token issued.
"""

from __future__ import annotations

import base64
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REGION, RunningEmulator
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from test_hostile_corpus import find_leaks
from test_leaks import Recorder, recorder  # noqa: F401  (the fixture, shared)

pytestmark = pytest.mark.slow

PIECE = 8  # bytes: a smaller run of random bytes could match by chance in a large file


def needles(secret: bytes, label: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    pieces = [secret[i : i + PIECE] for i in range(0, len(secret) - PIECE + 1, 4)]
    for i, piece in enumerate([secret, *pieces]):
        tag = f"{label}[{i}]"
        out[f"{tag} raw"] = piece
        out[f"{tag} hex"] = piece.hex().encode()
        out[f"{tag} HEX"] = piece.hex().upper().encode()
        for shift in range(3):
            b64 = base64.b64encode(b"\0" * shift + piece)[4:-4]
            if len(b64) >= 8:
                out[f"{tag} b64/{shift}"] = b64
                out[f"{tag} b64url/{shift}"] = b64.replace(b"+", b"-").replace(b"/", b"_")
    return out


def write_manifest(folder: Path, vault: bytes) -> None:
    keys = folder / "manifests" / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    (keys / "vault.bin").write_bytes(vault)
    (keys / "vault.bin").chmod(0o600)
    (folder / "manifests" / "sym.yaml").write_text(
        "stack: leaks\n"
        "keys:\n"
        "  vault:\n"
        "    spec: Aliyun_AES_256\n    usage: ENCRYPT/DECRYPT\n    aliases: [alias/leaks/vault]\n"
        "    material: {file: keys/vault.bin, format: raw, wrapping: RSAES_OAEP_SHA_1}\n"
        "    expiry: '2099-01-01T00:00:00Z'\n"
        "  ledger:\n"
        "    spec: Aliyun_AES_256\n    usage: ENCRYPT/DECRYPT\n    instance: kst-local-software\n"
        "    material: {env: LEDGER_KEY_HEX, format: hex, wrapping: RSAES_PKCS1_V1_5}\n"
        "  seal:\n"
        "    spec: Aliyun_SM4\n    usage: ENCRYPT/DECRYPT\n"
        "    instance: kst-local-hardware\n    protection: HSM\n"
        "    material:\n"
        f"      command: [{sys.executable}, -c, 'import os; print(os.environ[\"SEAL_KEY_B64\"])']\n"
        "      pass_env: [SEAL_KEY_B64]\n"
        "      format: base64\n"
        "      wrapping: SM2PKE\n"
    )


def test_nothing_the_tool_prints_or_writes_holds_symmetric_material(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    recorder: Recorder,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    emulator_factory: Callable[..., RunningEmulator],
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.chdir(tmp_path)
    vault, ledger, seal, other = os.urandom(32), os.urandom(32), os.urandom(16), os.urandom(32)
    monkeypatch.setenv("LEDGER_KEY_HEX", ledger.hex())
    monkeypatch.setenv("SEAL_KEY_B64", base64.b64encode(seal).decode())
    monkeypatch.setenv("PROVISION_ALLOW_COMMANDS", "1")
    write_manifest(tmp_path, vault)
    rec = recorder

    rec.run("validate", ["validate", "manifests"])
    rec.run("plan --out", ["plan", "manifests", "--out", "plan.json"])
    rec.run("apply --plan", ["apply", "--plan", "plan.json", "--format", "json"])
    rec.run("drift", ["drift", "manifests"])
    rec.run("drift verify json", ["drift", "manifests", "--format", "json", "--verify-material"])
    rec.run("drift verify markdown", ["drift", "manifests", "--format", "markdown", "--verify-material"])
    rec.run("plan json", ["plan", "manifests", "--format", "json"])
    rec.run("plan markdown", ["plan", "manifests", "--format", "markdown"])
    rec.run("show", ["show", "manifests", "--format", "json"])
    text = (tmp_path / "manifests" / "sym.yaml").read_text()
    (tmp_path / "manifests" / "sym.yaml").write_text(text.replace("2099-01-01", "2098-01-01"))
    rec.run("apply reimport", ["apply", "manifests", "--auto-approve"])
    write_manifest(tmp_path, other)
    rec.run("apply blocked", ["apply", "manifests", "--auto-approve"])
    write_manifest(tmp_path, vault)
    wrapping = rsa.generate_private_key(65537, 2048).public_key()
    Path("wrapping.pem").write_bytes(
        wrapping.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    rec.run(
        "wrap --out",
        [
            "wrap",
            "--public-key",
            "wrapping.pem",
            "--material",
            "manifests/keys/vault.bin",
            "--material-format",
            "raw",
            "--out",
            "wrapped.b64",
        ],
    )
    emulator = emulator_factory()
    backend = ["--backend", "alibaba", "--endpoint", emulator.url, "--region", REGION]
    env = emulator.credential_env()
    rec.run("sdk apply", ["apply", "manifests", "--auto-approve", *backend], env=env)
    rec.run("sdk drift", ["drift", "manifests", "--verify-material", "--format", "json", *backend], env=env)

    assert rec.codes == {
        "validate": 0,
        "plan --out": 0,
        "apply --plan": 0,
        "drift": 0,
        "drift verify json": 0,
        "drift verify markdown": 0,
        "plan json": 0,
        "plan markdown": 0,
        "show": 0,
        "apply reimport": 0,
        "apply blocked": 1,
        "wrap --out": 0,
        "sdk apply": 0,
        "sdk drift": 0,
    }, rec.outputs
    assert "material-immutable" in rec.outputs["apply blocked: stdout"].decode()
    assert len(rec.tokens) == 3 + 1 + 3  # three creates, the reimport of a new expiry, three through the SDK

    inputs = {tmp_path / "manifests" / "keys" / "vault.bin"}
    written = {
        f"file {p.relative_to(tmp_path)}": p.read_bytes()
        for p in sorted(tmp_path.rglob("*"))
        if p.is_file() and p not in inputs
    }
    assert {"file plan.json", "file wrapped.b64", "file manifests/.provision/kms.db"} <= set(written)
    haystacks = {**rec.outputs, **written, "log records": caplog.text.encode()}
    captured = capfd.readouterr()
    haystacks["process stdout"] = captured.out.encode()
    haystacks["process stderr"] = captured.err.encode()

    all_needles: dict[str, bytes] = {}
    for label, secret in (("vault", vault), ("ledger", ledger), ("seal", seal), ("other", other)):
        all_needles.update(needles(secret, label))
    for i, token in enumerate(rec.tokens):
        all_needles[f"import token {i}"] = token.encode()
    # The scanner finds what it looks for: the material in each of its encodings.
    for label, form in (("raw", vault), ("hex", ledger.hex().encode()), ("b64", base64.b64encode(seal))):
        assert find_leaks({label: form}, all_needles), label
    assert find_leaks(haystacks, all_needles) == []
