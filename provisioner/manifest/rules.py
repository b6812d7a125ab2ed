"""Semantic rules of DESIGN section 3 over parsed documents: tags, aliases, expiry, keys, backend.

Runs after the schema; tolerates ill-typed data (the schema reported it) and returns DesiredKeys.
Reads no file and no material: a material block becomes a MaterialSource, nothing more.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provisioner.manifest.positions import Doc
from provisioner.manifest.words import DocPath, show_value
from provisioner.model import (
    CLAIM_ALIAS_PREFIX,
    DEFAULT_DELETION_WINDOW_DAYS,
    DEFAULT_TARGET,
    LOCK_ALIAS_PREFIX,
    MAX_TAGS_PER_KEY,
    RESERVED_TAGS,
    BackendConfig,
    DesiredKey,
    DesiredState,
    Diagnostic,
    Diagnostics,
    KeySpec,
    KeyUsage,
    Lease,
    Location,
    MaterialSource,
    PreviousGeneration,
    ProtectionLevel,
    SourceKind,
    is_reserved_alias,
    member_or_none,
)
from provisioner.specs import facts, family_specs, importable_specs, material_kinds

#: Tag keys and values: 1..128 of letters, digits, space and / \ _ - . + = : @ (KMS tag rules).
TAG_RE = re.compile(r"[A-Za-z0-9 /\\_.+=:@-]{1,128}")
TAG_CHARS_HINT = "letters, digits, space and / \\ _ - . + = : @"
#: Prefixes KMS reserves for itself (compared case-insensitively), plus the provisioner's own.
FORBIDDEN_TAG_PREFIXES = ("aliyun", "acs:")
RESERVED_TAG_PREFIX = "byok-provisioner:"
MAX_USER_TAGS = MAX_TAGS_PER_KEY - len(RESERVED_TAGS)
#: Aliases: alias/ followed by 1..255 of letters, digits, _ - / (KMS alias rules).
ALIAS_RE = re.compile(r"alias/[A-Za-z0-9_/-]{1,255}")
FORBIDDEN_ALIAS_PREFIX = "alias/acs"
#: `expiry.lease` and `expiry.renew_before` (DESIGN section 11); the schema holds the same pattern.
LEASE_RE = re.compile(r"[1-9][0-9]{0,4}[hd]")
RFC3339_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})"
)


# ---------------------------------------------------------------------------------------------
# Semantic rules (DESIGN section 3)


def tag_key_problem(key: str, show: Callable[..., str] | None = None) -> str | None:
    """Why `key` cannot be a user tag key, or None if it can."""
    quote = show or show_value
    if not key:
        return "tag key must not be empty"
    if len(key) > 128:
        return f"tag key {quote(key, 40)} is {len(key)} characters long; at most 128 allowed"
    if not TAG_RE.fullmatch(key):
        bad = _first_bad_char(key) if show is None else "a character that is not allowed"
        return f"tag key {quote(key)} contains {bad}; allowed are {TAG_CHARS_HINT}"
    lowered = key.lower()
    for prefix in FORBIDDEN_TAG_PREFIXES:
        if lowered.startswith(prefix):
            return f'tag key {quote(key)} must not start with "{prefix}"'
    if key in RESERVED_TAGS or lowered.startswith(RESERVED_TAG_PREFIX):
        return f'tag key {quote(key)} is reserved for the provisioner ("{RESERVED_TAG_PREFIX}...")'
    return None


def tag_value_problem(key: str, value: str, show: Callable[..., str] | None = None) -> str | None:
    """Why `value` cannot be the value of tag `key`, or None if it can."""
    quote = show or show_value
    if not value:
        return f'tag "{key}" has an empty value; values are 1..128 characters'
    if len(value) > 128:
        return f'tag "{key}" value {quote(value, 40)} is {len(value)} characters long; at most 128 allowed'
    if not TAG_RE.fullmatch(value):
        bad = _first_bad_char(value) if show is None else "a character that is not allowed"
        return f'tag "{key}" value {quote(value)} contains {bad}; allowed are {TAG_CHARS_HINT}'
    return None


def alias_problem(alias: str, show: Callable[..., str] | None = None) -> str | None:
    """Why `alias` cannot be an alias name, or None if it can."""
    quote = show or show_value
    if not alias.startswith("alias/"):
        return f'alias {quote(alias)} must start with "alias/"'
    if alias.lower().startswith(FORBIDDEN_ALIAS_PREFIX):
        return f'alias {quote(alias)} must not start with "{FORBIDDEN_ALIAS_PREFIX}"'
    if is_reserved_alias(alias):
        return (
            f'alias {quote(alias)} is reserved for the provisioner ("{CLAIM_ALIAS_PREFIX}..." claims an '
            f'identity, "{LOCK_ALIAS_PREFIX}..." locks a stack)'
        )
    rest = alias.removeprefix("alias/")
    if not rest:
        return f'alias {quote(alias)} needs a name after "alias/"'
    if len(rest) > 255:
        return f"alias {quote(alias, 40)} is too long: at most 255 characters after alias/"
    if not ALIAS_RE.fullmatch(alias):
        bad = (
            _first_bad_char(rest, allowed=re.compile(r"[A-Za-z0-9_/-]"))
            if show is None
            else "a character that is not allowed"
        )
        return f"alias {quote(alias)} contains {bad}; allowed after alias/ are letters, digits, _ - /"
    return None


def _first_bad_char(text: str, allowed: re.Pattern[str] | None = None) -> str:
    ok = allowed or re.compile(r"[A-Za-z0-9 /\\_.+=:@-]")
    for ch in text:
        if not ok.fullmatch(ch):
            return f"the character {json.dumps(ch, ensure_ascii=False)}"
    return "a character that is not allowed"


def parse_expiry(value: str) -> datetime | None:
    """`never` -> None; an RFC 3339 time with a zone -> aware datetime; else ValueError."""
    if value == "never":
        return None
    if not RFC3339_RE.fullmatch(value):
        raise ValueError(value)
    parsed = datetime.fromisoformat(value.replace("z", "Z"))
    try:
        # Plan and apply work in UTC: 9999-12-31T23:59:59-01:00 is past datetime's last day there.
        parsed.astimezone(UTC)
    except OverflowError:
        raise ExpiryOutOfRange(value) from None
    return parsed


class ExpiryOutOfRange(ValueError):
    """An RFC 3339 time that cannot be expressed in UTC (outside years 1..9999 once converted)."""


@dataclass
class SetState:
    """What the cross-file rules remember while every file is checked."""

    stack: tuple[str, Location] | None = None
    backend: tuple[BackendConfig, Location] | None = None
    #: `backends:` (several targets) and where it is declared.
    backends: tuple[tuple[BackendConfig, ...], Location] | None = None
    names: dict[str, Location] = field(default_factory=dict)
    aliases: dict[str, Location] = field(default_factory=dict)
    #: `adopt:` reference -> (key name, where), so that one KMS key is adopted by one entry only.
    adopted: dict[str, tuple[str, Location]] = field(default_factory=dict)
    #: `moved_from:` name -> (the key it moved to, where).
    moved: dict[str, tuple[str, Location]] = field(default_factory=dict)
    #: key name -> where its `targets:` list and each of its entries are written.
    target_locs: dict[str, tuple[Location, tuple[Location, ...]]] = field(default_factory=dict)

    @property
    def target_names(self) -> tuple[str, ...]:
        """The set's targets: the `backends:` names, or `default` for one backend."""
        if self.backends is None:
            return (DEFAULT_TARGET,)
        return tuple(b.name for b in self.backends[0])


