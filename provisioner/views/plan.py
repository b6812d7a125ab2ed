"""The plan views: Terraform-like text, the JSON plan document (DESIGN section 5) and a pull-request
comment in markdown.

A view only formats what a Plan holds: it decides nothing and prints nothing. A Plan holds no private
material, so no view can show any.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from provisioner.diagnostics import Diagnostic, Severity
from provisioner.model import TAG_GENERATION, DesiredState, KeyStatus, format_time
from provisioner.plan.planfile import plan_to_dict
from provisioner.plan.values import Action, Change, DesiredAttributes, Plan
from provisioner.views import View
from provisioner.views.markdown import MARKDOWN_LIMIT, md_code, md_endpoint_lines, md_fenced, md_text
from provisioner.views.text import (
    BOLD,
    CYAN,
    DIM,
    GREEN,
    RED,
    YELLOW,
    backend_words,
    endpoint_lines,
    json_document,
    painter,
    quoted,
    shown,
    where_lines,
)


@runtime_checkable
class PlanView(Protocol):
    def plan(self, plan: Plan) -> str:
        """The plan document."""
        ...


class PlanText(View):
    def plan(self, plan: Plan) -> str:
        return render_plan_text(plan, color=self.color)


class PlanJson(View):
    def plan(self, plan: Plan) -> str:
        return render_plan_json(plan)


class PlanMarkdown(View):
    def plan(self, plan: Plan) -> str:
        return render_plan_markdown(plan)


if TYPE_CHECKING:
    _IMPLEMENTED: tuple[type[PlanView], ...] = (PlanText, PlanJson, PlanMarkdown)


#: One symbol per change, the strongest action winning.
_SYMBOLS: tuple[tuple[Action, str, str], ...] = (
    (Action.SCHEDULE_DELETION, "-", RED),
    (Action.CREATE, "+", GREEN),
    (Action.ROTATE, "+", GREEN),  # a new key of the next generation
    (Action.DELETE_MATERIAL, "x", RED),
    (Action.REIMPORT, "↻", CYAN),
    (Action.ADOPT, "<", GREEN),
    (Action.UPDATE, "~", YELLOW),
    # A state change is a change in place, as an update is.
    (Action.CANCEL_DELETION, "~", YELLOW),
    (Action.ENABLE, "~", YELLOW),
    (Action.DISABLE, "~", YELLOW),
)
_LEGEND = (
    "+ create   < adopt   ~ update or state change   ↻ reimport   x delete material   - schedule deletion   "
    "! violation"
)

_SUMMARY_WORDS = (
    (Action.CREATE, "to create"),
    (Action.IMPORT, "to import"),
    (Action.REIMPORT, "to reimport"),
    (Action.DELETE_MATERIAL, "to delete material"),
    (Action.UPDATE, "to update"),
    (Action.SCHEDULE_DELETION, "to schedule for deletion"),
)
#: Shown in the text summary only when some key needs them (the JSON and markdown summaries always
#: list every word), so the line stays as short as Terraform's for the everyday plan.
_STATE_SUMMARY_WORDS = (
    (Action.ADOPT, "to adopt"),
    (Action.CANCEL_DELETION, "to cancel deletion"),
    (Action.ENABLE, "to enable"),
    (Action.DISABLE, "to disable"),
    (Action.ROTATE, "to rotate"),
)


def _symbol(change: Change) -> tuple[str, str]:
    for action, sym, code in _SYMBOLS:
        if action in change.actions:
            return sym, code
    return "-", RED  # a change with duplicates only: they are scheduled for deletion


def _detail_lines(change: Change) -> list[tuple[str, str]]:
    """(sign, text) lines: the attribute differences of one change, Terraform style."""
    before, after = change.before, change.after
    lines: list[tuple[str, str]] = []
    if Action.ROTATE in change.actions and after is not None:
        lines += _rotate_lines(change, after)
    elif Action.CREATE in change.actions and after is not None:
        for attr, value in (
            ("spec", after.spec.value),
            ("usage", after.usage.value),
            ("protection", after.protection.value),
            ("instance", after.instance),
        ):
            lines.append(("+", f"{attr} = {quoted(value)}"))
        lines.append(("+", f"description = {quoted(change.description or '')}"))
        for k, v in sorted(change.tags_to_set.items()):
            lines.append(("+", f"tag {k} = {quoted(v)}"))
        for a in change.aliases_to_create:
            lines.append(("+", f"alias {a}"))
        for a in change.aliases_to_move:
            lines.append(("~", f"alias {a} (moved here from another key of this stack)"))
        lines.append(("+", f"deletion_protection = {quoted(bool(change.deletion_protection))}"))
        lines.append(("+", f"expiry = {quoted(format_time(after.expiry) or 'never')}"))
        if Action.DISABLE in change.actions:
            lines.append(("+", f"state = {quoted('disabled')}"))
    else:
        before_tags: Mapping[str, str] = {} if before is None else before.tags
        status = None if before is None else before.status.value
        if Action.CANCEL_DELETION in change.actions:
            when = None if before is None else format_time(before.deletion_date)
            lines.append(
                ("~", f"deletion on {quoted(when)} cancelled (the key comes back enabled, or pending-import "
                      f"without material)")
            )
        if Action.ENABLE in change.actions:
            lines.append(("~", f"state: {quoted(status)} -> {quoted('enabled')}"))
        for k, v in sorted(change.tags_to_set.items()):
            if k in before_tags:
                lines.append(("~", f"tag {k}: {quoted(before_tags[k])} -> {quoted(v)}"))
            else:
                lines.append(("+", f"tag {k} = {quoted(v)}"))
        for k in change.tags_to_remove:
            lines.append(("-", f"tag {k} = {quoted(before_tags.get(k))}"))
        for a in change.aliases_to_create:
            lines.append(("+", f"alias {a}"))
        for a in change.aliases_to_move:
            lines.append(("~", f"alias {a} (moved here from another key of this stack)"))
        for a in change.aliases_to_delete:
            lines.append(("-", f"alias {a}"))
        if change.description is not None:
            old_words = None if before is None else before.description
            lines.append(("~", f"description: {quoted(old_words)} -> {quoted(change.description)}"))
        if change.deletion_protection is not None:
            was = None if before is None else before.deletion_protection
            lines.append(("~", f"deletion_protection: {quoted(was)} -> {quoted(change.deletion_protection)}"))
        if Action.REIMPORT in change.actions:
            old = (None if before is None else format_time(before.material_expires_at)) or "never"
            new = (None if after is None else format_time(after.expiry)) or "never"
            if status == KeyStatus.PENDING_IMPORT.value:
                # The key holds no material (deleted): there is no old expiry to move from.
                lines.append(("↻", f"material: none (deleted) -> imported again, expiry = {quoted(new)}"))
            elif old != new:
                lines.append(("↻", f"material expiry: {quoted(old)} -> {quoted(new)}"))
            else:
                lines.append(("↻", f"expiry = {quoted(new)}"))
        if Action.DELETE_MATERIAL in change.actions:
            lines.append(("x", "material (the key stays, unusable until reimported)"))
        if Action.DISABLE in change.actions:
            lines.append(("~", f"state: {quoted(status)} -> {quoted('disabled')}"))
        if Action.SCHEDULE_DELETION in change.actions:
            lines.append(("-", f"key, after a pending window of {change.pending_window_days} days"))
    if change.material is not None:
        src = change.material.describe()
        wrapped = "" if change.material.wrapping is None else f", wrapped with {change.material.wrapping}"
        lines.append((" ", f"material from {src}, fingerprint {change.material.fingerprint}{wrapped}"))
    for dup in change.duplicates:
        lines.append(("-", f"duplicate key {dup} (never held material): deletion in 7 days"))
    # Aliases, tag keys, paths and argv are interpolated as they are: one escape for the whole line.
    return [(sign, shown(text)) for sign, text in lines]


def _rotate_lines(change: Change, after: DesiredAttributes) -> list[tuple[str, str]]:
    """A rotate: the new generation created and given the aliases, then the old key's declared state."""
    generation = change.tags_to_set.get(TAG_GENERATION, "?")
    lines = [("+", f"new key of generation {generation}: {after.spec.value} {after.usage.value}")]
    for k, v in sorted(change.tags_to_set.items()):
        lines.append(("+", f"tag {k} = {quoted(v)}"))
    for a in change.aliases_to_move:
        lines.append(("~", f"alias {a} (moved to the new key)"))
    for a in change.aliases_to_create:
        lines.append(("+", f"alias {a}"))
    lines.append(("+", f"expiry = {quoted(format_time(after.expiry) or 'never')}"))
    old = change.key_id
    if change.previous_state is DesiredState.DISABLED:
        lines.append(("~", f"previous generation {old}: state -> {quoted('disabled')}"))
    elif change.previous_state is DesiredState.ABSENT:
        days = change.pending_window_days
        lines.append(("-", f"previous generation {old}, after a pending window of {days} days"))
    else:
        lines.append((" ", f"previous generation {old} stays enabled"))
    if Action.DISABLE in change.actions:
        lines.append(("+", f"state = {quoted('disabled')}"))
    return lines


