"""`provision drift` end to end on both backends, through the official SDK against the emulator server
and on the local backend's state file (issue 7): in sync right after apply; hand edits made with the
SDK's models reported by kind; only read calls; never reads material (the key files are moved away
first); expiring material, orphans, --verify-material.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alibabacloud_kms20160120 import models
from backends import Backend
from e2e_support import STACK, Entry, Stack, assert_no_secret, enter_account, run_cli

from provisioner.backend.base import READ_ONLY_ACTIONS
from provisioner.model import TAG_FINGERPRINT

pytestmark = pytest.mark.slow
BOTH_BACKENDS = True

OWNER = {"owner": "platform"}


@pytest.fixture
def account(backend: Backend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Backend:
    return enter_account(backend, monkeypatch, tmp_path)


def apply(stack: Stack, account: Backend) -> None:
    run = run_cli(["apply", str(stack.folder), "--auto-approve", *account.args])
    assert run.code == 0, run.stdout + run.stderr


def drift(stack: Stack, account: Backend, *args: str) -> tuple[int, str, str, Counter[str]]:
    """Run drift; (exit code, stdout, stderr, the calls the KMS received meanwhile)."""
    before = Counter(account.stats()["calls"])
    run = run_cli(["drift", str(stack.folder), *args, *account.args])
    calls = Counter(account.stats()["calls"])
    calls.subtract(before)
    return run.code, run.stdout, run.stderr, +calls


def hide_material(stack: Stack) -> list[Path]:
    """Move the key files where no manifest points, so any attempt to read them would fail."""
    away = stack.folder.parent / "elsewhere"
    stack.key_folder.rename(away)
    return sorted(away.glob("*.pem"))


def key_id(client: Any, alias: str) -> str:
    body = client.describe_key(models.DescribeKeyRequest(key_id=alias)).body
    return str(body.key_metadata.key_id)


def items_by_key(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for item in doc["drift"]:
        out.setdefault(item["key"], []).append(item)
    return out


def assert_read_only(calls: Counter[str]) -> None:
    assert set(calls) <= READ_ONLY_ACTIONS - {"GetParametersForImport"}, calls


def test_in_sync_after_apply_then_every_hand_edit_reported_by_kind(account: Backend, tmp_path: Path) -> None:
    stack = Stack(
        tmp_path / "m",
        [
            Entry("tagged", aliases=("alias/e2e/tagged",), tags={"team": "payments"}),
            Entry("described", aliases=("alias/e2e/described",), description="Signs tokens"),
            Entry("aliased", aliases=("alias/e2e/aliased", "alias/e2e/aliased-v2")),
            # An expiry far ahead: deleted material must read as deleted, not as expired.
            Entry("emptied", aliases=("alias/e2e/emptied",), expiry="2099-12-31T23:59:59Z"),
            Entry("disabled", aliases=("alias/e2e/disabled",)),
            Entry("untouched", spec="RSA_2048", aliases=("alias/e2e/untouched",), pin=True),
        ],
        backend=account.manifest_backend,
    )
    stack.write()
    apply(stack, account)
    pems = hide_material(stack)

    code, out, err, calls = drift(stack, account)
    assert (code, out) == (0, f"Stack '{STACK}': in sync, no drift.\nEndpoint: {account.endpoint}\n"), err
    assert err == account.announcement() + "\n"
    assert calls == {"ListTagResources": 1, "DescribeKey": 6, "ListAliases": 1}

    client = account.sdk_client()
    ids = {k.name: key_id(client, k.aliases[0]) for k in stack.keys}
    client.tag_resource(
        models.TagResourceRequest(
            key_id=ids["tagged"], tags=json.dumps([{"TagKey": "team", "TagValue": "x"}])
        )
    )
    client.update_key_description(
        models.UpdateKeyDescriptionRequest(key_id=ids["described"], description="edited by hand")
    )
    client.delete_alias(models.DeleteAliasRequest(alias_name="alias/e2e/aliased-v2"))
    client.delete_key_material(models.DeleteKeyMaterialRequest(key_id=ids["emptied"]))
    client.disable_key(models.DisableKeyRequest(key_id=ids["disabled"]))

    code, out, err, calls = drift(stack, account, "--format", "json")
    assert code == 2, err
    assert_read_only(calls)
    assert calls == {"ListTagResources": 1, "DescribeKey": 6, "ListAliases": 1}
    doc = json.loads(out)
    assert (doc["format_version"], doc["stack"], doc["in_sync"]) == (1, STACK, False)
    found = items_by_key(doc)
    assert sorted(found) == ["aliased", "described", "disabled", "emptied", "tagged"]
    assert [i["kind"] for i in found["tagged"]] == ["tags"]
    assert found["tagged"][0]["detail"] == "tags differ: team"
    assert found["tagged"][0]["expected"] == {**OWNER, "team": "payments"}
    assert found["tagged"][0]["found"] == {**OWNER, "team": "x"}
    assert [i["kind"] for i in found["described"]] == ["description"]
    assert (found["described"][0]["expected"], found["described"][0]["found"]) == (
        "Signs tokens", "edited by hand"
    )
    assert [i["kind"] for i in found["aliased"]] == ["aliases"]
    assert found["aliased"][0]["detail"] == "aliases differ: missing alias/e2e/aliased-v2"
    assert found["aliased"][0]["found"] == ["alias/e2e/aliased"]
    assert [i["kind"] for i in found["emptied"]] == ["material-deleted"]
    assert found["emptied"][0]["detail"] == (
        f"key {ids['emptied']} has no material (deleted, or never imported)"
    )
    assert [i["kind"] for i in found["disabled"]] == ["state"]
    assert found["disabled"][0]["detail"] == f"key {ids['disabled']} is disabled"

    code, text, _, calls = drift(stack, account)
    assert code == 2
    assert_read_only(calls)
    assert "tagged: tags: tags differ: team" in text
    assert f"emptied: material-deleted: key {ids['emptied']} has no material" in text
    assert text.endswith(
        "Drift: 5 item(s) (1 material-deleted, 1 tags, 1 aliases, 1 description, 1 state).\n"
    )

    code, markdown, _, calls = drift(stack, account, "--format", "markdown")
    assert code == 2
    assert_read_only(calls)
    lines = markdown.splitlines()
    assert lines[0] == f"## Drift for stack `{STACK}`"
    assert "| key | kind | detail | expected | found |" in lines
    assert (
        '| `described` | `description` | description differs | "Signs tokens" | "edited by hand" |' in lines
    )
    assert "| `material-deleted` | 1 |" in lines
    assert_no_secret(out + text + markdown, pems)


def test_verify_material_reads_each_public_key_once_and_finds_a_forged_fingerprint(
    account: Backend, tmp_path: Path
) -> None:
    stack = Stack(
        tmp_path / "m",
        [Entry(f"k{i}", aliases=(f"alias/e2e/k{i}",)) for i in range(3)]
        + [Entry("rsa", spec="RSA_2048", aliases=("alias/e2e/rsa",))],
        backend=account.manifest_backend,
    )
    stack.write()
    apply(stack, account)
    pems = hide_material(stack)

    code, _, err, plain = drift(stack, account, "--format", "json")
    assert code == 0, err
    code, out, err, verified = drift(stack, account, "--format", "json", "--verify-material")
    assert code == 0, err
    assert json.loads(out)["in_sync"] is True
    assert_read_only(verified)
    assert verified - plain == {"GetPublicKey": 4}  # exactly one per key, nothing else added
    assert plain == {"ListTagResources": 1, "DescribeKey": 4, "ListAliases": 1}

    client = account.sdk_client()
    forged_id = key_id(client, "alias/e2e/k1")
    forged = "sha256:" + "0" * 64
    client.tag_resource(
        models.TagResourceRequest(
            key_id=forged_id, tags=json.dumps([{"TagKey": TAG_FINGERPRINT, "TagValue": forged}])
        )
    )
    code, out, err, calls = drift(stack, account, "--format", "json", "--verify-material")
    assert code == 2, err
    assert calls["GetPublicKey"] == 4
    assert_read_only(calls)
    items = json.loads(out)["drift"]
    assert [(i["key"], i["kind"]) for i in items] == [("k1", "fingerprint-mismatch")]
    assert items[0]["expected"] == forged
    assert items[0]["found"] == stack.fingerprints["k1"]  # the live public key's, from GetPublicKey
    assert items[0]["detail"] == (
        f"live public key of {forged_id} is {stack.fingerprints['k1']}, the recorded fingerprint is {forged}"
    )
    assert_no_secret(out, pems)


def test_expiring_material_orphans_missing_keys_and_unmanaged_aliases(
    account: Backend, tmp_path: Path
) -> None:
    soon = (datetime.now(UTC) + timedelta(days=5, hours=12)).replace(microsecond=0)
    soon_text = soon.strftime("%Y-%m-%dT%H:%M:%SZ")
    kept = Entry("kept", aliases=("alias/e2e/kept",))
    expiring = Entry("expiring", aliases=("alias/e2e/expiring",), expiry=soon_text)
    dropped = Entry("dropped", aliases=("alias/e2e/dropped",))
    stack = Stack(tmp_path / "m", [kept, expiring, dropped], backend=account.manifest_backend)
    stack.write()
    apply(stack, account)
    hide_material(stack)

    code, out, err, _ = drift(stack, account, "--format", "json", "--expiry-warning", "3")
    assert code == 0, out + err  # 5 days away is outside a 3-day window
    code, out, err, calls = drift(stack, account, "--format", "json", "--expiry-warning", "30")
    assert code == 2, err
    assert_read_only(calls)
    items = json.loads(out)["drift"]
    assert [(i["key"], i["kind"], i["found"]) for i in items] == [
        ("expiring", "material-expiring", soon_text)
    ]
    assert items[0]["detail"].endswith(f" expires at {soon_text}, in 5 day(s) (warning window 30 days)")

    # `dropped` leaves the manifest, `newcomer` joins it unapplied, `kept`'s alias is moved by hand to a key
    # of no stack.
    client = account.sdk_client()
    dropped_id = key_id(client, "alias/e2e/dropped")
    foreign = client.create_key(
        models.CreateKeyRequest(
            key_spec="EC_P256",
            key_usage="SIGN/VERIFY",
            origin="EXTERNAL",
            dkmsinstance_id="kst-local-software",
        )
    ).body.key_metadata.key_id
    client.update_alias(models.UpdateAliasRequest(alias_name="alias/e2e/kept", key_id=foreign))
    stack.write([kept, expiring, Entry("newcomer", aliases=("alias/e2e/newcomer",))])
    shutil.rmtree(stack.key_folder)  # drift needs no material, not even for a new key

    code, out, err, calls = drift(stack, account, "--format", "json", "--expiry-warning", "3")
    assert code == 2, err
    assert_read_only(calls)
    items = json.loads(out)["drift"]
    assert [(i["key"], i["kind"]) for i in items] == [
        ("dropped", "orphan"),
        ("kept", "unmanaged-alias"),
        ("newcomer", "missing"),
    ]
    assert items[0]["found"] == dropped_id
    assert items[0]["detail"] == (
        f"key {dropped_id} (enabled) belongs to stack '{STACK}' but no manifest declares it"
    )
    assert items[1]["found"] == foreign
    assert items[1]["detail"] == (
        f"alias alias/e2e/kept points at key {foreign}, which stack '{STACK}' does not manage"
    )


@pytest.mark.one_backend("local", "material sources belong to the manifests; drift reads none on any backend")
def test_drift_touches_no_material_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset variables, a command that would leave a mark, a missing encrypted file: drift reads none."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("E2E_UNSET_MATERIAL", raising=False)
    monkeypatch.delenv("E2E_UNSET_PASS", raising=False)
    mark = tmp_path / "command-ran"
    manifest = tmp_path / "m.yaml"
    entries = {
        "from-env": "env: E2E_UNSET_MATERIAL",
        "from-command": f"command: [sh, -c, 'touch {mark}']",
        "from-file": "file: nowhere.pem\n      passphrase_env: E2E_UNSET_PASS",
    }
    manifest.write_text(
        "version: 1\nstack: e2e\ndefaults: {instance: kst-local-software, protection: SOFTWARE}\nkeys:\n"
        + "".join(
            f"  {name}:\n    spec: EC_P256\n    usage: SIGN/VERIFY\n    material:\n      {source}\n"
            for name, source in entries.items()
        )
    )
    run = run_cli(["drift", str(manifest), "--format", "json", "--backend", "local"])
    assert run.code == 2, run.stderr
    assert [(i["key"], i["kind"]) for i in json.loads(run.stdout)["drift"]] == [
        ("from-command", "missing"), ("from-env", "missing"), ("from-file", "missing")
    ]
    assert not mark.exists()
    # The control: plan does read material (commands allowed), and these sources fail it.
    planned = run_cli(["plan", str(manifest), "--backend", "local", "--allow-commands"])
    assert planned.code == 1
    assert planned.stderr.splitlines()[-1] == "3 error(s)"
    assert mark.exists()


@pytest.mark.one_backend("alibaba", "credentials: the local backend takes none")
def test_refused_credentials_are_an_error_not_drift(account: Backend, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    stack = Stack(tmp_path / "m", [Entry("a", aliases=("alias/e2e/a",))], backend=account.manifest_backend)
    stack.write()
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "wrong")
    code, out, err, calls = drift(stack, account, "--format", "json")
    assert code == 1
    assert out == ""
    assert err.splitlines()[-1].startswith("error: ListTagResources: ")
    assert "the credentials were refused" in err
    assert_read_only(calls)


def test_material_that_ran_out_is_material_expired(account: Backend, tmp_path: Path) -> None:
    expiry = (datetime.now(UTC) + timedelta(seconds=5)).replace(microsecond=0)
    stack = Stack(
        tmp_path / "m",
        [Entry("brief", aliases=("alias/e2e/brief",), expiry=expiry.strftime("%Y-%m-%dT%H:%M:%SZ"))],
        backend=account.manifest_backend,
    )
    stack.write()
    apply(stack, account)
    hide_material(stack)
    time.sleep(max(0.0, (expiry - datetime.now(UTC)).total_seconds()) + 1.1)
    code, out, err, calls = drift(stack, account, "--format", "json", "--verify-material")
    assert code == 2, err
    assert_read_only(calls)
    assert "GetPublicKey" not in calls  # no material to confirm
    items = json.loads(out)["drift"]
    brief_id = key_id(account.sdk_client(), "alias/e2e/brief")
    assert [(i["key"], i["kind"], i["found"]) for i in items] == [
        ("brief", "material-expired", expiry.strftime("%Y-%m-%dT%H:%M:%SZ"))
    ]
    assert items[0]["detail"] == (
        f"material of key {brief_id} expired at {expiry.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    )
