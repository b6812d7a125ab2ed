"""apply.py on the local backend (the embedded engine) and on fakes: call counts, ordering, per-key
failure isolation, read-back verification, saved-plan checks, and calls whose answer was lost after
they landed (a retry must not turn a done job into a failure).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from apply_support import key_entry, private_pem, write_key, write_manifest

from provisioner import apply as applying
from provisioner.apply import ApplyResult, check_plan_material, check_saved_plan
from provisioner.backend.base import Kms
from provisioner.backend.local import LocalTransport
from provisioner.backend.resilience import ResilientTransport
from provisioner.errors import ApplyError, KmsApiError, StalePlan
from provisioner.manifest import validate_manifests, validate_with_material
from provisioner.material import PrivateMaterial
from provisioner.model import (
    TAG_NAME,
    TAG_STACK,
    KeySpec,
    KeyState,
    KeyStatus,
    KeyUsage,
    LiveState,
    ProtectionLevel,
    claim_alias,
)
from provisioner.plan.planner import make_plan
from provisioner.plan.values import DUPLICATE_WINDOW_DAYS, Plan
from provisioner.refresh import refresh

STACK = "e2e"


class LossyTransport:
    """Carries out every call, but answers the first `action` (after it landed) with a retryable 503."""

    def __init__(self, inner: LocalTransport) -> None:
        self.inner = inner
        self.lose: set[str] = set()

    def call(self, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        body = self.inner.call(action, params)
        if action in self.lose:
            self.lose.discard(action)
            raise KmsApiError(action, "ServiceUnavailableTemporary", "lost answer", "req", 503)
        return body

    def close(self) -> None:
        self.inner.close()


class Env:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.lossy = LossyTransport(LocalTransport(folder / "kms.db"))
        self.transport = ResilientTransport(self.lossy, qps={}, sleep=lambda _s: None)
        self.kms = Kms(self.transport, info={"type": "local"})
        self.keys: dict[str, dict[str, Any]] = {}

    def declare(self, name: str, n: int, **fields: Any) -> None:
        write_key(self.folder, name, private_pem("EC_P256", n))
        self.keys[name] = key_entry(name, **fields)

    def plan(self) -> Plan:
        write_manifest(self.folder, self.keys)
        ms, fps, _ = validate_manifests([self.folder / "manifests"], variables={})
        now = datetime.now(UTC).replace(microsecond=0)
        live = refresh(self.kms, STACK, now=now, managed_names=[k.name for k in ms.keys])
        return make_plan(ms, live, now=now, fingerprints=fps, backend=self.kms.info)

    def materials(self) -> dict[str, PrivateMaterial]:
        """Every key's material, read from the manifests' sources (as apply does, never from a plan)."""
        _, read = validate_with_material([self.folder / "manifests"], variables={}, keep=True)
        return cast(dict[str, PrivateMaterial], read.materials)

    def live(self) -> LiveState:
        return refresh(self.kms, STACK, now=datetime.now(UTC), managed_names=list(self.keys))

    def apply(self, plan: Plan | None = None, **kwargs: Any) -> ApplyResult:
        plan = plan or self.plan()
        materials = self.materials()
        try:
            return applying.apply_plan(plan, self.kms, materials, **kwargs)
        finally:
            applying.wipe_all(materials)

    def counting(self) -> tuple[ApplyResult, Counter[str]]:
        """Apply a fresh plan, counting the calls of the apply stage only."""
        plan = self.plan()
        before = Counter(self.transport.calls)
        result = self.apply(plan)
        return result, Counter(self.transport.calls) - before


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.kms.close()


def key_id(env: Env, name: str) -> str:
    (key,) = env.live().keys[name]
    return key.key_id


# ------------------------------------------------------------------------------------ calls


def test_a_new_key_with_one_alias_takes_six_calls(env: Env) -> None:
    """The first edition's five, and the CreateAlias of the identity's claim (DESIGN section 10)."""
    env.declare("a", 50)
    result, calls = env.counting()
    assert result.ok, result.to_dict()
    assert calls == Counter(
        CreateKey=1, GetParametersForImport=1, ImportKeyMaterial=1, CreateAlias=2, GetPublicKey=1
    )
    assert env.kms.describe_key(claim_alias(STACK, "a")).key_id == result.outcomes[0].key_id
    assert result.outcomes[0].done[1:] == ["imported", "aliases"]
    assert not env.plan().has_changes


def test_extra_alias_and_protection_cost_one_call_each(env: Env) -> None:
    env.declare("a", 50, aliases=["alias/e2e/a", "alias/e2e/b"], deletion_protection=True)
    result, calls = env.counting()
    assert result.ok
    assert calls["CreateAlias"] == 3 and calls["SetDeletionProtection"] == 1  # the claim, two aliases
    assert sum(calls.values()) == 8


def test_tag_edit_is_tag_resource_then_read_back(env: Env) -> None:
    env.declare("a", 50)
    env.apply()
    env.keys["a"]["tags"] = {"team": "new"}
    result, calls = env.counting()
    assert result.ok
    assert calls == Counter(TagResource=1, ListResourceTags=1)


# ------------------------------------------------------------------------------------ failures


def test_one_key_failing_stops_only_that_key(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.declare("a", 50)
    env.declare("b", 51)
    original = Kms.create_alias

    def create_alias(self: Kms, alias: str, key: str) -> None:
        if alias == "alias/e2e/b":
            raise KmsApiError("CreateAlias", "Forbidden.NoPermission", "planted refusal", "r", 403)
        original(self, alias, key)

    monkeypatch.setattr(Kms, "create_alias", create_alias)
    lines: list[str] = []
    result = env.apply(progress=lines.append)
    by_key = {o.key: o for o in result.outcomes}
    assert by_key["a"].ok
    assert not by_key["b"].ok
    assert by_key["b"].error == "CreateAlias: Forbidden.NoPermission: planted refusal (request id r)"
    # The alias is claimed before the import (see the race test below), so b holds no material yet.
    assert by_key["b"].done == [f"created {by_key['b'].key_id}"]
    assert any(line.startswith("b: FAILED after [created ") for line in lines)
    assert result.to_dict()["summary"] == {"changed": 1, "failed": 1}
    monkeypatch.undo()
    # The next plan picks up where b stopped: the alias and the material are missing.
    plan = env.plan()
    assert [(c.key, c.actions, c.aliases_to_create) for c in plan.changes] == [
        ("b", ("update", "reimport"), ("alias/e2e/b",))
    ]
    assert env.apply(plan).ok


def test_read_back_catches_a_wrong_public_key(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.declare("a", 50)
    other_env = Env(env.folder / "other")
    other_env.declare("z", 52)
    other_env.apply()
    foreign_pem = other_env.kms.get_public_key(
        key_id(other_env, "z"), other_env.kms.describe_key(key_id(other_env, "z")).primary_key_version
    )
    other_env.kms.close()
    monkeypatch.setattr(Kms, "get_public_key", lambda self, k, v: foreign_pem)
    result = env.apply()
    (outcome,) = result.outcomes
    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith(f"read-back: key {outcome.key_id} reports public key sha256:")
    assert "after import, planned sha256:" in outcome.error


def test_a_blocked_plan_is_refused(env: Env) -> None:
    env.declare("a", 50)
    plan = env.plan()
    from provisioner.plan.values import Violation, ViolationCode

    blocked = dataclasses.replace(plan, violations=(Violation("a", ViolationCode.ALIAS_CONFLICT, "x"),))
    with pytest.raises(ApplyError, match="^the plan has violations and cannot be applied$"):
        applying.apply_plan(blocked, env.kms, {})
    assert env.live().keys["a"] == ()


# ------------------------------------------------------------------------------------ lost answers


@pytest.mark.parametrize(
    ("action", "edit"),
    [
        ("CreateAlias", lambda keys: keys["a"].update(aliases=["alias/e2e/a", "alias/e2e/a2"])),
        ("DeleteAlias", lambda keys: keys["a"].update(aliases=[])),
        (
            "UpdateAlias",
            lambda keys: (keys["a"].update(aliases=[]), keys["b"].update(aliases=["alias/e2e/a"])),
        ),
        ("TagResource", lambda keys: keys["a"].update(tags={"team": "x"})),
        ("UntagResource", lambda keys: keys["a"].update(tags={})),
        ("UpdateKeyDescription", lambda keys: keys["a"].update(description="new")),
        ("SetDeletionProtection", lambda keys: keys["a"].update(deletion_protection=True)),
        ("ImportKeyMaterial", lambda keys: keys["a"].update(expiry="2098-01-01T00:00:00Z")),
        ("DeleteKeyMaterial", lambda keys: keys["a"].update(state="material-deleted")),
        ("ScheduleKeyDeletion", lambda keys: keys["a"].update(state="absent")),
    ],
)
def test_a_call_whose_answer_was_lost_after_it_landed_still_converges(
    env: Env, action: str, edit: Callable[[dict[str, dict[str, Any]]], object]
) -> None:
    env.declare("a", 50)
    env.declare("b", 51)
    assert env.apply().ok
    edit(env.keys)
    env.lossy.lose = {action}
    before = env.transport.calls[action]
    result = env.apply()
    assert env.transport.calls[action] - before == 2  # landed, answer lost, retried
    assert result.ok, result.to_dict()
    assert not env.plan().has_changes


def test_create_key_whose_answer_was_lost_leaves_a_duplicate_the_next_apply_removes(env: Env) -> None:
    env.declare("a", 50)
    env.lossy.lose = {"CreateKey"}
    assert env.apply().ok
    live = env.live().keys["a"]
    assert len(live) == 2  # the retry made a second key; the first never gets material
    plan = env.plan()
    (change,) = plan.changes
    assert change.actions == () and len(change.duplicates) == 1
    result = env.apply(plan)
    assert result.ok
    assert f"duplicate {change.duplicates[0]} scheduled for deletion" in result.outcomes[0].done
    dup = env.kms.describe_key(change.duplicates[0])
    assert dup.key_state is KeyState.PENDING_DELETION
    assert not env.plan().has_changes


def test_duplicates_are_scheduled_with_the_short_window(env: Env) -> None:
    env.declare("a", 50)
    assert env.apply().ok
    holder = key_id(env, "a")
    # An empty twin of the imported key (a concurrent run's CreateKey): it goes, the holder stays.
    extra = env.kms.create_key(
        spec=KeySpec.EC_P256,
        usage=KeyUsage.SIGN_VERIFY,
        protection=ProtectionLevel.SOFTWARE,
        instance="kst-local-software",
        description="",
        tags={TAG_STACK: STACK, TAG_NAME: "a"},
    )
    assert env.apply().ok
    assert env.kms.describe_key(holder).key_state is KeyState.ENABLED
    meta = env.kms.describe_key(extra.key_id)
    assert meta.key_state is KeyState.PENDING_DELETION
    assert meta.delete_date is not None
    days = (meta.delete_date - datetime.now(UTC)).total_seconds() / 86400
    assert DUPLICATE_WINDOW_DAYS - 1 < days <= DUPLICATE_WINDOW_DAYS


# ------------------------------------------------------------------------------------ saved plans


def test_check_saved_plan_refusals(env: Env) -> None:
    env.declare("a", 50)
    env.declare("b", 51)
    create_plan = env.plan()
    env.apply()
    live = env.live()
    with pytest.raises(StalePlan, match=r"^key 'a' was to be created, but key-\w+ now carries that identity"):
        check_saved_plan(create_plan, live)
    wrong_stack = dataclasses.replace(live, stack="other")
    with pytest.raises(StalePlan, match=r"^the plan is for stack 'e2e', not 'other'$"):
        check_saved_plan(create_plan, wrong_stack)

    env.keys["a"]["tags"] = {"team": "x"}
    update_plan = env.plan()
    check_saved_plan(update_plan, env.live())  # unchanged: accepted
    a_id = key_id(env, "a")
    env.kms.update_key_description(a_id, "edited by hand")
    stale = rf"^key 'a' \({a_id}\) changed since the plan was made: make a new plan$"
    with pytest.raises(StalePlan, match=stale):
        check_saved_plan(update_plan, env.live())
    env.kms.schedule_key_deletion(a_id, 7)
    gone = dataclasses.replace(env.live(), keys={"a": (), "b": env.live().keys["b"]})
    with pytest.raises(StalePlan, match=rf"^key 'a' \({a_id}\) no longer exists: make a new plan$"):
        check_saved_plan(update_plan, gone)


def test_check_plan_material_refuses_changed_material(env: Env) -> None:
    env.declare("a", 50)
    plan = env.plan()
    (change,) = plan.changes
    planned = change.after.fingerprint if change.after else None
    check_plan_material(plan, {"a": str(planned)})  # the same material: accepted
    write_key(env.folder, "a", private_pem("EC_P256", 53))
    _, now, _ = validate_manifests([env.folder / "manifests"], variables={})
    with pytest.raises(
        StalePlan,
        match=rf"^key 'a': material no longer matches the plan: the plan has {planned}, the material read "
        rf"now is {now['a']}: make a new plan$",
    ):
        check_plan_material(plan, now)
    with pytest.raises(StalePlan, match=r"^key 'a': the plan imports material but the manifests give none$"):
        check_plan_material(plan, {})


def test_apply_result_document() -> None:
    outcomes = [applying.KeyOutcome("a", "k1", ["created k1"]), applying.KeyOutcome("b", None)]
    result = ApplyResult("s", outcomes)
    result.outcomes[1].error = "boom"
    assert result.to_dict() == {
        "format_version": 1,
        "stack": "s",
        "ok": False,
        "keys": [
            {"key": "a", "key_id": "k1", "done": ["created k1"], "error": None, "target": "default"},
            {"key": "b", "key_id": None, "done": [], "error": "boom", "target": "default"},
        ],
        "summary": {"changed": 1, "failed": 1},
        "failed_targets": ["default"],
    }


def test_cli_reports_each_failure_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed key shows in the progress lines and the summary; the rest is applied; exit 1."""
    from apply_support import run_cli

    monkeypatch.chdir(tmp_path)
    for i, name in enumerate(("a", "b", "c")):
        write_key(tmp_path, name, private_pem("EC_P256", 50 + i))
    write_manifest(tmp_path, {name: key_entry(name) for name in ("a", "b", "c")})
    original = Kms.create_alias

    def create_alias(self: Kms, alias: str, key: str) -> None:
        if alias == "alias/e2e/b":
            raise KmsApiError("CreateAlias", "Forbidden.NoPermission", "planted refusal", "r1", 403)
        original(self, alias, key)

    monkeypatch.setattr(Kms, "create_alias", create_alias)
    r = run_cli(["apply", "manifests", "--auto-approve"])
    assert r.code == 1
    assert (
        "Apply failed: 1 key(s) failed, 2 changed (kept). Fix each cause below, then plan and apply again: "
        "the new plan holds only what is left to do." in r.stdout.splitlines()
    )
    assert "  b: CreateAlias: Forbidden.NoPermission: planted refusal (request id r1)" in r.stdout
    assert "b: FAILED after [created key-" in r.stderr
    r = run_cli(["apply", "manifests", "--auto-approve", "--format", "json"])
    assert r.code == 1
    doc = json.loads(r.stdout)
    assert (doc["ok"], doc["summary"]) == (False, {"changed": 0, "failed": 1})
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    r = run_cli(["apply", "manifests", "--auto-approve"])
    assert r.code == 0, r.stdout + r.stderr
    assert "Apply complete: 1 key(s) changed, 0 failed." in r.stdout


