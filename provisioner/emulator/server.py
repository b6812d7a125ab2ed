"""HTTP face of the KMS emulator: the RPC wire protocol the official SDK speaks, signatures, switches.

It verifies who is calling (V3 and V2 signatures, timestamps, nonces), injects latency, throttling and
faults, counts calls, and hands the flattened parameters to `KmsResponses`. It holds no KMS rule and
never logs request parameters or bodies: they carry import tokens and wrapped material.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import json
import random
import socket
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit

from provisioner.emulator import signing
from provisioner.emulator.defaults import (
    DEFAULT_ACCESS_KEY_ID,
    DEFAULT_ACCESS_KEY_SECRET,
    DEFAULT_HOST,
    DEFAULT_PORT,
)
from provisioner.emulator.models import INSTANCE_KINDS, InstanceSetup, KmsEngine, KmsError
from provisioner.emulator.responses import ACTION_QUOTA_GROUPS, KmsResponses, to_xml
from provisioner.wire import QPS_MAX, QPS_MIN, ErrorCode

API_VERSION = "2016-01-20"
STATS_PATH = "/_emulator/stats"
#: How far a request's timestamp may be from the server clock, either way (vendor: 15 minutes).
MAX_CLOCK_SKEW = timedelta(minutes=15)
MAX_BODY_BYTES = 4 * 1024 * 1024
UNKNOWN_ACTION = "<unknown>"
JSON_CONTENT_TYPE = "application/json;charset=utf-8"
#: Exactly the value on which the SDKs parse an error body as XML.
XML_CONTENT_TYPE = "text/xml;charset=utf-8"
#: The vendor's error diagnosis page, which every error body links to as `Recommend`.
TROUBLESHOOT_URL = "https://api.aliyun.com/troubleshoot"
QUOTA_GROUP_NAMES = frozenset(ACTION_QUOTA_GROUPS.values())
INSTANCE_FORMAT = "ID=software|hardware[,asymmetric-import=yes|no]"

#: Signature and routing parameters; the rest is the action's own input.
COMMON_PARAMS = frozenset(
    {
        "Action",
        "Version",
        "Format",
        "Timestamp",
        "SignatureNonce",
        "SignatureMethod",
        "SignatureVersion",
        "AccessKeyId",
        "SecurityToken",
        "Signature",
        "RegionId",
    }
)


class ActionHandler(Protocol):
    """What the server calls for a verified request: `KmsResponses` in production, stubs in tests."""

    def handle(self, action: str, params: Mapping[str, str]) -> dict[str, Any]: ...


class _Closable(Protocol):
    def close(self) -> None: ...


class NonceBook(Protocol):
    """Where used signature nonces are kept until they expire (unix seconds)."""

    def use_nonce(self, nonce: str, now: int, expires: int) -> bool: ...


class _MemoryNonces:
    """Nonces in process memory: for a server whose engine a test replaced (no state database)."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()

    def use_nonce(self, nonce: str, now: int, expires: int) -> bool:
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen = {n: t for n, t in self._seen.items() if t > now}
            if self._seen.get(nonce, now) > now:
                return False
            self._seen[nonce] = expires
            return True


