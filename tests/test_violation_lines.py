"""A blocked plan or apply names where each violation's key is declared, compiler style on stderr
(`FILE:LINE:COL: error: KEY: CODE: MESSAGE`, as validate prints), while the plan document keeps
violations as {key, code, message}. Driven through the CLI on the local backend.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cli_support import example_workdir, run_main
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from plan_builders import default_fingerprints, desired_key, live_state, manifest

from provisioner.model import Location
from provisioner.plan.planfile import load_plan, plan_to_dict, save_plan
from provisioner.plan.planner import make_plan

PAST = "2020-01-01T00:00:00Z"
#: `CODE: MESSAGE` of an expired key's violation; the planner's clock (whole seconds, UTC) as a pattern.
EXPIRED_LINE = (
    re.escape(f"expiry-in-past: expiry {PAST} is not after now (")
    + r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
    + re.escape("): set a later expiry or `expiry: never`")
)


def expired_at(where: str, key: str) -> re.Pattern[str]:
    """The whole stderr line of an expiry-in-past violation of `key` declared at `where`."""
    return re.compile(re.escape(f"{where}: error: {key}: ") + EXPIRED_LINE)


SECOND = """\
version: 1
stack: payments
keys:
  late-signing:
    spec: EC_P256
    usage: SIGN/VERIFY
    instance: kst-local-software
    expiry: "2020-01-01T00:00:00Z"
    material:
      file: keys/late-signing.pem
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example stack, its api-tokens key expired, and a second manifest file with an expired key."""
    work = example_workdir(tmp_path, monkeypatch)
    first = work / "manifests" / "payments.yaml"
    text = first.read_text(encoding="utf-8")
    first.write_text(text.replace('"2099-12-31T23:59:59Z"', f'"{PAST}"', 1), encoding="utf-8")
    key = work / "manifests" / "keys" / "late-signing.pem"
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key.write_bytes(pem)
    key.chmod(0o600)
    (work / "manifests" / "settlement.yaml").write_text(SECOND, encoding="utf-8")
    return work


def _line_of(path: Path, text: str) -> int:
    return path.read_text(encoding="utf-8").splitlines().index(text) + 1


def test_blocked_plan_prints_each_violation_at_its_key_in_its_own_file(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = _line_of(workdir / "manifests" / "payments.yaml", "  api-tokens:")

    rc, out, err = run_main(["plan"], capsys)

    assert rc == 1
    first, second, last = err.splitlines()[-3:]
    assert expired_at(f"manifests/payments.yaml:{tokens}:3", "api-tokens").fullmatch(first), first
    assert expired_at("manifests/settlement.yaml:4:3", "late-signing").fullmatch(second), second
    assert last == "error: the plan is blocked by 2 violation(s)"
    # The text view is as it was: no location there.
    message = second.split(": expiry-in-past: ", 1)[1]
    assert f"  ! late-signing: expiry-in-past: {message}" in out.splitlines()


def test_blocked_plan_json_keeps_violations_without_location(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run_main(["plan", "--format", "json", "--out", "p.json"], capsys)

    assert rc == 1
    doc = json.loads(out)
    assert [sorted(v) for v in doc["violations"]] == [["code", "key", "message", "target"]] * 2
    assert [(v["key"], v["code"]) for v in doc["violations"]] == [
        ("api-tokens", "expiry-in-past"),
        ("late-signing", "expiry-in-past"),
    ]
    assert all(re.fullmatch(EXPIRED_LINE, f"{v['code']}: {v['message']}") for v in doc["violations"])
    assert "settlement.yaml" not in out
    assert err.splitlines()[-2].startswith("manifests/settlement.yaml:4:3: error: late-signing: ")
    assert not (workdir / "p.json").exists()  # a blocked plan is never saved


def test_blocked_apply_prints_the_located_lines_before_refusing(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = run_main(["apply", "--auto-approve", "--format", "json"], capsys)

    assert rc == 1
    located, last = err.splitlines()[-2:]
    assert expired_at("manifests/settlement.yaml:4:3", "late-signing").fullmatch(located), located
    assert last == "error: the plan is blocked by 2 violation(s); nothing applied"


def test_a_saved_plan_s_violations_have_no_location(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "manifests" / "settlement.yaml").unlink()
    first = workdir / "manifests" / "payments.yaml"
    first.write_text(first.read_text(encoding="utf-8").replace(f'"{PAST}"', "never"), encoding="utf-8")
    assert run_main(["plan", "--out", "p.json"], capsys)[0] == 0
    doc = json.loads((workdir / "p.json").read_text(encoding="utf-8"))
    doc["violations"] = [{"key": "card-data", "code": "alias-conflict", "message": "planted\x1b[2J"}]
    (workdir / "p.json").write_text(json.dumps(doc), encoding="utf-8")

    rc, _, err = run_main(["apply", "--plan", "p.json"], capsys)

    assert rc == 1
    assert err.splitlines() == [
        "error: card-data: alias-conflict: planted\\u001b[2J",
        "error: the plan is blocked by 1 violation(s); nothing applied",
    ]


def test_a_file_name_that_would_drive_the_terminal_is_escaped(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "manifests" / "settlement.yaml").rename(workdir / "manifests" / "late\x1b[31m.yaml")

    rc, _, err = run_main(["plan"], capsys)

    assert rc == 1
    (line,) = [e for e in err.splitlines() if "late-signing" in e]
    assert line.startswith("manifests/late\\u001b[31m.yaml:4:3: error: late-signing: expiry-in-past: ")
    assert "\x1b" not in err


# ------------------------------------------------------------------------------ the planner's side


def test_a_violation_carries_its_key_s_location_and_no_document_holds_it() -> None:
    where = Location("manifests/second.yaml", 12, 3)
    late = replace(desired_key("late", {"expiry": PAST}), location=where)
    desired = manifest([late, desired_key("fine")])
    plan = make_plan(
        desired, live_state([]), now=datetime(2026, 1, 1, tzinfo=UTC),
        fingerprints=default_fingerprints(desired), backend={"type": "local"},
    )

    (v,) = plan.violations
    assert (v.key, v.code, v.location) == ("late", "expiry-in-past", where)
    document = plan_to_dict(plan)["violations"]
    assert document == [{"key": "late", "code": "expiry-in-past", "message": v.message, "target": "default"}]
    saved = save_plan(plan)
    assert "second.yaml" not in saved
    (loaded,) = load_plan(saved).violations
    assert loaded == v and loaded.location is None  # equality ignores where it was declared
