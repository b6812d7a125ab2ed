"""A no-change `provision plan` at scale: API calls per managed key and wall time against the quota floor.

For each N, N keys (EC_P256 by default, one alias each, imported material, the tags apply would set) are
written straight into an emulator database through our `Kms` facade over the embedded engine (no latency, no
HTTP); then `provision emulator serve --latency-ms 20 --qps read=20` runs in its own process on that
database and `provision plan` runs in this process through the official SDK, so the ResilientTransport's
call counts can be read next to the emulator's. The quota floor is read calls / 20 per second: the
fastest any client can go without being throttled. Targets: <= 1.1 calls per key, wall <= 1.3x floor.

    .venv/bin/python benchmarks/plan_scale.py [--n 50 --n 150] [--quick] [--latency-ms 20] [--read-qps 20]
                                              [--spec RSA_2048]

With --spec RSA_2048 the material comes from a pool of 8 keys reused round robin (generating 500 RSA
keys would take minutes); each key file is still parsed on its own, which is what that run shows.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from click.testing import CliRunner  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402
from emulator_process import emulator_calls, emulator_process  # noqa: E402

import provisioner.backend as backend_module  # noqa: E402
import provisioner.refresh as refresh_module  # noqa: E402
from provisioner import wrapping  # noqa: E402
from provisioner.backend.base import READ_ONLY_ACTIONS, Kms  # noqa: E402
from provisioner.backend.local import LocalTransport  # noqa: E402
from provisioner.backend.resilience import ResilientTransport  # noqa: E402
from provisioner.cli import cli  # noqa: E402
from provisioner.emulator import keyops  # noqa: E402
from provisioner.emulator.defaults import DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET  # noqa: E402
from provisioner.material import PrivateMaterial  # noqa: E402
from provisioner.model import (  # noqa: E402
    TAG_FINGERPRINT,
    TAG_NAME,
    TAG_STACK,
    KeySpec,
    KeyUsage,
    ProtectionLevel,
)
from provisioner.specs import Family, facts  # noqa: E402

# Imported up front, as a warm process would have them: the first size measured should not pay the
# one-off import of the SDK, Jinja2 and the schema validator (about a second), which no later size pays.
importlib.import_module("provisioner.backend.alibaba")
importlib.import_module("provisioner.manifest")
importlib.import_module("provisioner.views.plan")

STACK = "scale"
INSTANCE = "kst-local-software"
USER_TAGS = {"owner": "platform", "cost-center": "4711"}
DEFAULT_SIZES = (50, 150, 500)

for _name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
    os.environ.pop(_name, None)  # the SDK would send loopback traffic through a proxy


# ------------------------------------------------------------------------------------------ the stack


RSA_POOL = 8


def write_stack(folder: Path, n: int, spec: KeySpec = KeySpec.EC_P256) -> list[tuple[str, PrivateMaterial]]:
    """A manifest of `n` keys and their material files; returns (name, material) per key."""
    is_rsa = facts(spec).family is Family.RSA
    pool = [rsa.generate_private_key(65537, 2048) for _ in range(RSA_POOL)] if is_rsa else []
    (folder / "keys").mkdir(parents=True)
    lines = [
        "version: 1",
        f"stack: {STACK}",
        "defaults:",
        f"  instance: {INSTANCE}",
        "  protection: SOFTWARE",
        "  tags: {" + ", ".join(f"{k}: {v!r}" for k, v in USER_TAGS.items()) + "}",
        "keys:",
    ]
    out = []
    for i in range(n):
        name = f"key-{i:04d}"
        private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
            pool[i % RSA_POOL] if pool else ec.generate_private_key(ec.SECP256R1())
        )
        pem = folder / "keys" / f"{name}.pem"
        pem.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        pem.chmod(0o600)
        lines += [
            f"  {name}:",
            f"    spec: {spec.value}",
            "    usage: SIGN/VERIFY",
            f"    aliases: [alias/{STACK}/{name}]",
            f"    description: 'benchmark key {i}'",
            "    material:",
            f"      file: keys/{name}.pem",
        ]
        out.append((name, PrivateMaterial(private, spec)))
    (folder / "stack.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def seed(db: Path, keys: list[tuple[str, PrivateMaterial]]) -> None:
    """Create and import every key as apply would, straight into the engine's database.

    The engine makes an RSA-2048 wrapping key per GetParametersForImport (0.3 s each); one cached pair
    is enough for seeding and keeps 500 keys to seconds. The emulator process that serves the plan is
    not patched.
    """
    original = keyops.new_wrapping_key
    keyops.new_wrapping_key = functools.cache(original)  # type: ignore[assignment]
    kms = Kms(ResilientTransport(LocalTransport(db), qps={}))
    try:
        for i, (name, material) in enumerate(keys):
            algorithm = facts(material.spec).wrapping_algorithm
            tags = {**USER_TAGS, TAG_STACK: STACK, TAG_NAME: name, TAG_FINGERPRINT: material.fingerprint}
            meta = kms.create_key(
                spec=material.spec,
                usage=KeyUsage.SIGN_VERIFY,
                protection=ProtectionLevel.SOFTWARE,
                instance=INSTANCE,
                description=f"benchmark key {i}",
                tags=tags,
            )
            params = kms.get_parameters_for_import(meta.key_id, algorithm)
            blob = wrapping.wrap(material, params.public_key_der, algorithm)
            kms.import_key_material(meta.key_id, blob, params.import_token, 0)
            kms.create_alias(f"alias/{STACK}/{name}", meta.key_id)
    finally:
        kms.close()
        keyops.new_wrapping_key = original  # type: ignore[assignment]


# ------------------------------------------------------------------------------------------ emulator


def emulator(db: Path, latency_ms: float, read_qps: float) -> AbstractContextManager[str]:
    """The emulator on `db` in its own process, at `latency_ms` and `read_qps`; yields its URL."""
    return emulator_process("--db", str(db), "--latency-ms", f"{latency_ms:g}", "--qps", f"read={read_qps:g}")


# ------------------------------------------------------------------------------------------ one run


@dataclass
class Measured:
    """What one CLI run cost: exit code, output, client-side call counts, times."""

    code: int
    stdout: str
    stderr: str
    client_calls: Counter[str]
    server_calls: Counter[str]
    wall: float  # the whole command: manifests, material fingerprints, refresh, plan, render
    refresh_wall: float  # the refresh stage alone (the part the quota bounds)


@contextmanager
def instrumented() -> Iterator[dict[str, Any]]:
    """Capture the Kms the CLI opens and time its refresh, without changing either."""
    seen: dict[str, Any] = {"refresh": 0.0}
    real_open: Callable[..., Kms] = backend_module.open_kms
    real_refresh = refresh_module.refresh

    def open_kms(**kwargs: Any) -> Kms:
        seen["kms"] = real_open(**kwargs)
        return seen["kms"]

    def refresh(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return real_refresh(*args, **kwargs)
        finally:
            seen["refresh"] += time.perf_counter() - started

    backend_module.open_kms = open_kms  # type: ignore[assignment]
    refresh_module.refresh = refresh  # type: ignore[assignment]
    try:
        yield seen
    finally:
        backend_module.open_kms = real_open  # type: ignore[assignment]
        refresh_module.refresh = real_refresh  # type: ignore[assignment]


def run_command(args: list[str], url: str) -> Measured:
    """`provision ARGS --backend alibaba --endpoint URL` in this process, measured."""
    env = {
        "ALIBABA_CLOUD_ACCESS_KEY_ID": DEFAULT_ACCESS_KEY_ID,
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": DEFAULT_ACCESS_KEY_SECRET,
    }
    before = emulator_calls(url)
    with instrumented() as seen:
        started = time.perf_counter()
        result = CliRunner(env=env).invoke(
            cli,
            [*args, "--backend", "alibaba", "--endpoint", url, "--region", "cn-hangzhou"],
            standalone_mode=False,
        )
        wall = time.perf_counter() - started
    after = emulator_calls(url)
    after.subtract(before)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    code = result.exit_code or (result.return_value if isinstance(result.return_value, int) else 0)
    transport = seen["kms"].transport
    assert isinstance(transport, ResilientTransport)
    return Measured(
        code, result.stdout, result.stderr, Counter(transport.calls), +after, wall, seen["refresh"]
    )


# ------------------------------------------------------------------------------------------ report


HEADER = (
    f"{'N':>5} {'calls':>6} {'per key':>8} {'server':>7} {'floor s':>8} {'refresh s':>10} "
    f"{'x floor':>8} {'plan s':>7} {'x floor':>8}  verdict"
)


def row(n: int, m: Measured, read_qps: float, *, max_per_key: float, max_ratio: float) -> tuple[str, bool]:
    calls = sum(m.client_calls.values())
    reads = sum(v for a, v in m.client_calls.items() if a in READ_ONLY_ACTIONS)
    floor = reads / read_qps
    per_key = calls / n
    ok = per_key <= max_per_key and m.wall <= max_ratio * floor
    verdict = "ok" if ok else "MISSED"
    line = (
        f"{n:>5} {calls:>6} {per_key:>8.3f} {sum(m.server_calls.values()):>7} {floor:>8.2f} "
        f"{m.refresh_wall:>10.2f} {m.refresh_wall / floor:>8.2f} {m.wall:>7.2f} {m.wall / floor:>8.2f}"
        f"  {verdict}"
    )
    return line, ok


def prepare(work: Path, n: int, spec: KeySpec = KeySpec.EC_P256) -> tuple[Path, Path]:
    folder = work / f"n{n}"
    db = work / f"n{n}.db"
    started = time.perf_counter()
    keys = write_stack(folder, n, spec)
    seed(db, keys)
    print(f"# N={n}: seeded {n} keys in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return folder, db


def emulator_arguments(doc: str | None, n: int, n_help: str) -> argparse.ArgumentParser:
    """The arguments the emulator benchmarks share: --n (default `n`), --latency-ms and --read-qps."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=n, help=n_help)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--read-qps", type=float, default=20.0)
    return parser


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, action="append", help="number of keys (repeatable)")
    parser.add_argument("--quick", action="store_true", help="N=50 only")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--read-qps", type=float, default=20.0)
    parser.add_argument("--spec", choices=["EC_P256", "RSA_2048"], default="EC_P256", help="key spec")
    args = parser.parse_args()
    spec = KeySpec(args.spec)
    sizes = args.n or ([50] if args.quick else list(DEFAULT_SIZES))

    print(
        f"no-change plan of {spec} keys, "
        f"emulator --latency-ms {args.latency_ms:g} --qps read={args.read_qps:g}"
    )
    print("calls: client requests (retries included); server: requests the emulator saw;")
    print("floor: read calls / read qps; refresh: the KMS stage alone; plan: the whole command")
    print(HEADER)
    failures = 0
    with tempfile.TemporaryDirectory(prefix="plan-scale-") as tmp:
        for n in sizes:
            folder, db = prepare(Path(tmp), n, spec)
            with emulator(db, args.latency_ms, args.read_qps) as url:
                m = run_command(["plan", str(folder), "--detailed-exitcode", "--format", "json"], url)
            if m.code != 0:
                print(f"N={n}: plan exited {m.code}, expected 0 (no changes)\n{m.stderr}", file=sys.stderr)
                return 1
            doc = json.loads(m.stdout)
            assert doc["changes"] == [] and doc["violations"] == [], doc
            line, ok = row(n, m, args.read_qps, max_per_key=1.1, max_ratio=1.3)
            failures += not ok
            print(line, flush=True)
            print(f"      by action: {dict(sorted(m.client_calls.items()))}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
