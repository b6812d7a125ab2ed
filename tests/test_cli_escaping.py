"""What the CLI prints about a bad argument is escaped too, and output that cannot be written
(`> /dev/full`, a closed pipe) is one line on standard error and exit 1, never a traceback.

Each case asserts the exit code and exactly what is printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from apply_support import run_cli
from cli_support import REPO, example_workdir

#: ESC[2J (clear screen), a right-to-left override, a newline then a heading.
H = "p\x1b[2J\u202e\n# h"
H_TEXT = r"p\u001b[2J\u202e\u000a# h"
RUN = [sys.executable, "-c", "from provisioner.cli import main; main()"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper()}
    env["PYTHONPATH"] = str(REPO)
    env["PROVISION_RETRY_SECONDS"] = "0"
    return env


# ------------------------------------------------------------------------------ escaped errors


def test_a_diagnostic_quoting_a_bad_path_is_escaped(workdir: Path) -> None:
    run = run_cli(["validate", H])
    assert run.code == 1
    assert run.stdout == ""
    assert run.stderr == f"{H_TEXT}: error: no such file or folder\n1 error(s)\n"


def test_validate_json_escapes_the_diagnostics(workdir: Path) -> None:
    run = run_cli(["validate", "--format", "json", H])
    assert run.code == 1
    assert json.loads(run.stdout) == [
        {"file": H_TEXT, "line": 0, "column": 0, "severity": "error", "message": "no such file or folder"}
    ]
    assert "\x1b" not in run.stdout and "\u202e" not in run.stdout
    assert run.stderr == "1 error(s)\n"


def test_an_error_quoting_a_bad_path_is_one_escaped_line(workdir: Path) -> None:
    run = run_cli(["apply", "--plan", H])
    assert run.code == 1
    assert run.stderr == f"error: --plan {H_TEXT}: no such file\n"


def test_a_click_usage_error_echoing_the_argument_is_escaped(workdir: Path) -> None:
    run = run_cli(["plan", f"--x{H}"])
    assert run.code == 1
    assert run.stderr.splitlines()[-1] == r"Error: No such option '--xp\x1b[2J\u202e\n# h'."
    assert "\x1b" not in run.stderr and "\u202e" not in run.stderr
    run = run_cli(["plan", "--backend", H])
    assert run.code == 1
    assert run.stderr.splitlines()[-1] == (
        r"Error: Invalid value for '--backend': 'p\x1b[2J\u202e\n# h' is not one of 'local', 'alibaba'."
    )
    assert "\x1b" not in run.stderr and "\u202e" not in run.stderr


def test_a_bad_option_value_with_a_newline_stays_on_one_line(workdir: Path) -> None:
    run = run_cli(["plan", "--qps", H, "manifests"])
    assert run.code == 1
    assert run.stdout == ""
    assert run.stderr == (
        "error: --qps: expected GROUP=N with N a number from 0.01 to 10000 (calls a second), got "
        r"'p\x1b[2J\u202e\n# h'" + "\n"
    )


# ----------------------------------------------------------------- output that cannot be written


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["validate", "manifests/"],
        ["plan", "manifests/", "--no-color"],
        ["plan", "manifests/", "--format", "markdown"],
        ["drift", "manifests/", "--format", "json"],
        ["--help"],
    ],
    ids=["validate", "plan", "plan-markdown", "drift-json", "help"],
)
def test_stdout_on_a_full_disk(workdir: Path, args: list[str]) -> None:
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [*RUN, *args], stdout=full, stderr=subprocess.PIPE, text=True, env=_env(), timeout=60
        )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    assert done.stderr.splitlines()[-1] == "error: cannot write the output: No space left on device"
    assert done.stderr.count("error:") == 1


@pytest.mark.slow
def test_stdout_and_stderr_on_a_full_disk(workdir: Path) -> None:
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [*RUN, "validate", "manifests/"], stdout=full, stderr=full, env=_env(), timeout=60
        )
    assert done.returncode == 1


@pytest.mark.slow
def test_stdout_closed_by_the_reader(workdir: Path) -> None:
    """`provision plan | head -1` with a reader that is gone before the first write."""
    child = subprocess.Popen(
        [*RUN, "plan", "manifests/", "--format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    err = child.stderr.read().decode()
    child.stderr.close()
    assert child.wait(timeout=60) == 1
    assert "Traceback" not in err and "Exception ignored" not in err
    assert err.splitlines()[-1] == "error: cannot write the output: Broken pipe"


class _FullStream:
    """A standard output whose every write fails as a full disk does."""

    def write(self, _text: str) -> int:
        raise OSError(28, "No space left on device")

    def flush(self) -> None:
        raise OSError(28, "No space left on device")


def test_stdout_full_in_process(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from provisioner.cli import main

    capsys.readouterr()
    monkeypatch.setattr(sys, "stdout", _FullStream())
    with pytest.raises(SystemExit) as info:
        main(["validate", "manifests/"])
    assert info.value.code == 1
    assert capsys.readouterr().err == "error: cannot write the output: No space left on device\n"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return example_workdir(tmp_path, monkeypatch)
