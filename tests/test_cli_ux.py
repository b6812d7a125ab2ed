"""The command line as a new user meets it (issue 18): colour rules, messages that say what to do,
unused variables, progress, the markdown plan, the schema command, completion.

Through the CLI on the shipped example (cli_support), as a user would type it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cli_support import example_workdir, run_main, run_on_a_terminal
from e2e_support import ANSI

from provisioner.cli import use_color


class _Tty:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("no_color", "env", "tty", "expected"),
    [
        (False, {}, True, True),
        (False, {}, False, False),  # a pipe, a file, a CI log
        (True, {}, True, False),
        (False, {"NO_COLOR": "1"}, True, False),
        (False, {"NO_COLOR": ""}, True, True),  # no-color.org: an empty NO_COLOR is no request
        (False, {"TERM": "dumb"}, True, False),
        (False, {"TERM": "xterm-256color"}, True, True),
    ],
)
def test_colour_rules(
    no_color: bool, env: dict[str, str], tty: bool, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert use_color(no_color, _Tty(tty)) is expected


def test_term_dumb_gets_no_colour_on_a_real_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = example_workdir(tmp_path, monkeypatch)
    args = ["plan", "manifests", "--backend", "local"]
    code, shown = run_on_a_terminal(args, folder, {})
    assert code == 0
    assert ANSI.search(shown) is not None  # the control: this terminal gets colour
    code, shown = run_on_a_terminal(args, folder, {"TERM": "dumb"})
    assert code == 0
    assert "Plan: 3 to create" in shown
    assert "\x1b" not in shown


@pytest.mark.parametrize(
    "args",
    [
        ["validate", "manifests"],
        ["fingerprint", "manifests/keys/receipts-signing.pem"],
        ["discover", "--backend", "local"],
        ["plan", "manifests", "--backend", "local"],
        ["drift", "manifests", "--backend", "local"],
        ["show", "manifests", "--backend", "local"],
    ],
)
def test_every_command_takes_no_color(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    example_workdir(tmp_path, monkeypatch)
    code, out, err = run_main([*args, "--no-color"], capsys)
    assert "No such option" not in err
    assert code in (0, 2), err  # drift of an empty KMS: 2
    assert "\x1b" not in out + err


def test_unused_variables_are_warned_of_by_name_never_by_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = example_workdir(tmp_path, monkeypatch)
    manifest = folder / "manifests" / "payments.yaml"
    manifest.write_text(manifest.read_text().replace('owner: platform', 'owner: "{{ team }}"'))
    var_file = folder / "vars.yaml"
    var_file.write_text("team: platform\nstale_region: cn-shanghai\n")
    code, out, err = run_main(
        ["validate", "manifests", "--var-file", str(var_file), "--var", "tema=s3cr3t-value"], capsys
    )
    assert code == 0, err
    assert out.startswith("valid: 3 key(s)")
    assert sorted(err.splitlines()) == [
        f"{var_file}: warning: variable stale_region of --var-file: no manifest template reads this "
        "variable, so it changes nothing; check its spelling against the templates, or drop it",
        "<command line>: warning: --var tema: no manifest template reads this variable, so it changes "
        "nothing; check its spelling against the templates, or drop it",
    ]
    assert "s3cr3t" not in err and "cn-shanghai" not in err
    # validate --format json lists them with the other diagnostics, on standard output.
    code, out, err = run_main(
        ["validate", "manifests", "--var", "team=x", "--var", "tema=1", "--format", "json"], capsys
    )
    assert code == 0, err
    listed = json.loads(out)
    warnings = listed["diagnostics"] if isinstance(listed, dict) else listed
    assert [(d["severity"], d["file"], d["message"].split(":")[0]) for d in warnings] == [
        ("warning", "<command line>", "--var tema")
    ]
    # A variable a template reads is no warning.
    code, _, err = run_main(["validate", "manifests", "--var", "team=x"], capsys)
    assert (code, err) == (0, "")


def test_fingerprint_of_no_key_names_both_kinds_it_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    example_workdir(tmp_path, monkeypatch)
    Path("junk.txt").write_text("not a key\n")
    code, out, err = run_main(["fingerprint", "junk.txt"], capsys)
    assert (code, out) == (1, "")
    assert err == (
        "error: file junk.txt: holds no public or private key in PEM or DER (public: SubjectPublicKeyInfo or "
        "PKCS#1; private: PKCS#1, SEC1 or PKCS#8); give the key file itself\n"
    )


def test_markdown_plan_names_material_relative_and_marks_every_change_for_diff_colouring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from markdown_it import MarkdownIt

    folder = example_workdir(tmp_path, monkeypatch)
    code, _, err = run_main(["apply", "manifests", "--backend", "local", "--auto-approve"], capsys)
    assert code == 0, err
    manifest = folder / "manifests" / "payments.yaml"
    text = manifest.read_text()
    text = text.replace('expiry: "2099-12-31T23:59:59Z"', 'expiry: "2098-12-31T23:59:59Z"')  # a reimport
    text = text.replace("team: payments,", "team: settlements,")  # a tag changed in place
    text = text.replace("alias/payments/receipts-v1]", "alias/payments/receipts-v2]")  # one added, one gone
    manifest.write_text(text)
    code, out, err = run_main(["plan", "manifests", "--backend", "local", "--format", "markdown"], capsys)
    assert code == 0, err
    assert str(tmp_path) not in out  # the runner's folder is nobody's business on a pull request
    assert "material from file manifests/keys/api-tokens.pem, fingerprint sha256:" in out
    html = MarkdownIt("commonmark").enable("table").render(out)
    assert "<table>" in html
    blocks = re.findall(r'<pre><code class="language-diff">(.*?)</code></pre>', html, re.S)
    assert len(blocks) == 2
    lines = [line for block in blocks for line in block.splitlines()]
    assert lines == [
        "! ↻ material expiry: &quot;2099-12-31T23:59:59Z&quot; -&gt; &quot;2098-12-31T23:59:59Z&quot;",
        "    material from file manifests/keys/api-tokens.pem, fingerprint "
        "sha256:5b1e28559addd6a2bbb56e9a6b8bca91b46bc91d7594f4e6700f3a48e2907323",
        "! tag team: &quot;payments&quot; -&gt; &quot;settlements&quot;",
        "+ alias alias/payments/receipts-v2",
        "- alias alias/payments/receipts-v1",
    ]
