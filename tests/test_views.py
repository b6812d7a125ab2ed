"""The view registry: every row names a view of its command's Protocol, `--format` offers exactly the
registered formats, and `provision` starts without importing any view or stage."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import typing
from typing import Any

import click
import pytest
from cli_support import REPO, run_main

from provisioner import views
from provisioner.cli import cli


def _handles() -> dict[str, views.Command[Any]]:
    return {
        name: handle for name, handle in vars(views).items() if isinstance(handle, views.Command)
    }


def _protocols() -> dict[str, type]:
    """Each handle's Protocol, read from its annotation (`Final[Command[PlanView]]`), which is what
    mypy types the CLI's views with."""
    namespace = dict(vars(views))
    for row in views.REGISTRY.values():
        namespace.update(vars(importlib.import_module(f"provisioner.views.{row.partition(':')[0]}")))
    hints = typing.get_type_hints(views, globalns=namespace)
    out = {}
    for name, handle in _handles().items():
        (command_type,) = typing.get_args(hints[name])
        (protocol,) = typing.get_args(command_type)
        out[handle.name] = protocol
    return out


def test_every_registered_command_has_a_handle_and_every_handle_views() -> None:
    handles = {handle.name for handle in _handles().values()}
    assert handles == {command for command, _ in views.REGISTRY}
    assert handles >= {"validate", "plan", "apply", "drift"}


@pytest.mark.parametrize(("command", "fmt"), sorted(views.REGISTRY))
def test_each_row_is_a_view_of_its_commands_protocol(command: str, fmt: str) -> None:
    (handle,) = (h for h in _handles().values() if h.name == command)
    protocol = _protocols()[command]
    view = handle.view(fmt, color=True)
    assert isinstance(view, views.View)
    assert isinstance(view, protocol), f"{views.REGISTRY[(command, fmt)]} is not a {protocol.__name__}"
    assert view.color is True
    assert handle.view(fmt).color is False


def test_format_choices_are_the_registered_formats_first_the_default() -> None:
    for handle in _handles().values():
        command = cli.commands[handle.name]
        assert isinstance(command, click.Command)
        (option,) = (p for p in command.params if p.name == "fmt")
        assert isinstance(option.type, click.Choice)
        assert tuple(option.type.choices) == handle.formats
        # discover's one document is a manifest: its format is yaml.
        assert option.default == handle.formats[0] == ("yaml" if handle.name == "discover" else "text")


def test_an_unregistered_format_is_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["drift", "--format", "yaml"], capsys)
    assert code == 1
    assert out == ""
    assert "Invalid value for '--format': 'yaml' is not one of 'text', 'json', 'markdown'." in err


#: What `import provisioner.cli` must not load: each stage's code (imported when a command runs) and
#: the libraries behind them.
_STAGE_MODULES = (
    "provisioner.views.", "provisioner.plan", "provisioner.drift", "provisioner.manifest",
    "provisioner.apply", "provisioner.refresh", "provisioner.backend", "provisioner.material",
    "provisioner.specs", "provisioner.show", "provisioner.discover", "provisioner.emulator.server",
    "jinja2", "yaml", "cryptography", "jsonschema", "alibabacloud", "Tea",
)


def test_the_cli_starts_without_importing_a_stage_or_a_view() -> None:
    """`provision --help` must stay fast: cli.py reads the view registry and types its stages under
    TYPE_CHECKING; no view, stage or library behind one is imported before a command runs."""
    probe = (
        "import sys; from provisioner import cli; "
        f"print(sorted(m for m in sys.modules if m.startswith({_STAGE_MODULES!r})))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True, timeout=60
    )
    assert run.stdout == "[]\n"
    assert run.stderr == ""
