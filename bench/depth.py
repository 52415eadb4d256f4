"""Pop latency and coordinator memory as the queue grows, with every node online at once.

1,000 nodes register with different model lists, sizes, nsfw and img2img settings; 10% serve only models nobody
asks for, at a size no request has, so their pops find nothing. The queue is then filled through the API
(requests of n=20 images, several submitters at once) to 1k, 10k and 100k waiting images spread over 200 models
(Zipf-like popularity; mixed sizes, nsfw flags, img2img, 5% any-model requests). At each depth every node is
online together, as on a real network: each pops (amount=1, no wait), and after a job "works" for about
`--interval` seconds, after an empty pop sleeps about as long (each sleep drawn from 0.5–1.5×, the nodes
starting at random moments), so the coordinator serves ~nodes/interval pops a second from all of them at once.
Popped jobs stay with their node, and the queue is topped up as it drains, so its depth stays near the target.
Then plain /generate/check calls on waiting requests (each computes a queue position).

Memory per waiting image is what the coordinator's Python objects hold for it: tracemalloc in the coordinator
(bench/common.py MEMORY_PROBE) counts the bytes allocated while a depth's images are added and still held
after, divided by the images added. The resident size is reported too, but it is no measure per image: most
of its growth is SQLite's page cache, which fills to its cap (64 MiB per connection) and then stays, so
"RSS growth / waiting images" falls as the queue deepens whatever the coordinator keeps per image (the earlier
figure, 842 B at 100k, fell with depth for that reason). The database's own bytes per image are given apart.

    python bench/depth.py                     # 1k, 10k, 100k
    python bench/depth.py --short             # CI: 50 nodes, 200 and 1,000 images
    python bench/depth.py --depths 1000,10000 --pops 500
"""

