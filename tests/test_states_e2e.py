"""Declared states and the state actions end to end on both backends (issue 12, DESIGN section 10):
enable, disable, cancel-deletion through the CLI, each result checked through the official SDK's
models; the summary with zeros; the refusal to cancel a deletion while another live key holds the
identity; plan and apply warning about material that expires soon.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alibabacloud_kms20160120 import models
from apply_support import writes
from backends import Backend
from e2e_support import STACK, Entry, Stack, assert_no_secret, run_cli
from Tea.exceptions import TeaException

from provisioner.model import TAG_FINGERPRINT, TAG_NAME, TAG_STACK, format_time

pytestmark = pytest.mark.slow
BOTH_BACKENDS = True

ZERO = {
    "create": 0, "import": 0, "adopt": 0, "reimport": 0, "delete-material": 0, "update": 0,
    "schedule-deletion": 0, "enable": 0, "disable": 0, "cancel-deletion": 0, "rotate": 0,
}
TEXT_SUMMARY = (
    "Plan: 0 to create, 0 to import, 0 to reimport, 0 to delete material, 0 to update, "
    "0 to schedule for deletion"
)


@pytest.fixture
def account(backend: Backend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Backend:
    for name, value in backend.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROVISION_RETRY_SECONDS", "0")
    return backend


def cli(stack: Stack, account: Backend, command: str, *args: str) -> Any:
    return run_cli([command, str(stack.folder), *args, *account.args])


def apply(stack: Stack, account: Backend, *args: str) -> Any:
    run = cli(stack, account, "apply", "--auto-approve", *args)
    assert run.code == 0, run.stdout + run.stderr
    assert_no_secret(run.stdout + run.stderr, sorted(stack.key_folder.glob("*.pem")))
    return run


def apply_writes(stack: Stack, account: Backend) -> dict[str, int]:
    """Apply; the write calls it made."""
    before = account.stats()
    apply(stack, account)
    return dict(account.minus_lock(writes(before, account.stats())))


def plan_doc(stack: Stack, account: Backend) -> dict[str, Any]:
    run = cli(stack, account, "plan", "--format", "json")
    assert run.code == 0, run.stderr
    doc: dict[str, Any] = json.loads(run.stdout)
    return doc


def actions(doc: dict[str, Any]) -> dict[str, list[str]]:
    return {c["key"]: c["actions"] for c in doc["changes"]}


def key_id(account: Backend, name: str) -> str:
    (found,) = account.view.stack_keys()[name]
    return found


def state(account: Backend, kid: str) -> str:
    return str(account.view.describe(kid).key_state)


def applied(account: Backend, tmp_path: Path, *entries: Entry) -> tuple[Stack, list[str]]:
    """A stack of `entries` written and applied; its key ids in the same order."""
    stack = Stack(tmp_path / "m", list(entries), backend=account.manifest_backend)
    stack.write()
    apply(stack, account)
    return stack, [key_id(account, e.name) for e in entries]


def assert_converged(stack: Stack, account: Backend) -> None:
    doc = plan_doc(stack, account)
    assert (doc["changes"], doc["violations"], doc["summary"]) == ([], [], ZERO)
    drift = cli(stack, account, "drift")
    assert drift.code == 0, drift.stdout + drift.stderr


def test_both_backends_share_the_state_calls(account: Backend, tmp_path: Path) -> None:
    """EnableKey, DisableKey and CancelKeyDeletion answer the same on the local engine and the emulator,
    through the SDK's models: the plan's new actions rest on them."""
    _, (kid,) = applied(account, tmp_path, Entry("k"))
    client = account.sdk_client()
    empty = client.create_key(
        models.CreateKeyRequest(
            origin="EXTERNAL", key_spec="EC_P256", key_usage="SIGN/VERIFY", protection_level="SOFTWARE",
            dkmsinstance_id="kst-local-software",
        )
    ).body.key_metadata.key_id
    seen = []
    for call in (
        lambda: client.disable_key(models.DisableKeyRequest(key_id=kid)),
        lambda: client.enable_key(models.EnableKeyRequest(key_id=kid)),
        lambda: client.schedule_key_deletion(
            models.ScheduleKeyDeletionRequest(key_id=kid, pending_window_in_days=7)
        ),
        lambda: client.cancel_key_deletion(models.CancelKeyDeletionRequest(key_id=kid)),
    ):
        call()
        seen.append(state(account, kid))
    assert seen == ["Disabled", "Enabled", "PendingDeletion", "Enabled"]
    client.schedule_key_deletion(models.ScheduleKeyDeletionRequest(key_id=empty, pending_window_in_days=7))
    client.cancel_key_deletion(models.CancelKeyDeletionRequest(key_id=empty))
    assert state(account, empty) == "PendingImport"
    for refused, message in (
        (
            lambda: client.enable_key(models.EnableKeyRequest(key_id=empty)),
            f"key {empty} is PendingImport; only an Enabled or Disabled key can become Enabled",
        ),
        (
            lambda: client.disable_key(models.DisableKeyRequest(key_id=empty)),
            f"key {empty} is PendingImport; only an Enabled or Disabled key can become Disabled",
        ),
        (
            lambda: client.cancel_key_deletion(models.CancelKeyDeletionRequest(key_id=kid)),
            f"key {kid} is Enabled, not PendingDeletion",
        ),
    ):
        with pytest.raises(TeaException) as e:
            refused()
        # The SDK wraps the service's message ("code: 409, ... request id: ..."); the local one is bare.
        assert e.value.code == "Rejected.StateModifiedFailed"
        assert message in e.value.message


def test_a_key_disabled_by_hand_is_enabled(account: Backend, tmp_path: Path) -> None:
    stack, (kid, _) = applied(account, tmp_path, Entry("signer"), Entry("other"))
    account.sdk_client().disable_key(models.DisableKeyRequest(key_id=kid))

    drift = cli(stack, account, "drift", "--format", "json")
    assert drift.code == 2
    assert [(i["key"], i["kind"], i["detail"]) for i in json.loads(drift.stdout)["drift"]] == [
        ("signer", "state", f"key {kid} is disabled")
    ]
    doc = plan_doc(stack, account)
    assert actions(doc) == {"signer": ["enable"]}
    (change,) = doc["changes"]
    assert change["reason"] == "key is disabled but the manifest wants it present"
    assert (change["key_id"], change["material"]) == (kid, None)
    assert doc["summary"] == {**ZERO, "enable": 1}

    text = cli(stack, account, "plan")
    lines = text.stdout.splitlines()
    assert f"  ~ signer ({kid}): enable" in lines
    assert '      ~ state: "disabled" -> "enabled"' in lines
    assert lines[-1] == TEXT_SUMMARY + ", 1 to enable."

    before = account.stats()
    run = apply(stack, account)
    calls = Counter(account.stats()["calls"])
    calls.subtract(before["calls"])
    # The plan's reads (a DescribeKey per key, one page each of tags and aliases), one write, one read-back.
    # (The stack lock's own calls apart: tests/test_lock_e2e.py counts them.)
    assert account.minus_lock(+calls) == {
        "ListTagResources": 1, "ListAliases": 1, "DescribeKey": 3, "EnableKey": 1
    }
    assert f"signer: enabled ({kid})" in run.stderr.splitlines()
    assert state(account, kid) == "Enabled"
    assert_converged(stack, account)


def test_a_deletion_scheduled_by_hand_is_cancelled_and_other_fixes_still_apply(
    account: Backend, tmp_path: Path
) -> None:
    stack, (kept, emptied, fixed) = applied(
        account, tmp_path, Entry("kept"), Entry("emptied"), Entry("fixed", description="old words")
    )
    client = account.sdk_client()
    client.delete_key_material(models.DeleteKeyMaterialRequest(key_id=emptied))
    for kid in (kept, emptied):
        client.schedule_key_deletion(models.ScheduleKeyDeletionRequest(key_id=kid, pending_window_in_days=7))
    when = {kid: account.view.describe(kid).delete_date for kid in (kept, emptied)}
    stack.keys[2].description = "new words"
    stack.write()

    doc = plan_doc(stack, account)
    assert doc["violations"] == []
    assert actions(doc) == {"emptied": ["cancel-deletion"], "fixed": ["update"], "kept": ["cancel-deletion"]}
    by_key = {c["key"]: c for c in doc["changes"]}
    assert by_key["kept"]["reason"] == (
        f"key is pending deletion (on {when[kept]}) but the manifest wants it present"
    )
    assert doc["summary"] == {**ZERO, "update": 1, "cancel-deletion": 2}
    lines = cli(stack, account, "plan").stdout.splitlines()
    assert f"  ~ kept ({kept}): cancel-deletion" in lines
    assert (
        f'      ~ deletion on "{when[kept]}" cancelled (the key comes back enabled, or pending-import '
        f"without material)"
    ) in lines
    assert lines[-1] == (
        "Plan: 0 to create, 0 to import, 0 to reimport, 0 to delete material, 1 to update, "
        "0 to schedule for deletion, 2 to cancel deletion."
    )

    before = account.stats()
    run = apply(stack, account)
    wrote = account.minus_lock(writes(before, account.stats()))
    assert wrote == {"CancelKeyDeletion": 2, "UpdateKeyDescription": 1}
    err = run.stderr.splitlines()
    assert f"kept: deletion cancelled ({kept})" in err
    assert f"emptied: deletion cancelled (back in PendingImport: no material) ({emptied})" in err
    # As DESIGN says: back Enabled, or PendingImport without material; the unrelated fix applied too.
    assert (state(account, kept), state(account, emptied)) == ("Enabled", "PendingImport")
    assert account.view.describe(kept).delete_date in (None, "")
    assert account.view.describe(fixed).description == "new words"

    # The key that came back empty gets its material again from the next plan, and nothing else.
    doc = plan_doc(stack, account)
    assert actions(doc) == {"emptied": ["reimport"]}
    apply(stack, account)
    assert state(account, emptied) == "Enabled"
    assert account.view.stack_keys() == {"emptied": [emptied], "fixed": [fixed], "kept": [kept]}
    assert_converged(stack, account)


def test_state_disabled_creates_disables_and_keeps_the_key_disabled(account: Backend, tmp_path: Path) -> None:
    stack = Stack(
        tmp_path / "m", [Entry("cold", state="disabled"), Entry("hot")], backend=account.manifest_backend
    )
    stack.write()
    doc = plan_doc(stack, account)
    assert actions(doc) == {"cold": ["create", "import", "disable"], "hot": ["create", "import"]}
    assert doc["summary"] == {**ZERO, "create": 2, "import": 2, "disable": 1}
    apply(stack, account)
    cold = key_id(account, "cold")
    assert state(account, cold) == "Disabled"
    assert account.view.tags(cold)[TAG_FINGERPRINT] == stack.fingerprints["cold"]
    assert state(account, key_id(account, "hot")) == "Enabled"
    assert_converged(stack, account)

    # Enabled by hand: the plan disables it again.
    account.sdk_client().enable_key(models.EnableKeyRequest(key_id=cold))
    drift = cli(stack, account, "drift", "--format", "json")
    assert [(i["key"], i["kind"], i["detail"]) for i in json.loads(drift.stdout)["drift"]] == [
        ("cold", "state", f"key {cold} is enabled but the manifest says disabled")
    ]
    doc = plan_doc(stack, account)
    assert actions(doc) == {"cold": ["disable"]}
    assert doc["changes"][0]["reason"] == "state is disabled and the key is enabled"
    assert doc["summary"] == {**ZERO, "disable": 1}
    assert apply_writes(stack, account) == {"DisableKey": 1}
    assert state(account, cold) == "Disabled"
    assert_converged(stack, account)

    # A new expiry on a disabled key: the same material again, and the key stays disabled.
    expiry = "2099-01-01T00:00:00Z"
    stack.keys[0].expiry = expiry
    stack.write()
    assert actions(plan_doc(stack, account)) == {"cold": ["reimport"]}
    assert apply_writes(stack, account) == {"ImportKeyMaterial": 1}
    meta = account.view.describe(cold)
    assert (meta.key_state, meta.material_expire_time) == ("Disabled", expiry)
    assert_converged(stack, account)

    # Back to present: enabled.
    stack.keys[0].state = "present"
    stack.write()
    assert actions(plan_doc(stack, account)) == {"cold": ["enable"]}
    assert apply_writes(stack, account) == {"EnableKey": 1}
    assert state(account, cold) == "Enabled"
    assert_converged(stack, account)


def test_a_disabled_key_scheduled_for_deletion_comes_back_disabled(account: Backend, tmp_path: Path) -> None:
    stack, (cold,) = applied(account, tmp_path, Entry("cold", state="disabled"))
    account.sdk_client().schedule_key_deletion(
        models.ScheduleKeyDeletionRequest(key_id=cold, pending_window_in_days=7)
    )
    assert actions(plan_doc(stack, account)) == {"cold": ["cancel-deletion", "disable"]}
    assert apply_writes(stack, account) == {"CancelKeyDeletion": 1, "DisableKey": 1}
    assert state(account, cold) == "Disabled"
    assert_converged(stack, account)


def test_a_disabled_key_that_comes_back_empty_is_disabled_by_the_next_plan(
    account: Backend, tmp_path: Path
) -> None:
    stack, (cold,) = applied(account, tmp_path, Entry("cold", state="disabled"))
    client = account.sdk_client()
    client.delete_key_material(models.DeleteKeyMaterialRequest(key_id=cold))
    client.schedule_key_deletion(models.ScheduleKeyDeletionRequest(key_id=cold, pending_window_in_days=7))
    # KMS does not say that a key pending deletion is empty: the plan expects it back Enabled.
    assert actions(plan_doc(stack, account)) == {"cold": ["cancel-deletion", "disable"]}
    run = cli(stack, account, "apply", "--auto-approve")
    assert run.code == 1
    error = (
        f"key {cold} came back from its deletion in PendingImport (it holds no material), so it cannot be "
        f"disabled yet: run plan again: it imports the material, then disables the key"
    )
    assert f"cold: FAILED after [deletion cancelled (back in PendingImport: no material)]: {error}" in (
        run.stderr.splitlines()
    )
    assert run.stdout.splitlines()[-2:] == [
        "Apply failed: 1 key(s) failed, 0 changed (kept). Fix each cause below, then plan and apply again: "
        "the new plan holds only what is left to do.",
        f"  cold: {error}",
    ]
    assert state(account, cold) == "PendingImport"
    assert actions(plan_doc(stack, account)) == {"cold": ["reimport", "disable"]}
    apply(stack, account)
    assert state(account, cold) == "Disabled"
    assert_converged(stack, account)


def test_a_saved_plan_of_state_actions_is_applied(account: Backend, tmp_path: Path) -> None:
    entries = (Entry("on"), Entry("off", state="disabled"), Entry("back"))
    stack, (on, off, back) = applied(account, tmp_path, *entries)
    client = account.sdk_client()
    client.disable_key(models.DisableKeyRequest(key_id=on))
    client.enable_key(models.EnableKeyRequest(key_id=off))
    client.schedule_key_deletion(models.ScheduleKeyDeletionRequest(key_id=back, pending_window_in_days=7))
    saved = tmp_path / "plan.json"
    run = cli(stack, account, "plan", "--out", str(saved))
    assert run.code == 0, run.stderr
    doc = json.loads(saved.read_text())
    assert actions(doc) == {"back": ["cancel-deletion"], "off": ["disable"], "on": ["enable"]}
    assert doc["summary"] == {**ZERO, "enable": 1, "disable": 1, "cancel-deletion": 1}
    before = account.stats()
    run = run_cli(["apply", "--plan", str(saved), str(stack.folder), *account.args])
    assert run.code == 0, run.stdout + run.stderr
    wrote = account.minus_lock(writes(before, account.stats()))
    assert wrote == {"EnableKey": 1, "DisableKey": 1, "CancelKeyDeletion": 1}
    assert [state(account, k) for k in (on, off, back)] == ["Enabled", "Disabled", "Enabled"]
    assert_converged(stack, account)


def test_no_deletion_is_cancelled_while_another_live_key_holds_the_identity(
    account: Backend, tmp_path: Path
) -> None:
    stack, (old,) = applied(account, tmp_path, Entry("x"))
    client = account.sdk_client()
    client.schedule_key_deletion(models.ScheduleKeyDeletionRequest(key_id=old, pending_window_in_days=7))
    saved = tmp_path / "plan.json"
    run = cli(stack, account, "plan", "--out", str(saved))
    assert run.code == 0, run.stderr
    assert [c["actions"] for c in json.loads(saved.read_text())["changes"]] == [["cancel-deletion"]]

    # Meanwhile a live key takes the identity (made by hand, as an older version or a script would).
    tags = {TAG_STACK: STACK, TAG_NAME: "x", TAG_FINGERPRINT: stack.fingerprints["x"], "owner": "platform"}
    made = client.create_key(
        models.CreateKeyRequest(
            origin="EXTERNAL", key_spec="EC_P256", key_usage="SIGN/VERIFY", protection_level="SOFTWARE",
            dkmsinstance_id="kst-local-software",
            tags=json.dumps([{"TagKey": k, "TagValue": v} for k, v in tags.items()]),
        )
    )
    new = made.body.key_metadata.key_id

    run = run_cli(["apply", "--plan", str(saved), str(stack.folder), *account.args])
    assert run.code == 1
    assert run.stderr.splitlines()[-1] == (
        f"error: key 'x': the plan cancels the deletion of {old}, but {new} now carries that identity and "
        f"is not pending deletion; a deletion is never cancelled while another live key holds the "
        f"identity: make a new plan"
    )
    assert state(account, old) == "PendingDeletion"
    # A fresh plan works on the live key and leaves the one pending deletion as it is.
    doc = plan_doc(stack, account)
    assert [(c["key"], c["key_id"], c["actions"]) for c in doc["changes"]] == [("x", new, ["reimport"])]


def _in_days(days: int) -> str:
    moment = datetime.now(UTC).replace(microsecond=0) + timedelta(days=days, hours=12)
    text = format_time(moment)
    assert text is not None
    return text


def test_plan_and_apply_warn_about_material_that_expires_soon(account: Backend, tmp_path: Path) -> None:
    soon, later = _in_days(10), _in_days(200)
    stack = Stack(
        tmp_path / "m", [Entry("soon", expiry=soon), Entry("later", expiry=later)],
        backend=account.manifest_backend,
    )
    stack.write()
    window = "(warning window 30 days)"
    new_key = f"warning: soon: material of the new key expires at {soon}, in 10 day(s) {window}"
    run = cli(stack, account, "plan", "--format", "json")
    assert run.code == 0
    assert [line for line in run.stderr.splitlines() if line.startswith("warning:")] == [new_key]
    assert "warning" not in run.stdout  # not in the plan document: DESIGN section 5 fixes its fields
    assert new_key in apply(stack, account).stderr.splitlines()
    kid = key_id(account, "soon")

    warned = f"warning: soon: material of key {kid} expires at {soon}, in 10 day(s) {window}"
    for command in ("plan", "apply"):
        args = ("--auto-approve",) if command == "apply" else ()
        run = cli(stack, account, command, *args)
        assert run.code == 0, run.stderr
        assert [line for line in run.stderr.splitlines() if line.startswith("warning:")] == [warned]
        wide = cli(stack, account, command, *args, "--expiry-warning", "365")
        assert [line for line in wide.stderr.splitlines() if line.startswith("warning:")] == [
            f"warning: later: material of key {key_id(account, 'later')} expires at {later}, in 200 day(s) "
            f"(warning window 365 days)",
            warned.replace("30 days", "365 days"),
        ]
        narrow = cli(stack, account, command, *args, "--expiry-warning", "9")
        assert "warning:" not in narrow.stderr
    # The same words as drift's.
    drift = cli(stack, account, "drift", "--format", "json")
    assert [i["detail"] for i in json.loads(drift.stdout)["drift"]] == [
        f"material of key {kid} expires at {soon}, in 10 day(s) {window}"
    ]
