"""What a parked request costs aiohttp alone: the floor under the coordinator's RSS per parked node.

A bare aiohttp server (no middleware, no signature, no database) whose one handler reads the body and
waits; N clients post a pop-sized body to it and stay parked. Reported: the server's RSS with every request
parked, less its RSS before, over N. bench/scale.py measures the coordinator's figure the same way; what
lies between the two is the coordinator's own state per parked node.

    python bench/parked_floor.py              # 5,000 parked requests
    python bench/parked_floor.py --short      # CI: 200, a sanity run
"""

import asyncio
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/parked_floor.py` from anywhere

import aiohttp

from bench.common import Report, base_parser
from bench.scale import raise_open_files

SERVER = """
import asyncio, sys
from aiohttp import web
waiting = [0]
async def parked(request):
    await request.read()
    waiting[0] += 1
    await asyncio.sleep(3600)
    return web.json_response({})
async def resident(request):
    with open("/proc/self/statm") as statm:
        return web.json_response({"pages": int(statm.read().split()[1]), "parked": waiting[0]})
app = web.Application()
app.router.add_post("/pop", parked)
app.router.add_get("/rss", resident)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=lambda *_: print("ready", flush=True))
"""
PAGE = 4096
BODY = {"name": "scale-node-1", "models": ["scale-1"], "max_pixels": 262144, "amount": 1, "wait": 20.0}


async def server_state(session: aiohttp.ClientSession, base: str) -> tuple[int, int]:
    """The server's resident bytes, and how many handlers have read their body and wait."""
    async with session.get(f"{base}/rss") as response:
        state = await response.json()
    return state["pages"] * PAGE, state["parked"]


async def until_parked(session: aiohttp.ClientSession, base: str, count: int) -> int:
    """The server's resident bytes once it holds `count` parked handlers."""
    while True:
        resident, parked = await server_state(session, base)
        if parked >= count:
            return resident
        await asyncio.sleep(0.2)


async def measure(base: str, count: int) -> dict[str, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        before, _ = await server_state(session, base)
        parked = [asyncio.create_task(session.post(f"{base}/pop", json=BODY)) for _ in range(count)]
        after = await asyncio.wait_for(until_parked(session, base, count), 120)
        for task in parked:
            task.cancel()
        await asyncio.gather(*parked, return_exceptions=True)
    return {"parked": count, "rss_bytes_per_parked_request": round((after - before) / count)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args()
    raise_open_files()
    count = 200 if args.short else args.requests
    report = Report("parked_floor", {"requests": count})
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        report.results = asyncio.run(measure(f"http://127.0.0.1:{port}", count))
    finally:
        server.terminate()
        server.wait()
    report.notes.append(f"bare aiohttp: {report.results['rss_bytes_per_parked_request']} B RSS per parked request")
    return report.emit(args.json)


if __name__ == "__main__":
    sys.exit(main())
