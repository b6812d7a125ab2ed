"""The sandboxed Jinja2 render of one manifest file, and its env() reads.

Every env() call is recorded (name and template line) so the loader can refuse reads after the
whole set is parsed; values read never reach a message. Parses no YAML, applies no rule.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType

import jinja2
import jinja2.meta

from provisioner import sandbox
from provisioner.manifest.words import without_quotes
from provisioner.model import (
    Diagnostic,
    Diagnostics,
    Location,
)
from provisioner.trust import EnvPolicy

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
class EnvReads:
    """What one file's env() calls asked for, each with its template line; values never leave here
    except into the rendered text (and `values` serves only to keep them out of messages)."""

    source: str
    reads: list[tuple[str, int]] = field(default_factory=list)  # every allowed read: name, line
    values: dict[str, str] = field(default_factory=dict)  # name -> non-empty value returned
    refused: list[tuple[str, int, str]] = field(default_factory=list)  # name, line, rule
    missing: list[tuple[str, int]] = field(default_factory=list)
    bad_names: list[int] = field(default_factory=list)
    template: jinja2.Template | None = None
    #: The variable names the template reads (jinja2.meta), so that an unused --var can be named.
    names: frozenset[str] = frozenset()

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
    reads: EnvReads, policy: EnvPolicy, environ: Mapping[str, str]
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


def _find_in_source(source: str, pattern: re.Pattern[str]) -> tuple[int, int]:
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


def env_location(display: str, source: str, line: int, name: str | None) -> Location:
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


def refusal_message(reads: EnvReads, name: str, rule: str) -> str:
    return f"env({reads.shown_name(name)}) is refused: {rule}"


def render(
    source: str, display: str, variables: Mapping[str, object], environ: Mapping[str, str],
    diags: Diagnostics, policy: EnvPolicy | None = None, reads: EnvReads | None = None,
) -> str | None:
    """Render one file; None (with located diagnostics) when it cannot be rendered.

    Every env() call is recorded in `reads`, so that the caller can refuse, after the whole set is
    parsed, a read of a variable the set names as material. The deadline and budgets of
    provisioner.sandbox bound the work."""
    if "{{" not in source and "{%" not in source and "{#" not in source:
        return source  # nothing to render: skip Jinja, which matters for 5,000-key sets
    record = reads if reads is not None else EnvReads(source)
    try:
        return sandbox.run_with_deadline(
            lambda: _render_now(source, display, variables, environ, diags, policy, record)
        )
    except sandbox.TemplateTimeout as e:
        diags.add(Diagnostic(Location(display, 1, 1), f"template error: {e}"))
        return None


def _render_now(
    source: str, display: str, variables: Mapping[str, object], environ: Mapping[str, str],
    diags: Diagnostics, policy: EnvPolicy | None, record: EnvReads,
) -> str | None:
    template = _template(source, display, diags)
    if template is None:
        return None
    record.template = template
    record.names = frozenset(jinja2.meta.find_undeclared_variables(_JINJA.parse(source)))
    env_fn = _env_function(record, policy or EnvPolicy.from_sources((), environ), environ)
    context: dict[str, object] = {**variables, "env": env_fn}
    rendered, undefined, failure = _render_all(template, context, source, display, record)
    if record.refused or record.bad_names:
        # A refused read ends the file: nothing else it caused is reported (a stand-in "" may cause
        # errors of its own), and its rendered text is dropped.
        diags.extend(_refused_reads(display, source, record))
        return None
    if failure is not None:
        diags.add(failure)
    if undefined:
        for name, line in undefined:
            col = _name_column(source, line, name) if line else 0
            message = f'undefined template variable "{name}"'
            diags.add(Diagnostic(Location(display, line, col), message))
        return None
    if rendered is None:
        return None
    if record.missing:
        for name, line in record.missing:
            shown = record.shown_name(name)
            message = f"environment variable {shown} is not set (env({shown}))"
            diags.add(Diagnostic(env_location(display, source, line, name), message))
        return None
    return rendered


def _template(source: str, display: str, diags: Diagnostics) -> jinja2.Template | None:
    try:
        return _JINJA.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        # The line's text is not quoted: a file that is no manifest (a token, a key) must not be shown.
        message = f"template syntax error: {without_quotes(e.message or 'invalid template')}"
        diags.add(Diagnostic(Location(display, e.lineno, 1), message))
        return None
    except Exception as e:  # a deeply nested expression, say: report it, never crash
        diags.add(Diagnostic(Location(display, 1, 1), f"template error: {type(e).__name__}"))
        return None


def _render_all(
    template: jinja2.Template, context: dict[str, object], source: str, display: str, record: EnvReads
) -> tuple[str | None, list[tuple[str, int]], Diagnostic | None]:
    """Render, standing in "" for each undefined name the file spells out, so one run reports
    them all: (the text or None, the undefined names with their template lines, a failure)."""
    undefined: list[tuple[str, int]] = []  # (name, template line), in the order met
    while len(undefined) < _MAX_UNDEFINED_REPORTED:
        try:
            return sandbox.render_bounded(template, context), undefined, None
        except Exception as e:  # a user's template can raise anything: report it, never crash
            line = _template_line(e.__traceback__)
            m = _UNDEFINED_NAME.match(str(e)) if isinstance(e, jinja2.UndefinedError) else None
            if m is not None and m.group(1) not in context and _ENV_NAME.fullmatch(m.group(1)) \
                    and m.group(1) in source:
                undefined.append((m.group(1), line))
                context[m.group(1)] = ""
                continue
            if undefined:  # a later error is likely an effect of a stand-in: not reported
                return None, undefined, None
            problem = _template_problem(e, record)
            return None, undefined, Diagnostic(
                Location(display, line, 1 if line else 0), f"template error: {problem}"
            )
    return None, undefined, None


def _refused_reads(display: str, source: str, record: EnvReads) -> Diagnostics:
    out = Diagnostics(
        Diagnostic(env_location(display, source, line, name), refusal_message(record, name, rule))
        for name, line, rule in record.refused
    )
    out.extend(
        Diagnostic(
            env_location(display, source, line, None),
            "env() takes the name of an environment variable (letters, digits and _)",
        )
        for line in record.bad_names
    )
    return out


def _template_problem(e: Exception, record: EnvReads) -> str:
    """A rendering error in words. In a file that read env(), the message of the error is withheld:
    it may quote a value (a missing key, an attribute name) computed from an environment variable."""
    if isinstance(e, sandbox.TemplateLimit):
        return str(e)  # names the operation and the budget only
    if record.tainted:
        return f"{type(e).__name__} (details withheld: this file reads env(), and they could quote its value)"
    if isinstance(e, jinja2.TemplateError) and e.message:
        return e.message
    return f"{type(e).__name__}: {e}"


