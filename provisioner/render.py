"""Plan and drift documents as text (Terraform-like), JSON (DESIGN sections 5 and 6) and markdown.

Rendering only formats what a Plan or DriftReport holds: it decides nothing and prints nothing.
A Plan holds no private material, so no rendering can show any.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from provisioner.drift import DriftItem, DriftReport
from provisioner.escape import json_safe, visible
from provisioner.model import format_time
from provisioner.plan.planfile import plan_to_dict
from provisioner.plan.values import Action, Change, MaterialReference, Plan
from provisioner.show import ShowReport

# ANSI SGR codes; used only when the caller asks for colour.
_GREEN, _YELLOW, _RED, _CYAN, _BOLD, _DIM = "32", "33", "31", "36", "1", "2"

#: One symbol per change, the strongest action winning.
_SYMBOLS: tuple[tuple[Action, str, str], ...] = (
    (Action.SCHEDULE_DELETION, "-", _RED),
    (Action.CREATE, "+", _GREEN),
    (Action.DELETE_MATERIAL, "x", _RED),
    (Action.REIMPORT, "↻", _CYAN),
    (Action.UPDATE, "~", _YELLOW),
)
_LEGEND = "+ create   ~ update   ↻ reimport   x delete material   - schedule deletion   ! violation"

_SUMMARY_WORDS = (
    (Action.CREATE, "to create"),
    (Action.IMPORT, "to import"),
    (Action.REIMPORT, "to reimport"),
    (Action.DELETE_MATERIAL, "to delete material"),
    (Action.UPDATE, "to update"),
    (Action.SCHEDULE_DELETION, "to schedule for deletion"),
)


def _painter(color: bool) -> Callable[[str, str], str]:
    def paint(text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if color else text

    return paint


def _symbol(change: Change) -> tuple[str, str]:
    for action, sym, code in _SYMBOLS:
        if action in change.actions:
            return sym, code
    return "-", _RED  # a change with duplicates only: they are scheduled for deletion


def _visible(text: Any) -> str:
    """`text` with control, format and invisible characters (escapes, bidi overrides, zero-width,
    newlines) written as \\uXXXX: a value must not drive, reorder or hide what a reviewer reads."""
    return visible(str(text))


def _q(value: Any) -> str:
    """A value as the user would write it in a manifest."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return _visible(json.dumps(value, ensure_ascii=False))


def _backend_words(backend: Mapping[str, str]) -> str:
    kind = _visible(backend.get("type", "?"))
    shown = sorted((k, v) for k, v in backend.items() if k not in ("type", "endpoint"))
    rest = ", ".join(f"{_visible(k)} {_visible(v)}" for k, v in shown)
    return f"{kind} ({rest})" if rest else kind


def _endpoint_lines(backend: Mapping[str, str]) -> list[str]:
    """The header line that says where a document was read from, so a reviewer sees whose answers
    it shows (DESIGN section 9); none when the document does not know."""
    endpoint = backend.get("endpoint")
    return [f"Endpoint: {_visible(endpoint)}"] if endpoint else []


def _md_endpoint_lines(backend: Mapping[str, str]) -> list[str]:
    endpoint = backend.get("endpoint")
    if not endpoint:
        return []
    return [f"Endpoint: {md_code(endpoint)}", ""]


