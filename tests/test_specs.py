"""The spec table against the code that reads it: every KeySpec has a row, and each row's facts are
what material parsing, wrapping, the emulator and apply actually do."""

from __future__ import annotations

import ast
import base64
import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from emulator_support import HARDWARE, SOFTWARE, kms_error, material

import provisioner
from provisioner import wrapping
from provisioner.apply import READ_BACK
from provisioner.emulator import families, keyops, symmetric_ops
from provisioner.emulator.models import KmsEngine
from provisioner.errors import MaterialError
from provisioner.manifest import manifest_schema
from provisioner.material import parse_private_key, read_material, spec_of_spki
from provisioner.model import KeySpec, KeyUsage, MaterialFormat, ProtectionLevel, WrappingAlgorithm
from provisioner.specs import (
    FAMILIES,
    SPECS,
    WRAPPING,
    Family,
    MaterialKind,
    facts,
    family_implementation,
    importable_specs,
    material_kind,
    material_kinds,
    wrapping_key_specs,
)

ALL = list(KeySpec)
#: The specs of asymmetric material: the tests below that sign, wrap PKCS#8 or read public keys.
ASYMMETRIC = [s for s in KeySpec if not facts(s).symmetric]
DIGEST_B64 = base64.b64encode(hashlib.sha256(b"message").digest()).decode()
INSTANCES = {ProtectionLevel.SOFTWARE: SOFTWARE, ProtectionLevel.HSM: HARDWARE}
#: How each wrapping algorithm wraps a payload, without wrap()'s pairing check.
WRAP: dict[WrappingAlgorithm, Callable[[bytes, bytes], bytes]] = {
    WrappingAlgorithm.RSA_OAEP_AES_ECB: wrapping.wrap_rsa_aes,
    WrappingAlgorithm.SM2PKE_SM4_ECB: wrapping.wrap_sm2_sm4,
}


def test_every_key_spec_has_exactly_one_row() -> None:
    assert list(SPECS) == ALL
    assert all(row.spec is spec for spec, row in SPECS.items())


#: The vendor's facts, written out by hand (DESIGN section 3, the BYOK guide, kms-api-notes.md), so that
#: a wrong row fails here and not only in code that reads the same row.
VENDOR = {
    # spec: (family, bits or curve, protections, client wrapping, sign algorithms, encrypt algorithms)
    "RSA_2048": ("asymmetric-rsa", 2048, "SOFTWARE HSM", "RSAES_OAEP_SHA_256_AES_256_ECB_PKCS7_PAD",
                 "RSA_PSS_SHA_256 RSA_PKCS1_SHA_256", "RSAES_OAEP_SHA_1 RSAES_OAEP_SHA_256"),
    "RSA_3072": ("asymmetric-rsa", 3072, "SOFTWARE HSM", "RSAES_OAEP_SHA_256_AES_256_ECB_PKCS7_PAD",
                 "RSA_PSS_SHA_256 RSA_PKCS1_SHA_256", "RSAES_OAEP_SHA_1 RSAES_OAEP_SHA_256"),
    "RSA_4096": ("asymmetric-rsa", 4096, "HSM", "RSAES_OAEP_SHA_256_AES_256_ECB_PKCS7_PAD",
                 "RSA_PSS_SHA_256 RSA_PKCS1_SHA_256", "RSAES_OAEP_SHA_1 RSAES_OAEP_SHA_256"),
    "EC_P256": ("asymmetric-ec", "secp256r1", "SOFTWARE HSM", "RSAES_OAEP_SHA_256_AES_256_ECB_PKCS7_PAD",
                "ECDSA_SHA_256", ""),
    "EC_P256K": ("asymmetric-ec", "secp256k1", "SOFTWARE HSM", "RSAES_OAEP_SHA_256_AES_256_ECB_PKCS7_PAD",
                 "ECDSA_SHA_256", ""),
    "EC_SM2": ("asymmetric-sm2", "sm2", "HSM", "SM2PKE_SM4_ECB", "SM2DSA", "SM2PKE"),
}  # fmt: skip


