"""The `provision` command: stages validate -> refresh -> plan -> view -> confirm -> apply.

This module is the only one that prints and the only one that exits; what it prints about a
plan, a drift report or an apply result comes from provisioner/views/. A user mistake ends in
one clear message and exit code 1, never a traceback. Click is used for parsing because it
gives interspersed options, typed flags and help text for free.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import errno
import functools
import io
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, TypeVar

import click

from provisioner import views
from provisioner.diagnostics import Diagnostic, Diagnostics, Location, Severity
from provisioner.emulator import defaults as emulator_defaults
from provisioner.errors import ManifestError, PlanBlocked, ProvisionerError
from provisioner.escape import visible
from provisioner.files import InputFileError, read_regular_file, read_regular_text, refuse_special_target
from provisioner.model import CLAIM_ALIAS_PREFIX, DEFAULT_TARGET, MaterialFormat, WrappingAlgorithm

if TYPE_CHECKING:
    # The stages' types, for mypy only: the stages import their modules when a command runs, so that
    # `provision --help` loads none of them.
    from datetime import datetime

    from provisioner.apply import ApplyResult
    from provisioner.backend.base import Kms
    from provisioner.emulator.server import EmulatorConfig
    from provisioner.lock import HeldLock, LockStore
    from provisioner.manifest import MaterialRead
    from provisioner.model import BackendConfig, LiveState, ManifestSet
    from provisioner.plan.values import Plan
    from provisioner.specs import Material

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")


def _parse_vars(values: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            # The value is not echoed: a --var may carry a secret that was meant to follow a name.
            raise click.BadParameter(
                f"expected NAME=VALUE, got an argument of {len(item)} character(s) without a name",
                param_hint="--var",
            )
        out[name] = value
    return out


#: Where template_options leaves the --allow-env globs for _load_stage (click's per-run context).
ALLOW_ENV_META = "provision.allow_env"


def template_options(f: F) -> F:
    """--var / --var-file: Jinja2 variables for manifest rendering; --allow-env: what env() may read.

    --allow-env reaches _load_stage through the click context (allow_env_flags()), so that no
    command's signature changes for it."""

    command = f

    @functools.wraps(command)
    def with_allow_env(*args: Any, allow_env: tuple[str, ...] = (), **kwargs: Any) -> Any:
        click.get_current_context().meta[ALLOW_ENV_META] = allow_env
        return command(*args, **kwargs)

    f = click.option(
        "--allow-env", "allow_env", multiple=True, metavar="GLOB",
        help="Environment variables templates may read with env() (repeatable; adds to "
        "PROVISION_ALLOW_ENV; default PROVISION_VAR_*).",
    )(with_allow_env)  # type: ignore[assignment]
    f = click.option("--var", "var", multiple=True, metavar="NAME=VALUE", help="Template variable.")(f)
    f = click.option(
        "--var-file",
        "var_files",
        multiple=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="YAML or JSON file of template variables.",
    )(f)
    return f


#: Where backend_options leaves --state for _open_stage, and the load stages the first manifest path.
STATE_META = "provision.state"
FIRST_PATH_META = "provision.first_path"


def backend_options(f: F) -> F:
    """--backend / --endpoint / --region / --qps / --state: where the KMS is and how fast to call it.

    --state reaches _open_stage through the click context, so that no command's signature changes."""
    command = f

    @functools.wraps(command)
    def with_state(*args: Any, state: Path | None = None, **kwargs: Any) -> Any:
        click.get_current_context().meta[STATE_META] = state
        return command(*args, **kwargs)

    f = click.option(
        "--state", "state", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
        help="Local backend: the state file (default: .provision/kms.db in the folder of the first PATH).",
    )(with_state)  # type: ignore[assignment]
    f = click.option(
        "--backend", type=click.Choice(["local", "alibaba"]), default=None,
        help="KMS backend (else PROVISION_BACKEND, else the manifest's).",
    )(f)
    f = click.option(
        "--endpoint", default=None,
        help="KMS endpoint: http://host:port, https://host or host (else PROVISION_ENDPOINT).",
    )(f)
    f = click.option(
        "--region", default=None,
        help="Alibaba Cloud region id, e.g. cn-hangzhou (else ALIBABA_CLOUD_REGION_ID).",
    )(f)
    f = click.option(
        "--qps", multiple=True, metavar="GROUP=N", help="Client-side rate limit per quota group."
    )(f)
    return f


#: Where only_target_option leaves --only-target, --target-profile and --target-role for _open_targets.
ONLY_TARGET_META = "provision.only_target"
TARGET_PROFILE_META = "provision.target_profile"
TARGET_ROLE_META = "provision.target_role"


def only_target_option(f: F) -> F:
    """--only-target NAME (repeatable): run on those `backends:` targets only; --target-profile and
    --target-role NAME=...: a target's credentials (DESIGN section 12), from the command line only."""
    command = f

    @functools.wraps(command)
    def with_only(
        *args: Any, only_target: tuple[str, ...] = (), target_profile: tuple[str, ...] = (),
        target_role: tuple[str, ...] = (), **kwargs: Any,
    ) -> Any:
        meta = click.get_current_context().meta
        meta[ONLY_TARGET_META] = only_target
        meta[TARGET_PROFILE_META] = target_profile
        meta[TARGET_ROLE_META] = target_role
        return command(*args, **kwargs)

    f = click.option(
        "--target-role", "target_role", multiple=True, metavar="NAME=ARN",
        help="Assume this RAM role (acs:ram::ACCOUNT:role/NAME) for the target's calls (repeatable).",
    )(with_only)  # type: ignore[assignment]
    f = click.option(
        "--target-profile", "target_profile", multiple=True, metavar="NAME=PROFILE",
        help="Credentials of the target from this profile (credentials file or CLI config; repeatable).",
    )(f)
    return click.option(
        "--only-target", "only_target", multiple=True, metavar="NAME",
        help="Only this backends: target (repeatable), e.g. one pipeline job per region.",
    )(f)


def allow_commands_option(f: F) -> F:
    """--allow-commands: material `command:` sources may run (else only PROVISION_ALLOW_COMMANDS=1)."""
    return click.option(
        "--allow-commands", is_flag=True, default=False,
        help="Run material command sources (a manifest cannot allow them; also PROVISION_ALLOW_COMMANDS=1).",
    )(f)


def expiry_warning_option(what: str) -> Callable[[F], F]:
    """--expiry-warning DAYS, as drift, plan and apply share it (default 30)."""
    return click.option(
        "--expiry-warning", "expiry_warning", type=click.IntRange(0, 3650), default=30, show_default=True,
        metavar="DAYS", help=what,
    )


def color_option(f: F) -> F:
    """--no-color: plain text output (also NO_COLOR, TERM=dumb, or standard output not a terminal)."""
    return click.option("--no-color", is_flag=True, default=False, help="Plain text output.")(f)


def plain_option(f: F) -> F:
    """--no-color on a command that never colours: accepted, so that every command takes it."""
    return click.option(
        "--no-color", is_flag=True, default=False, expose_value=False,
        help="Plain text output (this command always prints plain text).",
    )(f)


def target_option(f: F) -> F:
    """--target NAME (repeatable): only the keys of those names are read, planned, applied or shown."""
    return click.option(
        "--target", "targets", multiple=True, metavar="NAME",
        help="Only the key of this name (repeatable); the stack's other keys are left untouched.",
    )(f)


def use_color(no_color: bool, stream: Any = None) -> bool:
    """Colour only on a terminal that can show it: not with --no-color, a non-empty NO_COLOR
    (no-color.org), TERM=dumb, or output that is not a terminal (a pipe, a file, a CI log)."""
    out = sys.stdout if stream is None else stream
    if no_color or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError):
        return False


def _fail(message: str) -> NoReturn:
    # Messages quote paths, names and values: one line, no control or bidi character reaches the terminal.
    click.echo(visible(message), err=True)
    sys.exit(1)


#: errno values that mean standard output or error cannot take what is printed (full disk, closed pipe).
_OUTPUT_ERRNOS = frozenset(
    {errno.EPIPE, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EBADF}
)


