"""Manifest loading: Jinja2 render -> YAML with positions -> JSON Schema -> semantic rules -> DesiredKeys.

Every problem found becomes a located Diagnostic and all of them are raised together in one
ManifestError. This module never prints, never calls a KMS, and reads private material only
in `check_material`, through `provisioner.material`.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import jinja2
import yaml
import yaml.reader
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from provisioner import leakscan, sandbox
from provisioner.errors import ManifestError, MaterialError
from provisioner.model import (
    DEFAULT_DELETION_WINDOW_DAYS,
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
from provisioner.specs import Material, importable_specs
from provisioner.trust import EnvPolicy

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
    #: The file before rendering, and what its env() calls returned (name -> non-empty value).
    source: str = ""
    env_values: dict[str, str] = field(default_factory=dict)
    tainted: bool = False  # its rendering read the environment

    def show(self, value: object, limit: int = 80) -> str:
        """`value` quoted for a message; in a file that read env(), a value that holds an env()
        value, or that the file does not spell out, is named instead of shown."""
        if not self.tainted:
            return _show(value, limit)
        text = value if isinstance(value, str) else json.dumps(value) if _is_scalar(value) else None
        if text is None:
            return _show(value, limit)
        for name, secret in self.env_values.items():
            if secret in text:
                return f'the value of env("{name}")'
        return _show(value, limit) if text in self.source else "the value"

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
            problem = _unquoted(str(getattr(e, "problem", "") or "not understood"))
            self.error(node, f"invalid YAML value {self.doc.show(node.value)}: {problem}")
            return None
        except ValueError:
            # int() past Python's digit limit (sys.get_int_max_str_digits): a 5,000-digit number.
            self.error(node, "a number too long to read (more than 4,300 digits)")
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


def _parse_yaml(text: str, doc: _Doc, diags: list[Diagnostic]) -> bool:
    """Parse `text` into `doc`; False (with a located diagnostic) on a YAML syntax error.

    No message quotes the file: a file that is no manifest (a token, a key) must not be shown."""
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
        what = _unquoted(e.problem or "invalid YAML")
        if e.context:
            what = f"{what} ({_unquoted(e.context)})"
        diags.append(Diagnostic(Location(doc.display, line, col), f"YAML syntax error: {what}"))
        return False
    except yaml.YAMLError as e:
        # A reader error (a control character, say): its text quotes the input and its position.
        line, col = _error_position(text, e)
        diags.append(Diagnostic(Location(doc.display, line, col), f"YAML error: {_yaml_problem(e)}"))
        return False
    finally:
        loader.dispose()


def _yaml_problem(e: yaml.YAMLError) -> str:
    if isinstance(e, yaml.reader.ReaderError):
        return "the file holds a character YAML does not allow (a control character or NUL)"
    return "invalid YAML"


def _error_position(text: str, e: yaml.YAMLError) -> _Pos:
    position = getattr(e, "position", None)
    if not isinstance(position, int) or position < 0:
        return 1, 1
    before = text[:position]
    return before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1


# ---------------------------------------------------------------------------------------------
# Jinja2 rendering


# Sandboxed: a manifest is data; rendering it must not reach into Python internals, the helpers'
# state, a file, or unbounded time and memory (provisioner.sandbox).
_JINJA = sandbox.ManifestSandbox()
_TEMPLATE_FILENAME = "<template>"
_UNDEFINED_NAME = re.compile(r"'([^']+)' is undefined$")
_MAX_UNDEFINED_REPORTED = 50
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class _EnvReads:
    """What one file's env() calls asked for, each with its template line; values never leave here
    except into the rendered text (and `values` serves only to keep them out of messages)."""

    source: str
    reads: list[tuple[str, int]] = field(default_factory=list)  # every allowed read: name, line
    values: dict[str, str] = field(default_factory=dict)  # name -> non-empty value returned
    refused: list[tuple[str, int, str]] = field(default_factory=list)  # name, line, rule
    missing: list[tuple[str, int]] = field(default_factory=list)
    bad_names: list[int] = field(default_factory=list)
    template: jinja2.Template | None = None

    @property
    def tainted(self) -> bool:
        """Whether the rendered text may hold a value read from the environment."""
        return bool(self.reads or self.refused)

    def line(self) -> int:
        """The template line of the innermost template frame calling env() right now."""
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_filename == _TEMPLATE_FILENAME and self.template is not None:
                return self.template.get_corresponding_lineno(frame.f_lineno)
            frame = frame.f_back  # type: ignore[assignment]
        return 0

    def shown_name(self, name: str) -> str:
        # A name written in the file is shown; a computed one may be built from a value.
        return f'"{name}"' if name in self.source else "(a computed name)"


def _env_function(
    reads: _EnvReads, policy: EnvPolicy, environ: Mapping[str, str]
) -> Callable[..., str]:
    """The templates' `env(NAME[, default])`: a plain function whose only state is in its closure,
    which the sandbox keeps out of reach (no attribute of a callable is readable)."""

    def env(name: object = None, default: object = None) -> str:
        line = reads.line()
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            reads.bad_names.append(line)
            return ""
        # Refused whether or not a default is given, and whether or not it is set: else a default
        # would tell whether a secret variable exists.
        rule = policy.refusal(name, environ)
        if rule is not None:
            reads.refused.append((name, line, rule))
            return ""
        reads.reads.append((name, line))
        if name in environ:
            value = environ[name]
            if value:
                reads.values[name] = value
            return value
        if default is not None:
            return str(default)
        reads.missing.append((name, line))
        return ""

    return env


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


def _env_location(display: str, source: str, line: int, name: str | None) -> Location:
    """Where an env() call was written: its line, and the column of the name or of `env(`."""
    if not line:
        if name is not None:
            line, col = _find_in_source(source, re.compile(rf"env\(\s*['\"]{re.escape(name)}['\"]"))
            return Location(display, line, col)
        return Location(display)
    col = _name_column(source, line, name) if name is not None and name in source else 0
    if col <= 1:
        lines = source.splitlines()
        text = lines[line - 1] if 0 < line <= len(lines) else ""
        found = text.find("env(")
        col = found + 1 if found >= 0 else 1
    return Location(display, line, col)


def _refusal_message(reads: _EnvReads, name: str, rule: str) -> str:
    return f"env({reads.shown_name(name)}) is refused: {rule}"


def _render(
    source: str, display: str, variables: Mapping[str, object], environ: Mapping[str, str],
    diags: list[Diagnostic], policy: EnvPolicy | None = None, reads: _EnvReads | None = None,
) -> str | None:
    """Render one file; None (with located diagnostics) when it cannot be rendered.

    Every env() call is recorded in `reads`, so that the caller can refuse, after the whole set is
    parsed, a read of a variable the set names as material. The deadline and budgets of
    provisioner.sandbox bound the work."""
    if "{{" not in source and "{%" not in source and "{#" not in source:
        return source  # nothing to render: skip Jinja, which matters for 5,000-key sets
    record = reads if reads is not None else _EnvReads(source)
    try:
        return sandbox.run_with_deadline(
            lambda: _render_now(source, display, variables, environ, diags, policy, record)
        )
    except sandbox.TemplateTimeout as e:
        diags.append(Diagnostic(Location(display, 1, 1), f"template error: {e}"))
        return None


def _render_now(
    source: str, display: str, variables: Mapping[str, object], environ: Mapping[str, str],
    diags: list[Diagnostic], policy: EnvPolicy | None, record: _EnvReads,
) -> str | None:
    try:
        template = _JINJA.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        # The line's text is not quoted: a file that is no manifest (a token, a key) must not be shown.
        message = f"template syntax error: {_unquoted(e.message or 'invalid template')}"
        diags.append(Diagnostic(Location(display, e.lineno, 1), message))
        return None
    except Exception as e:  # a deeply nested expression, say: report it, never crash
        diags.append(Diagnostic(Location(display, 1, 1), f"template error: {type(e).__name__}"))
        return None
    record.template = template
    env_fn = _env_function(record, policy or EnvPolicy.from_sources((), environ), environ)
    context: dict[str, object] = {**variables, "env": env_fn}
    undefined: list[tuple[str, int]] = []  # (name, template line), in the order met
    rendered: str | None = None
    failure: Diagnostic | None = None
    while rendered is None and len(undefined) < _MAX_UNDEFINED_REPORTED:
        try:
            rendered = sandbox.render_bounded(template, context)
        except Exception as e:  # a user's template can raise anything: report it, never crash
            line = _template_line(e.__traceback__)
            m = _UNDEFINED_NAME.match(str(e)) if isinstance(e, jinja2.UndefinedError) else None
            if m is not None and m.group(1) not in context and _ENV_NAME.fullmatch(m.group(1)) \
                    and m.group(1) in source:
                # Render on with a stand-in, so that one run reports every undefined name.
                undefined.append((m.group(1), line))
                context[m.group(1)] = ""
                continue
            if not undefined:  # a later error is likely an effect of a stand-in: not reported
                problem = _template_problem(e, record)
                failure = Diagnostic(Location(display, line, 1 if line else 0), f"template error: {problem}")
            break
    if record.refused or record.bad_names:
        # A refused read ends the file: nothing else it caused is reported (a stand-in "" may cause
        # errors of its own), and its rendered text is dropped.
        for name, line, rule in record.refused:
            at = _env_location(display, source, line, name)
            diags.append(Diagnostic(at, _refusal_message(record, name, rule)))
        for line in record.bad_names:
            diags.append(
                Diagnostic(
                    _env_location(display, source, line, None),
                    "env() takes the name of an environment variable (letters, digits and _)",
                )
            )
        return None
    if failure is not None:
        diags.append(failure)
    if undefined:
        for name, line in undefined:
            col = _name_column(source, line, name) if line else 0
            message = f'undefined template variable "{name}"'
            diags.append(Diagnostic(Location(display, line, col), message))
        return None
    if rendered is None:
        return None
    if record.missing:
        for name, line in record.missing:
            shown = record.shown_name(name)
            message = f"environment variable {shown} is not set (env({shown}))"
            diags.append(Diagnostic(_env_location(display, source, line, name), message))
        return None
    return rendered


def _template_problem(e: Exception, record: _EnvReads) -> str:
    """A rendering error in words. In a file that read env(), the message of the error is withheld:
    it may quote a value (a missing key, an attribute name) computed from an environment variable."""
    if isinstance(e, sandbox.TemplateLimit):
        return str(e)  # names the operation and the budget only
    if record.tainted:
        return f"{type(e).__name__} (details withheld: this file reads env(), and they could quote its value)"
    if isinstance(e, jinja2.TemplateError) and e.message:
        return e.message
    return f"{type(e).__name__}: {e}"


# What a parser quotes from its input; its own token names ('<stream end>') may stay.
_QUOTED = re.compile(r"\s*'(?!<[a-z ]+>')[^']*'|\s*\"[^\"]*\"")


def _unquoted(message: str) -> str:
    """A parser's message without what it quotes from the input (a token, a character, a line)."""
    return _QUOTED.sub("", message).strip()


