"""The KMS emulator's state engine: keys, key versions, aliases, tags, import tokens and instances,
with every rule and every error code of the vendor's API (kms-api-notes.md) but those of the actions
only one family's keys answer, which are that family's module's (emulator/families.py); the engine
gives such an operation its key (`key_in_use`).

It knows nothing of HTTP or of how wire parameters are flattened (responses.py does that). With
`persist_private_keys=False` it never writes private key material to disk; import tokens are
stored only as SHA-256 hashes in every mode.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import sqlite3
import string
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from provisioner.emulator import families, keyops
from provisioner.emulator.keyops import CryptoFailure, ImportedKey
from provisioner.emulator.store import Store, Transaction
from provisioner.model import KeySpec, KeyState, KeyUsage, Origin, ProtectionLevel, WrappingAlgorithm
from provisioner.specs import SPECS, facts, wrapping_key_specs, wrapping_refusal
from provisioner.wire import ErrorCode

DEFAULT_INSTANCES: Mapping[str, str] = {
    "kst-local-software": "software",
    "kst-local-hardware": "hardware",
}
INSTANCE_KINDS = ("software", "hardware")


@dataclass(frozen=True)
class InstanceSetup:
    """How one emulated KMS instance is set up: its kind, and whether it takes asymmetric keys
    with imported material (the vendor's pages disagree on hardware instances: DESIGN section 3)."""

    kind: str
    asymmetric_import: bool = True

    def __post_init__(self) -> None:
        if self.kind not in INSTANCE_KINDS:
            raise ValueError(f"kind must be software or hardware, not {self.kind!r}")

#: Every error code the engine answers, with its HTTP status (kms-api-notes.md, "Error codes").
STATUS: Mapping[ErrorCode, int] = {
    code: code.status
    for code in (
        ErrorCode.MISSING_PARAMETER,
        ErrorCode.INVALID_PARAMETER,
        ErrorCode.INVALID_ACTION_NOT_FOUND,
        ErrorCode.REJECTED_LIMIT_EXCEEDED,
        ErrorCode.ALIAS_ALREADY_EXISTS,
        ErrorCode.INVALID_KEY_MATERIAL,
        ErrorCode.INVALID_IMPORT_TOKEN,
        ErrorCode.EXPIRED_IMPORT_TOKEN,
        ErrorCode.UNSUPPORTED_ORIGIN,
        ErrorCode.UNSUPPORTED_PROTECTION_LEVEL,
        ErrorCode.REJECTED_UNSUPPORTED_OPERATION,
        ErrorCode.FORBIDDEN_NO_PERMISSION,
        ErrorCode.FORBIDDEN_KEY_NOT_FOUND,
        ErrorCode.FORBIDDEN_ALIAS_NOT_FOUND,
        ErrorCode.REJECTED_STATE_MODIFIED_FAILED,
        ErrorCode.REJECTED_DISABLED,
        ErrorCode.REJECTED_PENDING_DELETION,
        ErrorCode.REJECTED_PENDING_IMPORT,
        ErrorCode.INTERNAL_FAILURE,
    )
}

TOKEN_LIFETIME = timedelta(hours=24)
TOKEN_GRACE = timedelta(days=30)
MAX_TAGS_PER_KEY = 20
MAX_TAG_FILTERS = 20
MAX_RESOURCE_IDS = 50
TAG_ROWS_PER_PAGE = 200
MAX_PAGE_SIZE = 100
#: Bounds that keep SQLite's 64-bit integers from overflowing on absurd input.
MAX_PAGE_NUMBER = 1_000_000_000
MAX_EXPIRE_UNIX = 253402300799  # 9999-12-31T23:59:59Z
DEFAULT_PAGE_SIZE = 10
MIN_PENDING_WINDOW_DAYS = 7
MAX_PENDING_WINDOW_DAYS = 366
MAX_DESCRIPTION_CHARS = 8192
#: Bounds of a JSON-valued parameter (see parse_json) and of an integer one.
MAX_JSON_CHARS = 64 * 1024
MAX_JSON_DEPTH = 8
MAX_INT_CHARS = 20
MAX_SHOWN_CHARS = 64
KEY_ID_CHARS = string.ascii_lowercase + string.digits
KEY_ID_LENGTH = 24

_ALIAS_RE = re.compile(r"alias/[A-Za-z0-9_/\-]{1,255}")
_TAG_RE = re.compile(r"[A-Za-z0-9 /\\_\-.+=:@]{1,128}")
_KEY_ARN_RE = re.compile(r"acs:kms:([^:]+):([^:]+):key/(.+)")
_ALIAS_ARN_RE = re.compile(r"acs:kms:([^:]+):([^:]+):(alias/.+)")

SIGN_ALGORITHMS: Mapping[KeySpec, tuple[str, ...]] = {s: row.sign_algorithms for s, row in SPECS.items()}
#: EC_P256/EC_P256K have no encryption algorithm: an ENCRYPT/DECRYPT key of those specs can be
#: created (the vendor allows it) but encryption answers Rejected.UnsupportedOperation.
ENCRYPT_ALGORITHMS: Mapping[KeySpec, tuple[str, ...]] = {
    s: row.encrypt_algorithms for s, row in SPECS.items()
}

#: The filters ListKeys understands and the column each one reads.
_KEY_FILTERS: Mapping[str, str] = {
    "KeyState": "state",
    "KeySpec": "spec",
    "KeyUsage": "usage",
    "ProtectionLevel": "protection",
    "Origin": "origin",
    "DKMSInstanceId": "instance_id",
    "CreatorType": "",  # every key here is created by a user; only "User" matches
}


class KmsError(Exception):
    """A KMS error answer: vendor code, message and HTTP status. The message names no secret."""

    def __init__(self, code: ErrorCode, message: str, status: int | None = None) -> None:
        self.code = code
        self.message = message
        self.status = status if status is not None else code.status
        super().__init__(f"{code}: {message}")


# --- views the engine returns ---------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    key_id: str
    arn: str
    state: KeyState
    spec: KeySpec
    usage: KeyUsage
    origin: Origin
    protection: ProtectionLevel
    instance_id: str
    description: str
    creation_date: datetime
    material_expire_time: datetime | None
    delete_date: datetime | None
    deletion_protection: bool
    deletion_protection_description: str
    primary_key_version: str
    creator: str


@dataclass(frozen=True)
class KeyInUse:
    """A key as a family's own operation uses it: its view, the version used, and its material.
    `repr` shows no material (ImportedKey's repr is its fingerprint)."""

    key: Key
    version_id: str
    material: ImportedKey = field(repr=False)


@dataclass(frozen=True)
class KeyVersion:
    key_id: str
    key_version_id: str
    creation_date: datetime


@dataclass(frozen=True)
class ImportParameters:
    """A wrapping public key and its token. The token is a secret: it is never stored in clear."""

    key_id: str
    public_key_der: bytes
    import_token: str
    token_expire_time: datetime

    def __repr__(self) -> str:
        return f"ImportParameters(key_id={self.key_id!r}, import_token=<redacted>)"


@dataclass(frozen=True)
class Alias:
    alias_name: str
    alias_arn: str
    key_id: str


@dataclass(frozen=True)
class TagRow:
    resource_id: str
    tag_key: str
    tag_value: str


@dataclass(frozen=True)
class Instance:
    instance_id: str
    arn: str
    kind: str  # "software" | "hardware"
    region: str


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    total_count: int
    page_number: int
    page_size: int


# --- parameter parsing helpers (the wire's strings -> Python values; errors are KMS errors) --------


def unknown_action() -> KmsError:
    """An action the service does not know: 404 and the words of the vendor's gateway, which name
    no action (inferred for KMS from public reports of other Alibaba Cloud RPC services)."""
    return KmsError(
        ErrorCode.INVALID_ACTION_NOT_FOUND, "Specified api is not found, please check your url and method."
    )


def _missing(name: str) -> KmsError:
    return KmsError(
        ErrorCode.MISSING_PARAMETER,
        f"The input parameter {name} that is mandatory for processing this request is not supplied.",
    )


def require(name: str, value: T | None) -> T:
    """The value of a required parameter; MissingParameter naming it when absent."""
    if value is None or value == "":
        raise _missing(name)
    return value


def shown(value: str) -> str:
    """A parameter value quoted in a message, cut short: a message must not echo megabytes."""
    return repr(value) if len(value) <= MAX_SHOWN_CHARS else repr(value[:MAX_SHOWN_CHARS]) + "..."


def parse_int(name: str, value: str | int | None) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return value
    text = value.strip()
    # Past 20 digits no parameter means anything; int() of thousands of digits is slow or refused.
    if len(text) > MAX_INT_CHARS:
        raise KmsError(ErrorCode.INVALID_PARAMETER, f"{name} must be an integer, got {shown(value)}")
    try:
        return int(text)
    except ValueError:
        message = f"{name} must be an integer, got {shown(value)}"
        raise KmsError(ErrorCode.INVALID_PARAMETER, message) from None


def parse_bool(name: str, value: str | bool | None) -> bool | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if value in ("True", "true"):
        return True
    if value in ("False", "false"):
        return False
    raise KmsError(ErrorCode.INVALID_PARAMETER, f"{name} must be true or false, got {shown(value)}")


def json_depth_exceeds(text: str, limit: int) -> bool:
    """True when arrays and objects in `text` nest deeper than `limit` (brackets inside strings
    do not count). A flat scan, so that json.loads never recurses into a hostile nesting."""
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def parse_json(name: str, value: str | None) -> Any:
    """A JSON-valued parameter (Tags, TagKeys, Filters), bounded before it is parsed: by size, by
    nesting depth, and by the digits of a number (Python refuses ints of over 4,300 digits with a
    ValueError that is not a JSONDecodeError). The bounds are the emulator's (inferred): the
    largest valid value, 20 tags of 128-character keys and values, is under 8 KiB and 2 deep."""
    if value is None or value == "":
        return None
    if len(value) > MAX_JSON_CHARS:
        raise KmsError(
            ErrorCode.INVALID_PARAMETER, f"{name} is longer than {MAX_JSON_CHARS} characters of JSON"
        )
    if json_depth_exceeds(value, MAX_JSON_DEPTH):
        raise KmsError(
            ErrorCode.INVALID_PARAMETER, f"{name} is JSON nested deeper than {MAX_JSON_DEPTH} levels"
        )
    try:
        return json.loads(value)
    except RecursionError:  # unreachable after the depth scan; kept so no input can crash a call
        raise KmsError(ErrorCode.INVALID_PARAMETER, f"{name} is JSON nested too deep") from None
    except json.JSONDecodeError:
        raise KmsError(ErrorCode.INVALID_PARAMETER, f"{name} is not valid JSON") from None
    except ValueError:  # an integer of more digits than int() takes (sys.get_int_max_str_digits)
        raise KmsError(
            ErrorCode.INVALID_PARAMETER,
            f"{name} is JSON with a number of more than {sys.get_int_max_str_digits()} digits",
        ) from None


def parse_tags_json(name: str, value: str | None) -> list[tuple[str, str]] | None:
    """`Tags` of CreateKey/TagResource: a JSON list of {"TagKey", "TagValue"} objects."""
    data = parse_json(name, value)
    if data is None:
        return None
    if not isinstance(data, list) or not all(
        isinstance(t, dict) and isinstance(t.get("TagKey"), str) and isinstance(t.get("TagValue"), str)
        for t in data
    ):
        raise KmsError(
            ErrorCode.INVALID_PARAMETER, f'{name} must be a JSON list of {{"TagKey": ..., "TagValue": ...}}'
        )
    return [(t["TagKey"], t["TagValue"]) for t in data]


def parse_string_list_json(name: str, value: str | None) -> list[str] | None:
    data = parse_json(name, value)
    if data is None:
        return None
    if not isinstance(data, list) or not all(isinstance(v, str) for v in data):
        raise KmsError(ErrorCode.INVALID_PARAMETER, f"{name} must be a JSON list of strings")
    return list(data)


def parse_filters_json(name: str, value: str | None) -> list[tuple[str, list[str]]] | None:
    """`Filters` of ListKeys: a JSON list of {"Key": ..., "Values": [...]}."""
    data = parse_json(name, value)
    if data is None:
        return None
    if not isinstance(data, list) or not all(
        isinstance(f, dict)
        and isinstance(f.get("Key"), str)
        and isinstance(f.get("Values"), list)
        and all(isinstance(v, str) for v in f["Values"])
        for f in data
    ):
        raise KmsError(
            ErrorCode.INVALID_PARAMETER, f'{name} must be a JSON list of {{"Key": ..., "Values": [...]}}'
        )
    return [(f["Key"], list(f["Values"])) for f in data]


def b64_text(data: bytes) -> str:
    """Bytes as the base64 text a response carries."""
    return base64.b64encode(data).decode("ascii")


def b64decode_param(name: str, value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KmsError(ErrorCode.INVALID_PARAMETER, f"{name} is not valid base64") from None


def _enum(name: str, enum: type[Any], value: str) -> Any:
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise KmsError(ErrorCode.INVALID_PARAMETER, f"{name} {value!r} is not one of {allowed}") from None


def _unix(moment: datetime) -> int:
    return int(moment.timestamp())


def _time(unix: int | None) -> datetime | None:
    return None if unix is None else datetime.fromtimestamp(unix, UTC)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --- the engine ------------------------------------------------------------------------------------


class KmsEngine:
    """The state of one emulated KMS (one account, one region) and every operation on it.

    Thread-safe: each public method is one SQLite transaction under one lock."""

    def __init__(
        self,
        db_path: str | None = None,
        *,
        instances: Mapping[str, str | InstanceSetup] | None = None,
        clock: Callable[[], datetime] | None = None,
        region: str = "cn-hangzhou",
        account_id: str = "1234567890123456",
        persist_private_keys: bool = True,
        read_only: bool = False,
    ) -> None:
        """`instances`: id -> kind (`software`, `hardware`) or an InstanceSetup.
        `read_only`: work on an in-memory copy of `db_path` and never write the file."""
        chosen: dict[str, InstanceSetup] = {}
        for instance_id, setup in (DEFAULT_INSTANCES if instances is None else instances).items():
            try:
                chosen[instance_id] = setup if isinstance(setup, InstanceSetup) else InstanceSetup(setup)
            except ValueError as e:
                raise ValueError(f"instance {instance_id}: {e}") from None
        #: The kind of each instance, by id.
        self.instances: dict[str, str] = {i: s.kind for i, s in chosen.items()}
        self._no_asymmetric_import = frozenset(i for i, s in chosen.items() if not s.asymmetric_import)
        self.region = region
        self.account_id = account_id
        self.persist_private_keys = persist_private_keys
        self._clock = clock or _utcnow
        self._store = Store(db_path, read_only=read_only)
        # Private material held only in process memory (persist_private_keys=False), by key id.
        self._memory_material: dict[str, ImportedKey] = {}

    def close(self) -> None:
        self._store.close()

    @property
    def store(self) -> Store:
        """The state database, for what the server keeps beside the KMS state (request nonces)."""
        return self._store

    # -- plumbing --------------------------------------------------------------------------------

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the engine clock must return timezone-aware datetimes")
        return now

    def _begin(self, tx: Transaction) -> int:
        """Apply what time has done since the last call, then return now (unix seconds).

        Expiry and deletion are evaluated lazily on every operation: keys whose deletion date has
        passed disappear, material whose expiry time has passed is gone (the key returns to
        PendingImport unless it is PendingDeletion), and expired import tokens are dropped."""
        now = _unix(self._now())
        for row in tx.all(
            "SELECT key_id FROM keys WHERE delete_date IS NOT NULL AND delete_date <= ?", (now,)
        ):
            self._purge_key(tx, row["key_id"])
        expired = tx.all(
            "SELECT key_id FROM keys WHERE has_material = 1 AND material_expire IS NOT NULL "
            "AND material_expire <= ?",
            (now,),
        )
        for row in expired:
            # MaterialExpireTime stays reported so a reader can tell expired material from none.
            tx.execute(
                "UPDATE keys SET has_material = 0, state = CASE WHEN state = ? THEN state ELSE ? END "
                "WHERE key_id = ?",
                (KeyState.PENDING_DELETION.value, KeyState.PENDING_IMPORT.value, row["key_id"]),
            )
            self._forget_material(tx, row["key_id"])
        # Expired tokens are kept a while so that using one answers ExpiredImportToken, not
        # InvalidImportToken; their wrapping keys are KMS-side and worthless after expiry.
        tx.execute("DELETE FROM import_tokens WHERE expires <= ?", (now - int(TOKEN_GRACE.total_seconds()),))
        return now

    def _purge_key(self, tx: Transaction, key_id: str) -> None:
        for table in ("keys", "aliases", "tags", "import_tokens"):
            tx.execute(f"DELETE FROM {table} WHERE key_id = ?", (key_id,))
        self._forget_material(tx, key_id)

    def _forget_material(self, tx: Transaction, key_id: str) -> None:
        tx.execute("DELETE FROM private_material WHERE key_id = ?", (key_id,))

        def drop() -> None:
            self._memory_material.pop(key_id, None)

        tx.after_commit.append(drop)

    def _key_arn(self, key_id: str) -> str:
        return f"acs:kms:{self.region}:{self.account_id}:key/{key_id}"

    def _alias_arn(self, alias_name: str) -> str:
        return f"acs:kms:{self.region}:{self.account_id}:{alias_name}"

    def _row(self, tx: Transaction, key_id: str | None) -> sqlite3.Row:
        """The key a KeyId parameter names: a key id, an alias name, or the Arn of either."""
        ref = require("KeyId", key_id)
        arn = _KEY_ARN_RE.fullmatch(ref) or _ALIAS_ARN_RE.fullmatch(ref)
        if arn is not None:
            if (arn.group(1), arn.group(2)) != (self.region, self.account_id):
                raise KmsError(ErrorCode.FORBIDDEN_KEY_NOT_FOUND, f"The specified Key is not found: {ref}")
            ref = arn.group(3)
        if ref.startswith("alias/"):
            alias = tx.one("SELECT key_id FROM aliases WHERE alias_name = ?", (ref,))
            if alias is None:
                raise KmsError(
                    ErrorCode.FORBIDDEN_ALIAS_NOT_FOUND, f"The specified Alias is not found: {ref}"
                )
            ref = alias["key_id"]
        row = tx.one("SELECT * FROM keys WHERE key_id = ?", (ref,))
        if row is None:
            raise KmsError(ErrorCode.FORBIDDEN_KEY_NOT_FOUND, f"The specified Key is not found: {ref}")
        return row

    @staticmethod
    def _refuse_pending_deletion(row: sqlite3.Row, action: str, code: ErrorCode) -> None:
        """The vendor's key-state table refuses some management calls on a key pending deletion,
        each with its own code (Rejected.PendingDeletion or Rejected.StateModifiedFailed)."""
        if row["state"] == KeyState.PENDING_DELETION.value:
            raise KmsError(
                code, f"key {row['key_id']} is PendingDeletion; {action} is not allowed in that state"
            )

    def _view(self, row: sqlite3.Row) -> Key:
        created = _time(row["created"])
        assert created is not None
        return Key(
            key_id=row["key_id"],
            arn=self._key_arn(row["key_id"]),
            state=KeyState(row["state"]),
            spec=KeySpec(row["spec"]),
            usage=KeyUsage(row["usage"]),
            origin=Origin(row["origin"]),
            protection=ProtectionLevel(row["protection"]),
            instance_id=row["instance_id"],
            description=row["description"],
            creation_date=created,
            material_expire_time=_time(row["material_expire"]),
            delete_date=_time(row["delete_date"]),
            deletion_protection=bool(row["deletion_protection"]),
            deletion_protection_description=row["deletion_protection_description"],
            primary_key_version=row["version_id"],
            creator=self.account_id,
        )

    @staticmethod
    def _page(page_number: int | None, page_size: int | None) -> tuple[int, int]:
        number = 1 if page_number is None else page_number
        size = DEFAULT_PAGE_SIZE if page_size is None else page_size
        if not 1 <= number <= MAX_PAGE_NUMBER:
            raise KmsError(
                ErrorCode.INVALID_PARAMETER,
                f"PageNumber must be between 1 and {MAX_PAGE_NUMBER}, got {number}",
            )
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise KmsError(
                ErrorCode.INVALID_PARAMETER, f"PageSize must be between 1 and {MAX_PAGE_SIZE}, got {size}"
            )
        return number, size

    @staticmethod
    def _check_tags(tags: Sequence[tuple[str, str]]) -> None:
        for tag_key, tag_value in tags:
            if not _TAG_RE.fullmatch(tag_key):
                raise KmsError(
                    ErrorCode.INVALID_PARAMETER,
                    f"tag key {tag_key!r} must be 1 to 128 letters, digits, spaces or / \\ _ - . + = : @",
                )
            if tag_key.lower().startswith(("aliyun", "acs:")):
                raise KmsError(
                    ErrorCode.INVALID_PARAMETER, f"tag key {tag_key!r} must not start with aliyun or acs:"
                )
            if not _TAG_RE.fullmatch(tag_value):
                raise KmsError(
                    ErrorCode.INVALID_PARAMETER,
                    f"value of tag {tag_key!r} must be 1 to 128 letters, digits, spaces "
                    "or / \\ _ - . + = : @",
                )

    def _put_tags(self, tx: Transaction, key_id: str, tags: Sequence[tuple[str, str]]) -> None:
        """Add or overwrite tags; the per-key limit counts the key's tags after the change.

        Over the limit answers Rejected.LimitExceeded: the notes list it as the 400 code for limits,
        and it tells a caller "too many" rather than "malformed"."""
        self._check_tags(tags)
        existing = {r["tag_key"] for r in tx.all("SELECT tag_key FROM tags WHERE key_id = ?", (key_id,))}
        if len(existing | {k for k, _ in tags}) > MAX_TAGS_PER_KEY:
            raise KmsError(
                ErrorCode.REJECTED_LIMIT_EXCEEDED, f"a key carries at most {MAX_TAGS_PER_KEY} tags: {key_id}"
            )
        for tag_key, tag_value in tags:
            tx.execute(
                "INSERT INTO tags (key_id, tag_key, tag_value) VALUES (?, ?, ?) "
                "ON CONFLICT (key_id, tag_key) DO UPDATE SET tag_value = excluded.tag_value",
                (key_id, tag_key, tag_value),
            )

    def _material(self, tx: Transaction, row: sqlite3.Row) -> ImportedKey:
        """The private material of a key with live material, from the database or process memory."""
        key_id = row["key_id"]
        in_memory = self._memory_material.get(key_id)
        if in_memory is not None:
            return in_memory
        stored = tx.one("SELECT pkcs8 FROM private_material WHERE key_id = ?", (key_id,))
        if stored is None:
            # persist_private_keys=False and the process that imported it has ended.
            raise KmsError(
                ErrorCode.REJECTED_UNSUPPORTED_OPERATION,
                f"the private material of key {key_id} was kept only in the memory of the process that "
                "imported it; import the same material again to use the key",
            )
        imported = ImportedKey(
            KeySpec(row["spec"]), bytes(stored["pkcs8"]), bytes(row["public_key"]), row["fingerprint"]
        )
        self._memory_material[key_id] = imported
        return imported

    # -- keys --------------------------------------------------------------------------------------

    def create_key(
        self,
        *,
        key_spec: str | None,
        key_usage: str | None = None,
        origin: str | None = None,
        protection_level: str | None = None,
        instance_id: str | None = None,
        description: str | None = None,
        tags: Sequence[tuple[str, str]] | None = None,
    ) -> Key:
        spec: KeySpec = _enum("KeySpec", KeySpec, require("KeySpec", key_spec))
        # CreateKey's reference: SIGN/VERIFY by default for a spec that can sign, ENCRYPT/DECRYPT only
        # for one that cannot (specs.SpecFacts.default_usage).
        usage: KeyUsage = _enum("KeyUsage", KeyUsage, key_usage or facts(spec).default_usage.value)
        key_origin: Origin = _enum("Origin", Origin, origin or Origin.ALIYUN_KMS.value)
        if key_origin is not Origin.EXTERNAL:
            # A deliberate narrowing: this emulator models BYOK only, so it never generates keys.
            raise KmsError(
                ErrorCode.UNSUPPORTED_ORIGIN,
                f"Origin {key_origin.value} is not supported by this emulator; create EXTERNAL keys",
            )
        row_facts = facts(spec)
        if not instance_id and row_facts.default_key:
            # A default key, outside any instance (the guide's support table): either protection.
            default_level: ProtectionLevel = _enum(
                "ProtectionLevel", ProtectionLevel, protection_level or ProtectionLevel.SOFTWARE.value
            )
            return self._insert_key(spec, usage, key_origin, default_level, "", description, tags)
        # Asymmetric keys with imported material live only in a KMS instance.
        instance = require("DKMSInstanceId", instance_id)
        kind = self.instances.get(instance)
        if kind is None:
            raise KmsError(
                ErrorCode.INVALID_PARAMETER, f"DKMSInstanceId {instance} is not a KMS instance of this region"
            )
        if instance in self._no_asymmetric_import and not row_facts.symmetric:
            # Inferred code: where an instance takes no asymmetric import, the vendor's guide says
            # only "contact technical support"; refusing at CreateKey leaves no key behind that
            # could never be used, and Unsupported.Origin names what is refused (EXTERNAL here).
            raise KmsError(
                ErrorCode.UNSUPPORTED_ORIGIN,
                f"KMS instance {instance} does not take asymmetric keys with imported material "
                f"(Origin {key_origin.value})",
            )
        native = ProtectionLevel.HSM if kind == "hardware" else ProtectionLevel.SOFTWARE
        level: ProtectionLevel = _enum("ProtectionLevel", ProtectionLevel, protection_level or native.value)
        if level is not native:
            raise KmsError(
                ErrorCode.UNSUPPORTED_PROTECTION_LEVEL,
                f"ProtectionLevel {level.value} is not available in {kind} instance {instance}",
            )
        if native not in row_facts.protections:
            raise KmsError(
                ErrorCode.INVALID_PARAMETER, f"KeySpec {spec.value} is only available in a hardware instance"
            )
        return self._insert_key(spec, usage, key_origin, level, instance, description, tags)

    def _insert_key(
        self, spec: KeySpec, usage: KeyUsage, key_origin: Origin, level: ProtectionLevel, instance: str,
        description: str | None, tags: Sequence[tuple[str, str]] | None,
    ) -> Key:
        """Insert a new key in PendingImport; `instance` is "" for a default key."""
        if usage not in facts(spec).usages:
            raise KmsError(
                ErrorCode.INVALID_PARAMETER,
                f"KeyUsage {usage.value} is not available for KeySpec {spec.value}; use "
                f"{' or '.join(u.value for u in facts(spec).usages)}",
            )
        text = description or ""
        if len(text) > MAX_DESCRIPTION_CHARS:
            raise KmsError(
                ErrorCode.INVALID_PARAMETER, f"Description is longer than {MAX_DESCRIPTION_CHARS} characters"
            )
        with self._store.transaction() as tx:
            now = self._begin(tx)
            key_id = "key-" + "".join(secrets.choice(KEY_ID_CHARS) for _ in range(KEY_ID_LENGTH))
            tx.execute(
                "INSERT INTO keys (key_id, spec, usage, origin, protection, instance_id, description, "
                "created, state, version_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key_id,
                    spec.value,
                    usage.value,
                    key_origin.value,
                    level.value,
                    instance,
                    text,
                    now,
                    KeyState.PENDING_IMPORT.value,
                    str(uuid.uuid4()),
                ),
            )
            if tags:
                self._put_tags(tx, key_id, tags)
            return self._view(self._row(tx, key_id))

    def describe_key(self, key_id: str | None) -> Key:
        with self._store.transaction() as tx:
            self._begin(tx)
            return self._view(self._row(tx, key_id))

    def list_keys(
        self,
        page_number: int | None = None,
        page_size: int | None = None,
        filters: Sequence[tuple[str, Sequence[str]]] | None = None,
    ) -> Page[Key]:
        number, size = self._page(page_number, page_size)
        where: list[str] = []
        args: list[object] = []
        for name, values in filters or ():
            if name not in _KEY_FILTERS:
                raise KmsError(
                    ErrorCode.INVALID_PARAMETER,
                    f"Filters key {name!r} is not one of {', '.join(sorted(_KEY_FILTERS))}",
                )
            if not values:
                raise KmsError(ErrorCode.INVALID_PARAMETER, f"Filters key {name} needs at least one value")
            column = _KEY_FILTERS[name]
            if not column:  # CreatorType
                if "User" not in values:
                    where.append("0")
                continue
            # Values of one filter are alternatives; different filters must all match.
            where.append(f"{column} IN ({', '.join('?' for _ in values)})")
            args.extend(values)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        with self._store.transaction() as tx:
            self._begin(tx)
            total = tx.one(f"SELECT COUNT(*) AS n FROM keys{clause}", tuple(args))
            rows = tx.all(
                f"SELECT * FROM keys{clause} ORDER BY seq LIMIT ? OFFSET ?",
                (*args, size, (number - 1) * size),
            )
            return Page([self._view(r) for r in rows], int(total["n"]) if total else 0, number, size)

    def update_key_description(self, key_id: str | None, description: str | None) -> None:
        if description is None:  # "" is a valid description: it clears it
            raise _missing("Description")
        if len(description) > MAX_DESCRIPTION_CHARS:
            raise KmsError(
                ErrorCode.INVALID_PARAMETER, f"Description is longer than {MAX_DESCRIPTION_CHARS} characters"
            )
        with self._store.transaction() as tx:
            self._begin(tx)
            row = self._row(tx, key_id)
            self._refuse_pending_deletion(row, "UpdateKeyDescription", ErrorCode.REJECTED_PENDING_DELETION)
            tx.execute("UPDATE keys SET description = ? WHERE key_id = ?", (description, row["key_id"]))

    def enable_key(self, key_id: str | None) -> None:
        self._toggle(key_id, KeyState.ENABLED)

    def disable_key(self, key_id: str | None) -> None:
        self._toggle(key_id, KeyState.DISABLED)

    def _toggle(self, key_id: str | None, target: KeyState) -> None:
        with self._store.transaction() as tx:
            self._begin(tx)
            row = self._row(tx, key_id)
            state = KeyState(row["state"])
            if state not in (KeyState.ENABLED, KeyState.DISABLED):
                raise KmsError(
                    ErrorCode.REJECTED_STATE_MODIFIED_FAILED,
                    f"key {row['key_id']} is {state.value}; only an Enabled or Disabled key can become "
                    f"{target.value}",
                )
            tx.execute("UPDATE keys SET state = ? WHERE key_id = ?", (target.value, row["key_id"]))

    def schedule_key_deletion(self, key_id: str | None, pending_window_in_days: int | None) -> Key:
        days = require("PendingWindowInDays", pending_window_in_days)
        if not MIN_PENDING_WINDOW_DAYS <= days <= MAX_PENDING_WINDOW_DAYS:
            raise KmsError(
                ErrorCode.INVALID_PARAMETER,
                f"PendingWindowInDays must be between {MIN_PENDING_WINDOW_DAYS} and "
                f"{MAX_PENDING_WINDOW_DAYS}, got {days}",
            )
        with self._store.transaction() as tx:
            now = self._begin(tx)
            row = self._row(tx, key_id)
            if row["deletion_protection"]:
                # Inferred code: the notes name no exact one; the vendor's console says deletion
                # protection must be turned off first, which is a permission refusal.
                raise KmsError(
                    ErrorCode.FORBIDDEN_NO_PERMISSION,
                    f"key {row['key_id']} has deletion protection enabled; disable it before scheduling "
                    "deletion",
                )
            if row["state"] == KeyState.PENDING_DELETION.value:
                raise KmsError(
                    ErrorCode.REJECTED_STATE_MODIFIED_FAILED,
                    f"key {row['key_id']} is already PendingDeletion",
                )
            delete_at = now + days * 86400
            tx.execute(
                "UPDATE keys SET state = ?, delete_date = ? WHERE key_id = ?",
                (KeyState.PENDING_DELETION.value, delete_at, row["key_id"]),
            )
            return self._view(self._row(tx, row["key_id"]))

    def cancel_key_deletion(self, key_id: str | None) -> None:
        with self._store.transaction() as tx:
            self._begin(tx)
            row = self._row(tx, key_id)
            if row["state"] != KeyState.PENDING_DELETION.value:
                raise KmsError(
                    ErrorCode.REJECTED_STATE_MODIFIED_FAILED,
                    f"key {row['key_id']} is {row['state']}, not PendingDeletion",
                )
            # The vendor returns a cancelled key to Enabled; without live material it can only be
            # PendingImport.
            state = KeyState.ENABLED if row["has_material"] else KeyState.PENDING_IMPORT
            tx.execute(
                "UPDATE keys SET state = ?, delete_date = NULL WHERE key_id = ?", (state.value, row["key_id"])
            )

    def set_deletion_protection(
        self,
        protected_resource_arn: str | None,
        enable_deletion_protection: bool | None,
        description: str | None = None,
    ) -> None:
        arn = require("ProtectedResourceArn", protected_resource_arn)
        enabled = require("EnableDeletionProtection", enable_deletion_protection)
        match = _KEY_ARN_RE.fullmatch(arn)
        if match is None:
            raise KmsError(ErrorCode.INVALID_PARAMETER, f"ProtectedResourceArn {arn!r} is not a key Arn")
        if description is not None and len(description) > MAX_DESCRIPTION_CHARS:
            raise KmsError(
                ErrorCode.INVALID_PARAMETER,
                f"DeletionProtectionDescription is longer than {MAX_DESCRIPTION_CHARS} characters",
            )
        with self._store.transaction() as tx:
            self._begin(tx)
            row = self._row(tx, arn)
            tx.execute(
                "UPDATE keys SET deletion_protection = ?, deletion_protection_description = ? "
                "WHERE key_id = ?",
                (int(enabled), (description or "") if enabled else "", row["key_id"]),
            )

    # -- key versions --------------------------------------------------------------------------------

    def list_key_versions(
        self, key_id: str | None, page_number: int | None = None, page_size: int | None = None
    ) -> Page[KeyVersion]:
        number, size = self._page(page_number, page_size)
        with self._store.transaction() as tx:
            self._begin(tx)
            row = self._row(tx, key_id)
            versions = [self._version(row)]
            return Page(versions[(number - 1) * size : number * size], len(versions), number, size)

    def describe_key_version(self, key_id: str | None, key_version_id: str | None) -> KeyVersion:
        with self._store.transaction() as tx:
            self._begin(tx)
            row = self._row(tx, key_id)
            self._check_version(row, key_version_id)
            return self._version(row)

    @staticmethod
    def _version(row: sqlite3.Row) -> KeyVersion:
        created = _time(row["created"])
        assert created is not None
        return KeyVersion(row["key_id"], row["version_id"], created)

    @staticmethod
    def _check_version(row: sqlite3.Row, key_version_id: str | None) -> None:
        version = require("KeyVersionId", key_version_id)
        if version != row["version_id"]:
            raise KmsError(
                ErrorCode.FORBIDDEN_KEY_NOT_FOUND,
                f"The specified key version is not found: {row['key_id']}/{version}",
            )

    # -- import ------------------------------------------------------------------------------------

    def get_parameters_for_import(
        self, key_id: str | None, wrapping_key_spec: str | None, wrapping_algorithm: str | None
    ) -> ImportParameters:
        algorithm: WrappingAlgorithm = _enum(
            "WrappingAlgorithm", WrappingAlgorithm, require("WrappingAlgorithm", wrapping_algorithm)
        )
        spec_text = require("WrappingKeySpec", wrapping_key_spec)
        if spec_text not in wrapping_key_specs():
            raise KmsError(
                ErrorCode.INVALID_PARAMETER,
                f"WrappingKeySpec {spec_text!r} is not one of {', '.join(wrapping_key_specs())}",
            )
        if spec_text != algorithm.wrapping_key_spec.value:
            raise KmsError(
                ErrorCode.INVALID_PARAMETER,
                f"WrappingAlgorithm {algorithm.value} needs WrappingKeySpec "
                f"{algorithm.wrapping_key_spec.value}, not {spec_text}",
            )
        # Made before the transaction: generating an RSA key takes long enough to stall every other
        # caller if done under the engine's lock. Wasted when the call is then refused; that is rare.
        private_der, public_der = keyops.new_wrapping_key(algorithm)
        with self._store.transaction() as tx:
            now = self._begin(tx)
            row = self._row(tx, key_id)
            self._check_importable(row, "GetParametersForImport")
            row_facts = facts(KeySpec(row["spec"]))
            if algorithm not in row_facts.accepted_wrapping:
                # SM2PKE_SM4_ECB carries a bare 32-byte SM2 scalar: nothing else fits in it. The
                # other direction (an SM2 key's PKCS#8 under RSA-OAEP + AES) is accepted.
                takers = ", ".join(s for s, r in SPECS.items() if algorithm in r.accepted_wrapping)
                raise KmsError(
                    ErrorCode.INVALID_PARAMETER,
                    f"WrappingAlgorithm {algorithm.value} wraps {takers} material only; key {row['key_id']} "
                    f"is {row['spec']}: use {row_facts.wrapping_algorithm.value}",
                )
            refusal = wrapping_refusal(
                row_facts.spec, algorithm, ProtectionLevel(row["protection"]), bool(row["instance_id"])
            )
            if refusal is not None:
                raise KmsError(ErrorCode.INVALID_PARAMETER, f"WrappingAlgorithm {algorithm.value}: {refusal}")
            token = secrets.token_urlsafe(48)
            expires = now + int(TOKEN_LIFETIME.total_seconds())
            tx.execute(
                "INSERT INTO import_tokens (token_hash, key_id, wrapping_spec, wrapping_algorithm, "
                "wrapping_private, expires) VALUES (?, ?, ?, ?, ?, ?)",
                (_token_hash(token), row["key_id"], spec_text, algorithm.value, private_der, expires),
            )
            expire_time = _time(expires)
            assert expire_time is not None
            return ImportParameters(row["key_id"], public_der, token, expire_time)

    @staticmethod
    def _check_importable(row: sqlite3.Row, action: str) -> None:
        if row["origin"] != Origin.EXTERNAL.value:
            raise KmsError(
                ErrorCode.UNSUPPORTED_ORIGIN, f"{action} needs a key of Origin EXTERNAL: {row['key_id']}"
            )
        if row["state"] == KeyState.PENDING_DELETION.value:
            raise KmsError(
                ErrorCode.REJECTED_STATE_MODIFIED_FAILED,
                f"key {row['key_id']} is PendingDeletion; {action} is not allowed in that state",
            )

    def import_key_material(
        self,
        key_id: str | None,
        encrypted_key_material: str | None,
        import_token: str | None,
        key_material_expire_unix: int | None = None,
    ) -> None:
        wrapped = require("EncryptedKeyMaterial", encrypted_key_material)
        blob = b64decode_param("EncryptedKeyMaterial", wrapped)
        token = require("ImportToken", import_token)
        expire = key_material_expire_unix or 0
        if not 0 <= expire <= MAX_EXPIRE_UNIX:
            raise KmsError(
                ErrorCode.INVALID_PARAMETER,
                f"KeyMaterialExpireUnix must be between 0 and {MAX_EXPIRE_UNIX}, got {expire}",
            )
        with self._store.transaction() as tx:
            now = self._begin(tx)
            row = self._row(tx, key_id)
            self._check_importable(row, "ImportKeyMaterial")
            if expire and expire < now:
                raise KmsError(
                    ErrorCode.INVALID_PARAMETER,
                    f"KeyMaterialExpireUnix {expire} is earlier than the current time",
                )
            record = tx.one("SELECT * FROM import_tokens WHERE token_hash = ?", (_token_hash(token),))
            if record is None or record["key_id"] != row["key_id"]:
                raise KmsError(
                    ErrorCode.INVALID_IMPORT_TOKEN, f"the import token was not issued for key {row['key_id']}"
                )
            if record["expires"] <= now:
                raise KmsError(
                    ErrorCode.EXPIRED_IMPORT_TOKEN, "the import token has expired; get new import parameters"
                )
            try:
                material = families.unwrap(
                    KeySpec(row["spec"]), WrappingAlgorithm(record["wrapping_algorithm"]),
                    bytes(record["wrapping_private"]), blob,
                )  # fmt: skip
            except keyops.WrongWrappingKey as e:
                # The material does not open under the wrapping key this token was issued with:
                # it was wrapped for another download (or is damaged).
                raise KmsError(
                    ErrorCode.INVALID_IMPORT_TOKEN,
                    "EncryptedKeyMaterial was not wrapped with the public key issued with this import "
                    f"token ({e})",
                ) from None
            except keyops.NotAPrivateKey as e:
                raise KmsError(
                    ErrorCode.INVALID_KEY_MATERIAL, f"the unwrapped key material is not a private key: {e}"
                ) from None
            spec = KeySpec(row["spec"])
            if material.spec is not spec:
                raise KmsError(
                    ErrorCode.INVALID_KEY_MATERIAL,
                    f"key {row['key_id']} is {spec.value} but the material is {material.spec.value}",
                )
            if row["public_key"] is not None and bytes(row["public_key"]) != material.public_key_der:
                bound = (
                    "its first symmetric material"
                    if facts(spec).symmetric
                    else f"the material with public key {row['fingerprint']}"
                )
                raise KmsError(
                    ErrorCode.INVALID_KEY_MATERIAL,
                    f"key {row['key_id']} is bound to {bound}; only that material can be imported again",
                )
            state = (
                KeyState.ENABLED if row["state"] == KeyState.PENDING_IMPORT.value else KeyState(row["state"])
            )
            tx.execute(
                "UPDATE keys SET state = ?, has_material = 1, material_expire = ?, public_key = ?, "
                "fingerprint = ? WHERE key_id = ?",
                (state.value, expire or None, material.public_key_der, material.fingerprint, row["key_id"]),
            )
            key = row["key_id"]
            if self.persist_private_keys:
                tx.execute(
                    "INSERT OR REPLACE INTO private_material (key_id, pkcs8) VALUES (?, ?)",
                    (key, material.pkcs8_der),
                )
            tx.after_commit.append(lambda: self._memory_material.__setitem__(key, material))

    def delete_key_material(self, key_id: str | None) -> None:
        with self._store.transaction() as tx:
            self._begin(tx)
            row = self._row(tx, key_id)
            if row["origin"] != Origin.EXTERNAL.value:
                raise KmsError(
                    ErrorCode.UNSUPPORTED_ORIGIN,
                    f"DeleteKeyMaterial needs a key of Origin EXTERNAL: {row['key_id']}",
                )
            # The binding to the first material (public key) stays: only that material may return.
            tx.execute(
                "UPDATE keys SET has_material = 0, material_expire = NULL, "
                "state = CASE WHEN state = ? THEN state ELSE ? END WHERE key_id = ?",
                (KeyState.PENDING_DELETION.value, KeyState.PENDING_IMPORT.value, row["key_id"]),
            )
            self._forget_material(tx, row["key_id"])

    # -- using the key -----------------------------------------------------------------------------

    def _usable(self, tx: Transaction, key_id: str | None, key_version_id: str | None) -> sqlite3.Row:
        row = self._row(tx, key_id)
        self._check_version(row, key_version_id)
        state = KeyState(row["state"])
        if state is not KeyState.ENABLED:
            code = {
                KeyState.DISABLED: ErrorCode.REJECTED_DISABLED,
                KeyState.PENDING_DELETION: ErrorCode.REJECTED_PENDING_DELETION,
                KeyState.PENDING_IMPORT: ErrorCode.REJECTED_PENDING_IMPORT,
            }[state]
            raise KmsError(code, f"key {row['key_id']} is {state.value}")
        return row

    @staticmethod
    def _check_algorithm(
        row: sqlite3.Row,
        usage: KeyUsage,
        table: Mapping[KeySpec, tuple[str, ...]],
        algorithm: str | None,
        action: str,
    ) -> str:
        name = require("Algorithm", algorithm)
        spec = KeySpec(row["spec"])
        # An operation the key cannot do at all is Rejected.UnsupportedOperation (wrong usage, or EC
        # encryption); an algorithm that does not fit the key's spec is an InvalidParameter.
        if row["usage"] != usage.value:
            raise KmsError(
                ErrorCode.REJECTED_UNSUPPORTED_OPERATION,
                f"{action} needs a key of usage {usage.value}; key {row['key_id']} is {row['usage']}",
            )
        allowed = table.get(spec, ())
        if not allowed:
            raise KmsError(
                ErrorCode.REJECTED_UNSUPPORTED_OPERATION, f"{action} is not supported for {spec.value} keys"
            )
        if name not in allowed:
            raise KmsError(
                ErrorCode.INVALID_PARAMETER,
                f"Algorithm {name} does not fit a {spec.value} key; use {' or '.join(allowed)}",
            )
        return name

    @staticmethod
    def _digest(digest: str | None) -> bytes:
        value = b64decode_param("Digest", require("Digest", digest))
        if len(value) != keyops.DIGEST_BYTES:
            raise KmsError(
                ErrorCode.INVALID_PARAMETER,
                f"Digest must be the {keyops.DIGEST_BYTES}-byte digest, got {len(value)} bytes",
            )
        return value

    def get_public_key(self, key_id: str | None, key_version_id: str | None) -> tuple[Key, str]:
        """The key and its public key as PEM."""
        with self._store.transaction() as tx:
            self._begin(tx)
            row = self._usable(tx, key_id, key_version_id)
            if facts(KeySpec(row["spec"])).symmetric:
                raise KmsError(
                    ErrorCode.REJECTED_UNSUPPORTED_OPERATION,
                    f"GetPublicKey is not supported for {row['spec']} keys: a symmetric key has no public "
                    "key",
                )
            return self._view(row), keyops.public_key_pem(bytes(row["public_key"]))

    def asymmetric_sign(
        self, key_id: str | None, key_version_id: str | None, algorithm: str | None, digest: str | None
    ) -> tuple[Key, bytes]:
        value = self._digest(digest)
        with self._store.transaction() as tx:
            self._begin(tx)
            row = self._usable(tx, key_id, key_version_id)
            name = self._check_algorithm(
                row, KeyUsage.SIGN_VERIFY, SIGN_ALGORITHMS, algorithm, "AsymmetricSign"
            )
            return self._view(row), keyops.sign(self._material(tx, row), name, value)

    def asymmetric_verify(
        self,
        key_id: str | None,
        key_version_id: str | None,
        algorithm: str | None,
        digest: str | None,
        value: str | None,
    ) -> tuple[Key, bool]:
        digest_bytes = self._digest(digest)
        signature = b64decode_param("Value", require("Value", value))
        with self._store.transaction() as tx:
            self._begin(tx)
            row = self._usable(tx, key_id, key_version_id)
            name = self._check_algorithm(
                row, KeyUsage.SIGN_VERIFY, SIGN_ALGORITHMS, algorithm, "AsymmetricVerify"
            )
            ok = keyops.verify(KeySpec(row["spec"]), bytes(row["public_key"]), name, digest_bytes, signature)
            return self._view(row), ok

    def asymmetric_encrypt(
        self, key_id: str | None, key_version_id: str | None, algorithm: str | None, plaintext: str | None
    ) -> tuple[Key, bytes]:
        data = b64decode_param("Plaintext", require("Plaintext", plaintext))
        with self._store.transaction() as tx:
            self._begin(tx)
            row = self._usable(tx, key_id, key_version_id)
            name = self._check_algorithm(
                row, KeyUsage.ENCRYPT_DECRYPT, ENCRYPT_ALGORITHMS, algorithm, "AsymmetricEncrypt"
            )
            spec = KeySpec(row["spec"])
            limit = facts(spec).max_encrypt_plaintext(name)
            if not 1 <= len(data) <= limit:
                raise KmsError(
                    ErrorCode.INVALID_PARAMETER,
                    f"Plaintext must be 1 to {limit} bytes for {spec.value} with {name}",
                )
            try:
                ciphertext = keyops.encrypt(spec, bytes(row["public_key"]), name, data)
            except CryptoFailure as e:
                raise KmsError(ErrorCode.INVALID_PARAMETER, str(e)) from None
            return self._view(row), ciphertext

    def asymmetric_decrypt(
        self,
        key_id: str | None,
        key_version_id: str | None,
        algorithm: str | None,
        ciphertext_blob: str | None,
    ) -> tuple[Key, bytes]:
        data = b64decode_param("CiphertextBlob", require("CiphertextBlob", ciphertext_blob))
        with self._store.transaction() as tx:
            self._begin(tx)
            row = self._usable(tx, key_id, key_version_id)
            name = self._check_algorithm(
                row, KeyUsage.ENCRYPT_DECRYPT, ENCRYPT_ALGORITHMS, algorithm, "AsymmetricDecrypt"
            )
            try:
                return self._view(row), keyops.decrypt(self._material(tx, row), name, data)
            except CryptoFailure as e:
                raise KmsError(ErrorCode.INVALID_PARAMETER, f"CiphertextBlob: {e}") from None

    def key_in_use(self, key_id: str | None, key_version_id: str | None, action: str) -> KeyInUse:
        """A key a family's own operation (`action`, emulator/families.py) uses: at `key_version_id`, or
        its primary version for None; usable (enabled, with material), and of a family whose keys
        answer `action` (Rejected.UnsupportedOperation otherwise)."""
        with self._store.transaction() as tx:
            self._begin(tx)
            version = self._row(tx, key_id)["version_id"] if key_version_id is None else key_version_id
            row = self._usable(tx, key_id, version)
            spec = KeySpec(row["spec"])
            if action not in families.emulated(facts(spec).family).operations:
                instead = families.operations()[action].instead
                raise KmsError(
                    ErrorCode.REJECTED_UNSUPPORTED_OPERATION,
                    f"{action} is not supported for {spec} keys (key {row['key_id']})"
                    + (f"; {instead}" if instead else ""),
                )
            return KeyInUse(self._view(row), row["version_id"], self._material(tx, row))

    # -- aliases -----------------------------------------------------------------------------------

    @staticmethod
    def _check_alias_name(alias_name: str | None) -> str:
        name = require("AliasName", alias_name)
        if not _ALIAS_RE.fullmatch(name):
            raise KmsError(
                ErrorCode.INVALID_PARAMETER,
                f"AliasName {name!r} must be alias/ followed by 1 to 255 letters, digits, _ - or /",
            )
        if name.lower().startswith("alias/acs"):
            raise KmsError(ErrorCode.INVALID_PARAMETER, f"AliasName {name!r} must not start with alias/acs")
        return name

    def create_alias(self, alias_name: str | None, key_id: str | None) -> None:
        # The key-state table: CreateAlias succeeds in Enabled, Disabled and PendingImport.
        name = self._check_alias_name(alias_name)
        with self._store.transaction() as tx:
            self._begin(tx)
            row = self._row(tx, key_id)
            self._refuse_pending_deletion(row, "CreateAlias", ErrorCode.REJECTED_STATE_MODIFIED_FAILED)
            if tx.one("SELECT 1 FROM aliases WHERE alias_name = ?", (name,)) is not None:
                raise KmsError(ErrorCode.ALIAS_ALREADY_EXISTS, f"The alias already exists: {name}")
            tx.execute("INSERT INTO aliases (alias_name, key_id) VALUES (?, ?)", (name, row["key_id"]))

    def update_alias(self, alias_name: str | None, key_id: str | None) -> None:
        name = self._check_alias_name(alias_name)
        with self._store.transaction() as tx:
            self._begin(tx)
            row = self._row(tx, key_id)
            # The key-state page's note on UpdateAlias: only the target key's state counts, and a
            # target pending deletion is refused as CreateAlias refuses it.
            self._refuse_pending_deletion(row, "UpdateAlias", ErrorCode.REJECTED_STATE_MODIFIED_FAILED)
            if tx.one("SELECT 1 FROM aliases WHERE alias_name = ?", (name,)) is None:
                raise KmsError(
                    ErrorCode.FORBIDDEN_ALIAS_NOT_FOUND, f"The specified Alias is not found: {name}"
                )
            tx.execute("UPDATE aliases SET key_id = ? WHERE alias_name = ?", (row["key_id"], name))

    def delete_alias(self, alias_name: str | None) -> None:
        name = require("AliasName", alias_name)
        with self._store.transaction() as tx:
            self._begin(tx)
            if tx.execute("DELETE FROM aliases WHERE alias_name = ?", (name,)).rowcount == 0:
                raise KmsError(
                    ErrorCode.FORBIDDEN_ALIAS_NOT_FOUND, f"The specified Alias is not found: {name}"
                )

    def list_aliases(self, page_number: int | None = None, page_size: int | None = None) -> Page[Alias]:
        return self._aliases(None, page_number, page_size)

    def list_aliases_by_key_id(
        self, key_id: str | None, page_number: int | None = None, page_size: int | None = None
    ) -> Page[Alias]:
        return self._aliases(require("KeyId", key_id), page_number, page_size)

    def _aliases(self, key_id: str | None, page_number: int | None, page_size: int | None) -> Page[Alias]:
        number, size = self._page(page_number, page_size)
        with self._store.transaction() as tx:
            self._begin(tx)
            where, args = "", tuple[str, ...]()
            if key_id is not None:
                where, args = " WHERE key_id = ?", (str(self._row(tx, key_id)["key_id"]),)
            total = tx.one(f"SELECT COUNT(*) AS n FROM aliases{where}", args)
            rows = tx.all(
                f"SELECT alias_name, key_id FROM aliases{where} ORDER BY seq LIMIT ? OFFSET ?",
                (*args, size, (number - 1) * size),
            )
            items = [Alias(r["alias_name"], self._alias_arn(r["alias_name"]), r["key_id"]) for r in rows]
            return Page(items, int(total["n"]) if total else 0, number, size)

    # -- tags --------------------------------------------------------------------------------------

    def tag_resource(self, key_id: str | None, tags: Sequence[tuple[str, str]] | None) -> None:
        given = require("Tags", tags)
        with self._store.transaction() as tx:
            self._begin(tx)
            row = self._row(tx, key_id)
            self._refuse_pending_deletion(row, "TagResource", ErrorCode.REJECTED_PENDING_DELETION)
            self._put_tags(tx, row["key_id"], given)

    def untag_resource(self, key_id: str | None, tag_keys: Sequence[str] | None) -> None:
        keys = require("TagKeys", tag_keys)
        with self._store.transaction() as tx:
            self._begin(tx)
            row = self._row(tx, key_id)
            # Inferred: the table's UntagResource row is cut off where we read it; TagResource's is
            # Rejected.PendingDeletion, and untagging is the same kind of change.
            self._refuse_pending_deletion(row, "UntagResource", ErrorCode.REJECTED_PENDING_DELETION)
            for tag_key in keys:
                tx.execute("DELETE FROM tags WHERE key_id = ? AND tag_key = ?", (row["key_id"], tag_key))

    def list_resource_tags(self, key_id: str | None) -> tuple[str, list[tuple[str, str]]]:
        """The key id and its tags, sorted by tag key."""
        with self._store.transaction() as tx:
            self._begin(tx)
            row = self._row(tx, key_id)
            rows = tx.all(
                "SELECT tag_key, tag_value FROM tags WHERE key_id = ? ORDER BY tag_key", (row["key_id"],)
            )
            return row["key_id"], [(r["tag_key"], r["tag_value"]) for r in rows]

    @staticmethod
    def _check_resource_type(resource_type: str | None) -> None:
        kind = require("ResourceType", resource_type)
        if kind.lower() != "key":
            raise KmsError(ErrorCode.INVALID_PARAMETER, f"ResourceType {kind!r} is not supported; use key")

    @staticmethod
    def _check_resource_ids(resource_ids: Sequence[str] | None, *, required: bool) -> list[str]:
        ids = list(resource_ids or ())
        if required:
            require("ResourceId.1", ids[0] if ids else None)
        if len(ids) > MAX_RESOURCE_IDS:
            raise KmsError(
                ErrorCode.INVALID_PARAMETER, f"at most {MAX_RESOURCE_IDS} ResourceId values, got {len(ids)}"
            )
        return ids

    def tag_resources(
        self,
        resource_type: str | None,
        resource_ids: Sequence[str] | None,
        tags: Sequence[tuple[str, str]] | None,
    ) -> None:
        self._check_resource_type(resource_type)
        ids = self._check_resource_ids(resource_ids, required=True)
        given = list(tags or ())
        require("Tag.1.Key", given[0][0] if given else None)
        with self._store.transaction() as tx:
            self._begin(tx)
            for resource_id in ids:
                self._put_tags(tx, self._row(tx, resource_id)["key_id"], given)

    def untag_resources(
        self,
        resource_type: str | None,
        resource_ids: Sequence[str] | None,
        tag_keys: Sequence[str] | None,
        all_tags: bool | None = None,
    ) -> None:
        self._check_resource_type(resource_type)
        ids = self._check_resource_ids(resource_ids, required=True)
        keys = list(tag_keys or ())
        if not keys and not all_tags:
            require("TagKey.1", None)
        with self._store.transaction() as tx:
            self._begin(tx)
            for resource_id in ids:
                key = self._row(tx, resource_id)["key_id"]
                if all_tags:
                    tx.execute("DELETE FROM tags WHERE key_id = ?", (key,))
                for tag_key in keys:
                    tx.execute("DELETE FROM tags WHERE key_id = ? AND tag_key = ?", (key, tag_key))

    def list_tag_resources(
        self,
        resource_type: str | None,
        resource_ids: Sequence[str] | None = None,
        tags: Sequence[tuple[str, str]] | None = None,
        next_token: str | None = None,
    ) -> tuple[list[TagRow], str]:
        """Tag rows of the given keys and/or of the keys carrying every given tag, 200 rows a page.

        Choice (the vendor documents none): with a tag filter, a key matches when it carries ALL
        the given key=value pairs, and EVERY tag row of each matching key is returned, not only the
        matching ones, so one call reads a stack's keys with all their tags. Unknown resource ids
        are skipped. Returns the rows and the next token ("" on the last page)."""
        self._check_resource_type(resource_type)
        ids = self._check_resource_ids(resource_ids, required=False)
        wanted = list(tags or ())
        if len(wanted) > MAX_TAG_FILTERS:
            raise KmsError(
                ErrorCode.INVALID_PARAMETER, f"at most {MAX_TAG_FILTERS} Tag filters, got {len(wanted)}"
            )
        if not ids and not wanted:
            require("ResourceId.1 or Tag.1.Key", None)
        offset = 0
        if next_token:
            try:
                offset = int(base64.urlsafe_b64decode(next_token.encode("ascii")).decode("ascii"))
            except (ValueError, UnicodeError, binascii.Error):
                raise KmsError(
                    ErrorCode.INVALID_PARAMETER, "NextToken is not one this service issued"
                ) from None
            if not 0 <= offset <= MAX_PAGE_NUMBER:
                raise KmsError(ErrorCode.INVALID_PARAMETER, "NextToken is not one this service issued")
        where: list[str] = []
        args: list[object] = []
        if ids:
            where.append(f"k.key_id IN ({', '.join('?' for _ in ids)})")
            args.extend(ids)
        for tag_key, tag_value in wanted:
            where.append(
                "EXISTS (SELECT 1 FROM tags f WHERE f.key_id = k.key_id AND f.tag_key = ? "
                "AND f.tag_value = ?)"
            )
            args.extend((tag_key, tag_value))
        sql = (
            "SELECT t.key_id, t.tag_key, t.tag_value FROM tags t JOIN keys k ON k.key_id = t.key_id "
            f"WHERE {' AND '.join(where)} ORDER BY k.seq, t.tag_key LIMIT ? OFFSET ?"
        )
        with self._store.transaction() as tx:
            self._begin(tx)
            rows = tx.all(sql, (*args, TAG_ROWS_PER_PAGE + 1, offset))
        page = [TagRow(r["key_id"], r["tag_key"], r["tag_value"]) for r in rows[:TAG_ROWS_PER_PAGE]]
        token = ""
        if len(rows) > TAG_ROWS_PER_PAGE:
            token = base64.urlsafe_b64encode(str(offset + TAG_ROWS_PER_PAGE).encode("ascii")).decode("ascii")
        return page, token

    # -- instances ---------------------------------------------------------------------------------

    def _instance(self, instance_id: str) -> Instance:
        return Instance(
            instance_id,
            f"acs:kms:{self.region}:{self.account_id}:keystore/{instance_id}",
            self.instances[instance_id],
            self.region,
        )

    def list_kms_instances(
        self, page_number: int | None = None, page_size: int | None = None
    ) -> Page[Instance]:
        number, size = self._page(page_number, page_size)
        ids = sorted(self.instances)
        items = [self._instance(i) for i in ids[(number - 1) * size : number * size]]
        return Page(items, len(ids), number, size)

    def get_kms_instance(self, kms_instance_id: str | None) -> tuple[Instance, int]:
        """The instance and how many keys it holds."""
        instance_id = require("KmsInstanceId", kms_instance_id)
        if instance_id not in self.instances:
            # Inferred: the notes name no not-found code for instances.
            raise KmsError(
                ErrorCode.INVALID_PARAMETER,
                f"KmsInstanceId {instance_id} is not a KMS instance of this region",
            )
        with self._store.transaction() as tx:
            self._begin(tx)
            count = tx.one("SELECT COUNT(*) AS n FROM keys WHERE instance_id = ?", (instance_id,))
        return self._instance(instance_id), int(count["n"]) if count else 0
