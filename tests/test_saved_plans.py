"""Saved plans do only what was reviewed, plans without private material, deletion protection (DESIGN
section 9), through the CLI: on the local backend (its state file says whether anything was written) and
on the emulator through the official SDK (its /_emulator/stats counts the write calls)."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from apply_support import (
    STACK,
    Run,
    SdkView,
    fingerprint,
    key_entry,
    private_pem,
    run_cli,
    write_key,
    write_manifest,
    writes,
)
from conftest import REGION, RunningEmulator

from provisioner.backend.local import LocalTransport

TAG_FINGERPRINT = "byok-provisioner:fingerprint"
STATE = Path("manifests/.provision/kms.db")


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    for name in ("signer", "tokens"):
        write_key(tmp_path, name, private_pem("EC_P256", 10 if name == "signer" else 11))
    yield tmp_path


def manifest(folder: Path, **overrides: dict[str, Any]) -> None:
    """signer pinned, tokens unpinned; overrides replace fields of a key."""
    keys = {
        "signer": key_entry("signer"),
        "tokens": key_entry("tokens"),
    }
    keys["signer"]["material"]["fingerprint"] = fingerprint(private_pem("EC_P256", 10))
    for name, fields in overrides.items():
        keys.setdefault(name, key_entry(name)).update(fields)
    write_manifest(folder, keys)


def state_digest() -> str:
    """The local state file's bytes: unchanged means apply wrote nothing."""
    return hashlib.sha256(STATE.read_bytes()).hexdigest() if STATE.exists() else "absent"


def local_keys() -> dict[str, dict[str, str]]:
    """key id -> tags, from the local state file."""
    transport = LocalTransport(STATE)
    try:
        body = transport.call("ListKeys", {"PageNumber": 1, "PageSize": 100})
        out = {}
        for k in body["Keys"]["Key"]:
            tags = transport.call("ListResourceTags", {"KeyId": k["KeyId"]})["Tags"]["Tag"]
            out[k["KeyId"]] = {t["TagKey"]: t["TagValue"] for t in tags}
        return out
    finally:
        transport.close()


def offline_plan(*extra: str) -> Run:
    r = run_cli(["plan", "--offline-material", "--out", "p.json", *extra])
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


def test_offline_plan_reads_no_material_and_apply_resolves_it(work: Path) -> None:
    manifest(work)
    hidden = {p: p.read_bytes() for p in (work / "keys").iterdir()}
    for p in hidden:
        p.unlink()  # the pull-request job holds no private key
    r = offline_plan("--format", "json")
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
    r = run_cli(["apply", "--plan", "p.json"])
    assert r.code == 0, r.stdout + r.stderr
    assert "Apply complete: 2 key(s) changed, 0 failed." in r.stdout
    got = {tags["byok-provisioner:name"]: tags[TAG_FINGERPRINT] for tags in local_keys().values()}
    assert got == {
        "signer": fingerprint(private_pem("EC_P256", 10)),
        "tokens": fingerprint(private_pem("EC_P256", 11)),
    }
    again = run_cli(["plan", "--detailed-exitcode"])
    assert again.code == 0, again.stdout + again.stderr


def test_offline_plan_then_material_of_the_wrong_spec_blocks_the_whole_apply(work: Path) -> None:
    manifest(work)
    offline_plan()
    write_key(work, "tokens", private_pem("RSA_2048"))
    r = run_cli(["apply", "--plan", "p.json"])
    assert r.code == 1
    assert 'error: key "tokens": ' in r.stderr and "EC_P256" in r.stderr, r.stderr
    assert r.stderr.endswith("1 error(s)\n")
    assert not STATE.exists() or local_keys() == {}


def test_offline_plan_then_other_material_than_the_live_key_holds_is_blocked(work: Path) -> None:
    manifest(work)
    assert run_cli(["apply", "--auto-approve"]).code == 0
    manifest(work, tokens={"state": "material-deleted"})
    assert run_cli(["apply", "--auto-approve"]).code == 0
    manifest(work)
    r = offline_plan("--format", "json")
    assert change(r.json(), "tokens")["actions"] == ["reimport"]
    write_key(work, "tokens", private_pem("EC_P256", 12))  # not the material the key is bound to
    before = state_digest()
    r = run_cli(["apply", "--plan", "p.json"])
    assert r.code == 1
    assert (
        "error: the plan is blocked by 1 violation(s) found with the material read now; nothing applied: "
        "tokens: material-immutable: key key-" in r.stderr
    ), r.stderr
    assert "is bound to material" in r.stderr
    assert state_digest() == before


