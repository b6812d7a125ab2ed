"""Transport over the official SDK (`alibabacloud_kms20160120`): the only module that imports it.

SDK exceptions are mapped here, at the seam, to KmsApiError / KmsConnectionError / BackendError.
It makes exactly one attempt per call (resilience.py retries) and never puts request parameters,
SDK URLs (which carry them) or vendor string-to-sign echoes into a message.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any

from alibabacloud_credentials.client import Client as CredClient
from alibabacloud_credentials.exceptions import CredentialException
from alibabacloud_kms20160120 import models as sdk_models
from alibabacloud_kms20160120.client import Client as SdkClient
from alibabacloud_tea_openapi.utils_models import Config
from darabonba.exceptions import RetryError, UnretryableException
from darabonba.runtime import RuntimeOptions
from Tea.exceptions import TeaException

from provisioner.backend.credentials import default_provider
from provisioner.backend.resilience import KmsConnectionError
from provisioner.errors import BackendError, KmsApiError, UsageError
from provisioner.escape import visible
from provisioner.wire import ErrorCode

# The SDK's loggers write to their own stderr handlers: the credential chain prints a traceback per
# failed provider (we raise one clear BackendError instead), and DEBUG=sdk dumps whole requests,
# import tokens and wrapped material included. Neither may reach the user's terminal or CI log.
for _name in ("credentials", "darabonba-core", "alibabacloud-tea"):
    logging.getLogger(_name).disabled = True

_URL_QUERY = re.compile(r"\?\S*")


class _DropQueryStrings(logging.Filter):
    """urllib3 logs every request line at DEBUG, and the SDK sends every parameter (import tokens,
    wrapped material) in the query string: keep the line for whoever debugs, drop the query."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _URL_QUERY.sub("?<query omitted>", a) if isinstance(a, str) else a for a in record.args
            )
        if isinstance(record.msg, str):
            record.msg = _URL_QUERY.sub("?<query omitted>", record.msg)
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_DropQueryStrings())

#: Codes by which the service says it does not accept who signed the request.
CREDENTIAL_CODES = frozenset(
    {
        ErrorCode.INVALID_ACCESS_KEY_ID_NOT_FOUND,
        ErrorCode.INVALID_ACCESS_KEY_ID,
        ErrorCode.INVALID_ACCESS_KEY_ID_INACTIVE,
        ErrorCode.INCOMPLETE_SIGNATURE,
        ErrorCode.SIGNATURE_DOES_NOT_MATCH,
        ErrorCode.INVALID_SECURITY_TOKEN_EXPIRED,
        ErrorCode.INVALID_SECURITY_TOKEN_MALFORMED,
        ErrorCode.INVALID_SECURITY_TOKEN_MISMATCH_WITH_ACCESS_KEY,
        ErrorCode.INVALID_CREDENTIALS,
    }
)

_CREDENTIALS_HELP = (
    "set ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET, a profile, a RAM role or OIDC"
)


