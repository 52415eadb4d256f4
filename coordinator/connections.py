"""Connection limits: how much one client address may hold open, and how long a request may take
to arrive (issue 11, case 8). Without them ~20k half-open connections from one host exhausted the
process's file descriptors and real heartbeats timed out.

- **Headers in time.** aiohttp's keep-alive timer closes a connection whose request headers are
  not complete `header_timeout` seconds after it opened or after its previous answer (a slowloris
  sending a byte at a time included); so it is also how long an idle connection is kept.
- **Bodies in time.** `read_in_time` reads every body before the handler runs, within
  `body_timeout` plus a second per `body_min_rate` declared bytes, else answers 408 and closes.
- **Connections per address and in all.** `ConnectionGuard` counts connections as the server
  accepts them; one past the per-address cap gets a 429 `{message, rc}` and is closed at once,
  one past the total cap a 503. The total stays under the open-files limit, so the database and
  the images always have descriptors left. Behind a trusted proxy every connection comes from the
  proxy, so only the total applies there; the proxy limits each client (deploy/README.md).
- **Long-polls per address.** At most `long_polls_per_ip` pops and checks in progress per client
  address (X-Forwarded-For behind a trusted proxy), so one address cannot park thousands of
  waiters for the event hub to walk.

IPv6 clients are counted per /64, the block one host is usually given.
"""

import asyncio
import contextlib
import ipaddress
import json
import resource
from collections import Counter
from collections.abc import Iterator

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler

from coordinator.config import ConnectionLimits, CoordinatorConfig
from coordinator.errors import HordeError
from coordinator.routes import generate, jobs, stream
from coordinator.routes.http import client_ip
from protocol.errors import RC

# Open files kept for everything but client connections: the database (and its WAL), image files,
# a PostgreSQL pool, log files.
FD_RESERVE = 256
MIN_TOTAL = 64
# The handlers that may hold a request open for up to a minute (MAX_LONG_POLL_SECONDS).
LONG_POLL_HANDLERS = frozenset({jobs.pop, generate.check, stream.stream})  # a stream holds its slot throughout


def address_key(host: str) -> str:
    """Whose connection this is: an IPv4 address, or an IPv6 address's /64."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host  # "unknown", a Unix socket
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def open_files_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_open_files_limit() -> None:
    """Lift the soft open-files limit to the hard one (often 1024 → 1M): a coordinator serves many
    long-polling nodes, and the total connection cap is derived from it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _refusal(status: int, reason: str, message: str, rc: str) -> bytes:
    """A whole HTTP answer, written before any request was read, then the connection closes."""
    body = json.dumps({"message": message, "rc": rc}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class ConnectionGuard:
    def __init__(self, limits: ConnectionLimits, *, behind_proxy: bool) -> None:
        self.limits = limits
        self.per_ip = None if behind_proxy else limits.per_ip
        self.total = limits.total or max(MIN_TOTAL, open_files_limit() - FD_RESERVE)
        self._open: Counter[str] = Counter()
        self._admitted: dict[RequestHandler, str] = {}
        self._long_polls: Counter[str] = Counter()

    def open_from(self, host: str) -> int:
        return self._open[address_key(host)]

    def long_polls_from(self, host: str) -> int:
        return self._long_polls[address_key(host)]

    # --- connections ------------------------------------------------------------------------------
    def attach(self, server: web.Server) -> None:
        """Count the connections `server` accepts. Its two hooks are the only place aiohttp tells
        a server about a connection, before any byte of a request is read."""
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
            made(handler, transport)
            self._admit(handler, transport)

        def connection_lost(handler: RequestHandler, exc: BaseException | None = None) -> None:
            self._release(handler)
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    def _admit(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        key = address_key(peer[0] if isinstance(peer, tuple) else "unknown")
        refusal = self._refusal(key)
        if refusal is not None:
            transport.write(refusal)
            transport.close()  # after the answer is flushed; connection_lost follows
            return
        self._admitted[handler] = key
        self._open[key] += 1

    def _refusal(self, key: str) -> bytes | None:
        if len(self._admitted) >= self.total:
            return _refusal(
                503,
                "Service Unavailable",
                f"The coordinator is at its limit of {self.total} connections; retry shortly.",
                RC.TOO_MANY_CONNECTIONS,
            )
        if self.per_ip is not None and self._open[key] >= self.per_ip:
            return _refusal(
                429,
                "Too Many Requests",
                f"Too many connections from your address (at most {self.per_ip} at once); close some and retry.",
                RC.TOO_MANY_CONNECTIONS,
            )
        return None

    def _release(self, handler: RequestHandler) -> None:
        key = self._admitted.pop(handler, None)
        if key is None:
            return  # refused at the door
        self._open[key] -= 1
        if not self._open[key]:
            del self._open[key]

    # --- requests ---------------------------------------------------------------------------------
    async def read_body(self, request: web.Request) -> None:
        """Read the body now (handlers get the same bytes from request.read()), in bounded time."""
        allowed = self.limits.body_timeout + (request.content_length or 0) / self.limits.body_min_rate
        try:
            async with asyncio.timeout(allowed):
                await request.read()
        except TimeoutError:
            raise HordeError(
                408, RC.REQUEST_TIMEOUT, f"The request body did not arrive within {allowed:.0f} s."
            ) from None

    @contextlib.contextmanager
    def long_poll(self, request: web.Request) -> Iterator[None]:
        key = address_key(client_ip(request))
        if self._long_polls[key] >= self.limits.long_polls_per_ip:
            raise HordeError(
                429,
                RC.TOO_MANY_LONG_POLLS,
                f"Too many pops and checks in progress from your address "
                f"(at most {self.limits.long_polls_per_ip}); wait for one to answer.",
            )
        self._long_polls[key] += 1
        try:
            yield
        finally:
            self._long_polls[key] -= 1
            if not self._long_polls[key]:
                del self._long_polls[key]


CONNECTIONS = web.AppKey("connections", ConnectionGuard)


def guard_for(config: CoordinatorConfig) -> ConnectionGuard:
    return ConnectionGuard(config.connection_limits, behind_proxy=config.trust_forwarded_for)


@web.middleware
async def request_limits(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bodies in time and long-polls per address; inside horde_errors, which words the refusals."""
    guard = request.app[CONNECTIONS]
    if request.body_exists:
        try:
            await guard.read_body(request)
        except HordeError as error:
            # Answer, then close at once: aiohttp would otherwise spend up to 10 s draining the
            # rest of a body that is not coming.
            response = error.response()
            await response.prepare(request)
            await response.write_eof()
            request.protocol.force_close()
            return response
    if request.match_info.handler in LONG_POLL_HANDLERS:
        with guard.long_poll(request):
            return await handler(request)
    return await handler(request)


class GuardedRunner(web.AppRunner):
    """An AppRunner whose server applies the app's connection limits."""

    def __init__(self, app: web.Application) -> None:
        guard = app[CONNECTIONS]
        # handler_cancellation: a handler whose client went away is cancelled, so an abandoned
        # long-poll frees its slot at once. keepalive_timeout: the header timeout (module docstring).
        super().__init__(app, access_log=None, handler_cancellation=True, keepalive_timeout=guard.limits.header_timeout)
        self._guard = guard

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        self._guard.attach(server)
        return server