def test_fresh_apply_checks_every_material_before_its_first_write(work: Path) -> None:
    manifest(work)
    write_key(work, "tokens", private_pem("RSA_2048"))
    r = run_cli(["apply", "--auto-approve"])
    assert r.code == 1
    assert 'error: key "tokens": ' in r.stderr and r.stderr.endswith("1 error(s)\n"), r.stderr
    assert not STATE.exists()


# ------------------------------------------------------------------------------------ saved plans


def test_saved_plan_refused_when_the_manifests_changed(work: Path) -> None:
    manifest(work)
    offline_plan()
    manifest(work, tokens={"description": "changed after review"})
    r = run_cli(["apply", "--plan", "p.json"])
    assert r.code == 1
    planned = json.loads(Path("p.json").read_text())["manifest_digest"]
    assert r.stderr.startswith(
        "error: the manifests no longer match the plan: rendered now (manifests/stack.yaml) they have "
        "manifest_digest sha256:"
    ), r.stderr
    assert f", the plan was made from {planned}; a file, --var or --var-file value changed since" in r.stderr
    assert local_keys() == {}


def test_saved_plan_refused_when_a_variable_changed(work: Path) -> None:
    manifest(work, tokens={"description": "{{ team }} tokens"})
    assert run_cli(["plan", "--out", "p.json", "--var", "team=blue"]).code == 0
    r = run_cli(["apply", "--plan", "p.json", "--var", "team=red"])
    assert r.code == 1
    assert r.stderr.startswith("error: the manifests no longer match the plan: "), r.stderr
    r = run_cli(["apply", "--plan", "p.json", "--var", "team=blue", "manifests"])
    assert r.code == 0, r.stdout + r.stderr


def test_saved_plan_with_other_paths_is_refused(work: Path) -> None:
    manifest(work)
    offline_plan()
    (work / "other").mkdir()
    (work / "other" / "stack.yaml").write_text((work / "manifests" / "stack.yaml").read_text())
    # The digest names each file relative to its PATH: the same file found another way is the same
    # (with --state, as the state beside other/ is another KMS)...
    r = run_cli(["apply", "--plan", "p.json", "other/stack.yaml", "--format", "json", "--state", str(STATE)])
    assert r.code == 0, r.stderr
    assert r.json()["ok"] is True
    # ...but another set of files is not.
    (work / "other" / "more.yaml").write_text("version: 1\nstack: e2e\nkeys: {}\n")
    r = run_cli(["apply", "--plan", "p.json", "other"])
    assert r.code == 1
    assert r.stderr.startswith(
        "error: the manifests no longer match the plan: rendered now (other/more.yaml, other/stack.yaml)"
    ), r.stderr


def test_plan_file_of_the_previous_format_is_refused(work: Path) -> None:
    manifest(work)
    offline_plan()
    edit_plan(lambda d: d.pop("manifest_digest"))
    r = run_cli(["apply", "--plan", "p.json"])
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
def test_hand_edited_saved_plan_is_refused(work: Path, field: str, value: Any) -> None:
    manifest(work)
    offline_plan()
    edit_plan(lambda d: change(d, "tokens").update({field: value}))
    i = [c["key"] for c in json.loads(Path("p.json").read_text())["changes"]].index("tokens")
    r = run_cli(["apply", "--plan", "p.json"])
    assert r.code == 1
    assert r.stderr == (
        f"error: plan file: changes[{i}] (key 'tokens'): {field} differ from what the planner derives from "
        f"its before/after (was the file edited by hand?): make a new plan\n"
    )
    assert local_keys() == {}


def test_saved_plan_material_sources_never_come_from_the_plan(work: Path) -> None:
    manifest(work)
    offline_plan()
    write_key(work, "planted", private_pem("EC_P256", 12))

    def plant(d: dict[str, Any]) -> None:
        change(d, "tokens")["material"] = {"kind": "command", "command": ["sh", "-c", "touch ran"],
                                           "fingerprint": "unknown"}

    edit_plan(plant)
    r = run_cli(["apply", "--plan", "p.json"])
    assert r.code == 1
    assert r.stderr.endswith(
        "error: key 'tokens': the plan's material differ from what the manifests, the material and the "
        "live keys give now (was the file edited by hand?): make a new plan\n"
    ), r.stderr
    assert not Path("ran").exists()
    assert local_keys() == {}


