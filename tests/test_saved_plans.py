"""Saved plans do only what was reviewed, plans without private material, deletion protection (DESIGN
section 9), through the CLI, on both backends (tests/backends.py): the local one and the emulator through
the official SDK. The calls each KMS received say whether anything was written (and, on local, the state
file's bytes); the SDK's view of it says which keys exist."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from apply_support import (
    STACK,
    Run,
    fingerprint,
    key_entry,
    private_pem,
    run_cli,
    write_key,
    write_manifest,
    writes,
)
from backends import Backend, LocalBackend
from e2e_support import enter_account

pytestmark = pytest.mark.slow
BOTH_BACKENDS = True

TAG_FINGERPRINT = "byok-provisioner:fingerprint"


@pytest.fixture
def kms(backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    """The KMS under test, its credentials in the environment, tmp_path (with the two key files) the
    working folder."""
    for name in ("signer", "tokens"):
        write_key(tmp_path, name, private_pem("EC_P256", 10 if name == "signer" else 11))
    yield enter_account(backend, monkeypatch, tmp_path)


def manifest(kms: Backend, **overrides: dict[str, Any]) -> None:
    """signer pinned, tokens unpinned; overrides replace fields of a key."""
    keys = {
        "signer": key_entry("signer"),
        "tokens": key_entry("tokens"),
    }
    keys["signer"]["material"]["fingerprint"] = fingerprint(private_pem("EC_P256", 10))
    for name, fields in overrides.items():
        keys.setdefault(name, key_entry(name)).update(fields)
    write_manifest(Path.cwd(), keys, backend=kms.manifest_backend)


#: No client-side wait for the production rate limits (backend.DEFAULT_QPS): not what these tests are about.
QUICK = [arg for group in ("create", "read", "write") for arg in ("--qps", f"{group}=1000")]


def provision(kms: Backend, *args: str) -> Run:
    """`provision ARGS` pointed at the KMS under test."""
    return run_cli([*args, *kms.args, *QUICK])


@contextmanager
def writes_nothing(kms: Backend, *, locked: bool = False) -> Iterator[None]:
    """The block makes no write call and, on local, leaves a state file that exists as it was.
    `locked`: the refusal comes after apply took the stack's lock: its own writes aside."""

    def state() -> bytes | None:
        if isinstance(kms, LocalBackend) and kms.db.exists():
            return kms.db.read_bytes()
        return None

    before, file = kms.stats(), state()
    yield
    made = writes(before, kms.stats())
    assert (kms.minus_lock(made) if locked else made) == Counter()
    if file is not None:
        assert state() == file, "the state file changed"


def bound(kms: Backend) -> dict[str, str]:
    """name -> the fingerprint tag of each key of the stack."""
    return {name: kms.view.tags(kid)[TAG_FINGERPRINT] for name, (kid,) in kms.view.stack_keys().items()}


def offline_plan(kms: Backend, *extra: str) -> Run:
    r = provision(kms, "plan", "--offline-material", "--out", "p.json", *extra)
    assert r.code == 0, r.stdout + r.stderr
    return r


