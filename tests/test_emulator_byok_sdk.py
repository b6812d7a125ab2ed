"""The BYOK acceptance flow through the official SDK, with material wrapped by the vendor guide's OpenSSL
step 3 commands run verbatim: import, public key, signatures, re-import rules, tokens, expiry.

The commands below are copied from `reference/alibaba-kms-import-asymmetric-key-material.txt`
("Example: encrypt an RSA_2048 private key with OpenSSL"); only the EC key generation is ours.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alibabacloud_kms20160120 import models as kms
from alibabacloud_kms20160120.client import Client
from alibabacloud_tea_openapi.exceptions import ClientException
from conftest import PROXY_VARIABLES, RunningEmulator
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from provisioner.emulator.models import KmsEngine
from provisioner.emulator.responses import KmsResponses
from provisioner.emulator.server import EmulatorConfig, EmulatorServer

pytestmark = pytest.mark.slow

WRAPPING_ALGORITHM = "RSAES_OAEP_SHA_256_AES_256_ECB_PKCS7_PAD"
SOFTWARE = "kst-local-software"

# Step 1 of the guide's example, verbatim (RSA_2048 target key).
GUIDE_STEP_1_RSA = """
openssl genrsa -out TakPrivPkcs1.pem 2048
openssl pkcs8 -topk8 -inform PEM -in TakPrivPkcs1.pem -outform der -nocrypt -out TakPrivPkcs8.bin
"""

# Our EC equivalent of step 1 (RFC 5915 key converted to PKCS #8 DER, as the guide requires).
EC_STEP_1 = """
openssl ecparam -name prime256v1 -genkey -noout -out TakPrivEc.pem
openssl pkcs8 -topk8 -inform PEM -in TakPrivEc.pem -outform der -nocrypt -out TakPrivPkcs8.bin
"""

# Steps 2 to 5 of the guide's example, verbatim.
GUIDE_STEPS_2_TO_5 = """
# Step 2: Generate an AES-256 ESK (32 bytes)
openssl rand -out EskAes256.bin 32

# Step 3: Encrypt the ESK with the IWK public key using RSAES-OAEP (SHA-256)
# Replace PublicKey.pem with the wrapping public key file you downloaded from the KMS console.
openssl pkeyutl -encrypt -pubin -inkey PublicKey.pem \\
  -in EskAes256.bin \\
  -pkeyopt rsa_padding_mode:oaep \\
  -pkeyopt rsa_oaep_md:sha256 \\
  -pkeyopt rsa_mgf1_md:sha256 \\
  -out CipherEsk.bin

# Step 4: Encrypt TAKpriv with the ESK using AES-256 ECB + PKCS #7 padding
xxd -l 32 -c 32 -ps EskAes256.bin | xargs -I {} openssl enc -aes-256-ecb -e -K {} \\
  -in TakPrivPkcs8.bin -nosalt -out CipherTakPriv.bin

# Step 5: Concatenate and Base64-encode the result
cat CipherEsk.bin CipherTakPriv.bin > EncryptedKeyMaterial.bin
openssl enc -e -base64 -A -in EncryptedKeyMaterial.bin -out EncryptedKeyMaterial_base64.txt
"""


def sh(script: str, cwd: Path) -> None:
    subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, check=True, capture_output=True)


@dataclass
class Material:
    """A target key made by OpenSSL in its own directory; wraps itself for any download."""

    workdir: Path

    @classmethod
    def generate(cls, workdir: Path, step_1: str) -> Material:
        workdir.mkdir(parents=True)
        sh(step_1, workdir)
        return cls(workdir)

    def public_der(self) -> bytes:
        private = serialization.load_der_private_key((self.workdir / "TakPrivPkcs8.bin").read_bytes(), None)
        return private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def wrap_for(self, wrapping_public_key_b64: str) -> str:
        """Run the guide's steps 2-5 against the downloaded wrapping public key."""
        der = base64.b64decode(wrapping_public_key_b64)
        pem = serialization.load_der_public_key(der).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (self.workdir / "PublicKey.pem").write_bytes(pem)
        sh(GUIDE_STEPS_2_TO_5, self.workdir)
        return (self.workdir / "EncryptedKeyMaterial_base64.txt").read_text().strip()


@dataclass(frozen=True)
class Download:
    public_key: str
    token: str


def create_key(client: Client, spec: str = "RSA_2048") -> str:
    resp = client.create_key(
        kms.CreateKeyRequest(
            key_spec=spec, key_usage="SIGN/VERIFY", origin="EXTERNAL", protection_level="SOFTWARE",
            dkmsinstance_id=SOFTWARE,
        )
    )
    key_id: str = resp.body.key_metadata.key_id
    return key_id


def download(client: Client, key_id: str) -> Download:
    body = client.get_parameters_for_import(
        kms.GetParametersForImportRequest(
            key_id=key_id, wrapping_key_spec="RSA_2048", wrapping_algorithm=WRAPPING_ALGORITHM
        )
    ).body
    return Download(body.public_key, body.import_token)


