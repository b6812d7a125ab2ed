"""The planner: a pure function of (desired keys, live state, now) returning a Plan, and the derivations
that check a saved plan (derive_change, check_instructions, stale_reason, resolve_fingerprints).

It does no I/O, reads no clock and encodes nothing (planfile.py does); the caller passes `now` and the
fingerprints of the desired material. What `before` and `after` mean per action: values.py. The planner
and derive_change write a change with the same rules: state_actions(), identity_tags(), creation() for a
create and Convergence for an existing key; only where the inputs come from differs.

The key of a desired name is the live key carrying that identity (stack, name; the current generation
only), else the key of a `moved_from:` name (a rename: `update` rewrites its name tag), else the key
`adopt:` names (action `adopt`: its reserved tags are written, then it converges like any other).
The fingerprint tag is a claim and the live public key the fact: a tag that disagrees with the material
is restored when GetPublicKey proves the key holds that material (tag repair).

`actions` lists what a key needs in execution order (values.py); state_actions() says which state
actions a key needs. A key whose live deletion protection is on is never scheduled for deletion
(violation `deletion-protected`): the protection is lifted by an earlier apply. `duplicates` are extra
keys of the same identity (they never held material): apply schedules each of them for deletion with
DUPLICATE_WINDOW_DAYS, on top of whatever `actions` says for `key_id`; a change may carry duplicates
and no action.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime

from provisioner.compare import KeyDiff, compare, foreign_aliases
from provisioner.diagnostics import Diagnostics
from provisioner.errors import ManifestError, MaterialError, ProvisionerError, StalePlan
from provisioner.model import (
    MANAGED_TAGS,
    TAG_FINGERPRINT,
    TAG_GENERATION,
    TAG_NAME,
    TAG_STACK,
    ActualKey,
    DesiredKey,
    DesiredState,
    Diagnostic,
    KeyStatus,
    LiveState,
    Location,
    ManifestSet,
    PreviousGeneration,
    claim_alias,
    format_time,
    generation_of,
)
from provisioner.plan.planfile import digest_snapshot
from provisioner.plan.values import (
    UNKNOWN_FINGERPRINT,
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
    expire_unix,
)
from provisioner.specs import Verification, facts


def digest_actual(key: ActualKey) -> str:
    """`sha256:<hex>` of what apply depends on, so a saved plan can tell that a key changed since."""
    return digest_snapshot(KeySnapshot.of(key))


# ----------------------------------------------------------------------------------------- planner


_HOLDS_MATERIAL = frozenset({KeyStatus.ENABLED, KeyStatus.DISABLED})
#: Declared states in which a key holds its material.
KEEPS_MATERIAL = frozenset({DesiredState.PRESENT, DesiredState.DISABLED})


def state_actions(
    status: KeyStatus, want: DesiredState, *, expiry_changes: bool
) -> tuple[tuple[Action, ...], tuple[Action, ...]]:
    """The actions that take an existing key in `status` to the declared state `want` (not absent):
    (those before an update, those after it), each in apply order. Pure; the planner and
    derive_change both read it, so a saved plan is checked against the same rule.

    A key pending deletion comes back Enabled, or PendingImport when it holds no material (KMS does
    not say which beforehand): it is treated as Enabled, and a key that comes back empty is reimported
    by the next plan.
    """
    first: list[Action] = []
    if status is KeyStatus.PENDING_DELETION:
        first.append(Action.CANCEL_DELETION)
    if status is KeyStatus.DISABLED and want is DesiredState.PRESENT:
        first.append(Action.ENABLE)
    then: list[Action] = []
    if want in KEEPS_MATERIAL:
        if status in (KeyStatus.PENDING_IMPORT, KeyStatus.MATERIAL_EXPIRED) or expiry_changes:
            then.append(Action.REIMPORT)
    elif status in _HOLDS_MATERIAL or status is KeyStatus.PENDING_DELETION:
        then.append(Action.DELETE_MATERIAL)
    if want is DesiredState.DISABLED and status is not KeyStatus.DISABLED:
        then.append(Action.DISABLE)
    return tuple(first), tuple(then)


@dataclass(frozen=True)
class Identity:
    """The live keys of one name, sorted out: the one we manage, the duplicates to remove."""

    primary: ActualKey | None
    duplicates: tuple[ActualKey, ...]
    conflict: tuple[ActualKey, ...]  # more than one key holding material: we cannot pick
    #: Keys of older generations (DESIGN section 11): managed, never duplicates, oldest first.
    older: tuple[ActualKey, ...] = ()


def _oldest_first(keys: Iterable[ActualKey]) -> list[ActualKey]:
    return sorted(keys, key=lambda k: (k.created_at, k.key_id))


NO_KEY = Identity(None, (), ())


def current_generation(keys: Iterable[ActualKey]) -> tuple[ActualKey, ...]:
    """The keys of an identity's current generation: the highest among its keys not pending deletion
    (among all of them when every one is). Older generations are a rotation's previous keys
    (DESIGN section 11): never duplicates, never the key a plan works on."""
    keys = tuple(keys)
    standing = [k for k in keys if k.status is not KeyStatus.PENDING_DELETION] or list(keys)
    if not standing:
        return ()
    current = max(k.generation for k in standing)
    return tuple(k for k in keys if k.generation == current)


def sort_identity(keys: tuple[ActualKey, ...], claimed_by: str | None = None) -> Identity:
    """The current generation's keys sorted out. `claimed_by`: the key id the identity's claim alias
    points at (DESIGN section 10), if any. The claimed key is the identity's key: an empty key beside it
    is a duplicate (a run that lost the claim, or was killed before making it), never the other way
    round, even when it is older."""
    current = tuple(_oldest_first(current_generation(keys)))
    top = current[0].generation if current else 1
    older = tuple(_oldest_first(k for k in keys if k.generation < top))
    keys = current
    active = _oldest_first(k for k in keys if k.status is not KeyStatus.PENDING_DELETION)
    if not active:
        # Keys already pending deletion are left alone; the claimed one (else the oldest) stands for it.
        pending = _oldest_first(keys)
        claimed = [k for k in pending if k.key_id == claimed_by]
        stands = claimed[0] if claimed else pending[0] if pending else None
        return Identity(stands, (), (), older)
    # An expired key once held material and stays bound to it, so it counts as a holder.
    holders = [k for k in active if k.status is not KeyStatus.PENDING_IMPORT]
    claimed = [k for k in active if k.key_id == claimed_by]
    if len(holders) > 1 or (claimed and holders and holders[0] is not claimed[0]):
        return Identity(None, (), tuple(holders if len(holders) > 1 else (*holders, *claimed)), older)
    primary = claimed[0] if claimed else holders[0] if holders else active[0]
    return Identity(primary, tuple(k for k in active if k is not primary), (), older)


def previous_actions(status: KeyStatus, state: DesiredState) -> tuple[Action, ...]:
    """What an old generation in `status` needs for the state its `previous:` entry declares. Pure;
    the planner and derive_change both read it. A key pending deletion is left alone unless the entry
    wants it absent (cancel-deletion considers the current generation only)."""
    if status is KeyStatus.PENDING_DELETION:
        return ()
    if state is DesiredState.ABSENT:
        return (Action.SCHEDULE_DELETION,)
    if state is DesiredState.DISABLED and status is KeyStatus.ENABLED:
        return (Action.DISABLE,)
    if state is DesiredState.PRESENT and status is KeyStatus.DISABLED:
        return (Action.ENABLE,)
    return ()


def creation_tags(
    stack: str, name: str, fingerprint: str, user_tags: Mapping[str, str], generation: int = 1
) -> dict[str, str]:
    """Every tag CreateKey sets, sorted: the user's and the reserved ones (the generation from 2 on)."""
    tags = {k: v for k, v in user_tags.items() if k not in MANAGED_TAGS}
    tags.update({TAG_STACK: stack, TAG_NAME: name, TAG_FINGERPRINT: fingerprint})
    if generation > 1:
        tags[TAG_GENERATION] = str(generation)
    return dict(sorted(tags.items()))


