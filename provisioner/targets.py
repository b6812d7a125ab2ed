"""Backend targets (DESIGN section 12): a manifest set's named backends, and what every document says of them.

A set with `backend:` (or none) has one target, `default`. A set with `backends:` has several, each
read, planned and applied on its own KMS connection with its own rate limiter, concurrently. This
module holds what is shared by every command: the `backends` entry of a document, choosing targets
with --only-target, and running one function per target on a bounded pool so that one target's
failure leaves the others' results whole.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from provisioner.errors import ProvisionerError
from provisioner.model import DEFAULT_TARGET

#: A target's name: what `backends[].name`, `targets:`, --only-target and --target-profile take.
NAME_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,31}")
NAME_RULE = "1..32 of lowercase letters, digits and '-', starting with a letter"
#: Targets read or applied at once: each has its own connection and rate limiter, so more threads
#: than targets buy nothing; a bound keeps a set of many regions from opening them all at once.
MAX_CONCURRENT_TARGETS = 8

T = TypeVar("T")
R = TypeVar("R")


def backend_entry(name: str, info: Mapping[str, str]) -> dict[str, Any]:
    """One entry of a document's `backends`: name, type, region (null when none), endpoint, then any
    other entry the backend names itself with (a local backend's path)."""
    entry: dict[str, Any] = {
        "name": name,
        "type": info.get("type"),
        "region": info.get("region"),
        "endpoint": info.get("endpoint"),
    }
    entry.update((k, v) for k, v in sorted(info.items()) if k not in entry)
    return entry


def backends_document(infos: Iterable[Mapping[str, str]]) -> list[dict[str, Any]]:
    """A document's `backends`, from infos that each carry their `name`."""
    return [backend_entry(info.get("name", DEFAULT_TARGET), {k: v for k, v in info.items() if k != "name"})
            for info in infos]


def failed_targets_document(errors: Mapping[str, str]) -> dict[str, Any]:
    """`failed_targets` (names, in order) and `target_errors` of a document, only when a target failed:
    a run whose targets all answered keeps the document it always had."""
    if not errors:
        return {}
    return {"failed_targets": list(errors), "target_errors": dict(errors)}


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """What one target's run gave: its result, or the error that stopped it (never both)."""

    target: str
    result: R | None = None
    error: ProvisionerError | None = None


def run_per_target(
    fn: Callable[[T], R], items: Sequence[tuple[str, T]], *, limit: int = MAX_CONCURRENT_TARGETS,
    contain: bool = False,
) -> list[Outcome[R]]:
    """`fn` on every (target, item), one thread per target (at most `limit` at once), in the order given.

    A ProvisionerError (a refused call, a throttling storm past its retries, a stale key) ends that
    target's run only: it is returned as the target's error, and the other targets finish. Any other
    exception (a bug, Ctrl-C) propagates once every target under way has stopped. A single target runs
    in the caller's thread and its errors propagate, as a run without targets always did, unless
    `contain` (one target of several, picked by --only-target: its error is still the target's)."""

    def one(target: str, item: T) -> Outcome[R]:
        try:
            return Outcome(target, result=fn(item))
        except ProvisionerError as e:
            return Outcome(target, error=e)

    if len(items) <= 1:
        return [one(t, i) if contain else Outcome(t, result=fn(i)) for t, i in items]
    with ThreadPoolExecutor(max_workers=max(1, min(limit, len(items))), thread_name_prefix="target") as pool:
        futures = [pool.submit(one, t, i) for t, i in items]
        return [f.result() for f in futures]