def _check_tags(
    doc: Doc, tags: Any, path: DocPath, diags: Diagnostics
) -> dict[str, str]:
    """Check a tags mapping; return its well-formed entries."""
    good: dict[str, str] = {}
    if not isinstance(tags, dict):
        return good
    for key, value in tags.items():
        problem = tag_key_problem(key, doc.show if doc.tainted else None)
        if problem:
            diags.add(Diagnostic(doc.key_loc((*path, key)), problem))
            continue
        if not isinstance(value, str):
            continue  # the schema reported it
        problem = tag_value_problem(key, value, doc.show if doc.tainted else None)
        if problem:
            diags.add(Diagnostic(doc.loc((*path, key)), problem))
            continue
        good[key] = value
    return good


def _resolve(folder: Path, relative: str) -> Path:
    # Absolute without following symlinks, so messages show the path the user would recognise.
    return Path(os.path.abspath(folder / relative))


def check_doc(doc: Doc, state: SetState, diags: Diagnostics) -> list[DesiredKey]:
    """Semantic rules for one file; also feeds the cross-file rules. Tolerates ill-typed data."""
    data = doc.data
    if not isinstance(data, dict):
        return []
    stack = data.get("stack")
    if isinstance(stack, str):
        here = doc.loc(("stack",))
        if state.stack is None:
            state.stack = (stack, here)
        elif state.stack[0] != stack:
            first, where = state.stack
            diags.add(
                Diagnostic(
                    here,
                    f'stack "{stack}" differs from stack "{first}" declared at {where}; '
                    "all files of a manifest set belong to one stack",
                )
            )
    _check_backend(doc, data.get("backend"), state, diags)
    _check_backends(doc, data.get("backends"), state, diags)

    raw_defaults = data.get("defaults")
    defaults: dict[str, Any] = raw_defaults if isinstance(raw_defaults, dict) else {}
    default_tags = _check_tags(doc, defaults.get("tags"), ("defaults", "tags"), diags)
    default_instance = defaults.get("instance") if isinstance(defaults.get("instance"), str) else None
    default_protection = member_or_none(ProtectionLevel, defaults.get("protection"))

    keys = data.get("keys")
    if not isinstance(keys, dict):
        return []
    out: list[DesiredKey] = []
    for name, body in keys.items():
        if not isinstance(body, dict):
            continue
        key = _check_key(
            doc, name, body, state, diags,
            stack=stack if isinstance(stack, str) else "",
            default_tags=default_tags,
            default_instance=default_instance,
            default_protection=default_protection or ProtectionLevel.SOFTWARE,
        )
        if key is not None:
            out.append(key)
    return out


