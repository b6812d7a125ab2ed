"""Shared helpers for the apply suites: fresh key files, manifests written into tmp_path, the CLI run
in-process (through `main`, as the console script runs it), and an official-SDK view of the emulator.

The SDK view computes fingerprints with cryptography directly, so no check depends on our own code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from alibabacloud_kms20160120 import models as kms
from alibabacloud_kms20160120.client import Client
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from Tea.exceptions import TeaException

from provisioner.backend.base import QUOTA_GROUPS
from provisioner.cli import main
from provisioner.model import TAG_LOCK, is_reserved_alias

STACK = "e2e"
SOFTWARE = "kst-local-software"
TAG_STACK = "byok-provisioner:stack"
TAG_NAME = "byok-provisioner:name"
#: Every action that changes KMS state (CreateKey is its own quota group).
WRITE_ACTIONS = frozenset(a for a, g in QUOTA_GROUPS.items() if g in ("write", "create"))


@functools.cache
def private_pem(spec: str, n: int = 0) -> bytes:
    """The n-th fresh private key of a spec, PKCS#8 PEM (cached: RSA generation is slow)."""
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if spec.startswith("RSA_"):
        key = rsa.generate_private_key(65537, int(spec.removeprefix("RSA_")))
    elif spec == "EC_P256":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(spec)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def spki_der(pem: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of a private key PEM (cryptography, not our material module)."""
    key = serialization.load_pem_private_key(pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint(pem: bytes) -> str:
    return "sha256:" + hashlib.sha256(spki_der(pem)).hexdigest()


def write_key(folder: Path, name: str, pem: bytes) -> Path:
    path = folder / "keys" / f"{name}.pem"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pem)
    path.chmod(0o600)
    return path


def write_manifest(
    folder: Path,
    keys: Mapping[str, Mapping[str, Any]],
    *,
    stack: str = STACK,
    backend: Mapping[str, str] | None = None,
) -> Path:
    """manifests/stack.yaml under `folder` with defaults for the emulator's software instance, and
    `backend` as its `backend:` block when given."""
    doc: dict[str, Any] = {
        "version": 1,
        "stack": stack,
        "defaults": {"instance": SOFTWARE, "protection": "SOFTWARE", "tags": {"owner": "platform"}},
        "keys": {name: dict(body) for name, body in keys.items()},
    }
    if backend is not None:
        doc["backend"] = dict(backend)
    path = folder / "manifests" / "stack.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=True))
    return path


def key_entry(name: str, spec: str = "EC_P256", **fields: Any) -> dict[str, Any]:
    """A manifest entry with one alias, a description and a user tag; fields override."""
    entry: dict[str, Any] = {
        "spec": spec,
        "usage": "SIGN/VERIFY",
        "aliases": [f"alias/{STACK}/{name}"],
        "description": f"{name} key",
        "tags": {"team": "t-" + name},
        "material": {"file": f"../keys/{name}.pem"},
    }
    entry.update(fields)
    return entry


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_cli(
    args: Sequence[str],
    env: Mapping[str, str | None] | None = None,
    stdin: str | None = None,
    tty: bool = False,
    clock: Callable[[], datetime] | None = None,
) -> Run:
    """`provision ARGS` in this process, in the current directory, as the console script runs it.

    `tty=True` makes standard input claim to be a terminal (for the confirmation prompt); `clock` is
    the CLI's "now" (main's clock), default the system's.
    """
    runner = CliRunner()
    with runner.isolation(input=stdin, env=dict(env or {})) as (out, err, _):
        if tty:
            sys.stdin.isatty = lambda: True  # type: ignore[method-assign]
        try:
            main(list(args), clock=clock)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        return Run(code, out.getvalue().decode(), err.getvalue().decode())


class SdkView:
    """The emulator's state as the official SDK reports it (retrying throttling and injected faults)."""

    RETRYABLE = frozenset({"Rejected.Throttling", "ServiceUnavailableTemporary"})

    def __init__(self, client: Client) -> None:
        self.client = client

    def _call(self, method: Callable[[Any], Any], request: Any) -> Any:
        for attempt in range(50):
            try:
                return method(request).body
            except TeaException as e:
                if e.code not in self.RETRYABLE or attempt == 49:
                    raise
                time.sleep(0.05 + 0.01 * attempt)
        raise AssertionError("unreachable")

    def key_ids(self, *, lock_keys: bool = False) -> list[str]:
        """Every key; a stack's lock key (alibaba: the provisioner's bookkeeping, never a managed key,
        tests/test_lock_e2e.py) only with `lock_keys`."""
        body = self._call(self.client.list_keys, kms.ListKeysRequest(page_size=100))
        assert body.total_count is None or body.total_count <= 100
        ids = sorted(k.key_id for k in body.keys.key)
        return ids if lock_keys else [k for k in ids if TAG_LOCK not in self.tags(k)]

    def lock_keys(self) -> list[str]:
        return sorted(set(self.key_ids(lock_keys=True)) - set(self.key_ids()))

    def describe(self, key_id: str) -> Any:
        return self._call(self.client.describe_key, kms.DescribeKeyRequest(key_id=key_id)).key_metadata

    def tags(self, key_id: str) -> dict[str, str]:
        body = self._call(self.client.list_resource_tags, kms.ListResourceTagsRequest(key_id=key_id))
        return {t.tag_key: t.tag_value for t in body.tags.tag}

    def aliases(self) -> dict[str, str]:
        """The users' aliases: not the provisioner's claims and locks (see reserved_aliases)."""
        return {a: k for a, k in self.all_aliases().items() if not is_reserved_alias(a)}

    def reserved_aliases(self) -> dict[str, str]:
        return {a: k for a, k in self.all_aliases().items() if is_reserved_alias(a)}

    def all_aliases(self) -> dict[str, str]:
        body = self._call(self.client.list_aliases, kms.ListAliasesRequest(page_size=100))
        return {a.alias_name: a.key_id for a in body.aliases.alias}

    def public_key_der(self, key_id: str) -> bytes:
        meta = self.describe(key_id)
        pem = self._call(
            self.client.get_public_key,
            kms.GetPublicKeyRequest(key_id=key_id, key_version_id=meta.primary_key_version),
        ).public_key
        return serialization.load_pem_public_key(pem.encode()).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def stack_keys(self, stack: str = STACK) -> dict[str, list[str]]:
        """name -> key ids carrying this stack's identity tags (any state)."""
        out: dict[str, list[str]] = {}
        for key_id in self.key_ids():
            tags = self.tags(key_id)
            if tags.get(TAG_STACK) == stack:
                out.setdefault(tags[TAG_NAME], []).append(key_id)
        return out


def writes(before: Mapping[str, Any], after: Mapping[str, Any]) -> Counter[str]:
    """Write calls the emulator received between two stats() snapshots."""
    delta = Counter(after["calls"])
    delta.subtract(before["calls"])
    return Counter({a: n for a, n in delta.items() if a in WRITE_ACTIONS and n})


def calls(before: Mapping[str, Any], after: Mapping[str, Any]) -> Counter[str]:
    delta = Counter(after["calls"])
    delta.subtract(before["calls"])
    return Counter({a: n for a, n in delta.items() if n})


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without proxies, plus `extra` (for subprocesses)."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(extra or {})
    return env
