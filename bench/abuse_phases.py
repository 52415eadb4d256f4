"""The phases of bench/abuse.py, one per abuse family: each runs for `Setup.seconds` from its attacker's
address and says what the abuse achieved."""

import asyncio
import base64
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.abuse_attackers import Attacker, repeat_until
from bench.abuse_images import noise_webp, poison_sources, solid_webp
from protocol.keys import Identity
from protocol.provenance import ResultDocument, sha256_hex, sign_result

MODEL = "bench-model"


@dataclass
class Setup:
    url: str
    keys: dict[str, str]  # account name → apikey
    data_dir: Path
    seconds: float
    short: bool


Phase = Callable[[Setup, Attacker], Awaitable[dict[str, Any]]]


def pop_body(name: str, max_pixels: int) -> dict[str, Any]:
    return {
        "name": name,
        "models": [MODEL],
        "max_pixels": max_pixels,
        "amount": 4,
        "threads": 4,
        "bridge_agent": "horde-bench-abuse:1:local",
        "allow_lora": True,
        "wait": 0,
    }


async def serve(
    attacker: Attacker,
    pop: dict[str, Any],
    apikey: str,
    identity: Identity,
    image_for: Callable[[dict[str, Any]], bytes],
) -> int:
    """Pop and answer every job at once; the number of results the coordinator accepted."""
    answer = await attacker.call("POST", "/v2/generate/pop", pop, apikey=apikey, identity=identity)
    if answer.status != 200 or not answer.body.get("ids"):
        return 0
    accepted = 0
    for job_id, signed in zip(answer.body["ids"], answer.body["jobs"], strict=True):
        payload = signed["document"]["payload"]
        image = image_for(payload)
        document = ResultDocument(job_id=job_id, image_sha256=sha256_hex(image), seed=payload["seed"], state="ok")
        result = {
            "id": job_id,
            "generation": base64.b64encode(image).decode(),
            "state": "ok",
            "seed": payload["seed"],
            "signature": sign_result(identity, document),
        }
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
    body = {
        "prompt": "a lighthouse at dusk",
        "models": [MODEL],
        "workers": ["farm-node"],
        "params": {"width": 1024, "height": 1024, "steps": 50, "n": 4},
    }
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
    return {
        "kudos_earned": round(earned, 2),
        "images_accepted": images,
        "requests": dict(sent),
        "achieved": f"{earned:,.2f} kudos for {images} images in {setup.seconds:.0f} s",
    }


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
    largest = json.dumps(
        {
            "prompt": "p" * 20_000,
            "models": [f"{i:04d}" + "m" * 96 for i in range(20)],
            "workers": [f"{i:04d}" + "w" * 96 for i in range(20)],
            "params": {"n": 20, "width": 64, "height": 64},
        }
    ).encode()
    oversized = json.dumps(
        {
            "prompt": "p",
            "models": ["m" * 20_000] * 60,
            "workers": ["w" * 20_000] * 60,
            "params": {"n": 20, "width": 64, "height": 64},
        }
    ).encode()  # 2.4 MB
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
    return {
        "requests": sent,
        "accepted": accepted,
        "body_bytes": body_bytes,
        "data_dir_growth": growth,
        "bytes_per_accepted_request": per_request,
        "achieved": f"{accepted}/{sent} accepted; per accepted request the database grew "
        f"{per_request['database'] / 1e3:,.1f} KB, its WAL {per_request['wal'] / 1e3:,.1f} KB",
    }