class WireError(Exception):
    """A refusal decided at the HTTP layer (signature, timestamp, throttling, faults)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = code.status
        self.code = code
        self.message = message


class PublicCredentialsExposed(ValueError):
    """A non-loopback --host with the default (published) access key id or secret."""


def is_loopback_host(host: str) -> bool:
    """`localhost`, or a literal address in 127.0.0.0/8 or ::1 (brackets allowed). A name other
    than localhost is not resolved: what it points at may change after the check."""
    bare = host.strip().removeprefix("[").removesuffix("]")
    if bare.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


@dataclass
class EmulatorConfig:
    """Everything `provision emulator serve` can be told. Validated on creation (ValueError)."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    db: str | None = None
    access_key_id: str = DEFAULT_ACCESS_KEY_ID
    access_key_secret: str = field(default=DEFAULT_ACCESS_KEY_SECRET, repr=False)
    #: More accepted pairs, access key id -> secret: one account's several users, or a profile per
    #: target (DESIGN section 12), each signing with its own.
    extra_access_keys: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: Access key id -> the security token that must come with it (an STS temporary key: the
    #: `SecurityToken` parameter, or the `x-acs-security-token` header of a V3 request).
    security_tokens: Mapping[str, str] = field(default_factory=dict, repr=False)
    instances: Mapping[str, str | InstanceSetup] | None = None
    latency_ms: float = 0.0
    qps: dict[str, float] = field(default_factory=dict)
    fault_rate: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if not self.access_key_id or not self.access_key_secret:
            raise ValueError("access key id and secret must not be empty")
        if not all(key_id and secret for key_id, secret in self.extra_access_keys.items()):
            raise ValueError("access key id and secret must not be empty")
        if self.access_key_id in self.extra_access_keys:
            raise ValueError("an extra access key id repeats the main one")
        accepted = {self.access_key_id, *self.extra_access_keys}
        if not all(key_id in accepted and token for key_id, token in self.security_tokens.items()):
            raise ValueError("a security token must be non-empty and belong to an accepted access key id")
        default_credentials = (
            self.access_key_id == DEFAULT_ACCESS_KEY_ID or self.access_key_secret == DEFAULT_ACCESS_KEY_SECRET
        )
        if default_credentials and not is_loopback_host(self.host):
            raise PublicCredentialsExposed(
                f"--host {self.host} is not a loopback address (127.0.0.0/8, ::1, localhost), and the "
                "default access key id and secret are public: to serve beyond this machine, pass "
                "--access-key-id and --access-key-secret of your own"
            )
        if self.latency_ms < 0:
            raise ValueError(f"latency must be >= 0 ms, got {self.latency_ms:g}")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError(f"fault rate must be between 0 and 1, got {self.fault_rate:g}")
        for group, rate in self.qps.items():
            if group not in QUOTA_GROUP_NAMES:
                known = ", ".join(sorted(QUOTA_GROUP_NAMES))
                raise ValueError(f"unknown quota group {group!r} (one of {known})")
            if not QPS_MIN <= rate <= QPS_MAX:
                raise ValueError(f"qps for {group} must be from {QPS_MIN:g} to {QPS_MAX:g}, got {rate:g}")
        for instance_id, setup in (self.instances or {}).items():
            kind = setup.kind if isinstance(setup, InstanceSetup) else setup
            if not instance_id or kind not in INSTANCE_KINDS:
                raise ValueError(f"instance must be {INSTANCE_FORMAT}, got {instance_id}={kind}")


def parse_qps(items: list[str] | tuple[str, ...]) -> dict[str, float]:
    """`GROUP=N` strings (repeatable flag) to a dict; ValueError names the bad item."""
    out: dict[str, float] = {}
    for item in items:
        group, sep, value = item.partition("=")
        try:
            rate = float(value)
        except ValueError:
            rate = float("nan")
        if not sep or group not in QUOTA_GROUP_NAMES or not QPS_MIN <= rate <= QPS_MAX:
            raise ValueError(
                f"--qps: expected GROUP=N with GROUP one of {', '.join(sorted(QUOTA_GROUP_NAMES))} "
                f"and N a number from {QPS_MIN:g} to {QPS_MAX:g}, got {item!r}"
            )
        out[group] = rate
    return out


#: The values `asymmetric-import=` takes.
_YES_NO = {"yes": True, "no": False}


def parse_instances(items: list[str] | tuple[str, ...]) -> dict[str, InstanceSetup]:
    """`ID=software|hardware[,asymmetric-import=yes|no]` strings (repeatable flag) to a dict;
    ValueError names the bad item. Asymmetric import is allowed unless turned off."""
    out: dict[str, InstanceSetup] = {}
    for item in items:
        instance_id, sep, rest = item.partition("=")
        kind, comma, options = rest.partition(",")
        name, equals, value = options.partition("=")
        good_options = not comma or (name == "asymmetric-import" and equals and value in _YES_NO)
        if not sep or not instance_id or kind not in INSTANCE_KINDS or not good_options:
            raise ValueError(f"expected {INSTANCE_FORMAT}, got {item!r}")
        out[instance_id] = InstanceSetup(kind, asymmetric_import=_YES_NO.get(value, True))
    return out


@dataclass(frozen=True)
class _Reply:
    """What one request is answered: status, body, the action it named, and whether in XML."""

    status: int
    body: dict[str, Any]
    action: str
    xml: bool


def new_request_id() -> str:
    return str(uuid.uuid4()).upper()


class _TokenBucket:
    """`rate` tokens a second, bursts up to one second's worth (at least one call)."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def _parse_timestamp(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, signing.TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that remembers open connections so close() can end idle keep-alives."""

    daemon_threads = True
    # server_close() joins every handler thread (daemon or not), so no handler outlives the engine.
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: EmulatorServer) -> None:
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def end_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-answer is normal; anything else is reported without request data.
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return
        print(f"kms emulator: connection error {type(exc).__name__}", file=sys.stderr)


