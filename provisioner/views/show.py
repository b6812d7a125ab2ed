"""The show views: each managed key as a block of `attribute = value` lines, or the JSON show
document. They format a ShowReport; they decide nothing and print nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from provisioner.show import ShowReport
from provisioner.views import View
from provisioner.views.text import (
    backend_words,
    endpoint_lines,
    failed_target_lines,
    json_document,
    quoted,
    shown,
    where_lines,
)


@runtime_checkable
class ShowView(Protocol):
    def show(self, report: ShowReport) -> str:
        """The show document."""
        ...


class ShowText(View):
    def show(self, report: ShowReport) -> str:
        return render_show_text(report)


class ShowJson(View):
    def show(self, report: ShowReport) -> str:
        return render_show_json(report)


if TYPE_CHECKING:
    _IMPLEMENTED: tuple[type[ShowView], ...] = (ShowText, ShowJson)


def render_show_text(report: ShowReport) -> str:
    """Each managed key as a block of `attribute = value` lines, values as a manifest writes them."""
    if report.backends:
        out = [f"Stack {shown(repr(report.stack))}, {len(report.backends)} targets"]
        out += where_lines(report.backend, report.backends) + failed_target_lines(report.target_errors)
    else:
        out = [f"Stack {shown(repr(report.stack))}, backend {backend_words(report.backend)}"]
        out += endpoint_lines(report.backend)
    if report.targets:
        out.append(f"Targeted: only {', '.join(shown(t) for t in report.targets)} (--target)")
    out.append("")
    rotated = {(g.target, g.name): g for g in report.generations}
    for key in report.keys:
        fields = key.to_dict()
        gens = rotated.get((key.target, key.name))
        which = next((g.generation for g in gens.generations if g.key_id == key.key_id), 0) if gens else 0
        current = gens is not None and which == gens.generations[0].generation
        generation = f", generation {which} ({'current' if current else 'previous'})" if gens else ""
        out.append(f"  {shown(key.name)} ({shown(key.key_id)}): {shown(key.state)}{generation}")
        for attr in ("arn", "spec", "usage", "aliases", "fingerprint", "material_expiry", "target"):
            value = fields[attr]
            if attr == "material_expiry" and value is None:
                value = "no material" if key.state == "PendingImport" else "never"
            out.append(f"      {attr} = {quoted(value)}")
        out.append("")
    for name in report.missing:
        out.append(f"  # {shown(name)}: declared, but no key of this stack carries the name (see plan)")
    if report.missing:
        out.append("")
    out.append(f"{len(report.keys)} managed key(s).")
    return "\n".join(out) + "\n"


def render_show_json(report: ShowReport) -> str:
    """The show document, escaped as the plan document is."""
    return json_document(report.to_dict())
