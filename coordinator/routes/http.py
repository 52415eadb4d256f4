"""Helpers every handler uses: the broker, the caller, the parsed body, JSON answers."""

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from coordinator.auth import Caller
from coordinator.broker import Broker
from coordinator.errors import HordeError, bad_request
from protocol.errors import RC

BROKER = web.AppKey("broker", Broker)
RAW_BODY = web.RequestKey("raw_body", bytes)
CALLER = web.RequestKey("caller", Caller)
Model = TypeVar("Model", bound=BaseModel)

# Validation failures on these fields get AI Horde's specific return codes.
FIELD_CODES = {
    "prompt": RC.MISSING_PROMPT,
    "params.width": RC.INVALID_SIZE,
    "params.height": RC.INVALID_SIZE,
    "params.steps": RC.TOO_MANY_STEPS,
}


def broker(request: web.Request) -> Broker:
    return request.app[BROKER]


async def body_bytes(request: web.Request) -> bytes:
    """The raw body, read once: signatures cover these exact bytes."""
    if RAW_BODY not in request:
        request[RAW_BODY] = await request.read()
    return request[RAW_BODY]


async def caller(request: web.Request, *, allow_new_key: bool = False) -> Caller:
    if CALLER not in request:
        request[CALLER] = await broker(request).auth.identify(
            request, await body_bytes(request), allow_new_key=allow_new_key
        )
    return request[CALLER]


async def parse(request: web.Request, model: type[Model]) -> Model:
    raw = await body_bytes(request)
    try:
        data = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise bad_request(RC.INVALID_JSON, f"The request body is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise bad_request(RC.VALIDATION, "The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise validation_failed(error) from error


def validation_failed(error: ValidationError) -> HordeError:
    errors = {".".join(str(part) for part in item["loc"]) or "body": item["msg"] for item in error.errors()}
    rc = next((FIELD_CODES[field] for field in errors if field in FIELD_CODES), RC.VALIDATION)
    return bad_request(rc, "Input payload validation failed", errors)


def reply(model: BaseModel | list[Any] | dict[str, Any], status: int = 200) -> web.Response:
    if isinstance(model, BaseModel):
        # pydantic's own serializer: one pass, without building the dict that json.dumps would walk.
        return web.Response(body=model.model_dump_json(by_alias=True), status=status, content_type="application/json")
    data: Any = model
    if isinstance(model, list):
        data = [item.model_dump(mode="json", by_alias=True) if isinstance(item, BaseModel) else item for item in model]
    return web.json_response(data, status=status)


def base_url(request: web.Request) -> str:
    configured = broker(request).services.config.public_url
    return configured.rstrip("/") if configured else f"{request.scheme}://{request.host}"


def client_ip(request: web.Request) -> str:
    if broker(request).services.config.trust_forwarded_for:
        forwarded = request.headers.get("X-Forwarded-For", "")
        if forwarded:
            return forwarded.split(",")[-1].strip()
    return request.remote or "unknown"


def rate_key(request: web.Request, who: Caller) -> str:
    return f"account:{who.account.id}" if who.account else f"ip:{client_ip(request)}"


def client_agent(request: web.Request) -> str:
    return request.headers.get("Client-Agent") or request.headers.get("client_agent") or "unknown:0:unknown"


def float_query(request: web.Request, name: str, default: float, maximum: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError as error:
        raise bad_request(RC.VALIDATION, f"{name} must be a number.", {name: "not a number"}) from error
    if not 0 <= value <= maximum:
        raise bad_request(RC.VALIDATION, f"{name} must be between 0 and {maximum}.", {name: "out of range"})
    return value


def int_query(request: web.Request, name: str, default: int, maximum: int) -> int:
    return int(float_query(request, name, default, maximum))
