"""DESIGN section 9, "a manifest cannot send the calls elsewhere" and "reading writes nothing".

The endpoint cases prove that no byte reached the wrong server: a listening socket stands where a
hostile manifest points, and must have no connection waiting afterwards. The state-file cases check
the bytes and the folder listing before and after.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import copy_manifests, example_workdir, run_main

from provisioner.backend import open_kms
from provisioner.backend.alibaba import manifest_endpoint
from provisioner.errors import ManifestError, UsageError
from provisioner.model import BackendConfig, Location

REGION = "cn-hangzhou"
NOT_SHOWN = "(values read from the environment are not shown)"
OTHER_REGION = "it is the endpoint of region cn-beijing, not of cn-hangzhou"
NOT_STATE = "is not a local backend state file; move it aside or fix backend.path"


def with_backend(workdir: Path, lines: list[str]) -> tuple[int, int]:
    """Put a block-style `backend:` into the example manifest; (line, column) of its endpoint value."""
    manifest = workdir / "manifests" / "payments.yaml"
    text = manifest.read_text(encoding="utf-8")
    block = "\n".join(["backend:", *(f"  {line}" for line in lines)])
    text = text.replace("\ndefaults:", f"\n{block}\ndefaults:", 1)
    manifest.write_text(text, encoding="utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("  endpoint: "):
            return number, len("  endpoint: ") + 1
    return 0, 0


@contextlib.contextmanager
def listening(host: str = "127.0.0.1") -> Iterator[tuple[socket.socket, int]]:
    """A socket that listens and never accepts: a connection attempt would wait in its backlog."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, 0))
    sock.listen(16)
    try:
        yield sock, sock.getsockname()[1]
    finally:
        sock.close()


def assert_nothing_reached(sock: socket.socket) -> None:
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        conn, _ = sock.accept()
        conn.close()


