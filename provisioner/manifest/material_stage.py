"""The material stage: after the manifests load, read and verify each key's private material.

Each source is read once: its fingerprint, the forms the 16-byte rule scans for, and (for an
apply) the material itself all come from that one read. The material never appears in a message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from provisioner import leakscan
from provisioner.errors import ManifestError, MaterialError
from provisioner.manifest.load import load_manifests
from provisioner.manifest.rules import one_material_per_key
from provisioner.model import DesiredKey, Diagnostic, Diagnostics, ManifestSet, Severity, SourceKind
from provisioner.specs import Material


@dataclass
class MaterialRead:
    """What the stage read: the fingerprint by key name, the diagnostics (warnings included) and,
    when asked for, the material itself by key name, for an apply to import."""

    fingerprints: dict[str, str] = field(default_factory=dict)
    diagnostics: Diagnostics = field(default_factory=Diagnostics)
    materials: dict[str, Material] = field(default_factory=dict)

    @property
    def has_errors(self) -> bool:
        return self.diagnostics.has_errors

    def wipe(self) -> None:
        """Wipe and forget every material kept."""
        for material in self.materials.values():
            material.wipe()
        self.materials.clear()


def read_material(
    ms: ManifestSet,
    *,
    environ: Mapping[str, str] | None = None,
    allow_commands: bool | None = None,
    keep: bool = False,
) -> MaterialRead:
    """Read and verify each key's material. Keys without material (state absent) are skipped.

    Errors are located at the key's `material` block and prefixed with the key name. Material is
    wiped once its fingerprint is known, unless `keep`: then the result holds it, so a source (a
    command, say) is read only once a run.
    """
    # Imported here so that loading manifests never pulls in the crypto stack.
    from provisioner.material import pass_env_refusal

    result = MaterialRead(diagnostics=Diagnostics(files=ms.files))
    index = leakscan.MaterialIndex()  # every form of every material read, for the 16-byte rule
    env: Mapping[str, str] = os.environ if environ is None else environ
    material_names = frozenset(
        n for k in ms.keys if k.material is not None
        for n in (k.material.env, k.material.passphrase_env) if n is not None
    )
    for key in ms.keys:
        source = key.material
        if source is None:
            continue
        refused = [
            (v, r) for v in source.pass_env if (r := pass_env_refusal(v, env, material_names)) is not None
        ]
        if refused:
            # The command does not run: it would be handed a variable no manifest may reach.
            result.diagnostics.extend(
                Diagnostic(source.location, f'key "{key.name}": material.pass_env {v}: {r}')
                for v, r in refused
            )
            continue
        read = _read_one(key, environ, allow_commands, result.diagnostics)
        if read is None:
            continue
        material, forms = read
        result.fingerprints[key.name] = material.fingerprint
        for form in forms:
            index.add(form)
        if keep:
            result.materials[key.name] = material
        else:
            material.wipe()
    result.diagnostics.extend(one_material_per_key(ms.keys, result.fingerprints))
    if ms.material_scan is not None and index:
        result.diagnostics.extend(ms.material_scan(index))
    del index  # the only copy of the material's bytes outside the key objects
    return result


def _read_one(
    key: DesiredKey, environ: Mapping[str, str] | None, allow_commands: bool | None,
    diags: Diagnostics,
) -> tuple[Material, list[bytes]] | None:
    """One key's verified material and the byte strings a manifest must not carry 16 bytes of:
    the source's bytes as read (a command's output is not among them: its key's forms cover it),
    the key's PKCS#8 and traditional (PKCS#1 / SEC1) DER, and its secret numbers."""
    from provisioner.material import verify_material

    source = key.material
    assert source is not None
    raw: list[bytes] = []

    def warn(message: str) -> None:
        diags.add(Diagnostic(source.location, f'key "{key.name}": {message}', severity=Severity.WARNING))

    try:
        material = verify_material(
            source, key.spec, environ=environ, warn=warn, allow_commands=allow_commands,
            on_read=None if source.kind is SourceKind.COMMAND else raw.append,
        )
    except MaterialError as e:
        diags.add(Diagnostic(source.location, f'key "{key.name}": {e}'))
        return None
    return material, [*raw, *material.secret_forms()]


def check_material(
    ms: ManifestSet,
    *,
    environ: Mapping[str, str] | None = None,
    allow_commands: bool | None = None,
) -> tuple[dict[str, str], Diagnostics]:
    """`read_material` for the fingerprints only: (fingerprint by key name, diagnostics)."""
    result = read_material(ms, environ=environ, allow_commands=allow_commands)
    return result.fingerprints, result.diagnostics


def validate_with_material(
    paths: Sequence[Path],
    *,
    variables: Mapping[str, object],
    environ: Mapping[str, str] | None = None,
    keep: bool = False,
    allow_env: Sequence[str] = (),
    allow_commands: bool | None = None,
) -> tuple[ManifestSet, MaterialRead]:
    """The whole `validate` stage: load, then read every key's material.

    Raises ManifestError carrying every error (and the warnings); whatever was kept is wiped then.
    `keep`: as for read_material; `allow_env`: as for load_manifests."""
    ms = load_manifests(paths, variables=variables, environ=environ, allow_env=allow_env)
    result = read_material(ms, environ=environ, allow_commands=allow_commands, keep=keep)
    if result.has_errors:
        result.wipe()
        raise ManifestError(result.diagnostics)
    return ms, result


def validate_manifests(
    paths: Sequence[Path],
    *,
    variables: Mapping[str, object],
    environ: Mapping[str, str] | None = None,
    offline_material: bool = False,
    allow_env: Sequence[str] = (),
    allow_commands: bool | None = None,
) -> tuple[ManifestSet, dict[str, str], Diagnostics]:
    """Load, then (unless offline) read every key's material, wiping it once fingerprinted.

    Returns the set, the fingerprint of each key whose material was read, and the warnings;
    raises ManifestError carrying every error (and the warnings) otherwise."""
    if offline_material:
        ms = load_manifests(paths, variables=variables, environ=environ, allow_env=allow_env)
        return ms, {}, Diagnostics()
    ms, result = validate_with_material(
        paths, variables=variables, environ=environ, allow_env=allow_env, allow_commands=allow_commands
    )
    return ms, result.fingerprints, result.diagnostics