def snake_case(action: str) -> str:
    """`ListTagResources` -> `list_tag_resources`, the SDK's method naming."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", action).lower()


def parse_endpoint(endpoint: str | None, region: str | None) -> tuple[str, str]:
    """(host[:port], protocol) from `http://host:port`, `https://host`, a bare host, or the region."""
    if not endpoint:
        if not region:
            raise UsageError("the alibaba backend needs a region (--region or ALIBABA_CLOUD_REGION_ID)")
        if not _REGION.fullmatch(region):
            raise UsageError(f"region: expected a region id such as cn-hangzhou, got {region!r}")
        return f"kms.{region}.aliyuncs.com", "https"
    text = endpoint.strip()
    protocol = "https"
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme.lower() not in ("http", "https"):
            raise UsageError(f"--endpoint: unsupported scheme {scheme!r} in {endpoint!r} (http or https)")
        protocol, text = scheme.lower(), rest
    host = text.rstrip("/")
    match = _HOST_PORT.fullmatch(host)
    port = match.group("port") if match else None
    if match is None or (port is not None and not 0 < int(port) <= 65535):
        # Caught here, not after 30 seconds of retrying a connection that can never be made.
        raise UsageError(f"--endpoint: expected http://host:port, https://host or host, got {endpoint!r}")
    return host, protocol


#: host (DNS name, IPv4 or bracketed IPv6) and an optional decimal port; no user info, path or query.
_HOST_PORT = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::(?P<port>\d{1,5}))?"
)
_REGION = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")

#: The endpoints a manifest may name: the vendor's public and VPC KMS hosts, or the emulator on a
#: literal loopback address. Written exactly so (lowercase, no port on the vendor's hosts).
_VENDOR_HOST = re.compile(r"kms(?:-vpc)?\.(?P<region>[a-z0-9]+(?:-[a-z0-9]+)*)\.aliyuncs\.com")
_LOOPBACK_HOST = re.compile(r"(?:127\.0\.0\.1|\[::1\]):(?P<port>[1-9][0-9]{0,4})")


def is_region(text: str) -> bool:
    """Whether `text` has the form of a region id (cn-hangzhou, ap-southeast-1)."""
    return _REGION.fullmatch(text) is not None


def manifest_endpoint(text: str, region: str | None) -> tuple[str, str | None]:
    """The endpoint a manifest's `backend.endpoint` names, if the trust rule allows it, and the region
    its host names (None for the emulator). Raises ValueError(reason) for any other endpoint.

    A pull request controls the manifests, so a manifest alone may send the signed calls only to the
    KMS of the run's region or to a loopback emulator. A bare host means https. The rule is checked
    on the parsed URL and on the text as written, so that nothing urllib forgives (tabs, newlines,
    case, a default port) makes a different text pass.
    """
    written = text if "://" in text else "https://" + text
    scheme = written.partition("://")[0]
    try:
        parts = urllib.parse.urlsplit(written)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError("it is not a URL with a valid host and port") from None
    if parts.username is not None or parts.password is not None or "@" in written:
        raise ValueError("it carries user info (user@host)")
    if parts.path not in ("", "/"):
        raise ValueError("it has a path")
    if parts.query or parts.fragment or "?" in written or "#" in written:
        raise ValueError("it has a query or a fragment")
    host = parts.netloc
    vendor = _VENDOR_HOST.fullmatch(host)
    loopback = _LOOPBACK_HOST.fullmatch(host)
    exact = written in (f"{scheme}://{host}", f"{scheme}://{host}/")
    if not exact or scheme not in ("http", "https") or (vendor is None and loopback is None):
        raise ValueError("it is neither of these, written exactly so")
    if vendor is not None:
        if scheme != "https":
            raise ValueError("the vendor's endpoints are reached over https only")
        if region is not None and vendor.group("region") != region:
            raise ValueError(f"it is the endpoint of region {vendor.group('region')}, not of {region}")
        return f"https://{host}", vendor.group("region")
    assert loopback is not None
    if scheme != "http" or int(loopback.group("port")) > 65535:
        raise ValueError("the emulator is reached over http on a port from 1 to 65535")
    return f"http://{host}", None


def default_credentials() -> Any:
    """The Alibaba Cloud default credential chain, reading the environment now (see
    `credentials.default_provider`)."""
    return CredClient(provider=default_provider(os.environ))


def proxy_trap(endpoint: str, environ: Mapping[str, str]) -> str | None:
    """Why requests to `endpoint` may not arrive, or None: the SDK sends every request through
    HTTP_PROXY / HTTPS_PROXY (the one of the endpoint's scheme) and never reads NO_PROXY, so an
    emulator on loopback, or a host NO_PROXY names, is reached through the proxy, if at all."""
    parts = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    variable = "HTTP_PROXY" if parts.scheme == "http" else "HTTPS_PROXY"
    proxy = environ.get(variable) or environ.get(variable.lower())
    host = (parts.hostname or "").lower()
    if not proxy or not host:
        return None
    no_proxy = environ.get("NO_PROXY") or environ.get("no_proxy") or ""
    named = any(
        host == entry or host.endswith("." + entry.lstrip(".")) or entry == "*"
        for entry in (e.strip().lower() for e in no_proxy.split(","))
        if entry
    )
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    if not (loopback or named):
        return None
    why = "it ignores NO_PROXY, which names this host" if named else "a loopback address too"
    return (
        f"{variable} is set: the Alibaba Cloud SDK sends every request to {endpoint} through that proxy "
        f"({why}); unset {variable} and {variable.lower()} for this run if the proxy cannot reach it"
    )


class AlibabaTransport:
    """Transport.call over the SDK client: one request per call, SDK errors mapped to ours."""

    def __init__(
        self,
        endpoint: str | None,
        region: str | None,
        *,
        credentials: Any = None,
        credentials_from: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 15.0,
    ) -> None:
        self.host, self.protocol = parse_endpoint(endpoint, region)
        self.region = region
        self.endpoint = f"{self.protocol}://{self.host}"
        self._credentials = credentials
        #: Where `credentials` came from when the user named them (--target-profile, --target-role):
        #: a failure to read them then says so, rather than point at the default chain.
        self._credentials_from = credentials_from
        self._runtime = {
            "connect_timeout": int(connect_timeout * 1000),
            "read_timeout": int(read_timeout * 1000),
        }
        self._client: Any = None
        self._lock = threading.Lock()

    def _sdk(self) -> Any:
        # Built on first use, so that describing the backend costs no credential lookup.
        with self._lock:
            if self._client is None:
                credentials = self._credentials if self._credentials is not None else default_credentials()
                try:
                    # Resolving once here turns "no credentials anywhere" into one clear error.
                    credentials.get_credential()
                except CredentialException as e:
                    if self._credentials_from is not None:
                        why = f"the credentials of {self._credentials_from} cannot be read: {visible(str(e))}"
                        raise BackendError(why) from e
                    raise BackendError(f"no Alibaba Cloud credentials found: {_CREDENTIALS_HELP}") from e
                self._client = SdkClient(
                    Config(
                        credential=credentials,
                        endpoint=self.host,
                        protocol=self.protocol,
                        region_id=self.region,
                        connect_timeout=self._runtime["connect_timeout"],
                        read_timeout=self._runtime["read_timeout"],
                    )
                )
            return self._client

    def call(self, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        client = self._sdk()
        request_type = getattr(sdk_models, action + "Request", None)
        method = getattr(client, snake_case(action) + "_with_options", None)
        if request_type is None or method is None:
            raise BackendError(f"{action}: not an action of the KMS SDK")
        request = request_type().from_map(dict(params))
        # No SDK-internal retries: resilience.py owns retry policy and its time budget.
        runtime = RuntimeOptions(autoretry=False, max_attempts=1, **self._runtime)
        try:
            response = method(request, runtime)
        except Exception as e:  # the SDK raises bare Exception subclasses of several families
            raise self._map_error(action, e) from e
        body = response.body.to_map() if response.body is not None else {}
        return dict(body)

    def close(self) -> None:
        # The SDK keeps one requests.Session per endpoint in a class-level cache; close ours so no
        # socket outlives the transport.
        from darabonba.core import DaraCore

        prefix = f"{self.protocol}://{self.host}:"
        for key in [k for k in DaraCore._sessions if k.startswith(prefix)]:
            session = DaraCore._sessions.pop(key, None)
            if session is not None:
                session.close()

    def _map_error(self, action: str, e: Exception) -> BackendError:
        if isinstance(e, UnretryableException):
            inner = e.inner_exception
            if isinstance(inner, CredentialException):
                return BackendError(f"{action}: no Alibaba Cloud credentials found: {_CREDENTIALS_HELP}")
            if isinstance(inner, RetryError | OSError):
                reason, sent = connection_reason(str(getattr(inner, "message", "") or inner))
                return KmsConnectionError(action, self.endpoint, reason, request_sent=sent)
            return BackendError(
                f"{action}: unexpected answer from KMS at {self.endpoint} ({type(inner).__name__})"
            )
        if isinstance(e, TeaException) and e.code:
            return api_error(action, e)
        return BackendError(f"{action}: KMS SDK failed ({type(e).__name__})")


def api_error(action: str, e: TeaException) -> KmsApiError:
    """KmsApiError from an SDK error answer: the vendor code, message, request id and status."""
    data = e.data if isinstance(e.data, dict) else {}
    code = str(e.code)
    message = str(data.get("Message") or data.get("message") or "")
    if not message:
        message = str(e.message or "")
    request_id = str(getattr(e, "request_id", None) or data.get("RequestId") or "")
    if request_id == "None":
        request_id = ""
    status = getattr(e, "status_code", None) or data.get("statusCode") or 0
    if code in CREDENTIAL_CODES:
        # The vendor's text for these may echo the string to sign, which holds every parameter.
        message = f"the credentials were refused ({_CREDENTIALS_HELP})"
    else:
        message = _strip_string_to_sign(message)
    return KmsApiError(action, code, message, request_id, int(status))


_STRING_TO_SIGN = re.compile(r"(?is)\W*(?:server\s+)?string\s*to\s*sign.*$")


def _strip_string_to_sign(message: str) -> str:
    return _STRING_TO_SIGN.sub("", message)


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\"()]+)")


def connection_reason(text: str) -> tuple[str, bool]:
    """(short reason, whether the request may have reached the server) from a requests error text.

    The text names the URL, whose query string holds the request parameters: only a fixed vocabulary
    of reasons ever leaves this function.
    """
    lower = text.lower()
    if "read timed out" in lower:
        return "read timed out", True
    connect_timeout = "connection to" in lower and "timed out" in lower
    if connect_timeout or "connecttimeout" in lower or "connect timeout" in lower:
        return "connect timed out", False
    match = _ERRNO.search(text)
    refused = any(
        marker in lower
        for marker in ("newconnectionerror", "failed to establish", "nameresolution", "failed to resolve")
    )
    if match:
        reason = match.group(1).strip().rstrip(".").lower()
        if reason in _SAFE_REASONS:
            return reason, not refused
    if refused:
        return "connection failed", False
    if "remotedisconnected" in lower or "connection aborted" in lower or "reset" in lower:
        return "connection closed by the server", True
    if "ssl" in lower or "certificate" in lower:
        return "TLS handshake failed", False
    return "connection failed", True


_SAFE_REASONS = frozenset(
    {
        "connection refused",
        "connection reset by peer",
        "name or service not known",
        "temporary failure in name resolution",
        "no route to host",
        "network is unreachable",
        "connection timed out",
        "nodename nor servname provided, or not known",
        "broken pipe",
        "host is unreachable",
    }
)
