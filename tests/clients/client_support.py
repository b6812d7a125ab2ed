"""What every client suite shares: `provision emulator serve` in a subprocess, the vendor's BYOK flow as a
record, one check of that record, and the error answers each client must surface.

A client suite drives its own SDK; the flow's record has the same keys whichever client (Python or Node)
made it, so `check_flow` is the one place that says what a correct run looks like. Records hold public
values only: no material, no import token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from alibabacloud_kms20160120 import models as kms
from alibabacloud_kms20160120.client import Client
from alibabacloud_tea_openapi.models import Config
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from provisioner import wrapping
from provisioner.material import PrivateMaterial
from provisioner.model import WrappingAlgorithm

REPO = Path(__file__).resolve().parents[2]
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")
READY_TIMEOUT = 30.0

ACCESS_KEY_ID = "LTAI5tKmsEmulatorLocal"
# A non-default secret, so that a client left on the public default fails loudly.
ACCESS_KEY_SECRET = "client-suite-secret"
WRONG_SECRET = "not-the-client-suite-secret"
REGION = "cn-hangzhou"
API_VERSION = "2016-01-20"
INSTANCE = "kst-local-software"
WRAPPING_ALGORITHM = WrappingAlgorithm.RSA_OAEP_AES_ECB
SIGNING_ALGORITHM = "RSA_PKCS1_SHA_256"
MISSING_KEY_ID = "key-clientsuite00000000000000"

TAGS_AT_CREATE = [{"TagKey": "team", "TagValue": "payments"}]
TAGS_ADDED = [{"TagKey": "env", "TagValue": "ci"}]
TAG_KEYS_REMOVED = ["team"]


@dataclass(frozen=True)
class Served:
    """A running `provision emulator serve` and what a client needs to reach it."""

    endpoint: str  # host:port, as the SDKs take it


@contextmanager
def serve_emulator() -> Iterator[Served]:
    """`provision emulator serve` on a free port with the suite's credentials, the proxy variables cleared
    for this process too (the SDKs proxy even loopback). Stopped with SIGTERM afterwards; it must exit 0
    and must have printed no traceback."""
    with pytest.MonkeyPatch.context() as patch:
        for name in PROXY_VARIABLES:
            patch.delenv(name, raising=False)
        env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        command = [
            sys.executable, "-c", "from provisioner.cli import main; main()", "emulator", "serve",
            "--port", "0", "--access-key-id", ACCESS_KEY_ID, "--access-key-secret", ACCESS_KEY_SECRET,
        ]
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO
        )
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
            assert ready, "the emulator printed no ready line in time"
            line = proc.stdout.readline()
            assert line.startswith("listening on http://127.0.0.1:"), line
            yield Served(line.removeprefix("listening on http://").strip())
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=READY_TIMEOUT)
        assert proc.returncode == 0, err
        assert "Traceback" not in err and "internal failure" not in err, err


# -- the flow --------------------------------------------------------------------------------------

Call = Callable[[str, Mapping[str, str]], dict[str, Any]]


def tag_pairs(body: Mapping[str, Any]) -> list[list[str]]:
    """ListResourceTags' tags as sorted [key, value] pairs."""
    return sorted([t["TagKey"], t["TagValue"]] for t in body["Tags"]["Tag"])


def digest_of(label: str) -> bytes:
    return hashlib.sha256(f"release signed by {label}".encode()).digest()


