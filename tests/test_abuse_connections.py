"""Issue 11, case 8: connection exhaustion.

One address may hold a bounded number of connections (past it, a new one gets a 429 JSON answer
and is closed), a connection that does not finish its request headers in time is closed
(slowloris), a body that does not arrive in time is answered 408, and one address may park a
bounded number of long-polls. The heartbeat keeps answering through all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from coordinator.config import ConnectionLimits
from coordinator.connections import CONNECTIONS, address_key
from tests.api_support import custom_coordinator, small
from tests.conftest import RunningCoordinator
from tests.helpers import Api

HEARTBEAT = b"GET /api/v2/status/heartbeat HTTP/1.1\r\nHost: x\r\n\r\n"
# Generous outer bounds: the test waits on the event (a socket closing, an answer); these only
# stop a broken build from hanging. Timing figures belong to bench/abuse.py.
PATIENCE = 20.0
pytestmark = pytest.mark.timeout(120)

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def address(running: RunningCoordinator) -> tuple[str, int]:
    host, port = running.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


@contextlib.asynccontextmanager
async def opened(running: RunningCoordinator, count: int) -> AsyncIterator[list[Stream]]:
    """`count` TCP connections that send nothing (half-open, as a flood leaves them)."""
    streams: list[Stream] = []
    try:
        for _ in range(count):
            streams.append(await asyncio.open_connection(*address(running)))
        yield streams
    finally:
        for _, writer in streams:
            writer.close()


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Wait for a server-side count to reach a state (checked every 10 ms, failing after PATIENCE)."""
    deadline = time.monotonic() + PATIENCE
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sent before it closed the connection."""
    return await reader.read()


def split_response(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else {}


async def heartbeat_on(stream: Stream) -> int:
    reader, writer = stream
    writer.write(HEARTBEAT)
    await writer.drain()
    status_line = await reader.readline()
    return int(status_line.split(b" ", 2)[1])


async def test_one_address_cannot_exhaust_connections(tmp_path: Path) -> None:
    limits = ConnectionLimits(per_ip=50, header_timeout=60)
    async with custom_coordinator(tmp_path, None, connection_limits=limits) as running:
        async with opened(running, 300) as streams:
            # The 250 past the cap are answered and closed by the server; the first 50 are kept.
            async with asyncio.timeout(PATIENCE):
                answers = await asyncio.gather(*(closed_by_server(reader) for reader, _ in streams[50:]))
            for raw in answers:
                assert split_response(raw) == (
                    429,
                    {"message": split_response(raw)[1]["message"], "rc": "TooManyConnections"},
                )
            assert "50" in split_response(answers[0])[1]["message"]  # names the bound
            assert not any(reader.at_eof() for reader, _ in streams[:50])
            # A connection the server accepted still gets its heartbeat answered at once.
            async with asyncio.timeout(PATIENCE):
                assert await heartbeat_on(streams[0]) == 200
                assert await heartbeat_on(streams[49]) == 200
        # Closed connections give their slots back: a new client is served again.
        guard = running.app[CONNECTIONS]
        await until(lambda: guard.open_from("127.0.0.1") == 0, "the server to see the connections close")
        heartbeat = await Api(running.url).get("/v2/status/heartbeat")
        assert (heartbeat.status, heartbeat.body["message"]) == (200, "OK")


async def test_a_slowloris_connection_is_closed_after_the_header_timeout(tmp_path: Path) -> None:
    limits = ConnectionLimits(header_timeout=1.0)
    async with custom_coordinator(tmp_path, None, connection_limits=limits) as running:
        async with opened(running, 1) as streams:
            reader, writer = streams[0]
            started = time.monotonic()
            sent = 0
            # Headers one byte at a time, never finished: the server must hang up on its own.
            async with asyncio.timeout(PATIENCE):
                for byte in HEARTBEAT[:-2] + b"X-Slow: " + b"a" * 10_000:
                    with contextlib.suppress(ConnectionError):
                        writer.write(bytes([byte]))
                        await writer.drain()
                    sent += 1
                    with contextlib.suppress(TimeoutError):
                        if await asyncio.wait_for(reader.read(1), 0.05) == b"":
                            break  # EOF: closed by the server
                else:
                    pytest.fail("the server kept a never-ending header open")
            assert reader.at_eof()
            assert time.monotonic() - started >= limits.header_timeout  # not before its time
            assert sent < len(HEARTBEAT) + 10_000
        # Meanwhile and afterwards, real requests are served.
        assert (await Api(running.url).get("/v2/status/heartbeat")).status == 200


async def test_a_body_that_does_not_arrive_in_time_is_answered_408(tmp_path: Path) -> None:
    limits = ConnectionLimits(body_timeout=1.0, body_min_rate=1_000_000)
    async with custom_coordinator(tmp_path, None, connection_limits=limits) as running:
        async with opened(running, 1) as streams:
            reader, writer = streams[0]
            # Complete headers promising 100 bytes of body, then only 10 of them.
            writer.write(
                b"POST /api/v2/generate/async HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n" + b'{"prompt":'
            )
            await writer.drain()
            async with asyncio.timeout(PATIENCE):
                status, body = split_response(await closed_by_server(reader))
            assert (status, body["rc"]) == (408, "RequestTimeout")


async def test_one_address_cannot_park_unbounded_long_polls(tmp_path: Path) -> None:
    limits = ConnectionLimits(long_polls_per_ip=3)
    async with custom_coordinator(tmp_path, None, connection_limits=limits) as running:
        owner = await running.create_account("owner")
        requester = Api(running.url, apikey=owner.apikey)
        accepted = await requester.post("/v2/generate/async", small())
        assert accepted.status == 202, accepted.body
        check = f"/v2/generate/check/{accepted.body['id']}?wait=30"
        guard = running.app[CONNECTIONS]
        parked = [asyncio.ensure_future(requester.get(check)) for _ in range(3)]
        try:
            await until(lambda: guard.long_polls_from("127.0.0.1") == 3, "three checks to be parked")
            refused = await requester.get(check)
            assert (refused.status, refused.rc) == (429, "TooManyLongPolls"), refused.body
            assert (await requester.get("/v2/status/heartbeat")).status == 200
        finally:
            for task in parked:
                task.cancel()
            await asyncio.gather(*parked, return_exceptions=True)


def test_an_ipv6_host_is_counted_per_64_and_a_mapped_ipv4_as_itself() -> None:
    """One IPv6 host usually holds a whole /64: counting single addresses would let it open
    2^64 × the cap."""
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:203.0.113.7") == address_key("203.0.113.7") == "203.0.113.7"
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("unknown") == "unknown"
