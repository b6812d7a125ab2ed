"""Planner cases as data (tests/plan_cases/*.yaml: desired, live, now -> changes, violations, notes),
plus the plan document: golden to_dict, from_dict round trip, malformed files."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from plan_builders import (
    actual_key,
    adopted_keys,
    default_fingerprints,
    desired_key,
    expand,
    fp,
    live_state,
    manifest,
    when,
)

from provisioner.errors import MaterialError, ProvisionerError, StalePlan
from provisioner.plan.planfile import (
    MAX_PLAN_BYTES,
    change_to_dict,
    load_plan,
    plan_from_dict,
    plan_to_dict,
    save_plan,
)
from provisioner.plan.planner import (
    check_instructions,
    derive_change,
    digest_actual,
    make_plan,
    resolve_fingerprints,
    stale_reason,
)
from provisioner.plan.values import UNKNOWN_FINGERPRINT, Action, NoteCode, Plan

CASES = Path(__file__).parent / "plan_cases"
BACKEND = {"type": "local", "path": ".provision/kms.db"}


def _case_files() -> list[Path]:
    return sorted(CASES.glob("*.yaml"))


def _plan_case(case: dict[str, Any]) -> Plan:
    desired = manifest(desired_key(n, s) for n, s in (case.get("desired") or {}).items())
    keys = [actual_key(k) for k in case.get("live") or []]
    live = live_state(
        keys,
        alias_owners=case.get("alias_owners"),
        foreign_keys=case.get("foreign_keys") or (),
        adopted=adopted_keys(desired, case.get("adopted"), keys),
    )
    now = when(case["now"])
    assert now is not None
    return make_plan(
        desired,
        live,
        now=now,
        # offline: `plan --offline-material`, no material read; fingerprints are the pins only.
        fingerprints={} if case.get("offline") else default_fingerprints(desired, case.get("fingerprints")),
        backend=BACKEND,
        offline_material=bool(case.get("offline")),
    )


@pytest.mark.parametrize("path", _case_files(), ids=lambda p: p.stem)
def test_plan_case(path: Path) -> None:
    case = yaml.safe_load(path.read_text())
    expect = case.get("expect") or {}
    plan = _plan_case(case)

    # Deterministic, and the document survives a save/load unchanged.
    assert plan_to_dict(_plan_case(case)) == plan_to_dict(plan)
    assert load_plan(save_plan(plan)) == plan

    want_changes: dict[str, dict[str, Any]] = expand(expect.get("changes") or {})
    got = {c.key: c for c in plan.changes}
    assert len(got) == len(plan.changes), "one change per key"
    assert sorted(got) == sorted(want_changes), f"{path.name}: keys with changes"
    for name, want in want_changes.items():
        doc = change_to_dict(got[name])
        for field, value in want.items():
            if field == "reason_contains":
                assert value in doc["reason"], f"{path.name}: {name}: reason {doc['reason']!r}"
            else:
                assert doc[field] == value, f"{path.name}: {name}.{field}"

    want_violations = expect.get("violations") or []
    got_violations = [(v.key, v.code.value) for v in plan.violations]
    assert got_violations == [(v["key"], v["code"]) for v in want_violations], path.name
    for v, want in zip(plan.violations, want_violations, strict=True):
        assert want.get("message"), f"{path.name}: say what the message of {v.code.value} must contain"
        for fragment in want["message"]:
            assert fragment in v.message, f"{path.name}: {v.message!r} lacks {fragment!r}"
    assert plan.blocked == bool(want_violations)
    # A note is expected as its key, or as {key: code} when it carries a code.
    want_notes = [n if isinstance(n, str) else next(iter(n)) for n in expect.get("notes") or []]
    assert [n.key for n in plan.notes] == want_notes, path.name
    for note, want in zip(plan.notes, expect.get("notes") or [], strict=True):
        code = None if isinstance(want, str) else want[note.key]
        assert (note.code.value if note.code else None) == code, f"{path.name}: note of {note.key}"
    assert plan.has_changes == bool(want_changes)


def test_every_rule_has_a_case() -> None:
    """Every action word and violation code appears in some case's expectations."""
    seen: set[str] = set()
    for path in _case_files():
        expect = yaml.safe_load(path.read_text()).get("expect") or {}
        for change in (expect.get("changes") or {}).values():
            seen.update(change.get("actions", []))
            if change.get("duplicates"):
                seen.add("duplicates")
        seen.update(v["code"] for v in expect.get("violations") or [])
    wanted = {a.value for a in Action} | {
        "material-immutable",
        "immutable-attribute",
        "alias-conflict",
        "unsupported",
        "expiry-in-past",
        "duplicate-identity",
        "deletion-protected",
        "managed-elsewhere",
        "previous-not-found",
        "duplicates",
    }
    assert wanted <= seen, f"no case for {sorted(wanted - seen)}"


