"""User mistakes found by driving the CLI as a hostile user: each exits 1 with one located message.

Every case asserts the exit code, the message and that no traceback reached the user; cases that
touch state files also check that nothing was written or lost.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import example_workdir, run_main
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from provisioner.backend.local import LocalTransport
from provisioner.errors import BackendError

NOT_STATE = "is not a local backend state file; move it aside or fix backend.path"


def with_backend(workdir: Path, block: str) -> None:
    manifest = workdir / "manifests" / "payments.yaml"
    text = manifest.read_text(encoding="utf-8")
    manifest.write_text(text.replace("\ndefaults:", f"\n{block}\ndefaults:", 1), encoding="utf-8")


# ---------------------------------------------------------------------- local backend state file


def test_local_backend_path_that_cannot_be_created(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with_backend(workdir, "backend: {type: local, path: /proc/x.db}")

    # plan reads a missing state file as an empty KMS (it writes nothing); apply must create it.
    rc, out, err = run_main(["apply", "manifests", "--auto-approve"], capsys)

    assert rc == 1
    assert out == ""
    if os.geteuid() == 0:
        # root may write anywhere by permission; the kernel still refuses a file in /proc.
        why = "cannot open or create it; check the path and its folder's permissions"
    else:
        why = "permission denied: its folder /proc is read-only; plan and drift can read it"
    assert err.endswith(f"error: local backend /proc/x.db: {why}\n")


def test_local_backend_path_that_is_a_folder(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with_backend(workdir, "backend: {type: local, path: keys}")

    rc, _, err = run_main(["plan", "manifests"], capsys)

    assert rc == 1
    folder = workdir / "manifests" / "keys"
    assert err.endswith(f"error: local backend {folder}: is a folder, not a state file\n")


@pytest.mark.parametrize("command", ["plan", "drift"])
def test_corrupted_local_state_file_is_reported_and_left_alone(
    workdir: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    state = workdir / "manifests" / ".provision" / "kms.db"
    state.parent.mkdir()
    garbage = os.urandom(4096)
    state.write_bytes(garbage)

    rc, _, err = run_main([command, "manifests"], capsys)

    assert rc == 1
    assert err.endswith(f"error: local backend {state}: {NOT_STATE}\n")
    assert state.read_bytes() == garbage
    assert sorted(p.name for p in state.parent.iterdir()) == ["kms.db"]


def test_another_programs_sqlite_file_is_not_taken_for_state(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = workdir / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE keys (a)")
    conn.commit()
    conn.close()
    with_backend(workdir, f"backend: {{type: local, path: {other}}}")

    rc, _, err = run_main(["plan", "manifests"], capsys)

    assert rc == 1
    assert err.endswith(f"error: local backend {other}: {NOT_STATE}\n")


def test_state_folder_that_is_a_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "manifests" / ".provision").write_text("not a folder", encoding="utf-8")

    rc, _, err = run_main(["plan", "manifests"], capsys)

    assert rc == 1
    assert err.endswith(
        f"error: local backend {workdir / 'manifests' / '.provision' / 'kms.db'}: "
        f"{workdir / 'manifests' / '.provision'} exists and is "
        "not a folder\n"
    )
    assert (workdir / "manifests" / ".provision").read_text(encoding="utf-8") == "not a folder"


def test_sqlite_failure_during_a_call_is_a_backend_error(tmp_path: Path) -> None:
    db = tmp_path / "kms.db"
    transport = LocalTransport(db)
    try:
        damage = sqlite3.connect(db)
        damage.execute("DROP TABLE keys")
        damage.commit()
        damage.close()
        with pytest.raises(BackendError) as info:
            transport.call("DescribeKey", {"KeyId": "key-x"})
    finally:
        transport.close()
    assert str(info.value) == f"DescribeKey: local backend {db}: no such table: keys"


# ---------------------------------------------------------------------- backend flags


@pytest.mark.parametrize(
    "endpoint",
    ["host:notaport", "http://127.0.0.1:99999", "http://127.0.0.1:0", "http://[::1", "http://user@host:1"],
)
def test_malformed_endpoint_is_refused_before_any_connection(
    workdir: Path, endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run_main(["plan", "manifests", "--endpoint", endpoint], capsys)

    assert rc == 1
    assert out == ""
    assert err == f"error: --endpoint: expected http://host:port, https://host or host, got {endpoint!r}\n"


@pytest.mark.parametrize("region", ["cn hangzhou", "../../x", "CN_HANGZHOU"])
def test_malformed_region_is_refused(workdir: Path, region: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_main(["plan", "manifests", "--backend", "alibaba", "--region", region], capsys)

    assert rc == 1
    assert out == ""
    assert err == f"error: region: expected a region id such as cn-hangzhou, got {region!r}\n"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--region", "cn-hangzhou"], "--region applies to the alibaba backend only; the backend is local"),
        (["--endpoint", "h:1"], "--endpoint applies to the alibaba backend only; the backend is local"),
    ],
)
def test_alibaba_flags_with_the_local_backend_are_refused(
    workdir: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run_main(["plan", "manifests", "--backend", "local", *flags], capsys)

    assert rc == 1
    assert out == ""
    assert err == f"error: {message}\n"
    assert not (workdir / "manifests" / ".provision").exists()


# ---------------------------------------------------------------------- fingerprint


def test_fingerprint_of_a_certificate_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert = tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "k.pem"),
         "-out", str(cert), "-subj", "/CN=x", "-days", "1"],
        check=True, capture_output=True, timeout=60,
    )

    rc, out, err = run_main(["fingerprint", str(cert)], capsys)

    assert rc == 1
    assert out == ""
    assert err == (
        f"error: file {cert}: holds a certificate, not a key; "
        f"give its public key (openssl x509 -pubkey -noout -in {cert})\n"
    )


def test_fingerprint_of_an_unsupported_public_key_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pub = tmp_path / "p384.pem"
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    pub.write_bytes(key.public_bytes(serialization.Encoding.PEM, spki))

    rc, out, err = run_main(["fingerprint", str(pub)], capsys)

    assert rc == 1
    assert out == ""
    assert err == f"error: file {pub}: public key is not of a supported spec\n"


# ---------------------------------------------------------------------- apply --plan, emulator serve


def test_apply_of_a_binary_plan_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "plan.json").write_bytes(b"\x83\xff" + os.urandom(512))

    rc, out, err = run_main(["apply", "--plan", "plan.json"], capsys)

    assert rc == 1
    assert out == ""
    assert err == "error: --plan plan.json: not a plan file (not UTF-8 text)\n"
    assert not (workdir / "manifests" / ".provision").exists()


def test_emulator_db_of_another_schema_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "state.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '7')")
    conn.commit()
    conn.close()

    rc, out, err = run_main(["emulator", "serve", "--port", "0", "--db", str(db)], capsys)

    assert rc == 1
    assert out == ""
    assert err == f"error: cannot open emulator state {db}: not an emulator state file of this version\n"


def test_emulator_empty_host_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_main(["emulator", "serve", "--host", "", "--port", "0"], capsys)

    assert rc == 1
    assert out == ""
    assert "Invalid value for --host: expected an address to listen on, got ''" in err


@pytest.mark.slow
def test_console_script_reports_a_corrupted_state_file(workdir: Path) -> None:
    """The installed `provision` script, not main(): same exit code, same message, no traceback."""
    script = Path(sys.executable).parent / "provision"
    if not script.exists():
        pytest.skip("console script not installed next to this interpreter")
    (workdir / "manifests" / ".provision").mkdir()
    (workdir / "manifests" / ".provision" / "kms.db").write_bytes(os.urandom(2048))

    done = subprocess.run(
        [str(script), "drift", "manifests"], cwd=workdir, capture_output=True, text=True, timeout=120,
        check=False,
    )

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.endswith(f"{NOT_STATE}\n")


def test_apply_of_a_plan_whose_stack_was_edited_is_refused(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Applying it would create keys tagged for `payments` while checking `other`'s live state."""
    rc, _, _ = run_main(["plan", "manifests", "--out", "plan.json"], capsys)
    assert rc == 0
    saved = json.loads((workdir / "plan.json").read_text(encoding="utf-8"))
    saved["stack"] = "other"
    (workdir / "plan.json").write_text(json.dumps(saved), encoding="utf-8")

    rc, out, err = run_main(["apply", "--plan", "plan.json"], capsys)

    assert rc == 1
    assert out == ""
    assert err == (
        "error: plan file is malformed: changes[0].tags_to_set: byok-provisioner:stack is 'payments', "
        "not 'other' (was the file edited by hand?)\n"
    )
    transport = LocalTransport(workdir / "manifests" / ".provision" / "kms.db")
    try:
        assert transport.call("ListKeys", {"PageNumber": 1, "PageSize": 100})["TotalCount"] == 0
    finally:
        transport.close()