class _RequestHandler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "KmsEmulator/1"
    sys_version = ""
    #: Idle keep-alive connections are dropped after this many seconds.
    timeout = 30
    # Headers and body leave in one segment: split writes meet Nagle plus delayed ACK (40 ms a call).
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True

    def handle_one_request(self) -> None:
        """One request, as the stdlib reads it but for the request line: the stdlib refuses one over
        64 KiB with an HTML 414, and the SDKs put every parameter in the query, so a long parameter
        must reach the parameter checks and their InvalidParameter instead (up to MAX_BODY_BYTES)."""
        try:
            line = self.rfile.readline(MAX_BODY_BYTES + 1)
            if not line:
                self.close_connection = True
                return
            if len(line) > MAX_BODY_BYTES:
                self.close_connection = True
                self.requestline, self.request_version, self.command = "", "HTTP/1.1", ""
                emulator = self.server.emulator
                refusal = emulator.error_body(
                    ErrorCode.INVALID_PARAMETER, "The request line is too long.", new_request_id()
                )
                self.send_json(ErrorCode.INVALID_PARAMETER.status, refusal)
                return
            self.raw_requestline = line
            if not self.parse_request():
                return
            if self.command not in ("GET", "POST"):
                self.send_error(501, f"Unsupported method ({self.command})")
                return
            self.server.emulator.dispatch(self)
            self.wfile.flush()
        except TimeoutError:
            self.close_connection = True

    def do_POST(self) -> None:
        self.server.emulator.dispatch(self)

    def do_GET(self) -> None:
        self.server.emulator.dispatch(self)

    def log_message(self, format: str, *args: Any) -> None:
        # The default access log prints the request line, whose query holds tokens and wrapped material.
        return

    def send_json(self, status: int, body: Mapping[str, Any], request_id: str | None = None) -> None:
        data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        self.send_body(status, data, JSON_CONTENT_TYPE, request_id)

    def send_body(self, status: int, data: bytes, content_type: str, request_id: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if request_id:
            self.send_header("x-acs-request-id", request_id)
        self.end_headers()
        self.wfile.write(data)


class EmulatorServer:
    """The emulator on a ThreadingHTTPServer. Binds on construction; `start()` or `serve_forever()`.

    `responses` replaces the real engine (tests); without it the server opens `KmsEngine(config.db)`
    and closes it in `close()`.
    """

    def __init__(
        self,
        config: EmulatorConfig,
        *,
        responses: ActionHandler | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.config = config
        self._clock = clock or (lambda: datetime.now(UTC))
        self._engine: _Closable | None = None
        self._nonces: NonceBook
        if responses is None:
            engine = KmsEngine(config.db, instances=config.instances)
            self._engine = engine
            # Nonces live in the state database beside the keys, so a replay is refused across a
            # restart on the same --db as before it; an in-memory database keeps them in memory.
            self._nonces = engine.store
            responses = KmsResponses(engine)
        else:
            self._nonces = _MemoryNonces()
        self._responses = responses
        self._calls: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        now = time.monotonic()
        self._buckets = {g: _TokenBucket(r, now) for g, r in config.qps.items()}
        self._bucket_lock = threading.Lock()
        # Faults are not key material: a seeded PRNG makes a faulty run reproducible.
        self._rng = random.Random(config.seed)
        self._rng_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._serving = False
        self._closed = False
        self._close_lock = threading.Lock()
        # Bound last, once everything a request touches exists.
        try:
            self._httpd = _HTTPServer((config.host, config.port), self)
        except BaseException:
            if self._engine is not None:
                self._engine.close()
            raise

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        """`host:port`, the form the SDK's `Config(endpoint=...)` wants (no scheme)."""
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        """Serve on a background daemon thread (tests, benchmarks)."""
        if self._thread is not None:
            raise RuntimeError("emulator already started")
        self._serving = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="kms-emulator", daemon=True
        )
        self._thread.start()

    def serve_forever(self) -> None:
        """Serve on the calling thread until `shutdown()` is called from another one."""
        self._serving = True
        self._httpd.serve_forever(poll_interval=0.1)

    def shutdown(self) -> None:
        """Stop serving, end open connections, wait for handlers, close the socket and the engine."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self._serving:
            self._httpd.shutdown()
        self._httpd.end_connections()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        if self._engine is not None:
            self._engine.close()

    close = shutdown

    def __enter__(self) -> EmulatorServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def set_qps(self, qps: Mapping[str, float]) -> None:
        """Replace the quotas while the server runs (a throttling storm that starts and ends in a test);
        checked as `--qps` is."""
        checked = EmulatorConfig(qps=dict(qps)).qps  # ValueError for an unknown group or rate
        now = time.monotonic()
        with self._bucket_lock:
            self.config.qps = checked
            self._buckets = {g: _TokenBucket(r, now) for g, r in checked.items()}

    def stats(self) -> dict[str, dict[str, int]]:
        with self._stats_lock:
            return {"calls": dict(sorted(self._calls.items()))}

    # -- one request -----------------------------------------------------------------------------

    def dispatch(self, h: _RequestHandler) -> None:
        url = urlsplit(h.path)
        if h.command == "GET" and url.path == STATS_PATH:
            _read_body(h)
            h.send_json(200, self.stats())
            return
        request_id = new_request_id()
        try:
            body = _read_body(h)
        except WireError as e:
            query_action = dict(parse_qsl(url.query)).get("Action")
            self._count(h.headers.get("x-acs-action") or query_action or UNKNOWN_ACTION)
            h.close_connection = True
            h.send_json(e.status, self.error_body(e.code, e.message, request_id), request_id)
            return
        authorization = h.headers.get("Authorization")
        reply = self._answer(h, url.path, url.query, body, authorization, request_id)
        if self.config.latency_ms:
            time.sleep(self.config.latency_ms / 1000.0)
        answer_id = str(reply.body.get("RequestId") or request_id)
        if reply.xml:
            # The SDKs' XML shape: the error under <Error>, an answer under <ActionResponse>.
            root = "Error" if reply.status >= 400 else f"{reply.action}Response"
            h.send_body(reply.status, to_xml(root, reply.body), XML_CONTENT_TYPE, answer_id)
        else:
            h.send_json(reply.status, reply.body, answer_id)

    def error_body(self, code: ErrorCode, message: str, request_id: str) -> dict[str, Any]:
        """The vendor's error body: HostId is the endpoint called, Recommend its diagnosis page."""
        query = urlencode({"q": code.value, "product": "Kms", "requestId": request_id})
        return {
            "RequestId": request_id,
            "HostId": self.endpoint,
            "Code": code.value,
            "Message": message,
            "Recommend": f"{TROUBLESHOOT_URL}?{query}",
        }

    def _answer(
        self,
        h: _RequestHandler,
        path: str,
        raw_query: str,
        body: bytes,
        authorization: str | None,
        request_id: str,
    ) -> _Reply:
        params: dict[str, str] = {}
        action = UNKNOWN_ACTION
        xml = False
        try:
            query_pairs = parse_qsl(raw_query, keep_blank_values=True)
            params.update(query_pairs)
            try:
                params.update(_form_pairs(h, body))
            finally:
                # Counted before any check, so refused requests show up in the stats too.
                header_action = h.headers.get("x-acs-action") if authorization else None
                action = header_action or params.get("Action") or UNKNOWN_ACTION
                self._count(action)
                # Format=XML (either case, as the SDKs send it) asks for XML, errors included.
                xml = params.get("Format", "").upper() == "XML"
            if path not in ("", "/"):
                raise WireError(ErrorCode.INVALID_API_NOT_FOUND, "Specified api is not found, check the url.")
            if authorization is not None:
                version = self._verify_v3(h, query_pairs, body, authorization)
            else:
                version = self._verify_v2(h.command, params)
            if version != API_VERSION:
                raise WireError(ErrorCode.INVALID_VERSION, "Specified parameter Version is not valid.")
            if action == UNKNOWN_ACTION:
                raise WireError(
                    ErrorCode.MISSING_PARAMETER,
                    "The input parameter Action that is mandatory "
                    "for processing this request is not supplied.",
                )
            self._inject_fault()
            self._throttle(action)
            rest = {k: v for k, v in params.items() if k not in COMMON_PARAMS}
            # KmsEngine is thread-safe (one transaction under one lock per call).
            result = self._responses.handle(action, rest)
            result.setdefault("RequestId", request_id)
            return _Reply(200, result, action, xml)
        except (WireError, KmsError) as e:
            return _Reply(e.status, self.error_body(e.code, e.message, request_id), action, xml)
        except Exception as e:
            # No parameters and no exception text: either may hold key material or a token.
            frames = "".join(traceback.format_tb(e.__traceback__))
            print(
                f"kms emulator: internal failure in {action} ({type(e).__name__}), request {request_id}\n"
                f"{frames}",
                file=sys.stderr,
                flush=True,
            )
            failure = self.error_body(ErrorCode.INTERNAL_FAILURE, "Internal Failure", request_id)
            return _Reply(500, failure, action, xml)

    def _count(self, action: str) -> None:
        with self._stats_lock:
            self._calls[action] += 1

    # -- checks ----------------------------------------------------------------------------------

    def _secret_of(self, access_key_id: str | None, security_token: str | None) -> str:
        """The secret of an accepted access key id, which came with its security token if it has one;
        every pair is compared, so that the time taken says nothing of which id (if any) matched."""
        if not access_key_id:
            raise WireError(
                ErrorCode.MISSING_PARAMETER,
                "The input parameter AccessKeyId that is mandatory "
                "for processing this request is not supplied.",
            )
        main = (self.config.access_key_id, self.config.access_key_secret)
        pairs = [main, *self.config.extra_access_keys.items()]
        found: str | None = None
        for key_id, secret in pairs:
            if signing.signatures_equal(access_key_id, key_id):
                found = secret
        if found is None:
            raise WireError(ErrorCode.INVALID_ACCESS_KEY_ID_NOT_FOUND, "Specified access key is not found.")
        assert access_key_id is not None
        token = self.config.security_tokens.get(access_key_id)
        if token is not None and not signing.signatures_equal(security_token or "", token):
            raise WireError(
                ErrorCode.INVALID_SECURITY_TOKEN_MISMATCH_WITH_ACCESS_KEY,
                "Specified SecurityToken mismatch with the AccessKey.",
            )
        return found

    def _check_timestamp(self, value: str | None, name: str) -> None:
        when = _parse_timestamp(value)
        if when is None:
            raise WireError(
                ErrorCode.ILLEGAL_TIMESTAMP,
                f'The input parameter "{name}" that is mandatory for processing this request is not '
                "supplied or is not in the format yyyy-MM-ddTHH:mm:ssZ.",
            )
        if abs(self._clock() - when) > MAX_CLOCK_SKEW:
            # The vendor's wording, for the future as for the past.
            raise WireError(
                ErrorCode.ILLEGAL_TIMESTAMP,
                "Specified time stamp or date value is expired (more than 15 minutes from server time, UTC).",
            )

    def _bad_signature(self) -> WireError:
        """A signature that is missing parts or is not one at all (not a wrong one)."""
        return WireError(
            ErrorCode.INCOMPLETE_SIGNATURE,
            "The request signature does not conform to Aliyun standards.",
        )

    def _wrong_signature(self, string_to_sign: str | None = None) -> WireError:
        """A well-formed signature made with another secret (or over other content): the vendor's
        code and words. A V2 answer goes on, as the service's does, with the string to sign it computed
        ("... our calculation. server string to sign is:POST&%2F&..."): aliyun-python-sdk-core splits the
        message at its first ':' and, when the tail equals its own string to sign, tells its user that
        the secret is wrong (InvalidAccessKeySecret); without the tail that SDK fails on an IndexError.
        The V2 string to sign holds no raw ':' (it is percent-encoded twice)."""
        message = "Specified signature is not matched with our calculation."
        if string_to_sign is not None:
            message += f" server string to sign is:{string_to_sign}"
        return WireError(ErrorCode.SIGNATURE_DOES_NOT_MATCH, message)

    @staticmethod
    def _unsupported_method(what: str) -> WireError:
        # The vendor's common code for a signature method it does not take ("Specified signature
        # method is not valid."); the rest of the message says honestly what this emulator checks.
        return WireError(
            ErrorCode.INVALID_SIGNATURE_METHOD,
            f"Specified signature method is not valid: this emulator checks {what}.",
        )

    def _use_nonce(self, nonce: str | None) -> None:
        if not nonce:
            raise WireError(
                ErrorCode.MISSING_PARAMETER,
                "The input parameter SignatureNonce that is mandatory "
                "for processing this request is not supplied.",
            )
        now = int(self._clock().timestamp())
        # Kept twice the skew: a timestamp may sit 15 minutes ahead of the clock and still be valid.
        expires = now + int(2 * MAX_CLOCK_SKEW.total_seconds())
        if not self._nonces.use_nonce(nonce, now, expires):
            raise WireError(ErrorCode.SIGNATURE_NONCE_USED, "Specified signature nonce was used already.")

    def _verify_v3(
        self,
        h: _RequestHandler,
        query_pairs: list[tuple[str, str]],
        body: bytes,
        authorization: str,
    ) -> str:
        # The scheme first: a V4 (ACS4-, AWS4-) header names its credential AK/date/region/..., which
        # would otherwise be refused as an unknown access key, a misleading answer.
        if signing.authorization_scheme(authorization) not in signing.V3_ALGORITHMS:
            raise self._unsupported_method(
                f"{' and '.join(signing.V3_ALGORITHMS)} (V3) and {signing.V2_METHOD} (V2) signatures only"
            )
        auth = signing.parse_v3_authorization(authorization)
        if auth is None:
            raise self._bad_signature()
        secret = self._secret_of(auth.access_key_id, h.headers.get("x-acs-security-token"))
        self._check_timestamp(h.headers.get("x-acs-date"), "x-acs-date")
        # The Python and Node SDKs send the SM3 payload hash as x-acs-content-sha256 too; the gateway
        # clients as x-acs-content-sm3. Either is taken for ACS3-HMAC-SM3 (inferred from the SDKs).
        content_header = "x-acs-content-sha256"
        if auth.algorithm == signing.V3_SM3_ALGORITHM and "x-acs-content-sm3" in h.headers:
            content_header = "x-acs-content-sm3"
        required = {"host", "x-acs-action", "x-acs-version", "x-acs-date", "x-acs-signature-nonce"}
        if not required | {content_header} <= set(auth.signed_headers):
            raise self._bad_signature()
        payload_hash = h.headers.get(content_header, "")
        if not signing.signatures_equal(payload_hash.lower(), signing.v3_hash_hex(auth.algorithm, body)):
            # The body is not the one signed: a damaged or tampered request, not a wrong secret.
            raise self._bad_signature()
        headers: dict[str, str] = {}
        for name in auth.signed_headers:
            values = h.headers.get_all(name)
            if values is None:
                raise self._bad_signature()
            headers[name] = ",".join(sorted(v.strip() for v in values))
        if not _is_hex(auth.signature, len(signing.v3_hash_hex(auth.algorithm, b""))):
            raise self._bad_signature()
        canonical = signing.v3_canonical_request(h.command, "/", query_pairs, headers, payload_hash)
        expected = signing.v3_signature(secret, canonical, auth.algorithm)
        if not signing.signatures_equal(auth.signature.lower(), expected):
            raise self._wrong_signature()
        self._use_nonce(h.headers.get("x-acs-signature-nonce"))
        return h.headers.get("x-acs-version", "")

    def _verify_v2(self, method: str, params: Mapping[str, str]) -> str:
        if "Signature" not in params:
            raise WireError(
                ErrorCode.MISSING_PARAMETER,
                "The input parameter Signature that is mandatory "
                "for processing this request is not supplied.",
            )
        secret = self._secret_of(params.get("AccessKeyId"), params.get("SecurityToken"))
        if params.get("SignatureMethod") != signing.V2_METHOD:
            raise self._unsupported_method(f"{signing.V2_METHOD} for V2 signatures")
        self._check_timestamp(params.get("Timestamp"), "Timestamp")
        if not _is_sha1_base64(params["Signature"]):
            raise self._bad_signature()
        expected = signing.v2_signature(secret, method, params)
        if not signing.signatures_equal(params["Signature"], expected):
            raise self._wrong_signature(signing.v2_string_to_sign(method, params))
        self._use_nonce(params.get("SignatureNonce"))
        return params.get("Version", "")

    def _inject_fault(self) -> None:
        if self.config.fault_rate <= 0:
            return
        with self._rng_lock:
            hit = self._rng.random() < self.config.fault_rate
        if hit:
            raise WireError(
                ErrorCode.SERVICE_UNAVAILABLE_TEMPORARY,
                "Service is temporarily unavailable, please try again later.",
            )

    def _throttle(self, action: str) -> None:
        group = ACTION_QUOTA_GROUPS.get(action)
        bucket = self._buckets.get(group) if group else None
        if bucket is None:
            return
        with self._bucket_lock:
            allowed = bucket.take(time.monotonic())
        if not allowed:
            raise WireError(ErrorCode.REJECTED_THROTTLING, "QPS Limit Exceeded")


def _is_hex(value: str, length: int) -> bool:
    return len(value) == length and all(c in "0123456789abcdefABCDEF" for c in value)


def _is_sha1_base64(value: str) -> bool:
    """Base64 of 20 bytes: the shape of a V2 signature, whatever secret made it."""
    try:
        return len(base64.b64decode(value, validate=True)) == 20
    except (binascii.Error, ValueError):
        return False


def _read_body(h: _RequestHandler) -> bytes:
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        raise WireError(ErrorCode.MISSING_CONTENT_LENGTH, "Chunked request bodies are not supported.")
    raw = h.headers.get("Content-Length")
    try:
        length = int(raw) if raw else 0
    except ValueError:
        length = -1
    if length < 0 or length > MAX_BODY_BYTES:
        raise WireError(ErrorCode.INVALID_PARAMETER, "The request body length is not valid.")
    return h.rfile.read(length) if length else b""


def _form_pairs(h: _RequestHandler, body: bytes) -> list[tuple[str, str]]:
    if not body:
        return []
    content_type = h.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type not in ("", "application/x-www-form-urlencoded"):
        return []
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as e:
        raise WireError(ErrorCode.INVALID_PARAMETER, "The request body is not valid UTF-8.") from e
