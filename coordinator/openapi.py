"""The OpenAPI 3.1 document (`/api/openapi.json`), generated from the endpoint table and the pydantic models.
`/api/swagger.json` is its Swagger 2.0 twin (coordinator/swagger2.py), as AI Horde serves there."""

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from coordinator.routes.endpoint import MAX_PATH_PARAMETER
from protocol.errors import ErrorBody

REF = "#/components/schemas/{model}"


def api_models() -> list[type[BaseModel]]:
    from coordinator.routes import ENDPOINTS

    seen: dict[str, type[BaseModel]] = {"ErrorBody": ErrorBody}
    for endpoint in ENDPOINTS:
        for model in (endpoint.body, endpoint.response, *endpoint.other_responses.values()):
            if model is not None:
                seen[model.__name__] = model
    return list(seen.values())


def openapi_document(version: str) -> dict[str, Any]:
    from coordinator.routes import ENDPOINTS

    models = api_models()
    keys, schemas = models_json_schema([(model, "validation") for model in models], ref_template=REF)
    ref = {model: keys[(model, "validation")]["$ref"] for model in models}
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ENDPOINTS:
        operation: dict[str, Any] = {
            "summary": endpoint.summary,
            "parameters": _parameters(endpoint.path, endpoint.query, endpoint.auth),
            "responses": {
                str(endpoint.status): _content(ref[endpoint.response], many=endpoint.many)
                if endpoint.response
                else {"description": "OK"},
                **{str(status): _content(ref[model]) for status, model in endpoint.other_responses.items()},
                "default": _content(ref[ErrorBody], "An error: {message, rc}"),
            },
        }
        if endpoint.body is not None:
            body = {"schema": {"$ref": ref[endpoint.body]}}
            if endpoint.example:
                body["example"] = endpoint.example
            operation["requestBody"] = {"required": True, "content": {"application/json": body}}
        paths.setdefault("/api" + endpoint.path, {})[endpoint.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Horde Network coordinator (AI Horde v2 compatible)", "version": version},
        "paths": paths,
        "components": {"schemas": schemas.get("$defs", {})},
    }


def _content(ref: str, description: str = "OK", *, many: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "array", "items": {"$ref": ref}} if many else {"$ref": ref}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _parameters(path: str, query: dict[str, str], auth: str) -> list[dict[str, Any]]:
    parameters = [
        {
            "name": part[1:-1],
            "in": "path",
            "required": True,
            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_PATH_PARAMETER},
        }
        for part in path.split("/")
        if part.startswith("{")
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "description": text, "schema": {"type": "string"}}
        for name, text in query.items()
    ]
    if auth != "none":
        parameters.append(
            {
                "name": "apikey",
                "in": "header",
                "required": auth == "required",
                "description": "Your API key, unless the request is signed (RFC 9421)",
                "schema": {"type": "string"},
            }
        )
    return parameters