@pytest.mark.parametrize("spec", ASYMMETRIC)
def test_row_says_what_the_vendor_says(spec: KeySpec) -> None:
    row = facts(spec)
    got = (
        row.family.value, row.bits or row.curve, " ".join(sorted(row.protections, reverse=True)),
        row.wrapping_algorithm.value, " ".join(row.sign_algorithms), " ".join(row.encrypt_algorithms),
    )  # fmt: skip
    assert got == VENDOR[spec.value]
    assert row.verification.value == "public key fingerprint"


def test_manifest_schema_lists_the_tables_specs() -> None:
    spec = manifest_schema()["$defs"]["key"]["properties"]["spec"]
    assert spec["enum"] == [s.value for s in SPECS]
    software, hsm_only = spec["description"].split("; HSM also ")

    def named(text: str) -> set[str]:
        return {s for s in spec["enum"] if re.search(rf"\b{s}\b", text)}

    soft, hsm = importable_specs(ProtectionLevel.SOFTWARE), importable_specs(ProtectionLevel.HSM)
    assert (named(software), named(hsm_only)) == (set(soft), set(hsm - soft))


@pytest.mark.parametrize("spec", ALL)
def test_row_is_consistent(spec: KeySpec) -> None:
    row = facts(spec)
    assert row.wrapping_algorithm in row.accepted_wrapping
    assert row.wrapping_key_spec in wrapping_key_specs()
    assert row.default_usage in row.usages
    assert row.protections
    assert (row.bits > 0) == (row.family is Family.RSA)
    assert (row.curve is None) == (row.family in (Family.RSA, Family.SYMMETRIC))
    assert (row.material_bytes > 0) == (row.family is Family.SYMMETRIC) == row.default_key
    assert READ_BACK[row.verification] is not None  # apply knows how to verify an import of it


@pytest.mark.parametrize("spec", ASYMMETRIC)
def test_material_of_a_spec_parses_back_to_that_spec(spec: KeySpec) -> None:
    m = material(spec)
    assert parse_private_key(m.pkcs8_der()).spec is spec
    assert spec_of_spki(m.public_key_der()) is spec


@pytest.mark.parametrize("spec", ASYMMETRIC)
def test_wrap_and_unwrap_round_trip_through_the_table(spec: KeySpec) -> None:
    row = facts(spec)
    m = material(spec)
    for algorithm in row.accepted_wrapping:
        private, public = keyops.new_wrapping_key(algorithm)
        assert wrapping.wrapping_key_spec(public) is algorithm.wrapping_key_spec
        if algorithm is row.wrapping_algorithm:
            blob = base64.b64decode(wrapping.wrap(m, public, algorithm))
        else:
            blob = WRAP[algorithm](public, m.import_payload(algorithm))
        unwrapped = families.unwrap(spec, algorithm, private, blob)
        assert (unwrapped.spec, unwrapped.fingerprint) == (spec, m.fingerprint), algorithm


@pytest.mark.parametrize("spec", ASYMMETRIC)
def test_wrap_refuses_every_algorithm_but_the_rows(spec: KeySpec) -> None:
    row = facts(spec)
    for algorithm in set(WrappingAlgorithm) - {row.wrapping_algorithm}:
        _, public = keyops.new_wrapping_key(algorithm)
        with pytest.raises(wrapping.WrappingError) as info:
            wrapping.wrap(material(spec), public, algorithm)
        assert str(info.value) == f"{spec} material is wrapped with {row.wrapping_algorithm}, not {algorithm}"


@pytest.mark.parametrize("protection", list(ProtectionLevel))
@pytest.mark.parametrize("spec", ASYMMETRIC)
def test_emulator_creates_exactly_the_tables_specs_by_protection(
    engine: KmsEngine, spec: KeySpec, protection: ProtectionLevel
) -> None:
    create = {"key_spec": spec.value, "origin": "EXTERNAL", "instance_id": INSTANCES[protection]}
    assert (spec in importable_specs(protection)) == (protection in facts(spec).protections)
    if protection in facts(spec).protections:
        key = engine.create_key(**create)
        assert (key.spec, key.protection, key.usage) == (spec, protection, facts(spec).default_usage)
    else:
        with kms_error("InvalidParameter", 400, f"KeySpec {spec} is only available in a hardware instance"):
            engine.create_key(**create)