def test_check_saved_plan_alias_refusals(env: Env) -> None:
    env.declare("a", 50)
    env.declare("b", 51)
    env.apply()
    env.keys["a"]["aliases"] = ["alias/e2e/a", "alias/e2e/new"]
    env.keys["b"]["aliases"] = []
    env.keys["a"]["aliases"].append("alias/e2e/b")  # moves from b to a
    plan = env.plan()
    (change,) = [c for c in plan.changes if c.key == "a"]
    assert (change.aliases_to_create, change.aliases_to_move) == (("alias/e2e/new",), ("alias/e2e/b",))
    live = env.live()
    check_saved_plan(plan, live)
    taken = dataclasses.replace(live, alias_owners={**live.alias_owners, "alias/e2e/new": "key-foreign"})
    with pytest.raises(StalePlan, match="^key 'a': alias alias/e2e/new was free when the plan was made and "
                       "now points at key key-foreign: make a new plan$"):
        check_saved_plan(plan, taken)
    stolen = dataclasses.replace(live, alias_owners={**live.alias_owners, "alias/e2e/b": "key-foreign"})
    with pytest.raises(StalePlan, match="^key 'a': alias alias/e2e/b now points at key key-foreign, not of "
                       "this stack: make a new plan$"):
        check_saved_plan(plan, stolen)
    owners = {k: v for k, v in live.alias_owners.items() if k != "alias/e2e/b"}
    with pytest.raises(StalePlan, match="^key 'a': alias alias/e2e/b no longer exists: make a new plan$"):
        check_saved_plan(plan, dataclasses.replace(live, alias_owners=owners))


