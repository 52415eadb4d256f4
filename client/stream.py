"""Following a request through its event stream (`GET /v2/generate/stream/{id}`, protocol/progress.py).

A coordinator without the stream (AI Horde, an older one) answers 404 or something that is not an
event stream: `follow` then raises `StreamUnavailable` and the caller long-polls `check` instead.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

# The coordinator sends a keepalive every 15 s; this much silence means the stream is gone.
SILENCE_SECONDS = 45.0


class StreamUnavailable(Exception):
    """No stream here (or it broke): long-poll `check` instead."""


@dataclass
class Event:
    name: str
    data: dict[str, Any]


async def follow(session: aiohttp.ClientSession, api_url: str, request_id: str) -> AsyncGenerator[Event, None]:
    """The request's events until `end` (included)."""
    url = f"{api_url}/generate/stream/{quote(request_id, safe='')}"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=15.0, sock_read=SILENCE_SECONDS)
    try:
        async with session.get(url, headers={"Accept": "text/event-stream"}, timeout=timeout) as response:
            if response.status != 200 or response.content_type != "text/event-stream":
                raise StreamUnavailable(f"HTTP {response.status} {response.content_type}")
            async for event in _events(response.content):
                yield event
                if event.name == "end":
                    return
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise StreamUnavailable(f"{type(exc).__name__}: {exc}") from None
    raise StreamUnavailable("the stream ended before the request did")


async def _events(content: aiohttp.StreamReader) -> AsyncGenerator[Event, None]:
    """Server-sent events: `event:` and `data:` lines, a blank line ends each; `:` lines are comments."""
    name, data = "message", list[str]()
    async for raw in content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield Event(name, json.loads("\n".join(data)))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
