"""What the text views share: escaping of values, colour, the header lines that name the backend.

Only formatting; no I/O, no decision. Every value from a manifest or the KMS passes through `shown`
or `quoted` before it reaches a line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from provisioner.escape import json_safe, visible

if TYPE_CHECKING:
    from provisioner.show import Generations

# ANSI SGR codes; used only when the caller asks for colour.
GREEN, YELLOW, RED, CYAN, BOLD, DIM = "32", "33", "31", "36", "1", "2"

Painter = Callable[[str, str], str]


def painter(color: bool) -> Painter:
    def paint(text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if color else text

    return paint


def shown(text: Any) -> str:
    """`text` with control, format and invisible characters (escapes, bidi overrides, zero-width,
    newlines) written as \\uXXXX: a value must not drive, reorder or hide what a reviewer reads."""
    return visible(str(text))


def quoted(value: Any) -> str:
    """A value as the user would write it in a manifest."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return shown(json.dumps(value, ensure_ascii=False))


def backend_words(backend: Mapping[str, str]) -> str:
    kind = shown(backend.get("type", "?"))
    rest = ", ".join(
        f"{shown(k)} {shown(v)}" for k, v in sorted(backend.items()) if k not in ("type", "endpoint")
    )
    return f"{kind} ({rest})" if rest else kind


def endpoint_lines(backend: Mapping[str, str]) -> list[str]:
    """The header line that says where a document was read from, so a reviewer sees whose answers
    it shows (DESIGN section 9); none when the document does not know."""
    endpoint = backend.get("endpoint")
    return [f"Endpoint: {shown(endpoint)}"] if endpoint else []


def where_lines(backend: Mapping[str, str], backends: Sequence[Mapping[str, str]] = ()) -> list[str]:
    """Where a document was read: its backend's endpoint, or each target's type, region and endpoint
    (DESIGN sections 9 and 12)."""
    if not backends:
        return endpoint_lines(backend)
    out = []
    for info in backends:
        rest = {k: v for k, v in info.items() if k != "name"}
        out.append(f"  Target {shown(info.get('name', '?'))}: {backend_words(rest)}")
        out += [f"    {line}" for line in endpoint_lines(info)]
    return out


def generation_lines(generations: Sequence[Generations], several: bool = False) -> list[str]:
    """`Generations:` and one line per rotated key, current first: `NAME: 2 KEY-ID STATE (current), 1 ...`."""
    if not generations:
        return []
    out = ["Generations (current first):"]
    for g in generations:
        name = f"{g.target}/{g.name}" if several else g.name
        listed = ", ".join(
            f"{x.generation} {shown(x.key_id)} {shown(x.state)}{' (current)' if i == 0 else ''}"
            for i, x in enumerate(g.generations)
        )
        out.append(f"  {shown(name)}: {listed}")
    return out


def failed_target_lines(errors: Mapping[str, str], verb: str = "read") -> list[str]:
    """One line per target that could not be read (or planned, or applied), with why."""
    return [f"  Target {shown(name)}: not {verb}: {shown(message)}" for name, message in errors.items()]


def json_document(document: Any, *, ascii_only: bool = False) -> str:
    """A JSON document, every string escaped as in text, so `jq -r` prints no raw control character.
    `ascii_only`: non-ASCII written as \\uXXXX too (the apply and validate documents always were)."""
    return json.dumps(json_safe(document), indent=2, ensure_ascii=ascii_only) + "\n"
