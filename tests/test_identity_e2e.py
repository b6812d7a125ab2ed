"""Adopt, tag repair and rename end to end (issue 12, DESIGN section 10), on both backends: the CLI
in-process, the keys made and checked through the official SDK (or its stand-in on the local state
file), every apply's calls counted.

The key to adopt is made as the vendor guide makes one, outside the tool: CreateKey (EXTERNAL) and
GetParametersForImport through the SDK, the material wrapped by the guide's OpenSSL commands
(test_emulator_byok_sdk.Material), ImportKeyMaterial through the SDK.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from alibabacloud_kms20160120 import models as kms
from apply_support import (
    SOFTWARE,
    STACK,
    Run,
    calls,
    fingerprint,
    key_entry,
    private_pem,
    run_cli,
    write_key,
    write_manifest,
    writes,
)
from backends import Backend
from test_emulator_byok_sdk import GUIDE_STEP_1_RSA, Material, download, import_material

pytestmark = pytest.mark.slow
BOTH_BACKENDS = True

TAG_STACK = "byok-provisioner:stack"
TAG_NAME = "byok-provisioner:name"
TAG_FINGERPRINT = "byok-provisioner:fingerprint"
ZEROS = "sha256:" + "0" * 64


@pytest.fixture(scope="module")
def guide_material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    """An RSA_2048 target key made by the guide's step 1 (OpenSSL), wrapped by its steps 2 to 5."""
    return Material.generate(tmp_path_factory.mktemp("guide") / "rsa", GUIDE_STEP_1_RSA)


@pytest.fixture(scope="module")
def other_material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return Material.generate(tmp_path_factory.mktemp("guide") / "other", GUIDE_STEP_1_RSA)


def guide_fingerprint(material: Material) -> str:
    """sha256 of the target key's public key DER, computed by cryptography from OpenSSL's file."""
    import hashlib

    return "sha256:" + hashlib.sha256(material.public_der()).hexdigest()


def _tags_json(tags: dict[str, str]) -> str:
    return json.dumps([{"TagKey": k, "TagValue": v} for k, v in tags.items()])


class Account:
    """The KMS under test, worked on by hand through the SDK, and a working folder with a manifest."""

    def __init__(self, backend: Backend, folder: Path) -> None:
        self.backend = backend
        self.client = backend.sdk_client()
        self.sdk = backend.view
        self.folder = folder
        self.keys: dict[str, dict[str, Any]] = {}

    # -- by hand, outside the tool

    def create_key(self, spec: str = "RSA_2048", tags: dict[str, str] | None = None) -> str:
        request = kms.CreateKeyRequest(
            key_spec=spec, key_usage="SIGN/VERIFY", origin="EXTERNAL", protection_level="SOFTWARE",
            dkmsinstance_id=SOFTWARE, description="made by hand",
            tags=_tags_json(tags) if tags else None,
        )
        key_id: str = self.client.create_key(request).body.key_metadata.key_id
        return key_id

    def import_guide(self, key_id: str, material: Material) -> None:
        params = download(self.client, key_id)
        import_material(self.client, key_id, material.wrap_for(params.public_key), params.token)

    def vendor_flow_key(self, material: Material, **tags: str) -> str:
        """The guide's flow: create, download the wrapping key, wrap with OpenSSL, import."""
        key_id = self.create_key(tags=tags or None)
        self.import_guide(key_id, material)
        return key_id

    def alias(self, alias: str, key_id: str) -> None:
        self.client.create_alias(kms.CreateAliasRequest(alias_name=alias, key_id=key_id))

    def tag(self, key_id: str, **tags: str) -> None:
        self.client.tag_resource(kms.TagResourceRequest(key_id=key_id, tags=_tags_json(tags)))

    # -- through the CLI

    def material_file(self, name: str, material: Material) -> str:
        """The guide's PKCS#8 DER as the manifest's material file; the path relative to the manifest."""
        path = self.folder / "keys" / f"{name}.der"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((material.workdir / "TakPrivPkcs8.bin").read_bytes())
        path.chmod(0o600)
        return f"../keys/{name}.der"

    def save(self) -> Path:
        return write_manifest(self.folder, self.keys, backend=self.backend.manifest_backend)

    def cli(self, *args: str) -> Run:
        return run_cli([*args, *self.backend.args], env=self.backend.env)

    def plan_json(self) -> tuple[int, dict[str, Any]]:
        self.save()
        r = self.cli("plan", "manifests", "--format", "json", "--detailed-exitcode")
        assert r.stdout, r.stderr
        return r.code, json.loads(r.stdout)

    def apply(self) -> tuple[Run, Counter[str], Counter[str]]:
        """Apply; its result, its write calls and all its calls."""
        self.save()
        before = self.backend.stats()
        r = self.cli("apply", "manifests", "--auto-approve")
        after = self.backend.stats()
        # The stack lock's own calls apart (tests/test_lock_e2e.py counts those).
        lock_free = self.backend.minus_lock
        return r, lock_free(writes(before, after)), lock_free(calls(before, after))

    def assert_converged(self) -> None:
        r = self.cli("plan", "manifests", "--detailed-exitcode")
        assert r.code == 0, r.stdout + r.stderr
        assert "No changes" in r.stdout


