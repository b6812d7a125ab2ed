"""The local state belongs to its stack (DESIGN section 10, "State file"; issue 13 point 5): it lives
beside the first manifest path wherever the command runs, `--state FILE` overrides it, and the first
edition's `./.provision/kms.db` is never silently left behind for an empty new one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from apply_support import run_cli
from cli_support import copy_manifests

from provisioner.backend.local import LocalTransport


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example stack in tmp_path/srv/stack (its manifests folder), run from tmp_path/elsewhere."""
    copy_manifests(tmp_path / "srv")
    folder = tmp_path / "srv" / "manifests"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setenv("PROVISION_RETRY_SECONDS", "0")
    for name in ("PROVISION_BACKEND", "PROVISION_ENDPOINT", "ALIBABA_CLOUD_REGION_ID"):
        monkeypatch.delenv(name, raising=False)
    return folder


def key_count(db: Path) -> int:
    transport = LocalTransport(db, create=False)
    try:
        return int(transport.call("ListKeys", {"PageSize": 100})["TotalCount"])
    finally:
        transport.close()


def test_apply_from_another_folder_uses_the_state_beside_the_manifests(stack: Path) -> None:
    r = run_cli(["apply", str(stack), "--auto-approve"])
    assert r.code == 0, r.stderr
    state = stack / ".provision" / "kms.db"
    assert r.stderr.startswith(f"using local backend ({state})\n")
    assert key_count(state) == 3
    assert os.stat(state).st_mode & 0o777 == 0o600
    assert os.listdir(".") == []  # nothing in the current folder
    # A file PATH: the state is in that file's folder, the same one.
    r = run_cli(["plan", str(stack / "payments.yaml"), "--detailed-exitcode"])
    assert r.code == 0, r.stdout + r.stderr


def test_a_saved_plan_applied_from_another_folder_finds_the_stacks_state(stack: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    r = run_cli(["plan", str(stack), "--out", str(plan)])
    assert r.code == 0, r.stderr
    os.chdir(tmp_path)
    r = run_cli(["apply", "--plan", str(plan), str(stack)])
    assert r.code == 0, r.stdout + r.stderr
    assert key_count(stack / ".provision" / "kms.db") == 3


def test_state_flag_overrides_the_default(stack: Path, tmp_path: Path) -> None:
    state = tmp_path / "states" / "payments.db"
    r = run_cli(["apply", str(stack), "--auto-approve", "--state", str(state)])
    assert r.code == 0, r.stderr
    assert key_count(state) == 3
    assert not (stack / ".provision").exists()
    for command in (["plan", "--detailed-exitcode"], ["drift"], ["show"]):
        r = run_cli([command[0], str(stack), *command[1:], "--state", str(state)])
        assert r.code == 0, (command, r.stdout, r.stderr)
    assert not (stack / ".provision").exists()


def test_a_missing_default_beside_a_legacy_state_in_the_current_folder_is_refused(stack: Path) -> None:
    legacy = Path.cwd() / ".provision" / "kms.db"
    LocalTransport(legacy).close()
    before = legacy.read_bytes()
    for command in (["plan"], ["apply", "--auto-approve"], ["drift"], ["show"]):
        r = run_cli([command[0], str(stack), *command[1:]])
        assert r.code == 1, (command, r.stdout, r.stderr)
        assert r.stdout == ""
        assert r.stderr == (
            f"error: the stack's local state is {stack / '.provision' / 'kms.db'} (beside the first manifest "
            f"path), which does not exist, but .provision/kms.db in the current folder does (where the first "
            f"edition kept it): move .provision/kms.db to {stack / '.provision' / 'kms.db'}, or name the one "
            f"to use with --state\n"
        )
    assert not (stack / ".provision").exists()  # nothing written
    assert legacy.read_bytes() == before
    # Named, either is used.
    r = run_cli(["plan", str(stack), "--state", ".provision/kms.db", "--detailed-exitcode"])
    assert r.code == 2, r.stderr


def test_state_flag_is_for_the_local_backend_only(stack: Path) -> None:
    r = run_cli(
        ["plan", str(stack), "--backend", "alibaba", "--region", "cn-hangzhou", "--state", "x.db"]
    )
    assert (r.code, r.stdout) == (1, "")
    assert r.stderr == "error: --state applies to the local backend only; the backend is alibaba\n"
    assert not Path("x.db").exists()


def test_a_state_flag_naming_a_link_or_a_fifo_is_refused(stack: Path, tmp_path: Path) -> None:
    real = tmp_path / "real.db"
    LocalTransport(real).close()
    link = tmp_path / "link.db"
    link.symlink_to(real)
    fifo = tmp_path / "fifo.db"
    os.mkfifo(fifo)
    for path in (link, fifo):
        r = run_cli(["apply", str(stack), "--auto-approve", "--state", str(path)])
        assert r.code == 1, r.stdout + r.stderr
        assert r.stderr.splitlines()[-1].startswith(f"error: local backend {path}: "), r.stderr
    assert key_count(real) == 0
