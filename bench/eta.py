"""Do the coordinator's wait times come true? (issue 15)

A real coordinator (its own process) and simulated nodes over real HTTP, with speeds from 1× to 8×,
serving different models, one joining and one leaving mid-run. A trace of requests of mixed sizes,
step counts, batch sizes, models and kudos (anonymous ones included) arrives faster than the nodes
work, so a queue builds. Each request is followed with long-polled checks (`wait=1`), recording every
`wait_time` and `queue_position` the coordinator gave, until it is done.

Printed: the relative ETA error |estimate − actual| / max(actual, 5 s), p50 and p90, at submit and at
half of the actual wait; the same trace scored with the estimator before issue 15 (position + 1 jobs
at 1 megapixelstep/s, spread over the able nodes' threads, 0 once no image waits); `queue_position`
increases while a request waits; anonymous requests' worst wait against the fairness bound; checks
that said `is_possible: true` for a request no online node can serve.

    python bench/eta.py            # 8 nodes, 300 requests over 3 minutes
    python bench/eta.py --short    # CI: 5 nodes, 30 s of arrivals
"""

import asyncio
import base64
import io
import itertools
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/eta.py` from anywhere

from bench.common import (
    Api,
    Coordinator,
    Report,
    base_parser,
    bench_database,
    create_accounts,
    gather_cancelling,
    now,
    percentile,
    table,
    temporary_dir,
)
from coordinator.queueing import AGEING_PER_SECOND, PRIORITY_KUDOS_CAP
from protocol.keys import Identity
from protocol.provenance import ResultDocument, sha256_hex, sign_result

MODELS = ["eta-a", "eta-b"]
UNSERVED = "eta-nobody"
BASE_SPEED = 0.6  # megapixelsteps per second of a 1× node
OVERHEAD = 0.1  # seconds per job besides its steps (decode, upload)
UNSERVED_WATCH = 10.0  # seconds a request no node can serve is watched, then cancelled
MIN_WAIT = 5.0  # relative errors are taken against at least this many seconds
FAIRNESS_SECONDS = PRIORITY_KUDOS_CAP / AGEING_PER_SECOND
TARGETS = {"submit_p50": 0.15, "submit_p90": 0.40, "half_p50": 0.10, "half_p90": 0.25}
SIZES = [(256, 256), (512, 512), (512, 768)]
STEPS = [10, 20, 30]
BATCHES = [1, 1, 2, 4]
# Who asks: kudos (None: anonymous) and how often.
REQUESTERS = {"anonymous": (None, 0.2), "poor": (10.0, 0.3), "mid": (800.0, 0.3), "rich": (50_000.0, 0.2)}


@dataclass
class NodeSpec:
    name: str
    factor: float
    models: list[str]
    join: float = 0.0  # fraction of the arrival window before it starts
    leave: float | None = None  # fraction of the arrival window after which it stops

    @property
    def speed(self) -> float:
        return BASE_SPEED * self.factor


FULL_NODES = [
    NodeSpec("x1", 1, MODELS[:1]),
    NodeSpec("x2", 2, MODELS),
    NodeSpec("x3", 3, MODELS[:1], leave=0.5),
    NodeSpec("x4", 4, MODELS[1:]),
    NodeSpec("x2b", 2, MODELS[1:]),
    NodeSpec("x1b", 1, MODELS),
    NodeSpec("x8", 8, MODELS, join=0.3),
    NodeSpec("x6", 6, MODELS[:1]),
]
SHORT_NODES = [
    NodeSpec("x1", 1, MODELS[:1]),
    NodeSpec("x2", 2, MODELS),
    NodeSpec("x4", 4, MODELS[1:]),
    NodeSpec("x3", 3, MODELS[:1], leave=0.5),
    NodeSpec("x8", 8, MODELS, join=0.3),
]


@dataclass
class Sample:
    at: float
    wait_time: int
    position: int
    waiting: int
    possible: bool
    old_estimate: float  # today's estimator before issue 15, on the same answer


@dataclass
class Tracked:
    who: str
    kudos: float | None
    model: str  # "" for any
    width: int
    height: int
    steps: int
    n: int
    submitted: float = 0.0
    done_at: float | None = None
    samples: list[Sample] = field(default_factory=list)

    @property
    def work(self) -> float:
        return self.width * self.height * self.steps * self.n / 1e6


@dataclass
class World:
    started: float
    window: float
    nodes: list[NodeSpec]
    running: set[str] = field(default_factory=set)
    requests: list[Tracked] = field(default_factory=list)
    stop: bool = False

    def able(self, model: str) -> list[NodeSpec]:
        return [n for n in self.nodes if n.name in self.running and (not model or model in n.models)]


def image(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (60, 90, 120)).save(buffer, format="WEBP")
    return buffer.getvalue()


IMAGES = {size: image(*size) for size in SIZES}


async def run_node(api: Api, apikey: str, spec: NodeSpec, world: World) -> None:
    identity = Identity.generate()
    await asyncio.sleep(spec.join * world.window)
    world.running.add(spec.name)
    body = {
        "name": spec.name,
        "models": spec.models,
        "max_pixels": 1024 * 1024,
        "amount": 1,
        "wait": 2.0,
        "bridge_agent": "horde-bench:1:eta",
    }
    while not world.stop and (spec.leave is None or now() - world.started < spec.leave * world.window):
        status, job = await api.call("POST", "/v2/generate/pop", body, label="pop", apikey=apikey, identity=identity)
        if status != 200 or not job["ids"]:
            if status != 200:
                await asyncio.sleep(0.5)
            continue
        payload = job["payload"]
        work = payload["width"] * payload["height"] * payload["ddim_steps"] / 1e6
        await asyncio.sleep(OVERHEAD + work / spec.speed)
        data = IMAGES[(payload["width"], payload["height"])]
        seed = payload["seed"]
        document = ResultDocument(job_id=job["ids"][0], image_sha256=sha256_hex(data), seed=seed, state="ok")
        result = {
            "id": job["ids"][0],
            "generation": base64.b64encode(data).decode(),
            "state": "ok",
            "seed": seed,
            "signature": sign_result(identity, document),
        }
        await api.call("POST", "/v2/generate/submit", result, label="submit", apikey=apikey, identity=identity)
    world.running.discard(spec.name)


def old_estimate(world: World, tracked: Tracked, check: dict[str, Any]) -> float:
    """`wait_seconds` before issue 15: (position + 1) jobs of the request's waiting work at 1 MPS/s over the
    able nodes' threads; 0 when nothing waits or no node can serve."""
    able = world.able(tracked.model)
    if not check["waiting"] or not able:
        return 0.0
    per_job = tracked.width * tracked.height * tracked.steps / 1e6 * check["waiting"]
    return float(int((check["queue_position"] + 1) * per_job / len(able)))


async def follow(api: Api, world: World, tracked: Tracked, request_id: str, limit: float = float("inf")) -> None:
    """Long-poll checks until the request is done (or `limit` seconds passed), recording each answer."""
    finished = 0
    while not world.stop and now() - tracked.submitted < limit:
        status, check = await api.call(
            "GET", f"/v2/generate/check/{request_id}?wait=1&finished={finished}", label="check"
        )
        if status != 200:
            await asyncio.sleep(0.5)
            continue
        at = now()
        finished = check["finished"]
        if check["done"] or check["faulted"]:
            tracked.done_at = at if check["done"] else None
            return
        tracked.samples.append(
            Sample(
                at - world.started,
                check["wait_time"],
                check["queue_position"],
                check["waiting"],
                check["is_possible"],
                old_estimate(world, tracked, check),
            )
        )


async def submit(api: Api, keys: dict[str, str], world: World, tracked: Tracked) -> None:
    body = {
        "prompt": "eta bench",
        "models": [tracked.model] if tracked.model else [],
        "params": {"width": tracked.width, "height": tracked.height, "steps": tracked.steps, "n": tracked.n},
    }
    tracked.submitted = now()
    status, accepted = await api.call(
        "POST", "/v2/generate/async", body, label="generate", apikey=keys.get(tracked.who)
    )
    if status != 202:
        return
    world.requests.append(tracked)
    await follow(api, world, tracked, accepted["id"], UNSERVED_WATCH if tracked.model == UNSERVED else float("inf"))
    if tracked.model == UNSERVED:
        await api.call("DELETE", f"/v2/generate/status/{accepted['id']}", label="cancel", apikey=keys.get(tracked.who))


def trace(rng: random.Random, count: int, window: float) -> list[tuple[float, Tracked]]:
    """Arrival offsets and requests: mixed sizes, steps, batches, models (some for any), requesters."""
    names = list(REQUESTERS)
    weights = [REQUESTERS[name][1] for name in names]
    arrivals = []
    for index in range(count):
        who = rng.choices(names, weights)[0]
        model = rng.choices([*MODELS, ""], [0.55, 0.35, 0.10])[0]
        width, height = rng.choice(SIZES)
        request = Tracked(who, REQUESTERS[who][0], model, width, height, rng.choice(STEPS), rng.choice(BATCHES))
        arrivals.append((window * index / count + rng.uniform(0, window / count), request))
    for at in (0.2, 0.6):  # requests no online node can ever serve
        arrivals.append((window * at, Tracked("poor", 10.0, UNSERVED, 256, 256, 10, 1)))
    return sorted(arrivals, key=lambda pair: pair[0])


def relative(estimate: float, actual: float) -> float:
    """Signed: positive when the estimate was too long (the tables show the absolute value)."""
    return (estimate - actual) / max(actual, MIN_WAIT)


def sample_at(tracked: Tracked, offset: float) -> Sample | None:
    """The first answer given at or after `offset` seconds into the run."""
    return next((s for s in tracked.samples if s.at >= offset), None)


def score(world: World) -> dict[str, Any]:
    served = [t for t in world.requests if t.model != UNSERVED and t.done_at is not None and t.samples]
    errors: dict[str, list[float]] = {"submit": [], "half": [], "old_submit": [], "old_half": []}
    violations = 0
    for tracked in served:
        assert tracked.done_at is not None  # `served` holds only finished requests
        start = tracked.submitted - world.started
        actual = tracked.done_at - tracked.submitted
        first = tracked.samples[0]
        errors["submit"].append(relative(first.wait_time, actual - (first.at - start)))
        errors["old_submit"].append(relative(first.old_estimate, actual - (first.at - start)))
        half = sample_at(tracked, start + actual / 2)
        if half is not None:
            remaining = tracked.done_at - world.started - half.at
            errors["half"].append(relative(half.wait_time, remaining))
            errors["old_half"].append(relative(half.old_estimate, remaining))
        waiting = [s for s in tracked.samples if s.waiting]
        violations += sum(1 for a, b in itertools.pairwise(waiting) if b.position > a.position)
    figures = {
        key: {
            "p50": round(percentile([abs(x) for x in v], 50), 3),
            "p90": round(percentile([abs(x) for x in v], 90), 3),
            "bias": round(percentile(v, 50), 3),
            "n": len(v),
        }
        for key, v in errors.items()
    }
    unserved = [t for t in world.requests if t.model == UNSERVED]
    lying = sum(1 for t in unserved for s in t.samples if s.possible and s.at - (t.submitted - world.started) > 3)
    return {
        "errors": figures,
        "position_increases": violations,
        "served": len(served),
        "unfinished": sum(1 for t in world.requests if t.model != UNSERVED and t.done_at is None),
        "unservable_said_possible": lying,
        "fairness": fairness(world, served),
    }


def fairness(world: World, served: list[Tracked]) -> dict[str, Any]:
    """Anonymous requests' waits against the stated bound: all work queued before it and not done, plus all
    work queued in the FAIRNESS_SECONDS after it (nothing later may pass it), plus its own, at the speed of
    the nodes serving its model that were there all run (each job with its overhead)."""
    worst: dict[str, Any] = {"n": 0, "worst_wait_s": None, "worst_wait_over_bound": None}
    for tracked in (t for t in served if t.who == "anonymous"):
        assert tracked.done_at is not None
        competing = [
            t
            for t in world.requests
            if t.model != UNSERVED
            and t.submitted <= tracked.submitted + FAIRNESS_SECONDS
            and (t.done_at or float("inf")) > tracked.submitted
        ]
        steady = [
            n
            for n in world.nodes
            if n.join == 0 and n.leave is None and (not tracked.model or tracked.model in n.models)
        ]
        work, jobs = sum(t.work for t in competing), sum(t.n for t in competing)
        bound = work / sum(n.speed for n in steady) + jobs * OVERHEAD / len(steady)
        wait = tracked.done_at - tracked.submitted
        worst["n"] += 1
        if worst["worst_wait_over_bound"] is None or wait / bound > worst["worst_wait_over_bound"]:
            worst.update(
                worst_wait_s=round(wait, 1), bound_s=round(bound, 1), worst_wait_over_bound=round(wait / bound, 3)
            )
    return worst


async def show_progress(world: World) -> None:
    while True:
        await asyncio.sleep(15)
        done = sum(1 for t in world.requests if t.done_at is not None)
        print(
            f"  {now() - world.started:.0f} s: {done}/{len(world.requests)} requests done, "
            f"nodes {sorted(world.running)}",
            file=sys.stderr,
        )


async def run(args: Any, report: Report, workdir: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    nodes = SHORT_NODES if args.short else FULL_NODES
    window = args.window
    async with bench_database(args.db) as db:
        keys: dict[str, str] = {}
        for who, (kudos, _share) in REQUESTERS.items():
            if kudos is not None:
                keys |= await create_accounts(workdir, db, [who], kudos=kudos)
        # One owner per node: an account may run 3 workers.
        keys |= await create_accounts(workdir, db, [f"owner-{spec.name}" for spec in nodes], kudos=0)
        coordinator = Coordinator(workdir, db).start()
        try:
            async with Api(coordinator.url, report.errors) as api:
                world = World(now(), window, nodes)
                workers = [
                    asyncio.create_task(run_node(api, keys[f"owner-{spec.name}"], spec, world)) for spec in nodes
                ]
                # A warm-up the scores leave out: each node's first results measure it.
                await asyncio.gather(
                    *(
                        submit(api, keys, world, Tracked("mid", 800.0, MODELS[i % 2], 256, 256, 10, 2))
                        for i in range(len(nodes))
                    )
                )
                world.requests.clear()
                world.started = now()
                followers = []
                for offset, tracked in trace(rng, args.requests, window):
                    await asyncio.sleep(max(0.0, world.started + offset - now()))
                    followers.append(asyncio.create_task(submit(api, keys, world, tracked)))
                progress = asyncio.create_task(show_progress(world))
                await asyncio.wait_for(asyncio.gather(*followers), args.drain)
                await gather_cancelling([progress])
                world.stop = True
                await gather_cancelling(workers)
        except TimeoutError:
            report.problems.append(f"requests still unfinished {args.drain} s after the last arrival")
            world.stop = True
        finally:
            coordinator.stop()
    return score(world)


async def main_async(args: Any) -> int:
    config = {
        "requests": args.requests,
        "window_s": args.window,
        "seed": args.seed,
        "short": args.short,
        "db": "postgresql" if args.db else "sqlite",
        "base_speed_mps": BASE_SPEED,
    }
    report = Report("eta", config)
    with temporary_dir(args.keep, "horde-bench-eta-") as workdir:
        results = await run(args, report, workdir)
    report.results = results | {"targets": TARGETS}
    e = results["errors"]
    report.tables.append(
        table(
            "Relative ETA error |estimate − actual| / max(actual, 5 s)",
            [
                "estimator",
                "at submit p50",
                "p90",
                "median signed",
                "at half-way p50",
                "p90",
                "median signed",
                "requests",
            ],
            [
                [
                    "measured (issue 15)",
                    e["submit"]["p50"],
                    e["submit"]["p90"],
                    e["submit"]["bias"],
                    e["half"]["p50"],
                    e["half"]["p90"],
                    e["half"]["bias"],
                    e["submit"]["n"],
                ],
                [
                    "before issue 15",
                    e["old_submit"]["p50"],
                    e["old_submit"]["p90"],
                    e["old_submit"]["bias"],
                    e["old_half"]["p50"],
                    e["old_half"]["p90"],
                    e["old_half"]["bias"],
                    e["old_submit"]["n"],
                ],
            ],
        )
    )
    fair = results["fairness"]
    report.tables.append(
        table(
            "Queue honesty",
            [
                "position increases",
                "unservable said possible",
                "anonymous n",
                "worst anon wait s",
                "its bound s",
                "wait / bound",
                "unfinished",
            ],
            [
                [
                    results["position_increases"],
                    results["unservable_said_possible"],
                    fair["n"],
                    fair.get("worst_wait_s"),
                    fair.get("bound_s"),
                    fair.get("worst_wait_over_bound"),
                    results["unfinished"],
                ]
            ],
        )
    )
    for key, target in TARGETS.items():
        where, stat = key.split("_")
        value = e[where][stat]
        if value == value and value > target:
            report.notes.append(f"target missed: {where} {stat} = {value:.2f} (target {target:.2f})")
    if results["unservable_said_possible"]:
        report.problems.append("a request no online node can serve was said possible")
    if fair.get("worst_wait_over_bound") and fair["worst_wait_over_bound"] > 1:
        report.problems.append("an anonymous request waited past the fairness bound")
    if results["served"] == 0:
        report.problems.append("no request completed")
    return report.emit(args.json)


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="requests in the trace")
    parser.add_argument("--window", type=float, default=180.0, help="seconds over which they arrive")
    parser.add_argument("--drain", type=float, default=900.0, help="seconds allowed to finish after the last")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.short:
        args.requests, args.window, args.drain = min(args.requests, 30), min(args.window, 25.0), min(args.drain, 240.0)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
