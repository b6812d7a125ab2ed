"""The emulator as the benchmarks run it: `provision emulator serve` in its own process (so it shares
no GIL with the client being measured), and its call counts from `/_emulator/stats`."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@contextmanager
def emulator_process(*serve_args: str, start_timeout: float = 60) -> Iterator[str]:
    """Start `provision emulator serve SERVE_ARGS...`; yield its URL (`http://host:port`)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", "from provisioner.cli import main; main()", "emulator", "serve", *serve_args],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=path),
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], start_timeout)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("listening on http://"):
            raise SystemExit(f"emulator did not start: {line!r}")
        yield line.removeprefix("listening on ").strip()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def emulator_calls(url: str) -> Counter[str]:
    """Requests the emulator has received, per Action (refused ones included)."""
    with urllib.request.urlopen(f"{url}/_emulator/stats", timeout=10) as response:  # noqa: S310
        return Counter(json.load(response)["calls"])