import asyncio
import contextlib
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/depth.py` from anywhere

from bench.common import (
    Api,
    Coordinator,
    Report,
    base_parser,
    bench_database,
    create_accounts,
    gather_cancelling,
    now,
    summary,
    table,
    temporary_dir,
    tiny_png_b64,
)
from protocol.keys import Identity

QUEUED_MODELS = [f"model-{i:03d}" for i in range(200)]
IDLE_MODELS = [f"idle-{i:02d}" for i in range(20)]  # served by some nodes, never requested
IDLE_MAX_PIXELS = 256 * 256  # smaller than any request
POPULARITY = [1 / (rank + 1) ** 0.9 for rank in range(len(QUEUED_MODELS))]
SIZES = [(512, 512), (768, 768), (1024, 1024), (512, 768)]
SIZE_WEIGHTS = [0.55, 0.25, 0.1, 0.1]
IMAGES_PER_REQUEST = 20
NODE_ADDRESSES = 32  # loopback addresses the nodes pop from: ~31 nodes each at 1,000
TARGETS = {"pop_p99_ms_at_100k": 20.0, "p99_ratio_100k_to_1k": 3.0, "bytes_per_waiting_image": 4096}


@dataclass
class BenchNode:
    name: str
    owner: str
    identity: Identity
    body: dict[str, Any]


@dataclass
class Depth:
    target: int
    pops_job: list[float] = field(default_factory=list)
    pops_empty: list[float] = field(default_factory=list)


def make_nodes(count: int, owners: list[str], rng: random.Random) -> list[BenchNode]:
    nodes = []
    for index in range(count):
        idle = rng.random() < 0.1
        if idle:
            models = rng.sample(IDLE_MODELS, rng.randint(1, 3))
        else:
            models = list(dict.fromkeys(rng.choices(QUEUED_MODELS, POPULARITY, k=rng.choice([1, 1, 2, 3, 4]))))
        # An idle node also takes only small images, so the any-model requests don't fit it either: its pops
        # scan what its models and the any-model rows hold and find nothing.
        max_pixels = IDLE_MAX_PIXELS if idle else rng.choice([512 * 512, 768 * 768, 1024 * 1024, 1024 * 1024])
        body = {
            "name": f"depth-node-{index:04d}",
            "models": models,
            "amount": 1,
            "wait": 0,
            "threads": 1,
            "max_pixels": max_pixels,
            "nsfw": rng.random() < 0.5,
            "allow_img2img": rng.random() < 0.7,
            "allow_painting": False,
            "bridge_agent": "horde-bench:1:depth",
        }
        nodes.append(BenchNode(str(body["name"]), owners[index % len(owners)], Identity.generate(), body))
    return nodes


def request_body(rng: random.Random, source: str) -> dict[str, Any]:
    width, height = rng.choices(SIZES, SIZE_WEIGHTS)[0]
    roll = rng.random()
    models = [] if roll < 0.05 else rng.choices(QUEUED_MODELS, POPULARITY, k=2 if roll < 0.15 else 1)
    body: dict[str, Any] = {
        "prompt": f"depth bench {rng.randrange(10**6)}",
        "models": list(dict.fromkeys(models)),
        "nsfw": rng.random() < 0.2,
        "params": {"width": width, "height": height, "steps": rng.choice([20, 25, 30]), "n": IMAGES_PER_REQUEST},
    }
    if rng.random() < 0.15:
        body |= {"source_image": source, "source_processing": "img2img"}
    return body


async def submit_requests(
    api: Api, keys: list[str], count: int, rng: random.Random, concurrency: int, ids: list[str] | None = None
) -> int:
    """`count` requests of 20 images from `concurrency` submitters at once; returns the images accepted."""
    source = tiny_png_b64()
    bodies = [(rng.choice(keys), request_body(rng, source)) for _ in range(count)]
    accepted = 0

    async def submitter() -> None:
        nonlocal accepted
        while bodies:
            apikey, body = bodies.pop()
            status, answer = await api.call("POST", "/v2/generate/async", body, label="generate", apikey=apikey)
            if status == 202:
                accepted += 1
                if ids is not None:
                    ids.append(answer["id"])

    await asyncio.gather(*(submitter() for _ in range(concurrency)))
    return accepted * IMAGES_PER_REQUEST


async def checks(api: Api, request_ids: list[str], count: int, rng: random.Random) -> list[float]:
    """Plain /generate/check calls on random waiting requests (each computes the request's queue position)."""
    times = []
    for _ in range(count):
        before = now()
        await api.call("GET", f"/v2/generate/check/{rng.choice(request_ids)}", label="check")
        times.append(now() - before)
    return times


async def pop(api: Api, node: BenchNode, keys: dict[str, str]) -> tuple[float, int]:
    before = now()
    status, answer = await api.call(
        "POST", "/v2/generate/pop", node.body, label="pop", apikey=keys[node.owner], identity=node.identity
    )
    elapsed = now() - before
    return elapsed, len(answer["ids"]) if status == 200 else -1


async def register(api: Api, nodes: list[BenchNode], keys: dict[str, str], concurrency: int = 8) -> None:
    pending = list(nodes)

    async def one() -> None:
        while pending:
            await pop(api, pending.pop(), keys)

    await asyncio.gather(*(one() for _ in range(concurrency)))


def spread(seconds: float, rng: random.Random) -> float:
    return seconds * rng.uniform(0.5, 1.5)


@dataclass
class Online:
    """What the nodes online together share while a depth is measured."""

    pops: int  # pops to measure
    owed: int = 0  # images taken since the last top-up
    done: asyncio.Event = field(default_factory=asyncio.Event)


async def online_node(
    api: Api, depth: Depth, node: BenchNode, keys: dict[str, str], shared: Online, interval: float, rng: random.Random
) -> None:
    """One node: pop, then work on its job (or wait when it got none) for about `interval`, until enough pops."""
    await asyncio.sleep(rng.uniform(0, interval))
    while not shared.done.is_set():
        elapsed, got = await pop(api, node, keys)
        if got > 0:
            depth.pops_job.append(elapsed)
            shared.owed += got
        elif got == 0:
            depth.pops_empty.append(elapsed)
        if len(depth.pops_job) + len(depth.pops_empty) >= shared.pops:
            shared.done.set()
        await asyncio.sleep(spread(interval, rng))


async def top_up(api: Api, shared: Online, requester_keys: list[str], rng: random.Random) -> None:
    """Keep the depth: whenever a request's worth of images was taken, queue as many again."""
    while not shared.done.is_set():
        if shared.owed >= IMAGES_PER_REQUEST:
            requests, shared.owed = divmod(shared.owed, IMAGES_PER_REQUEST)  # the rest waits for the next round
            await submit_requests(api, requester_keys, requests, rng, 4)
        await asyncio.sleep(0.2)


async def measure(
    api: Api,
    depth: Depth,
    nodes: list[BenchNode],
    keys: dict[str, str],
    requester_keys: list[str],
    pops: int,
    interval: float,
    rng: random.Random,
) -> float:
    """Every node online at once until `pops` pops were measured; returns the seconds it took."""
    shared = Online(pops)
    async with contextlib.AsyncExitStack() as stack:
        # Nodes come from NODE_ADDRESSES loopback addresses, as a network's come from many (the coordinator
        # caps connections and long-polls per address).
        apis = [
            await stack.enter_async_context(
                Api(api.base.removesuffix("/api"), api.errors, local_address=f"127.0.1.{index + 1}")
            )
            for index in range(NODE_ADDRESSES)
        ]
        started = now()
        tasks = [
            asyncio.create_task(online_node(apis[index % NODE_ADDRESSES], depth, node, keys, shared, interval, rng))
            for index, node in enumerate(nodes)
        ]
        tasks.append(asyncio.create_task(top_up(api, shared, requester_keys, rng)))
        await shared.done.wait()
        seconds = now() - started
        await gather_cancelling(tasks)
    return seconds


def database_bytes(data_dir: Path) -> int:
    return sum(path.stat().st_size for path in data_dir.glob("horde.db*"))


async def run(args: Any, report: Report, workdir: Path) -> list[dict[str, Any]]:
    rng = random.Random(args.seed)
    data_dir = workdir / "depth"
    requesters = [f"requester{i}" for i in range(8)]
    # An untrusted account runs at most 3 workers (docs/security.md), so a thousand nodes need ~334 owners.
    owners = [f"owner{i}" for i in range(max(10, -(-args.nodes // 3)))]
    rows = []
    async with bench_database(args.db) as db:
        keys = await create_accounts(data_dir, db, requesters + owners, kudos=1000)
        coordinator = Coordinator(data_dir, db, python_memory=True).start()
        try:
            async with Api(coordinator.url, report.errors) as api:
                nodes = make_nodes(args.nodes, owners, rng)
                started = now()
                await register(api, nodes, keys)
                report.results["register_seconds"] = round(now() - started, 2)
                await asyncio.sleep(0.5)
                base = coordinator.sample()
                requester_keys = [keys[name] for name in requesters]
                waiting = 0
                request_ids: list[str] = []
                for target in args.depths:
                    started = now()
                    requests = max(0, target - waiting + IMAGES_PER_REQUEST - 1) // IMAGES_PER_REQUEST
                    coordinator.trace_python_memory()
                    added = await submit_requests(api, requester_keys, requests, rng, args.submitters, request_ids)
                    fill_seconds = now() - started
                    await asyncio.sleep(0.5)
                    traced = await coordinator.traced_python_bytes()
                    waiting += added
                    filled = coordinator.sample()
                    disk = database_bytes(data_dir) if not db else 0
                    depth = Depth(target)
                    before = coordinator.sample()
                    seconds = await measure(api, depth, nodes, keys, requester_keys, args.pops, args.interval, rng)
                    after = coordinator.sample()
                    pops_measured = len(depth.pops_job) + len(depth.pops_empty)
                    check_times = await checks(api, request_ids[-requests:] or request_ids, args.checks, rng)
                    rows.append(
                        {
                            "depth": target,
                            "waiting_images": waiting,
                            "fill_images_per_second": round(requests * IMAGES_PER_REQUEST / max(fill_seconds, 1e-9), 1),
                            "pop_ms": summary(depth.pops_job + depth.pops_empty),
                            "pop_with_job_ms": summary(depth.pops_job),
                            "pop_empty_ms": summary(depth.pops_empty),
                            "check_ms": summary(check_times),
                            "pops_per_second": round(pops_measured / seconds, 1),
                            "coordinator_cpu_ms_per_pop": round(
                                1000 * (after.cpu_seconds - before.cpu_seconds) / max(pops_measured, 1), 2
                            ),
                            "rss_mb": round(filled.rss_kb / 1024, 1),
                            "rss_growth_mb": round((filled.rss_kb - base.rss_kb) / 1024, 1),
                            "rss_growth_bytes_per_image": round((filled.rss_kb - base.rss_kb) * 1024 / max(waiting, 1)),
                            "images_added": added,
                            "bytes_per_waiting_image": round(traced / max(added, 1)),
                            "database_bytes_per_image": round(disk / max(waiting, 1)) if disk else None,
                            "peak_rss_mb": round(after.hwm_kb / 1024, 1),
                        }
                    )
                report.results["baseline_rss_mb"] = round(base.rss_kb / 1024, 1)
        finally:
            coordinator.stop()
    return rows


def check_targets(rows: list[dict[str, Any]], report: Report) -> dict[str, Any]:
    by_depth = {row["depth"]: row for row in rows}
    verdict: dict[str, Any] = {}
    if 100_000 in by_depth:
        p99 = by_depth[100_000]["pop_ms"]["p99"]
        verdict["pop_p99_ms_at_100k"] = {
            "value": p99,
            "target": TARGETS["pop_p99_ms_at_100k"],
            "ok": p99 <= TARGETS["pop_p99_ms_at_100k"],
        }
        if 1000 in by_depth:
            ratio = round(p99 / by_depth[1000]["pop_ms"]["p99"], 2)
            verdict["p99_ratio_100k_to_1k"] = {
                "value": ratio,
                "target": TARGETS["p99_ratio_100k_to_1k"],
                "ok": ratio <= TARGETS["p99_ratio_100k_to_1k"],
            }
        per_image = by_depth[100_000]["bytes_per_waiting_image"]
        verdict["bytes_per_waiting_image"] = {
            "value": per_image,
            "target": TARGETS["bytes_per_waiting_image"],
            "ok": per_image <= TARGETS["bytes_per_waiting_image"],
        }
    for name, item in verdict.items():
        if not item["ok"]:
            report.notes.append(f"target missed: {name} = {item['value']} (target {item['target']})")
    return verdict


async def main_async(args: Any) -> int:
    keys = ("nodes", "depths", "pops", "interval", "submitters", "checks", "seed")
    config = {key: getattr(args, key) for key in keys}
    config |= {"db": "postgresql" if args.db else "sqlite", "short": args.short}
    report = Report("depth", config)
    with temporary_dir(args.keep, "horde-bench-depth-") as workdir:
        rows = await run(args, report, workdir)
    report.results |= {"depths": rows, "targets": check_targets(rows, report)}
    report.tables.append(
        table(
            f"Pop latency by queue depth ({args.nodes} nodes online at once, each popping about every "
            f"{args.interval} s; {args.pops} pops per depth, ms)",
            [
                "waiting",
                "fill img/s",
                "pops/s",
                "all p50",
                "all p99",
                "job n",
                "job p50",
                "job p99",
                "empty n",
                "empty p50",
                "empty p99",
                "CPU ms/pop",
            ],
            [
                [
                    r["waiting_images"],
                    r["fill_images_per_second"],
                    r["pops_per_second"],
                    r["pop_ms"].get("p50"),
                    r["pop_ms"].get("p99"),
                    r["pop_with_job_ms"]["n"],
                    r["pop_with_job_ms"].get("p50"),
                    r["pop_with_job_ms"].get("p99"),
                    r["pop_empty_ms"]["n"],
                    r["pop_empty_ms"].get("p50"),
                    r["pop_empty_ms"].get("p99"),
                    r["coordinator_cpu_ms_per_pop"],
                ]
                for r in rows
            ],
        )
    )
    report.tables.append(
        table(
            "/generate/check on a waiting request (computes its queue position), ms",
            ["waiting", "n", "p50", "p99", "max"],
            [
                [
                    r["waiting_images"],
                    r["check_ms"]["n"],
                    r["check_ms"].get("p50"),
                    r["check_ms"].get("p99"),
                    r["check_ms"].get("max"),
                ]
                for r in rows
            ],
        )
    )
    report.tables.append(
        table(
            f"Coordinator memory (RSS {report.results.get('baseline_rss_mb')} MB once the nodes had registered)",
            [
                "waiting",
                "Python B/image added",
                "RSS MB",
                "RSS growth MB",
                "(RSS growth/image)",
                "DB B/image",
                "peak RSS MB",
            ],
            [
                [
                    r["waiting_images"],
                    r["bytes_per_waiting_image"],
                    r["rss_mb"],
                    r["rss_growth_mb"],
                    r["rss_growth_bytes_per_image"],
                    r["database_bytes_per_image"],
                    r["peak_rss_mb"],
                ]
                for r in rows
            ],
        )
    )
    for row in rows:
        if row["pop_ms"]["n"] == 0 or row["pop_with_job_ms"]["n"] == 0:
            report.problems.append(f"depth {row['depth']}: no pop found a job")
    return report.emit(args.json)


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument(
        "--depths",
        type=lambda text: [int(x) for x in text.split(",")],
        default=[1_000, 10_000, 100_000],
        help="waiting images, ascending, comma-separated",
    )
    parser.add_argument("--pops", type=int, default=1000, help="measured pops per depth")
    parser.add_argument(
        "--interval",
        type=float,
        default=30.0,
        help="seconds a node works on a job, or waits after an empty pop (about)",
    )
    parser.add_argument("--submitters", type=int, default=4, help="concurrent submitters while filling")
    parser.add_argument("--checks", type=int, default=50, help="measured /generate/check calls per depth")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.short:
        args.nodes, args.depths, args.pops, args.interval, args.checks = min(args.nodes, 50), [200, 1000], 40, 1.0, 10
    if args.depths != sorted(args.depths):
        parser.error("--depths must be ascending")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
