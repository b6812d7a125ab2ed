"""AlibabaTransport: the official SDK against the emulator's HTTP layer, and the error mapping at the seam.

The wire tests run the real server (signature checks included) with a scripted action handler, so they
test this transport and not the engine; the engine's own wire tests live with the emulator.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from alibabacloud_credentials.exceptions import CredentialException
from alibabacloud_kms20160120 import models as sdk_models
from alibabacloud_kms20160120.client import Client as SdkClient
from alibabacloud_tea_openapi.exceptions import ClientException, ServerException

from provisioner.backend import open_kms
from provisioner.backend.alibaba import (
    AlibabaTransport,
    api_error,
    connection_reason,
    parse_endpoint,
    snake_case,
)
from provisioner.backend.base import QUOTA_GROUPS, Kms
from provisioner.backend.resilience import KmsConnectionError, ResilientTransport
from provisioner.emulator.models import KmsError
from provisioner.emulator.server import (
    DEFAULT_ACCESS_KEY_ID,
    DEFAULT_ACCESS_KEY_SECRET,
    EmulatorConfig,
    EmulatorServer,
)
from provisioner.errors import BackendError, KmsApiError, KmsUnreachable, UsageError
from provisioner.model import BackendConfig
from provisioner.specs import facts
from provisioner.wire import ErrorCode

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")
SECRET_TOKEN = "IMPORT-TOKEN-must-never-show"

META = {
    "KeyId": "key-1",
    "Arn": "acs:kms:cn-hangzhou:1:key/key-1",
    "KeyState": "Enabled",
    "KeySpec": "RSA_2048",
    "KeyUsage": "SIGN/VERIFY",
    "Origin": "EXTERNAL",
    "ProtectionLevel": "SOFTWARE",
    "DKMSInstanceId": "kst-local-software",
    "Description": "d",
    "CreationDate": "2026-01-02T03:04:05Z",
    "MaterialExpireTime": "",
    "DeletionProtection": "Disabled",
    "PrimaryKeyVersion": "v-1",
}


class ScriptedKms:
    """Action handler for the server: records parameters, answers DescribeKey and ListTagResources."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []

    def handle(self, action: str, params: Mapping[str, str]) -> dict[str, Any]:
        self.seen.append((action, dict(params)))
        if action == "DescribeKey":
            if params.get("KeyId") != "key-1":
                raise KmsError(ErrorCode.FORBIDDEN_KEY_NOT_FOUND, "The specified Key is not found.")
            return {"RequestId": "r-1", "KeyMetadata": META}
        if action == "ListTagResources":
            return {
                "RequestId": "r-2",
                "TagResources": {"TagResource": [{"ResourceId": "key-1", "TagKey": "a", "TagValue": "b"}]},
            }
        if action == "ImportKeyMaterial":
            raise KmsError(ErrorCode.INVALID_IMPORT_TOKEN, "The import token is invalid.")
        return {"RequestId": "r-3"}


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server(no_proxy: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[EmulatorServer, ScriptedKms]]:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", DEFAULT_ACCESS_KEY_ID)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", DEFAULT_ACCESS_KEY_SECRET)
    monkeypatch.delenv("ALIBABA_CLOUD_SECURITY_TOKEN", raising=False)
    handler = ScriptedKms()
    srv = EmulatorServer(EmulatorConfig(host="127.0.0.1", port=0), responses=handler)
    srv.start()
    try:
        yield srv, handler
    finally:
        srv.shutdown()


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- pure pieces ---------------------------------------------------------------------------------


def test_every_action_we_use_has_an_sdk_request_and_method() -> None:
    for action in QUOTA_GROUPS:
        assert hasattr(sdk_models, action + "Request"), action
        assert hasattr(SdkClient, snake_case(action) + "_with_options"), action
    assert snake_case("ListAliasesByKeyId") == "list_aliases_by_key_id"


