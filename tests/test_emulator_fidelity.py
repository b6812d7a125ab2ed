"""The emulator against the vendor's API reference, where a review found it diverging (issue 17,
DESIGN section 14): signatures, error bodies, XML, nonces across restarts, hostile JSON, instances.

Each test cites the documented behaviour it pins (Alibaba Cloud KMS API 2016-01-20 reference pages,
the OpenAPI error-diagnosis page, the gateway's common error codes); the key-state table has its
own module (test_emulator_state_table.py).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from alibabacloud_kms20160120 import models as kms
from alibabacloud_tea_openapi import utils_models as openapi_models
from alibabacloud_tea_openapi.exceptions import ClientException
from alibabacloud_tea_openapi.sm3 import Sm3
from conftest import RunningEmulator
from darabonba.exceptions import UnretryableException
from darabonba.runtime import RuntimeOptions
from darabonba.utils.xml import XML
from emulator_support import SOFTWARE, kms_error
from Tea.exceptions import TeaException
from wire_support import CREATE_QUERY, now_stamp, raw_v2, raw_v3, send, v2_request, v3_request

from provisioner.emulator import signing
from provisioner.emulator.models import InstanceSetup, KmsEngine, KmsError, json_depth_exceeds
from provisioner.emulator.responses import KmsResponses, to_xml
from provisioner.emulator.server import (
    API_VERSION,
    DEFAULT_ACCESS_KEY_ID,
    XML_CONTENT_TYPE,
    EmulatorConfig,
    parse_instances,
)
from provisioner.emulator.store import Store

Factory = Callable[..., RunningEmulator]
WRONG_SIGNATURE = "Specified signature is not matched with our calculation."
INCOMPLETE_SIGNATURE = "The request signature does not conform to Aliyun standards."
UNSUPPORTED_METHOD = "Specified signature method is not valid: this emulator checks"
NONCE_USED = "Specified signature nonce was used already."


@pytest.mark.parametrize("spec", ["RSA_2048", "EC_P256", "EC_P256K"])
def test_create_key_without_usage_defaults_to_sign_verify(engine: KmsEngine, spec: str) -> None:
    """CreateKey: "If the key supports signing and verification, the default value is SIGN/VERIFY."
    Every asymmetric spec signs; the emulator used to default to ENCRYPT/DECRYPT."""
    key = engine.create_key(key_spec=spec, origin="EXTERNAL", instance_id="kst-local-software")

    assert key.usage.value == "SIGN/VERIFY"
    assert engine.describe_key(key.key_id).usage.value == "SIGN/VERIFY"


def key_count(emu: RunningEmulator) -> int:
    total: int = emu.sdk_client().list_keys(kms.ListKeysRequest(page_size=100)).body.total_count
    return total


def create_request(**extra: str) -> kms.CreateKeyRequest:
    return kms.CreateKeyRequest(
        key_spec="RSA_2048", key_usage="SIGN/VERIFY", origin="EXTERNAL", dkmsinstance_id=SOFTWARE, **extra
    )


# --- SM3 ---------------------------------------------------------------------------------------------


def test_sm3_gives_the_standard_test_vectors() -> None:
    # GB/T 32905-2016, appendix A: "abc" and "abcd" x 16.
    assert signing.sm3_hex(b"abc") == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    assert signing.sm3_hex(b"abcd" * 16) == (
        "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"
    )


def test_hmac_sm3_signature_agrees_with_the_sdks_own_sm3() -> None:
    import hmac

    canonical = "POST\n/\nKeyId=k\nhost:h\n\nhost\n" + signing.sm3_hex(b"")
    string_to_sign = f"ACS3-HMAC-SM3\n{signing.sm3_hex(canonical.encode())}"
    sdk = hmac.new(b"secret", string_to_sign.encode(), Sm3).hexdigest()

    assert signing.v3_signature("secret", canonical, signing.V3_SM3_ALGORITHM) == sdk
    assert signing.v3_signature("secret", canonical) != sdk


@pytest.mark.slow
def test_sdk_signing_with_acs3_hmac_sm3_is_accepted(emulator: RunningEmulator) -> None:
    client = emulator.sdk_client(signature_algorithm=signing.V3_SM3_ALGORITHM)

    key_id = client.create_key(create_request(description="signed with SM3")).body.key_metadata.key_id
    meta = client.describe_key(kms.DescribeKeyRequest(key_id=key_id)).body.key_metadata

    assert (meta.key_state, meta.description) == ("PendingImport", "signed with SM3")
    assert emulator.stats()["calls"] == {"CreateKey": 1, "DescribeKey": 1}


@pytest.mark.slow
def test_sm3_payload_hash_may_come_as_x_acs_content_sm3(emulator: RunningEmulator) -> None:
    # The gateway clients (alibabacloud-gateway-pop) send the SM3 payload hash under this name.
    answer = v3_request(
        emulator, "CreateKey", CREATE_QUERY, body=b"Description=sm3+body",
        algorithm=signing.V3_SM3_ALGORITHM, content_header="x-acs-content-sm3",
    )

    assert answer.status == 200, answer.data
    assert answer.json()["KeyMetadata"]["Description"] == "sm3 body"


# --- wrong, malformed and foreign signatures ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["ACS3-HMAC-SHA256", "ACS3-HMAC-SM3", "v2"])
def test_wrong_secret_is_signature_does_not_match(emulator: RunningEmulator, algorithm: str) -> None:
    """Gateway common codes: SignatureDoesNotMatch, 400, "Specified signature is not matched with
    our calculation."; on V2 followed by " server string to sign is:" and the string the service
    computed, which the older SDK compares with its own to tell its user the secret is wrong
    (tests/clients/test_client_aliyun_core.py)."""
    forger = emulator.sdk_client(access_key_secret="not-the-secret", signature_algorithm=algorithm)

    with pytest.raises(ClientException) as info:
        forger.create_key(create_request())

    assert (info.value.code, info.value.status_code) == ("SignatureDoesNotMatch", 400)
    message = info.value.data["Message"]
    if algorithm == "v2":
        assert message.startswith(f"{WRONG_SIGNATURE} server string to sign is:POST&%2F&"), message
        assert "Action%3DCreateKey" in message, message
    else:
        assert message == WRONG_SIGNATURE
    assert key_count(emulator) == 0


@pytest.mark.slow
def test_malformed_signatures_keep_incomplete_signature(emulator: RunningEmulator) -> None:
    v3 = v3_request(emulator, "CreateKey", CREATE_QUERY, signature="not-hex-at-all")
    v3_short = v3_request(emulator, "CreateKey", CREATE_QUERY, signature="ab" * 8)
    v2 = v2_request(emulator, "CreateKey", CREATE_QUERY, signature="%%% not base64 %%%")

    for answer in (v3, v3_short, v2):
        assert (answer.status, answer.json()["Code"]) == (400, "IncompleteSignature")
        assert answer.json()["Message"] == INCOMPLETE_SIGNATURE
    assert key_count(emulator) == 0


@pytest.mark.slow
def test_sdk_v4_signature_is_refused_as_an_unsupported_method(emulator: RunningEmulator) -> None:
    """The SDK's `signature_version='v4'` (ACS4-HMAC-SHA256, Credential=AK/date/region/kms/...):
    not checked here, so refused with the gateway's InvalidSignatureMethod, not as an unknown key."""
    client = emulator.sdk_client(signature_version="v4")

    with pytest.raises(UnretryableException) as info:
        client.create_key(create_request())

    refusal = info.value.inner_exception
    assert isinstance(refusal, TeaException)
    assert (refusal.code, refusal.data["statusCode"]) == ("InvalidSignatureMethod", 400)
    assert refusal.data["Message"].startswith(UNSUPPORTED_METHOD)
    assert "ACS3-HMAC-SHA256 and ACS3-HMAC-SM3 (V3) and HMAC-SHA1 (V2)" in refusal.data["Message"]
    assert key_count(emulator) == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "authorization",
    [
        f"AWS4-HMAC-SHA256 Credential={DEFAULT_ACCESS_KEY_ID}/20261202/cn-hangzhou/kms/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64,
        f"ACS4-HMAC-SHA256 Credential={DEFAULT_ACCESS_KEY_ID}/20261202/cn-hangzhou/kms/aliyun_v4_request,"
        "SignedHeaders=host,Signature=" + "0" * 64,
        "Bearer abc",
    ],
    ids=["aws4", "acs4", "bearer"],
)
def test_foreign_authorization_schemes_are_unsupported_methods(
    emulator: RunningEmulator, authorization: str
) -> None:
    headers = {"host": emulator.endpoint, "x-acs-action": "ListKeys", "x-acs-version": API_VERSION,
               "x-acs-date": now_stamp(), "Authorization": authorization}

    status, body = send(emulator, "POST", "/", headers)

    assert (status, body["Code"]) == (400, "InvalidSignatureMethod")
    assert body["Message"].startswith(UNSUPPORTED_METHOD)