def import_material(client: Client, key_id: str, wrapped: str, token: str, expire_unix: int = 0) -> None:
    client.import_key_material(
        kms.ImportKeyMaterialRequest(
            key_id=key_id, encrypted_key_material=wrapped, import_token=token,
            key_material_expire_unix=expire_unix,
        )
    )


def describe(client: Client, key_id: str) -> kms.DescribeKeyResponseBodyKeyMetadata:
    return client.describe_key(kms.DescribeKeyRequest(key_id=key_id)).body.key_metadata


def public_key_der(client: Client, key_id: str) -> bytes:
    version = describe(client, key_id).primary_key_version
    request = kms.GetPublicKeyRequest(key_id=key_id, key_version_id=version)
    pem = client.get_public_key(request).body.public_key
    return serialization.load_pem_public_key(pem.encode("ascii")).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign(client: Client, key_id: str, algorithm: str, digest: bytes) -> bytes:
    version = describe(client, key_id).primary_key_version
    value = client.asymmetric_sign(
        kms.AsymmetricSignRequest(
            key_id=key_id, key_version_id=version, algorithm=algorithm,
            digest=base64.b64encode(digest).decode("ascii"),
        )
    ).body.value
    return base64.b64decode(value)


def verify_locally(public_der: bytes, algorithm: str, digest: bytes, signature: bytes) -> None:
    """Raises InvalidSignature unless `signature` is what the vendor returns for `algorithm`."""
    public = serialization.load_der_public_key(public_der)
    prehashed = Prehashed(hashes.SHA256())
    if algorithm == "ECDSA_SHA_256":
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(signature, digest, ec.ECDSA(prehashed))
        return
    assert isinstance(public, rsa.RSAPublicKey)
    if algorithm == "RSA_PKCS1_SHA_256":
        public.verify(signature, digest, padding.PKCS1v15(), prehashed)
    else:
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
        public.verify(signature, digest, pss, prehashed)


def imported_key(client: Client, material: Material, spec: str = "RSA_2048") -> str:
    key_id = create_key(client, spec)
    params = download(client, key_id)
    import_material(client, key_id, material.wrap_for(params.public_key), params.token)
    return key_id


@pytest.fixture(scope="module")
def rsa_material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return Material.generate(tmp_path_factory.mktemp("byok") / "rsa", GUIDE_STEP_1_RSA)


@pytest.fixture(scope="module")
def ec_material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return Material.generate(tmp_path_factory.mktemp("byok") / "ec", EC_STEP_1)


# -- acceptance ---------------------------------------------------------------------------------------


def test_rsa_import_enables_the_key_and_it_signs_with_the_material(
    emulator: RunningEmulator, rsa_material: Material
) -> None:
    client = emulator.sdk_client()
    key_id = create_key(client)
    assert describe(client, key_id).key_state == "PendingImport"
    params = download(client, key_id)

    import_material(client, key_id, rsa_material.wrap_for(params.public_key), params.token)

    meta = describe(client, key_id)
    assert (meta.key_state, meta.material_expire_time) == ("Enabled", "")
    assert public_key_der(client, key_id) == rsa_material.public_der()
    digest = hashlib.sha256(b"release 1.2.3").digest()
    for algorithm in ("RSA_PKCS1_SHA_256", "RSA_PSS_SHA_256"):
        signature = sign(client, key_id, algorithm, digest)
        verify_locally(rsa_material.public_der(), algorithm, digest, signature)
        verified = client.asymmetric_verify(
            kms.AsymmetricVerifyRequest(
                key_id=key_id, key_version_id=meta.primary_key_version, algorithm=algorithm,
                digest=base64.b64encode(digest).decode(), value=base64.b64encode(signature).decode(),
            )
        ).body.value
        assert verified is True


def test_ec_import_signs_der_ecdsa_with_v2_signed_calls(
    emulator: RunningEmulator, ec_material: Material
) -> None:
    client = emulator.sdk_client(signature_algorithm="v2")

    key_id = imported_key(client, ec_material, "EC_P256")

    assert describe(client, key_id).key_state == "Enabled"
    assert public_key_der(client, key_id) == ec_material.public_der()
    digest = hashlib.sha256(b"ec payload").digest()
    signature = sign(client, key_id, "ECDSA_SHA_256", digest)
    verify_locally(ec_material.public_der(), "ECDSA_SHA_256", digest, signature)


def test_different_material_is_refused_and_the_key_keeps_its_first(
    emulator: RunningEmulator, rsa_material: Material, tmp_path: Path
) -> None:
    client = emulator.sdk_client()
    key_id = imported_key(client, rsa_material)
    other = Material.generate(tmp_path / "other", GUIDE_STEP_1_RSA)
    params = download(client, key_id)

    with pytest.raises(ClientException) as info:
        import_material(client, key_id, other.wrap_for(params.public_key), params.token)

    assert (info.value.code, info.value.status_code) == ("InvalidKeyMaterial", 400)
    assert "only that material can be imported again" in info.value.data["Message"]
    assert describe(client, key_id).key_state == "Enabled"
    assert public_key_der(client, key_id) == rsa_material.public_der()


