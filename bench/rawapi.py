"""Raw HTTP calls to the coordinator, as a benchmark's load generator makes them: one way to build a call
(its body, our extension header, the apikey and the RFC 9421 signature), and `Api`, a shared session that
counts every non-2xx answer by status and rc."""

import json
from typing import Any

import aiohttp

from bench.figures import Errors
from protocol.extensions import HEADER
from protocol.httpsig import sign_request
from protocol.keys import Identity


def request_parts(
    method: str, url: str, body: Any, *, agent: str, apikey: str | None, identity: Identity | None
) -> tuple[bytes, dict[str, str]]:
    """The bytes to send and the headers: JSON unless `body` is already bytes, our extension fields asked for
    (the pop's signed `jobs`, as our node and CLI ask), the apikey if any, and a signature over exactly those bytes."""
    raw = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Client-Agent": agent, HEADER: "1"}
    if apikey:
        headers["apikey"] = apikey
    if identity is not None:
        headers.update(sign_request(identity, method, url, raw))
    return raw, headers


class Api:
    """One shared session; each call names its caller (apikey, identity) and a label for the error counts."""

    def __init__(
        self, base_url: str, errors: Errors, *, timeout: float = 60.0, local_address: str | None = None
    ) -> None:
        self.base = base_url.rstrip("/") + "/api"
        self.errors = errors
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.session: aiohttp.ClientSession | None = None
        # Connect from this loopback address (127.0.0.2, …): the coordinator limits connections and
        # long-polls per address, and a real network's nodes come from many.
        self.local_address = local_address

    async def __aenter__(self) -> "Api":
        local = (self.local_address, 0) if self.local_address else None
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, force_close=False, local_addr=local)
        self.session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.session is not None
        await self.session.close()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        label: str,
        apikey: str | None = None,
        identity: Identity | None = None,
        expected: tuple[int, ...] = (),
    ) -> tuple[int, Any]:
        """(status, parsed JSON); status 0 on a connection error. Non-2xx answers not in `expected` are counted."""
        assert self.session is not None
        url = self.base + path
        raw, headers = request_parts(method, url, body, agent="horde-bench:1:local", apikey=apikey, identity=identity)
        try:
            async with self.session.request(method, url, data=raw or None, headers=headers) as response:
                text = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            self.errors.add(f"{label} exception {type(error).__name__}", error)
            return 0, None
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = text.decode(errors="replace")
        if not 200 <= status < 300 and status not in expected:
            rc = parsed.get("rc") if isinstance(parsed, dict) else None
            self.errors.add(f"{label} {status} {rc}", parsed)
        return status, parsed