@pytest.mark.slow
def test_v2_signature_method_other_than_hmac_sha1_is_an_unsupported_method(emulator: RunningEmulator) -> None:
    status, body = raw_v2(emulator, "CreateKey", CREATE_QUERY, signature_method="HMAC-SHA256")

    assert (status, body["Code"]) == (400, "InvalidSignatureMethod")
    assert body["Message"] == f"{UNSUPPORTED_METHOD} HMAC-SHA1 for V2 signatures."
    assert key_count(emulator) == 0


# --- error bodies and Format=XML -----------------------------------------------------------------------


@pytest.mark.slow
def test_error_body_carries_host_id_and_recommend(emulator: RunningEmulator) -> None:
    """OpenAPI error diagnosis: RequestId, HostId (the endpoint called), Code, Message and
    Recommend, https://api.aliyun.com/troubleshoot?q=CODE&product=PRODUCT&requestId=ID."""
    with pytest.raises(ClientException) as info:
        emulator.sdk_client().describe_key(kms.DescribeKeyRequest(key_id="key-missing"))

    data = info.value.data
    query = urlencode({"q": "Forbidden.KeyNotFound", "product": "Kms", "requestId": data["RequestId"]})
    assert {k: v for k, v in data.items() if k != "statusCode"} == {
        "RequestId": info.value.request_id,
        "HostId": emulator.endpoint,
        "Code": "Forbidden.KeyNotFound",
        "Message": "The specified Key is not found: key-missing",
        "Recommend": f"https://api.aliyun.com/troubleshoot?{query}",
    }


