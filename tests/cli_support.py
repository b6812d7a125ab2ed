"""The CLI run in-process with pytest's capture, and a work folder holding the shipped example manifests.

Shared by the suites that drive the command line as a user would (hostile input, escaping, trust).
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.cli import main

REPO = Path(__file__).resolve().parent.parent
#: Variables of the machine that would change where or how the CLI calls: none may leak into a test.
AMBIENT = (
    "ALIBABA_CLOUD_REGION_ID", "PROVISION_BACKEND", "PROVISION_ENDPOINT", "PROVISION_ALLOW_ENV",
    "PROVISION_ALLOW_COMMANDS", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
)


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `provision ARGS`; no traceback may reach the user."""
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    code = info.value.code
    assert "Traceback" not in err
    return (code if isinstance(code, int) else 1), out, err


def copy_manifests(folder: Path) -> None:
    shutil.copytree(REPO / "manifests", folder / "manifests")
    # git keeps no file modes: a fresh clone's demo keys are 0644 and would add a warning to stderr.
    for key in (folder / "manifests" / "keys").glob("*.pem"):
        key.chmod(0o600)


def demo_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, manifest: str, *, retry_seconds: str = "0"
) -> Path:
    """tmp_path/stack holding `manifest` (keys.yaml) and two demo keys (keys/receipts-signing.pem,
    keys/api-tokens.pem, 0600), run from tmp_path with no backend, endpoint or region in the environment."""
    folder = tmp_path / "stack"
    (folder / "keys").mkdir(parents=True)
    for name in ("receipts-signing.pem", "api-tokens.pem"):
        shutil.copy(REPO / "manifests" / "keys" / name, folder / "keys" / name)
        (folder / "keys" / name).chmod(0o600)
    (folder / "keys.yaml").write_text(manifest)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROVISION_RETRY_SECONDS", retry_seconds)
    for name in ("PROVISION_BACKEND", "PROVISION_ENDPOINT", "ALIBABA_CLOUD_REGION_ID"):
        monkeypatch.delenv(name, raising=False)
    return folder


def example_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shipped example manifests in the current directory, nothing ambient in the environment."""
    copy_manifests(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROVISION_RETRY_SECONDS", "0")
    for name in AMBIENT:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def run_on_a_terminal(args: list[str], cwd: Path, extra_env: dict[str, str]) -> tuple[int, str]:
    """Run `provision ARGS` with standard output on a pseudo-terminal; (exit code, what it printed)."""
    # A terminal that shows colour, whatever the one running the tests is (TERM=dumb in some CI).
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
    env["TERM"] = "xterm-256color"
    env.update(extra_env)
    code = "import sys; from provisioner.cli import main; main(sys.argv[1:])"
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args], cwd=cwd, env=env, stdout=slave, stderr=subprocess.PIPE,
        )
        os.close(slave)
        slave = -1
        chunks: list[bytes] = []
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        proc.wait(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    return proc.returncode, b"".join(chunks).decode()
