"""`provision show`: the live keys a stack manages, as facts other tools read (Terraform's `output`).

A pure function of the refreshed live state: no call, no clock, no material. Every key carrying the
stack's identity is listed (duplicates and keys pending deletion too, each with its KMS state), so
what a pipeline reads here is what KMS holds; nothing is judged (plan and drift do that).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from provisioner.model import (
    DEFAULT_TARGET,
    ActualKey,
    DesiredState,
    LiveState,
    ManifestSet,
    format_time,
)
from provisioner.targets import backends_document, failed_targets_document

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Generation:
    """One generation of a rotated key (DESIGN section 11): its number, key id and KMS state."""

    generation: int
    key_id: str
    state: str  # KMS's KeyState, verbatim

    def to_dict(self) -> dict[str, Any]:
        return {"generation": self.generation, "key_id": self.key_id, "state": self.state}


@dataclass(frozen=True)
class Generations:
    """The live generations of one key that has rotated, current first (issue 14: show and drift list
    them with their key ids and states)."""

    name: str
    generations: tuple[Generation, ...]
    target: str = DEFAULT_TARGET

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target,
            "current": self.generations[0].generation,
            "generations": [g.to_dict() for g in self.generations],
        }


def _state(key: ActualKey) -> str:
    return key.key_state.value if key.key_state is not None else key.status.value


def current_first(keys: Iterable[ActualKey]) -> list[ActualKey]:
    """An identity's keys, the newest generation first, each generation's keys oldest first."""
    return sorted(keys, key=lambda k: (-k.generation, k.created_at, k.key_id))


def generations_of(live: LiveState, names: Iterable[str]) -> tuple[Generations, ...]:
    """Every one of `names` whose live keys span more than one generation: its generations, current
    first. A key that never rotated has one generation and is not listed."""
    out = []
    for name in sorted(names):
        keys = current_first(live.keys.get(name, ()))
        if len({k.generation for k in keys}) > 1:
            out.append(Generations(name, tuple(Generation(k.generation, k.key_id, _state(k)) for k in keys)))
    return tuple(out)


@dataclass(frozen=True)
class ShownKey:
    """One managed key, with the fields of DESIGN section 10's `show` document."""

    name: str
    key_id: str
    arn: str
    spec: str
    usage: str
    state: str  # KMS's KeyState, verbatim
    aliases: tuple[str, ...]
    fingerprint: str | None  # the recorded (or, when read, the confirmed) public key fingerprint
    material_expiry: datetime | None  # None: never, or no material
    target: str = DEFAULT_TARGET

    @classmethod
    def of(cls, name: str, key: ActualKey) -> ShownKey:
        return cls(
            name=name,
            key_id=key.key_id,
            arn=key.arn,
            spec=key.spec.value,
            usage=key.usage.value,
            state=_state(key),
            aliases=key.aliases,
            fingerprint=key.public_key_fingerprint or key.recorded_fingerprint,
            material_expiry=key.material_expires_at,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key_id": self.key_id,
            "arn": self.arn,
            "spec": self.spec,
            "usage": self.usage,
            "state": self.state,
            "aliases": list(self.aliases),
            "fingerprint": self.fingerprint,
            "material_expiry": format_time(self.material_expiry),
            "target": self.target,
        }


@dataclass(frozen=True)
class ShowReport:
    stack: str
    keys: tuple[ShownKey, ...]  # by name, then the current generation first, each oldest first
    #: Names the manifests want to exist (of the targets, with --target) that no live key carries.
    missing: tuple[str, ...] = ()
    #: The backend it was read from (type, endpoint, ...), as a plan's `backend`.
    backend: Mapping[str, str] = field(default_factory=dict)
    targets: tuple[str, ...] = ()  # --target names; () for the whole stack
    format_version: int = FORMAT_VERSION
    #: Several targets: each one's backend with its `name` (`backend` is then empty); () for one.
    backends: tuple[Mapping[str, str], ...] = ()
    #: Targets that could not be read, with the error.
    target_errors: Mapping[str, str] = field(default_factory=dict)
    #: The keys that have rotated: their generations, current first (none listed when no key has).
    generations: tuple[Generations, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "stack": self.stack,
            **({"backend": dict(self.backend)} if self.backend else {}),
            "backends": backends_document(self.backends or ({**self.backend, "name": DEFAULT_TARGET},)),
            **({"targets": list(self.targets)} if self.targets else {}),
            "keys": [k.to_dict() for k in self.keys],
            **({"generations": [g.to_dict() for g in self.generations]} if self.generations else {}),
            **failed_targets_document(self.target_errors),
        }

    @classmethod
    def merged(
        cls, stack: str, infos: Sequence[tuple[str, Mapping[str, str]]], parts: Mapping[str, ShowReport],
        errors: Mapping[str, str], targets: tuple[str, ...] = (),
    ) -> ShowReport:
        """One report of several targets from each target's, keys grouped in `infos` order."""
        done = [(name, parts[name]) for name, _ in infos if name in parts]
        return cls(
            stack=stack,
            keys=tuple(replace(k, target=name) for name, r in done for k in r.keys),
            missing=tuple(sorted({m for _, r in done for m in r.missing})),
            targets=targets,
            backends=tuple({**info, "name": name} for name, info in infos),
            target_errors={name: errors[name] for name, _ in infos if name in errors},
            generations=tuple(replace(g, target=name) for name, r in done for g in r.generations),
        )


def make_show(
    desired: ManifestSet,
    live: LiveState,
    *,
    backend: Mapping[str, str | None] | None = None,
    targets: Iterable[str] | None = None,
) -> ShowReport:
    """Every live key of the stack (of the `targets` names only, when given). Pure."""
    chosen = None if targets is None else frozenset(targets)
    names = sorted(name for name in live.keys if chosen is None or name in chosen)
    keys = tuple(
        ShownKey.of(name, key)
        for name in names
        for key in current_first(live.keys[name])
    )
    missing = tuple(
        d.name
        for d in desired.keys
        if (chosen is None or d.name in chosen)
        and d.state is not DesiredState.ABSENT
        and not live.keys.get(d.name)
    )
    return ShowReport(
        stack=live.stack,
        keys=keys,
        missing=missing,
        backend={k: str(v) for k, v in (backend or {}).items() if v is not None},
        targets=() if chosen is None else tuple(sorted(chosen)),
        generations=generations_of(live, names),
    )
