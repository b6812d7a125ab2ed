"""Symmetric key material (Aliyun_AES_256, Aliyun_SM4): decode it from its source, check its length,
name it by its key check value, and check the manifest fields only it has, `format` and `wrapping`
(DESIGN section 13). `KIND` is the symmetric family's client half (specs.FAMILIES names it).

The bytes live only inside `SymmetricMaterial`, whose repr is its check value. Nothing here prints
or logs; errors say what is wrong with the encoding or the length, never the bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, NoReturn

from provisioner.errors import MaterialError
from provisioner.model import (
    KCV_PREFIX,
    KeySpec,
    MaterialFormat,
    MaterialSource,
    ProtectionLevel,
    SourceKind,
    WrappingAlgorithm,
    member_or_none,
)
from provisioner.specs import (
    Family,
    FieldProblem,
    Material,
    MaterialReader,
    facts,
    family_specs,
    symmetric_spec,
    wrapping_refusal,
)

#: HMAC-SHA-256 keyed with the material over this label; its first 16 hex digits name the material.
KCV_LABEL = b"byok-provisioner key check value"
KCV_HEX_DIGITS = 16
KCV_RE = re.compile(r"kcv:[0-9a-f]{16}")

_HEX_TEXT = re.compile(rb"[0-9A-Fa-f]*")
_BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/]*={0,2}")


def key_check_value(material: bytes) -> str:
    """`kcv:` + the first 16 hex digits of HMAC-SHA-256(key=material, msg=KCV_LABEL)."""
    digest = hmac.new(bytes(material), KCV_LABEL, hashlib.sha256).hexdigest()
    return KCV_PREFIX + digest[:KCV_HEX_DIGITS]


class SymmetricMaterial:
    """The bytes of one symmetric key. `repr` and `str` show the spec and check value only."""

    __slots__ = ("_key", "fingerprint", "spec")

    def __init__(self, spec: KeySpec, key: bytes) -> None:
        if not facts(spec).symmetric:
            raise ValueError(f"{spec} is not a symmetric spec")
        self.spec = spec
        self.fingerprint = key_check_value(key)
        self._key: bytearray | None = bytearray(key)

    def __repr__(self) -> str:
        return f"SymmetricMaterial(spec={self.spec}, fingerprint={self.fingerprint})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("SymmetricMaterial cannot be pickled")

    def _live(self) -> bytearray:
        if self._key is None:
            raise MaterialError(f"material {self.fingerprint} was wiped after use")
        return self._key

    def key_bytes(self) -> bytes:
        """The plaintext key, for wrapping. Use and drop it."""
        return bytes(self._live())

    def import_payload(self, algorithm: WrappingAlgorithm) -> bytes:
        """Symmetric material is wrapped directly, whatever the algorithm: the key's bytes."""
        return self.key_bytes()

    def secret_forms(self) -> list[bytes]:
        return [self.key_bytes()]

    def wipe(self) -> None:
        if self._key is not None:
            self._key[:] = bytes(len(self._key))
        self._key = None


def decode(data: bytes, encoding: MaterialFormat) -> bytes:
    """The key bytes a source holds in `encoding`. Hex and base64 text may end in white space (a
    trailing newline); raw bytes are taken as they are. MaterialError says what is wrong, never where
    in the text (that would tell a part of the key)."""
    if encoding is MaterialFormat.RAW:
        return data
    text = data.strip()
    if encoding is MaterialFormat.HEX:
        if not _HEX_TEXT.fullmatch(text):
            raise MaterialError("format hex: holds a character that is not a hex digit")
        if len(text) % 2:
            raise MaterialError(f"format hex: {len(text)} hex digits is not a whole number of bytes")
        return binascii.unhexlify(text)
    if not _BASE64_TEXT.fullmatch(text) or len(text) % 4:
        raise MaterialError("format base64: is not standard base64 (A-Z a-z 0-9 + /, padded with =)")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MaterialError(
            "format base64: is not standard base64 (A-Z a-z 0-9 + /, padded with =)"
        ) from None


