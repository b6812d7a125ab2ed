"""One comparison of a desired key with the live key that carries its identity: compare() -> KeyDiff.

The planner turns a KeyDiff into instructions and violations, drift into drift items; neither compares
attributes itself. Pure: no I/O, no clock, no judgement of what to do about a difference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from provisioner.model import MANAGED_TAGS, ActualKey, DesiredKey, KeyStatus, LiveState, Origin
from provisioner.plan.values import expire_unix

#: (label, fingerprint or None): a fingerprint a comparison wants, or one a key shows.
Labelled = tuple[str, str | None]


@dataclass(frozen=True)
class Mismatch:
    """A wanted fingerprint that is not the one the key shows: (wanted label, wanted, live label, live)."""

    wanted_label: str
    wanted: str
    live_label: str
    live: str


@dataclass(frozen=True)
class KeyDiff:
    """How the live key differs from the desired one. Empty fields mean "the same"."""

    #: (attribute, live, desired) for origin, spec, usage, protection and a named instance: these never
    #: change.
    immutable: tuple[tuple[str, str, str], ...]
    tags_to_set: Mapping[str, str]  # user tags the key lacks or holds with another value
    tags_to_remove: tuple[str, ...]  # user tags the key holds and the manifest does not list
    aliases_missing: tuple[str, ...]  # listed, not on the key, and not held by a key of another owner
    aliases_unexpected: tuple[str, ...]  # on the key and not among the listed ones of this stack's reach
    foreign_aliases: Mapping[str, str]  # listed alias -> key of another owner holding it
    description: str | None  # the desired description when it differs
    deletion_protection: bool | None  # the desired protection when it differs
    status: KeyStatus
    expiry_changes: bool  # the material's expiry is not the desired one (to the second)
    #: The material's fingerprint (or the pin) against the confirmed public key when it was read, else
    #: against the recorded tag: the tag is a claim, the live key the fact (tag repair).
    material_mismatch: Mismatch | None
    #: The key against itself and the pin: the confirmed public key against the pin and the recorded
    #: tag, then the pin against the recorded tag (no material is read).
    public_key_mismatch: Mismatch | None
    fingerprint_tag_missing: bool

    @property
    def holds_material(self) -> bool:
        return self.status in (KeyStatus.ENABLED, KeyStatus.DISABLED)

    @property
    def attributes_differ(self) -> bool:
        """Tags, aliases, description or protection differ: what an `update` changes."""
        return bool(
            self.tags_to_set
            or self.tags_to_remove
            or self.aliases_missing
            or self.aliases_unexpected
            or self.description is not None
            or self.deletion_protection is not None
        )


def first_mismatch(wanted: Sequence[Labelled], live: Sequence[Labelled]) -> Mismatch | None:
    """The first known wanted fingerprint that differs from a known live one, wanted in order, then live."""
    for wlabel, want in wanted:
        if want is None:
            continue
        for llabel, have in live:
            if have is not None and have != want:
                return Mismatch(wlabel, want, llabel, have)
    return None


def foreign_aliases(aliases: Sequence[str], live: LiveState, our_ids: frozenset[str]) -> dict[str, str]:
    """Which of `aliases` a key not managed by this stack holds: alias -> that key's id."""
    out: dict[str, str] = {}
    for a in aliases:
        owner = live.alias_owners.get(a)
        if owner is not None and (owner not in our_ids or owner in live.foreign_keys):
            out[a] = owner
    return out


def compare(
    desired: DesiredKey,
    actual: ActualKey,
    *,
    live: LiveState,
    our_ids: frozenset[str],
    fingerprint: str | None = None,
) -> KeyDiff:
    """`desired` against `actual`. `fingerprint` is that of the material read for the key, if any;
    `our_ids` are the ids of every key of the stack in `live`."""
    d, key = desired, actual
    immutable: list[tuple[str, str, str]] = []
    if key.origin is not Origin.EXTERNAL:  # only an adopted key can be another origin
        immutable.append(("origin", key.origin.value, Origin.EXTERNAL.value))
    immutable += [
        (attr, str(getattr(key, attr)), str(getattr(d, attr)))
        for attr in ("spec", "usage", "protection")
        if getattr(key, attr) != getattr(d, attr)
    ]
    # No instance in the manifest means "wherever it is"; only a named instance must match.
    if d.instance is not None and d.instance != key.instance:
        immutable.append(("instance", str(key.instance), d.instance))
    foreign = foreign_aliases(d.aliases, live, our_ids)
    wanted_aliases = {a for a in d.aliases if a not in foreign}
    pinned = d.material.fingerprint if d.material is not None else None
    recorded, confirmed = key.recorded_fingerprint, key.public_key_fingerprint
    key_mismatch = first_mismatch([("pinned", pinned), ("recorded", recorded)], [("confirmed", confirmed)])
    return KeyDiff(
        immutable=tuple(immutable),
        tags_to_set={k: v for k, v in d.tags.items() if k not in MANAGED_TAGS and key.tags.get(k) != v},
        tags_to_remove=tuple(sorted(k for k in key.user_tags if k not in d.tags)),
        aliases_missing=tuple(sorted(wanted_aliases - set(key.aliases))),
        aliases_unexpected=tuple(sorted(set(key.aliases) - wanted_aliases)),
        foreign_aliases=dict(sorted(foreign.items())),
        description=d.description if d.description != key.description else None,
        deletion_protection=(
            d.deletion_protection if d.deletion_protection != key.deletion_protection else None
        ),
        status=key.status,
        expiry_changes=expire_unix(key.material_expires_at) != expire_unix(d.expiry),
        material_mismatch=first_mismatch(
            [("material", fingerprint), ("pinned fingerprint", pinned)],
            [("live public key", confirmed)] if confirmed is not None else [("recorded", recorded)],
        ),
        public_key_mismatch=key_mismatch or first_mismatch([("pinned", pinned)], [("recorded", recorded)]),
        fingerprint_tag_missing=recorded is None,
    )