def edit_plan(edit: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(Path("p.json").read_text())
    edit(doc)
    doc.pop("summary", None)
    Path("p.json").write_text(json.dumps(doc))


def change(doc: dict[str, Any], key: str) -> dict[str, Any]:
    return next(c for c in doc["changes"] if c["key"] == key)


# ------------------------------------------------------------------------------------ offline plans


def test_offline_plan_reads_no_material_and_apply_resolves_it(kms: Backend) -> None:
    manifest(kms)
    hidden = {p: p.read_bytes() for p in Path("keys").iterdir()}
    for p in hidden:
        p.unlink()  # the pull-request job holds no private key
    with writes_nothing(kms):
        r = offline_plan(kms, "--format", "json")
    doc = r.json()
    tokens, signer = change(doc, "tokens"), change(doc, "signer")
    assert tokens["after"]["fingerprint"] == "unknown"
    assert tokens["material"]["fingerprint"] == "unknown"
    assert tokens["tags_to_set"][TAG_FINGERPRINT] == "unknown"
    assert signer["after"]["fingerprint"] == fingerprint(private_pem("EC_P256", 10))
    assert [(n["key"], n["code"]) for n in doc["notes"]] == [("tokens", "fingerprint-unknown")]
    assert json.loads(Path("p.json").read_text())["manifest_digest"].startswith("sha256:")

    for p, data in hidden.items():
        p.write_bytes(data)
    r = provision(kms, "apply", "--plan", "p.json")
    assert r.code == 0, r.stdout + r.stderr
    assert "Apply complete: 2 key(s) changed, 0 failed." in r.stdout
    assert bound(kms) == {
        "signer": fingerprint(private_pem("EC_P256", 10)),
        "tokens": fingerprint(private_pem("EC_P256", 11)),
    }
    again = provision(kms, "plan", "--detailed-exitcode")
    assert again.code == 0, again.stdout + again.stderr


def test_offline_plan_then_material_of_the_wrong_spec_blocks_the_whole_apply(kms: Backend) -> None:
    manifest(kms)
    offline_plan(kms)
    write_key(Path.cwd(), "tokens", private_pem("RSA_2048"))
    with writes_nothing(kms):
        r = provision(kms, "apply", "--plan", "p.json")
    assert r.code == 1
    assert 'error: key "tokens": ' in r.stderr and "EC_P256" in r.stderr, r.stderr
    assert r.stderr.endswith("1 error(s)\n")
    assert kms.view.key_ids() == []


def test_offline_plan_then_other_material_than_the_live_key_holds_is_blocked(kms: Backend) -> None:
    manifest(kms)
    assert provision(kms, "apply", "--auto-approve").code == 0
    manifest(kms, tokens={"state": "material-deleted"})
    assert provision(kms, "apply", "--auto-approve").code == 0
    manifest(kms)
    r = offline_plan(kms, "--format", "json")
    assert change(r.json(), "tokens")["actions"] == ["reimport"]
    write_key(Path.cwd(), "tokens", private_pem("EC_P256", 12))  # not the material the key is bound to
    with writes_nothing(kms, locked=True):
        r = provision(kms, "apply", "--plan", "p.json")
    assert r.code == 1
    assert (
        "error: the plan is blocked by 1 violation(s) found with the material read now; nothing applied: "
        "tokens: material-immutable: key key-" in r.stderr
    ), r.stderr
    assert "is bound to material" in r.stderr


def test_fresh_apply_checks_every_material_before_its_first_write(kms: Backend) -> None:
    manifest(kms)
    write_key(Path.cwd(), "tokens", private_pem("RSA_2048"))
    with writes_nothing(kms):
        r = provision(kms, "apply", "--auto-approve")
    assert r.code == 1
    assert 'error: key "tokens": ' in r.stderr and r.stderr.endswith("1 error(s)\n"), r.stderr
    assert kms.view.key_ids() == []


# ------------------------------------------------------------------------------------ saved plans


def test_saved_plan_refused_when_the_manifests_changed(kms: Backend) -> None:
    manifest(kms)
    offline_plan(kms)
    manifest(kms, tokens={"description": "changed after review"})
    with writes_nothing(kms):
        r = provision(kms, "apply", "--plan", "p.json")
    assert r.code == 1
    planned = json.loads(Path("p.json").read_text())["manifest_digest"]
    assert r.stderr.startswith(
        "error: the manifests no longer match the plan: rendered now (manifests/stack.yaml) they have "
        "manifest_digest sha256:"
    ), r.stderr
    assert f", the plan was made from {planned}; a file, --var or --var-file value changed since" in r.stderr
    assert kms.view.key_ids() == []


def test_saved_plan_refused_when_a_variable_changed(kms: Backend) -> None:
    manifest(kms, tokens={"description": "{{ team }} tokens"})
    assert provision(kms, "plan", "--out", "p.json", "--var", "team=blue").code == 0
    r = provision(kms, "apply", "--plan", "p.json", "--var", "team=red")
    assert r.code == 1
    assert r.stderr.startswith("error: the manifests no longer match the plan: "), r.stderr
    r = provision(kms, "apply", "--plan", "p.json", "--var", "team=blue", "manifests")
    assert r.code == 0, r.stdout + r.stderr


def test_saved_plan_with_other_paths_is_refused(kms: Backend) -> None:
    manifest(kms)
    offline_plan(kms)
    Path("other").mkdir()
    Path("other/stack.yaml").write_text(Path("manifests/stack.yaml").read_text())
    # The digest names each file relative to its PATH: the same file found another way is the same
    # (its backend: block names the same KMS)...
    r = provision(kms, "apply", "--plan", "p.json", "other/stack.yaml", "--format", "json")
    assert r.code == 0, r.stderr
    assert r.json()["ok"] is True
    assert sorted(kms.view.stack_keys()) == ["signer", "tokens"]
    # ...but another set of files is not.
    Path("other/more.yaml").write_text("version: 1\nstack: e2e\nkeys: {}\n")
    with writes_nothing(kms):
        r = provision(kms, "apply", "--plan", "p.json", "other")
    assert r.code == 1
    assert r.stderr.startswith(
        "error: the manifests no longer match the plan: rendered now (other/more.yaml, other/stack.yaml)"
    ), r.stderr


def test_plan_file_of_the_previous_format_is_refused(kms: Backend) -> None:
    manifest(kms)
    offline_plan(kms)
    edit_plan(lambda d: d.pop("manifest_digest"))
    r = provision(kms, "apply", "--plan", "p.json")
    assert r.code == 1
    assert r.stderr == (
        "error: plan file has no manifest_digest: it was made by an earlier version of the provisioner, "
        "which did not record the manifests it planned: run `provision plan --out FILE` again\n"
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tags_to_set", {"byok-provisioner:stack": STACK, "byok-provisioner:name": "tokens", "admin": "me"}),
        ("description", "planted"),
        ("actions", ["create", "import", "update"]),
        ("deletion_protection", True),
        ("aliases_to_create", ["alias/e2e/tokens", "alias/e2e/stolen"]),
    ],
)
def test_hand_edited_saved_plan_is_refused(kms: Backend, field: str, value: Any) -> None:
    manifest(kms)
    offline_plan(kms)
    edit_plan(lambda d: change(d, "tokens").update({field: value}))
    i = [c["key"] for c in json.loads(Path("p.json").read_text())["changes"]].index("tokens")
    with writes_nothing(kms):
        r = provision(kms, "apply", "--plan", "p.json")
    assert r.code == 1
    assert r.stderr == (
        f"error: plan file: changes[{i}] (key 'tokens'): {field} differ from what the planner derives from "
        f"its before/after (was the file edited by hand?): make a new plan\n"
    )
    assert kms.view.key_ids() == []


