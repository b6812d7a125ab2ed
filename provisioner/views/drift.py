"""The drift views: text for a terminal, the JSON drift document (DESIGN section 6), markdown for a
pull request or an issue. They format a DriftReport; they decide nothing and print nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from provisioner.drift import DriftItem, DriftReport
from provisioner.views import View
from provisioner.views.markdown import md_code, md_endpoint_lines, md_text
from provisioner.views.text import (
    BOLD,
    DIM,
    RED,
    YELLOW,
    failed_target_lines,
    generation_lines,
    json_document,
    painter,
    quoted,
    shown,
    where_lines,
)


@runtime_checkable
class DriftView(Protocol):
    def report(self, report: DriftReport) -> str:
        """The drift document."""
        ...


class DriftText(View):
    def report(self, report: DriftReport) -> str:
        return render_drift_text(report, color=self.color)


class DriftJson(View):
    def report(self, report: DriftReport) -> str:
        return render_drift_json(report)


class DriftMarkdown(View):
    def report(self, report: DriftReport) -> str:
        return render_drift_markdown(report)


if TYPE_CHECKING:
    _IMPLEMENTED: tuple[type[DriftView], ...] = (DriftText, DriftJson, DriftMarkdown)


def _found_words(item: DriftItem) -> str:
    return f"expected {quoted(item.expected)}, found {quoted(item.found)}"


def render_drift_text(report: DriftReport, *, color: bool) -> str:
    paint = painter(color)
    stack = shown(repr(report.stack))
    notes = [paint(f"note: {shown(key)}: {shown(message)}", DIM) for key, message in report.notes]
    where = where_lines(report.backend, report.backends)
    gens = generation_lines(report.generations, bool(report.backends))
    if report.in_sync:
        head = [f"Stack {stack}: in sync, no drift.", *where, *notes, *gens]
        return "\n".join(head) + "\n"
    found = "drift found" if report.items else "no drift in the targets read"
    failed = [paint(line, RED) for line in failed_target_lines(report.target_errors)]
    out = [f"Stack {stack}: {found}", *where, *failed, *notes, ""]
    for item in report.items:
        key = f"{item.target}/{item.key}" if report.backends else item.key
        out.append(
            f"  {paint('!', YELLOW)} {paint(shown(key), BOLD)}: "
            f"{paint(item.kind.value, YELLOW)}: {shown(item.detail)}"
        )
        out.append(paint(f"      {shown(_found_words(item))}", DIM))
    out.append("")
    counts = ", ".join(f"{n} {kind}" for kind, n in report.counts.items())
    out += [*gens, *([""] if gens else [])]
    out.append(f"Drift: {len(report.items)} item(s) ({counts})." if report.items else "Drift: none found.")
    if report.target_errors:
        names = ", ".join(report.target_errors)
        out.append(paint(f"{len(report.target_errors)} target(s) could not be read: {names}", RED))
    return "\n".join(out) + "\n"


def render_drift_json(report: DriftReport) -> str:
    """The drift document, escaped as the plan document is."""
    return json_document(report.to_dict())


def render_drift_markdown(report: DriftReport) -> str:
    out = [f"## Drift for stack {md_code(report.stack)}", "", *md_endpoint_lines(report.backend)]
    for b in report.backends:
        out.append(f"- Target {md_code(b.get('name', '?'))}: {md_code(b.get('endpoint', ''))}")
    out += [""] if report.backends else []
    checked_at = report.to_dict()["checked_at"]
    notes = [f"- Note: {md_code(key)}: {md_text(message)}" for key, message in report.notes]
    if report.in_sync:
        out += [f"In sync at {checked_at}: no drift.", "", *notes, *([""] if notes else [])]
        return "\n".join(out)
    out += [f"**{len(report.items)} item(s) of drift** found at {checked_at}.", ""]
    out += ["| kind | count |", "|---|---|"]
    out += [f"| `{kind}` | {n} |" for kind, n in report.counts.items()]
    out += [f"- Target {md_code(n)} could not be read: {md_text(e)}" for n, e in report.target_errors.items()]
    out += ["", "| key | kind | detail | expected | found |", "|---|---|---|---|---|"]
    for item in report.items:
        key = f"{item.target}/{item.key}" if report.backends else item.key
        out.append(
            f"| {md_code(key, cell=True)} | `{item.kind.value}` | {md_text(item.detail)} | "
            f"{md_text(quoted(item.expected))} | {md_text(quoted(item.found))} |"
        )
    out += [*notes, ""] if notes else []
    out.append("")
    return "\n".join(out)
