"""A fresh apply reads each material source once: the material it planned with is the one it imports."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from e2e_support import run_cli

pytestmark = pytest.mark.slow

MANIFEST = """\
version: 1
stack: once
keys:
  signer:
    spec: EC_P256
    usage: SIGN/VERIFY
    instance: kst-local-software
    aliases: [alias/once/signer]
    material:
      command: [{python}, {script}]
"""

SCRIPT = """\
import pathlib, sys
here = pathlib.Path(__file__).parent
with open(here / "runs.log", "a") as log:
    log.write("run\\n")
sys.stdout.write((here / "key.pem").read_text())
"""


def test_command_source_runs_once_per_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "key.pem").write_bytes(key)
    (tmp_path / "key.pem").chmod(0o600)
    (tmp_path / "emit.py").write_text(SCRIPT)
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "once.yaml").write_text(
        MANIFEST.format(python=sys.executable, script=tmp_path / "emit.py")
    )
    r = run_cli(["apply", "manifests", "--auto-approve", "--allow-commands"])
    assert r.code == 0, r.stdout + r.stderr
    assert "signer: created key-" in r.stderr
    assert (tmp_path / "runs.log").read_text() == "run\n"  # planned and imported from one read
    r = run_cli(["plan", "manifests", "--detailed-exitcode", "--allow-commands"])
    assert r.code == 0, r.stdout + r.stderr
    assert (tmp_path / "runs.log").read_text() == "run\nrun\n"
