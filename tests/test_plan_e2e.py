"""`provision plan` end to end, on both backends (through the official SDK against the emulator server,
and on the local backend's state file), and on the local backend with no cloud account. Issue 5's
acceptance: empty KMS, alias conflicts, an endpoint with nothing listening, refused credentials,
output formats, saved plans free of private material.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from backends import Backend
from cli_support import run_on_a_terminal
from e2e_support import (
    ANSI,
    STACK,
    Entry,
    Stack,
    alibaba_args,
    assert_no_secret,
    closed_port,
    run_cli,
)

from provisioner.backend.base import READ_ONLY_ACTIONS
from provisioner.plan.planfile import load_plan, save_plan

pytestmark = pytest.mark.slow
BOTH_BACKENDS = True

KEYS = [
    Entry(
        "receipts",
        spec="RSA_2048",
        aliases=("alias/e2e/receipts",),
        description="Signs receipts",
        tags={"team": "payments"},
        pin=True,
    ),
    Entry("tokens", aliases=("alias/e2e/tokens", "alias/e2e/tokens-v1"), description="Signs tokens"),
    Entry("ledger", spec="EC_P256K", usage="SIGN/VERIFY", expiry="2099-12-31T23:59:59Z"),
]


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """The three-key manifest in tmp_path/m, run from tmp_path (where a local backend would live)."""
    monkeypatch.chdir(tmp_path)
    s = Stack(tmp_path / "m", KEYS)
    s.write()
    return s


@pytest.fixture
def account(backend: Backend, stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Backend:
    """The KMS under test, with its credential (if any) in the environment for the SDK's default chain,
    and the stack's manifest pointed at it (a local state file is named in the manifest)."""
    for name, value in backend.env.items():
        monkeypatch.setenv(name, value)
    stack.backend = backend.manifest_backend
    stack.write()
    return backend


def pem_files(stack: Stack) -> list[Path]:
    return sorted(stack.key_folder.glob("*.pem"))


def test_empty_kms_plans_create_and_import_for_every_key_and_writes_nothing(
    stack: Stack, account: Backend, tmp_path: Path
) -> None:
    before = account.stats()["calls"]
    assert before == {}
    run = run_cli(["plan", str(stack.folder), "--format", "json", *account.args])
    assert run.code == 0, run.stderr
    assert run.stderr == account.announcement(empty=True) + "\n"
    doc = run.json()
    assert doc["stack"] == STACK
    assert doc["backend"] == account.document
    assert doc["violations"] == []
    assert [(c["key"], c["key_id"], c["actions"]) for c in doc["changes"]] == [
        ("ledger", None, ["create", "import"]),
        ("receipts", None, ["create", "import"]),
        ("tokens", None, ["create", "import"]),
    ]
    assert all(c["reason"] == "key does not exist" for c in doc["changes"])
    by_key = {c["key"]: c for c in doc["changes"]}
    assert by_key["tokens"]["aliases_to_create"] == ["alias/e2e/tokens", "alias/e2e/tokens-v1"]
    assert by_key["receipts"]["after"]["spec"] == "RSA_2048"
    assert by_key["receipts"]["material"]["fingerprint"] == stack.fingerprints["receipts"]
    assert doc["summary"] == {
        "create": 3, "import": 3, "adopt": 0, "reimport": 0, "delete-material": 0, "update": 0,
        "schedule-deletion": 0, "enable": 0, "disable": 0, "cancel-deletion": 0, "rotate": 0,
    }
    calls = account.stats()["calls"]
    # Only reads, and not even GetParametersForImport (it mints an import token).
    assert set(calls) <= READ_ONLY_ACTIONS - {"GetParametersForImport"}, calls
    # The instances of the keys to create are checked (one instance here): a list, one GetKmsInstance.
    assert calls == {"ListTagResources": 1, "ListAliases": 1, "ListKmsInstances": 1, "GetKmsInstance": 1}
    assert_no_secret(run.stdout + run.stderr, pem_files(stack))