def _key_id(engine: KmsEngine, spec: KeySpec, usage: KeyUsage = KeyUsage.SIGN_VERIFY) -> str:
    instance = INSTANCES[min(facts(spec).protections)]  # HSM sorts before SOFTWARE: either will do
    return engine.create_key(
        key_spec=spec.value, key_usage=usage.value, origin="EXTERNAL", instance_id=instance
    ).key_id


@pytest.mark.parametrize("spec", ASYMMETRIC)
def test_emulator_issues_import_parameters_for_exactly_the_accepted_algorithms(
    engine: KmsEngine, spec: KeySpec
) -> None:
    key_id = _key_id(engine, spec)
    for algorithm in WrappingAlgorithm:
        call = (key_id, algorithm.wrapping_key_spec.value, algorithm.value)
        if algorithm in facts(spec).accepted_wrapping:
            assert engine.get_parameters_for_import(*call).key_id == key_id
        else:
            with kms_error("InvalidParameter", 400, f"WrappingAlgorithm {algorithm} wraps "):
                engine.get_parameters_for_import(*call)


def _imported(engine: KmsEngine, spec: KeySpec, usage: KeyUsage) -> tuple[str, str]:
    """(key id, its version) of a new key of `spec` holding its material."""
    key_id = _key_id(engine, spec, usage)
    algorithm = facts(spec).wrapping_algorithm
    params = engine.get_parameters_for_import(key_id, algorithm.wrapping_key_spec.value, algorithm.value)
    blob = wrapping.wrap(material(spec), params.public_key_der, algorithm)
    engine.import_key_material(key_id, blob, params.import_token, 0)
    return key_id, engine.describe_key(key_id).primary_key_version


@pytest.mark.parametrize("spec", ASYMMETRIC)
def test_emulator_signs_with_exactly_the_tables_algorithms(engine: KmsEngine, spec: KeySpec) -> None:
    key_id, version = _imported(engine, spec, KeyUsage.SIGN_VERIFY)
    offered = {a for row in SPECS.values() for a in row.sign_algorithms}
    for algorithm in sorted(offered):
        if algorithm in facts(spec).sign_algorithms:
            _, signature = engine.asymmetric_sign(key_id, version, algorithm, DIGEST_B64)
            value = base64.b64encode(signature).decode()
            assert engine.asymmetric_verify(key_id, version, algorithm, DIGEST_B64, value)[1] is True
        else:
            with kms_error("InvalidParameter", 400, algorithm):
                engine.asymmetric_sign(key_id, version, algorithm, DIGEST_B64)


@pytest.mark.parametrize("spec", ASYMMETRIC)
def test_emulator_encrypts_with_exactly_the_tables_algorithms(engine: KmsEngine, spec: KeySpec) -> None:
    key_id, version = _imported(engine, spec, KeyUsage.ENCRYPT_DECRYPT)
    plaintext = base64.b64encode(b"secret data").decode()
    allowed = facts(spec).encrypt_algorithms
    if not allowed:
        with kms_error(
            "Rejected.UnsupportedOperation", 400, f"AsymmetricEncrypt is not supported for {spec} keys"
        ):
            engine.asymmetric_encrypt(key_id, version, "RSAES_OAEP_SHA_256", plaintext)
        return
    offered = {a for row in SPECS.values() for a in row.encrypt_algorithms}
    for algorithm in sorted(offered):
        if algorithm in allowed:
            _, ciphertext = engine.asymmetric_encrypt(key_id, version, algorithm, plaintext)
            back = base64.b64encode(ciphertext).decode()
            assert engine.asymmetric_decrypt(key_id, version, algorithm, back)[1] == b"secret data"
        else:
            with kms_error("InvalidParameter", 400, algorithm):
                engine.asymmetric_encrypt(key_id, version, algorithm, plaintext)


