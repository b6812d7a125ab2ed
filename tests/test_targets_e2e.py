"""Three targets on three emulators, through the CLI and checked with the official SDK (DESIGN section
12, issue 15's acceptance): one key per target with the same material; drift and show per target; a
throttling storm in one target that leaves the others applied and is named; `--only-target` shards
of one stack applied at the same time, each under its own target's lock (issue 13, acceptance 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alibabacloud_kms20160120 import models as kms
from apply_support import SdkView, run_cli
from cli_support import demo_stack
from conftest import PROXY_VARIABLES, RunningEmulator

from provisioner.emulator.server import (
    DEFAULT_ACCESS_KEY_ID,
    DEFAULT_ACCESS_KEY_SECRET,
    EmulatorConfig,
    EmulatorServer,
)
from provisioner.wire import QPS_MIN

REPO = Path(__file__).resolve().parent.parent
REGIONS = {"hz": "cn-hangzhou", "sh": "cn-shanghai", "bj": "cn-beijing"}
ENV = {
    "ALIBABA_CLOUD_ACCESS_KEY_ID": DEFAULT_ACCESS_KEY_ID,
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET": DEFAULT_ACCESS_KEY_SECRET,
}


@pytest.fixture
def emulators() -> Iterator[dict[str, RunningEmulator]]:
    """One emulator per region, each its own KMS (threads of this process, started in milliseconds)."""
    saved = {name: os.environ.pop(name) for name in PROXY_VARIABLES if name in os.environ}
    servers = {}
    try:
        for name in REGIONS:
            server = EmulatorServer(EmulatorConfig(host="127.0.0.1", port=0, latency_ms=5))
            server.start()
            servers[name] = RunningEmulator(server)
        yield servers
    finally:
        for s in servers.values():
            s.stop()
        os.environ.update(saved)


def manifest(emulators: dict[str, RunningEmulator], extra: str = "") -> str:
    backends = "".join(
        f'  - {{name: {n}, type: alibaba, region: {r}, endpoint: "{emulators[n].url}"}}\n'
        for n, r in REGIONS.items()
    )
    return (
        f"version: 1\nstack: regions\nbackends:\n{backends}defaults:\n  instance: kst-local-software\nkeys:\n"
        "  signer:\n    spec: RSA_2048\n    usage: SIGN/VERIFY\n    aliases: [alias/regions/signer]\n"
        "    material: {file: keys/receipts-signing.pem}\n" + extra
    )


TOKENS = "  tokens:\n    spec: EC_P256\n    usage: SIGN/VERIFY\n    material: {file: keys/api-tokens.pem}\n"


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emulators: dict[str, RunningEmulator]) -> Path:
    return demo_stack(tmp_path, monkeypatch, manifest(emulators), retry_seconds="1")


def public_keys(e: RunningEmulator) -> dict[str, bytes]:
    """alias -> the public key (DER) of the key it names, on one emulator, through the SDK."""
    view = SdkView(e.sdk_client())
    return {alias: view.public_key_der(key_id) for alias, key_id in view.aliases().items()}


def test_one_key_per_target_with_the_same_material(
    stack: Path, emulators: dict[str, RunningEmulator]
) -> None:
    r = run_cli(["apply", str(stack), "--auto-approve"], env=ENV)
    assert r.code == 0, r.stdout + r.stderr
    for name, region in REGIONS.items():
        assert f"using target {name}: alibaba {region} at {emulators[name].url}" in r.stderr
    held = {n: public_keys(e) for n, e in emulators.items()}
    assert [list(h) for h in held.values()] == [["alias/regions/signer"]] * 3
    assert len({h["alias/regions/signer"] for h in held.values()}) == 1  # one material in three regions
    for e in emulators.values():
        view = SdkView(e.sdk_client())
        [key_id] = view.key_ids()
        assert view.describe(key_id).origin == "EXTERNAL"
        assert view.describe(key_id).key_state == "Enabled"

    r = run_cli(["plan", str(stack), "--format", "json", "--detailed-exitcode"], env=ENV)
    assert r.code == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert [(b["name"], b["region"], b["endpoint"]) for b in doc["backends"]] == [
        (n, REGIONS[n], emulators[n].url) for n in REGIONS
    ]
    r = run_cli(["show", str(stack), "--format", "json"], env=ENV)
    assert r.code == 0, r.stderr
    assert [(k["target"], k["name"], k["state"]) for k in json.loads(r.stdout)["keys"]] == [
        ("hz", "signer", "Enabled"), ("sh", "signer", "Enabled"), ("bj", "signer", "Enabled"),
    ]

    # Drift behind the manifests' back in one region only is reported against that target.
    view = SdkView(emulators["sh"].sdk_client())
    [key_id] = view.key_ids()
    emulators["sh"].sdk_client().update_key_description(
        kms.UpdateKeyDescriptionRequest(key_id=key_id, description="changed by hand")
    )
    r = run_cli(["drift", str(stack), "--format", "json"], env=ENV)
    assert r.code == 2, r.stdout + r.stderr
    assert [(i["target"], i["key"], i["kind"]) for i in json.loads(r.stdout)["drift"]] == [
        ("sh", "signer", "description")
    ]
    r = run_cli(["plan", str(stack), "--format", "markdown"], env=ENV)
    assert r.code == 0, r.stderr
    assert "### Target `sh`" in r.stdout and "### Target `hz`" not in r.stdout


@pytest.mark.parametrize("storm", ["throttling", "faults"])
def test_a_storm_in_one_target_leaves_the_others_applied(
    stack: Path, emulators: dict[str, RunningEmulator], storm: str
) -> None:
    """Every call of one region throttled (Rejected.Throttling) or failing (ServiceUnavailableTemporary),
    retried in vain for the retry budget: that target fails, the others are applied."""
    sh = emulators["sh"].server
    if storm == "throttling":
        sh.set_qps(dict.fromkeys(("read", "write", "create", "crypto"), QPS_MIN))
    else:
        sh.config.fault_rate = 1.0
    r = run_cli(["apply", str(stack), "--auto-approve", "--format", "json"], env=ENV)
    assert r.code == 1
    assert "error: target sh: " in r.stderr
    result = json.loads(r.stdout)
    assert result["failed_targets"] == ["sh"] and list(result["target_errors"]) == ["sh"]
    assert sorted((k["target"], k["key"]) for k in result["keys"]) == [("bj", "signer"), ("hz", "signer")]
    assert ("Rejected.Throttling" if storm == "throttling" else "ServiceUnavailableTemporary") in r.stderr
    sh.set_qps({})
    sh.config.fault_rate = 0.0
    assert [len(public_keys(emulators[n])) for n in REGIONS] == [1, 0, 1]
    # The storm is over: the next apply converges that target, and only it.
    r = run_cli(["apply", str(stack), "--auto-approve", "--format", "json"], env=ENV)
    assert r.code == 0, r.stdout + r.stderr
    assert [(k["target"], k["key"]) for k in json.loads(r.stdout)["keys"]] == [("sh", "signer")]
    assert run_cli(["plan", str(stack), "--detailed-exitcode"], env=ENV).code == 0


def provision(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
    env.update(ENV, PYTHONPATH=str(REPO), PROVISION_RETRY_SECONDS="1")
    code = "import sys; from provisioner.cli import main; main(sys.argv[1:])"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )


def test_only_target_shards_apply_at_once_without_locking_each_other_out(
    stack: Path, emulators: dict[str, RunningEmulator]
) -> None:
    (stack / "keys.yaml").write_text(manifest(emulators, TOKENS))
    for e in emulators.values():
        e.server.config.latency_ms = 40  # each apply takes long enough for the two to overlap
    try:
        args = ["apply", str(stack), "--auto-approve", "--only-target"]
        jobs = [provision([*args, n], stack.parent) for n in REGIONS]
        done = [(p.returncode, out, err) for p in jobs for out, err in [p.communicate(timeout=120)]]
    finally:
        for e in emulators.values():
            e.server.config.latency_ms = 5
    for code, out, err in done:
        assert code == 0, out + err
        assert "is locked by" not in err
    assert [len(public_keys(emulators[n])) for n in REGIONS] == [1, 1, 1]
    assert [len(SdkView(emulators[n].sdk_client()).key_ids()) for n in REGIONS] == [2, 2, 2]
