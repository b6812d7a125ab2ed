"""The render deadline (provisioner.sandbox.run_with_deadline) against the places where Python drops
an exception (a __del__, a gc callback: reported as "unraisable" and the code runs on), and against a
stray exception after the call: the watchdog posts again until the thread has left, and never after.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from provisioner import sandbox

LIMIT = 0.2
#: How long a loop the deadline failed to end runs before the test gives up on it.
GIVE_UP = 3.0


@pytest.fixture(autouse=True)
def quick_reposts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "REPOST_SECONDS", 0.01)


@pytest.fixture
def reported(monkeypatch: pytest.MonkeyPatch) -> list[sys.UnraisableHookArgs]:
    """What reaches the unraisable hook in place before the render (pytest's, which fails a test)."""
    seen: list[sys.UnraisableHookArgs] = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    return seen


@pytest.fixture
def watchdogs(monkeypatch: pytest.MonkeyPatch) -> list[sandbox._Watchdog]:
    made: list[sandbox._Watchdog] = []

    class Recorded(sandbox._Watchdog):
        def __init__(self, seconds: float) -> None:
            super().__init__(seconds)
            made.append(self)

    monkeypatch.setattr(sandbox, "_Watchdog", Recorded)
    return made


def spin(until: float) -> None:
    while time.monotonic() < until:
        pass


class _SpinsInDel:
    """Its __del__ spins until an exception lands in it, which Python drops."""

    entered = False

    def __del__(self) -> None:
        _SpinsInDel.entered = True
        spin(time.monotonic() + GIVE_UP)


def _in_del() -> Iterator[None]:
    _SpinsInDel()  # collected at once: the first post lands in its __del__
    yield


def _in_gc_callback() -> Iterator[None]:
    calls: list[str] = []

    def callback(phase: str, _info: dict[str, int]) -> None:
        calls.append(phase)
        if len(calls) == 1:
            spin(time.monotonic() + GIVE_UP)  # the first post lands here

    gc.callbacks.append(callback)
    try:
        gc.collect()
        assert calls, "the gc callback did not run"
        yield
    finally:
        gc.callbacks.remove(callback)


@pytest.mark.parametrize("dropping", [_in_del, _in_gc_callback], ids=["__del__", "gc callback"])
def test_a_deadline_python_drops_once_is_posted_again(
    dropping: Callable[[], Iterator[None]], reported: list[sys.UnraisableHookArgs],
) -> None:
    ran_on: list[float] = []

    def work() -> str:
        for _ in dropping():
            ran_on.append(time.monotonic())  # the first exception was dropped: the loop runs on
            spin(time.monotonic() + GIVE_UP)
        return "the loop ran on"

    start = time.monotonic()
    with pytest.raises(sandbox.TemplateTimeout) as exc:
        sandbox.run_with_deadline(work, LIMIT)
    elapsed = time.monotonic() - start
    assert str(exc.value) == f"rendering took longer than {LIMIT:g} seconds"
    assert ran_on and ran_on[0] - start >= LIMIT, "the first exception was not dropped"
    assert elapsed < LIMIT + 1.0, elapsed
    # The dropped one is the deadline's own, posted again: not reported (pytest would fail on it).
    assert reported == []
    assert sys.unraisablehook == reported.append


def _eat_posts(seconds: float) -> Callable[[], int]:
    """Work that eats every post for `seconds` (posts are flowing when it returns), then returns how
    many it ate."""

    def work() -> int:
        eaten = 0
        end = time.monotonic() + seconds
        while True:
            try:
                spin(end)
                return eaten
            except sandbox._Deadline:
                eaten += 1

    return work


def test_nothing_is_posted_after_the_call(watchdogs: list[sandbox._Watchdog]) -> None:
    limit = 0.05
    for run in range(3):
        try:
            eaten = sandbox.run_with_deadline(_eat_posts(limit + 0.1 + run * 0.007), limit)
            assert eaten >= 2, "the deadline was not posted again"
        except sandbox.TemplateTimeout:
            pass  # a post landed between two statements of work(): the deadline did its job
        stray = 0
        end = time.monotonic() + 0.1  # ten re-post intervals
        while time.monotonic() < end:
            try:
                spin(end)
            except sandbox._Deadline:
                stray += 1
        assert stray == 0
        assert not watchdogs[-1].post(), "the watchdog would still post into this thread"
    assert len(watchdogs) == 3
    _no_watchdog_thread()


def test_a_quick_render_leaves_no_watchdog(watchdogs: list[sandbox._Watchdog]) -> None:
    start = time.monotonic()
    assert sandbox.run_with_deadline(lambda: "rendered", 30) == "rendered"
    assert not watchdogs[0].post()
    _no_watchdog_thread()
    assert time.monotonic() - start < 2


def _no_watchdog_thread() -> None:
    for thread in threading.enumerate():
        if thread.name == "render deadline":
            thread.join(timeout=1)
            assert not thread.is_alive(), "a watchdog thread outlived its render"
