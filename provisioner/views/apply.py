"""The apply views: what apply prints before it asks, and its result as text or as the JSON apply
document. Progress lines (one per key, on standard error) come from apply.py and are the same in
every format.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from provisioner.apply import ApplyResult
from provisioner.escape import visible
from provisioner.model import DEFAULT_TARGET
from provisioner.plan.values import Plan
from provisioner.views import View
from provisioner.views.plan import render_plan_text
from provisioner.views.text import json_document


@runtime_checkable
class ApplyView(Protocol):
    def preview(self, plan: Plan) -> str:
        """What to print before confirming (and before a blocked plan's error)."""
        ...

    def unchanged(self, plan: Plan) -> str:
        """What to print when the plan has no changes: nothing is applied."""
        ...

    def result(self, result: ApplyResult) -> str:
        """What to print once the plan was carried out (each key done or failed)."""
        ...


class ApplyText(View):
    def preview(self, plan: Plan) -> str:
        return render_plan_text(plan, color=self.color)

    def unchanged(self, plan: Plan) -> str:
        return ""  # the preview said so

    def result(self, result: ApplyResult) -> str:
        failed = [o for o in result.outcomes if not o.ok]
        changed = len(result.outcomes) - len(failed)
        if result.failed_targets and not failed:
            names = ", ".join(result.failed_targets)
            lines = [
                f"Apply incomplete: {changed} key(s) changed, 0 failed, but {len(result.failed_targets)} "
                f"target(s) not applied ({names}). Fix each cause below, then plan and apply again."
            ]
        elif failed:
            lines = [
                f"Apply failed: {len(failed)} key(s) failed, {changed} changed (kept). Fix each cause "
                f"below, then plan and apply again: the new plan holds only what is left to do."
            ]
        else:
            lines = [f"Apply complete: {changed} key(s) changed, 0 failed."]
        several = bool(result.failed_targets) or any(o.target != DEFAULT_TARGET for o in result.outcomes)
        lines += [visible(f"  {o.target + '/' if several else ''}{o.key}: {o.error}") for o in failed]
        if result.failed_targets:
            errors = result.failed_targets.items()
            lines += [visible(f"  target {n}: not applied: {why}") for n, why in errors]
            lines.append(f"{len(result.failed_targets)} target(s) failed: {', '.join(result.failed_targets)}")
        return "".join(line + "\n" for line in lines)


class ApplyJson(View):
    """The JSON apply document is the result alone: no preview, and an empty result when unchanged."""

    def preview(self, plan: Plan) -> str:
        return ""

    def unchanged(self, plan: Plan) -> str:
        return self.result(ApplyResult(plan.stack, []))

    def result(self, result: ApplyResult) -> str:
        return json_document(result.to_dict(), ascii_only=True)


if TYPE_CHECKING:
    _IMPLEMENTED: tuple[type[ApplyView], ...] = (ApplyText, ApplyJson)
