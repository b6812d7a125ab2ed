"""The hostile pull request corpus (issue 10): each file under tests/hostile/ is one attack.

Every case runs through validate (with and without material), plan in every format, plan --out,
plan --offline-material and apply, in a pipeline-like environment that holds secrets: a private key
in RECEIPTS_KEY_PEM (a material source of the set), cloud credentials, a GitHub token and a plain
secret. Each command must end as the case expects (exit code and message), and no byte of any
secret may appear in any output or in any file written, in any common encoding.

A case file is YAML: `why` (the attack), `manifest` (the hostile manifest, written as
manifests/attack.yaml), optional `files` (more files under the work folder, e.g. symlinks as
`{link: TARGET}`), `expect` (`code` and `stderr`, fragments that must appear, for every command),
optional `commands` (a subset of COMMANDS), `per_command` (overrides of expect by command), `env`
(more variables for the run: their values count as secrets too) and `absent` (files that must
not exist afterwards, e.g. what a command that must never start would have written).
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from apply_support import private_pem, run_cli
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
CORPUS = sorted((TESTS / "hostile").glob("*.yaml"))

COMMANDS: dict[str, list[str]] = {
    "validate": ["validate", "manifests"],
    "validate-offline": ["validate", "manifests", "--offline-material"],
    "plan": ["plan", "manifests", "--no-color"],
    "plan-json": ["plan", "manifests", "--format", "json"],
    "plan-markdown": ["plan", "manifests", "--format", "markdown"],
    "plan-out": ["plan", "manifests", "--out", "plan.json"],
    "plan-offline": ["plan", "manifests", "--offline-material", "--format", "markdown"],
    "apply": ["apply", "manifests", "--auto-approve"],
}

#: The demo key every case's stack may name as a file source.
DEMO_KEY = REPO / "manifests" / "keys" / "receipts-signing.pem"


def _secret_pem() -> bytes:
    return private_pem("RSA_2048", 77)


def secret_values() -> dict[str, str]:
    """The pipeline's secrets, fresh per test run (so a hard-coded expectation cannot match them)."""
    return {
        "RECEIPTS_KEY_PEM": _secret_pem().decode(),
        "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAI" + secrets.token_hex(10),
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": secrets.token_urlsafe(22),
        "ALIBABA_CLOUD_SECURITY_TOKEN": secrets.token_urlsafe(40),
        "GITHUB_TOKEN": "ghs_" + secrets.token_hex(18),
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": secrets.token_urlsafe(30),
        "DATABASE_PASSWORD": secrets.token_urlsafe(12),
    }