# ---------------------------------------------------------------------------------------------
# JSON Schema errors as located diagnostics


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "value"


def _is_scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


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
        message = f"key name {doc.show(name)} in {where} is invalid: {hint}"
        return [Diagnostic(doc.key_loc((*path, name)), message)]
    loc = doc.loc(path)
    if kind == "type":
        types = expected if isinstance(expected, list) else [expected]
        # "null" is allowed for some fields only to permit an empty block; it is no advice.
        names = [_TYPE_NAMES.get(str(t), str(t)) for t in types if t != "null"]
        quote = " (quote it)" if "a string" in names and isinstance(value, int | float | bool) else ""
        return [Diagnostic(loc, f"{where}: {doc.show(value)} is not {' or '.join(names)}{quote}")]
    if kind == "enum":
        choices = ", ".join(str(c) for c in expected)
        return [Diagnostic(loc, f"{where}: {doc.show(value)} is not one of {choices}")]
    if kind == "const":
        return [Diagnostic(loc, f"{where}: {doc.show(value)} is not supported; expected {_show(expected)}")]
    if kind == "pattern":
        hint = _PATTERN_HINTS.get(str(expected), f"expected to match {expected}")
        return [Diagnostic(loc, f"{where}: {doc.show(value)} is invalid: {hint}")]
    if kind in ("minimum", "maximum"):
        low, high = schema.get("minimum"), schema.get("maximum")
        return [Diagnostic(loc, f"{where}: {doc.show(value)} is out of range {low}..{high}")]
    if kind == "maxLength" and isinstance(value, str):
        return [
            Diagnostic(
                loc,
                f"{where}: {doc.show(value, 40)} is {len(value)} characters long; "
                f"at most {expected} allowed",
            )
        ]
    if kind in ("minLength", "minItems"):
        return [Diagnostic(loc, f"{where}: {doc.show(value)} must not be empty")]
    return [Diagnostic(loc, f"{where}: {error.message}")]


