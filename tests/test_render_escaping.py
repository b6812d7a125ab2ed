"""Everything printed is escaped for its format (issue 10 point 3).

A pull request controls every string a plan or drift document shows. Text and JSON show no raw control
or bidi character; markdown cannot leave its block or add a heading, a link, HTML or a table cell.
Each case states exactly what is printed for a value holding ESC[2J, U+202E, a fence, a line-start
heading and a link; a property test puts arbitrary strings in every field at once.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioner.drift import DriftItem, DriftKind, DriftReport
from provisioner.escape import json_safe, visible
from provisioner.model import (
    DesiredState,
    Diagnostic,
    KeySpec,
    KeyStatus,
    KeyUsage,
    Location,
    ProtectionLevel,
    SourceKind,
)
from provisioner.plan.values import (
    Action,
    BackendInfo,
    Change,
    DesiredAttributes,
    KeySnapshot,
    MaterialReference,
    Note,
    Plan,
    Violation,
    ViolationCode,
)
from provisioner.views.drift import render_drift_json, render_drift_markdown, render_drift_text
from provisioner.views.markdown import md_code, md_fenced, md_text
from provisioner.views.plan import render_plan_json, render_plan_markdown, render_plan_text

NOW = datetime(2026, 6, 1, tzinfo=UTC)
#: ESC[2J (clear screen), a right-to-left override, a fence, a newline then a heading, and a link.
H = "a\x1b[2J\u202e```\n# h [l](http://e.x)"
#: H in the text views, unquoted (names, aliases, paths, argv) and quoted (values, as JSON writes them).
H_TEXT = r"a\u001b[2J\u202e```\u000a# h [l](http://e.x)"
H_QUOTED = r'"a\u001b[2J\u202e```\n# h [l](http://e.x)"'
#: H as inert markdown text, and as a code span (one backtick longer than the ``` inside).
H_MD = r"a\\u001b\[2J\\u202e\`\`\`\\u000a`#` h \[l\](http\://e\.x)"
H_CODE = "````" + H_TEXT + "````"
RAW = ("\x1b", "\u202e")


def _after(**fields: Any) -> DesiredAttributes:
    base: dict[str, Any] = {
        "spec": KeySpec.RSA_2048,
        "usage": KeyUsage.SIGN_VERIFY,
        "protection": ProtectionLevel.SOFTWARE,
        "instance": None,
        "description": "",
        "tags": {},
        "aliases": (),
        "expiry": None,
        "deletion_protection": False,
        "deletion_window_days": 30,
        "state": DesiredState.PRESENT,
        "fingerprint": "sha256:ab",
    }
    base.update(fields)
    return DesiredAttributes(**base)


def _before(**fields: Any) -> KeySnapshot:
    base: dict[str, Any] = {
        "key_id": "key-u",
        "arn": "acs:kms:cn-hangzhou:1234:key/key-u",
        "status": KeyStatus.ENABLED,
        "spec": KeySpec.RSA_2048,
        "usage": KeyUsage.SIGN_VERIFY,
        "protection": ProtectionLevel.SOFTWARE,
        "instance": None,
        "description": "",
        "tags": {},
        "aliases": (),
        "material_expires_at": None,
        "deletion_date": None,
        "deletion_protection": False,
        "recorded_fingerprint": None,
        "public_key_fingerprint": None,
    }
    base.update(fields)
    return KeySnapshot(**base)


def _material(kind: SourceKind, **fields: Any) -> MaterialReference:
    return MaterialReference(kind, "sha256:ab", **fields)


def _change(**fields: Any) -> Change:
    base: dict[str, Any] = {
        "key": "k",
        "key_id": None,
        "actions": (Action.CREATE, Action.IMPORT),
        "reason": "key does not exist",
        "after": _after(),
        "description": "",
        "material": _material(SourceKind.FILE, file="/m/k.pem"),
    }
    base.update(fields)
    return Change(**base)


def _plan(*changes: Change, **fields: Any) -> Plan:
    base: dict[str, Any] = {
        "stack": "payments",
        "created_at": NOW,
        "backend": BackendInfo.of({"type": "local", "path": "kms.db"}),
        "changes": changes or (_change(),),
    }
    base.update(fields)
    return Plan(**base)


def _renderings(plan: Plan) -> tuple[list[str], list[str], dict[str, Any]]:
    text = render_plan_text(plan, color=False)
    md = render_plan_markdown(plan, limit=10**9)
    doc = render_plan_json(plan)
    for out in (text, md, doc):
        assert not any(ch in out for ch in RAW)
    return text.splitlines(), md.splitlines(), json.loads(doc)


# ------------------------------------------------------------------------- one field at a time


def test_description() -> None:
    text, md, doc = _renderings(_plan(_change(description=H)))
    assert f"      + description = {H_QUOTED}" in text
    assert f"+ description = {H_QUOTED}" in md
    assert "````diff" in md and md.count("````") == 1  # the fence outgrows the ``` inside
    assert doc["changes"][0]["description"] == H_TEXT


def test_tag_key_and_value() -> None:
    text, md, doc = _renderings(_plan(_change(tags_to_set={H: "v", "t": H})))
    assert f'      + tag {H_TEXT} = "v"' in text
    assert f"      + tag t = {H_QUOTED}" in text
    assert f'+ tag {H_TEXT} = "v"' in md
    assert f"+ tag t = {H_QUOTED}" in md
    assert doc["changes"][0]["tags_to_set"] == {H_TEXT: "v", "t": H_TEXT}


def test_alias() -> None:
    text, md, doc = _renderings(_plan(_change(aliases_to_create=(H,))))
    assert f"      + alias {H_TEXT}" in text
    assert f"+ alias {H_TEXT}" in md
    assert doc["changes"][0]["aliases_to_create"] == [H_TEXT]


def test_command_argv() -> None:
    material = _material(SourceKind.COMMAND, command=("sh", "-c", H))
    text, md, doc = _renderings(_plan(_change(material=material)))
    assert f"        material from command sh -c {H_TEXT}, fingerprint sha256:ab" in text
    assert f"    material from command sh -c {H_TEXT}, fingerprint sha256:ab" in md
    assert doc["changes"][0]["material"]["command"] == ["sh", "-c", H_TEXT]


def test_file_path() -> None:
    material = _material(SourceKind.FILE, file=f"/m/{H}.pem")
    text, md, doc = _renderings(_plan(_change(material=material)))
    assert f"        material from file /m/{H_TEXT}.pem, fingerprint sha256:ab" in text
    assert f"    material from file /m/{H_TEXT}.pem, fingerprint sha256:ab" in md
    assert doc["changes"][0]["material"]["file"] == f"/m/{H_TEXT}.pem"


def test_key_name_key_id_and_reason() -> None:
    plan = _plan(_change(key=H, key_id=H, actions=(Action.UPDATE,), reason=H, after=None, description=None))
    text, md, doc = _renderings(plan)
    assert f"  ~ {H_TEXT} ({H_TEXT}): update" in text
    assert f"      # {H_TEXT}" in text
    assert f"#### `~` {H_CODE} ({H_CODE}): update" in md
    assert f"_{H_MD}_" in md
    assert (doc["changes"][0]["key"], doc["changes"][0]["reason"]) == (H_TEXT, H_TEXT)


def test_stack_and_backend() -> None:
    text, md, doc = _renderings(_plan(stack=H, backend=BackendInfo.of({"type": "local", "path": H})))
    assert text[0] == r"Stack 'a\x1b[2J\u202e```\n# h [l](http://e.x)', backend local (path " + H_TEXT + ")"
    assert md[0] == f"## Plan for stack {H_CODE}"
    assert (doc["stack"], doc["backend"]["path"]) == (H_TEXT, H_TEXT)


def test_violation_and_note_text() -> None:
    plan = _plan(
        violations=(Violation(H, ViolationCode.ALIAS_CONFLICT, H),),
        notes=(Note(H, H),),
    )
    text, md, doc = _renderings(plan)
    assert f"  ! {H_TEXT}: alias-conflict: {H_TEXT}" in text
    assert f"  # {H_TEXT}: {H_TEXT}" in text
    assert f"| {H_CODE} | `alias-conflict` | {H_MD} |" in md
    assert f"- {H_CODE}: {H_MD}" in md
    assert doc["violations"][0] == {
        "key": H_TEXT, "code": "alias-conflict", "message": H_TEXT, "target": "default"
    }


def test_brief_markdown_escapes_too() -> None:
    plan = _plan(*(_change(key=f"{H}{i}", reason=H, description="x" * 200) for i in range(20)))
    # Room for all 20 lines, hostile or benign, beside the summary table (every action word a column).
    md = render_plan_markdown(plan, limit=3_500)
    assert "```diff" not in md
    assert f"- `+` ````{H_TEXT}0````: create, import: {H_MD}" in md.splitlines()
    assert _structure(md) == _structure(render_plan_markdown(_benign(plan), limit=3_500))


def _drift(**fields: Any) -> DriftReport:
    item = {"key": "k", "kind": DriftKind.TAGS, "detail": "tags differ", "expected": "a", "found": "b"}
    item.update(fields)
    return DriftReport(stack="payments", items=(DriftItem(**item),), checked_at=NOW)


@pytest.mark.parametrize("field", ["key", "detail", "expected", "found", "stack"])
def test_drift_field(field: str) -> None:
    report = _drift() if field == "stack" else _drift(**{field: H})
    if field == "stack":
        report = replace(report, stack=H)
    text = render_drift_text(report, color=True)
    md = render_drift_markdown(report)
    doc = render_drift_json(report)
    for out in (text, md, doc):
        assert not any(ch in out for ch in RAW[1:])
    assert text.count("\x1b") == text.count("\x1b[")  # colour only: every ESC starts our own SGR code
    assert "\x1b[2J" not in text
    plain = render_drift_text(report, color=False).splitlines()
    key = H_TEXT if field == "key" else "k"
    detail = H_TEXT if field == "detail" else "tags differ"
    expected = H_QUOTED if field == "expected" else '"a"'
    found = H_QUOTED if field == "found" else '"b"'
    if field == "stack":
        assert plain[0] == r"Stack 'a\x1b[2J\u202e```\n# h [l](http://e.x)': drift found"
        assert md.splitlines()[0] == f"## Drift for stack {H_CODE}"
    assert f"  ! {key}: tags: {detail}" in plain
    assert f"      expected {expected}, found {found}" in plain
    md_key = H_CODE if field == "key" else "`k`"
    md_detail = H_MD if field == "detail" else "tags differ"
    md_expected = md_text(H_QUOTED) if field == "expected" else '"a"'
    md_found = md_text(H_QUOTED) if field == "found" else '"b"'
    assert f"| {md_key} | `tags` | {md_detail} | {md_expected} | {md_found} |" in md.splitlines()
    assert json.loads(doc)["drift"][0][field if field != "stack" else "key"] == (
        H_TEXT if field != "stack" else "k"
    )


# --------------------------------------------------------------------------------- the helpers


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[2J", r"\u001b[2J"),
        ("\x9b31m", r"\u009b31m"),  # C1 CSI
        ("a\x7fb", r"a\u007fb"),
        ("\u202a\u202b\u202c\u202d\u202e", r"\u202a\u202b\u202c\u202d\u202e"),
        ("\u2066\u2067\u2068\u2069", r"\u2066\u2067\u2068\u2069"),
        ("\u200b\u200c\u200d\u200e\u200f", r"\u200b\u200c\u200d\u200e\u200f"),
        ("\u2028\u2029\ufeff", r"\u2028\u2029\ufeff"),
        ("a\tb\r\nc\x00", r"a\u0009b\u000d\u000ac\u0000"),
        ("\U000f0000\ud800", r"\U000f0000\ud800"),  # private use, lone surrogate
        ("\u3164", r"\u3164"),  # a Hangul filler: a letter that renders as nothing
        ("日本 ok é", "日本 ok é"),
    ],
)
def test_visible(raw: str, shown: str) -> None:
    assert visible(raw) == shown


def test_visible_keeps_what_it_is_told() -> None:
    assert visible("a\nb\x1b", keep="\n") == "a\nb\\u001b"


def test_json_safe_escapes_keys_and_values_only() -> None:
    assert json_safe({"\x1b": ["\u202e", 1, None, True], "k": {"v": "\n"}}) == {
        r"\u001b": [r"\u202e", 1, None, True],
        "k": {"v": r"\u000a"},
    }


@pytest.mark.parametrize(
    ("value", "span"),
    [
        ("plain", "`plain`"),
        ("a`b", "``a`b``"),
        ("`a", "`` `a ``"),
        ("a``", "``` a`` ```"),
        (" a ", "`  a  `"),
        ("", "` `"),
    ],
)
def test_md_code(value: str, span: str) -> None:
    assert md_code(value) == span


def test_md_code_in_a_table_cell() -> None:
    assert md_code("a|b", cell=True) == r"`a\|b`"
    # A backslash before a pipe would escape the escape: it is shown as \u005c instead.
    assert md_code("a\\|b", cell=True) == r"`a\u005c\|b`"


def test_md_text() -> None:
    assert md_text("x@y #1 <details> &amp; $m$ :e: www.x ~~s~~ *b* _i_ ![i](u) a|b \\") == (
        r"x`@`y `#`1 \<details\> \&amp; \$m\$ \:e\: www\.x \~\~s\~\~ \*b\* \_i\_ \!\[i\](u) a\|b \\"
    )


def test_md_fenced() -> None:
    assert md_fenced(["a"], "diff") == ["```diff", "a", "```"]
    assert md_fenced(["~~~", "`````"], "diff") == ["``````diff", "~~~", "`````", "``````"]


def test_diagnostic_str_is_one_escaped_line() -> None:
    d = Diagnostic(Location(f"m/{H}.yaml", 3, 4), f"bad value {H}")
    assert str(d) == f"m/{H_TEXT}.yaml:3:4: error: bad value {H_TEXT}"


# ------------------------------------------------------- markdown structure, for any string at all

_PUNCT = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_CLOSE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*$")
_BLOCKS = (
    ("heading", re.compile(r"^ {0,3}(#{1,6})(?:[ \t]|$)")),
    ("quote", re.compile(r"^ {0,3}>")),
    ("html", re.compile(r"^ {0,3}<")),
    ("rule", re.compile(r"^ {0,3}(?:(?:\*[ \t]*){3,}|(?:-[ \t]*){3,}|(?:_[ \t]*){3,}|=+[ \t]*)$")),
    ("list", re.compile(r"^ {0,3}(?:[-+*]|\d{1,9}[.)])(?:[ \t]|$)")),
    ("indented", re.compile(r"^(?: {4}|\t)")),
    ("table", re.compile(r"^\|")),
)
#: Characters that make structure when neither escaped nor inside a code span.
_ACTIVE = "*_[]<>&!~$|@#:"


def _cells(line: str) -> tuple[int, str]:
    """GFM: split a table row on the pipes that no backslash escapes; the content's \\| become |."""
    delimiters, out, i = 0, [], 0
    while i < len(line):
        if line[i] == "\\" and i + 1 < len(line):
            out.append(line[i : i + 2])
            i += 2
        elif line[i] == "|":
            delimiters += 1
            out.append(" ")
            i += 1
        else:
            out.append(line[i])
            i += 1
    return delimiters, "".join(out).replace("\\|", "|")


