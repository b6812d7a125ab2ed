"""`provision drift` at scale: API calls per key without and with --verify-material.

Same setup as plan_scale.py (N keys seeded into an emulator database, the emulator in its own process
with `--latency-ms 20 --qps read=20`, drift in this process through the official SDK). The key files
are deleted before drift runs: drift must not need them. Targets: <= 1.1 calls per key in sync, and
--verify-material adds exactly one GetPublicKey per key.

    .venv/bin/python benchmarks/drift_scale.py [--n 150] [--latency-ms 20] [--read-qps 20]
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from plan_scale import READ_ONLY_ACTIONS, Measured, emulator, emulator_arguments, prepare, run_command  # noqa: E402

HEADER = (
    f"{'N':>5} {'mode':<18} {'calls':>6} {'per key':>8} {'GetPublicKey':>13} {'floor s':>8} "
    f"{'drift s':>8} {'x floor':>8}  verdict"
)


def line(n: int, mode: str, m: Measured, read_qps: float, ok: bool) -> str:
    calls = sum(m.client_calls.values())
    reads = sum(v for a, v in m.client_calls.items() if a in READ_ONLY_ACTIONS)
    floor = reads / read_qps
    return (
        f"{n:>5} {mode:<18} {calls:>6} {calls / n:>8.3f} {m.client_calls['GetPublicKey']:>13} "
        f"{floor:>8.2f} {m.wall:>8.2f} {m.wall / floor:>8.2f}  {'ok' if ok else 'MISSED'}"
    )


def main() -> int:
    parser = emulator_arguments(__doc__, 150, "number of keys")
    args = parser.parse_args()
    n = args.n

    print(f"drift of an in-sync stack, emulator --latency-ms {args.latency_ms:g} "
          f"--qps read={args.read_qps:g}")
    print(HEADER)
    with tempfile.TemporaryDirectory(prefix="drift-scale-") as tmp:
        folder, db = prepare(Path(tmp), n)
        shutil.rmtree(folder / "keys")  # drift never reads material
        with emulator(db, args.latency_ms, args.read_qps) as url:
            plain = run_command(["drift", str(folder), "--format", "json"], url)
            verified = run_command(["drift", str(folder), "--format", "json", "--verify-material"], url)
    failures = 0
    for mode, m in (("plain", plain), ("--verify-material", verified)):
        if m.code != 0 or not json.loads(m.stdout)["in_sync"]:
            print(f"{mode}: drift exited {m.code}, expected 0\n{m.stdout}{m.stderr}", file=sys.stderr)
            return 1
        if set(m.server_calls) - READ_ONLY_ACTIONS:
            print(f"{mode}: drift made a non-read call: {dict(m.server_calls)}", file=sys.stderr)
            return 1
    plain_ok = sum(plain.client_calls.values()) / n <= 1.1 and plain.client_calls["GetPublicKey"] == 0
    extra = verified.client_calls.copy()
    extra.subtract(plain.client_calls)
    verify_ok = +extra == {"GetPublicKey": n}
    failures += not plain_ok
    failures += not verify_ok
    print(line(n, "plain", plain, args.read_qps, plain_ok))
    print(line(n, "--verify-material", verified, args.read_qps, verify_ok))
    print(f"      plain by action: {dict(sorted(plain.client_calls.items()))}")
    print(f"      --verify-material adds: {dict(sorted((+extra).items()))}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