# ----------------------------------------------------------------------------------------- document

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)


def _golden_plan() -> Plan:
    desired = manifest(
        [
            desired_key(
                "receipts",
                {
                    "aliases": ["alias/payments/receipts"],
                    "description": "Signs receipts",
                    "tags": {"team": "payments"},
                    "expiry": "2027-06-30T00:00:00Z",
                    "deletion_protection": True,
                },
            ),
            desired_key("old", {"state": "absent", "deletion_window_days": 7}),
        ]
    )
    live = live_state([actual_key({"name": "old", "key_id": "key-old"})])
    return make_plan(desired, live, now=NOW, fingerprints={"receipts": fp("receipts")}, backend=BACKEND)


def test_plan_document_golden() -> None:
    plan = _golden_plan()
    old = actual_key({"name": "old", "key_id": "key-old"})
    assert plan_to_dict(plan) == {
        "format_version": 1,
        "stack": "payments",
        "created_at": "2026-06-01T12:00:00Z",
        "backend": {"type": "local", "path": ".provision/kms.db"},
        # A single backend is the target `default`, in every document (DESIGN section 12).
        "backends": [
            {
                "name": "default", "type": "local", "region": None, "endpoint": None,
                "path": ".provision/kms.db",
            }
        ],
        "manifest_digest": "",
        "changes": [
            {
                "key": "old",
                "key_id": "key-old",
                "actions": ["schedule-deletion"],
                "reason": "state is absent: deletion in 7 days",
                "before": {
                    "key_id": "key-old",
                    "arn": "acs:kms:cn-hangzhou:1234:key/key-old",
                    "status": "enabled",
                    "spec": "RSA_2048",
                    "usage": "SIGN/VERIFY",
                    "protection": "SOFTWARE",
                    "instance": "kst-hzz6test",
                    "description": "",
                    "tags": {
                        "byok-provisioner:fingerprint": fp("old"),
                        "byok-provisioner:name": "old",
                        "byok-provisioner:stack": "payments",
                    },
                    "aliases": [],
                    "material_expires_at": None,
                    "deletion_date": None,
                    "deletion_protection": False,
                    "recorded_fingerprint": fp("old"),
                    "public_key_fingerprint": None,
                },
                "after": None,
                "tags_to_set": {},
                "tags_to_remove": [],
                "aliases_to_create": [],
                "aliases_to_move": [],
                "aliases_to_delete": [],
                "description": None,
                "deletion_protection": None,
                "expire_unix": None,
                "pending_window_days": 7,
                "material": None,
                "state_digest": digest_actual(old),
                "duplicates": [],
                "duplicate_digests": [],
                "target": "default",
            },
            {
                "key": "receipts",
                "key_id": None,
                "actions": ["create", "import"],
                "reason": "key does not exist",
                "before": None,
                "after": {
                    "spec": "RSA_2048",
                    "usage": "SIGN/VERIFY",
                    "protection": "SOFTWARE",
                    "instance": "kst-hzz6test",
                    "description": "Signs receipts",
                    "tags": {"team": "payments"},
                    "aliases": ["alias/payments/receipts"],
                    "expiry": "2027-06-30T00:00:00Z",
                    "deletion_protection": True,
                    "deletion_window_days": 30,
                    "state": "present",
                    "fingerprint": fp("receipts"),
                },
                "tags_to_set": {
                    "byok-provisioner:fingerprint": fp("receipts"),
                    "byok-provisioner:name": "receipts",
                    "byok-provisioner:stack": "payments",
                    "team": "payments",
                },
                "tags_to_remove": [],
                "aliases_to_create": ["alias/payments/receipts"],
                "aliases_to_move": [],
                "aliases_to_delete": [],
                "description": "Signs receipts",
                "deletion_protection": True,
                "expire_unix": 1814313600,
                "pending_window_days": None,
                "material": {
                    "kind": "file",
                    "file": "/manifests/keys/receipts.pem",
                    "fingerprint": fp("receipts"),
                },
                "state_digest": None,
                "duplicates": [],
                "duplicate_digests": [],
                "target": "default",
            },
        ],
        "violations": [],
        "notes": [],
        "summary": {
            "create": 1,
            "import": 1,
            "adopt": 0,
            "reimport": 0,
            "delete-material": 0,
            "update": 0,
            "schedule-deletion": 1,
            "enable": 0,
            "disable": 0,
            "cancel-deletion": 0, "rotate": 0,
        },
    }
    assert datetime.fromtimestamp(1814313600, UTC) == datetime(2027, 6, 30, tzinfo=UTC)