def _backend_config(
    doc: Doc, entry: dict[str, Any], path: DocPath, diags: Diagnostics
) -> BackendConfig | None:
    """The BackendConfig of a `backend:` block or a `backends:` entry at `path`; None when ill-typed."""
    kind = entry.get("type", "local")
    where = str(path[0]) if len(path) == 1 else f"{path[0]}[{path[1]}]"
    file_path = entry.get("path")
    if kind == "alibaba" and file_path is not None:
        diags.add(
            Diagnostic(
                doc.loc((*path, "path")),
                f"{where}.path {doc.show(file_path)} applies only to the local backend",
            )
        )
    if not isinstance(kind, str) or kind not in ("local", "alibaba"):
        return None
    name = entry.get("name", DEFAULT_TARGET)
    return BackendConfig(
        type=kind,
        path=_resolve(doc.folder, file_path) if isinstance(file_path, str) and kind == "local" else None,
        region=entry.get("region") if isinstance(entry.get("region"), str) else None,
        endpoint=entry.get("endpoint") if isinstance(entry.get("endpoint"), str) else None,
        region_at=doc.loc((*path, "region")),
        endpoint_at=doc.loc((*path, "endpoint")),
        name=name if isinstance(name, str) else DEFAULT_TARGET,
        at=doc.loc(path),
    )


def _check_backend(doc: Doc, backend: Any, state: SetState, diags: Diagnostics) -> None:
    if not isinstance(backend, dict):
        return
    config = _backend_config(doc, backend, ("backend",), diags)
    if config is None:
        return
    here = doc.loc(("backend",))
    if state.backends is not None:
        diags.add(Diagnostic(here, _BOTH_BACKENDS.format(other="backends", where=state.backends[1])))
    elif state.backend is None:
        state.backend = (config, here)
    elif state.backend[0] != config:
        diags.add(
            Diagnostic(here, f"backend differs from the one declared at {state.backend[1]}; give it once")
        )


_BOTH_BACKENDS = (
    "a manifest set has either backend: (one target) or backends: (several), not both; {other}: is "
    "declared at {where}"
)


def _check_backends(doc: Doc, backends: Any, state: SetState, diags: Diagnostics) -> None:
    """`backends:` (DESIGN section 12): named targets, declared in one file of the set."""
    if not isinstance(backends, list):
        return
    here = doc.loc(("backends",))
    if state.backend is not None:
        diags.add(Diagnostic(here, _BOTH_BACKENDS.format(other="backend", where=state.backend[1])))
        return
    if state.backends is not None:
        diags.add(
            Diagnostic(here, f"backends: is declared already at {state.backends[1]}; give it in one file")
        )
        return
    configs: list[BackendConfig] = []
    seen: dict[str, Location] = {}
    for i, entry in enumerate(backends):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue  # the schema reported it
        config = _backend_config(doc, entry, ("backends", i), diags)
        if config is None:
            continue
        at = doc.loc(("backends", i, "name"))
        if config.name in seen:
            diags.add(
                Diagnostic(
                    at,
                    f"backends[{i}].name: target {doc.show(config.name)} is declared already (at "
                    f"{seen[config.name]}); each target has one name",
                )
            )
            continue
        seen[config.name] = at
        configs.append(config)
    state.backends = (tuple(configs), here)


