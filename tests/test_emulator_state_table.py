"""The vendor's key-state table, call by call, through the official SDK's request models on both
backends (the emulator over the wire, the local backend's engine in-process).

Source: "Impact of CMK status on API operations" (KMS developer reference): every refusal is 409,
`Rejected.StateModifiedFailed` for a state change the state forbids, `Rejected.PendingDeletion`
for an update of a key pending deletion. DeleteKeyMaterial's own page: a PendingDeletion key keeps
its state and its deletion date. The notes (kms-api-notes.md): ImportKeyMaterial works in Enabled,
Disabled and PendingImport. UntagResource's row is inferred (see models.untag_resource).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from alibabacloud_kms20160120 import models as kms
from backends import Backend
from emulator_support import material
from Tea.exceptions import TeaException

from provisioner import wrapping
from provisioner.model import KeySpec, WrappingAlgorithm

pytestmark = pytest.mark.slow

ENABLED, DISABLED = "Enabled", "Disabled"
PENDING_IMPORT, PENDING_DELETION = "PendingImport", "PendingDeletion"
STATES = (ENABLED, DISABLED, PENDING_IMPORT, PENDING_DELETION)
MODIFIED_FAILED = "Rejected.StateModifiedFailed"
REJECTED_PENDING_DELETION = "Rejected.PendingDeletion"
ALGORITHM = WrappingAlgorithm.RSA_OAEP_AES_ECB
SPEC = KeySpec.RSA_2048


def _snake(action: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", action).lower()


def call(client: Any, action: str, **params: str) -> dict[str, Any]:
    """One action through the SDK's own request and response models (wire parameter names)."""
    request = getattr(kms, f"{action}Request")().from_map(params)
    body: dict[str, Any] = getattr(client, _snake(action))(request).body.to_map()
    return body


@dataclass
class Prepared:
    """A key brought into a state, with an import of its own material ready to send."""

    key_id: str
    blob: str
    token: str
    delete_date: str | None


