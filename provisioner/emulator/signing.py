"""The Alibaba Cloud RPC request signatures (V3 ACS3-HMAC-SHA256 or ACS3-HMAC-SM3, V2 HMAC-SHA1), as pure
functions.

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

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from provisioner.model import WIRE_TIME_FORMAT

V3_ALGORITHM = "ACS3-HMAC-SHA256"
#: The Chinese national variant: SM3 in place of SHA-256, for the payload hash, the canonical
#: request's hash and the HMAC (the SDKs' `signature_algorithm='ACS3-HMAC-SM3'`).
V3_SM3_ALGORITHM = "ACS3-HMAC-SM3"
V3_ALGORITHMS = (V3_ALGORITHM, V3_SM3_ALGORITHM)
V2_METHOD = "HMAC-SHA1"
V2_VERSION = "1.0"
TIMESTAMP_FORMAT = WIRE_TIME_FORMAT


def percent_encode(value: str) -> str:
    """RFC 3986 encoding keeping only `A-Za-z0-9-_.~`, as both signature versions require."""
    return quote(value, safe="~", encoding="utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sm3_hex(data: bytes) -> str:
    """SM3 (GB/T 32905-2016) through OpenSSL, which the cryptography wheels are built with."""
    digest = hashes.Hash(hashes.SM3())
    digest.update(data)
    return digest.finalize().hex()


def v3_hash_hex(algorithm: str, data: bytes) -> str:
    """The payload and canonical-request hash of a V3 algorithm: SM3 for ACS3-HMAC-SM3, else SHA-256."""
    return sm3_hex(data) if algorithm == V3_SM3_ALGORITHM else sha256_hex(data)


def _hmac_hex(algorithm: str, key: bytes, message: bytes) -> str:
    if algorithm == V3_SM3_ALGORITHM:
        mac = crypto_hmac.HMAC(key, hashes.SM3())
        mac.update(message)
        return mac.finalize().hex()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


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


def v3_signature(secret: str, canonical_request: str, algorithm: str = V3_ALGORITHM) -> str:
    string_to_sign = f"{algorithm}\n{v3_hash_hex(algorithm, canonical_request.encode('utf-8'))}"
    return _hmac_hex(algorithm, secret.encode("utf-8"), string_to_sign.encode("utf-8"))


def v3_authorization(
    access_key_id: str, signed_header_names: Iterable[str], signature: str, algorithm: str = V3_ALGORITHM
) -> str:
    return (
        f"{algorithm} Credential={access_key_id},"
        f"SignedHeaders={';'.join(sorted(signed_header_names))},Signature={signature}"
    )


def authorization_scheme(header: str) -> str:
    """The first word of an `Authorization` header: the algorithm it claims (`ACS3-HMAC-SHA256`,
    `ACS4-HMAC-SHA256`, `AWS4-HMAC-SHA256`, ...), "" for an empty header."""
    return header.strip().partition(" ")[0]


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
