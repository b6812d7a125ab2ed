"""Credentials per target (DESIGN section 12): --target-profile / --target-role parsing, the credential
objects, and profiles from a temp HOME signing real SDK calls against emulators that each accept only
their own key pair."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from alibabacloud_credentials.provider import (
    CLIProfileCredentialsProvider,
    ProfileCredentialsProvider,
    RamRoleArnCredentialsProvider,
    StaticAKCredentialsProvider,
)
from Tea.core import TeaCore

from provisioner.backend import open_kms
from provisioner.backend.credentials import parse_target_assignments, target_credentials
from provisioner.emulator import signing
from provisioner.emulator.server import EmulatorConfig
from provisioner.errors import KmsApiError, UsageError
from provisioner.model import BackendConfig

ROLE = "acs:ram::1234567890123456:role/kms-importer"
EU_ID, EU_SECRET = "LTAI5tEuTargetOnly", "eu-secret-never-shown-9f3b"
US_ID, US_SECRET = "LTAI5tUsTargetOnly", "us-secret-never-shown-41c7"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME with the CLI's config.json (profile eu) and the SDK's credentials.ini (profile us); the
    environment's access key is one no emulator accepts, so a call that works used the profile."""
    (tmp_path / ".aliyun").mkdir()
    (tmp_path / ".aliyun" / "config.json").write_text(
        json.dumps(
            {
                "current": "eu",
                "profiles": [
                    {"name": "eu", "mode": "AK", "access_key_id": EU_ID, "access_key_secret": EU_SECRET},
                    {"name": "bad", "mode": "AK", "access_key_id": EU_ID, "access_key_secret": "wrong-9d1e"},
                ],
            }
        )
    )
    (tmp_path / ".alibabacloud").mkdir()
    (tmp_path / ".alibabacloud" / "credentials.ini").write_text(
        f"[us]\ntype = access_key\naccess_key_id = {US_ID}\naccess_key_secret = {US_SECRET}\n"
    )
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI5tNobodyAcceptsThis")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "env-secret-never-used")
    monkeypatch.delenv("ALIBABA_CLOUD_SECURITY_TOKEN", raising=False)
    monkeypatch.delenv("ALIBABA_CLOUD_CREDENTIALS_FILE", raising=False)
    monkeypatch.delenv("ALIBABA_CLOUD_CLI_PROFILE_DISABLED", raising=False)
    return tmp_path


def usage_error(call: Callable[[], Any], message: str) -> None:
    with pytest.raises(UsageError) as e:
        call()
    assert str(e.value) == message


# --- parse_target_assignments ---------------------------------------------------------------------

NO_VALUE = "--target-profile: expected NAME=VALUE for 'eu', such as --target-profile eu=ops-eu"


def test_assignments_keep_the_order_given() -> None:
    assert parse_target_assignments(["us=ops-us", "eu=ops-eu"], "--target-profile") == {
        "us": "ops-us",
        "eu": "ops-eu",
    }
    assert parse_target_assignments([f"cn-east={ROLE}"], "--target-role") == {"cn-east": ROLE}
    assert parse_target_assignments([], "--target-role") == {}


@pytest.mark.parametrize(
    ("items", "flag", "message"),
    [
        (["eu"], "--target-profile", NO_VALUE),
        (["eu="], "--target-profile", NO_VALUE),
        (
            ["LTAI5tSecretLike"],
            "--target-role",
            "--target-role: expected NAME=VALUE, such as --target-role "
            "eu=acs:ram::1234567890123456:role/kms-importer",
        ),
        (
            ["EU=x"],
            "--target-profile",
            "--target-profile: the target name before '=' must be 1..32 of lowercase letters, digits and "
            "'-', starting with a letter",
        ),
        (["eu=a", "eu=b"], "--target-profile", "--target-profile: target 'eu' is given more than once"),
    ],
)
def test_assignment_errors(items: list[str], flag: str, message: str) -> None:
    usage_error(lambda: parse_target_assignments(items, flag), message)


# --- target_credentials: form checks and configuration -----------------------------------------------


def test_neither_flag_is_the_default_chain() -> None:
    assert target_credentials(None, None, target="eu") is None


def test_bad_forms_are_refused_without_echoing_the_value(home: Path) -> None:
    usage_error(
        lambda: target_credentials("eu secret/with spaces", None, target="eu"),
        "--target-profile eu=PROFILE: a profile name is 1..64 of letters, digits, '_', '.' and '-'",
    )
    usage_error(
        lambda: target_credentials(None, "acs:ram::12:user/someone-secret", target="eu"),
        "--target-role eu=ARN: expected a RAM role ARN, acs:ram::ACCOUNT-ID:role/ROLE-NAME",
    )
    usage_error(
        lambda: target_credentials("LTAI5tNotAProfile", None, target="eu"),
        f"--target-profile eu=PROFILE: no profile of that name in {home}/.aliyun/config.json or "
        f"{home}/.alibabacloud/credentials.ini",
    )


