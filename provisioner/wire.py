"""Facts of the KMS wire that both sides share: every error code, and the quota group of each action.

The emulator answers with these codes and the backends compare against them, so this module imports
nothing of either side (nor anything of the package): it is the one place a code is spelled.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class ErrorCode(StrEnum):
    """A KMS error code; the value is the exact `Code` string of an error answer."""

    # The request, its signature and its credentials.
    MISSING_PARAMETER = "MissingParameter"
    INVALID_PARAMETER = "InvalidParameter"
    INVALID_ACTION_NOT_FOUND = "InvalidAction.NotFound"
    INVALID_API_NOT_FOUND = "InvalidApi.NotFound"
    INVALID_VERSION = "InvalidVersion"
    MISSING_CONTENT_LENGTH = "MissingContentLength"
    ILLEGAL_TIMESTAMP = "IllegalTimestamp"
    INCOMPLETE_SIGNATURE = "IncompleteSignature"
    SIGNATURE_DOES_NOT_MATCH = "SignatureDoesNotMatch"
    INVALID_SIGNATURE_METHOD = "InvalidSignatureMethod"
    SIGNATURE_NONCE_USED = "SignatureNonceUsed"
    INVALID_ACCESS_KEY_ID = "InvalidAccessKeyId"
    INVALID_ACCESS_KEY_ID_NOT_FOUND = "InvalidAccessKeyId.NotFound"
    INVALID_ACCESS_KEY_ID_INACTIVE = "InvalidAccessKeyId.Inactive"
    INVALID_SECURITY_TOKEN_EXPIRED = "InvalidSecurityToken.Expired"
    INVALID_SECURITY_TOKEN_MALFORMED = "InvalidSecurityToken.Malformed"
    INVALID_SECURITY_TOKEN_MISMATCH_WITH_ACCESS_KEY = "InvalidSecurityToken.MismatchWithAccessKey"
    INVALID_CREDENTIALS = "InvalidCredentials"
    # KMS rules (kms-api-notes.md, "Error codes").
    REJECTED_LIMIT_EXCEEDED = "Rejected.LimitExceeded"
    ALIAS_ALREADY_EXISTS = "AliasAlreadyExists"
    INVALID_KEY_MATERIAL = "InvalidKeyMaterial"
    INVALID_IMPORT_TOKEN = "InvalidImportToken"
    EXPIRED_IMPORT_TOKEN = "ExpiredImportToken"
    UNSUPPORTED_ORIGIN = "Unsupported.Origin"
    UNSUPPORTED_PROTECTION_LEVEL = "Unsupported.ProtectionLevel"
    REJECTED_UNSUPPORTED_OPERATION = "Rejected.UnsupportedOperation"
    FORBIDDEN_NO_PERMISSION = "Forbidden.NoPermission"
    FORBIDDEN_KEY_NOT_FOUND = "Forbidden.KeyNotFound"
    FORBIDDEN_ALIAS_NOT_FOUND = "Forbidden.AliasNotFound"
    REJECTED_STATE_MODIFIED_FAILED = "Rejected.StateModifiedFailed"
    REJECTED_DISABLED = "Rejected.Disabled"
    REJECTED_PENDING_DELETION = "Rejected.PendingDeletion"
    REJECTED_PENDING_IMPORT = "Rejected.PendingImport"
    # The service itself.
    REJECTED_THROTTLING = "Rejected.Throttling"
    SERVICE_UNAVAILABLE_TEMPORARY = "ServiceUnavailableTemporary"
    INTERNAL_FAILURE = "InternalFailure"

    @property
    def status(self) -> int:
        """The HTTP status the emulator answers this code with (400 for a code it never sends)."""
        return HTTP_STATUS.get(self, 400)


#: HTTP status of the codes whose status is not 400.
HTTP_STATUS: Mapping[ErrorCode, int] = {
    ErrorCode.INVALID_API_NOT_FOUND: 404,
    ErrorCode.INVALID_ACTION_NOT_FOUND: 404,
    ErrorCode.INVALID_ACCESS_KEY_ID_NOT_FOUND: 404,
    ErrorCode.MISSING_CONTENT_LENGTH: 411,
    ErrorCode.FORBIDDEN_NO_PERMISSION: 403,
    ErrorCode.FORBIDDEN_KEY_NOT_FOUND: 404,
    ErrorCode.FORBIDDEN_ALIAS_NOT_FOUND: 404,
    ErrorCode.REJECTED_STATE_MODIFIED_FAILED: 409,
    ErrorCode.REJECTED_DISABLED: 409,
    ErrorCode.REJECTED_PENDING_DELETION: 409,
    ErrorCode.REJECTED_PENDING_IMPORT: 409,
    ErrorCode.REJECTED_THROTTLING: 429,
    ErrorCode.INTERNAL_FAILURE: 500,
    ErrorCode.SERVICE_UNAVAILABLE_TEMPORARY: 503,
}


def is_rejection(code: str) -> bool:
    """A `Rejected.*` code: the service refused the call in the key's present state (or its rate)."""
    return code.startswith("Rejected.")


#: Quota group of each action every key has (vendor quotas: create 10/s, read 20/s, write 10/s, crypto
#: 200/s). The actions only one family's keys answer carry their group with them (emulator/families.py).
QUOTA_GROUPS: Mapping[str, str] = {
    "CreateKey": "create",
    **{
        a: "read"
        for a in (
            "DescribeKey",
            "ListKeys",
            "GetParametersForImport",
            "GetPublicKey",
            "ListKeyVersions",
            "DescribeKeyVersion",
            "ListAliases",
            "ListAliasesByKeyId",
            "ListResourceTags",
            "ListTagResources",
            "ListKmsInstances",
            "GetKmsInstance",
        )
    },
    **{
        a: "write"
        for a in (
            "ImportKeyMaterial",
            "DeleteKeyMaterial",
            "CreateAlias",
            "UpdateAlias",
            "DeleteAlias",
            "TagResource",
            "UntagResource",
            "TagResources",
            "UntagResources",
            "UpdateKeyDescription",
            "EnableKey",
            "DisableKey",
            "ScheduleKeyDeletion",
            "CancelKeyDeletion",
            "SetDeletionProtection",
        )
    },
    **{
        a: "crypto"
        for a in (
            "AsymmetricSign", "AsymmetricVerify", "AsymmetricEncrypt", "AsymmetricDecrypt",
        )
    },
}


#: The rates a quota group may be limited to, on either side (calls a second): below 0.01 a call
#: would wait hours, above 10,000 the limit means nothing.
QPS_MIN, QPS_MAX = 0.01, 10000.0
