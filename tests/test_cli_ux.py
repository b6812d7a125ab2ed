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


# ------------------------------------------------------------------------------------------ schema

REPO = Path(__file__).resolve().parent.parent
BAD_MANIFESTS = REPO / "tests" / "bad_manifests"


def _published_errors(data: object) -> list[str]:
    from jsonschema import Draft202012Validator

    from provisioner.manifest import manifest_schema

    return sorted(e.message for e in Draft202012Validator(manifest_schema()).iter_errors(data))


def test_schema_command_prints_the_published_schema_with_a_real_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from jsonschema import Draft202012Validator

    code, out, err = run_main(["schema"], capsys)
    assert (code, err) == (0, "")
    schema = json.loads(out)
    Draft202012Validator.check_schema(schema)
    assert out == (REPO / "schemas" / "manifest.schema.json").read_text()
    assert schema["$id"] == (
        "https://raw.githubusercontent.com/byok-provisioner/byok-provisioner/main/schemas/manifest.schema.json"
    )
    assert ".invalid" not in out


def _manifest_files() -> list[Path]:
    return [*sorted(BAD_MANIFESTS.rglob("*.yaml")), REPO / "manifests" / "payments.yaml"]


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.name)
def test_the_published_schema_never_refuses_what_validate_accepts(path: Path) -> None:
    """An editor must not mark a manifest red that validate passes; one validate refuses it may
    pass (the schema cannot say every rule)."""
    import yaml

    from provisioner.errors import ManifestError
    from provisioner.manifest import load_manifests

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, ValueError):
        pytest.skip("not YAML as written (a template or a syntax error)")
    if not _published_errors(data):
        return
    with pytest.raises(ManifestError):
        load_manifests([path], variables={}, environ={})


_KEY = "  k:\n    spec: EC_P256\n    usage: SIGN/VERIFY\n    instance: kst-1\n"


