"""Read what KMS holds for one stack, with the fewest calls: tags by filter, one DescribeKey per key,
aliases in pages, GetPublicKey only where asked, and the keys `adopt:` names (whatever their tags say).
Read-only: it never calls a write action.

It judges nothing: each key gets one explicit KeyStatus and the planner decides what that means.
"""

from __future__ import annotations

import base64
import dataclasses
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime

from provisioner.backend.base import KeyMetadata, Kms
from provisioner.errors import KmsApiError
from provisioner.material import fingerprint_of_spki
from provisioner.model import (
    TAG_NAME,
    TAG_STACK,
    ActualKey,
    AdoptedKey,
    KeyState,
    KeyStatus,
    LiveState,
    is_reserved_alias,
)
from provisioner.specs import Verification, facts
from provisioner.wire import ErrorCode, is_rejection

#: ListTagResources takes at most this many resource ids a call.
TAG_CHUNK = 50

#: GetPublicKey needs imported material; keys in these states have none to show.
_NO_MATERIAL = frozenset({KeyStatus.PENDING_IMPORT, KeyStatus.MATERIAL_EXPIRED})


def key_status(meta: KeyMetadata, now: datetime) -> KeyStatus:
    """The one status of a live key at `now`."""
    expired = meta.material_expire_time is not None and meta.material_expire_time <= now
    if meta.key_state is KeyState.PENDING_DELETION:
        return KeyStatus.PENDING_DELETION
    if meta.key_state is KeyState.DISABLED:
        return KeyStatus.DISABLED
    if meta.key_state is KeyState.PENDING_IMPORT:
        # An expiry time on a key back in PendingImport means material was imported and ran out.
        imported = meta.material_expire_time is not None
        return KeyStatus.MATERIAL_EXPIRED if imported else KeyStatus.PENDING_IMPORT
    # Enabled, but the service has not yet noticed that the material ran out.
    return KeyStatus.MATERIAL_EXPIRED if expired else KeyStatus.ENABLED


def actual_from_metadata(
    meta: KeyMetadata, tags: Mapping[str, str], aliases: Iterable[str], now: datetime
) -> ActualKey:
    """ActualKey from DescribeKey's metadata plus the key's tags and aliases."""
    return ActualKey(
        key_id=meta.key_id,
        arn=meta.arn,
        status=key_status(meta, now),
        spec=meta.key_spec,
        usage=meta.key_usage,
        protection=meta.protection_level,
        instance=meta.instance_id,
        description=meta.description,
        created_at=meta.creation_date,
        material_expires_at=meta.material_expire_time,
        deletion_date=meta.delete_date,
        deletion_protection=meta.deletion_protection,
        primary_key_version=meta.primary_key_version,
        tags=dict(tags),
        aliases=tuple(sorted(aliases)),
        key_state=meta.key_state,
        origin=meta.origin,
    )


def fingerprint_of_pem(pem: str) -> str:
    """`sha256:<hex>` of the DER SubjectPublicKeyInfo inside a PEM (works for SM2 too: no parsing)."""
    body = "".join(line.strip() for line in pem.strip().splitlines() if line and not line.startswith("-----"))
    return fingerprint_of_spki(base64.b64decode(body))


def refresh(
    kms: Kms,
    stack: str,
    *,
    now: datetime,
    managed_names: Collection[str] = (),
    confirm: Callable[[ActualKey], bool] | None = None,
    concurrency: int = 8,
    targets: Collection[str] | None = None,
    adopt: Mapping[str, str] | None = None,
) -> LiveState:
    """The live state of `stack`. Every name in `managed_names` appears in `keys` (empty when absent).

    `confirm(key)` says whether to read the key's public key (GetPublicKey) and set its
    `public_key_fingerprint`; keys without material are never asked about. `targets` (--target):
    only keys of those names are described; the stack's other keys are listed in `outside_target`.
    Aliases reserved by the provisioner (model.is_reserved_alias) are no key's own aliases; they
    stay in `alias_owners`. `adopt` maps a desired key's name to the KeyId, ARN or alias its
    `adopt:` names: each is read into `adopted`, its public key confirmed when it is Enabled; one of
    this stack's keys costs no further call.
    """
    names = None if targets is None else frozenset(targets)
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="refresh") as pool:
        try:
            ids, outside, keys, alias_owners = _read(kms, stack, pool, now, confirm, names)
            adopted = _adopted(kms, dict(adopt or {}), keys, alias_owners, pool, now)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # queued calls would only add to the failure
            raise

    by_name: dict[str, list[ActualKey]] = {name: [] for name in managed_names}
    for key in keys:
        if key.name is not None:  # a stack key stripped of its name cannot be matched to anything
            by_name.setdefault(key.name, []).append(key)
    ours = set(ids) | outside
    return LiveState(
        adopted=adopted,
        stack=stack,
        keys={
            name: tuple(sorted(found, key=lambda k: (k.created_at, k.key_id)))
            for name, found in sorted(by_name.items())
        },
        alias_owners=dict(sorted(alias_owners.items())),
        foreign_keys=frozenset(owner for owner in alias_owners.values() if owner not in ours),
        outside_target=frozenset(outside),
    )


