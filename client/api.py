"""`HordeClient`: an async client for every endpoint of the coordinator's v2 API.

Requests go through the session the node shares (transport/session.py): they carry the user's RFC 9421
signature when an identity is configured and the `apikey` header when a key is; an answer in the
`{message, rc}` error shape becomes `HordeAPIError`, and no answer at all becomes `CoordinatorUnreachable`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import uuid
from collections.abc import AsyncGenerator, Mapping
from importlib import metadata
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import aiohttp
from pydantic import BaseModel, TypeAdapter, ValidationError

from client.config import normalize_url
from client.errors import CoordinatorUnreachable, HordeAPIError
from protocol.accounts import (
    AccountCreate,
    AccountCreated,
    CoordinatorInfo,
    Heartbeat,
    KudosTransfer,
    KudosTransferred,
    ModelStatus,
    Performance,
    UserDetails,
    WorkerDetails,
)
from protocol.generation import DryRunResult, GenerationRequest, RequestAccepted, RequestCheck, RequestStatus
from protocol.jobs import PopRequest, PopResponse, SubmitRequest, SubmitResult
from protocol.keys import Identity
from protocol.ledger import LedgerEntry, LedgerHead, LedgerPage
from protocol.verdicts import ImageChecks
from transport.session import Answer, SignedSession, TransportError, wire_json

DEFAULT_TIMEOUT = 60.0
# Extra time a long-poll gets beyond its wait, for the server's own work and the network.
LONG_POLL_MARGIN = 15.0
MAX_CHECK_WAIT = 30.0
LEDGER_PAGE_SIZE = 500

Model = TypeVar("Model", bound=BaseModel)


def client_agent() -> str:
    try:
        version = metadata.version("horde-network")
    except metadata.PackageNotFoundError:
        version = "0.0.0"
    return f"horde-network-cli:{version}:unknown"


class HordeClient:
    """One session with one coordinator. Use as `async with HordeClient(url, ...) as client:`."""

    def __init__(
        self,
        url: str,
        *,
        apikey: str | None = None,
        identity: Identity | None = None,
        agent: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.url = normalize_url(url)
        self.api_url = f"{self.url}/api/v2"
        self.timeout = timeout
        self.http = SignedSession(
            f"{self.url}/api", agent=agent or client_agent(), timeout=timeout, apikey=apikey, identity=identity
        )

    @property
    def apikey(self) -> str | None:
        return self.http.apikey

    @apikey.setter
    def apikey(self, apikey: str | None) -> None:
        self.http.apikey = apikey

    @property
    def identity(self) -> Identity | None:
        return self.http.identity

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        return self.http.session

    # --- requester -------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> RequestAccepted:
        body = wire_json(request, exclude_none=True)
        return await self._call(RequestAccepted, "POST", "/generate/async", json_body=body)

    async def dry_run(self, request: GenerationRequest) -> DryRunResult:
        body = wire_json(request, exclude_none=True) | {"dry_run": True}
        return await self._call(DryRunResult, "POST", "/generate/async", json_body=body)

    async def check(self, request_id: str, wait: float | None = None, finished: int | None = None) -> RequestCheck:
        """Progress of a request. With `wait` the coordinator holds the answer until something changes;
        `finished` (the count the caller already knows) makes it answer at once if that is stale."""
        params: dict[str, Any] = {} if finished is None else {"finished": finished}
        time_limit = self.timeout
        if wait:
            wait = min(wait, MAX_CHECK_WAIT)
            params["wait"] = int(wait) if float(wait).is_integer() else wait
            time_limit = max(time_limit, wait + LONG_POLL_MARGIN)
        path = f"/generate/check/{_segment(request_id)}"
        return await self._call(RequestCheck, "GET", path, params=params, time_limit=time_limit)

    async def status(self, request_id: str) -> RequestStatus:
        return await self._call(RequestStatus, "GET", f"/generate/status/{_segment(request_id)}")

    async def cancel(self, request_id: str) -> RequestStatus:
        return await self._call(RequestStatus, "DELETE", f"/generate/status/{_segment(request_id)}")

    async def download(self, img: str) -> bytes:
        """The bytes of a generation's `img`: fetched when it is a URL, decoded when it is base64."""
        if not img.startswith(("http://", "https://", "/")):
            return _decode_base64_image(img)
        url = f"{self.url}{img}" if img.startswith("/") else img
        # Credentials go only to the coordinator itself, never to a storage host it links to (the session's rule).
        return (await self._send("GET", url)).body

    # --- accounts and kudos ----------------------------------------------------------------

    async def register(self, username: str, *, with_key: bool = True) -> AccountCreated:
        """Create an account; `with_key` binds it to this client's identity (and signs the request)."""
        public_key = self.identity.public_key.text() if with_key and self.identity else None
        body = wire_json(AccountCreate(username=username, public_key=public_key), exclude_none=True)
        return await self._call(AccountCreated, "POST", "/accounts", json_body=body)

    async def find_user(self) -> UserDetails:
        return await self._call(UserDetails, "GET", "/find_user")

    async def user(self, user_id: int) -> UserDetails:
        return await self._call(UserDetails, "GET", f"/users/{int(user_id)}")

    async def transfer(self, username: str, amount: float, *, idempotency_key: str | None = None) -> KudosTransferred:
        """Send kudos; the idempotency key makes a retried transfer (after a lost answer) happen once."""
        body = wire_json(KudosTransfer(username=username, amount=amount))
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        return await self._call(KudosTransferred, "POST", "/kudos/transfer", json_body=body, headers=headers)

    async def ledger_page(self, after: int | None = None, limit: int = LEDGER_PAGE_SIZE) -> LedgerPage:
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params = {"after": after, **params}
        return await self._call(LedgerPage, "GET", "/ledger", params=params)

    async def ledger(
        self, after: int | None = None, page_size: int = LEDGER_PAGE_SIZE
    ) -> AsyncGenerator[LedgerEntry, None]:
        """Every ledger entry after `after`, page by page, in order."""
        cursor = after
        while True:
            page = await self.ledger_page(cursor, page_size)
            for entry in page.entries:
                yield entry
            if page.next_after is None or not page.entries or page.next_after == cursor:
                return
            cursor = page.next_after

    async def user_ledger(self, user_id: int, limit: int = 20) -> list[LedgerEntry]:
        """An account's most recent ledger entries, newest first."""
        page = await self._call(LedgerPage, "GET", f"/users/{int(user_id)}/ledger", params={"limit": limit})
        return page.entries

    async def ledger_head(self) -> LedgerHead:
        return await self._call(LedgerHead, "GET", "/ledger/head")

    async def image_checks(self, job_id: str) -> ImageChecks:
        """Whether an image (by its job id) was spot-checked, and the signed verdicts (ours)."""
        return await self._call(ImageChecks, "GET", f"/verdicts/{quote(job_id, safe='')}")

    # --- network ---------------------------------------------------------------------------

    async def workers(self) -> list[WorkerDetails]:
        return await self._call_list(WorkerDetails, "GET", "/workers")

    async def worker(self, worker_id: str) -> WorkerDetails:
        return await self._call(WorkerDetails, "GET", f"/workers/{_segment(worker_id)}")

    async def models(self) -> list[ModelStatus]:
        return await self._call_list(ModelStatus, "GET", "/status/models")

    async def heartbeat(self) -> Heartbeat:
        return await self._call(Heartbeat, "GET", "/status/heartbeat")

    async def performance(self) -> Performance:
        return await self._call(Performance, "GET", "/status/performance")

    async def coordinator_info(self) -> CoordinatorInfo:
        return await self._call(CoordinatorInfo, "GET", "/coordinator")

    # --- node side (used by test workers and tools; the node daemon has its own loop) ------

    async def pop(self, request: PopRequest) -> PopResponse:
        body = wire_json(request)
        time_limit = max(self.timeout, request.wait + LONG_POLL_MARGIN)
        return await self._call(PopResponse, "POST", "/generate/pop", json_body=body, time_limit=time_limit)

    async def upload(self, url: str, image: bytes, content_type: str = "image/webp") -> None:
        await self._send("PUT", url, image, {"Content-Type": content_type})

    async def submit(self, request: SubmitRequest) -> SubmitResult:
        body = wire_json(request, exclude_none=True)
        return await self._call(SubmitResult, "POST", "/generate/submit", json_body=body)

    # --- transport -------------------------------------------------------------------------

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        time_limit: float | None = None,
    ) -> Any:
        """Call `/api/v2{path}` and return the decoded JSON answer; raises on any error answer."""
        try:
            answer = await self.http.call(
                method, f"v2{path}", json_body=json_body, params=params, headers=headers, time_limit=time_limit
            )
        except TransportError as exc:
            raise CoordinatorUnreachable(self.url, exc.reason) from None
        if not answer.ok:
            raise _api_error(answer)
        try:
            return json.loads(answer.body) if answer.body else None
        except ValueError:
            detail = f"the coordinator sent non-JSON: {answer.snippet()}"
            raise HordeAPIError(answer.status, "InvalidResponse", detail) from None

    async def _call(self, model: type[Model], method: str, path: str, **kwargs: Any) -> Model:
        data = await self.request_json(method, path, **kwargs)
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise _shape_error(model.__name__, exc) from None

    async def _call_list(self, model: type[Model], method: str, path: str, **kwargs: Any) -> list[Model]:
        data = await self.request_json(method, path, **kwargs)
        try:
            return TypeAdapter(list[model]).validate_python(data)  # type: ignore[valid-type]
        except ValidationError as exc:
            raise _shape_error(f"list of {model.__name__}", exc) from None

    async def _send(self, method: str, url: str, body: bytes = b"", headers: Mapping[str, str] | None = None) -> Answer:
        """Any URL the coordinator named (an image, an upload URL), signed only if it is the coordinator's."""
        try:
            answer = await self.http.send(method, url, body, headers, credentials=True)
        except TransportError as exc:
            raise CoordinatorUnreachable(self.url, exc.reason) from None
        if not answer.ok:
            raise _api_error(answer)
        return answer


