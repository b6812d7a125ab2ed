"""Validation speed: a generated 5,000-key manifest set through `provision validate --offline-material`.

Times the loader in-process and the console command in a fresh interpreter (import cost included).
Run from the repository root: `python benchmarks/validate_scale.py [--keys N] [--files N]`.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPECS = ("RSA_2048", "RSA_3072", "EC_P256", "EC_P256K")


def key_block(i: int) -> str:
    spec = SPECS[i % len(SPECS)]
    usage = "ENCRYPT/DECRYPT" if i % 3 == 0 and spec.startswith("RSA") else "SIGN/VERIFY"
    expiry = '"2099-01-01T00:00:00Z"' if i % 2 else "never"
    return (
        f"  key-{i:05d}:\n"
        f"    spec: {spec}\n"
        f"    usage: {usage}\n"
        f"    aliases: [alias/bench/key-{i:05d}, alias/bench/k{i}]\n"
        f"    description: Benchmark key number {i}\n"
        f"    tags: {{team: team-{i % 17}, service: svc-{i % 101}, tier: gold}}\n"
        f"    expiry: {expiry}\n"
        f"    deletion_window_days: {7 + i % 300}\n"
        f"    material:\n"
        f"      file: keys/key-{i:05d}.pem\n"
        f"      fingerprint: sha256:{i:064x}\n"
    )


def generate(folder: Path, keys: int, files: int) -> None:
    per_file = -(-keys // files)
    for f in range(files):
        lo, hi = f * per_file, min(keys, (f + 1) * per_file)
        body = "".join(key_block(i) for i in range(lo, hi))
        (folder / f"part-{f:02d}.yaml").write_text(
            "version: 1\nstack: bench\n"
            "defaults:\n  instance: kst-bench\n  protection: SOFTWARE\n  tags: {owner: platform}\n"
            f"keys:\n{body}",
            encoding="utf-8",
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--files", type=int, default=10)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from provisioner.manifest import load_manifests

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        generate(folder, args.keys, args.files)

        started, cpu_started = time.perf_counter(), time.process_time()
        ms = load_manifests([folder], variables={}, environ={})
        in_process = time.perf_counter() - started
        in_process_cpu = time.process_time() - cpu_started
        assert len(ms.keys) == args.keys, len(ms.keys)

        env = {**os.environ, "PYTHONPATH": str(REPO)}
        started = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                "from provisioner.cli import main; main()",
                "validate",
                str(folder),
                "--offline-material",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        via_cli = time.perf_counter() - started
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        via_cli_cpu = children.ru_utime + children.ru_stime
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
    # CPU time next to wall time: on a busy machine the wall clock also counts other processes.
    print(
        f"{args.keys} keys in {args.files} files: load_manifests {in_process:.2f} s in-process "
        f"({in_process_cpu:.2f} s CPU); `provision validate --offline-material` {via_cli:.2f} s end to end "
        f"({via_cli_cpu:.2f} s CPU) -> {done.stdout.strip()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
