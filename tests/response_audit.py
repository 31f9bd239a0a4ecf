"""The AIXpose response audit: every JSON body an AIXpose route (`/v1/...`) answers in any test is
checked against its response model as FastAPI serializes it (`conftest.aixpose_response_audit`).

Two findings, each with the route and the key's path:
- `changed`: the body sent differs from what the route returned (a key dropped or added, a value
  retyped, e.g. `1` sent as `1.0`), compared as JSON text with sorted keys;
- `undeclared`: the route returned a key its model does not declare (kept, as the models allow
  extra keys, but undocumented).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from fastapi.encoders import jsonable_encoder
from pydantic import TypeAdapter

JSON_TYPES = {"object": dict, "array": list, "null": type(None)}


@cache
def schema_of(annotation: Any) -> dict:
    return TypeAdapter(annotation).json_schema()


def undeclared_keys(value: Any, schema: dict, defs: dict, at: str = "body") -> list[str]:
    """Paths of the keys in `value` that `schema` does not declare: an object schema with
    `properties` declares those; a map (`additionalProperties` a schema) any key; a free-form
    object (`dict[str, Any]`) everything below it."""
    while "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[1]]
    if "anyOf" in schema:  # `X | None`: the branch of the value's JSON type
        branch = next((b for b in schema["anyOf"] if fits(value, b, defs)), None)
        return [f"{at} (fits no branch)"] if branch is None else \
            undeclared_keys(value, branch, defs, at)
    if isinstance(value, dict):
        found = []
        declared = schema.get("properties")
        for key, item in value.items():
            if declared is not None and key not in declared:
                found.append(f"{at}.{key}")
                continue
            sub = declared[key] if declared is not None else schema.get("additionalProperties")
            if isinstance(sub, dict):
                found += undeclared_keys(item, sub, defs, f"{at}.{key}")
        return found
    if isinstance(value, list):
        return [path for n, item in enumerate(value)
                for path in undeclared_keys(item, schema.get("items", {}), defs, f"{at}[{n}]")]
    return []


def fits(value: Any, schema: dict, defs: dict) -> bool:
    while "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[1]]
    kind = schema.get("type")
    if kind == "null" or value is None:
        return kind == "null" and value is None
    return kind not in JSON_TYPES or isinstance(value, JSON_TYPES[kind])


def as_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def audit_body(route: str, annotation: Any, returned: Any, sent: Any) -> list[str]:
    """The findings for one answer: `returned` by the route, `sent` after the response model
    (JSON bytes or JSON-ready data)."""
    findings = []
    before = jsonable_encoder(returned)
    after = json.loads(sent) if isinstance(sent, (bytes, str)) else jsonable_encoder(sent)
    if as_json(before) != as_json(after):
        findings.append(f"{route}: changed by its response model:\n  returned {as_json(before)}"
                        f"\n  sent     {as_json(after)}")
    schema = schema_of(annotation)
    for path in undeclared_keys(before, schema, schema.get("$defs", {})):
        findings.append(f"{route}: undeclared key {path}")
    return findings


@dataclass
class Audit:
    findings: list[str] = field(default_factory=list)
    routes: set[str] = field(default_factory=set)  # "GET /v1/projects/{project_id}"

    def wrap(self, serialize_response):
        async def audited(*, field=None, response_content, endpoint_ctx=None, **options):
            sent = await serialize_response(field=field, response_content=response_content,
                                            endpoint_ctx=endpoint_ctx, **options)
            route = (endpoint_ctx or {}).get("path", "")
            if field is not None and route.split(" ")[-1].startswith("/v1/"):
                self.routes.add(route)
                self.findings += audit_body(route, field.field_info.annotation,
                                            response_content, sent)
            return sent

        return audited
