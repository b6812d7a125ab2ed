"""Drift: what changed behind the manifest's back, as a pure function of (desired, live, now).

It never needs or reads private material and makes no call: the caller refreshes the live state with
read-only calls. Each item says the key, the kind, what the manifest expects and what was found.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from provisioner.compare import KeyDiff, compare, foreign_aliases
from provisioner.model import (
    DEFAULT_TARGET,
    ActualKey,
    DesiredKey,
    DesiredState,
    KeyStatus,
    LiveState,
    ManifestSet,
    format_time,
)
from provisioner.plan.planner import KEEPS_MATERIAL, identity_of, previous_actions
from provisioner.plan.warnings import (
    DEFAULT_EXPIRY_WARNING_DAYS,
    expiring_detail,
    warning_window,
    window_words,
)
from provisioner.show import Generations, generations_of
from provisioner.specs import Verification, facts
from provisioner.targets import backends_document, failed_targets_document

FORMAT_VERSION = 1


class DriftKind(StrEnum):
    MISSING = "missing"
    MATERIAL_DELETED = "material-deleted"
    MATERIAL_EXPIRED = "material-expired"
    MATERIAL_EXPIRING = "material-expiring"
    FINGERPRINT_MISMATCH = "fingerprint-mismatch"
    TAGS = "tags"
    ALIASES = "aliases"
    DESCRIPTION = "description"
    STATE = "state"
    DELETION_PROTECTION = "deletion-protection"
    UNMANAGED_ALIAS = "unmanaged-alias"
    ORPHAN = "orphan"
    KEY_VERSION = "key-version"


#: JSON-able value of `expected` / `found`.
Value = str | bool | list[str] | dict[str, str] | None


@dataclass(frozen=True)
class DriftItem:
    key: str
    kind: DriftKind
    detail: str
    expected: Value = None
    found: Value = None
    target: str = DEFAULT_TARGET

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind.value,
            "detail": self.detail,
            "expected": self.expected,
            "found": self.found,
            "target": self.target,
        }


@dataclass(frozen=True)
class DriftReport:
    stack: str
    items: tuple[DriftItem, ...]
    checked_at: datetime
    format_version: int = FORMAT_VERSION
    #: The backend it was read from (type, endpoint, ...), as a plan's `backend`; empty when unknown.
    backend: Mapping[str, str] = field(default_factory=dict)
    #: (key, message): what drift could not check and why (no drift: they change no exit code).
    notes: tuple[tuple[str, str], ...] = ()
    #: Several targets: each one's backend with its `name` (`backend` is then empty); () for one.
    backends: tuple[Mapping[str, str], ...] = ()
    #: Targets that could not be read, with the error: what they hold is unknown.
    target_errors: Mapping[str, str] = field(default_factory=dict)
    #: The keys that have rotated: their generations, current first (show.generations_of).
    generations: tuple[Generations, ...] = ()

    @property
    def in_sync(self) -> bool:
        return not self.items and not self.target_errors

    @property
    def counts(self) -> dict[str, int]:
        """Items per kind, only the kinds found, in kind order."""
        out: dict[str, int] = {}
        for kind in DriftKind:
            n = sum(1 for i in self.items if i.kind is kind)
            if n:
                out[kind.value] = n
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "stack": self.stack,
            "checked_at": format_time(self.checked_at),
            "in_sync": self.in_sync,
            **({"backend": dict(self.backend)} if self.backend else {}),
            "backends": backends_document(self.backends or ({**self.backend, "name": DEFAULT_TARGET},)),
            "drift": [i.to_dict() for i in self.items],
            **({"notes": [{"key": k, "message": m} for k, m in self.notes]} if self.notes else {}),
            **({"generations": [g.to_dict() for g in self.generations]} if self.generations else {}),
            **failed_targets_document(self.target_errors),
        }

    @classmethod
    def merged(
        cls, stack: str, now: datetime, infos: Sequence[tuple[str, Mapping[str, str]]],
        parts: Mapping[str, DriftReport], errors: Mapping[str, str],
    ) -> DriftReport:
        """One report of several targets from each target's, items grouped in `infos` order."""
        done = [(name, parts[name]) for name, _ in infos if name in parts]
        return cls(
            stack=stack,
            items=tuple(replace(i, target=name) for name, r in done for i in r.items),
            checked_at=now,
            notes=tuple((f"{k} (target {name})", m) for name, r in done for k, m in r.notes),
            backends=tuple({**info, "name": name} for name, info in infos),
            target_errors={name: errors[name] for name, _ in infos if name in errors},
            generations=tuple(replace(g, target=name) for name, r in done for g in r.generations),
        )


def _expected_validity(d: DesiredKey, until: datetime) -> str:
    """What drift expects of material that expired or expires soon: its lease, or validity past
    `until` (not the declared time, which the found one often equals)."""
    if d.lease is not None:
        return str(d.lease)
    return f"expiry after {format_time(until)}"


def _status_word(key: ActualKey) -> str:
    return key.status.value


