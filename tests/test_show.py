"""make_show as a pure function (every live key of the stack, by name then age; declared keys that do not
exist; --target) and its views with hostile values a KMS could return (escapes, bidi, newlines).
"""

from __future__ import annotations

import json
from dataclasses import replace

from plan_builders import actual_key, desired_key, live_state, manifest

from provisioner import views
from provisioner.model import KeyState
from provisioner.show import make_show

BACKEND = {"type": "alibaba", "region": "cn-hangzhou", "endpoint": "https://kms.cn-hangzhou.aliyuncs.com"}


def test_every_key_of_the_stack_is_shown_with_its_kms_state() -> None:
    desired = manifest([desired_key("a"), desired_key("b"), desired_key("gone", {"state": "absent"})])
    live = live_state(
        [
            actual_key({"name": "a", "key_id": "key-a2", "created_at": "2025-02-01T00:00:00Z",
                        "status": "pending-import", "fingerprint": None}),
            actual_key({"name": "a", "key_id": "key-a1", "material_expires_at": "2027-01-01T00:00:00Z"}),
            actual_key({"name": "orphan", "status": "pending-deletion"}),
        ]
    )
    report = make_show(desired, live, backend=BACKEND)
    shown = [(k.name, k.key_id) for k in report.keys]
    assert shown == [("a", "key-a1"), ("a", "key-a2"), ("orphan", "key-orphan")]
    # Without the wire KeyState (a builder's key), the status word stands in; refresh always sets it.
    assert [k.state for k in report.keys] == ["enabled", "pending-import", "pending-deletion"]
    assert report.missing == ("b",)  # "gone" is absent on purpose: not missing
    doc = report.to_dict()
    assert list(doc) == ["format_version", "stack", "backend", "backends", "keys"]
    assert doc["keys"][0]["material_expiry"] == "2027-01-01T00:00:00Z"
    assert doc["keys"][1]["material_expiry"] is None and doc["keys"][1]["fingerprint"] is None

    partial = make_show(desired, live, backend=BACKEND, targets=["b", "a"])
    assert [k.key_id for k in partial.keys] == ["key-a1", "key-a2"]
    assert (partial.missing, partial.to_dict()["targets"]) == (("b",), ["a", "b"])


def test_the_state_is_kms_keystate_verbatim() -> None:
    key = replace(actual_key({"name": "a", "status": "material-expired"}), key_state=KeyState.ENABLED)
    report = make_show(manifest([desired_key("a")]), live_state([key]))
    assert report.keys[0].state == "Enabled"


def test_views_escape_what_kms_returns() -> None:
    hostile = "key-\x1b[2J\u202eevil\nline"
    live = live_state([actual_key({"name": "a", "key_id": hostile, "aliases": ["alias/a"]})])
    report = make_show(manifest([desired_key("a")]), live, backend={**BACKEND, "endpoint": "x\x1b]0;t\x07"})
    text = views.SHOW.view("text").show(report)
    assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text
    assert text.splitlines()[1] == "Endpoint: x\\u001b]0;t\\u0007"
    assert text.splitlines()[3] == "  a (key-\\u001b[2J\\u202eevil\\u000aline): enabled"
    doc = views.SHOW.view("json").show(report)
    assert "\x1b" not in doc and "\u202e" not in doc
    assert json.loads(doc)["keys"][0]["key_id"] == "key-\\u001b[2J\\u202eevil\\u000aline"
    assert json.loads(doc)["keys"][0]["arn"].endswith("key/key-\\u001b[2J\\u202eevil\\u000aline")


def test_text_view_says_no_material_for_a_key_without_any() -> None:
    key = actual_key({"name": "a", "status": "pending-import", "fingerprint": None})
    empty = replace(key, key_state=KeyState.PENDING_IMPORT)
    report = make_show(manifest([desired_key("a")]), live_state([empty]), backend=BACKEND)
    text = views.SHOW.view("text").show(report)
    lines = text.splitlines()
    assert lines[3] == "  a (key-a): PendingImport"
    assert '      material_expiry = "no material"' in lines and "      fingerprint = null" in lines
