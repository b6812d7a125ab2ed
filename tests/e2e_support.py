"""Helpers for the end-to-end suites (plan, drift): fresh material in a temp dir, manifests written
from a small spec, the CLI run in-process with its real exit code, and a scan for private material.

Nothing here talks to KMS itself: the tests do that through the CLI or the official SDK.
"""

from __future__ import annotations

import base64
import json
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from apply_support import Run, run_cli  # noqa: F401  (re-exported: one CLI runner for every suite)
from backends import Backend
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from provisioner.material import fingerprint_of_key_file

REGION = "cn-hangzhou"
STACK = "e2e"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Entry:
    """One manifest entry as the tests need it (a subset of the manifest format)."""

    name: str
    spec: str = "EC_P256"
    usage: str = "SIGN/VERIFY"
    aliases: tuple[str, ...] = ()
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    expiry: str = "never"  # a time or never; `lease` replaces it
    lease: str | None = None  # `{lease: 30d, renew_before: 7d}`, written as it is
    pin: bool = False
    state: str = "present"
    material: str | None = None  # the key file's stem (keys/STEM.pem), default the name
    previous: tuple[tuple[str, str], ...] = ()  # `previous:` entries: (fingerprint, state), newest first

    @property
    def stem(self) -> str:
        return self.material or self.name


@dataclass
class Stack:
    """A manifest folder: `folder/stack.yaml` plus `folder/keys/NAME.pem` (mode 0600); `backend`, when
    given, is written as the manifest's `backend:` block (the local backend's state file)."""

    folder: Path
    keys: list[Entry]
    fingerprints: dict[str, str] = field(default_factory=dict)  # by key file stem
    backend: Mapping[str, str] | None = None

    @property
    def manifest(self) -> Path:
        return self.folder / "stack.yaml"

    @property
    def key_folder(self) -> Path:
        return self.folder / "keys"

    def write(self, keys: Iterable[Entry] | None = None) -> Path:
        """(Re)write the manifest, for `keys` or all; material is generated once per name."""
        chosen = list(self.keys if keys is None else keys)
        self.key_folder.mkdir(parents=True, exist_ok=True)
        lines = [
            "version: 1",
            f"stack: {STACK}",
            *([f"backend: {json.dumps(dict(self.backend))}"] if self.backend else []),
            "defaults:",
            "  instance: kst-local-software",
            "  protection: SOFTWARE",
            "  tags: {owner: platform}",
            "keys:",
        ]
        for k in chosen:
            pem = self.key_folder / f"{k.stem}.pem"
            if not pem.exists():
                write_private_key(pem, k.spec)
            if k.stem not in self.fingerprints:
                self.fingerprints[k.stem] = fingerprint_of_key_file(pem)
            lines += [
                f"  {k.name}:",
                f"    spec: {k.spec}",
                f"    usage: {k.usage}",
                f"    aliases: [{', '.join(k.aliases)}]",
                f"    description: {k.description!r}",
                "    tags: {" + ", ".join(f"{a}: {b!r}" for a, b in k.tags.items()) + "}",
                f"    expiry: {k.lease or repr(k.expiry)}",
                "    material:",
                f"      file: keys/{k.stem}.pem",
            ]
            if k.pin:
                lines.append(f"      fingerprint: {self.fingerprints[k.stem]}")
            if k.previous:
                lines.append("    previous:")
                for fp, st in k.previous:
                    lines.append(f"      - {{material: {{fingerprint: {fp}}}, state: {st}}}")
            if k.state != "present":
                lines.append(f"    state: {k.state}")
        self.manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return self.manifest


def write_private_key(path: Path, spec: str) -> None:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if spec == "EC_P256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif spec == "EC_P256K":
        key = ec.generate_private_key(ec.SECP256K1())
    elif spec == "RSA_2048":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ValueError(f"no generator for {spec} in these tests")
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(data)
    path.chmod(0o600)


def alibaba_args(url: str) -> list[str]:
    return ["--backend", "alibaba", "--endpoint", url, "--region", REGION]


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def secret_needles(pem_files: Iterable[Path]) -> list[str]:
    """Strings any leak of these private keys would contain: PEM body lines, the DER in hex and
    base64 (either line layout), and the private numbers in decimal and hex."""
    needles: list[str] = ["PRIVATE KEY"]
    for path in pem_files:
        data = path.read_bytes()
        key = serialization.load_pem_private_key(data, None)
        der = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        body = [line for line in data.decode().splitlines() if line and not line.startswith("-----")]
        needles += [line[8:48] for line in body if len(line) >= 48]
        needles.append(base64.b64encode(der).decode()[40:80])
        needles.append(der.hex()[60:120])
        if isinstance(key, rsa.RSAPrivateKey):
            secret = key.private_numbers().d
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            secret = key.private_numbers().private_value
        else:
            raise ValueError(f"unexpected key type in {path}")
        needles += [str(secret), f"{secret:x}", f"{secret:X}"]
    return needles


def assert_no_secret(text: str, pem_files: Iterable[Path], tokens: Iterable[str] = ()) -> None:
    for needle in [*secret_needles(pem_files), *tokens]:
        assert needle not in text, "private material or an import token leaked"


def enter_account(backend: Backend, monkeypatch: pytest.MonkeyPatch, folder: Path) -> Backend:
    """`backend` with its credentials in the environment and `folder` the working directory."""
    for name, value in backend.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(folder)
    return backend
