"""Progress on standard error (views/progress.py) fed by the transport's events (backend/resilience.py):
silent for short work, one rewritten line on a terminal, one line per key otherwise; retries and rate
limit waits named; escaped; never a parameter but the key id."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cli_support import example_workdir, run_main

from provisioner.backend.resilience import CallEvent, CallStep, ResilientTransport
from provisioner.errors import KmsApiError
from provisioner.views import progress as progress_module
from provisioner.views.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _progress(terminal: bool, total: int | None = None) -> tuple[Progress, io.StringIO, Clock]:
    clock = Clock()
    out = io.StringIO()
    p = Progress("refresh", out, terminal=terminal, total=total, clock=clock, ticker=False, width=200)
    return p, out, clock


def _event(
    step: CallStep, action: str = "DescribeKey", key_id: str | None = "key-1", **facts: Any
) -> CallEvent:
    return CallEvent(step, action, key_id, **facts)


def test_work_done_within_two_seconds_prints_nothing() -> None:
    for terminal in (True, False):
        p, out, clock = _progress(terminal)
        for step in (CallStep.START, CallStep.DONE, CallStep.START):
            p.on_call(_event(step))
        clock.now += 1.9
        p.on_call(_event(CallStep.DONE))
        p.close()
        assert out.getvalue() == ""


def test_a_terminal_gets_one_line_rewritten_with_count_key_and_wait_then_cleared() -> None:
    p, out, clock = _progress(terminal=True)
    p.on_call(_event(CallStep.START))
    p.on_call(_event(CallStep.DONE))
    clock.now += 2.5
    p.on_call(_event(CallStep.THROTTLED, key_id="key-2", seconds=1.5, group="read", rate=2.0))
    assert out.getvalue() == (
        "\r"
        "refresh: 1 key(s) read, 1 call(s), 2 s · waiting 1.5 s: read rate limit 2/s (--qps read=N) · "
        "DescribeKey key-2\x1b[K"
    )
    clock.now += 1
    p.on_call(_event(CallStep.RETRY, key_id="key-2", seconds=0.4, reason="Rejected.Throttling", attempt=1))
    assert out.getvalue().endswith(
        "\rrefresh: 1 key(s) read, 1 call(s), 4 s · retrying after Rejected.Throttling (attempt 2 in 0.4 s)"
        " · DescribeKey key-2\x1b[K"
    )
    assert "\n" not in out.getvalue()  # one line, rewritten
    p.close()
    assert out.getvalue().endswith("\r\x1b[K")


def test_the_terminal_line_fits_the_terminal() -> None:
    clock = Clock()
    out = io.StringIO()
    p = Progress("refresh", out, terminal=True, clock=clock, ticker=False, width=40)
    clock.now += 3
    p.on_call(_event(CallStep.START, key_id="key-" + "x" * 80))
    line = out.getvalue().removeprefix("\r").removesuffix("\x1b[K")
    assert len(line) == 39 and line.endswith("…")


def test_elsewhere_one_line_per_key_read_and_each_retry_named() -> None:
    p, out, clock = _progress(terminal=False)
    p.on_call(_event(CallStep.START))
    p.on_call(_event(CallStep.DONE))  # within the delay: not shown
    clock.now += 3
    p.on_call(_event(CallStep.THROTTLED, key_id="key-2", seconds=0.5, group="read", rate=2.0))
    p.on_call(_event(CallStep.START, key_id="key-2"))
    p.on_call(_event(CallStep.RETRY, key_id="key-2", seconds=0.25, reason="connection refused", attempt=1))
    p.on_call(_event(CallStep.DONE, key_id="key-2", attempt=2))
    p.on_call(_event(CallStep.DONE, action="ListAliases", key_id=None))  # not a key
    p.close()
    assert out.getvalue().splitlines() == [
        "refresh: DescribeKey key-2: retrying after connection refused (attempt 2 in 0.2 s)",
        "refresh: 2 key(s) read, 3.0 s, last DescribeKey key-2; held back by the read rate limit 2/s "
        "(--qps read=N)",
    ]
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_apply_counts_keys_done_of_the_total_and_prints_each_key_line() -> None:
    p, out, clock = _progress(terminal=True, total=3)
    p.phase = "apply"
    p.key_done("a: created key-1, imported (key-1)")  # printed at once, whatever the delay
    clock.now += 3
    p.on_call(_event(CallStep.START, action="ImportKeyMaterial", key_id="key-2"))
    p.key_done("b: created key-2, imported (key-2)")
    text = out.getvalue()
    assert text.startswith("a: created key-1, imported (key-1)\n")
    assert "\r\x1b[Kb: created key-2, imported (key-2)\n" in text  # the status line is cleared first
    assert text.endswith("\rapply: 2/3 key(s) done, 1 call(s), 3 s · ImportKeyMaterial key-2\x1b[K")


def test_key_ids_and_reasons_are_escaped() -> None:
    p, out, clock = _progress(terminal=False)
    clock.now += 3
    p.on_call(_event(CallStep.RETRY, key_id="key-\x1b[2J\u202e", seconds=1, reason="bad\nreason", attempt=1))
    assert out.getvalue() == (
        "refresh: DescribeKey key-\\u001b[2J\\u202e: retrying after bad\\u000areason (attempt 2 in 1.0 s)\n"
    )


class _Flaky:
    """A transport that refuses each action's first attempt as throttled."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def call(self, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        if action not in self.seen:
            self.seen.add(action)
            raise KmsApiError(action, "Rejected.Throttling", "slow down", "rid", 429)
        return {}

    def close(self) -> None:
        pass