# --- the table is the only place that names a spec (issue 11, point 4) ------------------------------

PACKAGE = Path(provisioner.__file__).parent
#: Modules that may compare a Family member outside specs.py, and why: none.
FAMILY_BRANCH_ALLOWED: set[str] = set()


def _member(node: ast.expr, enum: str) -> str | None:
    """`enum.MEMBER` if `node` is that attribute (a member: upper case), else None."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == enum:
        return f"{enum}.{node.attr}" if node.attr.isupper() else None
    return None


def spec_branches(source: str) -> list[str]:
    """Every `KeySpec.<MEMBER>` and every comparison with a `Family.<MEMBER>` in `source`, as
    `line: text`: code outside the table that decides by naming a spec or a family."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and (name := _member(node, "KeySpec")):
            found.append((node.lineno, name))
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            found.extend((node.lineno, name) for side in sides if (name := _member(side, "Family")))
    return [f"{line}: {name}" for line, name in sorted(found)]


def test_spec_branches_finds_a_spec_named_or_a_family_compared() -> None:
    source = (
        "a = KeySpec.EC_SM2\n"
        "if row.family is Family.SM2: pass\n"
        "b = family_specs(Family.RSA)\n"  # a table look-up, not a branch
        "c = KeySpec(text)\n"
        "d = facts(spec).symmetric\n"
    )
    assert spec_branches(source) == ["1: KeySpec.EC_SM2", "2: Family.SM2"]


def test_no_module_but_the_table_names_a_spec_or_branches_on_a_family() -> None:
    offenders = {
        str(path.relative_to(PACKAGE)): hits
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "specs.py" and (hits := spec_branches(path.read_text()))
    }
    allowed = {name: hits for name, hits in offenders.items() if name in FAMILY_BRANCH_ALLOWED}
    assert {name: hits for name, hits in offenders.items() if name not in allowed} == {}
    assert all(hit.split(": ")[1].startswith("Family.") for hits in allowed.values() for hit in hits)


#: The vendor's wrapping algorithms (guide step 3, DESIGN section 13), written out by hand:
#: algorithm: (wrapping key spec, ephemeral key cipher or "" for direct, OAEP hash or "").
VENDOR_WRAPPING = {
    "RSAES_OAEP_SHA_256_AES_256_ECB_PKCS7_PAD": ("RSA_2048", "AES", "SHA-256"),
    "SM2PKE_SM4_ECB": ("EC_SM2", "SM4", ""),
    "RSAES_OAEP_SHA_256": ("RSA_2048", "", "SHA-256"),
    "RSAES_PKCS1_V1_5": ("RSA_2048", "", ""),
    "RSAES_OAEP_SHA_1": ("RSA_2048", "", "SHA-1"),
    "SM2PKE": ("EC_SM2", "", ""),
}


@pytest.mark.parametrize("algorithm", list(WrappingAlgorithm))
def test_wrapping_row_says_what_the_vendor_says(algorithm: WrappingAlgorithm) -> None:
    row = WRAPPING[algorithm]
    got = (row.wrapping_key_spec.value, row.esk_cipher or "", row.oaep_hash or "")
    assert got == VENDOR_WRAPPING[algorithm.value]
    assert algorithm.wrapping_key_spec is row.wrapping_key_spec
    # Wrapped directly (DIRECT_ALGORITHMS) or through an ephemeral key, never neither.
    assert (algorithm in wrapping.DIRECT_ALGORITHMS) == row.direct


def test_every_family_has_its_two_halves_and_every_row_its_primitives() -> None:
    assert list(FAMILIES) == list(Family)
    for family in Family:
        assert isinstance(material_kind(family), MaterialKind), family
        assert isinstance(families.emulated(family), families.EmulatedFamily), family
    asymmetric = {facts(s).family for s in ASYMMETRIC}
    assert set(keyops.PRIMITIVES) == asymmetric
    for spec in KeySpec:
        row = facts(spec)
        assert (row.cipher is not None) == row.symmetric == (row.family not in keyops.PRIMITIVES)


