"""Signed webhooks: AI Horde's `webhook` field, honoured.

A request with a webhook gets one POST per finished image (`{"event": "image", "request_id",
"generation"}`, the generation as `status` shows it, with its provenance) and one at completion
(`{"event": "done" | "faulted" | "cancelled", "request_id", "check"}`). Each is signed by the
coordinator's key with RFC 9421 (protocol/httpsig.py), like every other statement of ours, so a
receiver can check it came from us and was not changed (`horde webhook verify`).

- **Once.** What is sent is claimed in the request's record (`webhook_sent`) in a transaction before
  it is sent, so two processes told of the same change do not both send it. At most once: a POST
  still being retried when its coordinator stops is not sent again by the next one.
- **Retried, for a bounded time.** A receiver that fails (no answer, or not 2xx) is retried with
  doubling backoff for `webhook_retry_seconds`, then given up.
- **Never inward.** The coordinator would otherwise POST for anyone to its own network. Loopback,
  link-local, private and other non-global addresses are refused unless the operator allows them:
  at submit the host name is resolved and every address checked; at delivery the connection is made
  only to addresses the same check passed (a resolver that refuses the others), so a name that
  resolves differently later gains nothing.
"""

import asyncio
import ipaddress
import json
import logging
import socket
from collections import OrderedDict
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from coordinator.errors import bad_request
from coordinator.events import has_webhook
from coordinator.metrics import WEBHOOK_DELIVERIES
from coordinator.requesting import SETTLED, RequestDesk
from coordinator.services import Services
from coordinator.storage.records import RequestRecord
from protocol.errors import RC
from protocol.generation import RequestCheck
from protocol.httpsig import sign_request

log = logging.getLogger("horde.coordinator.webhooks")
END = "end"  # the completion's mark in `webhook_sent`
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 60.0
ATTEMPT_SECONDS = 10.0
RESOLVE_SECONDS = 5.0
WITHOUT_REMEMBERED = 50_000  # requests known to have no webhook (a few MB at most)


class AddressRefused(OSError):
    pass


def address_allowed(host: str, private_ok: bool) -> bool:
    """A public unicast address, or any address when the operator allows private ones."""
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return private_ok or (address.is_global and not address.is_multicast)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


class CheckedResolver(AbstractResolver):
    """Resolves as aiohttp does, and refuses a host if any of its addresses is not allowed."""

    def __init__(self, private_ok: bool) -> None:
        self.private_ok = private_ok
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        refused = [r["host"] for r in results if not address_allowed(r["host"], self.private_ok)]
        if refused:
            raise AddressRefused(f"{host} resolves to {', '.join(refused)}, which webhooks may not reach")
        return results

    async def close(self) -> None:
        await self._inner.close()