def test_plan_round_trip_is_exact() -> None:
    plan = _golden_plan()
    text = save_plan(plan)
    again = load_plan(text)
    assert again == plan
    assert save_plan(again) == text
    assert plan_from_dict(json.loads(json.dumps(plan_to_dict(plan)))) == plan


def test_digest_changes_with_what_apply_depends_on() -> None:
    base = actual_key({"name": "a"})
    assert digest_actual(base) == digest_actual(actual_key({"name": "a"}))
    assert digest_actual(base).startswith("sha256:") and len(digest_actual(base)) == 7 + 64
    for change in (
        {"description": "x"},
        {"status": "disabled"},
        {"aliases": ["alias/x"]},
        {"tags": {"a": "b"}},
    ):
        assert digest_actual(actual_key({"name": "a", **change})) != digest_actual(base), change


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (lambda d: d.update(format_version=2), StalePlan, "plan file has format_version 2; this provisioner"),
        (lambda d: d.pop("format_version"), StalePlan, "plan file has format_version None"),
        (lambda d: d.pop("stack"), ProvisionerError, "plan file is malformed: plan: missing field 'stack'"),
        (
            lambda d: d["changes"][0].update(actions=["create", "frobnicate"]),
            ProvisionerError,
            "plan file is malformed: changes[0].actions[1]: 'frobnicate' is not an action word",
        ),
        (
            lambda d: d["changes"][1].update(expire_unix="soon"),
            ProvisionerError,
            'plan file is malformed: changes[1].expire_unix: expected an integer, got "soon"',
        ),
        (
            lambda d: d["violations"].append({"key": "a", "code": "nope", "message": "m"}),
            ProvisionerError,
            "plan file is malformed: violations[0].code: 'nope' is not a violation code",
        ),
        (
            lambda d: d["changes"][0].update(private_key="x"),
            ProvisionerError,
            "plan file is malformed: changes[0]: unknown field(s) 'private_key'",
        ),
        (
            lambda d: d["summary"].update(create=5),
            ProvisionerError,
            "plan file is malformed: plan.summary: does not match the changes",
        ),
        (
            lambda d: d.update(created_at="yesterday"),
            ProvisionerError,
            "plan file is malformed: plan.created_at: 'yesterday' is not a time",
        ),
        (
            lambda d: d.update(created_at=""),
            ProvisionerError,
            "plan file is malformed: plan.created_at: '' is not a time",
        ),
    ],
)
def test_malformed_plan_file(mutate: Any, error: type[Exception], message: str) -> None:
    data = plan_to_dict(_golden_plan())
    mutate(data)
    with pytest.raises(error) as info:
        load_plan(json.dumps(data))
    assert type(info.value) is error
    assert str(info.value).startswith(message)


def test_plan_file_not_json() -> None:
    with pytest.raises(ProvisionerError, match=r"^plan file is not valid JSON: line 1 column 1: "):
        load_plan("not json")
    with pytest.raises(ProvisionerError, match="^plan file is malformed: expected a JSON object"):
        load_plan("[1]")


def test_missing_fingerprint_for_import_is_an_error() -> None:
    desired = manifest([desired_key("a")])
    with pytest.raises(
        MaterialError, match=r"manifests/keys.yaml:3:3: the fingerprint of the material for key 'a'"
    ):
        make_plan(desired, live_state([]), now=NOW, fingerprints={}, backend=BACKEND)


