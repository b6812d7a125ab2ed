"""ResilientTransport and TokenBucket with fake transports and a fake clock: no sleeping, no network."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import pytest

from provisioner.backend.resilience import (
    KmsConnectionError,
    ResilientTransport,
    TokenBucket,
    parse_qps,
)
from provisioner.errors import BackendError, KmsApiError, KmsUnreachable, UsageError


class FakeClock:
    """time.monotonic and time.sleep in one: sleeping advances the clock."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds


class Scripted:
    """A transport answering from a script: each item is an exception to raise or a body to return."""

    def __init__(self, *script: Exception | dict[str, Any]) -> None:
        self.script = list(script)
        self.seen: list[str] = []
        self.closed = False

    def call(self, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        self.seen.append(action)
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self.closed = True


def throttled() -> KmsApiError:
    return KmsApiError("DescribeKey", "Rejected.Throttling", "QPS Limit Exceeded", "rid-1", 429)


def resilient(inner: Scripted, clock: FakeClock, **kw: Any) -> ResilientTransport:
    return ResilientTransport(inner, sleep=clock.sleep, clock=clock, rng=lambda: 1.0, **kw)


def test_throttled_then_ok_retries_with_growing_backoff() -> None:
    clock = FakeClock()
    inner = Scripted(throttled(), throttled(), {"KeyMetadata": {"KeyId": "k"}})
    t = resilient(inner, clock, qps={})
    assert t.call("DescribeKey", {"KeyId": "k"}) == {"KeyMetadata": {"KeyId": "k"}}
    assert inner.seen == ["DescribeKey"] * 3
    assert clock.sleeps == [0.2, 0.4]  # rng()=1.0 shows the cap of each full-jitter draw
    assert t.calls["DescribeKey"] == 3


def test_service_unavailable_and_internal_failure_are_retried() -> None:
    clock = FakeClock()
    unavailable = KmsApiError("ListAliases", "ServiceUnavailableTemporary", "try later", "r", 503)
    internal = KmsApiError("ListAliases", "InternalFailure", "oops", "r", 500)
    inner = Scripted(unavailable, internal, {"ok": 1})
    t = resilient(inner, clock, qps={})
    assert t.call("ListAliases", {}) == {"ok": 1}
    assert t.calls["ListAliases"] == 3


def test_connection_error_is_retried_then_succeeds() -> None:
    clock = FakeClock()
    refused = KmsConnectionError(
        "DescribeKey", "http://127.0.0.1:1", "connection refused", request_sent=False
    )
    inner = Scripted(refused, {"ok": 1})
    assert resilient(inner, clock, qps={}).call("DescribeKey", {}) == {"ok": 1}


def test_non_retryable_error_passes_through_at_once() -> None:
    clock = FakeClock()
    missing = KmsApiError(
        "DescribeKey", "Forbidden.KeyNotFound", "The specified Key is not found.", "r9", 404
    )
    inner = Scripted(missing)
    t = resilient(inner, clock, qps={})
    with pytest.raises(KmsApiError) as e:
        t.call("DescribeKey", {"KeyId": "nope"})
    assert e.value is missing
    assert e.value.code == "Forbidden.KeyNotFound"
    assert (
        str(e.value) == "DescribeKey: Forbidden.KeyNotFound: The specified Key is not found. (request id r9)"
    )
    assert inner.seen == ["DescribeKey"]
    assert clock.sleeps == []


def test_other_backend_errors_pass_through() -> None:
    clock = FakeClock()
    inner = Scripted(BackendError("no Alibaba Cloud credentials found"))
    with pytest.raises(BackendError, match="^no Alibaba Cloud credentials found$"):
        resilient(inner, clock, qps={}).call("ListKeys", {})
    assert inner.seen == ["ListKeys"]


def test_gives_up_on_throttling_after_max_elapsed_naming_action_and_code() -> None:
    clock = FakeClock()
    inner = Scripted(throttled())
    t = resilient(inner, clock, qps={}, max_elapsed=30.0)
    with pytest.raises(KmsApiError) as e:
        t.call("DescribeKey", {"KeyId": "k"})
    assert e.value.code == "Rejected.Throttling"
    # Delays 0.2 0.4 0.8 1.6 3.2 then 5.0 each: 6.2 s after 5 waits, 31.2 would pass 30 after 10 waits.
    assert clock.sleeps == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0, 5.0]
    assert str(e.value) == (
        "DescribeKey: Rejected.Throttling: QPS Limit Exceeded "
        "(gave up after 10 attempts over 26.2 s) (request id rid-1)"
    )
    assert sum(clock.sleeps) <= 30.0


def test_gives_up_on_connection_errors_as_unreachable() -> None:
    clock = FakeClock()
    refused = KmsConnectionError(
        "ListAliases", "http://127.0.0.1:9", "connection refused", request_sent=False
    )
    t = resilient(Scripted(refused), clock, qps={}, max_elapsed=1.0)
    with pytest.raises(KmsUnreachable) as e:
        t.call("ListAliases", {})
    assert str(e.value) == (
        "cannot reach KMS at http://127.0.0.1:9: connection refused (gave up after 3 attempts over 0.6 s)"
    )
    assert isinstance(e.value.__cause__, KmsConnectionError)


