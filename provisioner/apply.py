"""Carry out a Plan on a KMS: exactly the changes it lists, each verified by reading it back.

Apply decides nothing new: every call comes from a Change's fields. It re-checks before (a saved plan
against the live state, material against the planned fingerprint) and verifies after (Terraform's
AssertObjectCompatible). A failure stops that key only; the next plan picks up where it stopped.
A saved plan is checked against the manifests rendered now, the material read from their sources (never
from the plan file) and a plan made afresh, all before the first write.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from provisioner.backend.base import KeyMetadata, Kms
from provisioner.errors import ApplyError, KmsApiError, ProvisionerError, StalePlan
from provisioner.model import (
    DEFAULT_TARGET,
    MANAGED_TAGS,
    TAG_NAME,
    TAG_STACK,
    ActualKey,
    DesiredState,
    KeyState,
    KeyStatus,
    LiveState,
    ManifestSet,
    claim_alias,
    format_time,
    generation_of,
)
from provisioner.plan.planner import stale_reason
from provisioner.plan.values import DUPLICATE_WINDOW_DAYS, UNKNOWN_FINGERPRINT, Action, Change, Plan
from provisioner.refresh import fingerprint_of_pem
from provisioner.specs import Material, Verification, facts
from provisioner.wire import ErrorCode
from provisioner.wrapping import wrap

DEFAULT_PARALLELISM = 4

Progress = Callable[[str], None]


def _public_key_fingerprint(kms: Kms, key_id: str, version: str) -> str:
    return fingerprint_of_pem(kms.get_public_key(key_id, version))


def _holds_material(kms: Kms, key_id: str, version: str) -> str | None:
    """Symmetric material: KMS shows nothing of it, so the read-back proves only that the key holds
    material now (DescribeKey), and names no fingerprint."""
    state = kms.describe_key(key_id).key_state
    if state not in (KeyState.ENABLED, KeyState.DISABLED):
        raise ApplyError(
            f"read-back: key {key_id} is {state.value} after import, expected it to hold material"
        )
    return None


#: How apply reads back the identity of the material a key holds, by the spec's way of verifying:
#: its fingerprint, or None where KMS cannot prove which material it holds.
READ_BACK: Mapping[Verification, Callable[[Kms, str, str], str | None]] = {
    Verification.PUBLIC_KEY_FINGERPRINT: _public_key_fingerprint,
    Verification.NONE: _holds_material,
}


@dataclass
class KeyOutcome:
    """What apply did to one key, and the error that stopped it, if any."""

    key: str
    key_id: str | None
    done: list[str] = field(default_factory=list)
    error: str | None = None
    target: str = DEFAULT_TARGET

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key, "key_id": self.key_id, "done": list(self.done), "error": self.error,
            "target": self.target,
        }


@dataclass
class ApplyResult:
    stack: str
    outcomes: list[KeyOutcome]

    #: Targets whose run failed before any key of theirs was applied (refused reads, a stale key), with
    #: the error: their keys are not in `outcomes`.
    failed_targets: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes) and not self.failed_targets

    @property
    def failing_targets(self) -> list[str]:
        """Every target with a key that failed or a run that did, sorted."""
        return sorted({o.target for o in self.outcomes if not o.ok} | set(self.failed_targets))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": 1,
            "stack": self.stack,
            "ok": self.ok,
            "keys": [o.to_dict() for o in self.outcomes],
            "summary": {
                "changed": sum(1 for o in self.outcomes if o.ok),
                "failed": sum(1 for o in self.outcomes if not o.ok),
            },
            **({"failed_targets": self.failing_targets} if self.failing_targets else {}),
            **({"target_errors": dict(sorted(self.failed_targets.items()))} if self.failed_targets else {}),
        }


def check_manifest_digest(plan: Plan, manifests: ManifestSet) -> None:
    """Refuse a saved plan made from other manifests (or other variables) than those rendered now."""
    if plan.manifest_digest != manifests.manifest_digest:
        files = ", ".join(manifests.files) or "none"
        raise StalePlan(
            f"the manifests no longer match the plan: rendered now ({files}) they have manifest_digest "
            f"{manifests.manifest_digest}, the plan was made from {plan.manifest_digest or 'none'}; a file, "
            f"--var or --var-file value changed since: give the PATH and variables the plan was made with, "
            f"or make a new plan"
        )


def check_plan_material(plan: Plan, fingerprints: Mapping[str, str]) -> None:
    """Refuse a saved plan whose known material fingerprints are not those of the material read now
    (from the manifests' sources, never the plan's); an offline plan's `unknown` is resolved later."""
    for change in plan.changes:
        named = (
            None if change.material is None else change.material.fingerprint,
            None if change.after is None else change.after.fingerprint,
        )
        planned = {str(fp) for fp in named if fp not in (None, UNKNOWN_FINGERPRINT)}
        if change.material is not None and change.key not in fingerprints:
            raise StalePlan(f"key {change.key!r}: the plan imports material but the manifests give none")
        have = fingerprints.get(change.key)
        for fp in sorted(planned):
            if have is not None and fp != have:
                raise StalePlan(
                    f"key {change.key!r}: material no longer matches the plan: the plan has {fp}, the "
                    f"material read now is {have}: make a new plan"
                )