def test_saved_plan_material_sources_never_come_from_the_plan(kms: Backend) -> None:
    manifest(kms)
    offline_plan(kms)
    write_key(Path.cwd(), "planted", private_pem("EC_P256", 12))

    def plant(d: dict[str, Any]) -> None:
        change(d, "tokens")["material"] = {"kind": "command", "command": ["sh", "-c", "touch ran"],
                                           "fingerprint": "unknown"}

    edit_plan(plant)
    with writes_nothing(kms, locked=True):
        r = provision(kms, "apply", "--plan", "p.json")
    assert r.code == 1
    assert r.stderr.endswith(
        "error: key 'tokens': the plan's material differ from what the manifests, the material and the "
        "live keys give now (was the file edited by hand?): make a new plan\n"
    ), r.stderr
    assert not Path("ran").exists()
    assert kms.view.key_ids() == []


def test_saved_plan_backend_never_comes_from_the_plan(kms: Backend) -> None:
    manifest(kms)
    offline_plan(kms)
    edit_plan(lambda d: d.update(backend={"type": "local", "path": "elsewhere/kms.db"}))
    with writes_nothing(kms):
        r = provision(kms, "apply", "--plan", "p.json")
    assert r.code == 1
    pointed_at = ", ".join(f"{k}={v}" for k, v in sorted(kms.document.items()))
    assert r.stderr.endswith(
        f"error: the plan was made against path=elsewhere/kms.db, type=local, but apply is pointed at "
        f"{pointed_at}: apply it against the backend it was made for, or make a new plan\n"
    ), r.stderr
    assert not Path("elsewhere").exists()


def test_saved_plan_that_lifts_protection_and_deletes_is_refused(kms: Backend) -> None:
    manifest(kms, tokens={"deletion_protection": True})
    assert provision(kms, "apply", "--auto-approve").code == 0
    manifest(kms, tokens={"state": "absent"})
    with writes_nothing(kms):
        r = provision(kms, "plan", "--out", "p.json", "--format", "json")
    assert r.code == 1
    assert [v["code"] for v in r.json()["violations"]] == ["deletion-protected"]
    assert not Path("p.json").exists()


@pytest.mark.one_backend("local", "the plan file is refused before any backend is reached")
def test_hostile_plan_files_are_clear_errors(kms: Backend) -> None:
    manifest(kms)
    before = kms.stats()
    Path("deep.json").write_text("[" * 100_000 + "]" * 100_000)
    r = provision(kms, "apply", "--plan", "deep.json")
    assert (r.code, r.stderr) == (1, "error: plan file is malformed: its JSON is nested too deeply\n")
    with open("big.json", "wb") as f:
        f.truncate(50 * 1024 * 1024)
    r = provision(kms, "apply", "--plan", "big.json")
    too_large = "error: --plan big.json: 52428800 bytes is too large (at most 33554432)\n"
    assert (r.code, r.stderr) == (1, too_large)
    os.mkfifo("fifo.json")
    r = provision(kms, "apply", "--plan", "fifo.json")
    assert (r.code, r.stderr) == (1, "error: --plan fifo.json: is a FIFO (named pipe), not a regular file\n")
    r = provision(kms, "apply", "--plan", "/dev/zero")
    assert (r.code, r.stderr) == (1, "error: --plan /dev/zero: is a character device, not a regular file\n")
    assert kms.stats() == before
    assert isinstance(kms, LocalBackend) and not kms.db.exists()


def test_offline_plan_then_a_pin_mismatch_blocks_everything_and_apply_binds_what_it_reads(
    kms: Backend,
) -> None:
    manifest(kms)
    with writes_nothing(kms):
        offline_plan(kms)
    write_key(Path.cwd(), "tokens", private_pem("EC_P256", 12))  # unpinned: whatever apply reads is bound
    write_key(Path.cwd(), "signer", private_pem("EC_P256", 13))  # differs from the pin: blocks everything
    with writes_nothing(kms):
        r = provision(kms, "apply", "--plan", "p.json")
    assert r.code == 1
    assert 'error: key "signer": ' in r.stderr and r.stderr.endswith("1 error(s)\n"), r.stderr
    assert kms.view.key_ids() == []

    write_key(Path.cwd(), "signer", private_pem("EC_P256", 10))
    r = provision(kms, "apply", "--plan", "p.json")
    assert r.code == 0, r.stdout + r.stderr
    assert bound(kms) == {
        "signer": fingerprint(private_pem("EC_P256", 10)),
        "tokens": fingerprint(private_pem("EC_P256", 12)),
    }
