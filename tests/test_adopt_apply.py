"""apply of an adoption on the local backend: what it re-checks before writing the identity tags (the
key may have been taken since the plan), a retried TagResource whose first attempt landed, and a saved
adopt plan checked against the key it names.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from apply_support import private_pem, write_manifest
from test_apply_unit import Env

from provisioner.apply import check_saved_plan
from provisioner.errors import StalePlan
from provisioner.manifest import validate_manifests
from provisioner.material import parse_private_key
from provisioner.model import (
    TAG_FINGERPRINT,
    TAG_NAME,
    TAG_STACK,
    KeySpec,
    KeyUsage,
    LiveState,
    ProtectionLevel,
)
from provisioner.plan.planner import confirm_policy, make_plan
from provisioner.plan.values import Action, Plan
from provisioner.refresh import refresh
from provisioner.specs import facts
from provisioner.wrapping import wrap

STACK = "e2e"


class AdoptEnv(Env):
    """Env whose plans read the keys `adopt:` names, as the CLI's refresh stage does."""

    def live(self) -> LiveState:
        ms, fps, _ = validate_manifests([self.folder / "manifests"], variables={})
        return refresh(
            self.kms, STACK, now=datetime.now(UTC), managed_names=[k.name for k in ms.keys],
            confirm=confirm_policy(ms, fps), adopt={k.name: k.adopt for k in ms.keys if k.adopt},
        )

    def plan(self) -> Plan:
        write_manifest(self.folder, self.keys)
        ms, fps, _ = validate_manifests([self.folder / "manifests"], variables={})
        now = datetime.now(UTC).replace(microsecond=0)
        return make_plan(ms, self.live(), now=now, fingerprints=fps, backend=self.kms.info)

    def made_by_hand(self, name: str, n: int) -> str:
        """A key created and imported outside the tool with the material `declare(name, n)` names."""
        meta = self.kms.create_key(
            spec=KeySpec.EC_P256, usage=KeyUsage.SIGN_VERIFY, protection=ProtectionLevel.SOFTWARE,
            instance="kst-local-software", description=f"{name} key", tags={},
        )
        material = parse_private_key(private_pem("EC_P256", n))
        algorithm = facts(KeySpec.EC_P256).wrapping_algorithm
        params = self.kms.get_parameters_for_import(meta.key_id, algorithm)
        self.kms.import_key_material(
            meta.key_id, wrap(material, params.public_key_der, algorithm), params.import_token, 0
        )
        self.kms.create_alias(f"alias/{STACK}/{name}", meta.key_id)
        self.kms.tag_resource(meta.key_id, {"team": f"t-{name}", "owner": "platform"})
        return meta.key_id


@pytest.fixture
def env(tmp_path: Path) -> Iterator[AdoptEnv]:
    e = AdoptEnv(tmp_path)
    yield e
    e.kms.close()


def test_adopt_writes_the_identity_tags_and_nothing_else(env: AdoptEnv) -> None:
    key_id = env.made_by_hand("a", 60)
    env.declare("a", 60, adopt=key_id)
    plan = env.plan()
    assert [(c.key, c.key_id, c.actions) for c in plan.changes] == [("a", key_id, (Action.ADOPT,))]
    before = Counter(env.transport.calls)
    result = env.apply(plan)
    assert result.ok, result.to_dict()
    assert result.outcomes[0].done == ["adopted"]
    # The re-check, the tags, their read-back.
    assert Counter(env.transport.calls) - before == Counter(ListResourceTags=2, TagResource=1)
    tags = env.kms.list_resource_tags(key_id)
    assert (tags[TAG_STACK], tags[TAG_NAME]) == (STACK, "a") and tags[TAG_FINGERPRINT].startswith("sha256:")
    assert not env.plan().has_changes


def test_a_key_another_stack_took_since_the_plan_is_not_adopted(env: AdoptEnv) -> None:
    key_id = env.made_by_hand("a", 61)
    env.declare("a", 61, adopt=key_id, description="changed")
    plan = env.plan()
    assert plan.changes[0].actions == (Action.ADOPT, Action.UPDATE)
    env.kms.tag_resource(key_id, {TAG_STACK: "billing", TAG_NAME: "theirs"})
    result = env.apply(plan)
    (outcome,) = result.outcomes
    assert outcome.error == (
        f"key {key_id} is managed by stack 'billing' since the plan was made; not adopted: make a new plan"
    )
    assert outcome.done == []
    tags = env.kms.list_resource_tags(key_id)
    assert (tags[TAG_STACK], tags[TAG_NAME]) == ("billing", "theirs")
    assert env.kms.describe_key(key_id).description == "a key"  # the update never ran


def test_a_retried_tag_resource_whose_first_attempt_landed_still_adopts(env: AdoptEnv) -> None:
    key_id = env.made_by_hand("a", 62)
    env.declare("a", 62, adopt=key_id)
    plan = env.plan()
    env.lossy.lose.add("TagResource")
    result = env.apply(plan)
    assert result.ok, result.to_dict()
    assert env.kms.list_resource_tags(key_id)[TAG_NAME] == "a"
    assert not env.plan().has_changes


def test_a_saved_adopt_plan_is_refused_once_the_key_changed(env: AdoptEnv) -> None:
    key_id = env.made_by_hand("a", 63)
    env.declare("a", 63, adopt=key_id)
    plan = env.plan()
    check_saved_plan(plan, env.live())  # the key to adopt is found where it is
    env.kms.tag_resource(key_id, {"team": "someone-else"})
    with pytest.raises(StalePlan) as info:
        check_saved_plan(plan, env.live())
    assert str(info.value) == f"key 'a' ({key_id}) changed since the plan was made: make a new plan"