def check_same_plan(saved: Plan, fresh: Plan) -> None:
    """Refuse a saved plan (its fingerprints resolved) that is not the plan made now from the same
    manifests, the material and the live keys: apply carries out only what was reviewed."""
    # A key's previous generations have changes of their own: one change per (name, key id).
    old = {(c.key, c.key_id or ""): c for c in saved.changes}
    new = {(c.key, c.key_id or ""): c for c in fresh.changes}
    if len(old) != len(saved.changes):
        counts = Counter((c.key, c.key_id or "") for c in saved.changes)
        twice = min(at for at, n in counts.items() if n > 1)[0]
        raise StalePlan(
            f"key {twice!r}: the plan has its change twice (was the file edited by hand?): make a new plan"
        )
    for at in sorted(set(old) | set(new)):
        key = at[0]
        if at not in new:
            raise StalePlan(f"key {key!r}: the plan changes it, but it needs no change now: make a new plan")
        if at not in old:
            raise StalePlan(f"key {key!r}: it needs a change the plan does not have: make a new plan")
        differ = [f.name for f in fields(Change) if getattr(old[at], f.name) != getattr(new[at], f.name)]
        if differ:
            raise StalePlan(
                f"key {key!r}: the plan's {', '.join(differ)} differ from what the manifests, the material "
                f"and the live keys give now (was the file edited by hand?): make a new plan"
            )


def wipe_all(materials: Mapping[str, Material]) -> None:
    for m in materials.values():
        m.wipe()


def check_plan_backend(plan: Plan, backend: Mapping[str, str], state: Path | None = None) -> None:
    """Refuse a saved plan made against another KMS than the one apply is pointed at: its digests
    say nothing about that one, and a plan of creates would be carried out there unchecked. A local
    plan that names its state file by an absolute path (one outside the folder it was made in) is the
    same backend from any folder when that is `state`, the file apply opened."""
    if dict(plan.backend) != dict(backend) and not _same_state(plan.backend, backend, state):

        def where(b: Mapping[str, str]) -> str:
            return ", ".join(f"{k}={v}" for k, v in sorted(b.items())) or "an unnamed backend"

        raise StalePlan(
            f"the plan was made against {where(plan.backend)}, but apply is pointed at {where(backend)}: "
            f"apply it against the backend it was made for, or make a new plan"
        )


#: How far a saved plan's created_at may lie ahead of the apply's clock (two machines' clocks).
CLOCK_SKEW = timedelta(minutes=5)


def check_plan_time(plan: Plan, now: datetime) -> None:
    """Refuse a saved plan made after now: a lease renews from the plan's created_at, so a file whose
    times were all moved ahead together would import material that outlives the reviewed lease."""
    if plan.created_at > now + CLOCK_SKEW:
        raise StalePlan(
            f"the plan was made at {format_time(plan.created_at)}, after now ({format_time(now)}): "
            f"was the file edited by hand? make a new plan"
        )


