"""Manifest loading: Jinja2 render -> YAML with positions -> JSON Schema -> semantic rules -> DesiredKeys.

Every problem found becomes a located Diagnostic and all of them are raised together in one
ManifestError. This module never prints, never calls a KMS, and reads private material only
in `check_material`, through `provisioner.material`.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import jinja2
import jinja2.sandbox
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from provisioner.errors import ManifestError, MaterialError
from provisioner.model import (
    DEFAULT_DELETION_WINDOW_DAYS,
    IMPORTABLE_SPECS,
    MAX_TAGS_PER_KEY,
    RESERVED_TAGS,
    BackendConfig,
    DesiredKey,
    DesiredState,
    Diagnostic,
    KeySpec,
    KeyUsage,
    Location,
    ManifestSet,
    MaterialSource,
    ProtectionLevel,
    SourceKind,
)

if TYPE_CHECKING:  # the crypto stack is imported only where material is read
    from provisioner.material import PrivateMaterial

SCHEMA_FILE = Path(__file__).parent / "schemas" / "manifest.schema.json"

#: Tag keys and values: 1..128 of letters, digits, space and / \ _ - . + = : @ (KMS tag rules).
TAG_RE = re.compile(r"[A-Za-z0-9 /\\_.+=:@-]{1,128}")
TAG_CHARS_HINT = "letters, digits, space and / \\ _ - . + = : @"
#: Prefixes KMS reserves for itself (compared case-insensitively), plus the provisioner's own.
FORBIDDEN_TAG_PREFIXES = ("aliyun", "acs:")
RESERVED_TAG_PREFIX = "byok-provisioner:"
MAX_USER_TAGS = MAX_TAGS_PER_KEY - len(RESERVED_TAGS)
#: Aliases: alias/ followed by 1..255 of letters, digits, _ - / (KMS alias rules).
ALIAS_RE = re.compile(r"alias/[A-Za-z0-9_/-]{1,255}")
FORBIDDEN_ALIAS_PREFIX = "alias/acs"
RFC3339_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})"
)
MANIFEST_SUFFIXES = (".yaml", ".yml")

# Human hints for the schema's patterns, so a pattern failure reads as a rule, not a regex.
_PATTERN_HINTS = {
    "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$": (
        "expected 1..128 of letters, digits, '_', '-', '.', starting with a letter or digit"
    ),
    "^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$": "expected a KMS instance id such as kst-hzz6xxxxxxxx",
    "^[A-Za-z_][A-Za-z0-9_]*$": "expected an environment variable name",
    "^sha256:[0-9a-f]{64}$": 'expected "sha256:" followed by 64 lowercase hex digits',
}

_TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "boolean": "true or false",
    "number": "a number",
}

_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_DEPTH = 64
#: Values one document may expand to. Aliases are references: nine nested lists of nine aliases
#: ("billion laughs") would otherwise expand to 387 million values and tens of gigabytes.
_MAX_NODES = 500_000


class _TooManyNodes(Exception):
    """Raised by _Converter past _MAX_NODES, at the node where the budget ran out."""

    def __init__(self, node: yaml.Node) -> None:
        super().__init__("too many nodes")
        self.node = node

_Path = tuple[str | int, ...]
_Pos = tuple[int, int]


@functools.cache
def manifest_schema() -> dict[str, Any]:
    """The manifest JSON Schema, read once from the package data."""
    return cast(dict[str, Any], json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))


@functools.cache
def _validator() -> Draft202012Validator:
    # Compiled once per process: building the validator costs more than validating a file.
    schema = manifest_schema()
    Draft202012Validator.check_schema(schema)
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
        return _compile(manifest_schema(), manifest_schema())
    except _Unsupported:
        return None


def schema_is_valid(data: Any) -> bool:
    """Whether `data` satisfies the manifest schema (fast path; jsonschema when unsure)."""
    check = _fast_check()
    return check(data) if check is not None else bool(_validator().is_valid(data))


# ---------------------------------------------------------------------------------------------
# One file: positions of every node


@dataclass
class _Doc:
    """One parsed manifest file and where each of its values was written."""

    display: str  # the path as the user gave it
    folder: Path
    data: Any = None
    values: dict[_Path, _Pos] = field(default_factory=dict)
    keys: dict[_Path, _Pos] = field(default_factory=dict)

    def loc(self, path: _Path) -> Location:
        """Where the value at `path` was written, or its nearest written ancestor."""
        while True:
            pos = self.values.get(path)
            if pos is not None:
                return Location(self.display, *pos)
            if not path:
                return Location(self.display)
            path = path[:-1]

    def key_loc(self, path: _Path) -> Location:
        """Where the mapping key ending `path` was written (falls back to its value)."""
        pos = self.keys.get(path)
        return Location(self.display, *pos) if pos is not None else self.loc(path)


def _pos(node: yaml.Node) -> _Pos:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Converter:
    """Turns a composed YAML node tree into plain data, recording each node's position."""

    def __init__(self, loader: Any, doc: _Doc, diags: list[Diagnostic]) -> None:
        self.loader = loader
        self.doc = doc
        self.diags = diags
        self.nodes = 0

    def error(self, node: yaml.Node, message: str) -> None:
        self.diags.append(Diagnostic(Location(self.doc.display, *_pos(node)), message))

    def convert(self, node: yaml.Node, path: _Path, depth: int = 0) -> Any:
        self.nodes += 1
        if self.nodes > _MAX_NODES:
            raise _TooManyNodes(node)
        key_pos = self.doc.keys.get(path)
        if key_pos is not None and isinstance(node, yaml.CollectionNode) and not node.flow_style:
            # A block mapping or list starts at its first child; its own key is where a reader looks.
            self.doc.values[path] = key_pos
        else:
            self.doc.values[path] = _pos(node)
        if depth > _MAX_DEPTH:
            self.error(node, f"document nested deeper than {_MAX_DEPTH} levels (recursive alias?)")
            return None
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            self._mapping(node, path, depth, out, merged=False)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        if node.tag in (_STR_TAG, _TIMESTAMP_TAG):
            # Timestamps stay text: `expiry` is checked as RFC 3339 whether quoted or not.
            return node.value
        try:
            return self.loader.construct_object(node)
        except yaml.YAMLError as e:
            self.error(node, f"invalid YAML value {node.value!r}: {getattr(e, 'problem', e)}")
            return None

    def _mapping(
        self, node: yaml.MappingNode, path: _Path, depth: int, out: dict[str, Any], *, merged: bool
    ) -> None:
        first_seen: dict[str, _Pos] = {}
        for knode, vnode in node.value:
            if knode.tag == _MERGE_TAG:
                sources = vnode.value if isinstance(vnode, yaml.SequenceNode) else [vnode]
                for src in sources:
                    if isinstance(src, yaml.MappingNode):
                        self._mapping(src, path, depth, out, merged=True)
                    else:
                        self.error(src, "a merge key (<<) takes a mapping or a list of mappings")
                continue
            if not isinstance(knode, yaml.ScalarNode):
                self.error(knode, "a mapping key must be a plain scalar, not a list or mapping")
                continue
            # Keys are names: keep them as written, so `2024:` is the name "2024", not an int.
            key = knode.value
            if key in first_seen:
                line = first_seen[key][0]
                self.error(knode, f'duplicate key "{key}" (first given on line {line})')
                continue
            first_seen[key] = _pos(knode)
            if merged and key in out:
                continue  # explicit keys win over merged ones
            self.doc.keys[(*path, key)] = _pos(knode)
            out[key] = self.convert(vnode, (*path, key), depth + 1)


