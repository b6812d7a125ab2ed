"""The plan file: the only JSON codec of the plan document (values <-> dicts <-> text), and its limits.

Encoding is stable (sorted keys, one shape per value) so a plan file is golden-testable; decoding names
the path of whatever is wrong and refuses earlier formats with a clear message. No I/O, no judgement.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from provisioner.errors import ProvisionerError, StalePlan
from provisioner.model import (
    DEFAULT_TARGET,
    PREVIOUS_STATES,
    TAG_NAME,
    TAG_STACK,
    DesiredState,
    KeySpec,
    KeyStatus,
    KeyUsage,
    MaterialFormat,
    ProtectionLevel,
    SourceKind,
    WrappingAlgorithm,
    format_time,
    parse_time,
)
from provisioner.plan.values import (
    FORMAT_VERSION,
    Action,
    BackendInfo,
    Change,
    DesiredAttributes,
    KeySnapshot,
    MaterialReference,
    Note,
    NoteCode,
    Plan,
    Violation,
    ViolationCode,
)
from provisioner.targets import backends_document, failed_targets_document

#: A plan file larger than this is refused before parsing (a 5,000-key plan is a few MB).
MAX_PLAN_BYTES = 32 * 1024 * 1024


# ----------------------------------------------------------------------------------------- encoding


def snapshot_to_dict(s: KeySnapshot) -> dict[str, Any]:
    return {
        "key_id": s.key_id,
        "arn": s.arn,
        "status": s.status.value,
        **_attributes_to_dict(s),
        "material_expires_at": format_time(s.material_expires_at),
        "deletion_date": format_time(s.deletion_date),
        "deletion_protection": s.deletion_protection,
        "recorded_fingerprint": s.recorded_fingerprint,
        "public_key_fingerprint": s.public_key_fingerprint,
    }


def desired_to_dict(a: DesiredAttributes) -> dict[str, Any]:
    return {
        **_attributes_to_dict(a),
        "expiry": format_time(a.expiry),
        "deletion_protection": a.deletion_protection,
        "deletion_window_days": a.deletion_window_days,
        "state": a.state.value,
        "fingerprint": a.fingerprint,
    }


def _attributes_to_dict(k: KeySnapshot | DesiredAttributes) -> dict[str, Any]:
    """What `before` and `after` both record of a key."""
    return {
        "spec": k.spec.value,
        "usage": k.usage.value,
        "protection": k.protection.value,
        "instance": k.instance,
        "description": k.description,
        "tags": dict(sorted(k.tags.items())),
        "aliases": sorted(k.aliases),
    }


E = TypeVar("E", bound=StrEnum)


def material_to_dict(m: MaterialReference) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": m.kind.value}
    if m.file is not None:
        out["file"] = m.file
    if m.env is not None:
        out["env"] = m.env
    if m.command:
        out["command"] = list(m.command)
    if m.passphrase_env is not None:
        out["passphrase_env"] = m.passphrase_env
    if m.fingerprint is not None:
        out["fingerprint"] = m.fingerprint
    if m.pass_env:
        out["pass_env"] = list(m.pass_env)
    if m.format is not None:
        out["format"] = m.format.value
    if m.wrapping is not None:
        out["wrapping"] = m.wrapping.value
    return out


def change_to_dict(c: Change) -> dict[str, Any]:
    return {
        "key": c.key,
        "key_id": c.key_id,
        "actions": [a.value for a in c.actions],
        "reason": c.reason,
        "before": None if c.before is None else _sorted(snapshot_to_dict(c.before)),
        "after": None if c.after is None else _sorted(desired_to_dict(c.after)),
        "tags_to_set": dict(sorted(c.tags_to_set.items())),
        "tags_to_remove": list(c.tags_to_remove),
        "aliases_to_create": list(c.aliases_to_create),
        "aliases_to_move": list(c.aliases_to_move),
        "aliases_to_delete": list(c.aliases_to_delete),
        "description": c.description,
        "deletion_protection": c.deletion_protection,
        "expire_unix": c.expire_unix,
        "pending_window_days": c.pending_window_days,
        "material": None if c.material is None else _sorted(material_to_dict(c.material)),
        "state_digest": c.state_digest,
        "duplicates": list(c.duplicates),
        "duplicate_digests": list(c.duplicate_digests),
        "target": c.target,
        # Only rotations and previous generations carry it: every other change reads as before.
        **({} if c.previous_state is None else {"previous_state": c.previous_state.value}),
    }


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    return {
        "format_version": plan.format_version,
        "stack": plan.stack,
        "created_at": format_time(plan.created_at),
        "backend": dict(plan.backend),
        "backends": backends_document(plan.target_infos),
        "manifest_digest": plan.manifest_digest,
        "changes": [change_to_dict(c) for c in plan.changes],
        "violations": [
            {"key": v.key, "code": v.code.value, "message": v.message, "target": v.target}
            for v in plan.violations
        ],
        "notes": [
            {"key": n.key, "code": None if n.code is None else n.code.value, "message": n.message,
             "target": n.target}
            for n in plan.notes
        ],
        "summary": plan.summary,
        # Only a partial plan says so: a whole plan's document stays as it always was.
        **({"targets": list(plan.targets)} if plan.targets else {}),
        **failed_targets_document({t: plan.target_errors[t] for t in plan.failed_targets}),
    }


def digest_snapshot(before: KeySnapshot) -> str:
    """`sha256:<hex>` of the canonical JSON of a `before`, less the confirmed public key (which only some
    reads fetch; the recorded fingerprint is in the tags): what a saved plan checks the live key against."""
    facts = {k: v for k, v in snapshot_to_dict(before).items() if k != "public_key_fingerprint"}
    canonical = json.dumps(facts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def save_plan(plan: Plan, *, relative_to: Path | None = None) -> str:
    """The plan file's text: stable, sorted JSON with a final newline.

    With `relative_to` (the working folder), material files below it are recorded relative to it, so
    `apply --plan` works from another checkout of the same repository (a CI job on another runner).
    """
    if plan.target_errors:
        failed = ", ".join(plan.failed_targets)
        raise ValueError(f"a plan with targets that could not be planned ({failed}) cannot be saved")
    if relative_to is not None:
        plan = relative_materials(plan, relative_to)
    return json.dumps(plan_to_dict(plan), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def relative_materials(plan: Plan, folder: Path) -> Plan:
    """The plan with material files below `folder` named relative to it, as save_plan records them."""
    return replace(plan, changes=tuple(_relative_material(c, folder) for c in plan.changes))


def _relative_material(change: Change, folder: Path) -> Change:
    material = change.material
    file = None if material is None else material.file
    if material is None or not file or not Path(file).is_absolute() or not Path(file).is_relative_to(folder):
        return change
    return replace(change, material=replace(material, file=str(Path(file).relative_to(folder))))


def _sorted(value: dict[str, Any]) -> dict[str, Any]:
    return dict(sorted(value.items()))


# ----------------------------------------------------------------------------------------- decoding


def load_plan(text: str) -> Plan:
    if len(text) > MAX_PLAN_BYTES:
        raise ProvisionerError(f"plan file is larger than {MAX_PLAN_BYTES >> 20} MiB: not a plan file")
    try:
        data = json.loads(text)
        return plan_from_dict(data)
    except json.JSONDecodeError as e:
        raise ProvisionerError(
            f"plan file is not valid JSON: line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    except RecursionError:
        raise ProvisionerError("plan file is malformed: its JSON is nested too deeply") from None


def plan_from_dict(data: Any) -> Plan:
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
    decoded = [_change_from_dict(c, f"changes[{i}]") for i, c in enumerate(r.list("changes", dict))]
    plan = Plan(
        stack=r.req("stack", str),
        created_at=created_at,
        backend=BackendInfo.of(r.str_map("backend")),
        changes=tuple(c for c, _ in decoded),
        violations=tuple(
            _violation_from_dict(v, f"violations[{i}]") for i, v in enumerate(r.list("violations", dict))
        ),
        notes=tuple(_note_from_dict(n, f"notes[{i}]") for i, n in enumerate(r.list("notes", dict))),
        format_version=r.req("format_version", int),
        manifest_digest=r.req("manifest_digest", str),
        unrecorded=tuple(i for i, (_, recorded) in enumerate(decoded) if not recorded),
        targets=_targets(r.list("targets", str)),
        backends=_backends(r.list("backends", dict)),
    )
    summary = r.opt("summary", dict)
    r.no_extra()
    # A plan saved before an action word existed has no count for it: that count is 0.
    if summary is not None and {**dict.fromkeys(plan.summary, 0), **summary} != plan.summary:
        raise _malformed("plan.summary", "does not match the changes (was the file edited by hand?)")
    named = {b["name"] for b in plan.target_infos}
    listed: dict[str, list[str]] = {
        "changes": [c.target for c in plan.changes],
        "violations": [v.target for v in plan.violations],
        "notes": [n.target for n in plan.notes],
    }
    for what, targets in listed.items():
        for i, target in enumerate(targets):
            if target not in named:
                raise _malformed(f"{what}[{i}].target", f"{target!r} is not a target of plan.backends")
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


def _targets(names: list[str]) -> tuple[str, ...]:
    """The --target names a partial plan recorded: sorted and distinct, as save_plan writes them."""
    if names != sorted(set(names)):
        raise _malformed("plan.targets", "expected sorted, distinct key names (was the file edited by hand?)")
    return tuple(names)


def _backends(entries: list[dict[str, Any]]) -> tuple[BackendInfo, ...]:
    """A plan's several targets; () for one `default` target (or a plan saved before targets existed,
    which has no `backends`): that plan's `backend` is its one target."""
    infos = []
    for i, entry in enumerate(entries):
        if not all(isinstance(v, str) or v is None for v in entry.values()):
            raise _malformed(f"plan.backends[{i}]", "expected an object of strings")
        if not isinstance(entry.get("name"), str):
            raise _malformed(f"plan.backends[{i}].name", "expected the target's name")
        infos.append(BackendInfo.of(entry))
    names = [b["name"] for b in infos]
    if len(set(names)) != len(names):
        raise _malformed("plan.backends", "a target name appears twice (was the file edited by hand?)")
    if names == [DEFAULT_TARGET] or not names:
        return ()
    return tuple(infos)


