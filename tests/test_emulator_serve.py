"""`provision emulator serve` as a user runs it: the ready line, signals, flags, state across restarts.

Flag mistakes run in-process through `main()`; serving runs in a subprocess so signals are real.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alibabacloud_kms20160120 import models as kms
from alibabacloud_kms20160120.client import Client
from alibabacloud_tea_openapi.exceptions import ClientException
from alibabacloud_tea_openapi.models import Config
from wire_support import CREATE_QUERY, now_stamp, raw_v3

from provisioner.cli import main
from provisioner.emulator.server import DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")
READY_TIMEOUT = 30.0


class Served:
    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc = proc
        self.url = url
        self.endpoint = url.removeprefix("http://")
        host, _, port = self.endpoint.rpartition(":")
        self.host, self.port = host, int(port)

    def client(self, **overrides: str) -> Client:
        options = {
            "endpoint": self.endpoint,
            "protocol": "http",
            "region_id": "cn-hangzhou",
            "access_key_id": DEFAULT_ACCESS_KEY_ID,
            "access_key_secret": DEFAULT_ACCESS_KEY_SECRET,
            **overrides,
        }
        return Client(Config(**options))

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> tuple[int, str, str]:
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=READY_TIMEOUT)
        return self.proc.returncode, out, err


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Served]]:
    """Start `provision emulator serve ARGS...` and wait for its ready line; killed after the test."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    running: list[subprocess.Popen[str]] = []

    def start(*args: str) -> Served:
        env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        proc = subprocess.Popen(
            [sys.executable, "-c", "from provisioner.cli import main; main()", "emulator", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        running.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
        assert ready, "no ready line in time"
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line + proc.stderr.read()
        return Served(proc, line.removeprefix("listening on ").strip())

    yield start
    for proc in running:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=READY_TIMEOUT)


def create_key(client: Client, description: str, instance: str = "kst-local-software") -> str:
    resp = client.create_key(
        kms.CreateKeyRequest(
            key_spec="EC_P256", key_usage="SIGN/VERIFY", origin="EXTERNAL", protection_level="SOFTWARE",
            dkmsinstance_id=instance, description=description,
        )
    )
    key_id: str = resp.body.key_metadata.key_id
    return key_id


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_prints_one_ready_line_and_stops_cleanly(
    serve: Callable[..., Served], sig: signal.Signals
) -> None:
    served = serve()

    key_id = create_key(served.client(), "served")
    rc, out, err = served.stop(sig)

    assert key_id
    assert rc == 0
    assert out == ""  # the ready line was the only output
    assert err == ""


def test_serve_keeps_state_in_db_across_restarts(serve: Callable[..., Served], tmp_path: Path) -> None:
    db = tmp_path / "kms.db"
    first = serve("--db", str(db), "--port", "0")
    key_id = create_key(first.client(), "survives")
    assert first.stop()[0] == 0

    second = serve("--db", str(db))
    meta = second.client().describe_key(kms.DescribeKeyRequest(key_id=key_id)).body.key_metadata

    assert (meta.key_id, meta.description) == (key_id, "survives")
    assert second.stop()[0] == 0


def test_serve_applies_credentials_instances_and_qps(serve: Callable[..., Served]) -> None:
    served = serve(
        "--access-key-id", "LTAI5tCustom", "--access-key-secret", "custom-secret",
        "--instance", "kst-only=software", "--qps", "create=1", "--latency-ms", "1", "--seed", "3",
    )
    client = served.client(access_key_id="LTAI5tCustom", access_key_secret="custom-secret")

    key_id = create_key(client, "in the only instance", instance="kst-only")
    with pytest.raises(ClientException) as throttled:
        create_key(client, "too soon", instance="kst-only")
    with pytest.raises(ClientException) as default_credentials:
        served.client().describe_key(kms.DescribeKeyRequest(key_id=key_id))

    assert (throttled.value.code, throttled.value.status_code) == ("Rejected.Throttling", 429)
    assert (default_credentials.value.code, default_credentials.value.status_code) == (
        "InvalidAccessKeyId.NotFound", 404,
    )
    assert served.stop()[0] == 0


def test_serve_refuses_a_replay_after_a_restart_on_the_same_db(
    serve: Callable[..., Served], tmp_path: Path
) -> None:
    db = tmp_path / "kms.db"
    signed = {"nonce": "replayed-nonce-1", "date": now_stamp()}
    first = serve("--db", str(db))
    assert raw_v3(first, "CreateKey", CREATE_QUERY, **signed)[0] == 200
    assert first.stop()[0] == 0

    second = serve("--db", str(db))
    status, body = raw_v3(second, "CreateKey", CREATE_QUERY, **signed)

    assert (status, body["Code"]) == (400, "SignatureNonceUsed")
    assert body["Message"] == "Specified signature nonce was used already."
    assert second.client().list_keys(kms.ListKeysRequest()).body.total_count == 1
    assert second.stop()[0] == 0


def test_serve_instance_without_asymmetric_import_refuses_external_keys(serve: Callable[..., Served]) -> None:
    served = serve(
        "--instance", "kst-local-software=software", "--instance", "kst-closed=hardware,asymmetric-import=no",
    )
    client = served.client()

    with pytest.raises(ClientException) as refused:
        create_key(client, "nowhere to import", instance="kst-closed")
    key_id = create_key(client, "the open one")

    assert (refused.value.code, refused.value.status_code) == ("Unsupported.Origin", 400)
    assert refused.value.data["Message"] == (
        "KMS instance kst-closed does not take asymmetric keys with imported material (Origin EXTERNAL)"
    )
    assert client.list_keys(kms.ListKeysRequest()).body.keys.key[0].key_id == key_id
    assert served.stop()[0] == 0


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 1), out, err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--qps", "bogus=3"],
            "--qps: expected GROUP=N with GROUP one of create, crypto, read, write "
            "and N a number from 0.01 to 10000, got 'bogus=3'",
        ),
        (["--qps", "read=1e-300"], "and N a number from 0.01 to 10000, got 'read=1e-300'"),
        (["--qps", "read=1e-9"], "and N a number from 0.01 to 10000, got 'read=1e-9'"),
        (["--qps", "read=nan"], "and N a number from 0.01 to 10000, got 'read=nan'"),
        (["--qps", "read=inf"], "and N a number from 0.01 to 10000, got 'read=inf'"),
        (["--qps", "read=-1"], "and N a number from 0.01 to 10000, got 'read=-1'"),
        (["--qps", "read=0"], "got 'read=0'"),
        (["--qps", "read"], "got 'read'"),
        (
            ["--instance", "kst-x=cloud"],
            "expected ID=software|hardware[,asymmetric-import=yes|no], got 'kst-x=cloud'",
        ),
        (
            ["--instance", "kst-x=software,asymmetric-import=maybe"],
            "expected ID=software|hardware[,asymmetric-import=yes|no], got "
            "'kst-x=software,asymmetric-import=maybe'",
        ),
        (["--fault-rate", "2"], "2.0 is not in the range 0.0<=x<=1.0"),
        (["--latency-ms", "-1"], "-1.0 is not in the range x>=0"),
        (["--port", "70000"], "70000 is not in the range 0<=x<=65535"),
        (["--no-such-flag"], "No such option '--no-such-flag'"),
    ],
)
def test_bad_flags_exit_1_with_a_message(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run_main(["emulator", "serve", *flags], capsys)

    assert rc == 1
    assert out == ""
    assert message in err


def test_port_in_use_exits_1_with_a_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]

        rc, out, err = run_main(["emulator", "serve", "--port", str(port)], capsys)

    assert rc == 1
    assert out == ""
    assert f"error: cannot serve on 127.0.0.1:{port}" in err


def test_help_names_the_default_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_main(["emulator", "serve", "--help"], capsys)

    assert rc == 0
    assert DEFAULT_ACCESS_KEY_ID in out
    assert DEFAULT_ACCESS_KEY_SECRET in out
    assert "listening on http://HOST:PORT" in out
