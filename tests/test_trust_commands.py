"""Command sources under DESIGN section 9: opt-in from outside the manifests, a minimal environment,
no stderr echoed, bounded in time and output, and no core dumps while material is held."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from apply_support import private_pem, run_cli

from provisioner.errors import MaterialError
from provisioner.material import load_material
from provisioner.model import MaterialSource, SourceKind

pytestmark = pytest.mark.slow

SECRET = "s3cr3t-Access-Key-Secret-9f2c"
MANIFEST = """\
version: 1
stack: cmd
keys:
  signer:
    spec: EC_P256
    usage: SIGN/VERIFY
    instance: kst-local-software
    material:
      command: [{python}, {script}]
{extra}"""
SCRIPT = """\
import json, os, pathlib, sys
here = pathlib.Path(__file__).parent
(here / "ran").write_text("ran")
(here / "seen.json").write_text(json.dumps(sorted(os.environ)))
sys.stdout.write((here / "key.pem").read_text())
"""
REFUSED = (
    "command sources run a program and are refused unless allowed from outside the manifests: "
    "pass --allow-commands or set PROVISION_ALLOW_COMMANDS=1"
)
#: The material block's position in MANIFEST: line 8, column 5 (its key).
AT = ":8:5: error: key \"signer\": "


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROVISION_ALLOW_COMMANDS", raising=False)
    (tmp_path / "key.pem").write_bytes(private_pem("EC_P256"))
    (tmp_path / "key.pem").chmod(0o600)
    (tmp_path / "emit.py").write_text(SCRIPT)
    write(tmp_path)
    return tmp_path


def write(folder: Path, extra: str = "", script: str | None = None) -> Path:
    path = folder / "manifests" / "cmd.yaml"
    path.parent.mkdir(exist_ok=True)
    argv_script = script or str(folder / "emit.py")
    path.write_text(MANIFEST.format(python=sys.executable, script=argv_script, extra=extra))
    return path


def command_words(folder: Path) -> str:
    return f"command {sys.executable} {folder / 'emit.py'}"


# --- the switch ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["validate"], ["plan"], ["apply", "--auto-approve"]])
def test_without_the_switch_the_command_never_starts(stack: Path, command: list[str]) -> None:
    r = run_cli([*command, "manifests"])

    assert r.code == 1
    assert r.stdout == ""
    assert r.stderr == f"manifests/cmd.yaml{AT}{command_words(stack)}: {REFUSED}\n1 error(s)\n"
    assert not (stack / "ran").exists()
    assert not (stack / "manifests" / ".provision").exists()


@pytest.mark.parametrize("value", ["yes", "true", " 1", "1 ", "01", "", "TRUE"])
def test_only_the_exact_value_1_of_the_variable_allows(stack: Path, value: str) -> None:
    r = run_cli(["validate", "manifests"], env={"PROVISION_ALLOW_COMMANDS": value})

    assert r.code == 1
    hint = " (PROVISION_ALLOW_COMMANDS is set, but only the exact value 1 allows commands)"
    assert r.stderr == f"manifests/cmd.yaml{AT}{command_words(stack)}: {REFUSED}{hint}\n1 error(s)\n"
    assert not (stack / "ran").exists()


def test_the_flag_or_the_variable_allows(stack: Path) -> None:
    r = run_cli(["validate", "manifests", "--allow-commands"])
    assert (r.code, r.stderr) == (0, "")
    assert r.stdout == "valid: 1 key(s) in 1 file, stack cmd, material checked\n"
    (stack / "ran").unlink()

    r = run_cli(["validate", "manifests"], env={"PROVISION_ALLOW_COMMANDS": "1"})
    assert (r.code, r.stderr) == (0, "")
    assert (stack / "ran").exists()


def test_plan_and_apply_take_the_flag(stack: Path) -> None:
    r = run_cli(["plan", "manifests", "--allow-commands"])
    assert r.code == 0, r.stderr
    assert "create" in r.stdout
    r = run_cli(["apply", "manifests", "--auto-approve", "--allow-commands"])
    assert r.code == 0, r.stderr
    assert "signer: created key-" in r.stderr


def test_no_error_where_material_is_not_read(stack: Path) -> None:
    r = run_cli(["validate", "manifests", "--offline-material"])
    assert (r.code, r.stderr) == (0, "")
    r = run_cli(["drift", "manifests"])
    assert r.code == 2, r.stderr  # the key is missing: drift, not a command error
    assert "allow-commands" not in r.stderr
    assert not (stack / "ran").exists()


# --- the environment -------------------------------------------------------------------------------


def test_a_command_sees_only_path_home_lang_and_pass_env(stack: Path) -> None:
    write(stack, "      pass_env: [VAULT_ADDR, NOT_SET_ANYWHERE]\n")
    env = {
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": SECRET,
        "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAI-id",
        "RECEIPTS_KEY_PEM": private_pem("EC_P256", 1).decode(),
        "GITHUB_TOKEN": "ghp_token",
        "UNRELATED": "x",
        "VAULT_ADDR": "https://vault.example",
        "LANG": "C.UTF-8",
        "HOME": str(stack),
        "NOT_SET_ANYWHERE": None,
    }
    r = run_cli(["validate", "manifests", "--allow-commands"], env=env)

    assert (r.code, r.stderr) == (0, "")
    seen = json.loads((stack / "seen.json").read_text())
    assert seen == ["HOME", "LANG", "PATH", "VAULT_ADDR"]


def test_pass_env_of_a_never_readable_name_is_a_located_error_even_offline(stack: Path) -> None:
    write(stack, "      pass_env: [VAULT_ADDR, ALIBABA_CLOUD_ACCESS_KEY_SECRET]\n")
    for offline in ([], ["--offline-material"]):
        r = run_cli(
            ["validate", "manifests", "--allow-commands", *offline],
            env={"ALIBABA_CLOUD_ACCESS_KEY_SECRET": SECRET},
        )

        assert r.code == 1
        assert r.stderr == (
            'manifests/cmd.yaml:10:30: error: key "signer": '
            "material.pass_env ALIBABA_CLOUD_ACCESS_KEY_SECRET: "
            "variables matching ALIBABA_CLOUD_* are never readable by a manifest\n1 error(s)\n"
        )
        assert SECRET not in r.stdout + r.stderr
    assert not (stack / "ran").exists()


def test_pass_env_of_a_variable_holding_a_pem_is_refused_without_its_value(stack: Path) -> None:
    write(stack, "      pass_env: [HARMLESS_NAME]\n")
    pem = private_pem("EC_P256", 2).decode()
    r = run_cli(["validate", "manifests", "--allow-commands"], env={"HARMLESS_NAME": pem})

    assert r.code == 1
    assert r.stderr == (
        f'manifests/cmd.yaml{AT}material.pass_env HARMLESS_NAME: its value holds key material '
        "(-----BEGIN): such a variable is never readable by a manifest\n1 error(s)\n"
    )
    assert "PRIVATE" not in r.stderr and pem.splitlines()[1] not in r.stderr
    assert not (stack / "ran").exists()


def test_pass_env_of_another_keys_material_variable_is_refused(stack: Path) -> None:
    other = (
        "  other:\n    spec: EC_P256\n    usage: SIGN/VERIFY\n    instance: kst-local-software\n"
        "    material: {env: OTHER_KEY_SOURCE}\n"
    )
    write(stack, "      pass_env: [OTHER_KEY_SOURCE]\n" + other)
    r = run_cli(
        ["validate", "manifests", "--allow-commands"],
        env={"OTHER_KEY_SOURCE": private_pem("EC_P256", 3).decode().replace("-----BEGIN", "")},
    )

    assert r.code == 1
    assert (
        f'manifests/cmd.yaml{AT}material.pass_env OTHER_KEY_SOURCE: it is named as a material source '
        "(env or passphrase_env) in the manifests\n"
    ) in r.stderr
    assert not (stack / "ran").exists()


def test_pass_env_is_for_command_sources_only(stack: Path) -> None:
    path = write(stack)
    path.write_text(
        path.read_text().replace(
            f"command: [{sys.executable}, {stack / 'emit.py'}]", "file: ../key.pem\n      pass_env: [X]"
        )
    )
    r = run_cli(["validate", "manifests", "--offline-material"])

    assert r.code == 1
    assert r.stderr == (
        'manifests/cmd.yaml:10:7: error: key "signer": material.pass_env is for command sources only\n'
        "1 error(s)\n"
    )


# --- failures ----------------------------------------------------------------------------------------


def command_source(code: str) -> MaterialSource:
    return MaterialSource(kind=SourceKind.COMMAND, command=(sys.executable, "-c", code))


@pytest.mark.parametrize(
    "leak", ["hunter2", "s.Zx9Q", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7", "M I I E v Q I B"]
)
def test_a_failing_command_shows_its_status_never_its_stderr(leak: str) -> None:
    encoded = base64.b64encode(leak.encode()).decode()
    code = f"import base64, sys; print(base64.b64decode({encoded!r}).decode(), file=sys.stderr); sys.exit(4)"
    source = command_source(code)
    with pytest.raises(MaterialError) as e:
        load_material(source, allow_commands=True, environ={"PATH": os.environ["PATH"]})

    status = "exited with status 4 (its standard error is not shown)"
    assert str(e.value) == f"command {sys.executable} -c {code}: {status}"
    assert leak not in str(e.value)


def test_a_command_killed_by_a_signal_says_which() -> None:
    source = command_source("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    with pytest.raises(MaterialError, match=r": was killed by SIGKILL \(its standard error is not shown\)$"):
        load_material(source, allow_commands=True)


def test_a_timeout_kills_what_the_command_started(monkeypatch: pytest.MonkeyPatch) -> None:
    """A background child holding standard output open must not keep us waiting past the timeout."""
    import time

    monkeypatch.setattr("provisioner.material.COMMAND_TIMEOUT_SECONDS", 0.5)
    source = MaterialSource(kind=SourceKind.COMMAND, command=("sh", "-c", "sleep 30 & exit 0"))
    started = time.monotonic()
    message = r"^command sh -c sleep 30 & exit 0: timed out after 0.5 seconds$"
    with pytest.raises(MaterialError, match=message):
        load_material(source, allow_commands=True)
    assert time.monotonic() - started < 5


def test_output_is_bounded() -> None:
    source = command_source("import sys\nwhile True: sys.stdout.write('A' * 65536)")
    message = r": printed more than 1048576 bytes; a private key is a few KiB$"
    with pytest.raises(MaterialError, match=message):
        load_material(source, allow_commands=True)


def test_a_nul_in_an_argument_is_a_located_error(stack: Path) -> None:
    path = write(stack)
    path.write_text(path.read_text().replace(f"{stack / 'emit.py'}]", f'{stack / "emit.py"}, "a\\0b"]'))
    r = run_cli(["validate", "manifests", "--allow-commands"])

    assert r.code == 1
    # The manifest stage refuses the NUL at the string itself, before any material stage runs.
    line = path.read_text().splitlines()[8]
    column = line.index('"a\\0b"') + 1
    assert r.stderr == (
        f"manifests/cmd.yaml:9:{column}: error: keys.signer.material.command[2]: "
        "a NUL character is not allowed in a manifest\n1 error(s)\n"
    )
    assert "Traceback" not in r.stderr
    assert not (stack / "ran").exists()


# --- core dumps ----------------------------------------------------------------------------------------


def test_no_core_dumps_once_material_is_read(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    key.write_bytes(private_pem("EC_P256"))
    key.chmod(0o600)
    probe = textwrap.dedent(
        f"""
        import ctypes, resource
        from pathlib import Path
        from provisioner.material import load_material
        from provisioner.model import MaterialSource, SourceKind
        libc = ctypes.CDLL(None)
        soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
        if hard != 0:
            resource.setrlimit(resource.RLIMIT_CORE, (min(1 << 20, hard) if hard > 0 else 1 << 20, hard))
        before = (resource.getrlimit(resource.RLIMIT_CORE), libc.prctl(3, 0, 0, 0, 0))
        load_material(MaterialSource(kind=SourceKind.FILE, file=Path({str(key)!r})))
        after = (resource.getrlimit(resource.RLIMIT_CORE), libc.prctl(3, 0, 0, 0, 0))
        print(before[1], after[0], after[1])
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60, check=True
    ).stdout.split(maxsplit=1)
    if sys.platform.startswith("linux"):
        assert out[0] == "1"  # dumpable before: the probe would have seen the change
        assert out[1].strip() == "(0, 0) 0"
    else:  # pragma: no cover
        assert out[1].startswith("(0, 0)")
