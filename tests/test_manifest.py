"""Manifest loading and `provision validate`: the bad-manifest corpus, good paths, defaults, templates."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from provisioner import manifest
from provisioner.cli import main
from provisioner.errors import ManifestError
from provisioner.model import (
    DesiredState,
    KeySpec,
    KeyUsage,
    ProtectionLevel,
    SourceKind,
)

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
CORPUS = TESTS / "bad_manifests"
KEYS = REPO / "manifests" / "keys"
EXPECT = re.compile(r"^# expect: (\d+): (.+)$")
UNSET_ENV = "PROVISION_VAR_SURELY_UNSET"


@dataclass(frozen=True)
class Expectation:
    file: str  # as displayed, relative to tests/
    line: int
    fragment: str


def _expectations(target: Path) -> list[Expectation]:
    files = sorted(target.glob("*.yaml")) if target.is_dir() else [target]
    out = []
    for f in files:
        for text in f.read_text(encoding="utf-8").splitlines():
            m = EXPECT.match(text)
            if m:
                shown = (
                    os.path.join(str(target.relative_to(TESTS)), f.name)
                    if target.is_dir()
                    else str(f.relative_to(TESTS))
                )
                out.append(Expectation(shown, int(m.group(1)), m.group(2)))
    return out


CASES = sorted(CORPUS.glob("*.yaml")) + sorted(p for p in (CORPUS / "sets").iterdir() if p.is_dir())


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    code = exc.value.code
    return (code if isinstance(code, int) else 1), out, err


@pytest.fixture
def in_tests(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(TESTS)
    monkeypatch.delenv(UNSET_ENV, raising=False)
    yield


def test_corpus_is_big_enough() -> None:
    assert len(CASES) >= 30
    for case in CASES:
        assert _expectations(case), f"{case} has no '# expect:' header"


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_bad_manifest_is_reported_located(
    case: Path, in_tests: None, capsys: pytest.CaptureFixture[str]
) -> None:
    target = str(case.relative_to(TESTS))
    code, out, err = run_cli(["validate", target], capsys)
    assert code == 1
    assert "Traceback" not in out + err
    lines = err.splitlines()
    for exp in _expectations(case):
        prefix = f"{exp.file}:{exp.line}:"
        matching = [ln for ln in lines if ln.startswith(prefix) and ": error: " in ln and exp.fragment in ln]
        assert matching, f"no error at {prefix} containing {exp.fragment!r} in:\n{err}"
    assert re.search(r"^\d+ error\(s\)$", err, re.M)

    code, out, err = run_cli(["validate", target, "--format", "json"], capsys)
    assert code == 1
    found = json.loads(out)
    for exp in _expectations(case):
        assert any(
            d["file"] == exp.file
            and d["line"] == exp.line
            and d["severity"] == "error"
            and exp.fragment in d["message"]
            and d["column"] >= 1
            for d in found
        ), found


def test_material_errors_never_show_the_material(in_tests: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["validate", "bad_manifests/material-wrong-spec.yaml"], capsys)
    assert code == 1
    assert "BEGIN" not in out + err and "PRIVATE" not in out + err
    assert 'key "signer": file ' in err


def test_whole_corpus_as_one_set_reports_everything(
    in_tests: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every file at once: errors from all of them, none stopping the others.
    code, _, err = run_cli(["validate", "bad_manifests"], capsys)
    assert code == 1
    assert "Traceback" not in err
    reported = {ln.split(":", 1)[0] for ln in err.splitlines() if ": error: " in ln}
    material_stage = {p.name for p in CORPUS.glob("material-*.yaml") if "(material stage)" in p.read_text()}
    expected = {f"bad_manifests/{p.name}" for p in CORPUS.glob("*.yaml") if p.name not in material_stage}
    # Files whose only problem is shared (stack "demo", key "signer") still report as duplicates.
    assert expected - reported == set()


@pytest.mark.slow
def test_console_script_exit_codes_and_no_traceback() -> None:
    env = {k: v for k, v in os.environ.items() if k != UNSET_ENV}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-c", "from provisioner.cli import main; main()", "validate"]
    bad = subprocess.run(
        [*cmd, "bad_manifests/tag-key-acs.yaml", "bad_manifests/template-env-missing.yaml"],
        cwd=TESTS,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1
    assert (
        'bad_manifests/tag-key-acs.yaml:12:7: error: tag key "acs:owner" must not start with "acs:"'
        in bad.stderr
    )
    assert "bad_manifests/template-env-missing.yaml:6:" in bad.stderr
    assert "Traceback" not in bad.stderr
    good = subprocess.run([*cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == "valid: 3 key(s) in 1 file, stack payments, material checked"


# ---------------------------------------------------------------------------------------------
# The shipped example


def test_example_validates_with_material_and_no_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    for name in list(os.environ):
        monkeypatch.delenv(name)
    code, out, err = run_cli(["validate"], capsys)  # default PATH: manifests/
    assert code == 0, err
    assert out == "valid: 3 key(s) in 1 file, stack payments, material checked\n"
    assert "error" not in err


def test_example_loads_with_defaults_merged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    ms = manifest.load_manifests([Path("manifests")], variables={}, environ={})
    assert ms.stack == "payments"
    assert ms.files == ("manifests/payments.yaml",)
    assert ms.backend is None
    assert [k.name for k in ms.keys] == ["api-tokens", "card-data", "receipts-signing"]
    api, card, receipts = ms.keys
    assert receipts.tags == {"owner": "payments-oncall", "cost-center": "4711", "team": "payments"}
    assert api.tags == {"owner": "platform", "cost-center": "4711"}
    assert card.tags == {"owner": "platform", "cost-center": "4711", "data-class": "pci"}
    assert receipts.aliases == ("alias/payments/receipts", "alias/payments/receipts-v1")
    assert receipts.spec is KeySpec.RSA_2048 and receipts.usage is KeyUsage.SIGN_VERIFY
    assert card.usage is KeyUsage.ENCRYPT_DECRYPT and card.deletion_window_days == 7
    assert receipts.deletion_protection and not api.deletion_protection
    assert all(
        k.instance == "kst-local-software" and k.protection is ProtectionLevel.SOFTWARE for k in ms.keys
    )
    assert api.expiry == datetime(2099, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert receipts.expiry is None
    assert receipts.state is DesiredState.PRESENT
    assert receipts.material is not None and receipts.material.kind is SourceKind.FILE
    assert receipts.material.file == KEYS / "receipts-signing.pem"
    assert str(receipts.location) == "manifests/payments.yaml:22:3"
    assert str(receipts.material.location) == "manifests/payments.yaml:30:5"


def test_check_material_returns_fingerprints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    ms = manifest.load_manifests([Path("manifests")], variables={}, environ={})
    fingerprints, diags = manifest.check_material(ms, environ={})
    assert [d for d in diags if d.severity == "error"] == []
    assert set(fingerprints) == {"api-tokens", "card-data", "receipts-signing"}
    assert fingerprints["receipts-signing"] == (
        "sha256:ba3a7d1173d63993c919b5dc7ba494b9299e3f4b058beb9fe78689e1b3abeb0f"
    )
    assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", fp) for fp in fingerprints.values())


def test_json_format_on_success_prints_a_list(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    code, out, _ = run_cli(["validate", "manifests/", "--format", "json", "--offline-material"], capsys)
    assert code == 0
    assert json.loads(out) == []


# ---------------------------------------------------------------------------------------------
# Good paths on generated manifests

GOOD = """\
version: 1
stack: {stack}
defaults:
  instance: kst-one
  tags: {{owner: platform, env: dev}}