def _summary_line(plan: Plan) -> str:
    s = plan.summary
    words = [*_SUMMARY_WORDS, *((a, w) for a, w in _STATE_SUMMARY_WORDS if s[a.value])]
    return "Plan: " + ", ".join(f"{s[a.value]} {w}" for a, w in words) + "."


_SIGN_COLOURS = {"+": GREEN, "-": RED, "~": YELLOW, "↻": CYAN, "x": RED}


def _header_lines(plan: Plan) -> list[str]:
    """The stack and where it was read: the backend and its endpoint, or each target's (DESIGN 9, 12)."""
    if not plan.backends:
        stack = f"Stack {shown(repr(plan.stack))}, backend {backend_words(plan.backend)}"
        return [stack, *endpoint_lines(plan.backend)]
    return [f"Stack {shown(repr(plan.stack))}, {len(plan.backends)} targets", *where_lines({}, plan.backends)]


def _by_target(plan: Plan) -> list[tuple[str, tuple[Change, ...]]]:
    """The changes of each target, in `backends` order (one group, unnamed, for a single backend)."""
    if not plan.backends:
        return [("", plan.changes)]
    return [(b["name"], tuple(c for c in plan.changes if c.target == b["name"])) for b in plan.backends]


def _on(plan: Plan, target: str, key: str) -> str:
    """A key as a line names it: with its target when the plan has several."""
    return f"{target}/{key}" if plan.backends else key


