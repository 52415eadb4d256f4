"""Swagger 2.0 at `/api/swagger.json`, where AI Horde serves its own, generated from the same endpoint
tables and pydantic models as the OpenAPI 3.1 document (`/api/openapi.json`, coordinator/openapi.py).

Swagger 2.0 knows less of JSON Schema than pydantic writes (draft 2020-12): `anyOf` with null becomes
`x-nullable`, `const` an enum, enums and other non-object definitions are inlined (a 2.0 definition is an
object), and keywords 2.0 lacks are dropped. Definitions take AI Horde's model names where a model of ours
stands for one of AI Horde's, so tools written against AI Horde's document find them.
"""

from typing import Any

from pydantic.json_schema import models_json_schema

from coordinator.openapi import api_models
from protocol import extensions
from protocol.errors import ErrorBody

REF_PREFIX = "#/definitions/"
TITLE = "AI Horde"  # the API's name, which AI Horde's tools check; `description` says whose coordinator
# Ours → AI Horde's (horde/apis/models/v2.py) for the models that answer to the same endpoint.
AI_HORDE_NAMES = {
    "GenerationRequest": "GenerationInputStable",
    "GenerationParams": "ModelGenerationInputStable",
    "RequestAccepted": "RequestAsync",
    "RequestCheck": "RequestStatusCheck",
    "RequestStatus": "RequestStatusStable",
    "Generation": "GenerationStable",
    "PopRequest": "PopInputStable",
    "PopResponse": "GenerationPayloadStable",
    "JobPayload": "ModelPayloadStable",
    "SubmitRequest": "SubmitInputStable",
    "SubmitResult": "GenerationSubmitted",
    "ErrorBody": "RequestError",
    "UserDetails": "UserDetails",
    "WorkerDetails": "WorkerDetails",
    "ModifyUser": "ModifyUserInput",
    "ModifiedUser": "ModifyUser",
    "KudosTransfer": "TransferKudosInput",
    "KudosTransferred": "KudosTransferred",
    "ModelStatus": "ActiveModel",
    "Heartbeat": "HordeHeartbeat",
    "Performance": "HordePerformance",
    "ImageTotals": "StatsImgTotals",
    "PeriodTotals": "SinglePeriodImgStat",
    "ImageModelStats": "ImgModelStats",
    "Newspiece": "Newspiece",
    "HordeModes": "HordeModes",
    "HordeDocument": "HordeDocument",
    "WorkerUpdate": "ModifyWorkerInput",
}
# The keywords a Swagger 2.0 schema object has (and horde-sdk's strict parser of AI Horde's document takes).
PROPERTY_KEYWORDS = {
    "type",
    "description",
    "title",
    "default",
    "example",
    "format",
    "enum",
    "$ref",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "multipleOf",
    "uniqueItems",
    "additionalProperties",
    "items",
    "properties",
    "required",
    "allOf",
    "oneOf",
    "anyOf",
    "discriminator",
    "x-nullable",
}
DEFINITION_KEYWORDS = {"type", "properties", "required", "description", "title", "additionalProperties"}
ERROR_STATUSES = ("400", "401", "403", "404")
BODY_METHODS = ("POST", "PUT", "PATCH")


def swagger_document(version: str) -> dict[str, Any]:
    from coordinator.routes import ENDPOINTS

    models = api_models()
    keys, schemas = models_json_schema([(model, "validation") for model in models], ref_template=REF_PREFIX + "{model}")
    raw = schemas.get("$defs", {})
    converter = Converter(raw)
    definitions = {
        converter.name(name): converter.definition(schema)
        for name, schema in raw.items()
        if schema.get("type") == "object"
    }
    ref = {model: converter.ref(keys[(model, "validation")]["$ref"]) for model in models}
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ENDPOINTS:
        answer = ref.get(endpoint.response) if endpoint.response is not None else None
        responses = {str(endpoint.status): _response(answer, endpoint.many)}
        responses.update({str(status): _response(ref[model]) for status, model in endpoint.other_responses.items()})
        responses.update(
            {
                status: _response(ref[ErrorBody], description="An error: {message, rc}")
                for status in ERROR_STATUSES
                if status not in responses
            }
        )
        operation = {"summary": endpoint.summary, "parameters": _parameters(endpoint, ref), "responses": responses}
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation
    return {
        "swagger": "2.0",
        "basePath": "/api",
        "info": {
            "title": TITLE,
            "version": version,
            "description": "Horde Network: the AI Horde v2 API. OpenAPI 3.1 at /api/openapi.json.",
        },
        "produces": ["application/json"],
        "consumes": ["application/json"],
        "paths": paths,
        "responses": {"ParseError": {"description": "The request body could not be read: {message, rc}"}},
        "definitions": definitions,
    }


