"""apply's two flows through the CLI on both backends: `apply --plan FILE` prints the plan as
reviewed, the expiry warnings of the plan made now and the result, as a fresh apply does; with
nothing to do, a fresh apply prints no result in text and an empty one in JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from backends import Backend
from e2e_support import STACK, Entry, Stack, enter_account, run_cli

from provisioner.model import format_time

pytestmark = pytest.mark.slow
BOTH_BACKENDS = True


@pytest.fixture
def account(backend: Backend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Backend:
    monkeypatch.setenv("PROVISION_RETRY_SECONDS", "0")
    return enter_account(backend, monkeypatch, tmp_path)


def _soon() -> str:
    text = format_time(datetime.now(UTC).replace(microsecond=0) + timedelta(days=10, hours=12))
    assert text is not None
    return text


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


def test_a_saved_plan_is_applied_with_the_preview_and_warnings_of_a_fresh_apply(
    account: Backend, tmp_path: Path
) -> None:
    soon = _soon()
    stack = Stack(tmp_path / "m", [Entry("k", expiry=soon)], backend=account.manifest_backend)
    stack.write()
    new_key = f"warning: k: material of the new key expires at {soon}, in 10 day(s) (warning window 30 days)"
    plan_file = tmp_path / "plan.json"
    planned = run_cli(["plan", str(stack.folder), "--out", str(plan_file), *account.args])
    assert planned.code == 0, planned.stderr
    assert _warnings(planned.stderr) == [new_key]

    applied = run_cli(["apply", "--plan", str(plan_file), str(stack.folder), *account.args])
    assert applied.code == 0, applied.stderr
    # The preview is the plan as reviewed (its material path as the plan file keeps it: relative to the
    # working directory), then the result; the warnings are those of the plan made now.
    reviewed = planned.stdout.replace(f"from file {tmp_path}/", "from file ")
    assert reviewed != planned.stdout
    assert applied.stdout == reviewed + "Apply complete: 1 key(s) changed, 0 failed.\n"
    assert _warnings(applied.stderr) == [new_key]

    (kid,) = account.view.stack_keys()["k"]
    again = run_cli(["apply", str(stack.folder), "--auto-approve", *account.args])
    assert again.code == 0, again.stderr
    assert again.stdout.endswith("No changes. The live keys match the manifests.\n")
    assert _warnings(again.stderr) == [
        f"warning: k: material of key {kid} expires at {soon}, in 10 day(s) (warning window 30 days)"
    ]
    as_json = run_cli(["apply", str(stack.folder), "--auto-approve", "--format", "json", *account.args])
    assert as_json.code == 0, as_json.stderr
    assert json.loads(as_json.stdout) == {
        "format_version": 1, "stack": STACK, "ok": True, "keys": [], "summary": {"changed": 0, "failed": 0}
    }