def _inline(text: str, active: str = _ACTIVE) -> tuple[tuple[str, int], ...]:
    """What is active in a line's inline content: unescaped markup characters outside code spans,
    unmatched backtick runs and bare autolinks (CommonMark code spans and backslash escapes)."""
    found: Counter[str] = Counter()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in _PUNCT:
            i += 2
            continue
        if ch == "`":
            run = len(re.match("`+", text[i:]).group())  # type: ignore[union-attr]
            close = re.compile(rf"(?<!`)`{{{run}}}(?!`)").search(text, i + run)
            if close:
                i = close.end()
                continue
            found["unmatched `"] += 1
            i += run
            continue
        if ch in active:
            found[ch] += 1
        if text[i : i + 4].lower() == "www." or re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*://", text[i:]):
            found["autolink"] += 1
        i += 1
    return tuple(sorted(found.items()))


def _structure(md: str) -> list[tuple[Any, ...]]:
    """One entry per line: code lines inside a fence, a fence's info string, else the block kind,
    the table cell count and what is active inline. Fence lengths are not part of the structure."""
    out: list[tuple[Any, ...]] = []
    fence: str | None = None
    for line in md.split("\n"):
        if fence is not None:
            m = _CLOSE.match(line)
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
                out.append(("fence-close",))
            else:
                out.append(("code",))
            continue
        m = _FENCE.match(line)
        if m and not (m.group(1)[0] == "`" and "`" in m.group(2)):
            fence = m.group(1)
            out.append(("fence-open", m.group(2).strip()))
            continue
        kind = next((name for name, rx in _BLOCKS if rx.match(line)), "paragraph" if line else "blank")
        body = line
        if kind == "heading":
            level = re.match(r" {0,3}#+", line).group()  # type: ignore[union-attr]
            kind, body = f"h{len(level.strip())}", line[len(level) :]
        cells, active = 0, _ACTIVE
        if kind == "table":
            # The cells are the structure; a pipe left in a cell's content after the split is text.
            cells, body = _cells(line)
            active = _ACTIVE.replace("|", "")
        out.append((kind, cells, _inline(body, active)))
    assert fence is None, "a fence was left open"
    return out


