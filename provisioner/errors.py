"""The provisioner's exceptions. Messages are for users: they say where and what, never a secret.

    ProvisionerError
    ├── UsageError            a bad flag or argument on the command line
    ├── ManifestError         manifests that do not render, parse or validate (carries Diagnostics)
    ├── MaterialError         private material that cannot be read, parsed or does not match
    ├── WrappingError         a wrapping public key or algorithm that cannot be used
    ├── BackendError          the KMS could not be reached or refused a call
    │   ├── KmsApiError       the KMS answered with an error code (vendor code, request id)
    │   └── KmsUnreachable    no answer after every retry
    ├── PlanBlocked           the plan has violations; nothing may be applied
    ├── StalePlan             a saved plan no longer matches the live state or the material
    ├── StackLocked           another apply holds the stack's lock
    └── ApplyError            an action failed or its read-back did not match
"""

from __future__ import annotations

from collections.abc import Iterable

from provisioner.diagnostics import Diagnostic, Diagnostics
from provisioner.wire import ErrorCode


class ProvisionerError(Exception):
    """Root of every error the provisioner raises on purpose."""


class UsageError(ProvisionerError):
    """A bad flag or argument on the command line."""


class ManifestError(ProvisionerError):
    """Manifests that do not render, parse or validate."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics = Diagnostics(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


class MaterialError(ProvisionerError):
    """Private material that cannot be read, parsed, or is not what the manifest says."""


class WrappingError(ProvisionerError):
    """A wrapping public key or algorithm that cannot be used."""


class BackendError(ProvisionerError):
    """The KMS could not be reached or refused a call."""


class KmsApiError(BackendError):
    """The KMS answered a call with an error code."""

    def __init__(
        self, action: str, code: str, message: str, request_id: str = "", status: int = 0
    ) -> None:
        self.action = action
        self.code = code
        self.message = message
        self.request_id = request_id
        self.status = status
        rid = f" (request id {request_id})" if request_id else ""
        super().__init__(f"{action}: {code}: {message}{rid}")

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES


RETRYABLE_CODES = frozenset(
    {ErrorCode.REJECTED_THROTTLING, ErrorCode.SERVICE_UNAVAILABLE_TEMPORARY, ErrorCode.INTERNAL_FAILURE}
)


class KmsUnreachable(BackendError):
    """The KMS did not answer after every retry."""


class PlanBlocked(ProvisionerError):
    """The plan has violations; nothing may be applied."""


class StalePlan(ProvisionerError):
    """A saved plan no longer matches the live state or the material."""


class StackLocked(ProvisionerError):
    """Another apply holds the lock of this stack and target (DESIGN section 10's message)."""


class ApplyError(ProvisionerError):
    """An action failed, or its read-back did not match what was planned."""
