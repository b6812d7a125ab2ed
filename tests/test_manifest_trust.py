"""DESIGN section 9 at the manifest stage: env() rules, the sandbox, bounded templates, no value
from the environment or a file in any message, key material in rendered values, files that
are what they claim. Every negative test checks the exit code (or error) and the message."""

from __future__ import annotations

import base64
import os
import subprocess
import time
from pathlib import Path

import pytest

from provisioner import manifest, sandbox
from provisioner.cli import main
from provisioner.errors import ManifestError

REPO = Path(__file__).resolve().parent.parent
KEY = REPO / "manifests" / "keys" / "receipts-signing.pem"
SECRET = "s3cr3t-Value-7781"
HEAD = "version: 1\nstack: demo\ndefaults:\n  instance: kst-local-software\nkeys:\n"


def key(body: str = "", material: str = f"file: {KEY}") -> str:
    return f"  signer:\n    spec: RSA_2048\n    usage: SIGN/VERIFY\n{body}    material: {{{material}}}\n"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def errors(path: Path, environ: dict[str, str] | None = None, **kwargs: object) -> list[str]:
    with pytest.raises(ManifestError) as exc:
        manifest.load_manifests([path], variables={}, environ=environ or {}, **kwargs)  # type: ignore[arg-type]
    return [str(d) for d in exc.value.diagnostics if d.severity == "error"]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    code = exc.value.code
    return (code if isinstance(code, int) else 1), out + err


def encodings(secret: str) -> list[str]:
    raw = secret.encode()
    return [
        secret, secret.upper(), secret[::-1], raw.hex(), base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    ]


def assert_no_secret(text: str, secret: str = SECRET) -> None:
    for form in encodings(secret):
        assert form not in text, form


# --------------------------------------------------------------------------- env() and its rules


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "variables matching ALIBABA_CLOUD_* are never readable"),
        ("ALICLOUD_SECRET", "variables matching ALICLOUD_* are never readable"),
        ("ALIYUN_X", "variables matching ALIYUN_* are never readable"),
        ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "variables matching ACTIONS_* are never readable"),
        ("GITHUB_TOKEN", "variables matching GITHUB_TOKEN are never readable"),
        ("GH_TOKEN", "variables matching GH_TOKEN are never readable"),
        ("PROVISION_ALLOW_ENV", "variables matching PROVISION_ALLOW_* are never readable"),
        ("OTHER", "it is not in the allow list (PROVISION_VAR_*"),
    ],
)
@pytest.mark.parametrize("default", ["", ', "fallback"'])
def test_refused_reads_name_the_variable_and_rule(tmp_path: Path, name: str, rule: str, default: str) -> None:
    f = write(tmp_path, "a.yaml", HEAD + key(f'    description: "{{{{ env("{name}"{default}) }}}}"\n'))
    environ = {name: SECRET, "PROVISION_ALLOW_ENV": "*"} if not name.startswith("PROVISION") else {name: "*"}
    if name == "OTHER":
        environ = {name: SECRET}
    got = errors(f, environ)
    assert got == [f'{f}:9:27: error: env("{name}") is refused: {rule}' + got[0].split(rule, 1)[1]]
    assert_no_secret("\n".join(got))


def test_a_value_holding_a_pem_is_never_readable(tmp_path: Path) -> None:
    f = write(tmp_path, "a.yaml", HEAD + key('    description: "{{ env("PROVISION_VAR_K", "x") }}"\n'))
    got = errors(f, {"PROVISION_VAR_K": "-----BEGIN PRIVATE KEY-----\n" + SECRET})
    assert got == [
        f'{f}:9:27: error: env("PROVISION_VAR_K") is refused: its value holds key material (-----BEGIN): '
        "such a variable is never readable by a manifest"
    ]


