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
from dataclasses import dataclass
from enum import StrEnum
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


class CallStep(StrEnum):
    """What one CallEvent reports."""

    START = "start"  # an attempt is sent
    DONE = "done"  # the call answered
    THROTTLED = "throttled"  # the client-side rate limit holds the call back `seconds`
    RETRY = "retry"  # the attempt failed with `reason`; the next one in `seconds`


@dataclass(frozen=True)
class CallEvent:
    """What the transport tells its observer (the CLI's progress line). Of a call's parameters only
    the KeyId is passed on: the others may hold material or an import token."""

    step: CallStep
    action: str
    key_id: str | None
    seconds: float = 0.0
    reason: str = ""  # RETRY: the vendor's error code, or why there was no answer
    attempt: int = 1
    group: str = ""  # THROTTLED: the quota group, whose rate is `rate` calls a second
    rate: float = 0.0


Observer = Callable[[CallEvent], None]


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

    def acquire(self, on_wait: Callable[[float], None] | None = None) -> float:
        """Wait for a slot; returns how long this caller waited (told to `on_wait` first)."""
        with self._lock:
            now = self._clock()
            tat = now if self._tat is None else max(self._tat, now)
            wait = max(0.0, tat - self._tolerance - now)
            self._tat = tat + self.interval
        if wait > 0:
            if on_wait is not None:
                on_wait(wait)
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
        #: Told of every attempt, wait and retry (progress); None: nobody listens.
        self.observer: Observer | None = None

    def close(self) -> None:
        self.inner.close()

    def calls_total(self) -> int:
        with self._calls_lock:
            return sum(self.calls.values())

    def _tell(self, step: CallStep, action: str, params: Mapping[str, Any], **facts: Any) -> None:
        observer = self.observer
        if observer is not None:
            key_id = params.get("KeyId")
            observer(CallEvent(step, action, key_id if isinstance(key_id, str) else None, **facts))

    def call(self, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        group = QUOTA_GROUPS.get(action, "")
        bucket = self._buckets.get(group)
        attempts = 0
        started: float | None = None

        def throttled(wait: float) -> None:
            self._tell(
                CallStep.THROTTLED, action, params, seconds=wait, group=group, rate=self.qps[group],
                attempt=attempts + 1,
            )

        while True:
            if bucket is not None:
                bucket.acquire(throttled if self.observer is not None else None)
            if started is None:
                started = self._clock()
            attempts += 1
            with self._calls_lock:
                self.calls[action] += 1
            self._tell(CallStep.START, action, params, attempt=attempts)
            try:
                answer = self.inner.call(action, params)
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
            else:
                self._tell(CallStep.DONE, action, params, attempt=attempts)
                return answer
            elapsed = self._clock() - started
            cap = min(self.max_delay, self.base_delay * 2 ** (attempts - 1))
            delay = self._rng() * cap  # full jitter: spreads retries of concurrent callers apart
            if elapsed + delay > self.max_elapsed:
                raise _gave_up(failure, attempts, elapsed) from failure
            reason = failure.code if isinstance(failure, KmsApiError) else failure.reason
            self._tell(CallStep.RETRY, action, params, seconds=delay, reason=reason, attempt=attempts)
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
