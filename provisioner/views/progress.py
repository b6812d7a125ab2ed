"""Progress of long work on standard error: one status line rewritten in place on a terminal, one line
per finished key otherwise; nothing at all for work done within `delay` (2 s).

It formats what the transport (backend/resilience.CallEvent) and apply tell it; it decides nothing.
It never sees a call's parameters but the key id, and every name it prints passes through `shown`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from provisioner.backend.resilience import CallEvent, CallStep
from provisioner.views.text import shown

#: Work that ends within this many seconds prints no progress.
DELAY = 2.0
#: The terminal line is redrawn at most this often (seconds), and at least this often while waiting.
TICK = 0.25
#: A terminal line's width when the terminal does not say (a longer line would wrap and not be redrawn).
WIDTH = 80
#: The calls that finish one key of a refresh (one DescribeKey a key).
_KEY_READ = "DescribeKey"


class Stream(Protocol):
    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


class Progress:
    """The progress of one phase (`refresh`, `apply`, `discover`) of a command.

    `terminal`: standard error is a terminal, so one line is rewritten in place (and cleared by
    `close`); else one line per finished key. `total`: the number of keys, when known (apply)."""

    def __init__(
        self,
        phase: str,
        stream: Stream,
        *,
        terminal: bool,
        total: int | None = None,
        delay: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        ticker: bool = True,
        width: int = WIDTH,
    ) -> None:
        self.phase = phase
        self.stream = stream
        self.terminal = terminal
        self.total = total
        self.delay = DELAY if delay is None else delay
        self.width = max(width, 20)
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self.calls = 0
        self.keys_done = 0
        self.current = ""  # the call under way: "DescribeKey key-..." or an apply key's name
        self.waiting = ""  # why the current call waits: a rate limit or a retry
        self.limit = ""  # the rate limit that held a call back, if one did
        self.retries = 0
        self._shown = False  # a terminal line is on screen
        self._last_draw = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if terminal and ticker:
            # Redraws while nothing happens (one slow answer), so the elapsed time keeps moving.
            self._thread = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._thread.start()

    # --------------------------------------------------------------------------- what it is told

    def on_call(self, event: CallEvent) -> None:
        """A transport event (ResilientTransport.observer)."""
        with self._lock:
            what = f"{event.action} {shown(event.key_id)}" if event.key_id else event.action
            if event.step is CallStep.START:
                self.calls += 1
                self.current, self.waiting = what, ""
            elif event.step is CallStep.THROTTLED:
                self.limit = f"{event.group} rate limit {event.rate:g}/s (--qps {event.group}=N)"
                self.current = what
                self.waiting = f"waiting {event.seconds:.1f} s: {self.limit}"
            elif event.step is CallStep.RETRY:
                self.retries += 1
                self.current = what
                nth, after = event.attempt + 1, f"{event.seconds:.1f} s"
                self.waiting = f"retrying after {shown(event.reason)} (attempt {nth} in {after})"
                if not self.terminal and self._due():
                    self._line(f"{self.phase}: {what}: {self.waiting}")
            elif event.step is CallStep.DONE:
                self.waiting = ""
                if event.action == _KEY_READ and self.total is None:
                    self.keys_done += 1
                    if not self.terminal and self._due():
                        self._line(self._key_line(what))
            self._draw()

    def key_done(self, line: str) -> None:
        """A key of an apply finished; `line` (escaped) says how. Printed in every mode."""
        with self._lock:
            self.keys_done += 1
            self._clear()
            self._line(line)
            self._draw(force=True)

    def close(self) -> None:
        """The phase is over: stop redrawing and leave the terminal line empty."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
        with self._lock:
            self._clear()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --------------------------------------------------------------------------- how it shows it

    def status(self) -> str:
        """The terminal line: phase, count, elapsed time, the current call and why it waits."""
        elapsed = self._clock() - self._started
        if self.total is not None:
            count = f"{self.keys_done}/{self.total} key(s) done"
        else:
            count = f"{self.keys_done} key(s) read"
        parts = [f"{self.phase}: {count}, {self.calls} call(s), {elapsed:.0f} s"]
        if self.retries and "retrying" not in self.waiting:
            parts.append(f"{self.retries} retried")
        if self.waiting:
            parts.append(self.waiting)
        if self.current:
            parts.append(self.current)  # last: the longest part, and the first to be cut
        line = " · ".join(parts)
        room = self.width - 1  # the last column would wrap on some terminals
        return line if len(line) <= room else line[: room - 1] + "…"

    def _key_line(self, what: str) -> str:
        elapsed = self._clock() - self._started
        line = f"{self.phase}: {self.keys_done} key(s) read, {elapsed:.1f} s, last {what}"
        if self.limit:
            line += f"; held back by the {self.limit}"
        return line

    def _due(self) -> bool:
        return self._clock() - self._started >= self.delay

    def _draw(self, *, force: bool = False) -> None:
        if not self.terminal or not self._due():
            return
        now = self._clock()
        if not force and self._shown and now - self._last_draw < TICK:
            return
        self._last_draw = now
        self._write("\r" + self.status() + "\x1b[K")
        self._shown = True

    def _clear(self) -> None:
        if self._shown:
            self._write("\r\x1b[K")
            self._shown = False

    def _line(self, text: str) -> None:
        self._write(text + "\n")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # progress is a courtesy: a closed or full standard error must not end the work

    def _tick(self) -> None:
        while not self._stop.wait(TICK):
            with self._lock:
                self._draw()
