"""Hostile participants (issue 11): what each abuse achieves, and how responsive the coordinator stays meanwhile.

A coordinator (its own process, SQLite, default rate and connection limits) and a heartbeat prober (its own
process, from 127.0.0.1: GET /v2/status/heartbeat every 10 ms) run throughout. Then one phase per abuse
family, each from its own loopback address (127.0.0.2, .3, ...) as an attacker's own host would be, so a
per-address limit on the attacker is not a limit on the prober:

1. kudos farming: an account's node answers anonymous and zero-balance requests pinned to it (1024², 50
   steps; sent from another address) with a solid image of the right size, at once; kudos the account earned
2. disk fill: anonymous requests as large as the model bounds allow; bytes the data dir grew per request
3. connection flood: thousands of connections that send half a header and wait, from one address and
   then from 64; how many were still held at the phase's end
4. huge answers: anonymous GET /v2/generate/status of an r2:false request holding 20 large images; bytes
   per answer
5. poison and exotic source images (EPS, TIFF, PCX, SGI, BMP, GIF, a PNG claiming 60000×60000 pixels,
   a truncated PNG); how many were refused
6. deeply nested JSON bodies, over-long image names and user ids; 4xx and 5xx answers

Each phase prints the heartbeat's p50/p99 during it (target p99 under 100 ms) and what the abuse achieved.
Any 5xx answer, or a heartbeat that got no answer, is a problem (exit status 1).

    python bench/abuse.py            # 10 s per phase (farming 20 s)
    python bench/abuse.py --short    # CI: ~2.5 s per phase
    python bench/abuse.py --phases farming,flood
"""

