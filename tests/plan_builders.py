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
    TAG_NAME,
    TAG_STACK,
    ActualKey,
    DesiredKey,
    DesiredState,
    KeySpec,
    KeyStatus,
    KeyUsage,
    LiveState,
    Location,
    ManifestSet,
    MaterialSource,
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
    )


def actual_key(spec: Mapping[str, Any]) -> ActualKey:
    s = expand(dict(spec))
    name = s["name"]
    key_id = s.get("key_id", f"key-{name}")
    tags = {TAG_STACK: s.get("stack", STACK), TAG_NAME: name}
    recorded = s.get("fingerprint", fp(name))
    if recorded is not None:
        tags[TAG_FINGERPRINT] = recorded
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
) -> LiveState:
    by_name: dict[str, list[ActualKey]] = {}
    owners = dict(alias_owners or {})
    for k in keys:
        assert k.name is not None
        by_name.setdefault(k.name, []).append(k)
        for a in k.aliases:
            owners[a] = k.key_id
    return LiveState(
        stack=STACK,
        keys={n: tuple(ks) for n, ks in sorted(by_name.items())},
        alias_owners=owners,
        foreign_keys=frozenset(foreign_keys),
    )


def default_fingerprints(desired: ManifestSet, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """What the caller would read: each key's material fingerprint, by default fp(name)."""
    out = {d.name: fp(d.name) for d in desired.keys if d.material is not None}
    out.update(expand(dict(overrides or {})))
    return out
