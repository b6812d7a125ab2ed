"""Issue 13's acceptance through the CLI, on both backends, checked through the official SDK (or, on
`local`, its stand-in over the state file): two applies at once, a holder killed with SIGKILL, the lock
key and the claims kept out of every read command's output.

The applies run as real subprocesses. Each imports the tool, says it is ready and waits for a `go` file,
so both start their apply within a millisecond and the loser's time is measured from that moment (the
modules the commands import lazily are imported before: Python's start-up is not the lock's). A
killed holder's lease is shortened in its own process through the lock module's constants.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from apply_support import (
    STACK,
    SdkView,
    clean_env,
    key_entry,
    private_pem,
    run_cli,
    spki_der,
    write_key,
    write_manifest,
)
from backends import Backend

from provisioner.model import claim_alias, lock_alias

pytestmark = pytest.mark.slow
BOTH_BACKENDS = True

ROUNDS = 20
LOCK_FREE_ROUNDS = 3
REFUSAL = re.compile(
    r'^error: stack "e2e" \(target default\) is locked by (?P<host>\S+) pid (?P<pid>\d+) since '
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"
)
#: Runs `provision ARGV` once the `go` file exists, with the lock's lease and renewal period given.
#: Each KMS call is `delay` seconds slower, as a far region is, so that two applies overlap.
RUNNER = """
import pathlib, sys, time
from provisioner import lock
from provisioner.backend import base
ready, go, lease, renew, delay, locking = sys.argv[1:7]
if float(lease):
    lock.LEASE_SECONDS = float(lease)
if float(renew):
    lock.RENEW_SECONDS = float(renew)
call = base.Kms._call
def slow(self, action, **params):
    time.sleep(float(delay))
    return call(self, action, **params)
base.Kms._call = slow
from provisioner import cli
from provisioner.cli import main
if locking == "no":  # a lock broken by hand or lapsed under a slow holder: only the claims are left
    assert hasattr(cli, "_acquire")  # the stage that takes a target's lock: a rename must fail here
    cli._acquire = lambda target, timeout: None
# What the commands import lazily, imported before `go`: the time measured is the apply's, not Python's.
import provisioner.apply, provisioner.backend.alibaba, provisioner.backend.local, provisioner.manifest
import provisioner.plan.planner, provisioner.refresh, provisioner.emulator.models
pathlib.Path(ready).touch()
while not pathlib.Path(go).exists():
    time.sleep(0.001)
try:
    main(sys.argv[7:])
finally:  # when it exits (CLOCK_MONOTONIC is the machine's): the interpreter's teardown is not timed
    pathlib.Path(ready + ".exit").write_text(repr(time.monotonic()))
