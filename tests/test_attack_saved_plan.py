"""Attacks on a saved plan (found by the hostile pull request pass): a lease renews from the plan's
`created_at`, a field of the file. Shifted into the future together with the expiry it implies (the
plan's `after.expiry` and `expire_unix`), the file stays consistent with itself, and the apply would
import material that expires decades later than the plan that was reviewed said. A plan made later
than the apply that carries it out was edited: it is refused and nothing is written.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_support import run_main

from provisioner.backend.base import Kms
from provisioner.backend.local import LocalTransport

DB = Path(".provision") / "kms.db"
STAMP = "%Y-%m-%dT%H:%M:%SZ"


@pytest.fixture
def leased(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stack of one leased symmetric key in the current directory; nothing applied yet."""
    monkeypatch.chdir(tmp_path)
    for name in ("PROVISION_BACKEND", "PROVISION_ENDPOINT", "ALIBABA_CLOUD_REGION_ID"):
        monkeypatch.delenv(name, raising=False)
    keys = tmp_path / "manifests" / "keys"
    keys.mkdir(parents=True)
    (keys / "a.key").write_bytes(bytes(range(32)))
    (keys / "a.key").chmod(0o600)
    doc = {
        "version": 1, "stack": "t", "defaults": {"instance": "kst-local-software", "protection": "SOFTWARE"},
        "keys": {"a": {
            "spec": "Aliyun_AES_256", "usage": "ENCRYPT/DECRYPT",
            "expiry": {"lease": "30d", "renew_before": "7d"},
            "material": {"file": "keys/a.key", "format": "raw"},
        }},
    }
    (tmp_path / "manifests" / "s.yaml").write_text(yaml.safe_dump(doc))
    return tmp_path


def _shift(doc: Any, by: timedelta) -> None:
    """Every time of the plan that the lease gives, moved by `by`, consistently."""
    def moved(text: str) -> str:
        return (datetime.strptime(text, STAMP) + by).strftime(STAMP)

    doc["created_at"] = moved(doc["created_at"])
    for change in doc["changes"]:
        change["after"]["expiry"] = moved(change["after"]["expiry"])
        stack = [change]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                for k, v in item.items():
                    if k == "expire_unix":
                        item[k] = v + int(by.total_seconds())
                    else:
                        stack.append(v)
            elif isinstance(item, list):
                stack.extend(item)


def test_a_plan_made_in_the_future_is_refused(leased: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["plan", "manifests", "--out", "plan.json"], capsys)
    assert code == 0, err
    doc = json.loads(Path("plan.json").read_text())
    _shift(doc, timedelta(days=365 * 70))
    Path("plan.json").write_text(json.dumps(doc))
    code, out, err = run_main(["apply", "--plan", "plan.json", "manifests"], capsys)
    assert code == 1, out
    assert f"error: the plan was made at {doc['created_at']}, after now (" in err
    assert "was the file edited by hand? make a new plan" in err
    kms = Kms(LocalTransport(DB), info={"type": "local"})
    try:
        assert kms.list_keys() == []  # nothing created, nothing imported
    finally:
        kms.close()


def test_a_plan_made_now_is_applied_as_saved(leased: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["plan", "manifests", "--out", "plan.json"], capsys)
    assert code == 0, err
    code, out, err = run_main(["apply", "--plan", "plan.json", "manifests"], capsys)
    assert code == 0, err
    assert "Apply complete: 1 key(s) changed, 0 failed." in out