def _read(
    kms: Kms,
    stack: str,
    pool: ThreadPoolExecutor,
    now: datetime,
    confirm: Callable[[ActualKey], bool] | None,
    names: frozenset[str] | None = None,
) -> tuple[list[str], set[str], list[ActualKey], dict[str, str]]:
    """(stack key ids read, stack key ids left out by `names`, their ActualKeys, alias -> key
    id) with the calls spread over `pool`."""
    # Every call below is independent of the others but for the tag pages, which must be read one
    # after another (NextToken). The rate limit bounds a refresh to (read calls / read qps) seconds;
    # overlapping the sequential page chains with the DescribeKey calls keeps it there when the
    # service is far away (at 300 ms a call, reading pages first and aliases last cost 25 % more).
    aliases_future = pool.submit(kms.list_aliases)
    describing: dict[str, Future[KeyMetadata | None]] = {}

    def chosen(found: Mapping[str, str]) -> bool:
        return names is None or found.get(TAG_NAME) in names

    def describe_soon(key_id: str, found: Mapping[str, str]) -> None:
        if key_id not in describing and chosen(found):
            describing[key_id] = pool.submit(describe_if_exists, kms, key_id)

    tags = _stack_tags(kms, stack, on_stack_key=describe_soon)
    ids = sorted(key_id for key_id, found in tags.items() if chosen(found))
    outside = set(tags) - set(ids)
    for key_id in ids:
        describe_soon(key_id, tags[key_id])  # keys whose stack tag came only from the reread by id
    described = [describing[key_id].result() for key_id in ids]
    alias_entries = aliases_future.result()
    alias_owners = {a.alias_name: a.key_id for a in alias_entries}
    aliases_of: dict[str, list[str]] = defaultdict(list)
    for a in alias_entries:
        if not is_reserved_alias(a.alias_name):
            aliases_of[a.key_id].append(a.alias_name)

    keys = [
        actual_from_metadata(meta, tags[meta.key_id], aliases_of.get(meta.key_id, ()), now)
        for meta in described
        if meta is not None
    ]
    if confirm is not None:
        wanted = [k for k in keys if k.status not in _NO_MATERIAL and _has_public_key(k) and confirm(k)]
        fingerprints = list(pool.map(lambda k: _confirm(kms, k), wanted))
        confirmed = {k.key_id: fp for k, fp in zip(wanted, fingerprints, strict=True)}
        keys = [
            dataclasses.replace(k, public_key_fingerprint=confirmed[k.key_id])
            if k.key_id in confirmed
            else k
            for k in keys
        ]
    return ids, outside, keys, alias_owners


def _adopted(
    kms: Kms,
    references: Mapping[str, str],
    stack_keys: Sequence[ActualKey],
    alias_owners: Mapping[str, str],
    pool: ThreadPoolExecutor,
    now: datetime,
) -> dict[str, AdoptedKey]:
    """name -> the key its `adopt:` reference names. Aliases resolve through the alias list already read;
    an ARN must be the very ARN DescribeKey reports (this account and region); a KeyId is described."""
    ours = {k.key_id: k for k in stack_keys}
    wanted: dict[str, str | None] = {}  # name -> key id, None when the reference names none
    problems: dict[str, str] = {}
    for name, ref in sorted(references.items()):
        if ref.startswith("alias/"):
            wanted[name] = alias_owners.get(ref)
            if wanted[name] is None:
                problems[name] = f"alias {ref} does not exist in this account and region"
        elif ref.startswith("acs:"):
            head, sep, tail = ref.rpartition(":key/")
            wanted[name] = tail if sep and head and tail else None
            if wanted[name] is None:
                problems[name] = f"{ref} is not a KMS key ARN (acs:kms:REGION:ACCOUNT:key/KEY-ID)"
        else:
            wanted[name] = ref
    others = sorted({i for i in wanted.values() if i is not None and i not in ours})
    described = dict(zip(others, pool.map(lambda i: describe_if_exists(kms, i), others), strict=True))
    found = [m for m in described.values() if m is not None]
    tags: dict[str, dict[str, str]] = {m.key_id: {} for m in found}
    for chunk in _chunks(sorted(tags), TAG_CHUNK):
        for row in kms.list_tag_resources(resource_ids=chunk):
            if row.resource_id in tags:
                tags[row.resource_id][row.key] = row.value
    aliases_of: dict[str, list[str]] = defaultdict(list)
    for alias, owner in alias_owners.items():
        if not is_reserved_alias(alias):
            aliases_of[owner].append(alias)
    keys = {
        m.key_id: actual_from_metadata(m, tags[m.key_id], aliases_of.get(m.key_id, ()), now) for m in found
    }
    # The live public key is the fact an adoption is judged by; GetPublicKey needs an enabled key.
    unconfirmed = [k for k in keys.values() if k.status is KeyStatus.ENABLED and _has_public_key(k)]
    for k, fp in zip(unconfirmed, pool.map(lambda k: _confirm(kms, k), unconfirmed), strict=True):
        keys[k.key_id] = dataclasses.replace(k, public_key_fingerprint=fp)
    keys.update(ours)
    out: dict[str, AdoptedKey] = {}
    for name, key_id in wanted.items():
        ref = references[name]
        key = None if key_id is None else keys.get(key_id)
        problem: str | None = problems.get(name)
        if key is None and problem is None:
            problem = f"no key {key_id} exists in this account and region"
        elif key is not None and ref.startswith("acs:") and key.arn != ref:
            here = f"key {key_id} here is {key.arn}"
            key, problem = None, f"{ref} is not an ARN of this account and region ({here})"
        out[name] = AdoptedKey(ref, key, problem)
    return out


