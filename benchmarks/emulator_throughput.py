"""Emulator throughput: DescribeKey calls per second through the official SDK, 1 and 4 client threads.

Starts `provision emulator serve` in its own process on loopback (so client and server do not share a
GIL), makes a bounded number of calls, prints a small table. Usage:
    .venv/bin/python benchmarks/emulator_throughput.py [--calls 1000] [--threads 1,4] [--in-process]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from alibabacloud_kms20160120 import models as kms  # noqa: E402
from alibabacloud_kms20160120.client import Client  # noqa: E402
from alibabacloud_tea_openapi.models import Config  # noqa: E402
from emulator_process import emulator_process  # noqa: E402

from provisioner.emulator.defaults import DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET  # noqa: E402
from provisioner.emulator.server import EmulatorConfig, EmulatorServer  # noqa: E402

# The SDK sends even loopback traffic through a proxy when these are set.
for _name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
    os.environ.pop(_name, None)


@contextmanager
def served_elsewhere() -> Iterator[str]:
    """`provision emulator serve` in a subprocess; yields its `host:port`."""
    with emulator_process(start_timeout=30) as url:
        yield url.removeprefix("http://")


@contextmanager
def served_here() -> Iterator[str]:
    with EmulatorServer(EmulatorConfig()) as server:
        server.start()
        yield server.endpoint


def client(endpoint: str) -> Client:
    return Client(
        Config(
            endpoint=endpoint, protocol="http", region_id="cn-hangzhou",
            access_key_id=DEFAULT_ACCESS_KEY_ID, access_key_secret=DEFAULT_ACCESS_KEY_SECRET,
        )
    )


def run(endpoint: str, key_id: str, calls: int, threads: int) -> float:
    """Seconds for `calls` DescribeKey calls shared among `threads` threads, each with its own client."""
    share = [calls // threads + (1 if i < calls % threads else 0) for i in range(threads)]
    clients = [client(endpoint) for _ in range(threads)]
    errors: list[BaseException] = []
    start = threading.Barrier(threads + 1)

    def work(c: Client, n: int) -> None:
        start.wait()
        try:
            for _ in range(n):
                c.describe_key(kms.DescribeKeyRequest(key_id=key_id))
        except BaseException as e:  # reported after the run; a benchmark must not hide failures
            errors.append(e)

    workers = [threading.Thread(target=work, args=(c, n)) for c, n in zip(clients, share, strict=True)]
    for w in workers:
        w.start()
    start.wait()
    began = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise SystemExit(f"{len(errors)} thread(s) failed: {type(errors[0]).__name__}: {errors[0]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="DescribeKey calls per row (default 1000).")
    parser.add_argument("--threads", default="1,4", help="Comma-separated client thread counts (default 1,4)")
    parser.add_argument("--in-process", action="store_true", help="Serve from this process instead.")
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]
    if args.calls < 1 or args.calls > 100_000 or not thread_counts or min(thread_counts) < 1:
        parser.error("--calls must be 1..100000 and --threads positive integers")

    with (served_here() if args.in_process else served_elsewhere()) as endpoint:
        setup = client(endpoint)
        key_id = setup.create_key(
            kms.CreateKeyRequest(
                key_spec="EC_P256", key_usage="SIGN/VERIFY", origin="EXTERNAL",
                protection_level="SOFTWARE", dkmsinstance_id="kst-local-software",
            )
        ).body.key_metadata.key_id
        run(endpoint, key_id, min(50, args.calls), 1)  # warm-up: imports, connection pools
        rows = [(t, run(endpoint, key_id, args.calls, t)) for t in thread_counts]

    where = "same process" if args.in_process else "separate process"
    print(f"DescribeKey through alibabacloud-kms20160120, V3 signatures, server in a {where}")
    print(f"{'threads':>7}  {'calls':>6}  {'seconds':>8}  {'calls/s':>8}")
    for threads, seconds in rows:
        print(f"{threads:>7}  {args.calls:>6}  {seconds:>8.2f}  {args.calls / seconds:>8.0f}")


if __name__ == "__main__":
    main()
