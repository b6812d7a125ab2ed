"""The stack lock's two stores and its lease, in-process (DESIGN section 10, "one apply at a time").

`local` is a row of the state file; `alias` is the lock alias on a lock key, here on the embedded engine
(the same calls as on the emulator: tests/test_lock_e2e.py runs them through the official SDK). Leases
are shortened through the module's constants; no test sleeps for a real lease.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from provisioner import lock
from provisioner.backend.base import Kms
from provisioner.backend.local import LocalTransport
from provisioner.errors import StackLocked
from provisioner.lock import AliasLock, Holder, LocalLock, LockKeyTemplate, LockStore, acquire
from provisioner.model import (
    TAG_LOCK,
    TAG_LOCK_HOLDER,
    claim_alias,
    is_reserved_alias,
    lock_alias,
)

TEMPLATE = LockKeyTemplate("EC_P256", "SIGN/VERIFY", "SOFTWARE", "kst-local-software")
REFUSAL = r'^stack "s" \(target default\) is locked by \S+ pid \d+ since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$'


@pytest.fixture
def kms(tmp_path: Path) -> Iterator[Kms]:
    db = tmp_path / "kms.db"
    k = Kms(LocalTransport(db), state_path=db)
    yield k
    k.close()


@pytest.fixture(params=["local", "alias"])
def stores(request: pytest.FixtureRequest, kms: Kms) -> tuple[LockStore, LockStore]:
    """Two runs' views of one stack's lock (two stores: each keeps what it took)."""
    if request.param == "local":
        assert kms.state_path is not None
        return LocalLock(kms.state_path, "s", "default"), LocalLock(kms.state_path, "s", "default")
    return AliasLock(kms, "s", "default", TEMPLATE), AliasLock(kms, "s", "default", TEMPLATE)


@pytest.fixture(autouse=True)
def short_times(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock, "SETTLE_SECONDS", 0.05)
    monkeypatch.setattr(lock, "POLL_SECONDS", 0.05)


def test_a_second_apply_is_refused_with_the_design_message_naming_the_holder(
    stores: tuple[LockStore, LockStore],
) -> None:
    first, second = stores
    held = acquire(first, stack="s", target="default", timeout=0)
    try:
        start = time.monotonic()
        with pytest.raises(StackLocked, match=REFUSAL) as info:
            acquire(second, stack="s", target="default", timeout=0)
        assert time.monotonic() - start < 1.0
        me = held.holder
        assert str(info.value) == (
            f'stack "s" (target default) is locked by {me.host} pid {me.pid} since '
            f"{me.since.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        )
    finally:
        held.release()
    # Released: the next apply takes it at once.
    acquire(second, stack="s", target="default", timeout=0).release()


def test_a_waiting_apply_takes_the_lock_once_it_is_released(stores: tuple[LockStore, LockStore]) -> None:
    first, second = stores
    held = acquire(first, stack="s", target="default", timeout=0)
    timer = threading.Timer(0.3, held.release)
    timer.start()
    try:
        start = time.monotonic()
        got = acquire(second, stack="s", target="default", timeout=5)
        assert 0.25 < time.monotonic() - start < 3
        got.release()
    finally:
        timer.join()


def test_a_lapsed_lease_is_taken_over_and_the_old_holder_knows_it_lost(
    stores: tuple[LockStore, LockStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = stores
    monkeypatch.setattr(lock, "LEASE_SECONDS", 2.0)  # whole seconds on the wire: at least 1 s
    monkeypatch.setattr(lock, "RENEW_SECONDS", 3600.0)  # a holder that stopped renewing (killed, paused)
    held = acquire(first, stack="s", target="default", timeout=0)
    with pytest.raises(StackLocked, match=REFUSAL):
        acquire(second, stack="s", target="default", timeout=0)
    taken = acquire(second, stack="s", target="default", timeout=5)  # the lease lapses within it
    try:
        assert first.renew(held.holder) is False
        with pytest.raises(StackLocked, match=REFUSAL) as info:
            acquire(first, stack="s", target="default", timeout=0)
        assert f"pid {taken.holder.pid} since" in str(info.value)
        held.release()  # gives back nothing: the lock is no longer its
        with pytest.raises(StackLocked, match=REFUSAL):
            acquire(first, stack="s", target="default", timeout=0)
    finally:
        taken.release()


def test_a_renewed_lease_keeps_the_lock_past_its_first_lease(
    stores: tuple[LockStore, LockStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = stores
    monkeypatch.setattr(lock, "LEASE_SECONDS", 2.0)  # whole seconds on the wire: at least 1 s
    monkeypatch.setattr(lock, "RENEW_SECONDS", 0.2)
    held = acquire(first, stack="s", target="default", timeout=0)
    try:
        time.sleep(2.5)
        with pytest.raises(StackLocked, match=REFUSAL):
            acquire(second, stack="s", target="default", timeout=0)
        assert not held.lost.is_set()
    finally:
        held.release()
    assert not held._thread.is_alive()  # the renewal thread stopped with the release


def test_break_lock_frees_a_held_lock_and_names_whom_it_was_taken_from(
    stores: tuple[LockStore, LockStore],
) -> None:
    first, second = stores
    held = acquire(first, stack="s", target="default", timeout=0)
    broken = second.break_lock()
    assert broken is not None and broken.token == held.holder.token
    acquire(second, stack="s", target="default", timeout=0).release()
    assert second.break_lock() is None  # nothing left to break
    held.release()


def test_targets_and_stacks_do_not_lock_each_other_out(kms: Kms) -> None:
    assert kms.state_path is not None
    held = [
        acquire(LocalLock(kms.state_path, "s", "hz"), stack="s", target="hz", timeout=0),
        acquire(LocalLock(kms.state_path, "s", "sh"), stack="s", target="sh", timeout=0),
        acquire(LocalLock(kms.state_path, "t", "hz"), stack="t", target="hz", timeout=0),
        acquire(AliasLock(kms, "s", "default", TEMPLATE), stack="s", target="default", timeout=0),
        acquire(AliasLock(kms, "t", "default", TEMPLATE), stack="t", target="default", timeout=0),
    ]
    with pytest.raises(StackLocked, match=r'^stack "s" \(target sh\) is locked by '):
        acquire(LocalLock(kms.state_path, "s", "sh"), stack="s", target="sh", timeout=0)
    for h in held:
        h.release()


def test_the_lock_key_is_made_once_never_imported_and_tagged_apart_from_any_stack(kms: Kms) -> None:
    for _ in range(3):
        acquire(AliasLock(kms, "s", "default", TEMPLATE), stack="s", target="default", timeout=0).release()
    (key_id,) = kms.list_keys()
    tags = kms.list_resource_tags(key_id)
    assert tags == {TAG_LOCK: "s"}  # the holder's tags go with the release; no stack tag: no plan reads it
    meta = kms.describe_key(key_id)
    assert (meta.key_state.value, meta.material_expire_time) == ("PendingImport", None)
    assert [a.alias_name for a in kms.list_aliases()] == []  # released: the alias is gone


def test_an_alias_lock_whose_holder_wrote_no_tags_is_taken_over_after_a_moment(kms: Kms) -> None:
    """A run killed between its CreateAlias and its TagResource leaves the alias and no holder."""
    key_id = kms.create_key(
        spec=TEMPLATE_SPEC, usage=TEMPLATE_USAGE, protection=TEMPLATE_PROTECTION,
        instance="kst-local-software", description="", tags={TAG_LOCK: "s"},
    ).key_id
    kms.create_alias(lock_alias("s"), key_id)
    held = acquire(AliasLock(kms, "s", "default", TEMPLATE), stack="s", target="default", timeout=0)
    assert kms.list_resource_tags(key_id)[TAG_LOCK_HOLDER] == held.holder.token
    held.release()


def test_a_holder_written_by_hand_or_half_is_no_holder() -> None:
    assert Holder.from_tags({TAG_LOCK_HOLDER: "x"}) is None
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    h = Holder("tok", "host-1", 42, "default", now, now + timedelta(seconds=60))
    assert Holder.from_tags(h.tags()) == h
    assert Holder.from_tags({**h.tags(), "byok-provisioner:lock-pid": "not a number"}) is None
    assert h.refusal("s", "default") == (
        'stack "s" (target default) is locked by host-1 pid 42 since 2026-01-02T03:04:05Z'
    )


# ------------------------------------------------------------------------------------- alias names


def test_claim_and_lock_aliases_are_what_kms_takes_for_every_valid_name() -> None:
    import re

    alias_word = re.compile(r"alias/[A-Za-z0-9_/-]{1,255}")
    long = "a" * 128
    cases = [("payments", "receipts"), ("pay.ments", "re.ceipts"), (long, long), ("p", long), (long, "k.1")]
    seen = set()
    for stack, name in cases:
        claim = claim_alias(stack, name)
        assert alias_word.fullmatch(claim), claim
        assert is_reserved_alias(claim) and is_reserved_alias(lock_alias(stack))
        assert alias_word.fullmatch(lock_alias(stack))
        seen.add(claim)
    assert len(seen) == len(cases)
    assert claim_alias("payments", "receipts") == "alias/byok-provisioner/payments/receipts"
    # A name with a dot becomes a hashed segment, never equal to a name KMS takes as it is.
    assert claim_alias("s", "a.b").startswith("alias/byok-provisioner/s/_")
    assert claim_alias("s", "a.b") != claim_alias("s", "a-b") != claim_alias("s", "a_b")


TEMPLATE_SPEC, TEMPLATE_USAGE, TEMPLATE_PROTECTION = (
    __import__("provisioner.model", fromlist=["KeySpec"]).KeySpec.EC_P256,
    __import__("provisioner.model", fromlist=["KeyUsage"]).KeyUsage.SIGN_VERIFY,
    __import__("provisioner.model", fromlist=["ProtectionLevel"]).ProtectionLevel.SOFTWARE,
)
