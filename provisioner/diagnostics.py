"""Problems found in the input, compiler style: where (Location), what (Diagnostic) and the collection
each checking stage fills and hands back (Diagnostics), in the order a reader wants them.

No I/O: the CLI prints them. A message may quote a manifest's value, so str() escapes it (escape.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

from provisioner.escape import visible


class Severity(StrEnum):
    """How bad a diagnostic is; the value is the word printed and serialised."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Location:
    """Where a value was written: file (as given on the command line), 1-based line and column."""

    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.column}"
        return self.file


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in the input, compiler style."""

    location: Location
    message: str
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        # A message may quote a manifest's value and a path may be anything: one line, no escapes.
        return f"{visible(str(self.location))}: {self.severity!s}: {visible(self.message)}"

    def to_dict(self) -> dict[str, object]:
        return {
            "file": self.location.file,
            "line": self.location.line,
            "column": self.location.column,
            "severity": str(self.severity),
            "message": self.message,
        }


class Diagnostics:
    """Every problem a stage found, in reading order: file by file, each file's by line, column, then
    message; diagnostics equal in all four keep the order they were added in.

    `files` is the order of the files a stage loaded (the command line's, each folder's sorted);
    diagnostics of any other file (a path that does not exist, the command line) come first, file by
    file in the order they first appear. With no `files`, every file ranks by first appearance.
    """

    __slots__ = ("_items", "_files", "_others", "_sorted")

    def __init__(self, diagnostics: Iterable[Diagnostic] = (), *, files: Sequence[str] = ()) -> None:
        self._items: list[Diagnostic] = []
        self._files = {file: i for i, file in enumerate(dict.fromkeys(files))}
        self._others: dict[str, int] = {}  # a file not in `files` -> its rank, by first appearance
        self._sorted = True
        self.extend(diagnostics)

    def add(self, diagnostic: Diagnostic) -> None:
        file = diagnostic.location.file
        if file not in self._files:
            self._others.setdefault(file, len(self._others))
        self._items.append(diagnostic)
        self._sorted = False

    def extend(self, diagnostics: Iterable[Diagnostic]) -> None:
        for d in diagnostics:
            self.add(d)

    def _order(self, d: Diagnostic) -> tuple[int, int, int, int, str]:
        file, line, column = d.location.file, d.location.line, d.location.column
        rank = self._files.get(file)
        group = (0, self._others[file]) if rank is None else (1, rank)
        return *group, line, column, d.message

    def _in_order(self) -> list[Diagnostic]:
        if not self._sorted:
            self._items.sort(key=self._order)  # stable: ties keep the order they were added in
            self._sorted = True
        return self._items

    @property
    def has_errors(self) -> bool:
        return any(d.severity == Severity.ERROR for d in self._items)

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self._in_order() if d.severity == Severity.ERROR)

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self._in_order() if d.severity == Severity.WARNING)

    def __iter__(self) -> Iterator[Diagnostic]:
        return iter(tuple(self._in_order()))

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Diagnostics):
            return NotImplemented
        return list(self) == list(other)

    def __repr__(self) -> str:
        return f"Diagnostics({list(self)!r})"