async def connection_flood(setup: Setup, attacker: Attacker) -> dict[str, Any]:
    """Half-open connections (half a header, then nothing): 1,000 from the phase's one address, then the rest
    from 64 addresses (a botnet: each under a per-address cap), all held to the phase's end."""
    host, port = setup.url.removeprefix("http://").rsplit(":", 1)
    target = 2000 if setup.short else 15_000
    deadline = time.perf_counter() + setup.seconds
    waves = {
        "one address": [attacker.address] * 1000,
        "64 addresses": [f"127.0.4.{i % 64 + 1}" for i in range(target - 1000)],
    }
    opened: dict[str, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {wave: [] for wave in waves}
    failed: Counter[str] = Counter()

    async def open_one(wave: str, address: str) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, int(port), local_addr=(address, 0)), 5
            )
        except (OSError, TimeoutError):
            failed[wave] += 1
            return
        writer.write(b"GET /api/v2/status/heartbeat HTTP/1.1\r\nHost: x\r\nX-Half: ")  # and never the rest
        opened[wave].append((reader, writer))

    for wave, addresses in waves.items():
        for start in range(0, len(addresses), 500):
            if time.perf_counter() > deadline:
                break
            await asyncio.gather(*(open_one(wave, address) for address in addresses[start : start + 500]))
    await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
    result: dict[str, Any] = {}
    for wave, connections in opened.items():
        closed = sum(await asyncio.gather(*(answered_or_closed(reader) for reader, _writer in connections)))
        result[wave] = {
            "made": len(connections),
            "failed": failed[wave],
            "closed_by_coordinator": closed,
            "held": len(connections) - closed,
        }
        for _reader, writer in connections:
            writer.close()
    one, many = result["one address"], result["64 addresses"]
    result["achieved"] = (
        f"one address: {one['held']} of {one['made']} held; 64 addresses: {many['held']} of "
        f"{many['made']} held at {setup.seconds:.0f} s"
    )
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
    request = await attacker.call(
        "POST",
        "/v2/generate/async",
        {
            "prompt": "noise",
            "models": [MODEL],
            "r2": False,
            "params": {"width": 512, "height": 512, "n": 20, "steps": 10},
        },
        apikey=requester,
    )
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
    return {
        "images": made,
        "image_bytes": len(big),
        "answers": len(sizes),
        "answer_bytes_max": largest,
        "answer_bytes_total": sum(sizes),
        "achieved": f"{len(sizes)} answers of up to {largest / 1e6:.2f} MB ({made} images of "
        f"{len(big) / 1e6:.2f} MB; {sum(sizes) / 1e6:,.0f} MB sent)",
    }


async def poison_images(setup: Setup, attacker: Attacker) -> dict[str, Any]:
    """img2img requests with each poison source, from 64 addresses (one meets the rate limit at once)."""
    sources = {name: base64.b64encode(data).decode() for name, data in poison_sources().items()}
    outcome: dict[str, Counter[int]] = {name: Counter() for name in sources}
    attackers = [await Attacker(setup.url, f"127.0.6.{i}").__aenter__() for i in range(1, 65)]
    deadline, sent = time.perf_counter() + setup.seconds, 0
    try:
        while time.perf_counter() < deadline:
            for name, source in sources.items():
                body = {
                    "prompt": "x",
                    "models": [MODEL],
                    "source_image": source,
                    "params": {"width": 64, "height": 64, "steps": 4},
                }
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
    return {
        "sent": sent,
        "refused_as_images": refused,
        "rate_limited": limited,
        "accepted_by_format": accepted,
        "achieved": f"{refused} refused as images, {sum(accepted.values())} accepted "
        f"({limited} more rate-limited)" + (f"; accepted: {accepted}" if accepted else ""),
    }


async def malformed(setup: Setup, attacker: Attacker) -> dict[str, Any]:
    deep = b"[" * 100_000 + b"]" * 100_000
    calls = [
        ("POST", "/v2/generate/async", deep),
        ("POST", "/v2/generate/pop", b'{"a":' * 50_000),
        ("GET", "/v2/images/" + "a" * 300, None),
        ("GET", "/v2/sources/" + "\U0001f600" * 100, None),
        ("GET", "/v2/users/" + "9" * 5000, None),
        ("GET", "/v2/generate/check/" + "x" * 300, None),
    ]
    outcome: Counter[str] = Counter()
    deadline = time.perf_counter() + setup.seconds
    while time.perf_counter() < deadline:
        for method, path, body in calls:
            status = (await attacker.call(method, path, body)).status
            outcome["4xx" if 400 <= status < 500 else "5xx" if status >= 500 else str(status)] += 1
    return {"answers": dict(outcome), "achieved": f"{outcome['4xx']} refused with a 4xx, {outcome['5xx']} 5xx"}


PHASE_FUNCTIONS: dict[str, tuple[str, Phase | None]] = {
    "idle": ("127.0.0.1", None),
    "farming": ("127.0.0.2", farming),
    "disk": ("127.0.0.3", disk_fill),
    "flood": ("127.0.0.4", connection_flood),
    "answers": ("127.0.0.5", huge_answers),
    "sources": ("127.0.0.6", poison_images),
    "malformed": ("127.0.0.7", malformed),
}
