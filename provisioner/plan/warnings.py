"""Plan-time warnings about material that runs out soon: a pure function of (manifests, live state, plan,
now), with drift's wording.

A warning changes nothing and is not part of the plan document (DESIGN section 5 fixes its fields): the
CLI prints each on standard error. No I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from provisioner.model import DesiredKey, KeyStatus, LiveState, ManifestSet, format_time
from provisioner.plan.planner import KEEPS_MATERIAL, sort_identity
from provisioner.plan.values import Action, Plan

#: The default of `--expiry-warning` on plan, apply and drift.
DEFAULT_EXPIRY_WARNING_DAYS = 30


def expiring_detail(subject: str, expires: datetime, now: datetime, window_days: int) -> str:
    """The words drift and plan use for material that expires within the warning window."""
    days = (expires - now).days
    return (
        f"material of {subject} expires at {format_time(expires)}, in {days} day(s) "
        f"(warning window {window_days} days)"
    )


@dataclass(frozen=True)
class ExpiryWarning:
    """Material of `key` expires at `expires_at`, within `window_days` of the plan's `now`."""

    key: str
    key_id: str | None  # None: the key is created by the plan
    expires_at: datetime
    window_days: int
    now: datetime

    def __str__(self) -> str:
        subject = "the new key" if self.key_id is None else f"key {self.key_id}"
        return f"{self.key}: {expiring_detail(subject, self.expires_at, self.now, self.window_days)}"


def warning_window_days(key: DesiredKey, default_days: int) -> int:
    """How many days ahead a key's expiry is warned about.

    A leased key (`expiry: {lease, renew_before}`, DESIGN section 11) will warn within its
    `renew_before` instead: return that here once DesiredKey carries a lease.
    """
    return default_days


def expiry_warnings(
    desired: ManifestSet, live: LiveState, plan: Plan, *, now: datetime, days: int
) -> tuple[ExpiryWarning, ...]:
    """One warning per key whose material, once the plan is applied, expires within its window: the
    expiry the plan imports with, else the live key's. Keys the plan empties or deletes have none."""
    out: list[ExpiryWarning] = []
    for d in desired.keys:
        if d.state not in KEEPS_MATERIAL:
            continue
        change = plan.change_for(d.name)
        expires: datetime | None
        if change is not None and {Action.IMPORT, Action.REIMPORT} & set(change.actions):
            key_id, expires = change.key_id, d.expiry
        else:
            key = sort_identity(live.keys.get(d.name, ())).primary
            if key is None or key.status in (KeyStatus.PENDING_IMPORT, KeyStatus.MATERIAL_EXPIRED):
                continue
            key_id, expires = key.key_id, key.material_expires_at
        window = warning_window_days(d, days)
        if expires is not None and now < expires <= now + timedelta(days=window):
            out.append(ExpiryWarning(d.name, key_id, expires, window, now))
    return tuple(out)