def _standing(ident: Identity) -> bool:
    """Whether an identity has a key that is not pending deletion."""
    return ident.primary is not None and ident.primary.status is not KeyStatus.PENDING_DELETION


def identity_tags(stack: str, name: str, before: KeySnapshot, fingerprint: str | None) -> dict[str, str]:
    """The reserved tags an existing key is to be given: all of them when it is adopted (its stack tag is
    not `stack`), the name tag after a rename, the fingerprint tag when it disagrees with `fingerprint`
    and the live public key proves the key holds that material (tag repair). Pure; the planner and
    derive_change both call it. `fingerprint` is the desired one: None or UNKNOWN_FINGERPRINT when the
    plan read no material and no pin names it; an adopted key then records its live public key."""
    have, live = before.tags, before.public_key_fingerprint
    adopting = have.get(TAG_STACK) != stack
    want = {TAG_STACK: stack, TAG_NAME: name}
    if fingerprint is not None and fingerprint != UNKNOWN_FINGERPRINT:
        if adopting or live == fingerprint:
            want[TAG_FINGERPRINT] = fingerprint
    elif adopting and (live or fingerprint):
        want[TAG_FINGERPRINT] = live or str(fingerprint)
    return {k: v for k, v in sorted(want.items()) if have.get(k) != v}


def creation(
    change: Change, stack: str, after: DesiredAttributes, material: MaterialReference,
    aliases: tuple[tuple[str, ...], tuple[str, ...]],
) -> Change:
    """`change` (its key, reason and target kept) as the creation of a key for `after`: CreateKey with
    every tag, the import of `material`, the aliases (to create, to move), and DisableKey when it is to
    be disabled. The planner and derive_change both write a create with it."""
    disable = (Action.DISABLE,) if after.state is DesiredState.DISABLED else ()
    return replace(
        change,
        key_id=None,
        actions=(Action.CREATE, Action.IMPORT, *disable),
        before=None,
        after=after,
        tags_to_set=creation_tags(stack, change.key, str(after.fingerprint), after.tags),
        tags_to_remove=(),
        aliases_to_create=aliases[0],
        aliases_to_move=aliases[1],
        aliases_to_delete=(),
        description=after.description,
        deletion_protection=True if after.deletion_protection else None,
        expire_unix=expire_unix(after.expiry),
        pending_window_days=None,
        material=material,
        state_digest=None,
        duplicates=(),
        duplicate_digests=(),
    )


