"""Helpers every handler uses: the broker, the caller, the parsed body, JSON answers."""

import codecs
from typing import Any, TypeVar

import pydantic_core
from aiohttp import web
from pydantic import BaseModel, ValidationError

from coordinator.auth import Caller
from coordinator.broker import Broker
from coordinator.errors import HordeError, bad_request
from protocol import extensions
from protocol.errors import RC

BROKER = web.AppKey("broker", Broker)
RAW_BODY = web.RequestKey("raw_body", bytes)
CALLER = web.RequestKey("caller", Caller)
Model = TypeVar("Model", bound=BaseModel)
# The deepest JSON body accepted. Real ones nest 4 levels (request → params → loras → entry); deeper
# structures only cost the parser, pydantic and canonical JSON (recursive) their time and stack.
MAX_JSON_DEPTH = 64

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


async def caller(request: web.Request, *, allow_new_key: bool = False, allow_shared_key: bool = False) -> Caller:
    if CALLER not in request:
        request[CALLER] = await broker(request).auth.identify(
            request, await body_bytes(request), allow_new_key=allow_new_key, allow_shared_key=allow_shared_key
        )
    return request[CALLER]


def load_json(raw: bytes) -> Any:
    """The body as JSON, nested at most MAX_JSON_DEPTH levels.

    Parsed by pydantic's parser (jiter, in Rust), which stops by itself past ~200 levels where `json.loads`
    would recurse into Python's recursion limit (RecursionError); the exact, lower bound is checked after."""
    try:
        data = pydantic_core.from_json(raw.removeprefix(codecs.BOM_UTF8) or b"{}")
    except ValueError as error:
        if str(error).startswith("recursion limit exceeded"):
            raise too_deep() from error
        raise bad_request(RC.INVALID_JSON, f"The request body is not valid JSON: {error}") from error
    # Nesting needs brackets: a body with few (every real one) cannot be deep, and skips the check.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and nests_deeper(data, MAX_JSON_DEPTH):
        raise too_deep()
    # PostgreSQL's text cannot hold U+0000 (asyncpg raises), and no name, prompt or id needs one. JSON must
    # escape it, so only a body with the escape is searched.
    if b"\\u0000" in raw and any("\0" in text for text in strings_in(data)):
        raise bad_request(RC.VALIDATION, "Text in the request body may not contain U+0000 (NUL).")
    return data


def strings_in(data: Any) -> list[str]:
    """Every string in `data`, keys included, a level at a time (no recursion)."""
    found: list[str] = []
    level = [data]
    while level:
        found += [value for value in level if isinstance(value, str)]
        found += [key for value in level if isinstance(value, dict) for key in value]
        level = [
            child
            for value in level
            if isinstance(value, dict | list)
            for child in (value.values() if isinstance(value, dict) else value)
        ]
    return found


def nests_deeper(data: Any, limit: int) -> bool:
    """Whether lists and objects in `data` nest more than `limit` levels: a level at a time, without recursion
    (0.1–0.3 s for a body of 3 million lists, a third of what parsing it took)."""
    level = [data] if isinstance(data, dict | list) else []
    for _ in range(limit):
        if not level:
            return False
        level = [
            child
            for value in level
            for child in (value.values() if isinstance(value, dict) else value)
            if isinstance(child, dict | list)
        ]
    return bool(level)


def too_deep() -> HordeError:
    return bad_request(RC.INVALID_JSON, f"The request body nests deeper than {MAX_JSON_DEPTH} levels.")


async def parse(request: web.Request, model: type[Model]) -> Model:
    data = load_json(await body_bytes(request))
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


def wants_provenance(request: web.Request) -> bool:
    """Whether the client asked for our extension fields (protocol/extensions.py)."""
    asked = request.query.get(extensions.QUERY) or request.headers.get(extensions.HEADER) or ""
    return asked.lower() in ("1", "true", "yes")


def reply(model: BaseModel | list[Any] | dict[str, Any], status: int = 200, *, ours: bool = False) -> web.Response:
    """The answer as JSON; our extension fields only with `ours` (the client asked, `wants_provenance`)."""
    if isinstance(model, BaseModel):
        hidden = None if ours else extensions.hidden_extensions(model) or None
        # pydantic's own serializer: one pass, without building the dict that json.dumps would walk.
        body = model.model_dump_json(by_alias=True, exclude=hidden)
        return web.Response(body=body, status=status, content_type="application/json")
    data: Any = model
    if isinstance(model, list):
        data = [
            item.model_dump(mode="json", by_alias=True, exclude=None if ours else extensions.hidden_extensions(item))
            if isinstance(item, BaseModel)
            else item
            for item in model
        ]
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