def _line_text(text: str, line: int) -> str:
    lines = text.splitlines()
    return lines[line - 1].strip() if 0 < line <= len(lines) else ""


def _parse_yaml(text: str, doc: _Doc, diags: list[Diagnostic]) -> bool:
    """Parse `text` into `doc`; False (with a located diagnostic) on a YAML syntax error."""
    loader_cls = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loader = loader_cls(text)
    try:
        node = loader.get_single_node()
        if node is None:
            diags.append(Diagnostic(Location(doc.display), "the file is empty: expected a manifest"))
            return False
        doc.data = _Converter(loader, doc, diags).convert(node, ())
        return True
    except _TooManyNodes as e:
        diags.append(
            Diagnostic(
                Location(doc.display, *_pos(e.node)),
                f"the document expands to more than {_MAX_NODES:,} values (aliases repeated in aliases?)",
            )
        )
        return False
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        what = e.problem or "invalid YAML"
        if e.context:
            what = f"{what} ({e.context})"
        near = _line_text(text, line)
        suffix = f' near "{near}"' if near else ""
        diags.append(Diagnostic(Location(doc.display, line, col), f"YAML syntax error: {what}{suffix}"))
        return False
    except yaml.YAMLError as e:
        diags.append(Diagnostic(Location(doc.display), f"YAML error: {e}"))
        return False
    finally:
        loader.dispose()


# ---------------------------------------------------------------------------------------------
# Jinja2 rendering


# Sandboxed: a manifest is data; rendering it must not reach into Python internals.
_JINJA = jinja2.sandbox.SandboxedEnvironment(
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,  # YAML, not HTML
)
_TEMPLATE_FILENAME = "<template>"
_UNDEFINED_NAME = re.compile(r"'([^']+)' is undefined$")
_MAX_UNDEFINED_REPORTED = 50