@dataclass(frozen=True)
class Convergence:
    """What takes an existing key (the current generation, `before`) to its desired attributes
    (`after`): the planner reads it from compare(), derive_change from a saved change's before/after.
    change() is the one place that orders its actions and writes its instructions, so a saved plan is
    checked against the rule the planner applies."""

    before: KeySnapshot
    after: DesiredAttributes
    adopting: bool
    expiry_changes: bool
    identity_tags: Mapping[str, str]  # identity_tags(): all of them on adopt, else a rename or a repair
    tags_to_set: Mapping[str, str]  # user tags only, as Change has them (the identity tags join them)
    tags_to_remove: tuple[str, ...]
    aliases_to_create: tuple[str, ...]
    aliases_to_move: tuple[str, ...]
    aliases_to_delete: tuple[str, ...]
    description: str | None
    deletion_protection: bool | None

    @property
    def state_actions(self) -> tuple[tuple[Action, ...], tuple[Action, ...]]:
        """(before the update, after it): state_actions() of `before` for `after`."""
        return state_actions(self.before.status, self.after.state, expiry_changes=self.expiry_changes)

    @property
    def updates(self) -> bool:
        """Whether the key needs an `update`: its attributes differ, or (unless adopt writes them) its
        reserved tags."""
        return bool(
            (self.identity_tags and not self.adopting)
            or self.tags_to_set
            or self.tags_to_remove
            or self.aliases_to_create
            or self.aliases_to_move
            or self.aliases_to_delete
            or (self.description, self.deletion_protection) != (None, None)
        )

    @property
    def actions(self) -> tuple[Action, ...]:
        first, then = self.state_actions
        adopt = (Action.ADOPT,) if self.adopting else ()
        update = (Action.UPDATE,) if self.updates else ()
        return (*adopt, *first, *update, *then)

    def change(self, change: Change, material: MaterialReference | None) -> Change:
        """`change` (its key, reason, before/after, duplicates, target kept) with these instructions;
        `material` is the reimport's, when the actions reimport."""
        reimport = Action.REIMPORT in self.state_actions[1]
        return replace(
            change,
            key_id=self.before.key_id,
            actions=self.actions,
            tags_to_set=dict(sorted({**self.tags_to_set, **self.identity_tags}.items())),
            tags_to_remove=self.tags_to_remove,
            aliases_to_create=self.aliases_to_create,
            aliases_to_move=self.aliases_to_move,
            aliases_to_delete=self.aliases_to_delete,
            description=self.description,
            deletion_protection=self.deletion_protection,
            expire_unix=expire_unix(self.after.expiry) if reimport else None,
            pending_window_days=None,
            material=material if reimport else None,
            state_digest=digest_snapshot(self.before),
        )


def confirm_policy(desired: ManifestSet, fingerprints: Mapping[str, str]) -> Callable[[ActualKey], bool]:
    """Which live keys refresh reads the public key of (GetPublicKey): those without a fingerprint tag,
    and those whose tag disagrees with their desired key's material (or pin), so that the planner can
    tell a tampered tag (repaired) from other material (`material-immutable`). A renamed key is judged
    by the desired key it moves to."""
    wanted: dict[str, str | None] = {}
    for d in desired.keys:
        fp = fingerprints.get(d.name) or (d.material.fingerprint if d.material is not None else None)
        for name in (*d.moved_from, d.name):
            wanted[name] = fp

    def confirm(key: ActualKey) -> bool:
        recorded = key.recorded_fingerprint
        want = wanted.get(key.name or "")
        return recorded is None or (want is not None and recorded != want)

    return confirm


def missing_adoptions(
    desired: ManifestSet, live: LiveState, targets: Iterable[str] | None = None
) -> Diagnostics:
    """Located errors for each `adopt:` (of a targeted key) that names no key, in the set's file order.
    As Terraform's import block does with an object that does not exist, this is an error, not a plan:
    there is nothing to show a change of."""
    chosen = None if targets is None else frozenset(targets)
    out = Diagnostics(files=desired.files)
    for d in desired.keys:
        if d.adopt is None or (chosen is not None and d.name not in chosen):
            continue
        found = live.adopted.get(d.name)
        if found is None or found.key is None:
            why = "it was not read" if found is None else found.problem
            out.add(
                Diagnostic(
                    d.adopt_at or d.location,
                    f"key {d.name!r}: adopt: {d.adopt}: {why}: a key to adopt must exist; fix the reference, "
                    f"or remove adopt: to create a new key",
                )
            )
    return out


def with_lease(d: DesiredKey, key: ActualKey | None, now: datetime) -> DesiredKey:
    """`d` with the expiry its lease wants at `now` (DESIGN section 11): the live key's while more than
    `renew_before` of it is left, else a new lease from `now`. A key without a lease is returned as is."""
    if d.lease is None:
        return d
    live = key.material_expires_at if key is not None and key.status in _HOLDS_MATERIAL else None
    return replace(d, expiry=d.lease.expiry(live, now))


def identity_of(live: LiveState, name: str) -> Identity:
    """The live keys of `name` sorted out by its claim."""
    keys = live.keys.get(name, ())
    generation = max((k.generation for k in current_generation(keys)), default=1)
    return sort_identity(keys, live.alias_owners.get(claim_alias(live.stack, name, generation)))


def identities(live: LiveState) -> dict[str, Identity]:
    """Every name's keys sorted out, each by its claim."""
    return {name: identity_of(live, name) for name in live.keys}