def test_unreadable_files_are_located_without_their_text(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = home / ".aliyun" / "config.json"
    config.write_text('{"profiles": [\n  {"access_key_secret": "leaked-9a8b" oops}]}')
    usage_error(
        lambda: target_credentials("eu", None, target="eu"),
        f"--target-profile eu: {config}:2:39: not valid JSON",
    )
    monkeypatch.setenv("ALIBABA_CLOUD_CLI_PROFILE_DISABLED", "true")
    ini = home / "other.ini"
    ini.write_text("access_key_secret = leaked-9a8b\n")
    monkeypatch.setenv("ALIBABA_CLOUD_CREDENTIALS_FILE", str(ini))
    usage_error(
        lambda: target_credentials("us", None, target="us"),
        f"--target-profile us: {ini}:1: not a valid credentials file",
    )
    ini.write_text("[us]\ntype = access_key\n")
    # The CLI config is not consulted when the SDK is told not to.
    usage_error(
        lambda: target_credentials("eu", None, target="eu"),
        f"--target-profile eu=PROFILE: no profile of that name in {ini}",
    )


def test_profiles_come_from_the_cli_config_then_the_credentials_file(home: Path) -> None:
    cli = target_credentials("eu", None, target="eu").cloud_credential.provider
    assert isinstance(cli, CLIProfileCredentialsProvider)
    ini = target_credentials("us", None, target="us").cloud_credential.provider
    assert isinstance(ini, ProfileCredentialsProvider)
    assert ini.get_credentials().get_access_key_id() == US_ID
    assert cli.get_credentials().get_access_key_id() == EU_ID


def test_a_role_is_assumed_with_the_default_chain_or_the_profile(home: Path) -> None:
    alone = target_credentials(None, ROLE, target="cn-east").cloud_credential.provider
    assert isinstance(alone, RamRoleArnCredentialsProvider)
    assert (alone._role_arn, alone._role_session_name) == (ROLE, "byok-provisioner-cn-east")
    assert alone._duration_seconds == 3600
    assert alone._sts_endpoint == "sts.aliyuncs.com"  # the SDK's: nothing of a manifest reaches it
    base = alone._credentials_provider
    assert isinstance(base, StaticAKCredentialsProvider)
    assert base.get_credentials().get_access_key_id() == "LTAI5tNobodyAcceptsThis"
    on_profile = target_credentials("eu", ROLE, target="eu").cloud_credential.provider
    assert isinstance(on_profile, RamRoleArnCredentialsProvider)
    assert isinstance(on_profile._credentials_provider, CLIProfileCredentialsProvider)
    assert on_profile._role_session_name == "byok-provisioner-eu"


def test_the_local_backend_refuses_target_credentials(home: Path, tmp_path: Path) -> None:
    credentials = target_credentials("eu", None, target="eu")
    usage_error(
        lambda: open_kms(
            backend=None, endpoint=None, region=None, manifest_backend=None, cwd=tmp_path,
            credentials=credentials,
        ),
        "--target-profile and --target-role apply to the alibaba backend only; the backend is local",
    )


# --- against emulators, through the SDK ---------------------------------------------------------------


@pytest.fixture
def two_sites(emulator_factory: Callable[..., Any], home: Path) -> Iterator[tuple[Any, Any]]:
    # Each accepts the public default pair (its main one) and its own target's pair only.
    eu = emulator_factory(extra_access_keys={EU_ID: EU_SECRET})
    us = emulator_factory(extra_access_keys={US_ID: US_SECRET})
    yield eu, us


def _kms(emulator: Any, credentials: Any) -> Any:
    manifest = BackendConfig(type="alibaba", region="cn-hangzhou")
    return open_kms(
        backend=None, endpoint=emulator.url, region=None, manifest_backend=manifest, credentials=credentials
    )


def _list_keys(kms: Any) -> list[str] | KmsApiError:
    """The key ids, or the KmsApiError the call raised; the KMS is closed either way."""
    try:
        result: list[str] = kms.list_keys()
        return result
    except KmsApiError as e:
        return e
    finally:
        kms.close()


def test_each_target_signs_with_its_own_profile(
    two_sites: tuple[Any, Any], capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    eu, us = two_sites
    seen: list[str] = []
    for emulator, profile in ((eu, "eu"), (us, "us")):
        kms = _kms(emulator, target_credentials(profile, None, target=profile))
        seen += [kms.description, repr(kms.info)]
        assert _list_keys(kms) == []
    # The other site's pair, or the environment's, is not accepted: the profile is what signed.
    for emulator, profile, code in (
        (eu, "us", "InvalidAccessKeyId.NotFound"),
        (us, "eu", "InvalidAccessKeyId.NotFound"),
        (eu, None, "InvalidAccessKeyId.NotFound"),
        (eu, "bad", "SignatureDoesNotMatch"),
    ):
        creds = target_credentials(profile, None, target="x") if profile else None
        error = _list_keys(_kms(emulator, creds))
        assert isinstance(error, KmsApiError)
        assert error.code == code
        assert error.message.startswith("the credentials were refused (set ALIBABA_CLOUD_ACCESS_KEY_ID")
        seen += [str(error), repr(error)]
    out, err = capfd.readouterr()
    text = "\n".join([*seen, out, err, caplog.text])
    for secret in (EU_SECRET, US_SECRET, "wrong-9d1e", "env-secret-never-used"):
        assert secret not in text


def test_an_assumed_role_signs_kms_calls_with_its_temporary_key(
    emulator_factory: Callable[..., Any], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK sends AssumeRole over https only (its STS endpoint cannot be the http emulator): the
    call is caught at the SDK's HTTP seam, checked (host, action, role, session, the profile's
    signature) and answered in the vendor's shape; the emulator then accepts the temporary key."""
    temporary = ("STS.NUx4tEmporary", "sts-secret-never-shown-77", "CAIS-token-never-shown")
    caught: list[Any] = []

    class Answer:
        status_code = 200
        body = json.dumps(
            {
                "RequestId": "6894B13B-6D71-4EF5-88FA-F32781734A7F",
                "AssumedRoleUser": {
                    "Arn": f"{ROLE}/byok-provisioner-eu",
                    "AssumedRoleId": "344584339364951186:byok-provisioner-eu",
                },
                "Credentials": {
                    "AccessKeyId": temporary[0],
                    "AccessKeySecret": temporary[1],
                    "SecurityToken": temporary[2],
                    "Expiration": "2099-01-01T00:00:00Z",
                },
            }
        ).encode()

    def do_action(request: Any, runtime: Any = None) -> Answer:
        caught.append(request)
        return Answer()

    monkeypatch.setattr(TeaCore, "do_action", staticmethod(do_action))
    pair = {temporary[0]: temporary[1]}
    emulator = emulator_factory(extra_access_keys=pair, security_tokens={temporary[0]: temporary[2]})
    assert _list_keys(_kms(emulator, target_credentials("eu", ROLE, target="eu"))) == []
    # The temporary key is accepted only with its token: the SDK sent the one STS gave.
    other = emulator_factory(extra_access_keys=pair, security_tokens={temporary[0]: "CAIS-another-token"})
    refused = _list_keys(_kms(other, target_credentials("eu", ROLE, target="eu")))
    assert isinstance(refused, KmsApiError)
    assert refused.code == "InvalidSecurityToken.MismatchWithAccessKey"
    assert refused.message.startswith("the credentials were refused")
    for secret in (*temporary[1:], EU_SECRET):
        assert secret not in f"{refused} {refused!r}"
    assert len(caught) == 2  # one AssumeRole per target's credentials, then cached by the SDK
    request = caught[0]
    assert (request.protocol, request.headers["host"]) == ("https", "sts.aliyuncs.com")
    query = dict(request.query)
    assert (query["Action"], query["RoleArn"], query["RoleSessionName"]) == (
        "AssumeRole",
        ROLE,
        "byok-provisioner-eu",
    )
    assert query["AccessKeyId"] == EU_ID
    assert query["Signature"] == signing.v2_signature(EU_SECRET, "GET", query)
    assert EU_SECRET not in urlencode(query)


def test_extra_pairs_keep_the_emulator_refusing_public_defaults_beyond_loopback() -> None:
    from provisioner.emulator.server import PublicCredentialsExposed

    with pytest.raises(PublicCredentialsExposed) as e:
        EmulatorConfig(host="0.0.0.0", extra_access_keys={EU_ID: EU_SECRET})
    assert "the default access key id and secret are public" in str(e.value)
    with pytest.raises(ValueError) as empty:
        EmulatorConfig(extra_access_keys={EU_ID: ""})
    assert str(empty.value) == "access key id and secret must not be empty"
    with pytest.raises(ValueError) as stray:
        EmulatorConfig(security_tokens={EU_ID: "CAIS-token"})
    assert str(stray.value) == "a security token must be non-empty and belong to an accepted access key id"
    assert EU_SECRET not in repr(EmulatorConfig(extra_access_keys={EU_ID: EU_SECRET}))