@pytest.mark.parametrize(
    ("endpoint", "region", "expected"),
    [
        (None, "cn-hangzhou", ("kms.cn-hangzhou.aliyuncs.com", "https")),
        ("http://127.0.0.1:8080", None, ("127.0.0.1:8080", "http")),
        ("https://kms.example.com/", None, ("kms.example.com", "https")),
        ("kms-vpc.cn-shanghai.aliyuncs.com", "cn-shanghai", ("kms-vpc.cn-shanghai.aliyuncs.com", "https")),
        ("HTTP://localhost:9", None, ("localhost:9", "http")),
    ],
)
def test_parse_endpoint(endpoint: str | None, region: str | None, expected: tuple[str, str]) -> None:
    assert parse_endpoint(endpoint, region) == expected


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("ftp://host", "--endpoint: unsupported scheme 'ftp' in 'ftp://host' (http or https)"),
        (
            "http://host/path",
            "--endpoint: expected http://host:port, https://host or host, got 'http://host/path'",
        ),
        ("http://", "--endpoint: expected http://host:port, https://host or host, got 'http://'"),
        (None, "the alibaba backend needs a region (--region or ALIBABA_CLOUD_REGION_ID)"),
    ],
)
def test_parse_endpoint_errors(endpoint: str | None, message: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_endpoint(endpoint, None)
    assert str(e.value) == message


URL_WITH_SECRET = f"/?ImportToken={SECRET_TOKEN}&KeyId=k"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: {URL_WITH_SECRET} "
            "(Caused by NewConnectionError(\"HTTPConnection(host='127.0.0.1', port=9): Failed to establish "
            'a new connection: [Errno 111] Connection refused"))',
            ("connection refused", False),
        ),
        (
            f"HTTPSConnectionPool(host='kms.x', port=443): Read timed out. (read timeout=15.0) "
            f"{URL_WITH_SECRET}",
            ("read timed out", True),
        ),
        (
            f"HTTPConnectionPool(host='10.0.0.1', port=80): Max retries exceeded with url: {URL_WITH_SECRET} "
            "(Caused by ConnectTimeoutError(<...>, "
            "'Connection to 10.0.0.1 timed out. (connect timeout=5.0)'))",
            ("connect timed out", False),
        ),
        (
            f"HTTPSConnectionPool(host='nowhere.invalid', port=443): Max retries exceeded with url: "
            f"{URL_WITH_SECRET} (Caused by NameResolutionError(\"<...>: Failed to resolve 'nowhere.invalid' "
            '([Errno -2] Name or service not known)"))',
            ("name or service not known", False),
        ),
        (
            f"('Connection aborted.', RemoteDisconnected('Remote end closed connection')) {URL_WITH_SECRET}",
            ("connection closed by the server", True),
        ),
        (f"something new {URL_WITH_SECRET} [Errno 99] {SECRET_TOKEN}", ("connection failed", True)),
    ],
)
def test_connection_reason_is_short_and_never_echoes_the_url(text: str, expected: tuple[str, bool]) -> None:
    reason, sent = connection_reason(text)
    assert (reason, sent) == expected
    assert SECRET_TOKEN not in reason


def test_api_error_keeps_code_message_request_id_and_status() -> None:
    sdk_error = ServerException(
        status_code=503,
        code="ServiceUnavailableTemporary",
        message="code: 503, Service busy request id: r-9",
        data={"Code": "ServiceUnavailableTemporary", "Message": "Service busy", "RequestId": "r-9"},
        request_id="r-9",
    )
    err = api_error("DescribeKey", sdk_error)
    assert (err.action, err.code, err.message, err.request_id, err.status) == (
        "DescribeKey",
        "ServiceUnavailableTemporary",
        "Service busy",
        "r-9",
        503,
    )
    assert err.retryable
    assert str(err) == "DescribeKey: ServiceUnavailableTemporary: Service busy (request id r-9)"


def test_api_error_drops_a_vendor_string_to_sign() -> None:
    sdk_error = ClientException(
        status_code=400,
        code="InvalidParameter",
        message="x",
        data={
            "Code": "InvalidParameter",
            "Message": f"Bad request. Server string to sign is:POST&%2F&ImportToken%3D{SECRET_TOKEN}",
            "RequestId": "r",
        },
    )
    err = api_error("ImportKeyMaterial", sdk_error)
    assert err.message == "Bad request"
    assert SECRET_TOKEN not in str(err)


