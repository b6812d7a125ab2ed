"""The pipeline recipes under examples/ci parse as YAML and only run commands our CLI has."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from provisioner.cli import cli

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "ci"
WORKFLOWS = sorted(EXAMPLES.glob("*.yml"))


def _provision_invocations(workflow: dict[str, Any]) -> list[list[str]]:
    calls: list[list[str]] = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            for line in str(step.get("run", "")).splitlines():
                line = line.strip()
                if line.startswith("provision "):
                    words = shlex.split(line.split(">")[0])
                    calls.append(words[1:])
    return calls


def _check_invocation(args: list[str]) -> None:
    command: click.Command = cli
    while isinstance(command, click.Group):
        name = args.pop(0)
        assert name in command.commands, f"unknown subcommand {name!r}"
        command = command.commands[name]
    options = {opt: p for p in command.params if isinstance(p, click.Option) for opt in p.opts}
    i = 0
    while i < len(args):
        word = args[i]
        if word.startswith("-"):
            assert word in options, f"{command.name}: unknown option {word}"
            if not options[word].is_flag:
                i += 1
                value = args[i]
                choice = options[word].type
                if isinstance(choice, click.Choice):
                    assert value in choice.choices, f"{word}: {value!r} not in {choice.choices}"
        i += 1


def test_there_are_three_recipes() -> None:
    assert [p.name for p in WORKFLOWS] == ["apply.yml", "drift.yml", "plan.yml"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_commands_exist(path: Path) -> None:
    workflow = yaml.safe_load(path.read_text())
    # PyYAML reads the bare key `on` as True (YAML 1.1); GitHub reads it as "on".
    assert "on" in workflow or True in workflow
    assert workflow["permissions"]["id-token"] == "write", "credentials must come from OIDC"
    calls = _provision_invocations(workflow)
    assert calls, f"{path.name} runs no provision command"
    for args in calls:
        _check_invocation(list(args))


def test_unknown_option_is_caught() -> None:
    with pytest.raises(AssertionError, match="unknown option --frobnicate"):
        _check_invocation(["drift", "manifests/", "--frobnicate"])


def test_no_long_lived_keys_in_recipes() -> None:
    for path in WORKFLOWS:
        text = path.read_text()
        assert "ACCESS_KEY_SECRET" not in text and "ACCESS_KEY_ID" not in text, path.name
