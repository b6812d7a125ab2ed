"""The emulator's half of a key family (specs.FAMILIES names it): how imported material of the family
is unwrapped, and the KMS operations its keys add beyond those every key has (the symmetric family's
Encrypt, Decrypt and GenerateDataKey).

The engine and the RPC layer ask this module, never a family's module by name, so a new family's
emulation is one module and its row in specs.FAMILIES.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from provisioner.model import KeySpec, WrappingAlgorithm
from provisioner.specs import FAMILIES, Family, facts, family_implementation

if TYPE_CHECKING:
    from provisioner.emulator.keyops import ImportedKey
    from provisioner.emulator.models import KmsEngine


@dataclass(frozen=True)
class Operation:
    """One KMS action a family's keys add: its RPC handler (the engine and the flattened wire
    parameters in, the response body out) and the vendor's quota group it counts against."""

    handler: Callable[[KmsEngine, Mapping[str, str]], dict[str, Any]]
    quota_group: str
    #: What a key of another family does instead, for the refusal of this action on it ("" for none).
    instead: str = ""


@runtime_checkable
class EmulatedFamily(Protocol):
    """What the emulator knows of one family beyond its rows of facts."""

    def unwrap(
        self, spec: KeySpec, algorithm: WrappingAlgorithm, wrapping_private_der: bytes, blob: bytes
    ) -> ImportedKey:
        """The material in an ImportKeyMaterial blob for a key of `spec`, wrapped with `algorithm`
        under the wrapping key whose private DER is given. Raises keyops.WrongWrappingKey when it does
        not open under that key and keyops.NotAPrivateKey when what it holds is no material of the
        family; the engine compares the material's spec with the key's."""
        ...

    @property
    def operations(self) -> Mapping[str, Operation]:
        """The KMS actions only this family's keys answer, by action name."""
        ...


def emulated(family: Family) -> EmulatedFamily:
    """The emulator's half of `family` (specs.FAMILIES)."""
    return family_implementation(FAMILIES[family].emulator, EmulatedFamily)  # type: ignore[type-abstract]


def unwrap(
    spec: KeySpec, algorithm: WrappingAlgorithm, wrapping_private_der: bytes, blob: bytes
) -> ImportedKey:
    """The material in an ImportKeyMaterial blob for a key of `spec`, unwrapped by its family."""
    return emulated(facts(spec).family).unwrap(spec, algorithm, wrapping_private_der, blob)


def operations() -> dict[str, Operation]:
    """Every action a family adds, by name. Two families' halves may be one object (the asymmetric
    families share theirs); two different halves that both name an action are a wrong table."""
    found: dict[str, tuple[Operation, Family]] = {}
    for family in FAMILIES:
        for action, operation in emulated(family).operations.items():
            if action in found and found[action][0] is not operation:
                raise TypeError(f"families {found[action][1]} and {family} both add action {action}")
            found.setdefault(action, (operation, family))
    return {action: operation for action, (operation, _) in found.items()}