def test_detailed_exitcode_markdown_and_a_saved_plan_without_secrets(
    stack: Stack, account: Backend, tmp_path: Path
) -> None:
    out = tmp_path / "plan.json"
    args = ["plan", str(stack.folder), *account.args]
    changes = run_cli([*args, "--detailed-exitcode", "--out", str(out)])
    assert changes.code == 2, changes.stderr
    assert changes.stderr.splitlines()[-1] == (
        f"saved the plan to {out}; apply it with: provision apply --plan {out}"
    )
    assert "Plan: 3 to create, 3 to import, 0 to reimport" in changes.stdout
    assert ANSI.search(changes.stdout) is None  # not a terminal: no colour

    text = out.read_text(encoding="utf-8")
    assert out.stat().st_mode & 0o777 == 0o600
    assert_no_secret(text, pem_files(stack))
    assert save_plan(load_plan(text)) == text  # round-trips byte for byte
    saved = json.loads(text)
    assert [c["actions"] for c in saved["changes"]] == [["create", "import"]] * 3
    assert {c["material"]["kind"] for c in saved["changes"]} == {"file"}

    markdown = run_cli([*args, "--format", "markdown"])
    assert markdown.code == 0, markdown.stderr
    lines = markdown.stdout.splitlines()
    assert lines[0] == f"## Plan for stack `{STACK}`"
    header = lines.index(
        "| create | import | adopt | reimport | delete-material | update | schedule-deletion | enable "
        "| disable | cancel-deletion | rotate |"
    )
    assert lines[header + 1] == "|---|---|---|---|---|---|---|---|---|---|---|"
    assert lines[header + 2] == "| 3 | 3 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 |"
    assert "#### `+` `receipts`: create, import" in lines
    assert_no_secret(markdown.stdout + changes.stdout + changes.stderr, pem_files(stack))

    # After an apply, the same plan has no changes: --detailed-exitcode says 0.
    applied = run_cli(["apply", str(stack.folder), "--auto-approve", *account.args])
    assert applied.code == 0, applied.stderr
    again = run_cli([*args, "--detailed-exitcode"])
    assert again.code == 0, again.stderr
    assert again.stdout.endswith("No changes. The live keys match the manifests.\n")
    assert_no_secret(applied.stdout + applied.stderr + again.stdout, pem_files(stack))


def test_alias_held_by_a_key_outside_the_stack_blocks_the_plan(
    stack: Stack, account: Backend, tmp_path: Path
) -> None:
    from alibabacloud_kms20160120 import models

    client = account.sdk_client()
    created = client.create_key(
        models.CreateKeyRequest(
            key_spec="EC_P256",
            key_usage="SIGN/VERIFY",
            origin="EXTERNAL",
            dkmsinstance_id="kst-local-software",
            description="someone else's key",
        )
    )
    foreign = created.body.key_metadata.key_id
    client.create_alias(models.CreateAliasRequest(alias_name="alias/e2e/tokens-v1", key_id=foreign))

    out = tmp_path / "blocked.json"
    run = run_cli(
        ["plan", str(stack.folder), "--format", "json", "--out", str(out), *account.args]
    )
    assert run.code == 1
    assert run.stderr.splitlines()[-1] == "error: the plan is blocked by 1 violation(s)"
    doc = run.json()  # the whole document is still printed
    assert doc["violations"] == [
        {
            "key": "tokens",
            "code": "alias-conflict",
            "message": f"alias alias/e2e/tokens-v1 points at key {foreign}, which is not managed by stack "
            f"'{STACK}': remove the alias from the manifest, or delete or move it off that key by hand",
            "target": "default",
        }
    ]
    # The other keys' changes are shown; the blocked key gets none until its alias is sorted out.
    assert [c["key"] for c in doc["changes"]] == ["ledger", "receipts"]
    assert not out.exists()  # a blocked plan is never saved

    text = run_cli(["plan", str(stack.folder), *account.args])
    assert text.code == 1
    assert f"! tokens: alias-conflict: alias alias/e2e/tokens-v1 points at key {foreign}" in text.stdout
    assert "Plan blocked: 1 violation(s); nothing will be applied." in text.stdout