def _silence(stream: TextIO) -> None:
    """Point a stream's file descriptor at /dev/null, so what it still buffers goes nowhere and the
    interpreter's exit reports no second error."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, stream.fileno())
        os.close(fd)
    except (OSError, ValueError, AttributeError):
        pass  # not a real file (a test's capture): nothing is left to flush into a full disk


_output_lost: list[OSError] = []  # set once the failure is reported: the final flush fails again


def _output_failed(e: OSError) -> NoReturn:
    """Standard output (or error) is full or closed: say so in one line on standard error when it can
    take it, and exit 1, never a traceback."""
    if _output_lost:
        sys.exit(1)
    _output_lost.append(e)
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        _silence(sys.stdout)
    try:
        click.echo(f"error: cannot write the output: {e.strerror or e}", err=True)
    except (OSError, ValueError):
        _silence(sys.stderr)
    sys.exit(1)


def handle_errors(f: F) -> F:
    """Turn the provisioner's errors into one message on stderr and exit code 1."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except ManifestError as e:
            _echo_diagnostics(e.diagnostics)
            _fail(f"{len(e.diagnostics.errors)} error(s)")
        except ProvisionerError as e:
            _fail(f"error: {e}")
        except OSError as e:
            if e.errno not in _OUTPUT_ERRNOS:
                raise
            _output_failed(e)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="byok-provisioner")
def cli() -> None:
    """Declarative provisioner for Alibaba Cloud KMS keys with imported (BYOK) material."""


DEFAULT_MANIFEST_PATH = Path("manifests")


def _format_option(command: views.Command[Any], help_text: str = "Output format.") -> Callable[[F], F]:
    """--format: one of the command's views (views.REGISTRY), the first the default."""
    formats = command.formats
    return click.option(
        "--format", "fmt", type=click.Choice(formats), default=formats[0], show_default=True, help=help_text
    )


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@template_options
@click.option("--offline-material", is_flag=True, default=False, help="Do not read private material.")
@_format_option(views.VALIDATE, help_text="json: the diagnostics as a JSON list on standard output.")
@allow_commands_option
@plain_option
@handle_errors
def validate(
    paths: tuple[Path, ...], var: tuple[str, ...], var_files: tuple[Path, ...], offline_material: bool,
    fmt: str, allow_commands: bool,
) -> int:
    """Render, parse and check manifests (PATH: files or folders, default manifests/); no KMS call.

    Exit 0 when valid, 1 with every problem listed, each as FILE:LINE:COL: error: MESSAGE.
    """
    from provisioner.views.validate import Validation

    view = views.VALIDATE.view(fmt)
    checked = not offline_material
    try:
        ms, _, warnings = _load_stage(
            paths, var, var_files, offline_material=offline_material,
            echo_warnings=not view.lists_diagnostics, allow_commands=allow_commands,
        )
    except ManifestError as e:
        if not view.lists_diagnostics:
            raise  # the diagnostics on standard error, as every command prints them
        click.echo(view.document(Validation(None, e.diagnostics, checked)), nl=False)
        click.echo(f"{len(e.diagnostics.errors)} error(s)", err=True)
        return 1
    click.echo(view.document(Validation(ms, warnings, checked)), nl=False)
    return 0


@cli.group()
def emulator() -> None:
    """A local Alibaba Cloud KMS that the official SDK talks to unchanged (rehearsals, tests)."""


@emulator.command("serve")
@click.option(
    "--host", default=emulator_defaults.DEFAULT_HOST, show_default=True, help="Address to listen on."
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=emulator_defaults.DEFAULT_PORT, show_default=True,
    help="Port to listen on; 0 picks a free one.",
)
@click.option(
    "--db", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="SQLite state file that survives restarts (default: in memory).",
)
@click.option(
    "--access-key-id", default=emulator_defaults.DEFAULT_ACCESS_KEY_ID, show_default=True,
    help="The one AccessKeyId accepted.",
)
@click.option(
    "--access-key-secret", default=emulator_defaults.DEFAULT_ACCESS_KEY_SECRET, show_default=True,
    help="Its secret; requests must be signed with it (V3 ACS3-HMAC-SHA256, ACS3-HMAC-SM3 or V2).",
)
@click.option(
    "--instance", "instances", multiple=True, metavar="ID=software|hardware[,asymmetric-import=no]",
    help="KMS instance (repeatable; default kst-local-software and kst-local-hardware); "
    "asymmetric-import=no: it refuses EXTERNAL asymmetric keys.",
)
@click.option(
    "--latency-ms", type=click.FloatRange(min=0), default=0.0, help="Delay added to every answer."
)
@click.option(
    "--qps", "qps", multiple=True, metavar="GROUP=N",
    help="Rate limit per quota group create|read|write|crypto (repeatable); over it 429 Rejected.Throttling.",
)
@click.option(
    "--fault-rate", type=click.FloatRange(0.0, 1.0), default=0.0,
    help="Share of calls answered 503 ServiceUnavailableTemporary, before any state change.",
)
@click.option("--seed", type=int, default=None, help="Seed for --fault-rate, for reproducible runs.")
@plain_option
@handle_errors
def serve(
    host: str,
    port: int,
    db: Path | None,
    access_key_id: str,
    access_key_secret: str,
    instances: tuple[str, ...],
    latency_ms: float,
    qps: tuple[str, ...],
    fault_rate: float,
    seed: int | None,
) -> int:
    """Serve the KMS RPC API until SIGTERM or SIGINT.

    Prints one line, `listening on http://HOST:PORT`, once ready. `GET /_emulator/stats` returns call
    counts per Action. Default credentials are public: the emulator guards nothing.
    """
    from provisioner.emulator import server as emulator_server
    from provisioner.errors import UsageError

    if not host.strip():
        # An empty host would bind every interface, with public default credentials.
        raise click.BadParameter("expected an address to listen on, got ''", param_hint="--host")
    try:
        config = emulator_server.EmulatorConfig(
            host=host,
            port=port,
            db=str(db) if db is not None else None,
            access_key_id=access_key_id,
            access_key_secret=access_key_secret,
            instances=emulator_server.parse_instances(instances) or None,
            latency_ms=latency_ms,
            qps=emulator_server.parse_qps(qps),
            fault_rate=fault_rate,
            seed=seed,
        )
    except emulator_server.PublicCredentialsExposed as e:
        raise UsageError(str(e)) from None
    except ValueError as e:
        raise click.BadParameter(str(e)) from e
    _serve_until_stopped(config)
    return 0


def _serve_until_stopped(config: EmulatorConfig) -> None:
    """Run the emulator until SIGTERM or SIGINT; a port or state file it cannot use is one line, exit 1."""
    import signal
    import sqlite3
    import threading

    from provisioner.emulator.server import EmulatorServer

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda _s, _f: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            server = EmulatorServer(config)
        except OSError as e:
            where = f"{config.host}:{config.port} with db {config.db or ':memory:'}"
            _fail(f"error: cannot serve on {where}: {e.strerror or e}")
        except sqlite3.Error as e:
            _fail(f"error: cannot open emulator state {config.db}: {e}")
        except ValueError:
            # The store's schema check: another version's or another program's database.
            state = f"emulator state {config.db}"
            _fail(f"error: cannot open {state}: not an emulator state file of this version")
        try:
            server.start()
            click.echo(f"listening on {server.url}")
            sys.stdout.flush()
            # A timed wait, so the signal handler's set() is seen promptly on every platform.
            while not stop.wait(0.5):
                pass
        finally:
            server.shutdown()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _warn(message: str) -> None:
    click.echo(visible(f"warning: {message}"), err=True)


def _write_owner_only(path: Path, text: str, what: str = "--out") -> None:
    """Write `text` to `path` with mode 0600 from the first byte: a fresh file in the same folder
    (O_EXCL, mode 0600, umask can only narrow it), then renamed over the target. A target that is a
    symlink, FIFO, device or folder is refused (InputFileError naming `what`), nothing written."""
    import secrets

    refuse_special_target(path, what)
    folder = path.parent if str(path.parent) else Path(".")
    tmp = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _material_format_option(help_text: str) -> Callable[[F], F]:
    return click.option(
        "--material-format", "material_format", default=None,
        type=click.Choice([f.value for f in MaterialFormat]), help=help_text,
    )


