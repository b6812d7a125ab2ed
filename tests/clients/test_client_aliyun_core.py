"""The older Python SDK, `aliyun-python-sdk-core` + `aliyun-python-sdk-kms` (RPC, HMAC-SHA1 signatures,
every parameter in the query string), through the BYOK flow and the error answers against
`provision emulator serve`.

Each action goes through the SDK's own typed request class (`aliyunsdkkms.request.v20160120`); an unknown
action goes through its `CommonRequest`. Needs the `clients` extra.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

pytest.importorskip("aliyunsdkcore", reason="aliyun-python-sdk-core missing: pip install -e '.[clients]'")
pytest.importorskip("aliyunsdkkms", reason="aliyun-python-sdk-kms missing: pip install -e '.[clients]'")

from aliyunsdkcore.acs_exception.exceptions import ServerException  # noqa: E402
from aliyunsdkcore.client import AcsClient  # noqa: E402
from aliyunsdkcore.request import AcsRequest, CommonRequest  # noqa: E402
from aliyunsdkcore.utils import parameter_helper  # noqa: E402
from client_support import (  # noqa: E402
    ACCESS_KEY_ID,
    ACCESS_KEY_SECRET,
    API_VERSION,
    ERRORS,
    MISSING_KEY_ID,
    REGION,
    UNKNOWN_ACTION,
    WRONG_SECRET,
    Expected,
    Served,
    check_flow,
    check_with_official_sdk,
    run_flow,
    serve_emulator,
)
from emulator_support import material  # noqa: E402

from provisioner.model import KeySpec  # noqa: E402

pytestmark = pytest.mark.slow

LABEL = "aliyun-python-sdk-core"

#: Where this SDK surfaces an answer otherwise than the service gives it. On a V2 SignatureDoesNotMatch
#: it compares the string to sign that the service quotes after "server string to sign is:" with its
#: own, and when they are equal tells its user that the secret is wrong.
SURFACED = {
    "wrong_secret": Expected(
        400,
        "InvalidAccessKeySecret",
        "The AccessKeySecret is incorrect. Please check your AccessKeyId and AccessKeySecret.",
    ),
}


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with serve_emulator() as s:
        yield s


class OldSdk:
    """One AcsClient pointed at the emulator; `call` is the flow's way of sending an action."""

    def __init__(self, served: Served, secret: str = ACCESS_KEY_SECRET) -> None:
        self.endpoint = served.endpoint
        # No retries: a refused request must surface as it was answered.
        self.client = AcsClient(ACCESS_KEY_ID, secret, REGION, auto_retry=False, max_retry_time=0)

    def typed(self, action: str, params: Mapping[str, str]) -> AcsRequest:
        module = importlib.import_module(f"aliyunsdkkms.request.v20160120.{action}Request")
        request: AcsRequest = getattr(module, f"{action}Request")()
        for name, value in params.items():
            getattr(request, f"set_{name}")(value)
        return request

    def send(self, request: AcsRequest) -> dict[str, Any]:
        request.set_endpoint(self.endpoint)
        request.set_protocol_type("http")
        body: dict[str, Any] = json.loads(self.client.do_action_with_exception(request))
        return body

    def call(self, action: str, params: Mapping[str, str]) -> dict[str, Any]:
        return self.send(self.typed(action, params))


def test_byok_flow(served: Served) -> None:
    m = material(KeySpec.RSA_2048)

    record = run_flow(OldSdk(served).call, m, LABEL)

    check_flow(record, m.public_key_der(), LABEL)
    check_with_official_sdk(served, record)


def refused(send: Any, *args: Any) -> ServerException:
    with pytest.raises(ServerException) as info:
        send(*args)
    return info.value


def provoke(case: str, served: Served, monkeypatch: pytest.MonkeyPatch) -> ServerException:
    sdk = OldSdk(served)
    if case == "wrong_secret":
        return refused(OldSdk(served, WRONG_SECRET).call, "DescribeKey", {"KeyId": MISSING_KEY_ID})
    if case == "unknown_action":
        request = CommonRequest(domain=served.endpoint, version=API_VERSION, action_name=UNKNOWN_ACTION)
        request.set_method("POST")
        return refused(sdk.send, request)
    if case == "replayed_nonce":
        # The SDK draws a fresh SignatureNonce per request; pin it so the second request repeats the first's.
        monkeypatch.setattr(parameter_helper, "get_uuid", lambda: "client-suite-replayed-nonce")
        sdk.call("ListKeys", {})
        return refused(sdk.call, "ListKeys", {})
    if case == "missing_parameter":
        return refused(sdk.call, "DescribeKey", {})
    assert case == "unknown_key"
    return refused(sdk.call, "DescribeKey", {"KeyId": MISSING_KEY_ID})


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_error_answers(case: str, served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = SURFACED.get(case, ERRORS[case])

    error = provoke(case, served, monkeypatch)

    assert (error.get_http_status(), error.get_error_code()) == (expected.status, expected.code)
    assert expected.matches(error.get_error_msg()), error.get_error_msg()
    assert error.get_request_id()
