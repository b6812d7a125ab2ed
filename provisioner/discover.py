"""`provision discover`: every EXTERNAL key that no stack manages, as the manifest entry that would adopt
it (Terraform's `-generate-config-out`); views/discover.py writes the YAML.

Read-only: ListKeys, ListTagResources by id, ListAliases, DescribeKey for keys no stack claims, and
GetPublicKey for enabled ones. What a live key holds (aliases, tags, description) was written by
whoever has KMS access: it is data here, and the view makes sure it stays data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime

from provisioner.backend.base import KeyMetadata, Kms
from provisioner.model import (
    TAG_LOCK,
    TAG_STACK,
    KeySpec,
    KeyState,
    KeyUsage,
    Origin,
    ProtectionLevel,
    is_reserved_alias,
)
from provisioner.refresh import TAG_CHUNK, actual_from_metadata, describe_if_exists, proven_fingerprint

#: The stack of the generated document when --stack does not name one.
DEFAULT_STACK = "discovered"
#: What a key name and a stack name may be (the manifest schema's pattern).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
#: Tag keys a manifest may not carry: the provisioner's own and the service's (acs:, aliyun).
_UNDECLARABLE_TAG_PREFIXES = ("byok-provisioner:", "acs:", "aliyun")


@dataclass(frozen=True)
class FoundKey:
    """An EXTERNAL key no stack manages, as the manifest entry that would adopt it."""

    name: str
    key_id: str
    state: KeyState
    spec: KeySpec
    usage: KeyUsage
    protection: ProtectionLevel
    instance: str | None
    description: str
    aliases: tuple[str, ...]  # sorted
    tags: Mapping[str, str]  # the ones a manifest may declare
    expiry: datetime | None  # None: never (or no material)
    deletion_protection: bool
    fingerprint: str | None  # from GetPublicKey: an enabled key with material


@dataclass(frozen=True)
class Discovery:
    keys: tuple[FoundKey, ...]  # sorted by name
    #: Why a key was left out, or what of it was: for the user, one line each.
    notes: tuple[str, ...] = ()
    stack: str = DEFAULT_STACK  # of the generated document
    source: str = ""  # where the keys were read (the endpoint)


def discover(kms: Kms, *, now: datetime, stack: str = DEFAULT_STACK, concurrency: int = 8) -> Discovery:
    """Read every key of the region and keep the EXTERNAL ones that carry no stack's tag and no
    reserved alias (a claim or a lock: the provisioner's own), for a document of stack `stack`."""
    ids = sorted(kms.list_keys())
    notes: list[str] = []
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="discover") as pool:
        tags, aliases = _tags_and_aliases(kms, ids, pool)
        # A stack's key, or one holding a claim or the lock alias (the provisioner's bookkeeping), is
        # someone's already: only the others cost a DescribeKey.
        unclaimed = [
            key_id
            for key_id in ids
            if TAG_STACK not in tags[key_id]
            and TAG_LOCK not in tags[key_id]
            and not any(is_reserved_alias(a) for a in aliases.get(key_id, ()))
        ]
        kept: list[KeyMetadata] = []
        for meta in pool.map(lambda key_id: describe_if_exists(kms, key_id), unclaimed):
            if meta is None or meta.origin is not Origin.EXTERNAL:
                continue
            if meta.key_state is KeyState.PENDING_DELETION:
                notes.append(f"key {meta.key_id}: left out: it is pending deletion")
                continue
            kept.append(meta)
        actual = [actual_from_metadata(m, tags[m.key_id], aliases.get(m.key_id, ()), now) for m in kept]
        # GetPublicKey needs an enabled key; a disabled one's fingerprint stays unread.
        enabled = [k for k in actual if k.key_state is KeyState.ENABLED]
        proven = pool.map(lambda k: proven_fingerprint(kms, k), enabled)
        read = dict(zip((k.key_id for k in enabled), proven, strict=True))
    found = [_found_key(meta, tags[meta.key_id], aliases, read.get(meta.key_id), notes) for meta in kept]
    source = kms.info.get("endpoint") or kms.description
    return Discovery(keys=_named(found), notes=tuple(notes), stack=stack, source=source)


def _tags_and_aliases(
    kms: Kms, ids: list[str], pool: ThreadPoolExecutor
) -> tuple[dict[str, dict[str, str]], dict[str, list[str]]]:
    """(tags by key id, aliases by key id) of the keys `ids`: tag rows 50 ids a call, aliases in pages."""
    aliases_future = pool.submit(kms.list_aliases)
    chunks = [ids[i : i + TAG_CHUNK] for i in range(0, len(ids), TAG_CHUNK)]
    tags: dict[str, dict[str, str]] = {key_id: {} for key_id in ids}
    for rows in pool.map(lambda chunk: kms.list_tag_resources(resource_ids=chunk), chunks):
        for row in rows:
            tags.setdefault(row.resource_id, {})[row.key] = row.value
    aliases: dict[str, list[str]] = {}
    for entry in aliases_future.result():
        aliases.setdefault(entry.key_id, []).append(entry.alias_name)
    return tags, aliases


def _found_key(
    meta: KeyMetadata,
    live_tags: Mapping[str, str],
    aliases: Mapping[str, list[str]],
    fingerprint: str | None,
    notes: list[str],
) -> FoundKey:
    """The manifest entry of one kept key (named later); a tag a manifest cannot declare is left out,
    with a note."""
    declared = {k: v for k, v in live_tags.items() if not k.startswith(_UNDECLARABLE_TAG_PREFIXES)}
    left_out = sorted(set(live_tags) - set(declared))
    if left_out:
        words = ", ".join(left_out)
        notes.append(f"key {meta.key_id}: tag(s) {words} left out: a manifest cannot declare them")
    return FoundKey(
        name="",
        key_id=meta.key_id,
        state=meta.key_state,
        spec=meta.key_spec,
        usage=meta.key_usage,
        protection=meta.protection_level,
        instance=meta.instance_id,
        description=meta.description,
        aliases=tuple(sorted(aliases.get(meta.key_id, ()))),
        tags=dict(sorted(declared.items())),
        expiry=meta.material_expire_time,
        deletion_protection=meta.deletion_protection,
        fingerprint=fingerprint,
    )


def key_name(aliases: Iterable[str], key_id: str) -> str:
    """The manifest name of a key: its first alias without `alias/` (`/` becomes `-`), else its KeyId;
    a name the manifest format would refuse falls back to the KeyId as well."""
    for alias in sorted(aliases)[:1]:
        name = alias.removeprefix("alias/").replace("/", "-")
        if NAME_PATTERN.fullmatch(name):
            return name
    return key_id if NAME_PATTERN.fullmatch(key_id) else "key"


def _named(found: list[FoundKey]) -> tuple[FoundKey, ...]:
    """Each key with a name unique in the document: a second key of the same name gets `-2`, and so on."""
    taken: set[str] = set()
    out: list[FoundKey] = []
    named = sorted(((key_name(k.aliases, k.key_id), k) for k in found), key=lambda p: (p[0], p[1].key_id))
    for base, key in named:
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base[: 128 - len(str(n)) - 1]}-{n}"
        taken.add(name)
        out.append(replace(key, name=name))
    return tuple(sorted(out, key=lambda k: k.name))