def _same_state(planned: Mapping[str, str], backend: Mapping[str, str], state: Path | None) -> bool:
    named = planned.get("path")
    if state is None or named is None or not Path(named).is_absolute() or planned.get("type") != "local":
        return False
    try:
        same = os.path.samefile(named, state)
    except OSError:
        return False
    rest = {k: v for k, v in planned.items() if k not in ("path", "endpoint")}
    return same and rest == {k: v for k, v in backend.items() if k not in ("path", "endpoint")}


def check_saved_plan(plan: Plan, live: LiveState) -> None:
    """Refuse a saved plan whose keys changed since it was made (StalePlan names the first such key)."""
    if plan.stack != live.stack:
        raise StalePlan(f"the plan is for stack {plan.stack!r}, not {live.stack!r}")
    for change in plan.changes:
        reason = stale_reason(change, _found_for(change, live))
        if reason is not None:
            raise StalePlan(reason)

    # Aliases are not in the digests. One the plan creates that someone took since would fail
    # halfway through; one it moves must still be held by this stack, or UpdateAlias would take it
    # from a key the stack does not own.
    ours = live.stack_key_ids
    for change in plan.changes:
        for alias in change.aliases_to_create:
            owner = live.alias_owners.get(alias)
            if owner is not None and owner != change.key_id:
                raise StalePlan(
                    f"key {change.key!r}: alias {alias} was free when the plan was made and now points at "
                    f"key {owner}: make a new plan"
                )
        for alias in change.aliases_to_move:
            owner = live.alias_owners.get(alias)
            if owner is None or owner not in ours:
                now = "no longer exists" if owner is None else f"now points at key {owner}, not of this stack"
                raise StalePlan(f"key {change.key!r}: alias {alias} {now}: make a new plan")


def _found_for(change: Change, live: LiveState) -> tuple[ActualKey, ...]:
    """The live keys a saved change is checked against: those of its name, and the key it works on and
    its duplicates wherever they are (under the old name of a rename, or a key to adopt)."""
    own = live.keys.get(change.key, ())
    wanted = {change.key_id, *change.duplicates} - {k.key_id for k in own} - {None}
    elsewhere = [k for keys in live.keys.values() for k in keys]
    elsewhere += [a.key for a in live.adopted.values() if a.key is not None]
    return (*own, *{k.key_id: k for k in elsewhere if k.key_id in wanted}.values())