class _Planner:
    def __init__(
        self,
        desired: ManifestSet,
        live: LiveState,
        now: datetime,
        fingerprints: Mapping[str, str],
        offline: bool = False,
        targets: frozenset[str] | None = None,
        lease_now: datetime | None = None,
    ) -> None:
        if desired.stack != live.stack:
            raise ProvisionerError(
                f"live state was read for stack {live.stack!r} "
                f"but the manifests declare stack {desired.stack!r}"
            )
        self.desired = desired
        self.live = live
        self.now = now
        self.lease_now = lease_now or now
        self.fingerprints = fingerprints
        self.offline = offline
        self.targets = targets
        self.changes: list[Change] = []
        self.violations: list[Violation] = []
        self.notes: list[Note] = []
        self.locations = {d.name: d.location for d in desired.keys}
        self.identities = identities(live)
        # A key to adopt that no stack manages becomes this stack's: its aliases are ours to keep or move.
        adoptable = [
            a.key for a in live.adopted.values() if a.key is not None and a.key.stack in (None, live.stack)
        ]
        self.our_ids = live.stack_key_ids | {k.key_id for k in adoptable}
        # Who adopts each key: two references (KeyId, ARN, alias) may name one key.
        self.adopters: dict[str, list[str]] = {}
        for adopter, adopted in sorted(live.adopted.items()):
            if adopted.key is not None:
                self.adopters.setdefault(adopted.key.key_id, []).append(adopter)
        self.live = replace(live, foreign_keys=live.foreign_keys - {k.key_id for k in adoptable})
        # Who of ours holds each alias, from the keys themselves (the most direct fact).
        self.our_alias_owner: dict[str, str] = {}
        for k in [*adoptable, *(k for keys in live.keys.values() for k in keys)]:
            for a in k.aliases:
                self.our_alias_owner[a] = k.key_id
        # Aliases that a key the plan keeps (or creates) claims: those move rather than get deleted.
        # A material-deleted key that does not exist is not created, so it claims nothing. A key left out
        # by --target was not read: it counts as existing, so no alias it wants is deleted under it.
        self.claimed: dict[str, str] = {}
        for d in desired.keys:
            names = (d.name, *d.moved_from)
            exists = (
                not self.targeted(d.name)
                or d.adopt is not None
                or any(self.identities.get(n, NO_KEY).primary for n in names)
            )
            if d.state in KEEPS_MATERIAL or (d.state is DesiredState.MATERIAL_DELETED and exists):
                for a in d.aliases:
                    self.claimed[a] = d.name

    def targeted(self, name: str) -> bool:
        return self.targets is None or name in self.targets

    def violate(self, key: str, code: ViolationCode, message: str, at: Location | None = None) -> None:
        self.violations.append(Violation(key, code, message, at or self.locations.get(key)))

    def run(self) -> None:
        desired_names = {n for d in self.desired.keys for n in (d.name, *d.moved_from)}
        for d in self.desired.keys:
            if not self.targeted(d.name):
                continue
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
            if not self.targeted(name):
                continue
            ids = ", ".join(k.key_id for k in self.live.keys[name])
            self.notes.append(
                Note(
                    name, f"key {ids} of stack {self.live.stack!r} is not in the manifests; it is left alone"
                )
            )

    # -- one key

    def plan_key(self, d: DesiredKey) -> None:
        found = self.identity_of(d)
        if found is None:
            return
        ident, adopting = found
        d = with_lease(d, ident.primary, self.lease_now)
        self.plan_previous(d, ident)
        if ident.primary is None:
            self.plan_new(d)
        elif d.state is DesiredState.ABSENT and adopting:
            self.violate(
                d.name,
                ViolationCode.UNSUPPORTED,
                f"state is absent but key {ident.primary.key_id} is not managed yet: adopt it first "
                f"(state: present), or remove the key from the manifests to leave it alone",
            )
        elif d.state is DesiredState.ABSENT:
            self.plan_absent(d, ident.primary, ident.duplicates)
        elif not adopting and (entry := self.rotation_entry(d, ident.primary)) is not None:
            self.plan_rotate(d, ident.primary, ident.duplicates, entry)
        else:
            self.plan_existing(d, ident.primary, ident.duplicates, adopting=adopting)

    def identity_of(self, d: DesiredKey) -> tuple[Identity, bool] | None:
        """The live keys of `d` and whether it is to be adopted: its own name's, else a `moved_from`
        name's, else the key `adopt:` names. None after a violation."""
        standing: list[tuple[str, Identity]] = []
        for name in (d.name, *d.moved_from):
            ident = self.identities.get(name, NO_KEY)
            if ident.conflict:
                ids = ", ".join(k.key_id for k in ident.conflict)
                self.violate(
                    d.name,
                    ViolationCode.DUPLICATE_IDENTITY,
                    f"keys {ids} all carry the identity {name!r} and all hold material; the provisioner "
                    f"cannot tell which one is meant: schedule the unwanted ones for deletion by hand",
                )
                return None
            if _standing(ident):
                standing.append((name, ident))
        if len(standing) > 1:
            both = " and ".join(f"key {i.primary.key_id} ({n!r})" for n, i in standing if i.primary)
            self.violate(
                d.name,
                ViolationCode.DUPLICATE_IDENTITY,
                f"{both} are both live, but moved_from says they are one key: retire the unwanted one "
                f"(schedule its deletion by hand, or declare it under its own name with state: absent and "
                f"no moved_from), then plan again",
            )
            return None
        ident = standing[0][1] if standing else self.identities.get(d.name, NO_KEY)
        if d.adopt is None:
            return ident, False
        target = self.live.adopted[d.name].key
        assert target is not None  # make_plan refuses an adopt: that names no key
        if _standing(ident) and ident.primary is not None:
            if ident.primary.key_id == target.key_id:
                return ident, False  # adopted already: `adopt:` is redundant and harmless
            self.violate(
                d.name,
                ViolationCode.DUPLICATE_IDENTITY,
                f"adopt: names key {target.key_id}, but key {ident.primary.key_id} already carries the "
                f"identity {d.name!r}: remove adopt:, or retire key {ident.primary.key_id} first",
            )
            return None
        others = [n for n in self.adopters.get(target.key_id, ()) if n != d.name]
        if others:
            refs = self.live.adopted
            whom = ", ".join(f"key {n!r} adopts too (adopt: {refs[n].reference})" for n in others)
            self.violate(
                d.name,
                ViolationCode.DUPLICATE_IDENTITY,
                f"adopt: names key {target.key_id}, which {whom}: one KMS key is one key of the set; "
                f"keep one adopt: of it",
            )
            return None
        if target.stack == self.desired.stack and target.name is None:
            self.violate(
                d.name,
                ViolationCode.MANAGED_ELSEWHERE,
                f"key {target.key_id} carries the tag of this stack but no name tag: restore its tag "
                f"{TAG_NAME}={d.name} by hand, or remove adopt: to create a new key",
            )
            return None
        if target.stack is not None:
            if target.stack != self.desired.stack:
                where = f"by stack {target.stack!r}" + (f" as {target.name!r}" if target.name else "")
                fix = "remove it from that stack's manifests first, or remove adopt:"
            else:
                where = f"by this stack as {target.name!r}"
                fix = f"to rename it, write moved_from: [{target.name}] instead of adopt:"
            self.violate(
                d.name,
                ViolationCode.MANAGED_ELSEWHERE,
                f"key {target.key_id} is already managed {where}: a key belongs to one stack and one "
                f"name; {fix}",
            )
            return None
        return Identity(target, (), ()), True

    # -- generations (DESIGN section 11)

    def rotation_entry(self, d: DesiredKey, key: ActualKey) -> PreviousGeneration | None:
        """The `previous:` entry of the live key's material when `material` names other material."""
        live = key.fingerprint
        if d.state not in KEEPS_MATERIAL or live is None or self.fingerprint_of(d) in (None, live):
            return None
        return next((p for p in d.previous if p.fingerprint == live), None)

    def plan_previous(self, d: DesiredKey, ident: Identity) -> None:
        """Located errors for `previous:` fingerprints no live key of the identity holds (an absent
        entry whose key is gone is satisfied), and the declared state of each older generation."""
        keys = (*ident.older, *ident.duplicates, *ident.conflict, *(k for k in (ident.primary,) if k))
        held = {k.fingerprint for k in keys}
        for p in d.previous:
            if p.fingerprint not in held and p.state is not DesiredState.ABSENT:
                self.violate(
                    d.name,
                    ViolationCode.PREVIOUS_NOT_FOUND,
                    f"previous generation {p.fingerprint} (state {p.state.value}) matches no live key of "
                    f"{d.name!r} in stack {self.desired.stack!r}: correct the fingerprint, or remove the "
                    f"entry",
                    p.location,
                )
        entries = {p.fingerprint: p for p in d.previous}
        for old in ident.older:
            entry = entries.get(old.fingerprint or "")
            if entry is None:
                continue  # an old generation `previous:` no longer lists is left alone
            actions = previous_actions(old.status, entry.state)
            if not actions or (entry.state is DesiredState.ABSENT and not self.unprotected(d, (old,))):
                continue
            self.changes.append(
                Change(
                    key=d.name,
                    key_id=old.key_id,
                    actions=actions,
                    reason=(
                        f"generation {old.generation} ({old.fingerprint}) is {old.status.value}; "
                        f"`previous:` declares it {entry.state.value}"
                    ),
                    before=KeySnapshot.of(old),
                    after=None,
                    pending_window_days=(
                        d.deletion_window_days if Action.SCHEDULE_DELETION in actions else None
                    ),
                    state_digest=digest_actual(old),
                    previous_state=entry.state,
                )
            )

    def plan_rotate(
        self, d: DesiredKey, key: ActualKey, duplicates: tuple[ActualKey, ...], entry: PreviousGeneration
    ) -> None:
        """A new key of the next generation takes the new material and every alias; the old key gets the
        state its `previous:` entry declares (rotate, DESIGN section 11)."""
        n_before = len(self.violations)
        ok = self.check_expiry(d)
        self.unprotected(d, duplicates)
        if entry.state is DesiredState.ABSENT:
            self.unprotected(d, (key,))
        claims = self.plan_alias_claims(d)
        ref = self.material_ref(d, "the material changes, which `previous:` allows: a new key is created")
        if not ok or ref is None or claims is None or len(self.violations) > n_before:
            return
        material, fp = ref
        generation = key.generation + 1
        then = (Action.DISABLE,) if d.state is DesiredState.DISABLED else ()
        old_words = {
            DesiredState.PRESENT: "stays enabled",
            DesiredState.DISABLED: "is disabled",
            DesiredState.ABSENT: f"is scheduled for deletion in {d.deletion_window_days} days",
        }[entry.state]
        self.changes.append(
            Change(
                key=d.name,
                key_id=key.key_id,
                actions=(Action.ROTATE, *then),
                reason=(
                    f"material changes from {key.fingerprint} to {fp}, which `previous:` allows: a new key "
                    f"(generation {generation}) takes over the aliases; key {key.key_id} {old_words}"
                ),
                before=KeySnapshot.of(key),
                after=DesiredAttributes.of(d, fp),
                tags_to_set=creation_tags(self.desired.stack, d.name, fp, d.tags, generation),
                aliases_to_create=claims[0],
                aliases_to_move=claims[1],
                description=d.description,
                deletion_protection=True if d.deletion_protection else None,
                expire_unix=expire_unix(d.expiry),
                pending_window_days=d.deletion_window_days if entry.state is DesiredState.ABSENT else None,
                material=material,
                state_digest=digest_actual(key),
                duplicates=tuple(k.key_id for k in duplicates),
                duplicate_digests=tuple(digest_actual(k) for k in duplicates),
                previous_state=entry.state,
            )
        )

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

    def material_ref(self, d: DesiredKey, why: str) -> tuple[MaterialReference, str] | None:
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
        return MaterialReference.of(d.material, fp), fp

    def plan_new(self, d: DesiredKey) -> None:
        if d.state is DesiredState.ABSENT:
            return
        if d.state is DesiredState.MATERIAL_DELETED:
            # Creating an empty key only to keep it empty helps nobody; its identity tag would need a
            # fingerprint we may not have. Say so instead of doing it. An alias it lists that a key of
            # another owner holds is still a conflict (drift reports it as unmanaged-alias).
            self.notes.append(
                Note(d.name, "key does not exist and its state is material-deleted: nothing to create")
            )
            self.plan_alias_claims(d)
            return
        ok = self.check_expiry(d)
        claims = self.plan_alias_claims(d)
        ref = self.material_ref(d, "key does not exist and must be created and imported")
        claim = claim_alias(self.desired.stack, d.name)
        holder = self.live.alias_owners.get(claim)
        if holder is not None:
            # Only a key of this identity may hold its claim; apply's CreateAlias would fail after CreateKey.
            self.violate(
                d.name,
                ViolationCode.ALIAS_CONFLICT,
                f"the identity's claim alias {claim} points at key {holder}, which does not carry the "
                f"identity (were its tags changed by hand?): restore the key's identity tags, or delete the "
                f"alias by hand",
            )
            return
        if not ok or ref is None or claims is None:
            return
        after = DesiredAttributes.of(d, ref[1])
        disabled = "; state is disabled" if d.state is DesiredState.DISABLED else ""
        base = Change(key=d.name, key_id=None, actions=(), reason=f"key does not exist{disabled}")
        self.changes.append(creation(base, self.desired.stack, after, ref[0], claims))

    def plan_alias_claims(
        self, d: DesiredKey, holder: str | None = None, wanted: Iterable[str] | None = None
    ) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """Aliases `d` lists (or `wanted` of them) that `holder` lacks: (to create, to move); None on a
        conflict."""
        create: list[str] = []
        move: list[str] = []
        conflict = False
        aliases = sorted(d.aliases if wanted is None else wanted)
        # The same test as drift's unmanaged-alias (compare.foreign_aliases), for aliases no key of ours
        # holds.
        foreign = foreign_aliases(
            [a for a in aliases if a not in self.our_alias_owner], self.live, self.our_ids
        )
        for a in aliases:
            owner = self.our_alias_owner.get(a)
            if owner is None:
                owner = self.live.alias_owners.get(a)
                if a in foreign:
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
                before=KeySnapshot.of(key),
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
            before=KeySnapshot.of(key),
            after=None if d.state is DesiredState.ABSENT else DesiredAttributes.of(d, self.fingerprint_of(d)),
            state_digest=digest_actual(key),
            duplicates=dup_ids,
            duplicate_digests=tuple(digest_actual(k) for k in duplicates),
        )

    def plan_existing(
        self, d: DesiredKey, key: ActualKey, duplicates: tuple[ActualKey, ...], *, adopting: bool = False
    ) -> None:
        n_before = len(self.violations)
        fingerprint = self.fingerprints.get(d.name)
        diff = compare(d, key, live=self.live, our_ids=self.our_ids, fingerprint=fingerprint)
        if adopting and key.status in (KeyStatus.DISABLED, KeyStatus.PENDING_DELETION):
            self.check_immutable(d, key, diff)
            pending = key.status is KeyStatus.PENDING_DELETION
            before = "cancel its deletion (CancelKeyDeletion) and " if pending else ""
            self.violate(
                d.name,
                ViolationCode.MATERIAL_IMMUTABLE,
                f"key {key.key_id} to adopt is {key.status.value}: GetPublicKey needs an enabled key, so the "
                f"material it holds cannot be checked against the manifest's: {before}enable it first, "
                f"then plan again",
            )
            return
        self.check_immutable(d, key, diff)
        self.unprotected(d, duplicates)
        if d.state in KEEPS_MATERIAL:
            self.check_expiry(d)
        if d.state is DesiredState.PRESENT or adopting:
            self.check_material(d, key, diff, adopting)

        snapshot, after = KeySnapshot.of(key), DesiredAttributes.of(d, self.fingerprint_of(d))
        wanted = sorted({*diff.aliases_missing, *diff.foreign_aliases})
        create, move = self.plan_alias_claims(d, key.key_id, wanted) or ((), ())
        work = Convergence(
            before=snapshot,
            after=after,
            adopting=adopting,
            expiry_changes=diff.expiry_changes,
            identity_tags=identity_tags(self.desired.stack, d.name, snapshot, after.fingerprint),
            tags_to_set=diff.tags_to_set,
            tags_to_remove=diff.tags_to_remove,
            aliases_to_create=create,
            aliases_to_move=move,
            # An alias another key of the plan claims moves with that key's change, not deleted here.
            aliases_to_delete=tuple(
                a for a in diff.aliases_unexpected if a not in d.aliases and a not in self.claimed
            ),
            description=diff.description,
            deletion_protection=diff.deletion_protection,
        )
        reasons = self.existing_reasons(d, key, work)
        _, then = work.state_actions
        material: MaterialReference | None = None
        if Action.REIMPORT in then:
            why = self.reimport_reason(d, key)
            ref = self.material_ref(d, why)
            if ref is not None:
                material = ref[0]
                reasons.append(why)
        if Action.DELETE_MATERIAL in then:
            holds = "may hold" if key.status is KeyStatus.PENDING_DELETION else "holds"
            reasons.append(f"state is material-deleted and the key {holds} material")
        if Action.DISABLE in then:
            reasons.append(f"state is disabled and the key is {key.status.value}")

        if len(self.violations) > n_before:
            return
        dup_ids = tuple(k.key_id for k in duplicates)
        if not work.actions:
            if dup_ids:
                self.changes.append(self.duplicates_only(d, key, duplicates))
            return
        if dup_ids:
            reasons.append(f"{len(dup_ids)} duplicate key(s) without material to delete")
        base = Change(
            key=d.name,
            key_id=key.key_id,
            actions=(),
            reason="; ".join(reasons),
            before=snapshot,
            after=after,
            duplicates=dup_ids,
            duplicate_digests=tuple(digest_actual(k) for k in duplicates),
        )
        self.changes.append(work.change(base, material))

    def existing_reasons(self, d: DesiredKey, key: ActualKey, work: Convergence) -> list[str]:
        """Why an existing key changes, up to its material and state work (plan_existing adds those)."""
        reasons: list[str] = []
        first, _ = work.state_actions
        if work.adopting:
            reasons.append(f"adopt: {d.adopt} names key {key.key_id}, which no stack manages")
        if Action.CANCEL_DELETION in first:
            reasons.append(
                f"key is pending deletion (on {format_time(key.deletion_date) or 'an unknown date'}) but "
                f"the manifest wants it {d.state.value}"
            )
        if Action.ENABLE in first:
            reasons.append("key is disabled but the manifest wants it present")
        if not work.adopting and TAG_NAME in work.identity_tags:
            reasons.append(f"renamed from {key.name!r} (moved_from): name tag rewritten")
        if not work.adopting and TAG_FINGERPRINT in work.identity_tags:
            reasons.append("fingerprint tag restored: the live public key matches the material")
        if work.tags_to_set or work.tags_to_remove:
            reasons.append("tags differ")
        if work.aliases_to_create or work.aliases_to_move or work.aliases_to_delete:
            reasons.append("aliases differ")
        if work.description is not None:
            reasons.append("description differs")
        if work.deletion_protection is not None:
            reasons.append(f"deletion protection turns {'on' if work.deletion_protection else 'off'}")
        return reasons

    @staticmethod
    def reimport_reason(d: DesiredKey, key: ActualKey) -> str:
        if key.status is KeyStatus.PENDING_IMPORT:
            return "key has no material"
        if key.status is KeyStatus.MATERIAL_EXPIRED:
            return "material expired"
        if d.lease is not None:
            return (
                f"lease renewal ({d.lease}): material expires at "
                f"{format_time(key.material_expires_at) or 'never'}, new expiry {format_time(d.expiry)}"
            )
        return (
            f"material expiry changes from {format_time(key.material_expires_at) or 'never'} "
            f"to {format_time(d.expiry) or 'never'}"
        )

    def check_immutable(self, d: DesiredKey, key: ActualKey, diff: KeyDiff) -> None:
        if diff.immutable:
            what = ", ".join(f"{a} is {live} (manifest says {want})" for a, live, want in diff.immutable)
            self.violate(
                d.name,
                ViolationCode.IMMUTABLE_ATTRIBUTE,
                f"key {key.key_id}: {what}; these cannot change on an existing key: restore the manifest "
                f"values, or retire this key (state: absent) and declare a new one under another name",
            )

    def check_material(self, d: DesiredKey, key: ActualKey, diff: KeyDiff, adopting: bool = False) -> None:
        m = diff.material_mismatch
        verifiable = facts(key.spec).verification is Verification.PUBLIC_KEY_FINGERPRINT
        if adopting and key.status is KeyStatus.ENABLED and verifiable and key.public_key_fingerprint is None:
            self.violate(
                d.name,
                ViolationCode.MATERIAL_IMMUTABLE,
                f"key {key.key_id} to adopt is enabled but its public key could not be read (GetPublicKey), "
                f"so the material it holds cannot be checked against the manifest's: plan again",
            )
        elif adopting and m is not None:
            self.violate(
                d.name,
                ViolationCode.MATERIAL_IMMUTABLE,
                f"key {key.key_id} to adopt holds material {m.live} ({m.live_label}) but the manifest's "
                f"{m.wanted_label} is {m.wanted}: material never changes on a key; point `material` at the "
                f"key's own material, or remove adopt: to create a new key",
            )
        elif m is not None:
            self.violate(
                d.name,
                ViolationCode.MATERIAL_IMMUTABLE,
                f"key {key.key_id} is bound to material {m.live} ({m.live_label}) but the manifest's "
                f"{m.wanted_label} is {m.wanted}: material never changes on a key; point `material` back at "
                f"the original, or retire this key (state: absent) and declare a new one under another name",
            )


