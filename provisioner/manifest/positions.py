"""One manifest file parsed as YAML, with the line and column where each value was written.

Only a Doc and located Diagnostics come out; no message quotes the file (it may be no manifest
at all: a token, a key). Never renders, never applies a rule beyond YAML itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
import yaml.reader

from provisioner.manifest.words import (
    DocPath,
    is_scalar,
    show_value,
    without_quotes,
)
from provisioner.model import (
    Diagnostic,
    Diagnostics,
    Location,
)

_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_DEPTH = 64
#: Values one document may expand to. Aliases are references: nine nested lists of nine aliases
#: ("billion laughs") would otherwise expand to 387 million values and tens of gigabytes.
_MAX_NODES = 500_000


class _TooManyNodes(Exception):
    """Raised by _Converter past _MAX_NODES, at the node where the budget ran out."""

    def __init__(self, node: yaml.Node) -> None:
        super().__init__("too many nodes")
        self.node = node

Pos = tuple[int, int]


# ---------------------------------------------------------------------------------------------
# One file: positions of every node


@dataclass
class Doc:
    """One parsed manifest file and where each of its values was written."""

    display: str  # the path as the user gave it
    folder: Path
    data: Any = None
    values: dict[DocPath, Pos] = field(default_factory=dict)
    keys: dict[DocPath, Pos] = field(default_factory=dict)
    #: The file before rendering, and what its env() calls returned (name -> non-empty value).
    source: str = ""
    env_values: dict[str, str] = field(default_factory=dict)
    tainted: bool = False  # its rendering read the environment

    def show(self, value: object, limit: int = 80) -> str:
        """`value` quoted for a message; in a file that read env(), a value that holds an env()
        value, or that the file does not spell out, is named instead of shown."""
        if not self.tainted:
            return show_value(value, limit)
        text = value if isinstance(value, str) else json.dumps(value) if is_scalar(value) else None
        if text is None:
            return show_value(value, limit)
        for name, secret in self.env_values.items():
            if secret in text:
                return f'the value of env("{name}")'
        return show_value(value, limit) if text in self.source else "the value"

    def loc(self, path: DocPath) -> Location:
        """Where the value at `path` was written, or its nearest written ancestor."""
        while True:
            pos = self.values.get(path)
            if pos is not None:
                return Location(self.display, *pos)
            if not path:
                return Location(self.display)
            path = path[:-1]

    def key_loc(self, path: DocPath) -> Location:
        """Where the mapping key ending `path` was written (falls back to its value)."""
        pos = self.keys.get(path)
        return Location(self.display, *pos) if pos is not None else self.loc(path)


def _pos(node: yaml.Node) -> Pos:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Converter:
    """Turns a composed YAML node tree into plain data, recording each node's position."""

    def __init__(self, loader: Any, doc: Doc, diags: Diagnostics) -> None:
        self.loader = loader
        self.doc = doc
        self.diags = diags
        self.nodes = 0

    def error(self, node: yaml.Node, message: str) -> None:
        self.diags.add(Diagnostic(Location(self.doc.display, *_pos(node)), message))

    def convert(self, node: yaml.Node, path: DocPath, depth: int = 0) -> Any:
        self.nodes += 1
        if self.nodes > _MAX_NODES:
            raise _TooManyNodes(node)
        key_pos = self.doc.keys.get(path)
        if key_pos is not None and isinstance(node, yaml.CollectionNode) and not node.flow_style:
            # A block mapping or list starts at its first child; its own key is where a reader looks.
            self.doc.values[path] = key_pos
        else:
            self.doc.values[path] = _pos(node)
        if depth > _MAX_DEPTH:
            self.error(node, f"document nested deeper than {_MAX_DEPTH} levels (recursive alias?)")
            return None
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            self._mapping(node, path, depth, out, merged=False)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        if node.tag in (_STR_TAG, _TIMESTAMP_TAG):
            # Timestamps stay text: `expiry` is checked as RFC 3339 whether quoted or not.
            return node.value
        try:
            return self.loader.construct_object(node)
        except yaml.YAMLError as e:
            problem = without_quotes(str(getattr(e, "problem", "") or "not understood"))
            self.error(node, f"invalid YAML value {self.doc.show(node.value)}: {problem}")
            return None
        except ValueError:
            # int() past Python's digit limit (sys.get_int_max_str_digits): a 5,000-digit number.
            self.error(node, "a number too long to read (more than 4,300 digits)")
            return None

    def _mapping(
        self, node: yaml.MappingNode, path: DocPath, depth: int, out: dict[str, Any], *, merged: bool
    ) -> None:
        first_seen: dict[str, Pos] = {}
        for knode, vnode in node.value:
            if knode.tag == _MERGE_TAG:
                sources = vnode.value if isinstance(vnode, yaml.SequenceNode) else [vnode]
                for src in sources:
                    if isinstance(src, yaml.MappingNode):
                        self._mapping(src, path, depth, out, merged=True)
                    else:
                        self.error(src, "a merge key (<<) takes a mapping or a list of mappings")
                continue
            if not isinstance(knode, yaml.ScalarNode):
                self.error(knode, "a mapping key must be a plain scalar, not a list or mapping")
                continue
            # Keys are names: keep them as written, so `2024:` is the name "2024", not an int.
            key = knode.value
            if key in first_seen:
                line = first_seen[key][0]
                self.error(knode, f'duplicate key "{key}" (first given on line {line})')
                continue
            first_seen[key] = _pos(knode)
            if merged and key in out:
                continue  # explicit keys win over merged ones
            self.doc.keys[(*path, key)] = _pos(knode)
            out[key] = self.convert(vnode, (*path, key), depth + 1)


def parse_yaml(text: str, doc: Doc, diags: Diagnostics) -> bool:
    """Parse `text` into `doc`; False (with a located diagnostic) on a YAML syntax error.

    No message quotes the file: a file that is no manifest (a token, a key) must not be shown."""
    loader_cls = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loader = loader_cls(text)
    try:
        node = loader.get_single_node()
        if node is None:
            diags.add(Diagnostic(Location(doc.display), "the file is empty: expected a manifest"))
            return False
        doc.data = _Converter(loader, doc, diags).convert(node, ())
        return True
    except _TooManyNodes as e:
        diags.add(
            Diagnostic(
                Location(doc.display, *_pos(e.node)),
                f"the document expands to more than {_MAX_NODES:,} values (aliases repeated in aliases?)",
            )
        )
        return False
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        what = without_quotes(e.problem or "invalid YAML")
        if e.context:
            what = f"{what} ({without_quotes(e.context)})"
        diags.add(Diagnostic(Location(doc.display, line, col), f"YAML syntax error: {what}"))
        return False
    except yaml.YAMLError as e:
        # A reader error (a control character, say): its text quotes the input and its position.
        line, col = error_position(text, e)
        diags.add(Diagnostic(Location(doc.display, line, col), f"YAML error: {yaml_problem(e)}"))
        return False
    finally:
        loader.dispose()


def yaml_problem(e: yaml.YAMLError) -> str:
    if isinstance(e, yaml.reader.ReaderError):
        return "the file holds a character YAML does not allow (a control character or NUL)"
    return "invalid YAML"


def error_position(text: str, e: yaml.YAMLError) -> Pos:
    position = getattr(e, "position", None)
    if not isinstance(position, int) or position < 0:
        return 1, 1
    before = text[:position]
    return before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1

