"""Private key material: read it from its source, parse any common encoding, fingerprint it.

Plaintext keys live only inside `PrivateMaterial`, whose repr is its fingerprint. Nothing here
prints or logs; errors name the source and what was wrong, never the bytes. Warnings go to a
callback the caller passes in (the CLI prints them).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import selectors
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from provisioner import _der, sm2
from provisioner.errors import MaterialError
from provisioner.files import InputFileError, read_regular_file
from provisioner.hardening import disable_core_dumps
from provisioner.model import KeySpec, MaterialFormat, MaterialSource, ProtectionLevel, SourceKind
from provisioner.private_key import (
    NOT_A_KEY_MESSAGE,
    PUBLIC_KEY_MESSAGE,
    classify,
    load_der,
    parse_der,
)
from provisioner.private_key import PrivateMaterial as PrivateMaterial
from provisioner.private_key import fingerprint_of_spki as fingerprint_of_spki
from provisioner.specs import (
    FieldProblem,
    Material,
    MaterialReader,
    curve_spec,
    ec_spec,
    facts,
    material_kind,
    material_kinds,
    rsa_spec,
)
from provisioner.trust import ALLOW_COMMANDS_VARIABLE, COMMAND_BASE_ENV, commands_allowed, never_readable_rule

COMMAND_TIMEOUT_SECONDS = 30.0
MAX_KEY_FILE_BYTES = 1 << 20  # an RSA_4096 PEM is about 3 KiB: anything this big is a wrong path
MAX_COMMAND_OUTPUT_BYTES = MAX_KEY_FILE_BYTES
FINGERPRINT_RE = re.compile(r"sha256:[0-9a-f]{64}")

Warn = Callable[[str], None]

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)
_BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/=\s]+")


# --- parsing -----------------------------------------------------------------------------------


def _is_encrypted_pkcs8(der: bytes) -> bool:
    try:
        parts = _der.children(_der.read_single(der, _der.SEQUENCE).content)
    except ValueError:
        return False
    return (
        len(parts) == 2
        and parts[0].tag == _der.SEQUENCE
        and parts[1].tag == _der.OCTET_STRING
        and bool(_der.children(parts[0].content))
        and _der.children(parts[0].content)[0].tag == _der.OID
    )


_NEEDS_PASSPHRASE = (
    "the private key is encrypted and no passphrase was given: name the environment variable that holds "
    "it (material.passphrase_env in a manifest, --passphrase-env VAR on the command line)"
)
_BAD_PASSPHRASE = "the private key does not decrypt with the given passphrase"
_GARBAGE = NOT_A_KEY_MESSAGE
_PUBLIC = PUBLIC_KEY_MESSAGE


def _parse_der(der: bytes, passphrase: bytes | None) -> PrivateMaterial:
    # An EncryptedPrivateKeyInfo starts with a SEQUENCE, never with the INTEGER of an SM2 key.
    if _is_encrypted_pkcs8(der):
        if passphrase is None:
            raise MaterialError(_NEEDS_PASSPHRASE)
        try:
            return classify(load_der(der, passphrase))
        except UnsupportedAlgorithm:
            # cryptography decrypted it but does not know the curve (SM2): decrypt it ourselves.
            plain = _decrypt_pbes2(der, passphrase)
            return _parse_der(plain, None)
        except ValueError:
            raise MaterialError(_BAD_PASSPHRASE) from None
    return parse_der(der)


def _parse_pem(data: bytes, passphrase: bytes | None) -> PrivateMaterial:
    blocks = list(_PEM_BLOCK.finditer(data))
    private = [b for b in blocks if b.group(1).endswith(b"PRIVATE KEY")]
    if not private:
        if any(b.group(1) in (b"PUBLIC KEY", b"RSA PUBLIC KEY", b"CERTIFICATE") for b in blocks):
            raise MaterialError(_PUBLIC)
        raise MaterialError(_GARBAGE)
    if len(private) > 1:
        raise MaterialError("holds more than one private key; give one key per source")
    block = private[0]
    body = block.group(2)
    if b"Proc-Type:" in body:
        return _parse_legacy_encrypted_pem(block.group(0), body, passphrase)
    try:
        der = base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise MaterialError(f"the {block.group(1).decode()} PEM block is not valid base64") from None
    return _parse_der(der, passphrase)


def _parse_legacy_encrypted_pem(
    pem: bytes, body: bytes, passphrase: bytes | None
) -> PrivateMaterial:
    """OpenSSL's traditional encrypted PEM (Proc-Type: 4,ENCRYPTED; DEK-Info)."""
    if passphrase is None:
        raise MaterialError(_NEEDS_PASSPHRASE)
    if _LEGACY_AES.search(body):
        # Decrypted here rather than by cryptography, which does not know the SM2 label or curve.
        plain = _decrypt_legacy_pem(body, passphrase)
        try:
            return _parse_der(plain, None)
        except MaterialError:
            # Wrong passphrases sometimes leave valid-looking padding over garbage.
            raise MaterialError(_BAD_PASSPHRASE) from None
    try:
        key = serialization.load_pem_private_key(pem, passphrase, unsafe_skip_rsa_key_validation=True)
        return classify(key)
    except UnsupportedAlgorithm as e:
        raise MaterialError(f"unsupported encrypted key: {e}") from None
    except (ValueError, TypeError):
        raise MaterialError(_BAD_PASSPHRASE) from None


