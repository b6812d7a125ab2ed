"""refresh() overlaps its sequential page chains with the DescribeKey calls, and stops queued calls
when one fails. Over the local engine behind a transport that adds latency and records when each
call ran (the plan_scale benchmark at 300 ms a call found the pages read in series cost 25 %).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from provisioner.backend.base import Kms
from provisioner.backend.local import LocalTransport
from provisioner.errors import KmsApiError
from provisioner.model import TAG_NAME, TAG_STACK, KeySpec, KeyUsage, ProtectionLevel
from provisioner.refresh import refresh

STACK = "pipe"
LATENCY = 0.03


@dataclass(frozen=True)
class Call:
    action: str
    start: float
    end: float


class SlowRecorder:
    """Adds LATENCY to every call (outside the engine's lock, so calls overlap) and records it."""

    def __init__(self, inner: LocalTransport, fail: str | None = None, fail_on: int = 0) -> None:
        self.inner = inner
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._fail = fail
        self._fail_on = fail_on
        self._seen: Counter[str] = Counter()

    def call(self, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        start = time.monotonic()
        with self._lock:
            self._seen[action] += 1
            failing = action == self._fail and self._seen[action] == self._fail_on
        time.sleep(LATENCY)
        try:
            if failing:
                raise KmsApiError(action, "Forbidden.NoPermission", "not allowed", "req-1", 403)
            return self.inner.call(action, params)
        finally:
            with self._lock:
                self.calls.append(Call(action, start, time.monotonic()))

    def close(self) -> None:
        self.inner.close()

    def of(self, action: str) -> list[Call]:
        with self._lock:
            return sorted((c for c in self.calls if c.action == action), key=lambda c: c.start)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[LocalTransport]:
    """120 keys of the stack, one alias each: 360 tag rows (2 pages of 200), 120 aliases (2 of 100)."""
    transport = LocalTransport(tmp_path / "kms.db")
    kms = Kms(transport)
    for i in range(120):
        key_id = kms.create_key(
            spec=KeySpec.EC_P256,
            usage=KeyUsage.SIGN_VERIFY,
            protection=ProtectionLevel.SOFTWARE,
            instance="kst-local-software",
            description="",
            tags={TAG_STACK: STACK, TAG_NAME: f"k{i:03d}", "team": "pay"},
        ).key_id
        kms.create_alias(f"alias/pipe/k{i:03d}", key_id)
    yield transport
    transport.close()


def test_describes_start_after_the_first_tag_page_and_aliases_run_alongside(engine: LocalTransport) -> None:
    recorder = SlowRecorder(engine)
    state = refresh(Kms(recorder), STACK, now=datetime.now(UTC), concurrency=8)
    assert sum(len(found) for found in state.keys.values()) == 120
    assert len(state.alias_owners) == 120
    counts = Counter(c.action for c in recorder.calls)
    assert counts == {"ListTagResources": 2, "DescribeKey": 120, "ListAliases": 2}  # no call added
    pages = recorder.of("ListTagResources")
    describes = recorder.of("DescribeKey")
    aliases = recorder.of("ListAliases")
    # DescribeKey of the first page's keys is under way before the second page is back ...
    assert describes[0].start < pages[1].end
    # ... and the alias pages are read while keys are described, not after the last of them.
    assert aliases[-1].end < describes[-1].end


def test_a_failing_page_cancels_the_queued_describes(engine: LocalTransport) -> None:
    recorder = SlowRecorder(engine, fail="ListTagResources", fail_on=2)
    with pytest.raises(KmsApiError) as e:
        refresh(Kms(recorder), STACK, now=datetime.now(UTC), concurrency=4)
    assert str(e.value) == "ListTagResources: Forbidden.NoPermission: not allowed (request id req-1)"
    # About 66 keys were on the first page and queued for DescribeKey; the failure stopped the queue,
    # so only the calls already running (4 workers, one of them on the alias pages) went out.
    assert len(recorder.of("DescribeKey")) <= 12, Counter(c.action for c in recorder.calls)
