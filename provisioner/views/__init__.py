"""One view per command and output format: the only code that formats what a command prints.

A command's module here (validate, plan, apply, drift, show, discover) holds the Protocol its views
implement (PlanView, ...) and one View subclass per format (PlanText, PlanJson, PlanMarkdown). A view
turns a finished value (a Plan, a DriftReport, an ApplyResult) into the text the CLI prints; it
decides nothing, prints nothing and reads nothing. The CLI picks a view by (command, --format) from
REGISTRY, and the command's `--format` choices are that command's rows, the first one the default.

To add a format to a command: write the view class next to its siblings, add its row to REGISTRY.
To add a command (schema, say): a module here with the command's Protocol and one view per format;
a `Command` handle below, typed with that Protocol; its rows in REGISTRY. In cli.py:
`@_format_option(views.SCHEMA)` and `views.SCHEMA.view(fmt, color=...)`. tests/test_views.py
checks every row against its handle's Protocol and the command's --format choices.

This module imports no view: cli.py reads it at start-up for the `--format` choices, and a view's
module (with the plan, drift and JSON code it needs) is imported only when a command runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final, Generic, TypeVar, cast

if TYPE_CHECKING:
    from provisioner.views.apply import ApplyView
    from provisioner.views.discover import DiscoverView
    from provisioner.views.drift import DriftView
    from provisioner.views.plan import PlanView
    from provisioner.views.show import ShowView
    from provisioner.views.validate import ValidateView

#: (command, --format) -> "module:Class" in this package. A command's first row is its default format.
REGISTRY: Final[dict[tuple[str, str], str]] = {
    ("validate", "text"): "validate:ValidateText",
    ("validate", "json"): "validate:ValidateJson",
    ("plan", "text"): "plan:PlanText",
    ("plan", "json"): "plan:PlanJson",
    ("plan", "markdown"): "plan:PlanMarkdown",
    ("apply", "text"): "apply:ApplyText",
    ("apply", "json"): "apply:ApplyJson",
    ("drift", "text"): "drift:DriftText",
    ("drift", "json"): "drift:DriftJson",
    ("drift", "markdown"): "drift:DriftMarkdown",
    ("show", "text"): "show:ShowText",
    ("show", "json"): "show:ShowJson",
    ("discover", "yaml"): "discover:DiscoverYaml",
}


class View:
    """What the CLI gives every view: whether its text may be coloured (--no-color, NO_COLOR, a
    terminal). Views that write a document (JSON, markdown) never colour it."""

    def __init__(self, *, color: bool = False) -> None:
        self.color = color


V = TypeVar("V")


class Command(Generic[V]):
    """A command's handle on its views: its formats, and the view of one, typed as the command's
    Protocol `V` (a test proves each registered class implements it)."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(fmt for command, fmt in REGISTRY if command == self.name)

    def view(self, fmt: str, *, color: bool = False) -> V:
        module, _, name = REGISTRY[(self.name, fmt)].partition(":")
        view_class = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        return cast(V, view_class(color=color))


VALIDATE: Final[Command[ValidateView]] = Command("validate")
PLAN: Final[Command[PlanView]] = Command("plan")
APPLY: Final[Command[ApplyView]] = Command("apply")
DRIFT: Final[Command[DriftView]] = Command("drift")
SHOW: Final[Command[ShowView]] = Command("show")
DISCOVER: Final[Command[DiscoverView]] = Command("discover")
