"""The planner: a pure function of (desired keys, live state, now) returning a Plan of Changes and Violations.

It does no I/O and reads no clock; the caller passes `now` and the fingerprints of the desired material.
A Plan is a value: it round-trips through JSON exactly and holds no private material, only references.

What `before` and `after` mean per action (Terraform's table, DESIGN section 5):

    action             before           after                 apply does, in this order
    create, import     None             desired key           CreateKey(all tags), 1st alias, import, rest
    reimport           actual key       desired key           import the same material with expire_unix
    delete-material    actual key       desired key           DeleteKeyMaterial
    update             actual key       desired key           tags, aliases, description, protection
    schedule-deletion  actual key       None                  ScheduleKeyDeletion(pending_window_days)

`actions` lists what a key needs in execution order, an `update` first. A key whose live deletion
protection is on is never scheduled for deletion (violation `deletion-protected`): the protection is
lifted by an earlier apply. `duplicates` are extra keys of the same identity
(they never held material): apply schedules each of them for deletion with DUPLICATE_WINDOW_DAYS, on top of
whatever `actions` says for `key_id`; a change may carry duplicates and no action.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from provisioner.errors import MaterialError, ProvisionerError, StalePlan
from provisioner.model import (
    RESERVED_TAGS,
    TAG_FINGERPRINT,
    TAG_NAME,
    TAG_STACK,
    ActualKey,
    DesiredKey,
    DesiredState,
    KeyStatus,
    LiveState,
    ManifestSet,
    format_time,
    parse_time,
)

FORMAT_VERSION = 1
#: Duplicates never held material, so nothing is lost by deleting them as soon as KMS allows.
DUPLICATE_WINDOW_DAYS = 7


class Action(StrEnum):
    CREATE = "create"
    IMPORT = "import"
    REIMPORT = "reimport"
    DELETE_MATERIAL = "delete-material"
    UPDATE = "update"
    SCHEDULE_DELETION = "schedule-deletion"


class ViolationCode(StrEnum):
    MATERIAL_IMMUTABLE = "material-immutable"
    IMMUTABLE_ATTRIBUTE = "immutable-attribute"
    ALIAS_CONFLICT = "alias-conflict"
    UNSUPPORTED = "unsupported"
    EXPIRY_IN_PAST = "expiry-in-past"
    DUPLICATE_IDENTITY = "duplicate-identity"
    DELETION_PROTECTED = "deletion-protected"


class NoteCode(StrEnum):
    FINGERPRINT_UNKNOWN = "fingerprint-unknown"


#: The fingerprint an offline plan shows for material it did not read and no pin names.
UNKNOWN_FINGERPRINT = "unknown"
#: A plan file larger than this is refused before parsing (a 5,000-key plan is a few MB).
MAX_PLAN_BYTES = 32 * 1024 * 1024


def expire_unix(expiry: datetime | None) -> int:
    """`KeyMaterialExpireUnix` for an expiry: 0 means never."""
    return 0 if expiry is None else int(expiry.timestamp())


@dataclass(frozen=True)
class Change:
    """What one key needs. Fields other than actions/reason/before/after are the exact detail apply uses."""

    key: str
    key_id: str | None  # None for create
    actions: tuple[Action, ...]
    reason: str
    before: Mapping[str, Any] | None = None
    after: Mapping[str, Any] | None = None
    # create: every tag, reserved ones included; update: user tags added or changed.
    tags_to_set: Mapping[str, str] = field(default_factory=dict)
    tags_to_remove: tuple[str, ...] = ()  # user tags only; reserved tags are never touched after creation
    aliases_to_create: tuple[str, ...] = ()  # CreateAlias
    aliases_to_move: tuple[str, ...] = ()  # held by another key of this stack: UpdateAlias to this key
    aliases_to_delete: tuple[str, ...] = ()  # DeleteAlias
    description: str | None = None  # the new description, on create or when it changes
    deletion_protection: bool | None = None  # the new value when it changes (or on create, when on)
    expire_unix: int | None = None  # import/reimport: KeyMaterialExpireUnix, 0 = never
    pending_window_days: int | None = None  # schedule-deletion
    material: Mapping[str, Any] | None = None  # MaterialSource.to_dict() with "fingerprint"; never bytes
    state_digest: str | None = None  # digest_actual() of the key as planned against; None for create
    duplicates: tuple[str, ...] = ()  # key ids to schedule for deletion with DUPLICATE_WINDOW_DAYS
    duplicate_digests: tuple[str, ...] = ()  # digest_actual() of each duplicate, same order

    @property
    def spec(self) -> str | None:
        """The desired key spec (what CreateKey takes), from `after`."""
        return None if self.after is None else str(self.after["spec"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "key_id": self.key_id,
            "actions": [a.value for a in self.actions],
            "reason": self.reason,
            "before": _plain(self.before),
            "after": _plain(self.after),
            "tags_to_set": dict(sorted(self.tags_to_set.items())),
            "tags_to_remove": list(self.tags_to_remove),
            "aliases_to_create": list(self.aliases_to_create),
            "aliases_to_move": list(self.aliases_to_move),
            "aliases_to_delete": list(self.aliases_to_delete),
            "description": self.description,
            "deletion_protection": self.deletion_protection,
            "expire_unix": self.expire_unix,
            "pending_window_days": self.pending_window_days,
            "material": _plain(self.material),
            "state_digest": self.state_digest,
            "duplicates": list(self.duplicates),
            "duplicate_digests": list(self.duplicate_digests),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "change") -> Change:
        r = _Reader(data, where)
        actions = []
        for i, word in enumerate(r.list("actions", str)):
            try:
                actions.append(Action(word))
            except ValueError:
                raise _malformed(f"{where}.actions[{i}]", f"{word!r} is not an action word") from None
        change = cls(
            key=r.req("key", str),
            key_id=r.opt("key_id", str),
            actions=tuple(actions),
            reason=r.req("reason", str),
            before=r.opt("before", dict),
            after=r.opt("after", dict),
            tags_to_set=r.str_map("tags_to_set"),
            tags_to_remove=tuple(r.list("tags_to_remove", str)),
            aliases_to_create=tuple(r.list("aliases_to_create", str)),
            aliases_to_move=tuple(r.list("aliases_to_move", str)),
            aliases_to_delete=tuple(r.list("aliases_to_delete", str)),
            description=r.opt("description", str),
            deletion_protection=r.opt("deletion_protection", bool),
            expire_unix=r.opt("expire_unix", int),
            pending_window_days=r.opt("pending_window_days", int),
            material=r.opt("material", dict),
            state_digest=r.opt("state_digest", str),
            duplicates=tuple(r.list("duplicates", str)),
            duplicate_digests=tuple(r.list("duplicate_digests", str)),
        )
        r.no_extra()
        return change


@dataclass(frozen=True)
class Violation:
    """Why the plan must not be applied: what is wrong and how to fix it."""

    key: str
    code: ViolationCode
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"key": self.key, "code": self.code.value, "message": self.message}

    @classmethod
    def from_dict(cls, data: Any, where: str = "violation") -> Violation:
        r = _Reader(data, where)
        code = r.req("code", str)
        try:
            vcode = ViolationCode(code)
        except ValueError:
            raise _malformed(f"{where}.code", f"{code!r} is not a violation code") from None
        v = cls(key=r.req("key", str), code=vcode, message=r.req("message", str))
        r.no_extra()
        return v


@dataclass(frozen=True)
class Note:
    """Information that changes nothing: an orphan key left alone, a choice the planner made."""

    key: str
    message: str
    code: NoteCode | None = None

    def to_dict(self) -> dict[str, str | None]:
        code = None if self.code is None else self.code.value
        return {"key": self.key, "code": code, "message": self.message}

    @classmethod
    def from_dict(cls, data: Any, where: str = "note") -> Note:
        r = _Reader(data, where)
        code = r.opt("code", str)
        try:
            ncode = None if code is None else NoteCode(code)
        except ValueError:
            raise _malformed(f"{where}.code", f"{code!r} is not a note code") from None
        n = cls(key=r.req("key", str), message=r.req("message", str), code=ncode)
        r.no_extra()
        return n


@dataclass(frozen=True)
class Plan:
    """The whole judgement: changes (sorted by key) and violations (sorted); any violation blocks it."""

    stack: str
    created_at: datetime
    backend: Mapping[str, str]
    changes: tuple[Change, ...]
    violations: tuple[Violation, ...] = ()
    notes: tuple[Note, ...] = ()
    format_version: int = FORMAT_VERSION
    #: ManifestSet.manifest_digest of the manifests planned: `apply --plan` refuses others.
    manifest_digest: str = ""

    @property
    def summary(self) -> dict[str, int]:
        """Count of keys per action word; every word present. Duplicates count as schedule-deletion."""
        counts = {a.value: 0 for a in Action}
        for c in self.changes:
            for a in c.actions:
                counts[a.value] += 1
            counts[Action.SCHEDULE_DELETION.value] += len(c.duplicates)
        return counts

    @property
    def blocked(self) -> bool:
        return bool(self.violations)

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    def change_for(self, key: str) -> Change | None:
        return next((c for c in self.changes if c.key == key), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "stack": self.stack,
            "created_at": format_time(self.created_at),
            "backend": dict(self.backend),
            "manifest_digest": self.manifest_digest,
            "changes": [c.to_dict() for c in self.changes],
            "violations": [v.to_dict() for v in self.violations],
            "notes": [n.to_dict() for n in self.notes],
            "summary": self.summary,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        if not isinstance(data, dict):
            raise ProvisionerError("plan file is malformed: expected a JSON object at the top level")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise StalePlan(
                f"plan file has format_version {version!r}; this provisioner reads format_version "
                f"{FORMAT_VERSION}: run `provision plan --out FILE` again"
            )
        if "manifest_digest" not in data:
            raise StalePlan(
                "plan file has no manifest_digest: it was made by an earlier version of the provisioner, "
                "which did not record the manifests it planned: run `provision plan --out FILE` again"
            )
        r = _Reader(data, "plan")
        created = r.req("created_at", str)
        try:
            created_at = parse_time(created)
        except ValueError:
            created_at = None
        if created_at is None:
            raise _malformed("plan.created_at", f"{created!r} is not a time like 2026-01-31T12:00:00Z")
        plan = cls(
            stack=r.req("stack", str),
            created_at=created_at,
            backend=r.str_map("backend"),
            changes=tuple(
                Change.from_dict(c, f"changes[{i}]") for i, c in enumerate(r.list("changes", dict))
            ),
            violations=tuple(
                Violation.from_dict(v, f"violations[{i}]") for i, v in enumerate(r.list("violations", dict))
            ),
            notes=tuple(Note.from_dict(n, f"notes[{i}]") for i, n in enumerate(r.list("notes", dict))),
            format_version=r.req("format_version", int),
            manifest_digest=r.req("manifest_digest", str),
        )
        summary = r.opt("summary", dict)
        r.no_extra()
        if summary is not None and summary != plan.summary:
            raise _malformed("plan.summary", "does not match the changes (was the file edited by hand?)")
        # A key created under one stack's identity tags while apply checks another stack's live state
        # would make a duplicate that the rightful stack's next plan schedules for deletion.
        for i, c in enumerate(plan.changes):
            expected = {TAG_STACK: plan.stack, TAG_NAME: c.key}
            for tag, value in expected.items():
                if tag in c.tags_to_set and c.tags_to_set[tag] != value:
                    raise _malformed(
                        f"changes[{i}].tags_to_set",
                        f"{tag} is {c.tags_to_set[tag]!r}, not {value!r} (was the file edited by hand?)",
                    )
        return plan


def save_plan(plan: Plan, *, relative_to: Path | None = None) -> str:
    """The plan file's text: stable, sorted JSON with a final newline.

    With `relative_to` (the working folder), material files below it are recorded relative to it, so
    `apply --plan` works from another checkout of the same repository (a CI job on another runner).
    """
    if relative_to is not None:
        plan = relative_materials(plan, relative_to)
    return json.dumps(plan.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def relative_materials(plan: Plan, folder: Path) -> Plan:
    """The plan with material files below `folder` named relative to it, as save_plan records them."""
    return replace(plan, changes=tuple(_relative_material(c, folder) for c in plan.changes))


def _relative_material(change: Change, folder: Path) -> Change:
    file = (change.material or {}).get("file")
    if not file or not Path(file).is_absolute() or not Path(file).is_relative_to(folder):
        return change
    return replace(change, material={**(change.material or {}), "file": str(Path(file).relative_to(folder))})


def load_plan(text: str) -> Plan:
    if len(text) > MAX_PLAN_BYTES:
        raise ProvisionerError(f"plan file is larger than {MAX_PLAN_BYTES >> 20} MiB: not a plan file")
    try:
        data = json.loads(text)
        return Plan.from_dict(data)
    except json.JSONDecodeError as e:
        raise ProvisionerError(
            f"plan file is not valid JSON: line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    except RecursionError:
        raise ProvisionerError("plan file is malformed: its JSON is nested too deeply") from None


# ----------------------------------------------------------------------------------------- snapshots


def actual_snapshot(key: ActualKey) -> dict[str, Any]:
    """`before`: the actual key as the plan saw it, JSON-able."""
    return {
        "key_id": key.key_id,
        "arn": key.arn,
        "status": key.status.value,
        "spec": key.spec.value,
        "usage": key.usage.value,
        "protection": key.protection.value,
        "instance": key.instance,
        "description": key.description,
        "tags": dict(sorted(key.tags.items())),
        "aliases": sorted(key.aliases),
        "material_expires_at": format_time(key.material_expires_at),
        "deletion_date": format_time(key.deletion_date),
        "deletion_protection": key.deletion_protection,
        "recorded_fingerprint": key.recorded_fingerprint,
        "public_key_fingerprint": key.public_key_fingerprint,
    }


def desired_snapshot(key: DesiredKey, fingerprint: str | None) -> dict[str, Any]:
    """`after`: the desired key, JSON-able; `tags` are user tags (the reserved ones are in tags_to_set)."""
    return {
        "spec": key.spec.value,
        "usage": key.usage.value,
        "protection": key.protection.value,
        "instance": key.instance,
        "description": key.description,
        "tags": dict(sorted(key.tags.items())),
        "aliases": sorted(key.aliases),
        "expiry": format_time(key.expiry),
        "deletion_protection": key.deletion_protection,
        "deletion_window_days": key.deletion_window_days,
        "state": key.state.value,
        "fingerprint": fingerprint,
    }


def digest_actual(key: ActualKey) -> str:
    """`sha256:<hex>` of what apply depends on, so a saved plan can tell that a key changed since.

    The snapshot less the confirmed public key, which only some reads fetch (the recorded
    fingerprint is in the tags).
    """
    return digest_snapshot(actual_snapshot(key))


def digest_snapshot(before: Mapping[str, Any]) -> str:
    """digest_actual() of the key an actual_snapshot() (a change's `before`) describes."""
    facts = {k: v for k, v in before.items() if k != "public_key_fingerprint"}
    canonical = json.dumps(facts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


# ----------------------------------------------------------------------------------------- planner


_HOLDS_MATERIAL = frozenset({KeyStatus.ENABLED, KeyStatus.DISABLED})


@dataclass(frozen=True)
class Identity:
    """The live keys of one name, sorted out: the one we manage, the duplicates to remove."""

    primary: ActualKey | None
    duplicates: tuple[ActualKey, ...]
    conflict: tuple[ActualKey, ...]  # more than one key holding material: we cannot pick


def _oldest_first(keys: Iterable[ActualKey]) -> list[ActualKey]:
    return sorted(keys, key=lambda k: (k.created_at, k.key_id))


def sort_identity(keys: tuple[ActualKey, ...]) -> Identity:
    active = _oldest_first(k for k in keys if k.status is not KeyStatus.PENDING_DELETION)
    if not active:
        # Keys already pending deletion are left alone; the oldest stands for the identity.
        pending = _oldest_first(keys)
        return Identity(pending[0] if pending else None, (), ())
    # An expired key once held material and stays bound to it, so it counts as a holder.
    holders = [k for k in active if k.status is not KeyStatus.PENDING_IMPORT]
    if len(holders) > 1:
        return Identity(None, (), tuple(holders))
    primary = holders[0] if holders else active[0]
    return Identity(primary, tuple(k for k in active if k is not primary), ())


class _Planner:
    def __init__(
        self,
        desired: ManifestSet,
        live: LiveState,
        now: datetime,
        fingerprints: Mapping[str, str],
        offline: bool = False,
    ) -> None:
        if desired.stack != live.stack:
            raise ProvisionerError(
                f"live state was read for stack {live.stack!r} "
                f"but the manifests declare stack {desired.stack!r}"
            )
        self.desired = desired
        self.live = live
        self.now = now
        self.fingerprints = fingerprints
        self.offline = offline
        self.changes: list[Change] = []
        self.violations: list[Violation] = []
        self.notes: list[Note] = []
        self.identities = {name: sort_identity(keys) for name, keys in live.keys.items()}
        self.our_ids = frozenset(k.key_id for keys in live.keys.values() for k in keys)
        # Who of ours holds each alias, from the keys themselves (the most direct fact).
        self.our_alias_owner: dict[str, str] = {}
        for keys in live.keys.values():
            for k in keys:
                for a in k.aliases:
                    self.our_alias_owner[a] = k.key_id
        # Aliases that a key the plan keeps (or creates) claims: those move rather than get deleted.
        # A material-deleted key that does not exist is not created, so it claims nothing.
        self.claimed: dict[str, str] = {}
        for d in desired.keys:
            exists = self.identities.get(d.name, Identity(None, (), ())).primary is not None
            if d.state is DesiredState.PRESENT or (d.state is DesiredState.MATERIAL_DELETED and exists):
                for a in d.aliases:
                    self.claimed[a] = d.name

    def violate(self, key: str, code: ViolationCode, message: str) -> None:
        self.violations.append(Violation(key, code, message))

    def run(self) -> None:
        desired_names = {d.name for d in self.desired.keys}
        for d in self.desired.keys:
            self.plan_key(d)
            if self.offline and d.material is not None and d.material.fingerprint is None:
                self.notes.append(
                    Note(
                        d.name,
                        "fingerprint unknown: the plan read no material (--offline-material) and "
                        "`material.fingerprint` pins none; apply reads the material and checks it before "
                        "its first write (pin the fingerprint to review it here)",
                        NoteCode.FINGERPRINT_UNKNOWN,
                    )
                )
        for name in sorted(set(self.live.keys) - desired_names):
            ids = ", ".join(k.key_id for k in self.live.keys[name])
            self.notes.append(
                Note(
                    name, f"key {ids} of stack {self.live.stack!r} is not in the manifests; it is left alone"
                )
            )

    # -- one key

    def plan_key(self, d: DesiredKey) -> None:
        ident = self.identities.get(d.name, Identity(None, (), ()))
        if ident.conflict:
            ids = ", ".join(k.key_id for k in ident.conflict)
            self.violate(
                d.name,
                ViolationCode.DUPLICATE_IDENTITY,
                f"keys {ids} all carry the identity {d.name!r} and all hold material; the provisioner cannot "
                f"tell which one is meant: schedule the unwanted ones for deletion by hand",
            )
            return
        if ident.primary is None:
            self.plan_new(d)
        elif d.state is DesiredState.ABSENT:
            self.plan_absent(d, ident.primary, ident.duplicates)
        else:
            self.plan_existing(d, ident.primary, ident.duplicates)

    def fingerprint_of(self, d: DesiredKey) -> str | None:
        fp = self.fingerprints.get(d.name)
        if fp is None and d.material is not None:
            fp = d.material.fingerprint
            if fp is None and self.offline:
                fp = UNKNOWN_FINGERPRINT
        return fp

    def check_expiry(self, d: DesiredKey) -> bool:
        if d.expiry is not None and d.expiry <= self.now:
            self.violate(
                d.name,
                ViolationCode.EXPIRY_IN_PAST,
                f"expiry {format_time(d.expiry)} is not after now ({format_time(self.now)}): "
                f"set a later expiry or `expiry: never`",
            )
            return False
        return True

    def material_ref(self, d: DesiredKey, why: str) -> tuple[dict[str, Any], str] | None:
        """The material reference and fingerprint for an import, or a violation when there is none."""
        if d.material is None:
            self.violate(
                d.name,
                ViolationCode.UNSUPPORTED,
                f"{why} but the manifest gives no `material` source for it: add one",
            )
            return None
        fp = self.fingerprint_of(d)
        if fp is None:
            raise MaterialError(
                f"{d.location}: the fingerprint of the material for key {d.name!r} is unknown; "
                f"the planner needs the material read first"
            )
        return {**d.material.to_dict(), "fingerprint": fp}, fp

    def plan_new(self, d: DesiredKey) -> None:
        if d.state is DesiredState.ABSENT:
            return
        if d.state is DesiredState.MATERIAL_DELETED:
            # Creating an empty key only to keep it empty helps nobody; its identity tag would need a
            # fingerprint we may not have. Say so instead of doing it.
            self.notes.append(
                Note(d.name, "key does not exist and its state is material-deleted: nothing to create")
            )
            return
        ok = self.check_expiry(d)
        claims = self.plan_alias_claims(d)
        ref = self.material_ref(d, "key does not exist and must be created and imported")
        if not ok or ref is None or claims is None:
            return
        material, fp = ref
        aliases_create, aliases_move = claims
        tags = {k: v for k, v in d.tags.items() if k not in RESERVED_TAGS}
        tags.update({TAG_STACK: self.desired.stack, TAG_NAME: d.name, TAG_FINGERPRINT: fp})
        self.changes.append(
            Change(
                key=d.name,
                key_id=None,
                actions=(Action.CREATE, Action.IMPORT),
                reason="key does not exist",
                before=None,
                after=desired_snapshot(d, fp),
                tags_to_set=dict(sorted(tags.items())),
                aliases_to_create=aliases_create,
                aliases_to_move=aliases_move,
                description=d.description,
                deletion_protection=True if d.deletion_protection else None,
                expire_unix=expire_unix(d.expiry),
                material=material,
            )
        )

    def plan_alias_claims(
        self, d: DesiredKey, holder: str | None = None
    ) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """Aliases `d` lists that `holder` lacks: (to create, to move); None on a conflict."""
        create: list[str] = []
        move: list[str] = []
        conflict = False
        for a in sorted(d.aliases):
            owner = self.our_alias_owner.get(a)
            if owner is None:
                owner = self.live.alias_owners.get(a)
                if owner is not None and (owner not in self.our_ids or owner in self.live.foreign_keys):
                    self.violate(
                        d.name,
                        ViolationCode.ALIAS_CONFLICT,
                        f"alias {a} points at key {owner}, which is not managed by stack "
                        f"{self.desired.stack!r}: remove the alias from the manifest, or delete or move it "
                        f"off that key by hand",
                    )
                    conflict = True
                    continue
            if owner is None:
                create.append(a)
            elif owner != holder:
                move.append(a)
        if conflict:
            return None
        return tuple(create), tuple(move)

    def plan_absent(self, d: DesiredKey, key: ActualKey, duplicates: tuple[ActualKey, ...]) -> None:
        if d.deletion_protection:
            self.violate(
                d.name,
                ViolationCode.UNSUPPORTED,
                "state is absent but deletion_protection is true: set deletion_protection: false first",
            )
            return
        dup_ids = tuple(k.key_id for k in duplicates)
        if key.status is KeyStatus.PENDING_DELETION:
            if dup_ids and self.unprotected(d, duplicates):
                self.changes.append(self.duplicates_only(d, key, duplicates))
            return
        if not self.unprotected(d, (key, *duplicates)):
            return
        self.changes.append(
            Change(
                key=d.name,
                key_id=key.key_id,
                actions=(Action.SCHEDULE_DELETION,),
                reason=f"state is absent: deletion in {d.deletion_window_days} days",
                before=actual_snapshot(key),
                after=None,
                pending_window_days=d.deletion_window_days,
                state_digest=digest_actual(key),
                duplicates=dup_ids,
                duplicate_digests=tuple(digest_actual(k) for k in duplicates),
            )
        )

    def unprotected(self, d: DesiredKey, doomed: Iterable[ActualKey]) -> bool:
        """True when none of the keys to schedule for deletion has live deletion protection on.

        Lifting protection and deleting in one apply would let one reviewed change do both; the
        protection is there so that deleting takes two.
        """
        protected = [k.key_id for k in doomed if k.deletion_protection]
        if protected:
            self.violate(
                d.name,
                ViolationCode.DELETION_PROTECTED,
                f"key {', '.join(protected)} has deletion protection on, so it cannot be scheduled for "
                f"deletion: first apply the manifest with state: present and deletion_protection: false, "
                f"then set state: absent",
            )
        return not protected

    def duplicates_only(self, d: DesiredKey, key: ActualKey, duplicates: tuple[ActualKey, ...]) -> Change:
        dup_ids = tuple(k.key_id for k in duplicates)
        return Change(
            key=d.name,
            key_id=key.key_id,
            actions=(),
            reason=f"{len(dup_ids)} duplicate key(s) without material carry this identity: schedule deletion",
            before=actual_snapshot(key),
            after=desired_snapshot(d, self.fingerprint_of(d)) if d.state is not DesiredState.ABSENT else None,
            state_digest=digest_actual(key),
            duplicates=dup_ids,
            duplicate_digests=tuple(digest_actual(k) for k in duplicates),
        )

    def plan_existing(self, d: DesiredKey, key: ActualKey, duplicates: tuple[ActualKey, ...]) -> None:
        n_before = len(self.violations)
        if key.status is KeyStatus.PENDING_DELETION:
            self.violate(
                d.name,
                ViolationCode.UNSUPPORTED,
                f"key {key.key_id} is pending deletion (on {format_time(key.deletion_date)}) but the "
                f"manifest wants it {d.state.value}: cancel the deletion by hand (CancelKeyDeletion) "
                f"or set state: absent",
            )
            return
        self.check_immutable(d, key)
        self.unprotected(d, duplicates)
        if d.state is DesiredState.PRESENT:
            self.check_expiry(d)
            self.check_material(d, key)

        reasons: list[str] = []
        actions: list[Action] = []
        # -- update
        tags_set = {k: v for k, v in d.tags.items() if k not in RESERVED_TAGS and key.tags.get(k) != v}
        tags_remove = tuple(sorted(k for k in key.user_tags if k not in d.tags))
        aliases_create, aliases_move = self.plan_alias_claims(d, holder=key.key_id) or ((), ())
        aliases_delete = tuple(sorted(a for a in key.aliases if a not in d.aliases and a not in self.claimed))
        description = d.description if d.description != key.description else None
        protection = d.deletion_protection if d.deletion_protection != key.deletion_protection else None
        if tags_set or tags_remove:
            reasons.append("tags differ")
        if aliases_create or aliases_move or aliases_delete:
            reasons.append("aliases differ")
        if description is not None:
            reasons.append("description differs")
        if protection is not None:
            reasons.append(f"deletion protection turns {'on' if protection else 'off'}")
        if reasons:
            actions.append(Action.UPDATE)
        # -- material
        material: dict[str, Any] | None = None
        expire: int | None = None
        if d.state is DesiredState.PRESENT:
            why = None
            if key.status is KeyStatus.PENDING_IMPORT:
                why = "key has no material"
            elif key.status is KeyStatus.MATERIAL_EXPIRED:
                why = "material expired"
            elif expire_unix(key.material_expires_at) != expire_unix(d.expiry):
                why = (
                    f"material expiry changes from {format_time(key.material_expires_at) or 'never'} "
                    f"to {format_time(d.expiry) or 'never'}"
                )
            if why is not None:
                ref = self.material_ref(d, why)
                if ref is not None:
                    material = ref[0]
                    expire = expire_unix(d.expiry)
                    actions.append(Action.REIMPORT)
                    reasons.append(why)
        elif key.status in _HOLDS_MATERIAL:
            actions.append(Action.DELETE_MATERIAL)
            reasons.append("state is material-deleted and the key holds material")

        if len(self.violations) > n_before:
            return
        dup_ids = tuple(k.key_id for k in duplicates)
        if not actions:
            if dup_ids:
                self.changes.append(self.duplicates_only(d, key, duplicates))
            return
        if dup_ids:
            reasons.append(f"{len(dup_ids)} duplicate key(s) without material to delete")
        self.changes.append(
            Change(
                key=d.name,
                key_id=key.key_id,
                actions=tuple(actions),
                reason="; ".join(reasons),
                before=actual_snapshot(key),
                after=desired_snapshot(d, self.fingerprint_of(d)),
                tags_to_set=dict(sorted(tags_set.items())),
                tags_to_remove=tags_remove,
                aliases_to_create=aliases_create,
                aliases_to_move=aliases_move,
                aliases_to_delete=aliases_delete,
                description=description,
                deletion_protection=protection,
                expire_unix=expire,
                material=material,
                state_digest=digest_actual(key),
                duplicates=dup_ids,
                duplicate_digests=tuple(digest_actual(k) for k in duplicates),
            )
        )

    def check_immutable(self, d: DesiredKey, key: ActualKey) -> None:
        diffs = [
            (attr, str(getattr(key, attr)), str(getattr(d, attr)))
            for attr in ("spec", "usage", "protection")
            if getattr(key, attr) != getattr(d, attr)
        ]
        # No instance in the manifest means "wherever it is"; only a named instance must match.
        if d.instance is not None and d.instance != key.instance:
            diffs.append(("instance", str(key.instance), d.instance))
        if diffs:
            what = ", ".join(f"{a} is {live} (manifest says {want})" for a, live, want in diffs)
            self.violate(
                d.name,
                ViolationCode.IMMUTABLE_ATTRIBUTE,
                f"key {key.key_id}: {what}; these cannot change on an existing key: restore the manifest "
                f"values, or retire this key (state: absent) and declare a new one under another name",
            )

    def check_material(self, d: DesiredKey, key: ActualKey) -> None:
        live = {
            "recorded": key.recorded_fingerprint,
            "live public key": key.public_key_fingerprint,
        }
        wanted = {"material": self.fingerprints.get(d.name)}
        if d.material is not None and d.material.fingerprint is not None:
            wanted["pinned fingerprint"] = d.material.fingerprint
        for wname, want in wanted.items():
            if want is None:
                continue
            for lname, have in live.items():
                if have is not None and have != want:
                    self.violate(
                        d.name,
                        ViolationCode.MATERIAL_IMMUTABLE,
                        f"key {key.key_id} is bound to material {have} ({lname}) but the manifest's {wname} "
                        f"is {want}: material never changes on a key; point `material` back at the original, "
                        f"or retire this key (state: absent) and declare a new one under another name",
                    )
                    return


def make_plan(
    desired: ManifestSet,
    live: LiveState,
    *,
    now: datetime,
    fingerprints: Mapping[str, str],
    backend: Mapping[str, str],
    created_at: datetime | None = None,
    offline_material: bool = False,
) -> Plan:
    """Compare the manifests with the live state. Pure: `now` and the material fingerprints are inputs.

    `offline_material`: no material was read (`plan --offline-material`); a key's fingerprint is its pin,
    or UNKNOWN_FINGERPRINT with a `fingerprint-unknown` note; apply resolves it (resolve_fingerprints).
    """
    planner = _Planner(desired, live, now, fingerprints, offline_material)
    planner.run()
    return Plan(
        stack=desired.stack,
        created_at=(created_at or now).replace(microsecond=0),  # plan files keep whole seconds
        backend={k: str(v) for k, v in backend.items() if v is not None},
        changes=tuple(sorted(planner.changes, key=lambda c: (c.key, c.key_id or ""))),
        violations=tuple(sorted(set(planner.violations), key=lambda v: (v.key, v.code.value, v.message))),
        notes=tuple(sorted(planner.notes, key=lambda n: (n.key, n.message))),
        manifest_digest=desired.manifest_digest,
    )


def stale_reason(change: Change, found: Iterable[ActualKey]) -> str | None:
    """Why a saved change no longer fits the live keys of its identity (`found`), or None if it still does.

    For `apply --plan`: the key planned against, and every duplicate to be deleted, must be exactly as
    the plan saw them (a duplicate that gained material since must not be scheduled for deletion).
    """
    by_id = {k.key_id: k for k in found}
    if change.key_id is None:
        live = sorted(i for i, k in by_id.items() if k.status is not KeyStatus.PENDING_DELETION)
        if live:
            return (
                f"key {change.key!r} was to be created, but {', '.join(live)} now carries that identity: "
                f"make a new plan"
            )
        return None
    actual = by_id.get(change.key_id)
    if actual is None:
        return f"key {change.key!r} ({change.key_id}) no longer exists: make a new plan"
    if change.state_digest is not None and digest_actual(actual) != change.state_digest:
        return f"key {change.key!r} ({change.key_id}) changed since the plan was made: make a new plan"
    for dup, digest in zip(change.duplicates, change.duplicate_digests, strict=False):
        other = by_id.get(dup)
        if other is None or digest_actual(other) != digest:
            return (
                f"duplicate key {dup} of {change.key!r} changed or vanished since the plan was made "
                f"(it may hold material now): make a new plan"
            )
    return None


# ----------------------------------------------------------------------------------------- saved plans


def derive_change(change: Change, stack: str) -> Change:
    """`change` with every instruction re-derived from its own `before`/`after`, as the planner derives it.

    Pure. What the planner takes from elsewhere is kept as it is: the material source and the deletion
    window (from the manifests), which aliases other keys claim (create or move, kept or deleted) and the
    reason; `apply --plan` compares those with a plan made afresh. Raises KeyError, TypeError or
    ValueError when before/after are not snapshots the planner makes.
    """
    before, after = change.before, change.after
    if before is None:
        if after is None:
            raise ValueError("neither before nor after")
        fp = after["fingerprint"]
        tags = {k: v for k, v in after["tags"].items() if k not in RESERVED_TAGS}
        tags.update({TAG_STACK: stack, TAG_NAME: change.key, TAG_FINGERPRINT: fp})
        create, move = _alias_split(change, sorted(after["aliases"]))
        return replace(
            change,
            key_id=None,
            actions=(Action.CREATE, Action.IMPORT),
            tags_to_set=dict(sorted(tags.items())),
            tags_to_remove=(),
            aliases_to_create=create,
            aliases_to_move=move,
            aliases_to_delete=(),
            description=after["description"],
            deletion_protection=True if after["deletion_protection"] else None,
            expire_unix=expire_unix(parse_time(after["expiry"])),
            pending_window_days=None,
            material={**(change.material or {}), "fingerprint": fp},
            state_digest=None,
            duplicates=(),
            duplicate_digests=(),
        )
    if len(change.duplicates) != len(change.duplicate_digests):
        raise ValueError("duplicates and duplicate_digests differ in length")
    status = KeyStatus(before["status"])
    if after is None:
        deleting = status is not KeyStatus.PENDING_DELETION
        return replace(
            change,
            key_id=before["key_id"],
            actions=(Action.SCHEDULE_DELETION,) if deleting else (),
            tags_to_set={},
            tags_to_remove=(),
            aliases_to_create=(),
            aliases_to_move=(),
            aliases_to_delete=(),
            description=None,
            deletion_protection=None,
            expire_unix=None,
            pending_window_days=change.pending_window_days if deleting else None,
            material=None,
            state_digest=digest_snapshot(before),
        )
    have_tags: Mapping[str, str] = before["tags"]
    want_tags: Mapping[str, str] = after["tags"]
    tags_set = {k: v for k, v in want_tags.items() if k not in RESERVED_TAGS and have_tags.get(k) != v}
    tags_remove = tuple(sorted(k for k in have_tags if k not in RESERVED_TAGS and k not in want_tags))
    create, move = _alias_split(change, sorted(set(after["aliases"]) - set(before["aliases"])))
    removed = set(before["aliases"]) - set(after["aliases"])
    delete = change.aliases_to_delete
    if not set(delete) <= removed or list(delete) != sorted(set(delete)):
        delete = tuple(sorted(removed))
    description = after["description"] if after["description"] != before["description"] else None
    protection = after["deletion_protection"]
    protection = protection if protection != before["deletion_protection"] else None
    actions: list[Action] = []
    if tags_set or tags_remove or create or move or delete or (description, protection) != (None, None):
        actions.append(Action.UPDATE)
    material: Mapping[str, Any] | None = None
    expire: int | None = None
    state = DesiredState(after["state"])
    want_expiry = expire_unix(parse_time(after["expiry"]))
    if state is DesiredState.PRESENT and (
        status in (KeyStatus.PENDING_IMPORT, KeyStatus.MATERIAL_EXPIRED)
        or expire_unix(parse_time(before["material_expires_at"])) != want_expiry
    ):
        actions.append(Action.REIMPORT)
        material = {**(change.material or {}), "fingerprint": after["fingerprint"]}
        expire = want_expiry
    elif state is not DesiredState.PRESENT and status in _HOLDS_MATERIAL:
        actions.append(Action.DELETE_MATERIAL)
    return replace(
        change,
        key_id=before["key_id"],
        actions=tuple(actions),
        tags_to_set=dict(sorted(tags_set.items())),
        tags_to_remove=tags_remove,
        aliases_to_create=create,
        aliases_to_move=move,
        aliases_to_delete=delete,
        description=description,
        deletion_protection=protection,
        expire_unix=expire,
        pending_window_days=None,
        material=material,
        state_digest=digest_snapshot(before),
    )


def _alias_split(change: Change, wanted: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The change's own split of `wanted` into (create, move) if it is one, else all of them created."""
    create, move = change.aliases_to_create, change.aliases_to_move
    if (
        sorted(set(create) | set(move)) == wanted
        and not set(create) & set(move)
        and list(create) == sorted(set(create))
        and list(move) == sorted(set(move))
    ):
        return create, move
    return tuple(wanted), ()


def check_instructions(plan: Plan) -> None:
    """Refuse (StalePlan) a saved plan any of whose changes is not what its own before/after give."""
    for i, change in enumerate(plan.changes):
        where = f"plan file: changes[{i}] (key {change.key!r})"
        doomed = Action.SCHEDULE_DELETION in change.actions
        if doomed and change.before is not None and change.before.get("deletion_protection") is not False:
            raise StalePlan(
                f"{where}: schedules key {change.key_id} for deletion while its deletion protection is on "
                f"(deletion-protected; was the file edited by hand?): make a new plan"
            )
        try:
            expected = derive_change(change, plan.stack)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise StalePlan(
                f"{where}: before/after are not what the planner records (was the file edited by hand?): "
                f"make a new plan"
            ) from None
        if expected != change:
            differ = [
                f.name for f in fields(Change) if getattr(expected, f.name) != getattr(change, f.name)
            ]
            raise StalePlan(
                f"{where}: {', '.join(differ)} differ from what the planner derives from its before/after "
                f"(was the file edited by hand?): make a new plan"
            )


def resolve_fingerprints(plan: Plan, fingerprints: Mapping[str, str]) -> Plan:
    """The plan with every UNKNOWN_FINGERPRINT (an offline plan's) replaced by the key's material fingerprint,
    read by apply; the `fingerprint-unknown` notes of resolved keys go. Pure."""
    changes: list[Change] = []
    for c in plan.changes:
        fp = fingerprints.get(c.key)
        after, material, tags = c.after, c.material, c.tags_to_set
        if fp is not None:
            if after is not None and after.get("fingerprint") == UNKNOWN_FINGERPRINT:
                after = {**after, "fingerprint": fp}
            if material is not None and material.get("fingerprint") == UNKNOWN_FINGERPRINT:
                material = {**material, "fingerprint": fp}
            if tags.get(TAG_FINGERPRINT) == UNKNOWN_FINGERPRINT:
                tags = {**tags, TAG_FINGERPRINT: fp}
        if (after, material, tags) != (c.after, c.material, c.tags_to_set):
            c = replace(c, after=after, material=material, tags_to_set=tags)
        changes.append(c)
    notes = tuple(
        n for n in plan.notes if not (n.code is NoteCode.FINGERPRINT_UNKNOWN and n.key in fingerprints)
    )
    return replace(plan, changes=tuple(changes), notes=notes)


# ----------------------------------------------------------------------------------------- plan files


def _plain(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if value is None else json.loads(json.dumps(value, sort_keys=True))


def _malformed(where: str, what: str) -> ProvisionerError:
    return ProvisionerError(f"plan file is malformed: {where}: {what}")


_TYPE_WORDS = {str: "a string", int: "an integer", bool: "true or false", dict: "an object", list: "a list"}


class _Reader:
    """Typed access to one JSON object of a plan file, naming the path of whatever is wrong."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise _malformed(where, "expected an object")
        self.data: dict[str, Any] = data
        self.where = where
        self.seen: set[str] = set()

    def _check(self, name: str, value: Any, typ: type) -> Any:
        # bool is an int in Python; a plan file saying `true` where a number belongs is still wrong.
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise _malformed(f"{self.where}.{name}", f"expected {_TYPE_WORDS[typ]}, got {json.dumps(value)}")
        return value

    def req(self, name: str, typ: type) -> Any:
        self.seen.add(name)
        if name not in self.data:
            raise _malformed(self.where, f"missing field {name!r}")
        return self._check(name, self.data[name], typ)

    def opt(self, name: str, typ: type) -> Any:
        self.seen.add(name)
        value = self.data.get(name)
        return None if value is None else self._check(name, value, typ)

    def list(self, name: str, typ: type) -> list[Any]:
        self.seen.add(name)
        value = self.data.get(name, [])
        self._check(name, value, list)
        for i, item in enumerate(value):
            self._check(f"{name}[{i}]", item, typ)
        return list(value)

    def str_map(self, name: str) -> dict[str, str]:
        self.seen.add(name)
        value = self.data.get(name, {})
        self._check(name, value, dict)
        for k, v in value.items():
            self._check(f"{name}.{k}", v, str)
        return dict(value)

    def no_extra(self) -> None:
        extra = sorted(set(self.data) - self.seen)
        if extra:
            raise _malformed(self.where, f"unknown field(s) {', '.join(map(repr, extra))}")