def test_vendor_signature_error_says_credentials_were_refused() -> None:
    sdk_error = ClientException(
        status_code=400,
        code="SignatureDoesNotMatch",
        message="x",
        data={"Code": "SignatureDoesNotMatch", "Message": f"server string to sign is: {SECRET_TOKEN}"},
    )
    err = api_error("ImportKeyMaterial", sdk_error)
    assert err.code == "SignatureDoesNotMatch"
    assert err.message.startswith("the credentials were refused")
    assert SECRET_TOKEN not in str(err)


def test_missing_credentials_are_one_clear_error(no_proxy: None) -> None:
    class NoCredentials:
        def get_credential(self) -> Any:
            raise CredentialException("unable to load credentials from any of the providers in the chain")

    transport = AlibabaTransport(
        f"http://127.0.0.1:{closed_port()}", "cn-hangzhou", credentials=NoCredentials()
    )
    with pytest.raises(BackendError) as e:
        transport.call("DescribeKey", {"KeyId": "k"})
    assert type(e.value) is BackendError
    assert str(e.value) == (
        "no Alibaba Cloud credentials found: set ALIBABA_CLOUD_ACCESS_KEY_ID and "
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET, a profile, a RAM role or OIDC"
    )
    transport.close()


# --- over the wire -------------------------------------------------------------------------------


@pytest.mark.slow
def test_round_trip_sends_wire_params_and_returns_the_body(
    server: tuple[EmulatorServer, ScriptedKms],
) -> None:
    srv, handler = server
    transport = AlibabaTransport(srv.url, "cn-hangzhou")
    try:
        body = transport.call("DescribeKey", {"KeyId": "key-1"})
        assert body["KeyMetadata"]["KeyId"] == "key-1"
        assert body["KeyMetadata"]["PrimaryKeyVersion"] == "v-1"
        rows = transport.call(
            "ListTagResources",
            {"ResourceType": "key", "ResourceId": ["key-1", "key-2"], "Tag": [{"Key": "a", "Value": "b"}]},
        )
        assert rows["TagResources"]["TagResource"] == [
            {"ResourceId": "key-1", "TagKey": "a", "TagValue": "b"}
        ]
    finally:
        transport.close()
    assert handler.seen[0] == ("DescribeKey", {"KeyId": "key-1"})
    action, params = handler.seen[1]
    assert action == "ListTagResources"
    assert {k: params[k] for k in ("ResourceId.1", "ResourceId.2", "Tag.1.Key", "Tag.1.Value")} == {
        "ResourceId.1": "key-1",
        "ResourceId.2": "key-2",
        "Tag.1.Key": "a",
        "Tag.1.Value": "b",
    }


@pytest.mark.slow
def test_through_the_kms_facade_from_open_kms(server: tuple[EmulatorServer, ScriptedKms]) -> None:
    srv, _ = server
    kms = open_kms(backend=None, endpoint=srv.url, region=None, manifest_backend=None)
    try:
        assert kms.description == f"alibaba at {srv.url}"
        meta = kms.describe_key("key-1")
        assert meta.key_id == "key-1"
        assert isinstance(kms.transport, ResilientTransport)
        assert kms.transport.calls == {"DescribeKey": 1}
    finally:
        kms.close()


@pytest.mark.slow
def test_vendor_error_maps_to_kms_api_error(server: tuple[EmulatorServer, ScriptedKms]) -> None:
    srv, _ = server
    transport = AlibabaTransport(srv.url, "cn-hangzhou")
    try:
        with pytest.raises(KmsApiError) as e:
            transport.call("DescribeKey", {"KeyId": "missing"})
        assert e.value.code == "Forbidden.KeyNotFound"
        assert e.value.status == 404
        assert e.value.message == "The specified Key is not found."
        assert e.value.request_id
        assert str(e.value).startswith("DescribeKey: Forbidden.KeyNotFound: The specified Key is not found.")

        with pytest.raises(KmsApiError) as e2:
            transport.call("ImportKeyMaterial", {"KeyId": "key-1", "ImportToken": SECRET_TOKEN})
        assert e2.value.code == "InvalidImportToken"
        assert SECRET_TOKEN not in str(e2.value)
    finally:
        transport.close()


