"""One row of facts per key spec (family, size or curve, protection levels, wrapping, usages, the
algorithms KMS offers, how an import is verified, the cipher a symmetric key encrypts with), one row per
wrapping algorithm (its wrapping key spec, ephemeral key cipher, OAEP hash), one row per family (the
modules that implement it), and the interfaces a family implements: `Material`, `MaterialReader` and
`MaterialKind` on the client side (the emulator's is in `emulator/families.py`).

Facts only: no I/O, no cryptography, no branching on spec names elsewhere. Code that needs to know
something about a spec reads its row here; a new spec is a new row. A new family is a member of
`Family`, its rows, a row of `FAMILIES` naming its two modules, and those modules: no other module
names a family's code.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypeVar, cast, runtime_checkable

from provisioner.model import (
    KeySpec,
    KeyUsage,
    MaterialFormat,
    MaterialSource,
    ProtectionLevel,
    WrappingAlgorithm,
)


class Family(StrEnum):
    """What kind of key a spec is, which decides how its material is parsed, wrapped and used."""

    RSA = "asymmetric-rsa"
    EC = "asymmetric-ec"
    SM2 = "asymmetric-sm2"
    SYMMETRIC = "symmetric"


class Verification(StrEnum):
    """How apply (and refresh) prove which material a key holds after an import."""

    PUBLIC_KEY_FINGERPRINT = "public key fingerprint"  # GetPublicKey, SPKI SHA-256
    #: Symmetric material: KMS shows nothing of it, so only the check value recorded at CreateKey
    #: names it, and a read-back can prove only that the key holds some material (DESIGN section 13).
    NONE = "none: KMS cannot prove which symmetric material it holds"


class BlockCipher(StrEnum):
    """A block cipher named by the facts: a symmetric key's own, or a wrapping scheme's ephemeral key's."""

    AES = "AES"
    SM4 = "SM4"


class OaepHash(StrEnum):
    SHA_256 = "SHA-256"
    SHA_1 = "SHA-1"


_RSA_SIGN = ("RSA_PSS_SHA_256", "RSA_PKCS1_SHA_256")
_RSA_ENCRYPT = ("RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256")
_BOTH = frozenset(ProtectionLevel)
_HSM = frozenset({ProtectionLevel.HSM})
_ASYMMETRIC_USAGES = (KeyUsage.SIGN_VERIFY, KeyUsage.ENCRYPT_DECRYPT)


@dataclass(frozen=True)
class SpecFacts:
    """Everything the provisioner and the emulator know about one key spec."""

    spec: KeySpec
    family: Family
    bits: int  # RSA: modulus size; 0 for the others
    curve: str | None  # cryptography's curve name (sm2 for EC_SM2); None for RSA
    curve_words: str | None  # the curve as messages name it: P-256, secp256k1, SM2
    #: Protection levels at which the spec takes imported material (DESIGN section 3).
    protections: frozenset[ProtectionLevel]
    #: The algorithm the client wraps this spec's material with (the vendor's pairing, guide step 2).
    wrapping_algorithm: WrappingAlgorithm
    #: Every algorithm KMS accepts for this spec's material (EC_SM2 also takes RSA-OAEP + AES).
    accepted_wrapping: tuple[WrappingAlgorithm, ...]
    default_usage: KeyUsage
    usages: tuple[KeyUsage, ...]
    sign_algorithms: tuple[str, ...]
    #: Empty where the vendor has none: such a key may be ENCRYPT/DECRYPT but cannot encrypt.
    encrypt_algorithms: tuple[str, ...]
    verification: Verification
    #: Symmetric: the exact length of the material in bytes; 0 for asymmetric specs.
    material_bytes: int = 0
    #: Whether a key of this spec may be a default key, outside any KMS instance (guide's support table).
    default_key: bool = False
    #: Symmetric: the cipher Encrypt, Decrypt and GenerateDataKey use (in GCM mode); None otherwise.
    cipher: BlockCipher | None = None
    #: The longest plaintext the spec's public-key encryption takes when it does not follow from `bits`
    #: (SM2PKE: an inferred cap).
    max_plaintext: int = 0

    def max_encrypt_plaintext(self, algorithm: str) -> int:
        """The longest plaintext AsymmetricEncrypt takes with `algorithm`: the fixed cap, or what
        RSA-OAEP leaves of the modulus for the algorithm's digest."""
        if self.max_plaintext:
            return self.max_plaintext
        digest_bytes = 20 if algorithm == "RSAES_OAEP_SHA_1" else 32
        return self.bits // 8 - 2 * digest_bytes - 2

    @property
    def symmetric(self) -> bool:
        """KMS shows nothing of the key (no public key, no asymmetric operation, no asymmetric import),
        so nothing proves which material it holds: told by the way an import is verified."""
        return self.verification is Verification.NONE

    @property
    def wrapping_key_spec(self) -> KeySpec:
        """The spec of the wrapping key GetParametersForImport is asked for."""
        return WRAPPING[self.wrapping_algorithm].wrapping_key_spec

    def describe(self) -> str:
        """The spec in words for messages: `EC_P256K (curve secp256k1)`."""
        return f"{self.spec} (curve {self.curve_words})" if self.curve_words else str(self.spec)