class _Applier:
    def __init__(
        self,
        kms: Kms,
        materials: Mapping[str, Material],
        progress: Progress,
        stack: str,
        claims: Mapping[str, str],
    ) -> None:
        self.kms = kms
        self.materials = materials
        self.progress = progress
        self.stack = stack
        self.claims = claims  # claim alias -> the key id holding it, as read under the lock

    def run(self, change: Change) -> KeyOutcome:
        outcome = KeyOutcome(change.key, change.key_id, target=change.target)
        try:
            self._run(change, outcome)
        except ProvisionerError as e:
            outcome.error = str(e)
        if outcome.error:
            self.progress(f"{change.key}: FAILED after [{', '.join(outcome.done)}]: {outcome.error}")
        else:
            self.progress(f"{change.key}: {', '.join(outcome.done) or 'nothing to do'} ({outcome.key_id})")
        return outcome

    def _run(self, change: Change, outcome: KeyOutcome) -> None:
        key_id = change.key_id
        version = arn = ""
        emptied = False  # a cancelled deletion gave back a key without material
        for action in change.actions:
            if action is Action.CANCEL_DELETION:
                assert key_id is not None
                emptied = self._cancel_deletion(key_id) is KeyState.PENDING_IMPORT
                outcome.done.append(
                    "deletion cancelled" + (" (back in PendingImport: no material)" if emptied else "")
                )
            elif action is Action.ENABLE:
                assert key_id is not None
                self.kms.enable_key(key_id)
                self._expect_state(key_id, KeyState.ENABLED)
                outcome.done.append("enabled")
            elif action is Action.DISABLE:
                assert key_id is not None
                if emptied:
                    raise ApplyError(
                        f"key {key_id} came back from its deletion in PendingImport (it holds no material), "
                        f"so it cannot be disabled yet: run plan again: it imports the material, then "
                        f"disables the key"
                    )
                self.kms.disable_key(key_id)
                self._expect_state(key_id, KeyState.DISABLED)
                outcome.done.append("disabled")
            elif action is Action.CREATE:
                meta = self._create(change)
                key_id, version, arn = meta.key_id, meta.primary_key_version, meta.arn
                outcome.key_id = key_id
                outcome.done.append(f"created {key_id}")
                self._claim_new(change, key_id, outcome)
            elif action in (Action.IMPORT, Action.REIMPORT):
                assert key_id is not None
                created = Action.CREATE in change.actions
                first = change.aliases_to_create[:1] if created else ()
                if created:
                    # A new key's first alias before its material: taken by someone else, it stops the
                    # key while it holds nothing (the next plan reports the conflict).
                    self._create_aliases(first, key_id)
                else:
                    self._claim_existing(change, key_id)
                self._import(change, key_id)
                outcome.done.append(action.value + "ed")
                if created:
                    # The other aliases go on once the key is usable, then the import is read back.
                    self._aliases(change, key_id, skip=first)
                    if change.aliases_to_create or change.aliases_to_move:
                        outcome.done.append("aliases")
                    if change.deletion_protection:
                        self.kms.set_deletion_protection(key_id, arn, True)
                        outcome.done.append("deletion protection on")
                if self._disabled_at_import(change):
                    # GetPublicKey needs an Enabled key. This one held its material, and KMS takes
                    # back only that material, so the import itself shows that it is the one bound.
                    self._expect_state(key_id, KeyState.DISABLED)
                else:
                    self._verify_material(change, key_id, version)
                emptied = False
            elif action is Action.ADOPT:
                assert key_id is not None
                self._adopt(change, key_id)
                outcome.done.append("adopted")
            elif action is Action.UPDATE:
                assert key_id is not None
                adopted = Action.ADOPT in change.actions  # the reserved tags are written already
                self._update(change, key_id, skip_tags=MANAGED_TAGS if adopted else ())
                outcome.done.append("updated")
            elif action is Action.ROTATE:
                assert key_id is not None
                key_id = self._rotate(change, key_id, outcome)
            elif action is Action.DELETE_MATERIAL:
                assert key_id is not None
                if emptied:
                    outcome.done.append("material already absent")
                    continue
                self.kms.delete_key_material(key_id)
                self._expect_state(key_id, KeyState.PENDING_IMPORT)
                outcome.done.append("material deleted")
            elif action is Action.SCHEDULE_DELETION:
                assert key_id is not None and change.pending_window_days is not None
                self._schedule_deletion(key_id, change.pending_window_days)
                self._expect_state(key_id, KeyState.PENDING_DELETION)
                outcome.done.append(f"deletion scheduled in {change.pending_window_days} days")
        for dup in change.duplicates:
            self._schedule_deletion(dup, DUPLICATE_WINDOW_DAYS)
            outcome.done.append(f"duplicate {dup} scheduled for deletion")

    # -- actions

    def _rotate(self, change: Change, old_id: str, outcome: KeyOutcome) -> str:
        """The next generation: CreateKey, import, read back, every alias onto it (UpdateAlias), then
        the old key's declared state. Killed between any two calls, the next plan sees the new key as
        the current generation and finishes the rest; no step creates a second new key."""
        meta = self._create(change)
        new_id = meta.key_id
        outcome.key_id = new_id
        outcome.done.append(f"created {new_id} (new generation of {old_id})")
        self._import(change, new_id)
        self._verify_material(change, new_id, meta.primary_key_version)
        outcome.done.append("imported")
        self._aliases(change, new_id)
        if change.aliases_to_create or change.aliases_to_move:
            outcome.done.append("aliases")
        if change.deletion_protection:
            self.kms.set_deletion_protection(new_id, meta.arn, True)
            outcome.done.append("deletion protection on")
        if change.previous_state is DesiredState.DISABLED:
            self.kms.disable_key(old_id)
            self._expect_state(old_id, KeyState.DISABLED)
            outcome.done.append(f"previous generation {old_id} disabled")
        elif change.previous_state is DesiredState.ABSENT:
            assert change.pending_window_days is not None
            self._schedule_deletion(old_id, change.pending_window_days)
            self._expect_state(old_id, KeyState.PENDING_DELETION)
            outcome.done.append(
                f"previous generation {old_id} scheduled for deletion in {change.pending_window_days} days"
            )
        return new_id

    def _create(self, change: Change) -> KeyMetadata:
        after = change.after
        assert after is not None
        spec, usage, protection = after.spec, after.usage, after.protection
        meta = self.kms.create_key(
            spec=spec,
            usage=usage,
            protection=protection,
            instance=after.instance,
            description=change.description or "",
            tags=change.tags_to_set,
        )
        got = (meta.key_spec, meta.key_usage, meta.protection_level)
        if got != (spec, usage, protection):
            raise ApplyError(
                f"read-back: CreateKey returned a {'/'.join(got)} key, planned {spec}/{usage}/{protection}"
            )
        return meta

    def _import(self, change: Change, key_id: str) -> None:
        material = self.materials.get(change.key)
        if material is None:
            raise ApplyError(f"no material was read for key {change.key!r}")
        chosen = None if change.material is None else change.material.wrapping
        algorithm = chosen or facts(material.spec).wrapping_algorithm
        params = self.kms.get_parameters_for_import(key_id, algorithm)
        wrapped = wrap(material, params.public_key_der, algorithm)
        self.kms.import_key_material(key_id, wrapped, params.import_token, change.expire_unix or 0)

    def _verify_material(self, change: Change, key_id: str, version: str) -> None:
        if not version:
            version = self.kms.describe_key(key_id).primary_key_version
        read_back = READ_BACK[facts(self.materials[change.key].spec).verification]
        live = read_back(self.kms, key_id, version)
        planned = None if change.material is None else change.material.fingerprint
        if live is not None and live != planned:
            raise ApplyError(
                f"read-back: key {key_id} reports public key {live} after import, planned {planned}"
            )

    @staticmethod
    def _disabled_at_import(change: Change) -> bool:
        """The import goes into a key that is Disabled and stays so (a reimport of a disabled key)."""
        before = change.before
        return (
            before is not None and before.status is KeyStatus.DISABLED and Action.ENABLE not in change.actions
        )

    def _cancel_deletion(self, key_id: str) -> KeyState:
        """CancelKeyDeletion; the state the key came back in: Enabled, or PendingImport without material."""
        try:
            self.kms.cancel_key_deletion(key_id)
        except KmsApiError as e:
            # A retried call whose first attempt landed: the key is no longer pending deletion.
            if e.code != ErrorCode.REJECTED_STATE_MODIFIED_FAILED:
                raise
        state = self.kms.describe_key(key_id).key_state
        if state not in (KeyState.ENABLED, KeyState.PENDING_IMPORT):
            raise ApplyError(
                f"read-back: key {key_id} is {state.value} after CancelKeyDeletion, expected Enabled or "
                f"PendingImport"
            )
        return state

    def _schedule_deletion(self, key_id: str, days: int) -> None:
        try:
            self.kms.schedule_key_deletion(key_id, days)
        except KmsApiError as e:
            # A retried call whose first attempt landed (its answer was lost): the key is already
            # pending deletion, which is the goal. The plan never schedules a key that already was.
            if e.code != ErrorCode.REJECTED_STATE_MODIFIED_FAILED:
                raise
            if self.kms.describe_key(key_id).key_state is not KeyState.PENDING_DELETION:
                raise

    # -- claims (DESIGN section 10: no identity twice)
    #
    # The sequence is CreateKey, then CreateAlias of the identity's claim alias on the new key, then the
    # import. CreateAlias is atomic in KMS, so of two applies that create one identity at once (a broken
    # lock, a lapsed lease) exactly one holds the claim; the other never imports and schedules its new,
    # empty key for deletion. Claiming first on a placeholder would spare that orphan, but a claim left on
    # a placeholder by a killed run could only be recovered by moving it (UpdateAlias), which is not
    # atomic: two recoverers could both create. Here a run killed between CreateKey and its claim leaves
    # an empty key of the identity that no one claims: the next plan imports into it (claiming it first)
    # when it is the only one, or schedules it for deletion beside the claimed key (planner.sort_identity).

    def _claim_new(self, change: Change, key_id: str, outcome: KeyOutcome) -> None:
        """Claim the identity for the key just created; the loser schedules its key for deletion."""
        holder = self._claim(change, key_id)
        if holder == key_id:
            return
        self._schedule_deletion(key_id, DUPLICATE_WINDOW_DAYS)
        outcome.done.append(f"duplicate {key_id} scheduled for deletion")
        raise ApplyError(
            f"another apply created key {holder} for {change.key!r} at the same time and holds its claim; "
            f"this run's key {key_id} (no material) is scheduled for deletion: run plan again"
        )

    def _claim_existing(self, change: Change, key_id: str) -> None:
        """Before an import into an existing key: it must hold the identity's claim, or take it now
        (a key created before claims existed, or by a run killed before its claim)."""
        if self.claims.get(self._claim_alias(change)) == key_id:
            return
        holder = self._claim(change, key_id)
        if holder != key_id:
            raise ApplyError(
                f"key {holder} holds the claim on {change.key!r}, not {key_id}; nothing was imported into "
                f"{key_id}: run plan again"
            )

    def _claim_alias(self, change: Change) -> str:
        tags = change.tags_to_set if change.before is None else change.before.tags
        return claim_alias(self.stack, change.key, generation_of(tags))

    def _claim(self, change: Change, key_id: str) -> str:
        """CreateAlias of the claim alias on `key_id`; the key that holds the claim afterwards."""
        alias = self._claim_alias(change)
        try:
            self.kms.create_alias(alias, key_id)
            return key_id
        except KmsApiError as e:
            if e.code != ErrorCode.ALIAS_ALREADY_EXISTS:
                raise
        return self.kms.describe_key(alias).key_id  # ours when a retried CreateAlias had landed

    def _aliases(self, change: Change, key_id: str, skip: tuple[str, ...] = ()) -> None:
        self._create_aliases([a for a in change.aliases_to_create if a not in skip], key_id)
        for alias in change.aliases_to_move:
            self.kms.update_alias(alias, key_id)

    def _create_aliases(self, aliases: Iterable[str], key_id: str) -> None:
        for alias in aliases:
            try:
                self.kms.create_alias(alias, key_id)
            except KmsApiError as e:
                # A retried CreateAlias whose first attempt landed: fine if the alias is already ours.
                if (
                    e.code != ErrorCode.ALIAS_ALREADY_EXISTS
                    or alias not in self.kms.list_aliases_by_key_id(key_id)
                ):
                    raise

    def _adopt(self, change: Change, key_id: str) -> None:
        """Write the reserved identity tags on a key no stack manages, re-checking first that none does
        now: between plan and apply another stack may have adopted it."""
        stack = change.tags_to_set.get(TAG_STACK)
        found = self.kms.list_resource_tags(key_id)
        claimed = found.get(TAG_STACK)
        retried = (claimed, found.get(TAG_NAME)) == (stack, change.key)  # an earlier attempt landed
        if claimed is not None and not retried:
            raise ApplyError(
                f"key {key_id} is managed by stack {claimed!r} since the plan was made; not adopted: "
                f"make a new plan"
            )
        identity = {k: v for k, v in change.tags_to_set.items() if k in MANAGED_TAGS}
        self.kms.tag_resource(key_id, identity)
        tags = self.kms.list_resource_tags(key_id)
        wrong = [k for k, v in identity.items() if tags.get(k) != v]
        if wrong:
            raise ApplyError(
                f"read-back of key {key_id} after adopt: tag {', '.join(wrong)} not as planned"
            )

    def _update(self, change: Change, key_id: str, skip_tags: tuple[str, ...] = ()) -> None:
        kms = self.kms
        if change.description is not None:
            kms.update_key_description(key_id, change.description)
        tags_to_set = {k: v for k, v in change.tags_to_set.items() if k not in skip_tags}
        if tags_to_set:
            kms.tag_resource(key_id, tags_to_set)
        if change.tags_to_remove:
            kms.untag_resource(key_id, change.tags_to_remove)
        for alias in change.aliases_to_delete:
            try:
                kms.delete_alias(alias)
            except KmsApiError as e:
                if e.code != ErrorCode.FORBIDDEN_ALIAS_NOT_FOUND:  # already gone: the goal is met
                    raise
        self._aliases(change, key_id)
        if change.deletion_protection is not None:
            arn = (change.before.arn if change.before is not None else "") or kms.describe_key(key_id).arn
            kms.set_deletion_protection(key_id, arn, change.deletion_protection)
        self._verify_update(change, key_id)

    # -- read-back

    def _verify_update(self, change: Change, key_id: str) -> None:
        problems: list[str] = []
        if change.tags_to_set or change.tags_to_remove:
            tags = self.kms.list_resource_tags(key_id)
            problems += [f"tag {k}={tags.get(k)!r}, planned {v!r}" for k, v in change.tags_to_set.items()
                         if tags.get(k) != v]
            problems += [f"tag {k} still set" for k in change.tags_to_remove if k in tags]
        if change.aliases_to_create or change.aliases_to_move or change.aliases_to_delete:
            aliases = set(self.kms.list_aliases_by_key_id(key_id))
            problems += [f"alias {a} missing" for a in (*change.aliases_to_create, *change.aliases_to_move)
                         if a not in aliases]
            problems += [f"alias {a} still present" for a in change.aliases_to_delete if a in aliases]
        if change.description is not None or change.deletion_protection is not None:
            meta = self.kms.describe_key(key_id)
            if change.description is not None and meta.description != change.description:
                problems.append(f"description is {meta.description!r}")
            protection = change.deletion_protection
            if protection is not None and meta.deletion_protection != protection:
                problems.append(f"deletion protection is {'on' if meta.deletion_protection else 'off'}")
        if problems:
            raise ApplyError(f"read-back of key {key_id} after update: " + "; ".join(problems))

    def _expect_state(self, key_id: str, state: KeyState) -> None:
        meta = self.kms.describe_key(key_id)
        if meta.key_state is not state:
            raise ApplyError(f"read-back: key {key_id} is {meta.key_state.value}, expected {state.value}")


