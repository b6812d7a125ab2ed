"""The emulator's RPC layer: flattened wire parameters in, the SDK's response shapes out, errors with
their codes and HTTP statuses; and the `Kms` facade driven through it as the local backend does."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from alibabacloud_kms20160120 import models as sdk
from alibabacloud_tea_openapi.utils import Utils
from emulator_support import HARDWARE, SOFTWARE, START, FakeClock, kms_error, material, new_material

from provisioner import wrapping
from provisioner.backend.base import QUOTA_GROUPS, Kms
from provisioner.emulator.models import STATUS, KmsEngine, KmsError
from provisioner.emulator.responses import ACTION_QUOTA_GROUPS, ACTIONS, KmsResponses, flatten_params
from provisioner.errors import KmsApiError
from provisioner.model import KeySpec, KeyState, KeyUsage, ProtectionLevel, WrappingAlgorithm
from provisioner.specs import facts

RSA_WRAP = {"WrappingKeySpec": "RSA_2048", "WrappingAlgorithm": "RSAES_OAEP_SHA_256_AES_256_ECB_PKCS7_PAD"}
TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
DIGEST_B64 = base64.b64encode(hashlib.sha256(b"m").digest()).decode()


@pytest.fixture
def rpc(engine: KmsEngine) -> KmsResponses:
    return KmsResponses(engine)


def create(rpc: KmsResponses, spec: str = "RSA_2048", usage: str = "SIGN/VERIFY", **extra: str) -> str:
    instance = HARDWARE if spec in ("RSA_4096", "EC_SM2") else SOFTWARE
    params = {"Origin": "EXTERNAL", "KeySpec": spec, "KeyUsage": usage, "DKMSInstanceId": instance, **extra}
    return str(rpc.handle("CreateKey", params)["KeyMetadata"]["KeyId"])


def import_material(
    rpc: KmsResponses, key_id: str, spec: KeySpec = KeySpec.RSA_2048, expire: str = "0"
) -> None:
    algorithm = facts(spec).wrapping_algorithm
    body = rpc.handle(
        "GetParametersForImport",
        {
            "KeyId": key_id,
            "WrappingKeySpec": algorithm.wrapping_key_spec.value,
            "WrappingAlgorithm": algorithm.value,
        },
    )
    blob = wrapping.wrap(material(spec), base64.b64decode(body["PublicKey"]), algorithm)
    rpc.handle(
        "ImportKeyMaterial",
        {
            "KeyId": key_id,
            "EncryptedKeyMaterial": blob,
            "ImportToken": body["ImportToken"],
            "KeyMaterialExpireUnix": expire,
        },
    )


def version_of(rpc: KmsResponses, key_id: str) -> str:
    return str(rpc.handle("DescribeKey", {"KeyId": key_id})["KeyMetadata"]["PrimaryKeyVersion"])


# --- flatten_params ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"KeyId": "key-1", "PageSize": 100, "EnableDeletionProtection": True, "Flag": False},
        {"Tags": json.dumps([{"TagKey": "a", "TagValue": "b"}]), "Description": "a b/c"},
        {
            "ResourceType": "key",
            "ResourceId": ["k1", "k2"],
            "Tag": [{"Key": "a", "Value": "1"}, {"Key": "b"}],
        },
        {"TagKey": ["x", "y"], "All": None, "Nested": {"A": {"B": 1}}, "Raw": b"bytes"},
    ],
)
def test_flatten_params_matches_the_sdk(params: dict[str, Any]) -> None:
    assert flatten_params(params) == Utils.query(params)


def test_flatten_params_matches_sdk_request_models() -> None:
    request = sdk.ListTagResourcesRequest(
        resource_type="key",
        resource_id=["k1", "k2"],
        tag=[sdk.ListTagResourcesRequestTag(key="s", value="v")],
    )
    # What ListTagResources puts on the wire: the SDK flattens the model objects' maps.
    wire = Utils.query(
        {"ResourceId": request.resource_id, "ResourceType": request.resource_type, "Tag": request.tag}
    )
    ours = flatten_params(
        {"ResourceType": "key", "ResourceId": ["k1", "k2"], "Tag": [{"Key": "s", "Value": "v"}]}
    )
    assert (
        ours
        == wire
        == {
            "ResourceType": "key",
            "ResourceId.1": "k1",
            "ResourceId.2": "k2",
            "Tag.1.Key": "s",
            "Tag.1.Value": "v",
        }
    )


# --- routing and parsing -------------------------------------------------------------------------


def test_every_documented_action_is_routed() -> None:
    # QUOTA_GROUPS (wire.py) lists the actions every key has, each in its quota group; the symmetric
    # family's keys add three more, in the crypto group (emulator/families.py).
    family_actions = {"Encrypt": "crypto", "Decrypt": "crypto", "GenerateDataKey": "crypto"}
    assert set(QUOTA_GROUPS) | set(family_actions) == ACTIONS
    assert set(QUOTA_GROUPS).isdisjoint(family_actions)
    assert dict(ACTION_QUOTA_GROUPS) == {**QUOTA_GROUPS, **family_actions}


def test_unknown_action(rpc: KmsResponses) -> None:
    with kms_error("InvalidAction.NotFound", 404, "Specified api is not found, please check your url"):
        rpc.handle("CreateSecret", {})


def test_missing_parameter_is_named(rpc: KmsResponses) -> None:
    with kms_error("MissingParameter", 400, "The input parameter KeyId that is mandatory"):
        rpc.handle("DescribeKey", {})
    with kms_error("MissingParameter", 400, "The input parameter AliasName"):
        rpc.handle("DeleteAlias", {})


@pytest.mark.parametrize(
    ("action", "params", "message"),
    [
        ("ListKeys", {"PageSize": "ten"}, "PageSize must be an integer, got 'ten'"),
        ("ListKeys", {"Filters": "{not json"}, "Filters is not valid JSON"),
        ("ListKeys", {"Filters": '{"Key": "KeyState"}'}, 'Filters must be a JSON list of {"Key"'),
        ("CreateKey", {"Tags": '[{"TagKey": "a"}]'}, 'Tags must be a JSON list of {"TagKey"'),
        ("UntagResource", {"KeyId": "k", "TagKeys": "[1]"}, "TagKeys must be a JSON list of strings"),
        ("SetDeletionProtection", {"EnableDeletionProtection": "yes"}, "must be true or false, got 'yes'"),
        ("ImportKeyMaterial", {"KeyMaterialExpireUnix": "soon"}, "KeyMaterialExpireUnix must be an integer"),
    ],
)
def test_bad_values_are_invalid_parameter(
    rpc: KmsResponses, action: str, params: dict[str, str], message: str
) -> None:
    with kms_error("InvalidParameter", 400, message):
        rpc.handle(action, params)


@pytest.mark.parametrize(
    ("text", "expected"), [("True", True), ("true", True), ("False", False), ("false", False)]
)
def test_booleans_in_both_spellings(rpc: KmsResponses, text: str, expected: bool) -> None:
    key_id = create(rpc)
    arn = rpc.handle("DescribeKey", {"KeyId": key_id})["KeyMetadata"]["Arn"]
    rpc.handle("SetDeletionProtection", {"ProtectedResourceArn": arn, "EnableDeletionProtection": text})
    state = rpc.handle("DescribeKey", {"KeyId": key_id})["KeyMetadata"]["DeletionProtection"]
    assert state == ("Enabled" if expected else "Disabled")


# --- response shapes, checked with the SDK's own response models -----------------------------------


def test_key_metadata_shape(rpc: KmsResponses, clock: FakeClock) -> None:
    key_id = create(rpc, Description="first key", Tags=json.dumps([{"TagKey": "a", "TagValue": "b"}]))
    body = rpc.handle("DescribeKey", {"KeyId": key_id})
    assert re.fullmatch(r"[0-9a-f-]{36}", body["RequestId"])
    meta = sdk.DescribeKeyResponseBody().from_map(body).key_metadata
    assert (meta.key_id, meta.key_state, meta.key_spec, meta.key_usage, meta.origin) == (
        key_id,
        "PendingImport",
        "RSA_2048",
        "SIGN/VERIFY",
        "EXTERNAL",
    )
    assert (meta.protection_level, meta.dkmsinstance_id, meta.description) == (
        "SOFTWARE",
        SOFTWARE,
        "first key",
    )
    assert (meta.creation_date, meta.material_expire_time, meta.delete_date) == (
        "2026-01-01T12:00:00Z",
        "",
        None,
    )
    # Absent, not "": the service sends these only in the states where they mean something.
    absent = {"DeleteDate", "RotationInterval", "LastRotationDate", "NextRotationDate"}
    assert absent.isdisjoint(body["KeyMetadata"])
    assert meta.deletion_protection == "Disabled" and meta.primary_key_version
    import_material(rpc, key_id, expire=str(int(START.timestamp()) + 86400))
    meta = sdk.DescribeKeyResponseBody().from_map(rpc.handle("DescribeKey", {"KeyId": key_id})).key_metadata
    assert (meta.key_state, meta.material_expire_time) == ("Enabled", "2026-01-02T12:00:00Z")
    rpc.handle("ScheduleKeyDeletion", {"KeyId": key_id, "PendingWindowInDays": "7"})
    meta = sdk.DescribeKeyResponseBody().from_map(rpc.handle("DescribeKey", {"KeyId": key_id})).key_metadata
    assert (meta.key_state, meta.delete_date) == ("PendingDeletion", "2026-01-08T12:00:00Z")


def test_list_shapes(rpc: KmsResponses) -> None:
    ids = [create(rpc) for _ in range(3)]
    body = sdk.ListKeysResponseBody().from_map(
        rpc.handle(
            "ListKeys",
            {
                "PageNumber": "2",
                "PageSize": "2",
                "Filters": '[{"Key":"KeyState","Values":["PendingImport"]}]',
            },
        )
    )
    assert (body.total_count, body.page_number, body.page_size) == (3, 2, 2)
    assert [(k.key_id, k.key_arn.endswith(k.key_id)) for k in body.keys.key] == [(ids[2], True)]

    rpc.handle("CreateAlias", {"AliasName": "alias/one", "KeyId": ids[0]})
    aliases = sdk.ListAliasesResponseBody().from_map(rpc.handle("ListAliases", {})).aliases.alias
    assert [(a.alias_name, a.key_id, a.alias_arn) for a in aliases] == [
        ("alias/one", ids[0], "acs:kms:cn-hangzhou:1234567890123456:alias/one")
    ]
    by_key = sdk.ListAliasesByKeyIdResponseBody().from_map(
        rpc.handle("ListAliasesByKeyId", {"KeyId": ids[0]})
    )
    assert [a.alias_name for a in by_key.aliases.alias] == ["alias/one"] and by_key.total_count == 1

    versions = sdk.ListKeyVersionsResponseBody().from_map(rpc.handle("ListKeyVersions", {"KeyId": ids[0]}))
    assert [v.key_version_id for v in versions.key_versions.key_version] == [version_of(rpc, ids[0])]
    one = sdk.DescribeKeyVersionResponseBody().from_map(
        rpc.handle("DescribeKeyVersion", {"KeyId": ids[0], "KeyVersionId": version_of(rpc, ids[0])})
    )
    assert one.key_version.key_id == ids[0] and TIME_RE.fullmatch(one.key_version.creation_date)

    instances = sdk.ListKmsInstancesResponseBody().from_map(rpc.handle("ListKmsInstances", {}))
    assert [i.kms_instance_id for i in instances.kms_instances.kms_instance] == [HARDWARE, SOFTWARE]
    assert instances.kms_instances.kms_instance[0].kms_instance_arn.endswith(f":keystore/{HARDWARE}")
    got = sdk.GetKmsInstanceResponseBody().from_map(rpc.handle("GetKmsInstance", {"KmsInstanceId": SOFTWARE}))
    assert (got.kms_instance.instance_id, got.kms_instance.status) == (SOFTWARE, "Connected")


def test_tag_shapes(rpc: KmsResponses) -> None:
    a, b = create(rpc), create(rpc)
    rpc.handle("TagResource", {"KeyId": a, "Tags": json.dumps([{"TagKey": "stack", "TagValue": "s"}])})
    rpc.handle(
        "TagResources",
        flatten_params(
            {"ResourceType": "key", "ResourceId": [a, b], "Tag": [{"Key": "env", "Value": "prod"}]}
        ),
    )
    tags = sdk.ListResourceTagsResponseBody().from_map(rpc.handle("ListResourceTags", {"KeyId": a})).tags.tag
    assert [(t.tag_key, t.tag_value) for t in tags] == [("env", "prod"), ("stack", "s")]
    body = sdk.ListTagResourcesResponseBody().from_map(
        rpc.handle(
            "ListTagResources",
            flatten_params({"ResourceType": "key", "Tag": [{"Key": "stack", "Value": "s"}]}),
        )
    )
    assert [(r.resource_id, r.tag_key, r.tag_value) for r in body.tag_resources.tag_resource] == [
        (a, "env", "prod"),
        (a, "stack", "s"),
    ]
    assert body.next_token == ""
    rpc.handle("UntagResource", {"KeyId": a, "TagKeys": '["stack"]'})
    rpc.handle(
        "UntagResources", flatten_params({"ResourceType": "key", "ResourceId": [b], "TagKey": ["env"]})
    )
    rows = rpc.handle("ListTagResources", flatten_params({"ResourceType": "key", "ResourceId": [a, b]}))
    assert rows["TagResources"]["TagResource"] == [
        {"ResourceId": a, "ResourceType": "key", "TagKey": "env", "TagValue": "prod"}
    ]
    rpc.handle("UntagResources", {"ResourceType": "key", "ResourceId.1": a, "All": "true"})
    assert rpc.handle("ListResourceTags", {"KeyId": a})["Tags"]["Tag"] == []


def test_import_and_crypto_shapes(rpc: KmsResponses) -> None:
    key_id = create(rpc, "EC_P256")
    params = sdk.GetParametersForImportResponseBody().from_map(
        rpc.handle("GetParametersForImport", {"KeyId": key_id, **RSA_WRAP})
    )
    assert params.key_id == key_id and params.token_expire_time == "2026-01-02T12:00:00Z"
    assert wrapping.wrapping_key_spec(base64.b64decode(params.public_key)) is KeySpec.RSA_2048
    blob = wrapping.wrap(
        material(KeySpec.EC_P256), base64.b64decode(params.public_key), WrappingAlgorithm.RSA_OAEP_AES_ECB
    )
    assert rpc.handle(
        "ImportKeyMaterial",
        {"KeyId": key_id, "EncryptedKeyMaterial": blob, "ImportToken": params.import_token},
    ).keys() == {"RequestId"}
    version = version_of(rpc, key_id)
    public = sdk.GetPublicKeyResponseBody().from_map(
        rpc.handle("GetPublicKey", {"KeyId": key_id, "KeyVersionId": version})
    )
    assert (
        public.public_key == material(KeySpec.EC_P256).public_key_pem() and public.key_version_id == version
    )
    sign = {"KeyId": key_id, "KeyVersionId": version, "Algorithm": "ECDSA_SHA_256", "Digest": DIGEST_B64}
    signed = sdk.AsymmetricSignResponseBody().from_map(rpc.handle("AsymmetricSign", sign))
    verified = rpc.handle("AsymmetricVerify", {**sign, "Value": signed.value})
    assert verified["Value"] is True
    assert sdk.AsymmetricVerifyResponseBody().from_map(verified).value is True

    enc_id = create(rpc, "RSA_2048", "ENCRYPT/DECRYPT")
    import_material(rpc, enc_id)
    crypt = {"KeyId": enc_id, "KeyVersionId": version_of(rpc, enc_id), "Algorithm": "RSAES_OAEP_SHA_256"}
    encrypted = rpc.handle("AsymmetricEncrypt", {**crypt, "Plaintext": base64.b64encode(b"hi").decode()})
    decrypted = rpc.handle("AsymmetricDecrypt", {**crypt, "CiphertextBlob": encrypted["CiphertextBlob"]})
    assert base64.b64decode(sdk.AsymmetricDecryptResponseBody().from_map(decrypted).plaintext) == b"hi"


# --- one test per error code the engine answers, through handle ---------------------------------------


def _error_cases(rpc: KmsResponses) -> dict[str, tuple[str, dict[str, str], str]]:
    """code -> (action, params, message fragment), each set up on a fresh engine."""
    pending = create(rpc)
    enabled = create(rpc)
    import_material(rpc, enabled)
    disabled = create(rpc)
    import_material(rpc, disabled)
    rpc.handle("DisableKey", {"KeyId": disabled})
    doomed = create(rpc)
    rpc.handle("ScheduleKeyDeletion", {"KeyId": doomed, "PendingWindowInDays": "7"})
    protected = create(rpc)
    arn = rpc.handle("DescribeKey", {"KeyId": protected})["KeyMetadata"]["Arn"]
    rpc.handle("SetDeletionProtection", {"ProtectedResourceArn": arn, "EnableDeletionProtection": "True"})
    rpc.handle("CreateAlias", {"AliasName": "alias/taken", "KeyId": pending})
    rpc.handle(
        "TagResource",
        {"KeyId": pending, "Tags": json.dumps([{"TagKey": f"k{i}", "TagValue": "v"} for i in range(20)])},
    )
    other_token = rpc.handle("GetParametersForImport", {"KeyId": enabled, **RSA_WRAP})["ImportToken"]
    params = rpc.handle("GetParametersForImport", {"KeyId": enabled, **RSA_WRAP})
    wrong_material = wrapping.wrap(
        new_material(KeySpec.RSA_2048),
        base64.b64decode(params["PublicKey"]),
        WrappingAlgorithm.RSA_OAEP_AES_ECB,
    )
    sign = {"Algorithm": "RSA_PSS_SHA_256", "Digest": DIGEST_B64}
    return {
        "MissingParameter": ("CreateAlias", {"KeyId": pending}, "AliasName"),
        "InvalidParameter": (
            "ScheduleKeyDeletion",
            {"KeyId": pending, "PendingWindowInDays": "3"},
            "PendingWindowInDays must be between 7 and 366, got 3",
        ),
        "InvalidAction.NotFound": ("CreateSecret", {}, "Specified api is not found"),
        "Rejected.LimitExceeded": (
            "TagResource",
            {"KeyId": pending, "Tags": '[{"TagKey":"x","TagValue":"y"}]'},
            "a key carries at most 20 tags",
        ),
        "AliasAlreadyExists": (
            "CreateAlias",
            {"AliasName": "alias/taken", "KeyId": enabled},
            "The alias already exists: alias/taken",
        ),
        "InvalidKeyMaterial": (
            "ImportKeyMaterial",
            {"KeyId": enabled, "EncryptedKeyMaterial": wrong_material, "ImportToken": params["ImportToken"]},
            "only that material can be imported again",
        ),
        "InvalidImportToken": (
            "ImportKeyMaterial",
            {"KeyId": pending, "EncryptedKeyMaterial": wrong_material, "ImportToken": other_token},
            f"the import token was not issued for key {pending}",
        ),
        "Unsupported.Origin": (
            "CreateKey",
            {"KeySpec": "RSA_2048", "Origin": "Aliyun_KMS", "DKMSInstanceId": SOFTWARE},
            "Origin Aliyun_KMS is not supported",
        ),
        "Unsupported.ProtectionLevel": (
            "CreateKey",
            {
                "KeySpec": "RSA_2048",
                "Origin": "EXTERNAL",
                "DKMSInstanceId": SOFTWARE,
                "ProtectionLevel": "HSM",
            },
            "HSM is not available in software instance",
        ),
        "Rejected.UnsupportedOperation": (
            "AsymmetricEncrypt",
            {
                "KeyId": enabled,
                "KeyVersionId": version_of(rpc, enabled),
                "Algorithm": "RSAES_OAEP_SHA_256",
                "Plaintext": "aGk=",
            },
            "AsymmetricEncrypt needs a key of usage ENCRYPT/DECRYPT",
        ),
        "Forbidden.NoPermission": (
            "ScheduleKeyDeletion",
            {"KeyId": protected, "PendingWindowInDays": "7"},
            "has deletion protection enabled",
        ),
        "Forbidden.KeyNotFound": (
            "DescribeKey",
            {"KeyId": "key-none"},
            "The specified Key is not found: key-none",
        ),
        "Forbidden.AliasNotFound": (
            "DeleteAlias",
            {"AliasName": "alias/none"},
            "The specified Alias is not found: alias/none",
        ),
        "Rejected.StateModifiedFailed": (
            "EnableKey",
            {"KeyId": doomed},
            "is PendingDeletion; only an Enabled",
        ),
        "Rejected.Disabled": (
            "AsymmetricSign",
            {"KeyId": disabled, "KeyVersionId": version_of(rpc, disabled), **sign},
            f"key {disabled} is Disabled",
        ),
        "Rejected.PendingDeletion": (
            "GetPublicKey",
            {"KeyId": doomed, "KeyVersionId": version_of(rpc, doomed)},
            f"key {doomed} is PendingDeletion",
        ),
        "Rejected.PendingImport": (
            "AsymmetricSign",
            {"KeyId": pending, "KeyVersionId": version_of(rpc, pending), **sign},
            f"key {pending} is PendingImport",
        ),
    }


ENGINE_CODES = sorted(set(STATUS) - {"ExpiredImportToken", "InternalFailure"})


ErrorCases = tuple[KmsResponses, dict[str, tuple[str, dict[str, str], str]]]


@pytest.fixture(scope="module")
def error_cases() -> Iterator[ErrorCases]:
    # One engine for the whole table: a refused call changes nothing, so the cases do not interfere.
    engine = KmsEngine(clock=FakeClock())
    try:
        rpc = KmsResponses(engine)
        yield rpc, _error_cases(rpc)
    finally:
        engine.close()


@pytest.mark.parametrize("code", ENGINE_CODES)
def test_error_code_and_status(error_cases: ErrorCases, code: str) -> None:
    rpc, cases = error_cases
    action, params, message = cases[code]
    with kms_error(code, STATUS[code], message):
        rpc.handle(action, params)


def test_expired_import_token(rpc: KmsResponses, clock: FakeClock) -> None:
    key_id = create(rpc)
    params = rpc.handle("GetParametersForImport", {"KeyId": key_id, **RSA_WRAP})
    blob = wrapping.wrap(
        material(KeySpec.RSA_2048), base64.b64decode(params["PublicKey"]), WrappingAlgorithm.RSA_OAEP_AES_ECB
    )
    clock.advance(hours=24)
    with kms_error("ExpiredImportToken", 400, "the import token has expired"):
        rpc.handle(
            "ImportKeyMaterial",
            {
                "KeyId": key_id,
                "EncryptedKeyMaterial": blob,
                "ImportToken": params["ImportToken"],
                "KeyMaterialExpireUnix": "0",
            },
        )


def test_status_table_matches_the_notes() -> None:
    assert {c for c, s in STATUS.items() if s == 409} == {
        "Rejected.StateModifiedFailed",
        "Rejected.Disabled",
        "Rejected.PendingDeletion",
        "Rejected.PendingImport",
    }
    assert {c for c, s in STATUS.items() if s == 404} == {
        "Forbidden.KeyNotFound",
        "Forbidden.AliasNotFound",
        "InvalidAction.NotFound",
    }
    assert STATUS["Forbidden.NoPermission"] == 403


# --- the Kms facade over the RPC layer, as the local backend drives it -----------------------------


class _Transport:
    def __init__(self, engine: KmsEngine) -> None:
        self.responses = KmsResponses(engine)

    def call(self, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return self.responses.handle(action, flatten_params(params))
        except KmsError as e:
            raise KmsApiError(action, e.code, e.message, "", e.status) from e

    def close(self) -> None:
        pass


def test_kms_facade_end_to_end(engine: KmsEngine) -> None:
    kms = Kms(_Transport(engine))
    tags = {"byok-provisioner:stack": "s", "byok-provisioner:name": "signer", "team": "a b"}
    meta = kms.create_key(
        spec=KeySpec.EC_SM2,
        usage=KeyUsage.SIGN_VERIFY,
        protection=ProtectionLevel.HSM,
        instance=HARDWARE,
        description="d",
        tags=tags,
    )
    assert meta.key_state is KeyState.PENDING_IMPORT and meta.protection_level is ProtectionLevel.HSM
    params = kms.get_parameters_for_import(meta.key_id, WrappingAlgorithm.SM2PKE_SM4_ECB)
    m = material(KeySpec.EC_SM2)
    blob = wrapping.wrap(m, params.public_key_der, WrappingAlgorithm.SM2PKE_SM4_ECB)
    kms.import_key_material(meta.key_id, blob, params.import_token, 0)
    assert kms.get_public_key(meta.key_id, meta.primary_key_version) == m.public_key_pem()
    kms.create_alias("alias/signer", meta.key_id)
    assert [(a.alias_name, a.key_id) for a in kms.list_aliases()] == [("alias/signer", meta.key_id)]
    assert kms.list_aliases_by_key_id(meta.key_id) == ["alias/signer"]
    assert kms.list_resource_tags(meta.key_id) == tags
    rows = kms.list_tag_resources(tags={"byok-provisioner:stack": "s"})
    assert {(r.key, r.value) for r in rows} == set(tags.items())
    assert kms.list_keys([{"Key": "KeyState", "Values": ["Enabled"]}]) == [meta.key_id]
    kms.tag_resource(meta.key_id, {"extra": "1"})
    kms.untag_resource(meta.key_id, ["extra"])
    kms.update_key_description(meta.key_id, "new")
    kms.disable_key(meta.key_id)
    kms.enable_key(meta.key_id)
    kms.set_deletion_protection(meta.key_id, meta.arn, True)
    with pytest.raises(KmsApiError) as info:
        kms.schedule_key_deletion(meta.key_id, 7)
    assert (info.value.code, info.value.status) == ("Forbidden.NoPermission", 403)
    assert "has deletion protection enabled" in info.value.message
    kms.set_deletion_protection(meta.key_id, meta.arn, False)
    kms.schedule_key_deletion(meta.key_id, 7)
    kms.cancel_key_deletion(meta.key_id)
    kms.delete_key_material(meta.key_id)
    described = kms.describe_key("alias/signer")
    assert (described.key_state, described.description) == (KeyState.PENDING_IMPORT, "new")


def test_kms_facade_pages_past_100(engine: KmsEngine) -> None:
    kms = Kms(_Transport(engine))
    ids = [
        engine.create_key(key_spec="RSA_2048", origin="EXTERNAL", instance_id=SOFTWARE).key_id
        for _ in range(105)
    ]
    assert kms.list_keys() == ids
