"""Credentials per target (DESIGN section 12): `--target-profile NAME=PROFILE`, `--target-role NAME=ARN`.

Credentials come from the command line and the files the Alibaba Cloud SDK reads, never from a
manifest: a pull request controls the manifests and must not choose whose keys sign the calls. A
profile is looked up in the CLI's `~/.aliyun/config.json` first, then in the SDK's credentials file
(`~/.alibabacloud/credentials.ini`, or ALIBABA_CLOUD_CREDENTIALS_FILE); a role is assumed through
STS AssumeRole with the base credentials (that target's profile, else the default chain).

No message here echoes a value given to a flag: a profile name pasted in the wrong place may be a
secret. The target name and the file consulted are enough to find the mistake.
"""

from __future__ import annotations

import configparser
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from provisioner.errors import UsageError

PROFILE_FLAG = "--target-profile"
ROLE_FLAG = "--target-role"
#: What a profile name may be: what the aliyun CLI's `--profile` takes in practice.
PROFILE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: A RAM role's ARN: `acs:ram::ACCOUNT:role/NAME` (the account id is digits; a role name is 1..64
#: letters, digits, '.', '-' or '_'; the console shows it in lower case).
ROLE_ARN_PATTERN = re.compile(r"acs:ram::[0-9]{1,32}:role/[A-Za-z0-9._-]{1,64}")
ROLE_ARN_FORM = "acs:ram::ACCOUNT-ID:role/ROLE-NAME"
#: The STS session of every assumed role says which tool and which target: stable across runs, so
#: ActionTrail groups a pipeline's calls, and 2..64 of the characters STS takes.
SESSION_PREFIX = "byok-provisioner"
#: The vendor's default (and the SDK's): one hour, enough for any run; refreshed by the SDK before
#: it expires.
ROLE_DURATION_SECONDS = 3600


def parse_target_assignments(values: Sequence[str], flag: str) -> dict[str, str]:
    """`NAME=VALUE` items of a repeatable flag (`--target-profile`, `--target-role`) to a dict, in
    the order given. A name follows targets.NAME_PATTERN; a name given twice is refused. Whether each
    name is a target of the manifest set is the caller's check (it knows the set)."""
    from provisioner.targets import NAME_PATTERN, NAME_RULE

    assigned: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not value.strip():
            shown = f" for {name!r}" if NAME_PATTERN.fullmatch(name) else ""
            raise UsageError(f"{flag}: expected NAME=VALUE{shown}, such as {flag} eu={_example(flag)}")
        if not NAME_PATTERN.fullmatch(name):
            # The name is not a secret, but a malformed item may be a value typed first: not shown.
            raise UsageError(f"{flag}: the target name before '=' must be {NAME_RULE}")
        if name in assigned:
            raise UsageError(f"{flag}: target {name!r} is given more than once")
        assigned[name] = value.strip()
    return assigned


def _example(flag: str) -> str:
    return "acs:ram::1234567890123456:role/kms-importer" if flag == ROLE_FLAG else "ops-eu"


