"""Credentials per target (DESIGN section 12): `--target-profile NAME=PROFILE` and `--target-role
NAME=ARN`, from the command line only. Two emulators, each with credentials of its own: a profile in
the credentials file signs one target's calls, the default chain the other's; no secret is ever shown.
(The parser, the profile lookup and the role's AssumeRole: tests/test_credentials.py.)"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from apply_support import run_cli
from conftest import PROXY_VARIABLES, RunningEmulator

from provisioner.emulator.server import (
    DEFAULT_ACCESS_KEY_ID,
    DEFAULT_ACCESS_KEY_SECRET,
    EmulatorConfig,
    EmulatorServer,
)

REPO = Path(__file__).resolve().parent.parent
HZ_ID, HZ_SECRET = "LTAI5tHangzhouOnly000001", "hz-secret-0f3c9a7e5b1d4c2a8e6f"
DEFAULT_ENV = {
    "ALIBABA_CLOUD_ACCESS_KEY_ID": DEFAULT_ACCESS_KEY_ID,
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET": DEFAULT_ACCESS_KEY_SECRET,
}


@pytest.fixture
def two_regions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, dict[str, str]]]:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    hz = EmulatorServer(
        EmulatorConfig(host="127.0.0.1", port=0, access_key_id=HZ_ID, access_key_secret=HZ_SECRET)
    )
    sh = EmulatorServer(EmulatorConfig(host="127.0.0.1", port=0))
    hz.start()
    sh.start()
    folder = tmp_path / "stack"
    (folder / "keys").mkdir(parents=True)
    shutil.copy(REPO / "manifests" / "keys" / "api-tokens.pem", folder / "keys" / "t.pem")
    (folder / "keys" / "t.pem").chmod(0o600)
    (folder / "keys.yaml").write_text(
        "version: 1\nstack: creds\nbackends:\n"
        f'  - {{name: hz, type: alibaba, region: cn-hangzhou, endpoint: "{RunningEmulator(hz).url}"}}\n'
        f'  - {{name: sh, type: alibaba, region: cn-shanghai, endpoint: "{RunningEmulator(sh).url}"}}\n'
        "defaults: {instance: kst-local-software}\n"
        "keys:\n  tokens: {spec: EC_P256, usage: SIGN/VERIFY, material: {file: keys/t.pem}}\n"
    )
    creds = tmp_path / "credentials.ini"
    creds.write_text(
        f"[hangzhou]\ntype = access_key\naccess_key_id = {HZ_ID}\naccess_key_secret = {HZ_SECRET}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROVISION_RETRY_SECONDS", "0")
    ambient = ("PROVISION_BACKEND", "PROVISION_ENDPOINT", "ALIBABA_CLOUD_REGION_ID", "ALIBABA_CLOUD_PROFILE")
    for name in ambient:
        monkeypatch.delenv(name, raising=False)
    yield folder, {**DEFAULT_ENV, "ALIBABA_CLOUD_CREDENTIALS_FILE": str(creds), "HOME": str(tmp_path)}
    hz.shutdown()
    sh.shutdown()


def test_a_profile_signs_its_targets_calls(two_regions: tuple[Path, dict[str, str]]) -> None:
    folder, env = two_regions
    args = ["apply", str(folder), "--auto-approve", "--target-profile", "hz=hangzhou", "--format", "json"]
    r = run_cli(args, env=env)
    assert r.code == 0, r.stdout + r.stderr
    assert sorted(k["target"] for k in json.loads(r.stdout)["keys"]) == ["hz", "sh"]
    assert HZ_SECRET not in r.stdout + r.stderr and DEFAULT_ACCESS_KEY_SECRET not in r.stdout + r.stderr
    r = run_cli(["plan", str(folder), "--detailed-exitcode", "--target-profile", "hz=hangzhou"], env=env)
    assert r.code == 0, r.stdout + r.stderr


def test_without_its_profile_a_target_fails_alone_and_no_secret_is_shown(
    two_regions: tuple[Path, dict[str, str]]
) -> None:
    folder, env = two_regions
    r = run_cli(["plan", str(folder), "--format", "json"], env=env)  # hz signed with the default pair
    assert r.code == 1
    doc = json.loads(r.stdout)
    assert doc["failed_targets"] == ["hz"] and [c["target"] for c in doc["changes"]] == ["sh"]
    assert "error: target hz: " in r.stderr
    r2 = run_cli(["plan", str(folder), "--target-profile", "hz=nowhere"], env=env)
    assert r2.code == 1
    assert "error: --target-profile hz=PROFILE: no profile of that name in " in r2.stderr
    assert "using target" not in r2.stderr  # refused before any target is opened
    for text in (r.stdout + r.stderr, r2.stdout + r2.stderr):
        assert HZ_SECRET not in text and DEFAULT_ACCESS_KEY_SECRET not in text
    r = run_cli(["plan", str(folder), "--target-profile", "bj=hangzhou"], env=env)
    assert r.code == 1
    said = "error: --target-profile bj=...: stack 'creds' has no target 'bj' (its targets are hz, sh)"
    assert said in r.stderr


def test_a_profile_on_a_local_target_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    manifest = "version: 1\nstack: s\nbackends:\n  - {name: lab, type: local}\nkeys: {}\n"
    (tmp_path / "m.yaml").write_text(manifest)
    profile = f"[ops]\ntype = access_key\naccess_key_id = {HZ_ID}\naccess_key_secret = {HZ_SECRET}\n"
    (tmp_path / "credentials.ini").write_text(profile)
    env = {"HOME": str(tmp_path), "ALIBABA_CLOUD_CREDENTIALS_FILE": str(tmp_path / "credentials.ini")}
    r = run_cli(["plan", str(tmp_path), "--target-profile", "lab=ops"], env=env)
    assert r.code == 1
    said = "error: --target-profile and --target-role apply to the alibaba backend only; the backend is local"
    assert said in r.stderr
    assert not os.path.exists(tmp_path / ".provision")