def apply_plan(
    plan: Plan,
    kms: Kms,
    materials: Mapping[str, Material],
    *,
    parallelism: int = DEFAULT_PARALLELISM,
    progress: Progress | None = None,
    claims: Mapping[str, str] | None = None,
    lost_lock: threading.Event | None = None,
) -> ApplyResult:
    """Apply every change of an unblocked plan, keys in parallel, each key's actions in order.

    `claims`: the claim aliases the live state showed (alias -> key id), so an import into a key that
    holds its claim costs no call; without it every such import claims first. `lost_lock`: once set
    (the stack's lock was taken over), no further key is started."""
    if plan.blocked:
        raise ApplyError("the plan has violations and cannot be applied")
    lock = threading.Lock()

    def report(line: str) -> None:
        if progress is not None:
            with lock:
                progress(line)

    applier = _Applier(kms, materials, report, plan.stack, claims or {})
    stop = threading.Event()

    def run(change: Change) -> KeyOutcome:
        if stop.is_set():
            return KeyOutcome(
                change.key, change.key_id, error="not started: apply was interrupted", target=change.target
            )
        if lost_lock is not None and lost_lock.is_set():
            return KeyOutcome(
                change.key, change.key_id,
                error="not started: this apply lost the stack's lock (its lease lapsed and another apply "
                "took it over)", target=change.target,
            )
        try:
            return applier.run(change)
        except BaseException:
            stop.set()
            raise

    pool = ThreadPoolExecutor(max_workers=max(1, parallelism), thread_name_prefix="apply")
    try:
        futures = [pool.submit(run, change) for change in plan.changes]
        outcomes = [f.result() for f in futures]
    except BaseException:
        # Ctrl-C (or a bug): start no further key, but let the keys under way finish their actions,
        # so that none is left between two calls that belong together. The next plan sees the rest.
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return ApplyResult(plan.stack, outcomes)