def _segment(value: str) -> str:
    return quote(str(value), safe="")


def _api_error(answer: Answer) -> HordeAPIError:
    """The coordinator's error body as an exception; a proxy's HTML page still gives a useful line."""
    body = answer.error_body()
    if body is None:
        text = answer.snippet() or "no body"
        return HordeAPIError(answer.status, f"HTTP{answer.status}", f"HTTP {answer.status}: {text}")
    return HordeAPIError(answer.status, body.rc, body.message, body.errors)


def _shape_error(what: str, exc: ValidationError) -> HordeAPIError:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    detail = f"unexpected {what} from the coordinator: {where}: {first['msg']}"
    return HordeAPIError(200, "InvalidResponse", detail)


def _decode_base64_image(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise HordeAPIError(200, "InvalidResponse", "a generation's img is not a URL or base64") from None


async def wait_for_heartbeat(url: str, *, within: float = 20.0, interval: float = 0.1) -> None:
    """Poll `/status/heartbeat` until the coordinator answers (used by the demo after it starts one)."""
    deadline = asyncio.get_running_loop().time() + within
    async with HordeClient(url, timeout=2.0) as client:
        while True:
            try:
                await client.heartbeat()
                return
            except CoordinatorUnreachable:
                if asyncio.get_running_loop().time() > deadline:
                    raise
            await asyncio.sleep(interval)
