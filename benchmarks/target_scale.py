"""What `--target` saves: a no-change plan of N keys, whole and with two targets, and `show` of those two,
against the emulator in its own process (plan_scale.py's stack, seeding and measuring). A targeted run
reads the stack's tag pages and the alias pages as a whole one does, and DescribeKey for its targets only.

    .venv/bin/python benchmarks/target_scale.py [--n 500] [--latency-ms 20] [--read-qps 20]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from plan_scale import emulator, emulator_arguments, prepare, run_command  # noqa: E402

TARGETS = ["--target", "key-0001", "--target", "key-0002"]


def main() -> int:
    parser = emulator_arguments(__doc__, 500, "number of keys")
    args = parser.parse_args()
    print(f"N={args.n}, emulator --latency-ms {args.latency_ms:g} --qps read={args.read_qps:g}")
    print(f"{'run':<28} {'calls':>6} {'wall s':>7}  by action")
    with tempfile.TemporaryDirectory(prefix="target-scale-") as tmp:
        folder, db = prepare(Path(tmp), args.n)
        with emulator(db, args.latency_ms, args.read_qps) as url:
            runs = {
                "plan": ["plan", str(folder), "--format", "json"],
                "plan --target x2": ["plan", str(folder), "--format", "json", *TARGETS],
                "show --target x2": ["show", str(folder), "--format", "json", *TARGETS],
            }
            for label, argv in runs.items():
                m = run_command(argv, url)
                if m.code != 0:
                    print(f"{label}: exited {m.code}\n{m.stderr}", file=sys.stderr)
                    return 1
                doc = json.loads(m.stdout)
                assert doc.get("changes", []) == [], doc
                calls = dict(sorted(m.client_calls.items()))
                print(f"{label:<28} {sum(calls.values()):>6} {m.wall:>7.2f}  {calls}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