def test_stack_mismatch_is_an_error() -> None:
    desired = manifest([desired_key("a")])
    live = live_state([])
    other = type(live)(stack="other", keys={}, alias_owners={})
    with pytest.raises(
        ProvisionerError, match="live state was read for stack 'other' but the manifests declare"
    ):
        make_plan(desired, other, now=NOW, fingerprints={"a": fp("a")}, backend=BACKEND)
    assert live.stack == "payments"


def test_created_at_defaults_to_now_and_is_whole_seconds() -> None:
    now = datetime(2026, 6, 1, 12, 0, 0, 999_999, tzinfo=UTC)
    plan = make_plan(manifest([]), live_state([]), now=now, fingerprints={}, backend=BACKEND)
    assert plan.created_at == datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
    assert not plan.has_changes and not plan.blocked
    assert plan.summary == {a.value: 0 for a in Action}


def test_stale_reason_for_saved_plans() -> None:
    k1 = actual_key({"name": "a", "key_id": "k1", "created_at": "2025-01-01T00:00:00Z"})
    k2 = actual_key(
        {"name": "a", "key_id": "k2", "status": "pending-import", "created_at": "2025-02-01T00:00:00Z"}
    )
    desired = manifest([desired_key("a", {"description": "new"})])
    plan = make_plan(desired, live_state([k1, k2]), now=NOW, fingerprints={"a": fp("a")}, backend=BACKEND)
    (change,) = plan.changes
    assert change.duplicates == ("k2",) and change.duplicate_digests == (digest_actual(k2),)
    assert stale_reason(change, [k1, k2]) is None
    assert stale_reason(change, [k2]) == "key 'a' (k1) no longer exists: make a new plan"
    edited = actual_key({"name": "a", "key_id": "k1", "description": "by hand"})
    assert stale_reason(change, [edited, k2]) == (
        "key 'a' (k1) changed since the plan was made: make a new plan"
    )
    imported = actual_key({"name": "a", "key_id": "k2", "created_at": "2025-02-01T00:00:00Z"})
    assert stale_reason(change, [k1, imported]) == (
        "duplicate key k2 of 'a' changed or vanished since the plan was made (it may hold material now): "
        "make a new plan"
    )
    create = make_plan(
        desired, live_state([]), now=NOW, fingerprints={"a": fp("a")}, backend=BACKEND
    ).changes[0]
    assert stale_reason(create, []) is None
    assert (
        stale_reason(create, [k1])
        == "key 'a' was to be created, but k1 now carries that identity: make a new plan"
    )
    gone = actual_key({"name": "a", "key_id": "k9", "status": "pending-deletion"})
    assert stale_reason(create, [gone]) is None


def test_a_cancel_is_stale_once_another_live_key_holds_the_identity() -> None:
    pending = actual_key({"name": "a", "key_id": "k1", "status": "pending-deletion"})
    desired = manifest([desired_key("a")])
    plan = make_plan(desired, live_state([pending]), now=NOW, fingerprints={"a": fp("a")}, backend=BACKEND)
    (change,) = plan.changes
    assert change.actions == (Action.CANCEL_DELETION,)
    other_pending = actual_key({"name": "a", "key_id": "k3", "status": "pending-deletion"})
    assert stale_reason(change, [pending, other_pending]) is None
    live = actual_key({"name": "a", "key_id": "k2", "status": "pending-import"})
    assert stale_reason(change, [pending, live, other_pending]) == (
        "key 'a': the plan cancels the deletion of k1, but k2 now carries that identity and is not pending "
        "deletion; a deletion is never cancelled while another live key holds the identity: make a new plan"
    )


def test_backend_values_are_strings() -> None:
    plan = make_plan(
        manifest([]), live_state([]), now=NOW, fingerprints={}, backend={"type": "alibaba", "region": None}
    )
    assert plan.backend == {"type": "alibaba"}
    assert load_plan(save_plan(plan)) == plan


# ----------------------------------------------------------------------------------------- saved plans


@pytest.mark.parametrize("path", _case_files(), ids=lambda p: p.stem)
def test_every_planned_change_re_derives_from_its_before_and_after(path: Path) -> None:
    plan = _plan_case(yaml.safe_load(path.read_text()))
    for change in plan.changes:
        assert derive_change(change, plan.stack) == change, f"{path.name}: {change.key}"
    check_instructions(plan)