@pytest.mark.slow
def test_format_xml_answers_xml_in_the_sdks_shape(emulator: RunningEmulator) -> None:
    answer = v2_request(emulator, "CreateKey", {**CREATE_QUERY, "Description": "a < b & c"},
                        response_format="XML")
    refused = v2_request(emulator, "DescribeKey", {"KeyId": "key-missing"}, response_format="XML")
    as_json = v2_request(emulator, "DescribeKey", {"KeyId": "key-missing"})

    assert (answer.status, answer.content_type) == (200, XML_CONTENT_TYPE)
    created = XML.parse_xml(answer.data.decode())["CreateKeyResponse"]
    assert created["KeyMetadata"]["Description"] == "a < b & c"
    assert created["KeyMetadata"]["KeyState"] == "PendingImport"
    assert (refused.status, refused.content_type) == (404, XML_CONTENT_TYPE)
    error = XML.parse_xml(refused.data.decode())["Error"]
    assert error["Code"] == "Forbidden.KeyNotFound"
    assert error["Message"] == "The specified Key is not found: key-missing"
    assert error["Recommend"].startswith("https://api.aliyun.com/troubleshoot?q=Forbidden.KeyNotFound")
    assert as_json.content_type == "application/json;charset=utf-8"
    assert as_json.json()["Code"] == "Forbidden.KeyNotFound"