def _formatted_file(path: Path, material_format: str, option: str) -> Material:
    """The material in `path`, written as `material_format`; its spec is the one its bytes make
    (symmetric material: its length's)."""
    from provisioner.errors import MaterialError
    from provisioner.material import MAX_KEY_FILE_BYTES, read_formatted

    data = read_regular_file(path, option, MAX_KEY_FILE_BYTES)
    try:
        return read_formatted(data, MaterialFormat(material_format))
    except MaterialError as e:
        raise MaterialError(f"{option}: {e}") from None


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--passphrase-env", default=None, metavar="VAR", help="Passphrase of an encrypted private key.")
@_material_format_option(
    "FILE is a symmetric key (Aliyun_AES_256: 32 bytes, Aliyun_SM4: 16) written as raw bytes, hex or "
    "base64: print its key check value, kcv:<16 hex>, to pin in material.fingerprint."
)
@plain_option
@handle_errors
def fingerprint(file: Path, passphrase_env: str | None, material_format: str | None) -> int:
    """Print sha256:<64 hex> of the public key of a private or public key FILE (PEM or DER), or with
    --material-format the kcv:<16 hex> check value of a symmetric key."""
    from provisioner.errors import UsageError
    from provisioner.material import fingerprint_of_key_file

    if material_format is not None:
        if passphrase_env is not None:
            raise UsageError("--passphrase-env is for encrypted private keys, not --material-format")
        material = _formatted_file(file, material_format, "FILE")
        material.wipe()
        click.echo(material.fingerprint)
        return 0
    passphrase: bytes | None = None
    if passphrase_env is not None:
        value = os.environ.get(passphrase_env)
        if value is None:
            raise UsageError(f"--passphrase-env: environment variable {passphrase_env} is not set")
        passphrase = value.encode()
    click.echo(fingerprint_of_key_file(file, passphrase))
    return 0


