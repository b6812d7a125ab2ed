"""load_manifests: files -> render -> YAML with positions -> schema -> rules -> ManifestSet.

Collects every problem as a located Diagnostic and raises them together in one ManifestError.
Reads no private material: that is the material stage (material_stage.py), after this one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
import yaml.reader

from provisioner import leakscan
from provisioner.errors import ManifestError
from provisioner.manifest.files import Unreadable, find_manifests, read_text
from provisioner.manifest.positions import Doc, error_position, parse_yaml, yaml_problem
from provisioner.manifest.render import EnvReads, env_location, refusal_message, render
from provisioner.manifest.rules import SetState, check_doc, moved_names, one_material_per_key, resolve_targets
from provisioner.manifest.schema import schema_diagnostics
from provisioner.manifest.words import TYPE_NAMES, DocPath, json_kind, path_words, without_quotes
from provisioner.model import (
    DesiredKey,
    Diagnostic,
    Diagnostics,
    Location,
    ManifestSet,
)
from provisioner.trust import EnvPolicy


def load_manifests(
    paths: Sequence[Path],
    *,
    variables: Mapping[str, object],
    environ: Mapping[str, str] | None = None,
    allow_env: Sequence[str] = (),
) -> ManifestSet:
    """Render, parse and check every manifest in `paths`; raise ManifestError with every problem.

    `allow_env`: the --allow-env globs (PROVISION_ALLOW_ENV in `environ` adds to them)."""
    env = os.environ if environ is None else environ
    policy = EnvPolicy.from_sources(allow_env, env)
    diags = Diagnostics()
    found = find_manifests(paths, diags)
    displays = tuple(display for display, _, _ in found)
    docs, records, digest = _parse_files(found, variables, env, policy, diags)

    state = SetState()
    keys: list[DesiredKey] = []
    for doc in docs:
        keys.extend(check_doc(doc, state, diags))
    keys, target_diags = resolve_targets(keys, state)
    diags.extend(target_diags)
    diags.extend(moved_names(state))
    diags.extend(one_material_per_key(sorted(keys, key=lambda k: k.name), {}))  # by the pins
    diags = _refuse_material_reads(records, docs, diags)
    diags = _scrub(docs, diags)
    if not displays and not diags:
        diags.add(Diagnostic(Location("<command line>"), "no manifest files given"))
    if diags.has_errors:
        raise ManifestError(Diagnostics(dict.fromkeys(diags.errors), files=displays))
    assert state.stack is not None  # the schema requires stack in every file
    return ManifestSet(
        stack=state.stack[0],
        keys=tuple(sorted(keys, key=lambda k: k.name)),
        backend=state.backend[0] if state.backend else None,
        backends=state.backends[0] if state.backends else (),
        files=displays,
        manifest_digest=digest,
        material_scan=lambda index: _scan_for_material(docs, index),
        variables_read=frozenset().union(*(reads.names for _, reads in records)) - {"env"},
    )


def _parse_files(
    found: Sequence[tuple[str, Path, str]], variables: Mapping[str, object], env: Mapping[str, str],
    policy: EnvPolicy, diags: Diagnostics,
) -> tuple[list[Doc], list[tuple[str, EnvReads]], str]:
    """Read, render, parse and schema-check each file: the parsed documents, each file's env()
    reads, and the set's digest (over each file's relative path and rendered text)."""
    docs: list[Doc] = []
    records: list[tuple[str, EnvReads]] = []
    digest = hashlib.sha256()
    for display, path, relative in found:
        try:
            source = read_text(path.resolve())
        except Unreadable as e:
            diags.add(Diagnostic(Location(display), f"cannot read the file: {e}"))
            continue
        reads = EnvReads(source)
        records.append((display, reads))
        rendered = render(source, display, variables, env, diags, policy, reads)
        if rendered is None:
            continue
        digest.update(relative.encode("utf-8") + b"\0" + rendered.encode("utf-8") + b"\0")
        doc = Doc(
            display=display, folder=path.parent, source=source, env_values=dict(reads.values),
            tainted=reads.tainted,
        )
        if not parse_yaml(rendered, doc, diags):
            continue
        diags.extend(schema_diagnostics(doc))
        _check_strings(doc, diags)
        docs.append(doc)
    return docs, records, "sha256:" + digest.hexdigest()


def _material_names(docs: Iterable[Doc]) -> set[str]:
    """Every variable the set names as a material `env:` source or `passphrase_env`."""
    names: set[str] = set()
    for doc in docs:
        keys = doc.data.get("keys") if isinstance(doc.data, dict) else None
        for body in keys.values() if isinstance(keys, dict) else ():
            block = body.get("material") if isinstance(body, dict) else None
            if isinstance(block, dict):
                names.update(v for k in ("env", "passphrase_env") if isinstance(v := block.get(k), str))
    return names


def _refuse_material_reads(
    records: list[tuple[str, EnvReads]], docs: list[Doc], diags: Diagnostics
) -> Diagnostics:
    """A template's env() of a variable the set names as material, known once every file is parsed:
    the file's other diagnostics are dropped (they were made from the rendered value)."""
    names = _material_names(docs)
    if not names:
        return diags
    for display, reads in records:
        late = list(dict.fromkeys((n, line) for n, line in reads.reads if n in names))
        if not late:
            continue
        diags = Diagnostics(d for d in diags if d.location.file != display)
        rule = "it is named as a material source (env or passphrase_env) in the manifests"
        diags.extend(
            Diagnostic(env_location(display, reads.source, line, name), refusal_message(reads, name, rule))
            for name, line in late
        )
    return diags


