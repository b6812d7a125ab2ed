"""Apply killed with SIGKILL at five moments, then run once more: it must finish the job.

`provision apply` runs as a real subprocess against the emulator (with latency, so one apply takes
a while); the test watches the emulator's write-call counts and kills the process after the n-th
write of each run. The last apply runs in-process; the SDK then checks for duplicates and orphans.
The local backend's crash test counts rows of its SQLite file instead; duplicates left by a crash
are cleaned up on both backends.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from alibabacloud_kms20160120 import models as kms
from apply_support import (
    SOFTWARE,
    STACK,
    WRITE_ACTIONS,
    SdkView,
    clean_env,
    fingerprint,
    key_entry,
    private_pem,
    run_cli,
    spki_der,
    write_key,
    write_manifest,
)
from backends import Backend
from conftest import REGION, RunningEmulator

pytestmark = pytest.mark.slow
BOTH_BACKENDS = True
#: Why the kill and race tests need the emulator: a subprocess's writes are counted from outside
#: through the emulator's stats, and its --latency-ms widens the moments to kill at or race in.
OUT_OF_PROCESS = "the emulator counts a subprocess's writes and its latency widens the moments"

NAMES = ("k1", "k2", "k3", "k4", "k5", "k6")
PROVISION = Path(sys.executable).parent / "provision"


def write_count(emulator: RunningEmulator) -> int:
    return sum(n for action, n in emulator.stats()["calls"].items() if action in WRITE_ACTIONS)


def wait_quiet(emulator: RunningEmulator, quiet: float = 0.3) -> None:
    """Until the emulator's counts stop moving: requests a killed client left in flight have landed."""
    last = emulator.stats()["calls"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = emulator.stats()["calls"]
        if now == last:
            return
        last = now


def unlock(backend: list[str], env: dict[str, str] | None = None) -> None:
    """`provision unlock`: a run killed holding the stack's lock leaves it until its lease lapses."""
    r = run_cli(["unlock", STACK, "manifests", *backend], env=env)
    assert r.code == 0, r.stderr


def kill_after_writes(cmd: list[str], env: dict[str, str], emulator: RunningEmulator, n: int) -> str:
    """Start `cmd`, SIGKILL it once the emulator has seen `n` more write calls; what happened."""
    base = write_count(emulator)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if write_count(emulator) - base >= n:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                return f"killed after {n} write(s)"
            if proc.poll() is not None:
                return f"finished first with exit {proc.returncode}"
            time.sleep(0.005)
        raise AssertionError("apply neither wrote nor finished in 40 s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.one_backend("alibaba", OUT_OF_PROCESS)
def test_apply_killed_five_times_then_converges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emulator_factory: Callable[..., RunningEmulator]
) -> None:
    monkeypatch.chdir(tmp_path)
    emulator = emulator_factory(latency_ms=40)
    keys = {name: key_entry(name) for name in NAMES}
    keys["k1"]["aliases"] = ["alias/e2e/k1", "alias/e2e/k1-v2"]
    keys["k2"]["deletion_protection"] = True
    keys["k3"]["expiry"] = "2099-01-01T00:00:00Z"
    for i, name in enumerate(NAMES):
        write_key(tmp_path, name, private_pem("EC_P256", 20 + i))
    write_manifest(tmp_path, keys)
    backend = ["--backend", "alibaba", "--endpoint", emulator.url, "--region", REGION]
    env = clean_env(emulator.credential_env())
    cmd = [str(PROVISION), "apply", "manifests", "--auto-approve", *backend]

    sdk = SdkView(emulator.sdk_client())
    moments = []
    for n in (1, 2, 3, 4, 5):
        moments.append(kill_after_writes(cmd, env, emulator, n))
        wait_quiet(emulator)
        unlock(backend, emulator.credential_env())  # the killed run's lease would hold for 60 s
        states = sorted(sdk.describe(k).key_state for k in sdk.key_ids())
        moments[-1] += f": {states}"
    print("\n".join(moments))  # what each kill left behind, for `pytest -s`
    # Every run was killed mid-way: the stack was not finished before the last apply.
    assert all(m.startswith("killed") for m in moments), moments
    r = run_cli(["plan", "manifests", "--detailed-exitcode", *backend], env=emulator.credential_env())
    assert r.code == 2, r.stdout + r.stderr

    r = run_cli(["apply", "manifests", "--auto-approve", *backend], env=emulator.credential_env())
    assert r.code == 0, "\n".join(moments) + r.stdout + r.stderr
    r = run_cli(["plan", "manifests", "--detailed-exitcode", *backend], env=emulator.credential_env())
    assert r.code == 0, "\n".join(moments) + r.stdout + r.stderr

    # No duplicate identity and no orphan left live: each name has one live key, the rest pend deletion.
    found = sdk.stack_keys()
    assert sorted(found) == sorted(NAMES)
    for i, name in enumerate(NAMES):
        live = [k for k in found[name] if sdk.describe(k).key_state != "PendingDeletion"]
        assert len(live) == 1, (name, found[name], moments)
        assert sdk.describe(live[0]).key_state == "Enabled"
        assert sdk.public_key_der(live[0]) == spki_der(private_pem("EC_P256", 20 + i))
    assert set(sdk.key_ids()) == {k for ids in found.values() for k in ids}  # nothing untagged
    aliases = sdk.aliases()
    assert sorted(aliases) == sorted(a for e in keys.values() for a in e["aliases"])
    for alias, key_id in aliases.items():
        assert sdk.describe(key_id).key_state == "Enabled", (alias, key_id)
    (protected,) = [k for k in found["k2"] if sdk.describe(k).key_state == "Enabled"]
    assert sdk.describe(protected).deletion_protection == "Enabled"


def sdk_create(sdk: SdkView, name: str) -> str:
    """A key of this identity made behind apply's back, as a crashed or concurrent run leaves it."""
    tags = [
        {"TagKey": "byok-provisioner:stack", "TagValue": STACK},
        {"TagKey": "byok-provisioner:name", "TagValue": name},
        {"TagKey": "byok-provisioner:fingerprint", "TagValue": fingerprint(private_pem("EC_P256", 30))},
    ]
    body = sdk.client.create_key(
        kms.CreateKeyRequest(
            origin="EXTERNAL", key_spec="EC_P256", key_usage="SIGN/VERIFY", protection_level="SOFTWARE",
            dkmsinstance_id=SOFTWARE, tags=json.dumps(tags),
        )
    ).body
    return str(body.key_metadata.key_id)


def test_duplicates_of_one_identity_are_scheduled_for_deletion_and_the_holder_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: Backend
) -> None:
    monkeypatch.chdir(tmp_path)
    write_key(tmp_path, "dup", private_pem("EC_P256", 30))
    write_manifest(tmp_path, {"dup": key_entry("dup")}, backend=backend.manifest_backend)
    args = backend.args
    env = backend.env
    sdk = backend.view
    # Two runs each created the key and died before importing: two empty keys of one identity.
    made = [sdk_create(sdk, "dup"), sdk_create(sdk, "dup")]
    # The oldest is kept (creation time, then key id: both may share a second).
    first, second = sorted(made, key=lambda k: (sdk.describe(k).creation_date, k))

    r = run_cli(["plan", "manifests", "--format", "json", *args], env=env)
    assert r.code == 0, r.stderr
    (change,) = json.loads(r.stdout)["changes"]
    assert (change["key_id"], change["actions"], change["duplicates"]) == (
        first, ["update", "reimport"], [second]
    )
    r = run_cli(["apply", "manifests", "--auto-approve", *args], env=env)
    assert r.code == 0, r.stdout + r.stderr
    assert f"duplicate {second} scheduled for deletion" in r.stderr
    assert sdk.describe(first).key_state == "Enabled"
    assert sdk.public_key_der(first) == spki_der(private_pem("EC_P256", 30))
    assert sdk.describe(second).key_state == "PendingDeletion"
    assert sdk.aliases() == {"alias/e2e/dup": first}

    # A third empty twin appears after the import (a concurrent run): the holder is kept, it goes.
    third = sdk_create(sdk, "dup")
    r = run_cli(["apply", "manifests", "--auto-approve", *args], env=env)
    assert r.code == 0, r.stdout + r.stderr
    assert f"duplicate {third} scheduled for deletion" in r.stderr
    assert sdk.describe(third).key_state == "PendingDeletion"
    assert sdk.describe(first).key_state == "Enabled"
    r = run_cli(["plan", "manifests", "--detailed-exitcode", *args], env=env)
    assert r.code == 0, r.stdout + r.stderr