@pytest.mark.slow
def test_wrong_secret_says_credentials_were_refused(
    server: tuple[EmulatorServer, ScriptedKms], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, handler = server
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "not-the-secret")
    kms = open_kms(backend="alibaba", endpoint=srv.url, region="cn-hangzhou", manifest_backend=None)
    try:
        with pytest.raises(KmsApiError) as e:
            kms.describe_key("key-1")
    finally:
        kms.close()
    assert e.value.code == "SignatureDoesNotMatch"
    assert e.value.message == (
        "the credentials were refused (set ALIBABA_CLOUD_ACCESS_KEY_ID and "
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET, a profile, a RAM role or OIDC)"
    )
    assert "not-the-secret" not in str(e.value)
    assert handler.seen == []


@pytest.mark.slow
def test_wrong_access_key_id_says_credentials_were_refused(
    server: tuple[EmulatorServer, ScriptedKms], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, _ = server
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAIunknown")
    transport = AlibabaTransport(srv.url, "cn-hangzhou")
    try:
        with pytest.raises(KmsApiError) as e:
            transport.call("DescribeKey", {"KeyId": "key-1"})
    finally:
        transport.close()
    assert e.value.code == "InvalidAccessKeyId.NotFound"
    assert e.value.status == 404
    assert e.value.message.startswith("the credentials were refused")


@pytest.mark.slow
def test_nothing_listening_is_unreachable_within_seconds(
    no_proxy: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "AK")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "SK")
    url = f"http://127.0.0.1:{closed_port()}"
    kms = open_kms(
        backend="alibaba",
        endpoint=url,
        region="cn-hangzhou",
        manifest_backend=None,
        max_elapsed=1.0,
        cwd=tmp_path,
    )
    started = time.monotonic()
    try:
        with pytest.raises(KmsUnreachable) as e:
            kms.list_aliases()
    finally:
        kms.close()
    assert time.monotonic() - started < 5.0
    message = str(e.value)
    assert message.startswith(f"cannot reach KMS at {url}: connection refused (gave up after ")
    assert message.endswith(" s)")
    assert isinstance(e.value.__cause__, KmsConnectionError)
    assert e.value.__cause__.request_sent is False


@pytest.mark.slow
def test_single_attempt_connection_failure_is_a_connection_error(
    no_proxy: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "AK")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "SK")
    url = f"http://127.0.0.1:{closed_port()}"
    transport = AlibabaTransport(url, "cn-hangzhou")
    try:
        with pytest.raises(KmsConnectionError) as e:
            transport.call("ImportKeyMaterial", {"KeyId": "k", "ImportToken": SECRET_TOKEN})
    finally:
        transport.close()
    assert str(e.value) == f"ImportKeyMaterial: cannot reach KMS at {url}: connection refused"
    assert SECRET_TOKEN not in str(e.value)


def test_open_kms_describes_the_default_alibaba_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIBABA_CLOUD_REGION_ID", "cn-shanghai")
    kms = open_kms(backend=None, endpoint=None, region=None, manifest_backend=BackendConfig(type="alibaba"))
    assert kms.description == "alibaba cn-shanghai at https://kms.cn-shanghai.aliyuncs.com"
    assert kms.info == {
        "type": "alibaba",
        "region": "cn-shanghai",
        "endpoint": "https://kms.cn-shanghai.aliyuncs.com",
    }
    kms.close()


