"""What a plan is made of, as frozen typed values: Change (with its before/after snapshots), Plan, Violation.

No I/O, no clock, no JSON: planfile.py is the only codec of the plan document, planner.py the only
maker of plans. What `before` and `after` mean per action (Terraform's table, DESIGN section 5):

    action             before           after                 apply does, in this order
    create, import     None             desired key           CreateKey(all tags), 1st alias, import, rest
    adopt              actual key       desired key           TagResource(identity tags), then the rest
    cancel-deletion    actual key       desired key           CancelKeyDeletion: Enabled, or PendingImport
    enable             actual key       desired key           EnableKey
    update             actual key       desired key           tags (identity tags of a rename or a tag
                                                              repair too), aliases, description, protection
    reimport           actual key       desired key           import the same material with expire_unix
    delete-material    actual key       desired key           DeleteKeyMaterial
    rotate             old key          desired key           CreateKey(all tags, generation N+1), import,
                                                              aliases moved to it; old key: previous_state
    disable            actual key|None  desired key           DisableKey (after any import)
    schedule-deletion  actual key       None                  ScheduleKeyDeletion(pending_window_days)

A change of a previous generation (DESIGN section 11: `previous_state` set, no rotate) has before = that
old key and after = None; its actions are enable, disable or schedule-deletion only, as its `previous:`
entry declares.

A change's `actions` are in that order (DESIGN section 10: create | adopt, cancel-deletion, enable,
update, import | reimport, rotate, delete-material, disable, schedule-deletion).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum

from provisioner.model import (
    DEFAULT_TARGET,
    ActualKey,
    DesiredKey,
    DesiredState,
    KeySpec,
    KeyStatus,
    KeyUsage,
    Location,
    MaterialFormat,
    MaterialSource,
    ProtectionLevel,
    SourceKind,
    WrappingAlgorithm,
)

FORMAT_VERSION = 1
#: Duplicates never held material, so nothing is lost by deleting them as soon as KMS allows.
DUPLICATE_WINDOW_DAYS = 7
#: The fingerprint an offline plan shows for material it did not read and no pin names.
UNKNOWN_FINGERPRINT = "unknown"


class Action(StrEnum):
    CREATE = "create"
    IMPORT = "import"
    ADOPT = "adopt"
    REIMPORT = "reimport"
    DELETE_MATERIAL = "delete-material"
    UPDATE = "update"
    SCHEDULE_DELETION = "schedule-deletion"
    ENABLE = "enable"
    DISABLE = "disable"
    CANCEL_DELETION = "cancel-deletion"
    ROTATE = "rotate"


class ViolationCode(StrEnum):
    MATERIAL_IMMUTABLE = "material-immutable"
    IMMUTABLE_ATTRIBUTE = "immutable-attribute"
    ALIAS_CONFLICT = "alias-conflict"
    UNSUPPORTED = "unsupported"
    EXPIRY_IN_PAST = "expiry-in-past"
    DUPLICATE_IDENTITY = "duplicate-identity"
    DELETION_PROTECTED = "deletion-protected"
    MANAGED_ELSEWHERE = "managed-elsewhere"
    #: A `previous:` fingerprint that no live key of the identity holds (DESIGN section 11).
    PREVIOUS_NOT_FOUND = "previous-not-found"


class NoteCode(StrEnum):
    FINGERPRINT_UNKNOWN = "fingerprint-unknown"


def expire_unix(expiry: datetime | None) -> int:
    """`KeyMaterialExpireUnix` for an expiry: 0 means never."""
    return 0 if expiry is None else int(expiry.timestamp())


def _whole(value: datetime | None) -> datetime | None:
    """UTC and whole seconds, as a plan file records a time, so a snapshot equals its decoded self."""
    return None if value is None else value.astimezone(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class KeySnapshot:
    """`before`: the actual key as the plan saw it."""

    key_id: str
    arn: str
    status: KeyStatus
    spec: KeySpec
    usage: KeyUsage
    protection: ProtectionLevel
    instance: str | None
    description: str
    tags: Mapping[str, str]  # every tag, reserved ones included
    aliases: tuple[str, ...]  # sorted
    material_expires_at: datetime | None
    deletion_date: datetime | None
    deletion_protection: bool
    recorded_fingerprint: str | None
    public_key_fingerprint: str | None

    @classmethod
    def of(cls, key: ActualKey) -> KeySnapshot:
        return cls(
            key_id=key.key_id,
            arn=key.arn,
            status=key.status,
            spec=key.spec,
            usage=key.usage,
            protection=key.protection,
            instance=key.instance,
            description=key.description,
            tags=dict(sorted(key.tags.items())),
            aliases=tuple(sorted(key.aliases)),
            material_expires_at=_whole(key.material_expires_at),
            deletion_date=_whole(key.deletion_date),
            deletion_protection=key.deletion_protection,
            recorded_fingerprint=key.recorded_fingerprint,
            public_key_fingerprint=key.public_key_fingerprint,
        )


@dataclass(frozen=True)
class DesiredAttributes:
    """`after`: the desired key; `tags` are user tags (the reserved ones are in a change's tags_to_set)."""

    spec: KeySpec
    usage: KeyUsage
    protection: ProtectionLevel
    instance: str | None
    description: str
    tags: Mapping[str, str]
    aliases: tuple[str, ...]  # sorted
    expiry: datetime | None
    deletion_protection: bool
    deletion_window_days: int
    state: DesiredState
    fingerprint: str | None

    @classmethod
    def of(cls, key: DesiredKey, fingerprint: str | None) -> DesiredAttributes:
        return cls(
            spec=key.spec,
            usage=key.usage,
            protection=key.protection,
            instance=key.instance,
            description=key.description,
            tags=dict(sorted(key.tags.items())),
            aliases=tuple(sorted(key.aliases)),
            expiry=_whole(key.expiry),
            deletion_protection=key.deletion_protection,
            deletion_window_days=key.deletion_window_days,
            state=key.state,
            fingerprint=fingerprint,
        )


@dataclass(frozen=True)
class MaterialReference:
    """Where apply reads a key's material from, and the fingerprint planned for it. Never the material."""

    kind: SourceKind
    fingerprint: str | None
    file: str | None = None
    env: str | None = None
    command: tuple[str, ...] = ()
    passphrase_env: str | None = None
    pass_env: tuple[str, ...] = ()
    format: MaterialFormat | None = None  # symmetric material: how the source writes it
    wrapping: WrappingAlgorithm | None = None  # symmetric material: the algorithm chosen; None: default

    @classmethod
    def of(cls, source: MaterialSource, fingerprint: str | None) -> MaterialReference:
        return cls(
            kind=source.kind,
            fingerprint=fingerprint,
            file=None if source.file is None else str(source.file),
            env=source.env,
            command=tuple(source.command),
            passphrase_env=source.passphrase_env,
            pass_env=tuple(source.pass_env),
            format=source.format,
            wrapping=source.wrapping,
        )

    def describe(self) -> str:
        """The source in the user's words, for messages: never the material itself."""
        if self.kind is SourceKind.FILE:
            return f"file {self.file}"
        if self.kind is SourceKind.ENV:
            return f"environment variable {self.env}"
        return "command " + " ".join(self.command)


@dataclass(frozen=True, eq=False)
class BackendInfo(Mapping[str, str]):
    """The KMS a plan was made against, as the backend names itself (`type`, `endpoint`, `region`...)."""

    entries: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, info: Mapping[str, str | None]) -> BackendInfo:
        return cls(tuple(sorted((k, str(v)) for k, v in info.items() if v is not None)))

    def __getitem__(self, name: str) -> str:
        for k, v in self.entries:
            if k == name:
                return v
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(k for k, _ in self.entries)

    def __len__(self) -> int:
        return len(self.entries)


