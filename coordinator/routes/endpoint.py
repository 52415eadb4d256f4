"""An endpoint's description: enough to route it and to document it."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from pydantic import BaseModel

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The longest value any path parameter may have, in characters: ids are UUIDs or numbers, image names ours
# (~30 characters), model names short. Checked before any handler runs (middleware.py) and declared in
# the OpenAPI document, so no handler ever passes a longer one to the file system, int() or the database.
MAX_PATH_PARAMETER = 128


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # relative to /api
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    many: bool = False  # the answer is a JSON list of `response`
    other_responses: dict[int, type[BaseModel]] = field(default_factory=dict)  # e.g. a dry run's 200 beside a 202
    query: dict[str, str] = field(default_factory=dict)
    auth: str = "optional"  # optional | required | none
    example: dict | None = None