def test_the_transport_tells_attempts_waits_and_retries_and_no_parameter_but_the_key_id() -> None:
    transport = ResilientTransport(_Flaky(), qps={"write": 1.0}, sleep=lambda s: None, rng=lambda: 0.5)
    events: list[CallEvent] = []
    transport.observer = events.append
    secret = {"KeyId": "key-9", "EncryptedKeyMaterial": "TOP-SECRET-MATERIAL", "ImportToken": "TOKEN-XYZ"}
    transport.call("ImportKeyMaterial", secret)
    steps = [(e.step, e.action, e.key_id, e.attempt) for e in events]
    assert steps == [
        (CallStep.START, "ImportKeyMaterial", "key-9", 1),
        (CallStep.RETRY, "ImportKeyMaterial", "key-9", 1),
        (CallStep.THROTTLED, "ImportKeyMaterial", "key-9", 2),
        (CallStep.START, "ImportKeyMaterial", "key-9", 2),
        (CallStep.DONE, "ImportKeyMaterial", "key-9", 2),
    ]
    assert events[1].reason == "Rejected.Throttling" and events[1].seconds == pytest.approx(0.1)
    assert (events[2].group, events[2].rate) == ("write", 1.0)
    assert "TOP-SECRET" not in repr(events) and "TOKEN-XYZ" not in repr(events)


def test_plan_through_the_cli_prints_a_line_per_key_read_once_past_the_delay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    example_workdir(tmp_path, monkeypatch)
    code, _, err = run_main(["apply", "manifests", "--backend", "local", "--auto-approve"], capsys)
    assert code == 0, err
    code, _, err = run_main(["plan", "manifests", "--backend", "local"], capsys)
    assert (code, err) == (0, "using local backend (manifests/.provision/kms.db)\n")  # quick: no progress
    monkeypatch.setattr(progress_module, "DELAY", 0.0)
    code, out, err = run_main(["plan", "manifests", "--backend", "local"], capsys)
    assert code == 0
    lines = err.splitlines()
    assert lines[0] == "using local backend (manifests/.provision/kms.db)"
    assert [line.split(",")[0] for line in lines[1:]] == [
        "refresh: 1 key(s) read", "refresh: 2 key(s) read", "refresh: 3 key(s) read"
    ]
    assert all(", last DescribeKey key-" in line for line in lines[1:])
    assert out.endswith("No changes. The live keys match the manifests.\n")
