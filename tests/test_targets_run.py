"""Several targets in one run (DESIGN section 12) through the CLI on local targets: each target its own
state file, KMS and lock; plans, drift and show merged with `target` on every item; `--only-target`;
the flags that name one KMS; a failing target that leaves the others whole. (Three emulators, the
official SDK and throttling: tests/test_targets_e2e.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from apply_support import run_cli
from cli_support import demo_stack

from provisioner.backend.local import LocalTransport
from provisioner.errors import KmsUnreachable
from provisioner.lock import LocalLock, this_run

REPO = Path(__file__).resolve().parent.parent

MANIFEST = """\
version: 1
stack: multi
backends:
  - {name: hz, type: local}
  - {name: sh, type: local}
  - {name: lab, type: local, path: lab-state.db}
defaults:
  instance: kst-local-software
keys:
  signer:
    spec: RSA_2048
    usage: SIGN/VERIFY
    aliases: [alias/multi/signer]
    material: {file: keys/receipts-signing.pem}
  tokens:
    spec: EC_P256
    usage: SIGN/VERIFY
    targets: [hz]
    material: {file: keys/api-tokens.pem}
"""


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return demo_stack(tmp_path, monkeypatch, MANIFEST)


def states(folder: Path) -> dict[str, Path]:
    return {
        "hz": folder / ".provision" / "kms-hz.db",
        "sh": folder / ".provision" / "kms-sh.db",
        "lab": folder / "lab-state.db",
    }


def public_keys(db: Path) -> dict[str, str]:
    """alias or key id -> the public key the state file's key holds, for every key with material."""
    t = LocalTransport(db, create=False)
    try:
        out = {}
        for k in t.call("ListKeys", {"PageSize": 100})["Keys"]["Key"]:
            meta = t.call("DescribeKey", {"KeyId": k["KeyId"]})["KeyMetadata"]
            if meta["KeyState"] == "Enabled" and meta.get("Origin") == "EXTERNAL":
                pub = t.call("GetPublicKey", {"KeyId": k["KeyId"], "KeyVersionId": meta["PrimaryKeyVersion"]})
                out[k["KeyId"]] = pub["PublicKey"]
        return out
    finally:
        t.close()


def test_apply_imports_the_same_material_into_one_key_per_target(stack: Path) -> None:
    r = run_cli(["plan", str(stack), "--format", "json"])
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [b["name"] for b in doc["backends"]] == ["hz", "sh", "lab"]
    assert [(c["target"], c["key"]) for c in doc["changes"]] == [
        ("hz", "signer"), ("hz", "tokens"), ("sh", "signer"), ("lab", "signer"),
    ]
    assert "failed_targets" not in doc and doc["summary"]["create"] == 4
    for line in ("using target hz: local backend", "using target sh: local backend", "using target lab:"):
        assert line in r.stderr
    assert not any(p.exists() for p in states(stack).values())  # reading wrote nothing

    r = run_cli(["apply", str(stack), "--auto-approve", "--format", "json"])
    assert r.code == 0, r.stdout + r.stderr
    result = json.loads(r.stdout[r.stdout.index("{"):])
    assert sorted((k["target"], k["key"]) for k in result["keys"]) == [
        ("hz", "signer"), ("hz", "tokens"), ("lab", "signer"), ("sh", "signer"),
    ]
    held = {t: public_keys(db) for t, db in states(stack).items()}
    assert [len(v) for v in held.values()] == [2, 1, 1]
    signer = {v for t in ("sh", "lab") for v in held[t].values()}
    assert len(signer) == 1 and signer <= set(held["hz"].values())  # one material, three keys

    r = run_cli(["plan", str(stack), "--detailed-exitcode"])
    assert r.code == 0, r.stdout + r.stderr

    r = run_cli(["show", str(stack), "--format", "json"])
    assert r.code == 0, r.stderr
    shown = json.loads(r.stdout)
    assert [(k["target"], k["name"]) for k in shown["keys"]] == [
        ("hz", "signer"), ("hz", "tokens"), ("sh", "signer"), ("lab", "signer"),
    ]
    r = run_cli(["drift", str(stack), "--format", "json"])
    assert r.code == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["in_sync"] is True


def test_only_target_reads_and_applies_those_targets_only(stack: Path) -> None:
    r = run_cli(["apply", str(stack), "--auto-approve", "--only-target", "sh"])
    assert r.code == 0, r.stdout + r.stderr
    assert [p.exists() for p in states(stack).values()] == [False, True, False]
    r = run_cli(["plan", str(stack), "--format", "json", "--only-target", "lab", "--only-target", "hz"])
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [b["name"] for b in doc["backends"]] == ["hz", "lab"]
    assert {c["target"] for c in doc["changes"]} == {"hz", "lab"}
    assert "using target sh" not in r.stderr