def _stack_tags(
    kms: Kms,
    stack: str,
    *,
    on_stack_key: Callable[[str, Mapping[str, str]], None] = lambda key_id, found: None,
) -> dict[str, dict[str, str]]:
    """Every tag of every key carrying this stack's tag. `on_stack_key(key_id, tags so far)` is called
    as soon as a page shows a key's stack tag, before the next page is read."""
    tags: dict[str, dict[str, str]] = defaultdict(dict)
    for page in kms.tag_resource_pages(tags={TAG_STACK: stack}):
        for row in page:
            tags[row.resource_id][row.key] = row.value
        for row in page:
            if row.key == TAG_STACK and row.value == stack:
                on_stack_key(row.resource_id, tags[row.resource_id])
    # The emulator returns every tag row of a matching key; the service may return only the rows that
    # matched the filter. A key whose rows lack its name tag is read again by id, 50 ids a call.
    partial = sorted(key_id for key_id, found in tags.items() if TAG_NAME not in found)
    for chunk in _chunks(partial, TAG_CHUNK):
        for row in kms.list_tag_resources(resource_ids=chunk):
            tags[row.resource_id][row.key] = row.value
    # Keep only keys whose stack tag really is this stack (a defence against a loose filter).
    return {key_id: dict(found) for key_id, found in tags.items() if found.get(TAG_STACK) == stack}


def describe_if_exists(kms: Kms, key_id: str) -> KeyMetadata | None:
    """DescribeKey, or None for a key deleted since it was listed."""
    try:
        return kms.describe_key(key_id)
    except KmsApiError as e:
        if e.code == ErrorCode.FORBIDDEN_KEY_NOT_FOUND:  # deleted between listing and describing
            return None
        raise


def proven_fingerprint(kms: Kms, key: ActualKey) -> str | None:
    """The fingerprint of the key's live public key (GetPublicKey), or None when the key holds no
    material to show or its spec cannot prove which material it holds."""
    if key.status in _NO_MATERIAL or not _has_public_key(key):
        return None
    return _confirm(kms, key)


def _has_public_key(key: ActualKey) -> bool:
    """Whether GetPublicKey proves which material the key holds (specs.Verification)."""
    return facts(key.spec).verification is Verification.PUBLIC_KEY_FINGERPRINT


def count_key_versions(kms: Kms, live: LiveState, concurrency: int = 8) -> LiveState:
    """`live` with `key_versions` read (ListKeyVersions) for every key whose material KMS cannot
    prove (symmetric specs): a second version holds material no recorded check value names."""
    keys = [k for found in live.keys.values() for k in found if not _has_public_key(k)]
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="versions") as pool:
        found = pool.map(lambda k: _version_count(kms, k), keys)
        counts = dict(zip([k.key_id for k in keys], found, strict=True))
    return dataclasses.replace(
        live,
        keys={
            name: tuple(dataclasses.replace(k, key_versions=counts.get(k.key_id)) for k in found)
            for name, found in live.keys.items()
        },
    )


def _version_count(kms: Kms, key: ActualKey) -> int | None:
    try:
        return len(kms.list_key_versions(key.key_id))
    except KmsApiError as e:
        if e.code == ErrorCode.FORBIDDEN_KEY_NOT_FOUND:  # deleted since it was described
            return None
        raise


def _confirm(kms: Kms, key: ActualKey) -> str | None:
    try:
        return fingerprint_of_pem(kms.get_public_key(key.key_id, key.primary_key_version))
    except KmsApiError as e:
        # The key lost its material or vanished after DescribeKey: nothing to confirm.
        if e.code == ErrorCode.FORBIDDEN_KEY_NOT_FOUND or is_rejection(e.code):
            return None
        raise


def _chunks(items: Sequence[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
