"""Markdown that a pull request's manifests cannot turn into markup: inert text, code spans and fenced
blocks that no value can close, for the markdown views (DESIGN section 9).

Each helper escapes through `text.shown` first, so markdown shows a value as the text views do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from provisioner.views.text import shown

#: Backslash-escaped in markdown text: everything that can open emphasis, code, a link, an image, HTML,
#: an entity, a table cell, strikethrough, math, an emoji (`:x:`) or an autolink (`https:`, `www.`).
_MD_ESCAPED = frozenset("\\`*_[]<>&!|~$:.")
#: Written as code so GitHub makes no mention (`@team`) or issue reference (`#1`) of them.
_MD_AS_CODE = frozenset("@#")

#: GitHub refuses comments over 65,536 characters; stay under it with room for a pipeline's own words.
MARKDOWN_LIMIT = 60_000


def md_text(value: Any) -> str:
    """`value` as inert markdown text that renders as the text view shows it: on one line, no markup,
    no HTML, no link; also safe inside a table cell (a `|` is escaped)."""
    out = []
    for ch in shown(value):
        if ch in _MD_ESCAPED:
            out.append("\\" + ch)
        elif ch in _MD_AS_CODE:
            out.append(f"`{ch}`")
        else:
            out.append(ch)
    return "".join(out)


_BACKTICKS = re.compile("`+")


def _longest_backtick_run(text: str) -> int:
    return max((len(m) for m in _BACKTICKS.findall(text)), default=0)


def md_code(value: Any, *, cell: bool = False) -> str:
    """`value` as a markdown code span that holds it whole: the delimiter is one backtick longer than
    any run inside (CommonMark). `cell=True` in a table row, where a `|` must be escaped even in code."""
    text = shown(value)
    if cell:
        # A backslash right before a pipe would escape the pipe's own escape: show it as \u005c.
        text = text.replace("\\|", "\\u005c|").replace("|", "\\|")
    if not text:
        return "` `"
    fence = "`" * (_longest_backtick_run(text) + 1)
    pad = text[0] == "`" or text[-1] == "`" or (text[0] == " " and text[-1] == " " and text.strip(" "))
    return f"{fence} {text} {fence}" if pad else f"{fence}{text}{fence}"


def md_fenced(lines: list[str], info: str = "") -> list[str]:
    """A fenced code block that no line can close: the fence is longer than any backtick run inside
    (a `~~~` line cannot close a backtick fence). Each line must be one line, already escaped."""
    fence = "`" * max(3, _longest_backtick_run("\n".join(lines)) + 1)
    return [fence + info, *lines, fence]


def md_endpoint_lines(backend: Mapping[str, str]) -> list[str]:
    """The markdown header line that names the endpoint (as text.endpoint_lines), and a blank line."""
    endpoint = backend.get("endpoint")
    if not endpoint:
        return []
    return [f"Endpoint: {md_code(endpoint)}", ""]