class _Drift:
    def __init__(
        self, desired: ManifestSet, live: LiveState, now: datetime, warning_days: int, verify_material: bool
    ) -> None:
        self.verify_material = verify_material
        self.notes: list[tuple[str, str]] = []
        self.desired = desired
        self.live = live
        self.now = now
        self.warning_days = warning_days
        self.items: list[DriftItem] = []
        self.our_ids = live.stack_key_ids

    def add(
        self, key: str, kind: DriftKind, detail: str, expected: Value = None, found: Value = None
    ) -> None:
        self.items.append(DriftItem(key, kind, detail, expected, found))

    def run(self) -> None:
        names = set()
        for d in self.desired.keys:
            names.add(d.name)
            self.check_key(d)
        for name in sorted(set(self.live.keys) - names):
            for k in self.live.keys[name]:
                self.add(
                    name,
                    DriftKind.ORPHAN,
                    f"key {k.key_id} ({_status_word(k)}) belongs to stack {self.live.stack!r} "
                    f"but no manifest declares it",
                    expected=None,
                    found=k.key_id,
                )

    def check_key(self, d: DesiredKey) -> None:
        ident = identity_of(self.live, d.name)
        if d.state is not DesiredState.ABSENT:
            self.check_unmanaged_aliases(d)
        if ident.conflict:
            ids = [k.key_id for k in ident.conflict]
            self.add(
                d.name,
                DriftKind.STATE,
                f"{len(ids)} keys carry this identity and all hold material: {', '.join(ids)}",
                expected="one key",
                found=ids,
            )
            return
        key = ident.primary
        if key is None:
            if d.state in KEEPS_MATERIAL:
                missing = "no key exists for this manifest entry"
                self.add(d.name, DriftKind.MISSING, missing, d.state.value, None)
            return
        self.check_previous(d, ident.older)
        for dup in ident.duplicates:
            self.add(
                d.name,
                DriftKind.STATE,
                f"duplicate key {dup.key_id} ({_status_word(dup)}) carries this identity "
                f"besides {key.key_id}",
                expected=key.key_id,
                found=dup.key_id,
            )
        if d.state is DesiredState.ABSENT:
            if key.status is not KeyStatus.PENDING_DELETION:
                self.add(
                    d.name,
                    DriftKind.STATE,
                    f"key {key.key_id} is {_status_word(key)} but the manifest says absent",
                    "absent",
                    key.status.value,
                )
            return
        diff = compare(d, key, live=self.live, our_ids=self.our_ids)
        self.check_state(d, key)
        self.check_fingerprint(d, key, diff)
        self.check_unprovable(d, key)
        self.check_attributes(d, key, diff)

    def check_unprovable(self, d: DesiredKey, key: ActualKey) -> None:
        """A symmetric key: KMS shows nothing of its material, so drift says what it could not check
        rather than guess, and reports key versions beyond the first (material no check value names)."""
        if facts(key.spec).verification is not Verification.NONE:
            return
        if key.key_versions is not None and key.key_versions > 1:
            self.add(
                d.name,
                DriftKind.KEY_VERSION,
                f"key {key.key_id} has {key.key_versions} key versions; its recorded check value names "
                "the material of the first only",
                "1",
                str(key.key_versions),
            )
        if self.verify_material:
            recorded = key.recorded_fingerprint or "none"
            self.notes.append(
                (
                    d.name,
                    f"--verify-material: KMS cannot prove which {key.spec} material key {key.key_id} holds "
                    f"(no public key); only its recorded check value {recorded} was compared",
                )
            )

    def check_previous(self, d: DesiredKey, older: tuple[ActualKey, ...]) -> None:
        """Each older generation in the state its `previous:` entry declares (DESIGN section 11)."""
        entries = {p.fingerprint: p for p in d.previous}
        for old in older:
            entry = entries.get(old.fingerprint or "")
            if entry is not None and previous_actions(old.status, entry.state):
                self.add(
                    d.name,
                    DriftKind.STATE,
                    f"previous generation {old.key_id} (generation {old.generation}) is "
                    f"{_status_word(old)} but `previous:` declares it {entry.state.value}",
                    entry.state.value,
                    old.status.value,
                )

    def check_state(self, d: DesiredKey, key: ActualKey) -> None:
        status = key.status
        if status is KeyStatus.PENDING_DELETION:
            when = format_time(key.deletion_date) or "an unknown date"
            self.add(
                d.name,
                DriftKind.STATE,
                f"key {key.key_id} is pending deletion (deleted on {when}); "
                f"the manifest says {d.state.value}",
                d.state.value,
                status.value,
            )
            return
        if d.state is DesiredState.MATERIAL_DELETED:
            if status in (KeyStatus.ENABLED, KeyStatus.DISABLED):
                self.add(
                    d.name,
                    DriftKind.STATE,
                    f"key {key.key_id} holds material ({status.value}) "
                    f"but the manifest says material-deleted",
                    d.state.value,
                    status.value,
                )
            return
        expires = key.material_expires_at
        if status is KeyStatus.PENDING_IMPORT:
            self.add(
                d.name,
                DriftKind.MATERIAL_DELETED,
                f"key {key.key_id} has no material (deleted, or never imported)",
                "material",
                "no material",
            )
            return
        if status is KeyStatus.MATERIAL_EXPIRED or (expires is not None and expires <= self.now):
            self.add(
                d.name,
                DriftKind.MATERIAL_EXPIRED,
                f"material of key {key.key_id} expired at {format_time(expires) or 'an unknown time'}",
                _expected_validity(d, self.now),
                format_time(expires),
            )
            return
        if expires is not None and expires - self.now <= warning_window(d, self.warning_days):
            self.add(
                d.name,
                DriftKind.MATERIAL_EXPIRING,
                expiring_detail(
                    f"key {key.key_id}", expires, self.now, window_words(d, self.warning_days)
                ),
                _expected_validity(d, self.now + warning_window(d, self.warning_days)),
                format_time(expires),
            )
        if status is KeyStatus.DISABLED and d.state is DesiredState.PRESENT:
            self.add(d.name, DriftKind.STATE, f"key {key.key_id} is disabled", "enabled", status.value)
        elif status is KeyStatus.ENABLED and d.state is DesiredState.DISABLED:
            self.add(
                d.name,
                DriftKind.STATE,
                f"key {key.key_id} is enabled but the manifest says disabled",
                DesiredState.DISABLED.value,
                status.value,
            )

    def check_fingerprint(self, d: DesiredKey, key: ActualKey, diff: KeyDiff) -> None:
        m = diff.public_key_mismatch
        if m is None:
            return
        if m.live_label == "confirmed":
            detail = (
                f"live public key of {key.key_id} is {m.live}, the {m.wanted_label} fingerprint is {m.wanted}"
            )
        else:
            detail = f"key {key.key_id} records fingerprint {m.live}, the manifest pins {m.wanted}"
        self.add(d.name, DriftKind.FINGERPRINT_MISMATCH, detail, m.wanted, m.live)

    def check_attributes(self, d: DesiredKey, key: ActualKey, diff: KeyDiff) -> None:
        if diff.tags_to_set or diff.tags_to_remove:
            changed = sorted({*diff.tags_to_set, *diff.tags_to_remove})
            want_tags = dict(sorted(d.tags.items()))
            have_tags = dict(sorted(key.user_tags.items()))
            self.add(d.name, DriftKind.TAGS, f"tags differ: {', '.join(changed)}", want_tags, have_tags)
        if diff.fingerprint_tag_missing:
            self.add(
                d.name,
                DriftKind.TAGS,
                f"key {key.key_id} lacks its reserved fingerprint tag",
                "fingerprint tag",
                None,
            )
        if diff.aliases_missing or diff.aliases_unexpected:
            want_aliases = sorted(a for a in d.aliases if a not in diff.foreign_aliases)
            have_aliases = sorted(key.aliases)
            parts = []
            if diff.aliases_missing:
                parts.append("missing " + ", ".join(diff.aliases_missing))
            if diff.aliases_unexpected:
                parts.append("unexpected " + ", ".join(diff.aliases_unexpected))
            self.add(
                d.name, DriftKind.ALIASES, "aliases differ: " + "; ".join(parts), want_aliases, have_aliases
            )
        if diff.description is not None:
            self.add(
                d.name,
                DriftKind.DESCRIPTION,
                "description differs",
                d.description,
                key.description,
            )
        if diff.deletion_protection is not None:
            self.add(
                d.name,
                DriftKind.DELETION_PROTECTION,
                f"deletion protection is {'on' if key.deletion_protection else 'off'}, "
                f"the manifest says {'on' if d.deletion_protection else 'off'}",
                d.deletion_protection,
                key.deletion_protection,
            )

    def check_unmanaged_aliases(self, d: DesiredKey) -> None:
        for alias, owner in sorted(foreign_aliases(d.aliases, self.live, self.our_ids).items()):
            self.add(
                d.name,
                DriftKind.UNMANAGED_ALIAS,
                f"alias {alias} points at key {owner}, which stack {self.live.stack!r} does not manage",
                d.name,
                owner,
            )


def make_drift(
    desired: ManifestSet,
    live: LiveState,
    *,
    now: datetime,
    expiry_warning_days: int = DEFAULT_EXPIRY_WARNING_DAYS,
    backend: Mapping[str, str] | None = None,
    verify_material: bool = False,
) -> DriftReport:
    """Compare the manifests with the live state and list every difference. Pure. `backend` is
    what the report says it was read from; `verify_material`: whether public keys were confirmed
    (a symmetric key's note says it has none)."""
    drift = _Drift(desired, live, now, expiry_warning_days, verify_material)
    drift.run()
    items = sorted(drift.items, key=lambda i: (i.key, list(DriftKind).index(i.kind), i.detail))
    return DriftReport(
        stack=desired.stack,
        items=tuple(items),
        checked_at=now.replace(microsecond=0),
        backend={k: str(v) for k, v in (backend or {}).items() if v is not None},
        notes=tuple(sorted(drift.notes)),
        generations=generations_of(live, (d.name for d in desired.keys)),
    )
