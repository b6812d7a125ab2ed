"""Apply through a hostile emulator: a quarter of all calls answered 503, quotas tighter than the
client's defaults (so it is throttled too), a few ms of latency. One apply must still finish the job.

Checked with the official SDK afterwards; the retries are visible as calls beyond the minimum.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from apply_support import SdkView, key_entry, private_pem, run_cli, spki_der, write_key, write_manifest
from conftest import REGION, RunningEmulator

pytestmark = pytest.mark.slow

NAMES = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot")


@pytest.mark.parametrize("seed", [7, 2026])
def test_apply_converges_in_one_run_despite_faults_and_throttling(
    seed: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    emulator_factory: Callable[..., RunningEmulator],
) -> None:
    monkeypatch.chdir(tmp_path)
    emulator = emulator_factory(
        fault_rate=0.25, seed=seed, qps={"write": 5, "read": 10, "create": 5}, latency_ms=3
    )
    keys = {name: key_entry(name) for name in NAMES}
    keys["alpha"]["aliases"] = ["alias/e2e/alpha", "alias/e2e/alpha-v2"]
    keys["bravo"]["deletion_protection"] = True
    for i, name in enumerate(NAMES):
        write_key(tmp_path, name, private_pem("EC_P256", 10 + i))
    write_manifest(tmp_path, keys)
    backend = ["--backend", "alibaba", "--endpoint", emulator.url, "--region", REGION]
    env = emulator.credential_env()

    r = run_cli(["apply", "manifests", "--auto-approve", "--format", "json", *backend], env=env)
    assert r.code == 0, r.stdout + r.stderr
    result = json.loads(r.stdout)
    assert result["ok"] is True
    assert result["summary"] == {"changed": 6, "failed": 0}

    r = run_cli(["plan", "manifests", "--detailed-exitcode", *backend], env=env)
    assert r.code == 0, r.stdout + r.stderr
    assert "No changes" in r.stdout

    sdk = SdkView(emulator.sdk_client())
    found = sdk.stack_keys()
    assert sorted(found) == sorted(NAMES)
    assert all(len(ids) == 1 for ids in found.values()), found  # a retried CreateKey made no twin
    assert len(sdk.key_ids()) == len(NAMES)
    aliases = sdk.aliases()
    for i, name in enumerate(NAMES):
        (key_id,) = found[name]
        assert sdk.describe(key_id).key_state == "Enabled"
        assert sdk.public_key_der(key_id) == spki_der(private_pem("EC_P256", 10 + i))
        assert sorted(a for a, k in aliases.items() if k == key_id) == sorted(keys[name]["aliases"])
    assert sdk.describe(found["bravo"][0]).deletion_protection == "Enabled"

    calls = emulator.stats()["calls"]
    # The minimum is 6 CreateKey; faults and throttling forced retries on top.
    assert calls["CreateKey"] > len(NAMES) or calls["ImportKeyMaterial"] > len(NAMES)
    assert sum(calls.values()) > 6 * 5 + 2 * 3
