"""The heartbeat prober of bench/abuse.py: its own process (the load generator's loop never delays it),
GET /v2/status/heartbeat from 127.0.0.1 every 10 ms, and the answer times during any window."""

import asyncio
import multiprocessing
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import aiohttp

from bench.figures import percentile

HEARTBEAT = "/api/v2/status/heartbeat"
PROBE_INTERVAL = 0.01
PROBE_TIMEOUT = 5.0


def probe(url: str, stop: Any, out: Connection) -> None:
    """(wall-clock time sent, seconds to the answer or None when none came) for each heartbeat, until `stop`."""
    samples: list[tuple[float, float | None]] = []

    async def run() -> None:
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
        connector = aiohttp.TCPConnector(limit=1, local_addr=("127.0.0.1", 0))
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            while not stop.is_set():
                sent, started = time.time(), time.perf_counter()
                try:
                    async with session.get(url + HEARTBEAT) as response:
                        await response.read()
                        ok = response.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                samples.append((sent, time.perf_counter() - started if ok else None))
                await asyncio.sleep(PROBE_INTERVAL)

    asyncio.run(run())
    out.send(samples)
    out.close()


@dataclass
class Prober:
    url: str
    context: Any = field(default_factory=lambda: multiprocessing.get_context("spawn"))

    def __enter__(self) -> "Prober":
        self.stop = self.context.Event()
        self.receiver, sender = self.context.Pipe(duplex=False)
        self.process = self.context.Process(target=probe, args=(self.url, self.stop, sender), daemon=True)
        self.process.start()
        sender.close()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.samples: list[tuple[float, float | None]] = self.receiver.recv() if self.receiver.poll(30) else []
        self.process.join(10)

    def during(self, start: float, end: float) -> dict[str, Any]:
        window = [seconds for sent, seconds in self.samples if start <= sent < end]
        answered = [seconds * 1000 for seconds in window if seconds is not None]
        return {
            "n": len(window),
            "failed": len(window) - len(answered),
            "p50": round(percentile(answered, 50), 2) if answered else None,
            "p99": round(percentile(answered, 99), 2) if answered else None,
            "max": round(max(answered), 2) if answered else None,
        }