def _check_key(
    doc: Doc, name: str, body: dict[str, Any], state: SetState, diags: Diagnostics, *,
    stack: str, default_tags: dict[str, str], default_instance: str | None,
    default_protection: ProtectionLevel,
) -> DesiredKey | None:
    """One key's rules, in the order its problems are reported; its DesiredKey if it has none."""
    base: DocPath = ("keys", name)
    here = doc.key_loc(base)
    errors_before = len(diags)
    _declare_name(name, here, state, diags)

    spec = member_or_none(KeySpec, body.get("spec"))
    usage = member_or_none(KeyUsage, body.get("usage"))
    protection = member_or_none(ProtectionLevel, body.get("protection")) or default_protection
    desired_state = member_or_none(DesiredState, body.get("state", "present"))
    _check_spec(doc, name, base, spec, protection, diags)

    instance = body.get("instance", default_instance)
    _check_usage(doc, name, base, spec, usage, diags)
    if instance is None and not (spec is not None and facts(spec).default_key):
        diags.add(
            Diagnostic(
                here,
                f'key "{name}" has no KMS instance: asymmetric import needs one; '
                "set instance on the key or under defaults",
            )
        )
    tags = _key_tags(doc, name, body, default_tags, diags)
    aliases = _key_aliases(doc, name, body, state, diags)
    expiry, lease = _key_expiry(doc, name, body, diags)
    protected, window = _key_deletion(doc, name, body, desired_state, diags)
    material = _check_material_block(doc, name, body, base, desired_state, diags)
    if material is not None and spec is not None:
        on_instance = instance is not None
        material = _check_material_kind(doc, name, body, base, spec, protection, on_instance, material, diags)
    adopt, adopt_targets, adopt_targets_at = _key_adopt(doc, name, body, state, diags)
    targets = _key_targets(doc, name, body, state)
    moved_from = _key_moved_from(doc, name, body, state, diags)
    previous = _key_previous(doc, name, body, material, diags)

    if len(diags) > errors_before or spec is None or usage is None or desired_state is None:
        return None
    description = body.get("description", "")
    return DesiredKey(
        stack=stack,
        name=name,
        spec=spec,
        usage=usage,
        protection=protection,
        instance=instance if isinstance(instance, str) else None,
        description=description if isinstance(description, str) else "",
        tags=tags,
        aliases=tuple(sorted(aliases)),
        expiry=expiry,
        deletion_protection=protected,
        deletion_window_days=window,
        material=material,
        state=desired_state,
        location=here,
        adopt=adopt,
        moved_from=moved_from,
        adopt_at=doc.loc((*base, "adopt")) if adopt is not None else None,
        lease=lease,
        previous=previous,
        targets=targets,
        adopt_targets=adopt_targets,
        adopt_targets_at=adopt_targets_at,
    )


def _declare_name(name: str, here: Location, state: SetState, diags: Diagnostics) -> None:
    if name in state.names:
        diags.add(
            Diagnostic(
                here, f'key name "{name}" is declared twice in the stack (first at {state.names[name]})'
            )
        )
    else:
        state.names[name] = here


def _check_spec(
    doc: Doc, name: str, base: DocPath, spec: KeySpec | None, protection: ProtectionLevel,
    diags: Diagnostics,
) -> None:
    if spec is not None and spec not in importable_specs(protection):
        allowed = ", ".join(sorted(importable_specs(protection)))
        diags.add(
            Diagnostic(
                doc.loc((*base, "spec")),
                f'key "{name}": spec "{spec}" cannot take imported material at protection {protection} '
                f"(it takes {allowed})",
            )
        )


def _check_usage(
    doc: Doc, name: str, base: DocPath, spec: KeySpec | None, usage: KeyUsage | None,
    diags: Diagnostics,
) -> None:
    if spec is not None and usage is not None and usage not in facts(spec).usages:
        takes = " or ".join(facts(spec).usages)
        message = f'key "{name}": spec "{spec}" takes usage {takes} only, not {usage}'
        diags.add(Diagnostic(doc.loc((*base, "usage")), message))


def _check_material_kind(
    doc: Doc, name: str, body: dict[str, Any], base: DocPath, spec: KeySpec, protection: ProtectionLevel,
    on_instance: bool, source: MaterialSource, diags: Diagnostics,
) -> MaterialSource | None:
    """The material fields that depend on the spec, checked by its family's kind (specs.MaterialKind):
    no field another kind owns, then the kind's own. The source, completed, if they are right."""
    block: dict[str, Any] = body["material"]
    kinds = material_kinds()
    kind = kinds[facts(spec).family]

    def problem(field_name: str | None, message: str) -> None:
        where = (*base, "material") if field_name is None else (*base, "material", field_name)
        diags.add(Diagnostic(doc.loc(where), f'key "{name}": {message}'))

    before = len(diags)
    foreign = {f for k in kinds.values() for f in k.fields if f in block and f not in kind.fields}
    for extra in sorted(foreign):
        owners = [family for family, k in kinds.items() if extra in k.fields]
        words = " or ".join(dict.fromkeys(family.value for family in owners))
        specs = ", ".join(family_specs(*owners))
        problem(extra, f"material.{extra} is for {words} keys only ({specs}), not {spec}")
    completed, problems = kind.check_source(block, spec, protection, on_instance, source)
    for found in problems:
        problem(found.field, found.message)
    return completed if len(diags) == before else None