class _EnvFunction:
    """The templates' `env(NAME[, default])`: reads the environment, remembers what is missing."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.missing: list[str] = []

    def __call__(self, name: object, default: object = None) -> str:
        key = str(name)
        if key in self.environ:
            return self.environ[key]
        if default is not None:
            return str(default)
        if key not in self.missing:
            self.missing.append(key)
        return ""


def _template_line(tb: TracebackType | None) -> int:
    """The template line of the innermost template frame of a rendering traceback."""
    line = 0
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _TEMPLATE_FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _find_in_source(source: str, pattern: re.Pattern[str]) -> _Pos:
    for number, text in enumerate(source.splitlines(), start=1):
        m = pattern.search(text)
        if m:
            return number, m.start() + 1
    return 0, 0


_JINJA_SPAN = re.compile(r"\{[{%].*?(?:[}%]\}|$)")


def _name_column(source: str, line: int, name: str) -> int:
    """Column of `name` inside a Jinja tag on `line` (1 when it cannot be found)."""
    lines = source.splitlines()
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    word = re.compile(rf"(?<![\w.]){re.escape(name)}\b")
    for span in _JINJA_SPAN.finditer(text):
        m = word.search(text, span.start(), span.end())
        if m:
            return m.start() + 1
    return 1


def _render(
    source: str, display: str, variables: Mapping[str, object], environ: Mapping[str, str],
    diags: list[Diagnostic],
) -> str | None:
    """Render one file; None (with located diagnostics) when it cannot be rendered."""
    if "{{" not in source and "{%" not in source and "{#" not in source:
        return source  # nothing to render: skip Jinja, which matters for 5,000-key sets
    try:
        template = _JINJA.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        near = _line_text(source, e.lineno)
        suffix = f' near "{near}"' if near else ""
        message = f"template syntax error: {e.message}{suffix}"
        diags.append(Diagnostic(Location(display, e.lineno, 1), message))
        return None
    env_fn = _EnvFunction(environ)
    context: dict[str, object] = {**variables, "env": env_fn}
    undefined: list[tuple[str, int]] = []  # (name, template line), in the order met
    rendered: str | None = None
    while rendered is None and len(undefined) < _MAX_UNDEFINED_REPORTED:
        try:
            rendered = template.render(context)
        except Exception as e:  # a user's template can raise anything: report it, never crash
            line = _template_line(e.__traceback__)
            m = _UNDEFINED_NAME.match(str(e)) if isinstance(e, jinja2.UndefinedError) else None
            if m is not None and m.group(1) not in context:
                # Render on with a stand-in, so that one run reports every undefined name.
                undefined.append((m.group(1), line))
                context[m.group(1)] = ""
                continue
            if not undefined:  # a later error is likely an effect of a stand-in: not reported
                what = f"{type(e).__name__}: {e}"
                if isinstance(e, jinja2.TemplateError) and e.message:
                    what = e.message
                diags.append(Diagnostic(Location(display, line, 1 if line else 0), f"template error: {what}"))
            break
    if undefined:
        for name, line in undefined:
            col = _name_column(source, line, name) if line else 0
            message = f'undefined template variable "{name}"'
            diags.append(Diagnostic(Location(display, line, col), message))
        return None
    if rendered is None:
        return None
    if env_fn.missing:
        for name in env_fn.missing:
            pattern = re.compile(rf"env\(\s*['\"]{re.escape(name)}['\"]")
            line, col = _find_in_source(source, pattern)
            message = f'environment variable "{name}" is not set (env("{name}"))'
            diags.append(Diagnostic(Location(display, line, col), message))
        return None
    return rendered


# ---------------------------------------------------------------------------------------------
# JSON Schema errors as located diagnostics


def _show(value: object, limit: int = 80) -> str:
    """A value as the user wrote it, quoted, shortened: for messages."""
    if isinstance(value, str | int | float | bool) or value is None:
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, dict):
        text = "a mapping"
    elif isinstance(value, list):
        text = "a list"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + '..."'


def _where(path: _Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the top level"


def _schema_diagnostics(doc: _Doc) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    if schema_is_valid(doc.data):
        return out
    for error in _validator().iter_errors(doc.data):
        out.extend(_schema_error(doc, error))
    return out


def _schema_error(doc: _Doc, error: ValidationError) -> list[Diagnostic]:
    path: _Path = tuple(error.absolute_path)
    where = _where(path)
    value = error.instance
    kind = error.validator
    expected: Any = error.validator_value
    schema: dict[str, Any] = error.schema if isinstance(error.schema, dict) else {}
    if kind == "additionalProperties" and isinstance(value, dict):
        allowed = sorted(schema.get("properties", {}))
        diags = []
        for extra in value:
            if extra in allowed:
                continue
            close = difflib.get_close_matches(extra, allowed, n=1)
            did_you_mean = f' (did you mean "{close[0]}"?)' if close else ""
            diags.append(
                Diagnostic(doc.key_loc((*path, extra)), f'unknown field "{extra}" in {where}{did_you_mean}')
            )
        return diags
    if kind == "required" and isinstance(value, dict):
        return [
            Diagnostic(doc.loc(path), f'missing required field "{field_name}" in {where}')
            for field_name in expected
            if field_name not in value
        ]
    if "propertyNames" in error.schema_path:
        name = str(value)
        hint = _PATTERN_HINTS.get(str(expected), "invalid name")
        message = f"key name {_show(name)} in {where} is invalid: {hint}"
        return [Diagnostic(doc.key_loc((*path, name)), message)]
    loc = doc.loc(path)
    if kind == "type":
        types = expected if isinstance(expected, list) else [expected]
        # "null" is allowed for some fields only to permit an empty block; it is no advice.
        names = [_TYPE_NAMES.get(str(t), str(t)) for t in types if t != "null"]
        quote = " (quote it)" if "a string" in names and isinstance(value, int | float | bool) else ""
        return [Diagnostic(loc, f"{where}: {_show(value)} is not {' or '.join(names)}{quote}")]
    if kind == "enum":
        choices = ", ".join(str(c) for c in expected)
        return [Diagnostic(loc, f"{where}: {_show(value)} is not one of {choices}")]
    if kind == "const":
        return [Diagnostic(loc, f"{where}: {_show(value)} is not supported; expected {_show(expected)}")]
    if kind == "pattern":
        hint = _PATTERN_HINTS.get(str(expected), f"expected to match {expected}")
        return [Diagnostic(loc, f"{where}: {_show(value)} is invalid: {hint}")]
    if kind in ("minimum", "maximum"):
        low, high = schema.get("minimum"), schema.get("maximum")
        return [Diagnostic(loc, f"{where}: {_show(value)} is out of range {low}..{high}")]
    if kind == "maxLength" and isinstance(value, str):
        return [
            Diagnostic(
                loc,
                f"{where}: {_show(value, 40)} is {len(value)} characters long; "
                f"at most {expected} allowed",
            )
        ]
    if kind in ("minLength", "minItems"):
        return [Diagnostic(loc, f"{where}: {_show(value)} must not be empty")]
    return [Diagnostic(loc, f"{where}: {error.message}")]


# ---------------------------------------------------------------------------------------------
# Semantic rules (DESIGN section 3)


def tag_key_problem(key: str) -> str | None:
    """Why `key` cannot be a user tag key, or None if it can."""
    if not key:
        return "tag key must not be empty"
    if len(key) > 128:
        return f"tag key {_show(key, 40)} is {len(key)} characters long; at most 128 allowed"
    if not TAG_RE.fullmatch(key):
        bad = _first_bad_char(key)
        return f"tag key {_show(key)} contains {bad}; allowed are {TAG_CHARS_HINT}"
    lowered = key.lower()
    for prefix in FORBIDDEN_TAG_PREFIXES:
        if lowered.startswith(prefix):
            return f'tag key {_show(key)} must not start with "{prefix}"'
    if key in RESERVED_TAGS or lowered.startswith(RESERVED_TAG_PREFIX):
        return f'tag key {_show(key)} is reserved for the provisioner ("{RESERVED_TAG_PREFIX}...")'
    return None


def tag_value_problem(key: str, value: str) -> str | None:
    """Why `value` cannot be the value of tag `key`, or None if it can."""
    if not value:
        return f'tag "{key}" has an empty value; values are 1..128 characters'
    if len(value) > 128:
        return f'tag "{key}" value {_show(value, 40)} is {len(value)} characters long; at most 128 allowed'
    if not TAG_RE.fullmatch(value):
        bad = _first_bad_char(value)
        return f'tag "{key}" value {_show(value)} contains {bad}; allowed are {TAG_CHARS_HINT}'
    return None


def alias_problem(alias: str) -> str | None:
    """Why `alias` cannot be an alias name, or None if it can."""
    if not alias.startswith("alias/"):
        return f'alias {_show(alias)} must start with "alias/"'
    if alias.lower().startswith(FORBIDDEN_ALIAS_PREFIX):
        return f'alias {_show(alias)} must not start with "{FORBIDDEN_ALIAS_PREFIX}"'
    rest = alias.removeprefix("alias/")
    if not rest:
        return f'alias {_show(alias)} needs a name after "alias/"'
    if len(rest) > 255:
        return f"alias {_show(alias, 40)} is too long: at most 255 characters after alias/"
    if not ALIAS_RE.fullmatch(alias):
        bad = _first_bad_char(rest, allowed=re.compile(r"[A-Za-z0-9_/-]"))
        return f"alias {_show(alias)} contains {bad}; allowed after alias/ are letters, digits, _ - /"
    return None


def _first_bad_char(text: str, allowed: re.Pattern[str] | None = None) -> str:
    ok = allowed or re.compile(r"[A-Za-z0-9 /\\_.+=:@-]")
    for ch in text:
        if not ok.fullmatch(ch):
            return f"the character {json.dumps(ch, ensure_ascii=False)}"
    return "a character that is not allowed"


def parse_expiry(value: str) -> datetime | None:
    """`never` -> None; an RFC 3339 time with a zone -> aware datetime; else ValueError."""
    if value == "never":
        return None
    if not RFC3339_RE.fullmatch(value):
        raise ValueError(value)
    parsed = datetime.fromisoformat(value.replace("z", "Z"))
    try:
        # Plan and apply work in UTC: 9999-12-31T23:59:59-01:00 is past datetime's last day there.
        parsed.astimezone(UTC)
    except OverflowError:
        raise ExpiryOutOfRange(value) from None
    return parsed


class ExpiryOutOfRange(ValueError):
    """An RFC 3339 time that cannot be expressed in UTC (outside years 1..9999 once converted)."""


@dataclass
class _SetState:
    """What the cross-file rules remember while every file is checked."""

    stack: tuple[str, Location] | None = None
    backend: tuple[BackendConfig, Location] | None = None
    names: dict[str, Location] = field(default_factory=dict)
    aliases: dict[str, Location] = field(default_factory=dict)


def _check_tags(
    doc: _Doc, tags: Any, path: _Path, diags: list[Diagnostic]
) -> dict[str, str]:
    """Check a tags mapping; return its well-formed entries."""
    good: dict[str, str] = {}
    if not isinstance(tags, dict):
        return good
    for key, value in tags.items():
        problem = tag_key_problem(key)
        if problem:
            diags.append(Diagnostic(doc.key_loc((*path, key)), problem))
            continue
        if not isinstance(value, str):
            continue  # the schema reported it
        problem = tag_value_problem(key, value)
        if problem:
            diags.append(Diagnostic(doc.loc((*path, key)), problem))
            continue
        good[key] = value
    return good


def _enum_or_none(enum: type[Any], value: Any) -> Any:
    try:
        return enum(value)
    except ValueError:
        return None


def _resolve(folder: Path, relative: str) -> Path:
    # Absolute without following symlinks, so messages show the path the user would recognise.
    return Path(os.path.abspath(folder / relative))


def _check_doc(doc: _Doc, state: _SetState, diags: list[Diagnostic]) -> list[DesiredKey]:
    """Semantic rules for one file; also feeds the cross-file rules. Tolerates ill-typed data."""
    data = doc.data
    if not isinstance(data, dict):
        return []
    stack = data.get("stack")
    if isinstance(stack, str):
        here = doc.loc(("stack",))
        if state.stack is None:
            state.stack = (stack, here)
        elif state.stack[0] != stack:
            first, where = state.stack
            diags.append(
                Diagnostic(
                    here,
                    f'stack "{stack}" differs from stack "{first}" declared at {where}; '
                    "all files of a manifest set belong to one stack",
                )
            )
    _check_backend(doc, data.get("backend"), state, diags)

    raw_defaults = data.get("defaults")
    defaults: dict[str, Any] = raw_defaults if isinstance(raw_defaults, dict) else {}
    default_tags = _check_tags(doc, defaults.get("tags"), ("defaults", "tags"), diags)
    default_instance = defaults.get("instance") if isinstance(defaults.get("instance"), str) else None
    default_protection = _enum_or_none(ProtectionLevel, defaults.get("protection"))

    keys = data.get("keys")
    if not isinstance(keys, dict):
        return []
    out: list[DesiredKey] = []
    for name, body in keys.items():
        if not isinstance(body, dict):
            continue
        key = _check_key(
            doc, name, body, state, diags,
            stack=stack if isinstance(stack, str) else "",
            default_tags=default_tags,
            default_instance=default_instance,
            default_protection=default_protection or ProtectionLevel.SOFTWARE,
        )
        if key is not None:
            out.append(key)
    return out


def _check_backend(doc: _Doc, backend: Any, state: _SetState, diags: list[Diagnostic]) -> None:
    if not isinstance(backend, dict):
        return
    kind = backend.get("type", "local")
    path = backend.get("path")
    if kind == "alibaba" and path is not None:
        diags.append(
            Diagnostic(
                doc.loc(("backend", "path")), f"backend.path {_show(path)} applies only to the local backend"
            )
        )
    if not isinstance(kind, str) or kind not in ("local", "alibaba"):
        return
    config = BackendConfig(
        type=kind,
        path=_resolve(doc.folder, path) if isinstance(path, str) and kind == "local" else None,
        region=backend.get("region") if isinstance(backend.get("region"), str) else None,
        endpoint=backend.get("endpoint") if isinstance(backend.get("endpoint"), str) else None,
        region_at=doc.loc(("backend", "region")),
        endpoint_at=doc.loc(("backend", "endpoint")),
    )
    here = doc.loc(("backend",))
    if state.backend is None:
        state.backend = (config, here)
    elif state.backend[0] != config:
        diags.append(
            Diagnostic(here, f"backend differs from the one declared at {state.backend[1]}; give it once")
        )


def _check_key(
    doc: _Doc, name: str, body: dict[str, Any], state: _SetState, diags: list[Diagnostic], *,
    stack: str, default_tags: dict[str, str], default_instance: str | None,
    default_protection: ProtectionLevel,
) -> DesiredKey | None:
    base: _Path = ("keys", name)
    here = doc.key_loc(base)
    errors_before = len(diags)

    if name in state.names:
        diags.append(
            Diagnostic(
                here, f'key name "{name}" is declared twice in the stack (first at {state.names[name]})'
            )
        )
    else:
        state.names[name] = here

    spec = _enum_or_none(KeySpec, body.get("spec"))
    usage = _enum_or_none(KeyUsage, body.get("usage"))
    protection = _enum_or_none(ProtectionLevel, body.get("protection")) or default_protection
    desired_state = _enum_or_none(DesiredState, body.get("state", "present"))

    if spec is not None and spec not in IMPORTABLE_SPECS[protection]:
        allowed = ", ".join(sorted(IMPORTABLE_SPECS[protection]))
        diags.append(
            Diagnostic(
                doc.loc((*base, "spec")),
                f'key "{name}": spec "{spec}" cannot take imported material at protection {protection} '
                f"(it takes {allowed})",
            )
        )

    instance = body.get("instance", default_instance)
    if instance is None:
        diags.append(
            Diagnostic(
                here,
                f'key "{name}" has no KMS instance: asymmetric import needs one; '
                "set instance on the key or under defaults",
            )
        )

    # Tags: defaults merged under the key's own, counted with the provisioner's reserved tags.
    tags = {**default_tags, **_check_tags(doc, body.get("tags"), (*base, "tags"), diags)}
    raw_tags: dict[str, Any] = body["tags"] if isinstance(body.get("tags"), dict) else {}
    total = len({**default_tags, **raw_tags})
    if total > MAX_USER_TAGS:
        diags.append(
            Diagnostic(
                doc.loc((*base, "tags")) if raw_tags else here,
                f'key "{name}" has {total} tags (defaults included); at most {MAX_USER_TAGS} are allowed '
                f"because KMS allows {MAX_TAGS_PER_KEY} per key and the provisioner sets "
                f"{len(RESERVED_TAGS)}",
            )
        )

    aliases: list[str] = []
    raw_aliases = body.get("aliases")
    if isinstance(raw_aliases, list):
        for i, alias in enumerate(raw_aliases):
            if not isinstance(alias, str):
                continue  # the schema reported it
            at = doc.loc((*base, "aliases", i))
            problem = alias_problem(alias)
            if problem:
                diags.append(Diagnostic(at, problem))
                continue
            if alias in state.aliases:
                diags.append(
                    Diagnostic(at, f'alias "{alias}" is used twice (first at {state.aliases[alias]})')
                )
                continue
            state.aliases[alias] = at
            aliases.append(alias)

    expiry: datetime | None = None
    raw_expiry = body.get("expiry", "never")
    if isinstance(raw_expiry, str):
        try:
            expiry = parse_expiry(raw_expiry)
        except ExpiryOutOfRange:
            diags.append(
                Diagnostic(
                    doc.loc((*base, "expiry")),
                    f"expiry {_show(raw_expiry)} is not a time in UTC years 1..9999; "
                    'use "never" for no expiry',
                )
            )
        except ValueError:
            diags.append(
                Diagnostic(
                    doc.loc((*base, "expiry")),
                    f'expiry {_show(raw_expiry)} is neither "never" nor an RFC 3339 time with a zone, '
                    'e.g. "2027-06-30T00:00:00Z"',
                )
            )

    protected = body.get("deletion_protection", False)
    if desired_state is DesiredState.ABSENT and protected is True:
        diags.append(
            Diagnostic(
                doc.loc((*base, "deletion_protection")),
                f'key "{name}" has state "absent" and deletion_protection true: '
                "lift the protection (deletion_protection: false) first",
            )
        )

    material = _check_material_block(doc, name, body, base, desired_state, diags)

    if len(diags) > errors_before or spec is None or usage is None or desired_state is None:
        return None
    window = body.get("deletion_window_days", DEFAULT_DELETION_WINDOW_DAYS)
    description = body.get("description", "")
    return DesiredKey(
        stack=stack,
        name=name,
        spec=spec,
        usage=usage,
        protection=protection,
        instance=instance if isinstance(instance, str) else None,
        description=description if isinstance(description, str) else "",
        tags=tags,
        aliases=tuple(sorted(aliases)),
        expiry=expiry,
        deletion_protection=protected is True,
        deletion_window_days=window if isinstance(window, int) else DEFAULT_DELETION_WINDOW_DAYS,
        material=material,
        state=desired_state,
        location=here,
    )


def _check_material_block(
    doc: _Doc, name: str, body: dict[str, Any], base: _Path, desired_state: DesiredState | None,
    diags: list[Diagnostic],
) -> MaterialSource | None:
    block = body.get("material")
    if block is None:
        if desired_state is not DesiredState.ABSENT and "material" not in body:
            diags.append(
                Diagnostic(
                    doc.key_loc(base),
                    f'key "{name}" has no material: give material with one of file, env, command '
                    "(only a key with state absent may omit it)",
                )
            )
        return None
    if not isinstance(block, dict):
        return None
    at = doc.loc((*base, "material"))
    given = [k for k in ("file", "env", "command") if k in block]
    if len(given) != 1:
        detail = "none of them is given" if not given else "got " + " and ".join(given)
        diags.append(
            Diagnostic(at, f'key "{name}": material takes exactly one of file, env, command; {detail}')
        )
        return None
    kind = SourceKind(given[0])
    value = block[given[0]]
    if kind is SourceKind.FILE and isinstance(value, str):
        return MaterialSource(
            kind=kind, file=_resolve(doc.folder, value), passphrase_env=block.get("passphrase_env"),
            fingerprint=block.get("fingerprint"), location=at,
        )
    if kind is SourceKind.ENV and isinstance(value, str):
        return MaterialSource(
            kind=kind, env=value, passphrase_env=block.get("passphrase_env"),
            fingerprint=block.get("fingerprint"), location=at,
        )
    if kind is SourceKind.COMMAND and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return MaterialSource(
            kind=kind, command=tuple(value), passphrase_env=block.get("passphrase_env"),
            fingerprint=block.get("fingerprint"), location=at,
        )
    return None  # ill-typed: the schema reported it


# ---------------------------------------------------------------------------------------------
# Public entry points


def manifest_files(paths: Sequence[Path], diags: list[Diagnostic]) -> list[tuple[str, Path]]:
    """Expand files and folders (their *.yaml / *.yml, sorted, not recursive) to (display, path)."""
    return [(display, path) for display, path, _ in _manifest_files(paths, diags)]


def _manifest_files(paths: Sequence[Path], diags: list[Diagnostic]) -> list[tuple[str, Path, str]]:
    """(display, path, path relative to the PATH it was found through) for each manifest file."""
    out: list[tuple[str, Path, str]] = []
    seen: set[Path] = set()

    def add(display: str, path: Path) -> None:
        real = path.resolve()
        if real not in seen:
            seen.add(real)
            out.append((display, path, path.name))

    for given in paths:
        display = str(given)
        if given.is_dir():
            found = sorted(
                p for p in given.iterdir() if p.suffix in MANIFEST_SUFFIXES and p.is_file()
            )
            if not found:
                diags.append(Diagnostic(Location(display), "folder has no manifest files (*.yaml, *.yml)"))
            for p in found:
                add(os.path.join(display, p.name), p)
        elif given.is_file():
            add(display, given)
        elif given.exists():
            diags.append(Diagnostic(Location(display), "not a regular file or folder"))
        else:
            diags.append(Diagnostic(Location(display), "no such file or folder"))
    return out


def load_manifests(
    paths: Sequence[Path], *, variables: Mapping[str, object], environ: Mapping[str, str] | None = None
) -> ManifestSet:
    """Render, parse and check every manifest in `paths`; raise ManifestError with every problem."""
    env = os.environ if environ is None else environ
    diags: list[Diagnostic] = []
    docs: list[_Doc] = []
    found = _manifest_files(paths, diags)
    files = [(display, path) for display, path, _ in found]
    digest = hashlib.sha256()
    for display, path, relative in found:
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            diags.append(Diagnostic(Location(display), f"cannot read the file: {reason}"))
            continue
        rendered = _render(source, display, variables, env, diags)
        if rendered is None:
            continue
        digest.update(relative.encode("utf-8") + b"\0" + rendered.encode("utf-8") + b"\0")
        doc = _Doc(display=display, folder=path.parent)
        if not _parse_yaml(rendered, doc, diags):
            continue
        diags.extend(_schema_diagnostics(doc))
        docs.append(doc)

    state = _SetState()
    keys: list[DesiredKey] = []
    for doc in docs:
        keys.extend(_check_doc(doc, state, diags))
    if not files and not diags:
        diags.append(Diagnostic(Location("<command line>"), "no manifest files given"))
    order = {display: i for i, (display, _) in enumerate(files)}
    diags.sort(key=lambda d: (order.get(d.location.file, -1), d.location.line, d.location.column))
    errors = _unique(d for d in diags if d.severity == "error")
    if errors:
        raise ManifestError(errors)
    assert state.stack is not None  # the schema requires stack in every file
    return ManifestSet(
        stack=state.stack[0],
        keys=tuple(sorted(keys, key=lambda k: k.name)),
        backend=state.backend[0] if state.backend else None,
        files=tuple(display for display, _ in files),
        manifest_digest="sha256:" + digest.hexdigest(),
    )


def _unique(diags: Iterable[Diagnostic]) -> list[Diagnostic]:
    return list(dict.fromkeys(diags))


def load_variables(var_args: Mapping[str, str], var_files: Sequence[Path]) -> dict[str, object]:
    """Template variables: each var file (YAML or JSON mapping) in order, then --var on top."""
    out: dict[str, object] = {}
    diags: list[Diagnostic] = []
    for path in var_files:
        display = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            diags.append(Diagnostic(Location(display), "variable file: no such file"))
            continue
        except (OSError, UnicodeDecodeError) as e:
            diags.append(Diagnostic(Location(display), f"cannot read the variable file: {e}"))
            continue
        try:
            # JSON is YAML, so one parser reads both formats.
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
            message = f"variable file: syntax error: {e.problem}"
            diags.append(Diagnostic(Location(display, line, col), message))
            continue
        except yaml.YAMLError as e:
            diags.append(Diagnostic(Location(display), f"variable file: {e}"))
            continue
        if data is None:
            continue
        if not isinstance(data, dict):
            diags.append(
                Diagnostic(
                    Location(display, 1, 1),
                    f"variable file must be a mapping of names to values, not {_show(data)}",
                )
            )
            continue
        out.update({str(k): v for k, v in data.items()})
    if diags:
        raise ManifestError(diags)
    out.update(var_args)
    return out


# ---------------------------------------------------------------------------------------------
# Material


def check_material(
    ms: ManifestSet,
    *,
    environ: Mapping[str, str] | None = None,
    keep: dict[str, PrivateMaterial] | None = None,
) -> tuple[dict[str, str], list[Diagnostic]]:
    """Read and verify each key's material: (fingerprint by key name, diagnostics incl. warnings).

    Keys without material (state absent) are skipped. Errors are located at the key's
    `material` block and prefixed with the key name; the material itself never appears.
    Material is wiped once its fingerprint is known, unless `keep` is given: then it goes there
    (by key name) for an apply to import, so a source (a command, say) is read only once a run.
    """
    # Imported here so that loading manifests never pulls in the crypto stack.
    from provisioner.material import verify_material

    fingerprints: dict[str, str] = {}
    diags: list[Diagnostic] = []
    for key in ms.keys:
        source = key.material
        if source is None:
            continue

        def warn(message: str, _at: Location = source.location, _name: str = key.name) -> None:
            diags.append(Diagnostic(_at, f'key "{_name}": {message}', severity="warning"))

        try:
            material = verify_material(source, key.spec, environ=environ, warn=warn)
        except MaterialError as e:
            diags.append(Diagnostic(source.location, f'key "{key.name}": {e}'))
            continue
        fingerprints[key.name] = material.fingerprint
        if keep is None:
            material.wipe()
        else:
            keep[key.name] = material
    return fingerprints, diags


def validate_manifests(
    paths: Sequence[Path],
    *,
    variables: Mapping[str, object],
    environ: Mapping[str, str] | None = None,
    offline_material: bool = False,
    keep: dict[str, PrivateMaterial] | None = None,
) -> tuple[ManifestSet, dict[str, str], list[Diagnostic]]:
    """The whole `validate` stage: load, then (unless offline) read every key's material.

    Returns the set, the fingerprint of each key whose material was read, and the warnings;
    raises ManifestError carrying every error (and the warnings) otherwise. `keep`: as for
    check_material; on an error whatever was kept is wiped.
    """
    ms = load_manifests(paths, variables=variables, environ=environ)
    if offline_material:
        return ms, {}, []
    fingerprints, diags = check_material(ms, environ=environ, keep=keep)
    order = {display: i for i, display in enumerate(ms.files)}
    diags.sort(key=lambda d: (order.get(d.location.file, -1), d.location.line, d.location.column))
    if any(d.severity == "error" for d in diags):
        for material in (keep or {}).values():
            material.wipe()
        raise ManifestError(diags)
    return ms, fingerprints, diags