@pytest.mark.slow
def test_the_sdk_reads_an_xml_error_as_it_reads_a_json_one(emulator: RunningEmulator) -> None:
    # tea-openapi parses an error body as XML when the type is exactly text/xml;charset=utf-8.
    params = openapi_models.Params(
        action="DescribeKey", version=API_VERSION, protocol="HTTP", pathname="/", method="POST",
        auth_type="AK", style="RPC", req_body_type="formData", body_type="string",
    )
    request = openapi_models.OpenApiRequest(query={"KeyId": "key-missing", "Format": "XML"})

    with pytest.raises(ClientException) as info:
        emulator.sdk_client().call_api(params, request, RuntimeOptions())

    assert (info.value.code, info.value.status_code) == ("Forbidden.KeyNotFound", 404)
    assert info.value.data["Message"] == "The specified Key is not found: key-missing"


def test_xml_lists_repeat_their_element_and_unwritable_characters_are_replaced() -> None:
    body = {"RequestId": "r", "Keys": {"Key": [{"KeyId": "a"}, {"KeyId": "b"}]}, "Ok": True, "None": None,
            "Text": "bell\x07 and <tag>"}

    parsed = XML.parse_xml(to_xml("ListKeysResponse", body).decode())

    keys = {"Key": [{"KeyId": "a"}, {"KeyId": "b"}]}
    text = "bell\ufffd and <tag>"
    assert parsed == {"ListKeysResponse": {"RequestId": "r", "Keys": keys, "Ok": "true", "Text": text}}


# --- nonces across a restart -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("version", ["v3", "v2"])
def test_replay_after_a_restart_on_the_same_db_is_refused_as_before(
    emulator_factory: Factory, tmp_path: Path, version: str
) -> None:
    db = tmp_path / "kms.db"
    replay = raw_v3 if version == "v3" else raw_v2
    nonce, stamp = uuid.uuid4().hex, now_stamp()
    options = {"nonce": nonce, ("date" if version == "v3" else "timestamp"): stamp}
    first = emulator_factory(db=db)
    assert replay(first, "CreateKey", CREATE_QUERY, **options)[0] == 200
    before = replay(first, "CreateKey", CREATE_QUERY, **options)
    first.stop()

    second = emulator_factory(db=db)
    after = replay(second, "CreateKey", CREATE_QUERY, **options)

    assert (before[0], before[1]["Code"], before[1]["Message"]) == (400, "SignatureNonceUsed", NONCE_USED)
    assert (after[0], after[1]["Code"], after[1]["Message"]) == (400, "SignatureNonceUsed", NONCE_USED)
    assert key_count(second) == 1


@pytest.mark.slow
def test_two_servers_on_one_db_share_their_nonces(emulator_factory: Factory, tmp_path: Path) -> None:
    db = tmp_path / "kms.db"
    one, other = emulator_factory(db=db), emulator_factory(db=db)
    nonce = uuid.uuid4().hex

    assert raw_v3(one, "ListKeys", {}, nonce=nonce)[0] == 200
    status, body = raw_v3(other, "ListKeys", {}, nonce=nonce)

    assert (status, body["Code"], body["Message"]) == (400, "SignatureNonceUsed", NONCE_USED)


def test_nonce_store_refuses_a_live_nonce_and_purges_expired_ones(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "kms.db"))
    try:
        assert store.use_nonce("n1", now=1000, expires=2800)
        assert not store.use_nonce("n1", now=2799, expires=4600)
        assert store.use_nonce("n2", now=2000, expires=3800)
        # At 2800 n1 has expired: purged, and usable again.
        assert store.use_nonce("n1", now=2800, expires=4600)
        with store.transaction() as tx:
            rows = tx.all("SELECT expires FROM nonces ORDER BY expires")
        assert [r["expires"] for r in rows] == [3800, 4600]
    finally:
        store.close()


# --- hostile JSON-valued parameters -------------------------------------------------------------------