@pytest.mark.one_backend("alibaba", OUT_OF_PROCESS)
def test_apply_of_edits_killed_twice_then_converges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emulator_factory: Callable[..., RunningEmulator]
) -> None:
    """Updates, a reimport, a material deletion, lifting a key's deletion protection and an alias move,
    killed mid-way twice: the next apply finishes every one of them. (Retiring the key takes a later
    apply: a plan never schedules the deletion of a key whose live protection is on.)"""
    monkeypatch.chdir(tmp_path)
    emulator = emulator_factory(latency_ms=40)
    keys = {name: key_entry(name) for name in NAMES}
    keys["k2"]["deletion_protection"] = True
    for i, name in enumerate(NAMES):
        write_key(tmp_path, name, private_pem("EC_P256", 20 + i))
    write_manifest(tmp_path, keys)
    backend = ["--backend", "alibaba", "--endpoint", emulator.url, "--region", REGION]
    creds = emulator.credential_env()
    assert run_cli(["apply", "manifests", "--auto-approve", *backend], env=creds).code == 0
    sdk = SdkView(emulator.sdk_client())
    ids = {name: found[0] for name, found in sdk.stack_keys().items()}

    keys["k1"].update(tags={"team": "edited"}, aliases=["alias/e2e/k1", "alias/e2e/k1-new"])
    keys["k2"].update(deletion_protection=False)
    keys["k3"]["expiry"] = "2098-06-30T00:00:00Z"
    keys["k4"]["state"] = "material-deleted"
    keys["k5"]["aliases"] = []
    keys["k6"]["aliases"] = ["alias/e2e/k6", "alias/e2e/k5"]
    write_manifest(tmp_path, keys)
    cmd = [str(PROVISION), "apply", "manifests", "--auto-approve", *backend]
    env = clean_env(creds)
    moments = []
    for n in (1, 3):
        moments.append(kill_after_writes(cmd, env, emulator, n))
        wait_quiet(emulator)
        unlock(backend, creds)
    assert all(m.startswith("killed") for m in moments), moments

    r = run_cli(["apply", "manifests", "--auto-approve", *backend], env=creds)
    assert r.code == 0, r.stdout + r.stderr
    r = run_cli(["plan", "manifests", "--detailed-exitcode", *backend], env=creds)
    assert r.code == 0, r.stdout + r.stderr
    assert sdk.stack_keys() == {n: [i] for n, i in ids.items()}  # no key made or lost
    assert sdk.tags(ids["k1"])["team"] == "edited"
    meta = {name: sdk.describe(key_id) for name, key_id in ids.items()}
    assert (meta["k2"].key_state, meta["k2"].deletion_protection) == ("Enabled", "Disabled")
    assert (meta["k3"].key_state, meta["k3"].material_expire_time) == ("Enabled", "2098-06-30T00:00:00Z")
    assert meta["k4"].key_state == "PendingImport"
    assert sdk.public_key_der(ids["k3"]) == spki_der(private_pem("EC_P256", 22))
    aliases = sdk.aliases()
    assert aliases["alias/e2e/k1-new"] == ids["k1"]
    assert aliases["alias/e2e/k5"] == ids["k6"]


