"""Rotation end to end on both backends (issue 14 acceptance 1 and 2, DESIGN section 11): `material`
names new material and `previous:` lists the old: plan action `rotate` creates the next generation,
moves every alias to it and gives the old key its declared state. Checked through the official SDK:
AsymmetricSign through the alias verifies with the new public key; the old key verifies old signatures
when present, is Disabled when disabled, PendingDeletion when absent; the next plan is empty.

The local engine keeps private material only in the process that imported it, so it cannot sign from
the SDK's process: there the alias's public key (GetPublicKey through the alias) stands for a signature.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from alibabacloud_kms20160120 import models
from apply_support import writes
from backends import Backend
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from e2e_support import Entry, Stack, assert_no_secret, enter_account, run_cli

from provisioner.model import TAG_FINGERPRINT, TAG_GENERATION, TAG_NAME, TAG_STACK

pytestmark = pytest.mark.slow
BOTH_BACKENDS = True

ALIASES = ("alias/e2e/signer", "alias/e2e/receipts")
DIGEST = hashlib.sha256(b"a receipt to sign").digest()


@pytest.fixture
def account(backend: Backend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Backend:
    monkeypatch.setenv("PROVISION_RETRY_SECONDS", "0")
    return enter_account(backend, monkeypatch, tmp_path)


def cli(stack: Stack, account: Backend, command: str, *args: str) -> Any:
    run = run_cli([command, str(stack.folder), *args, *account.args])
    assert_no_secret(run.stdout + run.stderr, sorted(stack.key_folder.glob("*.pem")))
    return run


def plan_doc(stack: Stack, account: Backend) -> dict[str, Any]:
    run = cli(stack, account, "plan", "--format", "json")
    assert run.code in (0, 1), run.stderr
    doc: dict[str, Any] = json.loads(run.stdout)
    return doc


def sign(account: Backend, key: str) -> bytes | None:
    """AsymmetricSign through the SDK; `key` is a key id or an alias. None on the local engine."""
    if account.kind != "alibaba":
        return None
    client = account.sdk_client()
    version = account.view.describe(key).primary_key_version
    body = client.asymmetric_sign(
        models.AsymmetricSignRequest(
            key_id=key, key_version_id=version, algorithm="ECDSA_SHA_256",
            digest=base64.b64encode(DIGEST).decode("ascii"),
        )
    ).body
    return base64.b64decode(body.value)


def verifies(public_der: bytes, signature: bytes | None) -> bool:
    if signature is None:
        return False
    public = serialization.load_der_public_key(public_der)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    try:
        public.verify(signature, DIGEST, ec.ECDSA(Prehashed(hashes.SHA256())))
    except Exception:
        return False
    return True


def rotated(
    account: Backend, tmp_path: Path, old_state: str
) -> tuple[Stack, str, str, bytes | None, bytes]:
    """A signing key applied, a signature made through its alias, then rotated to new material with its
    old generation declared `old_state`: (stack, old key id, new key id, the old signature, the old
    public key)."""
    stack = Stack(tmp_path / "m", [Entry("signer", aliases=ALIASES)], backend=account.manifest_backend)
    stack.write()
    assert cli(stack, account, "apply", "--auto-approve").code == 0
    (old,) = account.view.stack_keys()["signer"]
    old_signature = sign(account, ALIASES[0])
    old_public = account.view.public_key_der(old)
    old_fp = stack.fingerprints["signer"]

    stack.keys = [Entry("signer", aliases=ALIASES, material="signer-2", previous=((old_fp, old_state),))]
    stack.write()
    doc = plan_doc(stack, account)
    assert doc["violations"] == []
    ((change,),) = (doc["changes"],)
    assert (change["key"], change["key_id"], change["actions"]) == ("signer", old, ["rotate"])
    assert change["previous_state"] == old_state
    assert change["aliases_to_move"] == sorted(ALIASES)
    assert change["tags_to_set"][TAG_GENERATION] == "2"
    assert doc["summary"]["rotate"] == 1

    before = account.stats()
    run = cli(stack, account, "apply", "--auto-approve")
    assert run.code == 0, run.stdout + run.stderr
    made = writes(before, account.stats()) - account.lock_writes  # the lock key exists since the first apply
    assert (made["CreateKey"], made["ImportKeyMaterial"], made["UpdateAlias"]) == (1, 1, 2), made
    assert "CreateAlias" not in made and "DeleteAlias" not in made, made
    ids = account.view.stack_keys()["signer"]
    (new,) = [i for i in ids if i != old]
    return stack, old, new, old_signature, old_public


def assert_took_over(account: Backend, stack: Stack, old: str, new: str, old_public: bytes) -> None:
    aliases = account.view.aliases()
    assert {a: aliases[a] for a in ALIASES} == {a: new for a in ALIASES}
    assert account.view.tags(new) == {
        TAG_STACK: "e2e", TAG_NAME: "signer", TAG_FINGERPRINT: stack.fingerprints["signer-2"],
        TAG_GENERATION: "2", "owner": "platform",
    }
    assert TAG_GENERATION not in account.view.tags(old)
    assert str(account.view.describe(new).key_state) == "Enabled"
    # Through the alias, the new key signs: its public key verifies, the old one does not.
    new_public = account.view.public_key_der(new)
    assert account.view.public_key_der(ALIASES[0]) == new_public != old_public
    if account.kind == "alibaba":
        signature = sign(account, ALIASES[0])
        assert verifies(new_public, signature)
        assert not verifies(old_public, signature)
    after = plan_doc(stack, account)
    assert (after["changes"], after["violations"]) == ([], [])
    assert set(after["summary"].values()) == {0}
    drift = cli(stack, account, "drift", "--format", "json")
    assert (drift.code, json.loads(drift.stdout)["drift"]) == (0, []), drift.stdout


def test_rotate_keeping_the_old_generation_present(account: Backend, tmp_path: Path) -> None:
    stack, old, new, old_signature, old_public = rotated(account, tmp_path, "present")
    assert_took_over(account, stack, old, new, old_public)
    assert str(account.view.describe(old).key_state) == "Enabled"
    # The old key still serves its public key, which verifies what it signed before.
    assert account.view.public_key_der(old) == old_public
    if account.kind == "alibaba":
        assert verifies(old_public, old_signature)
        assert not verifies(account.view.public_key_der(new), old_signature)
        assert verifies(old_public, sign(account, old))  # and it still signs


def test_rotate_disabling_the_old_generation(account: Backend, tmp_path: Path) -> None:
    stack, old, new, _, old_public = rotated(account, tmp_path, "disabled")
    assert str(account.view.describe(old).key_state) == "Disabled"
    assert_took_over(account, stack, old, new, old_public)
    # show and drift list the generations, current first, with their key ids and states (acceptance 4).
    listed = {
        "name": "signer", "target": "default", "current": 2,
        "generations": [
            {"generation": 2, "key_id": new, "state": "Enabled"},
            {"generation": 1, "key_id": old, "state": "Disabled"},
        ],
    }
    shown = cli(stack, account, "show", "--format", "json")
    doc = json.loads(shown.stdout)
    assert [(k["name"], k["key_id"], k["state"]) for k in doc["keys"]] == [
        ("signer", new, "Enabled"), ("signer", old, "Disabled"),
    ]
    assert doc["generations"] == [listed]
    text = cli(stack, account, "show").stdout
    assert f"  signer ({new}): Enabled, generation 2 (current)\n" in text
    assert f"  signer ({old}): Disabled, generation 1 (previous)\n" in text
    drift = cli(stack, account, "drift", "--format", "json")
    assert drift.code == 0 and json.loads(drift.stdout)["generations"] == [listed]
    text = cli(stack, account, "drift").stdout
    assert f"Generations (current first):\n  signer: 2 {new} Enabled (current), 1 {old} Disabled\n" in text


def test_rotate_deleting_the_old_generation(account: Backend, tmp_path: Path) -> None:
    stack, old, new, _, old_public = rotated(account, tmp_path, "absent")
    assert str(account.view.describe(old).key_state) == "PendingDeletion"
    assert_took_over(account, stack, old, new, old_public)


def test_a_material_change_without_a_previous_entry_stays_material_immutable(
    account: Backend, tmp_path: Path
) -> None:
    stack = Stack(tmp_path / "m", [Entry("signer", aliases=ALIASES)], backend=account.manifest_backend)
    stack.write()
    assert cli(stack, account, "apply", "--auto-approve").code == 0
    (old,) = account.view.stack_keys()["signer"]
    stack.keys = [Entry("signer", aliases=ALIASES, material="signer-2")]
    stack.write()
    run = cli(stack, account, "plan", "--format", "json")
    assert run.code == 1
    doc = json.loads(run.stdout)
    assert doc["changes"] == []
    assert [(v["key"], v["code"]) for v in doc["violations"]] == [("signer", "material-immutable")]
    assert doc["violations"][0]["message"].startswith(
        f"key {old} is bound to material {stack.fingerprints['signer']}"
    )


def test_a_previous_fingerprint_no_live_key_holds_is_a_located_error(
    account: Backend, tmp_path: Path
) -> None:
    """Except an absent entry: its key may be gone already, which is what it asks for."""
    stack = Stack(tmp_path / "m", [Entry("signer", aliases=ALIASES)], backend=account.manifest_backend)
    stack.write()
    assert cli(stack, account, "apply", "--auto-approve").code == 0
    nobody, gone = "sha256:" + "ab" * 32, "sha256:" + "cd" * 32
    stack.keys = [Entry("signer", aliases=ALIASES, previous=((nobody, "disabled"), (gone, "absent")))]
    stack.write()
    before = account.stats()
    run = cli(stack, account, "apply", "--auto-approve")
    assert run.code == 1
    assert not writes(before, account.stats()) - account.lock_writes  # the lock's own writes only
    message = (
        f"previous generation {nobody} (state disabled) matches no live key of 'signer' in stack 'e2e': "
        f"correct the fingerprint, or remove the entry"
    )
    # Located at the entry: the first item under `previous:`, at its `{`.
    line = stack.manifest.read_text().splitlines().index("    previous:") + 2
    located = f"{stack.manifest}:{line}:9: error: signer: previous-not-found: {message}"
    assert located in run.stderr.splitlines(), run.stderr
    doc = plan_doc(stack, account)
    assert doc["violations"] == [
        {"key": "signer", "code": "previous-not-found", "message": message, "target": "default"}
    ]


class Killed(BaseException):
    """The process died right after a write call landed (its answer lost)."""


@pytest.mark.one_backend("local", "in-process: the kill is a transport that stops after its n-th write")
def test_a_rotation_killed_after_any_write_converges_on_the_next_apply(
    account: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after each write in turn (CreateKey, GetParametersForImport, ImportKeyMaterial, each
    UpdateAlias, DisableKey): no alias is ever left on no key, the next apply finishes the rotation,
    no generation is created twice, and the plan after it is empty."""
    from apply_support import WRITE_ACTIONS

    from provisioner.backend.local import LocalTransport

    original = LocalTransport.call
    armed: list[int] = []  # writes left before the kill; empty: no kill

    def dying(self: LocalTransport, action: str, params: Any) -> Any:
        answer = original(self, action, params)
        if armed and action in WRITE_ACTIONS:
            armed[0] -= 1
            if armed[0] == 0:
                raise Killed(action)
        return answer

    monkeypatch.setattr(LocalTransport, "call", dying)
    for n in range(1, 20):
        name, aliases = f"signer{n}", (f"alias/e2e/s{n}", f"alias/e2e/s{n}-receipts")
        stack = Stack(tmp_path / f"m{n}", [Entry(name, aliases=aliases)], backend=account.manifest_backend)
        stack.write()
        assert cli(stack, account, "apply", "--auto-approve").code == 0
        (old,) = account.view.stack_keys()[name]
        previous = ((stack.fingerprints[name], "disabled"),)
        stack.keys = [Entry(name, aliases=aliases, material=f"{name}-2", previous=previous)]
        stack.write()
        armed[:] = [n]
        try:
            run = cli(stack, account, "apply", "--auto-approve")
        except Killed:
            killed = True
        else:
            killed = False
            assert run.code == 0, run.stdout + run.stderr
        armed.clear()
        keys = set(account.view.key_ids())
        assert set(account.view.aliases().values()) <= keys  # no alias on no key
        if killed:
            assert cli(stack, account, "apply", "--auto-approve").code == 0
        ids = account.view.stack_keys()[name]
        assert len(ids) == 2, (n, ids)  # one new generation, never two
        (new,) = [i for i in ids if i != old]
        assert account.view.tags(new)[TAG_GENERATION] == "2"
        current = account.view.aliases()
        assert {a: current[a] for a in aliases} == {a: new for a in aliases}, n
        assert str(account.view.describe(new).key_state) == "Enabled"
        assert str(account.view.describe(old).key_state) == "Disabled"
        doc = plan_doc(stack, account)
        assert (doc["changes"], doc["violations"]) == ([], []), n
        if not killed:
            break  # n is past the rotation's last write: every boundary was tried
    else:
        raise AssertionError("the rotation never finished without a kill")
    assert n >= 6  # CreateKey, GetParametersForImport, ImportKeyMaterial, 2 x UpdateAlias, DisableKey