@pytest.fixture
def account(backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Account:
    monkeypatch.chdir(tmp_path)
    return Account(backend, tmp_path)


def manifest_key(account: Account, name: str, material: Material, **fields: Any) -> dict[str, Any]:
    entry = key_entry(name, "RSA_2048", material={"file": account.material_file(name, material)})
    entry.update(fields)
    return entry


# ------------------------------------------------------------------------------------------- adopt


def test_a_key_made_by_the_vendor_flow_is_adopted_with_no_create_and_no_import(
    account: Account, guide_material: Material
) -> None:
    key_id = account.vendor_flow_key(guide_material, team="by-hand", temp="1")
    account.alias("alias/e2e/receipts", key_id)
    fp = guide_fingerprint(guide_material)
    account.keys["receipts"] = manifest_key(
        account, "receipts", guide_material, adopt=key_id,
        aliases=["alias/e2e/receipts", "alias/e2e/receipts-v2"], description="Signs receipts",
        tags={"team": "payments"},
    )

    code, doc = account.plan_json()
    assert code == 2 and doc["violations"] == []
    (change,) = doc["changes"]
    assert (change["key"], change["key_id"], change["actions"]) == ("receipts", key_id, ["adopt", "update"])
    assert change["tags_to_set"] == {
        TAG_FINGERPRINT: fp, TAG_NAME: "receipts", TAG_STACK: STACK, "owner": "platform", "team": "payments"
    }
    assert change["tags_to_remove"] == ["temp"]
    assert change["aliases_to_create"] == ["alias/e2e/receipts-v2"]
    assert doc["summary"]["adopt"] == 1 and doc["summary"]["create"] == 0
    text = account.cli("plan", "manifests")
    assert f"  < receipts ({key_id}): adopt, update" in text.stdout
    assert "1 to adopt" in text.stdout

    r, wrote, called = account.apply()
    assert r.code == 0, r.stdout + r.stderr
    assert "Apply complete: 1 key(s) changed, 0 failed." in r.stdout
    # No CreateKey, no import: the identity tags, then the update (user tags, the tag to drop, the new
    # alias, the description).
    assert wrote == Counter(TagResource=2, UntagResource=1, CreateAlias=1, UpdateKeyDescription=1)
    assert called["GetParametersForImport"] == 0 and called["GetPublicKey"] == 1  # the plan's, to judge
    assert account.sdk.key_ids() == [key_id]
    tags = account.sdk.tags(key_id)
    assert tags == {
        TAG_STACK: STACK, TAG_NAME: "receipts", TAG_FINGERPRINT: fp, "owner": "platform", "team": "payments"
    }
    assert {a for a, k in account.sdk.aliases().items() if k == key_id} == {
        "alias/e2e/receipts", "alias/e2e/receipts-v2"
    }
    meta = account.sdk.describe(key_id)
    assert (meta.key_state, meta.description, meta.origin) == ("Enabled", "Signs receipts", "EXTERNAL")
    assert account.sdk.public_key_der(key_id) == guide_material.public_der()  # the material is untouched
    # Once adopted, adopt: is redundant and harmless.
    account.assert_converged()
    assert account.sdk.stack_keys() == {"receipts": [key_id]}


def test_adopt_by_alias_and_by_arn(
    account: Account, guide_material: Material, other_material: Material
) -> None:
    by_alias = account.vendor_flow_key(guide_material)
    account.alias("alias/hand/one", by_alias)
    by_arn = account.vendor_flow_key(other_material)
    arn = account.sdk.describe(by_arn).arn
    account.keys["one"] = manifest_key(
        account, "one", guide_material, adopt="alias/hand/one", aliases=["alias/hand/one"]
    )
    account.keys["two"] = manifest_key(account, "two", other_material, adopt=arn, aliases=[])
    code, doc = account.plan_json()
    assert code == 2, doc
    assert {c["key"]: (c["key_id"], c["actions"][0]) for c in doc["changes"]} == {
        "one": (by_alias, "adopt"), "two": (by_arn, "adopt")
    }
    r, wrote, _ = account.apply()
    assert r.code == 0, r.stdout + r.stderr
    assert wrote["CreateKey"] == wrote["ImportKeyMaterial"] == 0
    assert account.sdk.stack_keys() == {"one": [by_alias], "two": [by_arn]}
    account.assert_converged()


def test_adopt_blocked_wrong_spec_other_stack_other_material_disabled(
    account: Account, guide_material: Material, other_material: Material
) -> None:
    wrong_spec = account.create_key("EC_P256")
    theirs = account.vendor_flow_key(guide_material, **{TAG_STACK: "billing", TAG_NAME: "signer"})
    differs = account.vendor_flow_key(other_material)
    disabled = account.vendor_flow_key(guide_material)
    account.client.disable_key(kms.DisableKeyRequest(key_id=disabled))
    account.keys["differs"] = manifest_key(account, "differs", guide_material, adopt=differs, aliases=[])
    # The other keys' material is beside the point (and one material is in one key of a set only).
    for n, (name, key_id) in enumerate((("spec", wrong_spec), ("theirs", theirs), ("off", disabled)), 7):
        write_key(account.folder, name, private_pem("RSA_2048", n))
        account.keys[name] = key_entry(name, "RSA_2048", adopt=key_id, aliases=[])
    fp, other_fp = guide_fingerprint(guide_material), guide_fingerprint(other_material)

    before = account.backend.stats()
    code, doc = account.plan_json()
    assert code == 1 and doc["changes"] == []
    got = {v["key"]: (v["code"], v["message"]) for v in doc["violations"]}
    assert got == {
        "spec": (
            "immutable-attribute",
            f"key {wrong_spec}: spec is EC_P256 (manifest says RSA_2048); these cannot change on an "
            f"existing key: restore the manifest values, or retire this key (state: absent) and declare a "
            f"new one under another name",
        ),
        "theirs": (
            "managed-elsewhere",
            f"key {theirs} is already managed by stack 'billing' as 'signer': a key belongs to one stack and "
            f"one name; remove it from that stack's manifests first, or remove adopt:",
        ),
        "differs": (
            "material-immutable",
            f"key {differs} to adopt holds material {other_fp} (live public key) but the manifest's "
            f"material is {fp}: material never changes on a key; point `material` at the key's own "
            f"material, or remove adopt: to create a new key",
        ),
        "off": (
            "material-immutable",
            f"key {disabled} to adopt is disabled: GetPublicKey needs an enabled key, so the material it "
            f"holds cannot be checked against the manifest's: enable it first, then plan again",
        ),
    }
    wrote = account.backend.minus_lock(writes(before, account.backend.stats()))
    assert wrote == Counter()
    r, wrote, _ = account.apply()
    assert r.code == 1 and "the plan is blocked by 4 violation(s); nothing applied" in r.stderr
    assert wrote == Counter()
    assert account.sdk.stack_keys() == {} and account.sdk.stack_keys("billing") == {"signer": [theirs]}


def test_adopt_naming_no_key_is_a_located_error(account: Account, guide_material: Material) -> None:
    account.keys["ghost"] = manifest_key(
        account, "ghost", guide_material, adopt="key-0000nothere", aliases=[]
    )
    path = account.save()
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "adopt:" in text)
    before = account.backend.stats()
    r = account.cli("plan", "manifests")
    assert r.code == 1 and r.stdout == ""
    column = path.read_text().splitlines()[line - 1].index("key-0000nothere") + 1
    assert (
        f"manifests/stack.yaml:{line}:{column}: error: key 'ghost': adopt: key-0000nothere: no key "
        f"key-0000nothere exists in this account and region: a key to adopt must exist; fix the reference, "
        f"or remove adopt: to create a new key"
    ) in r.stderr
    wrote = account.backend.minus_lock(writes(before, account.backend.stats()))
    assert wrote == Counter()