def parse_symmetric(data: bytes, encoding: MaterialFormat, spec: KeySpec) -> SymmetricMaterial:
    """`spec` material from a source's bytes; MaterialError for a bad encoding or a wrong length."""
    key = bytearray(decode(data, encoding))
    try:
        want = facts(spec).material_bytes
        if len(key) != want:
            raise MaterialError(f"{spec} material is {want} bytes; the source holds {len(key)} ({encoding})")
        return SymmetricMaterial(spec, bytes(key))
    finally:
        key[:] = bytes(len(key))


def sizes() -> str:
    """The symmetric specs' lengths as messages give them: `32 (Aliyun_AES_256) or 16 (Aliyun_SM4)`."""
    return " or ".join(f"{facts(s).material_bytes} ({s})" for s in family_specs(Family.SYMMETRIC))


def parse_symmetric_any(data: bytes, encoding: MaterialFormat) -> SymmetricMaterial:
    """Symmetric material of whichever spec its length names (`provision wrap`, which has no manifest)."""
    key = bytearray(decode(data, encoding))
    try:
        spec = symmetric_spec(len(key))
        if spec is None:
            raise MaterialError(f"holds {len(key)} bytes ({encoding}); symmetric material is {sizes()} bytes")
        return SymmetricMaterial(spec, bytes(key))
    finally:
        key[:] = bytes(len(key))


def _read(
    data: bytes, fmt: MaterialFormat | None, spec: KeySpec, passphrase: bytes | None
) -> SymmetricMaterial:
    """`spec`'s bytes, written in `fmt` (raw where the source names none)."""
    return parse_symmetric(data, fmt or MaterialFormat.RAW, spec)


class _SymmetricKind:
    """The client half of the symmetric family (specs.MaterialKind)."""

    fields: tuple[str, ...] = ("format", "wrapping")

    @property
    def read(self) -> MaterialReader:
        return _read

    def read_formatted(self, data: bytes, fmt: MaterialFormat) -> Material:
        return parse_symmetric_any(data, fmt)

    def check_source(
        self, block: Mapping[str, Any], spec: KeySpec, protection: ProtectionLevel, on_instance: bool,
        source: MaterialSource,
    ) -> tuple[MaterialSource, tuple[FieldProblem, ...]]:
        """The kcv pin, no passphrase, a `format` (raw only where the source can hold a NUL byte) and
        a `wrapping` the key takes."""
        problems: list[FieldProblem] = []
        pin = source.fingerprint
        if pin is not None and not pin.startswith(KCV_PREFIX):
            message = f"a {spec} key is pinned by its key check value: kcv:<16 hex>, not {pin}"
            problems.append(FieldProblem("fingerprint", message))
        if source.passphrase_env is not None:
            message = "material.passphrase_env is for encrypted PEM private keys, not symmetric keys"
            problems.append(FieldProblem("passphrase_env", message))
        encoding = member_or_none(MaterialFormat, block.get("format"))
        if "format" not in block:
            message = f"{spec} material needs format: raw, hex or base64 (how the source writes its bytes)"
            problems.append(FieldProblem(None, message))
        elif encoding is MaterialFormat.RAW and source.kind is SourceKind.ENV:
            message = (
                "format raw is for file and command sources only: an environment variable cannot hold a "
                "NUL byte; write the key as hex or base64"
            )
            problems.append(FieldProblem("format", message))
        wrapping = member_or_none(WrappingAlgorithm, block.get("wrapping"))
        if wrapping is not None:
            refusal = wrapping_refusal(spec, wrapping, protection, on_instance)
            if refusal is not None:
                problems.append(FieldProblem("wrapping", f"material.wrapping {wrapping}: {refusal}"))
        return replace(source, format=encoding, wrapping=wrapping), tuple(problems)


#: Named by specs.FAMILIES for the symmetric family.
KIND = _SymmetricKind()
