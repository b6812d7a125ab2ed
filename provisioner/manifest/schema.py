"""The manifest JSON Schema: loaded once, a fast compiled yes/no check, and located diagnostics.

Reads only provisioner/schemas/manifest.schema.json; semantic rules live in rules.py.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from provisioner.manifest.positions import Doc
from provisioner.manifest.words import (
    TYPE_NAMES,
    DocPath,
    path_words,
    show_value,
)
from provisioner.model import (
    Diagnostic,
    Diagnostics,
)

SCHEMA_FILE = Path(__file__).parent.parent / "schemas" / "manifest.schema.json"

# Human hints for the schema's patterns, so a pattern failure reads as a rule, not a regex.
_PATTERN_HINTS = {
    "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$": (
        "expected 1..128 of letters, digits, '_', '-', '.', starting with a letter or digit"
    ),
    "^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$": "expected a KMS instance id such as kst-hzz6xxxxxxxx",
    "^[A-Za-z_][A-Za-z0-9_]*$": "expected an environment variable name",
    "^(sha256:[0-9a-f]{64}|kcv:[0-9a-f]{16})$": (
        'expected "sha256:" followed by 64 lowercase hex digits (a symmetric key: "kcv:" followed by 16)'
    ),
    "^[1-9][0-9]{0,4}[hd]$": 'expected 1..99999 followed by "h" (hours) or "d" (days), e.g. "30d"',
}


#: A subschema's list of keywords that only editors use: rules.py checks the same thing (alias and
#: tag characters, the tag cap, the expiry format, one material source) with a located message of
#: its own, so validate's schema stage skips them rather than report each problem twice.
EDITOR_ONLY = "x-editor-only"


@functools.cache
def manifest_schema() -> dict[str, Any]:
    """The manifest JSON Schema as published (`provision schema`, editors), read once."""
    return cast(dict[str, Any], json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))


def _without_editor_only(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_without_editor_only(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    skipped = set(schema.get(EDITOR_ONLY, ())) | {EDITOR_ONLY}
    return {k: _without_editor_only(v) for k, v in schema.items() if k not in skipped}


@functools.cache
def _checked_schema() -> dict[str, Any]:
    """The schema validate checks: the published one less its editor-only keywords."""
    return cast(dict[str, Any], _without_editor_only(manifest_schema()))


@functools.cache
def _validator() -> Draft202012Validator:
    # Compiled once per process: building the validator costs more than validating a file.
    Draft202012Validator.check_schema(manifest_schema())
    schema = _checked_schema()
    return Draft202012Validator(schema)


# A fast yes/no check compiled from the same schema. jsonschema spends ~2 ms per key walking the
# schema; a 5,000-key set must validate in seconds. Valid documents (the common case) are decided
# here; only a document this check rejects goes through jsonschema, which then produces every
# error with its path. Keywords the compiler does not know make it refuse, and jsonschema decides.

_Check = Callable[[Any], bool]
_ANNOTATIONS = frozenset(
    {"$schema", "$id", "$defs", "title", "description", "$comment", "default", "examples"}
)


class _Unsupported(Exception):
    """The schema uses a keyword the fast check does not implement."""


def _json_type_ok(kind: str, value: Any) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if isinstance(value, bool):
        return False
    if kind == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if kind == "number":
        return isinstance(value, int | float)
    raise _Unsupported(kind)


def _json_equal(a: Any, b: Any) -> bool:
    # JSON equality: true is not 1, and 1 equals 1.0.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    return bool(a == b) and (isinstance(a, int | float) == isinstance(b, int | float))


def _compile(schema: Any, root: dict[str, Any]) -> _Check:
    if schema is True:
        return lambda _v: True
    if schema is False:
        return lambda _v: False
    if not isinstance(schema, dict):
        raise _Unsupported(repr(schema))
    checks: list[_Check] = []
    for keyword, arg in schema.items():
        if keyword in _ANNOTATIONS:
            continue
        checks.append(_keyword(keyword, arg, schema, root))
    if len(checks) == 1:
        return checks[0]
    return lambda v: all(check(v) for check in checks)


def _keyword(keyword: str, arg: Any, schema: dict[str, Any], root: dict[str, Any]) -> _Check:
    if keyword == "$ref":
        if not isinstance(arg, str) or not arg.startswith("#/$defs/"):
            raise _Unsupported(str(arg))
        target = root["$defs"][arg.removeprefix("#/$defs/")]
        compiled: list[_Check] = []  # resolved lazily: definitions may refer to each other
        def ref(v: Any) -> bool:
            if not compiled:
                compiled.append(_compile(target, root))
            return compiled[0](v)
        return ref
    if keyword == "type":
        kinds = tuple(arg) if isinstance(arg, list) else (arg,)
        for kind in kinds:
            _json_type_ok(kind, None)  # raises on a type name it does not know
        return lambda v: any(_json_type_ok(k, v) for k in kinds)
    if keyword == "enum":
        return lambda v: any(_json_equal(v, c) for c in arg)
    if keyword == "const":
        return lambda v: _json_equal(v, arg)
    if keyword == "pattern":
        search = re.compile(arg).search
        return lambda v: not isinstance(v, str) or search(v) is not None
    if keyword == "minLength":
        return lambda v: not isinstance(v, str) or len(v) >= arg
    if keyword == "maxLength":
        return lambda v: not isinstance(v, str) or len(v) <= arg
    if keyword == "minItems":
        return lambda v: not isinstance(v, list) or len(v) >= arg
    if keyword == "minimum":
        return lambda v: not _json_type_ok("number", v) or v >= arg
    if keyword == "maximum":
        return lambda v: not _json_type_ok("number", v) or v <= arg
    if keyword == "required":
        names = tuple(arg)
        return lambda v: not isinstance(v, dict) or all(n in v for n in names)
    if keyword == "items":
        item = _compile(arg, root)
        return lambda v: not isinstance(v, list) or all(item(x) for x in v)
    if keyword == "propertyNames":
        name = _compile(arg, root)
        return lambda v: not isinstance(v, dict) or all(name(k) for k in v)
    if keyword == "properties":
        props = {k: _compile(sub, root) for k, sub in arg.items()}
        return lambda v: not isinstance(v, dict) or all(props[k](v[k]) for k in props if k in v)
    if keyword == "additionalProperties":
        known = frozenset(schema.get("properties", {}))
        if "patternProperties" in schema:
            raise _Unsupported("patternProperties")
        extra = _compile(arg, root)
        return lambda v: not isinstance(v, dict) or all(extra(x) for k, x in v.items() if k not in known)
    raise _Unsupported(keyword)


@functools.cache
def _fast_check() -> _Check | None:
    try:
        return _compile(_checked_schema(), _checked_schema())
    except _Unsupported:
        return None


def schema_is_valid(data: Any) -> bool:
    """Whether `data` satisfies the manifest schema (fast path; jsonschema when unsure)."""
    check = _fast_check()
    return check(data) if check is not None else bool(_validator().is_valid(data))

def schema_diagnostics(doc: Doc) -> Diagnostics:
    out = Diagnostics()
    if schema_is_valid(doc.data):
        return out
    for error in _validator().iter_errors(doc.data):
        _schema_error(doc, error, out)
    return out


def _schema_error(doc: Doc, error: ValidationError, out: Diagnostics) -> None:
    """Add the located diagnostics of one schema error to `out`: one per unknown or missing field."""
    path: DocPath = tuple(error.absolute_path)
    where = path_words(path)
    value = error.instance
    kind = error.validator
    expected: Any = error.validator_value
    schema: dict[str, Any] = error.schema if isinstance(error.schema, dict) else {}
    if kind == "additionalProperties" and isinstance(value, dict):
        allowed = sorted(schema.get("properties", {}))
        for extra in value:
            if extra in allowed:
                continue
            close = difflib.get_close_matches(extra, allowed, n=1)
            did_you_mean = f' (did you mean "{close[0]}"?)' if close else ""
            out.add(
                Diagnostic(doc.key_loc((*path, extra)), f'unknown field "{extra}" in {where}{did_you_mean}')
            )
        return
    if kind == "required" and isinstance(value, dict):
        out.extend(
            Diagnostic(doc.loc(path), f'missing required field "{field_name}" in {where}')
            for field_name in expected
            if field_name not in value
        )
        return
    if "propertyNames" in error.schema_path:
        name = str(value)
        hint = _PATTERN_HINTS.get(str(expected), "invalid name")
        message = f"key name {doc.show(name)} in {where} is invalid: {hint}"
        out.add(Diagnostic(doc.key_loc((*path, name)), message))
        return
    # Every other error is one diagnostic at the value.
    if kind == "type":
        types = expected if isinstance(expected, list) else [expected]
        # "null" is allowed for some fields only to permit an empty block; it is no advice.
        names = [TYPE_NAMES.get(str(t), str(t)) for t in types if t != "null"]
        quote = " (quote it)" if "a string" in names and isinstance(value, int | float | bool) else ""
        problem = f"{doc.show(value)} is not {' or '.join(names)}{quote}"
    elif kind == "enum":
        choices = ", ".join(str(c) for c in expected)
        problem = f"{doc.show(value)} is not one of {choices}"
    elif kind == "const":
        problem = f"{doc.show(value)} is not supported; expected {show_value(expected)}"
    elif kind == "pattern":
        hint = _PATTERN_HINTS.get(str(expected), f"expected to match {expected}")
        problem = f"{doc.show(value)} is invalid: {hint}"
    elif kind in ("minimum", "maximum"):
        low, high = schema.get("minimum"), schema.get("maximum")
        problem = f"{doc.show(value)} is out of range {low}..{high}"
    elif kind == "maxLength" and isinstance(value, str):
        problem = f"{doc.show(value, 40)} is {len(value)} characters long; at most {expected} allowed"
    elif kind in ("minLength", "minItems"):
        problem = f"{doc.show(value)} must not be empty"
    else:
        problem = error.message
    out.add(Diagnostic(doc.loc(path), f"{where}: {problem}"))