def _key_tags(
    doc: Doc, name: str, body: dict[str, Any], default_tags: dict[str, str], diags: Diagnostics
) -> dict[str, str]:
    """Defaults merged under the key's own tags, counted with the provisioner's reserved tags."""
    base: DocPath = ("keys", name)
    tags = {**default_tags, **_check_tags(doc, body.get("tags"), (*base, "tags"), diags)}
    raw_tags: dict[str, Any] = body["tags"] if isinstance(body.get("tags"), dict) else {}
    total = len({**default_tags, **raw_tags})
    # A key that rotates carries the generation tag too (from generation 2 on).
    reserved = len(RESERVED_TAGS) + (1 if body.get("previous") else 0)
    if total > MAX_TAGS_PER_KEY - reserved:
        diags.add(
            Diagnostic(
                doc.loc((*base, "tags")) if raw_tags else doc.key_loc(base),
                f'key "{name}" has {total} tags (defaults included); at most {MAX_TAGS_PER_KEY - reserved} '
                f"are allowed because KMS allows {MAX_TAGS_PER_KEY} per key and the provisioner sets "
                f"{reserved}",
            )
        )
    return tags


def _key_aliases(
    doc: Doc, name: str, body: dict[str, Any], state: SetState, diags: Diagnostics
) -> list[str]:
    """The key's well-formed aliases not used before in the set (each is then taken)."""
    aliases: list[str] = []
    raw_aliases = body.get("aliases")
    if not isinstance(raw_aliases, list):
        return aliases
    for i, alias in enumerate(raw_aliases):
        if not isinstance(alias, str):
            continue  # the schema reported it
        at = doc.loc(("keys", name, "aliases", i))
        problem = alias_problem(alias, doc.show if doc.tainted else None)
        if problem:
            diags.add(Diagnostic(at, problem))
            continue
        if alias in state.aliases:
            diags.add(Diagnostic(at, f'alias "{alias}" is used twice (first at {state.aliases[alias]})'))
            continue
        state.aliases[alias] = at
        aliases.append(alias)
    return aliases


def _key_expiry(
    doc: Doc, name: str, body: dict[str, Any], diags: Diagnostics
) -> tuple[datetime | None, Lease | None]:
    """(a fixed expiry, a lease): at most one of them; (None, None) is `never`."""
    raw_expiry = body.get("expiry", "never")
    if isinstance(raw_expiry, dict):
        return None, _key_lease(doc, name, raw_expiry, diags)
    if not isinstance(raw_expiry, str):
        return None, None  # the schema reported it
    at = doc.loc(("keys", name, "expiry"))
    try:
        return parse_expiry(raw_expiry), None
    except ExpiryOutOfRange:
        diags.add(
            Diagnostic(
                at,
                f"expiry {doc.show(raw_expiry)} is not a time in UTC years 1..9999; "
                'use "never" for no expiry',
            )
        )
    except ValueError:
        diags.add(
            Diagnostic(
                at,
                f'expiry {doc.show(raw_expiry)} is neither "never" nor an RFC 3339 time with a zone, '
                'e.g. "2027-06-30T00:00:00Z"',
            )
        )
    return None, None


def _key_lease(doc: Doc, name: str, raw: dict[str, Any], diags: Diagnostics) -> Lease | None:
    """`expiry: {lease, renew_before}` whose fields the schema found well formed: renew_before < lease."""
    lease, renew = raw.get("lease"), raw.get("renew_before")
    if not (isinstance(lease, str) and isinstance(renew, str)):
        return None  # the schema reported it
    if not (LEASE_RE.fullmatch(lease) and LEASE_RE.fullmatch(renew)):
        return None  # the schema reported it
    found = Lease(lease, renew)
    if found.window >= found.length:
        diags.add(
            Diagnostic(
                doc.loc(("keys", name, "expiry", "renew_before")),
                f'key "{name}": expiry.renew_before {doc.show(renew)} must be shorter than '
                f"expiry.lease {doc.show(lease)}",
            )
        )
        return None
    return found


def _key_previous(
    doc: Doc, name: str, body: dict[str, Any], material: MaterialSource | None, diags: Diagnostics
) -> tuple[PreviousGeneration, ...]:
    """`previous:` entries the schema found well formed; a fingerprint listed twice, or the key's own
    pinned one, is an error."""
    raw = body.get("previous")
    if not isinstance(raw, list):
        return ()
    out: list[PreviousGeneration] = []
    seen: dict[str, Location] = {}
    for i, entry in enumerate(raw):
        fp = entry.get("material", {}).get("fingerprint") if isinstance(entry, dict) else None
        state = member_or_none(DesiredState, entry.get("state")) if isinstance(entry, dict) else None
        if not isinstance(fp, str) or state is None:
            continue  # the schema reported it
        at = doc.loc(("keys", name, "previous", i, "material", "fingerprint"))
        if fp in seen:
            diags.add(
                Diagnostic(
                    at, f'key "{name}": previous fingerprint {fp} is listed twice (first at {seen[fp]})'
                )
            )
            continue
        if material is not None and material.fingerprint == fp:
            diags.add(
                Diagnostic(
                    at,
                    f'key "{name}": previous fingerprint {fp} is the pinned fingerprint of its own material',
                )
            )
            continue
        seen[fp] = at
        out.append(PreviousGeneration(fp, state, doc.loc(("keys", name, "previous", i))))
    return tuple(out)


