"""Drift: one case per kind (desired, live, now -> items), the document, and that drift needs no material."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from plan_builders import actual_key, desired_key, fp, live_state, manifest

from provisioner.drift import DriftKind, DriftReport, make_drift

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _drift(
    desired: dict[str, dict[str, Any]],
    live: list[dict[str, Any]],
    alias_owners: dict[str, str] | None = None,
    warning_days: int = 30,
) -> DriftReport:
    return make_drift(
        manifest(desired_key(n, s) for n, s in desired.items()),
        live_state((actual_key(k) for k in live), alias_owners=alias_owners),
        now=NOW,
        expiry_warning_days=warning_days,
    )


CASES: list[tuple[str, dict[str, dict[str, Any]], list[dict[str, Any]], dict[str, str], list[Any]]] = [
    # id, desired, live, alias owners, [(key, kind, detail fragment, expected, found)]
    ("missing", {"a": {}}, [], {}, [("a", "missing", "no key exists", "present", None)]),
    (
        "material-deleted",
        {"a": {}},
        [{"name": "a", "status": "pending-import"}],
        {},
        [("a", "material-deleted", "key-a has no material", "material", "no material")],
    ),
    (
        "material-expired",
        {"a": {"expiry": "2026-05-01T00:00:00Z"}},
        [{"name": "a", "status": "material-expired", "material_expires_at": "2026-05-01T00:00:00Z"}],
        {},
        [
            (
                "a",
                "material-expired",
                "expired at 2026-05-01T00:00:00Z",
                "expiry after 2026-06-01T00:00:00Z",
                "2026-05-01T00:00:00Z",
            )
        ],
    ),
    (
        "material-expiring",
        {"a": {"expiry": "2026-06-11T00:00:00Z"}},
        [{"name": "a", "material_expires_at": "2026-06-11T00:00:00Z"}],
        {},
        [
            (
                "a",
                "material-expiring",
                "in 10 day(s) (warning window 30 days)",
                "expiry after 2026-07-01T00:00:00Z",
                "2026-06-11T00:00:00Z",
            )
        ],
    ),
    (
        "fingerprint-mismatch-recorded",
        {"a": {}},
        [{"name": "a", "public_key_fingerprint": "fp:someone-else"}],
        {},
        [("a", "fingerprint-mismatch", "the recorded fingerprint is", "fp:a", "fp:someone-else")],
    ),
    (
        "fingerprint-mismatch-pinned",
        {"a": {"material": {"pin": "fp:a"}}},
        [{"name": "a", "fingerprint": None, "public_key_fingerprint": "fp:other"}],
        {},
        [
            ("a", "fingerprint-mismatch", "the pinned fingerprint is", "fp:a", "fp:other"),
            ("a", "tags", "lacks its reserved fingerprint tag", "fingerprint tag", None),
        ],
    ),
    (
        "fingerprint-mismatch-pin-vs-recorded",
        {"a": {"material": {"pin": "fp:pinned"}}},
        [{"name": "a"}],
        {},
        [("a", "fingerprint-mismatch", "records fingerprint", "fp:pinned", "fp:a")],
    ),
    (
        "tags",
        {"a": {"tags": {"team": "payments", "env": "prod"}}},
        [{"name": "a", "tags": {"team": "hacked", "env": "prod", "extra": "1"}}],
        {},
        [
            (
                "a",
                "tags",
                "tags differ: extra, team",
                {"env": "prod", "team": "payments"},
                {"env": "prod", "extra": "1", "team": "hacked"},
            )
        ],
    ),
    (
        "aliases",
        {"a": {"aliases": ["alias/a", "alias/b"]}},
        [{"name": "a", "aliases": ["alias/a", "alias/z"]}],
        {},
        [
            (
                "a",
                "aliases",
                "missing alias/b; unexpected alias/z",
                ["alias/a", "alias/b"],
                ["alias/a", "alias/z"],
            )
        ],
    ),
    (
        "description",
        {"a": {"description": "Signs receipts"}},
        [{"name": "a", "description": "edited by hand"}],
        {},
        [("a", "description", "description differs", "Signs receipts", "edited by hand")],
    ),
    (
        "deletion-protection",
        {"a": {"deletion_protection": True}},
        [{"name": "a"}],
        {},
        [("a", "deletion-protection", "is off, the manifest says on", True, False)],
    ),
    (
        "state-disabled",
        {"a": {}},
        [{"name": "a", "status": "disabled"}],
        {},
        [("a", "state", "is disabled", "enabled", "disabled")],
    ),
    (
        "state-pending-deletion",
        {"a": {}},
        [{"name": "a", "status": "pending-deletion", "deletion_date": "2026-06-08T00:00:00Z"}],
        {},
        [("a", "state", "pending deletion (deleted on 2026-06-08T00:00:00Z)", "present", "pending-deletion")],
    ),
    (
        "state-material-present",
        {"a": {"state": "material-deleted", "material": None}},
        [{"name": "a"}],
        {},
        [
            (
                "a",
                "state",
                "holds material (enabled) but the manifest says material-deleted",
                "material-deleted",
                "enabled",
            )
        ],
    ),
    (
        "state-absent-but-exists",
        {"a": {"state": "absent"}},
        [{"name": "a"}],
        {},
        [("a", "state", "is enabled but the manifest says absent", "absent", "enabled")],
    ),
    (
        "state-duplicate",
        {"a": {}},
        [{"name": "a", "key_id": "k1"}, {"name": "a", "key_id": "k2", "status": "pending-import"}],
        {},
        [("a", "state", "duplicate key k2 (pending-import)", "k1", "k2")],
    ),
    (
        "unmanaged-alias",
        {"a": {"aliases": ["alias/theirs"]}},
        [{"name": "a"}],
        {"alias/theirs": "key-foreign"},
        [("a", "unmanaged-alias", "alias/theirs points at key key-foreign", "a", "key-foreign")],
    ),
    (
        "key-version",
        {"a": {"spec": "Aliyun_AES_256", "usage": "ENCRYPT/DECRYPT"}},
        [{"name": "a", "spec": "Aliyun_AES_256", "usage": "ENCRYPT/DECRYPT", "key_versions": 2}],
        {},
        [("a", "key-version", "key key-a has 2 key versions; its recorded check value names the material "
          "of the first only", "1", "2")],
    ),
    (
        "orphan",
        {},
        [{"name": "forgotten", "key_id": "key-f"}],
        {},
        [("forgotten", "orphan", "key key-f (enabled) belongs to stack 'payments'", None, "key-f")],
    ),
]


@pytest.mark.parametrize(
    ("desired", "live", "owners", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_drift_kind(
    desired: dict[str, dict[str, Any]], live: list[dict[str, Any]], owners: dict[str, str], want: list[Any]
) -> None:
    report = _drift(desired, live, owners)
    assert not report.in_sync
    got = [(i.key, i.kind.value) for i in report.items]
    assert got == [(w[0], w[1]) for w in want]
    for item, (_, _, fragment, expected, found) in zip(report.items, want, strict=True):
        assert fragment in item.detail, item.detail
        assert item.expected == _fp(expected)
        assert item.found == _fp(found)


def _fp(value: Any) -> Any:
    return fp(value[3:]) if isinstance(value, str) and value.startswith("fp:") else value


def test_every_kind_has_a_case() -> None:
    seen = {w[1] for c in CASES for w in c[4]}
    assert seen == {k.value for k in DriftKind}


@pytest.mark.parametrize(
    ("live", "why"),
    [
        ({"name": "a"}, "healthy"),
        ({"name": "a", "material_expires_at": "2026-08-01T00:00:00Z"}, "expiry beyond the window"),
    ],
)
def test_in_sync(live: dict[str, Any], why: str) -> None:
    desired = {"a": {"expiry": live.get("material_expires_at")}}
    report = _drift(desired, [live])
    assert report.in_sync, (why, report.items)
    assert report.to_dict() == {
        "format_version": 1,
        "stack": "payments",
        "checked_at": "2026-06-01T00:00:00Z",
        "in_sync": True,
        "backends": [{"name": "default", "type": None, "region": None, "endpoint": None}],
        "drift": [],
    }


def test_quiet_cases() -> None:
    """Nothing to report: absent and gone or going, material-deleted and empty or missing."""
    report = _drift(
        {
            "gone": {"state": "absent"},
            "going": {"state": "absent"},
            "empty": {"state": "material-deleted"},
            "never": {"state": "material-deleted"},
        },
        [{"name": "going", "status": "pending-deletion"}, {"name": "empty", "status": "pending-import"}],
    )
    assert report.items == ()


def test_warning_window_is_a_parameter() -> None:
    desired = {"a": {"expiry": "2026-06-11T00:00:00Z"}}
    live = [{"name": "a", "material_expires_at": "2026-06-11T00:00:00Z"}]
    assert _drift(desired, live, warning_days=5).in_sync
    assert [i.kind for i in _drift(desired, live, warning_days=10).items] == [DriftKind.MATERIAL_EXPIRING]


def test_drift_needs_no_material() -> None:
    """A manifest whose material is unavailable (no source at all) still drifts normally."""
    report = _drift({"a": {"material": None, "description": "x"}}, [{"name": "a"}])
    assert [i.kind for i in report.items] == [DriftKind.DESCRIPTION]


def test_drift_document() -> None:
    report = _drift({"b": {"description": "new"}, "a": {}}, [{"name": "b", "description": "old"}])
    assert report.to_dict() == {
        "format_version": 1,
        "stack": "payments",
        "checked_at": "2026-06-01T00:00:00Z",
        "in_sync": False,
        "backends": [{"name": "default", "type": None, "region": None, "endpoint": None}],
        "drift": [
            {
                "key": "a",
                "kind": "missing",
                "detail": "no key exists for this manifest entry",
                "expected": "present",
                "found": None,
                "target": "default",
            },
            {
                "key": "b",
                "kind": "description",
                "detail": "description differs",
                "expected": "new",
                "found": "old",
                "target": "default",
            },
        ],
    }
    assert report.counts == {"missing": 1, "description": 1}
