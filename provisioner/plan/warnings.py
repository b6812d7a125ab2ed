"""Plan-time warnings about material that runs out soon: a pure function of (manifests, live state, plan,
now), with drift's wording.

A warning changes nothing and is not part of the plan document (DESIGN section 5 fixes its fields): the
CLI prints each on standard error. No I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from provisioner.model import DesiredKey, KeyStatus, LiveState, ManifestSet, format_time
from provisioner.plan.planner import KEEPS_MATERIAL, identity_of
from provisioner.plan.values import Action, Plan

#: The default of `--expiry-warning` on plan, apply and drift.
DEFAULT_EXPIRY_WARNING_DAYS = 30


def expiring_detail(subject: str, expires: datetime, now: datetime, window: str) -> str:
    """The words drift and plan use for material that expires within the warning window (`window`:
    window_words())."""
    days = (expires - now).days
    return f"material of {subject} expires at {format_time(expires)}, in {days} day(s) ({window})"


@dataclass(frozen=True)
class ExpiryWarning:
    """Material of `key` expires at `expires_at`, within `window` (window_words()) of the plan's `now`."""

    key: str
    key_id: str | None  # None: the key is created by the plan
    expires_at: datetime
    window: str  # window_words()
    now: datetime

    def __str__(self) -> str:
        subject = "the new key" if self.key_id is None else f"key {self.key_id}"
        return f"{self.key}: {expiring_detail(subject, self.expires_at, self.now, self.window)}"


def warning_window(key: DesiredKey, default_days: int) -> timedelta:
    """How far ahead a key's expiry is warned about: `--expiry-warning` days, or for a leased key
    (`expiry: {lease, renew_before}`, DESIGN section 11) its `renew_before`."""
    return key.lease.window if key.lease is not None else timedelta(days=default_days)


def window_words(key: DesiredKey, default_days: int) -> str:
    """The window in a warning's words: `warning window 30 days`, or `renew_before 7d` of a lease."""
    if key.lease is not None:
        return f"renew_before {key.lease.renew_before}"
    return f"warning window {default_days} days"


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
            # The expiry the plan imports with (a lease resolved), which `after` records.
            key_id = change.key_id
            expires = change.after.expiry if change.after is not None else d.expiry
        else:
            key = identity_of(live, d.name).primary
            if key is None or key.status in (KeyStatus.PENDING_IMPORT, KeyStatus.MATERIAL_EXPIRED):
                continue
            key_id, expires = key.key_id, key.material_expires_at
        if expires is not None and now < expires <= now + warning_window(d, days):
            out.append(ExpiryWarning(d.name, key_id, expires, window_words(d, days), now))
    return tuple(out)

