"""Choosing and opening a KMS backend: flags, then the environment, then the manifest's `backend:`.

`open_kms` returns a `Kms` facade over a ResilientTransport (rate limit, retries, call counts) over
the chosen transport. It opens no connection and looks up no credential until the first call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from provisioner.backend.base import DEFAULT_QPS, Kms, Transport
from provisioner.backend.credentials import PROFILE_FLAG, ROLE_FLAG
from provisioner.backend.resilience import ResilientTransport
from provisioner.errors import ManifestError, UsageError
from provisioner.model import DEFAULT_TARGET, BackendConfig, Diagnostic, Location

DEFAULT_LOCAL_DB = Path(".provision") / "kms.db"
BACKEND_TYPES = ("local", "alibaba")
#: The pipeline's own settings, which a manifest cannot override (DESIGN section 9).
BACKEND_ENV = "PROVISION_BACKEND"
ENDPOINT_ENV = "PROVISION_ENDPOINT"
REGION_ENV = "ALIBABA_CLOUD_REGION_ID"
_NOT_SHOWN = "(values read from the environment are not shown)"


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
    environ: Mapping[str, str] | None = None,
    state: Path | None = None,
    default_state: Path | None = None,
    legacy_state: bool = True,
    credentials: Any = None,
) -> Kms:
    """The KMS the user asked for: flags, then PROVISION_BACKEND / PROVISION_ENDPOINT /
    ALIBABA_CLOUD_REGION_ID, then the manifest's `backend:`; a trusted endpoint alone means alibaba.

    An endpoint that only the manifest names must pass `manifest_endpoint` for the run's region, or
    this raises a located ManifestError before any connection: a pull request controls the
    manifests and must not choose who receives the signed calls. With no backend anywhere, the
    local backend on `state` (--state), else the manifest's `backend.path`, else `default_state`
    (`.provision/kms.db` beside the first manifest path), else `.provision/kms.db` under `cwd`; a
    missing `default_state` beside an existing `cwd/.provision/kms.db` (the first edition's place)
    is refused, naming both (unless `legacy_state` is False: a target of several never lived
    there). `qps` holds per-group overrides
    (`parse_qps`): alibaba fills the other groups from the vendor's quotas; the local backend,
    in-process, is limited only in the groups given. `create=False` (read-only commands) opens the
    local state read-only and leaves a missing one uncreated: the KMS is then empty and its
    description says so. `credentials` (from `credentials.target_credentials`: a target's
    --target-profile / --target-role) sign the alibaba backend's calls in place of the default chain;
    the local backend refuses them.
    """
    env = os.environ if environ is None else environ
    cwd = cwd or Path.cwd()
    mb = manifest_backend
    env_backend = env.get(BACKEND_ENV, "").strip() or None
    if env_backend is not None and env_backend not in BACKEND_TYPES:
        raise UsageError(f"{BACKEND_ENV}: expected local or alibaba; the value set is neither {_NOT_SHOWN}")
    env_endpoint = env.get(ENDPOINT_ENV, "").strip() or None
    trusted_endpoint, endpoint_from = (endpoint, "--endpoint") if endpoint else (env_endpoint, ENDPOINT_ENV)
    kind = (
        backend
        or env_backend
        or (mb.type if mb is not None else None)
        or ("alibaba" if trusted_endpoint else "local")
    )
    if kind not in BACKEND_TYPES:
        raise UsageError(f"unknown backend {kind!r} (expected {' or '.join(BACKEND_TYPES)})")
    if kind == "local" and trusted_endpoint and backend is None and env_backend is None:
        raise UsageError(f"{endpoint_from} needs --backend alibaba: the manifest's backend is local")
    if kind == "local" and credentials is not None:
        raise UsageError(
            f"{PROFILE_FLAG} and {ROLE_FLAG} apply to the alibaba backend only; the backend is local"
        )
    if kind != "local" and state is not None:
        raise UsageError("--state applies to the local backend only; the backend is alibaba")
    if kind == "local" and (trusted_endpoint or region):
        # Silently ignoring them would plan against .provision/kms.db while the user meant a region.
        flag = endpoint_from if trusted_endpoint else "--region"
        raise UsageError(f"{flag} applies to the alibaba backend only; the backend is local")

    inner: Transport
    db: Path | None = None
    if kind == "local":
        from provisioner.backend.local import LocalTransport

        db = _state_file(state, mb, default_state, cwd, legacy_state)
        local = LocalTransport(db, create=create)
        inner = local
        description = f"local backend ({_shown(db, cwd)})"
        if local.missing:
            description += ", which does not exist yet: an empty KMS"
        info = {"type": "local", "path": _shown(db, cwd), "endpoint": f"local:{_shown(db, cwd)}"}
        limits: Mapping[str, float] = dict(qps or {})
    else:
        from provisioner.backend.alibaba import AlibabaTransport

        from_manifest = mb if mb is not None and mb.type == "alibaba" else None
        region = _run_region(region, env.get(REGION_ENV, "").strip() or None, from_manifest)
        if trusted_endpoint is None and from_manifest is not None and from_manifest.endpoint is not None:
            endpoint, named_region = _checked_manifest_endpoint(from_manifest, region)
            region = region or named_region
        elif endpoint is None and env_endpoint is not None:
            endpoint = _checked_env_endpoint(env_endpoint, region)
        if region is None and endpoint is None:
            raise UsageError(
                "the alibaba backend needs a region: --region, backend.region in the manifest, "
                "or ALIBABA_CLOUD_REGION_ID"
            )
        transport = AlibabaTransport(
            endpoint, region, credentials=credentials,
            credentials_from=None if credentials is None else "--target-profile/--target-role",
        )
        inner = transport
        where = f"alibaba {region}" if region else "alibaba"
        description = f"{where} at {transport.endpoint}"
        info = {"type": "alibaba", "endpoint": transport.endpoint}
        if region:
            info["region"] = region
        limits = {**DEFAULT_QPS, **(qps or {})}
    return Kms(
        ResilientTransport(inner, qps=limits, max_elapsed=max_elapsed),
        description=description,
        info=info,
        state_path=db,
    )


def default_state_file(first_path: Path, target: str | None = None) -> Path:
    """`.provision/kms.db` in the folder of the first manifest path (the path itself when a folder);
    for `target`, one of several (DESIGN section 12), `.provision/kms-TARGET.db` there."""
    folder = first_path if first_path.is_dir() else first_path.parent
    if target is None:
        return folder / DEFAULT_LOCAL_DB
    return folder / DEFAULT_LOCAL_DB.with_name(f"kms-{target}.db")


def _state_file(
    state: Path | None, mb: BackendConfig | None, default: Path | None, cwd: Path, check_legacy: bool = True
) -> Path:
    """The local state file: --state, the manifest's backend.path, the stack's default, in that order."""
    if state is not None:
        return state if state.is_absolute() else cwd / state
    if mb is not None and mb.type == "local" and mb.path is not None:
        return mb.path if mb.path.is_absolute() else cwd / mb.path
    if default is None:
        return cwd / DEFAULT_LOCAL_DB
    db = default if default.is_absolute() else cwd / default
    legacy = cwd / DEFAULT_LOCAL_DB
    if not check_legacy:
        return db
    if not _exists(db) and _exists(legacy) and os.path.abspath(db) != os.path.abspath(legacy):
        raise UsageError(
            f"the stack's local state is {_shown(db, cwd)} (beside the first manifest path), which does not "
            f"exist, but {_shown(legacy, cwd)} in the current folder does (where the first edition kept "
            f"it): move {_shown(legacy, cwd)} to {_shown(db, cwd)}, or name the one to use with --state"
        )
    return db


def _exists(path: Path) -> bool:
    """Whether something is at `path`; one this user may not look at counts (the backend says why)."""
    try:
        return path.exists() or path.is_symlink()
    except OSError:
        return True


def _run_region(flag: str | None, from_env: str | None, manifest: BackendConfig | None) -> str | None:
    """The run's region: --region, else ALIBABA_CLOUD_REGION_ID, else the manifest's; checked here so
    that a bad one is refused with words that fit where it came from."""
    from provisioner.backend.alibaba import is_region

    if flag:
        if not is_region(flag):
            raise UsageError(f"region: expected a region id such as cn-hangzhou, got {flag!r}")
        return flag
    if from_env:
        if not is_region(from_env):
            raise UsageError(f"{REGION_ENV}: expected a region id such as cn-hangzhou {_NOT_SHOWN}")
        return from_env
    if manifest is None or manifest.region is None:
        return None
    if not is_region(manifest.region):
        raise ManifestError(
            [
                Diagnostic(
                    manifest.region_at or Location("backend"),
                    f"{_field(manifest)}.region: expected a region id such as cn-hangzhou "
                    "(lowercase letters and digits in words joined by '-')",
                )
            ]
        )
    return manifest.region


def _checked_manifest_endpoint(manifest: BackendConfig, region: str | None) -> tuple[str, str | None]:
    from provisioner.backend.alibaba import manifest_endpoint

    assert manifest.endpoint is not None
    try:
        return manifest_endpoint(manifest.endpoint, region)
    except ValueError as e:
        r = region or "<region>"
        message = (
            f"{_field(manifest)}.endpoint: a manifest may name only https://kms.{r}.aliyuncs.com, "
            f"https://kms-vpc.{r}.aliyuncs.com or the emulator at http://127.0.0.1:PORT or "
            f"http://[::1]:PORT ({e}); give any other endpoint with --endpoint or {ENDPOINT_ENV}"
        )
        where = manifest.endpoint_at or Location("backend")
        raise ManifestError([Diagnostic(where, message)]) from None


def _checked_env_endpoint(text: str, region: str | None) -> str:
    """PROVISION_ENDPOINT is the pipeline's own, so it is not restricted; only its form is checked,
    in a message that does not echo it."""
    from provisioner.backend.alibaba import parse_endpoint

    try:
        parse_endpoint(text, region)
    except UsageError:
        raise UsageError(
            f"{ENDPOINT_ENV}: expected http://host:port, https://host or host {_NOT_SHOWN}"
        ) from None
    return text


def _field(manifest: BackendConfig) -> str:
    """How messages name the manifest's block: `backend`, or the `backends:` entry of a target."""
    return "backend" if manifest.name == DEFAULT_TARGET else f"backends[name={manifest.name}]"


def _shown(path: Path, cwd: Path) -> str:
    try:
        return str(path.relative_to(cwd))
    except ValueError:
        return str(path)