@pytest.mark.parametrize(
    ("extra", "schema_says", "validate_says"),
    [
        (
            '    expiry: "2027-06-30"\n'
            "    material: {file: k.pem}\n",
            "'2027-06-30' is not valid under any of the given schemas",
            'a.yaml:8:13: error: expiry "2027-06-30" is neither "never" nor an RFC 3339 time with a zone, '
            'e.g. "2027-06-30T00:00:00Z"',
        ),
        (
            "    aliases: [web/foo]\n    material: {file: k.pem}\n",
            "'web/foo' does not match '^alias/(?![Aa][Cc][Ss])[A-Za-z0-9_/-]{1,255}$'",
            'a.yaml:8:15: error: alias "web/foo" must start with "alias/"',
        ),
        (
            "    material: {file: k.pem, env: K}\n",
            "{'file': 'k.pem', 'env': 'K'} is valid under each of {'required': ['env'], 'description': "
            "'An environment variable.'}, {'required': ['file'], 'description': 'A key file.'}",
            'a.yaml:8:15: error: key "k": material takes exactly one of file, env, command; got file and env',
        ),
        (
            "    tags: {" + ", ".join(f"t{i}: v" for i in range(18)) + "}\n    material: {file: k.pem}\n",
            "{" + ", ".join(f"'t{i}': 'v'" for i in range(18)) + "} has too many properties",
            'a.yaml:8:11: error: key "k" has 18 tags (defaults included); at most 17 are allowed because KMS '
            "allows 20 per key and the provisioner sets 3",
        ),
        (
            "",
            "'material' is a required property",
            'a.yaml:4:3: error: key "k" has no material: give material with one of file, env, command '
            "(only a key with state absent may omit it)",
        ),
    ],
)
def test_the_schema_says_what_the_validator_checks_and_validate_keeps_its_own_message(
    extra: str, schema_says: str, validate_says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import yaml

    monkeypatch.chdir(tmp_path)
    text = "version: 1\nstack: s\nkeys:\n" + _KEY + extra
    Path("a.yaml").write_text(text)
    assert _published_errors(yaml.safe_load(text)) == [schema_says]
    code, out, err = run_main(["validate", "a.yaml", "--offline-material"], capsys)
    assert (code, out) == (1, "")
    assert err.splitlines() == [validate_says, "1 error(s)"]


def test_docs_give_the_yaml_language_server_modeline() -> None:
    docs = (REPO / "docs" / "manifest.md").read_text()
    schema = json.loads((REPO / "schemas" / "manifest.schema.json").read_text())
    assert f"# yaml-language-server: $schema={schema['$id']}" in docs
    assert "provision schema" in docs
    # The pinned copy comes first: it is the version the user runs, and it needs no network.
    assert docs.index("$schema=./manifest.schema.json") < docs.index(f"$schema={schema['$id']}")


# -------------------------------------------------------------------------------------- completion


@pytest.mark.parametrize(("shell", "marker"), [("bash", "complete -o nosort -F"), ("zsh", "compdef"),
                                               ("fish", "complete --no-files --command provision")])
def test_completion_prints_clicks_script_for_the_shell(
    shell: str, marker: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(["completion", shell], capsys)
    assert (code, err) == (0, "")
    assert marker in out and "_PROVISION_COMPLETE" in out


def test_completion_answers_the_scripts_question(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("_PROVISION_COMPLETE", "bash_complete")
    monkeypatch.setenv("COMP_WORDS", "provision plan --format ")
    monkeypatch.setenv("COMP_CWORD", "3")
    code, out, _ = run_main([], capsys)
    assert (code, out) == (0, "plain,text\nplain,json\nplain,markdown\n")


def test_completion_of_an_unknown_shell_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["completion", "tcsh"], capsys)
    assert (code, out) == (1, "")
    assert "Invalid value for '{bash|zsh|fish}': 'tcsh' is not one of 'bash', 'zsh', 'fish'." in err


# ------------------------------------------------------------------------------------ proxy trap


@pytest.mark.parametrize(
    ("endpoint", "environ", "expected"),
    [
        ("http://127.0.0.1:8080", {"HTTP_PROXY": "http://proxy:3128"}, "a loopback address too"),
        ("http://[::1]:8080", {"http_proxy": "http://proxy:3128"}, "a loopback address too"),
        (
            "https://kms.cn-hangzhou.aliyuncs.com",
            {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "localhost,.aliyuncs.com"},
            "it ignores NO_PROXY, which names this host",
        ),
        ("http://127.0.0.1:8080", {"HTTPS_PROXY": "http://proxy:3128"}, None),  # not this scheme's
        ("https://kms.cn-hangzhou.aliyuncs.com", {"HTTPS_PROXY": "http://proxy:3128"}, None),  # wanted
        ("http://127.0.0.1:8080", {}, None),
    ],
)
def test_the_proxy_trap_is_named(endpoint: str, environ: dict[str, str], expected: str | None) -> None:
    from provisioner.backend.alibaba import proxy_trap

    found = proxy_trap(endpoint, environ)
    if expected is None:
        assert found is None
        return
    variable = "HTTP_PROXY" if endpoint.startswith("http:") else "HTTPS_PROXY"
    assert found == (
        f"{variable} is set: the Alibaba Cloud SDK sends every request to {endpoint} through that proxy "
        f"({expected}); unset {variable} and {variable.lower()} for this run if the proxy cannot reach it"
    )


def test_a_run_against_the_emulator_through_a_proxy_warns_before_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    example_workdir(tmp_path, monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens: the proxy refuses
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "secret")
    args = ["plan", "manifests", "--backend", "alibaba", "--endpoint", "http://127.0.0.1:1", "--region", "x"]
    code, out, err = run_main(args, capsys)
    assert (code, out) == (1, "")
    lines = err.splitlines()
    assert lines[:2] == [
        "using alibaba x at http://127.0.0.1:1",
        "warning: HTTP_PROXY is set: the Alibaba Cloud SDK sends every request to http://127.0.0.1:1 through "
        "that proxy (it ignores NO_PROXY, which names this host); unset HTTP_PROXY and http_proxy for this "
        "run if the proxy cannot reach it",
    ]
    assert lines[-1].startswith("error: cannot reach KMS at http://127.0.0.1:1: connection refused")


# ------------------------------------------------------------------------- instances at plan time


@pytest.mark.parametrize(
    ("before", "after", "message"),
    [
        (
            "instance: kst-local-software   #",
            "instance: kst-nope   #",
            "unsupported: instance 'kst-nope' is not a KMS instance of this backend (it lists: "
            "kst-local-hardware, kst-local-software); CreateKey would fail: fix `instance` in the manifest",
        ),
        (
            "  protection: SOFTWARE",
            "  protection: HSM",
            "unsupported: protection HSM is not available in instance 'kst-local-software', which offers "
            "SOFTWARE only; CreateKey would fail: use protection: SOFTWARE, or an instance that offers HSM",
        ),
    ],
)
def test_an_instance_the_backend_does_not_have_blocks_the_plan_at_the_key(
    before: str, after: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = example_workdir(tmp_path, monkeypatch)
    manifest = folder / "manifests" / "payments.yaml"
    manifest.write_text(manifest.read_text().replace(before, after))
    code, out, err = run_main(["validate", "manifests", "--offline-material"], capsys)
    assert code == 0, err  # validate cannot tell: it makes no KMS call
    code, out, err = run_main(["plan", "manifests", "--backend", "local"], capsys)
    assert code == 1
    assert "Plan blocked: " in out
    located = [line for line in err.splitlines() if line.startswith("manifests/payments.yaml:")]
    assert located, err
    assert all(line.endswith(f": {message}") for line in located)
    assert f"manifests/payments.yaml:22:3: error: receipts-signing: {message}" in located
    assert err.splitlines()[-1].startswith("error: the plan is blocked by ")
    code, _, err = run_main(["apply", "manifests", "--backend", "local", "--auto-approve"], capsys)
    assert code == 1
    assert "nothing applied" in err.splitlines()[-1]
    code, out, _ = run_main(["show", "manifests", "--backend", "local", "--format", "json"], capsys)
    assert code == 0 and "key-" not in out  # no key was created


def test_instances_are_not_read_when_nothing_is_created_or_the_backend_cannot_tell() -> None:
    from provisioner.errors import KmsApiError
    from provisioner.plan.instances import read_instances

    class Refusing:
        def list_kms_instances(self) -> list[str]:
            raise KmsApiError("ListKmsInstances", "Forbidden.NoPermission", "no", "r", 403)

    assert read_instances(Refusing(), {"kst-1"}) is None  # type: ignore[arg-type]
