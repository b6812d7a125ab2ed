"""Choosing and opening a KMS backend: command-line flags over the manifest's `backend:` block.

`open_kms` returns a `Kms` facade over a ResilientTransport (rate limit, retries, call counts) over
the chosen transport. It opens no connection and looks up no credential until the first call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from provisioner.backend.base import DEFAULT_QPS, Kms, Transport
from provisioner.backend.resilience import ResilientTransport
from provisioner.errors import UsageError
from provisioner.model import BackendConfig

DEFAULT_LOCAL_DB = Path(".provision") / "kms.db"
BACKEND_TYPES = ("local", "alibaba")


def open_kms(
    *,
    backend: str | None,
    endpoint: str | None,
    region: str | None,
    manifest_backend: BackendConfig | None,
    qps: Mapping[str, float] | None = None,
    cwd: Path | None = None,
    max_elapsed: float = 30.0,
    create: bool = True,
) -> Kms:
    """The KMS the user asked for. A flag beats the manifest; `--endpoint` alone means alibaba.

    With no backend anywhere, the local backend on `.provision/kms.db` under `cwd`. `qps` holds
    per-group overrides (`parse_qps`): alibaba fills the other groups from the vendor's quotas; the
    local backend, in-process, is limited only in the groups given. `create=False` (read-only
    commands) leaves a missing local state file uncreated: the KMS is then empty and its
    description says so.
    """
    cwd = cwd or Path.cwd()
    mb = manifest_backend
    kind = backend or (mb.type if mb is not None else None) or ("alibaba" if endpoint else "local")
    if kind not in BACKEND_TYPES:
        raise UsageError(f"unknown backend {kind!r} (expected {' or '.join(BACKEND_TYPES)})")
    if kind == "local" and endpoint and backend is None:
        raise UsageError("--endpoint needs --backend alibaba: the manifest's backend is local")
    if kind == "local" and (endpoint or region):
        # Silently ignoring them would plan against .provision/kms.db while the user meant a region.
        flag = "--endpoint" if endpoint else "--region"
        raise UsageError(f"{flag} applies to the alibaba backend only; the backend is local")

    inner: Transport
    if kind == "local":
        from provisioner.backend.local import LocalTransport

        path = mb.path if mb is not None and mb.type == "local" and mb.path is not None else DEFAULT_LOCAL_DB
        db = path if path.is_absolute() else cwd / path
        local = LocalTransport(db, create=create)
        inner = local
        description = f"local backend ({_shown(db, cwd)})"
        if local.missing:
            description += ", which does not exist yet: an empty KMS"
        info = {"type": "local", "path": _shown(db, cwd)}
        limits: Mapping[str, float] = dict(qps or {})
    else:
        from provisioner.backend.alibaba import AlibabaTransport

        from_manifest = mb if mb is not None and mb.type == "alibaba" else None
        endpoint = endpoint or (from_manifest.endpoint if from_manifest else None)
        region = (
            region
            or (from_manifest.region if from_manifest else None)
            or os.environ.get("ALIBABA_CLOUD_REGION_ID")
            or None
        )
        if region is None and endpoint is None:
            raise UsageError(
                "the alibaba backend needs a region: --region, backend.region in the manifest, "
                "or ALIBABA_CLOUD_REGION_ID"
            )
        transport = AlibabaTransport(endpoint, region)
        inner = transport
        where = f"alibaba {region}" if region else "alibaba"
        description = f"{where} at {transport.endpoint}"
        info = {"type": "alibaba", "endpoint": transport.endpoint}
        if region:
            info["region"] = region
        limits = {**DEFAULT_QPS, **(qps or {})}
    return Kms(
        ResilientTransport(inner, qps=limits, max_elapsed=max_elapsed), description=description, info=info
    )


def _shown(path: Path, cwd: Path) -> str:
    try:
        return str(path.relative_to(cwd))
    except ValueError:
        return str(path)