def _edit_plan() -> Plan:
    """A plan of every kind of change: create, update, reimport, schedule-deletion, enable, disable,
    cancel-deletion."""
    desired = manifest(
        [
            desired_key("new", {"aliases": ["alias/new"], "tags": {"team": "t"}}),
            desired_key("upd", {"description": "new words", "tags": {"team": "u"}, "aliases": ["alias/u2"]}),
            desired_key("re", {"expiry": "2027-01-01T00:00:00Z"}),
            desired_key("old", {"state": "absent", "deletion_window_days": 9}),
            desired_key("on", {}),
            desired_key("off", {"state": "disabled"}),
            desired_key("back", {}),
        ]
    )
    live = live_state(
        [
            actual_key({"name": "upd", "tags": {"gone": "x"}, "aliases": ["alias/u1"]}),
            actual_key({"name": "re"}),
            actual_key({"name": "old"}),
            actual_key({"name": "on", "status": "disabled"}),
            actual_key({"name": "off"}),
            actual_key({"name": "back", "status": "pending-deletion"}),
        ]
    )
    return make_plan(desired, live, now=NOW, fingerprints=default_fingerprints(desired), backend=BACKEND)


def test_edit_plan_has_every_kind_of_change() -> None:
    plan = _edit_plan()
    assert {c.key: [a.value for a in c.actions] for c in plan.changes} == {
        "new": ["create", "import"],
        "old": ["schedule-deletion"],
        "re": ["reimport"],
        "upd": ["update"],
        "on": ["enable"],
        "off": ["disable"],
        "back": ["cancel-deletion"],
    }
    check_instructions(plan)


def _index(plan: Plan, key: str) -> int:
    return next(i for i, c in enumerate(plan.changes) if c.key == key)


@pytest.mark.parametrize(
    ("key", "field", "value"),
    [
        ("upd", "tags_to_set", {"team": "u", "admin": "me"}),
        ("upd", "tags_to_remove", []),
        ("upd", "description", "other words"),
        ("upd", "deletion_protection", True),
        ("upd", "aliases_to_create", ["alias/u2", "alias/stolen"]),
        ("upd", "aliases_to_delete", ["alias/u1", "alias/other"]),
        ("upd", "actions", ["update", "delete-material"]),
        ("upd", "key_id", "key-someone-else"),
        ("upd", "state_digest", "sha256:" + "0" * 64),
        ("new", "tags_to_set", {"byok-provisioner:stack": "payments", "byok-provisioner:name": "new"}),
        ("new", "description", "planted"),
        ("new", "deletion_protection", True),
        ("new", "expire_unix", 1),
        ("new", "aliases_to_move", ["alias/new"]),
        ("re", "material", {"kind": "file", "file": "/manifests/keys/re.pem", "fingerprint": fp("other")}),
        ("re", "expire_unix", 0),
        ("re", "actions", []),
        ("old", "actions", ["update", "schedule-deletion"]),
        ("old", "deletion_protection", False),
        ("old", "tags_to_set", {"a": "b"}),
        ("on", "actions", []),
        ("on", "actions", ["enable", "disable"]),
        ("off", "actions", ["disable", "schedule-deletion"]),
        ("back", "actions", ["update"]),
        ("re", "actions", ["cancel-deletion", "reimport"]),
        ("new", "actions", ["create", "import", "disable"]),
    ],
)
def test_hand_edited_instruction_is_refused(key: str, field: str, value: Any) -> None:
    plan = _edit_plan()
    i = _index(plan, key)
    doc = plan_to_dict(plan)
    doc["changes"][i][field] = value
    doc.pop("summary")
    edited = load_plan(json.dumps(doc))
    with pytest.raises(StalePlan) as info:
        check_instructions(edited)
    assert str(info.value) == (
        f"plan file: changes[{i}] (key {key!r}): {field} differ from what the planner derives from its "
        f"before/after (was the file edited by hand?): make a new plan"
    )