def parse_private_key(data: bytes, passphrase: bytes | None = None) -> PrivateMaterial:
    """One private key from PEM, DER or base64 DER text: PKCS#1, SEC1 or PKCS#8, maybe encrypted."""
    if not data.strip():
        raise MaterialError("is empty")
    if b"-----BEGIN " in data:
        return _parse_pem(data, passphrase)
    if _BASE64_TEXT.fullmatch(data):
        try:
            data = base64.b64decode(b"".join(data.split()), validate=True)
        except (binascii.Error, ValueError):
            raise MaterialError(_GARBAGE) from None
    return _parse_der(data, passphrase)


# --- hand decryption where cryptography refuses the curve (SM2) ---------------------------------

_PRF: dict[str, hashes.HashAlgorithm] = {
    "1.2.840.113549.2.7": hashes.SHA1(),
    "1.2.840.113549.2.9": hashes.SHA256(),
    "1.2.840.113549.2.10": hashes.SHA384(),
    "1.2.840.113549.2.11": hashes.SHA512(),
}
_AES_CBC = {"2.16.840.1.101.3.4.1.2": 16, "2.16.840.1.101.3.4.1.22": 24, "2.16.840.1.101.3.4.1.42": 32}
_LEGACY_AES = re.compile(rb"DEK-Info:\s*AES-(128|192|256)-CBC,([0-9A-Fa-f]{32})")
_OID_PBES2 = "1.2.840.113549.1.5.13"
_OID_PBKDF2 = "1.2.840.113549.1.5.12"


def _unpad(padded: bytes) -> bytes:
    count = padded[-1] if padded else 0
    if not 1 <= count <= 16 or padded[-count:] != bytes([count]) * count:
        raise MaterialError(_BAD_PASSPHRASE)
    return padded[:-count]