@pytest.mark.parametrize("expiry", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00"])
def test_expiry_beyond_what_utc_can_hold_is_a_located_error(
    workdir: Path, expiry: str, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = workdir / "manifests" / "payments.yaml"
    text = manifest.read_text(encoding="utf-8")
    manifest.write_text(text.replace('"2099-12-31T23:59:59Z"', f'"{expiry}"', 1), encoding="utf-8")

    rc, out, err = run_main(["plan", "manifests"], capsys)

    assert rc == 1
    assert out == ""
    where = "manifests/payments.yaml:39:13"
    assert f'{where}: error: expiry "{expiry}" is not a time in UTC years 1..9999; ' in err
    assert err.endswith('use "never" for no expiry\n1 error(s)\n')
    assert not (workdir / "manifests" / ".provision").exists()


def test_drift_creates_no_local_state_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """DESIGN: drift never writes. Run where no state exists (a fresh checkout, the wrong folder),
    it reports every key missing, says the state file is absent, and leaves no .provision/ behind."""
    rc, out, err = run_main(["drift", "manifests", "--format", "json"], capsys)

    assert rc == 2
    assert err == (
        "using local backend (manifests/.provision/kms.db), which does not exist yet: an empty KMS\n"
    )
    report = json.loads(out)
    assert sorted((d["key"], d["kind"]) for d in report["drift"]) == [
        ("api-tokens", "missing"), ("card-data", "missing"), ("receipts-signing", "missing")
    ]
    assert not (workdir / "manifests" / ".provision").exists()


def test_plan_text_shows_bidi_and_invisible_characters_escaped(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A description with a right-to-left override or zero-width space must not reorder or hide
    text on the reviewer's terminal (plan output is what gets approved)."""
    manifest = workdir / "manifests" / "payments.yaml"
    text = manifest.read_text(encoding="utf-8")
    old = "description: Signs API access tokens (ECDSA P-256, demo material)"
    assert old in text
    manifest.write_text(text.replace(old, 'description: "ok\\u202e lanigiro\\u200b 日本"'), encoding="utf-8")

    rc, out, _ = run_main(["plan", "manifests", "--no-color"], capsys)

    assert rc == 0
    assert '+ description = "ok\\u202e lanigiro\\u200b 日本"' in out
    assert "\u202e" not in out
    assert "\u200b" not in out


def test_alias_bomb_manifest_is_refused_quickly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Nested YAML aliases ("billion laughs") in a pull request's manifest used to expand in memory
    (minutes and tens of GB for nine levels); now validation stops at a fixed budget."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, 9):
        refs = ",".join([f"*a{level - 1}"] * 9)
        lines.append(f"a{level}: &a{level} [{refs}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join([*lines, "stack: x"]) + "\n", encoding="utf-8")

    rc, out, err = run_main(["validate", str(bomb), "--offline-material"], capsys)

    assert rc == 1
    assert out == ""
    assert err.startswith(f"{bomb}:")
    assert ": error: the document expands to more than 500,000 values (aliases repeated in aliases?)\n" in err
    assert err.endswith("1 error(s)\n")


@pytest.mark.parametrize(
    "stderr_line",
    ["MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7", "-----END PRIVATE KEY-----"],
)
def test_failing_material_command_does_not_echo_key_material(
    workdir: Path, stderr_line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed material command's stderr is never shown, only its exit status: a tool that dumped
    the key (or a token shorter than any filter would catch) to stderr must not have it printed."""
    manifest = workdir / "manifests" / "payments.yaml"
    text = manifest.read_text(encoding="utf-8")
    old = "      file: keys/api-tokens.pem\n"
    assert old in text
    (workdir / "manifests" / "dump.sh").write_text(f"echo '{stderr_line}' >&2\nexit 3\n", encoding="utf-8")
    command = f"      command: [sh, {workdir / 'manifests' / 'dump.sh'}]\n"
    manifest.write_text(text.replace(old, command), encoding="utf-8")

    rc, out, err = run_main(["validate", "manifests", "--allow-commands"], capsys)

    assert rc == 1
    assert out == ""
    assert "exited with status 3 (its standard error is not shown)\n" in err
    assert stderr_line not in err


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return example_workdir(tmp_path, monkeypatch)