def _benign(plan: Plan) -> Plan:
    """The same plan with every string replaced by a plain word."""
    return _fill(plan, "x")


def _fill(plan: Plan, s: str) -> Plan:
    def change(c: Change, i: int) -> Change:
        return replace(
            c,
            key=f"{s}{i}",
            key_id=s if c.key_id is not None else None,
            reason=s,
            description=s if c.description is not None else None,
            tags_to_set={s: s, f"t{s}t": s} if c.tags_to_set else {},
            tags_to_remove=(s,) if c.tags_to_remove else (),
            aliases_to_create=(s,) if c.aliases_to_create else (),
            aliases_to_move=(s,) if c.aliases_to_move else (),
            aliases_to_delete=(s,) if c.aliases_to_delete else (),
            before=replace(c.before, tags={s: s}, description=s) if c.before is not None else None,
            material=MaterialReference(SourceKind.COMMAND, s, command=(s, s)) if c.material else None,
            duplicates=(s,) if c.duplicates else (),
        )

    return replace(
        plan,
        stack=s,
        backend=BackendInfo.of({"type": "local", "path": s}),
        changes=tuple(change(c, i) for i, c in enumerate(plan.changes)),
        violations=tuple(Violation(s, v.code, s) for v in plan.violations),
        notes=tuple(Note(s, s) for n in plan.notes),
    )