def _key_deletion(
    doc: Doc, name: str, body: dict[str, Any], desired_state: DesiredState | None,
    diags: Diagnostics,
) -> tuple[bool, int]:
    """(deletion_protection, deletion_window_days) as planned."""
    base: DocPath = ("keys", name)
    protected = body.get("deletion_protection", False)
    if desired_state is DesiredState.ABSENT and protected is True:
        diags.add(
            Diagnostic(
                doc.loc((*base, "deletion_protection")),
                f'key "{name}" has state "absent" and deletion_protection true: '
                "lift the protection (deletion_protection: false) first",
            )
        )
    window = body.get("deletion_window_days", DEFAULT_DELETION_WINDOW_DAYS)
    if isinstance(window, float):
        # JSON Schema counts 7.0 as an integer; a planned window must be what was written.
        diags.add(
            Diagnostic(
                doc.loc((*base, "deletion_window_days")),
                "deletion_window_days: write a whole number of days (7..366), without a decimal point",
            )
        )
    return protected is True, window if isinstance(window, int) else DEFAULT_DELETION_WINDOW_DAYS


#: What `adopt:` may name: a KeyId, a key ARN (acs:kms:REGION:ACCOUNT:key/KEY-ID), or an alias.
KEY_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,127}")
KEY_ARN_RE = re.compile(r"acs:kms:[a-z0-9-]{1,64}:[0-9]{1,32}:key/[A-Za-z0-9][A-Za-z0-9-]{0,127}")
def _key_adopt(
    doc: Doc, name: str, body: dict[str, Any], state: SetState, diags: Diagnostics
) -> tuple[str | None, dict[str, str], dict[str, Location]]:
    """What `adopt:` names: the string form's KeyId, ARN or alias; or the map form {TARGET: REF}, each
    entry checked and claimed (its targets are checked against the key's once every file is read)."""
    if "adopt" not in body:
        return None, {}, {}
    value = body["adopt"]
    if isinstance(value, dict):
        refs: dict[str, str] = {}
        where: dict[str, Location] = {}
        for target, ref in value.items():
            at = doc.loc(("keys", name, "adopt", target))
            if isinstance(target, str) and _adopt_ref(doc, name, ref, at, state, diags, target):
                refs[target], where[target] = ref, at
        return None, refs, where
    at = doc.loc(("keys", name, "adopt"))
    return (value if _adopt_ref(doc, name, value, at, state, diags) else None), {}, {}


def _adopt_ref(
    doc: Doc, name: str, value: Any, at: Location, state: SetState, diags: Diagnostics,
    target: str | None = None,
) -> bool:
    """Whether `value` is a well-formed KeyId, ARN or alias that no other key of the set adopts (in
    that target, for a map entry); else False, with the error."""
    if not isinstance(value, str):
        return False  # the schema reported it
    if value.startswith("alias/"):
        problem = alias_problem(value, doc.show if doc.tainted else None)
    elif value.startswith("acs:"):
        problem = None if KEY_ARN_RE.fullmatch(value) else (
            f"{doc.show(value)} is not a KMS key ARN (acs:kms:REGION:ACCOUNT:key/KEY-ID)"
        )
    else:
        problem = None if KEY_ID_RE.fullmatch(value) else (
            f"{doc.show(value)} is neither a KeyId, a key ARN nor an alias"
        )
    if problem:
        diags.add(Diagnostic(at, f'key "{name}": adopt: {problem}'))
        return False
    what, why = f"adopt: {value} is also adopted by", "one KMS key is one key of the set"
    claimed = value if target is None or target == DEFAULT_TARGET else f"{target}\0{value}"
    return _claim(state.adopted, claimed, name, at, what, why, diags)


def _key_targets(
    doc: Doc, name: str, body: dict[str, Any], state: SetState
) -> tuple[str, ...]:
    """`targets:` as written (checked against the set's targets by resolve_targets); () for all."""
    raw = body.get("targets")
    if not isinstance(raw, list):
        return ()
    kept = [(t, doc.loc(("keys", name, "targets", i))) for i, t in enumerate(raw) if isinstance(t, str)]
    state.target_locs[name] = (doc.loc(("keys", name, "targets")), tuple(at for _, at in kept))
    return tuple(t for t, _ in kept)


