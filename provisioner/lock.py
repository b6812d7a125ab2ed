"""One apply at a time per stack and target: a lock with a lease, renewed by a thread while held.

`local`: a row of the state file taken in `BEGIN IMMEDIATE`, so looking and taking are one step.
`alibaba`: CreateAlias of the stack's lock alias on its lock key (atomic in KMS); who holds it and
until when is in the key's tags. KMS has no compare-and-swap, so taking over a lapsed lease there is
write, wait, read back. Correctness never rests on this lock (apply's claims give that, apply.py);
the lock is the courtesy that keeps a second apply from starting at all. It never prints.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from provisioner.backend.base import Kms
from provisioner.errors import BackendError, KmsApiError, ProvisionerError, StackLocked
from provisioner.model import (
    LOCK_HOLDER_TAGS,
    TAG_LOCK,
    TAG_LOCK_HOLDER,
    TAG_LOCK_HOST,
    TAG_LOCK_LEASE,
    TAG_LOCK_PID,
    TAG_LOCK_SINCE,
    TAG_LOCK_TARGET,
    DesiredKey,
    format_time,
    lock_alias,
    parse_time,
)
from provisioner.wire import ErrorCode

# Module constants, read at each use, so that a test can shorten them (never 60 s sleeps in CI).
#: How long a lock holds without renewal (DESIGN section 10: 60 s).
LEASE_SECONDS = 60.0
#: How often the holder renews its lease (DESIGN: every 20 s).
RENEW_SECONDS = 20.0
#: alibaba: how long a taker waits before it reads back whose tags stand (a lapsed lease, a lock being
#: taken right now); longer than one call takes, short enough that a refusal still comes within a second.
SETTLE_SECONDS = 0.5
#: How often a taker looks again within SETTLE_SECONDS.
LOOK_SECONDS = 0.05
#: How often a waiting apply (--lock-timeout) tries again.
POLL_SECONDS = 1.0
#: How long releasing waits for a renewal under way to end.
STOP_SECONDS = 10.0
#: The shortest deletion window KMS takes, for a spare lock key (it never held material).
SPARE_WINDOW_DAYS = 7

#: What KMS takes in a tag value (vendor reference): 1 to 128 of these.
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9 /\\_\-.+=:@]")


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: a random token of the run, where it runs, since when and until when."""

    token: str
    host: str
    pid: int
    target: str
    since: datetime
    lease_until: datetime

    def describe(self) -> str:
        """`locked by HOST pid PID since TIME`."""
        return f"locked by {self.host} pid {self.pid} since {format_time(self.since)}"

    def refusal(self, stack: str, target: str) -> str:
        """DESIGN section 10's message, word for word."""
        return f'stack "{stack}" (target {target}) is {self.describe()}'

    def lapsed(self, now: datetime) -> bool:
        return self.lease_until <= now

    def tags(self) -> dict[str, str]:
        return {
            TAG_LOCK_HOLDER: self.token,
            TAG_LOCK_HOST: self.host,
            TAG_LOCK_PID: str(self.pid),
            TAG_LOCK_TARGET: self.target,
            TAG_LOCK_SINCE: str(format_time(self.since)),
            TAG_LOCK_LEASE: str(format_time(self.lease_until)),
        }

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Holder | None:
        """The holder written in a lock key's tags; None when there is none (or only part of one)."""
        try:
            since, lease = parse_time(tags.get(TAG_LOCK_SINCE)), parse_time(tags.get(TAG_LOCK_LEASE))
            if since is None or lease is None or not tags.get(TAG_LOCK_HOLDER):
                return None
            return cls(
                tags[TAG_LOCK_HOLDER], tags.get(TAG_LOCK_HOST, "unknown"), int(tags.get(TAG_LOCK_PID, "0")),
                tags.get(TAG_LOCK_TARGET, ""), since, lease,
            )
        except ValueError:
            return None  # a hand-edited tag: as good as no holder


