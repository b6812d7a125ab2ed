"""The discover view: manifest YAML for the keys discover found, each with `adopt: <KeyId>`.

What a live key holds was written by whoever has KMS access, and the YAML is later rendered as a Jinja
template and parsed: every string is quoted as YAML quotes it, anything outside printable ASCII is a
YAML escape (`\\e`, `\\u202e`), and template syntax is written so that it renders as itself.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import yaml

from provisioner.discover import Discovery, FoundKey
from provisioner.escape import visible
from provisioner.model import KeyState, format_time
from provisioner.specs import Verification, facts
from provisioner.views import View


@runtime_checkable
class DiscoverView(Protocol):
    def discover(self, discovery: Discovery) -> str:
        """The generated manifest."""
        ...


class DiscoverYaml(View):
    def discover(self, discovery: Discovery) -> str:
        return render_discovery_yaml(discovery)


if TYPE_CHECKING:
    _IMPLEMENTED: tuple[type[DiscoverView], ...] = (DiscoverYaml,)


class _Dumper(yaml.SafeDumper):
    """safe_dump's dumper, with every string outside printable ASCII double-quoted (YAML escapes)."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Printable ASCII: PyYAML picks plain or quoted as the content needs. Anything else (newlines, ESC,
    # bidi controls, any non-ASCII letter) is double-quoted, where each becomes an escape like \e or
    # \u202e: the value round-trips exactly and no raw control character reaches the terminal.
    printable = all(" " <= ch <= "~" for ch in value)
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=None if printable else '"')


_Dumper.add_representer(str, _represent_str)

#: Jinja's openers: an expression, a statement, a comment.
_TEMPLATE_OPENER = re.compile(r"\{([{%#])")


def neutralise_template(text: str) -> str:
    """`text` written so that Jinja renders it as itself: each `{{`, `{%` and `{#` becomes an expression
    that prints those two characters, so nothing a live key holds is ever evaluated."""
    return _TEMPLATE_OPENER.sub(lambda m: "{{ '{" + m.group(1) + "' }}", text)


def _entry(key: FoundKey) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "adopt": key.key_id,
        "spec": key.spec.value,
        "usage": key.usage.value,
        "protection": key.protection.value,
    }
    if key.instance is not None:
        entry["instance"] = key.instance
    entry["description"] = key.description
    entry["aliases"] = list(key.aliases)
    entry["tags"] = dict(key.tags)
    entry["expiry"] = format_time(key.expiry) or "never"
    if key.deletion_protection:
        entry["deletion_protection"] = True
    if key.fingerprint is not None:
        entry["material"] = {"fingerprint": key.fingerprint}
    return entry


def _comment(key: FoundKey) -> str | None:
    if key.fingerprint is not None:
        return None
    if key.state is KeyState.DISABLED:
        return "Disabled: no fingerprint read (GetPublicKey needs an enabled key); enable it before adopting"
    if key.state is KeyState.PENDING_IMPORT:
        return "PendingImport: holds no material; add the material to import into it"
    if facts(key.spec).verification is not Verification.PUBLIC_KEY_FINGERPRINT:
        return (
            f"{key.state.value}: KMS cannot show which symmetric material it holds; "
            "pin material.fingerprint: kcv:... (provision fingerprint FILE --material-format raw|hex|base64)"
        )
    return f"{key.state.value}: its public key could not be read; pin material.fingerprint by hand"


def _dump(value: Any) -> str:
    return yaml.dump(
        value, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=False, width=2**31
    )


def render_discovery_yaml(discovery: Discovery) -> str:
    """The manifest document: a header comment that says where the keys were read, `version`, `stack`,
    then one entry per key."""
    n = len(discovery.keys)
    lines = [
        f"# Written by `provision discover` from {visible(discovery.source)}:",
        f"# {n} EXTERNAL key(s) that no stack manages.",
        "# Add each key's material source (file:, env: or command:) next to its fingerprint; a plan",
        "# then adopts each key (action adopt) without creating or importing anything.",
        _dump({"version": 1, "stack": discovery.stack}).rstrip("\n"),
    ]
    if not discovery.keys:
        lines.append("keys: {}")
    else:
        lines.append("keys:")
        for key in discovery.keys:
            comment = _comment(key)
            if comment is not None:
                lines.append(f"  # {comment}")
            lines += ["  " + line for line in _dump({key.name: _entry(key)}).rstrip("\n").split("\n")]
    # Every line is escaped by YAML already; visible() is the last word on what reaches a terminal.
    return visible(neutralise_template("\n".join(lines) + "\n"), keep="\n")