def _rsa(spec: KeySpec, bits: int, protections: frozenset[ProtectionLevel]) -> SpecFacts:
    return SpecFacts(
        spec, Family.RSA, bits, None, None, protections,
        WrappingAlgorithm.RSA_OAEP_AES_ECB, (WrappingAlgorithm.RSA_OAEP_AES_ECB,),
        KeyUsage.SIGN_VERIFY, _ASYMMETRIC_USAGES, _RSA_SIGN, _RSA_ENCRYPT,
        Verification.PUBLIC_KEY_FINGERPRINT,
    )  # fmt: skip


def _ec(spec: KeySpec, curve: str, words: str) -> SpecFacts:
    return SpecFacts(
        spec, Family.EC, 0, curve, words, _BOTH,
        WrappingAlgorithm.RSA_OAEP_AES_ECB, (WrappingAlgorithm.RSA_OAEP_AES_ECB,),
        KeyUsage.SIGN_VERIFY, _ASYMMETRIC_USAGES, ("ECDSA_SHA_256",), (),
        Verification.PUBLIC_KEY_FINGERPRINT,
    )  # fmt: skip


_SYMMETRIC_WRAPPING = (
    WrappingAlgorithm.RSAES_OAEP_SHA_256,
    WrappingAlgorithm.RSAES_PKCS1_V1_5,
    WrappingAlgorithm.RSAES_OAEP_SHA_1,
)


def _symmetric(
    spec: KeySpec, size: int, cipher: BlockCipher, extra: tuple[WrappingAlgorithm, ...] = ()
) -> SpecFacts:
    return SpecFacts(
        spec, Family.SYMMETRIC, 0, None, None, _BOTH,
        WrappingAlgorithm.RSAES_OAEP_SHA_256, (*_SYMMETRIC_WRAPPING, *extra),
        KeyUsage.ENCRYPT_DECRYPT, (KeyUsage.ENCRYPT_DECRYPT,), (), (),
        Verification.NONE, material_bytes=size, default_key=True, cipher=cipher,
    )  # fmt: skip


#: The table: one row per KeySpec, in KeySpec's order.
SPECS: Mapping[KeySpec, SpecFacts] = {
    row.spec: row
    for row in (
        _rsa(KeySpec.RSA_2048, 2048, _BOTH),
        _rsa(KeySpec.RSA_3072, 3072, _BOTH),
        _rsa(KeySpec.RSA_4096, 4096, _HSM),
        _ec(KeySpec.EC_P256, "secp256r1", "P-256"),
        _ec(KeySpec.EC_P256K, "secp256k1", "secp256k1"),
        SpecFacts(
            KeySpec.EC_SM2, Family.SM2, 0, "sm2", "SM2", _HSM,
            WrappingAlgorithm.SM2PKE_SM4_ECB,
            (WrappingAlgorithm.SM2PKE_SM4_ECB, WrappingAlgorithm.RSA_OAEP_AES_ECB),
            KeyUsage.SIGN_VERIFY, _ASYMMETRIC_USAGES, ("SM2DSA",), ("SM2PKE",),
            Verification.PUBLIC_KEY_FINGERPRINT, max_plaintext=6047,
        ),  # fmt: skip
        _symmetric(KeySpec.AES_256, 32, BlockCipher.AES),
        _symmetric(KeySpec.SM4, 16, BlockCipher.SM4, (WrappingAlgorithm.SM2PKE,)),
    )
}


@dataclass(frozen=True)
class WrappingFacts:
    """What one wrapping algorithm is (guide step 3, DESIGN section 13)."""

    algorithm: WrappingAlgorithm
    #: The spec of the wrapping key GetParametersForImport hands out for it.
    wrapping_key_spec: KeySpec
    #: The cipher of the ephemeral key (ESK) the material is wrapped under, the ESK itself wrapped under
    #: the wrapping key; None: the material is wrapped directly under the wrapping key.
    esk_cipher: BlockCipher | None
    #: The OAEP hash under an RSA wrapping key; None for PKCS#1 v1.5 and for SM2 wrapping keys.
    oaep_hash: OaepHash | None

    @property
    def direct(self) -> bool:
        return self.esk_cipher is None