def test_check_plan_backend(env: Env) -> None:
    env.declare("a", 50)
    plan = env.plan()
    applying.check_plan_backend(plan, {"type": "local"})
    with pytest.raises(StalePlan, match=r"^the plan was made against type=local, but apply is pointed at "
                       r"endpoint=http://h:1, region=r, type=alibaba: apply it against the backend it was "
                       r"made for, or make a new plan$"):
        applying.check_plan_backend(plan, {"type": "alibaba", "endpoint": "http://h:1", "region": "r"})


def test_an_interrupt_starts_no_further_key(env: Env) -> None:
    for i, name in enumerate(("a", "b", "c", "d")):
        env.declare(name, 50 + i)
    plan = env.plan()

    def progress(line: str) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the first key reports

    with pytest.raises(KeyboardInterrupt):
        env.apply(plan, parallelism=1, progress=progress)
    live = env.live()
    assert sum(len(keys) for keys in live.keys.values()) == 1  # the key under way finished; no other began
    (done,) = [keys[0] for keys in live.keys.values() if keys]
    assert done.status is KeyStatus.ENABLED and done.aliases


def twin(env: Env, name: str, tags: dict[str, str] | None = None) -> str:
    meta = env.kms.create_key(
        spec=KeySpec.EC_P256, usage=KeyUsage.SIGN_VERIFY, protection=ProtectionLevel.SOFTWARE,
        instance="kst-local-software", description="",
        tags={TAG_STACK: STACK, TAG_NAME: name} if tags is None else tags,
    )
    return meta.key_id


