"""Which files a manifest set is, and the guarded read of each.

A symlink out of the tree, a FIFO, a device or an oversized file is refused naming nothing of
what it holds or where it leads. Reads text only; never renders or parses.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from provisioner.model import (
    Diagnostic,
    Diagnostics,
    Location,
)

MANIFEST_SUFFIXES = (".yaml", ".yml")


def manifest_files(paths: Sequence[Path], diags: Diagnostics) -> list[tuple[str, Path]]:
    """Expand files and folders (their *.yaml / *.yml, sorted, not recursive) to (display, path)."""
    return [(display, path) for display, path, _ in find_manifests(paths, diags)]


def find_manifests(paths: Sequence[Path], diags: Diagnostics) -> list[tuple[str, Path, str]]:
    """(display, path, path relative to the PATH it was found through) for each manifest file.

    A file must be regular and its real path must lie under the PATH (a folder's real path; for a
    file given directly, its folder's): a symlink out of the tree is refused, naming nothing of
    where it leads."""
    out: list[tuple[str, Path, str]] = []
    seen: set[Path] = set()

    def add(display: str, path: Path, tree: Path) -> None:
        try:
            real = path.resolve(strict=True)
            info = real.stat()
        except (OSError, RuntimeError):
            diags.add(Diagnostic(Location(display), "a symbolic link that leads nowhere (or in a loop)"))
            return
        if path.is_symlink() and not real.is_relative_to(tree):
            diags.add(
                Diagnostic(Location(display), "a symbolic link out of the manifest folder: refused")
            )
            return
        if not stat.S_ISREG(info.st_mode):
            diags.add(Diagnostic(Location(display), "not a regular file"))
            return
        if real not in seen:
            seen.add(real)
            out.append((display, path, path.name))

    for given in paths:
        display = str(given)
        if given.is_dir():
            tree = given.resolve()
            found = sorted(p for p in given.iterdir() if p.suffix in MANIFEST_SUFFIXES and not p.is_dir())
            if not found:
                diags.add(Diagnostic(Location(display), "folder has no manifest files (*.yaml, *.yml)"))
            for p in found:
                add(os.path.join(display, p.name), p, tree)
        elif given.is_symlink() or given.is_file():
            add(display, given, given.parent.resolve())
        elif given.exists():
            diags.add(Diagnostic(Location(display), "not a regular file or folder"))
        else:
            diags.add(Diagnostic(Location(display), "no such file or folder"))
    return out


#: A manifest file larger than this is refused unread (a 5,000-key set is about 2 MiB in all).
MAX_MANIFEST_BYTES = 8 << 20


class Unreadable(Exception):
    """A file that cannot be read as text; the message says why, never what it holds."""


def _read_bytes(path: Path, limit: int) -> bytes:
    """A regular file's bytes, at most `limit`: never blocks on a FIFO, never reads a device."""
    try:
        # O_NONBLOCK: opening a FIFO returns at once (and fstat then refuses it).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise Unreadable("no such file") from None
    except PermissionError:
        raise Unreadable("permission denied") from None
    except OSError as e:
        raise Unreadable(e.strerror or "cannot open it") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Unreadable("not a regular file")
        if info.st_size > limit:
            raise Unreadable(f"{info.st_size:,} bytes is more than the {limit:,} allowed")
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise Unreadable(f"more than the {limit:,} bytes allowed")
        return b"".join(chunks)
    except OSError as e:
        raise Unreadable(e.strerror or "cannot read it") from None
    finally:
        os.close(fd)


def read_text(path: Path, limit: int = MAX_MANIFEST_BYTES) -> str:
    data = _read_bytes(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise Unreadable("not UTF-8 text") from None

