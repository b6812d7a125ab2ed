"""Attacks on `adopt:` (found by the hostile pull request pass): one live key named by two entries of a
set through different references (its KeyId, its ARN, its alias). The set's literal-value check cannot
see that they are one key, and a symmetric key's material cannot be proven by KMS, so the plan must
refuse it itself: otherwise the apply adopts one key twice and leaves the later name and check value
on it. Also what plan and discover say of such keys: a key of this stack whose name tag was stripped
(no "as None"), and how to pin a symmetric key KMS cannot prove.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cli_support import run_main

from provisioner.backend.base import Kms
from provisioner.backend.local import LocalTransport

DB = Path("manifests") / ".provision" / "kms.db"  # beside the manifests (DESIGN section 10)


def _write(folder: Path, stack: str, keys: dict[str, dict[str, object]]) -> None:
    doc = {
        "version": 1,
        "stack": stack,
        "defaults": {"instance": "kst-local-software", "protection": "SOFTWARE"},
        "keys": keys,
    }
    (folder / "manifests" / "s.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def _symmetric(material: str, **fields: object) -> dict[str, object]:
    return {
        "spec": "Aliyun_AES_256", "usage": "ENCRYPT/DECRYPT", "description": "vault", "expiry": "never",
        "material": {"file": f"keys/{material}", "format": "raw"}, **fields,
    }


@pytest.fixture
def unmanaged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    """A symmetric key with alias/vault that no stack manages (made by a stack, then stripped of its
    reserved tags, as a key made by hand looks); the current directory holds keys a.key and b.key."""
    monkeypatch.chdir(tmp_path)
    for name in ("PROVISION_BACKEND", "PROVISION_ENDPOINT", "ALIBABA_CLOUD_REGION_ID"):
        monkeypatch.delenv(name, raising=False)
    keys = tmp_path / "manifests" / "keys"
    keys.mkdir(parents=True)
    for name, first in (("a.key", 0), ("b.key", 1)):
        (keys / name).write_bytes(bytes(range(first, first + 32)))
        (keys / name).chmod(0o600)
    _write(tmp_path, "tmp", {"vault": _symmetric("a.key", aliases=["alias/vault"])})
    code, _, err = run_main(["apply", "manifests", "--auto-approve"], capsys)
    assert code == 0, err
    kms = Kms(LocalTransport(tmp_path / DB), info={"type": "local"})
    (key_id,) = kms.list_keys()
    kms.untag_resource(key_id, [k for k in kms.list_resource_tags(key_id) if k.startswith("byok-")])
    for alias in kms.list_aliases_by_key_id(key_id):  # and its identity claim: a key made by hand has none
        if alias.startswith("alias/byok-provisioner/"):
            kms.delete_alias(alias)
    kms.close()
    return key_id


def _tags(key_id: str) -> dict[str, str]:
    kms = Kms(LocalTransport(DB), info={"type": "local"})
    try:
        return dict(kms.list_resource_tags(key_id))
    finally:
        kms.close()


@pytest.mark.parametrize("second", ["alias/vault", "arn"])
def test_one_key_adopted_by_two_entries_is_refused(
    unmanaged: str, second: str, capsys: pytest.CaptureFixture[str]
) -> None:
    key_id = unmanaged
    if second == "arn":
        kms = Kms(LocalTransport(DB), info={"type": "local"})
        second = kms.describe_key(key_id).arn
        kms.close()
    _write(Path.cwd(), "evil", {
        "one": _symmetric("a.key", adopt=key_id, aliases=["alias/vault"]),
        "two": _symmetric("b.key", adopt=second),
    })
    for command in (["plan", "manifests", "--no-color"], ["apply", "manifests", "--auto-approve"]):
        code, out, err = run_main(command, capsys)
        assert code == 1, (command, out, err)
        for name, other, ref in (("one", "two", second), ("two", "one", key_id)):
            line = (
                f"{name}: duplicate-identity: adopt: names key {key_id}, which key {other!r} adopts too "
                f"(adopt: {ref}): one KMS key is one key of the set; keep one adopt: of it"
            )
            assert line in out, (command, out)
        assert "the plan is blocked by 2 violation(s)" in err
    assert _tags(key_id) == {}  # nothing adopted


def test_one_key_adopted_once_still_plans(unmanaged: str, capsys: pytest.CaptureFixture[str]) -> None:
    _write(Path.cwd(), "evil", {"one": _symmetric("a.key", adopt="alias/vault", aliases=["alias/vault"])})
    code, out, err = run_main(["plan", "manifests", "--no-color"], capsys)
    assert code == 0, err
    assert f"< one ({unmanaged}): adopt" in out


def test_adopting_a_key_of_this_stack_without_its_name_tag_says_so(
    unmanaged: str, capsys: pytest.CaptureFixture[str]
) -> None:
    kms = Kms(LocalTransport(DB), info={"type": "local"})
    kms.tag_resource(unmanaged, {"byok-provisioner:stack": "evil"})
    kms.close()
    _write(Path.cwd(), "evil", {"one": _symmetric("a.key", adopt="alias/vault", aliases=["alias/vault"])})
    code, out, err = run_main(["plan", "manifests", "--no-color"], capsys)
    assert code == 1, out
    assert (
        f"one: managed-elsewhere: key {unmanaged} carries the tag of this stack but no name tag: restore its "
        f"tag byok-provisioner:name=one by hand, or remove adopt: to create a new key"
    ) in out
    assert "None" not in out + err


def test_discover_tells_how_to_pin_a_symmetric_key(
    unmanaged: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(["discover", "--state", str(DB)], capsys)  # no PATH: name the state
    assert code == 0, err
    assert (
        "  # Enabled: KMS cannot show which symmetric material it holds; pin material.fingerprint: kcv:... "
        "(provision fingerprint FILE --material-format raw|hex|base64)\n  vault:\n"
        f"    adopt: {unmanaged}\n"
    ) in out
    assert "public key" not in out
