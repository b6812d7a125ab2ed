"""The Kms facade's own decisions: how it splits calls the vendor limits."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from provisioner.backend.base import TAG_RESOURCE_MAX, Kms


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def call(self, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append((action, dict(params)))
        return {"RequestId": "r"}

    def close(self) -> None:
        pass


def test_tag_resource_sends_at_most_ten_tags_a_call() -> None:
    recorder = Recorder()
    tags = {f"k{i:02}": f"v{i}" for i in range(23)}
    Kms(recorder).tag_resource("key-1", tags)
    sent = [json.loads(p["Tags"]) for action, p in recorder.calls if action == "TagResource"]
    assert [len(batch) for batch in sent] == [TAG_RESOURCE_MAX, TAG_RESOURCE_MAX, 3]
    assert {t["TagKey"]: t["TagValue"] for batch in sent for t in batch} == tags
    assert all(p["KeyId"] == "key-1" for _, p in recorder.calls)


def test_tag_resource_with_few_tags_is_one_call() -> None:
    recorder = Recorder()
    Kms(recorder).tag_resource("key-1", {"a": "1", "b": "2"})
    assert [a for a, _ in recorder.calls] == ["TagResource"]