def test_asymmetric_encrypt_plaintext_limits() -> None:
    """RSA-OAEP leaves k - 2h - 2 bytes of a k-byte modulus; SM2PKE has a fixed (inferred) cap."""
    limits = {
        (s, a): facts(s).max_encrypt_plaintext(a) for s in ASYMMETRIC for a in facts(s).encrypt_algorithms
    }
    assert limits == {
        (KeySpec.RSA_2048, "RSAES_OAEP_SHA_1"): 214, (KeySpec.RSA_2048, "RSAES_OAEP_SHA_256"): 190,
        (KeySpec.RSA_3072, "RSAES_OAEP_SHA_1"): 342, (KeySpec.RSA_3072, "RSAES_OAEP_SHA_256"): 318,
        (KeySpec.RSA_4096, "RSAES_OAEP_SHA_1"): 470, (KeySpec.RSA_4096, "RSAES_OAEP_SHA_256"): 446,
        (KeySpec.EC_SM2, "SM2PKE"): 6047,
    }  # fmt: skip


@pytest.mark.parametrize("spec", ALL)
def test_read_material_reads_each_spec_through_its_familys_reader(spec: KeySpec) -> None:
    row = facts(spec)
    if row.symmetric:
        data, fmt = bytes(range(row.material_bytes)).hex().encode(), MaterialFormat.HEX
    else:
        data, fmt = material(spec).pkcs8_der(), None
    read = read_material(data, fmt, spec, None)
    try:
        assert read.spec is spec
    finally:
        read.wipe()


def test_read_material_refuses_a_symmetric_source_of_the_wrong_length() -> None:
    with pytest.raises(MaterialError) as info:
        read_material(b"00" * 31, MaterialFormat.HEX, KeySpec.AES_256, None)
    assert str(info.value) == "Aliyun_AES_256 material is 32 bytes; the source holds 31 (hex)"


def test_emulator_encrypts_symmetrically_with_the_rows_cipher() -> None:
    """SM4 and AES are told apart by SpecFacts.cipher: a blob of one opens under the other's row never."""
    secret = bytes(range(16))
    version = "0" * symmetric_ops.VERSION_ID_BYTES
    sm4 = keyops.ImportedKey(KeySpec.SM4, secret, symmetric_ops.binding_digest(secret), "kcv:0")
    blob = symmetric_ops.seal(sm4, "key-1", version, b"plaintext", b"")
    assert symmetric_ops.unseal(sm4, blob, b"") == b"plaintext"
    as_aes = keyops.ImportedKey(KeySpec.AES_256, secret, sm4.public_key_der, "kcv:0")
    with pytest.raises(keyops.CryptoFailure) as info:
        symmetric_ops.unseal(as_aes, blob, b"")
    assert str(info.value) == "it does not decrypt under this key (damaged, or another encryption context)"


def test_a_wrong_family_entry_fails_on_first_use_saying_which() -> None:
    with pytest.raises(TypeError) as info:
        family_implementation("provisioner.model:KCV_PREFIX", MaterialKind)  # type: ignore[type-abstract]
    assert str(info.value) == "FAMILIES entry provisioner.model:KCV_PREFIX is a str, not a MaterialKind"


# --- a family's code lives in its own two modules (issue 11, point 4) --------------------------------


def _module_file(ref: str) -> str:
    """The package-relative file of a FAMILIES entry's module: provisioner/symmetric.py."""
    return ref.partition(":")[0].replace(".", "/") + ".py"