@pytest.mark.parametrize("aliases", [["alias/e2e/a", "alias/e2e/a2"], []], ids=["aliases", "no-alias"])
def test_of_two_applies_creating_one_key_only_the_claim_holder_imports(env: Env, aliases: list[str]) -> None:
    env.declare("a", 50, aliases=aliases)
    plan = env.plan()  # made before the other run's CreateKey and its claim landed
    other = twin(env, "a")
    env.kms.create_alias(claim_alias(STACK, "a"), other)
    result = env.apply(plan)
    (outcome,) = result.outcomes
    assert outcome.error == (
        f"another apply created key {other} for 'a' at the same time and holds its claim; this run's "
        f"key {outcome.key_id} (no material) is scheduled for deletion: run plan again"
    )
    assert outcome.key_id is not None
    assert outcome.done == [f"created {outcome.key_id}", f"duplicate {outcome.key_id} scheduled for deletion"]
    mine = env.kms.describe_key(outcome.key_id)
    assert mine.key_state is KeyState.PENDING_DELETION and mine.material_expire_time is None
    # The other run died before importing: the next plan finishes its key.
    plan = env.plan()
    assert [(c.key_id, c.actions) for c in plan.changes] == [(other, ("update", "reimport"))]
    assert env.apply(plan).ok
    assert env.kms.describe_key(other).key_state is KeyState.ENABLED
    assert not env.plan().has_changes


