"""discover's pieces (DESIGN section 10): names from aliases, unique in the document; template syntax a
live key holds renders as itself; the YAML emitter keeps every control character out and round-trips;
only EXTERNAL keys are read as discoverable.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from provisioner.backend.base import Kms
from provisioner.backend.local import LocalTransport
from provisioner.discover import Discovery, FoundKey, discover, key_name
from provisioner.escape import visible
from provisioner.model import KeySpec, KeyState, KeyUsage, ProtectionLevel
from provisioner.sandbox import ManifestSandbox
from provisioner.views.discover import neutralise_template, render_discovery_yaml

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def test_a_key_is_named_after_its_first_alias_else_its_key_id() -> None:
    assert key_name(["alias/z", "alias/payments/receipts"], "key-1") == "payments-receipts"
    assert key_name([], "key-abc") == "key-abc"
    # A name the manifest would refuse (leading '-' or '_', too long) falls back to the key id.
    assert key_name(["alias/-x"], "key-abc") == "key-abc"
    assert key_name(["alias/_x"], "key-abc") == "key-abc"
    assert key_name(["alias/" + "a" * 129], "key-abc") == "key-abc"
    assert key_name(["alias/" + "a" * 128], "key-abc") == "a" * 128


def found(key_id: str, aliases: tuple[str, ...] = (), **fields: Any) -> FoundKey:
    values: dict[str, Any] = {
        "name": "", "key_id": key_id, "state": KeyState.ENABLED, "spec": KeySpec.EC_P256,
        "usage": KeyUsage.SIGN_VERIFY, "protection": ProtectionLevel.SOFTWARE, "instance": "kst-1",
        "description": "", "aliases": aliases, "tags": {}, "expiry": None, "deletion_protection": False,
        "fingerprint": None,
    }
    values.update(fields)
    return FoundKey(**values)


def rendered(text: str) -> Any:
    """The document as the manifest loader reads it: rendered by the manifest sandbox, then YAML."""
    return yaml.safe_load(ManifestSandbox().from_string(text).render())


def test_names_are_unique_in_the_document() -> None:
    from provisioner.discover import _named

    keys = _named(
        [found("key-2", ("alias/a/b",)), found("key-1", ("alias/a-b",)), found("key-3", ("alias/a/b",))]
    )
    assert [(k.name, k.key_id) for k in keys] == [("a-b", "key-1"), ("a-b-2", "key-2"), ("a-b-3", "key-3")]
    doc = rendered(render_discovery_yaml(Discovery(keys, stack="s", source="local:kms.db")))
    assert list(doc["keys"]) == ["a-b", "a-b-2", "a-b-3"]
    assert [doc["keys"][k.name]["adopt"] for k in keys] == ["key-1", "key-2", "key-3"]


@given(st.text(st.characters(blacklist_characters="\r")))
def test_template_syntax_renders_as_itself(text: str) -> None:
    # The emitter's text holds no raw \r (YAML escapes it), which Jinja would turn into \n.
    assert ManifestSandbox().from_string(neutralise_template(text)).render() == text


@given(st.text(), st.dictionaries(st.text(min_size=1), st.text(), max_size=3))
def test_any_description_and_tags_round_trip_and_print_nothing_raw(
    description: str, tags: dict[str, str]
) -> None:
    pin = "sha256:" + "a" * 64
    key = found("key-1", ("alias/x",), name="x", description=description, tags=tags, fingerprint=pin)
    text = render_discovery_yaml(Discovery((key,), stack="s", source="local:kms.db"))
    assert visible(text, keep="\n") == text  # no control, bidi or invisible character, escaped or not
    doc = rendered(text)
    entry = doc["keys"]["x"]
    assert (entry["description"], entry["tags"]) == (description, tags)
    assert entry["material"] == {"fingerprint": "sha256:" + "a" * 64}


def test_an_empty_discovery_is_a_valid_document() -> None:
    text = render_discovery_yaml(Discovery((), stack="s", source="local:kms.db"))
    assert rendered(text) == {"version": 1, "stack": "s", "keys": {}}


class OneForeignOrigin:
    """The local engine, except that DescribeKey reports `key_id` as a KMS-made (Aliyun_KMS) key: the
    emulator makes EXTERNAL keys only."""

    def __init__(self, inner: LocalTransport, key_id: str) -> None:
        self.inner = inner
        self.key_id = key_id

    def call(self, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        body = self.inner.call(action, params)
        if action == "DescribeKey" and body["KeyMetadata"]["KeyId"] == self.key_id:
            body["KeyMetadata"]["Origin"] = "Aliyun_KMS"
        return body

    def close(self) -> None:
        self.inner.close()


def test_only_external_keys_are_discovered_with_the_tags_a_manifest_may_declare(tmp_path: Path) -> None:
    local = LocalTransport(tmp_path / "kms.db")
    kms = Kms(local)
    # A key stripped of its stack tag by hand still carries a name tag: no manifest may declare that one.
    tags = [{}, {"team": "a", "byok-provisioner:name": "x"}]
    made = [
        kms.create_key(
            spec=KeySpec.EC_P256, usage=KeyUsage.SIGN_VERIFY, protection=ProtectionLevel.SOFTWARE,
            instance="kst-local-software", description=f"key {i}", tags=tags[i],
        ).key_id
        for i in range(2)
    ]
    seen = discover(Kms(OneForeignOrigin(local, made[0])), now=NOW)
    assert [(k.key_id, dict(k.tags)) for k in seen.keys] == [(made[1], {"team": "a"})]
    assert seen.notes == (
        f"key {made[1]}: tag(s) byok-provisioner:name left out: a manifest cannot declare them",
    )
    kms.close()
