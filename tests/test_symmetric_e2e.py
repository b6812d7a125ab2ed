"""Symmetric BYOK end to end on both backends (issue 16, acceptance 1 and 2): Aliyun_AES_256 on a default
key and on an instance, Aliyun_SM4 on a hardware instance with SM2PKE; plan, apply, reimport after
DeleteKeyMaterial, drift, show and material-immutable through the CLI, every result checked through the
official SDK (or its local stand-in), and the imported keys' Encrypt, Decrypt and GenerateDataKey.
"""

from __future__ import annotations

import base64
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from alibabacloud_kms20160120 import models
from backends import Backend
from e2e_support import STACK, enter_account, run_cli
from Tea.exceptions import TeaException

from provisioner.model import TAG_FINGERPRINT, KeySpec, WrappingAlgorithm
from provisioner.symmetric import SymmetricMaterial, key_check_value
from provisioner.wrapping import wrap

pytestmark = pytest.mark.slow
BOTH_BACKENDS = True

#: name -> (spec, instance or None, protection, format, wrapping or None, material bytes)
KEYS: dict[str, tuple[str, str | None, str, str, str | None, bytes]] = {
    "aes-default": ("Aliyun_AES_256", None, "SOFTWARE", "raw", "RSAES_OAEP_SHA_1", os.urandom(32)),
    "aes-instance": (
        "Aliyun_AES_256",
        "kst-local-software",
        "SOFTWARE",
        "hex",
        "RSAES_PKCS1_V1_5",
        os.urandom(32),
    ),
    "sm4-hsm": ("Aliyun_SM4", "kst-local-hardware", "HSM", "base64", "SM2PKE", os.urandom(16)),
}


def encoded(fmt: str, secret: bytes) -> bytes:
    return {"raw": secret, "hex": secret.hex().encode() + b"\n", "base64": base64.b64encode(secret) + b"\n"}[
        fmt
    ]


