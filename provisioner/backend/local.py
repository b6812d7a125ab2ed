"""Transport over the embedded KMS engine, in-process on a SQLite file: the `local` backend.

It speaks the same wire dicts as the SDK transport, through the emulator's own request parser, so
everything above the seam behaves the same on both backends. It adds no rule of its own.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from provisioner.errors import BackendError, KmsApiError
from provisioner.wire import ErrorCode


class LocalTransport:
    """Transport.call straight into `KmsResponses.handle`; KmsError becomes KmsApiError."""

    def __init__(
        self, db_path: Path, *, clock: Callable[[], datetime] | None = None, create: bool = True
    ) -> None:
        """`create=False` (plan, drift): a state file that does not exist is not created; the calls
        see an empty KMS in memory instead, and `missing` says so."""
        # Imported here so that the alibaba backend never loads the engine.
        from provisioner.emulator.models import KmsEngine, KmsError
        from provisioner.emulator.responses import KmsResponses, flatten_params

        self.db_path = db_path
        self._error_type: type[Exception] = KmsError
        self._flatten = flatten_params
        self.missing = not create and not db_path.exists() and not db_path.is_symlink()
        try:
            if self.missing:
                self._engine = KmsEngine(None, persist_private_keys=False, clock=clock)
            else:
                db_path.parent.mkdir(parents=True, exist_ok=True)
                # The local file holds no private material: the engine keeps only what KMS would show.
                self._engine = KmsEngine(str(db_path), persist_private_keys=False, clock=clock)
        except (OSError, sqlite3.Error, ValueError) as e:
            raise BackendError(f"local backend {db_path}: {_open_failure(db_path, e)}") from None
        self._responses = KmsResponses(self._engine)
        # One SQLite connection under concurrent refresh threads: serialise, it is in-process anyway.
        self._lock = threading.Lock()

    def call(self, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            try:
                body = self._responses.handle(action, self._flatten(params))
            except self._error_type as e:
                raise KmsApiError(
                    action,
                    str(getattr(e, "code", ErrorCode.INTERNAL_FAILURE)),
                    str(getattr(e, "message", "") or e),
                    "",
                    int(getattr(e, "status", 0) or 0),
                ) from e
            except sqlite3.Error as e:
                # A locked, full or damaged state file: SQLite's text names no parameter, only the cause.
                raise BackendError(f"{action}: local backend {self.db_path}: {e}") from None
        return dict(body)

    def close(self) -> None:
        close = getattr(self._engine, "close", None)
        if callable(close):
            close()


def _open_failure(db_path: Path, e: Exception) -> str:
    """Why the local state file cannot be used, in words, without SQLite's or the OS's internals."""
    if isinstance(e, FileExistsError):
        return f"{db_path.parent} exists and is not a folder"
    if isinstance(e, OSError):
        return f"cannot create its folder: {e.strerror or e}"
    if db_path.is_dir():
        return "is a folder, not a state file"
    if isinstance(e, sqlite3.OperationalError) and "unable to open" in str(e):
        return "cannot open or create it; check the path and its folder's permissions"
    if isinstance(e, ValueError):
        return "was written by another version of the provisioner or another program; move it aside"
    # "file is not a database", "no such column": some other file, or another program's database.
    return "is not a local backend state file; move it aside or fix backend.path"