def test_an_unknown_only_target_is_refused_with_a_hint(stack: Path) -> None:
    r = run_cli(["plan", str(stack), "--only-target", "hzz"])
    assert r.code == 1
    assert "error: --only-target 'hzz': stack 'multi' has no such target (its targets are hz, sh, lab); " \
        "did you mean 'hz'?" in r.stderr
    assert "using" not in r.stderr


@pytest.mark.parametrize(
    ("args", "env", "flag"),
    [
        (["--region", "cn-hangzhou"], {}, "--region"),
        (["--endpoint", "http://127.0.0.1:1"], {}, "--endpoint"),
        ([], {"PROVISION_ENDPOINT": "http://127.0.0.1:1"}, "PROVISION_ENDPOINT"),
        (["--state", "x.db"], {}, "--state"),
    ],
)
def test_a_flag_that_names_one_kms_needs_one_target(
    stack: Path, args: list[str], env: dict[str, str], flag: str
) -> None:
    r = run_cli(["plan", str(stack), *args], env=env)
    assert r.code == 1
    assert (
        f"error: {flag}: stack 'multi' has 3 targets (hz, sh, lab), each with its own KMS in backends:; "
        f"{flag} names one: pick its target with --only-target NAME"
    ) in r.stderr
    # With one target picked, the flag applies to it.
    r = run_cli(["plan", str(stack), "--only-target", "lab", *args], env=env)
    assert f"{flag}: stack" not in r.stderr


def test_the_region_of_the_environment_is_not_read_with_several_targets(stack: Path) -> None:
    manifest = stack / "keys.yaml"
    manifest.write_text(
        MANIFEST.replace("{name: hz, type: local}", '{name: hz, type: alibaba, endpoint: "http://127.0.0.1:9"}')
    )
    r = run_cli(["plan", str(stack), "--only-target", "hz"], env={"ALIBABA_CLOUD_REGION_ID": "cn-beijing"})
    assert "cn-beijing" not in r.stderr
    assert "using target hz: alibaba at http://127.0.0.1:9" in r.stderr


def test_two_targets_on_one_kms_are_refused(stack: Path) -> None:
    same = MANIFEST.replace("{name: sh, type: local}", "{name: sh, type: local, path: lab-state.db}")
    (stack / "keys.yaml").write_text(same)
    r = run_cli(["plan", str(stack)])
    assert r.code == 1
    assert "error: targets 'lab' and 'sh' are one KMS" not in r.stderr
    assert "error: targets 'sh' and 'lab' are one KMS (local backend (" in r.stderr
    assert "a key's identity is per target, so each target must be a KMS of its own" in r.stderr