#: The wrapping table: one row per WrappingAlgorithm, in its order.
_SHA_256 = OaepHash.SHA_256
WRAPPING: Mapping[WrappingAlgorithm, WrappingFacts] = {
    row.algorithm: row
    for row in (
        WrappingFacts(WrappingAlgorithm.RSA_OAEP_AES_ECB, KeySpec.RSA_2048, BlockCipher.AES, _SHA_256),
        WrappingFacts(WrappingAlgorithm.SM2PKE_SM4_ECB, KeySpec.EC_SM2, BlockCipher.SM4, None),
        WrappingFacts(WrappingAlgorithm.RSAES_OAEP_SHA_256, KeySpec.RSA_2048, None, OaepHash.SHA_256),
        WrappingFacts(WrappingAlgorithm.RSAES_PKCS1_V1_5, KeySpec.RSA_2048, None, None),
        WrappingFacts(WrappingAlgorithm.RSAES_OAEP_SHA_1, KeySpec.RSA_2048, None, OaepHash.SHA_1),
        WrappingFacts(WrappingAlgorithm.SM2PKE, KeySpec.EC_SM2, None, None),
    )
}


#: Wrapping algorithms only default keys offer (the vendor's instances lack them).
DEFAULT_KEY_ONLY_WRAPPING = frozenset({WrappingAlgorithm.RSAES_OAEP_SHA_1})
#: Wrapping algorithms only hardware protection offers.
HSM_ONLY_WRAPPING = frozenset({WrappingAlgorithm.SM2PKE})


def wrapping_refusal(
    spec: KeySpec, algorithm: WrappingAlgorithm, protection: ProtectionLevel, on_instance: bool
) -> str | None:
    """Why a key of `spec` at `protection`, in an instance or not, cannot take material wrapped with
    `algorithm` (None: it can). The manifest's rules and the emulator both ask this."""
    row = SPECS[spec]
    if algorithm not in row.accepted_wrapping:
        return f"{spec} material is wrapped with {' or '.join(row.accepted_wrapping)}, not {algorithm}"
    if algorithm in DEFAULT_KEY_ONLY_WRAPPING and on_instance:
        return f"{algorithm} is offered for default keys only; a key in a KMS instance lacks it"
    if algorithm in HSM_ONLY_WRAPPING and protection is not ProtectionLevel.HSM:
        return f"{algorithm} is offered for {spec} keys of protection HSM only, not {protection}"
    return None


def facts(spec: KeySpec) -> SpecFacts:
    return SPECS[spec]


def importable_specs(protection: ProtectionLevel) -> frozenset[KeySpec]:
    """The specs that take imported material at `protection`."""
    return frozenset(s for s, row in SPECS.items() if protection in row.protections)


def wrapping_facts(algorithm: WrappingAlgorithm) -> WrappingFacts:
    return WRAPPING[algorithm]


def rsa_spec(bits: int) -> KeySpec | None:
    return next((s for s, row in SPECS.items() if row.family is Family.RSA and row.bits == bits), None)


def ec_spec(curve: str) -> KeySpec | None:
    """The spec of a cryptography EC curve name (secp256r1, secp256k1); None for any other curve."""
    return next((s for s, row in SPECS.items() if row.family is Family.EC and row.curve == curve), None)


def curve_spec(curve: str) -> KeySpec | None:
    """The spec of a curve of any family (sm2 too), by its cryptography name; None for any other."""
    return next((s for s, row in SPECS.items() if row.curve == curve), None)


def family_specs(*families: Family) -> tuple[KeySpec, ...]:
    return tuple(s for s, row in SPECS.items() if row.family in families)


def wrapping_key_specs() -> tuple[KeySpec, ...]:
    """The wrapping key specs GetParametersForImport hands out, in the order messages list them."""
    return tuple(dict.fromkeys(row.wrapping_key_spec for row in WRAPPING.values()))


class Material(Protocol):
    """Key material read from a source, of any family. Its repr and str show the spec and
    fingerprint only; the plaintext leaves it only as `import_payload` (to be wrapped) and
    `secret_forms` (for the leak scan), and `wipe` drops it."""

    @property
    def spec(self) -> KeySpec: ...

    @property
    def fingerprint(self) -> str: ...

    def import_payload(self, algorithm: WrappingAlgorithm) -> bytes:
        """The plaintext `algorithm` wraps (PKCS#8 DER, an SM2 scalar, raw symmetric bytes)."""
        ...

    def secret_forms(self) -> list[bytes]:
        """Every encoding of the secret a manifest must not carry 16 bytes of."""
        ...

    def wipe(self) -> None: ...


