"""The two backends the end-to-end suites run on, behind one shape (as moto runs its suite again in
server mode): `Backend` is what points `provision` at a KMS (flags, environment, manifest `backend:`),
the calls that KMS received, and the official SDK's view of it. It asserts nothing itself.

`alibaba` is the emulator server on loopback, reached through the official SDK as in production;
`local` is the embedded engine on a SQLite file, in-process. `LocalClient` answers the SDK's own
request models from that file, so a test's hand edits and checks read the same on both.
"""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alibabacloud_kms20160120 import models as kms
from apply_support import SdkView
from Tea.exceptions import TeaException

from provisioner.backend.local import LocalTransport
from provisioner.errors import KmsApiError

if TYPE_CHECKING:
    from conftest import RunningEmulator

BACKENDS = ("local", "alibaba")
REGION = "cn-hangzhou"


class Backend(ABC):
    """One KMS under test. `args`, `env` and `manifest_backend` point the CLI at it; `stats()` has the
    shape of the emulator's `GET /_emulator/stats`; `view` reads it through the SDK's models."""

    kind: str
    args: list[str]
    env: dict[str, str]
    #: The manifest's `backend:` block, or None when the flags alone say where the KMS is.
    manifest_backend: dict[str, str] | None
    #: As every plan and drift header shows it (`Endpoint: ...`).
    endpoint: str
    #: The plan document's `backend` object.
    document: dict[str, str]
    #: The write calls the stack's lock costs one apply (alibaba: take, tag, untag, release the alias;
    #: local: none, a row of the state file), and what the first apply of a stack adds (its lock key).
    lock_writes: Counter[str] = Counter()
    lock_key_writes: Counter[str] = Counter()
    #: Every call the lock costs one apply (alibaba: its writes and the reads of its key and alias).
    lock_calls: Counter[str] = Counter()
    _charged: set[str] = set()  # lock keys whose CreateKey minus_lock took off already

    def minus_lock(self, made: Counter[str]) -> Counter[str]:
        """`made` (writes or calls between two stats) less the lock's own, when an apply took it."""
        if not self.lock_writes or made & self.lock_writes != self.lock_writes:
            return made
        lock = self.lock_calls if any(a not in self.lock_writes for a in made) else self.lock_writes
        # A stack's first apply also made its lock key: counted once, by the first count that sees it.
        fresh = set(self.view.lock_keys()) - self._charged
        self._charged |= fresh
        return made - lock - Counter(CreateKey=len(fresh))

    @abstractmethod
    def announcement(self, empty: bool = False) -> str:
        """The `using ...` line every command prints first on standard error (`empty`: a local
        state file that does not exist yet)."""

    @abstractmethod
    def stats(self) -> dict[str, dict[str, int]]:
        """`{"calls": {action: n}}`: every call this KMS received so far."""

    @abstractmethod
    def sdk_client(self) -> Any:
        """An official SDK client, or its stand-in with the same methods."""

    @cached_property
    def view(self) -> SdkView:
        return SdkView(self.sdk_client())

    def close(self) -> None:  # noqa: B027  (only the local view holds something to release)
        """Release what the view opened (the server itself belongs to whoever started it)."""


class AlibabaBackend(Backend):
    """The emulator server through the official SDK: `--backend alibaba --endpoint URL --region`."""

    def __init__(self, emulator: RunningEmulator) -> None:
        self.kind = "alibaba"
        self.emulator = emulator
        self.url = emulator.url
        self.args = ["--backend", "alibaba", "--endpoint", emulator.url, "--region", REGION]
        self.env = emulator.credential_env()
        self.manifest_backend = None
        self.endpoint = emulator.url
        self.document = {"type": "alibaba", "region": REGION, "endpoint": emulator.url}
        self.lock_writes = Counter(CreateAlias=1, TagResource=1, UntagResource=1, DeleteAlias=1)
        self.lock_key_writes = Counter(CreateKey=1)
        self.lock_calls = self.lock_writes + Counter(ListTagResources=1, DescribeKey=1, ListResourceTags=1)
        self._charged = set()

    def announcement(self, empty: bool = False) -> str:
        return f"using alibaba {REGION} at {self.url}"

    def stats(self) -> dict[str, dict[str, int]]:
        return self.emulator.stats()

    def sdk_client(self) -> Any:
        return self.emulator.sdk_client()


