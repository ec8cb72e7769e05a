"""`GET /api/openapi.json`: the healer's HTTP interface as an OpenAPI 3.1 document.

The paths are written by hand in `openapi.yaml` (no aiohttp library generates them without
rewriting every handler into its own view classes); the webhook's body schema is generated
from the pydantic models that validate it, so what the document promises is what `POST
/alerts` checks. A test holds the paths and the app's router to the same set.
"""

from __future__ import annotations

import copy
from functools import cache
from importlib import resources
from typing import Any

import yaml
from aiohttp import web
from pydantic.json_schema import models_json_schema

from healer.webhook import Notification

__all__ = ["document", "setup"]

_REF = "#/components/schemas/{model}"


@cache
def _document() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(
        (resources.files("healer") / "openapi.yaml").read_text(encoding="utf-8")
    )
    _, schemas = models_json_schema(
        [(Notification, "validation")], by_alias=True, ref_template=_REF
    )
    defs = schemas.get("$defs", {})
    # parse_notification checks the version before the model sees it; only "4" is taken.
    defs["Notification"]["properties"]["version"] = {"type": "string", "enum": ["4"]}
    doc["components"]["schemas"].update(defs)
    return doc


def document() -> dict[str, Any]:
    """A copy of the document (the cached one is never handed out to be changed)."""
    return copy.deepcopy(_document())


async def openapi_handler(request: web.Request) -> web.Response:
    return web.json_response(_document())


def setup(app: web.Application) -> None:
    app.router.add_get("/api/openapi.json", openapi_handler)
