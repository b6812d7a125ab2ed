"""Builders for DesiredKey / ActualKey / LiveState from short dicts, shared by the planner and drift tests.

Defaults describe a healthy, in-sync key named NAME in stack `payments`, so a test states only what
differs. Strings `fp:LABEL` stand for a fake fingerprint `sha256:<sha256(LABEL)>`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provisioner.model import (
    TAG_FINGERPRINT,
    TAG_GENERATION,
    TAG_NAME,
    TAG_STACK,
    ActualKey,
    AdoptedKey,
    DesiredKey,
    DesiredState,
    KeySpec,
    KeyStatus,
    KeyUsage,
    Lease,
    LiveState,
    Location,
    ManifestSet,
    MaterialSource,
    Origin,
    PreviousGeneration,
    ProtectionLevel,
    SourceKind,
)

STACK = "payments"
INSTANCE = "kst-hzz6test"


def fp(label: str) -> str:
    return "sha256:" + hashlib.sha256(label.encode()).hexdigest()


def expand(value: Any) -> Any:
    """Replace `fp:LABEL` strings anywhere in a structure by their fake fingerprint."""
    if isinstance(value, str) and value.startswith("fp:"):
        return fp(value[3:])
    if isinstance(value, dict):
        return {k: expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v) for v in value]
    return value


def when(value: Any) -> datetime | None:
    """A time from YAML: a datetime (naive means UTC), an RFC 3339 string, or null/never."""
    if value is None or value == "never":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def desired_key(name: str, spec: Mapping[str, Any] | None = None) -> DesiredKey:
    s = dict(spec or {})
    material: MaterialSource | None = None
    if s.get("material", "default") is not None:
        m = s.get("material") or {}
        material = MaterialSource(
            kind=SourceKind.FILE,
            file=Path(m.get("file", f"/manifests/keys/{name}.pem")),
            fingerprint=expand(m.get("pin")),
            location=Location("manifests/keys.yaml", 10, 5),
        )
    return DesiredKey(
        stack=STACK,
        name=name,
        spec=KeySpec(s.get("spec", "RSA_2048")),
        usage=KeyUsage(s.get("usage", "SIGN/VERIFY")),
        protection=ProtectionLevel(s.get("protection", "SOFTWARE")),
        instance=s.get("instance", INSTANCE),
        description=s.get("description", ""),
        tags=dict(s.get("tags", {})),
        aliases=tuple(sorted(s.get("aliases", []))),
        expiry=when(s.get("expiry")),
        deletion_protection=bool(s.get("deletion_protection", False)),
        deletion_window_days=int(s.get("deletion_window_days", 30)),
        material=material,
        state=DesiredState(s.get("state", "present")),
        location=Location("manifests/keys.yaml", 3, 3),
        adopt=s.get("adopt"),
        moved_from=tuple(s.get("moved_from", ())),
        adopt_at=Location("manifests/keys.yaml", 4, 12) if "adopt" in s else None,
        lease=Lease(*s["lease"]) if "lease" in s else None,  # (lease, renew_before), e.g. ("30d", "7d")
        previous=tuple(  # [{fp: ..., state: ...}], newest first
            PreviousGeneration(
                expand(p["fp"]), DesiredState(p["state"]), Location("manifests/keys.yaml", 20 + i, 9)
            )
            for i, p in enumerate(s.get("previous", []))
        ),
    )


def actual_key(spec: Mapping[str, Any]) -> ActualKey:
    s = expand(dict(spec))
    name = s["name"]
    key_id = s.get("key_id", f"key-{name}")
    # `stack: null`: a key no stack manages (made outside the tool): no reserved tag at all.
    managed = s.get("stack", STACK) is not None
    tags = {TAG_STACK: s.get("stack", STACK), TAG_NAME: name} if managed else {}
    recorded = s.get("fingerprint", fp(name) if managed else None)
    if recorded is not None:
        tags[TAG_FINGERPRINT] = recorded
    if "generation" in s:
        tags[TAG_GENERATION] = str(s["generation"])
    tags.update(s.get("tags", {}))
    status = KeyStatus(s.get("status", "enabled"))
    deletion_date = when(s.get("deletion_date"))
    if status is KeyStatus.PENDING_DELETION and deletion_date is None:
        deletion_date = datetime(2030, 1, 1, tzinfo=UTC)
    return ActualKey(
        key_id=key_id,
        arn=f"acs:kms:cn-hangzhou:1234:key/{key_id}",
        status=status,
        spec=KeySpec(s.get("spec", "RSA_2048")),
        usage=KeyUsage(s.get("usage", "SIGN/VERIFY")),
        protection=ProtectionLevel(s.get("protection", "SOFTWARE")),
        instance=s.get("instance", INSTANCE),
        description=s.get("description", ""),
        created_at=when(s.get("created_at", "2025-01-01T00:00:00Z")) or datetime(2025, 1, 1, tzinfo=UTC),
        material_expires_at=when(s.get("material_expires_at")),
        deletion_date=deletion_date,
        deletion_protection=bool(s.get("deletion_protection", False)),
        primary_key_version="v1",
        tags=tags,
        aliases=tuple(sorted(s.get("aliases", []))),
        public_key_fingerprint=s.get("public_key_fingerprint"),
        origin=Origin(s.get("origin", "EXTERNAL")),
        key_versions=s.get("key_versions"),
    )


def manifest(keys: Iterable[DesiredKey]) -> ManifestSet:
    return ManifestSet(
        stack=STACK,
        keys=tuple(sorted(keys, key=lambda k: k.name)),
        backend=None,
        files=("manifests/keys.yaml",),
    )


def live_state(
    keys: Iterable[ActualKey],
    alias_owners: Mapping[str, str] | None = None,
    foreign_keys: Iterable[str] = (),
    adopted: Mapping[str, AdoptedKey] | None = None,
) -> LiveState:
    by_name: dict[str, list[ActualKey]] = {}
    owners = dict(alias_owners or {})
    for k in keys:
        assert k.name is not None
        by_name.setdefault(k.name, []).append(k)
    to_adopt = [a.key for a in (adopted or {}).values() if a.key is not None]
    for k in [*(k for ks in by_name.values() for k in ks), *to_adopt]:
        for a in k.aliases:
            owners[a] = k.key_id
    return LiveState(
        stack=STACK,
        keys={n: tuple(ks) for n, ks in sorted(by_name.items())},
        alias_owners=owners,
        foreign_keys=frozenset(foreign_keys),
        adopted=dict(adopted or {}),
    )


def adopted_keys(
    desired: ManifestSet, specs: Mapping[str, Any] | None, live: Iterable[ActualKey]
) -> dict[str, AdoptedKey]:
    """name -> what its `adopt:` names: a live key spec (actual_key's), the id of a key in `live` (one of
    the stack's own), or null for a reference that names no key."""
    by_id = {k.key_id: k for k in live}
    out: dict[str, AdoptedKey] = {}
    for d in desired.keys:
        if d.adopt is None or d.name not in (specs or {}):
            continue
        spec = (specs or {})[d.name]
        key = by_id[spec] if isinstance(spec, str) else None if spec is None else actual_key(spec)
        out[d.name] = AdoptedKey(d.adopt, key, None if key is not None else "no key exists")
    return out


def default_fingerprints(desired: ManifestSet, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """What the caller would read: each key's material fingerprint, by default fp(name)."""
    out = {d.name: fp(d.name) for d in desired.keys if d.material is not None}
    out.update(expand(dict(overrides or {})))
    return out