HOSTILE_JSON = {
    "5000-digit number": ("1" * 5000, "is JSON with a number of more than 4300 digits"),
    "50000-deep array": ("[" * 50_000 + "]" * 50_000, "is longer than 65536 characters of JSON"),
    "20000-deep array": ("[" * 20_000 + "]" * 20_000, "is JSON nested deeper than 8 levels"),
    "9-deep object": ('{"a":' * 9 + "1" + "}" * 9, "is JSON nested deeper than 8 levels"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(HOSTILE_JSON))
def test_hostile_tags_through_the_sdk_are_invalid_parameter(emulator: RunningEmulator, case: str) -> None:
    value, message = HOSTILE_JSON[case]
    client = emulator.sdk_client()
    key_id = client.create_key(create_request()).body.key_metadata.key_id

    with pytest.raises(ClientException) as on_create:
        client.create_key(create_request(tags=value))
    with pytest.raises(ClientException) as on_tag:
        client.tag_resource(kms.TagResourceRequest(key_id=key_id, tags=value))

    for info in (on_create, on_tag):
        assert (info.value.code, info.value.status_code) == ("InvalidParameter", 400)
        assert info.value.data["Message"] == f"Tags {message}"
    assert key_count(emulator) == 1


@pytest.fixture
def rpc(engine: KmsEngine) -> Iterator[KmsResponses]:
    yield KmsResponses(engine)


@pytest.mark.parametrize("case", sorted(HOSTILE_JSON))
@pytest.mark.parametrize(
    ("action", "name"), [("CreateKey", "Tags"), ("ListKeys", "Filters"), ("UntagResource", "TagKeys")]
)
def test_every_json_parameter_is_bounded(rpc: KmsResponses, action: str, name: str, case: str) -> None:
    value, message = HOSTILE_JSON[case]
    key_id = rpc.handle("CreateKey", {**CREATE_QUERY})["KeyMetadata"]["KeyId"]

    with kms_error("InvalidParameter", 400, f"{name} {message}"):
        rpc.handle(action, {**CREATE_QUERY, "KeyId": key_id, name: value})


def test_depth_scan_ignores_brackets_inside_strings() -> None:
    assert not json_depth_exceeds(json.dumps([{"TagKey": "[[[[[[[[[[", "TagValue": '\\"{{{{{{{{{{'}]), 2)
    assert json_depth_exceeds("[[[]]]", 2)
    assert not json_depth_exceeds("[[]]", 2)


def test_huge_integer_parameter_is_refused_without_echoing_it(rpc: KmsResponses) -> None:
    with pytest.raises(KmsError) as info:
        rpc.handle("ListKeys", {"PageNumber": "1" * 5000})

    assert (info.value.code, info.value.status) == ("InvalidParameter", 400)
    assert info.value.message == f"PageNumber must be an integer, got {'1' * 64!r}..."


# --- instances that take no asymmetric import ---------------------------------------------------------


def test_instance_flag_parses_asymmetric_import() -> None:
    assert parse_instances(["kst-a=software", "kst-b=hardware,asymmetric-import=no",
                            "kst-c=software,asymmetric-import=yes"]) == {
        "kst-a": InstanceSetup("software"),
        "kst-b": InstanceSetup("hardware", asymmetric_import=False),
        "kst-c": InstanceSetup("software", asymmetric_import=True),
    }
    for bad in ("kst-a=software,asymmetric-import", "kst-a=software,import=no", "kst-a=software,"):
        with pytest.raises(ValueError, match="expected ID=software|hardware"):
            parse_instances([bad])
    assert EmulatorConfig(instances=parse_instances(["kst-b=hardware,asymmetric-import=no"])).instances


def test_instance_without_asymmetric_import_refuses_external_keys() -> None:
    engine = KmsEngine(instances={"kst-open": "software",
                                  "kst-closed": InstanceSetup("software", asymmetric_import=False)})
    try:
        with kms_error("Unsupported.Origin", 400,
                       "KMS instance kst-closed does not take asymmetric keys with imported material"):
            engine.create_key(key_spec="RSA_2048", origin="EXTERNAL", instance_id="kst-closed")
        assert engine.list_keys().total_count == 0
        assert engine.create_key(key_spec="RSA_2048", origin="EXTERNAL", instance_id="kst-open").key_id
        assert engine.instances == {"kst-open": "software", "kst-closed": "software"}
    finally:
        engine.close()
