"""Transport over the embedded KMS engine, in-process on a SQLite file: the `local` backend.

It speaks the same wire dicts as the SDK transport, through the emulator's own request parser, so
everything above the seam behaves the same on both backends. It adds no rule of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from provisioner.errors import KmsApiError


class LocalTransport:
    """Transport.call straight into `KmsResponses.handle`; KmsError becomes KmsApiError."""

    def __init__(self, db_path: Path, *, clock: Callable[[], datetime] | None = None) -> None:
        # Imported here so that the alibaba backend never loads the engine.
        from provisioner.emulator.models import KmsEngine, KmsError
        from provisioner.emulator.responses import KmsResponses, flatten_params

        db_path.parent.mkdir(parents=True, exist_ok=True)
        self.db_path = db_path
        self._error_type: type[Exception] = KmsError
        self._flatten = flatten_params
        # The local file holds no private material: the engine keeps only what KMS would show.
        self._engine = KmsEngine(str(db_path), persist_private_keys=False, clock=clock)
        self._responses = KmsResponses(self._engine)
        # One SQLite connection under concurrent refresh threads: serialise, it is in-process anyway.
        self._lock = threading.Lock()

    def call(self, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            try:
                body = self._responses.handle(action, self._flatten(params))
            except self._error_type as e:
                raise KmsApiError(
                    action,
                    str(getattr(e, "code", "InternalFailure")),
                    str(getattr(e, "message", "") or e),
                    "",
                    int(getattr(e, "status", 0) or 0),
                ) from e
        return dict(body)

    def close(self) -> None:
        close = getattr(self._engine, "close", None)
        if callable(close):
            close()
