"""The provisioner's vocabulary: wire strings as enums, desired and actual keys as frozen values.

Nothing here does I/O or reads a clock. Every other module speaks in these types; the
enum values are the exact strings the KMS API uses, so they go on the wire unchanged.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar, overload

# Located problems live in diagnostics.py; these names stay importable from here.
from provisioner.diagnostics import Diagnostic as Diagnostic
from provisioner.diagnostics import Diagnostics as Diagnostics
from provisioner.diagnostics import Location as Location
from provisioner.diagnostics import Severity as Severity

#: How KMS writes times on the wire (`2021-05-20T06:34:21Z`); plan and drift documents use it too.
WIRE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@overload
def format_time(value: datetime) -> str: ...
@overload
def format_time(value: None) -> None: ...
def format_time(value: datetime | None) -> str | None:
    """UTC, whole seconds, `Z` suffix."""
    return None if value is None else value.astimezone(UTC).strftime(WIRE_TIME_FORMAT)


def parse_time(value: str | None) -> datetime | None:
    """The inverse of format_time. None or "" (KMS's "never") is None; anything else malformed: ValueError."""
    if not value:
        return None
    return datetime.strptime(value, WIRE_TIME_FORMAT).replace(tzinfo=UTC)


_Enum = TypeVar("_Enum", bound=StrEnum)


def member_or_none(enum: type[_Enum], value: Any) -> _Enum | None:
    """The member of `enum` that `value` names, or None (where the schema has reported it already)."""
    try:
        return enum(value)
    except ValueError:
        return None


class KeySpec(StrEnum):
    RSA_2048 = "RSA_2048"
    RSA_3072 = "RSA_3072"
    RSA_4096 = "RSA_4096"
    EC_P256 = "EC_P256"
    EC_P256K = "EC_P256K"
    EC_SM2 = "EC_SM2"
    AES_256 = "Aliyun_AES_256"
    SM4 = "Aliyun_SM4"


class KeyUsage(StrEnum):
    SIGN_VERIFY = "SIGN/VERIFY"
    ENCRYPT_DECRYPT = "ENCRYPT/DECRYPT"


class ProtectionLevel(StrEnum):
    SOFTWARE = "SOFTWARE"
    HSM = "HSM"


class KeyState(StrEnum):
    """`KeyState` as DescribeKey reports it."""

    ENABLED = "Enabled"
    DISABLED = "Disabled"
    PENDING_IMPORT = "PendingImport"
    PENDING_DELETION = "PendingDeletion"


class Origin(StrEnum):
    ALIYUN_KMS = "Aliyun_KMS"
    EXTERNAL = "EXTERNAL"


class WrappingAlgorithm(StrEnum):
    # Asymmetric material: an ephemeral key wraps the private key (guide step 3).
    RSA_OAEP_AES_ECB = "RSAES_OAEP_SHA_256_AES_256_ECB_PKCS7_PAD"
    SM2PKE_SM4_ECB = "SM2PKE_SM4_ECB"
    # Symmetric material: wrapped directly under the wrapping key (DESIGN section 13).
    RSAES_OAEP_SHA_256 = "RSAES_OAEP_SHA_256"
    RSAES_PKCS1_V1_5 = "RSAES_PKCS1_V1_5"
    RSAES_OAEP_SHA_1 = "RSAES_OAEP_SHA_1"
    SM2PKE = "SM2PKE"

    @property
    def wrapping_key_spec(self) -> KeySpec:
        """The spec of the wrapping key this algorithm encrypts under (a column of specs.WRAPPING)."""
        from provisioner.specs import WRAPPING  # here: specs.py imports this module

        return WRAPPING[self].wrapping_key_spec


class MaterialFormat(StrEnum):
    """How a symmetric key's bytes are written in their source (`material.format`)."""

    RAW = "raw"
    HEX = "hex"
    BASE64 = "base64"


class DesiredState(StrEnum):
    PRESENT = "present"
    DISABLED = "disabled"  # holds its material, switched off (DisableKey)
    MATERIAL_DELETED = "material-deleted"
    ABSENT = "absent"


class KeyStatus(StrEnum):
    """The one status of a live key (STYLE habit 2). A key that does not exist has no ActualKey.

    KMS cannot tell "never imported" from "material deleted": both are PENDING_IMPORT.
    Material whose expiry time has passed is MATERIAL_EXPIRED.
    """

    ENABLED = "enabled"
    DISABLED = "disabled"
    PENDING_IMPORT = "pending-import"
    MATERIAL_EXPIRED = "material-expired"
    PENDING_DELETION = "pending-deletion"


class SourceKind(StrEnum):
    FILE = "file"
    ENV = "env"
    COMMAND = "command"


# Reserved tags, set at CreateKey time; afterwards only adopt, rename and tag repair change them (DESIGN
# section 10). RESERVED_TAGS are those every key carries, counted in its tag budget.
TAG_STACK = "byok-provisioner:stack"
TAG_NAME = "byok-provisioner:name"
TAG_FINGERPRINT = "byok-provisioner:fingerprint"
RESERVED_TAGS = (TAG_STACK, TAG_NAME, TAG_FINGERPRINT)
#: The key's generation, written from generation 2 on only (rotation), so that the tag budget of a key
#: that never rotated is the first edition's. No tag means generation 1.
TAG_GENERATION = "byok-provisioner:generation"
#: Every tag the provisioner owns: never a user tag, never removed as one.
MANAGED_TAGS = (*RESERVED_TAGS, TAG_GENERATION)
MAX_TAGS_PER_KEY = 20
#: A symmetric key's fingerprint is its key check value, `kcv:<16 hex>` (DESIGN section 13).
KCV_PREFIX = "kcv:"

# Reserved aliases (DESIGN section 10, "No identity twice"): a claim on an identity,
# `alias/byok-provisioner/<stack>/<name>`, and a stack's apply lock, `alias/byok-provisioner-lock/<stack>`.
# They are the provisioner's bookkeeping, never a user's alias: show, discover and drift skip them, and
# a key holding one is not "unmanaged". The lock prefix does not start with the claim prefix (no `/`).
CLAIM_ALIAS_PREFIX = "alias/byok-provisioner/"
LOCK_ALIAS_PREFIX = "alias/byok-provisioner-lock/"
RESERVED_ALIAS_PREFIXES = (CLAIM_ALIAS_PREFIX, LOCK_ALIAS_PREFIX)


#: What KMS takes after `alias/`: 1 to 255 of letters, digits, `_ - /` (vendor reference).
_ALIAS_WORD = re.compile(r"[A-Za-z0-9_-]+")
_ALIAS_MAX = 255


def _alias_segment(word: str) -> str:
    """A stack or key name as an alias segment: itself when KMS takes it, else `_` and 32 hex of its
    SHA-256. Names start with a letter or digit, so a hashed segment never equals a verbatim one."""
    return word if _ALIAS_WORD.fullmatch(word) else _hashed(word)


def _hashed(word: str) -> str:
    return "_" + hashlib.sha256(word.encode("utf-8")).hexdigest()[:32]


def claim_alias(stack: str, name: str, generation: int = 1) -> str:
    """The reserved alias that claims the identity (stack, name, generation): DESIGN's
    `alias/byok-provisioner/<stack>/<name>` for generation 1, `.../<name>/g<N>` for a rotation's N.
    Names with a `.` (which no alias may hold) and pairs too long for one alias use hashed segments,
    so every identity has one alias."""
    s, n = _alias_segment(stack), _alias_segment(name)
    if generation > 1:
        n = f"{n}/g{generation}"
    if len(f"{CLAIM_ALIAS_PREFIX}{s}/{n}") - len("alias/") > _ALIAS_MAX:
        n = _hashed(name) + (f"/g{generation}" if generation > 1 else "")
    if len(f"{CLAIM_ALIAS_PREFIX}{s}/{n}") - len("alias/") > _ALIAS_MAX:
        s = _hashed(stack)
    return f"{CLAIM_ALIAS_PREFIX}{s}/{n}"


def lock_alias(stack: str) -> str:
    """The reserved alias of a stack's apply lock."""
    return f"{LOCK_ALIAS_PREFIX}{_alias_segment(stack)}"


def is_reserved_alias(alias: str) -> bool:
    """Whether `alias` is one of the provisioner's own (a claim or a lock), not a user's alias."""
    return alias.startswith(RESERVED_ALIAS_PREFIXES)


# Tags of a stack's lock key (alibaba backend): which stack it locks, and who holds the lock until when.
# The key carries no stack tag, so plan, drift and show never read it; discover skips it by TAG_LOCK.
TAG_LOCK = "byok-provisioner:lock"
TAG_LOCK_HOLDER = "byok-provisioner:lock-holder"  # a random token of the holding run
TAG_LOCK_HOST = "byok-provisioner:lock-host"
TAG_LOCK_PID = "byok-provisioner:lock-pid"
TAG_LOCK_TARGET = "byok-provisioner:lock-target"
TAG_LOCK_SINCE = "byok-provisioner:lock-since"
TAG_LOCK_LEASE = "byok-provisioner:lock-lease"  # the lease runs out at this time unless renewed
LOCK_HOLDER_TAGS = (
    TAG_LOCK_HOLDER, TAG_LOCK_HOST, TAG_LOCK_PID, TAG_LOCK_TARGET, TAG_LOCK_SINCE, TAG_LOCK_LEASE
)

DEFAULT_DELETION_WINDOW_DAYS = 30

#: The name of the one backend of a manifest set without `backends:` (DESIGN section 12).
DEFAULT_TARGET = "default"


@dataclass(frozen=True)
class MaterialSource:
    """Where a key's private material comes from. Holds no secret, only a reference."""

    kind: SourceKind
    file: Path | None = None  # absolute, resolved against the manifest's folder
    env: str | None = None
    command: tuple[str, ...] = ()
    passphrase_env: str | None = None
    fingerprint: str | None = None  # pinned "sha256:<64 hex>" (or "kcv:<16 hex>" for symmetric material)
    location: Location = field(default_factory=lambda: Location("<unknown>"))
    pass_env: tuple[str, ...] = ()  # command only: variables the command gets besides PATH, HOME, LANG
    format: MaterialFormat | None = None  # symmetric material only: raw, hex or base64
    wrapping: WrappingAlgorithm | None = None  # symmetric material only; None: the spec's default

    def describe(self) -> str:
        """The source in the user's words, for messages: never the material itself."""
        if self.kind is SourceKind.FILE:
            return f"file {self.file}"
        if self.kind is SourceKind.ENV:
            return f"environment variable {self.env}"
        return "command " + " ".join(self.command)


def generation_of(tags: Mapping[str, str]) -> int:
    """A key's generation from its tags: 1 without the tag (or with one that is no positive number)."""
    value = tags.get(TAG_GENERATION, "")
    return int(value) if value.isdigit() and value.isascii() and int(value) > 0 else 1


def parse_duration(text: str) -> timedelta:
    """`30d` or `12h` (DESIGN section 11, `^[1-9][0-9]{0,4}[hd]$`, checked by the schema) as a timedelta."""
    amount = int(text[:-1])
    return timedelta(days=amount) if text.endswith("d") else timedelta(hours=amount)


@dataclass(frozen=True)
class Lease:
    """`expiry: {lease: 30d, renew_before: 7d}`: material lives `lease` from its import, and a plan
    within `renew_before` of its expiry reimports the same material with a new lease (DESIGN section 11)."""

    lease: str  # as the manifest writes it, e.g. "30d"
    renew_before: str

    @property
    def length(self) -> timedelta:
        return parse_duration(self.lease)

    @property
    def window(self) -> timedelta:
        return parse_duration(self.renew_before)

    def __str__(self) -> str:
        return f"lease {self.lease}, renew_before {self.renew_before}"

    def due(self, expires: datetime | None, now: datetime) -> bool:
        """Whether material that expires at `expires` (None: never) needs a new lease at `now`."""
        return expires is None or expires - now <= self.window

    def expiry(self, expires: datetime | None, now: datetime) -> datetime:
        """The expiry a plan at `now` wants for material that expires at `expires`: the same while the
        lease runs, else a new lease from `now`."""
        if expires is None or self.due(expires, now):
            return now + self.length
        return expires


#: The states a `previous:` generation may declare.
PREVIOUS_STATES = (DesiredState.PRESENT, DesiredState.DISABLED, DesiredState.ABSENT)


@dataclass(frozen=True)
class PreviousGeneration:
    """One `previous:` entry (DESIGN section 11): a former generation's material, and the state its key
    keeps."""

    fingerprint: str
    state: DesiredState  # one of PREVIOUS_STATES
    location: Location = field(default_factory=lambda: Location("<unknown>"))


@dataclass(frozen=True)
class DesiredKey:
    """A key as the manifest says it should be, `defaults` already merged in."""

    stack: str
    name: str
    spec: KeySpec
    usage: KeyUsage
    protection: ProtectionLevel
    instance: str | None
    description: str
    tags: Mapping[str, str]  # user tags only; reserved tags are added by the planner
    aliases: tuple[str, ...]  # sorted
    expiry: datetime | None  # None: never expires; always timezone-aware
    deletion_protection: bool
    deletion_window_days: int
    material: MaterialSource | None
    state: DesiredState
    location: Location
    #: `adopt:`: the KeyId, ARN or alias of an existing key this one takes over (None: none).
    adopt: str | None = None
    #: `moved_from:`: earlier names of this key; the live key of one of them is this key.
    moved_from: tuple[str, ...] = ()
    #: Where `adopt:` was written, for located errors; not part of equality.
    adopt_at: Location | None = field(default=None, compare=False)
    #: `expiry: {lease, renew_before}`; `expiry` is then None here and the planner resolves it per plan.
    lease: Lease | None = None
    #: `previous:` generations, newest first.
    previous: tuple[PreviousGeneration, ...] = ()
    #: `targets:` (DESIGN section 12): the backends this key lives in, in `backends:` order.
    targets: tuple[str, ...] = (DEFAULT_TARGET,)
    #: `adopt: {TARGET: REF}`: the key each target adopts (empty for the string form or none);
    #: ManifestSet.for_target moves a target's entry into `adopt`.
    adopt_targets: Mapping[str, str] = field(default_factory=dict)
    #: Where each `adopt:` map entry was written; not part of equality.
    adopt_targets_at: Mapping[str, Location] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class BackendConfig:
    """`backend:` block of a manifest, or what the command line says."""

    type: str = "local"  # "local" | "alibaba"
    path: Path | None = None  # local: SQLite file
    region: str | None = None
    endpoint: str | None = None
    #: Where the manifest wrote `region` and `endpoint`, for located errors; not part of equality.
    region_at: Location | None = field(default=None, compare=False)
    endpoint_at: Location | None = field(default=None, compare=False)
    #: The target's name (`backends[].name`); `default` for `backend:` or none (DESIGN section 12).
    name: str = DEFAULT_TARGET
    #: Where the entry is declared, for located errors; not part of equality.
    at: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ManifestSet:
    """Everything a set of manifest files declares; one stack per set."""

    stack: str
    keys: tuple[DesiredKey, ...]  # sorted by name
    backend: BackendConfig | None
    files: tuple[str, ...]
    #: sha256 over each file in load order: its path relative to PATH, NUL, its rendered text, NUL.
    manifest_digest: str = ""
    #: Scans every rendered string for the material given (a leakscan.MaterialIndex): the located
    #: errors, which never show the string. Set by manifest.load_manifests; check_material calls it.
    material_scan: Callable[[Any], Diagnostics] | None = field(default=None, repr=False, compare=False)
    #: Every template variable some file reads (env excluded), to warn of a --var none uses.
    variables_read: frozenset[str] = frozenset()
    #: `backends:` (DESIGN section 12), in the order written; () for a set with `backend:` or none,
    #: whose one target is `default`.
    backends: tuple[BackendConfig, ...] = ()

    @property
    def target_names(self) -> tuple[str, ...]:
        """Every target of the set, in `backends:` order; (`default`,) for a single backend."""
        return tuple(b.name for b in self.backends) or (DEFAULT_TARGET,)

    @property
    def several_targets(self) -> bool:
        return bool(self.backends)

    def target_config(self, name: str) -> BackendConfig | None:
        """The `backends:` entry of that name; for `default` (one backend), `backend`."""
        if not self.backends:
            return self.backend if name == DEFAULT_TARGET else None
        return next((b for b in self.backends if b.name == name), None)

    def for_target(self, name: str) -> ManifestSet:
        """The set as one target sees it: the keys that live there, each adopting that target's key,
        and that target's backend. The planner, refresh, drift and show work on one target's set."""
        if not self.backends:
            return self
        config = self.target_config(name)
        if config is None:
            raise KeyError(name)
        keys = tuple(
            replace(
                k,
                targets=(name,),
                adopt=k.adopt_targets.get(name, k.adopt if not k.adopt_targets else None),
                adopt_at=k.adopt_targets_at.get(name, k.adopt_at),
                adopt_targets={},
                adopt_targets_at={},
            )
            for k in self.keys
            if name in k.targets
        )
        return replace(self, keys=keys, backend=config, backends=())


@dataclass(frozen=True)
class ActualKey:
    """A live key of this stack as refresh found it."""

    key_id: str
    arn: str
    status: KeyStatus
    spec: KeySpec
    usage: KeyUsage
    protection: ProtectionLevel
    instance: str | None
    description: str
    created_at: datetime
    material_expires_at: datetime | None
    deletion_date: datetime | None
    deletion_protection: bool
    primary_key_version: str
    tags: Mapping[str, str]  # every tag, reserved ones included
    aliases: tuple[str, ...]  # sorted
    public_key_fingerprint: str | None = None  # confirmed by GetPublicKey, when read
    #: KeyState as DescribeKey said it, for what `show` prints verbatim; decisions read `status`.
    key_state: KeyState | None = None
    origin: Origin = Origin.EXTERNAL
    #: How many key versions the key has (ListKeyVersions), where drift counted them; None: not read.
    key_versions: int | None = None

    @property
    def stack(self) -> str | None:
        return self.tags.get(TAG_STACK)

    @property
    def name(self) -> str | None:
        return self.tags.get(TAG_NAME)

    @property
    def recorded_fingerprint(self) -> str | None:
        return self.tags.get(TAG_FINGERPRINT)

    @property
    def generation(self) -> int:
        return generation_of(self.tags)

    @property
    def fingerprint(self) -> str | None:
        """The material it holds: GetPublicKey's, when read, else the recorded one."""
        return self.public_key_fingerprint or self.recorded_fingerprint

    @property
    def user_tags(self) -> dict[str, str]:
        return {k: v for k, v in self.tags.items() if k not in MANAGED_TAGS}


@dataclass(frozen=True)
class AdoptedKey:
    """What an `adopt:` reference names: the live key, or None and why there is none."""

    reference: str
    key: ActualKey | None
    problem: str | None = None


@dataclass(frozen=True)
class LiveState:
    """Everything refresh read: this stack's keys by name, and who holds each alias we care about."""

    stack: str
    keys: Mapping[str, tuple[ActualKey, ...]]  # name -> keys carrying that identity (duplicates possible)
    alias_owners: Mapping[str, str]  # alias name -> key id, for every alias in the region
    foreign_keys: frozenset[str] = frozenset()  # ids of alias-holding keys that are not this stack's
    #: ids of this stack's keys left out by --target: not read, not in `keys`, but not foreign either.
    outside_target: frozenset[str] = frozenset()
    #: desired key name -> the key its `adopt:` names (read whatever its tags say)
    adopted: Mapping[str, AdoptedKey] = field(default_factory=dict)

    @property
    def stack_key_ids(self) -> frozenset[str]:
        """Every key id of this stack, read or left out by --target."""
        return frozenset(k.key_id for keys in self.keys.values() for k in keys) | self.outside_target
