"""Raw signed requests to the emulator, for what the SDK cannot produce (stale timestamps, replayed
nonces, tampered bodies, XML answers, foreign signature schemes), signed with
`provisioner.emulator.signing`; the SDK tests prove that module agrees with the vendor's."""

from __future__ import annotations

import http.client
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlencode

from provisioner.emulator import signing
from provisioner.emulator.server import API_VERSION, DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET


class RunningEmulator(Protocol):
    """Where a server listens: a conftest.RunningEmulator, or a `provision emulator serve` process."""

    host: str
    port: int
    endpoint: str


CREATE_QUERY = {
    "KeySpec": "RSA_2048",
    "KeyUsage": "SIGN/VERIFY",
    "Origin": "EXTERNAL",
    "ProtectionLevel": "SOFTWARE",
    "DKMSInstanceId": "kst-local-software",
}


@dataclass(frozen=True)
class RawAnswer:
    status: int
    content_type: str
    data: bytes

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.data)
        return body


def now_stamp(offset: timedelta = timedelta(0)) -> str:
    return (datetime.now(UTC) + offset).strftime(signing.TIMESTAMP_FORMAT)


def send_raw(
    emu: RunningEmulator, method: str, path: str, headers: Mapping[str, str], body: bytes = b""
) -> RawAnswer:
    conn = http.client.HTTPConnection(emu.host, emu.port, timeout=10)
    try:
        conn.request(method, path, body=body or None, headers=dict(headers))
        resp = conn.getresponse()
        return RawAnswer(resp.status, resp.getheader("Content-Type", ""), resp.read())
    finally:
        conn.close()


def send(
    emu: RunningEmulator, method: str, path: str, headers: Mapping[str, str], body: bytes = b""
) -> tuple[int, dict[str, Any]]:
    answer = send_raw(emu, method, path, headers, body)
    return answer.status, answer.json()


def v3_request(
    emu: RunningEmulator,
    action: str,
    query: Mapping[str, str],
    *,
    body: bytes = b"",
    date: str | None = None,
    nonce: str | None = None,
    secret: str = DEFAULT_ACCESS_KEY_SECRET,
    payload_hash: str | None = None,
    algorithm: str = signing.V3_ALGORITHM,
    content_header: str = "x-acs-content-sha256",
    signature: str | None = None,
) -> RawAnswer:
    """A V3 request as the SDK builds it, with every field that matters under the test's control."""
    headers = {
        "host": emu.endpoint,
        "x-acs-action": action,
        "x-acs-version": API_VERSION,
        "x-acs-date": date if date is not None else now_stamp(),
        "x-acs-signature-nonce": nonce or uuid.uuid4().hex,
        content_header: payload_hash or signing.v3_hash_hex(algorithm, body),
    }
    if body:
        headers["content-type"] = "application/x-www-form-urlencoded"
    payload = headers[content_header]
    canonical = signing.v3_canonical_request("POST", "/", query.items(), headers, payload)
    signed = signature or signing.v3_signature(secret, canonical, algorithm)
    headers["Authorization"] = signing.v3_authorization(DEFAULT_ACCESS_KEY_ID, headers, signed, algorithm)
    return send_raw(emu, "POST", "/?" + urlencode(dict(query)), headers, body)


def raw_v3(
    emu: RunningEmulator, action: str, query: Mapping[str, str], **options: Any
) -> tuple[int, dict[str, Any]]:
    answer = v3_request(emu, action, query, **options)
    return answer.status, answer.json()


def v2_request(
    emu: RunningEmulator,
    action: str,
    query: Mapping[str, str],
    *,
    method: str = "POST",
    timestamp: str | None = None,
    nonce: str | None = None,
    version: str = API_VERSION,
    response_format: str = "json",
    secret: str = DEFAULT_ACCESS_KEY_SECRET,
    signature: str | None = None,
    signature_method: str = signing.V2_METHOD,
) -> RawAnswer:
    params = {
        "Action": action,
        "Version": version,
        "Format": response_format,
        "Timestamp": timestamp if timestamp is not None else now_stamp(),
        "SignatureNonce": nonce or uuid.uuid4().hex,
        "SignatureMethod": signature_method,
        "SignatureVersion": signing.V2_VERSION,
        "AccessKeyId": DEFAULT_ACCESS_KEY_ID,
        **query,
    }
    params["Signature"] = signature or signing.v2_signature(secret, method, params)
    return send_raw(emu, method, "/?" + urlencode(params), {"host": emu.endpoint})


def raw_v2(
    emu: RunningEmulator, action: str, query: Mapping[str, str], **options: Any
) -> tuple[int, dict[str, Any]]:
    answer = v2_request(emu, action, query, **options)
    return answer.status, answer.json()