#: Calls each local state file received in this process, by path (see `count_local_calls`).
_local_calls: dict[Path, Counter[str]] = {}


class LocalBackend(Backend):
    """The embedded engine on `db` (outside the working folder, so its path reads the same from any
    checkout): `--backend local` and `backend: {type: local, path: DB}` in the manifest."""

    def __init__(self, db: Path) -> None:
        self.kind = "local"
        self.db = db
        self.args = ["--backend", "local"]
        self.env = {}
        self.manifest_backend = {"type": "local", "path": str(db)}
        self.endpoint = f"local:{db}"
        self.document = {"type": "local", "path": str(db), "endpoint": self.endpoint}
        self._client: LocalClient | None = None
        _local_calls.setdefault(db, Counter())

    def announcement(self, empty: bool = False) -> str:
        missing = ", which does not exist yet: an empty KMS" if empty else ""
        return f"using local backend ({self.db}){missing}"

    def stats(self) -> dict[str, dict[str, int]]:
        return {"calls": dict(sorted(_local_calls[self.db].items()))}

    def sdk_client(self) -> LocalClient:
        if self._client is None:
            self._client = LocalClient(self.db)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class LocalClient:
    """The official SDK client's methods (`describe_key(DescribeKeyRequest)` -> `DescribeKeyResponse`)
    answered by the local backend's own transport on a state file, opened at the first call.

    Requests go out as the SDK's `to_map()` and answers come back through the SDK's `from_map()`;
    an error code is raised as the SDK raises it (TeaException), so SdkView reads both alike."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self._transport: LocalTransport | None = None

    def __getattr__(self, name: str) -> Callable[[Any], Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        action = "".join(part.capitalize() for part in name.split("_"))
        response_type = getattr(kms, f"{action}Response")

        def call(request: Any) -> Any:
            if self._transport is None:
                self._transport = LocalTransport(self.db)
            try:
                body = self._transport.call(action, request.to_map())
            except KmsApiError as e:
                raise TeaException({"code": e.code, "message": e.message, "data": {}}) from None
            return response_type().from_map({"headers": {}, "statusCode": 200, "body": body})

        return call

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


def count_local_calls(monkeypatch: Any) -> None:
    """Count every call a LocalTransport of a known state file receives, refused ones included, as
    the emulator counts requests: the CLI runs in-process, so its calls go through this patch too."""
    original = LocalTransport.call

    def counting(self: LocalTransport, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        counter = _local_calls.get(self.db_path)
        if counter is not None:
            counter[action] += 1
        return original(self, action, params)

    monkeypatch.setattr(LocalTransport, "call", counting)


@contextmanager
def started(kind: str, db: Path | None, folder: Path) -> Iterator[Backend]:
    """A backend of `kind` on the state file `db` (the emulator's `--db`; None: in memory for the
    emulator, `folder`/kms.db, not yet created, for local), stopped on exit. The caller clears the
    proxy variables (the SDK honours them even for loopback)."""
    if kind == "alibaba":
        from conftest import RunningEmulator

        from provisioner.emulator.server import EmulatorConfig, EmulatorServer

        server = EmulatorServer(EmulatorConfig(host="127.0.0.1", port=0, db=None if db is None else str(db)))
        server.start()
        try:
            yield AlibabaBackend(RunningEmulator(server))
        finally:
            server.shutdown()
    elif kind == "local":
        backend = LocalBackend(folder / "kms.db" if db is None else db)
        try:
            yield backend
        finally:
            backend.close()
            _local_calls.pop(backend.db, None)
    else:
        raise ValueError(f"no backend {kind!r}")


def copy_state(template: Path, folder: Path) -> Path:
    """A copy of a closed state file in `folder` (a test then changes its copy only)."""
    db = folder / "kms.db"
    shutil.copyfile(template, db)
    db.chmod(0o600)
    return db
