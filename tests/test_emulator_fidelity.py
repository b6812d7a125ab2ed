"""The emulator against the vendor's API reference, where a review found it diverging.

Each test cites the documented behaviour it pins (Alibaba Cloud KMS API 2016-01-20 reference pages).
"""

from __future__ import annotations

import pytest

from provisioner.emulator.models import KmsEngine


@pytest.mark.parametrize("spec", ["RSA_2048", "EC_P256", "EC_P256K"])
def test_create_key_without_usage_defaults_to_sign_verify(engine: KmsEngine, spec: str) -> None:
    """CreateKey: "If the key supports signing and verification, the default value is SIGN/VERIFY."
    Every asymmetric spec signs; the emulator used to default to ENCRYPT/DECRYPT."""
    key = engine.create_key(key_spec=spec, origin="EXTERNAL", instance_id="kst-local-software")

    assert key.usage.value == "SIGN/VERIFY"
    assert engine.describe_key(key.key_id).usage.value == "SIGN/VERIFY"
