"""Shared helpers for the emulator engine and RPC tests: a settable clock, fresh material per spec,
a one-call 'create a key and import this material', and the expected-KmsError context."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from provisioner import sm2, wrapping
from provisioner.emulator.models import Key, KmsEngine, KmsError
from provisioner.material import PrivateMaterial
from provisioner.model import KeySpec, ProtectionLevel
from provisioner.specs import Family, facts

START = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
SOFTWARE = "kst-local-software"
HARDWARE = "kst-local-hardware"


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


@contextmanager
def kms_error(code: str, status: int, message: str) -> Iterator[None]:
    """Expect a KmsError with this code, status, and `message` somewhere in its message."""
    with pytest.raises(KmsError) as info:
        yield
    assert (info.value.code, info.value.status) == (code, status)
    assert message in info.value.message, info.value.message


def new_material(spec: KeySpec) -> PrivateMaterial:
    row = facts(spec)
    if row.family is Family.SM2:
        return PrivateMaterial(sm2.generate_private_key(), spec)
    if row.family is Family.RSA:
        return PrivateMaterial(rsa.generate_private_key(65537, row.bits), spec)
    curve: ec.EllipticCurve = getattr(ec, (row.curve or "").upper())()  # secp256r1: ec.SECP256R1
    return PrivateMaterial(ec.generate_private_key(curve), spec)


@functools.cache
def material(spec: KeySpec, n: int = 0) -> PrivateMaterial:
    """The n-th cached material of a spec (RSA_4096 is slow to generate: make each once)."""
    return new_material(spec)


def instance_for(spec: KeySpec) -> str:
    return SOFTWARE if ProtectionLevel.SOFTWARE in facts(spec).protections else HARDWARE


def create(engine: KmsEngine, spec: KeySpec = KeySpec.RSA_2048, usage: str = "SIGN/VERIFY") -> Key:
    return engine.create_key(
        key_spec=spec.value, key_usage=usage, origin="EXTERNAL", instance_id=instance_for(spec)
    )


def wrap_for(engine: KmsEngine, key_id: str, m: PrivateMaterial) -> tuple[str, str]:
    """(EncryptedKeyMaterial, ImportToken) from a fresh GetParametersForImport for this material."""
    algorithm = facts(m.spec).wrapping_algorithm
    params = engine.get_parameters_for_import(key_id, algorithm.wrapping_key_spec.value, algorithm.value)
    return wrapping.wrap(m, params.public_key_der, algorithm), params.import_token


def imported(
    engine: KmsEngine, spec: KeySpec = KeySpec.RSA_2048, usage: str = "SIGN/VERIFY", expire: int = 0
) -> tuple[Key, PrivateMaterial]:
    key = create(engine, spec, usage)
    m = material(spec)
    blob, token = wrap_for(engine, key.key_id, m)
    engine.import_key_material(key.key_id, blob, token, expire)
    return engine.describe_key(key.key_id), m
