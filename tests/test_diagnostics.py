"""Diagnostics: the severity enum, the collection's order and its views."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cli_support import example_workdir, run_main
from plan_builders import desired_key, live_state
from plan_builders import manifest as manifest_set

from provisioner import manifest, model
from provisioner.diagnostics import Diagnostic, Diagnostics, Location, Severity
from provisioner.errors import ManifestError
from provisioner.manifest.rules import SetState, moved_names, one_material_per_key
from provisioner.model import DesiredKey
from provisioner.plan.planner import make_plan, missing_adoptions


def at(file: str, line: int = 0, column: int = 0, message: str = "m", warning: bool = False) -> Diagnostic:
    return Diagnostic(Location(file, line, column), message, Severity.WARNING if warning else Severity.ERROR)


def test_severity_compares_and_serialises_as_the_words_it_replaced() -> None:
    assert Severity.ERROR == "error" and Severity.WARNING == "warning"
    assert Diagnostic(Location("a.yaml"), "m").severity == "error"
    d = at("a.yaml", 3, 7, "tag key \"acs:x\"", warning=True)
    assert str(d) == 'a.yaml:3:7: warning: tag key "acs:x"'
    assert json.dumps(d.to_dict()) == json.dumps(
        {"file": "a.yaml", "line": 3, "column": 7, "severity": "warning", "message": 'tag key "acs:x"'}
    )
    assert type(d.to_dict()["severity"]) is str


def test_the_old_import_path_still_names_the_same_types() -> None:
    assert model.Diagnostic is Diagnostic and model.Location is Location
    assert model.Diagnostics is Diagnostics and model.Severity is Severity


def test_iteration_is_by_line_column_then_message_within_a_file() -> None:
    diags = Diagnostics()
    for d in (at("a", 9, 1, "z"), at("a", 2, 5, "y"), at("a", 2, 5, "b"), at("a", 2, 1, "x"), at("a")):
        diags.add(d)

    assert [(d.location.line, d.location.column, d.message) for d in diags] == [
        (0, 0, "m"), (2, 1, "x"), (2, 5, "b"), (2, 5, "y"), (9, 1, "z"),
    ]


def test_files_come_in_the_order_they_first_appear_and_ties_keep_insertion_order() -> None:
    first_warning = at("b.yaml", 4, 2, "same", warning=True)
    then_error = at("b.yaml", 4, 2, "same")
    diags = Diagnostics([at("b.yaml", 8), first_warning, at("a.yaml", 1), at("b.yaml", 1)])
    diags.extend([then_error, at("c.yaml", 5), at("a.yaml", 0)])

    assert [(d.location.file, d.location.line) for d in diags] == [
        ("b.yaml", 1), ("b.yaml", 4), ("b.yaml", 4), ("b.yaml", 8),
        ("a.yaml", 0), ("a.yaml", 1), ("c.yaml", 5),
    ]
    same = [d for d in diags if d.message == "same"]
    assert same[0] is first_warning and same[1] is then_error


def test_declared_files_come_in_their_order_after_the_others() -> None:
    diags = Diagnostics(files=["b.yaml", "a.yaml"])
    diags.extend([at("a.yaml", 1), at("b.yaml", 9), at("<command line>"), at("nope.yaml"), at("b.yaml", 2)])

    assert [(d.location.file, d.location.line) for d in diags] == [
        ("<command line>", 0), ("nope.yaml", 0), ("b.yaml", 2), ("b.yaml", 9), ("a.yaml", 1),
    ]
    # Rebuilt from its own iteration (as ManifestError does), the order stays.
    assert list(Diagnostics(diags)) == list(diags)


def test_has_errors_and_the_two_views() -> None:
    diags = Diagnostics()
    assert not diags.has_errors and len(diags) == 0 and diags.errors == () and diags.warnings == ()

    diags.add(at("a", 5, warning=True))
    assert not diags.has_errors and len(diags) == 1
    assert diags.warnings == (at("a", 5, warning=True),)

    diags.extend([at("a", 9), at("a", 1)])
    assert diags.has_errors and len(diags) == 3
    assert diags.errors == (at("a", 1), at("a", 9))
    assert diags.warnings == (at("a", 5, warning=True),)


def test_equality_is_by_content_in_order() -> None:
    assert Diagnostics([at("a", 2), at("a", 1)]) == Diagnostics([at("a", 1), at("a", 2)])
    assert Diagnostics([at("a", 1)]) != Diagnostics([at("a", 1, warning=True)])
    assert repr(Diagnostics([at("a", 1)])).startswith("Diagnostics([Diagnostic(location=Location(")


def test_manifest_error_reports_in_order_and_counts_errors() -> None:
    e = ManifestError(
        [at("m.yaml", 7, 1, "second"), at("m.yaml", 2, 3, "first"), at("m.yaml", 1, warning=True)]
    )

    assert str(e) == "m.yaml:1:0: warning: m\nm.yaml:2:3: error: first\nm.yaml:7:1: error: second"
    assert len(e.diagnostics.errors) == 2


# ------------------------------------------------------------------------------ through validate

A_RULE_ERRORS = """\
version: 1
stack: s
keys:
  k:
    spec: RSA_2048
    usage: SIGN/VERIFY
    tags: {"acs:x": "1"}
    aliases: [alias/acs-mine]