def render_plan_text(plan: Plan, *, color: bool) -> str:
    paint = painter(color)
    out = _header_lines(plan)
    if plan.targets:
        out.append(paint(f"Targeted: {_targeted_words(plan, shown)}", YELLOW))
    out.append("")
    if plan.changes:
        out.append(paint(f"Symbols: {_LEGEND}", DIM))
        out.append("")
    for target, changes in _by_target(plan):
        if target:
            failed = plan.target_errors.get(target)
            words = f"not planned: {shown(failed)}" if failed is not None else f"{len(changes)} change(s)"
            out += [paint(f"Target {shown(target)}: {words}", RED if failed is not None else BOLD), ""]
        for change in changes:
            sym, code = _symbol(change)
            ident = f" ({shown(change.key_id)})" if change.key_id else ""
            words = ", ".join(a.value for a in change.actions) or "schedule-deletion (duplicates)"
            out.append(f"  {paint(sym, code)} {paint(shown(change.key), BOLD)}{ident}: {words}")
            out.append(f"      # {shown(change.reason)}")
            for sign, text in _detail_lines(change):
                out.append(f"      {paint(sign, _SIGN_COLOURS.get(sign, DIM))} {text}")
            out.append("")
    if plan.notes:
        for note in plan.notes:
            out.append(paint(f"  # {shown(_on(plan, note.target, note.key))}: {shown(note.message)}", DIM))
        out.append("")
    if plan.violations:
        out.append(paint("Violations:", RED + ";" + BOLD))
        for v in plan.violations:
            what = shown(_on(plan, v.target, v.key))
            out.append(f"  {paint('!', RED + ';' + BOLD)} {what}: {v.code.value}: {shown(v.message)}")
        out.append("")
    if plan.has_changes:
        out.append(_summary_line(plan))
    elif not plan.violations:
        out.append(_no_changes_words(plan))
    if plan.violations:
        blocked = f"Plan blocked: {len(plan.violations)} violation(s); nothing will be applied."
        out.append(paint(blocked, RED + ";" + BOLD))
    return "\n".join(out) + "\n"


