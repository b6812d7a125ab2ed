"""No private material and no import token in anything the tool prints or writes.

The whole flow runs in-process (validate, plan --out, apply --plan, drift, plan json/markdown, an edit
that reimports, failing applies, wrap --out, fingerprint, an apply through the SDK to the emulator),
capturing every stdout/stderr, every log record and every file under the working folder, including
the local backend's `manifests/.provision/kms.db`. Import tokens are captured at the Kms facade as they
are issued.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from apply_support import Run, key_entry, private_pem, run_cli, write_key, write_manifest
from conftest import REGION, RunningEmulator
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from provisioner.backend.base import ImportParameters, Kms

pytestmark = pytest.mark.slow


def secret_needles(pem: bytes) -> dict[str, bytes]:
    """Byte strings whose presence anywhere would leak this private key, labelled for the report."""
    key = serialization.load_pem_private_key(pem, password=None)
    out: dict[str, bytes] = {}
    for line in pem.decode().splitlines():
        if not line.startswith("-----") and len(line) >= 40:
            out[f"PEM line {line[:8]}..."] = line.encode()
    for label, fmt in (
        ("PKCS#8", serialization.PrivateFormat.PKCS8),
        ("traditional", serialization.PrivateFormat.TraditionalOpenSSL),
    ):
        der = key.private_bytes(serialization.Encoding.DER, fmt, serialization.NoEncryption())
        out[f"{label} DER"] = der
        b64 = base64.b64encode(der)
        for i in range(0, len(b64) - 48, 48):
            out[f"{label} DER base64 @{i}"] = b64[i : i + 48]
        hx = der.hex()
        for i in range(0, len(hx) - 64, 64):
            out[f"{label} DER hex @{i}"] = hx[i : i + 64].encode()
            out[f"{label} DER HEX @{i}"] = hx[i : i + 64].upper().encode()
    scalars: dict[str, int] = {}
    if isinstance(key, ec.EllipticCurvePrivateKey):
        scalars["d"] = key.private_numbers().private_value
    elif isinstance(key, rsa.RSAPrivateKey):
        n = key.private_numbers()
        scalars.update(d=n.d, p=n.p, q=n.q)
    for name, value in scalars.items():
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        out[f"private {name}"] = raw
        out[f"private {name} hex"] = raw.hex().encode()
        out[f"private {name} HEX"] = raw.hex().upper().encode()
        out[f"private {name} base64"] = base64.b64encode(raw)
    return out


def find_leaks(haystacks: dict[str, bytes], needles: dict[str, bytes]) -> list[str]:
    return [
        f"{label} in {where}"
        for where, data in haystacks.items()
        for label, n in needles.items()
        if n in data
    ]


class Recorder:
    """Every output of every command run, and every import token issued."""

    def __init__(self) -> None:
        self.outputs: dict[str, bytes] = {}
        self.tokens: list[str] = []
        self.codes: dict[str, int] = {}

    def run(self, label: str, args: list[str], env: dict[str, str] | None = None) -> Run:
        r = run_cli(args, env=env)
        self.outputs[f"{label}: stdout"] = r.stdout.encode()
        self.outputs[f"{label}: stderr"] = r.stderr.encode()
        self.codes[label] = r.code
        return r


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    rec = Recorder()
    original: Callable[..., ImportParameters] = Kms.get_parameters_for_import

    def spy(self: Kms, *args: Any, **kwargs: Any) -> ImportParameters:
        params = original(self, *args, **kwargs)
        rec.tokens.append(params.import_token)
        return params

    monkeypatch.setattr(Kms, "get_parameters_for_import", spy)
    yield rec


def test_nothing_the_tool_prints_or_writes_holds_material_or_tokens(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    emulator_factory: Callable[..., RunningEmulator],
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.chdir(tmp_path)
    rsa_pem = private_pem("RSA_2048", 40)
    ec_key = serialization.load_pem_private_key(private_pem("EC_P256", 40), password=None)
    # SEC1 ("BEGIN EC PRIVATE KEY") on disk: the tool normalises it to PKCS#8, which must not leak either.
    ec_pem = ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    pems = {"signer": rsa_pem, "tokens": ec_pem}
    inputs = {write_key(tmp_path, name, pem) for name, pem in pems.items()}
    keys = {
        "signer": key_entry("signer", "RSA_2048"),
        "tokens": key_entry("tokens", expiry="2099-01-01T00:00:00Z"),
    }
    write_manifest(tmp_path, keys)
    rec = recorder

    rec.run("validate", ["validate", "manifests"])
    rec.run("plan --out", ["plan", "manifests", "--out", "plan.json"])
    rec.run("apply --plan", ["apply", "--plan", "plan.json", "--format", "json"])
    rec.run("drift", ["drift", "manifests"])
    rec.run("drift json", ["drift", "manifests", "--format", "json", "--verify-material"])
    rec.run("plan json", ["plan", "manifests", "--format", "json"])
    rec.run("plan markdown", ["plan", "manifests", "--format", "markdown"])
    keys["tokens"]["expiry"] = "2098-01-01T00:00:00Z"  # a reimport: a second token for this key
    write_manifest(tmp_path, keys)
    rec.run("apply reimport", ["apply", "manifests", "--auto-approve"])
    rec.run("plan after", ["plan", "manifests", "--detailed-exitcode"])
    # Failing applies: a changed material file (blocked), then a saved plan whose material changed.
    keys["tokens"]["state"] = "material-deleted"
    write_manifest(tmp_path, keys)
    rec.run("apply delete-material", ["apply", "manifests", "--auto-approve"])
    keys["tokens"]["state"] = "present"
    write_manifest(tmp_path, keys)
    rec.run("plan --out 2", ["plan", "manifests", "--out", "plan2.json"])
    other = private_pem("EC_P256", 41)
    write_key(tmp_path, "tokens", other)
    rec.run("apply blocked", ["apply", "manifests", "--auto-approve"])
    rec.run("apply stale material", ["apply", "--plan", "plan2.json"])
    write_key(tmp_path, "tokens", ec_pem)
    rec.run("apply verbose json", ["apply", "manifests", "--auto-approve", "--format", "json"])
    # wrap --out and fingerprint of the material itself.
    wrapping = rsa.generate_private_key(65537, 2048).public_key()
    Path("wrapping.pem").write_bytes(
        wrapping.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    rec.run("wrap --out", ["wrap", "--public-key", "wrapping.pem", "--material", "keys/signer.pem",
                           "--out", "wrapped.b64"])
    rec.run("fingerprint", ["fingerprint", "keys/tokens.pem"])
    # The same stack through the official SDK, against the emulator.
    emulator = emulator_factory()
    backend = ["--backend", "alibaba", "--endpoint", emulator.url, "--region", REGION]
    env = emulator.credential_env()
    rec.run("sdk apply", ["apply", "manifests", "--auto-approve", *backend], env=env)
    rec.run("sdk plan", ["plan", "manifests", "--detailed-exitcode", "--format", "json", *backend], env=env)

    # The flow did what it should, so the scan covers real output.
    assert rec.codes == {
        "validate": 0, "plan --out": 0, "apply --plan": 0, "drift": 0, "drift json": 0, "plan json": 0,
        "plan markdown": 0, "apply reimport": 0, "plan after": 0, "apply delete-material": 0,
        "plan --out 2": 0, "apply blocked": 1, "apply stale material": 1, "apply verbose json": 0,
        "wrap --out": 0, "fingerprint": 0, "sdk apply": 0, "sdk plan": 0,
    }, rec.outputs
    assert "material-immutable" in rec.outputs["apply blocked: stdout"].decode()
    assert "material no longer matches the plan" in rec.outputs["apply stale material: stderr"].decode()
    assert len(rec.tokens) == 6  # 2 creates, 1 reimport, 1 re-present, 2 through the SDK

    written = {
        str(p.relative_to(tmp_path)): p.read_bytes()
        for p in sorted(tmp_path.rglob("*"))
        if p.is_file() and p not in inputs
    }
    assert {"plan.json", "plan2.json", "wrapped.b64", "manifests/.provision/kms.db"} <= set(written)
    haystacks = {**rec.outputs, **{f"file {name}": data for name, data in written.items()}}
    haystacks["log records"] = caplog.text.encode()
    # Whatever reached the process's own stdout/stderr (the in-process emulator, warnings).
    captured = capfd.readouterr()
    haystacks["process stdout"] = captured.out.encode()
    haystacks["process stderr"] = captured.err.encode()
    assert "POST /?<query omitted>" in caplog.text  # urllib3's request lines were captured, and scrubbed

    needles: dict[str, bytes] = {}
    for name, pem in {**pems, "tokens (swapped in)": other}.items():
        needles.update({f"{name}: {label}": n for label, n in secret_needles(pem).items()})
    for i, token in enumerate(rec.tokens):
        needles[f"import token {i}"] = token.encode()
    # The scanner itself works: the key files hold their own needles.
    for path in inputs:
        assert len(find_leaks({"input": path.read_bytes()}, needles)) >= 2, path
    assert find_leaks(haystacks, needles) == []
    plan_doc = json.loads(written["plan.json"])
    assert {c["material"]["kind"] for c in plan_doc["changes"]} == {"file"}
    assert yaml.safe_load(written["wrapped.b64"]) is not None
