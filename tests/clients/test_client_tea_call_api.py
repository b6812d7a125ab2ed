"""`alibabacloud-tea-openapi`'s generic `Client.call_api` (no KMS models: action names and flat
parameters only) through the BYOK flow and the error answers against `provision emulator serve`, once per
signature it offers: V3 `ACS3-HMAC-SHA256` and `ACS3-HMAC-SM3`, and V2 (RPC, HMAC-SHA1).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from alibabacloud_tea_openapi import utils_models
from alibabacloud_tea_openapi.client import Client
from alibabacloud_tea_openapi.exceptions import ClientException
from alibabacloud_tea_openapi.models import Config
from client_support import (
    ACCESS_KEY_ID,
    ACCESS_KEY_SECRET,
    API_VERSION,
    ERRORS,
    MISSING_KEY_ID,
    REGION,
    UNKNOWN_ACTION,
    WRONG_SECRET,
    XML_ERRORS,
    Served,
    check_error_body,
    check_flow,
    check_with_official_sdk,
    run_flow,
    serve_emulator,
)
from darabonba.runtime import RuntimeOptions
from emulator_support import material

from provisioner.model import KeySpec

pytestmark = pytest.mark.slow

#: `Config.signature_algorithm` values: the two V3 algorithms, and "v2" for RPC signatures.
SIGNATURES = ["ACS3-HMAC-SHA256", "ACS3-HMAC-SM3", "v2"]
REPLAYED_NONCE = "client-suite-replayed-nonce"


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with serve_emulator() as s:
        yield s


class Generic:
    """`call_api` as the SDK's generated clients use it for an RPC action."""

    def __init__(self, served: Served, signature: str, secret: str = ACCESS_KEY_SECRET) -> None:
        self.signature = signature
        self.client = Client(
            Config(
                endpoint=served.endpoint, protocol="http", region_id=REGION, access_key_id=ACCESS_KEY_ID,
                access_key_secret=secret, signature_algorithm=signature,
            )
        )

    def call(
        self, action: str, params: Mapping[str, str], nonce: str | None = None
    ) -> dict[str, Any]:
        query = dict(params)
        headers: dict[str, str] = {}
        if nonce is not None:
            # Both paths let the request's own values override the nonce they draw.
            if self.signature == "v2":
                query["SignatureNonce"] = nonce
            else:
                headers["x-acs-signature-nonce"] = nonce
        api = utils_models.Params(
            action=action, version=API_VERSION, protocol="HTTP", pathname="/", method="POST",
            auth_type="AK", style="RPC", req_body_type="formData", body_type="json",
        )
        request = utils_models.OpenApiRequest(query=query, headers=headers)
        response = self.client.call_api(api, request, RuntimeOptions(autoretry=False))
        assert response["statusCode"] == 200, response
        body: dict[str, Any] = response["body"]
        return body


@pytest.mark.parametrize("signature", SIGNATURES)
def test_byok_flow(signature: str, served: Served) -> None:
    m = material(KeySpec.RSA_2048)
    label = f"call-api-{signature.lower()}"

    record = run_flow(Generic(served, signature).call, m, label)

    check_flow(record, m.public_key_der(), label)
    check_with_official_sdk(served, record)


def provoke(case: str, served: Served, signature: str) -> ClientException:
    generic = Generic(served, signature)
    with pytest.raises(ClientException) as info:
        if case == "wrong_secret":
            Generic(served, signature, WRONG_SECRET).call("DescribeKey", {"KeyId": MISSING_KEY_ID})
        elif case == "unknown_action":
            generic.call(UNKNOWN_ACTION, {})
        elif case == "replayed_nonce":
            nonce = f"{REPLAYED_NONCE}-{signature}"
            generic.call("ListKeys", {}, nonce)
            generic.call("ListKeys", {}, nonce)
        elif case == "missing_parameter":
            generic.call("DescribeKey", {})
        elif case == "unknown_key_xml":
            # Format=XML wins over the client's own Format=json; it reads an XML error from its content type.
            generic.call("DescribeKey", {"KeyId": MISSING_KEY_ID, "Format": "XML"})
        else:
            assert case == "unknown_key"
            generic.call("DescribeKey", {"KeyId": MISSING_KEY_ID})
    return info.value


CASES = [(case, signature) for signature in SIGNATURES for case in sorted(ERRORS)] + [
    # Its V2 path reads every answer as JSON; the V3 one reads an XML error by its content type.
    (case, signature) for signature in SIGNATURES if signature != "v2" for case in sorted(XML_ERRORS)
]


@pytest.mark.parametrize(("case", "signature"), CASES)
def test_error_answers(case: str, signature: str, served: Served) -> None:
    expected = (ERRORS | XML_ERRORS)[case]

    error = provoke(case, served, signature)

    assert (error.status_code, error.code) == (expected.status, expected.code)
    assert expected.matches(error.data["Message"]), error.data
    check_error_body(error.data, expected)
    request_id = error.data["RequestId"]
    assert error.message == f"code: {expected.status}, {error.data['Message']} request id: {request_id}"
