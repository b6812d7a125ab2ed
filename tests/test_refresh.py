"""refresh() against the local backend (the embedded engine), and key_status as a table.

Keys are made directly through `Kms` with the reserved tags, as apply would make them; calls are
counted by the ResilientTransport under the facade.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from provisioner.backend import open_kms
from provisioner.backend.base import KeyMetadata, Kms
from provisioner.backend.local import LocalTransport
from provisioner.backend.resilience import ResilientTransport
from provisioner.errors import KmsApiError
from provisioner.material import PrivateMaterial, parse_private_key
from provisioner.model import (
    TAG_FINGERPRINT,
    TAG_NAME,
    TAG_STACK,
    ActualKey,
    KeySpec,
    KeyState,
    KeyStatus,
    KeyUsage,
    Origin,
    ProtectionLevel,
)
from provisioner.refresh import actual_from_metadata, key_status, refresh
from provisioner.specs import facts
from provisioner.wrapping import wrap

STACK = "payments"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class SteppingClock:
    """The engine's clock: one second later on every reading, so creation order is visible."""

    def __init__(self) -> None:
        self._ticks = itertools.count()

    def __call__(self) -> datetime:
        return datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=next(self._ticks))


@pytest.fixture
def kms(tmp_path: Path) -> Iterator[Kms]:
    k = Kms(ResilientTransport(LocalTransport(tmp_path / "kms.db", clock=SteppingClock()), qps={}))
    yield k
    k.close()


def counter(kms: Kms) -> ResilientTransport:
    assert isinstance(kms.transport, ResilientTransport)
    return kms.transport


def new_material() -> PrivateMaterial:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return parse_private_key(pem)


def make_key(
    kms: Kms,
    name: str,
    *,
    stack: str = STACK,
    material: PrivateMaterial | None = None,
    expire: datetime | None = None,
    extra_tags: Mapping[str, str] | None = None,
) -> str:
    tags = {TAG_STACK: stack, TAG_NAME: name, **(extra_tags or {})}
    if material is not None:
        tags[TAG_FINGERPRINT] = material.fingerprint
    meta = kms.create_key(
        spec=KeySpec.EC_P256,
        usage=KeyUsage.SIGN_VERIFY,
        protection=ProtectionLevel.SOFTWARE,
        instance="kst-local-software",
        description=f"key {name}",
        tags=tags,
    )
    if material is not None:
        algorithm = facts(KeySpec.EC_P256).wrapping_algorithm
        params = kms.get_parameters_for_import(meta.key_id, algorithm)
        blob = wrap(material, params.public_key_der, algorithm)
        kms.import_key_material(
            meta.key_id, blob, params.import_token, int(expire.timestamp()) if expire else 0
        )
    return meta.key_id


def refresh_counted(kms: Kms, **kw: Any) -> tuple[Any, dict[str, int]]:
    transport = counter(kms)
    transport.calls.clear()
    state = refresh(kms, STACK, **{"now": datetime.now(UTC), **kw})
    return state, dict(transport.calls)


# --- key_status: one explicit status per metadata ----------------------------------------------


def meta(state: KeyState, expire: datetime | None = None) -> KeyMetadata:
    return KeyMetadata(
        key_id="k",
        arn="acs:kms:cn-hangzhou:1:key/k",
        key_state=state,
        key_spec=KeySpec.RSA_2048,
        key_usage=KeyUsage.SIGN_VERIFY,
        origin=Origin.EXTERNAL,
        protection_level=ProtectionLevel.SOFTWARE,
        instance_id="kst-1",
        description="",
        creation_date=T0,
        material_expire_time=expire,
        delete_date=None,
        deletion_protection=False,
        primary_key_version="v1",
    )


@pytest.mark.parametrize(
    ("state", "expire", "status"),
    [
        (KeyState.ENABLED, None, KeyStatus.ENABLED),
        (KeyState.ENABLED, T0 + timedelta(seconds=1), KeyStatus.ENABLED),
        (KeyState.ENABLED, T0, KeyStatus.MATERIAL_EXPIRED),
        (KeyState.ENABLED, T0 - timedelta(days=1), KeyStatus.MATERIAL_EXPIRED),
        (KeyState.PENDING_IMPORT, None, KeyStatus.PENDING_IMPORT),
        (KeyState.PENDING_IMPORT, T0 - timedelta(days=1), KeyStatus.MATERIAL_EXPIRED),
        (KeyState.PENDING_IMPORT, T0 + timedelta(days=1), KeyStatus.MATERIAL_EXPIRED),
        (KeyState.DISABLED, None, KeyStatus.DISABLED),
        (KeyState.PENDING_DELETION, T0 - timedelta(days=1), KeyStatus.PENDING_DELETION),
        (KeyState.PENDING_DELETION, None, KeyStatus.PENDING_DELETION),
    ],
)
def test_key_status(state: KeyState, expire: datetime | None, status: KeyStatus) -> None:
    assert key_status(meta(state, expire), T0) is status


