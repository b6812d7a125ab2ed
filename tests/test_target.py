"""--target in the pure stages (issue 12 item 3): the planner plans only the names given and notes no other,
yet an alias another manifest key wants is not deleted under it and a stack key left unread is not taken
for a foreign one; refresh describes only the targets; a saved plan keeps its targets; reserved aliases
are no key's own.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from plan_builders import actual_key, default_fingerprints, desired_key, live_state, manifest

from provisioner import views
from provisioner.backend.base import Kms
from provisioner.backend.local import LocalTransport
from provisioner.errors import ProvisionerError
from provisioner.model import (
    TAG_FINGERPRINT,
    TAG_NAME,
    TAG_STACK,
    KeySpec,
    KeyUsage,
    ProtectionLevel,
    claim_alias,
    is_reserved_alias,
    lock_alias,
)
from provisioner.plan.planfile import load_plan, save_plan
from provisioner.plan.planner import make_plan
from provisioner.refresh import refresh

NOW = datetime(2026, 6, 1, tzinfo=UTC)
BACKEND = {"type": "local", "path": "kms.db", "endpoint": "local:kms.db"}


def test_reserved_aliases_are_the_claim_and_the_lock_prefixes_only() -> None:
    assert claim_alias("payments", "receipts") == "alias/byok-provisioner/payments/receipts"
    assert lock_alias("payments") == "alias/byok-provisioner-lock/payments"
    assert is_reserved_alias(claim_alias("payments", "receipts"))
    assert is_reserved_alias(lock_alias("payments"))
    for alias in ("alias/byok-provisioner", "alias/byok-provisionerx/a", "alias/payments/byok-provisioner/x"):
        assert not is_reserved_alias(alias), alias


def plan(desired: Any, live: Any, targets: list[str] | None) -> Any:
    return make_plan(
        desired, live, now=NOW, fingerprints=default_fingerprints(desired), backend=BACKEND, targets=targets
    )


def test_only_targeted_keys_are_planned_and_other_names_get_no_note() -> None:
    desired = manifest(
        [desired_key("a", {"description": "new"}), desired_key("b", {"description": "new"}), desired_key("c")]
    )
    live = live_state([actual_key({"name": "a"}), actual_key({"name": "b"}), actual_key({"name": "orphan"})])
    whole = plan(desired, live, None)
    assert [(c.key, [a.value for a in c.actions]) for c in whole.changes] == [
        ("a", ["update"]), ("b", ["update"]), ("c", ["create", "import"]),
    ]
    assert [n.key for n in whole.notes] == ["orphan"] and whole.targets == ()

    partial = plan(desired, live, ["b", "b"])
    assert [(c.key, [a.value for a in c.actions]) for c in partial.changes] == [("b", ["update"])]
    assert partial.notes == () and partial.targets == ("b",)


def test_an_alias_an_untargeted_key_wants_is_not_deleted_from_the_targeted_one() -> None:
    # "shared" is on a; the manifest moves it to b. Planning a alone must leave it for b's own plan.
    desired = manifest([desired_key("a"), desired_key("b", {"aliases": ["alias/shared"]})])
    live = live_state(
        [actual_key({"name": "a", "aliases": ["alias/shared"]}), actual_key({"name": "b"})]
    )
    assert plan(desired, live, None).change_for("a") is None  # moved by b's change instead
    assert plan(desired, live, ["a"]).changes == ()


def test_an_alias_held_by_an_unread_key_of_the_stack_moves_rather_than_conflicts() -> None:
    # With --target a, refresh read only a; b (key-b) is of this stack, listed in outside_target.
    desired = manifest([desired_key("a", {"aliases": ["alias/moving"]}), desired_key("b")])
    live = live_state([actual_key({"name": "a"})], alias_owners={"alias/moving": "key-b"})
    unread = type(live)(
        stack=live.stack, keys=live.keys, alias_owners=live.alias_owners, outside_target=frozenset({"key-b"})
    )
    partial = plan(desired, unread, ["a"])
    assert partial.violations == ()
    change = partial.change_for("a")
    assert change is not None and change.aliases_to_move == ("alias/moving",)
    # Without knowing key-b is ours, the same alias would be a conflict.
    assert [v.code.value for v in plan(desired, live, ["a"]).violations] == ["alias-conflict"]


def test_a_saved_plan_keeps_its_targets_and_a_whole_plan_has_no_field() -> None:
    desired = manifest([desired_key("a", {"description": "new"}), desired_key("b", {"description": "new"})])
    live = live_state([actual_key({"name": "a"}), actual_key({"name": "b"})])
    partial = plan(desired, live, ["a"])
    text = save_plan(partial)
    assert json.loads(text)["targets"] == ["a"]
    assert load_plan(text).targets == ("a",)
    assert "targets" not in json.loads(save_plan(plan(desired, live, None)))

    doc = json.loads(text)
    doc["targets"] = ["b", "a"]
    with pytest.raises(ProvisionerError) as info:
        load_plan(json.dumps(doc))
    assert str(info.value) == (
        "plan file is malformed: plan.targets: expected sorted, distinct key names "
        "(was the file edited by hand?)"
    )


class Counting:
    """A LocalTransport that counts the actions it answers."""

    def __init__(self, inner: LocalTransport) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def call(self, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        self.calls[action] += 1
        return self.inner.call(action, params)

    def close(self) -> None:
        self.inner.close()


def test_refresh_describes_only_targets_and_hides_reserved_aliases(tmp_path: Path) -> None:
    transport = Counting(LocalTransport(tmp_path / "kms.db"))
    kms = Kms(transport)
    ids = {}
    for name in ("a", "b", "c"):
        meta = kms.create_key(
            spec=KeySpec.EC_P256, usage=KeyUsage.SIGN_VERIFY, protection=ProtectionLevel.SOFTWARE,
            instance="kst-local-software", description="",
            tags={TAG_STACK: "payments", TAG_NAME: name, TAG_FINGERPRINT: "sha256:" + "0" * 64},
        )
        ids[name] = meta.key_id
        kms.create_alias(f"alias/{name}", meta.key_id)
    kms.create_alias(claim_alias("payments", "a"), ids["a"])
    transport.calls.clear()

    live = refresh(kms, "payments", now=NOW, managed_names=["a", "c"], targets=["a", "c"])
    assert transport.calls == {"ListTagResources": 1, "DescribeKey": 2, "ListAliases": 1}
    assert sorted(live.keys) == ["a", "c"]
    assert live.outside_target == frozenset({ids["b"]})
    assert live.stack_key_ids == frozenset(ids.values())
    assert live.foreign_keys == frozenset()
    assert live.keys["a"][0].aliases == ("alias/a",)  # the claim alias is not a's own
    assert live.alias_owners[claim_alias("payments", "a")] == ids["a"]
    kms.close()


def test_a_targeted_plan_says_so_in_its_text_and_markdown_headers() -> None:
    desired = manifest([desired_key("a"), desired_key("b", {"description": "new"})])
    live = live_state([actual_key({"name": "a"}), actual_key({"name": "b"})])
    partial = plan(desired, live, ["a"])
    words = (
        "only {} (--target); the stack's other keys were not read, so this plan may not show every change "
        "the manifests ask for."
    )
    text = views.PLAN.view("text").plan(partial).splitlines()
    nothing = "No changes. The targeted keys match the manifests."
    assert text[1:5] == ["Endpoint: local:kms.db", f"Targeted: {words.format('a')}", "", nothing]
    markdown = views.PLAN.view("markdown").plan(partial).splitlines()
    assert markdown[4:8] == [f"**Targeted**: {words.format('`a`')}", "", nothing, ""]
    whole = views.PLAN.view("text").plan(plan(desired, live, None)).splitlines()
    assert not any(line.startswith("Targeted") for line in whole)
