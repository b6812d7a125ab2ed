"""Property: the planner and drift agree, both reading compare.KeyDiff. For every declared key of a
generated (desired, live) pair: the plan has no change and no violation for it <=> drift reports nothing
for it, except where the two legitimately differ (each exception is named in `_exempt`)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from plan_builders import default_fingerprints, desired_key, live_state, manifest
from test_plan_properties import NOW, desired_sets, live_sets

from provisioner.drift import DriftKind, make_drift
from provisioner.model import ActualKey, ManifestSet
from provisioner.plan.planner import make_plan
from provisioner.plan.values import Action, Plan

#: Drift kinds that are warnings about time, not differences: the plan has nothing to do about them.
WARNINGS = frozenset({DriftKind.MATERIAL_EXPIRING})


def _exempt(name: str, desired: ManifestSet, keys: tuple[ActualKey, ...], plan: Plan) -> str | None:
    """Why the plan and drift may disagree about key `name`, or None when they must agree."""
    change = plan.change_for(name)
    if change is not None and change.actions == (Action.REIMPORT,) and "expiry changes" in change.reason:
        return "the plan reimports for a new expiry; drift reports expiry only when it is near or past"
    claimed = {a for other in desired.keys if other.name != name for a in other.aliases}
    if any(a in claimed for k in keys for a in k.aliases):
        return "an alias on this key that another key claims: drift reports it here, the plan moves it there"
    return None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(desired_sets(), live_sets())
# A material-deleted key that does not exist, whose alias a key outside the stack holds: drift reports
# unmanaged-alias, so the plan must not be silent (alias-conflict).
@example(
    {"a": {"state": "material-deleted", "aliases": ["alias/one"], "expiry": None, "tags": {}}},
    ([], {"alias/one": "key-foreign"}),
)
def test_plan_converged_iff_drift_in_sync(desired_spec: dict[str, dict[str, Any]], live_spec: Any) -> None:
    live_keys, foreign = live_spec
    desired = manifest(desired_key(n, s) for n, s in desired_spec.items())
    live = live_state(live_keys, alias_owners=foreign, foreign_keys={"key-foreign"})
    fingerprints = default_fingerprints(desired)  # the material each key was made with
    plan = make_plan(desired, live, now=NOW, fingerprints=fingerprints, backend={"type": "local"})
    drift = make_drift(desired, live, now=NOW)
    for d in desired.keys:
        keys = live.keys.get(d.name, ())
        if _exempt(d.name, desired, keys, plan) is not None:
            continue
        plan_quiet = plan.change_for(d.name) is None and not any(v.key == d.name for v in plan.violations)
        found = [i for i in drift.items if i.key == d.name and i.kind not in WARNINGS]
        # Both directions: a key the plan leaves alone is in sync, and a key in sync is left alone.
        assert plan_quiet == (not found), (d.name, plan.change_for(d.name), plan.violations, found)