def _full_plan() -> Plan:
    return _plan(
        _change(tags_to_set={"a": "b"}, aliases_to_create=("x",), description="d"),
        _change(
            key="u",
            key_id="key-u",
            actions=(Action.UPDATE, Action.REIMPORT),
            before=_before(tags={"a": "b"}, description="old"),
            after=_after(),
            tags_to_set={"a": "c"},
            tags_to_remove=("a",),
            aliases_to_move=("m",),
            aliases_to_delete=("d",),
            description="new",
            material=_material(SourceKind.FILE, file="/f"),
            duplicates=("key-dup",),
        ),
        violations=(Violation("k", ViolationCode.ALIAS_CONFLICT, "m"),),
        notes=(Note("n", "m"),),
    )


HOSTILE = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("`~#[]()<>&|\\*_!$:@.=+-/ \n\r\twh\x1b\u202e\u2066\u200b\x85")),
        st.characters(),
    ),
    max_size=24,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=HOSTILE)
def test_plan_markdown_structure_is_that_of_a_benign_plan(s: str) -> None:
    plan = _full_plan()
    hostile = render_plan_markdown(_fill(plan, s), limit=10**9)
    assert _structure(hostile) == _structure(render_plan_markdown(_benign(plan), limit=10**9))
    assert not any(ch in hostile for ch in "\x1b\u202e\u2066\u200b\x85\r")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=HOSTILE)