def prepare(client: Any, state: str) -> Prepared:
    created = call(
        client, "CreateKey", KeySpec=SPEC.value, KeyUsage="SIGN/VERIFY", Origin="EXTERNAL",
        DKMSInstanceId="kst-local-software",
    )
    key_id = created["KeyMetadata"]["KeyId"]

    def fresh_wrap() -> tuple[str, str]:
        params = call(
            client, "GetParametersForImport", KeyId=key_id, WrappingKeySpec="RSA_2048",
            WrappingAlgorithm=ALGORITHM.value,
        )
        der = base64.b64decode(params["PublicKey"])
        return wrapping.wrap(material(SPEC), der, ALGORITHM), params["ImportToken"]

    if state != PENDING_IMPORT:
        blob, token = fresh_wrap()
        call(client, "ImportKeyMaterial", KeyId=key_id, EncryptedKeyMaterial=blob, ImportToken=token)
    # Made before the state change: GetParametersForImport itself is refused in PendingDeletion.
    blob, token = fresh_wrap()
    if state == DISABLED:
        call(client, "DisableKey", KeyId=key_id)
    if state == PENDING_DELETION:
        call(client, "ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays="7")
    meta = call(client, "DescribeKey", KeyId=key_id)["KeyMetadata"]
    assert meta["KeyState"] == state
    return Prepared(key_id, blob, token, meta.get("DeleteDate"))


def _key(k: Prepared) -> dict[str, str]:
    return {"KeyId": k.key_id}


#: The calls of the table and their parameters for a prepared key.
ACTIONS: dict[str, Callable[[Prepared], dict[str, str]]] = {
    "ImportKeyMaterial": lambda k: {**_key(k), "EncryptedKeyMaterial": k.blob, "ImportToken": k.token},
    "EnableKey": _key,
    "DisableKey": _key,
    "DeleteKeyMaterial": _key,
    "ScheduleKeyDeletion": lambda k: {**_key(k), "PendingWindowInDays": "7"},
    "CancelKeyDeletion": _key,
    "CreateAlias": lambda k: {**_key(k), "AliasName": f"alias/state-{k.key_id}"},
    "UpdateKeyDescription": lambda k: {**_key(k), "Description": "new"},
    "TagResource": lambda k: {**_key(k), "Tags": '[{"TagKey":"k","TagValue":"v"}]'},
    "UntagResource": lambda k: {**_key(k), "TagKeys": '["k"]'},
}

#: (action, state) -> the state after success, or the refusal's code (the state is then unchanged).
TABLE: dict[tuple[str, str], str] = {
    ("ImportKeyMaterial", ENABLED): ENABLED,
    ("ImportKeyMaterial", DISABLED): DISABLED,
    ("ImportKeyMaterial", PENDING_IMPORT): ENABLED,
    ("ImportKeyMaterial", PENDING_DELETION): MODIFIED_FAILED,
    ("EnableKey", ENABLED): ENABLED,
    ("EnableKey", DISABLED): ENABLED,
    ("EnableKey", PENDING_IMPORT): MODIFIED_FAILED,
    ("EnableKey", PENDING_DELETION): MODIFIED_FAILED,
    ("DisableKey", ENABLED): DISABLED,
    ("DisableKey", DISABLED): DISABLED,
    ("DisableKey", PENDING_IMPORT): MODIFIED_FAILED,
    ("DisableKey", PENDING_DELETION): MODIFIED_FAILED,
    ("DeleteKeyMaterial", ENABLED): PENDING_IMPORT,
    ("DeleteKeyMaterial", DISABLED): PENDING_IMPORT,
    ("DeleteKeyMaterial", PENDING_IMPORT): PENDING_IMPORT,
    ("DeleteKeyMaterial", PENDING_DELETION): PENDING_DELETION,
    ("ScheduleKeyDeletion", ENABLED): PENDING_DELETION,
    ("ScheduleKeyDeletion", DISABLED): PENDING_DELETION,
    ("ScheduleKeyDeletion", PENDING_IMPORT): PENDING_DELETION,
    ("ScheduleKeyDeletion", PENDING_DELETION): MODIFIED_FAILED,
    ("CancelKeyDeletion", ENABLED): MODIFIED_FAILED,
    ("CancelKeyDeletion", DISABLED): MODIFIED_FAILED,
    ("CancelKeyDeletion", PENDING_IMPORT): MODIFIED_FAILED,
    ("CancelKeyDeletion", PENDING_DELETION): ENABLED,
    ("CreateAlias", ENABLED): ENABLED,
    ("CreateAlias", DISABLED): DISABLED,
    ("CreateAlias", PENDING_IMPORT): PENDING_IMPORT,
    ("CreateAlias", PENDING_DELETION): MODIFIED_FAILED,
    ("UpdateKeyDescription", ENABLED): ENABLED,
    ("UpdateKeyDescription", DISABLED): DISABLED,
    ("UpdateKeyDescription", PENDING_IMPORT): PENDING_IMPORT,
    ("UpdateKeyDescription", PENDING_DELETION): REJECTED_PENDING_DELETION,
    ("TagResource", ENABLED): ENABLED,
    ("TagResource", DISABLED): DISABLED,
    ("TagResource", PENDING_IMPORT): PENDING_IMPORT,
    ("TagResource", PENDING_DELETION): REJECTED_PENDING_DELETION,
    ("UntagResource", ENABLED): ENABLED,
    ("UntagResource", DISABLED): DISABLED,
    ("UntagResource", PENDING_IMPORT): PENDING_IMPORT,
    ("UntagResource", PENDING_DELETION): REJECTED_PENDING_DELETION,
}


def test_the_table_covers_every_listed_call_in_every_state() -> None:
    missing = {(a, s) for a in ACTIONS for s in STATES} - set(TABLE)
    assert missing == set()


@pytest.mark.parametrize(("action", "state"), sorted(TABLE), ids=lambda v: str(v))
def test_key_state_table(backend: Backend, action: str, state: str) -> None:
    client = backend.sdk_client()
    key = prepare(client, state)
    expected = TABLE[(action, state)]

    if expected in STATES:
        call(client, action, **ACTIONS[action](key))
        after = call(client, "DescribeKey", KeyId=key.key_id)["KeyMetadata"]
        assert after["KeyState"] == expected
        if state == PENDING_DELETION and expected == PENDING_DELETION:
            # DeleteKeyMaterial: "the state of the CMK and the scheduled deletion time do not change"
            assert after["DeleteDate"] == key.delete_date
    else:
        with pytest.raises(TeaException) as refused:
            call(client, action, **ACTIONS[action](key))
        assert refused.value.code == expected
        # The SDK keeps the service's own Message in `data`; the local stand-in raises it as message.
        message = refused.value.data.get("Message", refused.value.message)
        assert re.fullmatch(rf"key {key.key_id} is (already )?{state}\b.*", message)
        if backend.kind == "alibaba":
            assert refused.value.data["statusCode"] == 409
        after = call(client, "DescribeKey", KeyId=key.key_id)["KeyMetadata"]
        assert (after["KeyState"], after.get("DeleteDate")) == (state, key.delete_date)