def resolve_targets(keys: Sequence[DesiredKey], state: SetState) -> tuple[list[DesiredKey], Diagnostics]:
    """Every key's targets, once every file is read: each a declared target (default: all), in the
    set's order; and the `adopt:` forms that fit them (a KeyId or ARN names one key, so a key of several
    targets adopts by a map {TARGET: KEY-ID}; an alias works in every target)."""
    import difflib

    declared = state.target_names
    several = state.backends is not None
    diags = Diagnostics()
    out: list[DesiredKey] = []
    for key in keys:
        errors = len(diags)
        where, item_at = state.target_locs.get(key.name, (key.location, ()))
        seen: set[str] = set()
        for t, at in zip(key.targets, item_at, strict=False):
            if t in seen:
                diags.add(Diagnostic(at, f'key "{key.name}": targets: {show_value(t)} is listed twice'))
            elif t not in declared:
                if not several:
                    why = (
                        f'this set has one backend, whose target is "{DEFAULT_TARGET}": name targets in '
                        "backends: first, or drop targets:"
                    )
                else:
                    close = difflib.get_close_matches(t, declared, n=1)
                    hint = f' (did you mean "{close[0]}"?)' if close else ""
                    why = f"the set's targets are {', '.join(declared)}{hint}"
                message = f'key "{key.name}": targets: {show_value(t)} is not a target; {why}'
                diags.add(Diagnostic(at, message))
            seen.add(t)
        chosen = tuple(t for t in declared if t in seen) if key.targets else declared
        adopt, adopt_at = key.adopt, key.adopt_at
        for t, at in key.adopt_targets_at.items():
            if t not in chosen:
                diags.add(
                    Diagnostic(
                        at,
                        f'key "{key.name}": adopt: {show_value(t)} is not one of the key\'s targets '
                        f"({', '.join(chosen)})",
                    )
                )
        if key.adopt_targets and not several and DEFAULT_TARGET in key.adopt_targets:
            adopt, adopt_at = key.adopt_targets[DEFAULT_TARGET], key.adopt_targets_at[DEFAULT_TARGET]
        if adopt is not None and several and len(chosen) > 1 and not adopt.startswith("alias/"):
            entries = ", ".join(f"{t}: KEY-ID" for t in chosen)
            diags.add(
                Diagnostic(
                    key.adopt_at or where,
                    f'key "{key.name}": adopt: {adopt} names one key, but the key lives in {len(chosen)} '
                    f"targets ({', '.join(chosen)}): write adopt: {{{entries}}} (an alias may name the key "
                    "of every target)",
                )
            )
        if len(diags) > errors:
            continue
        out.append(
            replace(
                key, targets=chosen, adopt=adopt, adopt_at=adopt_at,
                adopt_targets=key.adopt_targets if several else {},
                adopt_targets_at=key.adopt_targets_at if several else {},
            )
        )
    return out, diags


def _claim(
    taken: dict[str, tuple[str, Location]], value: str, name: str, at: Location, what: str, why: str,
    diags: Diagnostics,
) -> bool:
    """Record that key `name` claims `value` (written at `at`); False, and an error, when another key
    of the set claimed it first."""
    if value in taken:
        other, where = taken[value]
        diags.add(Diagnostic(at, f'key "{name}": {what} key "{other}" (at {where}); {why}'))
        return False
    taken[value] = (name, at)
    return True


def _key_moved_from(
    doc: Doc, name: str, body: dict[str, Any], state: SetState, diags: Diagnostics
) -> tuple[str, ...]:
    """The key's earlier names, each claimed by one key of the set (moved_names checks the rest)."""
    raw = body.get("moved_from")
    if not isinstance(raw, list):
        return ()  # absent, or the schema reported it
    out: list[str] = []
    for i, old in enumerate(raw):
        if not isinstance(old, str):
            continue
        at = doc.loc(("keys", name, "moved_from", i))
        if old == name:
            diags.add(Diagnostic(at, f'key "{name}": moved_from lists the key\'s own name'))
        elif old in out:
            diags.add(Diagnostic(at, f'key "{name}": moved_from lists "{old}" twice'))
        else:
            what = f'"{old}" is also in the moved_from of'
            if _claim(state.moved, old, name, at, what, "a key moves to one name", diags):
                out.append(old)
    return tuple(out)


def moved_names(state: SetState) -> Diagnostics:
    """A moved_from name that is also declared as a key: the set says both one key and two."""
    return Diagnostics(
        Diagnostic(
            at,
            f'key "{new}": moved_from "{old}", but key "{old}" is declared too (at {state.names[old]}); '
            f'a renamed key has one name: remove key "{old}" or this moved_from entry',
        )
        for old, (new, at) in sorted(state.moved.items())
        if old in state.names
    )