def _detail_lines(change: Change) -> list[tuple[str, str]]:
    """(sign, text) lines: the attribute differences of one change, Terraform style."""
    before, after = change.before, change.after
    lines: list[tuple[str, str]] = []
    if Action.CREATE in change.actions and after is not None:
        for attr, value in (
            ("spec", after.spec.value),
            ("usage", after.usage.value),
            ("protection", after.protection.value),
            ("instance", after.instance),
        ):
            lines.append(("+", f"{attr} = {_q(value)}"))
        lines.append(("+", f"description = {_q(change.description or '')}"))
        for k, v in sorted(change.tags_to_set.items()):
            lines.append(("+", f"tag {k} = {_q(v)}"))
        for a in change.aliases_to_create:
            lines.append(("+", f"alias {a}"))
        for a in change.aliases_to_move:
            lines.append(("~", f"alias {a} (moved here from another key of this stack)"))
        lines.append(("+", f"deletion_protection = {_q(bool(change.deletion_protection))}"))
        lines.append(("+", f"expiry = {_q(format_time(after.expiry) or 'never')}"))
    else:
        before_tags: Mapping[str, str] = {} if before is None else before.tags
        for k, v in sorted(change.tags_to_set.items()):
            if k in before_tags:
                lines.append(("~", f"tag {k}: {_q(before_tags[k])} -> {_q(v)}"))
            else:
                lines.append(("+", f"tag {k} = {_q(v)}"))
        for k in change.tags_to_remove:
            lines.append(("-", f"tag {k} = {_q(before_tags.get(k))}"))
        for a in change.aliases_to_create:
            lines.append(("+", f"alias {a}"))
        for a in change.aliases_to_move:
            lines.append(("~", f"alias {a} (moved here from another key of this stack)"))
        for a in change.aliases_to_delete:
            lines.append(("-", f"alias {a}"))
        if change.description is not None:
            old_words = None if before is None else before.description
            lines.append(("~", f"description: {_q(old_words)} -> {_q(change.description)}"))
        if change.deletion_protection is not None:
            lines.append(
                (
                    "~",
                    f"deletion_protection: {_q(None if before is None else before.deletion_protection)} -> "
                    f"{_q(change.deletion_protection)}",
                )
            )
        if Action.REIMPORT in change.actions:
            old = (None if before is None else format_time(before.material_expires_at)) or "never"
            new = (None if after is None else format_time(after.expiry)) or "never"
            lines.append(
                ("↻", f"material expiry: {_q(old)} -> {_q(new)}" if old != new else f"expiry = {_q(new)}")
            )
        if Action.DELETE_MATERIAL in change.actions:
            lines.append(("x", "material (the key stays, unusable until reimported)"))
        if Action.SCHEDULE_DELETION in change.actions:
            lines.append(("-", f"key, after a pending window of {change.pending_window_days} days"))
    if change.material is not None:
        src = _material_words(change.material)
        lines.append((" ", f"material from {src}, fingerprint {change.material.fingerprint}"))
    for dup in change.duplicates:
        lines.append(("-", f"duplicate key {dup} (never held material): deletion in 7 days"))
    # Aliases, tag keys, paths and argv are interpolated as they are: one escape for the whole line.
    return [(sign, _visible(text)) for sign, text in lines]


def _material_words(material: MaterialReference) -> str:
    return material.describe()


def _summary_line(plan: Plan) -> str:
    s = plan.summary
    return "Plan: " + ", ".join(f"{s[a.value]} {words}" for a, words in _SUMMARY_WORDS) + "."


def render_plan_text(plan: Plan, *, color: bool) -> str:
    paint = _painter(color)
    out = [f"Stack {_visible(repr(plan.stack))}, backend {_backend_words(plan.backend)}"]
    out += [*_endpoint_lines(plan.backend), ""]
    if plan.changes:
        out.append(paint(f"Symbols: {_LEGEND}", _DIM))
        out.append("")
    for change in plan.changes:
        sym, code = _symbol(change)
        ident = f" ({_visible(change.key_id)})" if change.key_id else ""
        words = ", ".join(a.value for a in change.actions) or "schedule-deletion (duplicates)"
        out.append(f"  {paint(sym, code)} {paint(_visible(change.key), _BOLD)}{ident}: {words}")
        out.append(f"      # {_visible(change.reason)}")
        for sign, text in _detail_lines(change):
            sign_code = {"+": _GREEN, "-": _RED, "~": _YELLOW, "↻": _CYAN, "x": _RED}.get(sign, _DIM)
            out.append(f"      {paint(sign, sign_code)} {text}")
        out.append("")
    if plan.notes:
        for note in plan.notes:
            out.append(paint(f"  # {_visible(note.key)}: {_visible(note.message)}", _DIM))
        out.append("")
    if plan.violations:
        out.append(paint("Violations:", _RED + ";" + _BOLD))
        for v in plan.violations:
            out.append(
                f"  {paint('!', _RED + ';' + _BOLD)} {_visible(v.key)}: {v.code.value}: {_visible(v.message)}"
            )
        out.append("")
    if plan.has_changes:
        out.append(_summary_line(plan))
    elif not plan.violations:
        out.append("No changes. The live keys match the manifests.")
    if plan.violations:
        out.append(
            paint(
                f"Plan blocked: {len(plan.violations)} violation(s); nothing will be applied.",
                _RED + ";" + _BOLD,
            )
        )
    return "\n".join(out) + "\n"


def render_plan_json(plan: Plan) -> str:
    """The plan document; every string escaped as in text, so `jq -r` prints no raw control character."""
    return json.dumps(json_safe(plan_to_dict(plan)), indent=2, ensure_ascii=False) + "\n"


_DIFF_SIGNS = {"+": "+", "-": "-", "x": "-"}