def test_a_new_keys_alias_taken_by_a_foreign_key_leaves_it_without_material(env: Env) -> None:
    env.declare("a", 50)
    plan = env.plan()
    foreign = twin(env, "a", tags={"owner": "someone-else"})
    env.kms.create_alias("alias/e2e/a", foreign)
    (outcome,) = env.apply(plan).outcomes
    assert outcome.error is not None
    assert outcome.error.startswith("CreateAlias: AliasAlreadyExists: ")
    assert outcome.key_id is not None
    assert env.kms.describe_key(outcome.key_id).key_state is KeyState.PENDING_IMPORT
    plan = env.plan()
    assert [(v.key, v.code.value) for v in plan.violations] == [("a", "alias-conflict")]


def test_a_key_killed_before_its_claim_is_claimed_then_imported_by_the_next_apply(env: Env) -> None:
    """CreateKey landed, the run died before CreateAlias of the claim: the next plan imports into that
    key, and apply claims it first (one CreateAlias), never making a second key."""
    env.declare("a", 50, aliases=[])
    orphan = twin(env, "a")
    plan = env.plan()
    assert [(c.key_id, c.actions) for c in plan.changes] == [(orphan, ("update", "reimport"))]
    result, calls = env.counting()
    assert result.ok, result.to_dict()
    assert calls["CreateAlias"] == 1 and calls["CreateKey"] == 0
    assert env.kms.describe_key(claim_alias(STACK, "a")).key_id == orphan
    assert env.kms.describe_key(orphan).key_state is KeyState.ENABLED
    assert not env.plan().has_changes


