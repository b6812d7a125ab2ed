"""Client-side discipline around any Transport: a rate limit per quota group, retries, call counts.

It decides nothing about what to call: it only paces, retries what the vendor says is retryable, and
gives up with a clear error. It never puts request parameters (material, tokens) into a message.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from provisioner.backend.base import DEFAULT_QPS, QPS_MAX, QPS_MIN, QUOTA_GROUPS, Transport
from provisioner.errors import BackendError, KmsApiError, KmsUnreachable, UsageError

#: Actions where a request that may have reached the service must not be sent again: a second
#: CreateKey makes a second key. Apply and refresh cope with such a duplicate, but we do not make one.
NOT_IDEMPOTENT = frozenset({"CreateKey"})


class KmsConnectionError(BackendError):
    """No answer to one request (refused, reset, timed out); retryable."""

    def __init__(self, action: str, endpoint: str, reason: str, *, request_sent: bool) -> None:
        self.action = action
        self.endpoint = endpoint
        self.reason = reason
        # False when the request certainly never left (connection refused, connect timeout).
        self.request_sent = request_sent
        super().__init__(f"{action}: cannot reach KMS at {endpoint}: {reason}")


class TokenBucket:
    """Thread-safe limiter (GCRA form of a token bucket): `rate` calls a second, `burst` at once.

    A caller reserves its slot under the lock and sleeps outside it, so waiting callers are
    served in order and never exceed the rate, whatever the number of threads.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.interval = 1.0 / rate
        self._tolerance = (max(burst, 1) - 1) * self.interval
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tat: float | None = None  # theoretical arrival time of the next call

    def acquire(self) -> float:
        """Wait for a slot; returns how long this caller waited."""
        with self._lock:
            now = self._clock()
            tat = now if self._tat is None else max(self._tat, now)
            wait = max(0.0, tat - self._tolerance - now)
            self._tat = tat + self.interval
        if wait > 0:
            self._sleep(wait)
        return wait


class ResilientTransport:
    """A Transport that paces calls per quota group and retries what is retryable."""

    def __init__(
        self,
        inner: Transport,
        *,
        qps: Mapping[str, float] = DEFAULT_QPS,
        max_elapsed: float = 30.0,
        base_delay: float = 0.2,
        max_delay: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] | None = None,
    ) -> None:
        self.inner = inner
        self.max_elapsed = max_elapsed
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        self._clock = clock
        # Jitter is not key material, so `random` is right here; injectable for tests.
        self._rng = rng or random.Random().random
        self.qps = {group: rate for group, rate in qps.items() if rate > 0}
        self._buckets = {
            group: TokenBucket(rate, clock=clock, sleep=sleep) for group, rate in self.qps.items()
        }
        self.calls: Counter[str] = Counter()
        self._calls_lock = threading.Lock()

    def close(self) -> None:
        self.inner.close()

    def calls_total(self) -> int:
        with self._calls_lock:
            return sum(self.calls.values())

    def call(self, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        bucket = self._buckets.get(QUOTA_GROUPS.get(action, ""))
        attempts = 0
        started: float | None = None
        while True:
            if bucket is not None:
                bucket.acquire()
            if started is None:
                started = self._clock()
            attempts += 1
            with self._calls_lock:
                self.calls[action] += 1
            try:
                return self.inner.call(action, params)
            except KmsApiError as e:
                if not e.retryable:
                    raise
                failure: KmsApiError | KmsConnectionError = e
            except KmsConnectionError as e:
                if e.request_sent and action in NOT_IDEMPOTENT:
                    raise KmsUnreachable(
                        f"cannot reach KMS at {e.endpoint}: {e.reason} during {action}; the request may "
                        "have been carried out: run plan again to see the live state"
                    ) from e
                failure = e
            elapsed = self._clock() - started
            cap = min(self.max_delay, self.base_delay * 2 ** (attempts - 1))
            delay = self._rng() * cap  # full jitter: spreads retries of concurrent callers apart
            if elapsed + delay > self.max_elapsed:
                raise _gave_up(failure, attempts, elapsed) from failure
            self._sleep(delay)


def _gave_up(failure: KmsApiError | KmsConnectionError, attempts: int, elapsed: float) -> BackendError:
    tail = f"gave up after {attempts} attempt{'s' if attempts != 1 else ''} over {elapsed:.1f} s"
    if isinstance(failure, KmsConnectionError):
        return KmsUnreachable(f"cannot reach KMS at {failure.endpoint}: {failure.reason} ({tail})")
    return KmsApiError(
        failure.action,
        failure.code,
        f"{failure.message} ({tail})",
        failure.request_id,
        failure.status,
    )


def parse_qps(values: Sequence[str]) -> dict[str, float]:
    """`--qps GROUP=N` values as {group: rate}: only the groups given (open_kms adds the defaults)."""
    groups = sorted(set(QUOTA_GROUPS.values()))
    out: dict[str, float] = {}
    for item in values:
        group, sep, number = item.partition("=")
        group = group.strip()
        try:
            rate = float(number)
        except ValueError:
            rate = float("nan")
        if not sep or not group or not QPS_MIN <= rate <= QPS_MAX:
            raise UsageError(
                f"--qps: expected GROUP=N with N a number from {QPS_MIN:g} to {QPS_MAX:g} (calls a second), "
                f"got {item!r}"
            )
        if group not in groups:
            raise UsageError(f"--qps: unknown group {group!r} (expected one of {', '.join(groups)})")
        out[group] = rate
    return out