class MaterialReader(Protocol):
    """The reading half of a material kind: `spec` material from a source's bytes in `fmt` (the
    source's `format`, None where the kind has none), unlocked with `passphrase` where it takes one."""

    def __call__(
        self, data: bytes, fmt: MaterialFormat | None, spec: KeySpec, passphrase: bytes | None
    ) -> Material: ...


@dataclass(frozen=True)
class FieldProblem:
    """What is wrong with a key's material block: `field` names the material field at fault (None:
    the block itself); `message` says what, without the key's name (the rules add it)."""

    field: str | None
    message: str


@runtime_checkable
class MaterialKind(Protocol):
    """The client half of a family: how its material is read, which material fields of a manifest
    only it takes and how they are checked, and how a file is read without a manifest. One per family,
    named by its row of FAMILIES."""

    #: The material fields of a manifest only this kind takes; a key of another kind may not set them.
    fields: tuple[str, ...]

    @property
    def read(self) -> MaterialReader: ...

    def read_formatted(self, data: bytes, fmt: MaterialFormat) -> Material:
        """Material of whichever spec the bytes make, written in `fmt`, for a command without a
        manifest (`wrap`, `fingerprint` with --material-format). Only a kind whose fields include
        `format` is asked."""
        ...

    def check_source(
        self, block: Mapping[str, Any], spec: KeySpec, protection: ProtectionLevel, on_instance: bool,
        source: MaterialSource,
    ) -> tuple[MaterialSource, tuple[FieldProblem, ...]]:
        """A manifest's material `block` of a key of `spec` (at `protection`, in an instance or not),
        read as `source`: the problems this kind finds in it, in the order to report them, and the
        source completed with this kind's fields."""
        ...


@dataclass(frozen=True)
class FamilyFacts:
    """Where one family is implemented: `module:attribute` of its two halves, imported on first use,
    so that no other module names a family's code."""

    family: Family
    #: The client half: a MaterialKind.
    material: str
    #: The emulator's half: an emulator.families.EmulatedFamily (how it unwraps imported material,
    #: and the KMS operations its keys add).
    emulator: str


_PRIVATE_KEY = "provisioner.material:PRIVATE_KEY"
_ASYMMETRIC_EMULATED = "provisioner.emulator.keyops:ASYMMETRIC"
#: The family table: one row per Family, in its order.
FAMILIES: Mapping[Family, FamilyFacts] = {
    row.family: row
    for row in (
        FamilyFacts(Family.RSA, _PRIVATE_KEY, _ASYMMETRIC_EMULATED),
        FamilyFacts(Family.EC, _PRIVATE_KEY, _ASYMMETRIC_EMULATED),
        FamilyFacts(Family.SM2, _PRIVATE_KEY, _ASYMMETRIC_EMULATED),
        FamilyFacts(
            Family.SYMMETRIC, "provisioner.symmetric:KIND", "provisioner.emulator.symmetric_ops:FAMILY"
        ),
    )
}


_Implementation = TypeVar("_Implementation")
#: The implementations found and checked so far, by entry and protocol: a runtime protocol check costs
#: tens of microseconds, and the rules ask for every key's kind.
_CHECKED: dict[tuple[str, type[Any]], Any] = {}


def family_implementation(ref: str, protocol: type[_Implementation]) -> _Implementation:
    """The object a FAMILIES entry names (`module:attribute`, its module imported on first use),
    checked once to be a `protocol` (runtime checkable): TypeError names the entry, so a wrong row of
    FAMILIES fails on first use and says where and what."""
    if (ref, protocol) not in _CHECKED:
        module, _, attribute = ref.partition(":")
        found = getattr(importlib.import_module(module), attribute)
        if not isinstance(found, protocol):
            raise TypeError(f"FAMILIES entry {ref} is a {type(found).__name__}, not a {protocol.__name__}")
        _CHECKED[ref, protocol] = found
    return cast(_Implementation, _CHECKED[ref, protocol])


def material_kind(family: Family) -> MaterialKind:
    """The client half of `family` (FAMILIES)."""
    return family_implementation(FAMILIES[family].material, MaterialKind)  # type: ignore[type-abstract]


def material_kinds() -> dict[Family, MaterialKind]:
    """Every family's client half, in Family's order."""
    return {family: material_kind(family) for family in FAMILIES}


def symmetric_spec(size: int) -> KeySpec | None:
    """The symmetric spec whose material is `size` bytes long; None for any other length."""
    return next(
        (s for s, row in SPECS.items() if row.family is Family.SYMMETRIC and row.material_bytes == size), None
    )