@dataclass(frozen=True)
class Change:
    """What one key needs. Fields other than actions/reason/before/after are the exact detail apply uses."""

    key: str
    key_id: str | None  # None for create
    actions: tuple[Action, ...]
    reason: str
    before: KeySnapshot | None = None
    after: DesiredAttributes | None = None
    # create: every tag, reserved ones included; adopt, update: user tags added or changed, and the
    # reserved tags that adopt, a rename (name) or a tag repair (fingerprint) writes.
    tags_to_set: Mapping[str, str] = field(default_factory=dict)
    tags_to_remove: tuple[str, ...] = ()  # user tags only; reserved tags are never removed
    aliases_to_create: tuple[str, ...] = ()  # CreateAlias
    aliases_to_move: tuple[str, ...] = ()  # held by another key of this stack: UpdateAlias to this key
    aliases_to_delete: tuple[str, ...] = ()  # DeleteAlias
    description: str | None = None  # the new description, on create or when it changes
    deletion_protection: bool | None = None  # the new value when it changes (or on create, when on)
    expire_unix: int | None = None  # import/reimport: KeyMaterialExpireUnix, 0 = never
    pending_window_days: int | None = None  # schedule-deletion
    material: MaterialReference | None = None  # import/reimport: the source and its planned fingerprint
    state_digest: str | None = None  # digest_actual() of the key as planned against; None for create
    duplicates: tuple[str, ...] = ()  # key ids to schedule for deletion with DUPLICATE_WINDOW_DAYS
    duplicate_digests: tuple[str, ...] = ()  # digest_actual() of each duplicate, same order
    #: The backend target (DESIGN section 12) the key lives in: `default` for a single backend.
    target: str = DEFAULT_TARGET
    #: rotate: the state the old key (key_id) gets once the new one holds the aliases; a change of a
    #: previous generation: the state its `previous:` entry declares. None otherwise.
    previous_state: DesiredState | None = None

    @property
    def of_previous_generation(self) -> bool:
        """A change that gives an old generation (key_id) its declared state, and does nothing else."""
        return self.previous_state is not None and Action.ROTATE not in self.actions

    @property
    def spec(self) -> str | None:
        """The desired key spec (what CreateKey takes), from `after`."""
        return None if self.after is None else self.after.spec.value