def test_an_import_into_a_key_that_holds_its_claim_costs_no_claim_call(env: Env) -> None:
    env.declare("a", 50, aliases=[])
    assert env.apply().ok
    env.keys["a"]["expiry"] = "2098-01-01T00:00:00Z"
    live = env.live()
    claims = {a: k for a, k in live.alias_owners.items() if a.startswith("alias/byok-provisioner/")}
    plan = env.plan()
    before = Counter(env.transport.calls)
    result = applying.apply_plan(plan, env.kms, env.materials(), claims=claims)
    assert result.ok, result.to_dict()
    assert Counter(env.transport.calls)["CreateAlias"] == before["CreateAlias"]


def test_the_claimed_key_stands_for_its_identity_even_beside_an_older_empty_key(env: Env) -> None:
    """An empty key older than the claimed one (a run killed before its claim, while another run
    claimed and is importing): the claimed key is the identity's, the unclaimed one the duplicate."""
    env.declare("a", 50, aliases=[])
    older = twin(env, "a")
    claimed = twin(env, "a")
    env.kms.create_alias(claim_alias(STACK, "a"), claimed)
    (change,) = env.plan().changes
    assert (change.key_id, change.duplicates) == (claimed, (older,))
    assert env.apply().ok
    assert env.kms.describe_key(older).key_state is KeyState.PENDING_DELETION
    assert env.kms.describe_key(claimed).key_state is KeyState.ENABLED


def test_an_import_into_a_key_whose_claim_another_holds_is_refused(env: Env) -> None:
    env.declare("a", 50, aliases=[])
    plan_key = twin(env, "a")
    plan = env.plan()
    other = twin(env, "a")  # made and claimed after the plan was read: a broken lock
    env.kms.create_alias(claim_alias(STACK, "a"), other)
    (outcome,) = env.apply(plan).outcomes
    assert outcome.error == (
        f"key {other} holds the claim on 'a', not {plan_key}; nothing was imported into {plan_key}: "
        f"run plan again"
    )
    assert env.kms.describe_key(plan_key).key_state is KeyState.PENDING_IMPORT


def test_a_claim_held_by_a_key_without_the_identity_blocks_the_create(env: Env) -> None:
    env.declare("a", 50, aliases=[])
    stranger = twin(env, "a", tags={"owner": "someone-else"})
    env.kms.create_alias(claim_alias(STACK, "a"), stranger)
    plan = env.plan()
    assert [(v.key, v.code.value, v.message) for v in plan.violations] == [
        (
            "a", "alias-conflict",
            f"the identity's claim alias alias/byok-provisioner/e2e/a points at key {stranger}, which does "
            f"not carry the identity (were its tags changed by hand?): restore the key's identity tags, or "
            f"delete the alias by hand",
        )
    ]