def test_drift_markdown_structure_is_that_of_a_benign_report(s: str) -> None:
    def report(v: str) -> DriftReport:
        items = (DriftItem(v, DriftKind.TAGS, v, {v: v}, [v]), DriftItem(v, DriftKind.ORPHAN, v, v, None))
        return DriftReport(stack=v, items=items, checked_at=NOW)

    hostile = render_drift_markdown(report(s))
    assert _structure(hostile) == _structure(render_drift_markdown(report("x")))


@settings(max_examples=200, deadline=None)
@given(s=HOSTILE)
def test_text_and_json_hold_no_control_or_bidi_character(s: str) -> None:
    plan, benign = _fill(_full_plan(), s), _benign(_full_plan())
    text, doc = render_plan_text(plan, color=False), render_plan_json(plan)
    for out in (text, doc):
        assert all(ch == "\n" or visible(ch) == ch for ch in out)
    # No value adds a line.
    assert len(text.splitlines()) == len(render_plan_text(benign, color=False).splitlines())
    assert len(doc.splitlines()) == len(render_plan_json(benign).splitlines())


def test_the_structure_check_sees_a_breakout() -> None:
    """The check itself: an unescaped value changes the structure it reports."""
    benign = "#### `k`\n\n```diff\n+ a\n```"
    for broken in (
        "#### `k`\n\n```diff\n+ ```\n# h\n```",  # a fence closed early, then a heading
        "#### `k` [l](u)\n\n```diff\n+ a\n```",  # a link
        "#### `k` <details>\n\n```diff\n+ a\n```",  # HTML
        "#### `k`` x\n\n```diff\n+ a\n```",  # a code span left open
        "#### `k` https://e.x\n\n```diff\n+ a\n```",  # an autolink
    ):
        assert _structure(broken) != _structure(benign), broken
    assert _structure("| a | b\\|c |") == [("table", 3, ())]
    assert _structure("| a | b|c |") == [("table", 4, ())]
