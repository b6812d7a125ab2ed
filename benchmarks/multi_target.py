"""Several targets at once (DESIGN section 12): a no-change `provision plan` of N keys on three targets,
each its own emulator process at 20 reads/s and 20 ms latency, against the same plan on one of them
alone. Targets run concurrently, each within its own quota, so the ratio should stay near 1 (issue 15:
at most 1.2), never the sum (3).

    .venv/bin/python benchmarks/multi_target.py [--n 150] [--latency-ms 20] [--read-qps 20] [--rounds 1]

The stack is plan_scale.py's (N EC_P256 keys, one alias each, imported), seeded once and copied into
three emulator databases; the backend: or backends: block lives in a file of its own that the runs swap.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from click.testing import CliRunner  # noqa: E402
from emulator_process import emulator_calls  # noqa: E402
from plan_scale import STACK, emulator, emulator_arguments, prepare  # noqa: E402

from provisioner.cli import cli  # noqa: E402
from provisioner.emulator.defaults import DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET  # noqa: E402

REGIONS = {"hz": "cn-hangzhou", "sh": "cn-shanghai", "bj": "cn-beijing"}


def backends_file(urls: dict[str, str], names: list[str]) -> str:
    if len(names) == 1:
        [n] = names
        one = f'{{type: alibaba, region: {REGIONS[n]}, endpoint: "{urls[n]}"}}'
        return f"version: 1\nstack: {STACK}\nbackend: {one}\n"
    entries = "".join(
        f'  - {{name: {n}, type: alibaba, region: {REGIONS[n]}, endpoint: "{urls[n]}"}}\n' for n in names
    )
    return f"version: 1\nstack: {STACK}\nbackends:\n{entries}"


def plan_once(folder: Path, urls: dict[str, str]) -> tuple[float, int, str]:
    """(wall seconds, server calls, stderr) of one no-change plan."""
    env = {
        "ALIBABA_CLOUD_ACCESS_KEY_ID": DEFAULT_ACCESS_KEY_ID,
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": DEFAULT_ACCESS_KEY_SECRET,
    }
    before = {n: emulator_calls(u) for n, u in urls.items()}
    started = time.perf_counter()
    result = CliRunner(env=env).invoke(cli, ["plan", str(folder), "--format", "json"], standalone_mode=False)
    wall = time.perf_counter() - started
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    code = result.exit_code or (result.return_value if isinstance(result.return_value, int) else 0)
    if code != 0:
        raise SystemExit(f"plan exited {code}:\n{result.stderr}")
    doc = json.loads(result.stdout)
    assert doc["changes"] == [], "the benchmark measures a plan with no change"
    calls: Counter[str] = Counter()
    for n, u in urls.items():
        after = emulator_calls(u)
        after.subtract(before[n])
        calls += after
    return wall, sum(calls.values()), result.stderr


def main() -> int:
    parser = emulator_arguments(__doc__, 150, "keys per target")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each, the best kept")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="multi-target-") as tmp, ExitStack() as stack:
        folder, db = prepare(Path(tmp), args.n)
        urls = {}
        for n in REGIONS:
            copy = Path(tmp) / f"{n}.db"
            shutil.copy(db, copy)
            urls[n] = stack.enter_context(emulator(copy, args.latency_ms, args.read_qps))
        print(
            f"N={args.n} keys per target, each emulator --latency-ms {args.latency_ms:g} "
            f"--qps read={args.read_qps:g}"
        )
        results = {}
        for label, names in (("one target (hz)", ["hz"]), ("three targets", list(REGIONS))):
            (folder / "targets.yaml").write_text(backends_file(urls, names))
            runs = [plan_once(folder, {n: urls[n] for n in names}) for _ in range(args.rounds)]
            best = min(runs, key=lambda r: r[0])
            results[label] = best
            wall, calls, _ = best
            per_key = calls / (args.n * len(names))
            print(f"{label:<18} wall {wall:6.2f} s   server calls {calls:5d}   per key {per_key:.3f}")
        ratio = results["three targets"][0] / results["one target (hz)"][0]
        verdict = "ok" if ratio <= 1.2 else "MISSED"
        print(f"three targets / one target: {ratio:.2f}x (target <= 1.2x; the sum would be 3x)  {verdict}")
        return 0 if ratio <= 1.2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