def test_create_key_is_not_resent_once_the_request_may_have_arrived() -> None:
    clock = FakeClock()
    timeout = KmsConnectionError("CreateKey", "https://kms.example", "read timed out", request_sent=True)
    inner = Scripted(timeout, {"KeyMetadata": {}})
    with pytest.raises(KmsUnreachable) as e:
        resilient(inner, clock, qps={}).call("CreateKey", {})
    assert str(e.value) == (
        "cannot reach KMS at https://kms.example: read timed out during CreateKey; the request may have "
        "been carried out: run plan again to see the live state"
    )
    assert inner.seen == ["CreateKey"]


def test_create_key_is_resent_when_the_connection_was_refused() -> None:
    clock = FakeClock()
    refused = KmsConnectionError("CreateKey", "https://kms.example", "connection refused", request_sent=False)
    inner = Scripted(refused, {"KeyMetadata": {}})
    assert resilient(inner, clock, qps={}).call("CreateKey", {}) == {"KeyMetadata": {}}
    assert inner.seen == ["CreateKey", "CreateKey"]


def test_jitter_comes_from_the_injected_rng() -> None:
    clock = FakeClock()
    inner = Scripted(throttled(), {"ok": 1})
    t = ResilientTransport(inner, qps={}, sleep=clock.sleep, clock=clock, rng=lambda: 0.25)
    t.call("DescribeKey", {})
    assert clock.sleeps == [0.05]


def test_token_bucket_spaces_calls_at_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(4.0, clock=clock, sleep=clock.sleep)
    starts = []
    for _ in range(5):
        bucket.acquire()
        starts.append(clock.now - 100.0)
    assert starts == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_token_bucket_does_not_save_up_idle_time_beyond_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2.0, burst=2, clock=clock, sleep=clock.sleep)
    clock.now += 60.0  # a long idle spell earns no more than `burst` calls at once
    waits = [bucket.acquire() for _ in range(4)]
    assert waits == pytest.approx([0.0, 0.0, 0.5, 0.5])


def test_rate_limit_is_per_quota_group() -> None:
    clock = FakeClock()
    inner = Scripted({"ok": 1})
    t = resilient(inner, clock, qps={"read": 2.0, "write": 1.0})
    for action in ("DescribeKey", "DescribeKey", "TagResource", "TagResource", "DescribeKey"):
        t.call(action, {})
    # read: 0, 0.5, 1.0; write: 0, 1.0. The last DescribeKey waits its own group's slot only.
    assert clock.now - 100.0 == pytest.approx(1.5)
    assert t.calls == {"DescribeKey": 3, "TagResource": 2}


def test_rate_limit_holds_across_threads() -> None:
    # A clock that stands still: every reservation is made at the same instant, so each caller's
    # wait is exactly its slot's offset, whichever thread it runs on.
    slept: list[float] = []
    lock = threading.Lock()

    def record(seconds: float) -> None:
        with lock:
            slept.append(seconds)

    bucket = TokenBucket(10.0, clock=lambda: 100.0, sleep=record)
    threads = [threading.Thread(target=lambda: [bucket.acquire() for _ in range(5)]) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    # 20 calls at 10/s: slots 0.1 s apart (the first needs no sleep), none shared.
    assert sorted(slept) == pytest.approx([0.1 * i for i in range(1, 20)])


def test_calls_are_counted_under_concurrency() -> None:
    inner = Scripted({"ok": 1})
    t = ResilientTransport(inner, qps={})
    threads = [
        threading.Thread(target=lambda: [t.call("DescribeKey", {}) for _ in range(200)]) for _ in range(4)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert t.calls["DescribeKey"] == 800
    assert t.calls_total() == 800


def test_close_closes_inner() -> None:
    inner = Scripted({"ok": 1})
    ResilientTransport(inner).close()
    assert inner.closed


def test_parse_qps_gives_the_groups_named() -> None:
    assert parse_qps(["read=5", "write=2.5", "read=7"]) == {"read": 7.0, "write": 2.5}
    assert parse_qps(["read=0.01", "write=10000"]) == {"read": 0.01, "write": 10000.0}
    assert parse_qps([]) == {}


QPS_RANGE = "--qps: expected GROUP=N with N a number from 0.01 to 10000 (calls a second), got"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("read", QPS_RANGE + " 'read'"),
        ("read=", QPS_RANGE + " 'read='"),
        ("read=fast", QPS_RANGE + " 'read=fast'"),
        ("read=0", QPS_RANGE + " 'read=0'"),
        ("read=-3", QPS_RANGE + " 'read=-3'"),
        ("=3", QPS_RANGE + " '=3'"),
        *(
            (v, QPS_RANGE + f" {v!r}")
            for v in ("read=1e-300", "read=1e-9", "read=0.009", "read=nan", "read=inf", "read=-inf",
                      "read=10001", "read=1e400", "read=" + "9" * 5000)
        ),
        ("reads=3", "--qps: unknown group 'reads' (expected one of create, crypto, read, write)"),
    ],
)
def test_parse_qps_errors(value: str, message: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_qps([value])
    assert str(e.value) == message