def encodings(secret: bytes, label: str) -> dict[str, bytes]:
    """Needles for one secret: raw, hex (both cases), base64 (standard, URL-safe, unpadded, at every
    alignment), and chunks, so a value split over lines or fields is still found (min 12 bytes)."""
    out: dict[str, bytes] = {}
    chunk = 16 if len(secret) >= 32 else max(8, len(secret) // 2)
    pieces = [secret] + [secret[i : i + chunk] for i in range(0, len(secret) - chunk + 1, chunk)]
    for i, piece in enumerate(pieces):
        tag = f"{label}[{i}]"
        out[f"{tag} raw"] = piece
        out[f"{tag} hex"] = piece.hex().encode()
        out[f"{tag} HEX"] = piece.hex().upper().encode()
        for shift in range(3):
            # The middle of the base64 of the piece behind `shift` other bytes: alignment-free.
            b64 = base64.b64encode(b"\0" * shift + piece)[4:-4]
            if len(b64) >= 12:
                out[f"{tag} b64/{shift}"] = b64
                out[f"{tag} b64url/{shift}"] = b64.replace(b"+", b"-").replace(b"/", b"_")
    return out


def secret_needles(values: dict[str, str]) -> dict[str, bytes]:
    needles: dict[str, bytes] = {}
    for name, value in values.items():
        needles.update(encodings(value.encode(), name))
    key = serialization.load_pem_private_key(_secret_pem(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        der = key.private_bytes(serialization.Encoding.DER, fmt, serialization.NoEncryption())
        needles.update(encodings(der, f"RECEIPTS_KEY_PEM DER {fmt}"))
    for line in _secret_pem().decode().splitlines():
        if not line.startswith("-----"):
            needles[f"RECEIPTS_KEY_PEM line {line[:6]}"] = line.encode()
    demo = serialization.load_pem_private_key(DEMO_KEY.read_bytes(), password=None)
    assert isinstance(demo, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    der = demo.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    needles.update(encodings(der, "demo key DER"))
    return needles


def haystack(data: bytes) -> list[bytes]:
    """The output as written, and with the escapes and breaks a renderer may add removed."""
    flat = re.sub(rb"\s+", b"", data)
    unescaped = flat.replace(b"\\n", b"").replace(b"\\r", b"").replace(b"\\/", b"/")
    return [data, flat, unescaped]


def find_leaks(outputs: dict[str, bytes], needles: dict[str, bytes]) -> list[str]:
    return [
        f"{label} in {where}"
        for where, data in outputs.items()
        for variant in haystack(data)
        for label, needle in needles.items()
        if needle in variant
    ][:20]


def markdown_prose(text: str) -> str:
    """The markdown outside fenced blocks and code spans: what GitHub renders as structure."""
    out: list[str] = []
    fence: str | None = None
    for line in text.splitlines():
        m = re.match(r"^ {0,3}(`{3,}|~{3,})", line)
        if fence is None and m:
            fence = m.group(1)
        elif fence is not None and m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
            fence = None
        elif fence is None:
            out.append(re.sub(r"(`+)(.+?)\1", "", line))
    return "\n".join(out)


def _case(path: Path) -> dict[str, Any]:
    case = yaml.safe_load(path.read_text(encoding="utf-8"))
    allowed = {"why", "manifest", "files", "env", "expect", "commands", "per_command", "absent"}
    assert set(case) <= allowed, path.name
    return dict(case)


@pytest.fixture
def pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    (tmp_path / "manifests" / "keys").mkdir(parents=True)
    shutil.copy(DEMO_KEY, tmp_path / "manifests" / "keys" / "receipts-signing.pem")
    (tmp_path / "manifests" / "keys" / "receipts-signing.pem").chmod(0o600)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "oidc-token").write_text("eyJ" + secrets.token_urlsafe(40) + "\n")
    monkeypatch.chdir(tmp_path)
    values = secret_values()
    values["OIDC_TOKEN_FILE_CONTENT"] = (tmp_path / "outside" / "oidc-token").read_text().strip()
    for name, value in values.items():
        if name != "OIDC_TOKEN_FILE_CONTENT":
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("PROVISION_RETRY_SECONDS", "0")
    monkeypatch.setenv("PROVISION_VAR_REGION", "cn-hangzhou")
    for name in ("ALIBABA_CLOUD_REGION_ID", "PROVISION_ALLOW_ENV", "PROVISION_ALLOW_COMMANDS",
                 "PROVISION_BACKEND", "PROVISION_ENDPOINT", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    yield values


def _written(root: Path) -> dict[str, bytes]:
    return {
        f"file {p.relative_to(root)}": p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink() and "keys" not in p.parts and "outside" not in p.parts
        and p.name != "attack.yaml"
    }


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_hostile_manifest(path: Path, pipeline: dict[str, str], tmp_path: Path) -> None:
    case = _case(path)
    (tmp_path / "manifests" / "attack.yaml").write_text(case["manifest"], encoding="utf-8")
    for name, spec in (case.get("files") or {}).items():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(spec, dict) and "link" in spec:
            os.symlink(spec["link"], target)
        else:
            target.write_text(str(spec), encoding="utf-8")
    extra_env = {str(k): str(v) for k, v in (case.get("env") or {}).items()}
    switches = ("PROVISION_ALLOW_ENV", "PROVISION_ALLOW_COMMANDS")
    secrets_of_run = {
        **pipeline, **{k: v for k, v in extra_env.items() if len(v) >= 12 and k not in switches}
    }
    outputs: dict[str, bytes] = {}
    for command in case.get("commands") or list(COMMANDS):
        expect = {**case["expect"], **(case.get("per_command") or {}).get(command, {})}
        r = run_cli(COMMANDS[command], env=extra_env)
        outputs[f"{command} stdout"] = r.stdout.encode()
        outputs[f"{command} stderr"] = r.stderr.encode()
        assert "Traceback" not in r.stderr, (command, r.stderr)
        assert r.code == expect["code"], (command, r.code, r.stdout, r.stderr)
        for fragment in expect.get("stderr") or []:
            assert fragment in r.stderr, (command, fragment, r.stderr)
        for fragment in expect.get("stdout") or []:
            assert fragment in r.stdout, (command, fragment, r.stdout)
        for fragment in expect.get("not_stdout") or []:
            assert fragment not in r.stdout, (command, fragment, r.stdout)
        prose = markdown_prose(r.stdout)
        for fragment in expect.get("not_in_markdown_prose") or []:
            assert fragment not in prose, (command, fragment, prose)
    outputs.update(_written(tmp_path))
    assert find_leaks(outputs, secret_needles(secrets_of_run)) == []
    for name in case.get("absent") or []:
        assert not (tmp_path / name).exists(), name


def test_the_scanner_finds_each_encoding(pipeline: dict[str, str]) -> None:
    """The scan is only worth something if it catches what an attacker would print."""
    needles = secret_needles(pipeline)
    pem = pipeline["RECEIPTS_KEY_PEM"].encode()
    key = serialization.load_pem_private_key(pem, password=None)
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    secret = pipeline["ALIBABA_CLOUD_ACCESS_KEY_SECRET"].encode()
    samples = {
        "pem in json": pem.replace(b"\n", b"\\n"),
        "der hex": der[100:140].hex().encode(),
        "der base64 shifted": base64.b64encode(b"xy" + der[200:260]),
        "der urlsafe unpadded": base64.urlsafe_b64encode(der[300:360]).rstrip(b"="),
        "secret split": secret[:11] + b"\n    " + secret[11:],
        "secret base64": base64.b64encode(b"k=" + secret),
        "secret hex upper": secret.hex().upper().encode(),
    }
    for label, data in samples.items():
        assert find_leaks({label: b"description: " + data}, needles), label
    assert find_leaks({"benign": b"description: Signs payment receipts"}, needles) == []