def _aes_cbc_decrypt(key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    if len(iv) != 16 or not ciphertext or len(ciphertext) % 16:
        raise MaterialError("encrypted private key has a malformed AES-CBC payload")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return _unpad(decryptor.update(ciphertext) + decryptor.finalize())


def _decrypt_pbes2(der: bytes, passphrase: bytes) -> bytes:
    """EncryptedPrivateKeyInfo with PBES2 = PBKDF2-HMAC-SHA* + AES-CBC (what OpenSSL 3 writes)."""
    unsupported = "encrypted SM2 private key uses a scheme other than PBES2 with PBKDF2 and AES-CBC"
    try:
        algorithm, payload = _der.children(_der.read_single(der, _der.SEQUENCE).content)
        scheme, params = _der.children(algorithm.content)
        if _der.decode_oid(scheme) != _OID_PBES2:
            raise MaterialError(unsupported)
        kdf, enc = _der.children(params.content)
        kdf_oid, kdf_params = _der.children(kdf.content)
        if _der.decode_oid(kdf_oid) != _OID_PBKDF2:
            raise MaterialError(unsupported)
        fields = _der.children(kdf_params.content)
        salt, iterations = fields[0].content, _der.decode_integer(fields[1])
        prf_oid = "1.2.840.113549.2.7"
        for extra in fields[2:]:
            if extra.tag == _der.SEQUENCE:
                prf_oid = _der.decode_oid(_der.children(extra.content)[0])
        enc_oid, iv = _der.children(enc.content)
        key_size = _AES_CBC.get(_der.decode_oid(enc_oid))
        prf = _PRF.get(prf_oid)
        if key_size is None or prf is None:
            raise MaterialError(unsupported)
    except ValueError:
        raise MaterialError("malformed encrypted private key") from None
    key = PBKDF2HMAC(algorithm=prf, length=key_size, salt=salt, iterations=iterations).derive(passphrase)
    return _aes_cbc_decrypt(key, iv.content, payload.content)


def _decrypt_legacy_pem(body: bytes, passphrase: bytes) -> bytes:
    """Traditional PEM encryption: key = EVP_BytesToKey(MD5, salt = IV[:8], one round)."""
    headers, _, b64 = body.partition(b"\n\n") if b"\n\n" in body else body.partition(b"\r\n\r\n")
    match = _LEGACY_AES.search(headers)
    if not match:
        raise MaterialError("encrypted SM2 PEM uses a cipher other than AES-CBC")
    key_size = int(match.group(1)) // 8
    iv = bytes.fromhex(match.group(2).decode())
    key = b""
    block = b""
    while len(key) < key_size:
        # MD5 here is OpenSSL's legacy PEM key derivation, not a choice of ours.
        block = hashlib.md5(block + passphrase + iv[:8], usedforsecurity=False).digest()
        key += block
    try:
        ciphertext = base64.b64decode(b"".join(b64.split()), validate=True)
    except (binascii.Error, ValueError):
        raise MaterialError("encrypted PEM body is not valid base64") from None
    return _aes_cbc_decrypt(key[:key_size], iv, ciphertext)


# --- sources -----------------------------------------------------------------------------------


def _passphrase(source: MaterialSource, env: Mapping[str, str]) -> bytes | None:
    if source.passphrase_env is None:
        return None
    value = env.get(source.passphrase_env)
    if value is None:
        raise MaterialError(
            f"{source.describe()}: passphrase environment variable {source.passphrase_env} is not set"
        )
    return value.encode()


def _read_file(source: MaterialSource) -> tuple[bytes, int]:
    """The file's bytes and its permission bits."""
    assert source.file is not None
    try:
        data = read_regular_file(source.file, "file", MAX_KEY_FILE_BYTES)
        mode = stat.S_IMODE(source.file.stat().st_mode)
    except InputFileError as e:
        raise MaterialError(f"{source.describe()}: {e.reason}") from None
    except OSError as e:
        raise MaterialError(f"{source.describe()}: cannot read: {e.strerror}") from None
    return data, mode


def _commands_refusal(env: Mapping[str, str]) -> str:
    hint = ""
    if ALLOW_COMMANDS_VARIABLE in env:
        # Its value is not shown: it is a value read from the environment.
        hint = f" ({ALLOW_COMMANDS_VARIABLE} is set, but only the exact value 1 allows commands)"
    return (
        "command sources run a program and are refused unless allowed from outside the manifests: "
        f"pass --allow-commands or set {ALLOW_COMMANDS_VARIABLE}=1{hint}"
    )


def pass_env_refusal(
    name: str, env: Mapping[str, str], material_names: frozenset[str] = frozenset()
) -> str | None:
    """Why `material.pass_env` may not hand `name` to a command (None: it may). Never the value."""
    rule = never_readable_rule(name, env)
    if rule is not None:
        return rule
    if name in material_names:
        return "it is named as a material source (env or passphrase_env) in the manifests"
    return None


def command_environment(source: MaterialSource, env: Mapping[str, str]) -> dict[str, str]:
    """PATH, HOME, LANG and the source's `pass_env` names, those that are set; nothing else."""
    out = {name: env[name] for name in COMMAND_BASE_ENV if name in env}
    for name in source.pass_env:
        refusal = pass_env_refusal(name, env)
        if refusal is not None:
            raise MaterialError(f"{source.describe()}: pass_env {name}: {refusal}")
        if name in env:
            out[name] = env[name]
    return out


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    # The command runs in a session of its own: kill what it started as well, which may hold the pipe.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    except AttributeError:  # pragma: no cover - no process groups (Windows)
        process.kill()
    process.wait()


def _exit_words(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


def _run_command(source: MaterialSource, env: Mapping[str, str]) -> bytes:
    """The command's standard output, at most MAX_COMMAND_OUTPUT_BYTES, within the timeout.

    Its standard error goes nowhere: a tool may print the key or a token there, and a CI log keeps
    everything; a failure reports its exit status (or signal) only."""
    argv = list(source.command)
    if not argv:
        raise MaterialError("material command is empty")
    for i, arg in enumerate(argv):
        if "\0" in arg:
            # Checked here: subprocess raises ValueError, and a NUL cannot reach a program anyway.
            raise MaterialError(
                f"material command: argument {i + 1} holds a NUL character, which no program can take"
            )
    environment = command_environment(source, env)
    try:
        # No shell: the argv is run as written, so nothing in it is interpreted.
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=environment,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise MaterialError(f"{source.describe()}: program {argv[0]} not found") from None
    except PermissionError:
        raise MaterialError(f"{source.describe()}: program {argv[0]} is not executable") from None
    except OSError as e:
        raise MaterialError(f"{source.describe()}: cannot run {argv[0]}: {e.strerror or e}") from None
    deadline = time.monotonic() + COMMAND_TIMEOUT_SECONDS
    timed_out = f"{source.describe()}: timed out after {COMMAND_TIMEOUT_SECONDS:g} seconds"
    assert process.stdout is not None
    chunks: list[bytes] = []
    size = 0
    with process.stdout, selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                _kill_group(process)
                raise MaterialError(timed_out)
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_COMMAND_OUTPUT_BYTES:
                _kill_group(process)
                raise MaterialError(
                    f"{source.describe()}: printed more than {MAX_COMMAND_OUTPUT_BYTES} bytes; "
                    "a private key is a few KiB"
                )
            chunks.append(chunk)
    try:
        returncode = process.wait(timeout=max(deadline - time.monotonic(), 0.01))
    except subprocess.TimeoutExpired:
        _kill_group(process)
        raise MaterialError(timed_out) from None
    if returncode != 0:
        raise MaterialError(
            f"{source.describe()}: {_exit_words(returncode)} (its standard error is not shown)"
        )
    return b"".join(chunks)


def _read_source(
    source: MaterialSource, env: Mapping[str, str], allow_commands: bool
) -> tuple[bytes, int]:
    """The source's bytes, and the file mode for a file source (0 otherwise)."""
    if source.kind is SourceKind.FILE:
        return _read_file(source)
    if source.kind is SourceKind.ENV:
        assert source.env is not None
        value = env.get(source.env)
        if value is None:
            raise MaterialError(f"{source.describe()}: is not set")
        if not value.strip():
            raise MaterialError(f"{source.describe()}: is empty")
        return value.encode(), 0
    if not allow_commands:
        raise MaterialError(f"{source.describe()}: {_commands_refusal(env)}")
    return _run_command(source, env), 0


_M = TypeVar("_M", bound=Material)


def load_material(
    source: MaterialSource,
    *,
    environ: Mapping[str, str] | None = None,
    warn: Warn | None = None,
    allow_commands: bool | None = None,
    on_read: Callable[[bytes], None] | None = None,
) -> PrivateMaterial:
    """Read and parse a source's private key. `environ` defaults to os.environ (a command gets
    only PATH, HOME, LANG and its pass_env names from it); `warn` receives non-fatal findings.
    `allow_commands`: the --allow-commands flag; None leaves it to PROVISION_ALLOW_COMMANDS=1.
    `on_read` receives the source's bytes as read, so a caller that scans for them reads once."""
    return _load(
        source, lambda data, fmt, passphrase: parse_private_key(data, passphrase),
        environ, warn, allow_commands, on_read,
    )  # fmt: skip


def _load(
    source: MaterialSource, read: Callable[[bytes, MaterialFormat | None, bytes | None], _M],
    environ: Mapping[str, str] | None, warn: Warn | None, allow_commands: bool | None,
    on_read: Callable[[bytes], None] | None,
) -> _M:  # fmt: skip
    disable_core_dumps()
    env: Mapping[str, str] = os.environ if environ is None else environ
    passphrase = _passphrase(source, env)
    data, mode = _read_source(source, env, commands_allowed(bool(allow_commands), env))
    if on_read is not None:
        on_read(data)
    try:
        material = read(data, source.format, passphrase)
    except MaterialError as e:
        raise MaterialError(f"{source.describe()}: {e}") from None
    # Warned only once the source is known to hold material: a loose public key is no risk.
    _warn_mode(source, mode, warn)
    return material


def _warn_mode(source: MaterialSource, mode: int, warn: Warn | None) -> None:
    if mode & 0o077 and warn is not None:
        warn(
            f"{source.describe()}: key file is readable by group or others "
            f"(mode {mode:04o}); run chmod 600 on it"
        )


def _read_private_key(
    data: bytes, fmt: MaterialFormat | None, spec: KeySpec, passphrase: bytes | None
) -> PrivateMaterial:
    """Asymmetric material: a private key in PEM, DER or base64 DER, whatever `spec` (checked after)."""
    return parse_private_key(data, passphrase)


class _PrivateKeyKind:
    """The client half of the asymmetric families (specs.MaterialKind): a private key in PEM, DER or
    base64 DER, pinned by the SHA-256 of its public key; no material field of its own."""

    fields: tuple[str, ...] = ()

    @property
    def read(self) -> MaterialReader:
        return _read_private_key

    def read_formatted(self, data: bytes, fmt: MaterialFormat) -> Material:
        raise MaterialError(f"a private key is read as PEM or DER, not as format {fmt}")

    def check_source(
        self, block: Mapping[str, Any], spec: KeySpec, protection: ProtectionLevel, on_instance: bool,
        source: MaterialSource,
    ) -> tuple[MaterialSource, tuple[FieldProblem, ...]]:
        pin = source.fingerprint
        if pin is not None and not pin.startswith("sha256:"):
            message = f"a {spec} key is pinned by its public key: sha256:<64 hex>, not {pin}"
            return source, (FieldProblem("fingerprint", message),)
        return source, ()


#: Named by specs.FAMILIES for the RSA, EC and SM2 families.
PRIVATE_KEY = _PrivateKeyKind()


def read_material(
    data: bytes, fmt: MaterialFormat | None, spec: KeySpec, passphrase: bytes | None
) -> Material:
    """`spec` material from a source's bytes, read by its family's kind (specs.FAMILIES)."""
    return material_kind(facts(spec).family).read(data, fmt, spec, passphrase)


def read_formatted(data: bytes, fmt: MaterialFormat) -> Material:
    """Material of whichever spec the bytes make in `fmt` (`wrap` and `fingerprint` with
    --material-format), read by the kinds that take material `format`: the first one's error if no
    kind reads it."""
    errors: list[MaterialError] = []
    for kind in {id(k): k for k in material_kinds().values() if "format" in k.fields}.values():
        try:
            return kind.read_formatted(data, fmt)
        except MaterialError as e:
            errors.append(e)
    raise errors[0] if errors else MaterialError(f"no key spec takes material written as {fmt}")


def verify_material(
    source: MaterialSource,
    spec: KeySpec,
    *,
    environ: Mapping[str, str] | None = None,
    warn: Warn | None = None,
    allow_commands: bool | None = None,
    on_read: Callable[[bytes], None] | None = None,
) -> Material:
    """Read the source's material as `spec`'s family reads it (read_material; load_material's arguments),
    then check the key is exactly `spec` and matches the pinned fingerprint."""
    material = _load(
        source, lambda data, fmt, passphrase: read_material(data, fmt, spec, passphrase),
        environ, warn, allow_commands, on_read,
    )  # fmt: skip
    if material.spec is not spec:
        found = facts(material.spec).describe()
        material.wipe()
        raise MaterialError(f"{source.describe()}: expected key spec {facts(spec).describe()}, found {found}")
    if source.fingerprint is not None and source.fingerprint.lower() != material.fingerprint:
        found = material.fingerprint
        material.wipe()
        raise MaterialError(
            f"{source.describe()}: fingerprint {found} does not match the pinned {source.fingerprint}"
        )
    return material


# --- public keys -------------------------------------------------------------------------------


def spec_of_spki(der: bytes) -> KeySpec:
    """The key spec of a DER SubjectPublicKeyInfo; MaterialError if it is none of ours."""
    sm2_spec = curve_spec(sm2.CURVE_NAME)
    if sm2.is_sm2_spki(der) and sm2_spec is not None:
        return sm2_spec
    try:
        key = serialization.load_der_public_key(der)
    except UnsupportedAlgorithm as e:
        raise MaterialError(f"unsupported public key: {e}") from None
    except ValueError:
        raise MaterialError("not a DER SubjectPublicKeyInfo") from None
    spec = None
    if isinstance(key, rsa.RSAPublicKey):
        spec = rsa_spec(key.key_size)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        spec = ec_spec(key.curve.name)
    if spec is not None:
        return spec
    raise MaterialError("public key is not of a supported spec")


def _canonical_spki(der: bytes) -> bytes | None:
    """Re-encoded DER SPKI of a public key in DER, or None if `der` is not a public key."""
    try:
        return sm2.spki_der(sm2.parse_spki(der))
    except ValueError:
        pass
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm):
        return None
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _public_spki_of_bytes(data: bytes) -> bytes | None:
    for block in _PEM_BLOCK.finditer(data):
        label = block.group(1)
        if label == b"RSA PUBLIC KEY":
            try:
                key = serialization.load_pem_public_key(block.group(0))
            except (ValueError, UnsupportedAlgorithm):
                return None
            return key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        if label == b"PUBLIC KEY":
            try:
                der = base64.b64decode(b"".join(block.group(2).split()), validate=True)
            except (binascii.Error, ValueError):
                return None
            return _canonical_spki(der)
    if b"-----BEGIN " in data:
        return None
    return _canonical_spki(data)


def fingerprint_of_public_key(data: bytes) -> str:
    """The fingerprint of a public key given as PEM or DER (e.g. GetPublicKey's PEM), re-encoded
    canonically first so that every encoding of one key gives one fingerprint."""
    spki = _public_spki_of_bytes(data)
    if spki is None:
        raise MaterialError("not a PEM or DER public key")
    spec_of_spki(spki)
    return fingerprint_of_spki(spki)


#: `fingerprint` takes a public key too, so its "not a key" names both kinds.
_NO_KEY_FOR_FINGERPRINT = (
    "holds no public or private key in PEM or DER (public: SubjectPublicKeyInfo or PKCS#1; "
    "private: PKCS#1, SEC1 or PKCS#8); give the key file itself"
)


def fingerprint_of_key_file(path: Path, passphrase: bytes | None = None) -> str:
    """The fingerprint of the public key of a private or public key file (PEM or DER)."""
    disable_core_dumps()
    try:
        data = read_regular_file(path, "file", MAX_KEY_FILE_BYTES)
    except InputFileError as e:
        raise MaterialError(str(e)) from None
    spki = _public_spki_of_bytes(data)
    if spki is not None:
        try:
            spec_of_spki(spki)
        except MaterialError as e:
            raise MaterialError(f"file {path}: {e}") from None
        return fingerprint_of_spki(spki)
    if any(b.group(1) == b"CERTIFICATE" for b in _PEM_BLOCK.finditer(data)):
        raise MaterialError(
            f"file {path}: holds a certificate, not a key; "
            f"give its public key (openssl x509 -pubkey -noout -in {path})"
        )
    try:
        material = parse_private_key(data, passphrase)
    except MaterialError as e:
        if str(e) == _PUBLIC:
            raise MaterialError(f"file {path}: public key of an unsupported type") from None
        if str(e) == _GARBAGE:
            raise MaterialError(f"file {path}: {_NO_KEY_FOR_FINGERPRINT}") from None
        raise MaterialError(f"file {path}: {e}") from None
    material.wipe()
    return material.fingerprint
