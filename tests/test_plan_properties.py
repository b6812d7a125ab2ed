"""Property: a plan converges. Applying a plan's changes to the live state (in a pure, in-test simulator
of what KMS does) and planning again yields no changes. Blocked plans are not generated into the check."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from plan_builders import actual_key, default_fingerprints, desired_key, fp, live_state, manifest

from provisioner.model import ActualKey, KeyStatus, LiveState, parse_time
from provisioner.plan.planfile import change_to_dict
from provisioner.plan.planner import make_plan
from provisioner.plan.values import DUPLICATE_WINDOW_DAYS, Action, Change, Plan

NOW = datetime(2026, 6, 1, tzinfo=UTC)
NAMES = ("a", "b", "c", "d")
ORPHANS = ("orphan",)
ALIASES = ("alias/one", "alias/two", "alias/three", "alias/four")
EXPIRIES = (None, "2027-01-01T00:00:00Z", "2028-06-30T12:00:00Z")
TAGS = st.dictionaries(st.sampled_from(["team", "env", "owner"]), st.sampled_from(["x", "y"]), max_size=3)
DESCRIPTIONS = st.sampled_from(["", "signs things", "other words"])


@st.composite
def desired_sets(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=len(NAMES)))
    # Aliases are unique across a manifest set (the validator enforces it): deal each to at most one key.
    owner_of = {a: draw(st.sampled_from([None, *names])) for a in ALIASES} if names else {}
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        state = draw(st.sampled_from(["present", "present", "disabled", "material-deleted", "absent"]))
        out[name] = {
            "description": draw(DESCRIPTIONS),
            "tags": draw(TAGS),
            "aliases": sorted(a for a, o in owner_of.items() if o == name),
            "expiry": draw(st.sampled_from(EXPIRIES)),
            "deletion_protection": state != "absent" and draw(st.booleans()),
            "deletion_window_days": draw(st.sampled_from([7, 30, 366])),
            "state": state,
        }
    return out


@st.composite
def live_sets(draw: st.DrawFn) -> tuple[list[ActualKey], dict[str, str]]:
    counter = itertools.count()
    specs: list[dict[str, Any]] = []
    for name in NAMES + ORPHANS:
        for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2]))):
            status = draw(st.sampled_from(list(KeyStatus)))
            if status is KeyStatus.MATERIAL_EXPIRED:
                expires: str | None = "2026-05-01T00:00:00Z"
            elif status in (KeyStatus.ENABLED, KeyStatus.DISABLED):
                expires = draw(st.sampled_from(EXPIRIES))
            else:
                expires = None
            specs.append(
                {
                    "name": name,
                    "key_id": f"key-{name}-{next(counter)}",
                    "status": status.value,
                    "created_at": f"2025-01-0{draw(st.integers(1, 9))}T00:00:00Z",
                    "description": draw(DESCRIPTIONS),
                    "tags": draw(TAGS),
                    "material_expires_at": expires,
                    "deletion_protection": draw(st.booleans()),
                    "aliases": [],
                }
            )
    # Each alias names at most one key: one of ours, a foreign one, or none.
    foreign: dict[str, str] = {}
    holders = [None, "foreign", *range(len(specs))]
    for alias in ALIASES:
        holder = draw(st.sampled_from(holders))
        if holder == "foreign":
            foreign[alias] = "key-foreign"
        elif isinstance(holder, int):
            specs[holder]["aliases"].append(alias)
    return [actual_key(s) for s in specs], foreign


# ----------------------------------------------------------------------------------------- simulator


def _expires(change: Change) -> datetime | None:
    assert change.expire_unix is not None
    return None if change.expire_unix == 0 else datetime.fromtimestamp(change.expire_unix, UTC)


def _move_alias(keys: dict[str, ActualKey], alias: str, to: str) -> None:
    for kid, k in list(keys.items()):
        if alias in k.aliases:
            keys[kid] = replace(k, aliases=tuple(sorted(set(k.aliases) - {alias})))
    keys[to] = replace(keys[to], aliases=tuple(sorted({*keys[to].aliases, alias})))


def simulate(live: LiveState, plan: Plan, now: datetime) -> LiveState:
    """What KMS would hold after apply carried out every change, exactly as the Change fields say."""
    keys = {k.key_id: k for ks in live.keys.values() for k in ks}
    new_ids = itertools.count()
    for change in plan.changes:
        key_id = change.key_id
        if Action.CREATE in change.actions:
            after = change.after
            assert after is not None and key_id is None
            key_id = f"key-new-{next(new_ids)}"
            keys[key_id] = ActualKey(
                key_id=key_id,
                arn=f"acs:kms:cn-hangzhou:1234:key/{key_id}",
                status=KeyStatus.PENDING_IMPORT,
                spec=after.spec,
                usage=after.usage,
                protection=after.protection,
                instance=after.instance,
                description=change.description or "",
                created_at=now,
                material_expires_at=None,
                deletion_date=None,
                deletion_protection=bool(change.deletion_protection),
                primary_key_version="v1",
                tags=dict(change.tags_to_set),
                aliases=tuple(sorted(change.aliases_to_create)),
            )
            for alias in change.aliases_to_move:
                _move_alias(keys, alias, key_id)
        assert key_id is not None
        k = keys[key_id]
        if Action.CANCEL_DELETION in change.actions:
            # Back Enabled: the planner cannot know beforehand that a key holds no material.
            assert k.status is KeyStatus.PENDING_DELETION
            keys[key_id] = k = replace(k, status=KeyStatus.ENABLED, deletion_date=None)
        if Action.ENABLE in change.actions:
            assert k.status is KeyStatus.DISABLED, "only a disabled key is enabled"
            keys[key_id] = k = replace(k, status=KeyStatus.ENABLED)
        if Action.UPDATE in change.actions:
            tags = {t: v for t, v in k.tags.items() if t not in change.tags_to_remove}
            tags.update(change.tags_to_set)
            aliases = (set(k.aliases) | set(change.aliases_to_create)) - set(change.aliases_to_delete)
            keys[key_id] = k = replace(
                k,
                tags=tags,
                aliases=tuple(sorted(aliases)),
                description=k.description if change.description is None else change.description,
                deletion_protection=(
                    k.deletion_protection
                    if change.deletion_protection is None
                    else change.deletion_protection
                ),
            )
            for alias in change.aliases_to_move:
                _move_alias(keys, alias, key_id)
            k = keys[key_id]
        if Action.IMPORT in change.actions or Action.REIMPORT in change.actions:
            status = KeyStatus.DISABLED if k.status is KeyStatus.DISABLED else KeyStatus.ENABLED
            keys[key_id] = k = replace(k, status=status, material_expires_at=_expires(change))
        if Action.DELETE_MATERIAL in change.actions:
            keys[key_id] = k = replace(k, status=KeyStatus.PENDING_IMPORT, material_expires_at=None)
        if Action.DISABLE in change.actions:
            assert k.status is KeyStatus.ENABLED, "KMS disables only an Enabled key (not an empty one)"
            keys[key_id] = k = replace(k, status=KeyStatus.DISABLED)
        if Action.SCHEDULE_DELETION in change.actions:
            assert change.pending_window_days is not None
            assert not k.deletion_protection, "protection must be lifted before the deletion"
            when = now + timedelta(days=change.pending_window_days)
            keys[key_id] = replace(k, status=KeyStatus.PENDING_DELETION, deletion_date=when)
        for dup in change.duplicates:
            d = keys[dup]
            assert d.status is KeyStatus.PENDING_IMPORT, "a duplicate never holds material"
            keys[dup] = replace(
                d,
                status=KeyStatus.PENDING_DELETION,
                deletion_date=now + timedelta(days=DUPLICATE_WINDOW_DAYS),
            )
    foreign = {a: o for a, o in live.alias_owners.items() if o not in keys}
    return live_state(keys.values(), alias_owners=foreign, foreign_keys=live.foreign_keys)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(desired_sets(), live_sets())
def test_applying_a_plan_converges(desired_spec: dict[str, dict[str, Any]], live_spec: Any) -> None:
    live_keys, foreign = live_spec
    desired = manifest(desired_key(n, s) for n, s in desired_spec.items())
    live = live_state(live_keys, alias_owners=foreign, foreign_keys={"key-foreign"})
    fingerprints = default_fingerprints(desired)
    plan = make_plan(desired, live, now=NOW, fingerprints=fingerprints, backend={"type": "local"})
    assume(not plan.blocked)

    after = simulate(live, plan, NOW)
    again = make_plan(desired, after, now=NOW, fingerprints=fingerprints, backend={"type": "local"})
    assert not again.blocked, again.violations
    assert again.changes == (), [change_to_dict(c) for c in again.changes]
    # Orphans stay orphans: never touched, still reported.
    assert {n.key for n in again.notes} >= {n for n in live.keys if n not in desired_spec}
    # The planner judging its own work is not enough: check the result against the manifest directly.
    assert_matches(desired_spec, after)
    claimed = _claimed(desired_spec, live)
    for name in live.keys:
        if name not in desired_spec:
            # An alias the manifest claims may move off an orphan; nothing else about it changes.
            unclaimed = [
                replace(k, aliases=tuple(a for a in k.aliases if a not in claimed)) for k in live.keys[name]
            ]
            assert list(after.keys[name]) == unclaimed, "an orphan was touched"


def _claimed(desired_spec: dict[str, dict[str, Any]], live: LiveState) -> set[str]:
    """Aliases of the keys that exist or get created (a missing material-deleted key is not created)."""
    return {
        a
        for name, want in desired_spec.items()
        if want["state"] in ("present", "disabled")
        or (want["state"] == "material-deleted" and live.keys.get(name))
        for a in want["aliases"]
    }


def assert_matches(desired_spec: dict[str, dict[str, Any]], live: LiveState) -> None:
    """The live state says what the manifest says, judged without the planner."""
    for name, want in desired_spec.items():
        keys = live.keys.get(name, ())
        active = [k for k in keys if k.status is not KeyStatus.PENDING_DELETION]
        if want["state"] == "absent":
            assert not active, f"{name}: should be gone"
            continue
        if not keys and want["state"] == "material-deleted":
            continue  # nothing is created only to stay empty
        assert len(active) == 1, f"{name}: {len(active)} live keys"
        (key,) = active
        assert key.user_tags == want["tags"], name
        assert key.description == want["description"], name
        assert key.deletion_protection == want["deletion_protection"], name
        assert set(want["aliases"]) <= set(key.aliases), name
        assert key.recorded_fingerprint == fp(name), name
        if want["state"] in ("present", "disabled"):
            wanted = KeyStatus.ENABLED if want["state"] == "present" else KeyStatus.DISABLED
            assert key.status is wanted, name
            assert key.material_expires_at == parse_time(want["expiry"]), name
        else:
            assert key.status in (KeyStatus.PENDING_IMPORT, KeyStatus.MATERIAL_EXPIRED), name
    claimed = _claimed(desired_spec, live)
    for name, want in desired_spec.items():
        for key in live.keys.get(name, ()):
            if want["state"] != "absent" and key.status is not KeyStatus.PENDING_DELETION:
                assert set(key.aliases) <= claimed, f"{name}: stray alias left on the kept key"
            for alias in key.aliases:
                if alias in claimed:
                    assert alias in want["aliases"], f"{alias} should have moved off {name}"


def test_simulator_applies_a_reimport_expiry() -> None:
    """The simulator itself must be right for the property to mean anything."""
    desired = manifest([desired_key("a", {"expiry": "2027-01-01T00:00:00Z"})])
    live = live_state([actual_key({"name": "a", "status": "pending-import"})])
    plan = make_plan(desired, live, now=NOW, fingerprints=default_fingerprints(desired), backend={})
    after = simulate(live, plan, NOW)
    (key,) = after.keys["a"]
    assert key.status is KeyStatus.ENABLED
    assert key.material_expires_at == parse_time("2027-01-01T00:00:00Z")