def _scrub(docs: list[Doc], diags: Diagnostics) -> Diagnostics:
    """In a file that read env(), a quoted name (a key, a tag key, a field) that the file does not
    spell out, or that holds an env() value, is replaced by words: rule messages quote names."""
    tainted = {doc.display: doc for doc in docs if doc.tainted}
    if not tainted:
        return diags
    out = Diagnostics()
    computed: dict[str, set[str]] = {}
    for d in diags:
        doc = tainted.get(d.location.file)
        if doc is not None:
            message = d.message
            for name, value in doc.env_values.items():
                if len(value) >= 3:  # shorter ones would match words of the message itself
                    message = message.replace(value, f'the value of env("{name}")')
            for text in computed.setdefault(doc.display, _computed_strings(doc)):
                message = message.replace(json.dumps(text, ensure_ascii=False), "the value")
                message = message.replace(f'"{text}"', "the value")
            d = Diagnostic(d.location, message, d.severity)
        out.add(d)
    return out


def _computed_strings(doc: Doc) -> set[str]:
    return {t for _, _, t in _strings(doc.data, ()) if t and t not in doc.source}


def _strings(data: Any, path: DocPath) -> Iterable[tuple[DocPath, bool, str]]:
    """Every string of a document in document order: (path, is a mapping key, text)."""
    if isinstance(data, str):
        yield path, False, data
    elif isinstance(data, dict):
        for k, v in data.items():
            yield (*path, k), True, k
            yield from _strings(v, (*path, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _strings(v, (*path, i))


def _string_groups(doc: Doc) -> Iterable[tuple[Location, str, list[tuple[DocPath, bool, str]]]]:
    """The strings to scan together: each key's strings (DESIGN: one key's strings joined), and
    every other string on its own; with the location and words for a message."""
    data = doc.data if isinstance(doc.data, dict) else {}
    for field_name, value in data.items():
        if field_name == "keys" and isinstance(value, dict):
            for name, body in value.items():
                where = f'key "{name}"' if not doc.tainted or name in doc.source else "a key"
                group = [(("keys", name), True, name), *_strings(body, ("keys", name))]
                yield doc.key_loc(("keys", name)), where, group
        else:
            for item in [((field_name,), True, field_name), *_strings(value, (field_name,))]:
                yield doc.loc(item[0]), path_words(item[0]), [item]


def _locate(
    doc: Doc, found: Callable[[str], bool], what: str, diags: Diagnostics
) -> None:
    """Report each string, else each group joined, else the file, that `found` says holds `what`."""
    def joined_found(items: Iterable[tuple[DocPath, bool, str]]) -> bool:
        # Joined with and without the mapping keys: tag keys between two halves must not hide them.
        items = list(items)
        return found("".join(t for _, _, t in items)) or found("".join(t for _, k, t in items if not k))

    if not joined_found(_strings(doc.data, ())):
        return
    located = False
    for at, where, group in _string_groups(doc):
        if not joined_found(group):
            continue
        located = True
        single = [(p, is_key) for p, is_key, t in group if found(t)]
        if not single:
            diags.add(Diagnostic(at, f"{where}: its strings joined hold {what}; they are not shown"))
        for p, is_key in single:
            loc = doc.key_loc(p) if is_key else doc.loc(p)
            diags.add(Diagnostic(loc, f"{path_words(p)}: the value holds {what}; it is not shown"))
    if not located:
        diags.add(
            Diagnostic(Location(doc.display, 1, 1), f"the file's strings joined hold {what}; not shown")
        )


_PEM_WORDS = "a PEM BEGIN line (-----BEGIN): key material and certificates never belong in a manifest"


def _check_strings(doc: Doc, diags: Diagnostics) -> None:
    """Rules on every rendered string: no NUL character, no PEM BEGIN line (alone or joined)."""
    for p, is_key, text in _strings(doc.data, ()):
        if "\0" in text:
            loc = doc.key_loc(p) if is_key else doc.loc(p)
            diags.add(Diagnostic(loc, f"{path_words(p)}: a NUL character is not allowed in a manifest"))
    _locate(doc, leakscan.holds_pem_begin, _PEM_WORDS, diags)


def _scan_for_material(docs: list[Doc], index: leakscan.MaterialIndex) -> Diagnostics:
    diags = Diagnostics()
    if index:
        for doc in docs:
            _locate(doc, index.found_in, "16 or more bytes of private material the manifests read", diags)
    return diags


def load_variables(var_args: Mapping[str, str], var_files: Sequence[Path]) -> dict[str, object]:
    """Template variables: each var file (YAML or JSON mapping) in order, then --var on top."""
    from provisioner.files import InputFileError, read_regular_text

    out: dict[str, object] = {}
    diags = Diagnostics()
    for path in var_files:
        display = str(path)
        try:
            text = read_regular_text(path, "--var-file")
        except InputFileError as e:
            diags.add(Diagnostic(Location(display), f"variable file (--var-file): {e.reason}"))
            continue
        try:
            # JSON is YAML, so one parser reads both formats.
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as e:
            # Neither the line nor what the parser quotes of it is shown: the file may be a secret.
            mark = e.problem_mark or e.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
            message = f"variable file: syntax error: {without_quotes(e.problem or 'invalid YAML')}"
            diags.add(Diagnostic(Location(display, line, col), message))
            continue
        except yaml.YAMLError as e:
            line, col = error_position(text, e)
            diags.add(Diagnostic(Location(display, line, col), f"variable file: {yaml_problem(e)}"))
            continue
        except ValueError:
            diags.add(
                Diagnostic(Location(display), "variable file: a number too long to read (over 4,300 digits)")
            )
            continue
        if data is None:
            continue
        if not isinstance(data, dict):
            diags.add(
                Diagnostic(
                    Location(display, 1, 1),
                    "variable file must be a mapping of names to values, not "
                    + TYPE_NAMES.get(json_kind(data), "that"),
                )
            )
            continue
        out.update({str(k): v for k, v in data.items()})
    if diags:
        raise ManifestError(diags)
    out.update(var_args)
    return out