def _change_from_dict(data: Any, where: str) -> tuple[Change, bool]:
    """The change, and False when its before/after/material are not values the planner records (then
    they are None: check_instructions refuses the plan, naming the change)."""
    r = _Reader(data, where)
    actions = []
    for i, word in enumerate(r.list("actions", str)):
        try:
            actions.append(Action(word))
        except ValueError:
            raise _malformed(f"{where}.actions[{i}]", f"{word!r} is not an action word") from None
    before, after, material = r.opt("before", dict), r.opt("after", dict), r.opt("material", dict)
    previous_word = r.opt("previous_state", str)
    previous_state = None
    if previous_word is not None:
        if previous_word not in {s.value for s in PREVIOUS_STATES}:
            raise _malformed(
                f"{where}.previous_state", f"{previous_word!r} is not a state of a previous generation"
            )
        previous_state = DesiredState(previous_word)
    try:
        typed = (
            None if before is None else _snapshot_from_dict(before),
            None if after is None else _desired_from_dict(after),
            None if material is None else _material_from_dict(material),
        )
        recorded = True
    except (ProvisionerError, ValueError):
        typed, recorded = (None, None, None), False
    change = Change(
        key=r.req("key", str),
        key_id=r.opt("key_id", str),
        actions=tuple(actions),
        reason=r.req("reason", str),
        before=typed[0],
        after=typed[1],
        tags_to_set=r.str_map("tags_to_set"),
        tags_to_remove=tuple(r.list("tags_to_remove", str)),
        aliases_to_create=tuple(r.list("aliases_to_create", str)),
        aliases_to_move=tuple(r.list("aliases_to_move", str)),
        aliases_to_delete=tuple(r.list("aliases_to_delete", str)),
        description=r.opt("description", str),
        deletion_protection=r.opt("deletion_protection", bool),
        expire_unix=r.opt("expire_unix", int),
        pending_window_days=r.opt("pending_window_days", int),
        material=typed[2],
        state_digest=r.opt("state_digest", str),
        target=r.opt("target", str) or DEFAULT_TARGET,
        duplicates=tuple(r.list("duplicates", str)),
        duplicate_digests=tuple(r.list("duplicate_digests", str)),
        previous_state=previous_state,
    )
    r.no_extra()
    return change, recorded