def test_actual_from_metadata_carries_tags_and_sorted_aliases() -> None:
    tags = {TAG_STACK: STACK, TAG_NAME: "a", "team": "x"}
    key = actual_from_metadata(meta(KeyState.ENABLED), tags, ["alias/z", "alias/a"], T0)
    assert key.aliases == ("alias/a", "alias/z")
    assert key.name == "a"
    assert key.user_tags == {"team": "x"}
    assert key.status is KeyStatus.ENABLED
    assert key.public_key_fingerprint is None


# --- refresh on the local backend ---------------------------------------------------------------


def test_empty_kms_gives_empty_state_and_managed_names(kms: Kms) -> None:
    state, calls = refresh_counted(kms, managed_names=["b", "a"])
    assert state.stack == STACK
    assert dict(state.keys) == {"a": (), "b": ()}
    assert dict(state.alias_owners) == {}
    assert state.foreign_keys == frozenset()
    assert calls == {"ListTagResources": 1, "ListAliases": 1}


def test_statuses_aliases_and_foreign_keys(kms: Kms) -> None:
    mat = new_material()
    enabled = make_key(kms, "enabled", material=mat, extra_tags={"team": "pay"})
    pending = make_key(kms, "pending")
    disabled = make_key(kms, "disabled", material=new_material())
    kms.disable_key(disabled)
    doomed = make_key(kms, "doomed", material=new_material())
    kms.schedule_key_deletion(doomed, 7)
    expiring = make_key(
        kms, "expiring", material=new_material(), expire=datetime.now(UTC) + timedelta(hours=1)
    )
    other = make_key(kms, "enabled", stack="other")
    kms.create_alias("alias/pay/b", enabled)
    kms.create_alias("alias/pay/a", enabled)
    kms.create_alias("alias/other", other)

    state, _ = refresh_counted(kms, now=datetime.now(UTC) + timedelta(hours=2))
    status = {name: keys[0].status for name, keys in state.keys.items()}
    assert status == {
        "enabled": KeyStatus.ENABLED,
        "pending": KeyStatus.PENDING_IMPORT,
        "disabled": KeyStatus.DISABLED,
        "doomed": KeyStatus.PENDING_DELETION,
        "expiring": KeyStatus.MATERIAL_EXPIRED,
    }
    (key,) = state.keys["enabled"]
    assert key.key_id == enabled
    assert key.aliases == ("alias/pay/a", "alias/pay/b")
    assert key.tags == {
        TAG_STACK: STACK,
        TAG_NAME: "enabled",
        TAG_FINGERPRINT: mat.fingerprint,
        "team": "pay",
    }
    assert key.recorded_fingerprint == mat.fingerprint
    assert key.public_key_fingerprint is None  # nobody asked to confirm
    assert key.description == "key enabled"
    assert key.instance == "kst-local-software"
    assert state.keys["pending"][0].key_id == pending
    assert state.keys["doomed"][0].deletion_date is not None
    assert state.keys["expiring"][0].key_id == expiring
    assert dict(state.alias_owners) == {"alias/other": other, "alias/pay/a": enabled, "alias/pay/b": enabled}
    assert state.foreign_keys == frozenset({other})


def test_no_change_refresh_costs_at_most_1_1_calls_per_key(kms: Kms) -> None:
    ids = [make_key(kms, f"key-{i:02d}", extra_tags={"owner": "platform", "team": "pay"}) for i in range(40)]
    for i, key_id in enumerate(ids[:30]):
        kms.create_alias(f"alias/pay/{i}", key_id)
    make_key(kms, "elsewhere", stack="other")

    state, calls = refresh_counted(kms)
    assert len(state.keys) == 40
    assert calls["DescribeKey"] == 40
    assert "GetPublicKey" not in calls
    assert sum(calls.values()) / 40 <= 1.1, calls
    assert all(
        len(found) == 1 and found[0].user_tags == {"owner": "platform", "team": "pay"}
        for found in state.keys.values()
    )
    assert sum(len(found[0].aliases) for found in state.keys.values()) == 30


def test_duplicates_of_one_name_are_grouped_oldest_first(kms: Kms) -> None:
    first = make_key(kms, "twice")
    second = make_key(kms, "twice")
    state, _ = refresh_counted(kms)
    found = state.keys["twice"]
    assert [k.key_id for k in found] == [first, second]
    assert found[0].created_at < found[1].created_at


