"""The one I/O seam: KMS actions as snake_case methods over a transport that speaks the RPC API.

`Transport.call(action, params)` takes parameters in the SDK's `Request.from_map` shape
(wire names; lists as Python lists, JSON-valued parameters already JSON strings) and returns
the response body as the wire JSON (a dict). `Kms` turns that into typed values. Nothing here
knows whether the other side is the official SDK or the embedded engine.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from provisioner.model import (
    KeySpec,
    KeyState,
    KeyUsage,
    Origin,
    ProtectionLevel,
    WrappingAlgorithm,
    parse_time,
)

# Defined with the other wire facts, which the emulator shares; still importable from here.
from provisioner.wire import QPS_MAX as QPS_MAX
from provisioner.wire import QPS_MIN as QPS_MIN
from provisioner.wire import QUOTA_GROUPS as QUOTA_GROUPS

DEFAULT_QPS: Mapping[str, float] = {"create": 10.0, "read": 20.0, "write": 10.0, "crypto": 200.0}
#: The rates a --qps may set: below, one call would wait hours (1e-300: for ever, and 1/rate overflows);
#: above, no KMS quota is near and the limiter's interval underflows into no limit at all.

#: Tags one TagResource call may carry (vendor reference: "you can add up to 10 tags").
TAG_RESOURCE_MAX = 10

READ_ONLY_ACTIONS = frozenset(a for a, g in QUOTA_GROUPS.items() if g == "read")


class Transport(Protocol):
    """Sends one RPC action; raises KmsApiError for an error answer, BackendError when unreachable."""

    def call(self, action: str, params: Mapping[str, Any]) -> dict[str, Any]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class KeyMetadata:
    key_id: str
    arn: str
    key_state: KeyState
    key_spec: KeySpec
    key_usage: KeyUsage
    origin: Origin
    protection_level: ProtectionLevel
    instance_id: str | None
    description: str
    creation_date: datetime
    material_expire_time: datetime | None
    delete_date: datetime | None
    deletion_protection: bool
    primary_key_version: str

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> KeyMetadata:
        return cls(
            key_id=m["KeyId"],
            arn=m.get("Arn", ""),
            key_state=KeyState(m["KeyState"]),
            key_spec=KeySpec(m["KeySpec"]),
            key_usage=KeyUsage(m["KeyUsage"]),
            origin=Origin(m.get("Origin", "EXTERNAL")),
            protection_level=ProtectionLevel(m.get("ProtectionLevel", "SOFTWARE")),
            instance_id=m.get("DKMSInstanceId") or None,
            description=m.get("Description", "") or "",
            creation_date=parse_time(m.get("CreationDate")) or datetime.fromtimestamp(0, UTC),
            material_expire_time=parse_time(m.get("MaterialExpireTime")),
            delete_date=parse_time(m.get("DeleteDate")),
            deletion_protection=m.get("DeletionProtection") == "Enabled",
            primary_key_version=m.get("PrimaryKeyVersion", "") or "",
        )


@dataclass(frozen=True)
class ImportParameters:
    """What GetParametersForImport returns. The token is a secret: never print or store it."""

    key_id: str
    public_key_der: bytes
    import_token: str
    token_expire_time: datetime | None

    def __repr__(self) -> str:
        return f"ImportParameters(key_id={self.key_id!r}, import_token=<redacted>)"


@dataclass(frozen=True)
class AliasEntry:
    alias_name: str
    key_id: str


@dataclass(frozen=True)
class TagRow:
    resource_id: str
    key: str
    value: str


class Kms:
    """The KMS API as typed methods, one per action used by the provisioner."""

    def __init__(
        self,
        transport: Transport,
        *,
        description: str = "",
        info: Mapping[str, str] | None = None,
        state_path: Path | None = None,
    ) -> None:
        self.transport = transport
        self.description = description  # e.g. "local backend .provision/kms.db", for the user
        self.info = dict(info or {})  # e.g. {"type": "alibaba", "region": ...}: the plan's `backend`
        #: The local backend's state file (where its lock row lives); None for alibaba.
        self.state_path = state_path

    def close(self) -> None:
        self.transport.close()

    def _call(self, action: str, **params: Any) -> dict[str, Any]:
        return self.transport.call(action, {k: v for k, v in params.items() if v is not None})

    # keys
    def create_key(
        self,
        *,
        spec: KeySpec,
        usage: KeyUsage,
        protection: ProtectionLevel,
        instance: str | None,
        description: str,
        tags: Mapping[str, str],
    ) -> KeyMetadata:
        body = self._call(
            "CreateKey",
            Origin=Origin.EXTERNAL.value,
            KeySpec=spec.value,
            KeyUsage=usage.value,
            ProtectionLevel=protection.value,
            DKMSInstanceId=instance,
            Description=description,
            Tags=_tags_json(tags) if tags else None,
        )
        return KeyMetadata.from_wire(body["KeyMetadata"])

    def describe_key(self, key_id: str) -> KeyMetadata:
        return KeyMetadata.from_wire(self._call("DescribeKey", KeyId=key_id)["KeyMetadata"])

    def list_keys(self, filters: Sequence[Mapping[str, Any]] | None = None) -> list[str]:
        ids: list[str] = []
        for page in self._pages("ListKeys", Filters=json.dumps(filters) if filters else None):
            ids.extend(k["KeyId"] for k in page.get("Keys", {}).get("Key", []))
        return ids

    def update_key_description(self, key_id: str, description: str) -> None:
        self._call("UpdateKeyDescription", KeyId=key_id, Description=description)

    def enable_key(self, key_id: str) -> None:
        self._call("EnableKey", KeyId=key_id)

    def disable_key(self, key_id: str) -> None:
        self._call("DisableKey", KeyId=key_id)

    def schedule_key_deletion(self, key_id: str, pending_window_days: int) -> None:
        self._call("ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays=pending_window_days)

    def cancel_key_deletion(self, key_id: str) -> None:
        self._call("CancelKeyDeletion", KeyId=key_id)

    def set_deletion_protection(self, key_id: str, arn: str, enabled: bool) -> None:
        self._call(
            "SetDeletionProtection",
            ProtectedResourceArn=arn,
            EnableDeletionProtection=enabled,
            DeletionProtectionDescription="managed by byok-provisioner" if enabled else None,
        )

    # material
    def get_parameters_for_import(self, key_id: str, algorithm: WrappingAlgorithm) -> ImportParameters:
        import base64

        body = self._call(
            "GetParametersForImport",
            KeyId=key_id,
            WrappingAlgorithm=algorithm.value,
            WrappingKeySpec=algorithm.wrapping_key_spec.value,
        )
        return ImportParameters(
            key_id=body.get("KeyId", key_id),
            public_key_der=base64.b64decode(body["PublicKey"]),
            import_token=body["ImportToken"],
            token_expire_time=parse_time(body.get("TokenExpireTime")),
        )

    def import_key_material(
        self, key_id: str, encrypted_material_b64: str, import_token: str, expire_unix: int
    ) -> None:
        self._call(
            "ImportKeyMaterial",
            KeyId=key_id,
            EncryptedKeyMaterial=encrypted_material_b64,
            ImportToken=import_token,
            KeyMaterialExpireUnix=expire_unix,
        )

    def delete_key_material(self, key_id: str) -> None:
        self._call("DeleteKeyMaterial", KeyId=key_id)

    def list_key_versions(self, key_id: str) -> list[str]:
        """The ids of the key's versions."""
        out: list[str] = []
        for page in self._pages("ListKeyVersions", KeyId=key_id):
            out.extend(v["KeyVersionId"] for v in page.get("KeyVersions", {}).get("KeyVersion", []))
        return out

    def get_public_key(self, key_id: str, key_version_id: str) -> str:
        """The key's public key, PEM."""
        body = self._call("GetPublicKey", KeyId=key_id, KeyVersionId=key_version_id)
        return str(body["PublicKey"])

    # instances
    def list_kms_instances(self) -> list[str]:
        out: list[str] = []
        for page in self._pages("ListKmsInstances"):
            out.extend(i["KmsInstanceId"] for i in page.get("KmsInstances", {}).get("KmsInstance", []))
        return out

    def get_kms_instance(self, instance_id: str) -> dict[str, Any]:
        return dict(self._call("GetKmsInstance", KmsInstanceId=instance_id).get("KmsInstance", {}))

    # aliases
    def create_alias(self, alias: str, key_id: str) -> None:
        self._call("CreateAlias", AliasName=alias, KeyId=key_id)

    def update_alias(self, alias: str, key_id: str) -> None:
        self._call("UpdateAlias", AliasName=alias, KeyId=key_id)

    def delete_alias(self, alias: str) -> None:
        self._call("DeleteAlias", AliasName=alias)

    def list_aliases(self) -> list[AliasEntry]:
        out: list[AliasEntry] = []
        for page in self._pages("ListAliases"):
            out.extend(
                AliasEntry(a["AliasName"], a["KeyId"]) for a in page.get("Aliases", {}).get("Alias", [])
            )
        return out

    def list_aliases_by_key_id(self, key_id: str) -> list[str]:
        out: list[str] = []
        for page in self._pages("ListAliasesByKeyId", KeyId=key_id):
            out.extend(a["AliasName"] for a in page.get("Aliases", {}).get("Alias", []))
        return out

    # tags
    def tag_resource(self, key_id: str, tags: Mapping[str, str]) -> None:
        # The TagResource reference says "you can add up to 10 tags": send at most that many a call.
        items = sorted(tags.items())
        for start in range(0, len(items), TAG_RESOURCE_MAX):
            batch = dict(items[start : start + TAG_RESOURCE_MAX])
            self._call("TagResource", KeyId=key_id, Tags=_tags_json(batch))

    def untag_resource(self, key_id: str, tag_keys: Sequence[str]) -> None:
        self._call("UntagResource", KeyId=key_id, TagKeys=json.dumps(list(tag_keys)))

    def list_resource_tags(self, key_id: str) -> dict[str, str]:
        body = self._call("ListResourceTags", KeyId=key_id)
        return {t["TagKey"]: t["TagValue"] for t in body.get("Tags", {}).get("Tag", [])}

    def list_tag_resources(
        self,
        *,
        resource_ids: Sequence[str] = (),
        tags: Mapping[str, str] | None = None,
    ) -> list[TagRow]:
        """Tag rows of the given keys (at most 50 ids a call), or of the keys carrying `tags`."""
        return [row for page in self.tag_resource_pages(resource_ids=resource_ids, tags=tags) for row in page]

    def tag_resource_pages(
        self,
        *,
        resource_ids: Sequence[str] = (),
        tags: Mapping[str, str] | None = None,
    ) -> Iterator[list[TagRow]]:
        """list_tag_resources one page at a time, so a caller can act on a page while the next is read."""
        if len(resource_ids) > 50:
            raise ValueError("ListTagResources takes at most 50 resource ids")
        token: str | None = None
        while True:
            body = self._call(
                "ListTagResources",
                ResourceType="key",
                ResourceId=list(resource_ids) or None,
                Tag=[{"Key": k, "Value": v} for k, v in (tags or {}).items()] or None,
                NextToken=token,
            )
            yield [
                TagRow(r["ResourceId"], r["TagKey"], r["TagValue"])
                for r in body.get("TagResources", {}).get("TagResource", [])
            ]
            token = body.get("NextToken") or None
            if not token:
                return

    def _pages(self, action: str, **params: Any) -> Iterator[dict[str, Any]]:
        page_number = 1
        while True:
            body = self._call(action, PageNumber=page_number, PageSize=100, **params)
            yield body
            total = int(body.get("TotalCount", 0))
            if page_number * 100 >= total:
                return
            page_number += 1


def _tags_json(tags: Mapping[str, str]) -> str:
    return json.dumps([{"TagKey": k, "TagValue": v} for k, v in sorted(tags.items())])