def test_saved_plan_backend_never_comes_from_the_plan(work: Path) -> None:
    manifest(work)
    offline_plan()
    edit_plan(lambda d: d.update(backend={"type": "local", "path": "elsewhere/kms.db"}))
    r = run_cli(["apply", "--plan", "p.json"])
    assert r.code == 1
    assert r.stderr.endswith(
        "error: the plan was made against path=elsewhere/kms.db, type=local, but apply is pointed at "
        "endpoint=local:manifests/.provision/kms.db, path=manifests/.provision/kms.db, type=local: "
        "apply it against the backend it was made for, or make a new "
        "plan\n"
    ), r.stderr
    assert not Path("elsewhere").exists()


def test_saved_plan_that_lifts_protection_and_deletes_is_refused(work: Path) -> None:
    manifest(work, tokens={"deletion_protection": True})
    assert run_cli(["apply", "--auto-approve"]).code == 0
    manifest(work, tokens={"state": "absent"})
    r = run_cli(["plan", "--out", "p.json", "--format", "json"])
    assert r.code == 1
    assert [v["code"] for v in r.json()["violations"]] == ["deletion-protected"]
    assert not Path("p.json").exists()


def test_hostile_plan_files_are_clear_errors(work: Path) -> None:
    manifest(work)
    Path("deep.json").write_text("[" * 100_000 + "]" * 100_000)
    r = run_cli(["apply", "--plan", "deep.json"])
    assert (r.code, r.stderr) == (1, "error: plan file is malformed: its JSON is nested too deeply\n")
    with open("big.json", "wb") as f:
        f.truncate(50 * 1024 * 1024)
    r = run_cli(["apply", "--plan", "big.json"])
    too_large = "error: --plan big.json: 52428800 bytes is too large (at most 33554432)\n"
    assert (r.code, r.stderr) == (1, too_large)
    os.mkfifo("fifo.json")
    r = run_cli(["apply", "--plan", "fifo.json"])
    assert (r.code, r.stderr) == (1, "error: --plan fifo.json: is a FIFO (named pipe), not a regular file\n")
    r = run_cli(["apply", "--plan", "/dev/zero"])
    assert (r.code, r.stderr) == (1, "error: --plan /dev/zero: is a character device, not a regular file\n")
    assert not STATE.exists()


# ------------------------------------------------------------------------------------ emulator


def test_offline_plan_and_apply_on_the_emulator(
    work: Path, emulator_factory: Callable[..., RunningEmulator]
) -> None:
    emulator = emulator_factory()
    backend = ["--backend", "alibaba", "--endpoint", emulator.url, "--region", REGION]
    env = emulator.credential_env()
    sdk = SdkView(emulator.sdk_client())
    manifest(work)
    before = emulator.stats()
    r = run_cli(["plan", "--offline-material", "--out", "p.json", *backend], env=env)
    assert r.code == 0, r.stderr
    assert writes(before, emulator.stats()) == Counter()

    write_key(work, "tokens", private_pem("EC_P256", 12))  # unpinned: whatever apply reads is bound
    write_key(work, "signer", private_pem("EC_P256", 13))  # differs from the pin: blocks everything
    before = emulator.stats()
    r = run_cli(["apply", "--plan", "p.json", *backend], env=env)
    assert r.code == 1
    assert 'error: key "signer": ' in r.stderr and r.stderr.endswith("1 error(s)\n"), r.stderr
    assert writes(before, emulator.stats()) == Counter()
    assert sdk.key_ids() == []

    write_key(work, "signer", private_pem("EC_P256", 10))
    r = run_cli(["apply", "--plan", "p.json", *backend], env=env)
    assert r.code == 0, r.stdout + r.stderr
    keys = sdk.stack_keys()
    assert sorted(keys) == ["signer", "tokens"]
    assert sdk.tags(keys["tokens"][0])[TAG_FINGERPRINT] == fingerprint(private_pem("EC_P256", 12))
    assert sdk.tags(keys["signer"][0])[TAG_FINGERPRINT] == fingerprint(private_pem("EC_P256", 10))
