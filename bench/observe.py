"""What watching the network costs and how fast it tells (issue 18).

- statement timing: a SQLite `SELECT` through the plain driver and through `metrics.TimedDriver`
  (every statement the coordinator runs pays the difference);
- a `/metrics` scrape: the first (which reads the whole ledger once) and the next ones;
- a step on the stream: a node's progress POST answered → the `progress` event read by a
  requester following the request (median and worst over the rounds).

    python bench/observe.py            # 20k statements, 5k ledger entries, 50 stream rounds
    python bench/observe.py --short    # CI: a tenth of each
"""

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/observe.py` from anywhere

from client.stream import follow
from coordinator.app import create_app
from coordinator.config import CoordinatorConfig
from coordinator.connections import GuardedRunner
from coordinator.metrics import TimedDriver
from coordinator.routes.http import BROKER
from tests.conftest import free_port
from tests.helpers import Api, SimWorker


async def statement_cost(app: web.Application, count: int) -> tuple[float, float]:
    """Microseconds per statement: plain driver, timed driver."""
    database = app[BROKER].services.database
    async with database.reader() as tx:
        timed = tx.driver
        assert isinstance(timed, TimedDriver)
        plain = timed._driver  # the engine's own driver, under the timing wrapper
        results = []
        for driver in (plain, timed):
            started = time.perf_counter()
            for _ in range(count):
                await driver.fetchone("SELECT 1 AS one")
            results.append((time.perf_counter() - started) / count * 1e6)
    return results[0], results[1]


async def scrape_times(url: str, app: web.Application, entries: int) -> tuple[float, float]:
    bank = app[BROKER].bank
    account, _ = await bank.open_account("bench")
    for _ in range(entries):
        await bank.grant(account.id, 1.0)
    async with aiohttp.ClientSession() as session:
        timings = []
        for _ in range(4):
            started = time.perf_counter()
            async with session.get(f"{url}/metrics") as response:
                await response.read()
            timings.append((time.perf_counter() - started) * 1000)
    return timings[0], statistics.median(timings[1:])


async def stream_latency(url: str, app: web.Application, rounds: int) -> list[float]:
    bank = app[BROKER].bank
    _owner, owner_key = await bank.open_account("owner")
    alice, alice_key = await bank.open_account("alice")
    await bank.grant(alice.id, 10_000)
    worker = SimWorker(Api(url, apikey=owner_key), "bench-node")
    requester = Api(url, apikey=alice_key)
    body = {"prompt": "a cat", "models": ["tiny-sd"], "params": {"width": 64, "height": 64, "steps": 4, "n": 1}}
    latencies = []
    async with aiohttp.ClientSession() as session:
        for _ in range(rounds):
            request_id = (await requester.post("/v2/generate/async", body)).body["id"]
            popped = await worker.pop()
            job_id = popped.body["ids"][0]
            events = follow(session, f"{url}/api/v2", request_id)
            while (await anext(events)).name != "check":
                pass
            started = time.perf_counter()
            await worker.api.post("/v2/generate/progress", {"id": job_id, "step": 1, "total": 4})
            while (await anext(events)).name != "progress":
                pass
            latencies.append((time.perf_counter() - started) * 1000)
            await events.aclose()
            await worker.submit(job_id, popped.body["jobs"][0]["document"]["payload"]["seed"])
    return latencies


async def main(short: bool) -> None:
    scale = 10 if short else 1
    with tempfile.TemporaryDirectory() as folder:
        config = CoordinatorConfig(data_dir=Path(folder), rate_limiting=False, maintenance_interval=1.0)
        app = create_app(config)
        runner = GuardedRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}"
        try:
            plain, timed = await statement_cost(app, 20_000 // scale)
            first, steady = await scrape_times(url, app, 5_000 // scale)
            steps = await stream_latency(url, app, 50 // scale)
        finally:
            await runner.cleanup()
    print(f"statement (SQLite SELECT 1): plain {plain:.1f} µs, timed {timed:.1f} µs (+{timed - plain:.1f} µs)")
    print(f"/metrics scrape, {5_000 // scale} ledger entries: first {first:.1f} ms, then {steady:.1f} ms")
    print(
        f"progress POST → stream event, {len(steps)} rounds: median {statistics.median(steps):.1f} ms, "
        f"worst {max(steps):.1f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="a tenth of the work (CI)")
    asyncio.run(main(parser.parse_args().short))
