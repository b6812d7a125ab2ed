"""Leases in the planner (DESIGN section 11): the expiry a lease wants at a plan's `now`, and when a
plan renews it. Pure: the clock is the `now` the test passes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from plan_builders import actual_key, default_fingerprints, desired_key, live_state, manifest

from provisioner.model import Lease, format_time
from provisioner.plan.planfile import load_plan, save_plan
from provisioner.plan.planner import check_instructions, make_plan
from provisioner.plan.values import Action, Plan, expire_unix

T0 = datetime(2026, 6, 1, tzinfo=UTC)
LEASE = ("30d", "7d")


def _plan(live: list[dict[str, object]], now: datetime, lease: tuple[str, str] = LEASE) -> Plan:
    ms = manifest([desired_key("k", {"lease": lease})])
    state = live_state(actual_key(k) for k in live)
    return make_plan(ms, state, now=now, fingerprints=default_fingerprints(ms), backend={"type": "local"})


def test_lease_durations_and_when_it_is_due() -> None:
    lease = Lease("30d", "36h")
    assert (lease.length, lease.window) == (timedelta(days=30), timedelta(hours=36))
    assert str(lease) == "lease 30d, renew_before 36h"
    assert lease.due(None, T0)
    assert lease.due(T0 + timedelta(hours=36), T0)
    assert not lease.due(T0 + timedelta(hours=36, seconds=1), T0)
    assert lease.expiry(T0 + timedelta(days=2), T0) == T0 + timedelta(days=2)
    assert lease.expiry(T0 + timedelta(days=1), T0) == T0 + timedelta(days=30)


def test_a_new_key_is_imported_with_a_lease_from_now() -> None:
    (change,) = _plan([], T0).changes
    assert change.actions == (Action.CREATE, Action.IMPORT)
    assert change.expire_unix == expire_unix(T0 + timedelta(days=30))
    assert change.after is not None and change.after.expiry == T0 + timedelta(days=30)


def test_a_plan_within_renew_before_reimports_with_a_new_lease_outside_it_nothing() -> None:
    live = [{"name": "k", "material_expires_at": T0 + timedelta(days=30)}]
    assert _plan(live, T0 + timedelta(days=20)).changes == ()
    assert _plan(live, T0 + timedelta(days=22, seconds=-1)).changes == ()
    now = T0 + timedelta(days=24)
    (change,) = _plan(live, now).changes
    assert (change.key_id, change.actions) == ("key-k", (Action.REIMPORT,))
    assert change.expire_unix == expire_unix(now + timedelta(days=30))
    assert change.reason == (
        f"lease renewal (lease 30d, renew_before 7d): material expires at "
        f"{format_time(T0 + timedelta(days=30))}, new expiry {format_time(now + timedelta(days=30))}"
    )


def test_material_that_never_expires_or_expired_gets_a_lease() -> None:
    for live in (
        {"name": "k", "material_expires_at": None},
        {"name": "k", "status": "material-expired", "material_expires_at": T0 - timedelta(days=1)},
        {"name": "k", "status": "pending-import", "material_expires_at": None},
    ):
        (change,) = _plan([live], T0).changes
        assert change.actions == (Action.REIMPORT,), live
        assert change.expire_unix == expire_unix(T0 + timedelta(days=30)), live


def test_a_saved_lease_renewal_is_what_its_own_before_and_after_give() -> None:
    live = [{"name": "k", "material_expires_at": T0 + timedelta(days=30)}]
    saved = load_plan(save_plan(_plan(live, T0 + timedelta(days=25))))
    check_instructions(saved)  # raises StalePlan when the derivation disagrees
    ms = manifest([desired_key("k", {"lease": LEASE})])
    fresh = make_plan(
        ms, live_state(actual_key(k) for k in live), now=T0 + timedelta(days=25, hours=1),
        fingerprints=default_fingerprints(ms), backend={"type": "local"}, lease_now=saved.created_at,
    )
    assert [c.expire_unix for c in fresh.changes] == [c.expire_unix for c in saved.changes]
