"""What a manifest may reach: the environment allow list, the never-readable variables, commands.

A pull request controls the manifests, so every read a manifest can cause goes through the rules
here, which are set only from outside the manifests (flags and the pipeline's environment). This
module reads the environment's names and values only to decide; it never returns a value.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: Globs never readable by a manifest, whatever the allow list says (DESIGN section 9).
NEVER_READABLE = (
    "ALIBABA_CLOUD_*",
    "ALICLOUD_*",
    "ALIYUN_*",
    "ACTIONS_*",
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "PROVISION_ALLOW_*",
)
#: The allow list when neither --allow-env nor PROVISION_ALLOW_ENV gives one.
DEFAULT_ALLOW_ENV = ("PROVISION_VAR_*",)
ALLOW_ENV_VARIABLE = "PROVISION_ALLOW_ENV"
ALLOW_COMMANDS_VARIABLE = "PROVISION_ALLOW_COMMANDS"
#: A value holding this is key material (or a certificate) whatever its name.
PEM_MARKER = "-----BEGIN"
#: The only variables a material command gets besides its `pass_env` names.
COMMAND_BASE_ENV = ("PATH", "HOME", "LANG")


def _matches(name: str, globs: Iterable[str]) -> str | None:
    # fnmatchcase: the rule is case-sensitive on every platform.
    return next((g for g in globs if fnmatch.fnmatchcase(name, g)), None)


@dataclass(frozen=True)
class EnvPolicy:
    """Which environment variables templates and commands may read.

    `allow`: the allow-list globs; `material_names`: the variables the manifest set names as a
    material `env:` source or `passphrase_env` (never readable by a template).
    """

    allow: tuple[str, ...] = DEFAULT_ALLOW_ENV
    material_names: frozenset[str] = frozenset()

    @classmethod
    def from_sources(cls, flags: Iterable[str], environ: Mapping[str, str]) -> EnvPolicy:
        """--allow-env globs plus PROVISION_ALLOW_ENV's comma-separated ones; the default if neither."""
        given = [g.strip() for g in flags if g.strip()]
        given += [g.strip() for g in environ.get(ALLOW_ENV_VARIABLE, "").split(",") if g.strip()]
        return cls(allow=tuple(given) if given else DEFAULT_ALLOW_ENV)

    def with_material_names(self, names: Iterable[str]) -> EnvPolicy:
        return EnvPolicy(self.allow, self.material_names | frozenset(names))

    def refusal(self, name: str, environ: Mapping[str, str]) -> str | None:
        """Why a template may not read `name` (None: it may). Never mentions the value."""
        never = never_readable_rule(name, environ)
        if never is not None:
            return never
        if name in self.material_names:
            return "it is named as a material source (env or passphrase_env) in the manifests"
        if _matches(name, self.allow) is None:
            shown = ", ".join(self.allow)
            return f"it is not in the allow list ({shown}; set with --allow-env or {ALLOW_ENV_VARIABLE})"
        return None


def never_readable_rule(name: str, environ: Mapping[str, str]) -> str | None:
    """The rule that makes `name` never readable by a manifest, or None."""
    glob = _matches(name, NEVER_READABLE)
    if glob is not None:
        return f"variables matching {glob} are never readable by a manifest"
    if PEM_MARKER in environ.get(name, ""):
        return "its value holds key material (-----BEGIN): such a variable is never readable by a manifest"
    return None


def commands_allowed(flag: bool, environ: Mapping[str, str]) -> bool:
    """--allow-commands, or PROVISION_ALLOW_COMMANDS set to exactly 1."""
    return flag or environ.get(ALLOW_COMMANDS_VARIABLE) == "1"