@pytest.mark.parametrize("field", ["env", "passphrase_env"])
def test_a_material_name_is_refused_after_parsing_in_any_file(tmp_path: Path, field: str) -> None:
    material = "env: PROVISION_VAR_PEM"
    if field == "passphrase_env":
        material = f"file: {KEY}, passphrase_env: PROVISION_VAR_PEM"
    write(tmp_path, "a.yaml", HEAD + key(material=material))
    # The reading file is parsed before the naming one: the check waits for the whole set.
    write(tmp_path, "0.yaml", 'version: 1\nstack: demo\n# {{ env("PROVISION_VAR_PEM") }} reads it\n')
    got = errors(tmp_path, {"PROVISION_VAR_PEM": SECRET})
    assert got == [
        f'{tmp_path}/0.yaml:3:11: error: env("PROVISION_VAR_PEM") is refused: it is named as a material '
        "source (env or passphrase_env) in the manifests"
    ]


def test_allow_list_from_flag_and_variable_add_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "a.yaml", 'version: 1\nstack: "{{ env("A_1") }}{{ env("B_1") }}"\n')
    environ = {"A_1": "x", "B_1": "y", "PROVISION_ALLOW_ENV": "B_*"}
    ms = manifest.load_manifests([f], variables={}, environ=environ, allow_env=["A_*"])
    assert ms.stack == "xy"
    # a given list replaces the default
    g = write(tmp_path, "b.yaml", 'version: 1\nstack: "{{ env("PROVISION_VAR_S") }}"\n')
    assert errors(g, {"PROVISION_VAR_S": "s"}, allow_env=["A_*"]) == [
        f'{g}:2:17: error: env("PROVISION_VAR_S") is refused: it is not in the allow list '
        "(A_*; set with --allow-env or PROVISION_ALLOW_ENV)"
    ]


def test_allow_env_flag_on_every_rendering_command(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("validate", "plan", "apply", "drift"):
        code, out = run([command, "--help"], capsys)
        assert code == 0 and "--allow-env GLOB" in out, command


def test_cli_allow_env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    f = write(tmp_path, "a.yaml", 'version: 1\nstack: "{{ env("MY_STACK") }}"\n')
    monkeypatch.setenv("MY_STACK", "from-env")
    monkeypatch.delenv("PROVISION_ALLOW_ENV", raising=False)
    code, out = run(["validate", str(f), "--offline-material"], capsys)
    assert code == 1 and 'env("MY_STACK") is refused: it is not in the allow list' in out
    code, out = run(["validate", str(f), "--offline-material", "--allow-env", "MY_*"], capsys)
    assert code == 0 and "stack from-env" in out


# --------------------------------------------------------------------------- the sandbox


@pytest.mark.parametrize(
    "expression",
    [
        "{% for k, v in env.environ.items() %}{{ k }}={{ v }};{% endfor %}",
        "{{ env.__call__ }}", "{{ env.missing }}", "{{ env.__closure__ }}", "{{ env.__globals__ }}",
        "{{ env|attr('__globals__') }}", "{{ range.x }}", "{{ dict.fromkeys }}", "{{ namespace.x }}",
        "{{ ''.upper.__self__ }}", "{{ ''.__class__.__mro__ }}", "{{ lipsum.__globals__ }}",
        "{{ cycler.__init__ }}", "{% include '/etc/passwd' %}", "{% import '/etc/passwd' as x %}",
        "{% extends '/etc/passwd' %}", "{{ env['environ'] }}",
    ],
)
def test_no_helper_attribute_and_no_file_is_reachable(
    tmp_path: Path, expression: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISION_VAR_SECRET", SECRET)
    f = write(tmp_path, "a.yaml", f'version: 1\nstack: s\ndescription: "{expression}"\n')
    code, out = run(["validate", str(f), "--offline-material"], capsys)
    assert code == 1
    assert f"{f}:3:" in out and ": error: " in out
    assert "root:" not in out and "Traceback" not in out
    assert_no_secret(out)


# --------------------------------------------------------------------------- bounded work


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("{{ 'a' * 3000000000 }}", "the * operator would produce more than 1,048,576"),
        ("{{ 3000000000 * 'a' }}", "the * operator would produce more than 1,048,576"),
        ("{{ [1] * 10**9 }}", "the * operator would produce more than 1,048,576"),
        ("{{ 'x'|center(3000000000) }}", "the center filter: a number argument larger than 1,048,576"),
        ("{{ 'x'.ljust(3000000000) }}", "str.ljust: a number argument larger than 1,048,576"),
        ("{{ '{:>3000000000}'.format('a') }}", "str.format is not available in manifests"),
        ("{{ '%3000000000s' % 'a' }}", "the % operator: a width or precision larger than 1,048,576"),
        ("{{ '%*s'|format(3000000000, 'a') }}", "the format filter: a number argument larger"),
        ("{{ 'a\tb'.expandtabs(100) }}", "str.expandtabs is not available in manifests"),
        ("{{ 7 ** 3000000 }}", "the ** operator would produce a number of more than 65,536 bits"),
        ("{% set s = 'a' * 1000000 %}{{ s ~ s }}", "the ~ operator would produce more than 1,048,576"),
        ("{% set s = 'a' * 1000000 %}{{ s + s }}", "the + operator would produce more than 1,048,576"),
        ("{% set s = 'a' * 2000 %}{{ s.replace('', s) }}", "str.replace could produce more than"),
        ("{% set s = 'a' * 2000 %}{{ s|replace('', s) }}", "the replace filter could produce more than"),
        ("{% set s = 'a' * 100000 %}{{ [s, s, s, s, s, s, s, s, s, s, s]|join }}",
         "a list, tuple or mapping would hold more than 1,048,576"),
        ("{% set s = 'a' * 1000000 %}{% for i in range(9) %}{{ s }}{% endfor %}",
         "the file renders to more than 8,388,608 characters"),
    ],
)
def test_template_work_is_bounded(tmp_path: Path, expression: str, message: str) -> None:
    f = write(tmp_path, "a.yaml", f'version: 1\nstack: s\ndescription: "{expression}"\n')
    start = time.monotonic()
    got = errors(f)
    assert time.monotonic() - start < 5
    assert len(got) == 1 and got[0].startswith(f"{f}:") and f"template error: {message}" in got[0], got