def make_plan(
    desired: ManifestSet,
    live: LiveState,
    *,
    now: datetime,
    fingerprints: Mapping[str, str],
    backend: Mapping[str, str],
    created_at: datetime | None = None,
    offline_material: bool = False,
    targets: Iterable[str] | None = None,
    lease_now: datetime | None = None,
) -> Plan:
    """Compare the manifests with the live state. Pure: `now` and the material fingerprints are inputs.

    `offline_material`: no material was read (`plan --offline-material`); a key's fingerprint is its pin,
    or UNKNOWN_FINGERPRINT with a `fingerprint-unknown` note; apply resolves it (resolve_fingerprints).
    `targets` (--target): only keys of those names are planned; no other name gets a change or a note.
    `lease_now`: the time leases are renewed from (default `now`); `apply --plan` passes the saved plan's
    `created_at`, so a lease it renews is the lease the plan showed.
    """
    missing = missing_adoptions(desired, live, targets)
    if missing.has_errors:
        raise ManifestError(missing)
    chosen = None if targets is None else frozenset(targets)
    planner = _Planner(desired, live, now, fingerprints, offline_material, chosen, lease_now)
    planner.run()
    return Plan(
        stack=desired.stack,
        created_at=(created_at or now).replace(microsecond=0),  # plan files keep whole seconds
        backend=BackendInfo.of(backend),
        changes=tuple(sorted(planner.changes, key=lambda c: (c.key, c.key_id or ""))),
        violations=tuple(sorted(set(planner.violations), key=lambda v: (v.key, v.code.value, v.message))),
        notes=tuple(sorted(planner.notes, key=lambda n: (n.key, n.message))),
        manifest_digest=desired.manifest_digest,
        targets=() if chosen is None else tuple(sorted(chosen)),
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
    if Action.CANCEL_DELETION in change.actions:
        others = sorted(
            i for i, k in by_id.items() if i != change.key_id and k.status is not KeyStatus.PENDING_DELETION
        )
        if others:
            return (
                f"key {change.key!r}: the plan cancels the deletion of {change.key_id}, but "
                f"{', '.join(others)} now carries that identity and is not pending deletion; a deletion is "
                f"never cancelled while another live key holds the identity: make a new plan"
            )
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
        if change.material is None:
            raise ValueError("a create without material")
        imported = replace(change.material, fingerprint=after.fingerprint)
        return creation(change, stack, after, imported, _alias_split(change, sorted(after.aliases)))
    if len(change.duplicates) != len(change.duplicate_digests):
        raise ValueError("duplicates and duplicate_digests differ in length")
    status = before.status
    if change.of_previous_generation:
        return _derive_previous(change, before)
    if change.previous_state is not None:
        return _derive_rotate(change, before, after, stack)
    if after is None:
        deleting = status is not KeyStatus.PENDING_DELETION
        return _state_only(change, before, (Action.SCHEDULE_DELETION,) if deleting else ())
    if after.state is DesiredState.ABSENT:
        raise ValueError("an `after` of state absent")
    have_tags, want_tags = before.tags, after.tags
    create, move = _alias_split(change, sorted(set(after.aliases) - set(before.aliases)))
    removed = set(before.aliases) - set(after.aliases)
    delete = change.aliases_to_delete
    if not set(delete) <= removed or list(delete) != sorted(set(delete)):
        delete = tuple(sorted(removed))
    work = Convergence(
        before=before,
        after=after,
        adopting=have_tags.get(TAG_STACK) != stack,
        expiry_changes=expire_unix(before.material_expires_at) != expire_unix(after.expiry),
        identity_tags=identity_tags(stack, change.key, before, after.fingerprint),
        tags_to_set={k: v for k, v in want_tags.items() if k not in MANAGED_TAGS and have_tags.get(k) != v},
        tags_to_remove=tuple(sorted(k for k in have_tags if k not in MANAGED_TAGS and k not in want_tags)),
        aliases_to_create=create,
        aliases_to_move=move,
        aliases_to_delete=delete,
        description=after.description if after.description != before.description else None,
        deletion_protection=(
            after.deletion_protection if after.deletion_protection != before.deletion_protection else None
        ),
    )
    material: MaterialReference | None = None
    if Action.REIMPORT in work.state_actions[1]:
        if change.material is None:
            raise ValueError("a reimport without material")
        material = replace(change.material, fingerprint=after.fingerprint)
    return work.change(change, material)


def _derive_previous(change: Change, before: KeySnapshot) -> Change:
    """derive_change for a change of a previous generation: its state actions and nothing else."""
    if change.after is not None or change.previous_state is None:
        raise ValueError("a previous generation's change has no `after`")
    actions = previous_actions(before.status, change.previous_state)
    return _state_only(change, before, actions, keep_duplicates=False)


def _state_only(
    change: Change, before: KeySnapshot, actions: tuple[Action, ...], keep_duplicates: bool = True
) -> Change:
    """`change` re-derived as state actions on `before` and nothing else: no tag, alias, description,
    protection or material work (a key the manifests drop, or a previous generation)."""
    deleting = Action.SCHEDULE_DELETION in actions
    return replace(
        change,
        key_id=before.key_id,
        actions=actions,
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
        duplicates=change.duplicates if keep_duplicates else (),
        duplicate_digests=change.duplicate_digests if keep_duplicates else (),
    )


def _derive_rotate(
    change: Change, before: KeySnapshot, after: DesiredAttributes | None, stack: str
) -> Change:
    """derive_change for a rotate: the new generation's CreateKey and import from `after`, the old
    key's state kept (the manifests' `previous:`, which a plan made afresh confirms)."""
    if after is None or change.material is None or after.state not in KEEPS_MATERIAL:
        raise ValueError("a rotate without a desired key and its material")
    fp = str(after.fingerprint)
    generation = generation_of(before.tags) + 1
    create, move = _alias_split(change, sorted(after.aliases))
    then = (Action.DISABLE,) if after.state is DesiredState.DISABLED else ()
    return replace(
        change,
        key_id=before.key_id,
        actions=(Action.ROTATE, *then),
        tags_to_set=creation_tags(stack, change.key, fp, after.tags, generation),
        tags_to_remove=(),
        aliases_to_create=create,
        aliases_to_move=move,
        aliases_to_delete=(),
        description=after.description,
        deletion_protection=True if after.deletion_protection else None,
        expire_unix=expire_unix(after.expiry),
        pending_window_days=(
            change.pending_window_days if change.previous_state is DesiredState.ABSENT else None
        ),
        material=replace(change.material, fingerprint=fp),
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
        if doomed and change.before is not None and change.before.deletion_protection:
            raise StalePlan(
                f"{where}: schedules key {change.key_id} for deletion while its deletion protection is on "
                f"(deletion-protected; was the file edited by hand?): make a new plan"
            )
        try:
            if i in plan.unrecorded:
                raise ValueError("before/after or material not decoded")
            expected = derive_change(change, plan.stack)
        except ValueError:
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
            if after is not None and after.fingerprint == UNKNOWN_FINGERPRINT:
                after = replace(after, fingerprint=fp)
            if material is not None and material.fingerprint == UNKNOWN_FINGERPRINT:
                material = replace(material, fingerprint=fp)
            if tags.get(TAG_FINGERPRINT) == UNKNOWN_FINGERPRINT:
                tags = {**tags, TAG_FINGERPRINT: fp}
        if (after, material, tags) != (c.after, c.material, c.tags_to_set):
            c = replace(c, after=after, material=material, tags_to_set=tags)
        changes.append(c)
    notes = tuple(
        n for n in plan.notes if not (n.code is NoteCode.FINGERPRINT_UNKNOWN and n.key in fingerprints)
    )
    return replace(plan, changes=tuple(changes), notes=notes)