#: Backslash-escaped in markdown text: everything that can open emphasis, code, a link, an image, HTML,
#: an entity, a table cell, strikethrough, math, an emoji (`:x:`) or an autolink (`https:`, `www.`).
_MD_ESCAPED = frozenset("\\`*_[]<>&!|~$:.")
#: Written as code so GitHub makes no mention (`@team`) or issue reference (`#1`) of them.
_MD_AS_CODE = frozenset("@#")


def md_text(value: Any) -> str:
    """`value` as inert markdown text that renders as the text view shows it: on one line, no markup,
    no HTML, no link; also safe inside a table cell (a `|` is escaped)."""
    out = []
    for ch in _visible(value):
        if ch in _MD_ESCAPED:
            out.append("\\" + ch)
        elif ch in _MD_AS_CODE:
            out.append(f"`{ch}`")
        else:
            out.append(ch)
    return "".join(out)


_BACKTICKS = re.compile("`+")


def _longest_backtick_run(text: str) -> int:
    return max((len(m) for m in _BACKTICKS.findall(text)), default=0)


def md_code(value: Any, *, cell: bool = False) -> str:
    """`value` as a markdown code span that holds it whole: the delimiter is one backtick longer than
    any run inside (CommonMark). `cell=True` in a table row, where a `|` must be escaped even in code."""
    text = _visible(value)
    if cell:
        # A backslash right before a pipe would escape the pipe's own escape: show it as \u005c.
        text = text.replace("\\|", "\\u005c|").replace("|", "\\|")
    if not text:
        return "` `"
    fence = "`" * (_longest_backtick_run(text) + 1)
    pad = text[0] == "`" or text[-1] == "`" or (text[0] == " " and text[-1] == " " and text.strip(" "))
    return f"{fence} {text} {fence}" if pad else f"{fence}{text}{fence}"


def md_fenced(lines: list[str], info: str = "") -> list[str]:
    """A fenced code block that no line can close: the fence is longer than any backtick run inside
    (a `~~~` line cannot close a backtick fence). Each line must be one line, already escaped."""
    fence = "`" * max(3, _longest_backtick_run("\n".join(lines)) + 1)
    return [fence + info, *lines, fence]


def _md(text: Any) -> str:
    """Text safe inside a markdown table cell or paragraph."""
    return md_text(text)


#: GitHub refuses comments over 65,536 characters; stay under it with room for a pipeline's own words.
MARKDOWN_LIMIT = 60_000


def _change_heading(change: Change) -> str:
    sym, _ = _symbol(change)
    ident = f" ({md_code(change.key_id)})" if change.key_id else ""
    words = ", ".join(a.value for a in change.actions) or "schedule-deletion (duplicates)"
    return f"`{sym}` {md_code(change.key)}{ident}: {words}"


def _markdown_changes(plan: Plan) -> list[str]:
    out = ["### Changes", ""]
    for change in plan.changes:
        out += [f"#### {_change_heading(change)}", "", f"_{_md(change.reason)}_", ""]
        diff: list[str] = []
        for sign, text in _detail_lines(change):
            # diff highlighting knows only + and -; a change or reimport reads as context.
            mark = _DIFF_SIGNS.get(sign)
            diff.append(f"{mark} {text}" if mark else f"  {sign} {text}".rstrip())
        out += [*md_fenced(diff, "diff"), ""]
    return out


def _markdown_changes_brief(plan: Plan, budget: int) -> list[str]:
    out = [
        "### Changes",
        "",
        "_Attribute details are left out to fit a comment; the job log has the full plan._",
        "",
    ]
    used = sum(len(line) + 1 for line in out)
    for i, change in enumerate(plan.changes):
        line = f"- {_change_heading(change)}: {_md(change.reason)}"
        if used + len(line) + 1 > budget:
            out.append(f"- ... and {len(plan.changes) - i} more")
            break
        out.append(line)
        used += len(line) + 1
    out.append("")
    return out