def test_a_live_keys_hostile_description_is_escaped_in_the_plan(
    account: Account, guide_material: Material
) -> None:
    key_id = account.vendor_flow_key(guide_material)
    hostile = "ok\x1b[2J\u202eevil\nline"
    account.client.update_key_description(kms.UpdateKeyDescriptionRequest(key_id=key_id, description=hostile))
    account.keys["k"] = manifest_key(
        account, "k", guide_material, adopt=key_id, aliases=[], description="clean"
    )
    account.save()
    for fmt in ("text", "markdown", "json"):
        r = account.cli("plan", "manifests", "--format", fmt)
        assert r.code == 0, r.stderr
        assert "\x1b" not in r.stdout and "\u202e" not in r.stdout
    text = account.cli("plan", "manifests").stdout
    assert '~ description: "ok\\u001b[2J\\u202eevil\\nline" -> "clean"' in text


# -------------------------------------------------------------------------------------- tag repair


@pytest.fixture
def applied(account: Account) -> Account:
    for name, n in (("signer", 1), ("tokens", 2)):
        write_key(account.folder, name, private_pem("EC_P256", n))
        account.keys[name] = key_entry(name)
    r, _, _ = account.apply()
    assert r.code == 0, r.stdout + r.stderr
    account.assert_converged()
    return account