#: What a plan without changes or violations says, whole (False) or targeted (True).
_NO_CHANGES = {
    False: "No changes. The live keys match the manifests.",
    True: "No changes. The targeted keys match the manifests.",
}


def _no_changes_words(plan: Plan, where: str = "above") -> str:
    """The no-change line; with notes (an orphan left alone, an unknown fingerprint) it says that the
    keys match and points at the notes, rather than claim that everything live matches. With targets
    that could not be planned, it says so: nothing is known of their keys."""
    if plan.target_errors:
        failed = ", ".join(plan.failed_targets)
        return (
            f"No changes in the targets planned; {len(plan.target_errors)} target(s) could not be planned "
            f"({failed}): their keys are unknown."
        )
    if not plan.notes:
        return _NO_CHANGES[bool(plan.targets)]
    keys = "The targeted keys match" if plan.targets else "The keys the manifests declare match"
    return f"No changes. {keys} the live keys; {len(plan.notes)} note(s) {where} need no change, read them."


def _targeted_words(plan: Plan, name: Callable[[str], str]) -> str:
    """Terraform's -target warning, in our words: the plan is partial."""
    names = ", ".join(name(t) for t in plan.targets)
    return (
        f"only {names} (--target); the stack's other keys were not read, so this plan may not show "
        f"every change the manifests ask for."
    )


def violation_lines(plan: Plan) -> list[str]:
    """One line per violation for standard error, compiler style like validate's diagnostics:
    `FILE:LINE:COL: error: KEY: CODE: MESSAGE`, or `error: KEY: CODE: MESSAGE` when the key has no
    manifest location (a live key no manifest names, a plan read from a file)."""
    lines = []
    for v in plan.violations:
        what = f"{_on(plan, v.target, v.key)}: {v.code.value}: {v.message}"
        if v.location is None:
            lines.append(f"{Severity.ERROR.value}: {shown(what)}")
        else:
            lines.append(str(Diagnostic(v.location, what)))
    return lines


def render_plan_json(plan: Plan) -> str:
    """The plan document; every string escaped as in text, so `jq -r` prints no raw control character."""
    return json_document(plan_to_dict(plan))


#: The first character of a line in a ```diff block, which GitHub colours: + green, - red, ! orange
#: (changed in place). A reimport keeps its own symbol after the `!`.
_DIFF_MARKS = {"+": "+ ", "-": "- ", "x": "- ", "~": "! ", "↻": "! ↻ "}
_DIFF_LEGEND = (
    "_In each block: `+` added, `-` removed, `!` changed in place (`↻` a reimport); "
    "material paths are relative to the directory the plan was made in._"
)


def _change_heading(change: Change) -> str:
    sym, _ = _symbol(change)
    ident = f" ({md_code(change.key_id)})" if change.key_id else ""
    words = ", ".join(a.value for a in change.actions) or "schedule-deletion (duplicates)"
    return f"`{sym}` {md_code(change.key)}{ident}: {words}"


