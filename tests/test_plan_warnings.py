"""Plan-time expiry warnings (DESIGN section 10): which keys, which expiry, the exact words."""

from __future__ import annotations

from datetime import UTC, datetime

from plan_builders import actual_key, default_fingerprints, desired_key, live_state, manifest

from provisioner.plan.planner import make_plan
from provisioner.plan.warnings import expiry_warnings

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _warnings(
    desired: dict[str, dict[str, object]], live: list[dict[str, object]], days: int = 30
) -> list[str]:
    ms = manifest(desired_key(n, s) for n, s in desired.items())
    state = live_state(actual_key(k) for k in live)
    plan = make_plan(ms, state, now=NOW, fingerprints=default_fingerprints(ms), backend={"type": "local"})
    return [str(w) for w in expiry_warnings(ms, state, plan, now=NOW, days=days)]


def test_live_material_within_the_window_is_warned_about_outside_it_not() -> None:
    soon, later = "2026-06-18T00:00:00Z", "2026-08-01T00:00:00Z"
    desired = {"a": {"expiry": soon}, "b": {"expiry": later}, "c": {"expiry": soon, "state": "disabled"}}
    live = [
        {"name": "a", "material_expires_at": soon},
        {"name": "b", "material_expires_at": later},
        {"name": "c", "material_expires_at": soon, "status": "disabled"},
    ]
    assert _warnings(desired, live) == [
        "a: material of key key-a expires at 2026-06-18T00:00:00Z, in 17 day(s) (warning window 30 days)",
        "c: material of key key-c expires at 2026-06-18T00:00:00Z, in 17 day(s) (warning window 30 days)",
    ]
    assert _warnings(desired, live, days=90) == [
        "a: material of key key-a expires at 2026-06-18T00:00:00Z, in 17 day(s) (warning window 90 days)",
        "b: material of key key-b expires at 2026-08-01T00:00:00Z, in 61 day(s) (warning window 90 days)",
        "c: material of key key-c expires at 2026-06-18T00:00:00Z, in 17 day(s) (warning window 90 days)",
    ]
    assert _warnings(desired, live, days=10) == []


def test_the_expiry_after_the_plan_counts() -> None:
    soon, later = "2026-06-18T00:00:00Z", "2027-06-01T00:00:00Z"
    desired = {
        "new": {"expiry": soon},  # created with material that soon expires
        "moved": {"expiry": later},  # reimported with a later expiry: no warning
        "shortened": {"expiry": soon},  # reimported with an expiry inside the window
        "emptied": {"state": "material-deleted"},
        "gone": {"state": "absent"},
    }
    live = [
        {"name": "moved", "material_expires_at": soon},
        {"name": "shortened", "material_expires_at": later},
        {"name": "emptied", "material_expires_at": soon},
        {"name": "gone", "material_expires_at": soon},
    ]
    assert _warnings(desired, live) == [
        "new: material of the new key expires at 2026-06-18T00:00:00Z, in 17 day(s) (warning window 30 days)",
        "shortened: material of key key-shortened expires at 2026-06-18T00:00:00Z, in 17 day(s) "
        "(warning window 30 days)",
    ]


def test_a_leased_key_is_warned_about_within_its_renew_before_only() -> None:
    """Its window is renew_before, whatever --expiry-warning says; a key the plan cannot renew (here a
    material-immutable one) keeps its live expiry and is warned about."""
    lease = ("30d", "7d")
    desired = {"due": {"lease": lease}, "fine": {"lease": lease}}
    live = [
        {"name": "due", "material_expires_at": "2026-06-06T00:00:00Z", "fingerprint": "fp:other"},
        {"name": "fine", "material_expires_at": "2026-06-11T00:00:00Z"},
    ]
    warned = "due: material of key key-due expires at 2026-06-06T00:00:00Z, in 5 day(s) (renew_before 7d)"
    assert _warnings(desired, live) == [warned]
    assert _warnings(desired, live, days=0) == [warned]
    assert _warnings(desired, live, days=365) == [warned]