def render_plan_markdown(plan: Plan, *, limit: int = MARKDOWN_LIMIT) -> str:
    """A pull-request comment: status, summary table, violations first, then each key's changes."""
    head = [f"## Plan for stack {md_code(plan.stack)}", "", *_md_endpoint_lines(plan.backend)]
    if plan.violations:
        head += [f"**Blocked**: {len(plan.violations)} violation(s); nothing will be applied.", ""]
    elif not plan.has_changes:
        head += ["No changes. The live keys match the manifests.", ""]
    summary = plan.summary
    head.append("| " + " | ".join(a.value for a in Action) + " |")
    head.append("|" + "---|" * len(Action))
    head.append("| " + " | ".join(str(summary[a.value]) for a in Action) + " |")
    head.append("")
    tail: list[str] = []
    if plan.violations:
        tail += ["### Violations", "", "| key | code | message |", "|---|---|---|"]
        for v in plan.violations:
            tail.append(f"| {md_code(v.key, cell=True)} | `{v.code.value}` | {_md(v.message)} |")
        tail.append("")
    notes: list[str] = []
    if plan.notes:
        notes += ["### Notes", ""]
        notes += [f"- {md_code(n.key)}: {_md(n.message)}" for n in plan.notes]
        notes.append("")
    changes = _markdown_changes(plan) if plan.changes else []
    text = "\n".join(head + tail + changes + notes)
    if len(text) > limit and plan.changes:
        fixed = len("\n".join(head + tail + notes)) + 2
        changes = _markdown_changes_brief(plan, max(limit - fixed, 0))
        text = "\n".join(head + tail + changes + notes)
    return text


# ----------------------------------------------------------------------------------------- drift


def _found_words(item: DriftItem) -> str:
    return f"expected {_q(item.expected)}, found {_q(item.found)}"


def render_drift_text(report: DriftReport, *, color: bool) -> str:
    paint = _painter(color)
    stack = _visible(repr(report.stack))
    if report.in_sync:
        head = [f"Stack {stack}: in sync, no drift.", *_endpoint_lines(report.backend)]
        return "\n".join(head) + "\n"
    out = [f"Stack {stack}: drift found", *_endpoint_lines(report.backend), ""]
    for item in report.items:
        out.append(
            f"  {paint('!', _YELLOW)} {paint(_visible(item.key), _BOLD)}: "
            f"{paint(item.kind.value, _YELLOW)}: {_visible(item.detail)}"
        )
        out.append(paint(f"      {_visible(_found_words(item))}", _DIM))
    out.append("")
    counts = ", ".join(f"{n} {kind}" for kind, n in report.counts.items())
    out.append(f"Drift: {len(report.items)} item(s) ({counts}).")
    return "\n".join(out) + "\n"


def render_drift_json(report: DriftReport) -> str:
    """The drift document, escaped as render_plan_json is."""
    return json.dumps(json_safe(report.to_dict()), indent=2, ensure_ascii=False) + "\n"


def render_drift_markdown(report: DriftReport) -> str:
    out = [f"## Drift for stack {md_code(report.stack)}", "", *_md_endpoint_lines(report.backend)]
    if report.in_sync:
        out += [f"In sync at {report.to_dict()['checked_at']}: no drift.", ""]
        return "\n".join(out)
    out += [f"**{len(report.items)} item(s) of drift** found at {report.to_dict()['checked_at']}.", ""]
    out += ["| kind | count |", "|---|---|"]
    out += [f"| `{kind}` | {n} |" for kind, n in report.counts.items()]
    out += ["", "| key | kind | detail | expected | found |", "|---|---|---|---|---|"]
    for item in report.items:
        out.append(
            f"| {md_code(item.key, cell=True)} | `{item.kind.value}` | {_md(item.detail)} | "
            f"{_md(_q(item.expected))} | {_md(_q(item.found))} |"
        )
    out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------- show


def render_show_text(report: ShowReport) -> str:
    """Each managed key as a block of `attribute = value` lines, values as a manifest writes them."""
    out = [f"Stack {_visible(repr(report.stack))}, backend {_backend_words(report.backend)}"]
    out += _endpoint_lines(report.backend)
    if report.targets:
        out.append(f"Targeted: only {', '.join(_visible(t) for t in report.targets)} (--target)")
    out.append("")
    for key in report.keys:
        fields = key.to_dict()
        out.append(f"  {_visible(key.name)} ({_visible(key.key_id)}): {_visible(key.state)}")
        for attr in ("arn", "spec", "usage", "aliases", "fingerprint", "material_expiry", "target"):
            value = fields[attr]
            if attr == "material_expiry" and value is None:
                value = "no material" if key.state == "PendingImport" else "never"
            out.append(f"      {attr} = {_q(value)}")
        out.append("")
    for name in report.missing:
        out.append(f"  # {_visible(name)}: declared, but no key of this stack carries the name (see plan)")
    if report.missing:
        out.append("")
    out.append(f"{len(report.keys)} managed key(s).")
    return "\n".join(out) + "\n"


def render_show_json(report: ShowReport) -> str:
    """The show document, escaped as render_plan_json is."""
    return json.dumps(json_safe(report.to_dict()), indent=2, ensure_ascii=False) + "\n"