# ---------------------------------------------------------------------------------------------
# Semantic rules (DESIGN section 3)


def tag_key_problem(key: str, show: Callable[..., str] | None = None) -> str | None:
    """Why `key` cannot be a user tag key, or None if it can."""
    quote = show or _show
    if not key:
        return "tag key must not be empty"
    if len(key) > 128:
        return f"tag key {quote(key, 40)} is {len(key)} characters long; at most 128 allowed"
    if not TAG_RE.fullmatch(key):
        bad = _first_bad_char(key) if show is None else "a character that is not allowed"
        return f"tag key {quote(key)} contains {bad}; allowed are {TAG_CHARS_HINT}"
    lowered = key.lower()
    for prefix in FORBIDDEN_TAG_PREFIXES:
        if lowered.startswith(prefix):
            return f'tag key {quote(key)} must not start with "{prefix}"'
    if key in RESERVED_TAGS or lowered.startswith(RESERVED_TAG_PREFIX):
        return f'tag key {quote(key)} is reserved for the provisioner ("{RESERVED_TAG_PREFIX}...")'
    return None


def tag_value_problem(key: str, value: str, show: Callable[..., str] | None = None) -> str | None:
    """Why `value` cannot be the value of tag `key`, or None if it can."""
    quote = show or _show
    if not value:
        return f'tag "{key}" has an empty value; values are 1..128 characters'
    if len(value) > 128:
        return f'tag "{key}" value {quote(value, 40)} is {len(value)} characters long; at most 128 allowed'
    if not TAG_RE.fullmatch(value):
        bad = _first_bad_char(value) if show is None else "a character that is not allowed"
        return f'tag "{key}" value {quote(value)} contains {bad}; allowed are {TAG_CHARS_HINT}'
    return None


