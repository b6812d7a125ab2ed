"""The RPC layer of the KMS emulator: flattened wire parameters in, the SDK's response shapes out.

It only parses parameters, routes to the engine and serialises; every rule and every error code is
the engine's (models.py), or, for an action only one family's keys answer, that family's module
(emulator/families.py routes to it). It does no HTTP: the server hands it the merged query and form
fields.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from xml.etree import ElementTree

from provisioner.emulator.families import Operation, operations
from provisioner.emulator.models import (
    Alias,
    Instance,
    Key,
    KeyVersion,
    KmsEngine,
    Page,
    TagRow,
    b64_text,
    parse_bool,
    parse_filters_json,
    parse_int,
    parse_string_list_json,
    parse_tags_json,
    unknown_action,
)
from provisioner.model import format_time
from provisioner.wire import QUOTA_GROUPS

Handler = Callable[["KmsResponses", Mapping[str, str]], dict[str, Any]]


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """The SDK's `Request.from_map` shape flattened as the SDK puts it on the wire.

    Same walk as `alibabacloud_tea_openapi.utils.Utils.query`: dicts become `Name.Key`, lists
    `Name.1`, `Name.2`, ..., None is dropped, everything else is `str(value)` (so True -> "True")."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value, start=1):
                walk(f"{prefix}.{index}", item)
        elif isinstance(value, bytes):
            out[prefix] = value.decode("utf-8")
        else:
            out[prefix] = str(value)

    walk("", params)
    return out


def _time(value: datetime | None) -> str:
    return "" if value is None else format_time(value)


def _indexed(params: Mapping[str, str], name: str) -> list[str]:
    """`Name.1`, `Name.2`, ... in index order."""
    pattern = re.compile(rf"{re.escape(name)}\.(\d+)")
    found = sorted((int(m.group(1)), v) for k, v in params.items() if (m := pattern.fullmatch(k)) is not None)
    return [v for _, v in found]


def _indexed_tags(params: Mapping[str, str], name: str) -> list[tuple[str, str]]:
    """`Name.N.Key` / `Name.N.Value` pairs in index order (a missing value is "")."""
    pattern = re.compile(rf"{re.escape(name)}\.(\d+)\.Key")
    found = sorted((int(m.group(1)), v) for k, v in params.items() if (m := pattern.fullmatch(k)) is not None)
    return [(key, params.get(f"{name}.{index}.Value", "")) for index, key in found]


def _key_metadata(key: Key) -> dict[str, Any]:
    """DescribeKey's KeyMetadata. Fields the service sends only in some states are left out, not
    sent as "": DeleteDate outside PendingDeletion; RotationInterval, LastRotationDate and
    NextRotationDate always, since a key with imported material never rotates automatically."""
    meta: dict[str, Any] = {
        "KeyId": key.key_id,
        "Arn": key.arn,
        "KeyState": key.state.value,
        "KeySpec": key.spec.value,
        "KeyUsage": key.usage.value,
        "Origin": key.origin.value,
        "ProtectionLevel": key.protection.value,
        "DKMSInstanceId": key.instance_id,
        "Description": key.description,
        "CreationDate": _time(key.creation_date),
        "MaterialExpireTime": _time(key.material_expire_time),
        "DeletionProtection": "Enabled" if key.deletion_protection else "Disabled",
        "DeletionProtectionDescription": key.deletion_protection_description,
        "PrimaryKeyVersion": key.primary_key_version,
        "Creator": key.creator,
        "AutomaticRotation": "Disabled",
    }
    if key.delete_date is not None:
        meta["DeleteDate"] = _time(key.delete_date)
    return meta


#: Characters XML 1.0 cannot carry even as references (C0 controls but tab, newline, return;
#: surrogates; U+FFFE/U+FFFF). Such a character in a description is sent as U+FFFD in XML only.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return _NOT_XML.sub("\ufffd", str(value))