@cli.command()
@click.option(
    "--public-key", "public_key", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="Wrapping public key: PEM, DER (publickey_*.bin) or base64 DER as GetParametersForImport gives.",
)
@click.option(
    "--material", "material_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="The private key to import (PEM or DER; PKCS#1, SEC1 or PKCS#8).",
)
@click.option(
    "--algorithm", type=click.Choice([a.value for a in WrappingAlgorithm]), default=None,
    help="Wrapping algorithm; default: the one the vendor pairs with the material's spec.",
)
@click.option("--passphrase-env", default=None, metavar="VAR", help="Passphrase of an encrypted private key.")
@_material_format_option(
    "The material is a symmetric key (Aliyun_AES_256: 32 bytes, Aliyun_SM4: 16) written as raw bytes, "
    "hex or base64; it is wrapped directly (default algorithm RSAES_OAEP_SHA_256)."
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Write the base64 result to this file (mode 0600) instead of standard output.",
)
@plain_option
@handle_errors
def wrap(
    public_key: Path, material_file: Path, algorithm: str | None, passphrase_env: str | None,
    material_format: str | None, out: Path | None,
) -> int:
    """Offline step 3 of the vendor guide: print base64 Cipher(ESK) || Cipher(TAKpriv), or with
    --material-format the base64 ciphertext of a symmetric key."""
    from provisioner import wrapping
    from provisioner.errors import MaterialError, UsageError, WrappingError
    from provisioner.material import MAX_KEY_FILE_BYTES, load_material
    from provisioner.model import MaterialSource, SourceKind
    from provisioner.specs import facts

    if out is not None:
        refuse_special_target(out, "--out")
    wrapping_key = read_regular_file(public_key, "--public-key", MAX_KEY_FILE_BYTES)
    try:
        wrapping_der = wrapping.load_wrapping_public_key(wrapping_key)
    except WrappingError as e:
        raise WrappingError(f"--public-key {public_key}: {e}") from None
    source = MaterialSource(
        kind=SourceKind.FILE, file=material_file.absolute(), passphrase_env=passphrase_env
    )
    material: Material
    if material_format is not None:
        if passphrase_env is not None:
            raise UsageError("--passphrase-env is for encrypted private keys, not --material-format")
        material = _formatted_file(material_file, material_format, "--material")
    else:
        try:
            material = load_material(source, warn=_warn)
        except MaterialError as e:
            raise MaterialError(f"--material: {e}") from None
    try:
        chosen = WrappingAlgorithm(algorithm) if algorithm else facts(material.spec).wrapping_algorithm
        wrapped = wrapping.wrap(material, wrapping_der, chosen)
    finally:
        material.wipe()
    if out is None:
        click.echo(wrapped)
    else:
        try:
            _write_owner_only(out, wrapped + "\n")
        except OSError as e:
            raise WrappingError(f"--out {out}: cannot write: {e.strerror}") from None
        click.echo(visible(f"wrote {chosen} wrapped material for {material.fingerprint} to {out}"), err=True)
    return 0


# ------------------------------------------------------------------------------- plan, apply, drift


def allow_env_flags() -> tuple[str, ...]:
    """The --allow-env globs of the running command (empty outside one)."""
    ctx = click.get_current_context(silent=True)
    return tuple(ctx.meta.get(ALLOW_ENV_META, ())) if ctx is not None else ()


def _load_stage(
    paths: tuple[Path, ...],
    var: tuple[str, ...],
    var_files: tuple[Path, ...],
    *,
    offline_material: bool,
    echo_warnings: bool = True,
    allow_commands: bool = False,
    warn_unused: bool = True,
) -> tuple[ManifestSet, dict[str, str], Diagnostics]:
    """validate: render, parse, check manifests and (unless offline) read material fingerprints.
    `warn_unused`: a warning for each --var / --var-file variable no template reads."""
    from provisioner.manifest import validate_manifests

    variables = _variables(var, var_files)
    ms, fingerprints, warnings = validate_manifests(
        _manifest_paths(paths),
        variables=variables,
        offline_material=offline_material,
        allow_env=allow_env_flags(),
        allow_commands=allow_commands,
    )
    if warn_unused:
        warnings = Diagnostics([*warnings, *_unused_variables(ms, variables, var, var_files)])
    if echo_warnings:
        _echo_diagnostics(warnings)
    return ms, fingerprints, warnings


def _material_stage(
    paths: tuple[Path, ...], var: tuple[str, ...], var_files: tuple[Path, ...], *, allow_commands: bool
) -> tuple[ManifestSet, MaterialRead]:
    """validate for an apply: the manifests and their material, kept so that each source is read once
    a run (the material read to plan is the material applied). The caller wipes it."""
    from provisioner.manifest import validate_with_material

    variables = _variables(var, var_files)
    ms, read = validate_with_material(
        _manifest_paths(paths),
        variables=variables,
        keep=True,
        allow_env=allow_env_flags(),
        allow_commands=allow_commands,
    )
    _echo_diagnostics(read.diagnostics)
    _echo_diagnostics(_unused_variables(ms, variables, var, var_files))
    return ms, read


def _manifest_paths(paths: tuple[Path, ...]) -> tuple[Path, ...]:
    """PATH, default manifests/; the first is kept for _open_stage: the local state lives beside it."""
    chosen = paths or (DEFAULT_MANIFEST_PATH,)
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[FIRST_PATH_META] = chosen[0]
    return chosen


def _variables(var: tuple[str, ...], var_files: tuple[Path, ...]) -> dict[str, object]:
    from provisioner.manifest import load_variables

    return load_variables(_parse_vars(var), var_files)


def _echo_diagnostics(diagnostics: Iterable[Diagnostic]) -> None:
    for d in diagnostics:
        click.echo(str(d), err=True)


def _unused_variables(
    ms: ManifestSet, variables: dict[str, object], var: tuple[str, ...], var_files: tuple[Path, ...]
) -> list[Diagnostic]:
    """A warning per variable that no manifest template reads: a misspelt name otherwise passes
    silently and the template's own default (or a stale value) is used. Values are never shown."""
    given = _parse_vars(var)
    out = []
    for name in sorted(set(variables) - ms.variables_read):
        if name in given:
            where, flag = Location("<command line>"), f"--var {name}"
        else:
            where = Location(str(var_files[0]) if len(var_files) == 1 else "<command line>")
            flag = f"variable {name} of --var-file"
        out.append(
            Diagnostic(
                where,
                f"{flag}: no manifest template reads this variable, so it changes nothing; "
                f"check its spelling against the templates, or drop it",
                Severity.WARNING,
            )
        )
    return out


def _stderr_is_a_terminal() -> bool:
    """Whether a line may be rewritten in place on standard error (not on TERM=dumb, a pipe, a log)."""
    if os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


#: The target whose work the running thread does, when several run at once: progress lines then name
#: it and are plain lines (three targets rewriting one terminal line would garble it).
_PROGRESS_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar("progress_target", default=None)


@contextlib.contextmanager
def _progress_stage(kms: Any, phase: str, total: int | None = None) -> Iterator[Any]:
    """Progress of the calls made inside the block on standard error (views/progress.py), told by
    the transport; the terminal line is cleared when the block ends, before anything else prints."""
    from provisioner.backend.resilience import ResilientTransport
    from provisioner.views.progress import Progress

    target = _PROGRESS_TARGET.get()
    terminal = target is None and _stderr_is_a_terminal()
    try:
        width = os.get_terminal_size(sys.stderr.fileno()).columns if terminal else 80
    except (OSError, ValueError, AttributeError):
        width = 80
    label = phase if target is None else f"{phase} {target}"
    progress = Progress(label, sys.stderr, terminal=terminal, total=total, width=width)
    transport = getattr(kms, "transport", None)
    observed = transport if isinstance(transport, ResilientTransport) else None
    if observed is not None:
        observed.observer = progress.on_call
    try:
        yield progress
    finally:
        if observed is not None:
            observed.observer = None
        progress.close()


def _open_stage(
    manifest_backend: BackendConfig | None,
    backend: str | None,
    endpoint: str | None,
    region: str | None,
    qps: tuple[str, ...],
    *,
    create: bool = True,
    target: str | None = None,
    credentials: Any = None,
) -> Kms:
    """The KMS of one backend. `target`: the name of a `backends:` entry, when the set has several:
    ALIBABA_CLOUD_REGION_ID is then not read (each target names its region), and a local target's
    default state is `.provision/kms-NAME.db` beside the first manifest path."""
    from provisioner.backend import REGION_ENV, default_state_file, open_kms
    from provisioner.backend.resilience import parse_qps

    ctx = click.get_current_context(silent=True)
    meta = ctx.meta if ctx is not None else {}
    first = meta.get(FIRST_PATH_META)
    default = None if first is None else default_state_file(first, target)
    environ = os.environ if target is None else {k: v for k, v in os.environ.items() if k != REGION_ENV}
    kms = open_kms(
        backend=backend,
        endpoint=endpoint,
        region=region,
        manifest_backend=manifest_backend,
        qps=parse_qps(qps) if qps else None,
        max_elapsed=_retry_seconds(),
        create=create,
        environ=environ,
        state=meta.get(STATE_META),
        default_state=default,
        legacy_state=target is None,
        credentials=credentials,
    )
    where = kms.description if target is None else f"target {target}: {kms.description}"
    click.echo(visible(f"using {where}"), err=True)
    if kms.info.get("type") == "alibaba" and kms.info.get("endpoint"):
        from provisioner.backend.alibaba import proxy_trap

        trap = proxy_trap(kms.info["endpoint"], os.environ)
        if trap is not None:
            _warn(trap)
    return kms


@dataclasses.dataclass
class _Target:
    """One target of a run (DESIGN section 12): its name, the manifest set as it sees it, its KMS (own
    connection, own rate limiter). A set of one backend has one, `default`."""

    name: str
    ms: ManifestSet
    kms: Kms


def _only_targets(ms: ManifestSet) -> tuple[str, ...]:
    """The targets of this run: --only-target's names (each one the set declares), else all of them,
    in `backends:` order."""
    import difflib

    from provisioner.errors import UsageError

    ctx = click.get_current_context(silent=True)
    asked: tuple[str, ...] = tuple(ctx.meta.get(ONLY_TARGET_META, ())) if ctx is not None else ()
    declared = ms.target_names
    for name in asked:
        if name in declared:
            continue
        if ms.several_targets:
            close = difflib.get_close_matches(name, declared, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(
                f"--only-target {name!r}: stack {ms.stack!r} has no such target (its targets are "
                f"{', '.join(declared)}){hint}"
            )
        raise UsageError(
            f"--only-target {name!r}: stack {ms.stack!r} has one backend, whose target is "
            f"{DEFAULT_TARGET!r}; name several in backends: to choose among them"
        )
    return tuple(t for t in declared if t in asked) if asked else declared


def _refuse_shared_flags(
    ms: ManifestSet, chosen: tuple[str, ...], endpoint: str | None, region: str | None
) -> None:
    """With several targets, a flag that names one KMS (--region, --endpoint, PROVISION_ENDPOINT,
    --state) would send every target's calls to one place: an error unless --only-target picks one."""
    from provisioner.backend import ENDPOINT_ENV
    from provisioner.errors import UsageError

    if not ms.several_targets or len(chosen) == 1:
        return
    ctx = click.get_current_context(silent=True)
    state = ctx.meta.get(STATE_META) if ctx is not None else None
    given = [
        flag
        for flag, value in (
            ("--region", region), ("--endpoint", endpoint),
            (ENDPOINT_ENV, os.environ.get(ENDPOINT_ENV, "").strip()), ("--state", state),
        )
        if value
    ]
    if given:
        raise UsageError(
            f"{given[0]}: stack {ms.stack!r} has {len(chosen)} targets ({', '.join(chosen)}), each with its "
            f"own KMS in backends:; {given[0]} names one: pick its target with --only-target NAME"
        )


def _open_targets(
    ms: ManifestSet, backend: str | None, endpoint: str | None, region: str | None, qps: tuple[str, ...],
    *, create: bool = True,
) -> list[_Target]:
    """Each target of the run with its KMS opened (no connection is made until a call). Two targets
    on one KMS would see each other's keys as theirs: refused."""
    from provisioner.errors import UsageError

    chosen = _only_targets(ms)
    _refuse_shared_flags(ms, chosen, endpoint, region)
    credentials, given = _target_credentials(ms, chosen)
    opened: list[_Target] = []
    try:
        for name in chosen:
            sub = ms.for_target(name)
            kms = _open_stage(
                sub.backend, backend, endpoint, region, qps, create=create,
                target=name if ms.several_targets else None, credentials=credentials.get(name),
            )
            opened.append(_Target(name, sub, kms))
            same = next(
                (t for t in opened[:-1] if _same_kms(t.kms, kms, given.get(t.name), given.get(name))), None
            )
            if same is not None:
                raise UsageError(
                    f"targets {same.name!r} and {name!r} are one KMS ({visible(kms.description)}): a key's "
                    f"identity is per target, so each target must be a KMS of its own (a region, an account)"
                )
    except BaseException:
        _close_targets(opened)
        raise
    return opened


def _target_credentials(
    ms: ManifestSet, chosen: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, tuple[str | None, str | None]]]:
    """--target-profile / --target-role, by target: each names a target of the set (one not in this
    run is ignored, so a pipeline can pass every target's and shard with --only-target). The
    credentials of each target of the run that has some, and what was given for each (profile, role)."""
    from provisioner.backend.credentials import parse_target_assignments, target_credentials
    from provisioner.errors import UsageError

    ctx = click.get_current_context(silent=True)
    meta = ctx.meta if ctx is not None else {}
    profiles = parse_target_assignments(meta.get(TARGET_PROFILE_META, ()), "--target-profile")
    roles = parse_target_assignments(meta.get(TARGET_ROLE_META, ()), "--target-role")
    for flag, given in (("--target-profile", profiles), ("--target-role", roles)):
        for name in given:
            if name not in ms.target_names:
                raise UsageError(
                    f"{flag} {name}=...: stack {ms.stack!r} has no target {name!r} (its targets are "
                    f"{', '.join(ms.target_names)})"
                )
    out = {}
    for name in chosen:
        made = target_credentials(profiles.get(name), roles.get(name), target=name)
        if made is not None:
            out[name] = made
    return out, {name: (profiles.get(name), roles.get(name)) for name in chosen}


def _same_kms(a: Kms, b: Kms, a_credentials: object, b_credentials: object) -> bool:
    """Whether two targets are one KMS: one state file; or one region of the vendor (its public and its
    VPC endpoint are one KMS) or one other host and port, with the same credentials (another profile
    or role may be another account)."""
    if a.state_path is not None or b.state_path is not None:
        return a.state_path is not None and b.state_path is not None and (
            a.state_path.resolve() == b.state_path.resolve()
        )
    return _kms_place(a) == _kms_place(b) and a_credentials == b_credentials


def _kms_place(kms: Kms) -> tuple[str, str]:
    from urllib.parse import urlsplit

    host = (urlsplit(kms.info.get("endpoint", "")).hostname or "").lower()
    for prefix in ("kms.", "kms-vpc."):
        if host.startswith(prefix) and host.endswith(".aliyuncs.com"):
            return ("region", host.removeprefix(prefix).removesuffix(".aliyuncs.com"))
    return ("host", urlsplit(kms.info.get("endpoint", "")).netloc.lower())


def _close_targets(targets: Iterable[_Target]) -> None:
    for t in targets:
        t.kms.close()


def _per_target(
    fn: Callable[[_Target], R], targets: Sequence[_Target], several: bool
) -> tuple[dict[str, R], dict[str, str]]:
    """`fn` on every target at once, each on its own thread and its own quota (the wall time is the
    slowest target's); results and errors by target name. With several targets a ProvisionerError
    ends that target's run only (printed as `error: target NAME: ...`); a single backend's propagates."""
    from provisioner.targets import run_per_target

    if not several:
        return {t.name: fn(t) for t in targets}, {}

    def one(t: _Target) -> R:
        token = _PROGRESS_TARGET.set(t.name)
        try:
            return fn(t)
        finally:
            _PROGRESS_TARGET.reset(token)

    results: dict[str, R] = {}
    errors: dict[str, str] = {}
    for outcome in run_per_target(one, [(t.name, t) for t in targets], contain=True):
        if outcome.error is not None:
            errors[outcome.target] = str(outcome.error)
        else:
            results[outcome.target] = outcome.result  # type: ignore[assignment]
    return results, errors


def _echo_target_errors(errors: Mapping[str, str]) -> None:
    for name, message in errors.items():
        click.echo(visible(f"error: target {name}: {message}"), err=True)


#: Environment variable that sets how long retries of one call may go on (DESIGN: about 30 seconds).
RETRY_SECONDS_ENV = "PROVISION_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 30.0


def _retry_seconds() -> float:
    """The retry budget of one call: PROVISION_RETRY_SECONDS (0..600) or 30 s. Tests and impatient
    pipelines shorten it; an environment variable rather than a flag, since every KMS command shares it."""
    from provisioner.errors import UsageError

    text = os.environ.get(RETRY_SECONDS_ENV, "").strip()
    if not text:
        return DEFAULT_RETRY_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 600:
        raise UsageError(f"{RETRY_SECONDS_ENV}: expected a number of seconds from 0 to 600, got {text!r}")
    return value


def _now() -> datetime:
    """The time of this run, whole seconds: the clock main() was given (tests), else the system's.
    Read on the main thread (the click context is not seen by the targets' threads)."""
    from datetime import UTC, datetime

    ctx = click.get_current_context(silent=True)
    clock = ctx.obj if ctx is not None and callable(ctx.obj) else None
    now: datetime = clock() if clock is not None else datetime.now(UTC)
    return now.astimezone(UTC).replace(microsecond=0)


def _refresh_stage(
    ms: ManifestSet,
    kms: Kms,
    now: datetime,
    targets: tuple[str, ...] = (),
    fingerprints: Mapping[str, str] | None = None,
) -> LiveState:
    """refresh for a plan: the keys `adopt:` names too; GetPublicKey only for keys whose recorded
    fingerprint is missing or disagrees with the material (planner.confirm_policy). A targeted key's
    `moved_from` names are read with it (its live key may carry one of them)."""
    from provisioner.plan.planner import confirm_policy
    from provisioner.refresh import refresh

    chosen = [k for k in ms.keys if not targets or k.name in targets]
    with _progress_stage(kms, "refresh"):
        return refresh(
            kms,
            ms.stack,
            now=now,
            managed_names=[k.name for k in chosen],
            confirm=confirm_policy(ms, fingerprints or {}),
            targets=[n for k in chosen for n in (k.name, *k.moved_from)] if targets else None,
            adopt={k.name: k.adopt for k in chosen if k.adopt is not None},
        )


@dataclasses.dataclass
class _Planned:
    """One target's plan, the live state it was made from, its expiry warnings, and (apply) its lock."""

    target: _Target
    plan: Plan
    live: LiveState
    warnings: tuple[str, ...] = ()
    held: HeldLock | None = None


def _make_plan_stage(
    t: _Target,
    fingerprints: dict[str, str],
    *,
    now: datetime,
    expiry_warning: int,
    offline_material: bool = False,
    targets: tuple[str, ...] = (),
) -> _Planned:
    """refresh -> plan of one target (and the live state it was made from), the instances of the keys it
    creates checked, and its expiry warnings."""
    from provisioner.plan.instances import created_instances, instance_violations, read_instances
    from provisioner.plan.planner import make_plan

    live = _refresh_stage(t.ms, t.kms, now, targets, fingerprints)
    the_plan = make_plan(
        t.ms, live, now=now, fingerprints=fingerprints, backend=t.kms.info, offline_material=offline_material,
        targets=targets or None,
    )
    wanted = created_instances(the_plan, t.ms)
    facts = read_instances(t.kms, wanted) if wanted else None  # no key to create: no call
    if facts is not None:
        the_plan = instance_violations(the_plan, t.ms, facts)
    return _Planned(t, the_plan, live, _expiring(t.ms, live, the_plan, now, expiry_warning))


def _expiring(ms: ManifestSet, live: LiveState, the_plan: Plan, now: datetime, days: int) -> tuple[str, ...]:
    """The expiry warnings of a plan: material that expires within the window (not in the document)."""
    from provisioner.plan.warnings import expiry_warnings

    return tuple(str(w) for w in expiry_warnings(ms, live, the_plan, now=now, days=days))


def _merged_plan(ms: ManifestSet, targets: Sequence[_Target], planned: Mapping[str, _Planned],
                 errors: Mapping[str, str], now: datetime, chosen: tuple[str, ...]) -> Plan:
    """The run's one plan: a single backend's own, or the targets' plans merged, each change, violation
    and note with its target (DESIGN section 12), and the targets that failed."""
    from provisioner.plan.values import BackendInfo, Plan, merge_plans

    if not ms.several_targets:
        return planned[DEFAULT_TARGET].plan
    template = next(
        (p.plan for p in planned.values()),
        Plan(ms.stack, now, BackendInfo(), (), manifest_digest=ms.manifest_digest, targets=chosen),
    )
    infos = [(t.name, t.kms.info) for t in targets]
    return merge_plans(infos, {n: p.plan for n, p in planned.items()}, errors, template=template)


def _warn_planned(planned: Mapping[str, _Planned], several: bool) -> None:
    for name, p in planned.items():
        for w in p.warnings:
            _warn(w if not several else f"target {name}: {w}")


def _target_stage(ms: ManifestSet, targets: tuple[str, ...], verb: str) -> tuple[str, ...]:
    """The --target names, sorted and distinct, each a key the manifests declare; else UsageError.
    With names, a warning that the run is partial (as Terraform warns of -target)."""
    import difflib

    from provisioner.errors import UsageError
    from provisioner.model import DEFAULT_TARGET

    chosen = tuple(sorted(set(targets)))
    declared = {k.name for k in ms.keys}
    for name in chosen:
        if name in declared:
            continue
        if name == DEFAULT_TARGET:
            raise UsageError(
                f"--target {name!r}: no key of stack {ms.stack!r} has that name; {name!r} names the backend "
                f"(the target of a single backend): --target selects keys, --only-target selects backends"
            )
        close = difflib.get_close_matches(name, sorted(declared), n=1)
        hint = f": did you mean {close[0]!r}?" if close else ""
        raise UsageError(
            f"--target {name!r}: the manifests of stack {ms.stack!r} declare no key of that name{hint}"
        )
    if chosen:
        names = ", ".join(chosen)
        rest = "not read" if verb in ("show", "drift run") else "not read, planned or changed"
        _warn(
            f"--target: this {verb} covers only {names}; the stack's other keys are {rest} "
            f"(for exceptions such as a repair, not for routine use)"
        )
    return chosen



def _read_plan_file(path: Path) -> Plan:
    """The saved plan in `path`: a regular file of bounded size (never /dev/zero, a FIFO or 50 MB)."""
    from provisioner.errors import UsageError
    from provisioner.plan.planfile import MAX_PLAN_BYTES, load_plan

    try:
        text = read_regular_text(path, "--plan", MAX_PLAN_BYTES)
    except InputFileError as e:
        if e.reason == "is not UTF-8 text":
            raise UsageError(f"--plan {path}: not a plan file (not UTF-8 text)") from None
        raise
    return load_plan(text)


def _echo_violations(plan: Plan) -> None:
    """Each violation on stderr as FILE:LINE:COL: error: KEY: CODE: MESSAGE, like validate's lines."""
    from provisioner.views.plan import violation_lines

    for line in violation_lines(plan):
        click.echo(line, err=True)


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@template_options
@backend_options
@only_target_option
@color_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Save the plan (no secrets: material references and fingerprints) for `apply --plan`.")
@_format_option(views.PLAN)
@click.option("--detailed-exitcode", is_flag=True, default=False,
              help="Exit 2 when the plan has changes, 0 when it has none.")
@allow_commands_option
@click.option("--offline-material", is_flag=True, default=False,
              help="Read no private material and run no command; fingerprints from material.fingerprint.")
@target_option
@expiry_warning_option("Warn (on standard error) about material that expires within this many days.")
@handle_errors
def plan(
    paths: tuple[Path, ...], var: tuple[str, ...], var_files: tuple[Path, ...], backend: str | None,
    endpoint: str | None, region: str | None, qps: tuple[str, ...], no_color: bool, out: Path | None,
    fmt: str, detailed_exitcode: bool, allow_commands: bool, offline_material: bool, targets: tuple[str, ...],
    expiry_warning: int,
) -> int:
    """Read the live KMS state and print what apply would do. Exit 1 when blocked by a violation."""
    from provisioner.plan.planfile import relative_materials, save_plan

    if out is not None:
        refuse_special_target(out, "--out")
    ms, fingerprints, _ = _load_stage(
        paths, var, var_files, offline_material=offline_material, allow_commands=allow_commands
    )
    chosen = _target_stage(ms, targets, "plan")
    # Reading writes nothing: a missing local state is an empty KMS, an existing one is read-only.
    run = _open_targets(ms, backend, endpoint, region, qps, create=False)
    now = _now()
    try:
        planned, errors = _per_target(
            lambda t: _make_plan_stage(
                t, fingerprints, now=now, expiry_warning=expiry_warning, offline_material=offline_material,
                targets=chosen,
            ),
            run, ms.several_targets,
        )
    finally:
        _close_targets(run)
    the_plan = _merged_plan(ms, run, planned, errors, now, chosen)
    _warn_planned(planned, ms.several_targets)
    # A pull-request comment names material files as the saved plan does: relative, not the runner's.
    shown = relative_materials(the_plan, Path.cwd()) if fmt == "markdown" else the_plan
    click.echo(views.PLAN.view(fmt, color=use_color(no_color)).plan(shown), nl=False)
    _echo_target_errors(errors)
    if the_plan.blocked:
        _echo_violations(the_plan)
        click.echo(f"error: the plan is blocked by {len(the_plan.violations)} violation(s)", err=True)
        return 1
    if errors:
        click.echo(
            f"error: {len(errors)} target(s) could not be planned: {', '.join(errors)}"
            + ("; the plan was not saved" if out is not None else ""),
            err=True,
        )
        return 1
    if out is not None:
        from provisioner.errors import UsageError

        try:
            _write_owner_only(out, save_plan(the_plan, relative_to=Path.cwd()))
        except OSError as e:
            raise UsageError(f"--out {out}: cannot write the plan: {e.strerror}") from None
        click.echo(visible(f"saved the plan to {out}; apply it with: provision apply --plan {out}"), err=True)
    return 2 if detailed_exitcode and the_plan.has_changes else 0


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@template_options
@backend_options
@only_target_option
@color_option
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Apply this saved plan (refused if any key changed since it was made).")
@click.option("--auto-approve", is_flag=True, default=False, help="Apply without asking.")
@click.option("--parallelism", type=click.IntRange(1, 64), default=None,
              help="Keys worked on at once (the client-side rate limit still applies).")
@_format_option(views.APPLY)
@allow_commands_option
@target_option
@expiry_warning_option("Warn (on standard error) about material that expires within this many days.")
@click.option(
    "--lock-timeout", "lock_timeout", type=click.FloatRange(0, 86400), default=0.0, show_default=True,
    metavar="SECONDS", help="Wait this long for another apply of the stack to end (default: refuse at once).",
)
@handle_errors
def apply(
    paths: tuple[Path, ...], var: tuple[str, ...], var_files: tuple[Path, ...], backend: str | None,
    endpoint: str | None, region: str | None, qps: tuple[str, ...], no_color: bool, plan_file: Path | None,
    auto_approve: bool, parallelism: int | None, fmt: str, allow_commands: bool, targets: tuple[str, ...],
    expiry_warning: int, lock_timeout: float,
) -> int:
    """Carry out a fresh plan (after confirmation), or a saved one with --plan.

    A saved plan is applied only as reviewed: the manifests (PATH, default manifests/, and the same
    variables) must render to its manifest_digest, each change must be what its before/after give, and
    the plan made now with the material must be the same plan. Backend and material sources come from
    the command line, the environment and the manifests, never from the plan file.
    """
    view = views.APPLY.view(fmt, color=use_color(no_color))
    _refuse_unconfirmed_apply(plan_file, auto_approve, targets)
    saved = None if plan_file is None else _reviewed_plan(plan_file, paths, var, var_files)
    ms, read = _material_stage(paths, var, var_files, allow_commands=allow_commands)
    try:
        if saved is not None:
            _check_saved_material(saved, ms, read.fingerprints)
        chosen = saved.targets if saved is not None else _target_stage(ms, targets, "apply")
        if saved is not None and ms.several_targets:
            _saved_targets(saved)
        run = _open_targets(ms, backend, endpoint, region, qps)
    except BaseException:
        read.wipe()
        raise
    held: list[HeldLock] = []
    guard = threading.Lock()
    now = _now()

    def prepare(t: _Target) -> _Planned:
        part = None if saved is None else _saved_part(saved, t, ms.several_targets)
        if part is not None:
            from provisioner.apply import check_plan_backend

            # Before the lock: none is taken on a KMS the plan is not for.
            check_plan_backend(part, t.kms.info, t.kms.state_path)
        lock = _acquire(t, lock_timeout)
        if lock is not None:
            with guard:
                held.append(lock)
        if part is None:
            p = _make_plan_stage(t, read.fingerprints, now=now, expiry_warning=expiry_warning, targets=chosen)
        else:
            p = _saved_plan_stage(part, t, read.fingerprints, chosen, now, expiry_warning)
        return dataclasses.replace(p, held=lock)

    try:
        if saved is not None:
            _refuse_other_targets(saved, ms, run)
        planned, errors = _per_target(prepare, run, ms.several_targets)
        if saved is not None and errors:
            # A saved plan is applied whole or not at all: a target whose part is stale or edited
            # (or cannot be read) refuses every target's, before any write.
            from provisioner.errors import StalePlan

            _echo_target_errors(errors)
            raise StalePlan(
                f"the saved plan cannot be applied on {len(errors)} target(s) ({', '.join(errors)}); "
                f"nothing applied on any target: make a new plan"
            )
        the_plan = _merged_plan(ms, run, planned, errors, now, chosen)
        _warn_planned(planned, ms.several_targets)
        code = _carry_out(
            the_plan, planned, errors, read, view, plan_file is None and not auto_approve, parallelism,
            ms.several_targets,
        )
    finally:
        read.wipe()
        for lock in held:
            lock.release()
        _close_targets(run)
    return code


def _saved_part(saved: Plan, t: _Target, several: bool) -> Plan:
    """The part of a saved plan that one target carries out."""
    return saved.for_target(t.name) if several else saved


def _saved_targets(saved: Plan) -> None:
    """apply --plan of several targets runs on the plan's targets (those of its --only-target, if it was
    made with one): --only-target may repeat them, not change them."""
    from provisioner.errors import UsageError

    ctx = click.get_current_context()
    planned = tuple(b["name"] for b in saved.target_infos)
    asked = tuple(ctx.meta.get(ONLY_TARGET_META, ()))
    if asked and sorted(set(asked)) != sorted(planned):
        raise UsageError(
            f"--only-target {', '.join(asked)}: the saved plan is for target(s) {', '.join(planned)}; a "
            f"saved plan is applied whole, on the targets it was made for (drop --only-target, or make a "
            f"plan with it)"
        )
    ctx.meta[ONLY_TARGET_META] = planned


def _refuse_other_targets(saved: Plan, ms: ManifestSet, run: Sequence[_Target]) -> None:
    """apply --plan runs on the targets the plan was made for, all of them: a saved plan is applied
    whole or not at all."""
    from provisioner.errors import UsageError

    planned = tuple(b["name"] for b in saved.target_infos)
    here = tuple(t.name for t in run)
    if planned != here:
        raise UsageError(
            f"the saved plan is for target(s) {', '.join(planned)}, and stack {ms.stack!r} now has "
            f"{', '.join(here)}: make a new plan"
        )


def _carry_out(
    the_plan: Plan, planned: Mapping[str, _Planned], errors: Mapping[str, str], read: MaterialRead,
    view: Any, ask: bool, parallelism: int | None, several: bool,
) -> int:
    """apply, under the locks: preview, refuse a blocked plan, confirm, apply each target's part (at once),
    print the result. A target that could not be planned is reported, and the others are applied."""
    from provisioner.apply import ApplyResult

    click.echo(view.preview(the_plan), nl=False)
    _echo_target_errors(errors)
    if the_plan.blocked:
        _echo_violations(the_plan)
        n = len(the_plan.violations)
        raise PlanBlocked(f"the plan is blocked by {n} violation(s); nothing applied")
    if not the_plan.has_changes:
        click.echo(view.unchanged(the_plan), nl=False)
        return 1 if errors else 0
    if ask and not _confirmed():
        click.echo("apply cancelled: nothing changed", err=True)
        return 1

    def carry(t: _Target) -> ApplyResult:
        p = planned[t.name]
        part = the_plan.for_target(t.name) if several else the_plan
        claims = {a: k for a, k in p.live.alias_owners.items() if a.startswith(CLAIM_ALIAS_PREFIX)}
        return _apply_stage(part, t.kms, read, parallelism, claims, None if p.held is None else p.held.lost)

    changed = {c.target for c in the_plan.changes}
    with_changes = [p.target for p in planned.values() if p.target.name in changed]
    results, failed = _per_target(carry, with_changes, several)
    result = ApplyResult(
        the_plan.stack,
        [o for t in with_changes if t.name in results for o in results[t.name].outcomes],
        failed_targets={**errors, **failed},
    )
    _echo_target_errors(failed)
    click.echo(view.result(result), nl=False)
    return 0 if result.ok else 1


def _refuse_unconfirmed_apply(plan_file: Path | None, auto_approve: bool, targets: tuple[str, ...]) -> None:
    """Before anything is read: a fresh apply needs a yes (a terminal or --auto-approve); a saved plan
    brings its own targets."""
    from provisioner.errors import UsageError

    if plan_file is None and not auto_approve and not sys.stdin.isatty():
        raise UsageError(
            "apply needs confirmation and there is no terminal to ask on: "
            "pass --auto-approve, or apply a saved plan with --plan FILE"
        )
    if plan_file is not None and targets:
        raise UsageError(
            "--target cannot be combined with --plan: a saved plan made with --target records its targets "
            "and applies only those"
        )


def _reviewed_plan(
    plan_file: Path, paths: tuple[Path, ...], var: tuple[str, ...], var_files: tuple[Path, ...]
) -> Plan:
    """apply --plan, first step: the saved plan, unblocked, made from the manifests rendered now,
    checked before any material source is read or command run."""
    from provisioner.apply import check_manifest_digest
    from provisioner.plan.planner import check_instructions

    saved = _read_plan_file(plan_file)
    if saved.blocked:
        _echo_violations(saved)
        raise PlanBlocked(f"the plan is blocked by {len(saved.violations)} violation(s); nothing applied")
    reviewed, _, _ = _load_stage(paths, var, var_files, offline_material=True, warn_unused=False)
    check_manifest_digest(saved, reviewed)
    check_instructions(saved)
    return saved


def _check_saved_material(saved: Plan, ms: ManifestSet, fingerprints: dict[str, str]) -> None:
    """apply --plan, once the material is read: the manifests did not change meanwhile, and the
    material is the one the plan names."""
    from provisioner.apply import check_manifest_digest, check_plan_material

    check_manifest_digest(saved, ms)
    check_plan_material(saved, fingerprints)


def _saved_plan_stage(
    saved: Plan,
    t: _Target,
    fingerprints: dict[str, str],
    chosen: tuple[str, ...],
    now: datetime,
    expiry_warning: int,
) -> _Planned:
    """apply --plan, on one target's live keys (its backend checked already): every key as the plan saw
    it, and the plan made now with the material the same plan; the saved plan with the fingerprints read
    now (and the live state), and the expiry warnings of the plan made now."""
    from provisioner import apply as applying
    from provisioner.plan.planfile import relative_materials
    from provisioner.plan.planner import make_plan, resolve_fingerprints
    from provisioner.plan.values import retarget

    applying.check_plan_time(saved, now)
    live = _refresh_stage(t.ms, t.kms, now, chosen, fingerprints)
    applying.check_saved_plan(saved, live)
    # Every material rule the plan may have skipped (--offline-material), on the live keys.
    fresh = make_plan(
        t.ms, live, now=now, fingerprints=fingerprints, backend=t.kms.info, targets=chosen or None,
        lease_now=saved.created_at,  # a lease renews from the plan's time, as the plan shows it
    )
    if fresh.blocked:
        _echo_violations(fresh)
        found = "; ".join(f"{v.key}: {v.code.value}: {v.message}" for v in fresh.violations)
        raise PlanBlocked(
            f"the plan is blocked by {len(fresh.violations)} violation(s) found with the material "
            f"read now; nothing applied: {found}"
        )
    the_plan = resolve_fingerprints(saved, fingerprints)
    # Both as save_plan records them here: a plan made in another folder names its files absolutely.
    here = Path.cwd()
    mine = retarget(fresh, saved.changes[0].target) if saved.changes else fresh
    applying.check_same_plan(relative_materials(the_plan, here), relative_materials(mine, here))
    return _Planned(t, the_plan, live, _expiring(t.ms, live, fresh, now, expiry_warning))


def _lock_store(ms: ManifestSet, kms: Kms, target: str) -> LockStore:
    """The lock of the stack and target on this KMS."""
    from provisioner.lock import LockKeyTemplate, open_store

    template = LockKeyTemplate.of(ms.keys[0]) if ms.keys else None
    return open_store(kms, ms.stack, target, template)


def _acquire(t: _Target, timeout: float) -> HeldLock | None:
    """The lock of the stack on this target, held until the caller releases it (waiting up to
    `timeout` s; StackLocked names its holder and the target). None on alibaba for a target with no
    key: such an apply changes nothing there, and there is no key to model a lock key on."""
    from provisioner.lock import acquire

    if not t.ms.keys and t.kms.state_path is None:
        return None
    return acquire(_lock_store(t.ms, t.kms, t.name), stack=t.ms.stack, target=t.name, timeout=timeout)


def _confirmed() -> bool:
    answer = click.prompt("Apply these changes? Only 'yes' is accepted", default="", show_default=False)
    return bool(answer.strip() == "yes")


def _apply_stage(
    the_plan: Plan, kms: Kms, read: MaterialRead, parallelism: int | None, claims: Mapping[str, str],
    lost_lock: threading.Event | None,
) -> ApplyResult:
    """apply of one target: carry out its plan, one progress line per key on standard error; the material
    of the keys it imports to is all it is given (the caller wipes every material once every target is
    done). `claims`: the claim aliases read under the lock; `lost_lock`: set if the lock is taken over."""
    from provisioner import apply as applying

    planned = {c.key for c in the_plan.changes if c.material is not None}
    materials = {name: m for name, m in read.materials.items() if name in planned}
    target = _PROGRESS_TARGET.get()
    prefix = "" if target is None else f"{target}/"
    with _progress_stage(kms, "apply", total=len(the_plan.changes)) as progress:
        return applying.apply_plan(
            the_plan,
            kms,
            materials,
            parallelism=parallelism or applying.DEFAULT_PARALLELISM,
            progress=lambda line: progress.key_done(visible(prefix + line)),
            claims=claims,
            lost_lock=lost_lock,
        )


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@template_options
@backend_options
@only_target_option
@color_option
@_format_option(views.DRIFT)
@expiry_warning_option("Report material that expires within this many days.")
@click.option("--verify-material", is_flag=True, default=False,
              help="Confirm every live public key (GetPublicKey) against the pinned or recorded fingerprint.")
@target_option
@handle_errors
def drift(
    paths: tuple[Path, ...], var: tuple[str, ...], var_files: tuple[Path, ...], backend: str | None,
    endpoint: str | None, region: str | None, qps: tuple[str, ...], no_color: bool, fmt: str,
    expiry_warning: int, verify_material: bool, targets: tuple[str, ...],
) -> int:
    """Report what changed behind the manifests' back. Read-only; never reads private material.
    Exit 0 in sync, 2 drift found, 1 when a target could not be read."""
    from provisioner.drift import DriftReport, make_drift
    from provisioner.refresh import count_key_versions, refresh

    ms, _, _ = _load_stage(paths, var, var_files, offline_material=True)
    chosen = _target_stage(ms, targets, "drift run")
    if chosen:
        ms = dataclasses.replace(ms, keys=tuple(k for k in ms.keys if k.name in chosen))
    # drift never writes, not even an empty local state file where none was; it reads it read-only.
    run = _open_targets(ms, backend, endpoint, region, qps, create=False)
    now = _now()

    def check(t: _Target) -> DriftReport:
        with _progress_stage(t.kms, "refresh"):
            live = refresh(
                t.kms,
                t.ms.stack,
                now=now,
                managed_names=[k.name for k in t.ms.keys],
                confirm=(lambda key: True) if verify_material else None,
                targets=chosen or None,
            )
            live = count_key_versions(t.kms, live)
        return make_drift(
            t.ms, live, now=now, expiry_warning_days=expiry_warning, backend=t.kms.info,
            verify_material=verify_material,
        )

    try:
        reports, errors = _per_target(check, run, ms.several_targets)
    finally:
        _close_targets(run)
    report = (
        DriftReport.merged(ms.stack, now, [(t.name, t.kms.info) for t in run], reports, errors)
        if ms.several_targets else reports[DEFAULT_TARGET]
    )
    click.echo(views.DRIFT.view(fmt, color=use_color(no_color)).report(report), nl=False)
    _echo_target_errors(errors)
    return 1 if errors else 0 if report.in_sync else 2


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@template_options
@backend_options
@only_target_option
@color_option
@_format_option(views.SHOW)
@target_option
@handle_errors
def show(
    paths: tuple[Path, ...], var: tuple[str, ...], var_files: tuple[Path, ...], backend: str | None,
    endpoint: str | None, region: str | None, qps: tuple[str, ...], no_color: bool, fmt: str,
    targets: tuple[str, ...],
) -> int:
    """List every key the stack manages: name, key id, ARN, spec, usage, state, aliases, fingerprint,
    material expiry, target. Read-only; reads no private material."""
    from provisioner.refresh import refresh
    from provisioner.show import ShowReport, make_show

    ms, _, _ = _load_stage(paths, var, var_files, offline_material=True)
    chosen = _target_stage(ms, targets, "show")
    run = _open_targets(ms, backend, endpoint, region, qps, create=False)
    now = _now()

    def read(t: _Target) -> ShowReport:
        with _progress_stage(t.kms, "refresh"):
            live = refresh(
                t.kms,
                t.ms.stack,
                now=now,
                managed_names=[k.name for k in t.ms.keys if not chosen or k.name in chosen],
                targets=chosen or None,
            )
        return make_show(t.ms, live, backend=t.kms.info, targets=chosen or None)

    try:
        reports, errors = _per_target(read, run, ms.several_targets)
    finally:
        _close_targets(run)
    report = (
        ShowReport.merged(ms.stack, [(t.name, t.kms.info) for t in run], reports, errors, chosen)
        if ms.several_targets else reports[DEFAULT_TARGET]
    )
    text = views.SHOW.view(fmt, color=use_color(no_color)).show(report)
    click.echo(text, nl=False)
    _echo_target_errors(errors)
    return 1 if errors else 0



@cli.command()
@backend_options
@click.option(
    "--stack", default="discovered", show_default=True, metavar="NAME",
    help="The stack of the generated manifest.",
)
@_format_option(views.DISCOVER, "Output format: the manifest YAML.")
@plain_option
@handle_errors
def discover(
    backend: str | None, endpoint: str | None, region: str | None, qps: tuple[str, ...], stack: str, fmt: str
) -> int:
    """Print manifest YAML for every EXTERNAL key that no stack manages, each with `adopt: KEYID` and the
    fingerprint of its live public key: add each material source and plan to adopt them. Read-only."""
    from provisioner.discover import NAME_PATTERN
    from provisioner.discover import discover as read_unmanaged
    from provisioner.errors import UsageError

    if not NAME_PATTERN.fullmatch(stack):
        raise UsageError(
            f"--stack {stack!r}: expected 1..128 of letters, digits, '_', '-', '.', starting with a letter "
            f"or digit"
        )
    kms = _open_stage(None, backend, endpoint, region, qps, create=False)
    try:
        with _progress_stage(kms, "discover"):
            found = read_unmanaged(kms, now=_now(), stack=stack)
    finally:
        kms.close()
    for note in found.notes:
        _warn(note)
    click.echo(views.DISCOVER.view(fmt).discover(found), nl=False)
    return 0


@cli.command("schema")
@plain_option
@handle_errors
def schema_command() -> int:
    """Print the manifest JSON Schema (2020-12) for editors, e.g. `provision schema >
    manifest.schema.json` and a `# yaml-language-server: $schema=...` line atop each manifest."""
    from provisioner.manifest.schema import SCHEMA_FILE

    click.echo(SCHEMA_FILE.read_text(encoding="utf-8"), nl=False)
    return 0


#: The shells Click writes a completion script for.
COMPLETION_SHELLS = ("bash", "zsh", "fish")


@cli.command()
@click.argument("shell", type=click.Choice(COMPLETION_SHELLS))
@plain_option
@handle_errors
def completion(shell: str) -> int:
    """Print the shell completion script of `provision` for SHELL: commands, options, choices.

    bash: eval "$(provision completion bash)" in ~/.bashrc; zsh: the same in ~/.zshrc; fish:
    provision completion fish > ~/.config/fish/completions/provision.fish
    """
    from click.shell_completion import get_completion_class

    script_class = get_completion_class(shell)
    assert script_class is not None  # every COMPLETION_SHELLS name is one of Click's
    script = script_class(cli, {}, "provision", "_PROVISION_COMPLETE").source()
    click.echo(script if script.endswith("\n") else script + "\n", nl=False)
    return 0


@cli.command()
@click.argument("stack")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@template_options
@backend_options
@only_target_option
@handle_errors
def unlock(
    stack: str, paths: tuple[Path, ...], var: tuple[str, ...], var_files: tuple[Path, ...],
    backend: str | None, endpoint: str | None, region: str | None, qps: tuple[str, ...],
) -> int:
    """Break the lock of STACK by hand (an apply killed mid-way, whose lease has not lapsed yet).

    PATH (default manifests/) are the stack's manifests: they say where its KMS is, and must be of STACK.
    A stack of several targets has a lock per target: name the one with --only-target NAME.
    Make sure no apply of the stack still runs: the claims keep every identity to one key, but two
    applies at once get in each other's way."""
    from provisioner.errors import UsageError

    ms, _, _ = _load_stage(paths, var, var_files, offline_material=True)
    if ms.stack != stack:
        raise UsageError(f"the manifests are of stack {ms.stack!r}, not {stack!r}: nothing unlocked")
    if ms.several_targets and len(_only_targets(ms)) != 1:
        raise UsageError(
            f"stack {stack!r} has a lock per target ({', '.join(ms.target_names)}): name the one to unlock "
            f"with --only-target NAME"
        )
    [t] = _open_targets(ms, backend, endpoint, region, qps, create=False)
    try:
        missing = t.kms.state_path is not None and not t.kms.state_path.exists()
        broken = None if missing else _lock_store(t.ms, t.kms, t.name).break_lock()
    finally:
        t.kms.close()
    where = f'stack "{stack}" (target {t.name})'
    said = f"{where} was not locked" if broken is None else f"unlocked {where}: it was {broken.describe()}"
    click.echo(visible(said), err=True)
    return 0


def _show_click_error(e: click.ClickException) -> None:
    """click's own message, with the user's argument (echoed in it) on one line and escaped."""
    text = io.StringIO()
    e.show(file=text)
    message = e.format_message()
    shown = text.getvalue().replace(message, visible(message)) if message else text.getvalue()
    click.echo(visible(shown, keep="\n"), err=True, nl=False)


def _run(argv: Sequence[str] | None, clock: Callable[[], datetime] | None) -> int:
    try:
        # prog_name fixed: the completion scripts ask `_PROVISION_COMPLETE`, however main was started.
        rv = cli.main(
            args=list(argv) if argv is not None else None, prog_name="provision", standalone_mode=False,
            obj=clock,
        )
    except click.exceptions.Abort:
        _fail("aborted")
    except click.ClickException as e:
        _show_click_error(e)
        return 1
    except click.exceptions.Exit as e:
        return e.exit_code
    return rv if isinstance(rv, int) else 0


def main(argv: Sequence[str] | None = None, *, clock: Callable[[], datetime] | None = None) -> None:
    """Console-script entry point: click's usage errors exit 1, like every other user mistake, and so
    does output that cannot be written (`> /dev/full`, a closed pipe), with one line and no traceback.

    `clock` (tests): what "now" is for plans, drift, leases and expiry warnings; default the system's."""
    _output_lost.clear()
    try:
        try:
            code: int | str | None = _run(argv, clock)
        except SystemExit as e:
            code = e.code
        sys.stdout.flush()  # here, not at the interpreter's exit, where a full disk is a traceback
    except OSError as e:
        if e.errno not in _OUTPUT_ERRNOS:
            raise
        _output_failed(e)
    sys.exit(code)