def alias_problem(alias: str, show: Callable[..., str] | None = None) -> str | None:
    """Why `alias` cannot be an alias name, or None if it can."""
    quote = show or _show
    if not alias.startswith("alias/"):
        return f'alias {quote(alias)} must start with "alias/"'
    if alias.lower().startswith(FORBIDDEN_ALIAS_PREFIX):
        return f'alias {quote(alias)} must not start with "{FORBIDDEN_ALIAS_PREFIX}"'
    rest = alias.removeprefix("alias/")
    if not rest:
        return f'alias {quote(alias)} needs a name after "alias/"'
    if len(rest) > 255:
        return f"alias {quote(alias, 40)} is too long: at most 255 characters after alias/"
    if not ALIAS_RE.fullmatch(alias):
        bad = (
            _first_bad_char(rest, allowed=re.compile(r"[A-Za-z0-9_/-]"))
            if show is None
            else "a character that is not allowed"
        )
        return f"alias {quote(alias)} contains {bad}; allowed after alias/ are letters, digits, _ - /"
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
        problem = tag_key_problem(key, doc.show if doc.tainted else None)
        if problem:
            diags.append(Diagnostic(doc.key_loc((*path, key)), problem))
            continue
        if not isinstance(value, str):
            continue  # the schema reported it
        problem = tag_value_problem(key, value, doc.show if doc.tainted else None)
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
                doc.loc(("backend", "path")),
                f"backend.path {doc.show(path)} applies only to the local backend",
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

    if spec is not None and spec not in importable_specs(protection):
        allowed = ", ".join(sorted(importable_specs(protection)))
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
            problem = alias_problem(alias, doc.show if doc.tainted else None)
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
                    f"expiry {doc.show(raw_expiry)} is not a time in UTC years 1..9999; "
                    'use "never" for no expiry',
                )
            )
        except ValueError:
            diags.append(
                Diagnostic(
                    doc.loc((*base, "expiry")),
                    f'expiry {doc.show(raw_expiry)} is neither "never" nor an RFC 3339 time with a zone, '
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

    window = body.get("deletion_window_days", DEFAULT_DELETION_WINDOW_DAYS)
    if isinstance(window, float):
        # JSON Schema counts 7.0 as an integer; a planned window must be what was written.
        diags.append(
            Diagnostic(
                doc.loc((*base, "deletion_window_days")),
                "deletion_window_days: write a whole number of days (7..366), without a decimal point",
            )
        )

    material = _check_material_block(doc, name, body, base, desired_state, diags)

    if len(diags) > errors_before or spec is None or usage is None or desired_state is None:
        return None
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
    pass_env = block.get("pass_env")
    if pass_env is not None and kind is not SourceKind.COMMAND:
        diags.append(
            Diagnostic(doc.key_loc((*base, "material", "pass_env")),
                       f'key "{name}": material.pass_env is for command sources only')
        )
        return None
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
        from provisioner.trust import never_readable_rule

        names = tuple(v for v in pass_env or () if isinstance(v, str))
        for i, variable in enumerate(names):
            # The name rule here, also for --offline-material; the value rule when material is read.
            rule = never_readable_rule(variable, {})
            if rule is not None:
                where = doc.loc((*base, "material", "pass_env", i))
                diags.append(Diagnostic(where, f'key "{name}": material.pass_env {variable}: {rule}'))
        return MaterialSource(
            kind=kind, command=tuple(value), passphrase_env=block.get("passphrase_env"),
            fingerprint=block.get("fingerprint"), location=at, pass_env=names,
        )
    return None  # ill-typed: the schema reported it


# ---------------------------------------------------------------------------------------------
# Public entry points


def manifest_files(paths: Sequence[Path], diags: list[Diagnostic]) -> list[tuple[str, Path]]:
    """Expand files and folders (their *.yaml / *.yml, sorted, not recursive) to (display, path)."""
    return [(display, path) for display, path, _ in _manifest_files(paths, diags)]


def _manifest_files(paths: Sequence[Path], diags: list[Diagnostic]) -> list[tuple[str, Path, str]]:
    """(display, path, path relative to the PATH it was found through) for each manifest file.

    A file must be regular and its real path must lie under the PATH (a folder's real path; for a
    file given directly, its folder's): a symlink out of the tree is refused, naming nothing of
    where it leads."""
    out: list[tuple[str, Path, str]] = []
    seen: set[Path] = set()

    def add(display: str, path: Path, tree: Path) -> None:
        try:
            real = path.resolve(strict=True)
            info = real.stat()
        except (OSError, RuntimeError):
            diags.append(Diagnostic(Location(display), "a symbolic link that leads nowhere (or in a loop)"))
            return
        if path.is_symlink() and not real.is_relative_to(tree):
            diags.append(
                Diagnostic(Location(display), "a symbolic link out of the manifest folder: refused")
            )
            return
        if not stat.S_ISREG(info.st_mode):
            diags.append(Diagnostic(Location(display), "not a regular file"))
            return
        if real not in seen:
            seen.add(real)
            out.append((display, path, path.name))

    for given in paths:
        display = str(given)
        if given.is_dir():
            tree = given.resolve()
            found = sorted(p for p in given.iterdir() if p.suffix in MANIFEST_SUFFIXES and not p.is_dir())
            if not found:
                diags.append(Diagnostic(Location(display), "folder has no manifest files (*.yaml, *.yml)"))
            for p in found:
                add(os.path.join(display, p.name), p, tree)
        elif given.is_symlink() or given.is_file():
            add(display, given, given.parent.resolve())
        elif given.exists():
            diags.append(Diagnostic(Location(display), "not a regular file or folder"))
        else:
            diags.append(Diagnostic(Location(display), "no such file or folder"))
    return out


#: A manifest file larger than this is refused unread (a 5,000-key set is about 2 MiB in all).
MAX_MANIFEST_BYTES = 8 << 20


class _Unreadable(Exception):
    """A file that cannot be read as text; the message says why, never what it holds."""


def _read_bytes(path: Path, limit: int) -> bytes:
    """A regular file's bytes, at most `limit`: never blocks on a FIFO, never reads a device."""
    try:
        # O_NONBLOCK: opening a FIFO returns at once (and fstat then refuses it).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise _Unreadable("no such file") from None
    except PermissionError:
        raise _Unreadable("permission denied") from None
    except OSError as e:
        raise _Unreadable(e.strerror or "cannot open it") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _Unreadable("not a regular file")
        if info.st_size > limit:
            raise _Unreadable(f"{info.st_size:,} bytes is more than the {limit:,} allowed")
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise _Unreadable(f"more than the {limit:,} bytes allowed")
        return b"".join(chunks)
    except OSError as e:
        raise _Unreadable(e.strerror or "cannot read it") from None
    finally:
        os.close(fd)


def _read_text(path: Path, limit: int = MAX_MANIFEST_BYTES) -> str:
    data = _read_bytes(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Unreadable("not UTF-8 text") from None


def load_manifests(
    paths: Sequence[Path],
    *,
    variables: Mapping[str, object],
    environ: Mapping[str, str] | None = None,
    allow_env: Sequence[str] = (),
) -> ManifestSet:
    """Render, parse and check every manifest in `paths`; raise ManifestError with every problem.

    `allow_env`: the --allow-env globs (PROVISION_ALLOW_ENV in `environ` adds to them)."""
    env = os.environ if environ is None else environ
    policy = EnvPolicy.from_sources(allow_env, env)
    diags: list[Diagnostic] = []
    docs: list[_Doc] = []
    records: list[tuple[str, _EnvReads]] = []
    found = _manifest_files(paths, diags)
    files = [(display, path) for display, path, _ in found]
    digest = hashlib.sha256()
    for display, path, relative in found:
        try:
            source = _read_text(path.resolve())
        except _Unreadable as e:
            diags.append(Diagnostic(Location(display), f"cannot read the file: {e}"))
            continue
        reads = _EnvReads(source)
        records.append((display, reads))
        rendered = _render(source, display, variables, env, diags, policy, reads)
        if rendered is None:
            continue
        digest.update(relative.encode("utf-8") + b"\0" + rendered.encode("utf-8") + b"\0")
        doc = _Doc(
            display=display, folder=path.parent, source=source, env_values=dict(reads.values),
            tainted=reads.tainted,
        )
        if not _parse_yaml(rendered, doc, diags):
            continue
        diags.extend(_schema_diagnostics(doc))
        _check_strings(doc, diags)
        docs.append(doc)

    state = _SetState()
    keys: list[DesiredKey] = []
    for doc in docs:
        keys.extend(_check_doc(doc, state, diags))
    diags = _refuse_material_reads(records, docs, diags)
    diags = _scrub(docs, diags)
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
        material_scan=lambda index: _scan_for_material(docs, index),
    )


def _material_names(docs: Iterable[_Doc]) -> set[str]:
    """Every variable the set names as a material `env:` source or `passphrase_env`."""
    names: set[str] = set()
    for doc in docs:
        keys = doc.data.get("keys") if isinstance(doc.data, dict) else None
        for body in keys.values() if isinstance(keys, dict) else ():
            block = body.get("material") if isinstance(body, dict) else None
            if isinstance(block, dict):
                names.update(v for k in ("env", "passphrase_env") if isinstance(v := block.get(k), str))
    return names


def _refuse_material_reads(
    records: list[tuple[str, _EnvReads]], docs: list[_Doc], diags: list[Diagnostic]
) -> list[Diagnostic]:
    """A template's env() of a variable the set names as material, known once every file is parsed:
    the file's other diagnostics are dropped (they were made from the rendered value)."""
    names = _material_names(docs)
    if not names:
        return diags
    for display, reads in records:
        late = list(dict.fromkeys((n, line) for n, line in reads.reads if n in names))
        if not late:
            continue
        diags = [d for d in diags if d.location.file != display]
        rule = "it is named as a material source (env or passphrase_env) in the manifests"
        diags.extend(
            Diagnostic(_env_location(display, reads.source, line, name), _refusal_message(reads, name, rule))
            for name, line in late
        )
    return diags


def _scrub(docs: list[_Doc], diags: list[Diagnostic]) -> list[Diagnostic]:
    """In a file that read env(), a quoted name (a key, a tag key, a field) that the file does not
    spell out, or that holds an env() value, is replaced by words: rule messages quote names."""
    tainted = {doc.display: doc for doc in docs if doc.tainted}
    if not tainted:
        return diags
    out: list[Diagnostic] = []
    computed: dict[str, set[str]] = {}
    for d in diags:
        doc = tainted.get(d.location.file)
        if doc is not None:
            message = d.message
            for name, value in doc.env_values.items():
                if len(value) >= 3:  # shorter ones would match words of the message itself
                    message = message.replace(value, f'the value of env("{name}")')
            for text in computed.setdefault(doc.display, _computed_strings(doc)):
                message = message.replace(json.dumps(text, ensure_ascii=False), "the value")
                message = message.replace(f'"{text}"', "the value")
            d = Diagnostic(d.location, message, d.severity)
        out.append(d)
    return out


def _computed_strings(doc: _Doc) -> set[str]:
    return {t for _, _, t in _strings(doc.data, ()) if t and t not in doc.source}


def _strings(data: Any, path: _Path) -> Iterable[tuple[_Path, bool, str]]:
    """Every string of a document in document order: (path, is a mapping key, text)."""
    if isinstance(data, str):
        yield path, False, data
    elif isinstance(data, dict):
        for k, v in data.items():
            yield (*path, k), True, k
            yield from _strings(v, (*path, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _strings(v, (*path, i))


def _string_groups(doc: _Doc) -> Iterable[tuple[Location, str, list[tuple[_Path, bool, str]]]]:
    """The strings to scan together: each key's strings (DESIGN: one key's strings joined), and
    every other string on its own; with the location and words for a message."""
    data = doc.data if isinstance(doc.data, dict) else {}
    for field_name, value in data.items():
        if field_name == "keys" and isinstance(value, dict):
            for name, body in value.items():
                where = f'key "{name}"' if not doc.tainted or name in doc.source else "a key"
                group = [(("keys", name), True, name), *_strings(body, ("keys", name))]
                yield doc.key_loc(("keys", name)), where, group
        else:
            for item in [((field_name,), True, field_name), *_strings(value, (field_name,))]:
                yield doc.loc(item[0]), _where(item[0]), [item]


def _locate(
    doc: _Doc, found: Callable[[str], bool], what: str, diags: list[Diagnostic]
) -> None:
    """Report each string, else each group joined, else the file, that `found` says holds `what`."""
    def joined_found(items: Iterable[tuple[_Path, bool, str]]) -> bool:
        # Joined with and without the mapping keys: tag keys between two halves must not hide them.
        items = list(items)
        return found("".join(t for _, _, t in items)) or found("".join(t for _, k, t in items if not k))

    if not joined_found(_strings(doc.data, ())):
        return
    located = False
    for at, where, group in _string_groups(doc):
        if not joined_found(group):
            continue
        located = True
        single = [(p, is_key) for p, is_key, t in group if found(t)]
        if not single:
            diags.append(Diagnostic(at, f"{where}: its strings joined hold {what}; they are not shown"))
        for p, is_key in single:
            loc = doc.key_loc(p) if is_key else doc.loc(p)
            diags.append(Diagnostic(loc, f"{_where(p)}: the value holds {what}; it is not shown"))
    if not located:
        diags.append(
            Diagnostic(Location(doc.display, 1, 1), f"the file's strings joined hold {what}; not shown")
        )


_PEM_WORDS = "a PEM BEGIN line (-----BEGIN): key material and certificates never belong in a manifest"


def _check_strings(doc: _Doc, diags: list[Diagnostic]) -> None:
    """Rules on every rendered string: no NUL character, no PEM BEGIN line (alone or joined)."""
    for p, is_key, text in _strings(doc.data, ()):
        if "\0" in text:
            loc = doc.key_loc(p) if is_key else doc.loc(p)
            diags.append(Diagnostic(loc, f"{_where(p)}: a NUL character is not allowed in a manifest"))
    _locate(doc, leakscan.holds_pem_begin, _PEM_WORDS, diags)


def _scan_for_material(docs: list[_Doc], index: leakscan.MaterialIndex) -> list[Diagnostic]:
    diags: list[Diagnostic] = []
    if index:
        for doc in docs:
            _locate(doc, index.found_in, "16 or more bytes of private material the manifests read", diags)
    return diags


def _unique(diags: Iterable[Diagnostic]) -> list[Diagnostic]:
    return list(dict.fromkeys(diags))


def load_variables(var_args: Mapping[str, str], var_files: Sequence[Path]) -> dict[str, object]:
    """Template variables: each var file (YAML or JSON mapping) in order, then --var on top."""
    from provisioner.files import InputFileError, read_regular_text

    out: dict[str, object] = {}
    diags: list[Diagnostic] = []
    for path in var_files:
        display = str(path)
        try:
            text = read_regular_text(path, "--var-file")
        except InputFileError as e:
            diags.append(Diagnostic(Location(display), f"variable file (--var-file): {e.reason}"))
            continue
        try:
            # JSON is YAML, so one parser reads both formats.
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as e:
            # Neither the line nor what the parser quotes of it is shown: the file may be a secret.
            mark = e.problem_mark or e.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
            message = f"variable file: syntax error: {_unquoted(e.problem or 'invalid YAML')}"
            diags.append(Diagnostic(Location(display, line, col), message))
            continue
        except yaml.YAMLError as e:
            line, col = _error_position(text, e)
            diags.append(Diagnostic(Location(display, line, col), f"variable file: {_yaml_problem(e)}"))
            continue
        except ValueError:
            diags.append(
                Diagnostic(Location(display), "variable file: a number too long to read (over 4,300 digits)")
            )
            continue
        if data is None:
            continue
        if not isinstance(data, dict):
            diags.append(
                Diagnostic(
                    Location(display, 1, 1),
                    "variable file must be a mapping of names to values, not "
                    + _TYPE_NAMES.get(_json_kind(data), "that"),
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
    keep: dict[str, Material] | None = None,
    allow_commands: bool | None = None,
) -> tuple[dict[str, str], list[Diagnostic]]:
    """Read and verify each key's material: (fingerprint by key name, diagnostics incl. warnings).

    Keys without material (state absent) are skipped. Errors are located at the key's
    `material` block and prefixed with the key name; the material itself never appears.
    Material is wiped once its fingerprint is known, unless `keep` is given: then it goes there
    (by key name) for an apply to import, so a source (a command, say) is read only once a run.
    """
    # Imported here so that loading manifests never pulls in the crypto stack.
    from provisioner.material import pass_env_refusal, verify_material

    fingerprints: dict[str, str] = {}
    diags: list[Diagnostic] = []
    index = leakscan.MaterialIndex()  # every form of every material read, for the 16-byte rule
    env: Mapping[str, str] = os.environ if environ is None else environ
    material_names = frozenset(
        n for k in ms.keys if k.material is not None
        for n in (k.material.env, k.material.passphrase_env) if n is not None
    )
    for key in ms.keys:
        source = key.material
        if source is None:
            continue
        refused = [
            (v, r) for v in source.pass_env if (r := pass_env_refusal(v, env, material_names)) is not None
        ]
        if refused:
            # The command does not run: it would be handed a variable no manifest may reach.
            diags.extend(
                Diagnostic(source.location, f'key "{key.name}": material.pass_env {v}: {r}')
                for v, r in refused
            )
            continue

        def warn(message: str, _at: Location = source.location, _name: str = key.name) -> None:
            diags.append(Diagnostic(_at, f'key "{_name}": {message}', severity="warning"))

        try:
            material = verify_material(
                source, key.spec, environ=environ, warn=warn, allow_commands=allow_commands
            )
        except MaterialError as e:
            diags.append(Diagnostic(source.location, f'key "{key.name}": {e}'))
            continue
        fingerprints[key.name] = material.fingerprint
        for form in _material_forms(source, material, env):
            index.add(form)
        if keep is None:
            material.wipe()
        else:
            keep[key.name] = material
    if ms.material_scan is not None and index:
        diags.extend(ms.material_scan(index))
    del index  # the only copy of the material's bytes outside the key objects
    return fingerprints, diags


def _material_forms(
    source: MaterialSource, material: Material, environ: Mapping[str, str]
) -> list[bytes]:
    """The byte strings a manifest must not carry 16 bytes of: the source's raw bytes as read (a
    command's output is not read twice: its key's forms below cover it), the key's PKCS#8 and
    traditional (PKCS#1 / SEC1) DER, and its secret numbers (Material.secret_forms)."""
    from provisioner.material import MAX_KEY_FILE_BYTES

    forms: list[bytes] = []
    if source.kind is SourceKind.ENV and source.env is not None:
        forms.append(environ.get(source.env, "").encode("utf-8", "surrogatepass"))
    elif source.kind is SourceKind.FILE and source.file is not None:
        with contextlib.suppress(_Unreadable):  # it was just read; its parsed forms still count
            forms.append(_read_bytes(source.file, MAX_KEY_FILE_BYTES))
    forms.extend(material.secret_forms())
    return forms


def validate_manifests(
    paths: Sequence[Path],
    *,
    variables: Mapping[str, object],
    environ: Mapping[str, str] | None = None,
    offline_material: bool = False,
    keep: dict[str, Material] | None = None,
    allow_env: Sequence[str] = (),
    allow_commands: bool | None = None,
) -> tuple[ManifestSet, dict[str, str], list[Diagnostic]]:
    """The whole `validate` stage: load, then (unless offline) read every key's material.

    Returns the set, the fingerprint of each key whose material was read, and the warnings;
    raises ManifestError carrying every error (and the warnings) otherwise. `keep`: as for
    check_material; on an error whatever was kept is wiped. `allow_env`: as for load_manifests.
    """
    ms = load_manifests(paths, variables=variables, environ=environ, allow_env=allow_env)
    if offline_material:
        return ms, {}, []
    fingerprints, diags = check_material(ms, environ=environ, keep=keep, allow_commands=allow_commands)
    order = {display: i for i, display in enumerate(ms.files)}
    diags.sort(key=lambda d: (order.get(d.location.file, -1), d.location.line, d.location.column))
    if any(d.severity == "error" for d in diags):
        for material in (keep or {}).values():
            material.wipe()
        raise ManifestError(diags)
    return ms, fingerprints, diags