def run_flow(call: Call, material: PrivateMaterial, label: str) -> dict[str, Any]:
    """The vendor's BYOK flow through `call` (one client's way of sending one action), recorded.

    `label` names the client: it goes into the alias and the digest so that runs cannot mix."""
    record: dict[str, Any] = {}
    created = call(
        "CreateKey",
        {
            "KeySpec": "RSA_2048", "KeyUsage": "SIGN/VERIFY", "Origin": "EXTERNAL",
            "DKMSInstanceId": INSTANCE, "Description": f"client suite: {label}",
            "Tags": json.dumps(TAGS_AT_CREATE),
        },
    )["KeyMetadata"]
    key_id = created["KeyId"]
    record.update(key_id=key_id, created=created)
    record["tags_at_create"] = tag_pairs(call("ListResourceTags", {"KeyId": key_id}))

    params = call(
        "GetParametersForImport",
        {"KeyId": key_id, "WrappingKeySpec": "RSA_2048", "WrappingAlgorithm": WRAPPING_ALGORITHM.value},
    )
    record["import_parameters"] = sorted(k for k in params if k != "RequestId")
    wrapping_key = wrapping.load_wrapping_public_key(params["PublicKey"].encode("ascii"))
    call(
        "ImportKeyMaterial",
        {
            "KeyId": key_id, "ImportToken": params["ImportToken"],
            "EncryptedKeyMaterial": wrapping.wrap(material, wrapping_key, WRAPPING_ALGORITHM),
        },
    )
    described = call("DescribeKey", {"KeyId": key_id})["KeyMetadata"]
    record["imported"] = described
    version = described["PrimaryKeyVersion"]
    record["public_key_pem"] = call("GetPublicKey", {"KeyId": key_id, "KeyVersionId": version})["PublicKey"]

    digest = base64.b64encode(digest_of(label)).decode("ascii")
    signed = call(
        "AsymmetricSign",
        {"KeyId": key_id, "KeyVersionId": version, "Algorithm": SIGNING_ALGORITHM, "Digest": digest},
    )
    record.update(digest_b64=digest, signature_b64=signed["Value"])
    record["verified"] = call(
        "AsymmetricVerify",
        {
            "KeyId": key_id, "KeyVersionId": version, "Algorithm": SIGNING_ALGORITHM,
            "Digest": digest, "Value": signed["Value"],
        },
    )["Value"]

    call("TagResource", {"KeyId": key_id, "Tags": json.dumps(TAGS_ADDED)})
    record["tags_after_tag"] = tag_pairs(call("ListResourceTags", {"KeyId": key_id}))
    call("UntagResource", {"KeyId": key_id, "TagKeys": json.dumps(TAG_KEYS_REMOVED)})
    record["tags_after_untag"] = tag_pairs(call("ListResourceTags", {"KeyId": key_id}))

    alias = f"alias/client-suite/{label}"
    call("CreateAlias", {"KeyId": key_id, "AliasName": alias})
    aliases = call("ListAliasesByKeyId", {"KeyId": key_id})["Aliases"]["Alias"]
    record["aliases"] = sorted(a["AliasName"] for a in aliases)
    record["alias"] = alias

    call("DeleteKeyMaterial", {"KeyId": key_id})
    record["material_deleted"] = call("DescribeKey", {"KeyId": key_id})["KeyMetadata"]
    call("ScheduleKeyDeletion", {"KeyId": key_id, "PendingWindowInDays": "7"})
    record["scheduled"] = call("DescribeKey", {"KeyId": key_id})["KeyMetadata"]
    return record


KEY_FIELDS = ("KeyId", "KeyState", "KeySpec", "KeyUsage", "Origin", "ProtectionLevel", "DKMSInstanceId")


def _fields(meta: Mapping[str, Any], dropped: frozenset[str]) -> dict[str, Any]:
    """The KeyMetadata fields the flow checks, less those the client's models do not carry; a dropped
    field must really be absent, so that the list stays true."""
    for name in dropped:
        assert name not in meta, (name, meta)
    out = {name: meta.get(name) for name in KEY_FIELDS if name not in dropped}
    out["HasDeleteDate"] = bool(meta.get("DeleteDate"))
    return out


