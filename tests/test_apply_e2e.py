"""`provision apply` end to end, on both backends: the CLI in-process over the official SDK and the
emulator server on loopback, and over the local backend's state file; every outcome checked through
the SDK's models directly and every edit checked for its write calls.

Each edit must do exactly its one thing: the plan's actions, the KMS's write-call counts and the
SDK's view of the key all say so, and the next `plan --detailed-exitcode` exits 0.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alibabacloud_kms20160120 import models as kms
from apply_support import (
    SOFTWARE,
    Run,
    SdkView,
    fingerprint,
    key_entry,
    private_pem,
    run_cli,
    spki_der,
    write_key,
    write_manifest,
    writes,
)
from backends import Backend, started
from conftest import PROXY_VARIABLES, REGION, RunningEmulator

pytestmark = pytest.mark.slow
BOTH_BACKENDS = True


class Stack:
    """One working folder with a manifest, the KMS behind it, and the CLI pointed at both."""

    def __init__(self, folder: Path, backend: Backend) -> None:
        self.folder = folder
        self.backend = backend
        self.sdk = backend.view
        self.env = backend.env
        self.keys: dict[str, dict[str, Any]] = {
            "signer": key_entry("signer", expiry="2099-01-01T00:00:00Z"),
            "tokens": key_entry("tokens", aliases=["alias/e2e/tokens", "alias/e2e/tokens-v1"]),
            "vault": key_entry("vault", "RSA_2048", usage="ENCRYPT/DECRYPT", deletion_protection=True),
        }
        self.pems = {
            "signer": private_pem("EC_P256", 1),
            "tokens": private_pem("EC_P256", 2),
            "vault": private_pem("RSA_2048", 1),
        }
        for name, pem in self.pems.items():
            write_key(folder, name, pem)
        self.save()

    def save(self) -> None:
        write_manifest(self.folder, self.keys, backend=self.backend.manifest_backend)

    def cli(self, *args: str, stdin: str | None = None) -> Run:
        return run_cli([*args, *self.backend.args], env=self.env, stdin=stdin)

    def plan_json(self) -> tuple[int, dict[str, Any]]:
        r = self.cli("plan", "manifests", "--format", "json", "--detailed-exitcode")
        return r.code, json.loads(r.stdout)

    def actions(self) -> dict[str, list[str]]:
        code, doc = self.plan_json()
        assert code == (2 if doc["changes"] else 0), doc
        return {c["key"]: c["actions"] for c in doc["changes"]}

    def apply(self, *extra: str) -> Run:
        r = self.cli("apply", "manifests", "--auto-approve", *extra)
        assert r.code == 0, r.stdout + r.stderr
        return r

    def apply_counting(self) -> Counter[str]:
        """Apply and return the write calls it made for the keys (the lock's own are counted in
        test_lock_e2e.py; each backend's are in Backend.lock_writes)."""
        before = self.backend.stats()
        self.apply()
        made = writes(before, self.backend.stats())
        assert made & self.backend.lock_writes == self.backend.lock_writes, made
        return made - self.backend.lock_writes

    def key_writes(self, before: dict[str, Any]) -> Counter[str]:
        """Write calls since `before`, but the lock's own: an apply takes the stack's lock before it
        checks a saved plan or reads a key, so even a refused one takes and gives it back."""
        made = writes(before, self.backend.stats())
        if made & self.backend.lock_writes == self.backend.lock_writes:
            made -= self.backend.lock_writes
        return made

    def assert_converged(self) -> None:
        r = self.cli("plan", "manifests", "--detailed-exitcode")
        assert r.code == 0, r.stdout + r.stderr
        assert "No changes" in r.stdout

    def key_id(self, name: str) -> str:
        ids = self.sdk.stack_keys()[name]
        assert len(ids) == 1, ids
        return ids[0]


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: Backend) -> Stack:
    monkeypatch.chdir(tmp_path)
    return Stack(tmp_path, backend)


