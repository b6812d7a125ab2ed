"""Property tests for the manifest rules: valid tag/alias sets load, forbidden ones are rejected,
and the fast schema check always agrees with jsonschema."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from provisioner import manifest
from provisioner.errors import ManifestError
from provisioner.model import is_reserved_alias

TAG_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 /\\_-.+=:@"
ALIAS_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-/"
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _allowed_tag_key(key: str) -> bool:
    lowered = key.lower()
    return not lowered.startswith(("aliyun", "acs:", "byok-provisioner:"))


tag_keys = st.text(TAG_ALPHABET, min_size=1, max_size=128).filter(_allowed_tag_key)
tag_values = st.text(TAG_ALPHABET, min_size=1, max_size=128)
tag_sets = st.dictionaries(tag_keys, tag_values, max_size=manifest.MAX_USER_TAGS)
alias_names = (
    st.text(ALIAS_ALPHABET, min_size=1, max_size=255)
    .map(lambda s: "alias/" + s)
    .filter(lambda a: not a.lower().startswith("alias/acs") and not is_reserved_alias(a))
)
alias_sets = st.lists(alias_names, unique=True, max_size=6)


def _load_doc(doc: dict[str, Any]) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        return manifest.load_manifests([path], variables={}, environ={})


def _strings(data: Any, is_key: bool = False) -> list[tuple[str, bool]]:
    """Every string of a document in document order, with whether it is a mapping key."""
    if isinstance(data, str):
        return [(data, is_key)]
    if isinstance(data, dict):
        return [s for k, v in data.items() for s in (*_strings(k, True), *_strings(v))]
    if isinstance(data, list):
        return [s for v in data for s in _strings(v)]
    return []


def _holds_pem_line(doc: dict[str, Any]) -> bool:
    """DESIGN 9: a PEM BEGIN line in the strings, alone or joined (with or without the mapping keys
    between them), is refused whatever else is valid. Hypothesis draws the code's own string constants,
    so "-----BEGIN" does turn up in generated aliases and tags."""
    strings = _strings(doc)
    joins = ("".join(t for t, _ in strings), "".join(t for t, is_key in strings if not is_key))
    return any("-----BEGIN" in text for text in joins)


def _doc(tags: dict[str, str], aliases: list[str]) -> dict[str, Any]:
    return {
        "stack": "props",
        "defaults": {"instance": "kst-x"},
        "keys": {
            "k": {
                "spec": "EC_P256",
                "usage": "SIGN/VERIFY",
                "tags": tags,
                "aliases": aliases,
                "material": {"env": "K"},
            },
        },
    }


@SETTINGS
@given(tags=tag_sets, aliases=alias_sets)
def test_valid_tags_and_aliases_are_accepted(tags: dict[str, str], aliases: list[str]) -> None:
    doc = _doc(tags, aliases)
    assume(not _holds_pem_line(doc))
    ms = _load_doc(doc)
    (key,) = ms.keys
    assert dict(key.tags) == tags
    assert key.aliases == tuple(sorted(aliases))


forbidden_chars = st.characters(blacklist_characters=TAG_ALPHABET, blacklist_categories=["Cs"])


@SETTINGS
@given(
    base=st.text(TAG_ALPHABET, min_size=1, max_size=60).filter(_allowed_tag_key),
    bad=forbidden_chars,
    at=st.integers(min_value=0, max_value=60),
)
def test_tag_key_with_forbidden_character_is_rejected(base: str, bad: str, at: int) -> None:
    key = base[:at] + bad + base[at:]
    problem = manifest.tag_key_problem(key)
    assert problem is not None and "contains the character" in problem
    value_problem = manifest.tag_value_problem("k", key)
    assert value_problem is not None and "contains the character" in value_problem


@SETTINGS
@given(
    prefix=st.sampled_from(["aliyun", "acs:", "byok-provisioner:"]),
    rest=st.text(TAG_ALPHABET, max_size=40),
    upper=st.lists(st.booleans(), min_size=17, max_size=17),
)
def test_tag_key_with_forbidden_prefix_is_rejected(prefix: str, rest: str, upper: list[bool]) -> None:
    cased = "".join(c.upper() if u else c for c, u in zip(prefix, upper, strict=False))
    key = (cased + rest)[:128]
    problem = manifest.tag_key_problem(key)
    assert problem is not None
    assert ("must not start with" in problem) or ("reserved for the provisioner" in problem)


@SETTINGS
@given(
    base=st.text(ALIAS_ALPHABET, min_size=1, max_size=60),
    bad=st.characters(blacklist_characters=ALIAS_ALPHABET, blacklist_categories=["Cs"]),
    at=st.integers(min_value=0, max_value=60),
)
def test_alias_with_forbidden_character_is_rejected(base: str, bad: str, at: int) -> None:
    alias = "alias/b" + base[:at] + bad + base[at:]
    problem = manifest.alias_problem(alias)
    assert problem is not None and "contains the character" in problem


@SETTINGS
@given(rest=st.text(ALIAS_ALPHABET, max_size=30), upper=st.lists(st.booleans(), min_size=3, max_size=3))
def test_alias_under_acs_is_rejected(rest: str, upper: list[bool]) -> None:
    acs = "".join(c.upper() if u else c for c, u in zip("acs", upper, strict=True))
    assert (
        manifest.alias_problem(f"alias/{acs}{rest}")
        == f'alias "alias/{acs}{rest}" must not start with "alias/acs"'
    )


@settings(max_examples=25, deadline=None)
@given(tags=tag_sets, bad_key=st.sampled_from(["acs:x", "Aliyun", "byok-provisioner:name", "a#b", ""]))
def test_forbidden_tag_in_a_manifest_fails_the_load(tags: dict[str, str], bad_key: str) -> None:
    doc = _doc({**dict(list(tags.items())[:10]), bad_key: "v"}, [])
    try:
        _load_doc(doc)
    except ManifestError as e:
        assert any("tag key" in d.message for d in e.diagnostics), e.diagnostics
    else:
        raise AssertionError(f"tag key {bad_key!r} was accepted")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 400)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(
        ["", "x", "RSA_2048", "SIGN/VERIFY", "HSM", "never", "alias/a", "sha256:" + "a" * 64, "1"]
    ),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["spec", "usage", "file", "env", "tags", "x", "material", "state"]),
            children,
            max_size=3,
        )
    ),
    max_leaves=6,
)
FIELDS = [
    "spec",
    "usage",
    "instance",
    "protection",
    "description",
    "aliases",
    "tags",
    "expiry",
    "deletion_protection",
    "deletion_window_days",
    "material",
    "state",
    "unknown",
]


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(FIELDS),
    value=json_values,
    top=st.sampled_from(["version", "stack", "keys", "defaults"]),
    top_value=json_values,
    mutate_top=st.booleans(),
)
def test_fast_schema_check_agrees_with_jsonschema(
    field: str, value: Any, top: str, top_value: Any, mutate_top: bool
) -> None:
    doc = _doc({"a": "b"}, ["alias/a"])
    doc["keys"]["k"][field] = value
    if mutate_top:
        doc[top] = top_value
    assert manifest.schema_is_valid(doc) == manifest.schema._validator().is_valid(doc)