def key_of(account: Account, name: str) -> str:
    (key_id,) = account.sdk.stack_keys()[name]
    return key_id


def test_a_tampered_fingerprint_tag_is_restored_when_the_live_key_matches(applied: Account) -> None:
    key_id = key_of(applied, "signer")
    applied.tag(key_id, **{TAG_FINGERPRINT: ZEROS})
    code, doc = applied.plan_json()
    assert code == 2 and doc["violations"] == []
    (change,) = doc["changes"]
    assert (change["key"], change["actions"]) == ("signer", ["update"])
    assert change["reason"] == "fingerprint tag restored: the live public key matches the material"
    assert change["tags_to_set"] == {TAG_FINGERPRINT: fingerprint(private_pem("EC_P256", 1))}
    r, wrote, _ = applied.apply()
    assert r.code == 0, r.stdout + r.stderr
    assert wrote == Counter(TagResource=1)
    assert applied.sdk.tags(key_id)[TAG_FINGERPRINT] == fingerprint(private_pem("EC_P256", 1))
    applied.assert_converged()


def test_a_tampered_tag_over_other_material_is_material_immutable(applied: Account) -> None:
    key_id = key_of(applied, "signer")
    applied.tag(key_id, **{TAG_FINGERPRINT: ZEROS})
    write_key(applied.folder, "signer", private_pem("EC_P256", 3))  # the manifest now points elsewhere
    code, doc = applied.plan_json()
    assert code == 1 and doc["changes"] == []
    (v,) = doc["violations"]
    assert (v["key"], v["code"]) == ("signer", "material-immutable")
    assert v["message"].startswith(
        f"key {key_id} is bound to material {fingerprint(private_pem('EC_P256', 1))} (live public key) but "
        f"the manifest's material is {fingerprint(private_pem('EC_P256', 3))}: material never changes"
    )


