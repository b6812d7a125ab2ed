"""The two Alibaba Cloud RPC request signatures (V3 ACS3-HMAC-SHA256 and V2 HMAC-SHA1), as pure functions.

The server verifies with them and tests craft raw requests with them. No I/O, no clock, no state:
timestamp skew and nonce replay are the server's business.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

from provisioner.model import WIRE_TIME_FORMAT

V3_ALGORITHM = "ACS3-HMAC-SHA256"
V2_METHOD = "HMAC-SHA1"
V2_VERSION = "1.0"
TIMESTAMP_FORMAT = WIRE_TIME_FORMAT


def percent_encode(value: str) -> str:
    """RFC 3986 encoding keeping only `A-Za-z0-9-_.~`, as both signature versions require."""
    return quote(value, safe="~", encoding="utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Sorted `key=value` pairs joined by `&`, keys and values percent-encoded (V3 canonical query)."""
    encoded = sorted((percent_encode(k), percent_encode(v)) for k, v in pairs)
    return "&".join(f"{k}={v}" for k, v in encoded)


def v3_canonical_request(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    signed_headers: Mapping[str, str],
    payload_hash: str,
) -> str:
    """Method, path, canonical query, `name:value` lines, signed names joined by `;`, payload hash.

    `signed_headers` maps lower-case header names to their (already joined) values.
    """
    names = sorted(signed_headers)
    header_lines = "".join(f"{n}:{signed_headers[n].strip()}\n" for n in names)
    return "\n".join(
        [method.upper(), path or "/", canonical_query(query), header_lines, ";".join(names), payload_hash]
    )


def v3_signature(secret: str, canonical_request: str) -> str:
    string_to_sign = f"{V3_ALGORITHM}\n{sha256_hex(canonical_request.encode('utf-8'))}"
    return hmac.new(secret.encode("utf-8"), string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def v3_authorization(access_key_id: str, signed_header_names: Iterable[str], signature: str) -> str:
    return (
        f"{V3_ALGORITHM} Credential={access_key_id},"
        f"SignedHeaders={';'.join(sorted(signed_header_names))},Signature={signature}"
    )


@dataclass(frozen=True)
class V3Authorization:
    """The parsed `Authorization` header of a V3 request."""

    algorithm: str
    access_key_id: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_v3_authorization(header: str) -> V3Authorization | None:
    """`ACS3-HMAC-SHA256 Credential=AK,SignedHeaders=a;b,Signature=hex`, or None when garbled."""
    algorithm, _, rest = header.strip().partition(" ")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            return None
        fields[name] = value
    if not algorithm or not {"Credential", "SignedHeaders", "Signature"} <= fields.keys():
        return None
    names = tuple(n.strip().lower() for n in fields["SignedHeaders"].split(";") if n.strip())
    return V3Authorization(algorithm, fields["Credential"], names, fields["Signature"])


def v2_string_to_sign(method: str, params: Mapping[str, str]) -> str:
    """`METHOD&%2F&` + encode(sorted encoded `k=v` joined by `&`); `Signature` itself is left out."""
    pairs = sorted((percent_encode(k), percent_encode(v)) for k, v in params.items() if k != "Signature")
    canonical = "&".join(f"{k}={v}" for k, v in pairs)
    return f"{method.upper()}&{percent_encode('/')}&{percent_encode(canonical)}"


def v2_signature(secret: str, method: str, params: Mapping[str, str]) -> str:
    digest = hmac.new(
        (secret + "&").encode("utf-8"), v2_string_to_sign(method, params).encode("utf-8"), hashlib.sha1
    ).digest()
    return base64.b64encode(digest).decode("ascii")


def signatures_equal(a: str, b: str) -> bool:
    """Constant-time comparison, so a wrong guess leaks nothing about the right one."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