def credentials(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    for name, value in emulator.credential_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ALIBABA_CLOUD_SECURITY_TOKEN", raising=False)


# ---------------------------------------------------------------------- the endpoint rule


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://kms.cn-hangzhou.aliyuncs.com", ("https://kms.cn-hangzhou.aliyuncs.com", REGION)),
        ("https://kms.cn-hangzhou.aliyuncs.com/", ("https://kms.cn-hangzhou.aliyuncs.com", REGION)),
        ("https://kms-vpc.cn-hangzhou.aliyuncs.com", ("https://kms-vpc.cn-hangzhou.aliyuncs.com", REGION)),
        # A bare host means https, as on the command line.
        ("kms.cn-hangzhou.aliyuncs.com", ("https://kms.cn-hangzhou.aliyuncs.com", REGION)),
        ("http://127.0.0.1:8080", ("http://127.0.0.1:8080", None)),
        ("http://[::1]:65535", ("http://[::1]:65535", None)),
        ("http://127.0.0.1:1/", ("http://127.0.0.1:1", None)),
    ],
)
def test_endpoints_a_manifest_may_name(text: str, expected: tuple[str, str | None]) -> None:
    assert manifest_endpoint(text, REGION) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("http://kms.cn-hangzhou.aliyuncs.com", "the vendor's endpoints are reached over https only"),
        ("https://kms.cn-beijing.aliyuncs.com", OTHER_REGION),
        ("https://kms-vpc.cn-beijing.aliyuncs.com", OTHER_REGION),
        ("https://kms.cn-hangzhou.aliyuncs.com@evil.example", "it carries user info (user@host)"),
        ("https://user:pw@kms.cn-hangzhou.aliyuncs.com", "it carries user info (user@host)"),
        ("http://x@127.0.0.1:80", "it carries user info (user@host)"),
        ("https://kms.cn-hangzhou.aliyuncs.com/x", "it has a path"),
        ("https://kms.cn-hangzhou.aliyuncs.com?a=1", "it has a query or a fragment"),
        ("https://kms.cn-hangzhou.aliyuncs.com#x", "it has a query or a fragment"),
        ("https://kms.cn-hangzhou.aliyuncs.com?", "it has a query or a fragment"),
        ("https://kms.cn-hangzhou.aliyuncs.com.", "it is neither of these, written exactly so"),
        ("https://kms.cn-hangzhou.aliyuncs.com:443", "it is neither of these, written exactly so"),
        ("https://KMS.CN-HANGZHOU.ALIYUNCS.COM", "it is neither of these, written exactly so"),
        ("HTTPS://kms.cn-hangzhou.aliyuncs.com", "it is neither of these, written exactly so"),
        ("https://kms.cn-hangzhou.aliyuncs.com.evil.example", "it is neither of these, written exactly so"),
        ("https://evil.example", "it is neither of these, written exactly so"),
        ("https://kms.cn-hangzhou.aliyuncs.com\t", "it is neither of these, written exactly so"),
        ("https://kms.cn-hang\nzhou.aliyuncs.com", "it is neither of these, written exactly so"),
        (" https://kms.cn-hangzhou.aliyuncs.com", "it is neither of these, written exactly so"),
        ("http://127.0.0.2:8080", "it is neither of these, written exactly so"),
        ("http://localhost:8080", "it is neither of these, written exactly so"),
        ("http://0x7f.1:8080", "it is neither of these, written exactly so"),
        ("http://2130706433:8080", "it is neither of these, written exactly so"),
        ("http://[0:0:0:0:0:0:0:1]:8080", "it is neither of these, written exactly so"),
        ("http://127.0.0.1", "it is neither of these, written exactly so"),
        ("http://127.0.0.1:080", "it is neither of these, written exactly so"),
        ("http://0.0.0.0:8080", "it is neither of these, written exactly so"),
        ("ftp://127.0.0.1:21", "it is neither of these, written exactly so"),
        ("https://127.0.0.1:8080", "the emulator is reached over http on a port from 1 to 65535"),
        ("127.0.0.1:8080", "the emulator is reached over http on a port from 1 to 65535"),
        ("http://127.0.0.1:99999", "it is not a URL with a valid host and port"),
        ("http://[::1", "it is not a URL with a valid host and port"),
    ],
)
def test_endpoints_a_manifest_may_not_name(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as e:
        manifest_endpoint(text, REGION)
    assert str(e.value) == reason


def test_a_vendor_endpoint_names_the_region_when_the_run_has_none() -> None:
    assert manifest_endpoint("https://kms.ap-southeast-1.aliyuncs.com", None) == (
        "https://kms.ap-southeast-1.aliyuncs.com",
        "ap-southeast-1",
    )


# ---------------------------------------------------------------------- precedence (open_kms)

MANIFEST = BackendConfig(
    type="alibaba",
    region="cn-beijing",
    endpoint="http://127.0.0.1:9",
    region_at=Location("m.yaml", 3, 11),
    endpoint_at=Location("m.yaml", 4, 13),
)


def opened(
    environ: dict[str, str], manifest: BackendConfig | None = MANIFEST, **flags: Any
) -> dict[str, str]:
    kw: dict[str, Any] = {"backend": None, "endpoint": None, "region": None, **flags}
    kms = open_kms(manifest_backend=manifest, environ=environ, create=False, **kw)
    kms.close()
    return dict(kms.info)


def test_the_manifest_decides_only_when_nothing_else_does() -> None:
    assert opened({}) == {"type": "alibaba", "endpoint": "http://127.0.0.1:9", "region": "cn-beijing"}


def test_flags_beat_the_environment_and_the_manifest() -> None:
    env = {"PROVISION_ENDPOINT": "http://127.0.0.1:2", "ALIBABA_CLOUD_REGION_ID": "cn-shanghai"}
    info = opened(env, backend="alibaba", endpoint="http://127.0.0.1:1", region="cn-hangzhou")
    assert info == {"type": "alibaba", "endpoint": "http://127.0.0.1:1", "region": "cn-hangzhou"}


def test_the_environment_beats_the_manifest() -> None:
    env = {"PROVISION_ENDPOINT": "https://kms.internal.example", "ALIBABA_CLOUD_REGION_ID": "cn-shanghai"}
    assert opened(env) == {
        "type": "alibaba", "endpoint": "https://kms.internal.example", "region": "cn-shanghai"
    }


def test_the_environment_region_decides_which_manifest_endpoint_passes() -> None:
    manifest = BackendConfig(type="alibaba", endpoint="https://kms.cn-beijing.aliyuncs.com",
                             endpoint_at=Location("m.yaml", 4, 13))
    with pytest.raises(ManifestError) as e:
        opened({"ALIBABA_CLOUD_REGION_ID": "cn-hangzhou"}, manifest)
    assert [str(d) for d in e.value.diagnostics] == [
        "m.yaml:4:13: error: backend.endpoint: a manifest may name only "
        "https://kms.cn-hangzhou.aliyuncs.com, https://kms-vpc.cn-hangzhou.aliyuncs.com or the emulator at "
        "http://127.0.0.1:PORT or "
        "http://[::1]:PORT (it is the endpoint of region cn-beijing, not of cn-hangzhou); give any other "
        "endpoint with --endpoint or PROVISION_ENDPOINT"
    ]
    # Without a region anywhere, the vendor host names it.
    assert opened({}, manifest) == {
        "type": "alibaba", "endpoint": "https://kms.cn-beijing.aliyuncs.com", "region": "cn-beijing"
    }


def test_provision_backend_beats_the_manifest_type(tmp_path: Path) -> None:
    info = opened({"PROVISION_BACKEND": "local"}, cwd=tmp_path)
    assert info == {"type": "local", "path": ".provision/kms.db", "endpoint": "local:.provision/kms.db"}
    assert not (tmp_path / ".provision").exists()
    info = opened({"PROVISION_BACKEND": "alibaba", "ALIBABA_CLOUD_REGION_ID": "cn-hangzhou"},
                  BackendConfig(type="local"))
    assert info == {
        "type": "alibaba", "endpoint": "https://kms.cn-hangzhou.aliyuncs.com", "region": "cn-hangzhou"
    }
    # The flag beats the variable.
    info = opened({"PROVISION_BACKEND": "alibaba"}, None, backend="local", cwd=tmp_path)
    assert info["type"] == "local"


@pytest.mark.parametrize("value", ["aws", "Local", "local,alibaba", "s3cr3t-value"])
def test_a_bad_provision_backend_is_refused_without_echo(value: str) -> None:
    with pytest.raises(UsageError) as e:
        opened({"PROVISION_BACKEND": value})
    assert str(e.value) == (
        f"PROVISION_BACKEND: expected local or alibaba; the value set is neither {NOT_SHOWN}"
    )


def test_an_empty_provision_backend_is_unset() -> None:
    assert opened({"PROVISION_BACKEND": "  "})["type"] == "alibaba"


def test_a_bad_environment_endpoint_or_region_is_refused_without_echo() -> None:
    with pytest.raises(UsageError) as e:
        opened({"PROVISION_ENDPOINT": "http://s3cr3t@host:1"})
    assert str(e.value) == f"PROVISION_ENDPOINT: expected http://host:port, https://host or host {NOT_SHOWN}"
    with pytest.raises(UsageError) as e:
        opened({"ALIBABA_CLOUD_REGION_ID": "S3CR3T region"})
    assert str(e.value) == f"ALIBABA_CLOUD_REGION_ID: expected a region id such as cn-hangzhou {NOT_SHOWN}"


def test_a_bad_manifest_region_is_located() -> None:
    manifest = BackendConfig(type="alibaba", region="CN hangzhou", region_at=Location("m.yaml", 3, 11))
    with pytest.raises(ManifestError) as e:
        opened({}, manifest)
    assert [str(d) for d in e.value.diagnostics] == [
        "m.yaml:3:11: error: backend.region: expected a region id such as cn-hangzhou "
        "(lowercase letters and digits in words joined by '-')"
    ]


def test_environment_endpoint_against_a_local_manifest() -> None:
    with pytest.raises(UsageError) as e:
        opened({"PROVISION_ENDPOINT": "http://127.0.0.1:1"}, BackendConfig(type="local"))
    assert str(e.value) == "PROVISION_ENDPOINT needs --backend alibaba: the manifest's backend is local"
    with pytest.raises(UsageError) as e:
        opened({"PROVISION_ENDPOINT": "http://127.0.0.1:1"}, None, backend="local")
    assert str(e.value) == "PROVISION_ENDPOINT applies to the alibaba backend only; the backend is local"


# ---------------------------------------------------------------------- through the CLI


REFUSED_BY_THE_RULE = [
    ("http://127.0.0.2:{port}", "127.0.0.2", "it is neither of these, written exactly so"),
    ("http://localhost:{port}", "127.0.0.1", "it is neither of these, written exactly so"),
    ("http://user@127.0.0.1:{port}", "127.0.0.1", "it carries user info (user@host)"),
    ("http://127.0.0.1:{port}/x", "127.0.0.1", "it has a path"),
    ("https://127.0.0.1:{port}", "127.0.0.1", "the emulator is reached over http on a port from 1 to 65535"),
]


@pytest.mark.parametrize("command", ["plan", "drift", "apply"])
@pytest.mark.parametrize(("template", "host", "reason"), REFUSED_BY_THE_RULE)
def test_a_manifest_endpoint_outside_the_rule_is_a_located_error_and_no_byte_is_sent(
    workdir: Path, command: str, template: str, host: str, reason: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "AKID-OF-THE-PIPELINE")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "secret-of-the-pipeline")
    with listening(host) as (sock, port):
        line, column = with_backend(workdir, ["type: alibaba", f'endpoint: "{template.format(port=port)}"'])
        approve = ["--auto-approve"] if command == "apply" else []
        rc, out, err = run_main(
            [command, "manifests", *approve, "--backend", "alibaba", "--region", REGION], capsys
        )
        assert_nothing_reached(sock)
    assert rc == 1
    assert out == ""
    assert err == (
        f"manifests/payments.yaml:{line}:{column}: error: backend.endpoint: a manifest may name only "
        f"https://kms.{REGION}.aliyuncs.com, https://kms-vpc.{REGION}.aliyuncs.com or the emulator at "
        f"http://127.0.0.1:PORT or http://[::1]:PORT ({reason}); give any other endpoint with --endpoint "
        "or PROVISION_ENDPOINT\n1 error(s)\n"
    )


