"""Apply at scale: API calls per new key and wall time against the vendor-quota floor.

Starts `provision emulator serve --latency-ms 20 --qps create=10 --qps write=10 --qps read=20` in its
own process (the vendor's quotas, enforced server-side), then applies N new EC_P256 keys with one alias,
and again with two, through the official SDK. The floor is the largest of (calls in a quota group /
that group's quota): no client can finish faster without being throttled. Usage:
    .venv/bin/python benchmarks/apply_scale.py [--n 20] [--parallelism N] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import yaml  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from emulator_process import emulator_calls, emulator_process  # noqa: E402

from provisioner import apply as applying  # noqa: E402
from provisioner.backend import open_kms  # noqa: E402
from provisioner.backend.base import DEFAULT_QPS, QUOTA_GROUPS  # noqa: E402
from provisioner.emulator.defaults import DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET  # noqa: E402
from provisioner.manifest import validate_with_material  # noqa: E402
from provisioner.plan.planner import make_plan  # noqa: E402
from provisioner.refresh import refresh  # noqa: E402

for _name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
    os.environ.pop(_name, None)
os.environ["ALIBABA_CLOUD_ACCESS_KEY_ID"] = DEFAULT_ACCESS_KEY_ID
os.environ["ALIBABA_CLOUD_ACCESS_KEY_SECRET"] = DEFAULT_ACCESS_KEY_SECRET

QUOTAS = {"create": 10.0, "write": 10.0, "read": 20.0}


def write_stack(folder: Path, stack: str, n: int, aliases: int) -> None:
    keys: dict[str, Any] = {}
    (folder / "keys").mkdir(parents=True)
    for i in range(n):
        name = f"k{i:04d}"
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path = folder / "keys" / f"{name}.pem"
        path.write_bytes(pem)
        path.chmod(0o600)
        keys[name] = {
            "spec": "EC_P256",
            "usage": "SIGN/VERIFY",
            "aliases": [f"alias/{stack}/{name}" + ("" if j == 0 else f"-{j}") for j in range(aliases)],
            "material": {"file": f"keys/{name}.pem"},
        }
    doc = {"version": 1, "stack": stack, "defaults": {"instance": "kst-local-software"}, "keys": keys}
    (folder / "stack.yaml").write_text(yaml.safe_dump(doc))


def run(url: str, n: int, aliases: int, parallelism: int) -> dict[str, Any]:
    stack = f"bench-{aliases}a-{datetime.now(UTC):%H%M%S}"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_stack(folder, stack, n, aliases)
        ms, read = validate_with_material([folder / "stack.yaml"], variables={}, keep=True)
        fingerprints, materials = read.fingerprints, read.materials
        kms = open_kms(backend="alibaba", endpoint=url, region="cn-hangzhou", manifest_backend=None)
        try:
            t0 = time.monotonic()
            now = datetime.now(UTC).replace(microsecond=0)
            live = refresh(kms, stack, now=now, managed_names=[k.name for k in ms.keys])
            plan = make_plan(ms, live, now=now, fingerprints=fingerprints, backend=kms.info)
            plan_s = time.monotonic() - t0
            before = emulator_calls(url)
            t1 = time.monotonic()
            result = applying.apply_plan(plan, kms, materials, parallelism=parallelism)
            apply_s = time.monotonic() - t1
            after = emulator_calls(url)
            applying.wipe_all(materials)
        finally:
            kms.close()
    if not result.ok:
        failed = [o.to_dict() for o in result.outcomes if not o.ok][:3]
        raise SystemExit(f"apply failed: {failed}")
    calls = after - before
    groups: Counter[str] = Counter()
    for action, count in calls.items():
        groups[QUOTA_GROUPS.get(action, "other")] += count
    floor = max(groups[g] / rate for g, rate in QUOTAS.items())
    return {
        "aliases": aliases, "n": n, "calls": calls, "groups": groups, "plan_s": plan_s,
        "apply_s": apply_s, "floor_s": floor,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="New keys per row (default 20).")
    parser.add_argument("--parallelism", type=int, default=applying.DEFAULT_PARALLELISM,
                        help=f"apply --parallelism (default {applying.DEFAULT_PARALLELISM}).")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="Emulator latency (default 20).")
    args = parser.parse_args()
    print(f"emulator: --latency-ms {args.latency_ms:g}, qps {QUOTAS}; client qps {dict(DEFAULT_QPS)}; "
          f"parallelism {args.parallelism}")
    rows = []
    qps = [a for group, rate in QUOTAS.items() for a in ("--qps", f"{group}={rate:g}")]
    with emulator_process("--latency-ms", str(args.latency_ms), *qps) as url:
        for aliases in (1, 2):
            rows.append(run(url, args.n, aliases, args.parallelism))
    print()
    print(
        f"{'aliases':>7} {'keys':>5} {'calls/key':>9}  {'per key by action':<80} "
        f"{'create':>6} {'write':>5} {'read':>5} {'floor s':>7} {'apply s':>7} {'x floor':>7} {'plan s':>6}"
    )
    for r in rows:
        n = r["n"]
        per = ", ".join(f"{a} {c / n:g}" for a, c in sorted(r["calls"].items()))
        g = r["groups"]
        print(f"{r['aliases']:>7} {n:>5} {sum(r['calls'].values()) / n:>9.2f}  {per:<80} "
              f"{g['create']:>6} {g['write']:>5} {g['read']:>5} {r['floor_s']:>7.2f} {r['apply_s']:>7.2f} "
              f"{r['apply_s'] / r['floor_s']:>7.2f} {r['plan_s']:>6.2f}")


if __name__ == "__main__":
    main()
