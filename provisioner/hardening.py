"""Process hardening for the time the process holds private material: no core dumps.

A core dump of a running apply would hold the PEM, the passphrase and the credentials. Called
before the first material read; it only ever narrows what the process may do, and is a no-op
where the platform lacks a switch.
"""

from __future__ import annotations

import sys

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3

_done = False


def disable_core_dumps() -> None:
    """RLIMIT_CORE to (0, 0) and, on Linux, PR_SET_DUMPABLE 0 (no core, no ptrace by other
    processes of the same user, /proc/PID/mem closed). Idempotent; never raises."""
    global _done
    if _done:
        return
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, OSError, ValueError):
        pass  # no resource module (Windows), or a platform that refuses: nothing more to do
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    _done = True
