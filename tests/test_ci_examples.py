"""The pipeline recipes under examples/ci parse as YAML and only run commands our CLI has."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from provisioner.cli import cli

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "ci"
WORKFLOWS = sorted(EXAMPLES.glob("*.yml"))


def _workflow(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((EXAMPLES / name).read_text()))


def _runs(job: dict[str, Any]) -> str:
    return "\n".join(str(step.get("run", "")) for step in job["steps"])


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
    assert workflow["permissions"] == {}, "nothing by default: each job asks for what it needs"
    cloud_jobs = [job for job in workflow["jobs"].values() if _provision_invocations({"jobs": {"j": job}})]
    for job in cloud_jobs:
        assert job["permissions"]["id-token"] == "write", "credentials must come from OIDC"
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


COMMIT_PIN = re.compile(r"^[0-9a-f]{40}$")
INSTALL = 'pip install "byok-provisioner @ git+https://github.com/byok-provisioner/byok-provisioner@${PROVISIONER_COMMIT}"'


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_recipe_installs_the_tool_at_a_pinned_commit(path: Path) -> None:
    """DESIGN 9: never by a bare name an index may not hold (anyone could register it)."""
    workflow = yaml.safe_load(path.read_text())
    assert COMMIT_PIN.match(workflow["env"]["PROVISIONER_COMMIT"])
    for job in workflow["jobs"].values():
        installs = [line.strip() for line in _runs(job).splitlines() if "pip install" in line]
        if _provision_invocations({"jobs": {"j": job}}):
            assert installs == [INSTALL], installs
        for line in installs:
            assert line == INSTALL, line


def test_the_pull_request_job_holds_no_private_key_and_runs_no_command() -> None:
    workflow = _workflow("plan.yml")
    assert set(workflow["on"] if "on" in workflow else workflow[True]) == {"pull_request"}
    text = (EXAMPLES / "plan.yml").read_text()
    assert "secrets." not in text and "pull_request_target" not in text
    commands = _runs(workflow["jobs"]["plan"]) + yaml.safe_dump(workflow["jobs"]["plan"].get("env", {}))
    assert "--allow-commands" not in commands and "PROVISION_ALLOW" not in commands
    calls = _provision_invocations(workflow)
    assert [c[0] for c in calls] == ["validate", "plan"]
    assert all("--offline-material" in c for c in calls), calls
    assert workflow["jobs"]["plan"]["env"]["PROVISION_BACKEND"] == "alibaba"
    role = workflow["jobs"]["plan"]["env"]["ALIBABA_CLOUD_ROLE_ARN"]
    assert role == "${{ vars.ALIBABA_CLOUD_PR_ROLE_ARN }}"
    # The job that may write to the pull request holds no cloud credential and runs no provision.
    comment = workflow["jobs"]["comment"]
    assert comment["permissions"] == {"pull-requests": "write"}
    assert "provision" not in _runs(comment)


def test_only_the_protected_apply_job_reads_material_and_only_on_main() -> None:
    workflow = _workflow("apply.yml")
    plan, apply = workflow["jobs"]["plan"], workflow["jobs"]["apply"]
    assert "secrets." not in yaml.safe_dump(plan)
    assert [c[:2] for c in _provision_invocations({"jobs": {"p": plan}})] == [["plan", "manifests/"]]
    assert "--offline-material" in _provision_invocations({"jobs": {"p": plan}})[0]
    assert apply["environment"] == "production"
    assert apply["if"].startswith("github.ref == 'refs/heads/main'")
    assert plan["if"] == "github.ref == 'refs/heads/main'"
    assert _provision_invocations({"jobs": {"a": apply}}) == [
        ["apply", "--plan", "plan.json", "manifests/", "--backend", "alibaba", "--format", "json"]
    ]
    secret_steps = [s for s in apply["steps"] if "secrets." in yaml.safe_dump(s)]
    assert [s["name"] for s in secret_steps] == [
        "Apply the saved plan (refused if the manifests or any key changed since it was made)"
    ]
    assert apply["env"]["ALIBABA_CLOUD_ROLE_ARN"] == "${{ vars.ALIBABA_CLOUD_APPLY_ROLE_ARN }}"


def test_drift_holds_no_material_and_uses_the_read_role() -> None:
    workflow = _workflow("drift.yml")
    assert "secrets." not in (EXAMPLES / "drift.yml").read_text()
    assert workflow["env"]["ALIBABA_CLOUD_ROLE_ARN"] == "${{ vars.ALIBABA_CLOUD_READ_ROLE_ARN }}"


def test_readme_shows_each_roles_trust_pinned_to_its_subject() -> None:
    text = (EXAMPLES / "README.md").read_text()
    for subject in (
        "repo:ORG/REPO:pull_request",
        "repo:ORG/REPO:ref:refs/heads/main",
        "repo:ORG/REPO:environment:production",
    ):
        assert f'"oidc:sub": "{subject}"' in text, subject
    policy = json.loads(text.split("```json\n", 1)[1].split("```", 1)[0])
    condition = policy["Statement"][0]["Condition"]["StringEquals"]
    assert condition["oidc:iss"] == "https://token.actions.githubusercontent.com"
    assert condition["oidc:aud"] == "sts.aliyuncs.com"