@pytest.mark.one_backend("alibaba", OUT_OF_PROCESS)
def test_two_applies_at_once_leave_one_key_per_identity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emulator_factory: Callable[..., RunningEmulator]
) -> None:
    """Two pipelines applying the same new stack at the same moment: no identity ends up with two
    keys holding material (which would block every later plan); the next apply has nothing left."""
    monkeypatch.chdir(tmp_path)
    emulator = emulator_factory(latency_ms=30)
    names = NAMES[:3]
    for i, name in enumerate(names):
        write_key(tmp_path, name, private_pem("EC_P256", 20 + i))
    write_manifest(tmp_path, {name: key_entry(name) for name in names})
    backend = ["--backend", "alibaba", "--endpoint", emulator.url, "--region", REGION]
    env = clean_env(emulator.credential_env())
    cmd = [str(PROVISION), "apply", "manifests", "--auto-approve", *backend]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    # Each key goes to whichever run claims its alias first, so both runs may report a lost race.
    assert all(p.returncode in (0, 1) for p in procs), outputs
    assert not any("Traceback" in out for out in outputs), outputs
    lost = sum(out.count("at the same time and holds") for out in outputs)
    assert lost <= 2 * len(names)  # each line printed twice: progress, then summary

    r = run_cli(["apply", "manifests", "--auto-approve", *backend], env=emulator.credential_env())
    assert r.code == 0, outputs + [r.stdout, r.stderr]
    r = run_cli(["plan", "manifests", "--detailed-exitcode", *backend], env=emulator.credential_env())
    assert r.code == 0, outputs + [r.stdout, r.stderr]
    sdk = SdkView(emulator.sdk_client())
    aliases = sdk.aliases()
    for i, (name, found) in enumerate(sorted(sdk.stack_keys().items())):
        states = {k: sdk.describe(k) for k in found}
        live = [k for k, m in states.items() if m.key_state != "PendingDeletion"]
        assert len(live) == 1, (name, outputs)
        assert all(m.material_expire_time in ("", None) for m in states.values())
        assert sdk.public_key_der(live[0]) == spki_der(private_pem("EC_P256", 20 + i))
        assert aliases[f"alias/e2e/{name}"] == live[0]


