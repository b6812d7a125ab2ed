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


@pytest.mark.parametrize(
    ("template", "message"),
    [
        # 8**10 leaves in nine small literals; comparing two such lists is 10**9 steps in C, which
        # the deadline cannot interrupt (13 levels: hours). Built lists are weighed whole.
        (_nested("a", 10) + _nested("b", 10) + "{{ a == b }}", "a list, tuple or mapping would hold"),
        # A list of a thousand 1,000-item lists: `*` counted the outer list only, and its repr (or
        # tojson) is then one C call over every leaf ([...] * 100000 of 100,000 items: 70 GB).
        ("{% set a = [range(1000)|list] * 1000 %}{{ a|length }}", "the * operator would produce more than"),
        ("{% set a = range(1000)|list %}{{ ([a] * 100 + [a] * 160)|length }}", "the + operator would"),
        # A namespace prints every attribute it holds.
        (
            "{% set ns = namespace() %}{% set big = range(100000)|list %}"
            + "".join(f"{{% set ns.a{i} = big %}}" for i in range(12))
            + "{{ ns }}",
            "the value printed would produce more than",
        ),
    ],
)
def test_a_container_is_weighed_with_everything_it_holds(tmp_path: Path, template: str, message: str) -> None:
    got = _errors(tmp_path, template)
    assert len(got) == 1 and got[0].startswith(f"{tmp_path / 'a.yaml'}:3:"), got
    assert f"template error: {message}" in got[0], got


def test_ordinary_lists_and_mappings_still_render(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    template = (
        "{% set regions = ['cn-hangzhou', 'cn-shanghai'] * 3 %}{% set m = {'a': regions, 'b': [1, 2]} %}"
        "{% set ns = namespace(n=0) %}{% for r in regions %}{% set ns.n = ns.n + 1 %}{% endfor %}"
        "{{ m|tojson|length }}-{{ ns.n }}-{{ (regions + regions)|unique|join(',') }}"
    )
    path.write_text(
        "version: 1\nstack: s\nkeys:\n  k:\n    spec: RSA_2048\n    usage: SIGN/VERIFY\n"
        f"    instance: kst-local-software\n    description: \"{template}\"\n    material: {{file: k.pem}}\n",
        encoding="utf-8",
    )
    ms = manifest.load_manifests([path], variables={}, environ={})
    assert ms.keys[0].description == "110-6-cn-hangzhou,cn-shanghai"


LOOP = "{% for i in range(1500) %}{{ big }}{% endfor %}"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        # What a block renders is joined in one C call: 1,500 copies of 1 MB held by reference.
        (BIG + "{% set s %}" + LOOP + "{% endset %}{{ s|length }}", "a block would render more than"),
        (BIG + "{% macro m() %}" + LOOP + "{% endmacro %}{{ m()|length }}", "a block would render more than"),
        (BIG + "{% filter upper %}" + LOOP + "{% endfilter %}", "a block would render more than"),
        (
            BIG + "{% macro m() %}{{ caller() }}{% endmacro %}{% call m() %}" + LOOP + "{% endcall %}",
            "a block would render more than",
        ),
        # An indent is written before every item, in json's pure-Python encoder, joined at the end.
        ("{{ (range(1500)|list)|tojson(indent=1000000)|length }}", "the tojson filter takes no indent"),
        ("{{ [1]|pprint }}", "the pprint filter is not available in manifests"),
    ],
)
def test_a_block_or_a_document_is_bounded_before_it_is_joined(
    tmp_path: Path, template: str, message: str
) -> None:
    got = _errors(tmp_path, template)
    assert len(got) == 1 and got[0].startswith(f"{tmp_path / 'a.yaml'}:3:"), got
    assert f"template error: {message}" in got[0], got
