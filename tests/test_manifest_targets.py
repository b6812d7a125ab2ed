"""`backends:` and `targets:` (DESIGN section 12) as the manifest layer reads them: what each target
sees (ManifestSet.for_target), the adopt forms, and the one-material rule per target. The located
refusals are in tests/bad_manifests/ (backends-*, targets-*, adopt-*-target*, material-twice-one-target)."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner import manifest
from provisioner.errors import ManifestError
from provisioner.model import DEFAULT_TARGET

REPO = Path(__file__).resolve().parent.parent
PEM = REPO / "manifests" / "keys" / "receipts-signing.pem"
PIN = "sha256:" + "0" * 64

THREE = """\
version: 1
stack: multi
backends:
  - {name: hz, type: alibaba, region: cn-hangzhou, endpoint: "http://127.0.0.1:9001"}
  - {name: sh, type: alibaba, region: cn-shanghai}
  - {name: lab, type: local, path: lab.db}
defaults:
  instance: kst-local-software
keys:
"""


def key(name: str, extra: str = "", pin: str = PIN) -> str:
    return (
        f"  {name}:\n    spec: RSA_2048\n    usage: SIGN/VERIFY\n{extra}"
        f"    material:\n      file: {PEM}\n      fingerprint: \"{pin}\"\n"
    )


def load(tmp_path: Path, text: str) -> manifest.ManifestSet:
    (tmp_path / "m.yaml").write_text(text)
    return manifest.load_manifests([tmp_path], variables={}, environ={})


def test_backends_are_the_sets_targets_in_the_order_written(tmp_path: Path) -> None:
    ms = load(tmp_path, THREE + key("a"))
    assert ms.target_names == ("hz", "sh", "lab")
    assert ms.several_targets and ms.backend is None
    hz = ms.target_config("hz")
    assert hz is not None and (hz.type, hz.region, hz.endpoint) == ("alibaba", "cn-hangzhou", "http://127.0.0.1:9001")
    lab = ms.target_config("lab")
    assert lab is not None and lab.type == "local" and lab.path == tmp_path / "lab.db"
    assert ms.target_config("nowhere") is None
    assert ms.keys[0].targets == ("hz", "sh", "lab")  # default: every target


def test_for_target_is_the_set_one_target_sees(tmp_path: Path) -> None:
    other = "sha256:" + "1" * 64
    text = THREE + key("a", "    targets: [sh, hz]\n") + key("b", "    targets: [lab]\n", pin=other)
    ms = load(tmp_path, text)
    assert [k.targets for k in ms.keys] == [("hz", "sh"), ("lab",)]  # in backends: order
    hz = ms.for_target("hz")
    assert [k.name for k in hz.keys] == ["a"] and hz.keys[0].targets == ("hz",)
    assert hz.backend == ms.target_config("hz") and hz.backends == () and hz.target_names == (DEFAULT_TARGET,)
    assert (hz.stack, hz.files, hz.manifest_digest) == (ms.stack, ms.files, ms.manifest_digest)
    assert [k.name for k in ms.for_target("lab").keys] == ["b"]
    with pytest.raises(KeyError):
        ms.for_target("nowhere")


def test_a_single_backend_set_is_its_own_only_target(tmp_path: Path) -> None:
    text = "version: 1\nstack: one\ndefaults:\n  instance: kst-local-software\nkeys:\n" + key(
        "a", "    targets: [default]\n    adopt: {default: key-abc}\n"
    )
    ms = load(tmp_path, text)
    assert ms.target_names == (DEFAULT_TARGET,) and not ms.several_targets
    assert ms.for_target(DEFAULT_TARGET) is ms
    assert ms.keys[0].targets == (DEFAULT_TARGET,)
    assert ms.keys[0].adopt == "key-abc" and ms.keys[0].adopt_targets == {}


def test_adopt_per_target_and_an_alias_for_every_target(tmp_path: Path) -> None:
    text = THREE + key("a", "    adopt: {hz: key-hz, lab: key-lab}\n") + key(
        "b", "    adopt: alias/shared\n", pin="sha256:" + "1" * 64
    )
    ms = load(tmp_path, text)
    assert [(k.name, k.adopt) for k in ms.for_target("hz").keys] == [("a", "key-hz"), ("b", "alias/shared")]
    assert [(k.name, k.adopt) for k in ms.for_target("sh").keys] == [("a", None), ("b", "alias/shared")]
    assert [(k.name, k.adopt) for k in ms.for_target("lab").keys] == [("a", "key-lab"), ("b", "alias/shared")]
    located = ms.for_target("hz").keys[0].adopt_at
    assert located is not None and (located.line, located.column) == (13, 17)


def test_one_key_of_one_target_may_adopt_by_key_id(tmp_path: Path) -> None:
    ms = load(tmp_path, THREE + key("a", "    targets: [sh]\n    adopt: key-abc\n"))
    assert [(k.name, k.adopt) for k in ms.for_target("sh").keys] == [("a", "key-abc")]
    assert ms.for_target("hz").keys == ()


def test_one_material_in_two_targets_is_byok_normal_case(tmp_path: Path) -> None:
    """The same material in two keys that share no target is fine (one key per region)."""
    ms = load(tmp_path, THREE + key("a", "    targets: [hz]\n") + key("b", "    targets: [sh, lab]\n"))
    assert [k.name for k in ms.keys] == ["a", "b"]


def test_one_material_in_one_target_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as e:
        load(tmp_path, THREE + key("a", "    targets: [hz, sh]\n") + key("b", "    targets: [sh]\n"))
    [d] = list(e.value.diagnostics)
    assert 'key "b": its material (' + PIN + ') is also the material of key "a"' in d.message
    assert 'in target "sh"' in d.message and d.location.line == 17


def test_a_material_file_is_checked_once_whatever_the_targets(tmp_path: Path) -> None:
    """Reading the material: one fingerprint per key, not per target; two targets read it once."""
    (tmp_path / "m.yaml").write_text(THREE + key("a").replace(f'      fingerprint: "{PIN}"\n', ""))
    ms, fingerprints, _ = manifest.validate_manifests(
        [tmp_path], variables={}, offline_material=False, allow_env=(), allow_commands=False
    )
    assert list(fingerprints) == ["a"] and fingerprints["a"].startswith("sha256:")
    assert ms.keys[0].targets == ("hz", "sh", "lab")
