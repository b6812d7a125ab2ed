"""Leases end to end on both backends (issue 14 acceptance 3, DESIGN section 11): `expiry: {lease: 30d,
renew_before: 7d}` imports material that expires 30 days on; a plan within 7 days of that reimports the
same material with a new lease, one outside plans nothing; drift and the expiry warnings speak of the
lease. "Now" is the CLI's clock, which the tests set (main's `clock`); expiries are read back through
the official SDK's DescribeKey.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from apply_support import writes
from backends import Backend
from e2e_support import Entry, Stack, assert_no_secret, enter_account, run_cli

from provisioner.model import format_time, parse_time

pytestmark = pytest.mark.slow
BOTH_BACKENDS = True

LEASE = "{lease: 30d, renew_before: 7d}"
#: The first apply's "now": the system's, so the emulator (on the system clock) sees live material.
T0 = datetime.now(UTC).replace(microsecond=0)


def at(days: int) -> Callable[[], datetime]:
    """A clock that says T0 + `days`."""
    return lambda: T0 + timedelta(days=days)


@pytest.fixture
def account(backend: Backend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Backend:
    monkeypatch.setenv("PROVISION_RETRY_SECONDS", "0")
    return enter_account(backend, monkeypatch, tmp_path)


def cli(stack: Stack, account: Backend, days: int, command: str, *args: str) -> Any:
    run = run_cli([command, str(stack.folder), *args, *account.args], clock=at(days))
    assert_no_secret(run.stdout + run.stderr, sorted(stack.key_folder.glob("*.pem")))
    return run


def plan_doc(stack: Stack, account: Backend, days: int) -> dict[str, Any]:
    run = cli(stack, account, days, "plan", "--format", "json")
    assert run.code == 0, run.stderr
    doc: dict[str, Any] = json.loads(run.stdout)
    return doc


def expires(account: Backend, name: str) -> datetime | None:
    (kid,) = account.view.stack_keys()[name]
    return parse_time(account.view.describe(kid).material_expire_time)


def leased(account: Backend, tmp_path: Path) -> tuple[Stack, str]:
    stack = Stack(tmp_path / "m", [Entry("signer", lease=LEASE)], backend=account.manifest_backend)
    stack.write()
    run = cli(stack, account, 0, "apply", "--auto-approve")
    assert run.code == 0, run.stdout + run.stderr
    (kid,) = account.view.stack_keys()["signer"]
    return stack, kid


def test_import_sets_the_lease_and_a_plan_inside_renew_before_renews_it(
    account: Backend, tmp_path: Path
) -> None:
    stack, kid = leased(account, tmp_path)
    assert expires(account, "signer") == T0 + timedelta(days=30)

    # 20 days on, 10 are left: outside renew_before, nothing to do, no warning, no drift.
    quiet = plan_doc(stack, account, 20)
    assert (quiet["changes"], quiet["violations"]) == ([], [])
    run = cli(stack, account, 20, "plan")
    assert run.code == 0 and "warning:" not in run.stderr, run.stderr
    drift = cli(stack, account, 20, "drift", "--format", "json")
    assert (drift.code, json.loads(drift.stdout)["drift"]) == (0, []), drift.stdout

    # 24 days on, 6 are left: drift reports it against the lease, and the plan reimports.
    old_expiry = format_time(T0 + timedelta(days=30))
    drift = cli(stack, account, 24, "drift", "--format", "json")
    assert drift.code == 2, drift.stderr
    assert json.loads(drift.stdout)["drift"] == [
        {
            "key": "signer", "kind": "material-expiring",
            "detail": f"material of key {kid} expires at {old_expiry}, in 6 day(s) (renew_before 7d)",
            "expected": "lease 30d, renew_before 7d", "found": old_expiry, "target": "default",
        }
    ]
    new_expiry = T0 + timedelta(days=24 + 30)
    doc = plan_doc(stack, account, 24)
    ((change,),) = (doc["changes"],)
    assert (change["key"], change["key_id"], change["actions"]) == ("signer", kid, ["reimport"])
    assert change["after"]["expiry"] == format_time(new_expiry)
    assert change["reason"] == (
        f"lease renewal (lease 30d, renew_before 7d): material expires at {old_expiry}, "
        f"new expiry {format_time(new_expiry)}"
    )

    before = account.stats()
    run = cli(stack, account, 24, "apply", "--auto-approve")
    assert run.code == 0, run.stdout + run.stderr
    assert "warning:" not in run.stderr  # the renewed lease is outside renew_before
    made = writes(before, account.stats())
    assert made["ImportKeyMaterial"] == 1 and "CreateKey" not in made, made
    # The same key, the same material, the new lease.
    assert account.view.stack_keys()["signer"] == [kid]
    assert expires(account, "signer") == new_expiry
    after = plan_doc(stack, account, 24)
    assert (after["changes"], after["violations"]) == ([], [])
    drift = cli(stack, account, 24, "drift")
    assert drift.code == 0, drift.stdout


def test_a_saved_plan_renews_the_lease_it_showed(account: Backend, tmp_path: Path) -> None:
    """`apply --plan` an hour after the plan: the expiry applied is the one the plan file holds."""
    stack, kid = leased(account, tmp_path)
    plan_file = tmp_path / "renew.plan"
    run = cli(stack, account, 25, "plan", "--out", str(plan_file))
    assert run.code == 0, run.stderr
    later = run_cli(
        ["apply", str(stack.folder), "--plan", str(plan_file), *account.args],
        clock=lambda: T0 + timedelta(days=25, hours=1),
    )
    assert later.code == 0, later.stdout + later.stderr
    assert expires(account, "signer") == T0 + timedelta(days=25 + 30)