@pytest.mark.parametrize(
    "loop",
    [
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
        "{% macro f(n) %}{% for i in range(100000) %}{% endfor %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    ],
)
def test_a_deadline_ends_any_loop(tmp_path: Path, loop: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "RENDER_SECONDS", 0.5)
    f = write(tmp_path, "a.yaml", f"version: 1\nstack: s\n# {loop}\n")
    start = time.monotonic()
    got = errors(f)
    assert time.monotonic() - start < 5
    assert got in (
        [f"{f}:1:1: error: template error: rendering took longer than 0.5 seconds"],
        [f"{f}:3:1: error: template error: RecursionError: maximum recursion depth exceeded"],
    ) or "RecursionError" in got[0], got


def test_the_deadline_leaves_nothing_pending(tmp_path: Path) -> None:
    # A quick render after many: no stray asynchronous exception reaches later code.
    f = write(tmp_path, "a.yaml", "version: 1\nstack: {{ 's' }}\n")
    for _ in range(50):
        assert manifest.load_manifests([f], variables={}, environ={}).stack == "s"
    time.sleep(0.05)


# --------------------------------------------------------------------------- no value in messages


@pytest.mark.parametrize(
    "expression",
    [
        '{{ {}[env("PROVISION_VAR_X")] }}',
        '{{ "a"|attr(env("PROVISION_VAR_X")) }}',
        '{{ env("PROVISION_VAR_X")|int + {} }}',
        '{{ undefined_thing[env("PROVISION_VAR_X")] }}',
        '{{ env("PROVISION_VAR_X") ~ {}[1] }}',
    ],
)
def test_template_errors_never_quote_an_env_value(tmp_path: Path, expression: str) -> None:
    f = write(tmp_path, "a.yaml", f"version: 1\nstack: s\ndescription: '{expression}'\n")
    got = errors(f, {"PROVISION_VAR_X": SECRET})
    assert len(got) == 1 and "template error" in got[0] or "undefined template variable" in got[0], got
    assert_no_secret("\n".join(got))


@pytest.mark.parametrize(
    "value",
    [
        '{{ env("PROVISION_VAR_X") }}', '{{ env("PROVISION_VAR_X")|upper }}',
        '{{ env("PROVISION_VAR_X")|reverse }}', '{{ env("PROVISION_VAR_X")[2:] }}',
        '{{ env("PROVISION_VAR_X")|tojson }}', 'a{{ env("PROVISION_VAR_X") }}',
    ],
)
@pytest.mark.parametrize(
    "where",
    ["    spec: '{v}'\n", "    aliases: ['{v}']\n", "    tags: {{t: '{v}!'}}\n", "    tags: {{'{v}!': x}}\n",
     "    expiry: '{v}'\n", "    description: '{v}'\n    extra: 1\n", "    deletion_window_days: '{v}'\n",
     "    state: '{v}'\n", "    usage: '{v}'\n"],
)
def test_rule_and_schema_errors_never_quote_an_env_value(tmp_path: Path, value: str, where: str) -> None:
    f = write(tmp_path, "a.yaml", HEAD + key(where.format(v=value).replace("    spec: RSA_2048\n", "")))
    got = errors(f, {"PROVISION_VAR_X": SECRET})
    assert got and all(line.startswith(f"{f}:") for line in got), got
    assert_no_secret("\n".join(got))


def test_a_file_that_reads_no_env_still_gets_quoted_values(tmp_path: Path) -> None:
    f = write(tmp_path, "a.yaml", HEAD + key("    state: gone\n"))
    assert errors(f) == [
        f'{f}:9:12: error: keys.signer.state: "gone" is not one of '
        "present, disabled, material-deleted, absent"
    ]


def test_yaml_and_template_syntax_errors_quote_nothing_of_the_file(tmp_path: Path) -> None:
    token = "eyJhbGciOi.SECRETTOKEN.sig"
    for name, text in [
        ("a.yaml", f"{token}: [\n"),
        ("b.yaml", f"x: '{token}\n"),
        ("c.yaml", f"{{{{ {token} (( }}}}\n"),
        ("d.yaml", f"a: b\n{token}\n: : :\n"),
        ("e.yaml", f"a: \"\\q{token}\"\n"),
        ("f.yaml", f"\x01{token}\n"),
    ]:
        f = write(tmp_path, name, text)
        got = errors(f)
        assert got and "SECRETTOKEN" not in "\n".join(got), got
        assert all(line.startswith(f"{f}:") for line in got)


# --------------------------------------------------------------------------- material in values


def _der() -> bytes:
    return subprocess.run(
        ["openssl", "pkey", "-in", str(KEY), "-outform", "DER"], capture_output=True, check=True
    ).stdout


@pytest.mark.parametrize(
    "encode",
    [
        lambda b: b.hex(), lambda b: "x" + b.hex().upper(), lambda b: base64.b64encode(b).decode(),
        lambda b: "a" + base64.urlsafe_b64encode(b).decode().rstrip("="),
        lambda b: "\n".join(base64.b64encode(b).decode()[i : i + 10] for i in range(0, 60, 10)),
    ],
)
def test_material_in_a_value_is_a_located_error_that_shows_nothing(
    tmp_path: Path, encode: object, capsys: pytest.CaptureFixture[str]
) -> None:
    piece = _der()[300:345]
    text = encode(piece)  # type: ignore[operator]
    f = write(tmp_path, "a.yaml", HEAD + key(f"    description: {text!r}\n".replace("\\n", "\n      ")))
    code, out = run(["validate", str(f)], capsys)
    assert code == 1
    expected = "keys.signer.description: the value holds 16 or more bytes of private material"
    assert f"{f}:9:18: error: {expected}" in out
    assert text.split("\n")[0][:20] not in out
    # --offline-material reads no material, so only the BEGIN rule applies
    code, out = run(["validate", str(f), "--offline-material"], capsys)
    assert code == 0, out


def test_material_split_over_tag_values_is_found_in_the_key_joined(tmp_path: Path) -> None:
    b64 = base64.b64encode(_der()[500:560]).decode()
    parts = [b64[i : i + 9] for i in range(0, len(b64), 9)]
    tags = ", ".join(f"t{i}: '{p}'" for i, p in enumerate(parts))
    f = write(tmp_path, "a.yaml", HEAD + key(f"    tags: {{{tags}}}\n"))
    with pytest.raises(ManifestError) as exc:
        ms = manifest.load_manifests([f], variables={}, environ={})
        raise ManifestError(manifest.check_material(ms)[1])
    got = [str(d) for d in exc.value.diagnostics if d.severity == "error"]
    assert got == [
        f'{f}:6:3: error: key "signer": its strings joined hold 16 or more bytes of private material the '
        "manifests read; they are not shown"
    ]


# --------------------------------------------------------------------------- files


def test_symlink_out_of_the_folder_is_refused_and_quotes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = write(tmp_path, "token", f"{SECRET}\n")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "a.yaml").symlink_to(outside)
    code, out = run(["validate", str(folder), "--offline-material"], capsys)
    assert code == 1
    assert f"{folder}/a.yaml: error: a symbolic link out of the manifest folder: refused" in out
    assert_no_secret(out)
    assert str(outside) not in out
    # given directly, too
    code, out = run(["validate", str(folder / "a.yaml"), "--offline-material"], capsys)
    assert code == 1 and "a symbolic link out of the manifest folder: refused" in out