@pytest.mark.one_backend("alibaba", "credentials: the local backend takes none")
def test_wrong_secret_exits_1_saying_the_credentials_were_refused(
    stack: Stack, emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", emulator.access_key_id)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "not-the-secret")
    run = run_cli(["plan", str(stack.folder), *alibaba_args(emulator.url)])
    assert run.code == 1
    assert run.stdout == ""
    last = run.stderr.splitlines()[-1]
    assert last.startswith("error: ListTagResources: ")
    assert ": the credentials were refused (set ALIBABA_CLOUD_ACCESS_KEY_ID and " in last
    assert "not-the-secret" not in run.stderr
    # The two first reads go out together; each is refused once and not retried.
    assert emulator.stats()["calls"] == {"ListTagResources": 1, "ListAliases": 1}


@pytest.mark.one_backend("alibaba", "a connection that is refused: the local backend makes none")
def test_nothing_listening_exits_1_soon_after_the_last_retry(stack: Stack, tmp_path: Path) -> None:
    """A real process: exit code, the one-line message naming the endpoint, no traceback."""
    url = f"http://127.0.0.1:{closed_port()}"
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    env.update(
        ALIBABA_CLOUD_ACCESS_KEY_ID="AK", ALIBABA_CLOUD_ACCESS_KEY_SECRET="SK", PROVISION_RETRY_SECONDS="2"
    )
    code = "import sys; from provisioner.cli import main; main(sys.argv[1:])"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", code, "plan", str(stack.folder), *alibaba_args(url)],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == f"using alibaba cn-hangzhou at {url}"
    assert lines[1].startswith(f"error: cannot reach KMS at {url}: connection refused (gave up after ")
    assert len(lines) == 2
    assert proc.stdout == ""
    attempts = int(lines[1].split("gave up after ")[1].split()[0])
    assert attempts >= 2  # it did retry
    # 2 s of retries plus interpreter start-up and material checks: seconds, not the default 30 s.
    assert elapsed < 12.0, elapsed


@pytest.mark.one_backend("local", "the variable is checked before any backend is used")
def test_retry_budget_variable_is_checked(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVISION_RETRY_SECONDS", "soon")
    run = run_cli(["plan", str(stack.folder), "--backend", "local"])
    assert run.code == 1
    assert run.stderr.splitlines()[-1] == (
        "error: PROVISION_RETRY_SECONDS: expected a number of seconds from 0 to 600, got 'soon'"
    )


@pytest.mark.one_backend("local", "the local backend's default state file, with no cloud account")
def test_local_backend_plans_with_no_account_and_announces_itself(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("ALIBABA_CLOUD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.alibabacloud profile either
    run = run_cli(["plan", str(stack.folder), "--detailed-exitcode"])
    assert run.code == 2, run.stderr
    # The stack's state is beside its manifests (DESIGN section 10), wherever the command runs.
    assert run.stderr == "using local backend (m/.provision/kms.db), which does not exist yet: an empty KMS\n"
    assert run.stdout.startswith(
        f"Stack '{STACK}', backend local (path m/.provision/kms.db)\nEndpoint: local:m/.provision/kms.db\n\n"
    )
    assert "Plan: 3 to create, 3 to import" in run.stdout
    # Reading writes nothing: the missing state file is an empty KMS, not created by plan.
    assert not (tmp_path / ".provision").exists() and not (tmp_path / "m" / ".provision").exists()
    assert_no_secret(run.stdout + run.stderr, pem_files(stack))


@pytest.mark.one_backend("local", "colour is the text view's; a real process on a terminal, no server")
def test_colour_on_a_terminal_and_off_with_no_color(stack: Stack, tmp_path: Path) -> None:
    args = ["plan", str(stack.folder), "--backend", "local"]
    code, shown = run_on_a_terminal(args, tmp_path, {})
    assert code == 0
    assert ANSI.search(shown) is not None  # the control: a terminal gets colour
    for extra_args, env in (([], {"NO_COLOR": "1"}), (["--no-color"], {})):
        code, shown = run_on_a_terminal([*args, *extra_args], tmp_path, env)
        assert code == 0
        assert "Plan: 3 to create" in shown
        assert "\x1b" not in shown


@pytest.mark.one_backend("local", "writing --out is the CLI's, after the plan on any backend")
def test_out_in_a_missing_folder_is_one_clear_error(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "no-such-folder" / "plan.json"
    run = run_cli(["plan", str(stack.folder), "--backend", "local", "--out", str(out)])
    assert run.code == 1
    assert run.stderr.splitlines()[-1] == (
        f"error: --out {out}: cannot write the plan: No such file or directory"
    )
    assert "Plan: 3 to create" in run.stdout  # the plan itself was shown
    assert not out.parent.exists()
