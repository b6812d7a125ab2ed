"""Words for messages: how a value, a field path and a parser's complaint are shown.

The lowest layer of the manifest package: it imports nothing of it, reads no file and no
environment, and never shows more of a value than the caller asked for.
"""

from __future__ import annotations

import json
import re

#: Where a value sits in a document: mapping keys and list indexes from the top.
DocPath = tuple[str | int, ...]

# What a parser quotes from its input; its own token names ('<stream end>') may stay.
_QUOTED = re.compile(r"\s*'(?!<[a-z ]+>')[^']*'|\s*\"[^\"]*\"")


def without_quotes(message: str) -> str:
    """A parser's message without what it quotes from the input (a token, a character, a line)."""
    return _QUOTED.sub("", message).strip()


TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "boolean": "true or false",
    "number": "a number",
}


def json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "value"


def is_scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def show_value(value: object, limit: int = 80) -> str:
    """A value as the user wrote it, quoted, shortened: for messages."""
    if isinstance(value, str | int | float | bool) or value is None:
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, dict):
        text = "a mapping"
    elif isinstance(value, list):
        text = "a list"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + '..."'


def path_words(path: DocPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the top level"

