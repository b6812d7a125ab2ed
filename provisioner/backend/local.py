"""Transport over the embedded KMS engine, in-process on a SQLite file: the `local` backend.

It speaks the same wire dicts as the SDK transport, through the emulator's own request parser, so
everything above the seam behaves the same on both backends. It adds no rule of its own.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from provisioner.emulator.store import NotAStateFile
from provisioner.errors import BackendError, KmsApiError
from provisioner.files import not_regular_reason
from provisioner.wire import ErrorCode


class LocalTransport:
    """Transport.call straight into `KmsResponses.handle`; KmsError becomes KmsApiError."""

    def __init__(
        self, db_path: Path, *, clock: Callable[[], datetime] | None = None, create: bool = True
    ) -> None:
        """`create=False` (plan, drift): nothing is written. A state file that does not exist is not
        created: the calls see an empty KMS in memory, and `missing` says so. One that exists is
        read into memory without a write to it or its folder (a read-only one works)."""
        # Imported here so that the alibaba backend never loads the engine.
        from provisioner.emulator.models import KmsEngine, KmsError
        from provisioner.emulator.responses import KmsResponses, flatten_params

        self.db_path = db_path
        self._error_type: type[Exception] = KmsError
        self._flatten = flatten_params
        try:
            _refuse_special(db_path)
            # Inside the try: a folder this user may not enter makes even exists() raise.
            self.missing = not create and not db_path.exists() and not db_path.is_symlink()
            if self.missing:
                _refuse_impossible(db_path)
                self._engine = KmsEngine(None, persist_private_keys=False, clock=clock)
            else:
                if create:
                    # Owner only, as the file itself (created 0600 by the store): the folder lists key state.
                    db_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                    _refuse_unwritable(db_path)
                # The local file holds no private material: the engine keeps only what KMS would show.
                self._engine = KmsEngine(
                    str(db_path), persist_private_keys=False, clock=clock, read_only=not create
                )
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


#: Check access with the effective ids: the ones the reads and writes are made with.
_EFFECTIVE = os.access in os.supports_effective_ids


class _Unwritable(PermissionError):
    """The state file, or the folder it must be written in, is read-only to this user."""


class _NotAFolder(FileExistsError):
    """A path on the way to the state file exists and is not a folder: no state file can be made."""

    def __init__(self, folder: Path) -> None:
        super().__init__(str(folder))
        self.folder = folder


class _Special(OSError):
    """The state file is a symbolic link, a FIFO, a device or a socket (DESIGN section 9)."""


def _refuse_special(db_path: Path) -> None:
    """The state file must be a regular file (or not exist yet): never followed through a link, never
    a FIFO that would hang SQLite or a device it would write into."""
    try:
        info = os.lstat(db_path)
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISLNK(info.st_mode):
        raise _Special("is a symbolic link; the state file must be a regular file (nothing read or written)")
    if not stat.S_ISREG(info.st_mode) and not stat.S_ISDIR(info.st_mode):
        raise _Special(f"{not_regular_reason(info.st_mode)} (nothing read or written)")


def _refuse_impossible(db_path: Path) -> None:
    """A missing state file reads as an empty KMS only where one could be created later."""
    for folder in db_path.parents:
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                raise _NotAFolder(folder)
            return


def _refuse_unwritable(db_path: Path) -> None:
    """Say "permission denied" up front: SQLite would open a read-only file read-only and fail at
    the first write with words that read like a damaged file. SQLite also writes beside the file."""
    if db_path.exists() and not os.access(db_path, os.W_OK, effective_ids=_EFFECTIVE):
        raise _Unwritable("the state file is read-only")
    if not os.access(db_path.parent, os.W_OK | os.X_OK, effective_ids=_EFFECTIVE):
        raise _Unwritable(f"its folder {db_path.parent} is read-only")


def _open_failure(db_path: Path, e: Exception) -> str:
    """Why the local state file cannot be used, in words, without SQLite's or the OS's internals."""
    if isinstance(e, _Special):
        return str(e)
    if isinstance(e, _NotAFolder):
        return f"{e.folder} exists and is not a folder"
    if isinstance(e, FileExistsError):
        return f"{db_path.parent} exists and is not a folder"
    if isinstance(e, _Unwritable):
        return f"permission denied: {e}; plan and drift can read it"
    if isinstance(e, PermissionError):
        return "permission denied: this user cannot enter its folder or read it"
    if isinstance(e, OSError):
        return f"cannot create its folder: {e.strerror or e}"
    if db_path.is_dir():
        return "is a folder, not a state file"
    if isinstance(e, sqlite3.OperationalError) and "readonly" in str(e):
        return "permission denied: the state file or its folder is read-only; plan and drift can read it"
    if isinstance(e, sqlite3.OperationalError) and "unable to open" in str(e):
        if db_path.exists() and not os.access(db_path, os.R_OK, effective_ids=_EFFECTIVE):
            return "permission denied: cannot read the state file"
        return "cannot open or create it; check the path and its folder's permissions"
    if isinstance(e, NotAStateFile):
        # Another program's database: refused before a table was added to it.
        return "is not a local backend state file; move it aside or fix backend.path"
    if isinstance(e, ValueError):
        return "was written by another version of the provisioner or another program; move it aside"
    # "file is not a database", "no such column": some other file, or another program's database.
    return "is not a local backend state file; move it aside or fix backend.path"
