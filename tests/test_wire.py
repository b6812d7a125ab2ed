"""The wire facts both sides share: one enumeration of error codes, spelled nowhere else, and an
emulator that imports nothing of the client side of the package."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner import wire
from provisioner.backend.base import QUOTA_GROUPS as BASE_QUOTA_GROUPS
from provisioner.emulator.models import STATUS, KmsError
from provisioner.wire import QUOTA_GROUPS, ErrorCode, is_rejection

PACKAGE = Path(wire.__file__).parent
#: Prefixes of vendor codes: a string starting with one is a code even if the enum lacks it.
CODE_PREFIX = re.compile(r"^(Rejected|Forbidden|Unsupported|InvalidAccessKeyId|InvalidSecurityToken)\.")
CODES = frozenset(c.value for c in ErrorCode)

CLIENT_MODULES = (
    "provisioner.backend",
    "provisioner.refresh",
    "provisioner.plan",
    "provisioner.apply",
    "provisioner.cli",
    "provisioner.manifest",
    "provisioner.material",
    "provisioner.trust",
)


def bare_codes(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string constant in `source` that spells a wire error code."""
    return [
        (node.lineno, node.value)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and (node.value in CODES or CODE_PREFIX.match(node.value))
    ]


def test_the_scanner_finds_a_bare_code() -> None:
    source = 'if e.code == "Forbidden.KeyNotFound":\n    x = f"{a}"\nraise E("InvalidParameter", "a")\n'
    assert bare_codes(source) == [(1, "Forbidden.KeyNotFound"), (3, "InvalidParameter")]
    assert bare_codes('e.code.startswith("Rejected.")') == [(1, "Rejected.")]
    assert bare_codes('"""InvalidParameter is what the engine answers."""\nx = ErrorCode.X') == []


def test_no_bare_wire_code_outside_the_wire_module() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {text!r}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != PACKAGE / "wire.py"
        for line, text in bare_codes(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_the_wire_module_imports_nothing_of_the_package() -> None:
    tree = ast.parse((PACKAGE / "wire.py").read_text(encoding="utf-8"))
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert imported and not [m for m in imported if m and m.startswith("provisioner")], imported


@pytest.mark.parametrize("module", ["provisioner.emulator.server", "provisioner.emulator.models"])
def test_the_emulator_imports_nothing_of_the_client_side(module: str) -> None:
    script = f"import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert module in loaded and "provisioner.wire" in loaded
    client = [m for m in loaded if any(m == c or m.startswith(c + ".") for c in CLIENT_MODULES)]
    assert client == []


def test_names_say_their_codes() -> None:
    for code in ErrorCode:
        words = re.sub(r"(?<=[a-z])(?=[A-Z])", "_", code.value.replace(".", "_")).upper()
        assert code.name == words, code


def test_every_value_is_one_code() -> None:
    assert len({c.value for c in ErrorCode}) == len(ErrorCode)
    assert ErrorCode("Forbidden.KeyNotFound") is ErrorCode.FORBIDDEN_KEY_NOT_FOUND
    with pytest.raises(ValueError, match="'Forbidden.Nope' is not a valid ErrorCode"):
        ErrorCode("Forbidden.Nope")


def test_codes_are_their_wire_strings() -> None:
    code = ErrorCode.REJECTED_STATE_MODIFIED_FAILED
    assert code == "Rejected.StateModifiedFailed"
    assert f"{code}" == str(code) == "Rejected.StateModifiedFailed"
    assert json.dumps({"Code": code}) == '{"Code": "Rejected.StateModifiedFailed"}'
    assert str(KmsError(code, "no")) == "Rejected.StateModifiedFailed: no"


def test_statuses_follow_the_notes() -> None:
    # kms-api-notes.md, "Error codes"; 400 for everything the notes list under 400.
    assert {c for c in ErrorCode if c.status == 404} == {
        ErrorCode.FORBIDDEN_KEY_NOT_FOUND,
        ErrorCode.FORBIDDEN_ALIAS_NOT_FOUND,
        ErrorCode.INVALID_ACCESS_KEY_ID_NOT_FOUND,
        ErrorCode.INVALID_API_NOT_FOUND,
        ErrorCode.INVALID_ACTION_NOT_FOUND,
    }
    assert ErrorCode.REJECTED_THROTTLING.status == 429
    assert ErrorCode.SERVICE_UNAVAILABLE_TEMPORARY.status == 503
    assert ErrorCode.INTERNAL_FAILURE.status == 500
    assert ErrorCode.MISSING_CONTENT_LENGTH.status == 411
    assert ErrorCode.INVALID_PARAMETER.status == 400
    assert all(STATUS[c] == c.status for c in STATUS)
    assert KmsError(ErrorCode.REJECTED_DISABLED, "off").status == 409
    assert KmsError(ErrorCode.REJECTED_DISABLED, "off", status=400).status == 400


def test_rejections_are_the_rejected_codes() -> None:
    assert is_rejection(ErrorCode.REJECTED_PENDING_IMPORT)
    assert is_rejection("Rejected.SomethingNew")
    assert not is_rejection(ErrorCode.FORBIDDEN_KEY_NOT_FOUND)
    assert not is_rejection("rejected.lowercase")


def test_quota_groups_live_with_the_wire_and_stay_importable_from_base() -> None:
    assert BASE_QUOTA_GROUPS is QUOTA_GROUPS
    assert set(QUOTA_GROUPS.values()) == {"create", "read", "write", "crypto"}