def _snapshot_from_dict(data: dict[str, Any]) -> KeySnapshot:
    r = _Reader(data, "before")
    s = KeySnapshot(
        key_id=r.req("key_id", str),
        arn=r.req("arn", str),
        status=KeyStatus(r.req("status", str)),
        **_attributes_from(r),
        material_expires_at=parse_time(r.nullable("material_expires_at", str)),
        deletion_date=parse_time(r.nullable("deletion_date", str)),
        deletion_protection=r.req("deletion_protection", bool),
        recorded_fingerprint=r.nullable("recorded_fingerprint", str),
        public_key_fingerprint=r.nullable("public_key_fingerprint", str),
    )
    r.no_extra()
    return s


def _desired_from_dict(data: dict[str, Any]) -> DesiredAttributes:
    r = _Reader(data, "after")
    a = DesiredAttributes(
        **_attributes_from(r),
        expiry=parse_time(r.nullable("expiry", str)),
        deletion_protection=r.req("deletion_protection", bool),
        deletion_window_days=r.req("deletion_window_days", int),
        state=DesiredState(r.req("state", str)),
        fingerprint=r.nullable("fingerprint", str),
    )
    r.no_extra()
    return a


def _attributes_from(r: _Reader) -> dict[str, Any]:
    """What `before` and `after` both record of a key, as DesiredAttributes/KeySnapshot arguments."""
    return {
        "spec": KeySpec(r.req("spec", str)),
        "usage": KeyUsage(r.req("usage", str)),
        "protection": ProtectionLevel(r.req("protection", str)),
        "instance": r.nullable("instance", str),
        "description": r.req("description", str),
        "tags": r.str_map("tags", required=True),
        "aliases": tuple(r.list("aliases", str, required=True)),
    }


