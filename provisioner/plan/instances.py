"""The KMS instances a plan creates keys in, checked against what the backend says of them: an
unknown instance id, or a protection level the instance does not offer, is a violation at plan
time rather than a failed CreateKey at apply.

`read_instances` is the only I/O (read-only calls); `instance_violations` is pure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from provisioner.backend.base import Kms
from provisioner.errors import BackendError
from provisioner.model import ManifestSet, ProtectionLevel
from provisioner.plan.values import Action, Plan, Violation, ViolationCode

#: GetKmsInstance's ProductType as the emulator and the local engine give it: the instance's kind.
#: The service's own ProductType names an edition, not a protection level: there it cannot tell.
_KINDS: Mapping[str, ProtectionLevel] = {
    "kms_ddi_software": ProtectionLevel.SOFTWARE,
    "kms_ddi_hardware": ProtectionLevel.HSM,
}


@dataclass(frozen=True)
class InstanceFacts:
    """The instance ids the backend lists, and the protection level of those it says."""

    known: frozenset[str]
    protection: Mapping[str, ProtectionLevel]


def read_instances(kms: Kms, wanted: Iterable[str]) -> InstanceFacts | None:
    """ListKmsInstances, and GetKmsInstance for each listed id in `wanted`; None when the backend
    does not answer them (no permission, an older service): then nothing is checked."""
    try:
        known = frozenset(kms.list_kms_instances())
        protection: dict[str, ProtectionLevel] = {}
        for instance_id in sorted(set(wanted) & known):
            kind = _KINDS.get(str(kms.get_kms_instance(instance_id).get("ProductType", "")))
            if kind is not None:
                protection[instance_id] = kind
    except BackendError:
        return None
    return InstanceFacts(known, protection)


def created_instances(plan: Plan, desired: ManifestSet) -> set[str]:
    """The instance ids of the keys the plan creates."""
    creating = {c.key for c in plan.changes if Action.CREATE in c.actions}
    return {k.instance for k in desired.keys if k.name in creating and k.instance}


def instance_violations(plan: Plan, desired: ManifestSet, facts: InstanceFacts) -> Plan:
    """The plan with a violation (`unsupported`, at the key's location) for each key it would create
    in an instance the backend does not list, or with a protection its instance does not offer."""
    creating = {c.key for c in plan.changes if Action.CREATE in c.actions}
    found: list[Violation] = []
    for key in desired.keys:
        if key.name not in creating or not key.instance:
            continue
        if key.instance not in facts.known:
            listed = ", ".join(sorted(facts.known)) or "none"
            found.append(
                Violation(
                    key.name,
                    ViolationCode.UNSUPPORTED,
                    f"instance {key.instance!r} is not a KMS instance of this backend (it lists: {listed}); "
                    f"CreateKey would fail: fix `instance` in the manifest",
                    key.location,
                )
            )
            continue
        native = facts.protection.get(key.instance)
        if native is not None and native is not key.protection:
            same = sorted(i for i, level in facts.protection.items() if level is key.protection)
            offers = f"an instance that offers {key.protection.value}"
            other = f"{offers} ({', '.join(same)})" if same else offers
            found.append(
                Violation(
                    key.name,
                    ViolationCode.UNSUPPORTED,
                    f"protection {key.protection.value} is not available in instance {key.instance!r}, "
                    f"which offers {native.value} only; CreateKey would fail: use protection: "
                    f"{native.value}, or {other}",
                    key.location,
                )
            )
    if not found:
        return plan
    violations = sorted({*plan.violations, *found}, key=lambda v: (v.key, v.code.value, v.message))
    return dataclasses.replace(plan, violations=tuple(violations))