@pytest.fixture(scope="module")
def applied_db(backend_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state file of this backend holding the applied stack, made once: every test starts from a copy.

    Imports are the slow part (the engine makes an RSA wrapping key per GetParametersForImport).
    """
    folder = tmp_path_factory.mktemp("template")
    db = folder / "kms.db"
    with pytest.MonkeyPatch.context() as mp:
        for name in PROXY_VARIABLES:
            mp.delenv(name, raising=False)
        mp.chdir(folder)
        with started(backend_kind, db, folder) as backend:
            Stack(folder, backend).apply()
    return db


@pytest.fixture
def applied(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    backend_factory: Callable[..., Backend],
    applied_db: Path,
) -> Stack:
    monkeypatch.chdir(tmp_path)
    stack = Stack(tmp_path, backend_factory(copy_of=applied_db))
    stack.assert_converged()
    return stack


# ------------------------------------------------------------------------------------ creation


def test_apply_creates_and_imports_every_key_as_declared(stack: Stack) -> None:
    before = stack.backend.stats()
    r = stack.apply()
    after = stack.backend.stats()
    assert "Apply complete: 3 key(s) changed, 0 failed." in r.stdout

    ids = stack.sdk.key_ids()
    assert len(ids) == 3  # exactly as many keys as the manifest: nothing stray, no duplicate
    aliases = stack.sdk.aliases()
    for name, entry in stack.keys.items():
        key_id = stack.key_id(name)
        meta = stack.sdk.describe(key_id)
        assert (meta.key_state, meta.key_spec, meta.key_usage, meta.origin) == (
            "Enabled", entry["spec"], entry["usage"], "EXTERNAL"
        )
        assert meta.dkmsinstance_id == SOFTWARE
        assert meta.description == entry["description"]
        assert stack.sdk.public_key_der(key_id) == spki_der(stack.pems[name])
        tags = stack.sdk.tags(key_id)
        assert tags["team"] == entry["tags"]["team"] and tags["owner"] == "platform"
        assert tags["byok-provisioner:fingerprint"] == fingerprint(stack.pems[name])
        assert sorted(a for a, k in aliases.items() if k == key_id) == sorted(entry["aliases"])
    assert stack.sdk.describe(stack.key_id("signer")).material_expire_time == "2099-01-01T00:00:00Z"
    assert stack.sdk.describe(stack.key_id("tokens")).material_expire_time in ("", None)
    assert stack.sdk.describe(stack.key_id("vault")).deletion_protection == "Enabled"

    # CreateKey carries every tag (no TagResource after it); one import each; one CreateAlias per alias
    # and one per key for its claim; and the lock (on alibaba: its key, made once, and its alias).
    assert writes(before, after) == Counter(
        CreateKey=3, ImportKeyMaterial=3, CreateAlias=4 + 3, SetDeletionProtection=1
    ) + stack.backend.lock_writes + stack.backend.lock_key_writes
    assert after["calls"]["GetPublicKey"] - before["calls"].get("GetPublicKey", 0) == 3
    stack.assert_converged()


def test_non_interactive_apply_without_auto_approve_changes_nothing(stack: Stack) -> None:
    before = stack.backend.stats()
    r = stack.cli("apply", "manifests")
    assert r.code == 1
    assert "apply needs confirmation and there is no terminal to ask on" in r.stderr
    assert stack.key_writes(before) == Counter()
    assert stack.sdk.key_ids() == []


# ------------------------------------------------------------------------------------ one edit each


def test_tag_edit_is_one_tag_call(applied: Stack) -> None:
    applied.keys["signer"]["tags"] = {"team": "renamed"}
    applied.save()
    assert applied.actions() == {"signer": ["update"]}
    assert applied.apply_counting() == Counter(TagResource=1)
    tags = applied.sdk.tags(applied.key_id("signer"))
    assert tags["team"] == "renamed" and tags["owner"] == "platform"
    applied.assert_converged()


def test_tag_removal_is_one_untag_call(applied: Stack) -> None:
    applied.keys["signer"]["tags"] = {}
    applied.save()
    assert applied.actions() == {"signer": ["update"]}
    assert applied.apply_counting() == Counter(UntagResource=1)
    tags = applied.sdk.tags(applied.key_id("signer"))
    assert "team" not in tags and tags["byok-provisioner:name"] == "signer"  # reserved tags untouched
    applied.assert_converged()


def test_alias_add_is_one_create_alias(applied: Stack) -> None:
    applied.keys["signer"]["aliases"] = ["alias/e2e/signer", "alias/e2e/signer-v2"]
    applied.save()
    assert applied.actions() == {"signer": ["update"]}
    assert applied.apply_counting() == Counter(CreateAlias=1)
    assert applied.sdk.aliases()["alias/e2e/signer-v2"] == applied.key_id("signer")
    applied.assert_converged()


def test_alias_removal_is_one_delete_alias(applied: Stack) -> None:
    applied.keys["tokens"]["aliases"] = ["alias/e2e/tokens"]
    applied.save()
    assert applied.actions() == {"tokens": ["update"]}
    assert applied.apply_counting() == Counter(DeleteAlias=1)
    assert "alias/e2e/tokens-v1" not in applied.sdk.aliases()
    applied.assert_converged()


def test_expiry_change_reimports_the_same_material(applied: Stack) -> None:
    key_id = applied.key_id("signer")
    new_expiry = (datetime.now(UTC) + timedelta(days=400)).replace(microsecond=0)
    applied.keys["signer"]["expiry"] = new_expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
    applied.save()
    code, doc = applied.plan_json()
    assert code == 2
    (change,) = doc["changes"]
    assert (change["key"], change["actions"]) == ("signer", ["reimport"])
    assert change["expire_unix"] == int(new_expiry.timestamp())
    assert applied.apply_counting() == Counter(ImportKeyMaterial=1)
    meta = applied.sdk.describe(key_id)
    assert meta.material_expire_time == new_expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert meta.key_state == "Enabled"
    assert applied.sdk.public_key_der(key_id) == spki_der(applied.pems["signer"])
    applied.assert_converged()

    applied.keys["signer"]["expiry"] = "never"
    applied.save()
    assert applied.actions() == {"signer": ["reimport"]}
    assert applied.apply_counting() == Counter(ImportKeyMaterial=1)
    assert applied.sdk.describe(key_id).material_expire_time in ("", None)
    applied.assert_converged()


def test_material_deleted_then_present_again(applied: Stack) -> None:
    key_id = applied.key_id("tokens")
    applied.keys["tokens"]["state"] = "material-deleted"
    applied.save()
    assert applied.actions() == {"tokens": ["delete-material"]}
    assert applied.apply_counting() == Counter(DeleteKeyMaterial=1)
    assert applied.sdk.describe(key_id).key_state == "PendingImport"
    assert applied.sdk.aliases()["alias/e2e/tokens"] == key_id  # the key keeps its aliases
    applied.assert_converged()

    applied.keys["tokens"]["state"] = "present"
    applied.save()
    assert applied.actions() == {"tokens": ["reimport"]}
    assert applied.apply_counting() == Counter(ImportKeyMaterial=1)
    assert applied.sdk.describe(key_id).key_state == "Enabled"
    assert applied.sdk.public_key_der(key_id) == spki_der(applied.pems["tokens"])
    assert applied.sdk.stack_keys()["tokens"] == [key_id]  # the same key, not a new one
    applied.assert_converged()


def test_absent_schedules_deletion_with_its_window(applied: Stack) -> None:
    key_id = applied.key_id("signer")
    applied.keys["signer"]["state"] = "absent"
    applied.keys["signer"]["deletion_window_days"] = 9
    applied.save()
    assert applied.actions() == {"signer": ["schedule-deletion"]}
    assert applied.apply_counting() == Counter(ScheduleKeyDeletion=1)
    meta = applied.sdk.describe(key_id)
    assert meta.key_state == "PendingDeletion"
    deletion = datetime.strptime(meta.delete_date, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(days=8, hours=23) < deletion - datetime.now(UTC) <= timedelta(days=9)
    applied.assert_converged()


def test_absent_with_deletion_protection_is_refused(applied: Stack) -> None:
    applied.keys["vault"]["state"] = "absent"
    applied.save()
    before = applied.backend.stats()
    r = applied.cli("apply", "manifests", "--auto-approve")
    assert r.code == 1
    assert r.stderr.endswith(
        ': error: key "vault" has state "absent" and deletion_protection true: lift the protection '
        "(deletion_protection: false) first\n1 error(s)\n"
    )
    assert r.stderr.startswith("manifests/stack.yaml:")
    assert applied.key_writes(before) == Counter()
    assert applied.sdk.describe(applied.key_id("vault")).key_state == "Enabled"


def test_lifting_protection_then_absent(applied: Stack) -> None:
    """DESIGN section 9: protection is lifted in an earlier apply, never in the one that deletes."""
    vault = applied.key_id("vault")
    applied.keys["vault"].update(state="absent", deletion_protection=False)
    applied.save()
    code, doc = applied.plan_json()
    assert code == 1
    assert doc["changes"] == []
    assert [(v["key"], v["code"]) for v in doc["violations"]] == [("vault", "deletion-protected")]
    assert doc["violations"][0]["message"] == (
        f"key {vault} has deletion protection on, so it cannot be scheduled for deletion: first apply the "
        f"manifest with state: present and deletion_protection: false, then set state: absent"
    )
    before = applied.backend.stats()
    r = applied.cli("apply", "manifests", "--auto-approve")
    assert r.code == 1
    assert "error: the plan is blocked by 1 violation(s); nothing applied" in r.stderr
    assert applied.key_writes(before) == Counter()
    assert applied.sdk.describe(vault).deletion_protection == "Enabled"

    applied.keys["vault"].update(state="present")
    applied.save()
    assert applied.actions() == {"vault": ["update"]}
    assert applied.apply_counting() == Counter(SetDeletionProtection=1)
    applied.keys["vault"].update(state="absent")
    applied.save()
    assert applied.actions() == {"vault": ["schedule-deletion"]}
    assert applied.apply_counting() == Counter(ScheduleKeyDeletion=1)
    assert applied.sdk.describe(vault).key_state == "PendingDeletion"
    applied.assert_converged()


# ------------------------------------------------------------------------------------ refusals


def test_changed_material_is_refused_and_the_key_keeps_its_material(applied: Stack) -> None:
    key_id = applied.key_id("signer")
    write_key(applied.folder, "signer", private_pem("EC_P256", 3))
    r = applied.cli("plan", "manifests", "--format", "json", "--detailed-exitcode")
    assert r.code == 1
    doc = json.loads(r.stdout)
    assert [(v["key"], v["code"]) for v in doc["violations"]] == [("signer", "material-immutable")]
    assert "material never changes on a key" in doc["violations"][0]["message"]

    before = applied.backend.stats()
    r = applied.cli("apply", "manifests", "--auto-approve")
    assert r.code == 1
    assert "error: the plan is blocked by 1 violation(s); nothing applied" in r.stderr
    assert applied.key_writes(before) == Counter()
    assert applied.sdk.public_key_der(key_id) == spki_der(applied.pems["signer"])


def test_a_blocked_saved_plan_is_never_applied(applied: Stack) -> None:
    applied.keys["signer"]["tags"] = {"team": "x"}
    applied.save()
    assert applied.cli("plan", "manifests", "--out", "p.json").code == 0
    doc = json.loads(Path("p.json").read_text())
    doc["violations"] = [{"key": "signer", "code": "alias-conflict", "message": "planted"}]
    Path("p.json").write_text(json.dumps(doc))
    before = applied.backend.stats()
    r = applied.cli("apply", "--plan", "p.json")
    assert r.code == 1
    assert "error: the plan is blocked by 1 violation(s); nothing applied" in r.stderr
    assert applied.key_writes(before) == Counter()


def test_saved_plan_is_applied(applied: Stack) -> None:
    applied.keys["signer"]["tags"] = {"team": "saved"}
    applied.keys["tokens"]["description"] = "tokens, described again"
    applied.save()
    r = applied.cli("plan", "manifests", "--out", "saved.json")
    assert r.code == 0, r.stderr
    assert "saved the plan to saved.json" in r.stderr
    assert Path("saved.json").stat().st_mode & 0o777 == 0o600
    before = applied.backend.stats()
    r = applied.cli("apply", "--plan", "saved.json")
    assert r.code == 0, r.stdout + r.stderr
    assert applied.key_writes(before) == Counter(TagResource=1, UpdateKeyDescription=1)
    assert applied.sdk.tags(applied.key_id("signer"))["team"] == "saved"
    assert applied.sdk.describe(applied.key_id("tokens")).description == "tokens, described again"
    applied.assert_converged()


def test_stale_saved_plan_is_refused_naming_the_key(applied: Stack) -> None:
    applied.keys["signer"]["tags"] = {"team": "planned"}
    applied.keys["tokens"]["description"] = "planned description"
    applied.save()
    assert applied.cli("plan", "manifests", "--out", "saved.json").code == 0
    key_id = applied.key_id("tokens")
    applied.sdk.client.tag_resource(
        kms.TagResourceRequest(key_id=key_id, tags=json.dumps([{"TagKey": "hand", "TagValue": "made"}]))
    )
    before = applied.backend.stats()
    r = applied.cli("apply", "--plan", "saved.json")
    assert r.code == 1
    assert f"error: key 'tokens' ({key_id}) changed since the plan was made: make a new plan" in r.stderr
    assert applied.key_writes(before) == Counter()
    assert applied.sdk.tags(applied.key_id("signer"))["team"] == "t-signer"


def test_saved_plan_whose_material_changed_is_refused(applied: Stack) -> None:
    applied.keys["signer"]["state"] = "material-deleted"
    applied.save()
    applied.apply()
    applied.keys["signer"]["state"] = "present"
    applied.save()
    assert applied.cli("plan", "manifests", "--out", "saved.json").code == 0
    write_key(applied.folder, "signer", private_pem("EC_P256", 3))
    before = applied.backend.stats()
    r = applied.cli("apply", "--plan", "saved.json")
    assert r.code == 1
    assert "error: key 'signer': material no longer matches the plan" in r.stderr
    assert applied.key_writes(before) == Counter()
    assert applied.sdk.describe(applied.key_id("signer")).key_state == "PendingImport"


def test_saved_plan_for_a_key_created_since_is_refused(stack: Stack) -> None:
    assert stack.cli("plan", "manifests", "--out", "saved.json").code == 0
    stack.apply()
    before = stack.backend.stats()
    r = stack.cli("apply", "--plan", "saved.json")
    assert r.code == 1
    signer = stack.key_id("signer")
    assert (
        f"error: key 'signer' was to be created, but {signer} now carries that identity: make a new plan"
        in r.stderr
    )
    assert stack.key_writes(before) == Counter()
    assert len(stack.sdk.key_ids()) == 3


@pytest.mark.one_backend(
    "alibaba",
    "a flag points apply at another emulator; a local state file is named by the manifests, which "
    "apply --plan re-renders unchanged",
)
def test_saved_plan_for_another_backend_is_refused(
    stack: Stack, emulator_factory: Callable[..., RunningEmulator]
) -> None:
    assert stack.cli("plan", "manifests", "--out", "saved.json").code == 0
    elsewhere = emulator_factory()
    r = run_cli(
        ["apply", "--plan", "saved.json", "--backend", "alibaba", "--endpoint", elsewhere.url,
         "--region", REGION],
        env=stack.env,
    )
    assert r.code == 1
    assert f"error: the plan was made against endpoint={stack.backend.endpoint}" in r.stderr
    assert f"but apply is pointed at endpoint={elsewhere.url}" in r.stderr
    assert writes({"calls": {}}, elsewhere.stats()) == Counter()
    assert SdkView(elsewhere.sdk_client()).key_ids() == []


def test_apply_json_result_for_pipelines(stack: Stack) -> None:
    r = stack.cli("apply", "manifests", "--auto-approve", "--format", "json")
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["ok"], doc["summary"]) == (True, {"changed": 3, "failed": 0})
    assert {k["key"]: k["done"][1:] for k in doc["keys"]} == {
        "signer": ["imported", "aliases"],
        "tokens": ["imported", "aliases"],
        "vault": ["imported", "aliases", "deletion protection on"],
    }
    r = stack.cli("apply", "manifests", "--auto-approve", "--format", "json")
    assert r.code == 0
    assert json.loads(r.stdout)["keys"] == []


@pytest.mark.parametrize(("answer", "code"), [("no\n", 1), ("yes\n", 0)])
def test_apply_on_a_terminal_asks_first(stack: Stack, answer: str, code: int) -> None:
    r = run_cli(["apply", "manifests", *stack.backend.args], env=stack.env, stdin=answer, tty=True)
    assert r.code == code, r.stdout + r.stderr
    assert "Apply these changes? Only 'yes' is accepted" in r.stdout
    if code:
        assert "apply cancelled: nothing changed" in r.stderr
        assert stack.sdk.key_ids() == []
    else:
        assert "Apply complete: 3 key(s) changed, 0 failed." in r.stdout
        assert len(stack.sdk.key_ids()) == 3


@pytest.mark.one_backend("local", "the README's first run uses the default backend: local, no flags")
def test_the_shipped_example_on_the_local_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's first run: apply the example stack on the embedded KMS, then plan shows nothing."""
    shutil.copytree(Path(__file__).resolve().parent.parent / "manifests", tmp_path / "manifests")
    for pem in (tmp_path / "manifests" / "keys").glob("*.pem"):
        pem.chmod(0o600)
    monkeypatch.chdir(tmp_path)
    r = run_cli(["apply", "manifests/", "--auto-approve"])
    assert r.code == 0, r.stdout + r.stderr
    assert "Apply complete: 3 key(s) changed, 0 failed." in r.stdout
    # The state lives beside the manifests (DESIGN section 10), not in the current folder.
    assert (tmp_path / "manifests" / ".provision" / "kms.db").is_file()
    assert not (tmp_path / ".provision").exists()
    r = run_cli(["plan", "manifests/", "--detailed-exitcode"])
    assert r.code == 0, r.stdout + r.stderr
    assert "No changes." in r.stdout
    r = run_cli(["drift", "manifests/"])
    assert r.code == 0, r.stdout + r.stderr


def foreign_key(sdk: SdkView) -> str:
    """A key of nobody's stack, made by hand."""
    body = sdk.client.create_key(
        kms.CreateKeyRequest(
            origin="EXTERNAL", key_spec="EC_P256", key_usage="SIGN/VERIFY", protection_level="SOFTWARE",
            dkmsinstance_id=SOFTWARE,
        )
    ).body
    return str(body.key_metadata.key_id)


def test_saved_plan_whose_new_alias_was_taken_since_is_refused(applied: Stack) -> None:
    applied.keys["signer"]["aliases"] = ["alias/e2e/signer", "alias/e2e/wanted"]
    applied.save()
    assert applied.cli("plan", "manifests", "--out", "saved.json").code == 0
    other = foreign_key(applied.sdk)
    applied.sdk.client.create_alias(kms.CreateAliasRequest(alias_name="alias/e2e/wanted", key_id=other))
    before = applied.backend.stats()
    r = applied.cli("apply", "--plan", "saved.json")
    assert r.code == 1
    assert (
        f"error: key 'signer': alias alias/e2e/wanted was free when the plan was made and now points at "
        f"key {other}: make a new plan"
    ) in r.stderr
    assert applied.key_writes(before) == Counter()


def test_saved_plan_never_moves_an_alias_off_a_foreign_key(applied: Stack) -> None:
    # The plan moves alias/e2e/tokens-v1 from tokens to signer (both of this stack).
    applied.keys["tokens"]["aliases"] = ["alias/e2e/tokens"]
    applied.keys["signer"]["aliases"] = ["alias/e2e/signer", "alias/e2e/tokens-v1"]
    applied.save()
    r = applied.cli("plan", "manifests", "--format", "json", "--out", "saved.json")
    assert r.code == 0
    assert {c["key"]: c["aliases_to_move"] for c in json.loads(r.stdout)["changes"]} == {
        "signer": ["alias/e2e/tokens-v1"]
    }
    # Meanwhile someone points that alias at a key outside the stack.
    other = foreign_key(applied.sdk)
    applied.sdk.client.update_alias(kms.UpdateAliasRequest(alias_name="alias/e2e/tokens-v1", key_id=other))
    before = applied.backend.stats()
    r = applied.cli("apply", "--plan", "saved.json")
    assert r.code == 1
    assert (
        f"error: key 'signer': alias alias/e2e/tokens-v1 now points at key {other}, not of this stack: "
        f"make a new plan"
    ) in r.stderr
    assert applied.key_writes(before) == Counter()
    assert applied.sdk.aliases()["alias/e2e/tokens-v1"] == other


def test_saved_plan_applies_from_another_checkout(
    applied: Stack, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI plans on one runner and applies on another checkout of the same repository: material paths in
    the plan file are relative, and the manifests (re-rendered by apply --plan) come with the checkout."""
    key_id = applied.key_id("tokens")
    applied.sdk.client.delete_key_material(kms.DeleteKeyMaterialRequest(key_id=key_id))
    assert applied.cli("plan", "manifests", "--out", "saved.json").code == 0
    saved = json.loads(Path("saved.json").read_text())
    (change,) = saved["changes"]
    assert change["actions"] == ["reimport"]
    assert change["material"]["file"] == "keys/tokens.pem"
    elsewhere = tmp_path_factory.mktemp("other-checkout")
    shutil.copytree(applied.folder / "keys", elsewhere / "keys")
    shutil.copytree(applied.folder / "manifests", elsewhere / "manifests")
    shutil.copyfile("saved.json", elsewhere / "saved.json")
    shutil.rmtree(applied.folder / "keys")  # the first checkout is gone
    monkeypatch.chdir(elsewhere)
    r = applied.cli("apply", "--plan", "saved.json")
    assert r.code == 0, r.stdout + r.stderr
    assert applied.sdk.describe(key_id).key_state == "Enabled"
    assert applied.sdk.public_key_der(key_id) == spki_der(applied.pems["tokens"])
