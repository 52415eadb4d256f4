"""bench/abuse.py's attackers: HTTP calls from one loopback address each (127.0.0.2, ...), as an attacker's own
host would be, so a per-address limit on the attacker is not a limit on the prober."""

import json
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.rawapi import request_parts
from protocol.keys import Identity

AGENT = "horde-bench-abuse:1:local"


def loopback_available(address: str) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
    return True


@dataclass
class Answer:
    status: int  # 0: no answer (connection refused, reset or timed out)
    body: Any
    size: int


class Attacker:
    """HTTP calls from one source address, every answer counted by status (5xx kept with an example)."""

    def __init__(self, base: str, address: str) -> None:
        self.base = base + "/api"
        self.address = address if loopback_available(address) else "127.0.0.1"
        self.statuses: Counter[int] = Counter()
        self.server_errors: list[str] = []

    async def __aenter__(self) -> "Attacker":
        connector = aiohttp.TCPConnector(limit=64, local_addr=(self.address, 0))
        self.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def call(
        self, method: str, path: str, body: Any = None, *, apikey: str | None = None, identity: Identity | None = None
    ) -> Answer:
        url = self.base + path
        raw, headers = request_parts(method, url, body, agent=AGENT, apikey=apikey, identity=identity)
        try:
            async with self.session.request(method, url, data=raw or None, headers=headers) as response:
                data, status = await response.read(), response.status
        except (aiohttp.ClientError, TimeoutError):
            self.statuses[0] += 1
            return Answer(0, None, 0)
        self.statuses[status] += 1
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = None
        if status >= 500 and len(self.server_errors) < 5:
            self.server_errors.append(f"{method} {path[:80]} → {status} {data[:200]!r}")
        return Answer(status, parsed, len(data))


async def repeat_until(deadline: float, action: Callable[[], Awaitable[Any]]) -> None:
    while time.perf_counter() < deadline:
        await action()
