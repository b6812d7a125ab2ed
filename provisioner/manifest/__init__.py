"""Manifests: Jinja2 render -> YAML with positions -> JSON Schema -> semantic rules -> DesiredKeys,
then, in a stage of its own, the private material each key names.

One module per job, each importing only those below it:
words (message words) < positions (YAML) < schema < rules; render; files; load (the set);
material_stage (after load: the only reader of private material). Never prints, never calls a KMS.
"""

from provisioner.manifest.files import MANIFEST_SUFFIXES, MAX_MANIFEST_BYTES, manifest_files
from provisioner.manifest.load import load_manifests, load_variables
from provisioner.manifest.material_stage import (
    MaterialRead,
    check_material,
    read_material,
    validate_manifests,
    validate_with_material,
)
from provisioner.manifest.rules import (
    ALIAS_RE,
    FORBIDDEN_ALIAS_PREFIX,
    FORBIDDEN_TAG_PREFIXES,
    MAX_USER_TAGS,
    RESERVED_TAG_PREFIX,
    RFC3339_RE,
    TAG_CHARS_HINT,
    TAG_RE,
    ExpiryOutOfRange,
    alias_problem,
    parse_expiry,
    tag_key_problem,
    tag_value_problem,
)
from provisioner.manifest.schema import SCHEMA_FILE, manifest_schema, schema_is_valid

__all__ = [
    "ALIAS_RE",
    "FORBIDDEN_ALIAS_PREFIX",
    "FORBIDDEN_TAG_PREFIXES",
    "MANIFEST_SUFFIXES",
    "MAX_MANIFEST_BYTES",
    "MAX_USER_TAGS",
    "RESERVED_TAG_PREFIX",
    "RFC3339_RE",
    "SCHEMA_FILE",
    "TAG_CHARS_HINT",
    "TAG_RE",
    "ExpiryOutOfRange",
    "MaterialRead",
    "alias_problem",
    "check_material",
    "load_manifests",
    "load_variables",
    "manifest_files",
    "manifest_schema",
    "parse_expiry",
    "read_material",
    "schema_is_valid",
    "tag_key_problem",
    "tag_value_problem",
    "validate_manifests",
    "validate_with_material",
]
