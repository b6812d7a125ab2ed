"""Red-team findings against the template sandbox's size and time budgets (issue 10, item 9).

Each case is a template whose work happens inside one C call (str.join, list repr, list
comparison, json.dumps), where neither the after-the-fact size check nor the deadline can stop it:
the pipeline would take gigabytes of memory or hang for hours. Each must be a located template
error, quickly, with the budget's message. Sizes are chosen so that a regression costs at most
about 2 GB for a moment, not the machine.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner import manifest
from provisioner.errors import ManifestError

BIG = "{% set big = 'a' * 1000000 %}"


#: Memory one refused template may take at its peak: a few budgets' worth, never gigabytes.
PEAK_BYTES = 100 << 20


@pytest.fixture(autouse=True)
def _traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def _errors(tmp_path: Path, template: str) -> list[str]:
    """The errors of a file whose description is `template`; the load must be quick and small."""
    path = tmp_path / "a.yaml"
    path.write_text(f'version: 1\nstack: s\ndescription: "{template}"\n', encoding="utf-8")
    tracemalloc.reset_peak()
    start = time.monotonic()
    with pytest.raises(ManifestError) as exc:
        manifest.load_manifests([path], variables={}, environ={})
    assert time.monotonic() - start < 5
    assert tracemalloc.get_traced_memory()[1] < PEAK_BYTES
    return [str(d) for d in exc.value.diagnostics if d.severity == "error"]


def _nested(name: str, levels: int) -> str:
    """`name` as a list of 8 references to itself, `levels` deep: 8**levels leaves from a few bytes."""
    out = f"{{% set {name} = [1, 2, 3, 4, 5, 6, 7, 8] %}}"
    return out + f"{{% set {name} = [{', '.join([name] * 8)}] %}}" * levels


@pytest.mark.parametrize(
    ("template", "message"),
    [
        # The separator is inserted between every two items: 1,500 items x 1 MB.
        (BIG + "{{ (range(1500)|list)|join(big)|length }}", "the join filter would produce more than"),
        (BIG + "{{ big.join(range(1500)|map('string')|list)|length }}", "str.join would produce more than"),
        # wordwrap inserts its wrapstring at every break.
        (
            "{{ ('a ' * 1500)|wordwrap(1, true, 'x' * 1000000)|length }}",
            "the wordwrap filter could produce more than",
        ),
    ],
)
def test_a_repeated_separator_counts(tmp_path: Path, template: str, message: str) -> None:
    got = _errors(tmp_path, template)
    assert len(got) == 1 and got[0].startswith(f"{tmp_path / 'a.yaml'}:3:"), got
    assert f"template error: {message}" in got[0], got