def test_symlink_inside_the_folder_is_fine(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    target = write(tmp_path / "real", "x.txt", "version: 1\nstack: s\n")
    (tmp_path / "a.yaml").symlink_to(target)
    assert manifest.load_manifests([tmp_path], variables={}, environ={}).stack == "s"


def test_fifo_and_device_and_huge_files_are_refused_quickly(tmp_path: Path) -> None:
    fifo = tmp_path / "f.yaml"
    os.mkfifo(fifo)
    start = time.monotonic()
    assert errors(tmp_path) == [f"{fifo}: error: not a regular file"]
    assert errors(fifo) == [f"{fifo}: error: not a regular file or folder"]
    assert time.monotonic() - start < 5
    big = tmp_path / "big"
    big.mkdir()
    with (big / "a.yaml").open("wb") as out:
        out.truncate(manifest.MAX_MANIFEST_BYTES + 1)
    assert errors(big) == [
        f"{big}/a.yaml: error: cannot read the file: 8,388,609 bytes is more than the 8,388,608 allowed"
    ]


@pytest.mark.parametrize("what", ["/dev/zero", "fifo", "huge-number", "not-a-mapping"])
def test_var_file_corner_cases(tmp_path: Path, what: str) -> None:
    path = Path(what)
    if what == "fifo":
        path = tmp_path / "v"
        os.mkfifo(path)
    elif what == "huge-number":
        path = write(tmp_path, "v.yaml", "a: " + "9" * 5000 + "\n")
    elif what == "not-a-mapping":
        path = write(tmp_path, "v.yaml", f"{SECRET}\n")
    with pytest.raises(ManifestError) as exc:
        manifest.load_variables({}, [path])
    (got,) = [str(d) for d in exc.value.diagnostics]
    expected = {
        "/dev/zero": (
            "/dev/zero: error: variable file (--var-file): is a character device, not a regular file"
        ),
        "fifo": f"{path}: error: variable file (--var-file): is a FIFO (named pipe), not a regular file",
        "huge-number": f"{path}: error: variable file: a number too long to read (over 4,300 digits)",
        "not-a-mapping": f"{path}:1:1: error: variable file must be a mapping of names to values, "
        "not a string",
    }[what]
    assert got == expected
    assert SECRET not in got


# --------------------------------------------------------------------------- corner cases


def test_deletion_window_must_be_a_true_integer(tmp_path: Path) -> None:
    f = write(tmp_path, "a.yaml", HEAD + key("    deletion_window_days: 7.0\n"))
    assert errors(f) == [
        f"{f}:9:27: error: deletion_window_days: write a whole number of days (7..366), "
        "without a decimal point"
    ]
    g = write(tmp_path, "b.yaml", HEAD + key("    deletion_window_days: 7\n"))
    (k,) = manifest.load_manifests([g], variables={}, environ={}).keys
    assert k.deletion_window_days == 7


def test_nul_anywhere_is_an_error(tmp_path: Path) -> None:
    f = write(tmp_path, "a.yaml", HEAD + key(material='command: [sh, "-c\\0x"]'))
    assert errors(f) == [
        f"{f}:9:30: error: keys.signer.material.command[1]: a NUL character is not allowed in a manifest"
    ]