def _markdown_changes(plan: Plan) -> list[str]:
    out = ["### Changes", "", _DIFF_LEGEND, ""]
    current = None
    for change in plan.changes:
        if plan.backends and change.target != current:
            current = change.target
            out += [f"### Target {md_code(current)}", ""]
        out += [f"#### {_change_heading(change)}", "", f"_{md_text(change.reason)}_", ""]
        diff: list[str] = []
        for sign, text in _detail_lines(change):
            mark = _DIFF_MARKS.get(sign)
            diff.append(f"{mark}{text}" if mark else f"  {sign} {text}".rstrip())  # context: not coloured
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
    # Room for the "... and N more" line, at its longest.
    reserve = len(f"- ... and {len(plan.changes)} more") + 1
    for i, change in enumerate(plan.changes):
        where = f"{md_code(change.target)}: " if plan.backends else ""
        line = f"- {where}{_change_heading(change)}: {md_text(change.reason)}"
        last = i == len(plan.changes) - 1
        if used + len(line) + 1 + (0 if last else reserve) > budget:
            out.append(f"- ... and {len(plan.changes) - i} more")
            break
        out.append(line)
        used += len(line) + 1
    out.append("")
    return out


def render_plan_markdown(plan: Plan, *, limit: int = MARKDOWN_LIMIT) -> str:
    """A pull-request comment: status, summary table, violations first, then each key's changes."""
    head = [f"## Plan for stack {md_code(plan.stack)}", "", *md_endpoint_lines(plan.backend)]
    if plan.backends:
        head += ["| target | backend | endpoint | changes |", "|---|---|---|---|"]
        for b in plan.backends:
            rest = {k: v for k, v in b.items() if k not in ("name", "endpoint", "type")}
            failed = plan.target_errors.get(b["name"])
            n = sum(1 for c in plan.changes if c.target == b["name"])
            count = f"**not planned**: {md_text(failed)}" if failed is not None else str(n)
            detail = ", ".join(f"{k} {v}" for k, v in sorted(rest.items()))
            words = f"{b.get('type', '?')} ({detail})" if detail else b.get("type", "?")
            endpoint = md_code(b.get("endpoint", ""), cell=True)
            head.append(f"| {md_code(b['name'], cell=True)} | {md_text(words)} | {endpoint} | {count} |")
        head.append("")
    if plan.targets:
        head += [f"**Targeted**: {_targeted_words(plan, md_code)}", ""]
    if plan.violations:
        head += [f"**Blocked**: {len(plan.violations)} violation(s); nothing will be applied.", ""]
    elif not plan.has_changes:
        head += [_no_changes_words(plan, "below"), ""]
    summary = plan.summary
    head.append("| " + " | ".join(a.value for a in Action) + " |")
    head.append("|" + "---|" * len(Action))
    head.append("| " + " | ".join(str(summary[a.value]) for a in Action) + " |")
    head.append("")
    tail: list[str] = []
    if plan.violations:
        tail += ["### Violations", "", "| key | code | message |", "|---|---|---|"]
        for v in plan.violations:
            key = md_code(_on(plan, v.target, v.key), cell=True)
            tail.append(f"| {key} | `{v.code.value}` | {md_text(v.message)} |")
        tail.append("")
    notes: list[str] = []
    if plan.notes:
        notes += ["### Notes", ""]
        notes += [f"- {md_code(_on(plan, n.target, n.key))}: {md_text(n.message)}" for n in plan.notes]
        notes.append("")
    changes = _markdown_changes(plan) if plan.changes else []
    text = "\n".join(head + tail + changes + notes)
    if len(text) > limit and plan.changes:
        fixed = len("\n".join(head + tail + notes)) + 2
        changes = _markdown_changes_brief(plan, max(limit - fixed, 0))
        text = "\n".join(head + tail + changes + notes)
    return text
