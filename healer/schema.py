"""JSON Schemas of `taskmedic.yaml` and of rule files, generated from the models that validate
them, so an editor's completion and the loader can never disagree.

The shipped schemas live in `deploy/schema/`; every YAML file taskmedic ships names one in a
`# yaml-language-server: $schema=...` line, and a test holds the files to what this module
generates. The schema is for editors: the loader's own checks (references between sections,
templates, file:line errors) go further than a schema can.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from healer.config import HealerConfig
from healer.rules.models import RulesFile

__all__ = ["SCHEMA_FILES", "Kind", "schema", "schema_text", "write_schemas"]

Kind = Literal["config", "rules"]

# Kind -> file name under deploy/schema/.
SCHEMA_FILES: dict[Kind, str] = {
    "config": "taskmedic.schema.json",
    "rules": "rules.schema.json",
}

_INCLUDE = {
    "type": "array",
    "items": {"type": "string", "minLength": 1},
    "description": (
        "Files or globs, relative to this file, whose checks, periodic_tasks and healer.rules "
        "are merged into this one (rule packs)."
    ),
}


def schema(kind: Kind) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a `taskmedic.yaml` or of a rule file."""
    if kind == "config":
        out = HealerConfig.model_json_schema(mode="validation")
        out["properties"]["include"] = _INCLUDE
        out["title"] = "taskmedic.yaml"
    else:
        out = RulesFile.model_json_schema(mode="validation")
        out["title"] = "taskmedic rule file"
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **out}


def schema_text(kind: Kind) -> str:
    """`schema(kind)` as the stable, diffable text that is shipped."""
    return json.dumps(schema(kind), indent=2, sort_keys=True) + "\n"


def write_schemas(folder: Path) -> list[Path]:
    """Write both schemas into `folder`; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, name in SCHEMA_FILES.items():
        path = folder / name
        path.write_text(schema_text(kind), encoding="utf-8")
        written.append(path)
    return written