import asyncio
import base64
import contextlib
import io
import json
import multiprocessing
import os
import socket
import struct
import sys
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/abuse.py` from anywhere

from bench.common import (
    Coordinator,
    Report,
    base_parser,
    bench_database,
    create_accounts,
    percentile,
    table,
    temporary_dir,
)
from protocol.httpsig import sign_request
from protocol.keys import Identity
from protocol.provenance import ResultDocument, sha256_hex, sign_result

MODEL = "bench-model"
HEARTBEAT = "/api/v2/status/heartbeat"
PROBE_INTERVAL = 0.01
PROBE_TIMEOUT = 5.0
TARGET_P99_MS = 100.0
PHASES = ("idle", "farming", "disk", "flood", "answers", "sources", "malformed")


# --- the heartbeat prober (its own process: the load generator's loop never delays it) ---------------
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
        return {"n": len(window), "failed": len(window) - len(answered),
                "p50": round(percentile(answered, 50), 2) if answered else None,
                "p99": round(percentile(answered, 99), 2) if answered else None,
                "max": round(max(answered), 2) if answered else None}  # fmt: skip


# --- attackers: one loopback address each ----------------------------------------------------------
def loopback_available(address: str) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
    return True


@dataclass
class Answer:
    status: int  # 0: no answer (connection refused, reset or timed out)
    body: Any
    size: int


class Attacker:
    """HTTP calls from one source address, every answer counted by status (5xx kept with an example)."""

    def __init__(self, base: str, address: str) -> None:
        self.base = base + "/api"
        self.address = address if loopback_available(address) else "127.0.0.1"
        self.statuses: Counter[int] = Counter()
        self.server_errors: list[str] = []

    async def __aenter__(self) -> "Attacker":
        connector = aiohttp.TCPConnector(limit=64, local_addr=(self.address, 0))
        self.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, body: Any = None, *, apikey: str | None = None,
                   identity: Identity | None = None) -> Answer:
        url = self.base + path
        raw = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        # Our extension fields (the pop's signed jobs) come only to clients that ask, as our node does.
        headers = {"Content-Type": "application/json", "Client-Agent": "horde-bench-abuse:1:local",
                   "X-Horde-Provenance": "1"}
        if apikey:
            headers["apikey"] = apikey
        if identity is not None:
            headers.update(sign_request(identity, method, url, raw))
        try:
            async with self.session.request(method, url, data=raw or None, headers=headers) as response:
                data, status = await response.read(), response.status
        except (aiohttp.ClientError, TimeoutError):
            self.statuses[0] += 1
            return Answer(0, None, 0)
        self.statuses[status] += 1
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = None
        if status >= 500 and len(self.server_errors) < 5:
            self.server_errors.append(f"{method} {path[:80]} → {status} {data[:200]!r}")
        return Answer(status, parsed, len(data))


async def repeat_until(deadline: float, action: Callable[[], Awaitable[Any]]) -> None:
    while time.perf_counter() < deadline:
        await action()


# --- images ------------------------------------------------------------------------------------------
def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def solid_webp(width: int, height: int) -> bytes:
    return encode(Image.new("RGB", (width, height), (30, 90, 160)), "WEBP")


def noise_webp(size: int) -> bytes:
    return encode(Image.frombytes("RGB", (size, size), os.urandom(size * size * 3)), "WEBP", lossless=True)


def png_claiming(width: int, height: int) -> bytes:
    """A small valid-looking PNG whose header claims `width`×`height`: a decoder that trusts it allocates
    width × height × 3 bytes before it finds the data is short."""
    real = bytearray(encode(Image.new("RGB", (8, 8)), "PNG"))
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(real[24:29])
    real[12:29] = header
    real[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(real)


def poison_sources() -> dict[str, bytes]:
    picture = Image.new("RGB", (64, 64), (120, 40, 40))
    sources = {fmt: encode(picture, fmt) for fmt in ("EPS", "TIFF", "PCX", "SGI", "BMP", "GIF", "TGA")}
    sources["PNG 60000x60000"] = png_claiming(60000, 60000)
    sources["PNG truncated"] = encode(picture, "PNG")[:-40]
    return sources


# --- the phases ---------------------------------------------------------------------------------------
@dataclass
class Setup:
    url: str
    keys: dict[str, str]  # account name → apikey
    data_dir: Path
    seconds: float
    short: bool


Phase = Callable[[Setup, Attacker], Awaitable[dict[str, Any]]]


def pop_body(name: str, max_pixels: int) -> dict[str, Any]:
    return {"name": name, "models": [MODEL], "max_pixels": max_pixels, "amount": 4, "threads": 4,
            "bridge_agent": "horde-bench-abuse:1:local", "allow_lora": True, "wait": 0}  # fmt: skip


async def serve(attacker: Attacker, pop: dict[str, Any], apikey: str, identity: Identity,
                image_for: Callable[[dict[str, Any]], bytes]) -> int:
    """Pop and answer every job at once; the number of results the coordinator accepted."""
    answer = await attacker.call("POST", "/v2/generate/pop", pop, apikey=apikey, identity=identity)
    if answer.status != 200 or not answer.body.get("ids"):
        return 0
    accepted = 0
    for job_id, signed in zip(answer.body["ids"], answer.body["jobs"], strict=True):
        payload = signed["document"]["payload"]
        image = image_for(payload)
        document = ResultDocument(job_id=job_id, image_sha256=sha256_hex(image), seed=payload["seed"], state="ok")
        result = {"id": job_id, "generation": base64.b64encode(image).decode(), "state": "ok",
                  "seed": payload["seed"], "signature": sign_result(identity, document)}  # fmt: skip
        submitted = await attacker.call("POST", "/v2/generate/submit", result, apikey=apikey, identity=identity)
        accepted += submitted.status == 200
    return accepted


def payload_size(payload: dict[str, Any]) -> tuple[int, int]:
    params = payload.get("params", payload)
    return int(params.get("width", 512)), int(params.get("height", 512))


async def farming(setup: Setup, attacker: Attacker) -> dict[str, Any]:
    farmer, puppet = setup.keys["farmer"], setup.keys["puppet"]
    identity = Identity.generate()
    pop = pop_body("farm-node", 1024 * 1024)
    await attacker.call("POST", "/v2/generate/pop", pop, apikey=farmer, identity=identity)  # registers the node
    before = await attacker.call("GET", "/v2/find_user", apikey=farmer)
    body = {"prompt": "a lighthouse at dusk", "models": [MODEL], "workers": ["farm-node"],
            "params": {"width": 1024, "height": 1024, "steps": 50, "n": 4}}  # fmt: skip
    sent: Counter[str] = Counter()
    images = 0
    images_cache: dict[tuple[int, int], bytes] = {}

    def image_for(payload: dict[str, Any]) -> bytes:
        size = payload_size(payload)
        return images_cache.setdefault(size, solid_webp(*size))

    deadline = time.perf_counter() + setup.seconds
    turn = 0
    # The requests come from another address than the node's, as a careful farmer's would.
    async with Attacker(setup.url, "127.0.2.1") as requests_side:
        while time.perf_counter() < deadline:
            requester = puppet if turn % 2 else None  # anonymous, then a zero-balance sock puppet, in turn
            turn += 1
            answer = await requests_side.call("POST", "/v2/generate/async", body, apikey=requester)
            sent[f"{'puppet' if requester else 'anonymous'} {answer.status}"] += 1
            images += await serve(attacker, pop, farmer, identity, image_for)
        attacker.statuses.update(requests_side.statuses)
        attacker.server_errors += requests_side.server_errors
    after = await attacker.call("GET", "/v2/find_user", apikey=farmer)
    earned = (after.body or {}).get("kudos", 0) - (before.body or {}).get("kudos", 0)
    return {"kudos_earned": round(earned, 2), "images_accepted": images, "requests": dict(sent),
            "achieved": f"{earned:,.2f} kudos for {images} images in {setup.seconds:.0f} s"}  # fmt: skip


def data_dir_bytes(path: Path) -> Counter[str]:
    """Bytes in the data dir: the SQLite file, its write-ahead log (cut back at checkpoints), the rest."""
    total: Counter[str] = Counter()
    for root, _dirs, files in os.walk(path):
        for name in files:
            kind = "wal" if name.endswith("-wal") else "database" if name.endswith(".db") else "other"
            with contextlib.suppress(OSError):
                total[kind] += os.path.getsize(os.path.join(root, name))
    return total


async def disk_fill(setup: Setup, attacker: Attacker) -> dict[str, Any]:
    """Anonymous requests from 64 addresses (an attacker with many hosts: one address alone meets the rate
    limit after a request or two), each as large as the bounds allow; and every 4th one far larger."""
    largest = json.dumps({
        "prompt": "p" * 20_000, "models": [f"{i:04d}" + "m" * 96 for i in range(20)],
        "workers": [f"{i:04d}" + "w" * 96 for i in range(20)], "params": {"n": 20, "width": 64, "height": 64},
    }).encode()  # fmt: skip
    oversized = json.dumps({"prompt": "p", "models": ["m" * 20_000] * 60, "workers": ["w" * 20_000] * 60,
                            "params": {"n": 20, "width": 64, "height": 64}}).encode()  # 2.4 MB
    attackers = [await Attacker(setup.url, f"127.0.3.{i}").__aenter__() for i in range(1, 65)]
    await asyncio.sleep(1.0)  # the previous phase's writes reach the files before the first measurement
    before, accepted, sent, body_bytes = data_dir_bytes(setup.data_dir), 0, 0, 0
    deadline = time.perf_counter() + setup.seconds
    try:
        while time.perf_counter() < deadline:
            body = oversized if sent % 4 == 3 else largest
            answer = await attackers[sent % len(attackers)].call("POST", "/v2/generate/async", body)
            sent, body_bytes = sent + 1, body_bytes + len(body)
            accepted += answer.status == 202
    finally:
        for one in attackers:
            attacker.statuses.update(one.statuses)
            attacker.server_errors += one.server_errors
            await one.__aexit__()
    await asyncio.sleep(1.0)
    after = data_dir_bytes(setup.data_dir)
    growth = {kind: after[kind] - before[kind] for kind in ("database", "wal", "other")}
    per_request = {kind: round(grown / max(accepted, 1)) for kind, grown in growth.items()}
    return {"requests": sent, "accepted": accepted, "body_bytes": body_bytes, "data_dir_growth": growth,
            "bytes_per_accepted_request": per_request,
            "achieved": f"{accepted}/{sent} accepted; per accepted request the database grew "
                        f"{per_request['database'] / 1e3:,.1f} KB, its WAL {per_request['wal'] / 1e3:,.1f} KB"}


async def connection_flood(setup: Setup, attacker: Attacker) -> dict[str, Any]:
    """Half-open connections (half a header, then nothing): 1,000 from the phase's one address, then the rest
    from 64 addresses (a botnet: each under a per-address cap), all held to the phase's end."""
    host, port = setup.url.removeprefix("http://").rsplit(":", 1)
    target = 2000 if setup.short else 15_000
    deadline = time.perf_counter() + setup.seconds
    waves = {"one address": [attacker.address] * 1000,
             "64 addresses": [f"127.0.4.{i % 64 + 1}" for i in range(target - 1000)]}
    opened: dict[str, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {wave: [] for wave in waves}
    failed: Counter[str] = Counter()

    async def open_one(wave: str, address: str) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, int(port), local_addr=(address, 0)), 5)
        except (OSError, TimeoutError):
            failed[wave] += 1
            return
        writer.write(b"GET /api/v2/status/heartbeat HTTP/1.1\r\nHost: x\r\nX-Half: ")  # and never the rest
        opened[wave].append((reader, writer))

    for wave, addresses in waves.items():
        for start in range(0, len(addresses), 500):
            if time.perf_counter() > deadline:
                break
            await asyncio.gather(*(open_one(wave, address) for address in addresses[start:start + 500]))
    await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
    result: dict[str, Any] = {}
    for wave, connections in opened.items():
        closed = sum(await asyncio.gather(*(answered_or_closed(reader) for reader, _writer in connections)))
        result[wave] = {"made": len(connections), "failed": failed[wave], "closed_by_coordinator": closed,
                        "held": len(connections) - closed}
        for _reader, writer in connections:
            writer.close()
    one, many = result["one address"], result["64 addresses"]
    result["achieved"] = (f"one address: {one['held']} of {one['made']} held; 64 addresses: {many['held']} of "
                          f"{many['made']} held at {setup.seconds:.0f} s")
    return result


async def answered_or_closed(reader: asyncio.StreamReader) -> bool:
    """Whether the coordinator has answered (a 408, say) or closed this connection by now."""
    try:
        await asyncio.wait_for(reader.read(1), 0.05)
    except TimeoutError:
        return False
    except OSError:
        pass
    return True


async def huge_answers(setup: Setup, attacker: Attacker) -> dict[str, Any]:
    owner, requester = setup.keys["answerer"], setup.keys["rich"]
    identity = Identity.generate()
    big = noise_webp(512)
    request = await attacker.call("POST", "/v2/generate/async", {
        "prompt": "noise", "models": [MODEL], "r2": False, "params": {"width": 512, "height": 512, "n": 20,
                                                                      "steps": 10}}, apikey=requester)
    if request.status != 202:
        return {"achieved": f"request refused ({request.status} {request.body})", "answer_bytes_max": 0}
    pop = pop_body("answer-node", 512 * 512)
    made = 0
    for _ in range(20):
        made += await serve(attacker, pop, owner, identity, lambda _payload: big)
        if made >= 20:
            break
    sizes: list[int] = []
    deadline = time.perf_counter() + setup.seconds

    async def fetch() -> None:
        answer = await attacker.call("GET", f"/v2/generate/status/{request.body['id']}")
        sizes.append(answer.size)

    await asyncio.gather(*(repeat_until(deadline, fetch) for _ in range(4)))
    largest = max(sizes, default=0)
    return {"images": made, "image_bytes": len(big), "answers": len(sizes), "answer_bytes_max": largest,
            "answer_bytes_total": sum(sizes),
            "achieved": f"{len(sizes)} answers of up to {largest / 1e6:.2f} MB ({made} images of "
                        f"{len(big) / 1e6:.2f} MB; {sum(sizes) / 1e6:,.0f} MB sent)"}  # fmt: skip


async def poison_images(setup: Setup, attacker: Attacker) -> dict[str, Any]:
    """img2img requests with each poison source, from 64 addresses (one meets the rate limit at once)."""
    sources = {name: base64.b64encode(data).decode() for name, data in poison_sources().items()}
    outcome: dict[str, Counter[int]] = {name: Counter() for name in sources}
    attackers = [await Attacker(setup.url, f"127.0.6.{i}").__aenter__() for i in range(1, 65)]
    deadline, sent = time.perf_counter() + setup.seconds, 0
    try:
        while time.perf_counter() < deadline:
            for name, source in sources.items():
                body = {"prompt": "x", "models": [MODEL], "source_image": source,
                        "params": {"width": 64, "height": 64, "steps": 4}}  # fmt: skip
                answer = await attackers[sent % len(attackers)].call("POST", "/v2/generate/async", body)
                outcome[name][answer.status] += 1
                sent += 1
    finally:
        for one in attackers:
            attacker.statuses.update(one.statuses)
            attacker.server_errors += one.server_errors
            await one.__aexit__()
    refused = sum(counts[400] for counts in outcome.values())
    limited = sum(counts[429] for counts in outcome.values())
    accepted = {name: counts[202] for name, counts in outcome.items() if counts[202]}
    return {"sent": sent, "refused_as_images": refused, "rate_limited": limited, "accepted_by_format": accepted,
            "achieved": f"{refused} refused as images, {sum(accepted.values())} accepted "
                        f"({limited} more rate-limited)" + (f"; accepted: {accepted}" if accepted else "")}


async def malformed(setup: Setup, attacker: Attacker) -> dict[str, Any]:
    deep = b"[" * 100_000 + b"]" * 100_000
    calls = [("POST", "/v2/generate/async", deep), ("POST", "/v2/generate/pop", b'{"a":' * 50_000),
             ("GET", "/v2/images/" + "a" * 300, None), ("GET", "/v2/sources/" + "\U0001f600" * 100, None),
             ("GET", "/v2/users/" + "9" * 5000, None), ("GET", "/v2/generate/check/" + "x" * 300, None)]
    outcome: Counter[str] = Counter()
    deadline = time.perf_counter() + setup.seconds
    while time.perf_counter() < deadline:
        for method, path, body in calls:
            status = (await attacker.call(method, path, body)).status
            outcome["4xx" if 400 <= status < 500 else "5xx" if status >= 500 else str(status)] += 1
    return {"answers": dict(outcome),
            "achieved": f"{outcome['4xx']} refused with a 4xx, {outcome['5xx']} 5xx"}


PHASE_FUNCTIONS: dict[str, tuple[str, Phase | None]] = {
    "idle": ("127.0.0.1", None),
    "farming": ("127.0.0.2", farming),
    "disk": ("127.0.0.3", disk_fill),
    "flood": ("127.0.0.4", connection_flood),
    "answers": ("127.0.0.5", huge_answers),
    "sources": ("127.0.0.6", poison_images),
    "malformed": ("127.0.0.7", malformed),
}


async def run_phases(args: Any, report: Report, workdir: Path) -> list[dict[str, Any]]:
    data_dir = workdir / "coordinator"
    runs = []
    async with bench_database(args.db) as db:
        keys = await create_accounts(data_dir, db, ["farmer", "answerer", "puppet"], kudos=0)
        keys |= await create_accounts(data_dir, db, ["rich"], kudos=100_000)
        coordinator = DeployedCoordinator(data_dir, db).start()
        try:
            with Prober(coordinator.url) as prober:
                await asyncio.sleep(0.5)  # the prober's process is up and probing
                for name in args.phases:
                    address, function = PHASE_FUNCTIONS[name]
                    seconds = args.seconds * (2 if name == "farming" and not args.short else 1)
                    setup = Setup(coordinator.url, keys, data_dir, seconds, args.short)
                    async with Attacker(coordinator.url, address) as attacker:
                        start = time.time()
                        if function is None:
                            result: dict[str, Any] = {"achieved": "no abuse: the baseline"}
                            await asyncio.sleep(seconds)
                        else:
                            result = await function(setup, attacker)
                        end = time.time()
                    result |= {"phase": name, "address": attacker.address, "seconds": round(end - start, 1),
                               "statuses": dict(attacker.statuses)}
                    for example in attacker.server_errors:
                        report.problems.append(f"{name}: {example}")
                    runs.append((result, start, end))
                    await asyncio.sleep(0.5)  # the next phase starts on a settled coordinator
        finally:
            coordinator.stop()
            if args.keep:
                report.notes.append(f"coordinator log: {coordinator.log_path}")
    for result, start, end in runs:
        result["heartbeat_ms"] = prober.during(start, end)
    return [result for result, _start, _end in runs]


class DeployedCoordinator(Coordinator):
    """The coordinator with every limit a deployment runs with, at its defaults (rate limits, the per-account
    queue cap, connections), not the other benchmarks' unlimited one; uptime kudos off, so what a node earns
    is what farming paid it."""

    def command(self, port_file: Path) -> list[str]:
        serve = ["serve", "--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file), "--uptime-kudos", "0"]
        return [sys.executable, "-m", "coordinator.cli", *self.global_args(), *serve]


def tables(runs: list[dict[str, Any]]) -> list[str]:
    rows = []
    for run in runs:
        beat = run["heartbeat_ms"]
        met = "-" if beat["p99"] is None else "yes" if beat["p99"] < TARGET_P99_MS and not beat["failed"] else "NO"
        rows.append([run["phase"], beat["n"], beat["failed"], beat["p50"], beat["p99"], beat["max"], met,
                     run["achieved"]])
    return [table(f"Heartbeat during each abuse (ms; target p99 < {TARGET_P99_MS:.0f}) and what the abuse achieved",
                  ["phase", "beats", "failed", "p50", "p99", "max", "met", "achieved"], rows)]


async def main_async(args: Any) -> int:
    report = Report("abuse", {"seconds_per_phase": args.seconds, "phases": args.phases, "short": args.short,
                              "db": "postgresql" if args.db else "sqlite"})
    with temporary_dir(args.keep, "horde-bench-abuse-") as workdir:
        runs = await run_phases(args, report, workdir)
    report.results = {"phases": runs, "target_heartbeat_p99_ms": TARGET_P99_MS}
    report.tables = tables(runs)
    for run in runs:
        beat = run["heartbeat_ms"]
        if beat["failed"]:
            report.problems.append(f"{run['phase']}: {beat['failed']} heartbeats got no answer")
        if beat["p99"] is not None and beat["p99"] >= TARGET_P99_MS:
            report.notes.append(f"{run['phase']}: heartbeat p99 {beat['p99']} ms is over the {TARGET_P99_MS:.0f} ms "
                                "target")
    return report.emit(args.json)


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per phase (farming twice as long)")
    parser.add_argument("--phases", type=lambda text: text.split(","), default=list(PHASES),
                        help="comma-separated: " + ", ".join(PHASES))
    args = parser.parse_args()
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    if args.short:
        args.seconds = min(args.seconds, 2.5)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
