"""`provision discover`: manifest YAML for every EXTERNAL key that no stack manages (Terraform's
`-generate-config-out`), each with `adopt: <KeyId>` so that a plan of it adopts the key.

Read-only: ListKeys, DescribeKey, ListTagResources by id, ListAliases, and GetPublicKey for enabled
keys. What a live key holds (aliases, tags, description) was written by whoever has KMS access, and the
YAML is later rendered as a Jinja template: every string is quoted as YAML quotes it, anything outside
printable ASCII is a YAML escape, and template syntax is written so that it renders as itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import yaml

from provisioner.backend.base import KeyMetadata, Kms
from provisioner.escape import visible
from provisioner.model import (
    TAG_STACK,
    KeySpec,
    KeyState,
    KeyUsage,
    Origin,
    ProtectionLevel,
    format_time,
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


def discover(kms: Kms, *, now: datetime, concurrency: int = 8) -> Discovery:
    """Read every key of the region and keep the EXTERNAL ones that carry no stack's tag and no
    reserved alias (a claim or a lock: the provisioner's own)."""
    ids = sorted(kms.list_keys())
    chunks = [ids[i : i + TAG_CHUNK] for i in range(0, len(ids), TAG_CHUNK)]
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="discover") as pool:
        aliases_future = pool.submit(kms.list_aliases)
        tags: dict[str, dict[str, str]] = {key_id: {} for key_id in ids}
        for rows in pool.map(lambda chunk: kms.list_tag_resources(resource_ids=chunk), chunks):
            for row in rows:
                tags.setdefault(row.resource_id, {})[row.key] = row.value
        aliases: dict[str, list[str]] = {}
        for entry in aliases_future.result():
            aliases.setdefault(entry.key_id, []).append(entry.alias_name)
        # A stack's key, or one holding a claim or the lock alias (the provisioner's bookkeeping), is
        # someone's already: only the others cost a DescribeKey.
        unclaimed = [
            key_id
            for key_id in ids
            if TAG_STACK not in tags[key_id]
            and not any(is_reserved_alias(a) for a in aliases.get(key_id, ()))
        ]
        described = [m for m in pool.map(lambda key_id: describe_if_exists(kms, key_id), unclaimed) if m]

        notes: list[str] = []
        kept: list[KeyMetadata] = []
        for meta in described:
            if meta.origin is not Origin.EXTERNAL:
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
        fingerprints = [read.get(k.key_id) for k in actual]

    found: list[FoundKey] = []
    for meta, fp in zip(kept, fingerprints, strict=True):
        live_tags = tags[meta.key_id]
        declared = {k: v for k, v in live_tags.items() if not k.startswith(_UNDECLARABLE_TAG_PREFIXES)}
        left_out = sorted(set(live_tags) - set(declared))
        if left_out:
            notes.append(
                f"key {meta.key_id}: tag(s) {', '.join(left_out)} left out: a manifest cannot declare them"
            )
        found.append(
            FoundKey(
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
                fingerprint=fp,
            )
        )
    return Discovery(keys=_named(found), notes=tuple(notes))


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


# ----------------------------------------------------------------------------------------- YAML


class _Dumper(yaml.SafeDumper):
    """safe_dump's dumper, with every string outside printable ASCII double-quoted (YAML escapes)."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Printable ASCII: PyYAML picks plain or quoted as the content needs. Anything else (newlines, ESC,
    # bidi controls, any non-ASCII letter) is double-quoted, where each becomes an escape like \e or
    # \u202e: the value round-trips exactly and no raw control character reaches the terminal.
    printable = all(" " <= ch <= "~" for ch in value)
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=None if printable else '"')


_Dumper.add_representer(str, _represent_str)

#: Jinja's openers: an expression, a statement, a comment.
_TEMPLATE_OPENER = re.compile(r"\{([{%#])")


def neutralise_template(text: str) -> str:
    """`text` written so that Jinja renders it as itself: each `{{`, `{%` and `{#` becomes an expression
    that prints those two characters, so nothing a live key holds is ever evaluated."""
    return _TEMPLATE_OPENER.sub(lambda m: "{{ '{" + m.group(1) + "' }}", text)


def _entry(key: FoundKey) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "adopt": key.key_id,
        "spec": key.spec.value,
        "usage": key.usage.value,
        "protection": key.protection.value,
    }
    if key.instance is not None:
        entry["instance"] = key.instance
    entry["description"] = key.description
    entry["aliases"] = list(key.aliases)
    entry["tags"] = dict(key.tags)
    entry["expiry"] = format_time(key.expiry) or "never"
    if key.deletion_protection:
        entry["deletion_protection"] = True
    if key.fingerprint is not None:
        entry["material"] = {"fingerprint": key.fingerprint}
    return entry


def _comment(key: FoundKey) -> str | None:
    if key.fingerprint is not None:
        return None
    if key.state is KeyState.DISABLED:
        return "Disabled: no fingerprint read (GetPublicKey needs an enabled key); enable it before adopting"
    if key.state is KeyState.PENDING_IMPORT:
        return "PendingImport: holds no material; add the material to import into it"
    return f"{key.state.value}: its public key could not be read; pin material.fingerprint by hand"


def _dump(value: Any) -> str:
    return yaml.dump(
        value, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=False, width=2**31
    )


def render_discovery_yaml(discovery: Discovery, *, stack: str, source: str) -> str:
    """The manifest document: a header comment, `version`, `stack`, then one entry per key. `source`
    says where the keys were read (the endpoint)."""
    n = len(discovery.keys)
    lines = [
        f"# Written by `provision discover` from {visible(source)}:",
        f"# {n} EXTERNAL key(s) that no stack manages.",
        "# Add each key's material source (file:, env: or command:) next to its fingerprint; a plan",
        "# then adopts each key (action adopt) without creating or importing anything.",
        _dump({"version": 1, "stack": stack}).rstrip("\n"),
    ]
    if not discovery.keys:
        lines.append("keys: {}")
    else:
        lines.append("keys:")
        for key in discovery.keys:
            comment = _comment(key)
            if comment is not None:
                lines.append(f"  # {comment}")
            lines += ["  " + line for line in _dump({key.name: _entry(key)}).rstrip("\n").split("\n")]
    # Every line is escaped by YAML already; visible() is the last word on what reaches a terminal.
    return visible(neutralise_template("\n".join(lines) + "\n"), keep="\n")