def test_open_kms_flags_beat_the_manifest(monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = BackendConfig(type="alibaba", region="cn-beijing", endpoint="kms.cn-beijing.aliyuncs.com")
    kms = open_kms(
        backend=None, endpoint="http://127.0.0.1:1", region="cn-hangzhou", manifest_backend=manifest
    )
    assert kms.description == "alibaba cn-hangzhou at http://127.0.0.1:1"
    kms.close()
    kms = open_kms(backend=None, endpoint=None, region=None, manifest_backend=manifest)
    assert kms.description == "alibaba cn-beijing at https://kms.cn-beijing.aliyuncs.com"
    kms.close()


def test_open_kms_alibaba_without_region_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALIBABA_CLOUD_REGION_ID", raising=False)
    with pytest.raises(UsageError) as e:
        open_kms(backend="alibaba", endpoint=None, region=None, manifest_backend=None)
    assert str(e.value) == (
        "the alibaba backend needs a region: --region, backend.region in the manifest, "
        "or ALIBABA_CLOUD_REGION_ID"
    )


def test_open_kms_unknown_backend_and_endpoint_on_local() -> None:
    with pytest.raises(UsageError) as e:
        open_kms(backend=None, endpoint=None, region=None, manifest_backend=BackendConfig(type="aws"))
    assert str(e.value) == "unknown backend 'aws' (expected local or alibaba)"
    with pytest.raises(UsageError) as e:
        open_kms(
            backend=None, endpoint="http://h:1", region=None, manifest_backend=BackendConfig(type="local")
        )
    assert str(e.value) == "--endpoint needs --backend alibaba: the manifest's backend is local"


def test_kms_facade_is_what_open_kms_returns() -> None:
    kms = open_kms(
        backend="alibaba", endpoint="https://kms.example", region="cn-hangzhou", manifest_backend=None
    )
    assert isinstance(kms, Kms)
    kms.close()


# --- through the SDK against the full emulator (engine included) -------------------------------


def sdk_kms(emulator: Any, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> Kms:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", emulator.access_key_id)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", emulator.access_key_secret)
    monkeypatch.delenv("ALIBABA_CLOUD_SECURITY_TOKEN", raising=False)
    return open_kms(
        backend="alibaba", endpoint=emulator.url, region="cn-hangzhou", manifest_backend=None, **kw
    )


def stack_key(kms: Kms, name: str, *, stack: str = "payments", material: Any = None) -> str:
    from provisioner.model import (
        TAG_FINGERPRINT,
        TAG_NAME,
        TAG_STACK,
        KeySpec,
        KeyUsage,
        ProtectionLevel,
    )
    from provisioner.wrapping import wrap

    tags = {TAG_STACK: stack, TAG_NAME: name}
    if material is not None:
        tags[TAG_FINGERPRINT] = material.fingerprint
    meta = kms.create_key(
        spec=KeySpec.EC_P256,
        usage=KeyUsage.SIGN_VERIFY,
        protection=ProtectionLevel.SOFTWARE,
        instance="kst-local-software",
        description=name,
        tags=tags,
    )
    if material is not None:
        algorithm = facts(KeySpec.EC_P256).wrapping_algorithm
        params = kms.get_parameters_for_import(meta.key_id, algorithm)
        kms.import_key_material(
            meta.key_id, wrap(material, params.public_key_der, algorithm), params.import_token, 0
        )
    return meta.key_id


def ec_material() -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from provisioner.material import parse_private_key

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return parse_private_key(pem)


@pytest.mark.slow
def test_emulator_round_trip_and_refresh_over_the_sdk(emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import UTC, datetime

    from provisioner.model import KeyStatus
    from provisioner.refresh import refresh

    kms = sdk_kms(emulator, monkeypatch)
    try:
        material = ec_material()
        signed = stack_key(kms, "signed", material=material)
        ids = [stack_key(kms, f"k{i:02d}") for i in range(20)]
        kms.create_alias("alias/payments/signed", signed)
        outsider = stack_key(kms, "x", stack="other")
        kms.create_alias("alias/other", outsider)

        transport = kms.transport
        assert isinstance(transport, ResilientTransport)
        transport.calls.clear()
        before = emulator.stats()["calls"]
        state = refresh(kms, "payments", now=datetime.now(UTC), confirm=lambda k: k.key_id == signed)
        after = emulator.stats()["calls"]
    finally:
        kms.close()
    assert state.keys["signed"][0].status is KeyStatus.ENABLED
    assert state.keys["signed"][0].aliases == ("alias/payments/signed",)
    assert state.keys["signed"][0].public_key_fingerprint == material.fingerprint
    assert sorted(
        k.key_id for name, found in state.keys.items() if name != "signed" for k in found
    ) == sorted(ids)
    assert state.foreign_keys == frozenset({outsider})
    # What we counted is what the server received: 21 DescribeKey, 1 GetPublicKey, 2 listings.
    served = {a: after.get(a, 0) - before.get(a, 0) for a in after if after.get(a, 0) != before.get(a, 0)}
    assert served == dict(transport.calls)
    assert served == {"ListTagResources": 1, "DescribeKey": 21, "ListAliases": 1, "GetPublicKey": 1}


@pytest.mark.slow
def test_emulator_wrong_secret_is_refused(emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    kms = sdk_kms(emulator, monkeypatch)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", emulator.access_key_secret + "x")
    kms_wrong = open_kms(
        backend="alibaba", endpoint=emulator.url, region="cn-hangzhou", manifest_backend=None
    )
    try:
        with pytest.raises(KmsApiError) as e:
            kms_wrong.list_aliases()
    finally:
        kms.close()
        kms_wrong.close()
    assert e.value.message.startswith("the credentials were refused")
    assert str(e.value).startswith(f"ListAliases: {e.value.code}: the credentials were refused")


@pytest.mark.slow
def test_client_rate_limit_keeps_a_throttling_emulator_happy(
    emulator_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime

    from provisioner.refresh import refresh

    emulator = emulator_factory(qps={"read": 10.0})
    kms = sdk_kms(emulator, monkeypatch, qps={"read": 10.0})
    try:
        for i in range(12):
            stack_key(kms, f"k{i}")
        transport = kms.transport
        assert isinstance(transport, ResilientTransport)
        transport.calls.clear()
        state = refresh(kms, "payments", now=datetime.now(UTC), concurrency=8)
    finally:
        kms.close()
    assert len(state.keys) == 12
    # No call was refused and retried: one DescribeKey per key, exactly.
    assert transport.calls == {"ListTagResources": 1, "DescribeKey": 12, "ListAliases": 1}


@pytest.mark.slow
def test_retries_ride_out_an_unreliable_emulator(
    emulator_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime

    from provisioner.refresh import refresh

    flaky = emulator_factory(fault_rate=0.3, seed=7)
    sdk_kms(flaky, monkeypatch).close()  # sets the credentials in the environment
    kms = Kms(ResilientTransport(AlibabaTransport(flaky.url, "cn-hangzhou"), base_delay=0.02, max_delay=0.2))
    try:
        for i in range(8):
            stack_key(kms, f"k{i}")
        state = refresh(kms, "payments", now=datetime.now(UTC))
        transport = kms.transport
        assert isinstance(transport, ResilientTransport)
    finally:
        kms.close()
    assert len(state.keys) == 8
    distinct = 8 + 1 + 8 + 1  # CreateKey each, ListTagResources, DescribeKey each, ListAliases
    assert transport.calls_total() > distinct  # some were answered 503 and sent again


def test_open_kms_rate_limits(tmp_path: Path) -> None:
    kms = open_kms(
        backend="alibaba",
        endpoint="https://kms.example",
        region="r",
        manifest_backend=None,
        qps={"read": 5.0},
    )
    assert isinstance(kms.transport, ResilientTransport)
    assert kms.transport.qps == {"create": 10.0, "read": 5.0, "write": 10.0, "crypto": 200.0}
    kms.close()
    local = open_kms(backend="local", endpoint=None, region=None, manifest_backend=None, cwd=tmp_path)
    assert isinstance(local.transport, ResilientTransport)
    assert local.transport.qps == {}
    local.close()
    local = open_kms(
        backend="local", endpoint=None, region=None, manifest_backend=None, cwd=tmp_path, qps={"write": 2.0}
    )
    assert isinstance(local.transport, ResilientTransport)
    assert local.transport.qps == {"write": 2.0}
    local.close()


def test_open_kms_local_path_from_the_manifest(tmp_path: Path) -> None:
    manifest = BackendConfig(type="local", path=Path("state/kms.db"))
    kms = open_kms(backend=None, endpoint=None, region=None, manifest_backend=manifest, cwd=tmp_path)
    kms.close()
    assert kms.description == "local backend (state/kms.db)"
    assert kms.info == {"type": "local", "path": "state/kms.db", "endpoint": "local:state/kms.db"}
    assert (tmp_path / "state" / "kms.db").exists()
    elsewhere = tmp_path.parent / f"{tmp_path.name}-abs" / "k.db"
    kms = open_kms(
        backend="local",
        endpoint=None,
        region=None,
        manifest_backend=BackendConfig(path=elsewhere),
        cwd=tmp_path,
    )
    kms.close()
    assert kms.description == f"local backend ({elsewhere})"