def this_run(target: str, now: datetime) -> Holder:
    """The holder this process would write: a fresh token, this host and pid, a full lease."""
    host = _TAG_UNSAFE.sub("-", socket.gethostname())[:128] or "unknown"
    lease = now + timedelta(seconds=LEASE_SECONDS)
    return Holder(secrets.token_hex(8), host, os.getpid(), target, now, lease)


class LockStore(Protocol):
    """Where one stack's lock (of one target) lives. `take` returns None when `me` now holds it, else
    who does; `renew` says whether `me` still holds it; `break_lock` returns whom it took it from."""

    def take(self, me: Holder, now: datetime) -> Holder | None: ...

    def renew(self, me: Holder) -> bool: ...

    def release(self, me: Holder) -> None: ...

    def break_lock(self) -> Holder | None: ...


# ------------------------------------------------------------------------------------------- local


_LOCAL_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS provision_locks (stack TEXT NOT NULL, target TEXT NOT NULL, "
    "holder TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL, since TEXT NOT NULL, "
    "lease_until TEXT NOT NULL, PRIMARY KEY (stack, target))"
)


class LocalLock:
    """The lock as a row of the local state file; SQLite's write lock makes look-and-take atomic."""

    def __init__(self, path: Path, stack: str, target: str) -> None:
        self.path = path
        self.key = (stack, target)

    def _run(self, work: Callable[[sqlite3.Connection], Holder | bool | None]) -> Holder | bool | None:
        try:
            conn = sqlite3.connect(str(self.path), timeout=10, isolation_level=None)
        except sqlite3.Error as e:
            raise BackendError(f"local backend {self.path}: cannot take the lock: {e}") from None
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(_LOCAL_SCHEMA)
                result = work(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result
        except sqlite3.Error as e:
            raise BackendError(f"local backend {self.path}: the lock: {e}") from None
        finally:
            conn.close()

    def _holder(self, conn: sqlite3.Connection) -> Holder | None:
        row = conn.execute(
            "SELECT holder, host, pid, since, lease_until FROM provision_locks "
            "WHERE stack = ? AND target = ?",
            self.key,
        ).fetchone()
        if row is None:
            return None
        since, lease = parse_time(row[3]), parse_time(row[4])
        epoch = datetime.fromtimestamp(0, UTC)
        return Holder(str(row[0]), str(row[1]), int(row[2]), self.key[1], since or epoch, lease or epoch)

    def take(self, me: Holder, now: datetime) -> Holder | None:
        def work(conn: sqlite3.Connection) -> Holder | None:
            held = self._holder(conn)
            if held is not None and held.token != me.token and not held.lapsed(now):
                return held
            conn.execute(
                "INSERT OR REPLACE INTO provision_locks VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*self.key, me.token, me.host, me.pid, format_time(me.since), format_time(me.lease_until)),
            )
            return None

        result = self._run(work)
        return result if isinstance(result, Holder) else None

    def renew(self, me: Holder) -> bool:
        lease = format_time(_utcnow() + timedelta(seconds=LEASE_SECONDS))
        return bool(
            self._run(
                lambda conn: conn.execute(
                    "UPDATE provision_locks SET lease_until = ? "
                    "WHERE stack = ? AND target = ? AND holder = ?",
                    (lease, *self.key, me.token),
                ).rowcount
                == 1
            )
        )

    def release(self, me: Holder) -> None:
        self._run(
            lambda conn: bool(
                conn.execute(
                    "DELETE FROM provision_locks WHERE stack = ? AND target = ? AND holder = ?",
                    (*self.key, me.token),
                ).rowcount
            )
        )

    def break_lock(self) -> Holder | None:
        def work(conn: sqlite3.Connection) -> Holder | None:
            held = self._holder(conn)
            conn.execute("DELETE FROM provision_locks WHERE stack = ? AND target = ?", self.key)
            return held

        result = self._run(work)
        return result if isinstance(result, Holder) else None


# ----------------------------------------------------------------------------------------- alibaba


@dataclass(frozen=True)
class LockKeyTemplate:
    """What the stack's lock key is created as (an instance, spec and usage the stack already uses)."""

    spec: str
    usage: str
    protection: str
    instance: str | None

    @classmethod
    def of(cls, key: DesiredKey) -> LockKeyTemplate:
        return cls(key.spec.value, key.usage.value, key.protection.value, key.instance)


class AliasLock:
    """The lock as the stack's lock alias on its lock key; holder and lease in the key's tags."""

    def __init__(self, kms: Kms, stack: str, target: str, template: LockKeyTemplate | None) -> None:
        self.kms = kms
        self.stack = stack
        self.target = target
        self.alias = lock_alias(stack)
        self.template = template
        self.key_id: str | None = None  # the lock key the alias points at while we hold it

    def _lock_keys(self) -> list[str]:
        rows = self.kms.list_tag_resources(tags={TAG_LOCK: self.stack})
        return sorted({r.resource_id for r in rows if r.key == TAG_LOCK and r.value == self.stack})

    def _create_lock_key(self) -> str:
        from provisioner.model import KeySpec, KeyUsage, ProtectionLevel

        if self.template is None:
            raise ProvisionerError(f"stack {self.stack!r} declares no key to model its lock key on")
        t = self.template
        meta = self.kms.create_key(
            spec=KeySpec(t.spec), usage=KeyUsage(t.usage), protection=ProtectionLevel(t.protection),
            instance=t.instance,
            description=f"byok-provisioner: apply lock of stack {self.stack} (never holds material)",
            tags={TAG_LOCK: self.stack},
        )
        return meta.key_id

    def _retire(self, spare: str) -> None:
        """Two first applies of a stack both made a lock key and this one lost the alias: its key is a
        spare (any lock key can carry the alias), scheduled for deletion so that it is not billed."""
        with contextlib.suppress(ProvisionerError):  # a spare left is harmless: any apply may use it
            self.kms.schedule_key_deletion(spare, SPARE_WINDOW_DAYS)

    def _holder_of_alias(self) -> tuple[str, Holder | None] | None:
        """(the key the lock alias points at, the holder in its tags); None when there is no alias."""
        try:
            key_id = self.kms.describe_key(self.alias).key_id
        except KmsApiError as e:
            if e.code in (ErrorCode.FORBIDDEN_KEY_NOT_FOUND, ErrorCode.FORBIDDEN_ALIAS_NOT_FOUND):
                return None
            raise
        return key_id, Holder.from_tags(self.kms.list_resource_tags(key_id))

    def _create_alias(self) -> bool:
        """CreateAlias of the lock alias on a lock key (made once per stack); False: it exists."""
        for key_id in [*self._lock_keys(), None]:
            target = key_id if key_id is not None else self._create_lock_key()
            try:
                self.kms.create_alias(self.alias, target)
            except KmsApiError as e:
                if e.code == ErrorCode.ALIAS_ALREADY_EXISTS:
                    if key_id is None:
                        self._retire(target)
                    return False
                if key_id is not None and e.code in (
                    ErrorCode.REJECTED_STATE_MODIFIED_FAILED, ErrorCode.FORBIDDEN_KEY_NOT_FOUND
                ):
                    continue  # a lock key someone scheduled for deletion: the next one, or a new one
                raise
            self.key_id = target
            return True
        raise AssertionError("unreachable: the last candidate is a new key")

    def take(self, me: Holder, now: datetime) -> Holder | None:
        for _ in range(2):  # the alias may go between our CreateAlias and our look: once more then
            if self._create_alias():
                assert self.key_id is not None
                self.kms.tag_resource(self.key_id, me.tags())
                return None
            found = self._holder_of_alias()
            if found is not None:
                return self._take_over(me, now, found)
        return self._unknown(now)

    def _take_over(self, me: Holder, now: datetime, found: tuple[str, Holder | None]) -> Holder | None:
        key_id, seen = found
        if seen is not None and not seen.lapsed(now):
            return seen
        # A lapsed lease, or no holder written (a run killed between its two calls, or one writing its
        # tags right now): look again for a moment before taking it over.
        again: tuple[str, Holder | None] | None = found
        deadline = time.monotonic() + SETTLE_SECONDS
        while again == found and time.monotonic() < deadline:
            time.sleep(min(LOOK_SECONDS, SETTLE_SECONDS))
            again = self._holder_of_alias()
        if again != found:
            return (again[1] if again is not None else None) or self._unknown(now)
        self.kms.tag_resource(key_id, me.tags())
        time.sleep(SETTLE_SECONDS)  # another taker who saw the same lapse writes in this time too
        final = self._holder_of_alias()
        if final is not None and final[1] is not None and final[1].token == me.token:
            self.key_id = key_id
            return None
        return (final[1] if final is not None else None) or self._unknown(now)

    def _unknown(self, now: datetime) -> Holder:
        return Holder("", "an apply that is taking the lock", 0, self.target, now, now)

    def _still_ours(self, me: Holder) -> bool:
        found = self._holder_of_alias()
        return found is not None and found[1] is not None and found[1].token == me.token

    def renew(self, me: Holder) -> bool:
        if not self._still_ours(me) or self.key_id is None:
            return False
        lease = _utcnow() + timedelta(seconds=LEASE_SECONDS)
        self.kms.tag_resource(self.key_id, {TAG_LOCK_LEASE: str(format_time(lease))})
        return True

    def release(self, me: Holder) -> None:
        if self.key_id is None or not self._still_ours(me):
            return  # taken over (our lease lapsed): the lock is someone else's now
        self.kms.untag_resource(self.key_id, list(LOCK_HOLDER_TAGS))
        self._delete_alias()

    def _delete_alias(self) -> None:
        try:
            self.kms.delete_alias(self.alias)
        except KmsApiError as e:
            if e.code != ErrorCode.FORBIDDEN_ALIAS_NOT_FOUND:
                raise

    def break_lock(self) -> Holder | None:
        found = self._holder_of_alias()
        if found is None:
            return None
        key_id, seen = found
        self.kms.untag_resource(key_id, list(LOCK_HOLDER_TAGS))
        self._delete_alias()
        return seen or self._unknown(_utcnow())


# ------------------------------------------------------------------------------------------- held


class HeldLock:
    """A lock this run holds: a thread renews its lease every RENEW_SECONDS; `lost` is set when a
    renewal finds it taken over. `release()` stops the thread (bounded) and gives the lock back."""

    def __init__(self, store: LockStore, me: Holder) -> None:
        self.store = store
        self.holder = me
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="lock-renew", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            try:
                if not self.store.renew(self.holder):
                    self.lost.set()
                    return
            except ProvisionerError:
                continue  # the KMS did not answer: the next period tries again, within the lease

    def release(self) -> None:
        self._stop.set()
        self._thread.join(STOP_SECONDS)
        if not self.lost.is_set():
            self.store.release(self.holder)


def acquire(
    store: LockStore,
    *,
    stack: str,
    target: str,
    timeout: float,
    now: Callable[[], datetime] = _utcnow,
) -> HeldLock:
    """Take the lock, trying again every POLL_SECONDS for up to `timeout` seconds; StackLocked with
    DESIGN's message naming the holder when it stays taken."""
    deadline = time.monotonic() + timeout
    me = this_run(target, now())
    while True:
        moment = now()
        me = replace(me, since=moment, lease_until=moment + timedelta(seconds=LEASE_SECONDS))
        other = store.take(me, moment)
        if other is None:
            return HeldLock(store, me)
        left = deadline - time.monotonic()
        if left <= 0:
            raise StackLocked(other.refusal(stack, target))
        time.sleep(min(POLL_SECONDS, left))


def open_store(kms: Kms, stack: str, target: str, template: LockKeyTemplate | None) -> LockStore:
    """The lock of `stack` and `target` on this backend: a row of the local state file, or the lock alias."""
    if kms.state_path is not None:
        return LocalLock(kms.state_path, stack, target)
    return AliasLock(kms, stack, target, template)
