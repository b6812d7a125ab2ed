"""Shared fixtures: a threaded KMS emulator on loopback and official-SDK clients pointed at it.

`emulator` is a default server; `emulator_factory(**EmulatorConfig fields)` starts others (qps, latency,
fault rate, db). Both clear the proxy variables, since the SDK sends even loopback traffic through them.
`backend` / `backend_factory` run a test once per backend (local, and the emulator through the SDK);
`@pytest.mark.one_backend(KIND, WHY)` keeps a test on one of them and says why.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from alibabacloud_kms20160120.client import Client
from alibabacloud_tea_openapi.models import Config
from backends import BACKENDS, Backend, copy_state, count_local_calls, started
from emulator_support import FakeClock

from provisioner.emulator.models import KmsEngine
from provisioner.emulator.server import (
    DEFAULT_ACCESS_KEY_ID,
    DEFAULT_ACCESS_KEY_SECRET,
    STATS_PATH,
    EmulatorConfig,
    EmulatorServer,
)

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")
REGION = "cn-hangzhou"


class RunningEmulator:
    """A started EmulatorServer plus what a test needs to talk to it."""

    def __init__(self, server: EmulatorServer) -> None:
        self.server = server
        self.host = server.host
        self.port = server.port
        self.url = server.url
        self.endpoint = server.endpoint
        self.access_key_id = server.config.access_key_id
        self.access_key_secret = server.config.access_key_secret

    def sdk_config(self, **overrides: Any) -> Config:
        options: dict[str, Any] = {
            "endpoint": self.endpoint,
            "protocol": "http",
            "region_id": REGION,
            "access_key_id": self.access_key_id,
            "access_key_secret": self.access_key_secret,
        }
        options.update(overrides)
        return Config(**options)

    def sdk_client(self, **overrides: Any) -> Client:
        """An official SDK client; overrides are `Config` fields (e.g. signature_algorithm='v2')."""
        return Client(self.sdk_config(**overrides))

    def credential_env(self) -> dict[str, str]:
        """Environment variables the SDK's default credential chain reads (for CLI subprocesses)."""
        return {
            "ALIBABA_CLOUD_ACCESS_KEY_ID": self.access_key_id,
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET": self.access_key_secret,
        }

    def stats(self) -> dict[str, Any]:
        """`GET /_emulator/stats` over the wire."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request("GET", STATS_PATH)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200, body
            result: dict[str, Any] = json.loads(body)
            return result
        finally:
            conn.close()

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def emulator_factory(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., RunningEmulator]]:
    """Start emulators with `EmulatorConfig` fields as keywords; all are shut down after the test."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    started: list[EmulatorServer] = []

    def start(**options: Any) -> RunningEmulator:
        options.setdefault("access_key_id", DEFAULT_ACCESS_KEY_ID)
        options.setdefault("access_key_secret", DEFAULT_ACCESS_KEY_SECRET)
        if options.get("db") is not None:
            options["db"] = str(options["db"])
        config = EmulatorConfig(host="127.0.0.1", port=0, **options)
        server = EmulatorServer(config)
        started.append(server)
        server.start()
        return RunningEmulator(server)

    yield start
    for server in reversed(started):
        server.shutdown()


@pytest.fixture
def emulator(emulator_factory: Callable[..., RunningEmulator]) -> RunningEmulator:
    """A default emulator (in-memory state, default credentials, no throttling or faults)."""
    return emulator_factory()


@pytest.fixture
def clock() -> FakeClock:
    """A clock the test moves (token and material expiry)."""
    return FakeClock()


@pytest.fixture
def engine(clock: FakeClock) -> Iterator[KmsEngine]:
    """The emulator engine in memory on `clock`, called directly (no RPC layer, no HTTP)."""
    e = KmsEngine(clock=clock)
    yield e
    e.close()


# ------------------------------------------------------------------------------------ both backends


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "one_backend(kind, why): run only on the local or the alibaba backend, for the reason given",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`backend_kind` is every backend, or the one a `one_backend` mark names; module-scoped, so a
    module's tests run on one backend, then the other, sharing module fixtures per backend."""
    if "backend_kind" not in metafunc.fixturenames:
        return
    mark = metafunc.definition.get_closest_marker("one_backend")
    kinds = [mark.args[0]] if mark is not None else list(BACKENDS)
    metafunc.parametrize("backend_kind", kinds, indirect=True, scope="module")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """In a suite that runs on both backends (`BOTH_BACKENDS = True`), a test that does not must say why."""
    for item in items:
        if not getattr(item.module, "BOTH_BACKENDS", False):  # type: ignore[attr-defined]
            continue
        mark = item.get_closest_marker("one_backend")
        if mark is None and "backend_kind" not in getattr(item, "fixturenames", ()):
            raise pytest.UsageError(
                f"{item.nodeid}: use the backend fixture, or mark it one_backend(kind, why)"
            )
        if mark is not None and (len(mark.args) != 2 or mark.args[0] not in BACKENDS or not mark.args[1]):
            raise pytest.UsageError(f"{item.nodeid}: one_backend takes a backend ({BACKENDS}) and a reason")


@pytest.fixture(scope="module")
def backend_kind(request: pytest.FixtureRequest) -> str:
    """`local` or `alibaba` (parametrized by pytest_generate_tests)."""
    kind: str = request.param
    return kind


@pytest.fixture
def backend_factory(
    backend_kind: str, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Backend]]:
    """Start KMSs of this run's backend: empty, or on a copy of a state file (`copy_of=`); each gets its
    own folder, outside the test's working folder. All are stopped after the test."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    count_local_calls(monkeypatch)
    with ExitStack() as running:

        def start(copy_of: Path | None = None) -> Backend:
            folder = tmp_path_factory.mktemp(f"kms-{backend_kind}")
            db = None if copy_of is None else copy_state(copy_of, folder)
            return running.enter_context(started(backend_kind, db, folder))

        yield start


@pytest.fixture
def backend(backend_factory: Callable[..., Backend]) -> Backend:
    """An empty KMS on this run's backend."""
    return backend_factory()
