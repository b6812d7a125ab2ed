"""One row of facts per key spec (family, size or curve, protection levels, wrapping, usages, the
algorithms KMS offers, how an import is verified, the cipher a symmetric key encrypts with), one row per
wrapping algorithm (its wrapping key spec, ephemeral key cipher, OAEP hash), and `Material` with
`MaterialReader`, the interface every material kind has: how its bytes are read and how it is used.

Facts only: no I/O, no cryptography, no branching on spec names elsewhere. Code that needs to know
something about a spec reads its row here; a new spec is a new row (and a material class, if new).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from provisioner.model import KeySpec, KeyUsage, MaterialFormat, ProtectionLevel, WrappingAlgorithm


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
        """KMS shows nothing of the key: no public key, no asymmetric operation, no asymmetric import."""
        return self.family is Family.SYMMETRIC

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
    source's `format`, None where the kind has none), unlocked with `passphrase` where it takes one.
    One reader per family, registered in material.py's READERS."""

    def __call__(
        self, data: bytes, fmt: MaterialFormat | None, spec: KeySpec, passphrase: bytes | None
    ) -> Material: ...


def symmetric_spec(size: int) -> KeySpec | None:
    """The symmetric spec whose material is `size` bytes long; None for any other length."""
    return next(
        (s for s, row in SPECS.items() if row.family is Family.SYMMETRIC and row.material_bytes == size), None
    )
