"""Files and inputs under DESIGN section 9: every written file 0600, --out never through a link or
into a pipe or device, inputs that are not regular files refused at once, the emulator's SQLite
files free of deleted material, serve off loopback only with credentials of one's own, sane --qps."""

from __future__ import annotations

import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest
from apply_support import key_entry, private_pem, run_cli, write_key, write_manifest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from emulator_support import create, new_material, wrap_for

from provisioner import sm2
from provisioner.emulator.models import KmsEngine
from provisioner.emulator.server import EmulatorConfig, PublicCredentialsExposed, is_loopback_host
from provisioner.files import InputFileError, read_regular_file
from provisioner.material import PrivateMaterial
from provisioner.model import KeySpec


class Hung(Exception):
    pass


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """A read that blocks on a FIFO or never ends on /dev/zero fails the test instead of hanging it."""

    def bail(_signum: int, _frame: FrameType | None) -> None:
        raise Hung("the command hung")

    previous = signal.signal(signal.SIGALRM, bail)
    signal.alarm(30)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROVISION_RETRY_SECONDS", "0")
    write_key(tmp_path, "signer", private_pem("EC_P256"))
    write_manifest(tmp_path, {"signer": key_entry("signer")})
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    return tmp_path


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """The loosest umask: a file that is 0600 under it was created 0600, not narrowed by luck."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def wrapping_public_key(folder: Path) -> Path:
    """An RSA_2048 wrapping public key, as GetParametersForImport would give (PEM)."""
    path = folder / "wrapping.pem"
    key = rsa.generate_private_key(65537, 2048).public_key()
    path.write_bytes(key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return path


def state_folders(work: Path) -> list[Path]:
    """The local backend's .provision folder (in the manifests' folder or the current one)."""
    return [p for p in (work / ".provision", work / "manifests" / ".provision") if p.exists()]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- inputs that are not regular files ------------------------------------------------------------

SPECIAL = [("fifo", "is a FIFO (named pipe), not a regular file"),
           ("/dev/zero", "is a character device, not a regular file")]


@pytest.mark.parametrize(("name", "reason"), SPECIAL)
def test_var_file(work: Path, name: str, reason: str) -> None:
    r = run_cli(["validate", "manifests", "--var-file", name])
    assert r.code == 1
    assert r.stdout == ""
    assert r.stderr == f"{name}: error: variable file (--var-file): {reason}\n1 error(s)\n"


@pytest.mark.parametrize(("name", "reason"), SPECIAL)
def test_plan_file(work: Path, name: str, reason: str) -> None:
    r = run_cli(["apply", "--plan", name])
    assert r.code == 1
    assert r.stderr == f"error: --plan {name}: {reason}\n"


@pytest.mark.parametrize(("name", "reason"), SPECIAL)
def test_fingerprint_file(work: Path, name: str, reason: str) -> None:
    r = run_cli(["fingerprint", name])
    assert r.code == 1
    assert r.stdout == ""
    assert r.stderr == f"error: file {name}: {reason}\n"


@pytest.mark.parametrize(("name", "reason"), SPECIAL)
def test_wrap_public_key(work: Path, name: str, reason: str) -> None:
    r = run_cli(["wrap", "--public-key", name, "--material", "keys/signer.pem"])
    assert r.code == 1
    assert r.stderr == f"error: --public-key {name}: {reason}\n"


@pytest.mark.parametrize(("name", "reason"), SPECIAL)
def test_wrap_material(work: Path, name: str, reason: str) -> None:
    r = run_cli(["wrap", "--public-key", str(wrapping_public_key(work)), "--material", name])
    shown = name if name.startswith("/") else str(work / name)
    assert r.code == 1
    assert r.stderr == f"error: --material: file {shown}: {reason}\n"


@pytest.mark.parametrize(
    "args",
    [
        ["validate", "manifests", "--var-file", "folder"],
        ["apply", "--plan", "folder"],
        ["fingerprint", "folder"],
        ["wrap", "--public-key", "folder", "--material", "keys/signer.pem"],
        ["wrap", "--public-key", "keys/signer.pem", "--material", "folder"],
    ],
)
def test_a_folder_is_refused_by_the_option_itself(work: Path, args: list[str]) -> None:
    r = run_cli(args)
    assert r.code == 1
    assert "'folder' is a directory." in r.stderr
    assert "Traceback" not in r.stderr


def test_the_reader_refuses_what_is_not_a_regular_file_and_caps_the_size(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "big").write_bytes(b"x" * 101)
    (tmp_path / "ok").write_bytes(b"x" * 100)
    cases = [
        (tmp_path / "fifo", "is a FIFO (named pipe), not a regular file"),
        (Path("/dev/zero"), "is a character device, not a regular file"),
        (tmp_path, "is a folder, not a regular file"),
        (tmp_path / "none", "no such file"),
        (tmp_path / "big", "101 bytes is too large (at most 100)"),
    ]
    for path, reason in cases:
        with pytest.raises(InputFileError) as e:
            read_regular_file(path, "--thing", 100)
        assert (str(e.value), e.value.reason) == (f"--thing {path}: {reason}", reason)
    assert read_regular_file(tmp_path / "ok", "--thing", 100) == b"x" * 100
    # A file that claims no size (as under /proc) reads as empty, not without end.
    assert read_regular_file("/proc/self/environ", "--thing", 100) == b""


# --- --out ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("link", "is a symbolic link"),
        ("dangling", "is a symbolic link"),
        ("fifo", "is a FIFO (named pipe), not a regular file"),
        ("/dev/null", "is a character device, not a regular file"),
    ],
)
@pytest.mark.parametrize("command", ["plan", "wrap"])
def test_out_refuses_a_link_fifo_or_device(work: Path, target: str, reason: str, command: str) -> None:
    victim = work / "victim.txt"
    victim.write_text("keep me")
    (work / "link").symlink_to(victim)
    (work / "dangling").symlink_to(work / "nowhere")
    args = (
        ["plan", "manifests", "--out", target]
        if command == "plan"
        else ["wrap", "--public-key", "keys/signer.pem", "--material", "keys/signer.pem", "--out", target]
    )
    r = run_cli(args)

    assert r.code == 1
    assert r.stdout == ""
    assert r.stderr == f"error: --out {target}: {reason}; refusing to replace it (nothing written)\n"
    assert victim.read_text() == "keep me"
    assert not (work / "nowhere").exists()
    assert (work / "link").is_symlink()
    assert not state_folders(work)  # refused before any work


def test_out_refuses_a_folder(work: Path) -> None:
    r = run_cli(["plan", "manifests", "--out", "folder"])
    assert r.code == 1
    assert "Invalid value for '--out': File 'folder' is a directory." in r.stderr


def test_write_owner_only_checks_again_at_write_time(tmp_path: Path) -> None:
    from provisioner.cli import _write_owner_only

    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(InputFileError, match="^--out .*fifo: is a FIFO"):
        _write_owner_only(tmp_path / "fifo", "text")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]  # no temporary file left


# --- every written file 0600 ------------------------------------------------------------------------


def test_local_state_saved_plan_and_wrap_out_are_0600(work: Path, umask_zero: None) -> None:
    r = run_cli(["plan", "manifests", "--out", "saved.plan"])
    assert r.code == 0, r.stderr
    assert mode(work / "saved.plan") == 0o600
    r = run_cli(["apply", "manifests", "--auto-approve"])
    assert r.code == 0, r.stderr
    [state] = state_folders(work)
    assert mode(state) == 0o700
    files = sorted(state.iterdir())
    assert [p.name for p in files][0] == "kms.db"
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}

    public = wrapping_public_key(work)
    r = run_cli(["wrap", "--public-key", str(public), "--material", "keys/signer.pem", "--out", "w.b64"])
    assert r.code == 0, r.stderr
    assert mode(work / "w.b64") == 0o600


def test_emulator_db_and_its_journal_are_0600(tmp_path: Path, umask_zero: None) -> None:
    db = tmp_path / "kms.db"
    engine = KmsEngine(str(db))
    try:
        create(engine, KeySpec.EC_P256)
        written = [p for p in tmp_path.iterdir() if p.name.startswith("kms.db")]
        assert {p.name: mode(p) for p in written} == {p.name: 0o600 for p in written}
        assert db in written
    finally:
        engine.close()


# --- deleted material leaves no trace in the files --------------------------------------------------


def _files(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(db.parent.iterdir()) if p.name.startswith(db.name))


def _fragments(m: PrivateMaterial) -> list[bytes]:
    key = m.private_key()
    if isinstance(key, int):
        return [sm2.scalar_bytes(key), m.pkcs8_der()]
    if isinstance(key, rsa.RSAPrivateKey):
        n = key.private_numbers()
        return [m.pkcs8_der(), n.d.to_bytes(256, "big")[:32], n.p.to_bytes(128, "big")[:32]]
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return [m.pkcs8_der(), key.private_numbers().private_value.to_bytes(32, "big")]


@pytest.mark.parametrize("spec", [KeySpec.EC_P256, KeySpec.RSA_2048, KeySpec.EC_SM2])
def test_delete_key_material_leaves_no_material_in_the_db_or_its_journal(
    tmp_path: Path, spec: KeySpec
) -> None:
    db = tmp_path / "kms.db"
    engine = KmsEngine(str(db))
    try:
        m = new_material(spec)
        key = create(engine, spec)
        blob, token = wrap_for(engine, key.key_id, m)
        engine.import_key_material(key.key_id, blob, token, 0)
        assert m.pkcs8_der() in _files(db)  # the emulator persists it while the key holds it
        engine.delete_key_material(key.key_id)
        while_open = _files(db)
        for fragment in _fragments(m):
            assert fragment not in while_open
    finally:
        engine.close()
    after = _files(db)
    for fragment in _fragments(m):
        assert fragment not in after


# --- emulator serve off loopback ----------------------------------------------------------------------

REFUSAL = (
    "is not a loopback address (127.0.0.0/8, ::1, localhost), and the default access key id and secret "
    "are public: to serve beyond this machine, pass --access-key-id and --access-key-secret of your own"
)


@pytest.mark.parametrize(
    "flags",
    [
        ["--host", "0.0.0.0"],
        ["--host", "192.168.1.7", "--access-key-id", "mine"],
        ["--host", "::", "--access-key-secret", "mine-too"],
        ["--host", "kms.example.com"],
    ],
)
def test_serve_off_loopback_refuses_the_default_credentials(flags: list[str]) -> None:
    r = run_cli(["emulator", "serve", *flags])
    assert r.code == 1
    assert r.stdout == ""
    assert r.stderr == f"error: --host {flags[1]} {REFUSAL}\n"


def test_loopback_hosts() -> None:
    for host in ("127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost", "LOCALHOST.", "::ffff:127.0.0.1"):
        assert is_loopback_host(host), host
    for host in ("0.0.0.0", "::", "10.0.0.1", "128.0.0.1", "localhost.example.com", "127.0.0.1.nip.io", ""):
        assert not is_loopback_host(host), host
    EmulatorConfig(host="0.0.0.0", access_key_id="mine", access_key_secret="mine-too")
    EmulatorConfig(host="127.0.0.1")
    with pytest.raises(PublicCredentialsExposed):
        EmulatorConfig(host="0.0.0.0", access_key_id="mine")


# --- --qps -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1e-300", "1e-9", "nan", "inf", "0", "-1", "1e400"])
def test_plan_qps_out_of_range(work: Path, value: str) -> None:
    r = run_cli(["plan", "manifests", "--qps", f"read={value}"])
    assert r.code == 1
    assert r.stdout == ""
    assert r.stderr.endswith(
        "error: --qps: expected GROUP=N with N a number from 0.01 to 10000 (calls a second), "
        f"got 'read={value}'\n"
    )