def test_another_regions_endpoint_is_refused_for_the_environments_region(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALIBABA_CLOUD_REGION_ID", REGION)
    line, column = with_backend(
        workdir, ["type: alibaba", "region: cn-beijing", "endpoint: https://kms.cn-beijing.aliyuncs.com"]
    )
    rc, out, err = run_main(["plan", "manifests"], capsys)
    assert rc == 1
    assert out == ""
    assert err.startswith(f"manifests/payments.yaml:{line}:{column}: error: backend.endpoint: ")
    assert "(it is the endpoint of region cn-beijing, not of cn-hangzhou)" in err


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_the_pipelines_endpoint_wins_and_the_manifests_server_hears_nothing(
    workdir: Path, how: str, emulator: Any, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 10's attack: a manifest's loopback endpoint against the pipeline's own backend."""
    credentials(monkeypatch, emulator)
    with listening() as (sock, port):
        with_backend(workdir, ["type: alibaba", f"endpoint: http://127.0.0.1:{port}"])
        if how == "flag":
            args = ["--backend", "alibaba", "--endpoint", emulator.url, "--region", REGION]
        else:
            monkeypatch.setenv("PROVISION_BACKEND", "alibaba")
            monkeypatch.setenv("PROVISION_ENDPOINT", emulator.url)
            monkeypatch.setenv("ALIBABA_CLOUD_REGION_ID", REGION)
            args = []
        before = emulator.stats()["calls"]
        rc, out, err = run_main(["plan", "manifests", "--format", "json", *args], capsys)
        assert_nothing_reached(sock)
    assert rc == 0, err
    assert err == f"using alibaba {REGION} at {emulator.url}\n"
    assert json.loads(out)["backend"] == {"type": "alibaba", "endpoint": emulator.url, "region": REGION}
    assert emulator.stats()["calls"] != before


def test_every_plan_and_drift_header_names_its_endpoint(
    workdir: Path, emulator: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials(monkeypatch, emulator)
    args = ["--backend", "alibaba", "--endpoint", emulator.url, "--region", REGION]
    rc, out, _ = run_main(["plan", "manifests", *args], capsys)
    assert rc == 0
    assert out.splitlines()[:2] == [
        f"Stack 'payments', backend alibaba (region {REGION})", f"Endpoint: {emulator.url}"
    ]
    rc, out, _ = run_main(["plan", "manifests", "--format", "markdown", *args], capsys)
    assert rc == 0
    assert out.splitlines()[:3] == ["## Plan for stack `payments`", "", f"Endpoint: `{emulator.url}`"]
    rc, out, _ = run_main(["drift", "manifests", *args], capsys)
    assert rc == 2
    assert out.splitlines()[:2] == ["Stack 'payments': drift found", f"Endpoint: {emulator.url}"]
    rc, out, _ = run_main(["drift", "manifests", "--format", "json", *args], capsys)
    assert rc == 2
    assert json.loads(out)["backend"] == {"type": "alibaba", "endpoint": emulator.url, "region": REGION}
    rc, out, _ = run_main(["drift", "manifests", "--format", "markdown", *args], capsys)
    assert rc == 2
    assert out.splitlines()[:3] == ["## Drift for stack `payments`", "", f"Endpoint: `{emulator.url}`"]
    rc, out, _ = run_main(["show", "manifests", *args], capsys)
    assert rc == 0
    assert out.splitlines()[:2] == [
        f"Stack 'payments', backend alibaba (region {REGION})", f"Endpoint: {emulator.url}"
    ]
    rc, out, _ = run_main(["show", "manifests", "--format", "json", *args], capsys)
    assert rc == 0
    assert json.loads(out)["backend"] == {"type": "alibaba", "endpoint": emulator.url, "region": REGION}
    rc, out, _ = run_main(["discover", *args], capsys)
    assert rc == 0
    assert out.splitlines()[0] == f"# Written by `provision discover` from {emulator.url}:"


# ---------------------------------------------------------------------- reading writes nothing


def listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_validate_plan_drift_show_and_discover_write_nothing_then_apply_works(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = listing(workdir)
    assert run_main(["validate", "manifests"], capsys)[0] == 0
    rc, out, err = run_main(["plan", "manifests", "--format", "json"], capsys)
    assert rc == 0
    assert err == (
        "using local backend (manifests/.provision/kms.db), which does not exist yet: an empty KMS\n"
    )
    assert json.loads(out)["backend"] == {
        "type": "local", "path": "manifests/.provision/kms.db",
        "endpoint": "local:manifests/.provision/kms.db",
    }
    assert run_main(["drift", "manifests"], capsys)[0] == 2
    rc, out, _ = run_main(["show", "manifests"], capsys)
    assert (rc, out.splitlines()[-1]) == (0, "0 managed key(s).")
    rc, out, _ = run_main(["discover"], capsys)
    assert (rc, out.splitlines()[-1]) == (0, "keys: {}")
    assert listing(workdir) == before
    assert not (workdir / "manifests" / ".provision").exists()
    assert not (workdir / ".provision").exists()

    # plan of a missing state, then apply: the apply creates it.
    rc, _, err = run_main(["plan", "manifests", "--out", "saved.json"], capsys)
    assert rc == 0, err
    rc, _, err = run_main(["apply", "--plan", "saved.json"], capsys)
    assert rc == 0, err
    assert (workdir / "manifests" / ".provision" / "kms.db").is_file()

    # Plan and drift of an existing state leave it, and its folder, byte for byte as they were.
    before = listing(workdir)
    rc, out, _ = run_main(["plan", "manifests", "--detailed-exitcode"], capsys)
    assert rc == 0
    assert "No changes." in out
    assert run_main(["drift", "manifests"], capsys)[0] == 0
    rc, out, _ = run_main(["show", "manifests"], capsys)
    assert (rc, out.splitlines()[-1]) == (0, "3 managed key(s).")
    assert run_main(["discover"], capsys)[0] == 0
    assert listing(workdir) == before


def foreign_database(path: Path, *, wal: bool) -> bytes:
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE users (name TEXT, password_hash TEXT)")
    conn.execute("INSERT INTO users VALUES ('alice', 'x')")
    conn.commit()
    conn.close()
    return path.read_bytes()


@pytest.mark.parametrize("wal", [False, True], ids=["rollback-journal", "wal"])
@pytest.mark.parametrize("command", [["plan"], ["drift"], ["show"], ["apply", "--auto-approve"]])
def test_another_programs_database_is_refused_and_unchanged(
    workdir: Path, command: list[str], wal: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    other = workdir / "app.db"
    original = foreign_database(other, wal=wal)
    with_backend(workdir, ["type: local", f"path: {other}"])

    rc, out, err = run_main([*command, "manifests"], capsys)

    assert rc == 1
    assert out == ""
    assert err.endswith(f"error: local backend {other}: {NOT_STATE}\n")
    assert other.read_bytes() == original
    assert sorted(p.name for p in workdir.iterdir()) == ["app.db", "manifests"]
    conn = sqlite3.connect(f"file:{other}?mode=ro", uri=True)
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
    conn.close()
    assert tables == ["users"]


# ---------------------------------------------------------------------- read-only state


@contextlib.contextmanager
def as_unprivileged() -> Iterator[None]:
    """Run the block as a user whom permissions bind (nobody when the suite runs as root)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def shared_workdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A work folder that `nobody` can enter (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="provision-ro-", dir="/tmp"))
    folder.chmod(0o755)
    copy_manifests(folder)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("PROVISION_RETRY_SECONDS", "0")
    for name in ("ALIBABA_CLOUD_REGION_ID", "PROVISION_BACKEND", "PROVISION_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    try:
        yield folder
    finally:
        os.chdir("/")
        for p in [folder, *folder.rglob("*")]:
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
        shutil.rmtree(folder)


def hand_to_nobody(folder: Path) -> None:
    """As root: the manifests and keys belong to the unprivileged user, the state does not."""
    if os.geteuid() != 0:
        return
    for p in [folder, *(folder / "manifests").rglob("*"), folder / "manifests"]:
        if ".provision" not in p.relative_to(folder).parts:  # the state, beside the manifests
            os.chown(p, 65534, 65534)


@pytest.mark.parametrize("read_only", ["file", "folder"])
def test_a_read_only_state_is_read_by_plan_and_drift_and_apply_says_permission_denied(
    shared_workdir: Path, read_only: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = shared_workdir
    rc, _, err = run_main(["apply", "manifests", "--auto-approve"], capsys)
    assert rc == 0, err
    # Every module the commands load is loaded now, while the interpreter's files are readable.
    assert run_main(["plan", "manifests"], capsys)[0] == 0
    assert run_main(["drift", "manifests"], capsys)[0] == 0
    state = folder / "manifests" / ".provision" / "kms.db"
    hand_to_nobody(folder)
    state.parent.chmod(0o755)  # the tool makes .provision/ 0700; here another user may enter it
    state.chmod(0o444)
    if read_only == "folder":
        if os.geteuid() == 0:
            os.chown(state.parent, 0, 0)
            os.chown(state, 65534, 65534)
            state.chmod(0o644)
        state.parent.chmod(0o555)
    before = listing(state.parent)

    with as_unprivileged():
        plan = run_main(["plan", "manifests", "--detailed-exitcode"], capsys)
        drift = run_main(["drift", "manifests", "--format", "json"], capsys)
        applied = run_main(["apply", "manifests", "--auto-approve"], capsys)

    assert plan[0] == 0, plan[2]
    assert "No changes. The live keys match the manifests." in plan[1]
    assert drift[0] == 0, drift[2]
    assert json.loads(drift[1])["in_sync"] is True
    assert applied[0] == 1
    assert applied[1] == ""
    why = "the state file is read-only" if read_only == "file" else f"its folder {state.parent} is read-only"
    assert applied[2].endswith(
        f"error: local backend {state}: permission denied: {why}; plan and drift can read it\n"
    )
    assert "not a state file" not in applied[2]
    assert listing(state.parent) == before


# ---------------------------------------------------------------------- headers (render)


def _documents(backend: dict[str, str]) -> tuple[Any, Any]:
    from datetime import UTC, datetime

    from plan_builders import actual_key, default_fingerprints, desired_key, live_state, manifest

    from provisioner.drift import make_drift
    from provisioner.plan.planner import make_plan

    now = datetime(2026, 6, 1, tzinfo=UTC)
    desired = manifest([desired_key("a"), desired_key("b")])
    live = live_state([actual_key({"name": "a"})])
    plan = make_plan(desired, live, now=now, fingerprints=default_fingerprints(desired), backend=backend)
    return plan, make_drift(desired, live, now=now, backend=backend)


ALIBABA = {"type": "alibaba", "endpoint": "https://kms.cn-hangzhou.aliyuncs.com", "region": REGION}


def test_plan_headers_name_the_endpoint() -> None:
    from provisioner.views.plan import render_plan_json, render_plan_markdown, render_plan_text

    plan, _ = _documents(ALIBABA)
    assert render_plan_text(plan, color=False).splitlines()[:3] == [
        "Stack 'payments', backend alibaba (region cn-hangzhou)",
        "Endpoint: https://kms.cn-hangzhou.aliyuncs.com",
        "",
    ]
    assert render_plan_markdown(plan).splitlines()[:4] == [
        "## Plan for stack `payments`", "", "Endpoint: `https://kms.cn-hangzhou.aliyuncs.com`", ""
    ]
    assert json.loads(render_plan_json(plan))["backend"] == ALIBABA


def test_drift_headers_name_the_endpoint() -> None:
    from provisioner.drift import make_drift
    from provisioner.views.drift import render_drift_json, render_drift_markdown, render_drift_text

    _, report = _documents(ALIBABA)
    assert render_drift_text(report, color=False).splitlines()[:3] == [
        "Stack 'payments': drift found", "Endpoint: https://kms.cn-hangzhou.aliyuncs.com", ""
    ]
    assert render_drift_markdown(report).splitlines()[:4] == [
        "## Drift for stack `payments`", "", "Endpoint: `https://kms.cn-hangzhou.aliyuncs.com`", ""
    ]
    assert json.loads(render_drift_json(report))["backend"] == ALIBABA
    in_sync = make_drift(report_desired(), report_live(), now=report.checked_at, backend=ALIBABA)
    assert render_drift_text(in_sync, color=False) == (
        "Stack 'payments': in sync, no drift.\nEndpoint: https://kms.cn-hangzhou.aliyuncs.com\n"
    )
    # A report made without a backend (a library caller) has no such line and no such field.
    bare = make_drift(report_desired(), report_live(), now=report.checked_at)
    assert render_drift_text(bare, color=False) == "Stack 'payments': in sync, no drift.\n"
    assert "backend" not in json.loads(render_drift_json(bare))


def report_desired() -> Any:
    from plan_builders import desired_key, manifest

    return manifest([desired_key("a")])


def report_live() -> Any:
    from plan_builders import actual_key, live_state

    return live_state([actual_key({"name": "a"})])


def test_a_local_endpoint_cannot_break_its_header() -> None:
    """A path from a manifest: control characters are shown as escapes, backticks cannot close the
    markdown code span, and no line break can start a heading."""
    from provisioner.views.plan import render_plan_markdown, render_plan_text

    path = "st`ate\u202e/\x1b[31m``\n# pwned/kms.db"
    plan, _ = _documents({"type": "local", "path": path, "endpoint": f"local:{path}"})
    text = render_plan_text(plan, color=False).splitlines()
    assert text[1] == "Endpoint: local:st`ate\\u202e/\\u001b[31m``\\u000a# pwned/kms.db"
    assert "\x1b" not in text[0] and "\u202e" not in text[0]
    md = render_plan_markdown(plan).splitlines()
    assert md[2] == "Endpoint: ```local:st`ate\\u202e/\\u001b[31m``\\u000a# pwned/kms.db```"
    assert not any(line.startswith("# pwned") for line in md)


def test_a_read_sees_transactions_still_in_the_write_ahead_log(tmp_path: Path) -> None:
    """A writer that has not checkpointed (running, or killed): the read-only copy includes its work."""
    from provisioner.backend.local import LocalTransport

    live = tmp_path / "live"
    live.mkdir()
    writer = LocalTransport(live / "kms.db")
    try:
        made = writer.call(
            "CreateKey",
            {"KeySpec": "EC_P256", "KeyUsage": "SIGN/VERIFY", "Origin": "EXTERNAL",
             "DKMSInstanceId": "kst-local-software"},
        )["KeyMetadata"]["KeyId"]
        snapshot = tmp_path / "snapshot"
        snapshot.mkdir()
        for name in ("kms.db", "kms.db-wal", "kms.db-shm"):
            shutil.copy(live / name, snapshot / name)
    finally:
        writer.close()
    assert (snapshot / "kms.db-wal").stat().st_size > 0

    reader = LocalTransport(snapshot / "kms.db", create=False)
    try:
        keys = reader.call("ListKeys", {"PageSize": 100})["Keys"]["Key"]
    finally:
        reader.close()
    assert [k["KeyId"] for k in keys] == [made]


def test_a_state_folder_this_user_cannot_enter_is_permission_denied(
    shared_workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Path.exists() raises on a folder without search permission: a clear error, not a traceback."""
    if os.geteuid() != 0:
        pytest.skip("needs root to hand the state folder to another user")
    assert run_main(["apply", "manifests", "--auto-approve"], capsys)[0] == 0
    assert run_main(["plan", "manifests"], capsys)[0] == 0
    state = shared_workdir / "manifests" / ".provision" / "kms.db"
    hand_to_nobody(shared_workdir)
    state.parent.chmod(0o700)  # root's, as the tool leaves it
    with as_unprivileged():
        rc, out, err = run_main(["plan", "manifests"], capsys)
    assert (rc, out) == (1, "")
    assert err.endswith(
        f"error: local backend {state}: permission denied: this user cannot enter its folder or read it\n"
    )


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return example_workdir(tmp_path, monkeypatch)