def test_deleted_material_returns_to_pending_import_and_same_material_restores(
    emulator: RunningEmulator, rsa_material: Material
) -> None:
    client = emulator.sdk_client()
    key_id = imported_key(client, rsa_material)

    client.delete_key_material(kms.DeleteKeyMaterialRequest(key_id=key_id))

    assert describe(client, key_id).key_state == "PendingImport"
    with pytest.raises(ClientException) as info:
        sign(client, key_id, "RSA_PKCS1_SHA_256", hashlib.sha256(b"x").digest())
    assert (info.value.code, info.value.status_code) == ("Rejected.PendingImport", 409)
    params = download(client, key_id)
    import_material(client, key_id, rsa_material.wrap_for(params.public_key), params.token)
    assert describe(client, key_id).key_state == "Enabled"
    assert public_key_der(client, key_id) == rsa_material.public_der()


def test_token_of_another_key_is_refused(emulator: RunningEmulator, rsa_material: Material) -> None:
    client = emulator.sdk_client()
    key_id = create_key(client)
    other_key = create_key(client)
    theirs = download(client, other_key)

    with pytest.raises(ClientException) as info:
        import_material(client, key_id, rsa_material.wrap_for(theirs.public_key), theirs.token)

    assert (info.value.code, info.value.status_code) == ("InvalidImportToken", 400)
    assert f"the import token was not issued for key {key_id}" in info.value.data["Message"]
    assert describe(client, key_id).key_state == "PendingImport"


def test_token_of_another_download_is_refused(emulator: RunningEmulator, rsa_material: Material) -> None:
    client = emulator.sdk_client()
    key_id = create_key(client)
    first = download(client, key_id)
    second = download(client, key_id)

    with pytest.raises(ClientException) as info:
        import_material(client, key_id, rsa_material.wrap_for(second.public_key), first.token)

    assert (info.value.code, info.value.status_code) == ("InvalidImportToken", 400)
    assert "not wrapped with the public key issued with this import token" in info.value.data["Message"]
    assert describe(client, key_id).key_state == "PendingImport"


# -- expiry, on an engine whose clock the test moves ------------------------------------------------------


class MovableClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clocked(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RunningEmulator, MovableClock]]:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    clock = MovableClock()
    engine = KmsEngine(None, clock=clock)
    server = EmulatorServer(EmulatorConfig(), responses=KmsResponses(engine))
    server.start()
    try:
        yield RunningEmulator(server), clock
    finally:
        server.shutdown()
        engine.close()


def test_expired_material_returns_to_pending_import_and_same_material_restores(
    clocked: tuple[RunningEmulator, MovableClock], rsa_material: Material
) -> None:
    emu, clock = clocked
    client = emu.sdk_client()
    key_id = create_key(client)
    params = download(client, key_id)
    expire = int((clock.now + timedelta(hours=1)).timestamp())
    import_material(client, key_id, rsa_material.wrap_for(params.public_key), params.token, expire)
    assert describe(client, key_id).key_state == "Enabled"

    clock.now += timedelta(hours=2)

    assert describe(client, key_id).key_state == "PendingImport"
    # The token lives 24 hours and may be reused; the same material brings the key back.
    import_material(client, key_id, rsa_material.wrap_for(params.public_key), params.token)
    meta = describe(client, key_id)
    assert (meta.key_state, meta.material_expire_time) == ("Enabled", "")


def test_material_expiry_in_the_past_is_refused(
    clocked: tuple[RunningEmulator, MovableClock], rsa_material: Material
) -> None:
    emu, clock = clocked
    client = emu.sdk_client()
    key_id = create_key(client)
    params = download(client, key_id)
    past = int((clock.now - timedelta(minutes=1)).timestamp())

    with pytest.raises(ClientException) as info:
        import_material(client, key_id, rsa_material.wrap_for(params.public_key), params.token, past)

    assert (info.value.code, info.value.status_code) == ("InvalidParameter", 400)
    assert "is earlier than the current time" in info.value.data["Message"]
    assert describe(client, key_id).key_state == "PendingImport"


def test_expired_import_token_is_refused(
    clocked: tuple[RunningEmulator, MovableClock], rsa_material: Material
) -> None:
    emu, clock = clocked
    client = emu.sdk_client()
    key_id = create_key(client)
    params = download(client, key_id)
    wrapped = rsa_material.wrap_for(params.public_key)

    clock.now += timedelta(hours=24, seconds=1)

    with pytest.raises(ClientException) as info:
        import_material(client, key_id, wrapped, params.token)
    assert (info.value.code, info.value.status_code) == ("ExpiredImportToken", 400)
    assert info.value.data["Message"] == "the import token has expired; get new import parameters"