def _material_from_dict(data: dict[str, Any]) -> MaterialReference:
    r = _Reader(data, "material")
    m = MaterialReference(
        kind=SourceKind(r.req("kind", str)),
        fingerprint=r.opt("fingerprint", str),
        file=r.opt("file", str),
        env=r.opt("env", str),
        command=tuple(r.list("command", str)),
        passphrase_env=r.opt("passphrase_env", str),
        pass_env=tuple(r.list("pass_env", str)),
        format=_opt_enum(MaterialFormat, r.opt("format", str), "material.format"),
        wrapping=_opt_enum(WrappingAlgorithm, r.opt("wrapping", str), "material.wrapping"),
    )
    r.no_extra()
    return m


def _opt_enum(enum: type[E], value: str | None, where: str) -> E | None:
    try:
        return None if value is None else enum(value)
    except ValueError:
        raise _malformed(where, f"{value!r} is not one of {', '.join(enum)}") from None


def _violation_from_dict(data: Any, where: str) -> Violation:
    r = _Reader(data, where)
    code = r.req("code", str)
    try:
        vcode = ViolationCode(code)
    except ValueError:
        raise _malformed(f"{where}.code", f"{code!r} is not a violation code") from None
    v = Violation(
        key=r.req("key", str), code=vcode, message=r.req("message", str),
        target=r.opt("target", str) or DEFAULT_TARGET,
    )
    r.no_extra()
    return v


def _note_from_dict(data: Any, where: str) -> Note:
    r = _Reader(data, where)
    code = r.opt("code", str)
    try:
        ncode = None if code is None else NoteCode(code)
    except ValueError:
        raise _malformed(f"{where}.code", f"{code!r} is not a note code") from None
    n = Note(
        key=r.req("key", str), message=r.req("message", str), code=ncode,
        target=r.opt("target", str) or DEFAULT_TARGET,
    )
    r.no_extra()
    return n


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

    def _present(self, name: str) -> None:
        if name not in self.data:
            raise _malformed(self.where, f"missing field {name!r}")

    def req(self, name: str, typ: type) -> Any:
        self.seen.add(name)
        self._present(name)
        return self._check(name, self.data[name], typ)

    def opt(self, name: str, typ: type) -> Any:
        self.seen.add(name)
        value = self.data.get(name)
        return None if value is None else self._check(name, value, typ)

    def nullable(self, name: str, typ: type) -> Any:
        """A field that must be there and may be null."""
        self._present(name)
        return self.opt(name, typ)

    def list(self, name: str, typ: type, *, required: bool = False) -> list[Any]:
        self.seen.add(name)
        if required:
            self._present(name)
        value = self.data.get(name, [])
        self._check(name, value, list)
        for i, item in enumerate(value):
            self._check(f"{name}[{i}]", item, typ)
        return list(value)

    def str_map(self, name: str, *, required: bool = False) -> dict[str, str]:
        self.seen.add(name)
        if required:
            self._present(name)
        value = self.data.get(name, {})
        self._check(name, value, dict)
        for k, v in value.items():
            self._check(f"{name}.{k}", v, str)
        return dict(value)

    def no_extra(self) -> None:
        extra = sorted(set(self.data) - self.seen)
        if extra:
            raise _malformed(self.where, f"unknown field(s) {', '.join(map(repr, extra))}")