@pytest.mark.one_backend("local", "a SQLite state file killed mid-transaction; its rows are the counter")
def test_apply_on_the_local_backend_killed_three_times_then_converges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded backend's SQLite file survives SIGKILL mid-apply; the next apply finishes."""
    import sqlite3

    monkeypatch.chdir(tmp_path)
    for i, name in enumerate(NAMES):
        write_key(tmp_path, name, private_pem("EC_P256", 20 + i))
    write_manifest(tmp_path, {name: key_entry(name) for name in NAMES})
    db = tmp_path / "manifests" / ".provision" / "kms.db"  # beside the manifests
    cmd = [str(PROVISION), "apply", "manifests", "--auto-approve"]

    def rows() -> int:
        if not db.exists():
            return 0
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
            try:
                return int(conn.execute("SELECT count(*) FROM keys").fetchone()[0]) + int(
                    conn.execute("SELECT count(*) FROM aliases").fetchone()[0]
                )
            finally:
                conn.close()
        except sqlite3.OperationalError:  # schema not there yet, or locked for a moment
            return 0

    moments = []
    for n in (1, 3, 5):
        base = rows()
        proc = subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 40
        while proc.poll() is None and rows() - base < n and time.monotonic() < deadline:
            time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            moments.append(f"killed after {rows() - base} new rows")
        else:
            moments.append(f"finished first with exit {proc.returncode}")
        proc.wait(10)
        unlock([])
    print(moments)  # for `pytest -s`

    r = run_cli(["apply", "manifests", "--auto-approve"])
    assert r.code == 0, moments + [r.stdout, r.stderr]
    r = run_cli(["plan", "manifests", "--detailed-exitcode"])
    assert r.code == 0, moments + [r.stdout, r.stderr]
    assert any(m.startswith("killed") for m in moments), moments
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        states = conn.execute("SELECT state, count(*) FROM keys GROUP BY state").fetchall()
    finally:
        conn.close()
    # One Enabled key per name; nothing else was ever created (no write is lost or doubled by a kill).
    assert dict(states) == {"Enabled": len(NAMES)}, moments