def write_stack(folder: Path, account: Backend, materials: dict[str, bytes] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"stack: {STACK}"]
    if account.manifest_backend:
        lines.append(f"backend: {json.dumps(account.manifest_backend)}")
    lines.append("keys:")
    for name, (spec, instance, protection, fmt, wrapping, secret) in KEYS.items():
        material = (materials or {}).get(name, secret)
        path = folder / f"{name}.key"
        path.write_bytes(encoded(fmt, material))
        path.chmod(0o600)
        lines += [
            f"  {name}:",
            f"    spec: {spec}",
            "    usage: ENCRYPT/DECRYPT",
            f"    protection: {protection}",
        ]
        lines += [f"    instance: {instance}"] if instance else []
        lines += [
            f"    aliases: [alias/sym/{name}]",
            "    material:",
            f"      file: {name}.key",
            f"      format: {fmt}",
        ]
        lines += [f"      wrapping: {wrapping}"] if wrapping else []
    (folder / "stack.yaml").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def account(backend: Backend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Backend:
    return enter_account(backend, monkeypatch, tmp_path)


def cli(account: Backend, *args: str) -> Any:
    return run_cli([*args, *account.args])


def sdk(account: Backend, method: str, request: Any) -> Any:
    return account.view._call(getattr(account.sdk_client(), method), request)


def applied(tmp_path: Path, account: Backend) -> tuple[Path, dict[str, str]]:
    folder = write_stack(tmp_path / "m", account)
    run = cli(account, "apply", str(folder), "--auto-approve")
    assert run.code == 0, run.stdout + run.stderr
    return folder, {name: ids[0] for name, ids in account.view.stack_keys().items()}


def usable(account: Backend, name: str, key_id: str) -> None:
    """Make the key's material usable to the SDK's calls. The emulator keeps it; the local backend's
    state file holds no material (only the process that imported it can use it), so there the test
    imports the same material again through the SDK's stand-in, as a user of the file would have to."""
    if account.kind != "local":
        return
    with pytest.raises(TeaException) as info:
        sdk(account, "encrypt", models.EncryptRequest(key_id=key_id, plaintext="x"))
    assert info.value.code == "Rejected.UnsupportedOperation"
    assert "was kept only in the memory of the process that imported it" in info.value.message
    spec, _, _, _, wrapping_name, secret = KEYS[name]
    algorithm = WrappingAlgorithm(wrapping_name or "RSAES_OAEP_SHA_256")
    params = sdk(
        account,
        "get_parameters_for_import",
        models.GetParametersForImportRequest(
            key_id=key_id,
            wrapping_algorithm=algorithm.value,
            wrapping_key_spec=algorithm.wrapping_key_spec.value,
        ),
    )
    wrapped = wrap(SymmetricMaterial(KeySpec(spec), secret), base64.b64decode(params.public_key), algorithm)
    sdk(
        account,
        "import_key_material",
        models.ImportKeyMaterialRequest(
            key_id=key_id,
            encrypted_key_material=wrapped,
            import_token=params.import_token,
            key_material_expire_unix=0,
        ),
    )


def test_plan_apply_and_the_sdks_view(tmp_path: Path, account: Backend) -> None:
    folder = write_stack(tmp_path / "m", account)
    run = cli(account, "plan", str(folder), "--format", "json")
    assert run.code == 0, run.stderr
    plan = json.loads(run.stdout)
    changes = {c["key"]: c for c in plan["changes"]}
    for name, (spec, instance, *_, secret) in KEYS.items():
        change = changes[name]
        assert change["actions"] == ["create", "import"]
        assert change["after"]["fingerprint"] == key_check_value(secret)
        assert (change["after"]["spec"], change["after"]["instance"]) == (spec, instance)
    before = Counter(account.stats()["calls"])
    apply = cli(account, "apply", str(folder), "--auto-approve")
    assert apply.code == 0, apply.stdout + apply.stderr
    calls = Counter(account.stats()["calls"])
    calls.subtract(before)
    calls = account.minus_lock(+calls)  # the stack lock's own (its key, on alibaba): tests/test_lock_e2e.py
    # Per key: CreateKey, GetParametersForImport, ImportKeyMaterial, and DescribeKey as the read-back
    # (no GetPublicKey: a symmetric key has none); nothing else reads a key on a first apply.
    counted = ("CreateKey", "GetParametersForImport", "ImportKeyMaterial", "DescribeKey", "GetPublicKey")
    assert {a: calls[a] for a in counted} == {a: 0 if a == "GetPublicKey" else 3 for a in counted}
    ids = {name: found[0] for name, found in account.view.stack_keys().items()}
    assert sorted(ids) == sorted(KEYS)
    for name, (spec, instance, protection, _, _, secret) in KEYS.items():
        meta = account.view.describe(ids[name])
        assert (meta.key_spec, meta.key_usage, meta.protection_level, meta.key_state) == (
            spec,
            "ENCRYPT/DECRYPT",
            protection,
            "Enabled",
        )
        assert (meta.dkmsinstance_id or None) == instance
        assert account.view.tags(ids[name])[TAG_FINGERPRINT] == key_check_value(secret)
        assert account.view.aliases()[f"alias/sym/{name}"] == ids[name]
    every_output = run.stdout + run.stderr + apply.stdout + apply.stderr
    for *_, secret in KEYS.values():
        for form in (secret.hex(), base64.b64encode(secret).decode()):
            assert form not in every_output
    again = cli(account, "plan", str(folder), "--detailed-exitcode")
    assert again.code == 0, again.stdout


@pytest.mark.parametrize("name", list(KEYS))
def test_encrypt_decrypt_and_generate_data_key_through_the_sdk(
    tmp_path: Path, account: Backend, name: str
) -> None:
    _, ids = applied(tmp_path, account)
    usable(account, name, ids[name])
    alias = f"alias/sym/{name}"
    blob = sdk(account, "encrypt", models.EncryptRequest(key_id=alias, plaintext="attack at dawn"))
    assert blob.key_id == ids[name]
    plain = sdk(account, "decrypt", models.DecryptRequest(ciphertext_blob=blob.ciphertext_blob))
    assert (plain.key_id, plain.plaintext) == (ids[name], "attack at dawn")
    data = sdk(
        account, "generate_data_key", models.GenerateDataKeyRequest(key_id=ids[name], key_spec="AES_256")
    )
    assert len(base64.b64decode(data.plaintext)) == 32
    opened = sdk(account, "decrypt", models.DecryptRequest(ciphertext_blob=data.ciphertext_blob))
    assert opened.plaintext == data.plaintext
    version = account.view.describe(ids[name]).primary_key_version
    with pytest.raises(TeaException) as info:
        sdk(account, "get_public_key", models.GetPublicKeyRequest(key_id=ids[name], key_version_id=version))
    assert info.value.code == "Rejected.UnsupportedOperation"
    assert "a symmetric key has no public key" in info.value.message


def test_reimport_after_delete_key_material(tmp_path: Path, account: Backend) -> None:
    folder, ids = applied(tmp_path, account)
    key_id = ids["sm4-hsm"]
    usable(account, "sm4-hsm", key_id)
    blob = sdk(account, "encrypt", models.EncryptRequest(key_id=key_id, plaintext="kept")).ciphertext_blob
    sdk(account, "delete_key_material", models.DeleteKeyMaterialRequest(key_id=key_id))
    assert account.view.describe(key_id).key_state == "PendingImport"
    drift = cli(account, "drift", str(folder), "--format", "json")
    assert drift.code == 2
    assert [(d["key"], d["kind"]) for d in json.loads(drift.stdout)["drift"]] == [
        ("sm4-hsm", "material-deleted")
    ]
    plan = cli(account, "plan", str(folder), "--format", "json")
    changes = json.loads(plan.stdout)["changes"]
    assert [(c["key"], c["actions"]) for c in changes] == [("sm4-hsm", ["reimport"])]
    assert changes[0]["material"]["wrapping"] == "SM2PKE"
    run = cli(account, "apply", str(folder), "--auto-approve")
    assert run.code == 0, run.stdout + run.stderr
    assert account.view.describe(key_id).key_state == "Enabled"
    # The same material came back: what it encrypted before opens again.
    usable(account, "sm4-hsm", key_id)
    assert sdk(account, "decrypt", models.DecryptRequest(ciphertext_blob=blob)).plaintext == "kept"
    assert cli(account, "drift", str(folder)).code == 0


def test_another_material_is_material_immutable_by_its_check_value(tmp_path: Path, account: Backend) -> None:
    folder, ids = applied(tmp_path, account)
    other = os.urandom(32)
    write_stack(folder, account, {"aes-default": other})
    run = cli(account, "plan", str(folder), "--format", "json")
    assert run.code == 1, run.stdout
    violations = json.loads(run.stdout)["violations"]
    assert [(v["key"], v["code"]) for v in violations] == [("aes-default", "material-immutable")]
    assert key_check_value(other) in violations[0]["message"]
    assert key_check_value(KEYS["aes-default"][5]) in violations[0]["message"]
    assert cli(account, "apply", str(folder), "--auto-approve").code == 1
    assert account.view.tags(ids["aes-default"])[TAG_FINGERPRINT] == key_check_value(KEYS["aes-default"][5])


def test_drift_says_what_it_cannot_prove_and_show_lists_the_keys(tmp_path: Path, account: Backend) -> None:
    folder, ids = applied(tmp_path, account)
    run = cli(account, "drift", str(folder), "--verify-material", "--format", "json")
    assert run.code == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["in_sync"] is True
    assert [n["key"] for n in report["notes"]] == sorted(KEYS)
    for note in report["notes"]:
        name = note["key"]
        assert note["message"] == (
            f"--verify-material: KMS cannot prove which {KEYS[name][0]} material key {ids[name]} holds (no "
            f"public key); only its recorded check value {key_check_value(KEYS[name][5])} was compared"
        )
    assert "notes" not in json.loads(cli(account, "drift", str(folder), "--format", "json").stdout)
    show = cli(account, "show", str(folder), "--format", "json")
    assert show.code == 0, show.stderr
    shown = {k["name"]: k for k in json.loads(show.stdout)["keys"]}
    for name, (spec, *_, secret) in KEYS.items():
        assert (shown[name]["key_id"], shown[name]["spec"], shown[name]["state"]) == (
            ids[name],
            spec,
            "Enabled",
        )
        assert shown[name]["fingerprint"] == key_check_value(secret)