# ----------------------------------------------------------------------------------------- rename


def test_a_rename_with_moved_from_costs_one_tag_resource_and_no_new_key(applied: Account) -> None:
    key_id = key_of(applied, "signer")
    ids = applied.sdk.key_ids()
    entry = applied.keys.pop("signer")
    applied.keys["signing"] = {**entry, "moved_from": ["signer"], "material": {"file": "../keys/signer.pem"}}
    code, doc = applied.plan_json()
    assert code == 2 and doc["violations"] == [] and doc["notes"] == []
    (change,) = doc["changes"]
    assert (change["key"], change["key_id"], change["actions"]) == ("signing", key_id, ["update"])
    assert change["tags_to_set"] == {TAG_NAME: "signing"}
    r, wrote, _ = applied.apply()
    assert r.code == 0, r.stdout + r.stderr
    assert wrote == Counter(TagResource=1)
    assert applied.sdk.key_ids() == ids
    assert applied.sdk.tags(key_id)[TAG_NAME] == "signing"
    assert applied.sdk.aliases()["alias/e2e/signer"] == key_id
    applied.assert_converged()  # moved_from stays, harmless


def test_both_names_live_is_duplicate_identity(applied: Account) -> None:
    signer, tokens = key_of(applied, "signer"), key_of(applied, "tokens")
    del applied.keys["signer"]
    applied.keys["tokens"]["moved_from"] = ["signer"]
    code, doc = applied.plan_json()
    assert code == 1
    (v,) = doc["violations"]
    assert (v["key"], v["code"]) == ("tokens", "duplicate-identity")
    assert v["message"].startswith(
        f"key {tokens} ('tokens') and key {signer} ('signer') are both live, but moved_from says they are "
        f"one key"
    )


def test_one_material_in_two_keys_is_a_validation_error_naming_both(applied: Account) -> None:
    applied.keys["tokens"]["material"] = {"file": "../keys/signer.pem"}
    path = applied.save()
    r = run_cli(["validate", "manifests"])
    assert r.code == 1
    lines = path.read_text().splitlines()
    line = lines.index("  tokens:") + 1
    fp = fingerprint(private_pem("EC_P256", 1))
    first = lines.index("  signer:") + 1
    assert (
        f'manifests/stack.yaml:{line}:3: error: key "tokens": its material ({fp}) is also the material '
        f'of key "signer" (manifests/stack.yaml:{first}:3): one material belongs to one key of a set; to '
        f"rename a key, give the new name moved_from: [signer] instead of a second key"
    ) in r.stderr
    r = applied.cli("plan", "manifests")
    assert r.code == 1 and r.stdout == ""



def test_a_saved_plan_adopts_and_renames_as_reviewed(applied: Account, guide_material: Material) -> None:
    key_id = applied.vendor_flow_key(guide_material)
    applied.keys["receipts"] = manifest_key(applied, "receipts", guide_material, adopt=key_id, aliases=[])
    signer = key_of(applied, "signer")
    applied.keys["signing"] = {**applied.keys.pop("signer"), "moved_from": ["signer"]}
    applied.save()
    saved = applied.cli("plan", "manifests", "--out", "plan.json")
    assert saved.code == 0, saved.stderr
    doc = json.loads(Path("plan.json").read_text())
    assert {c["key"]: (c["key_id"], c["actions"]) for c in doc["changes"]} == {
        "receipts": (key_id, ["adopt", "update"]), "signing": (signer, ["update"])
    }
    before = applied.backend.stats()
    r = applied.cli("apply", "--plan", "plan.json", "manifests")
    assert r.code == 0, r.stdout + r.stderr
    # Adopt's identity tags and its user tags and description; the rename's name tag.
    wrote = applied.backend.minus_lock(writes(before, applied.backend.stats()))
    assert wrote == Counter(TagResource=3, UpdateKeyDescription=1)
    tokens = key_of(applied, "tokens")
    assert applied.sdk.stack_keys() == {"receipts": [key_id], "signing": [signer], "tokens": [tokens]}
    applied.assert_converged()
