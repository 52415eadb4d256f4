"""The node's HTTP client for the coordinator's v2 API, on the session the `horde` client shares
(transport/session.py).

Every API request carries the owner's `apikey` (when configured) and, in signed mode, an RFC 9421
signature by the node key over the exact bytes sent. Failures are split in two: `Unreachable`
(connection errors, timeouts, 5xx, 429 — worth retrying later) and `ApiError` (the coordinator
answered and said no).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
from yarl import URL

from protocol.accounts import AccountCreated, CoordinatorInfo, UserDetails
from protocol.errors import RC
from protocol.jobs import PopRequest, PopResponse, SubmitRequest, SubmitResult
from protocol.keys import Identity
from transport.session import Answer, SignedSession, TransportError, wire_json

log = logging.getLogger(__name__)

AGENT = "horde-node:0.1.0:https://github.com/horde-network"
# Answers to a submit that settle the job for good: resubmitting can never succeed.
FINAL_SUBMIT_CODES = frozenset({RC.DUPLICATE_GEN, RC.ABORTED_GEN})
_RETRYABLE_STATUS = frozenset({408, 425, 429})
_SLACK_SECONDS = 15.0


class CoordinatorError(Exception):
    pass


class Unreachable(CoordinatorError):
    """No usable answer (network down, timeout, 5xx, rate limited): try again later."""


class DownloadFailed(CoordinatorError):
    """A source could not be fetched. The text says why in our words, never quoting the answer."""


class ApiError(CoordinatorError):
    """The coordinator answered with an error it means."""

    def __init__(self, status: int, rc: str, message: str) -> None:
        super().__init__(f"{status} {rc}: {message}")
        self.status, self.rc, self.message = status, rc, message

    @property
    def is_final_submit(self) -> bool:
        return self.status == 400 and self.rc in FINAL_SUBMIT_CODES

    @property
    def is_auth(self) -> bool:
        return self.status in (401, 403) and self.rc != RC.WORKER_MAINTENANCE


def api_root(coordinator_url: str) -> str:
    """`http://host:port` or `http://host:port/api/` → `http://host:port/api/`."""
    root = coordinator_url.rstrip("/")
    if not root.endswith("/api"):
        root += "/api"
    return root + "/"


class CoordinatorClient:
    """One session to one coordinator. Use as an async context manager."""

    def __init__(
        self,
        coordinator_url: str,
        *,
        apikey: str | None = None,
        identity: Identity | None = None,
        agent: str = AGENT,
        timeout: float = 30.0,
    ) -> None:
        self.root = api_root(coordinator_url)
        self.identity = identity
        self.http = SignedSession(self.root, agent=agent, timeout=timeout, apikey=apikey, identity=identity)

    @property
    def signing(self) -> bool:
        """Off in apikey-only mode: nothing is signed even when a key exists."""
        return self.http.identity is not None

    @signing.setter
    def signing(self, on: bool) -> None:
        self.http.identity = self.identity if on else None

    async def __aenter__(self) -> CoordinatorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.close()

    # -- endpoints ---------------------------------------------------------------------------------

    async def coordinator_info(self) -> CoordinatorInfo | None:
        """Our coordinators describe themselves; None means a plain AI Horde (apikey-only mode)."""
        try:
            data = await self._call("GET", "v2/coordinator", auth=False)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return CoordinatorInfo.model_validate(data)

    async def create_account(self, username: str) -> AccountCreated:
        data = await self._call("POST", "v2/accounts", {"username": username}, auth=False)
        return AccountCreated.model_validate(data)

    async def find_user(self) -> UserDetails:
        return UserDetails.model_validate(await self._call("GET", "v2/find_user"))

    async def pop(self, request: PopRequest) -> PopResponse:
        data = await self._call("POST", "v2/generate/pop", wire_json(request), limit_s=request.wait + _SLACK_SECONDS)
        return PopResponse.model_validate(data)

    async def submit(self, request: SubmitRequest) -> float:
        """The kudos reward; raises ApiError (see `is_final_submit`) or Unreachable."""
        return (await self.submit_result(request)).reward

    async def submit_result(self, request: SubmitRequest) -> SubmitResult:
        """The reward and how much of it the coordinator holds in escrow (ours)."""
        body = wire_json(request, exclude_none=True)
        return SubmitResult.model_validate(await self._call("POST", "v2/generate/submit", body))

    async def progress(self, job_id: str, step: int, total: int) -> None:
        """Report a job's step (our coordinators' optional extension; AI Horde has no such call)."""
        await self._call("POST", "v2/generate/progress", {"id": job_id, "step": step, "total": total}, limit_s=5.0)

    def is_own_url(self, url: str) -> bool:
        """Whether `url` points at this coordinator (same scheme, host and port)."""
        return self.http.is_own_url(url)

    async def upload(self, url: str, data: bytes, content_type: str) -> None:
        """PUT to a pre-authorized upload URL. No apikey: the URL may belong to a storage service."""
        method = "PUT"
        try:
            answer = await self.http.send(method, url, data, {"Content-Type": content_type}, credentials=False)
        except TransportError as exc:
            raise Unreachable(f"{method} {url}: {exc.reason}") from exc
        _check(answer, method, url)

    async def download(self, url: str, *, max_bytes: int, limit_s: float) -> bytes:
        """GET a URL a pop named: no credentials, no redirects (they could lead to any host), at most
        `max_bytes` within `limit_s`, reading no further than the cap. Raises DownloadFailed."""
        try:
            async with self.http.session.get(
                URL(url, encoded=True), allow_redirects=False, timeout=aiohttp.ClientTimeout(total=limit_s)
            ) as response:
                if response.status != 200:
                    raise DownloadFailed(f"the answer was HTTP {response.status}")
                if (response.content_length or 0) > max_bytes:
                    raise DownloadFailed(f"it is more than {max_bytes} bytes")
                data = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    data += chunk
                    if len(data) > max_bytes:  # leaving the block drops the connection: nothing more is read
                        raise DownloadFailed(f"it is more than {max_bytes} bytes")
                return bytes(data)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise DownloadFailed(f"{type(exc).__name__} after at most {limit_s:g} s") from None

    # -- plumbing ----------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        auth: bool = True,
        limit_s: float | None = None,
    ) -> Any:
        url = self.root + path
        try:
            answer = await self.http.call(method, path, json_body=body, credentials=auth, time_limit=limit_s)
        except TransportError as exc:
            raise Unreachable(f"{method} {url}: {exc.reason}") from exc
        _check(answer, method, url)
        return json.loads(answer.body) if answer.body else {}


def _check(answer: Answer, method: str, url: str) -> None:
    """Nothing for a success; an error the coordinator means (ApiError), or one worth retrying (Unreachable)."""
    if answer.ok:
        return
    body = answer.error_body()
    rc, message = (body.rc, body.message) if body is not None else ("", answer.snippet(200))
    if answer.status >= 500 or answer.status in _RETRYABLE_STATUS:
        raise Unreachable(f"{method} {url}: {answer.status} {rc} {message}".rstrip())
    raise ApiError(answer.status, rc, message)
