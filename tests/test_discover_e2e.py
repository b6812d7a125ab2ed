"""`provision discover` end to end on both backends (issue 12 item 1, DESIGN section 10): keys made outside
the tool with the official SDK (the vendor guide's flow: CreateKey EXTERNAL, GetParametersForImport,
wrap, ImportKeyMaterial) come out as manifest YAML with `adopt:` and the live fingerprint; managed keys,
keys of another origin (test_discover.py), the provisioner's reserved-alias keys and keys pending
deletion do not. What a live key holds is hostile: a description with template syntax, ANSI escapes and
a newline renders as itself through the manifest loader and never reaches the terminal raw.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import backends
import pytest
from alibabacloud_kms20160120 import models
from backends import Backend, LocalBackend
from cryptography.hazmat.primitives import serialization
from e2e_support import Entry, Stack, enter_account, run_cli, write_private_key

from provisioner.backend.base import READ_ONLY_ACTIONS
from provisioner.manifest import validate_manifests
from provisioner.material import fingerprint_of_key_file
from provisioner.wrapping import wrap_rsa_aes

pytestmark = pytest.mark.slow
BOTH_BACKENDS = True

INSTANCE = "kst-local-software"
HOSTILE = '{{ env("PROVISION_VAR_SECRET") }} \x1b[31mred\x1b[0m\nsecond line {% if 1 %}x{% endif %} {# c #}'
SECRET = "value-that-must-never-appear"


@pytest.fixture
def account(backend: Backend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Backend:
    monkeypatch.setenv("PROVISION_VAR_SECRET", SECRET)
    return enter_account(backend, monkeypatch, tmp_path)


def create_key(client: Any, spec: str = "EC_P256", description: str = "") -> str:
    body = client.create_key(
        models.CreateKeyRequest(
            key_spec=spec, key_usage="SIGN/VERIFY", origin="EXTERNAL", protection_level="SOFTWARE",
            dkmsinstance_id=INSTANCE, description=description or None,
        )
    ).body
    return str(body.key_metadata.key_id)


def import_pem(client: Any, key_id: str, pem: Path) -> None:
    """The vendor guide's steps 2 to 5: download the wrapping key, wrap the PKCS#8 DER, import."""
    params = client.get_parameters_for_import(
        models.GetParametersForImportRequest(
            key_id=key_id, wrapping_key_spec="RSA_2048",
            wrapping_algorithm="RSAES_OAEP_SHA_256_AES_256_ECB_PKCS7_PAD",
        )
    ).body
    private = serialization.load_pem_private_key(pem.read_bytes(), None)
    pkcs8 = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    wrapped = base64.b64encode(wrap_rsa_aes(base64.b64decode(params.public_key), pkcs8)).decode()
    client.import_key_material(
        models.ImportKeyMaterialRequest(
            key_id=key_id, encrypted_key_material=wrapped, import_token=params.import_token,
            key_material_expire_unix=0,
        )
    )


def alias(client: Any, name: str, key_id: str) -> None:
    client.create_alias(models.CreateAliasRequest(alias_name=name, key_id=key_id))


def tag(client: Any, key_id: str, tags: dict[str, str]) -> None:
    rows = [{"TagKey": k, "TagValue": v} for k, v in tags.items()]
    client.tag_resource(models.TagResourceRequest(key_id=key_id, tags=json.dumps(rows)))


def discover(account: Backend, *args: str) -> tuple[Any, Counter[str]]:
    """Run discover; (the run, the calls its KMS received)."""
    if not isinstance(account, LocalBackend):
        before = Counter(account.stats()["calls"])
        run = run_cli(["discover", *args, *account.args])
        calls = Counter(account.stats()["calls"])
        calls.subtract(before)
        return run, +calls
    # discover reads no manifest: the local backend is .provision/kms.db here. A hard link shares the
    # test's state file (closed first, so that its journal is in it), so the SDK's edits and discover's
    # read are of one KMS; its calls are counted under the path the CLI opens.
    account.close()
    link = Path.cwd() / ".provision" / "kms.db"
    link.parent.mkdir(exist_ok=True)
    os.link(account.db, link)
    counted = backends._local_calls.setdefault(link, Counter())
    try:
        run = run_cli(["discover", *args, *account.args])
        return run, Counter(counted)
    finally:
        del backends._local_calls[link]
        link.unlink()