def _xml_fill(element: ElementTree.Element, value: Any) -> None:
    """A dict becomes child elements; a list repeats its parent element, one per item, the way
    the SDKs' XML reader folds repeated elements back into a list."""
    if isinstance(value, Mapping):
        for name, item in value.items():
            if item is None:
                continue
            if isinstance(item, list | tuple):
                for entry in item:
                    _xml_fill(ElementTree.SubElement(element, str(name)), entry)
            else:
                _xml_fill(ElementTree.SubElement(element, str(name)), item)
    else:
        element.text = _xml_text(value)


def to_xml(root: str, body: Mapping[str, Any]) -> bytes:
    """An answer or error body as the service's XML (`Format=XML`), under one root element."""
    element = ElementTree.Element(root)
    _xml_fill(element, body)
    text: str = ElementTree.tostring(element, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-8"?>' + text).encode("utf-8")


def _paged(page: Page[Any], outer: str, inner: str, item: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    return {
        outer: {inner: [item(i) for i in page.items]},
        "TotalCount": page.total_count,
        "PageNumber": page.page_number,
        "PageSize": page.page_size,
    }


def _alias(alias: Alias) -> dict[str, Any]:
    return {"AliasName": alias.alias_name, "AliasArn": alias.alias_arn, "KeyId": alias.key_id}


def _version(version: KeyVersion) -> dict[str, Any]:
    return {
        "KeyId": version.key_id,
        "KeyVersionId": version.key_version_id,
        "CreationDate": _time(version.creation_date),
    }


def _tag_resource(row: TagRow) -> dict[str, Any]:
    return {
        "ResourceId": row.resource_id,
        "ResourceType": "key",
        "TagKey": row.tag_key,
        "TagValue": row.tag_value,
    }


class KmsResponses:
    """Routes one RPC action to the engine and shapes its answer like the vendor's."""

    def __init__(self, engine: KmsEngine) -> None:
        self.engine = engine

    def handle(self, action: str, params: Mapping[str, str]) -> dict[str, Any]:
        handler = _ACTIONS.get(action)
        if handler is not None:
            body = handler(self, params)
        elif action in _FAMILY_OPERATIONS:
            body = _FAMILY_OPERATIONS[action].handler(self.engine, params)
        else:
            raise unknown_action()
        return {"RequestId": str(uuid.uuid4()), **body}

    # -- keys ----------------------------------------------------------------------------------

    def create_key(self, p: Mapping[str, str]) -> dict[str, Any]:
        key = self.engine.create_key(
            key_spec=p.get("KeySpec"),
            key_usage=p.get("KeyUsage"),
            origin=p.get("Origin"),
            protection_level=p.get("ProtectionLevel"),
            instance_id=p.get("DKMSInstanceId"),
            description=p.get("Description"),
            tags=parse_tags_json("Tags", p.get("Tags")),
        )
        return {"KeyMetadata": _key_metadata(key)}

    def describe_key(self, p: Mapping[str, str]) -> dict[str, Any]:
        return {"KeyMetadata": _key_metadata(self.engine.describe_key(p.get("KeyId")))}

    def list_keys(self, p: Mapping[str, str]) -> dict[str, Any]:
        page = self.engine.list_keys(
            parse_int("PageNumber", p.get("PageNumber")),
            parse_int("PageSize", p.get("PageSize")),
            parse_filters_json("Filters", p.get("Filters")),
        )
        return _paged(page, "Keys", "Key", lambda k: {"KeyId": k.key_id, "KeyArn": k.arn})

    def update_key_description(self, p: Mapping[str, str]) -> dict[str, Any]:
        self.engine.update_key_description(p.get("KeyId"), p.get("Description"))
        return {}

    def enable_key(self, p: Mapping[str, str]) -> dict[str, Any]:
        self.engine.enable_key(p.get("KeyId"))
        return {}

    def disable_key(self, p: Mapping[str, str]) -> dict[str, Any]:
        self.engine.disable_key(p.get("KeyId"))
        return {}

    def schedule_key_deletion(self, p: Mapping[str, str]) -> dict[str, Any]:
        self.engine.schedule_key_deletion(
            p.get("KeyId"), parse_int("PendingWindowInDays", p.get("PendingWindowInDays"))
        )
        return {}

    def cancel_key_deletion(self, p: Mapping[str, str]) -> dict[str, Any]:
        self.engine.cancel_key_deletion(p.get("KeyId"))
        return {}

    def set_deletion_protection(self, p: Mapping[str, str]) -> dict[str, Any]:
        self.engine.set_deletion_protection(
            p.get("ProtectedResourceArn"),
            parse_bool("EnableDeletionProtection", p.get("EnableDeletionProtection")),
            p.get("DeletionProtectionDescription"),
        )
        return {}

    # -- versions ------------------------------------------------------------------------------

    def list_key_versions(self, p: Mapping[str, str]) -> dict[str, Any]:
        page = self.engine.list_key_versions(
            p.get("KeyId"),
            parse_int("PageNumber", p.get("PageNumber")),
            parse_int("PageSize", p.get("PageSize")),
        )
        return _paged(page, "KeyVersions", "KeyVersion", _version)

    def describe_key_version(self, p: Mapping[str, str]) -> dict[str, Any]:
        return {
            "KeyVersion": _version(self.engine.describe_key_version(p.get("KeyId"), p.get("KeyVersionId")))
        }

    # -- import --------------------------------------------------------------------------------

    def get_parameters_for_import(self, p: Mapping[str, str]) -> dict[str, Any]:
        params = self.engine.get_parameters_for_import(
            p.get("KeyId"), p.get("WrappingKeySpec"), p.get("WrappingAlgorithm")
        )
        return {
            "KeyId": params.key_id,
            "PublicKey": b64_text(params.public_key_der),
            "ImportToken": params.import_token,
            "TokenExpireTime": _time(params.token_expire_time),
        }

    def import_key_material(self, p: Mapping[str, str]) -> dict[str, Any]:
        self.engine.import_key_material(
            p.get("KeyId"),
            p.get("EncryptedKeyMaterial"),
            p.get("ImportToken"),
            parse_int("KeyMaterialExpireUnix", p.get("KeyMaterialExpireUnix")),
        )
        return {}

    def delete_key_material(self, p: Mapping[str, str]) -> dict[str, Any]:
        self.engine.delete_key_material(p.get("KeyId"))
        return {}

    # -- crypto --------------------------------------------------------------------------------

    def get_public_key(self, p: Mapping[str, str]) -> dict[str, Any]:
        key, pem = self.engine.get_public_key(p.get("KeyId"), p.get("KeyVersionId"))
        return {"KeyId": key.key_id, "KeyVersionId": key.primary_key_version, "PublicKey": pem}

    def asymmetric_sign(self, p: Mapping[str, str]) -> dict[str, Any]:
        key, signature = self.engine.asymmetric_sign(
            p.get("KeyId"), p.get("KeyVersionId"), p.get("Algorithm"), p.get("Digest")
        )
        return {"KeyId": key.key_id, "KeyVersionId": key.primary_key_version, "Value": b64_text(signature)}

    def asymmetric_verify(self, p: Mapping[str, str]) -> dict[str, Any]:
        key, ok = self.engine.asymmetric_verify(
            p.get("KeyId"), p.get("KeyVersionId"), p.get("Algorithm"), p.get("Digest"), p.get("Value")
        )
        return {"KeyId": key.key_id, "KeyVersionId": key.primary_key_version, "Value": ok}

    def asymmetric_encrypt(self, p: Mapping[str, str]) -> dict[str, Any]:
        key, ciphertext = self.engine.asymmetric_encrypt(
            p.get("KeyId"), p.get("KeyVersionId"), p.get("Algorithm"), p.get("Plaintext")
        )
        return {
            "KeyId": key.key_id,
            "KeyVersionId": key.primary_key_version,
            "CiphertextBlob": b64_text(ciphertext),
        }

    def asymmetric_decrypt(self, p: Mapping[str, str]) -> dict[str, Any]:
        key, plaintext = self.engine.asymmetric_decrypt(
            p.get("KeyId"), p.get("KeyVersionId"), p.get("Algorithm"), p.get("CiphertextBlob")
        )
        return {
            "KeyId": key.key_id, "KeyVersionId": key.primary_key_version, "Plaintext": b64_text(plaintext)
        }  # fmt: skip

    # -- aliases -------------------------------------------------------------------------------

    def create_alias(self, p: Mapping[str, str]) -> dict[str, Any]:
        self.engine.create_alias(p.get("AliasName"), p.get("KeyId"))
        return {}

    def update_alias(self, p: Mapping[str, str]) -> dict[str, Any]:
        self.engine.update_alias(p.get("AliasName"), p.get("KeyId"))
        return {}

    def delete_alias(self, p: Mapping[str, str]) -> dict[str, Any]:
        self.engine.delete_alias(p.get("AliasName"))
        return {}

    def list_aliases(self, p: Mapping[str, str]) -> dict[str, Any]:
        page = self.engine.list_aliases(
            parse_int("PageNumber", p.get("PageNumber")), parse_int("PageSize", p.get("PageSize"))
        )
        return _paged(page, "Aliases", "Alias", _alias)

    def list_aliases_by_key_id(self, p: Mapping[str, str]) -> dict[str, Any]:
        page = self.engine.list_aliases_by_key_id(
            p.get("KeyId"),
            parse_int("PageNumber", p.get("PageNumber")),
            parse_int("PageSize", p.get("PageSize")),
        )
        return _paged(page, "Aliases", "Alias", _alias)

    # -- tags ----------------------------------------------------------------------------------

    def tag_resource(self, p: Mapping[str, str]) -> dict[str, Any]:
        self.engine.tag_resource(p.get("KeyId"), parse_tags_json("Tags", p.get("Tags")))
        return {}

    def untag_resource(self, p: Mapping[str, str]) -> dict[str, Any]:
        self.engine.untag_resource(p.get("KeyId"), parse_string_list_json("TagKeys", p.get("TagKeys")))
        return {}

    def list_resource_tags(self, p: Mapping[str, str]) -> dict[str, Any]:
        key_id, tags = self.engine.list_resource_tags(p.get("KeyId"))
        return {"Tags": {"Tag": [{"KeyId": key_id, "TagKey": k, "TagValue": v} for k, v in tags]}}

    def tag_resources(self, p: Mapping[str, str]) -> dict[str, Any]:
        self.engine.tag_resources(p.get("ResourceType"), _indexed(p, "ResourceId"), _indexed_tags(p, "Tag"))
        return {}

    def untag_resources(self, p: Mapping[str, str]) -> dict[str, Any]:
        self.engine.untag_resources(
            p.get("ResourceType"),
            _indexed(p, "ResourceId"),
            _indexed(p, "TagKey"),
            parse_bool("All", p.get("All")),
        )
        return {}

    def list_tag_resources(self, p: Mapping[str, str]) -> dict[str, Any]:
        rows, token = self.engine.list_tag_resources(
            p.get("ResourceType"), _indexed(p, "ResourceId"), _indexed_tags(p, "Tag"), p.get("NextToken")
        )
        return {"TagResources": {"TagResource": [_tag_resource(r) for r in rows]}, "NextToken": token}

    # -- instances -----------------------------------------------------------------------------

    def list_kms_instances(self, p: Mapping[str, str]) -> dict[str, Any]:
        page = self.engine.list_kms_instances(
            parse_int("PageNumber", p.get("PageNumber")), parse_int("PageSize", p.get("PageSize"))
        )
        return _paged(
            page,
            "KmsInstances",
            "KmsInstance",
            lambda i: {"KmsInstanceId": i.instance_id, "KmsInstanceArn": i.arn},
        )

    def get_kms_instance(self, p: Mapping[str, str]) -> dict[str, Any]:
        instance, key_count = self.engine.get_kms_instance(p.get("KmsInstanceId"))
        return {"KmsInstance": _instance(instance, key_count)}


def _instance(instance: Instance, key_count: int) -> dict[str, Any]:
    return {
        "InstanceId": instance.instance_id,
        "InstanceName": instance.instance_id,
        "Status": "Connected",
        "RegionId": instance.region,
        "ProductVersion": "3",
        # The vendor's ProductType names the edition; here it says which kind the emulator was told.
        "ProductType": f"kms_ddi_{instance.kind}",
        "KeyNum": 1000,
        "SecretNum": "0",
        "Spec": 1000,
        "VpcNum": 1,
        "ChargeType": "PREPAY",
        "SaleStatus": "Active",
        "CreateTime": "",
        "DeletionProtection": "Disabled",
        # Not a vendor field (the SDK ignores it): how many keys the instance holds, for tests.
        "KeyCount": key_count,
    }


_ACTIONS: dict[str, Handler] = {
    "CreateKey": KmsResponses.create_key,
    "DescribeKey": KmsResponses.describe_key,
    "ListKeys": KmsResponses.list_keys,
    "UpdateKeyDescription": KmsResponses.update_key_description,
    "EnableKey": KmsResponses.enable_key,
    "DisableKey": KmsResponses.disable_key,
    "ScheduleKeyDeletion": KmsResponses.schedule_key_deletion,
    "CancelKeyDeletion": KmsResponses.cancel_key_deletion,
    "SetDeletionProtection": KmsResponses.set_deletion_protection,
    "ListKeyVersions": KmsResponses.list_key_versions,
    "DescribeKeyVersion": KmsResponses.describe_key_version,
    "GetParametersForImport": KmsResponses.get_parameters_for_import,
    "ImportKeyMaterial": KmsResponses.import_key_material,
    "DeleteKeyMaterial": KmsResponses.delete_key_material,
    "GetPublicKey": KmsResponses.get_public_key,
    "AsymmetricSign": KmsResponses.asymmetric_sign,
    "AsymmetricVerify": KmsResponses.asymmetric_verify,
    "AsymmetricEncrypt": KmsResponses.asymmetric_encrypt,
    "AsymmetricDecrypt": KmsResponses.asymmetric_decrypt,
    "CreateAlias": KmsResponses.create_alias,
    "UpdateAlias": KmsResponses.update_alias,
    "DeleteAlias": KmsResponses.delete_alias,
    "ListAliases": KmsResponses.list_aliases,
    "ListAliasesByKeyId": KmsResponses.list_aliases_by_key_id,
    "TagResource": KmsResponses.tag_resource,
    "UntagResource": KmsResponses.untag_resource,
    "ListResourceTags": KmsResponses.list_resource_tags,
    "TagResources": KmsResponses.tag_resources,
    "UntagResources": KmsResponses.untag_resources,
    "ListTagResources": KmsResponses.list_tag_resources,
    "ListKmsInstances": KmsResponses.list_kms_instances,
    "GetKmsInstance": KmsResponses.get_kms_instance,
}

#: The actions a family's keys add (emulator/families.py): the symmetric family's Encrypt and so on.
_FAMILY_OPERATIONS: Mapping[str, Operation] = operations()
_SHADOWED = sorted(_FAMILY_OPERATIONS.keys() & _ACTIONS.keys())
if _SHADOWED:  # a wrong table: the family's handler would never be called
    raise TypeError(f"a family adds an action every key has: {', '.join(_SHADOWED)}")

#: Every action the emulator answers, for the server's stats and quota groups.
ACTIONS = frozenset(_ACTIONS) | frozenset(_FAMILY_OPERATIONS)
#: The quota group of every action the emulator answers: the vendor's (wire.py) and the families'.
ACTION_QUOTA_GROUPS: Mapping[str, str] = {
    **QUOTA_GROUPS, **{a: op.quota_group for a, op in _FAMILY_OPERATIONS.items()}
}