def _imports(source: str, package: str = "provisioner") -> set[str]:
    """Every module `source` (a module of `package`) imports, relative imports resolved, with each
    name imported from a package as a module of it too (`from provisioner.emulator import
    symmetric_ops` imports provisioner.emulator.symmetric_ops)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[: len(parts) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _names_member(source: str, family: Family) -> bool:
    """`Family.NAME`, or the name or value as a string (`Family("symmetric")`, `Family["SYMMETRIC"]`)."""
    nodes = list(ast.walk(ast.parse(source)))
    member = f"Family.{family.name}"
    named = any(isinstance(node, ast.Attribute) and _member(node, "Family") == member for node in nodes)
    return named or bool({family.name, family.value} & _strings(source))


def _strings(source: str) -> set[str]:
    nodes = ast.walk(ast.parse(source))
    return {n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)}


#: The files a family's own code may live in besides its two modules: the tables (specs.py, the enums of
#: model.py, the manifest schema). With the family's two modules, that is the five files the symmetric
#: specs take (issue 11, point 4).
TABLE_FILES = {"provisioner/specs.py", "provisioner/model.py", "provisioner/schemas/manifest.schema.json"}


def _modules(family: Family) -> set[str]:
    return {ref.partition(":")[0] for ref in (FAMILIES[family].material, FAMILIES[family].emulator)}


#: The families with modules of their own (the asymmetric ones share the first edition's core modules).
OWN_MODULES = [f for f in Family if not any(_modules(f) & _modules(o) for o in Family if o is not f)]


def test_the_symmetric_family_has_modules_of_its_own() -> None:
    assert OWN_MODULES == [Family.SYMMETRIC]


@pytest.mark.parametrize("family", OWN_MODULES)
def test_a_familys_code_is_named_only_by_its_own_modules_and_the_tables(family: Family) -> None:
    """No module imports a family's modules (they are loaded through specs.FAMILIES), names its Family
    member, or spells an action only its keys answer: the family's code is its two modules and its
    rows in the tables, and nothing else."""
    row = FAMILIES[family]
    own = {_module_file(row.material), _module_file(row.emulator)}
    own_modules = _modules(family)
    actions = set(families.emulated(family).operations)
    assert actions  # the symmetric family's Encrypt, Decrypt, GenerateDataKey: the guard has words to find
    offenders: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = str(path.relative_to(PACKAGE.parent))
        if name in own or name in TABLE_FILES:
            continue
        source = path.read_text()
        package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
        hits = sorted(own_modules & _imports(source, package))
        if _names_member(source, family):
            hits.append(f"Family.{family.name}")
        # An action only its keys answer, or its modules by name (importlib.import_module("...")).
        hits.extend(sorted((actions | own_modules) & _strings(source)))
        if hits:
            offenders[name] = hits
    assert offenders == {}


def test_the_family_guard_finds_an_import_a_member_and_an_action() -> None:
    source = (
        "from provisioner.emulator import symmetric_ops\n"
        "import provisioner.symmetric\n"
        "x = Family.SYMMETRIC\n"
        "call('GenerateDataKey')\n"
    )
    assert {"provisioner.emulator.symmetric_ops", "provisioner.symmetric"} <= _imports(source)
    assert _names_member(source, Family.SYMMETRIC)
    assert "GenerateDataKey" in _strings(source)
    relative = "from . import symmetric_ops\nfrom ..symmetric import KIND\n"
    assert {"provisioner.emulator.symmetric_ops", "provisioner.symmetric"} <= _imports(
        relative, "provisioner.emulator"
    )
    assert "provisioner.symmetric" in _imports("from .symmetric import KIND\n", "provisioner")
    assert _names_member('Family("symmetric")', Family.SYMMETRIC)
    assert _names_member('Family["SYMMETRIC"]', Family.SYMMETRIC)
    assert not _names_member("Family.RSA", Family.SYMMETRIC)


def test_every_kind_reads_and_checks_through_one_interface() -> None:
    """read_formatted asks only the kinds that take `format`; the private-key kind refuses a format."""
    kinds = material_kinds()
    takes_format = {f for f, k in kinds.items() if "format" in k.fields}
    assert takes_format == {row.family for row in SPECS.values() if row.material_bytes}
    with pytest.raises(MaterialError) as info:
        material_kind(facts(ASYMMETRIC[0]).family).read_formatted(b"00", MaterialFormat.HEX)
    assert str(info.value) == "a private key is read as PEM or DER, not as format hex"