keys:
{keys}"""


def key_yaml(name: str, *, extra: str = "", spec: str = "RSA_2048", material: str | None = None) -> str:
    src = material if material is not None else f"file: {KEYS / 'receipts-signing.pem'}"
    return f"  {name}:\n    spec: {spec}\n    usage: SIGN/VERIFY\n{extra}    material:\n      {src}\n"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load(*paths: Path, variables: dict[str, Any] | None = None, environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return manifest.load_manifests(list(paths), variables=variables or {}, environ=environ or {})


def errors_of(
    *paths: Path, variables: dict[str, Any] | None = None, environ: dict[str, str] | None = None
) -> list[str]:
    with pytest.raises(ManifestError) as exc:
        load(*paths, variables=variables, environ=environ)
    return [str(d) for d in exc.value.diagnostics]


def test_key_values_win_over_defaults_and_tags_merge(tmp_path: Path) -> None:
    extra = "    instance: kst-two\n    protection: HSM\n    tags: {env: prod, team: a}\n"
    f = write(tmp_path, "a.yaml", GOOD.format(stack="s", keys=key_yaml("k", extra=extra, spec="RSA_4096")))
    (key,) = load(f).keys
    assert key.instance == "kst-two"
    assert key.protection is ProtectionLevel.HSM
    assert key.spec is KeySpec.RSA_4096  # HSM takes RSA_4096
    assert key.tags == {"owner": "platform", "env": "prod", "team": "a"}
    assert key.stack == "s"


def test_folder_loads_yaml_and_yml_sorted_not_recursive(tmp_path: Path) -> None:
    write(tmp_path, "b.yml", GOOD.format(stack="s", keys=key_yaml("second")))
    write(tmp_path, "a.yaml", GOOD.format(stack="s", keys=key_yaml("first")))
    write(tmp_path, "notes.txt", "not: a manifest")
    write(tmp_path, "sub/c.yaml", "this: is ignored")
    ms = load(tmp_path)
    assert ms.files == (f"{tmp_path}/a.yaml", f"{tmp_path}/b.yml")
    assert [k.name for k in ms.keys] == ["first", "second"]


def test_same_file_given_twice_is_read_once(tmp_path: Path) -> None:
    f = write(tmp_path, "a.yaml", GOOD.format(stack="s", keys=key_yaml("k")))
    assert len(load(f, tmp_path).keys) == 1


def test_empty_keys_and_defaults_are_allowed(tmp_path: Path) -> None:
    f = write(tmp_path, "a.yaml", "stack: s\ndefaults:\nkeys:\n")
    ms = load(f)
    assert ms.keys == () and ms.stack == "s"


def test_locations_use_the_path_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(
        tmp_path,
        "m/prod.yaml",
        "stack: s\nkeys:\n  k:\n    spec: RSA_2048\n    usage: SIGN/VERIFY\n"
        '    instance: i\n    tags: {"acs:owner": x}\n    material: {env: K}\n',
    )
    assert errors_of(Path("m/")) == [
        'm/prod.yaml:7:12: error: tag key "acs:owner" must not start with "acs:"'
    ]
    assert errors_of(Path("m/prod.yaml"))[0].startswith("m/prod.yaml:7:12: ")


def test_missing_path_and_empty_folder_are_located_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    errs = errors_of(tmp_path / "nope.yaml", tmp_path / "empty")
    assert errs == [
        f"{tmp_path / 'nope.yaml'}: error: no such file or folder",
        f"{tmp_path / 'empty'}: error: folder has no manifest files (*.yaml, *.yml)",
    ]


def test_cli_missing_path_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["validate", str(tmp_path / "nope")], capsys)
    assert code == 1
    assert f"{tmp_path / 'nope'}: error: no such file or folder" in err


def test_every_problem_is_collected(tmp_path: Path) -> None:
    extra = (
        '    tags: {"acs:x": a, ok: "b,c"}\n    aliases: [bad, alias/acs1]\n'
        "    expiry: tomorrow\n    colour: red\n"
    )
    f = write(tmp_path, "a.yaml", GOOD.format(stack="s", keys=key_yaml("k", extra=extra, spec="EC_SM2")))
    errs = [e.split(": error: ", 1)[1] for e in errors_of(f)]
    assert errs == [
        'key "k": spec "EC_SM2" cannot take imported material at protection SOFTWARE '
        "(it takes Aliyun_AES_256, Aliyun_SM4, EC_P256, EC_P256K, RSA_2048, RSA_3072)",
        'tag key "acs:x" must not start with "acs:"',
        'tag "ok" value "b,c" contains the character ","; '
        "allowed are letters, digits, space and / \\ _ - . + = : @",
        'alias "bad" must start with "alias/"',
        'alias "alias/acs1" must not start with "alias/acs"',
        'expiry "tomorrow" is neither "never" nor an RFC 3339 time with a zone, e.g. "2027-06-30T00:00:00Z"',
        'unknown field "colour" in keys.k',
    ]


def test_files_with_errors_do_not_hide_other_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "stack: s\nkeys: [\n")
    write(tmp_path, "b.yaml", "stack: {{ nope }}\n")
    write(tmp_path, "c.yaml", GOOD.format(stack="s", keys=key_yaml("k", extra="    tags: {aliyun: x}\n")))
    errs = errors_of(tmp_path)
    assert [e.split(":", 1)[0].rsplit("/", 1)[1] for e in errs] == ["a.yaml", "b.yaml", "c.yaml"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("expiry: 2030-01-01T00:00:00Z", datetime(2030, 1, 1, tzinfo=UTC)),  # unquoted: a YAML timestamp
        ('expiry: "2030-01-01T08:00:00+08:00"', datetime(2030, 1, 1, tzinfo=UTC)),
        ("expiry: 2030-01-01t00:00:00.5z", datetime(2030, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)),
        ("expiry: never", None),
    ],
)
def test_expiry_forms(tmp_path: Path, text: str, expected: datetime | None) -> None:
    f = write(tmp_path, "a.yaml", GOOD.format(stack="s", keys=key_yaml("k", extra=f"    {text}\n")))
    (key,) = load(f).keys
    assert key.expiry == expected
    if key.expiry is not None:
        assert key.expiry.utcoffset() is not None


def test_expiry_offset_is_kept() -> None:
    got = manifest.parse_expiry("2030-01-01T08:00:00+08:00")
    assert got is not None and got.utcoffset() == timedelta(hours=8)
    assert got.tzinfo == timezone(timedelta(hours=8))
    with pytest.raises(ValueError):
        manifest.parse_expiry("2030-13-01T00:00:00Z")


def test_absent_key_needs_no_material_but_material_deleted_does(tmp_path: Path) -> None:
    body = "  gone:\n    spec: RSA_2048\n    usage: SIGN/VERIFY\n    state: absent\n"
    f = write(tmp_path, "a.yaml", GOOD.format(stack="s", keys=body))
    (key,) = load(f).keys
    assert key.state is DesiredState.ABSENT and key.material is None
    g = write(tmp_path, "b.yaml", GOOD.format(stack="s", keys=body.replace("absent", "material-deleted")))
    assert errors_of(g) == [
        f'{g}:7:3: error: key "gone" has no material: give material with one of file, env, command '
        "(only a key with state absent may omit it)"
    ]


def test_material_sources_and_relative_paths(tmp_path: Path) -> None:
    keys = (
        key_yaml("from-file", material="file: keys/k.pem\n      passphrase_env: PASS")
        + key_yaml("from-env", material="env: K_PEM\n      fingerprint: sha256:" + "a" * 64)
        + key_yaml("from-command", material="command: [vault, read, k]")
    )
    f = write(tmp_path, "sub/a.yaml", GOOD.format(stack="s", keys=keys))
    ms = load(f)
    by = {k.name: k.material for k in ms.keys}
    assert by["from-file"] is not None and by["from-file"].file == tmp_path / "sub" / "keys" / "k.pem"
    assert by["from-file"].passphrase_env == "PASS"
    assert by["from-env"] is not None and by["from-env"].env == "K_PEM"
    assert by["from-env"].fingerprint == "sha256:" + "a" * 64
    assert by["from-command"] is not None and by["from-command"].command == ("vault", "read", "k")


def test_backend_block_and_path_relative_to_manifest(tmp_path: Path) -> None:
    f = write(tmp_path, "m/a.yaml", "stack: s\nbackend: {type: local, path: state/kms.db}\nkeys: {}\n")
    ms = load(f)
    assert ms.backend is not None and ms.backend.type == "local"
    assert ms.backend.path == tmp_path / "m" / "state" / "kms.db"
    g = write(tmp_path, "n/a.yaml", "stack: s\nbackend: {type: alibaba, region: cn-hangzhou}\n")
    ms = load(g)
    assert ms.backend is not None and (ms.backend.type, ms.backend.region) == ("alibaba", "cn-hangzhou")


def test_yaml_anchors_and_merge_keys(tmp_path: Path) -> None:
    text = (
        "stack: s\ndefaults: {instance: i}\nkeys:\n"
        "  a: &base\n    spec: EC_P256\n    usage: SIGN/VERIFY\n    material: {env: A}\n"
        "  b:\n    <<: *base\n    material: {env: B}\n"
    )
    ms = load(write(tmp_path, "a.yaml", text))
    assert [(k.name, k.spec, k.material.env if k.material else None) for k in ms.keys] == [
        ("a", KeySpec.EC_P256, "A"),
        ("b", KeySpec.EC_P256, "B"),
    ]


# ---------------------------------------------------------------------------------------------
# Templates and variables


def test_variables_and_env_function(tmp_path: Path) -> None:
    text = (
        "stack: {{ stack }}\ndefaults:\n  instance: {{ env('PROVISION_VAR_KMS_INSTANCE') }}\n"
        "  protection: {{ env('PROVISION_VAR_PROTECTION', 'SOFTWARE') }}\nkeys:\n"
        "{% for n in names %}"
        "  {{ n }}:\n    spec: EC_P256\n    usage: SIGN/VERIFY\n    material: {env: {{ n | upper }}_PEM}\n"
        "{% endfor %}"
        "{% if extra is defined %}"
        "  extra: {spec: EC_P256, usage: SIGN/VERIFY, material: {env: X}}\n"
        "{% endif %}"
    )
    f = write(tmp_path, "a.yaml", text)
    environ = {"PROVISION_VAR_KMS_INSTANCE": "kst-9"}
    ms = load(f, variables={"stack": "pay", "names": ["one", "two"]}, environ=environ)
    assert ms.stack == "pay"
    assert [(k.name, k.instance, k.protection) for k in ms.keys] == [
        ("one", "kst-9", ProtectionLevel.SOFTWARE),
        ("two", "kst-9", ProtectionLevel.SOFTWARE),
    ]
    assert [k.material.env for k in ms.keys if k.material] == ["ONE_PEM", "TWO_PEM"]


def test_env_function_reads_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVISION_VAR_TEST_STACK", "from-env")
    f = write(tmp_path, "a.yaml", "stack: {{ env('PROVISION_VAR_TEST_STACK') }}\n")
    assert manifest.load_manifests([f], variables={}).stack == "from-env"


def test_undefined_attribute_is_located(tmp_path: Path) -> None:
    f = write(tmp_path, "a.yaml", "# c\nstack: {{ cfg.name }}\n")
    assert errors_of(f, variables={"cfg": {}}) == [
        f"{f}:2:1: error: template error: 'dict object' has no attribute 'name'"
    ]


def test_template_runtime_error_is_located(tmp_path: Path) -> None:
    f = write(tmp_path, "a.yaml", "stack: s\n\nkeys: {{ 1 // 0 }}\n")
    assert errors_of(f) == [
        f"{f}:3:1: error: template error: ZeroDivisionError: integer division or modulo by zero"
    ]


def test_load_variables_files_and_overrides(tmp_path: Path) -> None:
    y = write(tmp_path, "v.yaml", "stack: a\nregion: r1\nnames: [x, y]\n")
    j = write(tmp_path, "v.json", '{"region": "r2", "n": 3}')
    got = manifest.load_variables({"stack": "cli"}, [y, j])
    assert got == {"stack": "cli", "region": "r2", "names": ["x", "y"], "n": 3}


def test_load_variables_errors_are_located(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.yaml", "a: 1\nb: [\n")
    lst = write(tmp_path, "list.json", "[1, 2]")
    with pytest.raises(ManifestError) as exc:
        manifest.load_variables({}, [bad, lst, tmp_path / "missing.yaml"])
    assert [str(d) for d in exc.value.diagnostics] == [
        f"{bad}:3:1: error: variable file: syntax error: expected the node content, but found '<stream end>'",
        f"{lst}:1:1: error: variable file must be a mapping of names to values, not a list",
        f"{tmp_path / 'missing.yaml'}: error: variable file (--var-file): no such file",
    ]


def test_cli_vars_and_var_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(
        tmp_path,
        "a.yaml",
        "stack: {{ stack }}\ndefaults: {instance: {{ inst }}}\nkeys:\n"
        "  k: {spec: EC_P256, usage: SIGN/VERIFY, material: {env: K}}\n",
    )
    vf = write(tmp_path, "vars.yaml", "stack: from-file\ninst: kst-1\n")
    code, out, err = run_cli(
        ["validate", str(f), "--var-file", str(vf), "--var", "stack=from-cli", "--offline-material"], capsys
    )
    assert code == 0, err
    assert out == "valid: 1 key(s) in 1 file, stack from-cli\n"
    code, _, err = run_cli(["validate", str(f), "--offline-material"], capsys)
    assert code == 1
    assert f'{f}:1:11: error: undefined template variable "stack"' in err
    assert f'{f}:2:25: error: undefined template variable "inst"' in err
    code, _, err = run_cli(["validate", str(f), "--var", "novalue"], capsys)
    assert code == 1 and "expected NAME=VALUE, got an argument of 7 character(s) without a name" in err
    assert "novalue" not in err


def test_offline_material_skips_reading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "a.yaml", GOOD.format(stack="s", keys=key_yaml("k", material="file: missing.pem")))
    code, out, _ = run_cli(["validate", str(f), "--offline-material"], capsys)
    assert code == 0 and out == "valid: 1 key(s) in 1 file, stack s\n"
    code, _, err = run_cli(["validate", str(f)], capsys)
    assert code == 1
    assert f'{f}:10:5: error: key "k": file {tmp_path / "missing.pem"}: no such file' in err


def test_material_warnings_do_not_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pem = tmp_path / "k.pem"
    shutil.copyfile(KEYS / "api-tokens.pem", pem)
    pem.chmod(0o644)
    f = write(
        tmp_path, "a.yaml", GOOD.format(stack="s", keys=key_yaml("k", spec="EC_P256", material="file: k.pem"))
    )
    code, out, err = run_cli(["validate", str(f)], capsys)
    assert code == 0
    assert out == "valid: 1 key(s) in 1 file, stack s, material checked\n"
    assert f'{f}:10:5: warning: key "k": file {pem}: key file is readable by group or others' in err
    code, out, _ = run_cli(["validate", str(f), "--format", "json"], capsys)
    assert code == 0
    (warning,) = json.loads(out)
    assert warning["severity"] == "warning" and warning["line"] == 10


# ---------------------------------------------------------------------------------------------
# The schema itself


def _walk_schema(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _walk_schema(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk_schema(v, f"{path}/{i}")


def test_schema_is_valid_strict_and_documented() -> None:
    from jsonschema import Draft202012Validator

    schema = manifest.manifest_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    for path, node in _walk_schema(schema, "#"):
        for name, prop in (
            node.get("properties", {}).items() if path.rsplit("/", 1)[-1] != "properties" else ()
        ):
            assert "description" in prop or "$ref" in prop, f"{path}/properties/{name} has no description"
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} allows unknown fields"
    assert "description" in schema["$defs"]["instance"] and "description" in schema["$defs"]["tags"]


def test_repo_schema_is_the_packaged_one() -> None:
    link = REPO / "schemas" / "manifest.schema.json"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert link.resolve() == manifest.SCHEMA_FILE.resolve()


def test_validator_is_compiled_once() -> None:
    assert manifest.schema._validator() is manifest.schema._validator()


# ---------------------------------------------------------------------------------------------
# Rule helpers, directly


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("ACS:owner", 'must not start with "acs:"'),
        ("Aliyun-x", 'must not start with "aliyun"'),
        ("byok-provisioner:custom", "reserved for the provisioner"),
        ("x" * 129, "129 characters long"),
        ("tab\there", 'the character "\\t"'),
        ("ünï", 'the character "ü"'),
    ],
)
def test_tag_key_rules(key: str, problem: str) -> None:
    got = manifest.tag_key_problem(key)
    assert got is not None and problem in got


def test_tag_and_alias_accept_edges() -> None:
    assert manifest.tag_key_problem("a b/c\\d_e-f.g+h=i:j@k") is None
    assert manifest.tag_key_problem("x" * 128) is None
    assert manifest.tag_key_problem("acs") is None  # only "acs:" is reserved
    assert manifest.tag_value_problem("k", "acs:anything") is None  # prefixes bind keys only
    assert manifest.alias_problem("alias/" + "a" * 255) is None
    assert manifest.alias_problem("alias/a/b_c-d") is None
    assert manifest.alias_problem("alias/" + "a" * 256) is not None
    assert manifest.alias_problem("alias/ACS-x") == 'alias "alias/ACS-x" must not start with "alias/acs"'
    reserved = (
        ' is reserved for the provisioner ("alias/byok-provisioner/..." claims an identity, '
        '"alias/byok-provisioner-lock/..." locks a stack)'
    )
    for alias in ("alias/byok-provisioner/payments/receipts", "alias/byok-provisioner-lock/payments"):
        assert manifest.alias_problem(alias) == f'alias "{alias}"' + reserved
    assert manifest.alias_problem("alias/byok-provisioners") is None


def test_a_reserved_alias_in_a_manifest_is_a_located_error(tmp_path: Path) -> None:
    extra = "    aliases: [alias/ok, alias/byok-provisioner/s/k]\n"
    f = write(tmp_path, "a.yaml", GOOD.format(stack="s", keys=key_yaml("k", extra=extra)))
    assert errors_of(f) == [
        f'{f}:10:25: error: alias "alias/byok-provisioner/s/k" is reserved for the provisioner '
        '("alias/byok-provisioner/..." claims an identity, "alias/byok-provisioner-lock/..." locks a stack)'
    ]


def _plain_yaml_documents() -> list[tuple[str, Any]]:
    """Corpus files that are YAML as written (no template, no syntax error), with their data."""
    import yaml

    out = []
    for path in [*sorted(CORPUS.rglob("*.yaml")), REPO / "manifests" / "payments.yaml"]:
        try:
            out.append((path.name, yaml.safe_load(path.read_text(encoding="utf-8"))))
        except (yaml.YAMLError, ValueError):  # ValueError: huge-number.yaml's 5,000 digits
            continue
    return out


@pytest.mark.parametrize(
    ("name", "data"), _plain_yaml_documents(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_fast_schema_check_agrees_with_jsonschema_on_the_corpus(name: str, data: Any) -> None:
    assert manifest.schema_is_valid(data) == manifest.schema._validator().is_valid(data), name


def test_only_undefined_names_actually_used_are_reported(tmp_path: Path) -> None:
    text = (
        "stack: {{ stack }}\n"
        "defaults:\n  instance: {{ inst | default('kst-1') }}\n"
        "{% if extra is defined %}# {{ extra }}{% endif %}\n"
        "keys:\n{% for n in names %}  {{ n.name }}: {}\n{% endfor %}\n"
        "# {{ stack }} again\n"
    )
    f = write(tmp_path, "a.yaml", text)
    assert errors_of(f) == [
        f'{f}:1:11: error: undefined template variable "stack"',
        f'{f}:6:13: error: undefined template variable "names"',
    ]


def test_documented_template_example_renders(tmp_path: Path) -> None:
    doc = (REPO / "docs" / "manifest.md").read_text(encoding="utf-8")
    block = doc.split("Templated, for several environments", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    f = write(tmp_path, "a.yaml", block)
    ms = load(
        f,
        variables={"env_name": "prod", "instance_id": "kst-p", "signing_keys": ["api", "web"]},
        environ={"PROVISION_VAR_LEDGER_FINGERPRINT": "sha256:" + "b" * 64},
    )
    assert ms.stack == "payments-prod"
    assert [(k.name, k.protection.value) for k in ms.keys] == [
        ("api", "SOFTWARE"), ("ledger-signing", "HSM"), ("web", "SOFTWARE"),
    ]


def test_templates_are_sandboxed(tmp_path: Path) -> None:
    f = write(tmp_path, "a.yaml", "stack: s\n# {{ ''.__class__.__mro__ }}\n")
    (err,) = errors_of(f)
    assert err.startswith(f"{f}:2:1: error: template error: ") and "__class__" in err


def test_state_disabled_is_a_declared_state(tmp_path: Path) -> None:
    f = write(
        tmp_path, "a.yaml",
        "version: 1\nstack: s\nkeys:\n  k:\n    spec: EC_P256\n    usage: SIGN/VERIFY\n    instance: kst-x\n"
        "    material: {fingerprint: sha256:" + "a" * 64 + ", file: k.pem}\n    state: disabled\n",
    )
    ms = load(f)
    assert [(k.name, k.state) for k in ms.keys] == [("k", DesiredState.DISABLED)]
