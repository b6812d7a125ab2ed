"""The emulator's HTTP layer through the official SDK: signatures, timestamps, nonces, switches, stats.

Requests the SDK cannot produce (stale timestamps, replayed nonces, tampered bodies) are crafted with
http.client and signed with `provisioner.emulator.signing`; the SDK tests prove that module agrees
with the vendor's.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from alibabacloud_kms20160120 import models as kms
from alibabacloud_kms20160120.client import Client
from alibabacloud_tea_openapi import utils_models as openapi_models
from alibabacloud_tea_openapi.exceptions import ClientException, ServerException
from conftest import RunningEmulator
from darabonba.runtime import RuntimeOptions
from wire_support import CREATE_QUERY, now_stamp, raw_v2, raw_v3, send

from provisioner.emulator import signing
from provisioner.emulator.server import (
    API_VERSION,
    UNKNOWN_ACTION,
    EmulatorConfig,
    EmulatorServer,
)

pytestmark = pytest.mark.slow

Factory = Callable[..., RunningEmulator]
SIGNATURE_MESSAGE = "The request signature does not conform to Aliyun standards."
WRONG_SIGNATURE_MESSAGE = "Specified signature is not matched with our calculation."


def create_key(client: Client, description: str = "wire test") -> str:
    resp = client.create_key(
        kms.CreateKeyRequest(
            key_spec="RSA_2048",
            key_usage="SIGN/VERIFY",
            origin="EXTERNAL",
            protection_level="SOFTWARE",
            dkmsinstance_id="kst-local-software",
            description=description,
        )
    )
    key_id: str = resp.body.key_metadata.key_id
    return key_id


def key_count(client: Client) -> int:
    total: int = client.list_keys(kms.ListKeysRequest(page_number=1, page_size=100)).body.total_count
    return total




# -- both signature versions accepted ---------------------------------------------------------------


@pytest.mark.parametrize("algorithm", [None, "v2"], ids=["v3", "v2"])
def test_sdk_calls_signed_either_way_are_accepted(emulator: RunningEmulator, algorithm: str | None) -> None:
    client = emulator.sdk_client(**({"signature_algorithm": algorithm} if algorithm else {}))
    key_id = create_key(client, description="spaces & symbols: a+b=c/d 中文")

    meta = client.describe_key(kms.DescribeKeyRequest(key_id=key_id)).body.key_metadata

    assert meta.key_id == key_id
    assert meta.key_state == "PendingImport"
    assert meta.description == "spaces & symbols: a+b=c/d 中文"
    assert emulator.stats()["calls"] == {"CreateKey": 1, "DescribeKey": 1}


def test_v2_get_request_is_accepted(emulator: RunningEmulator) -> None:
    status, body = raw_v2(emulator, "CreateKey", CREATE_QUERY, method="GET")

    assert status == 200, body
    assert body["KeyMetadata"]["KeyState"] == "PendingImport"
    assert body["RequestId"]


# -- refused requests change nothing ----------------------------------------------------------------


@pytest.mark.parametrize("algorithm", [None, "v2"], ids=["v3", "v2"])
def test_wrong_secret_is_refused_and_changes_nothing(
    emulator: RunningEmulator, algorithm: str | None
) -> None:
    extra = {"signature_algorithm": algorithm} if algorithm else {}
    forger = emulator.sdk_client(access_key_secret="not-the-secret", **extra)

    with pytest.raises(ClientException) as info:
        create_key(forger)

    assert info.value.code == "SignatureDoesNotMatch"
    assert info.value.status_code == 400
    if algorithm == "v2":
        # The service quotes the V2 string to sign it computed (aliyun-python-sdk-core reads it).
        tail = info.value.data["Message"].removeprefix(WRONG_SIGNATURE_MESSAGE)
        assert tail.startswith(" server string to sign is:POST&%2F&"), info.value.data["Message"]
    else:
        assert info.value.data["Message"] == WRONG_SIGNATURE_MESSAGE
    assert key_count(emulator.sdk_client()) == 0


@pytest.mark.parametrize("algorithm", [None, "v2"], ids=["v3", "v2"])
def test_unknown_access_key_is_refused(emulator: RunningEmulator, algorithm: str | None) -> None:
    extra = {"signature_algorithm": algorithm} if algorithm else {}
    stranger = emulator.sdk_client(access_key_id="LTAI5tSomebodyElse", **extra)

    with pytest.raises(ClientException) as info:
        create_key(stranger)

    assert info.value.code == "InvalidAccessKeyId.NotFound"
    assert info.value.status_code == 404
    assert info.value.data["Message"] == "Specified access key is not found."
    assert key_count(emulator.sdk_client()) == 0


@pytest.mark.parametrize("minutes", [-16, 16], ids=["stale", "future"])
def test_timestamp_outside_fifteen_minutes_is_refused(emulator: RunningEmulator, minutes: int) -> None:
    stamp = now_stamp(timedelta(minutes=minutes))
    status, body = raw_v3(emulator, "CreateKey", CREATE_QUERY, date=stamp)
    v2_status, v2_body = raw_v2(emulator, "CreateKey", CREATE_QUERY, timestamp=stamp)

    assert (status, body["Code"]) == (400, "IllegalTimestamp")
    assert body["Message"].startswith("Specified time stamp or date value is expired")
    assert (v2_status, v2_body["Code"]) == (400, "IllegalTimestamp")
    assert v2_body["Message"] == body["Message"]
    assert key_count(emulator.sdk_client()) == 0


@pytest.mark.parametrize("stamp", ["", "2026-11-29 01:00:00", "yesterday"])
def test_missing_or_garbled_timestamp_is_refused(emulator: RunningEmulator, stamp: str) -> None:
    status, body = raw_v3(emulator, "CreateKey", CREATE_QUERY, date=stamp)
    v2_status, v2_body = raw_v2(emulator, "CreateKey", CREATE_QUERY, timestamp=stamp)

    assert (status, body["Code"]) == (400, "IllegalTimestamp")
    assert body["Message"].startswith('The input parameter "x-acs-date" that is mandatory')
    assert (v2_status, v2_body["Code"]) == (400, "IllegalTimestamp")
    assert v2_body["Message"].startswith('The input parameter "Timestamp" that is mandatory')
    assert key_count(emulator.sdk_client()) == 0


def test_timestamp_within_fifteen_minutes_is_accepted(emulator: RunningEmulator) -> None:
    status, body = raw_v3(emulator, "CreateKey", CREATE_QUERY, date=now_stamp(timedelta(minutes=-14)))

    assert status == 200, body


@pytest.mark.parametrize("version", ["v3", "v2"])
def test_replayed_nonce_is_refused_and_changes_nothing(emulator: RunningEmulator, version: str) -> None:
    nonce = uuid.uuid4().hex
    replay = raw_v3 if version == "v3" else raw_v2

    first_status, _ = replay(emulator, "CreateKey", CREATE_QUERY, nonce=nonce)
    status, body = replay(emulator, "CreateKey", CREATE_QUERY, nonce=nonce)

    assert first_status == 200
    assert (status, body["Code"]) == (400, "SignatureNonceUsed")
    assert body["Message"] == "Specified signature nonce was used already."
    assert key_count(emulator.sdk_client()) == 1


def test_body_not_matching_its_signed_hash_is_refused(emulator: RunningEmulator) -> None:
    signed_hash = signing.sha256_hex(b"Description=original")

    status, body = raw_v3(
        emulator, "CreateKey", CREATE_QUERY, body=b"Description=tampered", payload_hash=signed_hash
    )

    assert (status, body["Code"]) == (400, "IncompleteSignature")
    assert body["Message"] == SIGNATURE_MESSAGE
    assert key_count(emulator.sdk_client()) == 0


def test_form_body_parameters_reach_the_action(emulator: RunningEmulator) -> None:
    status, body = raw_v3(emulator, "CreateKey", CREATE_QUERY, body=b"Description=from+the+body")

    assert status == 200, body
    assert body["KeyMetadata"]["Description"] == "from the body"


def test_unsupported_api_version_is_refused(emulator: RunningEmulator) -> None:
    status, body = raw_v2(emulator, "CreateKey", CREATE_QUERY, version="2015-01-01")

    assert (status, body["Code"]) == (400, "InvalidVersion")
    assert body["Message"] == "Specified parameter Version is not valid."


def test_unsigned_request_is_refused(emulator: RunningEmulator) -> None:
    path = "/?" + urlencode({"Action": "ListKeys"})
    status, body = send(emulator, "POST", path, {"host": emulator.endpoint})

    assert (status, body["Code"]) == (400, "MissingParameter")
    assert "Signature" in body["Message"]


def test_unknown_action_is_answered_invalid_action(emulator: RunningEmulator) -> None:
    client = emulator.sdk_client()
    params = openapi_models.Params(
        action="FrobnicateKey", version=API_VERSION, protocol="HTTPS", pathname="/", method="POST",
        auth_type="AK", style="RPC", req_body_type="formData", body_type="json",
    )

    with pytest.raises(ClientException) as info:
        client.call_api(params, openapi_models.OpenApiRequest(query={"KeyId": "x"}), RuntimeOptions())

    assert info.value.code == "InvalidAction.NotFound"
    assert info.value.status_code == 404
    assert info.value.data["Message"] == "Specified api is not found, please check your url and method."


# -- switches ---------------------------------------------------------------------------------------


def test_burst_over_read_qps_meets_throttling(emulator_factory: Factory) -> None:
    emu = emulator_factory(qps={"read": 5.0})
    client = emu.sdk_client()
    key_id = create_key(client)
    throttled: list[ClientException] = []

    started = time.monotonic()
    ok = 0
    for _ in range(25):
        try:
            client.describe_key(kms.DescribeKeyRequest(key_id=key_id))
            ok += 1
        except ClientException as e:
            throttled.append(e)
    elapsed = time.monotonic() - started

    assert throttled, "25 reads at once must exceed 5 per second"
    assert {(e.code, e.status_code) for e in throttled} == {("Rejected.Throttling", 429)}
    assert throttled[0].data["Message"] == "QPS Limit Exceeded"
    assert ok <= 5 + 5 * elapsed + 1
    # Another quota group keeps its own budget.
    create_key(client)


def test_fault_rate_one_answers_503_before_any_state_change(
    emulator_factory: Factory, tmp_path: Path
) -> None:
    db = tmp_path / "kms.db"
    faulty = emulator_factory(db=db, fault_rate=1.0, seed=7)

    with pytest.raises(ServerException) as info:
        create_key(faulty.sdk_client())

    assert info.value.code == "ServiceUnavailableTemporary"
    assert info.value.status_code == 503
    assert info.value.data["Message"] == "Service is temporarily unavailable, please try again later."
    assert faulty.stats()["calls"] == {"CreateKey": 1}
    faulty.stop()
    assert key_count(emulator_factory(db=db).sdk_client()) == 0


def test_fault_rate_is_reproducible_with_a_seed(emulator_factory: Factory) -> None:
    def outcomes(emu: RunningEmulator) -> list[bool]:
        client = emu.sdk_client()
        result = []
        for _ in range(20):
            try:
                key_count(client)
                result.append(True)
            except ServerException as e:
                assert e.code == "ServiceUnavailableTemporary"
                result.append(False)
        return result

    first = outcomes(emulator_factory(fault_rate=0.5, seed=42))
    second = outcomes(emulator_factory(fault_rate=0.5, seed=42))

    assert first == second
    assert True in first and False in first


def test_latency_is_added_to_every_answer(emulator_factory: Factory) -> None:
    emu = emulator_factory(latency_ms=150)
    client = emu.sdk_client()

    started = time.monotonic()
    key_count(client)
    with pytest.raises(ClientException):
        emu.sdk_client(access_key_secret="wrong").list_keys(kms.ListKeysRequest())
    elapsed = time.monotonic() - started

    assert elapsed >= 0.3


def test_stats_count_every_request_refused_ones_included(emulator: RunningEmulator) -> None:
    client = emulator.sdk_client()
    key_id = create_key(client)
    client.describe_key(kms.DescribeKeyRequest(key_id=key_id))
    with pytest.raises(ClientException):
        emulator.sdk_client(access_key_secret="wrong").describe_key(kms.DescribeKeyRequest(key_id=key_id))
    with pytest.raises(ClientException):
        client.describe_key(kms.DescribeKeyRequest(key_id="no-such-key"))
    send(emulator, "POST", "/", {"host": emulator.endpoint})

    assert emulator.stats() == {"calls": {UNKNOWN_ACTION: 1, "CreateKey": 1, "DescribeKey": 3}}


def test_db_state_survives_a_restart(emulator_factory: Factory, tmp_path: Path) -> None:
    db = tmp_path / "kms.db"
    first = emulator_factory(db=db)
    key_id = create_key(first.sdk_client(), description="kept")
    first.stop()

    second = emulator_factory(db=db)
    meta = second.sdk_client().describe_key(kms.DescribeKeyRequest(key_id=key_id)).body.key_metadata

    assert (meta.key_id, meta.description, meta.key_state) == (key_id, "kept", "PendingImport")


# -- server internals through a stub action handler ---------------------------------------------------


class RecordingHandler:
    def __init__(self, fail_with: Exception | None = None) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.fail_with = fail_with

    def handle(self, action: str, params: Mapping[str, str]) -> dict[str, Any]:
        self.calls.append((action, dict(params)))
        if self.fail_with is not None:
            raise self.fail_with
        return {"RequestId": "stub", "Plaintext": "aGVsbG8="}


@pytest.fixture
def stub_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[RecordingHandler], RunningEmulator]]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    servers: list[EmulatorServer] = []

    def start(handler: RecordingHandler) -> RunningEmulator:
        server = EmulatorServer(EmulatorConfig(), responses=handler)
        servers.append(server)
        server.start()
        return RunningEmulator(server)

    yield start
    for server in servers:
        server.shutdown()


@pytest.mark.parametrize("algorithm", [None, "v2"], ids=["v3", "v2"])
def test_action_gets_query_and_body_merged_without_common_parameters(
    stub_server: Callable[[RecordingHandler], RunningEmulator], algorithm: str | None
) -> None:
    handler = RecordingHandler()
    emu = stub_server(handler)
    client = emu.sdk_client(**({"signature_algorithm": algorithm} if algorithm else {}))

    client.asymmetric_decrypt(
        kms.AsymmetricDecryptRequest(
            key_id="key-1", key_version_id="v-1", algorithm="RSAES_OAEP_SHA_256", ciphertext_blob="q+/=="
        )
    )
    client.tag_resources(
        kms.TagResourcesRequest(
            resource_id=["key-1", "key-2"], resource_type="key",
            tag=[kms.TagResourcesRequestTag(key="team name", value="a=b&c")],
        )
    )

    assert handler.calls == [
        ("AsymmetricDecrypt", {"KeyId": "key-1", "KeyVersionId": "v-1", "Algorithm": "RSAES_OAEP_SHA_256",
                               "CiphertextBlob": "q+/=="}),
        ("TagResources", {"ResourceId.1": "key-1", "ResourceId.2": "key-2", "ResourceType": "key",
                          "Tag.1.Key": "team name", "Tag.1.Value": "a=b&c"}),
    ]


def test_unexpected_failure_is_internal_failure_and_logs_no_parameters(
    stub_server: Callable[[RecordingHandler], RunningEmulator], capfd: pytest.CaptureFixture[str]
) -> None:
    emu = stub_server(RecordingHandler(fail_with=RuntimeError("token-abc123 leaked")))

    with pytest.raises(ServerException) as info:
        emu.sdk_client().asymmetric_decrypt(
            kms.AsymmetricDecryptRequest(key_id="key-1", algorithm="RSAES_OAEP_SHA_256",
                                         ciphertext_blob="SECRETBLOB")
        )

    assert (info.value.code, info.value.status_code) == ("InternalFailure", 500)
    assert info.value.data["Message"] == "Internal Failure"
    err = capfd.readouterr().err
    assert "internal failure in AsymmetricDecrypt (RuntimeError)" in err
    assert "token-abc123" not in err and "SECRETBLOB" not in err


def test_stats_endpoint_needs_no_signature(emulator: RunningEmulator) -> None:
    status, body = send(emulator, "GET", "/_emulator/stats", {"host": emulator.endpoint})

    assert (status, body) == (200, {"calls": {}})


def test_shutdown_is_idempotent_and_frees_the_port(emulator: RunningEmulator) -> None:
    key_count(emulator.sdk_client())  # leaves a keep-alive connection open in the SDK's pool

    emulator.stop()
    emulator.stop()

    with pytest.raises(OSError):
        http.client.HTTPConnection(emulator.host, emulator.port, timeout=2).connect()


def test_garbled_content_length_is_refused_and_counted(emulator: RunningEmulator) -> None:
    conn = http.client.HTTPConnection(emulator.host, emulator.port, timeout=10)
    try:
        conn.putrequest("POST", "/?Action=DescribeKey")
        conn.putheader("Content-Length", "lots")
        conn.endheaders()
        resp = conn.getresponse()
        status, body = resp.status, json.loads(resp.read())
    finally:
        conn.close()

    assert (status, body["Code"]) == (400, "InvalidParameter")
    assert body["Message"] == "The request body length is not valid."
    assert emulator.stats() == {"calls": {"DescribeKey": 1}}


def test_body_that_is_not_utf8_is_refused_and_counted(emulator: RunningEmulator) -> None:
    status, body = raw_v3(emulator, "CreateKey", CREATE_QUERY, body=b"Description=\xff\xfe")

    assert (status, body["Code"]) == (400, "InvalidParameter")
    assert body["Message"] == "The request body is not valid UTF-8."
    assert emulator.stats() == {"calls": {"CreateKey": 1}}
    assert key_count(emulator.sdk_client()) == 0