def test_hand_edited_snapshot_is_refused() -> None:
    plan = _edit_plan()
    i = _index(plan, "upd")
    doc = plan_to_dict(plan)
    doc["changes"][i]["before"]["status"] = "sleeping"
    edited = load_plan(json.dumps(doc))
    with pytest.raises(StalePlan) as info:
        check_instructions(edited)
    assert str(info.value) == (
        f"plan file: changes[{i}] (key 'upd'): before/after are not what the planner records (was the file "
        f"edited by hand?): make a new plan"
    )
    # `before` edited consistently with an instruction still breaks the digest of what was seen.
    doc = plan_to_dict(plan)
    doc["changes"][i]["before"]["description"] = "new words"
    doc["changes"][i]["description"] = None
    with pytest.raises(StalePlan, match=r"\(key 'upd'\): state_digest differ from what the planner derives"):
        check_instructions(load_plan(json.dumps(doc)))


def test_deletion_of_a_protected_key_in_a_saved_plan_is_refused() -> None:
    plan = _edit_plan()
    i = _index(plan, "old")
    doc = plan_to_dict(plan)
    doc["changes"][i]["before"]["deletion_protection"] = True
    with pytest.raises(StalePlan) as info:
        check_instructions(load_plan(json.dumps(doc)))
    assert str(info.value) == (
        f"plan file: changes[{i}] (key 'old'): schedules key key-old for deletion while its deletion "
        f"protection is on (deletion-protected; was the file edited by hand?): make a new plan"
    )


def test_offline_plan_resolves_to_the_online_plan() -> None:
    desired = manifest([desired_key("a", {"description": "d"}), desired_key("b", {"state": "absent"})])
    live = live_state([actual_key({"name": "b"})])
    offline = make_plan(desired, live, now=NOW, fingerprints={}, backend=BACKEND, offline_material=True)
    (a, _) = offline.changes
    assert a.after is not None and a.after.fingerprint == UNKNOWN_FINGERPRINT
    assert offline.notes[0].message.startswith("fingerprint unknown: the plan read no material")
    check_instructions(offline)
    online = make_plan(desired, live, now=NOW, fingerprints={"a": fp("a")}, backend=BACKEND)
    assert [(n.key, n.code) for n in offline.notes] == [
        ("a", NoteCode.FINGERPRINT_UNKNOWN),
        ("b", NoteCode.FINGERPRINT_UNKNOWN),  # every unpinned key, also one to delete
    ]
    resolved = resolve_fingerprints(offline, {"a": fp("a"), "b": fp("b")})
    assert resolved.changes == online.changes
    assert resolved.notes == online.notes == ()
    assert load_plan(save_plan(offline)) == offline


def test_plan_file_of_the_previous_format_is_refused() -> None:
    doc = plan_to_dict(_golden_plan())
    doc.pop("manifest_digest")
    with pytest.raises(StalePlan) as info:
        load_plan(json.dumps(doc))
    assert str(info.value) == (
        "plan file has no manifest_digest: it was made by an earlier version of the provisioner, which did "
        "not record the manifests it planned: run `provision plan --out FILE` again"
    )


def test_deep_or_huge_plan_file_is_a_clear_error() -> None:
    with pytest.raises(ProvisionerError) as info:
        load_plan("[" * 100_000 + "]" * 100_000)
    assert str(info.value) == "plan file is malformed: its JSON is nested too deeply"
    doc = plan_to_dict(_golden_plan())
    doc["changes"][0]["before"]["tags"] = "DEEP"
    text = json.dumps(doc).replace('"DEEP"', "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ProvisionerError) as info:
        load_plan(text)
    assert str(info.value) == "plan file is malformed: its JSON is nested too deeply"
    with pytest.raises(ProvisionerError) as info:
        load_plan(" " * (MAX_PLAN_BYTES + 1))
    assert str(info.value) == "plan file is larger than 32 MiB: not a plan file"


def test_a_plan_saved_before_the_state_actions_still_loads() -> None:
    """A plan file of the format before enable/disable/cancel-deletion has no count for them: 0."""
    doc = plan_to_dict(_golden_plan())
    for word in ("enable", "disable", "cancel-deletion"):
        del doc["summary"][word]
    assert plan_from_dict(json.loads(json.dumps(doc))) == _golden_plan()
    doc["summary"]["enable"] = 1
    with pytest.raises(ProvisionerError) as e:
        plan_from_dict(doc)
    assert str(e.value) == (
        "plan file is malformed: plan.summary: does not match the changes (was the file edited by hand?)"
    )