@dataclass(frozen=True)
class Violation:
    """Why the plan must not be applied: what is wrong and how to fix it."""

    key: str
    code: ViolationCode
    message: str
    #: Where the manifest declares the key (None for a live key no manifest names, or one read from a plan
    #: file): for the CLI's compiler-style lines only; neither the plan document nor equality holds it.
    location: Location | None = field(default=None, compare=False)
    target: str = DEFAULT_TARGET


@dataclass(frozen=True)
class Note:
    """Information that changes nothing: an orphan key left alone, a choice the planner made."""

    key: str
    message: str
    code: NoteCode | None = None
    target: str = DEFAULT_TARGET


@dataclass(frozen=True)
class Plan:
    """The whole judgement: changes (sorted by key) and violations (sorted); any violation blocks it."""

    stack: str
    created_at: datetime
    backend: BackendInfo
    changes: tuple[Change, ...]
    violations: tuple[Violation, ...] = ()
    notes: tuple[Note, ...] = ()
    format_version: int = FORMAT_VERSION
    #: ManifestSet.manifest_digest of the manifests planned: `apply --plan` refuses others.
    manifest_digest: str = ""
    #: Indexes of changes whose before/after in a plan file were no snapshot the planner makes (they are
    #: None here): check_instructions refuses such a plan. Always () for a plan make_plan made.
    unrecorded: tuple[int, ...] = ()
    #: The key names of `--target`, sorted: only those were read and planned. () for a whole plan.
    targets: tuple[str, ...] = ()
    #: Several backend targets (DESIGN section 12): each one's BackendInfo with its `name`; `backend` is
    #: then empty. () for a single backend, whose one target is `default` with `backend`'s entries.
    backends: tuple[BackendInfo, ...] = ()
    #: Targets that could not be planned (a refused read, throttling past the retries, a held lock),
    #: with the error: none of their keys is in the plan, which is then partial and cannot be saved.
    target_errors: Mapping[str, str] = field(default_factory=dict)

    @property
    def target_infos(self) -> tuple[BackendInfo, ...]:
        """Every target the plan was made against, each with its `name`."""
        if self.backends:
            return self.backends
        return (BackendInfo.of({**dict(self.backend), "name": DEFAULT_TARGET}),)

    def for_target(self, name: str) -> Plan:
        """The part of a plan of several targets that one target carries out, against that target's
        backend (its info less the name); a single-backend plan is its own only part."""
        if not self.backends:
            return self
        info = next(b for b in self.backends if b["name"] == name)
        return replace(
            self,
            backend=BackendInfo.of({k: v for k, v in info.items() if k != "name"}),
            backends=(),
            changes=tuple(c for c in self.changes if c.target == name),
            violations=tuple(v for v in self.violations if v.target == name),
            notes=tuple(n for n in self.notes if n.target == name),
            unrecorded=(),
        )

    @property
    def failed_targets(self) -> tuple[str, ...]:
        """The targets that could not be planned, in `backends` order."""
        return tuple(b["name"] for b in self.target_infos if b["name"] in self.target_errors)

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
        """The change of a key's current generation (not one of a previous generation)."""
        return next((c for c in self.changes if c.key == key and not c.of_previous_generation), None)


def retarget(plan: Plan, target: str) -> Plan:
    """The plan with every change, violation and note of that target (a target's plan is made by the
    planner, which knows one backend, `default`)."""
    return replace(
        plan,
        changes=tuple(replace(c, target=target) for c in plan.changes),
        violations=tuple(replace(v, target=target) for v in plan.violations),
        notes=tuple(replace(n, target=target) for n in plan.notes),
    )


def merge_plans(
    infos: Sequence[tuple[str, Mapping[str, str]]], parts: Mapping[str, Plan], errors: Mapping[str, str],
    *, template: Plan,
) -> Plan:
    """One plan of several targets (DESIGN section 12) from each target's plan, made on that target's
    set (ManifestSet.for_target): every item carries its target, grouped in `infos` order (the order
    of `backends:`). `infos`: (name, backend info) of every target run; `errors`: the targets that
    failed, with the error; `template`: any target's plan, or an empty one (stack, time, digest)."""
    planned = [retarget(parts[name], name) for name, _ in infos if name in parts]
    return replace(
        template,
        backend=BackendInfo(),
        backends=tuple(BackendInfo.of({**dict(info), "name": name}) for name, info in infos),
        changes=tuple(c for p in planned for c in p.changes),
        violations=tuple(v for p in planned for v in p.violations),
        notes=tuple(n for p in planned for n in p.notes),
        unrecorded=(),
        target_errors={name: errors[name] for name, _ in infos if name in errors},
    )
