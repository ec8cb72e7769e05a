"""`GET /api/openapi.json`: the document describes exactly the routes the healer serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp import web

from healer.app import create_app
from healer.openapi import document
from tests.support.ingest_helpers import AUTH, config_for, payload

METHODS = ("get", "post", "put", "patch", "delete")


def _routes(app: web.Application) -> set[tuple[str, str]]:
    out = set()
    for route in app.router.routes():
        if route.method == "HEAD":  # aiohttp adds one to every GET
            continue
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        assert path, f"a route without a path: {route!r}"
        # {id:\d+} (a regex in the route) is {id} in the document.
        out.add((route.method.lower(), path.replace(r"{id:\d+}", "{id}")))
    return out


def test_every_route_is_in_the_document_and_every_path_is_a_route(
    tmp_path: Path, journal_dsn: str
) -> None:
    app = create_app(config_for(tmp_path, journal_dsn, rules="rules: []\n"), dsn=journal_dsn)
    documented = {
        (method, path)
        for path, item in document()["paths"].items()
        for method in item
        if method in METHODS
    }
    served = _routes(app)
    assert served - documented == set(), "routes missing from healer/openapi.yaml"
    assert documented - served == set(), "paths in healer/openapi.yaml that no route serves"


def test_the_document_is_valid_openapi_and_its_webhook_schema_takes_alertmanagers_payload() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1")
    schema = {
        "$ref": "#/components/schemas/Notification",
        "components": doc["components"],
    }
    jsonschema.validate(payload("firing_stale_rows"), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**payload("firing_stale_rows"), "version": "3"}, schema)


async def test_the_document_is_served_to_a_caller_with_credentials_only(
    aiohttp_client: Any, tmp_path: Path, journal_dsn: str
) -> None:
    config = config_for(tmp_path, journal_dsn, rules="rules: []\n")
    client = await aiohttp_client(create_app(config, dsn=journal_dsn, run_executor=False))
    assert (await client.get("/api/openapi.json")).status == 401
    resp = await client.get("/api/openapi.json", headers=AUTH)
    assert resp.status == 200
    assert await resp.json() == document()
