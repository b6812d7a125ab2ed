"""The one guarded reader of files named on the command line or in a manifest.

A path may name a FIFO, a device such as /dev/zero, or a folder: reading one would hang or never
end. `read_regular_file` opens without blocking, insists on a regular file and reads it by its
size, with a cap. It never puts the file's content into a message.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from provisioner.errors import ProvisionerError

#: Template variable files and saved plans are text a person can review: more is a wrong path.
MAX_TEXT_FILE_BYTES = 16 << 20


class InputFileError(ProvisionerError):
    """An input file that is missing, unreadable, not a regular file, or too large.

    `what` names where the path came from (a flag such as `--var-file`, or a material source);
    `reason` is the problem alone, for callers that locate it themselves.
    """

    def __init__(self, what: str, path: Path | str, reason: str) -> None:
        self.what = what
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{what} {path}: {reason}")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def not_regular_reason(mode: int) -> str:
    """Why a file of this mode is refused as input, e.g. "is a FIFO (named pipe), not a regular file"."""
    kind = _kind(mode)
    return kind if kind == "not a regular file" else f"is {kind}, not a regular file"


def read_regular_file(path: Path | str, what: str, limit: int) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them; InputFileError otherwise.

    O_NONBLOCK makes opening a FIFO return at once; fstat on the opened descriptor (not the path)
    decides, so a file swapped after a check cannot slip through. The file is read by its size:
    a file that reports no size (e.g. under /proc) reads as empty rather than without end.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise InputFileError(what, path, "no such file") from None
    except PermissionError:
        raise InputFileError(what, path, "permission denied") from None
    except OSError as e:
        if e.errno == errno.ENXIO:  # a socket, or a FIFO on some systems
            raise InputFileError(what, path, "not a regular file") from None
        raise InputFileError(what, path, f"cannot read: {e.strerror or e}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputFileError(what, path, not_regular_reason(info.st_mode))
        if info.st_size > limit:
            raise InputFileError(what, path, f"{info.st_size} bytes is too large (at most {limit})")
        chunks: list[bytes] = []
        remaining = info.st_size
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    except OSError as e:
        if e.errno == errno.EISDIR:
            raise InputFileError(what, path, "is a folder, not a regular file") from None
        raise InputFileError(what, path, f"cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)


def read_regular_text(path: Path | str, what: str, limit: int = MAX_TEXT_FILE_BYTES) -> str:
    """`read_regular_file`, decoded as UTF-8; InputFileError when it is not UTF-8 text."""
    data = read_regular_file(path, what, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputFileError(what, path, "is not UTF-8 text") from None


def refuse_special_target(path: Path | str, what: str) -> None:
    """An output path may be absent or a regular file; a symlink, FIFO, device or folder is refused
    (InputFileError), so `--out` never writes through a link or into a pipe or device."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise InputFileError(what, path, f"cannot write: {e.strerror or e}") from None
    if stat.S_ISLNK(info.st_mode):
        raise InputFileError(what, path, "is a symbolic link; refusing to replace it (nothing written)")
    if not stat.S_ISREG(info.st_mode):
        reason = not_regular_reason(info.st_mode)
        raise InputFileError(what, path, f"{reason}; refusing to replace it (nothing written)")
