"""The Node SDKs through the BYOK flow and the error answers against `provision emulator serve`:
`@alicloud/kms20160120` (typed models on `@alicloud/rpc-client`, V2 HMAC-SHA1) and
`@alicloud/openapi-client`'s generic `callApi` (V3 ACS3-HMAC-SHA256 and ACS3-HMAC-SM3, and V2).

Each client runs one script of tests/clients/node/ under `node`, once per module; the script makes and
wraps its own material with Node's crypto and prints one JSON record, judged here like a Python client's.
Skipped, with the reason, where node or the installed packages (`npm ci --prefix tests/clients/node`) are
missing.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from client_support import (
    ACCESS_KEY_ID,
    ACCESS_KEY_SECRET,
    ERRORS,
    INSTANCE,
    MISSING_KEY_ID,
    PROXY_VARIABLES,
    REGION,
    SIGNING_ALGORITHM,
    TAG_KEYS_REMOVED,
    TAGS_ADDED,
    TAGS_AT_CREATE,
    UNKNOWN_ACTION,
    WRAPPING_ALGORITHM,
    WRONG_SECRET,
    XML_ERRORS,
    Served,
    check_error_body,
    check_flow,
    check_with_official_sdk,
    digest_of,
    serve_emulator,
)

pytestmark = pytest.mark.slow

NODE_DIR = Path(__file__).resolve().parent / "node"
NODE_TIMEOUT = 120.0
PACKAGES = ("@alicloud/kms20160120", "@alicloud/openapi-client", "@alicloud/tea-util")


@dataclass(frozen=True)
class NodeClient:
    """One Node client run, and how that client surfaces an error answer."""

    name: str
    script: str
    signature: str | None = None
    # @alicloud/rpc-client appends "Error" to the service's Code and keeps no status but in its message.
    code_suffix: str = ""
    request_id_label: str = "request id"
    has_status: bool = True
    outside_model: dict[str, list[str]] = field(default_factory=dict)
    # The error cases it runs: the XML one only where the client reads an XML error body.
    cases: tuple[str, ...] = tuple(sorted(ERRORS | XML_ERRORS))
    dropped: frozenset[str] = frozenset()


CLIENTS = {
    c.name: c
    for c in (
        NodeClient(
            "kms20160120", "kms20160120.js", code_suffix="Error", request_id_label="requestid",
            has_status=False,
            # Its models predate KMS instances (see kms20160120.js).
            outside_model={"CreateKey": ["DKMSInstanceId", "Tags"]}, dropped=frozenset({"DKMSInstanceId"}),
            cases=tuple(sorted(ERRORS)),
        ),
        NodeClient("openapi-client-acs3-hmac-sha256", "openapi-client.js", "ACS3-HMAC-SHA256"),
        NodeClient("openapi-client-acs3-hmac-sm3", "openapi-client.js", "ACS3-HMAC-SM3"),
        # Its V2 path reads every answer as JSON, as rpc-client does.
        NodeClient("openapi-client-v2", "openapi-client.js", "v2", cases=tuple(sorted(ERRORS))),
    )
}


def node_or_skip() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not found")
    missing = [p for p in PACKAGES if not (NODE_DIR / "node_modules" / p / "package.json").is_file()]
    if missing:
        pytest.skip(f"node_modules missing ({', '.join(missing)}): run npm ci in tests/clients/node")
    return node


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    node_or_skip()
    with serve_emulator() as s:
        yield s


class Runs:
    """Each client's script run once against the module's emulator, on first use."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.results: dict[str, dict[str, Any]] = {}

    def config(self, client: NodeClient) -> dict[str, Any]:
        label = f"node-{client.name}"
        return {
            "endpoint": self.served.endpoint, "accessKeyId": ACCESS_KEY_ID,
            "accessKeySecret": ACCESS_KEY_SECRET, "wrongSecret": WRONG_SECRET, "regionId": REGION,
            "signature": client.signature, "missingKeyId": MISSING_KEY_ID, "unknownAction": UNKNOWN_ACTION,
            "replayedNonce": "client-suite-replayed-nonce", "cases": list(client.cases),
            "flow": {
                "label": label, "instance": INSTANCE, "tagsAtCreate": TAGS_AT_CREATE, "tagsAdded": TAGS_ADDED,
                "tagKeysRemoved": TAG_KEYS_REMOVED, "wrappingAlgorithm": WRAPPING_ALGORITHM.value,
                "signingAlgorithm": SIGNING_ALGORITHM,
                "digestB64": base64.b64encode(digest_of(label)).decode("ascii"),
                "alias": f"alias/client-suite/{label}",
            },
        }

    def of(self, client: NodeClient) -> dict[str, Any]:
        if client.name not in self.results:
            node = node_or_skip()
            env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
            done = subprocess.run(
                [node, client.script, json.dumps(self.config(client))],
                cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=NODE_TIMEOUT,
            )
            assert done.returncode == 0, done.stderr
            # Material, ESK and import token stay inside the script; the secret never comes back out.
            assert ACCESS_KEY_SECRET not in done.stdout + done.stderr
            self.results[client.name] = json.loads(done.stdout)
        return self.results[client.name]


@pytest.fixture(scope="module")
def runs(served: Served) -> Runs:
    return Runs(served)


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_byok_flow(name: str, runs: Runs) -> None:
    client = CLIENTS[name]

    result = runs.of(client)

    record = result["flow"]
    material_public_der = base64.b64decode(record["material_public_der_b64"])
    check_flow(record, material_public_der, f"node-{name}", client.dropped)
    assert result["outside_model"] == client.outside_model
    check_with_official_sdk(runs.served, record)


@pytest.mark.parametrize(
    ("name", "case"), [(name, case) for name, client in sorted(CLIENTS.items()) for case in client.cases]
)
def test_error_answers(name: str, case: str, runs: Runs) -> None:
    client = CLIENTS[name]
    expected = (ERRORS | XML_ERRORS)[case]

    error = runs.of(client)["errors"][case]

    assert "succeeded" not in error, error
    body = error["data"]
    assert error["code"] == expected.code + client.code_suffix
    assert expected.matches(body["Message"]), body
    check_error_body(body, expected)
    if client.has_status:
        assert (error["statusCode"], body["statusCode"]) == (expected.status, expected.status)
    code = error["code"]
    assert error["message"] == (
        f"{code}: code: {expected.status}, {body['Message']} {client.request_id_label}: {body['RequestId']}"
    )


def test_missing_node_or_packages_skip_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.skip.Exception, match="^node not found$"):
        node_or_skip()

    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setitem(globals(), "NODE_DIR", tmp_path)
    with pytest.raises(pytest.skip.Exception) as info:
        node_or_skip()
    assert str(info.value.msg) == (
        "node_modules missing (@alicloud/kms20160120, @alicloud/openapi-client, @alicloud/tea-util): "
        "run npm ci in tests/clients/node"
    )