"""

B_SYNTAX_ERROR = "version: 1\nstack: s\nkeys: [\n"


def test_validate_lists_files_in_load_order_each_by_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # b.yaml's syntax error is found while parsing, before a.yaml's rules run: still a.yaml first.
    work = example_workdir(tmp_path, monkeypatch)
    folder = work / "set"
    folder.mkdir()
    (folder / "a.yaml").write_text(A_RULE_ERRORS, encoding="utf-8")
    (folder / "b.yaml").write_text(B_SYNTAX_ERROR, encoding="utf-8")

    rc, out, err = run_main(["validate", "--offline-material", "set", "nowhere.yaml"], capsys)

    assert rc == 1 and out == ""
    assert err.splitlines() == [
        "nowhere.yaml: error: no such file or folder",
        'set/a.yaml:4:3: error: key "k" has no KMS instance: asymmetric import needs one; set instance on '
        "the key or under defaults",
        'set/a.yaml:4:3: error: key "k" has no material: give material with one of file, env, command '
        "(only a key with state absent may omit it)",
        'set/a.yaml:7:12: error: tag key "acs:x" must not start with "acs:"',
        'set/a.yaml:8:15: error: alias "alias/acs-mine" must not start with "alias/acs"',
        "set/b.yaml:4:1: error: YAML syntax error: did not find expected node content (while parsing a flow "
        "node)",
        "6 error(s)",
    ]


# ------------------------------------------------------------------------------------ the stages' helpers


def test_missing_adoptions_are_diagnostics_in_the_sets_file_order() -> None:
    # "alpha" is declared in the second file, "zulu" in the first: the order is the files', not the names'.
    zulu = replace(desired_key("zulu", {"adopt": "key-z"}), adopt_at=Location("first.yaml", 8, 12))
    alpha = replace(desired_key("alpha", {"adopt": "key-a"}), adopt_at=Location("second.yaml", 2, 12))
    desired = replace(manifest_set([alpha, zulu]), files=("first.yaml", "second.yaml"))
    got = missing_adoptions(desired, live_state([]))
    assert isinstance(got, Diagnostics) and got.has_errors
    assert [d.severity for d in got] == [Severity.ERROR, Severity.ERROR]
    why = "it was not read: a key to adopt must exist; fix the reference, or remove adopt: to create a new "
    why += "key"
    lines = [f"first.yaml:8:12: error: key 'zulu': adopt: key-z: {why}",
             f"second.yaml:2:12: error: key 'alpha': adopt: key-a: {why}"]
    assert [str(d) for d in got] == lines
    assert [str(d) for d in missing_adoptions(desired, live_state([]), targets=["alpha"])] == lines[1:]
    with pytest.raises(ManifestError) as exc:
        make_plan(desired, live_state([]), now=datetime(2026, 1, 1, tzinfo=UTC), fingerprints={}, backend={})
    assert str(exc.value) == "\n".join(lines)


def test_moved_names_are_diagnostics_in_reading_order() -> None:
    # Collected by the old name (a < m): the diagnostics come by where the moved_from is written.
    state = SetState(
        names={"a": Location("b.yaml", 2, 3), "m": Location("a.yaml", 2, 3), "x": Location("a.yaml", 9, 3)},
        moved={"m": ("x", Location("a.yaml", 12, 18)), "a": ("x", Location("a.yaml", 11, 18))},
    )
    got = moved_names(state)
    assert isinstance(got, Diagnostics) and got.has_errors
    assert [str(d) for d in got] == [
        'a.yaml:11:18: error: key "x": moved_from "a", but key "a" is declared too (at b.yaml:2:3); a '
        'renamed key has one name: remove key "a" or this moved_from entry',
        'a.yaml:12:18: error: key "x": moved_from "m", but key "m" is declared too (at a.yaml:2:3); a '
        'renamed key has one name: remove key "m" or this moved_from entry',
    ]
    assert len(moved_names(SetState(names=dict(state.names)))) == 0


def test_one_material_per_key_is_diagnostics_in_reading_order() -> None:
    def key(name: str, file: str, line: int) -> DesiredKey:
        return replace(desired_key(name, {"material": {"pin": "same"}}), location=Location(file, line, 3))

    # By name "b" clashes with "a" and "c" with "a"; by place "c" (line 4) comes before "b" (line 9).
    keys = [key("a", "k.yaml", 2), key("b", "k.yaml", 9), key("c", "k.yaml", 4)]
    got = one_material_per_key(keys, {})
    assert isinstance(got, Diagnostics)
    assert [(str(d.location), d.severity) for d in got] == [
        ("k.yaml:4:3", Severity.ERROR), ("k.yaml:9:3", Severity.ERROR),
    ]
    assert [d.message.split(":")[0] for d in got] == ['key "c"', 'key "b"']
    # The material read wins over the pin: other fingerprints, no clash.
    assert len(one_material_per_key(keys, {"a": "sha256:1", "b": "sha256:2", "c": "sha256:3"})) == 0


def test_schema_errors_are_added_to_the_files_diagnostics(tmp_path: Path) -> None:
    f = tmp_path / "a.yaml"
    f.write_text(
        "version: 1\nstack: s\nkeys:\n  k:\n    spec: RSA_2048\n    colour: red\n    usage: 7\n"
        "    instance: kst-1\n    state: absent\n"
    )
    with pytest.raises(ManifestError) as exc:
        manifest.load_manifests([f], variables={}, environ={})
    got = [str(d) for d in exc.value.diagnostics]
    assert got == [
        f'{f}:6:5: error: unknown field "colour" in keys.k',
        f"{f}:7:12: error: keys.k.usage: 7 is not one of SIGN/VERIFY, ENCRYPT/DECRYPT",
    ], got