def test_confirm_reads_public_keys_only_where_asked(kms: Kms) -> None:
    mat_a, mat_b = new_material(), new_material()
    a = make_key(kms, "a", material=mat_a)
    make_key(kms, "b", material=mat_b)
    make_key(kms, "c")  # no material: never asked about
    asked: list[str] = []

    def confirm(key: ActualKey) -> bool:
        asked.append(key.name or "")
        return key.key_id == a

    state, calls = refresh_counted(kms, confirm=confirm)
    assert sorted(asked) == ["a", "b"]
    assert calls["GetPublicKey"] == 1
    assert state.keys["a"][0].public_key_fingerprint == mat_a.fingerprint
    assert state.keys["b"][0].public_key_fingerprint is None


class Interposer:
    """A transport between Kms and the local one that can rewrite answers, like a differing service."""

    def __init__(
        self, inner: Any, rewrite: Callable[[str, Mapping[str, Any], Callable[[], dict[str, Any]]], Any]
    ):
        self.inner = inner
        self.rewrite = rewrite

    def call(self, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.rewrite(action, params, lambda: self.inner.call(action, params))
        return result

    def close(self) -> None:
        self.inner.close()


def test_key_vanishing_before_describe_is_skipped(kms: Kms) -> None:
    kept = make_key(kms, "kept")
    gone = make_key(kms, "gone")

    def rewrite(action: str, params: Mapping[str, Any], forward: Callable[[], dict[str, Any]]) -> Any:
        if action == "DescribeKey" and params["KeyId"] == gone:
            raise KmsApiError(action, "Forbidden.KeyNotFound", "The specified Key is not found.", "r", 404)
        return forward()

    spy = Kms(Interposer(kms.transport, rewrite))
    state = refresh(spy, STACK, now=datetime.now(UTC), managed_names=["gone"])
    assert [k.key_id for k in state.keys["kept"]] == [kept]
    assert state.keys["gone"] == ()


def test_other_describe_errors_are_not_swallowed(kms: Kms) -> None:
    make_key(kms, "a")

    def rewrite(action: str, params: Mapping[str, Any], forward: Callable[[], dict[str, Any]]) -> Any:
        if action == "DescribeKey":
            raise KmsApiError(action, "Forbidden.NoPermission", "not allowed", "r", 403)
        return forward()

    with pytest.raises(KmsApiError) as e:
        refresh(Kms(Interposer(kms.transport, rewrite)), STACK, now=datetime.now(UTC))
    assert e.value.code == "Forbidden.NoPermission"
    assert str(e.value) == "DescribeKey: Forbidden.NoPermission: not allowed (request id r)"


def test_service_returning_only_matched_tag_rows_is_read_again_by_id(kms: Kms) -> None:
    ids = [make_key(kms, f"k{i:02d}", extra_tags={"team": "pay"}) for i in range(60)]

    def rewrite(action: str, params: Mapping[str, Any], forward: Callable[[], dict[str, Any]]) -> Any:
        body = forward()
        if action == "ListTagResources" and params.get("Tag"):
            wanted = {(t["Key"], t["Value"]) for t in params["Tag"]}
            rows = body["TagResources"]["TagResource"]
            body["TagResources"]["TagResource"] = [r for r in rows if (r["TagKey"], r["TagValue"]) in wanted]
        return body

    spy = Kms(Interposer(kms.transport, rewrite))
    counter(kms).calls.clear()
    state = refresh(spy, STACK, now=datetime.now(UTC))
    assert sorted(k.key_id for found in state.keys.values() for k in found) == sorted(ids)
    assert all(found[0].user_tags == {"team": "pay"} for found in state.keys.values())
    calls = counter(kms).calls
    assert calls["ListTagResources"] == 3  # one by tag, then 60 ids in chunks of 50
    assert sum(calls.values()) / 60 <= 1.1


def test_refresh_makes_no_write_call(kms: Kms) -> None:
    make_key(kms, "a", material=new_material())
    _, calls = refresh_counted(kms, confirm=lambda k: True)
    from provisioner.backend.base import READ_ONLY_ACTIONS

    assert set(calls) <= READ_ONLY_ACTIONS


def test_open_kms_local_default_path_and_description(tmp_path: Path) -> None:
    kms = open_kms(backend=None, endpoint=None, region=None, manifest_backend=None, cwd=tmp_path)
    try:
        assert kms.description == "local backend (.provision/kms.db)"
        assert refresh(kms, STACK, now=datetime.now(UTC)).keys == {}
        assert (tmp_path / ".provision" / "kms.db").exists()
    finally:
        kms.close()


def test_stack_key_without_a_name_is_not_listed_and_not_foreign(kms: Kms) -> None:
    nameless = kms.create_key(
        spec=KeySpec.EC_P256,
        usage=KeyUsage.SIGN_VERIFY,
        protection=ProtectionLevel.SOFTWARE,
        instance="kst-local-software",
        description="",
        tags={TAG_STACK: STACK},
    ).key_id
    kms.create_alias("alias/pay/nameless", nameless)
    state, calls = refresh_counted(kms)
    assert dict(state.keys) == {}
    assert state.alias_owners == {"alias/pay/nameless": nameless}
    assert state.foreign_keys == frozenset()
    # Its rows lacked the name tag, so they were read once more by id: that is the only extra call.
    assert calls == {"ListTagResources": 2, "DescribeKey": 1, "ListAliases": 1}


# --- adopt: the keys `adopt:` names, whatever their tags say ---------------------------------------


def make_unmanaged(
    kms: Kms, material: PrivateMaterial | None = None, tags: Mapping[str, str] | None = None
) -> str:
    """A key made outside the tool: no reserved tag; imported when `material` is given."""
    meta = kms.create_key(
        spec=KeySpec.EC_P256, usage=KeyUsage.SIGN_VERIFY, protection=ProtectionLevel.SOFTWARE,
        instance="kst-local-software", description="by hand", tags=dict(tags or {}),
    )
    if material is not None:
        algorithm = facts(KeySpec.EC_P256).wrapping_algorithm
        params = kms.get_parameters_for_import(meta.key_id, algorithm)
        blob = wrap(material, params.public_key_der, algorithm)
        kms.import_key_material(meta.key_id, blob, params.import_token, 0)
    return meta.key_id


def test_adopt_by_key_id_alias_and_arn_reads_the_key_its_tags_and_public_key(kms: Kms) -> None:
    mat = new_material()
    by_id = make_unmanaged(kms, mat, {"team": "ops"})
    by_alias = make_unmanaged(kms)
    kms.create_alias("alias/hand/made", by_alias)
    by_arn = make_unmanaged(kms, new_material())
    arn = kms.describe_key(by_arn).arn
    make_key(kms, "ours")

    state, calls = refresh_counted(kms, adopt={"a": by_id, "b": "alias/hand/made", "c": arn})
    a, b, c = (state.adopted[n] for n in "abc")
    assert (a.reference, b.reference, c.reference) == (by_id, "alias/hand/made", arn)
    assert a.key is not None and b.key is not None and c.key is not None
    assert (a.key.key_id, b.key.key_id, c.key.key_id) == (by_id, by_alias, by_arn)
    assert a.key.user_tags == {"team": "ops"} and a.key.stack is None and a.key.origin is Origin.EXTERNAL
    assert b.key.aliases == ("alias/hand/made",)
    # Enabled keys show their public key; a key without material has none to show.
    assert a.key.public_key_fingerprint == mat.fingerprint
    assert b.key.status is KeyStatus.PENDING_IMPORT and b.key.public_key_fingerprint is None
    assert c.key.public_key_fingerprint is not None
    # One DescribeKey per stack key and per key to adopt, their tags in one call by id.
    assert calls["DescribeKey"] == 4 and calls["GetPublicKey"] == 2
    assert calls["ListTagResources"] == 2  # the stack's by filter, the adopted ones by id
    # A key to adopt is not foreign to the stack (its aliases are not someone else's).
    assert by_alias in state.foreign_keys  # refresh only reports; the planner takes adoptable keys in


def test_adopt_that_names_no_key_says_why(kms: Kms) -> None:
    other = make_unmanaged(kms)
    arn = kms.describe_key(other).arn
    region, rest = arn.removeprefix("acs:kms:").split(":", 1)
    elsewhere = f"acs:kms:{'eu-central-1' if region != 'eu-central-1' else 'cn-hangzhou'}:{rest}"
    state, _ = refresh_counted(
        kms,
        adopt={
            "a": "key-doesnotexist", "b": "alias/nobody", "c": elsewhere, "d": "acs:kms:cn-hangzhou:1:alias/x"
        },
    )
    problems = {n: (found.key, found.problem) for n, found in state.adopted.items()}
    assert problems["a"] == (None, "no key key-doesnotexist exists in this account and region")
    assert problems["b"] == (None, "alias alias/nobody does not exist in this account and region")
    assert problems["c"] == (
        None, f"{elsewhere} is not an ARN of this account and region (key {other} here is {arn})"
    )
    assert problems["d"] == (
        None, "acs:kms:cn-hangzhou:1:alias/x is not a KMS key ARN (acs:kms:REGION:ACCOUNT:key/KEY-ID)"
    )


def test_adopt_of_a_stack_key_costs_no_further_call(kms: Kms) -> None:
    ours = make_key(kms, "ours", material=new_material())
    _, plain = refresh_counted(kms)
    state, calls = refresh_counted(kms, adopt={"ours": ours})
    assert calls == plain
    found = state.adopted["ours"].key
    assert found is not None and found == state.keys["ours"][0]
