"""The manifest package's shape: each module imports only those below it, none reaches for another's
private helper, only the material stage reads material, and it reads each source once."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from provisioner import manifest
from provisioner.errors import ManifestError, MaterialError
from provisioner.manifest import material_stage

PACKAGE = Path(manifest.__file__).parent

#: Which sibling modules each module may import: the stages in the order data flows through them.
ALLOWED = {
    "words": set(),
    "positions": {"words"},
    "schema": {"words", "positions"},
    "rules": {"words", "positions"},
    "render": {"words"},
    "files": set(),
    "load": {"words", "positions", "schema", "rules", "render", "files"},
    "material_stage": {"load", "rules"},
}

MANIFEST = """\
version: 1
stack: stage
defaults: {{instance: kst-local-software}}
keys:
  good:
    spec: EC_P256
    usage: SIGN/VERIFY
    material: {{file: good.pem}}
{more}"""

MISSING = """\
  lost:
    spec: EC_P256
    usage: SIGN/VERIFY
    material: {file: lost.pem}
"""


def imports_of(path: Path) -> list[ast.ImportFrom | ast.Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]


def imported_modules(path: Path) -> set[str]:
    out: set[str] = set()
    for node in imports_of(path):
        if isinstance(node, ast.ImportFrom):
            out.add(node.module or "")
        else:
            out.update(alias.name for alias in node.names)
    return out


def test_every_module_of_the_package_is_in_the_table() -> None:
    assert {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"} == set(ALLOWED)


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_a_module_imports_only_the_modules_below_it(module: str) -> None:
    siblings = {
        m.removeprefix("provisioner.manifest.")
        for m in imported_modules(PACKAGE / f"{module}.py")
        if m.startswith("provisioner.manifest")
    }
    assert siblings <= ALLOWED[module], siblings - ALLOWED[module]


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_no_module_imports_a_private_name(module: str) -> None:
    private = [
        f"{node.module}.{alias.name}"
        for node in imports_of(PACKAGE / f"{module}.py")
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("provisioner")
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert private == []


def test_only_the_material_stage_reads_material() -> None:
    readers = sorted(
        p.stem for p in PACKAGE.glob("*.py") if "provisioner.material" in imported_modules(p)
    )
    assert readers == ["material_stage"]


def write_set(tmp_path: Path, more: str = "") -> Path:
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "good.pem").write_bytes(key)
    (tmp_path / "good.pem").chmod(0o600)
    path = tmp_path / "stage.yaml"
    path.write_text(MANIFEST.format(more=more), encoding="utf-8")
    return path


def test_a_material_file_is_opened_once_per_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ms = manifest.load_manifests([write_set(tmp_path)], variables={}, environ={})
    key_file = str(tmp_path / "good.pem")
    opened: list[str] = []
    real_open = os.open

    def counting_open(path: str | os.PathLike[str], *args: int, **kwargs: int) -> int:
        if os.fspath(path) == key_file:
            opened.append(key_file)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    fingerprints, diags = manifest.check_material(ms, environ={})
    assert list(fingerprints) == ["good"] and list(diags) == []
    assert opened == [key_file]


def test_read_material_keeps_the_material_only_when_asked(tmp_path: Path) -> None:
    ms = manifest.load_manifests([write_set(tmp_path)], variables={}, environ={})
    dropped = manifest.read_material(ms, environ={})
    kept = manifest.read_material(ms, environ={}, keep=True)
    assert dropped.materials == {}
    assert list(kept.materials) == ["good"]
    assert kept.materials["good"].fingerprint == kept.fingerprints["good"] == dropped.fingerprints["good"]
    material = kept.materials["good"]
    kept.wipe()
    assert kept.materials == {}
    with pytest.raises(MaterialError, match=r"^material sha256:[0-9a-f]{64} was wiped after use$"):
        material.pkcs8_der()


def test_a_failed_validate_wipes_what_it_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_set(tmp_path, MISSING)
    kept: list[material_stage.MaterialRead] = []
    materials = {}
    real_read = material_stage.read_material

    def spying_read(*args: object, **kwargs: object) -> material_stage.MaterialRead:
        result = real_read(*args, **kwargs)  # type: ignore[arg-type]
        kept.append(result)
        materials.update(result.materials)
        return result

    monkeypatch.setattr(material_stage, "read_material", spying_read)
    with pytest.raises(ManifestError) as exc:
        manifest.validate_with_material([path], variables={}, environ={}, keep=True)
    assert [str(d) for d in exc.value.diagnostics] == [
        f'{path}:12:15: error: key "lost": file {tmp_path / "lost.pem"}: no such file'
    ]
    (result,) = kept
    assert result.fingerprints.keys() == {"good"} and result.materials == {}
    assert list(materials) == ["good"]
    with pytest.raises(MaterialError, match=r"^material sha256:[0-9a-f]{64} was wiped after use$"):
        materials["good"].pkcs8_der()
