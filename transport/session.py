"""`SignedSession`: one aiohttp session to one coordinator, the one way the `horde` client and the node
daemon talk to it.

Requests to the coordinator's own origin ask for our extension fields (`X-Horde-Provenance: 1`) and,
when credentials are wanted, carry the `apikey` and an RFC 9421 signature by the identity over exactly
the bytes sent and the URL as sent. Credentials never go to another origin (a bucket's presigned URL,
a source image's host), whatever the caller asks. The session only moves bytes: each user turns an
`Answer` or a `TransportError` into its own errors (the client's `HordeAPIError`, the node's
retry-or-final split).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
from pydantic import BaseModel, ValidationError
from yarl import URL

from protocol import extensions
from protocol.errors import ErrorBody
from protocol.httpsig import sign_request
from protocol.keys import Identity


class TransportError(Exception):
    """No answer at all: the connection failed or no answer came in time. `reason` says why, briefly."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url, self.reason = url, reason


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    @property
    def ok(self) -> bool:
        return self.status < 400

    def error_body(self) -> ErrorBody | None:
        """The `{message, rc}` the coordinator answers an error with; None for anything else (a proxy's page)."""
        try:
            return ErrorBody.model_validate_json(self.body)
        except ValidationError:
            return None

    def snippet(self, limit: int = 120) -> str:
        """The start of the body as one line of text, for messages about an answer we can't use."""
        text = self.body.decode("utf-8", errors="replace").strip().replace("\n", " ")
        return text if len(text) <= limit else text[:limit] + "…"


def wire_json(model: BaseModel, *, exclude_none: bool = False) -> dict[str, Any]:
    """A model as the coordinator reads it: JSON types under AI Horde's field names (the aliases)."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=exclude_none)


class SignedSession:
    """`api_url` is the API's root (`http://host:port/api`); paths are joined to it."""

    def __init__(
        self, api_url: str, *, agent: str, timeout: float, apikey: str | None = None, identity: Identity | None = None
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.agent = agent
        self.timeout = timeout
        self.apikey = apikey
        self.identity = identity  # None: nothing is signed
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        # Created lazily, so a session can be built outside a running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def is_own_url(self, url: str) -> bool:
        """Whether `url` points at this coordinator (same scheme, host and port)."""
        return URL(url).origin() == URL(self.api_url).origin()

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        credentials: bool = True,
        time_limit: float | None = None,
    ) -> Answer:
        """`{api_url}/{path}` with `json_body` as compact JSON."""
        url = f"{self.api_url}/{path.lstrip('/')}" + (f"?{urlencode(params)}" if params else "")
        body = b"" if json_body is None else json.dumps(json_body, separators=(",", ":")).encode()
        sent = dict(headers or {})
        if json_body is not None:
            sent["Content-Type"] = "application/json"
        return await self.send(method, url, body, sent, credentials=credentials, time_limit=time_limit)

    async def send(
        self,
        method: str,
        url: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        *,
        credentials: bool,
        time_limit: float | None = None,
    ) -> Answer:
        """Any URL; credentials (apikey, signature) only if asked for and the URL is the coordinator's."""
        target = URL(url, encoded=True)  # sent byte for byte as signed: yarl must not re-encode it
        sent = {"Accept": "application/json", "Client-Agent": self.agent, **(headers or {})}
        if self.is_own_url(url):
            sent[extensions.HEADER] = "1"  # our extension fields: a pop's signed job documents among them
            if credentials and self.apikey:
                sent["apikey"] = self.apikey
            if credentials and self.identity is not None:
                sent.update(sign_request(self.identity, method, str(target), body))
        limit = time_limit or self.timeout
        try:
            async with self.session.request(
                method, target, data=body or None, headers=sent, timeout=aiohttp.ClientTimeout(total=limit)
            ) as response:
                return Answer(response.status, await response.read())
        except TimeoutError:
            raise TransportError(url, f"no answer within {limit:g} s") from None
        except aiohttp.ClientConnectorError as exc:
            raise TransportError(url, connect_reason(exc)) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError(url, str(exc) or type(exc).__name__) from None


def connect_reason(exc: aiohttp.ClientConnectorError) -> str:
    """ "Connection refused" rather than aiohttp's "Connect call failed ('127.0.0.1', 7001)"."""
    error = exc.os_error
    if isinstance(exc, aiohttp.ClientSSLError):
        # An SSL error's errno is 1, which strerror renders as the baffling "Operation not permitted".
        return f"the TLS handshake failed ({error}); if the coordinator speaks plain HTTP, use an http:// URL"
    if error.errno:
        return os.strerror(error.errno)
    return error.strerror or str(exc)
