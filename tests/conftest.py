"""Shared fixtures: a threaded KMS emulator on loopback and official-SDK clients pointed at it.

`emulator` is a default server; `emulator_factory(**EmulatorConfig fields)` starts others (qps, latency,
fault rate, db). Both clear the proxy variables, since the SDK sends even loopback traffic through them.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from alibabacloud_kms20160120.client import Client
from alibabacloud_tea_openapi.models import Config
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