def one_material_per_key(keys: Sequence[DesiredKey], fingerprints: Mapping[str, str]) -> Diagnostics:
    """One material (one fingerprint) in two keys of one target: an error at the later key naming the
    first (DESIGN section 10: per target; the same material in several targets is BYOK's normal case).
    `fingerprints`: the material read, by key name; a key without one counts with its pin."""
    first: dict[tuple[str, str], DesiredKey] = {}
    out = Diagnostics()
    for key in keys:
        fp = fingerprints.get(key.name) or (key.material.fingerprint if key.material else None)
        if fp is None:
            continue
        clash = next(((t, first[t, fp]) for t in key.targets if (t, fp) in first), None)
        for t in key.targets:
            first.setdefault((t, fp), key)
        if clash is None:
            continue
        target, other = clash
        within = "" if target == DEFAULT_TARGET else f' in target "{target}"'
        out.add(
            Diagnostic(
                key.location,
                f'key "{key.name}": its material ({fp}) is also the material of key "{other.name}" '
                f"({other.location}){within}: one material belongs to one key of a set; to rename a key, "
                f"give the new name moved_from: [{other.name}] instead of a second key",
            )
        )
    return out


def _check_material_block(
    doc: Doc, name: str, body: dict[str, Any], base: DocPath, desired_state: DesiredState | None,
    diags: Diagnostics,
) -> MaterialSource | None:
    block = body.get("material")
    if block is None:
        if desired_state is not DesiredState.ABSENT and "material" not in body:
            diags.add(
                Diagnostic(
                    doc.key_loc(base),
                    f'key "{name}" has no material: give material with one of file, env, command '
                    "(only a key with state absent may omit it)",
                )
            )
        return None
    if not isinstance(block, dict):
        return None
    at = doc.loc((*base, "material"))
    given = [k for k in ("file", "env", "command") if k in block]
    if len(given) != 1:
        detail = "none of them is given" if not given else "got " + " and ".join(given)
        diags.add(
            Diagnostic(at, f'key "{name}": material takes exactly one of file, env, command; {detail}')
        )
        return None
    kind = SourceKind(given[0])
    value = block[given[0]]
    _check_env_source_names(doc, name, base, block, diags)
    pass_env = block.get("pass_env")
    if pass_env is not None and kind is not SourceKind.COMMAND:
        diags.add(
            Diagnostic(doc.key_loc((*base, "material", "pass_env")),
                       f'key "{name}": material.pass_env is for command sources only')
        )
        return None
    if kind is SourceKind.FILE and isinstance(value, str):
        return MaterialSource(
            kind=kind, file=_resolve(doc.folder, value), passphrase_env=block.get("passphrase_env"),
            fingerprint=block.get("fingerprint"), location=at,
        )
    if kind is SourceKind.ENV and isinstance(value, str):
        return MaterialSource(
            kind=kind, env=value, passphrase_env=block.get("passphrase_env"),
            fingerprint=block.get("fingerprint"), location=at,
        )
    if kind is SourceKind.COMMAND and isinstance(value, list) and all(isinstance(v, str) for v in value):
        names = tuple(v for v in pass_env or () if isinstance(v, str))
        _check_pass_env_names(doc, name, base, names, diags)
        return MaterialSource(
            kind=kind, command=tuple(value), passphrase_env=block.get("passphrase_env"),
            fingerprint=block.get("fingerprint"), location=at, pass_env=names,
        )
    return None  # ill-typed: the schema reported it


def _check_env_source_names(
    doc: Doc, name: str, base: DocPath, block: dict[str, Any], diags: Diagnostics
) -> None:
    """A credential is never material: `env:` and `passphrase_env` may not name a never-readable
    variable (else a plan would print a check value of it, or say whether it is set, how long and in
    what alphabet). Names only: a material variable holds -----BEGIN by right."""
    from provisioner.trust import never_readable_rule

    for source_field in ("env", "passphrase_env"):
        variable = block.get(source_field)
        rule = never_readable_rule(variable, {}) if isinstance(variable, str) else None
        if rule is not None:
            where = doc.loc((*base, "material", source_field))
            what = f'key "{name}": material.{source_field} {doc.show(variable)}'
            diags.add(Diagnostic(where, f"{what}: {rule}"))


def _check_pass_env_names(
    doc: Doc, name: str, base: DocPath, names: tuple[str, ...], diags: Diagnostics
) -> None:
    """The name rule of pass_env, here so it holds for --offline-material too; the value rule
    applies when the material is read."""
    from provisioner.trust import never_readable_rule

    for i, variable in enumerate(names):
        rule = never_readable_rule(variable, {})
        if rule is not None:
            where = doc.loc((*base, "material", "pass_env", i))
            diags.add(Diagnostic(where, f'key "{name}": material.pass_env {variable}: {rule}'))
