"""`provision show` and `--target` end to end on both backends (issue 12 items 3 and 5): show lists every
managed key with DESIGN section 10's fields, checked through the official SDK; --target plans, applies,
drifts and shows only the keys named, reads only those keys, and a saved targeted plan applies only them.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from alibabacloud_kms20160120 import models
from backends import Backend
from e2e_support import STACK, Entry, Stack, enter_account, run_cli

from provisioner.backend.base import READ_ONLY_ACTIONS

pytestmark = pytest.mark.slow
BOTH_BACKENDS = True

SHOW_FIELDS = [
    "name", "key_id", "arn", "spec", "usage", "state", "aliases", "fingerprint", "material_expiry", "target",
]


@pytest.fixture
def account(backend: Backend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Backend:
    return enter_account(backend, monkeypatch, tmp_path)


def three_keys(tmp_path: Path, account: Backend) -> Stack:
    stack = Stack(
        tmp_path / "m",
        [
            Entry("alpha", aliases=("alias/e2e/alpha",), description="first"),
            Entry("beta", spec="RSA_2048", aliases=("alias/e2e/beta", "alias/e2e/beta-v2"),
                  expiry="2099-12-31T23:59:59Z"),
            Entry("gamma", aliases=("alias/e2e/gamma",), description="third"),
        ],
        backend=account.manifest_backend,
    )
    stack.write()
    run = run_cli(["apply", str(stack.folder), "--auto-approve", *account.args])
    assert run.code == 0, run.stdout + run.stderr
    return stack


def cli(account: Backend, *args: str) -> tuple[Any, Counter[str]]:
    """Run the CLI; (the run, the calls the KMS received meanwhile)."""
    before = Counter(account.stats()["calls"])
    run = run_cli([*args, *account.args])
    calls = Counter(account.stats()["calls"])
    calls.subtract(before)
    return run, account.minus_lock(+calls)  # an apply's lock calls apart: tests/test_lock_e2e.py


def key_ids(account: Backend) -> dict[str, str]:
    return {name: ids[0] for name, ids in account.view.stack_keys().items()}


def hide_material(stack: Stack) -> None:
    """Move the key files away: a command that tried to read one would fail."""
    stack.key_folder.rename(stack.folder.parent / "elsewhere")


def test_show_lists_every_managed_key_with_the_design_fields(account: Backend, tmp_path: Path) -> None:
    stack = three_keys(tmp_path, account)
    hide_material(stack)
    ids = key_ids(account)
    account.sdk_client().disable_key(models.DisableKeyRequest(key_id=ids["gamma"]))

    run, calls = cli(account, "show", str(stack.folder), "--format", "json")
    assert run.code == 0, run.stderr
    assert run.stderr == account.announcement() + "\n"
    assert set(calls) <= READ_ONLY_ACTIONS
    assert calls == {"ListTagResources": 1, "DescribeKey": 3, "ListAliases": 1}
    doc = json.loads(run.stdout)
    assert list(doc) == ["format_version", "stack", "backend", "backends", "keys"]
    assert (doc["format_version"], doc["stack"], doc["backend"]) == (1, STACK, account.document)
    assert [list(k) for k in doc["keys"]] == [SHOW_FIELDS] * 3
    assert [k["name"] for k in doc["keys"]] == ["alpha", "beta", "gamma"]
    aliases = account.view.aliases()
    for key in doc["keys"]:
        meta = account.view.describe(ids[key["name"]])
        assert key["key_id"] == meta.key_id and key["arn"] == meta.arn
        assert (key["spec"], key["usage"], key["state"]) == (meta.key_spec, meta.key_usage, meta.key_state)
        assert key["aliases"] == sorted(a for a, owner in aliases.items() if owner == meta.key_id)
        assert key["fingerprint"] == stack.fingerprints[key["name"]]
        assert key["target"] == "default"
    by_name = {k["name"]: k for k in doc["keys"]}
    assert by_name["gamma"]["state"] == "Disabled"
    assert by_name["beta"]["material_expiry"] == "2099-12-31T23:59:59Z"
    assert by_name["beta"]["aliases"] == ["alias/e2e/beta", "alias/e2e/beta-v2"]
    assert by_name["alpha"]["material_expiry"] is None  # expiry: never

    run, _ = cli(account, "show", str(stack.folder))
    assert run.code == 0, run.stderr
    expected_alpha = [
        f"  alpha ({ids['alpha']}): Enabled",
        f'      arn = "{by_name["alpha"]["arn"]}"',
        '      spec = "EC_P256"',
        '      usage = "SIGN/VERIFY"',
        '      aliases = ["alias/e2e/alpha"]',
        f'      fingerprint = "{stack.fingerprints["alpha"]}"',
        '      material_expiry = "never"',
        '      target = "default"',
        "",
    ]
    lines = run.stdout.splitlines()
    assert lines[1] == f"Endpoint: {account.endpoint}"
    assert lines[3:12] == expected_alpha
    assert f"  gamma ({ids['gamma']}): Disabled" in lines
    assert lines[-1] == "3 managed key(s)."


def test_show_lists_pending_deletion_and_names_declared_keys_that_are_missing(
    account: Backend, tmp_path: Path
) -> None:
    stack = three_keys(tmp_path, account)
    ids = key_ids(account)
    account.sdk_client().schedule_key_deletion(
        models.ScheduleKeyDeletionRequest(key_id=ids["beta"], pending_window_in_days=7)
    )
    stack.keys.append(Entry("delta", aliases=("alias/e2e/delta",)))
    stack.write()

    run, _ = cli(account, "show", str(stack.folder), "--format", "json")
    assert run.code == 0, run.stderr
    states = {k["name"]: k["state"] for k in run.json()["keys"]}
    assert states == {"alpha": "Enabled", "beta": "PendingDeletion", "gamma": "Enabled"}

    run, _ = cli(account, "show", str(stack.folder))
    assert run.code == 0, run.stderr
    missing = "  # delta: declared, but no key of this stack carries the name (see plan)"
    assert missing in run.stdout.splitlines()


def hand_edit_every_key(account: Backend) -> dict[str, str]:
    ids = key_ids(account)
    client = account.sdk_client()
    for name, key_id in ids.items():
        client.update_key_description(
            models.UpdateKeyDescriptionRequest(key_id=key_id, description=f"edited {name}")
        )
    return ids


def test_target_plans_applies_drifts_and_shows_only_the_keys_named(account: Backend, tmp_path: Path) -> None:
    stack = three_keys(tmp_path, account)
    ids = hand_edit_every_key(account)
    targets = ["--target", "alpha", "--target", "beta"]
    partial = (
        "warning: --target: this {verb} covers only alpha, beta; the stack's other keys are {rest} "
        "(for exceptions such as a repair, not for routine use)"
    )
    changed = partial.format(verb="plan", rest="not read, planned or changed")

    run, calls = cli(account, "plan", str(stack.folder), *targets, "--format", "json")
    assert run.code == 0, run.stderr
    assert run.stderr.splitlines()[0] == changed
    # Two keys read, not three: the tag page names every key of the stack, DescribeKey only the targets.
    assert calls == {"ListTagResources": 1, "DescribeKey": 2, "ListAliases": 1}
    doc = run.json()
    assert [(c["key"], c["actions"]) for c in doc["changes"]] == [("alpha", ["update"]), ("beta", ["update"])]
    assert doc["targets"] == ["alpha", "beta"] and doc["notes"] == [] and doc["violations"] == []
    run, _ = cli(account, "plan", str(stack.folder), *targets)
    assert run.stdout.splitlines()[1:3] == [
        f"Endpoint: {account.endpoint}",
        "Targeted: only alpha, beta (--target); the stack's other keys were not read, so this plan may not "
        "show every change the manifests ask for.",
    ]

    run, calls = cli(account, "drift", str(stack.folder), *targets, "--format", "json")
    assert run.code == 2, run.stderr
    assert run.stderr.splitlines()[0] == partial.format(verb="drift run", rest="not read")
    assert calls == {"ListTagResources": 1, "DescribeKey": 2, "ListAliases": 1}
    found = [(i["key"], i["kind"]) for i in run.json()["drift"]]
    assert found == [("alpha", "description"), ("beta", "description")]

    run, calls = cli(account, "show", str(stack.folder), "--target", "beta", "--format", "json")
    assert run.code == 0, run.stderr
    assert calls == {"ListTagResources": 1, "DescribeKey": 1, "ListAliases": 1}
    assert [k["key_id"] for k in run.json()["keys"]] == [ids["beta"]]
    assert run.json()["targets"] == ["beta"]

    run, _ = cli(account, "apply", str(stack.folder), *targets, "--auto-approve")
    assert run.code == 0, run.stdout + run.stderr
    assert run.stderr.splitlines()[0] == partial.format(verb="apply", rest="not read, planned or changed")
    assert "Apply complete: 2 key(s) changed, 0 failed." in run.stdout
    described = {name: account.view.describe(key_id).description for name, key_id in ids.items()}
    assert described == {"alpha": "first", "beta": "", "gamma": "edited gamma"}

    run, _ = cli(account, "plan", str(stack.folder), "--format", "json")
    assert [(c["key"], c["actions"]) for c in run.json()["changes"]] == [("gamma", ["update"])]
    assert "targets" not in run.json()


def test_a_saved_targeted_plan_records_its_targets_and_applies_only_them(
    account: Backend, tmp_path: Path
) -> None:
    stack = three_keys(tmp_path, account)
    ids = hand_edit_every_key(account)
    out = tmp_path / "plan.json"
    run, _ = cli(account, "plan", str(stack.folder), "--target", "gamma", "--out", str(out))
    assert run.code == 0, run.stderr
    saved = json.loads(out.read_text())
    assert saved["targets"] == ["gamma"] and [c["key"] for c in saved["changes"]] == ["gamma"]

    run, _ = cli(account, "apply", str(stack.folder), "--plan", str(out), "--target", "alpha")
    assert run.code == 1
    assert run.stderr.splitlines()[-1] == (
        "error: --target cannot be combined with --plan: a saved plan made with --target records its "
        "targets and applies only those"
    )

    run, calls = cli(account, "apply", str(stack.folder), "--plan", str(out))
    assert run.code == 0, run.stdout + run.stderr
    # gamma alone is re-read (and read back once after its update): alpha and beta are not described.
    assert calls == {"ListTagResources": 1, "DescribeKey": 2, "ListAliases": 1, "UpdateKeyDescription": 1}
    described = {name: account.view.describe(key_id).description for name, key_id in ids.items()}
    assert described == {"alpha": "edited alpha", "beta": "edited beta", "gamma": "third"}


def test_an_unknown_target_or_the_backend_name_exits_1_before_any_call(
    account: Backend, tmp_path: Path
) -> None:
    stack = three_keys(tmp_path, account)
    refusals = {
        "alpah": "error: --target 'alpah': the manifests of stack 'e2e' declare no key of that name: "
        "did you mean 'alpha'?\n",
        "default": "error: --target 'default': no key of stack 'e2e' has that name; 'default' names the "
        "backend (the target of a single backend): --target selects keys, --only-target selects backends\n",
    }
    for command in ("plan", "apply", "drift", "show"):
        extra = ["--auto-approve"] if command == "apply" else []
        for name, message in refusals.items():
            run, calls = cli(account, command, str(stack.folder), "--target", name, *extra)
            assert (run.code, run.stdout, run.stderr) == (1, "", message)
            assert calls == {}
