"""The validate views: one line that says what was checked, or the diagnostics as a JSON list.

In text the diagnostics are lines on standard error, printed as every command prints them; in JSON
they are the document on standard output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from provisioner.escape import visible
from provisioner.model import Diagnostics, ManifestSet
from provisioner.views import View
from provisioner.views.text import json_document


@dataclass(frozen=True)
class Validation:
    """What validate found: the manifests when they loaded (None when they did not), the
    diagnostics (warnings only when they loaded), and whether material was read and checked."""

    manifests: ManifestSet | None
    diagnostics: Diagnostics
    material_checked: bool


@runtime_checkable
class ValidateView(Protocol):
    #: Whether the diagnostics are this view's document; else they go to standard error as found,
    #: as every command prints them, and invalid manifests fail as in every command.
    lists_diagnostics: bool

    def document(self, validation: Validation) -> str:
        """What validate prints on standard output."""
        ...


class ValidateText(View):
    lists_diagnostics = False

    def document(self, validation: Validation) -> str:
        ms = validation.manifests
        if ms is None:
            return ""  # the diagnostics are on standard error
        files = f"{len(ms.files)} file{'s' if len(ms.files) != 1 else ''}"
        material = ", material checked" if validation.material_checked else ""
        return visible(f"valid: {len(ms.keys)} key(s) in {files}, stack {ms.stack}{material}") + "\n"


class ValidateJson(View):
    lists_diagnostics = True

    def document(self, validation: Validation) -> str:
        return json_document([d.to_dict() for d in validation.diagnostics], ascii_only=True)


if TYPE_CHECKING:
    _IMPLEMENTED: tuple[type[ValidateView], ...] = (ValidateText, ValidateJson)