def test_a_failing_target_leaves_the_others_applied_and_says_which(
    stack: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A target whose every call fails (here: the lab target, as if throttled past its retries) ends
    its own run only: the others are planned and applied, and the documents and exit code name it."""
    real = LocalTransport.call

    def storm(self: LocalTransport, action: str, params: dict[str, object]) -> dict[str, object]:
        if self.db_path.name == "lab-state.db":
            raise KmsUnreachable(f"{action}: no answer after every retry (Throttling.User)")
        return real(self, action, params)

    monkeypatch.setattr(LocalTransport, "call", storm)
    r = run_cli(["apply", str(stack), "--auto-approve", "--format", "json"])
    assert r.code == 1
    assert "error: target lab: " in r.stderr and "no answer after every retry (Throttling.User)" in r.stderr
    result = json.loads(r.stdout[r.stdout.rindex('{\n  "format_version"'):])
    assert result["failed_targets"] == ["lab"] and result["ok"] is False
    assert "Throttling.User" in result["target_errors"]["lab"]
    done = [(k["target"], k["key"]) for k in result["keys"]]
    assert done == [("hz", "signer"), ("hz", "tokens"), ("sh", "signer")]
    monkeypatch.setattr(LocalTransport, "call", real)
    assert [len(public_keys(states(stack)[t])) for t in ("hz", "sh")] == [2, 1]
    monkeypatch.setattr(LocalTransport, "call", storm)

    r = run_cli(["plan", str(stack), "--format", "json", "--out", str(stack / "p.json")])
    assert r.code == 1
    doc = json.loads(r.stdout)
    assert doc["failed_targets"] == ["lab"] and list(doc["target_errors"]) == ["lab"]
    assert [c["target"] for c in doc["changes"]] == []  # hz and sh are applied: nothing to do there
    assert "error: 1 target(s) could not be planned: lab; the plan was not saved" in r.stderr
    text = run_cli(["plan", str(stack)]).stdout
    assert "No changes in the targets planned; 1 target(s) could not be planned (lab): their keys are " \
        "unknown." in text and "The live keys match" not in text
    assert not (stack / "p.json").exists()
    r = run_cli(["drift", str(stack), "--format", "json"])
    assert r.code == 1 and json.loads(r.stdout)["failed_targets"] == ["lab"]
    r = run_cli(["show", str(stack), "--format", "json"])
    assert r.code == 1 and json.loads(r.stdout)["failed_targets"] == ["lab"]

    monkeypatch.setattr(LocalTransport, "call", real)  # the storm is over: the next apply converges
    assert run_cli(["apply", str(stack), "--auto-approve"]).code == 0
    assert run_cli(["plan", str(stack), "--detailed-exitcode"]).code == 0


def test_the_lock_is_per_target(stack: Path) -> None:
    """--only-target shards of one stack do not lock each other out (issue 13, acceptance 4): a lock
    held on target sh refuses an apply of sh, and lets one of hz through."""
    from datetime import UTC, datetime

    db = states(stack)["sh"]
    assert run_cli(["apply", str(stack), "--auto-approve", "--only-target", "sh"]).code == 0
    lock = LocalLock(db, "multi", "sh")
    assert lock.take(this_run("sh", datetime.now(UTC)), datetime.now(UTC)) is None
    r = run_cli(["apply", str(stack), "--auto-approve", "--only-target", "sh"])
    assert r.code == 1
    assert 'stack "multi" (target sh) is locked by ' in r.stderr
    r = run_cli(["apply", str(stack), "--auto-approve", "--only-target", "hz"])
    assert r.code == 0, r.stdout + r.stderr
    r = run_cli(["unlock", "multi", str(stack)])
    assert r.code == 1
    assert "error: stack 'multi' has a lock per target (hz, sh, lab): name the one to unlock with " \
        "--only-target NAME" in r.stderr
    r = run_cli(["unlock", "multi", str(stack), "--only-target", "sh"])
    assert r.code == 0 and 'unlocked stack "multi" (target sh)' in r.stderr


def test_a_saved_plan_of_several_targets_applies_on_its_targets(stack: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    r = run_cli(["plan", str(stack), "--only-target", "hz", "--only-target", "lab", "--out", str(plan)])
    assert r.code == 0, r.stderr
    r = run_cli(["apply", "--plan", str(plan), str(stack), "--only-target", "sh"])
    assert r.code == 1
    assert "error: --only-target sh: the saved plan is for target(s) hz, lab; a saved plan is applied " \
        "whole" in r.stderr
    r = run_cli(["apply", "--plan", str(plan), str(stack)])
    assert r.code == 0, r.stdout + r.stderr
    assert [p.exists() for p in states(stack).values()] == [True, False, True]
    assert run_cli(["plan", str(stack), "--only-target", "hz", "--detailed-exitcode"]).code == 0


def test_the_views_group_by_target(stack: Path) -> None:
    """Text and markdown say where each target was read and group its changes under it."""
    r = run_cli(["plan", str(stack)])
    assert r.code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:7] == [
        "Stack 'multi', 3 targets",
        "  Target hz: local (path stack/.provision/kms-hz.db)",
        "    Endpoint: local:stack/.provision/kms-hz.db",
        "  Target sh: local (path stack/.provision/kms-sh.db)",
        "    Endpoint: local:stack/.provision/kms-sh.db",
        "  Target lab: local (path stack/lab-state.db)",
        "    Endpoint: local:stack/lab-state.db",
    ]
    headings = [line for line in lines if line.startswith("Target ")]
    assert headings == ["Target hz: 2 change(s)", "Target sh: 1 change(s)", "Target lab: 1 change(s)"]
    assert lines.index("Target sh: 1 change(s)") > lines.index("  + tokens: create, import")

    r = run_cli(["plan", str(stack), "--format", "markdown"])
    md = r.stdout
    assert "| target | backend | endpoint | changes |" in md
    row = "| `hz` | local (path stack/\\.provision/kms-hz\\.db) | `local:stack/.provision/kms-hz.db` | 2 |"
    assert row in md
    assert md.index("### Target `hz`") < md.index("### Target `sh`") < md.index("### Target `lab`")

    assert run_cli(["apply", str(stack), "--auto-approve"]).code == 0
    (stack / "keys.yaml").write_text(MANIFEST.replace("[alias/multi/signer]", "[alias/multi/signer-2]"))
    r = run_cli(["drift", str(stack)])
    assert r.code == 2
    drifted = [line for line in r.stdout.splitlines() if line.startswith("  ! ")]
    assert [line.split(":")[0] for line in drifted] == ["  ! hz/signer", "  ! sh/signer", "  ! lab/signer"]


def test_a_saved_plan_is_applied_whole_or_not_at_all(stack: Path, tmp_path: Path) -> None:
    """A target whose part of a saved plan is stale (here: applied out of band since) refuses every
    target's part, before any write: the reviewed plan is never carried out as a subset."""
    plan = tmp_path / "plan.json"
    assert run_cli(["plan", str(stack), "--out", str(plan)]).code == 0
    assert run_cli(["apply", str(stack), "--auto-approve", "--only-target", "sh"]).code == 0
    r = run_cli(["apply", "--plan", str(plan), str(stack)])
    assert r.code == 1
    assert "error: target sh: " in r.stderr
    assert "error: the saved plan cannot be applied on 1 target(s) (sh); nothing applied on any target: " \
        "make a new plan" in r.stderr
    assert not public_keys_or_none(states(stack)["hz"]) and not public_keys_or_none(states(stack)["lab"])


def public_keys_or_none(db: Path) -> dict[str, str]:
    return public_keys(db) if db.exists() else {}


def test_a_change_twice_in_a_saved_plan_is_refused(stack: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    assert run_cli(["plan", str(stack), "--only-target", "lab", "--out", str(plan)]).code == 0
    doc = json.loads(plan.read_text())
    doc["changes"].append(doc["changes"][0])
    doc["summary"] = {k: v * 2 if v else v for k, v in doc["summary"].items()}
    plan.write_text(json.dumps(doc))
    r = run_cli(["apply", "--plan", str(plan), str(stack)])
    assert r.code == 1
    assert "key 'signer': the plan has its change twice (was the file edited by hand?)" in r.stderr
    assert not public_keys_or_none(states(stack)["lab"])


@pytest.mark.parametrize(
    ("hz", "sh"),
    [
        ("{name: hz, type: alibaba, region: cn-hangzhou}",
         "{name: sh, type: alibaba, region: cn-hangzhou, endpoint: kms-vpc.cn-hangzhou.aliyuncs.com}"),
        ('{name: hz, type: alibaba, region: cn-hangzhou, endpoint: "http://127.0.0.1:9"}',
         '{name: sh, type: alibaba, region: cn-shanghai, endpoint: "http://127.0.0.1:9"}'),
    ],
    ids=["public-and-vpc-endpoint", "one-emulator-two-regions"],
)
def test_two_targets_on_one_alibaba_kms_are_refused(stack: Path, hz: str, sh: str) -> None:
    (stack / "keys.yaml").write_text(
        MANIFEST.replace("{name: hz, type: local}", hz).replace("{name: sh, type: local}", sh)
    )
    r = run_cli(["plan", str(stack)])
    assert r.code == 1
    assert "error: targets 'hz' and 'sh' are one KMS (" in r.stderr
    # Another account (another profile) in the same region is another KMS.
    (stack / "creds.ini").write_text("[a]\ntype = access_key\naccess_key_id = x\naccess_key_secret = y\n")
    env = {"ALIBABA_CLOUD_CREDENTIALS_FILE": str(stack / "creds.ini"), "HOME": str(stack)}
    args = ["plan", str(stack), "--target-profile", "sh=a", "--only-target", "hz", "--only-target", "sh"]
    r = run_cli(args, env=env)
    assert "are one KMS" not in r.stderr


def test_an_apply_with_a_failed_target_is_not_called_complete() -> None:
    from provisioner.apply import ApplyResult, KeyOutcome
    from provisioner.views.apply import ApplyText

    result = ApplyResult("multi", [KeyOutcome("signer", "key-1", ["created"], target="hz")],
                         failed_targets={"lab": "ListKeys: no answer after every retry"})
    text = ApplyText(color=False).result(result)
    assert text.splitlines() == [
        "Apply incomplete: 1 key(s) changed, 0 failed, but 1 target(s) not applied (lab). Fix each cause "
        "below, then plan and apply again.",
        "  target lab: not applied: ListKeys: no answer after every retry",
        "1 target(s) failed: lab",
    ]