class Converter:
    """Draft 2020-12 schemas (pydantic's) to Swagger 2.0 ones, against pydantic's `$defs`."""

    def __init__(self, raw: dict[str, dict[str, Any]]) -> None:
        self.raw = raw

    @staticmethod
    def name(ours: str) -> str:
        return AI_HORDE_NAMES.get(ours, ours)

    def ref(self, ref: str) -> str:
        return REF_PREFIX + self.name(ref.removeprefix(REF_PREFIX))

    def definition(self, schema: dict[str, Any]) -> dict[str, Any]:
        """A model's definition: an object, its properties converted."""
        converted = self._object(schema)
        return {key: value for key, value in converted.items() if key in DEFINITION_KEYWORDS}

    def _object(self, value: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in value:
            target = value["$ref"].removeprefix(REF_PREFIX)
            if self.raw.get(target, {}).get("type") != "object":  # an enum or alias: 2.0 definitions are objects
                return self._object({**self.raw[target], **{k: v for k, v in value.items() if k != "$ref"}})
            return {"$ref": self.ref(value["$ref"]), **self._keep({k: v for k, v in value.items() if k != "$ref"})}
        value = dict(value)
        nullable = False
        for key in ("anyOf", "oneOf"):
            if key in value:
                every = value.pop(key)
                choices = [choice for choice in every if choice.get("type") != "null"]
                nullable = nullable or len(choices) < len(every)
                if len(choices) == 1:
                    value = {**self._object(choices[0]), **value}
                else:
                    value[key] = [self._object(choice) for choice in choices]
        if isinstance(value.get("type"), list):
            types = [kind for kind in value["type"] if kind != "null"]
            nullable = len(types) < len(value["type"])
            value["type"] = types[0] if types else "string"
        if "const" in value:
            value["enum"] = [value.pop("const")]
        if "exclusiveMinimum" in value:
            value["minimum"] = value.pop("exclusiveMinimum")
        if "exclusiveMaximum" in value:
            value["maximum"] = value.pop("exclusiveMaximum")
        if value.get("examples"):
            value["example"] = value.pop("examples")[0]
        if "enum" in value and not all(isinstance(item, str) for item in value["enum"]):
            value.pop("enum")  # 2.0 tools (horde-sdk's parser) read enums as strings
        if isinstance(value.get("properties"), dict):  # AI Horde's fields only: ours are in /api/openapi.json
            value["properties"] = {
                name: self._object(item) for name, item in value["properties"].items() if not item.get(extensions.MARK)
            }
        if isinstance(value.get("items"), dict):
            value["items"] = self._object(value["items"])
        if isinstance(value.get("additionalProperties"), dict):
            value["additionalProperties"] = self._object(value["additionalProperties"])
        if nullable:
            value["x-nullable"] = True
        return self._keep(value)

    @staticmethod
    def _keep(value: dict[str, Any]) -> dict[str, Any]:
        return {key: item for key, item in value.items() if key in PROPERTY_KEYWORDS}


def _response(ref: str | None, many: bool = False, description: str = "OK") -> dict[str, Any]:
    if ref is None:
        return {"description": description}
    schema: dict[str, Any] = {"type": "array", "items": {"$ref": ref}} if many else {"$ref": ref}
    return {"description": description, "schema": schema}


def _parameters(endpoint: Any, ref: dict[Any, str]) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = [
        {"name": part[1:-1], "in": "path", "required": True, "type": "string"}
        for part in endpoint.path.split("/")
        if part.startswith("{")
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "type": "string", "description": text}
        for name, text in endpoint.query.items()
    ]
    if endpoint.auth != "none":
        parameters.append(
            {
                "name": "apikey",
                "in": "header",
                "required": endpoint.auth == "required",
                "type": "string",
                "description": "Your API key, unless the request is signed (RFC 9421)",
            }
        )
    if endpoint.body is not None:
        parameters.append({"name": "payload", "in": "body", "required": True, "schema": {"$ref": ref[endpoint.body]}})
    elif endpoint.method in BODY_METHODS and parameters:  # a raw body (an image upload)
        parameters.append({"name": "payload", "in": "body", "required": True, "schema": {"type": "string"}})
    return parameters