def target_credentials(
    profile: str | None,
    role_arn: str | None,
    *,
    target: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Any:
    """A credentials client (`alibabacloud_credentials.client.Client`) for one target's AlibabaTransport,
    or None for the default chain (neither flag for this target).

    `profile`: that profile of `~/.aliyun/config.json` (unless ALIBABA_CLOUD_CLI_PROFILE_DISABLED is
    true), else that section of the credentials file; refused here when neither has it. `role_arn`:
    STS AssumeRole of that role, signed with the profile's credentials when both are given, else the
    default chain's, in a session named `byok-provisioner-TARGET`. The STS endpoint is the SDK's
    (`sts.aliyuncs.com`, or the region in ALIBABA_CLOUD_STS_REGION): the pipeline's, never a
    manifest's. Files are read now; secrets are read at the first call, by the SDK.
    """
    from alibabacloud_credentials.client import Client as CredClient

    if profile is None and role_arn is None:
        return None
    env = os.environ if environ is None else environ
    where = f"{PROFILE_FLAG} {target}" if target else PROFILE_FLAG
    provider = _profile_provider(profile, env, where) if profile is not None else None
    if role_arn is not None:
        provider = _role_provider(role_arn, provider, target, env)
    return CredClient(provider=provider)


def role_session_name(target: str | None) -> str:
    return f"{SESSION_PREFIX}-{target}" if target else SESSION_PREFIX


def _home(env: Mapping[str, str]) -> Path:
    home = env.get("HOME")
    return Path(home) if home else Path.home()


def _cli_config(env: Mapping[str, str]) -> Path:
    return _home(env) / ".aliyun" / "config.json"


def _credentials_file(env: Mapping[str, str]) -> Path:
    named = env.get("ALIBABA_CLOUD_CREDENTIALS_FILE", "").strip()
    return Path(named) if named else _home(env) / ".alibabacloud" / "credentials.ini"


def _profile_provider(profile: str, env: Mapping[str, str], where: str) -> Any:
    from alibabacloud_credentials.provider import CLIProfileCredentialsProvider, ProfileCredentialsProvider

    if not PROFILE_PATTERN.fullmatch(profile):
        raise UsageError(f"{where}=PROFILE: a profile name is 1..64 of letters, digits, '_', '.' and '-'")
    cli_config = _cli_config(env)
    cli_disabled = env.get("ALIBABA_CLOUD_CLI_PROFILE_DISABLED", "").strip().lower() == "true"
    if not cli_disabled and profile in _cli_profiles(cli_config, where):
        return CLIProfileCredentialsProvider(profile_name=profile, profile_file=str(cli_config))
    ini = _credentials_file(env)
    if profile in _ini_sections(ini, where):
        return ProfileCredentialsProvider(profile_file=str(ini), profile_name=profile)
    looked = f"{ini}" if cli_disabled else f"{cli_config} or {ini}"
    raise UsageError(f"{where}=PROFILE: no profile of that name in {looked}")


def _cli_profiles(path: Path, where: str) -> set[str]:
    """The profile names of the aliyun CLI's config.json; none when the file is absent."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return set()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{where}: cannot read {path} ({type(e).__name__})") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        # The position only: the text around it may be a secret.
        raise UsageError(f"{where}: {path}:{e.lineno}:{e.colno}: not valid JSON") from None
    profiles = config.get("profiles") if isinstance(config, dict) else None
    if not isinstance(profiles, list):
        return set()
    return {p["name"] for p in profiles if isinstance(p, dict) and isinstance(p.get("name"), str)}


def _ini_sections(path: Path, where: str) -> set[str]:
    """The section names of the SDK's credentials file; none when the file is absent."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with path.open(encoding="utf-8") as f:
            parser.read_file(f)
    except FileNotFoundError:
        return set()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{where}: cannot read {path} ({type(e).__name__})") from None
    except configparser.Error as e:
        # configparser quotes the offending line, which may hold a secret: its number only.
        line = getattr(e, "lineno", None)
        at = f":{line}" if isinstance(line, int) else ""
        raise UsageError(f"{where}: {path}{at}: not a valid credentials file") from None
    return set(parser.sections())


def _role_provider(role_arn: str, base: Any, target: str | None, env: Mapping[str, str]) -> Any:
    from alibabacloud_credentials.provider import RamRoleArnCredentialsProvider

    where = f"{ROLE_FLAG} {target}" if target else ROLE_FLAG
    if not ROLE_ARN_PATTERN.fullmatch(role_arn):
        raise UsageError(f"{where}=ARN: expected a RAM role ARN, {ROLE_ARN_FORM}")
    return RamRoleArnCredentialsProvider(
        credentials_provider=base if base is not None else default_provider(env),
        role_arn=role_arn,
        role_session_name=role_session_name(target),
        duration_seconds=ROLE_DURATION_SECONDS,
    )


def default_provider(env: Mapping[str, str]) -> Any:
    """The default chain as a provider (the base of a role without a profile), reading the access key
    variables now, as `alibaba.default_credentials` does: the SDK reads them once, at import."""
    from alibabacloud_credentials.provider import (
        DefaultCredentialsProvider,
        StaticAKCredentialsProvider,
        StaticSTSCredentialsProvider,
    )

    key_id = env.get("ALIBABA_CLOUD_ACCESS_KEY_ID")
    secret = env.get("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
    token = env.get("ALIBABA_CLOUD_SECURITY_TOKEN")
    if key_id and secret:
        if token:
            return StaticSTSCredentialsProvider(
                access_key_id=key_id, access_key_secret=secret, security_token=token
            )
        return StaticAKCredentialsProvider(access_key_id=key_id, access_key_secret=secret)
    return DefaultCredentialsProvider()