def with_sources(text: str, files: dict[str, str], *, adopt: bool = True) -> str:
    """The discovered document with `file:` added to each key's material (by the key id `adopt:` names),
    as the user would add it. `adopt=False` drops the `adopt:` lines."""
    out: list[str] = []
    current: str | None = None
    pending = False

    def close() -> None:
        if pending and current is not None:
            out.extend(["    material:", f"      file: {files[current]}"])

    for line in text.splitlines():
        if re.match(r"^  \S", line) and not line.startswith("  #"):
            close()
            current, pending = None, False
        m = re.match(r"^    adopt: (\S+)$", line)
        if m:
            current, pending = m.group(1), True
            if not adopt:
                continue
        out.append(line)
        if line == "    material:" and current is not None:
            out.append(f"      file: {files[current]}")
            pending = False
    close()
    return "\n".join(out) + "\n"


def test_discover_prints_yaml_for_unmanaged_external_keys_only(account: Backend, tmp_path: Path) -> None:
    client = account.sdk_client()
    # A key this tool manages (another stack's): never discovered.
    managed = Stack(tmp_path / "managed", [Entry("mine", aliases=("alias/e2e/mine",))],
                    backend=account.manifest_backend)
    managed.write()
    assert run_cli(["apply", str(managed.folder), "--auto-approve", *account.args]).code == 0

    keys = tmp_path / "keys"
    keys.mkdir()
    signing_pem, disabled_pem = keys / "signing.pem", keys / "disabled.pem"
    write_private_key(signing_pem, "EC_P256")
    write_private_key(disabled_pem, "EC_P256")
    signing = create_key(client, description=HOSTILE)
    import_pem(client, signing, signing_pem)
    alias(client, "alias/team/signing", signing)
    alias(client, "alias/zz-second", signing)
    tag(client, signing, {"team": "a:b @c", "cost center": "payments"})
    disabled = create_key(client, description="made by hand")
    import_pem(client, disabled, disabled_pem)
    client.disable_key(models.DisableKeyRequest(key_id=disabled))
    empty = create_key(client, spec="RSA_2048")
    alias(client, "alias/team/empty", empty)
    # Not discovered: a key holding a reserved (claim) alias, one pending deletion. (The emulator makes
    # EXTERNAL keys only; test_discover.py covers the origin filter.)
    claimed = create_key(client)
    alias(client, "alias/byok-provisioner/other/x", claimed)
    doomed = create_key(client)
    client.schedule_key_deletion(models.ScheduleKeyDeletionRequest(key_id=doomed, pending_window_in_days=7))

    run, calls = discover(account, "--stack", "found")
    assert run.code == 0, run.stderr
    assert set(calls) <= READ_ONLY_ACTIONS - {"GetParametersForImport"}, calls
    # The tags and aliases of all six keys come in one page each; DescribeKey only for the four that
    # no stack tag or reserved alias claims; GetPublicKey only for the enabled one with material.
    pages = {"ListKeys": 1, "ListTagResources": 1, "ListAliases": 1}
    assert calls == {**pages, "DescribeKey": 4, "GetPublicKey": 1}
    assert run.stderr.splitlines()[-1] == f"warning: key {doomed}: left out: it is pending deletion"
    assert "\x1b" not in run.stdout and SECRET not in run.stdout
    fp = fingerprint_of_key_file(signing_pem)
    assert run.stdout.splitlines()[4:] == [
        "version: 1",
        "stack: found",
        "keys:",
        "  # Disabled: no fingerprint read (GetPublicKey needs an enabled key); enable it before adopting",
        f"  {disabled}:",
        f"    adopt: {disabled}",
        "    spec: EC_P256",
        "    usage: SIGN/VERIFY",
        "    protection: SOFTWARE",
        f"    instance: {INSTANCE}",
        "    description: made by hand",
        "    aliases: []",
        "    tags: {}",
        "    expiry: never",
        "  # PendingImport: holds no material; add the material to import into it",
        "  team-empty:",
        f"    adopt: {empty}",
        "    spec: RSA_2048",
        "    usage: SIGN/VERIFY",
        "    protection: SOFTWARE",
        f"    instance: {INSTANCE}",
        "    description: ''",
        "    aliases:",
        "    - alias/team/empty",
        "    tags: {}",
        "    expiry: never",
        "  team-signing:",
        f"    adopt: {signing}",
        "    spec: EC_P256",
        "    usage: SIGN/VERIFY",
        "    protection: SOFTWARE",
        f"    instance: {INSTANCE}",
        "    description: \"{{ '{{' }} env(\\\"PROVISION_VAR_SECRET\\\") }} \\e[31mred\\e[0m\\nsecond line "
        "{{ '{%' }} if 1 %}x{{ '{%' }} endif %} {{ '{#' }} c #}\"",
        "    aliases:",
        "    - alias/team/signing",
        "    - alias/zz-second",
        "    tags:",
        "      cost center: payments",
        "      team: a:b @c",
        "    expiry: never",
        "    material:",
        f"      fingerprint: {fp}",
    ]

    # Saved as a manifest with the material added, it renders as itself: the description is the live
    # one to the byte (the template in it was never evaluated) and the pin matches the material.
    folder = tmp_path / "adopted"
    folder.mkdir()
    (folder / "keys").mkdir()
    files = {}
    for key_id, pem in ((signing, signing_pem), (disabled, disabled_pem)):
        (folder / "keys" / pem.name).write_bytes(pem.read_bytes())
        (folder / "keys" / pem.name).chmod(0o600)
        files[key_id] = f"keys/{pem.name}"
    empty_pem = folder / "keys" / "empty.pem"
    write_private_key(empty_pem, "RSA_2048")
    files[empty] = "keys/empty.pem"
    (folder / "found.yaml").write_text(with_sources(run.stdout, files))
    checked = run_cli(["validate", str(folder)])
    assert (checked.code, checked.stdout) == (0, "valid: 3 key(s) in 1 file, stack found, material checked\n")
    assert checked.stderr == ""
    ms, _, _ = validate_manifests([folder], variables={}, offline_material=True)
    by_name = {k.name: k for k in ms.keys}
    assert sorted(by_name) == [disabled, "team-empty", "team-signing"]
    got = by_name["team-signing"]
    assert got.description == HOSTILE
    assert dict(got.tags) == {"team": "a:b @c", "cost center": "payments"}
    assert got.material is not None and got.material.fingerprint == fp
    adopted = {k.name: k.adopt for k in ms.keys}
    assert adopted == {disabled: disabled, "team-empty": empty, "team-signing": signing}

    # Planned, the set adopts every key (the disabled one once enabled, as discover's note says), and
    # after the apply plans nothing.
    text = with_sources(run.stdout, files)
    if account.manifest_backend is not None:  # the local state file is the test's, not ./.provision
        text = text.replace("\nkeys:\n", f"\nbackend: {json.dumps(account.manifest_backend)}\nkeys:\n", 1)
    (folder / "found.yaml").write_text(text)
    planned = run_cli(["plan", str(folder), "--format", "json", *account.args])
    assert planned.code == 1, planned.stderr
    (blocked,) = json.loads(planned.stdout)["violations"]
    assert (blocked["key"], blocked["code"]) == (disabled, "material-immutable")
    assert "enable it first" in blocked["message"]
    client.enable_key(models.EnableKeyRequest(key_id=disabled))
    planned = run_cli(["plan", str(folder), "--format", "json", "--detailed-exitcode", *account.args])
    assert planned.code == 2, planned.stderr
    doc = json.loads(planned.stdout)
    assert {c["key"]: (c["key_id"], c["actions"]) for c in doc["changes"]} == {
        disabled: (disabled, ["adopt"]),
        "team-empty": (empty, ["adopt", "reimport"]),
        "team-signing": (signing, ["adopt"]),
    }
    applied = run_cli(["apply", str(folder), "--auto-approve", *account.args])
    assert applied.code == 0, applied.stdout + applied.stderr
    again = run_cli(["plan", str(folder), "--detailed-exitcode", *account.args])
    assert again.code == 0 and "No changes" in again.stdout, again.stdout + again.stderr