def check_flow(
    record: Mapping[str, Any], material_public_der: bytes, label: str, dropped: frozenset[str] = frozenset()
) -> None:
    """Assert that one client's run of the flow went as the vendor's guide says. `dropped` names the
    KeyMetadata fields this client's response models leave out."""
    key_id = record["key_id"]
    assert key_id.startswith("key-"), key_id
    expected = {
        "KeyId": key_id, "KeySpec": "RSA_2048", "KeyUsage": "SIGN/VERIFY", "Origin": "EXTERNAL",
        "ProtectionLevel": "SOFTWARE", "DKMSInstanceId": INSTANCE, "HasDeleteDate": False,
    }
    for name in dropped:
        del expected[name]

    assert _fields(record["created"], dropped) == {**expected, "KeyState": "PendingImport"}
    assert record["tags_at_create"] == [["team", "payments"]]
    assert record["import_parameters"] == ["ImportToken", "KeyId", "PublicKey", "TokenExpireTime"]
    assert _fields(record["imported"], dropped) == {**expected, "KeyState": "Enabled"}

    served_public = serialization.load_pem_public_key(record["public_key_pem"].encode("ascii"))
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert served_public.public_bytes(serialization.Encoding.DER, spki) == material_public_der
    digest = base64.b64decode(record["digest_b64"])
    assert digest == digest_of(label)
    public = serialization.load_der_public_key(material_public_der)
    assert isinstance(public, rsa.RSAPublicKey)
    # Raises InvalidSignature unless the emulator signed with the imported material.
    public.verify(
        base64.b64decode(record["signature_b64"]), digest, padding.PKCS1v15(), Prehashed(hashes.SHA256())
    )
    assert record["verified"] is True

    assert record["tags_after_tag"] == [["env", "ci"], ["team", "payments"]]
    assert record["tags_after_untag"] == [["env", "ci"]]
    assert record["aliases"] == [record["alias"]] == [f"alias/client-suite/{label}"]
    assert _fields(record["material_deleted"], dropped) == {**expected, "KeyState": "PendingImport"}
    scheduled = {**expected, "KeyState": "PendingDeletion", "HasDeleteDate": True}
    assert _fields(record["scheduled"], dropped) == scheduled


def check_with_official_sdk(served: Served, record: Mapping[str, Any]) -> None:
    """What another client left behind, read back through the official SDK: a key pending deletion, its
    material gone, the tag and the alias the flow left on it."""
    client = Client(
        Config(
            endpoint=served.endpoint, protocol="http", region_id=REGION, access_key_id=ACCESS_KEY_ID,
            access_key_secret=ACCESS_KEY_SECRET,
        )
    )
    key_id = record["key_id"]
    meta = client.describe_key(kms.DescribeKeyRequest(key_id=key_id)).body.key_metadata
    assert (meta.key_state, meta.origin, meta.dkmsinstance_id) == ("PendingDeletion", "EXTERNAL", INSTANCE)
    tags = client.list_resource_tags(kms.ListResourceTagsRequest(key_id=key_id)).body.tags.tag
    assert [(t.tag_key, t.tag_value) for t in tags] == [("env", "ci")]
    aliases = client.list_aliases_by_key_id(kms.ListAliasesByKeyIdRequest(key_id=key_id)).body.aliases.alias
    assert [a.alias_name for a in aliases] == [record["alias"]]


# -- the error answers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """One error as the service answers it: HTTP status, Code, and Message (or how Message starts)."""

    status: int
    code: str
    message: str
    exact: bool = True

    def matches(self, message: str) -> bool:
        return message == self.message if self.exact else message.startswith(self.message)


ERRORS: dict[str, Expected] = {
    # The service goes on with " server string to sign is:..." on a V2 request.
    "wrong_secret": Expected(
        400, "SignatureDoesNotMatch", "Specified signature is not matched with our calculation.", exact=False
    ),
    "unknown_action": Expected(
        404, "InvalidAction.NotFound", "Specified api is not found, please check your url and method."
    ),
    "replayed_nonce": Expected(400, "SignatureNonceUsed", "Specified signature nonce was used already."),
    "missing_parameter": Expected(
        400,
        "MissingParameter",
        "The input parameter KeyId that is mandatory for processing this request is not supplied.",
    ),
    # The service's text ends at "found."; the emulator names the key after a colon.
    "unknown_key": Expected(404, "Forbidden.KeyNotFound", "The specified Key is not found", exact=False),
}
#: Cases for the clients that parse an XML error body (`Format=XML`): the same answer, in XML.
XML_ERRORS: dict[str, Expected] = {"unknown_key_xml": ERRORS["unknown_key"]}

UNKNOWN_ACTION = "NoSuchAction"
TROUBLESHOOT = "https://api.aliyun.com/troubleshoot?"


def check_error_body(body: Mapping[str, Any], expected: Expected) -> None:
    """The parts of the vendor's error body beyond Code and Message, for the clients that keep it."""
    assert (body["Code"], bool(body["RequestId"]), bool(body["HostId"])) == (expected.code, True, True), body
    recommend = urlsplit(body["Recommend"])
    assert body["Recommend"].startswith(TROUBLESHOOT), body
    assert parse_qs(recommend.query)["q"] == [expected.code], body