"""
DELAY = 0.02


class Runs:
    """Applies of one stack as subprocesses of this test, started together."""

    def __init__(self, folder: Path, backend: Backend) -> None:
        self.folder = folder
        self.backend = backend
        self.env = clean_env(backend.env)
        self.n = 0
        self.ready: list[Path] = []

    def start(
        self, count: int, *args: str, lease: float = 0, renew: float = 0, locking: str = "yes"
    ) -> list[subprocess.Popen[str]]:
        self.n += 1
        go = self.folder / f"go-{self.n}"
        ready = self.ready = [self.folder / f"ready-{self.n}-{i}" for i in range(count)]
        cmd = [sys.executable, "-c", RUNNER]
        procs = [
            subprocess.Popen(
                [*cmd, str(r), str(go), str(lease), str(renew), str(DELAY), locking, "apply", "manifests",
                 "--auto-approve", *self.backend.args, *args],
                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=self.folder,
            )
            for r in ready
        ]
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in ready):
            assert time.monotonic() < deadline, "the applies did not start"
            time.sleep(0.005)
        go.touch()
        self.went = time.monotonic()
        return procs

    def finish(self, procs: list[subprocess.Popen[str]]) -> list[tuple[int, str, str, float]]:
        """(exit code, stdout, stderr, seconds from `go` to its exit) of each."""
        outputs = [p.communicate(timeout=120) for p in procs]
        exits = [float(Path(f"{r}.exit").read_text()) - self.went for r in self.ready]
        return [(p.returncode, *out, t) for p, out, t in zip(procs, outputs, exits, strict=True)]


def declare(folder: Path, keys: dict[str, dict[str, Any]], backend: Backend, name: str, n: int,
            alias: bool) -> None:
    write_key(folder, name, private_pem("EC_P256", n))
    keys[name] = key_entry(name, aliases=[f"alias/{STACK}/{name}"] if alias else [])
    write_manifest(folder, keys, backend=backend.manifest_backend)


def one_key_per_identity(sdk: SdkView, names: list[str]) -> dict[str, str]:
    """Every name holds exactly one key, Enabled, that holds its claim; no other key of the stack."""
    found = sdk.stack_keys()
    assert sorted(found) == sorted(names)
    claims = sdk.reserved_aliases()
    ids = {}
    for name in names:
        (key_id,) = found[name]
        assert sdk.describe(key_id).key_state == "Enabled", name
        assert claims[claim_alias(STACK, name)] == key_id
        ids[name] = key_id
    return ids


def test_two_applies_at_once_one_works_the_other_is_refused_within_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: Backend
) -> None:
    monkeypatch.chdir(tmp_path)
    keys: dict[str, dict[str, Any]] = {}
    declare(tmp_path, keys, backend, "base", 300, alias=True)
    assert run_cli(["apply", "manifests", "--auto-approve", *backend.args], env=backend.env).code == 0
    sdk = backend.view
    runs = Runs(tmp_path, backend)
    lost_times: list[float] = []
    for i in range(ROUNDS):
        # Each round two new keys, one with an alias of its own and one without.
        declare(tmp_path, keys, backend, f"r{i}a", 301 + 2 * i, alias=True)
        declare(tmp_path, keys, backend, f"r{i}b", 302 + 2 * i, alias=False)
        before = set(sdk.key_ids(lock_keys=True))
        results = runs.finish(runs.start(2))
        codes = sorted(r[0] for r in results)
        assert codes == [0, 1], (i, results)
        (winner,) = [r for r in results if r[0] == 0]
        (loser,) = [r for r in results if r[0] == 1]
        last = loser[2].splitlines()[-1]
        match = REFUSAL.fullmatch(last)
        assert match is not None, (i, loser)
        assert loser[1] == ""  # no plan, no preview: it stopped before reading a key
        assert "created" not in loser[2] and "Apply complete: 2 key(s) changed" in winner[1]
        lost_times.append(loser[3])
        assert loser[3] < 1.0, (i, loser)
        # Nothing written by the loser: exactly the winner's two new keys are new, and nothing is
        # pending deletion; every identity holds one key, the one that holds its claim.
        assert set(sdk.key_ids(lock_keys=True)) - before == {
            sdk.stack_keys()[f"r{i}a"][0], sdk.stack_keys()[f"r{i}b"][0]
        }
        one_key_per_identity(sdk, list(keys))
        assert lock_alias(STACK) not in sdk.reserved_aliases()  # released
    print(f"loser exit after go: max {max(lost_times):.3f} s, mean {sum(lost_times) / ROUNDS:.3f} s")
    r = run_cli(["plan", "manifests", "--detailed-exitcode", *backend.args], env=backend.env)
    assert r.code == 0, r.stdout + r.stderr
    for name in keys:
        (key_id,) = sdk.stack_keys()[name]
        n = 300 if name == "base" else 301 + 2 * int(name[1:-1]) + (name[-1] == "b")
        assert sdk.public_key_der(key_id) == spki_der(private_pem("EC_P256", n))
    assert len(sdk.lock_keys()) == (1 if backend.kind == "alibaba" else 0)


def test_without_the_lock_the_claims_still_keep_one_key_per_identity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: Backend
) -> None:
    """Two applies at once with no lock at all: each new identity goes to whichever claims it first;
    the other run never imports into its own key and schedules it for deletion."""
    monkeypatch.chdir(tmp_path)
    keys: dict[str, dict[str, Any]] = {}
    sdk = backend.view
    runs = Runs(tmp_path, backend)
    lost = 0
    for i in range(LOCK_FREE_ROUNDS):
        declare(tmp_path, keys, backend, f"r{i}a", 401 + 2 * i, alias=True)
        declare(tmp_path, keys, backend, f"r{i}b", 402 + 2 * i, alias=False)
        results = runs.finish(runs.start(2, locking="no"))
        assert all(r[0] in (0, 1) and "Traceback" not in r[2] for r in results), results
        lost += sum(r[2].count("at the same time and holds its claim") for r in results)
        found = sdk.stack_keys()
        claims = sdk.reserved_aliases()
        for name in (f"r{i}a", f"r{i}b"):
            standing = [k for k in found[name] if sdk.describe(k).key_state != "PendingDeletion"]
            assert standing == [claims[claim_alias(STACK, name)]], (name, results)
    # Each loss is printed twice: its progress line, then the summary.
    print(f"claims lost in {LOCK_FREE_ROUNDS} lock-free rounds: {lost // 2}")
    r = run_cli(["apply", "manifests", "--auto-approve", *backend.args], env=backend.env)
    assert r.code == 0, r.stdout + r.stderr
    r = run_cli(["plan", "manifests", "--detailed-exitcode", *backend.args], env=backend.env)
    assert r.code == 0, r.stdout + r.stderr
    ids = one_key_per_identity_standing(sdk, list(keys))
    for name, key_id in ids.items():
        i = int(name[1:-1])
        assert sdk.public_key_der(key_id) == spki_der(private_pem("EC_P256", 401 + 2 * i + (name[-1] == "b")))


def one_key_per_identity_standing(sdk: SdkView, names: list[str]) -> dict[str, str]:
    """Every name has one key not pending deletion, Enabled and holding its claim."""
    claims = sdk.reserved_aliases()
    out = {}
    for name, found in sdk.stack_keys().items():
        (key_id,) = [k for k in found if sdk.describe(k).key_state != "PendingDeletion"]
        assert sdk.describe(key_id).key_state == "Enabled"
        assert claims[claim_alias(STACK, name)] == key_id
        out[name] = key_id
    assert sorted(out) == sorted(names)
    return out


def kill_after_first_key(runs: Runs, procs: list[subprocess.Popen[str]], sdk: SdkView) -> int:
    """SIGKILL the one apply once its first new key exists (before or after its claim); its pid."""
    (proc,) = procs
    deadline = time.monotonic() + 60
    while not sdk.stack_keys().get("k1"):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.kill()
    proc.communicate(timeout=10)  # and its pipes closed
    return proc.pid


def three_keys(folder: Path, backend: Backend) -> dict[str, dict[str, Any]]:
    keys: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(("k1", "k2", "k3")):
        declare(folder, keys, backend, name, 320 + i, alias=i != 1)
    return keys


def test_a_killed_holder_is_waited_out_and_the_next_apply_converges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: Backend
) -> None:
    monkeypatch.chdir(tmp_path)
    keys = three_keys(tmp_path, backend)
    sdk = backend.view
    runs = Runs(tmp_path, backend)
    pid = kill_after_first_key(runs, runs.start(1, lease=3, renew=1), sdk)
    # The dead holder's lease has not lapsed: refused at once, naming it.
    r = run_cli(["apply", "manifests", "--auto-approve", *backend.args], env=backend.env)
    assert r.code == 1
    match = REFUSAL.fullmatch(r.stderr.splitlines()[-1])
    assert match is not None and int(match["pid"]) == pid, r.stderr
    # Waiting longer than the lease: the lease lapses, the lock is taken over, the stack converges.
    start = time.monotonic()
    waiting = ["apply", "manifests", "--auto-approve", "--lock-timeout", "30", *backend.args]
    r = run_cli(waiting, env=backend.env)
    assert r.code == 0, r.stdout + r.stderr
    assert time.monotonic() - start < 20
    r = run_cli(["plan", "manifests", "--detailed-exitcode", *backend.args], env=backend.env)
    assert r.code == 0, r.stdout + r.stderr
    ids = one_key_per_identity(sdk, list(keys))
    for i, name in enumerate(keys):
        assert sdk.public_key_der(ids[name]) == spki_der(private_pem("EC_P256", 320 + i))


def test_unlock_breaks_the_lock_of_a_killed_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: Backend
) -> None:
    monkeypatch.chdir(tmp_path)
    keys = three_keys(tmp_path, backend)
    sdk = backend.view
    runs = Runs(tmp_path, backend)
    pid = kill_after_first_key(runs, runs.start(1), sdk)  # the full 60 s lease
    r = run_cli(["unlock", "other", "manifests", *backend.args], env=backend.env)
    assert (r.code, r.stderr.splitlines()[-1]) == (
        1, "error: the manifests are of stack 'e2e', not 'other': nothing unlocked"
    )
    r = run_cli(["unlock", STACK, "manifests", *backend.args], env=backend.env)
    assert r.code == 0, r.stderr
    said = r.stderr.splitlines()[-1]
    assert re.fullmatch(
        rf'unlocked stack "e2e" \(target default\): it was locked by \S+ pid {pid} since \S+Z', said
    ), said
    r = run_cli(["unlock", STACK, "manifests", *backend.args], env=backend.env)
    assert (r.code, r.stderr.splitlines()[-1]) == (0, 'stack "e2e" (target default) was not locked')
    r = run_cli(["apply", "manifests", "--auto-approve", *backend.args], env=backend.env)
    assert r.code == 0, r.stdout + r.stderr
    one_key_per_identity(sdk, list(keys))
    r = run_cli(["plan", "manifests", "--detailed-exitcode", *backend.args], env=backend.env)
    assert r.code == 0, r.stdout + r.stderr


def test_the_lock_key_and_the_claims_stay_out_of_plan_drift_show_and_discover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: Backend
) -> None:
    monkeypatch.chdir(tmp_path)
    keys = three_keys(tmp_path, backend)
    assert run_cli(["apply", "manifests", "--auto-approve", *backend.args], env=backend.env).code == 0
    sdk = backend.view
    lock_keys = sdk.lock_keys()
    assert len(lock_keys) == (1 if backend.kind == "alibaba" else 0)
    assert sorted(sdk.reserved_aliases()) == sorted(claim_alias(STACK, n) for n in keys)
    outputs = []
    for command in (["plan"], ["plan", "--format", "json"], ["plan", "--format", "markdown"], ["drift"],
                    ["drift", "--format", "json"], ["show"], ["show", "--format", "json"]):
        r = run_cli([*command, "manifests", *backend.args], env=backend.env)
        assert r.code == 0, (command, r.stdout, r.stderr)
        outputs.append(r.stdout + r.stderr)
    r = run_cli(["discover", *backend.args], env=backend.env)
    assert r.code == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "keys: {}"  # the lock key is nobody's unmanaged key
    outputs.append(r.stdout + r.stderr)
    for text in outputs:
        assert "byok-provisioner/" not in text and "byok-provisioner-lock" not in text, text
        for key_id in lock_keys:
            assert key_id not in text
