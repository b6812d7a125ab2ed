"""Rendering of plan and drift documents: symbols, colour only on request, markdown tables, JSON = to_dict."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime

import pytest
from plan_builders import actual_key, default_fingerprints, desired_key, fp, live_state, manifest

from provisioner.drift import DriftReport, make_drift
from provisioner.plan.planfile import plan_to_dict
from provisioner.plan.planner import make_plan
from provisioner.plan.values import Plan
from provisioner.views.drift import render_drift_json, render_drift_markdown, render_drift_text
from provisioner.views.plan import render_plan_json, render_plan_markdown, render_plan_text

NOW = datetime(2026, 6, 1, tzinfo=UTC)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
BACKEND = {"type": "local", "path": ".provision/kms.db"}

DESIRED = manifest(
    [
        desired_key(
            "new", {"aliases": ["alias/new"], "tags": {"team": "p"}, "description": "Signs | things"}
        ),
        desired_key("upd", {"tags": {"team": "p"}, "aliases": ["alias/u"], "expiry": "2027-01-01T00:00:00Z"}),
        desired_key("gone", {"state": "absent"}),
        desired_key("md", {"state": "material-deleted"}),
    ]
)
LIVE = live_state(
    [
        actual_key(
            {
                "name": "upd",
                "tags": {"team": "q", "old": "1"},
                "aliases": ["alias/old"],
                "status": "pending-import",
            }
        ),
        actual_key({"name": "gone", "deletion_protection": True}),
        actual_key({"name": "md"}),
        actual_key({"name": "orph"}),
    ]
)


def _plan() -> Plan:
    # A plan never deletes a key whose live protection is on (deletion-protected): here "upd" lifts it.
    protected = {"upd": True, "gone": False}
    live = dataclasses.replace(
        LIVE,
        keys={
            name: tuple(dataclasses.replace(k, deletion_protection=protected.get(name, k.deletion_protection))
                        for k in keys)
            for name, keys in LIVE.keys.items()
        },
    )
    return make_plan(DESIRED, live, now=NOW, fingerprints=default_fingerprints(DESIRED), backend=BACKEND)


def _blocked_plan() -> Plan:
    desired = manifest([desired_key("bad", {"aliases": ["alias/theirs"]}), desired_key("ok", {})])
    live = live_state([actual_key({"name": "bad"})], alias_owners={"alias/theirs": "key-x"})
    return make_plan(desired, live, now=NOW, fingerprints=default_fingerprints(desired), backend=BACKEND)


def _empty_plan() -> Plan:
    desired = manifest([desired_key("a")])
    live = live_state([actual_key({"name": "a"})])
    return make_plan(desired, live, now=NOW, fingerprints=default_fingerprints(desired), backend=BACKEND)


def test_plan_text_symbols_and_no_colour() -> None:
    text = render_plan_text(_plan(), color=False)
    assert not ANSI.search(text)
    lines = text.splitlines()
    assert "  + new: create, import" in lines
    assert "  ↻ upd (key-upd): update, reimport" in lines
    assert "  x md (key-md): delete-material" in lines
    assert "  - gone (key-gone): schedule-deletion" in lines
    # Attribute differences, Terraform style.
    assert '      ~ tag team: "q" -> "p"' in lines
    assert '      - tag old = "1"' in lines
    assert "      + alias alias/u" in lines
    assert "      - alias alias/old" in lines
    assert '      ↻ material: none (deleted) -> imported again, expiry = "2027-01-01T00:00:00Z"' in lines
    assert "      ~ deletion_protection: true -> false" in lines
    assert "      - key, after a pending window of 30 days" in lines
    assert "  # orph: key key-orph of stack 'payments' is not in the manifests; it is left alone" in lines
    assert lines[-1] == (
        "Plan: 1 to create, 1 to import, 1 to reimport, 1 to delete material, 1 to update, "
        "1 to schedule for deletion."
    )


def test_plan_text_colour_on_request() -> None:
    coloured = render_plan_text(_plan(), color=True)
    assert "\x1b[32m+\x1b[0m" in coloured
    assert "\x1b[31m-\x1b[0m" in coloured
    assert ANSI.sub("", coloured) == render_plan_text(_plan(), color=False)


def test_plan_text_no_changes() -> None:
    text = render_plan_text(_empty_plan(), color=False)
    assert text.endswith("No changes. The live keys match the manifests.\n")
    assert "Plan:" not in text


def test_no_changes_next_to_an_orphan_points_at_the_note() -> None:
    desired = manifest([desired_key("a")])
    live = live_state([actual_key({"name": "a"}), actual_key({"name": "orph"})])
    plan = make_plan(desired, live, now=NOW, fingerprints=default_fingerprints(desired), backend=BACKEND)
    assert not plan.has_changes and len(plan.notes) == 1
    lines = render_plan_text(plan, color=False).splitlines()
    assert lines[-3:] == [
        "  # orph: key key-orph of stack 'payments' is not in the manifests; it is left alone",
        "",
        "No changes. The keys the manifests declare match the live keys; 1 note(s) above need no change, "
        "read them.",
    ]
    md = render_plan_markdown(plan)
    no_change = "No changes. The keys the manifests declare match the live keys; 1 note(s) below need no"
    assert f"{no_change} change, read them." in md
    assert md.index("note(s) below") < md.index("### Notes")


def test_plan_text_blocked() -> None:
    text = render_plan_text(_blocked_plan(), color=False)
    assert "  ! bad: alias-conflict: alias alias/theirs points at key key-x" in text
    assert text.endswith("Plan blocked: 1 violation(s); nothing will be applied.\n")
    assert "No changes" not in text


def test_plan_json_is_to_dict() -> None:
    for plan in (_plan(), _blocked_plan(), _empty_plan()):
        assert json.loads(render_plan_json(plan)) == plan_to_dict(plan)


def test_plan_markdown() -> None:
    md = render_plan_markdown(_plan())
    assert md.startswith("## Plan for stack `payments`\n")
    assert (
        "| create | import | adopt | reimport | delete-material | update | schedule-deletion | enable "
        "| disable | cancel-deletion | rotate |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n" in md
    )
    assert "| 1 | 1 | 0 | 1 | 1 | 1 | 1 | 0 | 0 | 0 | 0 |" in md
    assert "#### `+` `new`: create, import" in md
    assert '```diff\n+ spec = "RSA_2048"' in md
    assert "- alias alias/old" in md
    assert "### Notes" in md

    blocked = render_plan_markdown(_blocked_plan())
    assert "**Blocked**: 1 violation(s); nothing will be applied." in blocked
    assert (
        "### Violations\n\n| key | code | message |\n|---|---|---|\n"
        "| `bad` | `alias-conflict` | alias alias/theirs" in blocked
    )
    assert "No changes." in render_plan_markdown(_empty_plan())


def test_markdown_escapes_table_cells() -> None:
    desired = manifest([desired_key("a", {"description": "new | words"})])
    live = live_state([actual_key({"name": "a", "description": "old"})])
    md = render_drift_markdown(make_drift(desired, live, now=NOW))
    assert '| "new \\| words" | "old" |' in md


def test_no_material_in_any_rendering() -> None:
    """Only references and fingerprints appear; a PEM header or bytes never can (a Plan holds none)."""
    plan = _plan()
    for out in (render_plan_text(plan, color=False), render_plan_json(plan), render_plan_markdown(plan)):
        assert "PRIVATE KEY" not in out
        assert "/manifests/keys/new.pem" in out
        assert fp("new") in out


def _drift() -> DriftReport:
    return make_drift(DESIRED, LIVE, now=NOW)


def test_drift_text() -> None:
    text = render_drift_text(_drift(), color=False)
    assert not ANSI.search(text)
    assert "  ! upd: tags: tags differ: old, team" in text
    assert '      expected {"team": "p"}, found {"old": "1", "team": "q"}' in text
    assert "  ! orph: orphan: key key-orph (enabled)" in text
    assert text.splitlines()[-1].startswith("Drift: 7 item(s) (1 missing, 1 material-deleted, 1 tags,")
    assert "\x1b[33m!\x1b[0m" in render_drift_text(_drift(), color=True)


def test_drift_in_sync_renderings() -> None:
    report = make_drift(manifest([desired_key("a")]), live_state([actual_key({"name": "a"})]), now=NOW)
    assert render_drift_text(report, color=True) == "Stack 'payments': in sync, no drift.\n"
    assert "In sync at 2026-06-01T00:00:00Z: no drift." in render_drift_markdown(report)
    assert json.loads(render_drift_json(report))["in_sync"] is True


@pytest.mark.parametrize("report", [_drift()], ids=["drift"])
def test_drift_json_and_markdown(report: DriftReport) -> None:
    assert json.loads(render_drift_json(report)) == report.to_dict()
    md = render_drift_markdown(report)
    assert md.startswith("## Drift for stack `payments`\n")
    assert "| key | kind | detail | expected | found |\n|---|---|---|---|---|\n" in md
    assert '| `new` | `missing` | no key exists for this manifest entry | "present" | null |' in md
    assert "| `state` | 2 |" in md


def test_markdown_fits_a_comment() -> None:
    desired = manifest(desired_key(f"key-{i:03}", {"description": "x" * 100}) for i in range(400))
    plan = make_plan(
        desired, live_state([]), now=NOW, fingerprints=default_fingerprints(desired), backend=BACKEND
    )
    full = render_plan_markdown(plan, limit=10**9)
    assert len(full) > 60_000 and "```diff" in full
    md = render_plan_markdown(plan)
    assert len(md) <= 60_000
    assert "```diff" not in md
    assert "_Attribute details are left out to fit a comment; the job log has the full plan._" in md
    assert "- `+` `key-000`: create, import: key does not exist" in md
    assert "| 400 | 400 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 |" in md
    tiny = render_plan_markdown(plan, limit=2_000)
    assert len(tiny) <= 2_000
    assert re.search(r"- \.\.\. and \d+ more", tiny)


def test_state_actions_in_text_and_markdown() -> None:
    desired = manifest(
        [desired_key("back", {}), desired_key("cold", {"state": "disabled"}), desired_key("on", {})]
    )
    live = live_state(
        [
            actual_key(
                {"name": "back", "status": "pending-deletion", "deletion_date": "2026-06-20T00:00:00Z"}
            ),
            actual_key({"name": "cold"}),
            actual_key({"name": "on", "status": "disabled"}),
        ]
    )
    plan = make_plan(desired, live, now=NOW, fingerprints=default_fingerprints(desired), backend=BACKEND)
    lines = render_plan_text(plan, color=False).splitlines()
    assert "  ~ back (key-back): cancel-deletion" in lines
    assert (
        '      ~ deletion on "2026-06-20T00:00:00Z" cancelled (the key comes back enabled, or pending-import '
        "without material)"
    ) in lines
    assert "  ~ cold (key-cold): disable" in lines
    assert '      ~ state: "enabled" -> "disabled"' in lines
    assert "  ~ on (key-on): enable" in lines
    assert '      ~ state: "disabled" -> "enabled"' in lines
    assert lines[-1] == (
        "Plan: 0 to create, 0 to import, 0 to reimport, 0 to delete material, 0 to update, "
        "0 to schedule for deletion, 1 to cancel deletion, 1 to enable, 1 to disable."
    )
    md = render_plan_markdown(plan)
    assert "| 0 | 0 | 0 | 0 | 0 | 0 | 1 | 1 | 1 |" in md
    assert "#### `~` `cold` (`key-cold`): disable" in md
    assert '```diff\n! state: "enabled" -> "disabled"\n```' in md