class Webhooks:
    def __init__(self, services: Services, requests: RequestDesk) -> None:
        self.services = services
        self.requests = requests
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._session: aiohttp.ClientSession | None = None
        # Requests read and found without a webhook, which a request never gains (its body does not change):
        # their later changes (its pop, each result) need no read. The oldest are forgotten past the bound.
        self._without: OrderedDict[str, None] = OrderedDict()
        self.reads = 0  # requests read to look for a webhook (tests count them)
        services.hub.request_listeners.append(self.request_changed)
        services.hub.accepted_listeners.append(self.request_accepted)

    @property
    def private_ok(self) -> bool:
        return self.services.config.webhook_private_addresses

    # --- at submit -----------------------------------------------------------------------------------
    async def check_target(self, url: str | None) -> None:
        """Refuse a webhook whose host is, or resolves to, an address webhooks may not reach."""
        if url is None:
            return
        host = URL(url).host
        if not host:
            raise bad_request(RC.WEBHOOK_REFUSED, "The webhook URL has no host.", {"webhook": "no host"})
        try:
            async with asyncio.timeout(RESOLVE_SECONDS):
                await CheckedResolver(self.private_ok).resolve(host, 0, socket.AF_UNSPEC)
        except AddressRefused as error:
            raise bad_request(
                RC.WEBHOOK_REFUSED,
                f"{error}: loopback, link-local and private addresses are refused.",
                {"webhook": "address refused"},
            ) from None
        except (OSError, TimeoutError, UnicodeError):  # UnicodeError: a label IDNA cannot encode (> 63 characters)
            raise bad_request(
                RC.WEBHOOK_REFUSED, f"The webhook's host {host} does not resolve.", {"webhook": "does not resolve"}
            ) from None

    # --- on changes ----------------------------------------------------------------------------------
    def request_accepted(self, request: RequestRecord) -> None:
        """A request accepted in this process: without a webhook, none of its changes needs a read."""
        if not has_webhook(request):
            self.remember_without(request.id)

    def remember_without(self, request_id: str) -> None:
        """A request without a webhook (accepted here, or announced by the process that accepted it)."""
        self._without[request_id] = None
        if len(self._without) > WITHOUT_REMEMBERED:
            self._without.popitem(last=False)

    def request_changed(self, request_id: str) -> None:
        """Told of every request change in this process: one task per request at a time, run again
        if the request changed meanwhile."""
        if self.services.hub.closing:
            return
        if request_id in self._without:
            return
        if request_id in self._running:
            self._again.add(request_id)
            return
        self._running[request_id] = asyncio.get_running_loop().create_task(self._follow(request_id))

    async def _follow(self, request_id: str) -> None:
        try:
            while True:
                self._again.discard(request_id)
                await self._send_new(request_id)
                if request_id not in self._again:
                    return
        except Exception:
            log.exception("webhooks of request %s", request_id)
        finally:
            del self._running[request_id]

    async def _send_new(self, request_id: str) -> None:
        async with self.services.database.reader() as tx:
            request = await tx.get_request(request_id)
        self.reads += 1
        if request is None or not has_webhook(request):
            if request is not None:
                self.remember_without(request_id)
            return
        claimed = await self._claim(request_id)
        if not claimed:
            return
        url = str(request.body["webhook"])
        status = await self.requests.status(request_id, self._base_url())
        for generation in status.generations:
            if generation.id in claimed:
                body = {
                    "event": "image",
                    "request_id": request_id,
                    "generation": generation.model_dump(mode="json", exclude_none=True),
                }
                await self.deliver(url, body)
        if END in claimed:
            check = RequestCheck.model_validate(status.model_dump(include=set(RequestCheck.model_fields)))
            state = "faulted" if check.faulted else ("cancelled" if claimed[END] == "cancelled" else "done")
            await self.deliver(url, {"event": state, "request_id": request_id, "check": check.model_dump(mode="json")})

    async def _claim(self, request_id: str) -> dict[str, str]:
        """What is new since the last claim (finished jobs; END with the request's state once settled),
        marked as sent in the same transaction."""
        async with self.services.database.transaction() as tx:
            await tx.lock_ledger()  # as every request update does: no lost update under READ COMMITTED
            request = await tx.get_request(request_id)
            if request is None:
                return {}
            jobs = await tx.jobs_of(request_id)
            claimed = {job.id: "image" for job in jobs if job.state == "done" and job.id not in request.webhook_sent}
            unfinished = any(job.state in ("waiting", "processing") for job in jobs)
            if request.state in SETTLED and not unfinished and END not in request.webhook_sent:
                claimed[END] = request.state
            if claimed:
                request.webhook_sent = [*request.webhook_sent, *claimed]
                await tx.update_request(request)
        return claimed

    def _base_url(self) -> str:
        config = self.services.config
        return (config.public_url or "").rstrip("/")

    # --- delivery ------------------------------------------------------------------------------------
    async def deliver(self, url: str, payload: dict[str, Any]) -> bool:
        """POST until a 2xx answer, with backoff, for at most `webhook_retry_seconds`."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.services.config.webhook_retry_seconds
        backoff = FIRST_BACKOFF
        while True:
            outcome = await self._attempt(url, body)
            if outcome in ("delivered", "refused"):
                WEBHOOK_DELIVERIES.labels(outcome).inc()
                return outcome == "delivered"
            if loop.time() + backoff > deadline:
                WEBHOOK_DELIVERIES.labels("abandoned").inc()
                log.warning(
                    "webhook %s abandoned after %.0f s of failures", url, self.services.config.webhook_retry_seconds
                )
                return False
            WEBHOOK_DELIVERIES.labels("retried").inc()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _attempt(self, url: str, body: bytes) -> str:
        host = URL(url).host or ""
        if _is_ip(host) and not address_allowed(host, self.private_ok):  # aiohttp resolves no IP literal
            log.warning("webhook refused: %s is not an address webhooks may reach", host)
            return "refused"
        # Signed at each attempt: a receiver checking `created` sees a fresh signature.
        headers = {"Content-Type": "application/json", **sign_request(self.services.identity, "POST", url, body)}
        try:
            async with self.session.post(
                URL(url, encoded=True),
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=ATTEMPT_SECONDS),
            ) as response:
                return "delivered" if 200 <= response.status < 300 else "failed"
        except aiohttp.ClientConnectorError as error:
            if isinstance(error.os_error, AddressRefused):
                log.warning("webhook refused: %s", error.os_error)
                return "refused"
            log.info("webhook %s failed: %s", url, error)
            return "failed"
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            log.info("webhook %s failed: %s", url, error)
            return "failed"

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=CheckedResolver(self.private_ok), limit=100)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)
        if self._session is not None:
            await self._session.close()
