"""One rule for every character the tool prints: nothing a manifest or a live key holds may drive the
terminal (escape sequences), reorder or hide text (bidi overrides, zero-width characters) or add a line.

Such characters are written as \\uXXXX. Used by every text view, the JSON views and the CLI's error
printing; markdown has its own escaping on top of this one (views/markdown.py). No I/O here.
"""

from __future__ import annotations

import unicodedata
from typing import Any

#: Unicode categories never printed as they are: controls (C0, C1, DEL, newlines), format characters
#: (bidi embeddings, overrides and isolates, zero-width spaces and joiners, the BOM), line and paragraph
#: separators, private use, lone surrogates and unassigned code points.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"})

#: Letters that render as nothing (Hangul fillers, braille blank) and so can hide text as well.
_BLANK_LETTERS = frozenset({"\u115f", "\u1160", "\u2800", "\u3164", "\uffa0"})


def _hidden(ch: str, keep: str) -> bool:
    if ch in keep:
        return False
    if " " <= ch <= "~":  # printable ASCII, the common case
        return False
    return ch in _BLANK_LETTERS or unicodedata.category(ch) in _HIDDEN_CATEGORIES


def visible(text: str, *, keep: str = "") -> str:
    """`text` with every control, format, separator or invisible character written as \\uXXXX
    (\\UXXXXXXXX above the BMP); characters in `keep` (say "\\n" for a multi-line message) stay."""
    if text.isascii() and text.isprintable():
        return text
    out = []
    for ch in text:
        if _hidden(ch, keep):
            code = ord(ch)
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def json_safe(value: Any) -> Any:
    """A JSON-able structure with `visible` applied to every string, keys included, so that both
    `cat` and `jq -r` of the document show no raw control or bidi character."""
    if isinstance(value, str):
        return visible(value)
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
