"""Brokering throughput: the full job cycle through the real HTTP API.

C requesters each keep one request open: POST /generate/async, then /generate/check until done, then GET
/generate/status. W simulated nodes pop, sign and submit a tiny valid WebP at once. Two cadences: long-polling
(nodes pop with `wait`, requesters check with `?wait=30`), and AI Horde's (nodes pop without waiting and sleep
about 1 s when the queue is empty, requesters check every 1 s without waiting). Every sleep is drawn from 0.5–1.5×
its cadence, as real workers and clients that started at different times are spread out: sleeping exactly 1 s
made all nodes empty the queue, sleep and wake together (117 or 26 jobs/s in two runs of the same code). The
coordinator runs as its own process.

Reports jobs/s, requester-visible latency (submit → status done), pop and submit latency, every non-2xx answer
by status and rc, the coordinator's CPU seconds and peak memory, and on PostgreSQL the CPU of the server processes
serving the benchmark's database and the coordinator's round trips to them (its `horde_db_round_trips` metric).

    python bench/broker.py                      # 32 requesters, 32 nodes, 20 s, long-poll and AI Horde-style
    python bench/broker.py --short              # CI: a few seconds, fails on any error
    python bench/broker.py --db postgresql://postgres@127.0.0.1:5432/postgres
    python bench/broker.py --scenarios longpoll --profile py-spy   # profile the coordinator (pip install py-spy)
"""

import asyncio
import base64
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/broker.py` from anywhere

from bench.common import (
    Api,
    Coordinator,
    Report,
    base_parser,
    bench_database,
    cpu_between,
    create_accounts,
    database_cpu,
    gather_cancelling,
    now,
    round_trips,
    self_cpu_seconds,
    summary,
    table,
    temporary_dir,
    tiny_webp,
)
from protocol.keys import Identity
from protocol.provenance import ResultDocument, sha256_hex, sign_result

MODEL = "bench-model"
TARGET_JOBS_PER_SECOND = 300
SCENARIOS = {
    # name: (node pop wait in seconds, node sleep after an empty pop, requester sleep between checks; 0: long-poll)
    "longpoll": (20.0, 0.0, 0.0),
    "horde-poll": (0.0, 1.0, 1.0),
}


def spread(seconds: float) -> float:
    """A sleep of about `seconds`: independent clients drift apart, and so do these."""
    return seconds * random.uniform(0.5, 1.5)


@dataclass
class Timed:
    at: float  # when it ended (perf_counter)
    seconds: float


@dataclass
class Tally:
    stop: bool = False  # requesters open no new request
    nodes_stop: bool = False  # nodes pop no more (once every requester is done)
    requests: list[Timed] = field(default_factory=list)  # submit → status done, one per finished request
    images: list[float] = field(default_factory=list)  # when each image was seen done
    pops_with_job: list[Timed] = field(default_factory=list)
    pops_empty: list[Timed] = field(default_factory=list)
    submits: list[Timed] = field(default_factory=list)
    generates: list[Timed] = field(default_factory=list)
    checks: list[Timed] = field(default_factory=list)
    statuses: list[Timed] = field(default_factory=list)

    def calls_between(self, start: float, end: float) -> int:
        lists = (self.pops_with_job, self.pops_empty, self.submits, self.generates, self.checks, self.statuses)
        return sum(1 for items in lists for item in items if start <= item.at < end)


def within(items: list[Timed], start: float, end: float) -> list[float]:
    return [item.seconds for item in items if start <= item.at < end]


async def requester(api: Api, apikey: str, tally: Tally, n: int, check_poll: float) -> None:
    body = {
        "prompt": "a lighthouse on a cliff at dusk ### blurry",
        "models": [MODEL],
        "params": {"width": 512, "height": 512, "steps": 20, "n": n, "sampler_name": "k_euler_a"},
    }
    while not tally.stop:
        started = now()
        status, accepted = await api.call("POST", "/v2/generate/async", body, label="generate", apikey=apikey)
        tally.generates.append(Timed(now(), now() - started))
        if status != 202:
            await asyncio.sleep(0.2)
            continue
        request_id = accepted["id"]
        finished = 0
        while True:
            query = f"?wait=30&finished={finished}" if check_poll <= 0 else ""
            before = now()
            status, check = await api.call("GET", f"/v2/generate/check/{request_id}{query}", label="check")
            tally.checks.append(Timed(now(), now() - before))
            if status != 200 or check["done"] or check["faulted"]:
                break
            finished = check["finished"]
            if check_poll > 0:
                await asyncio.sleep(spread(check_poll))
        if status != 200:
            continue
        before = now()
        status, report = await api.call("GET", f"/v2/generate/status/{request_id}", label="status")
        done = now()
        tally.statuses.append(Timed(done, done - before))
        if status == 200:
            if not report["done"] or len(report["generations"]) != n:
                api.errors.add("status incomplete", report)
                continue
            tally.requests.append(Timed(done, done - started))
            tally.images += [done] * n


async def node(api: Api, name: str, apikey: str, tally: Tally, wait: float, idle_sleep: float) -> None:
    identity = Identity.generate()
    image = tiny_webp(size=512)  # the jobs' own size: any other is refused (ImageSizeMismatch)
    generation, image_sha = base64.b64encode(image).decode(), sha256_hex(image)
    pop = {
        "name": name,
        "models": [MODEL],
        "max_pixels": 1024 * 1024,
        "amount": 1,
        "wait": wait,
        "bridge_agent": "horde-bench:1:local",
        "threads": 1,
    }
    while not tally.nodes_stop:
        before = now()
        status, job = await api.call("POST", "/v2/generate/pop", pop, label="pop", apikey=apikey, identity=identity)
        after = now()
        if status != 200:
            await asyncio.sleep(0.2)
            continue
        if not job["ids"]:
            tally.pops_empty.append(Timed(after, after - before))
            if idle_sleep:
                await asyncio.sleep(spread(idle_sleep))
            continue
        tally.pops_with_job.append(Timed(after, after - before))
        for job_id, signed in zip(job["ids"], job["jobs"], strict=True):
            seed = signed["document"]["payload"]["seed"]
            document = ResultDocument(job_id=job_id, image_sha256=image_sha, seed=seed, state="ok")
            result = {
                "id": job_id,
                "generation": generation,
                "state": "ok",
                "seed": seed,
                "signature": sign_result(identity, document),
            }
            before = now()
            await api.call("POST", "/v2/generate/submit", result, label="submit", apikey=apikey, identity=identity)
            tally.submits.append(Timed(now(), now() - before))


def profile_path(args: Any, workdir: Path, scenario: str) -> Path | None:
    if not args.profile:
        return None
    if args.profile_out and len(args.scenarios) > 1:
        return Path(f"{args.profile_out}.{scenario}").resolve()
    return Path(args.profile_out or workdir / f"profile-{scenario}").resolve()


async def run_scenario(args: Any, scenario: str, report: Report, workdir: Path) -> dict[str, Any]:
    wait, idle_sleep, check_poll = SCENARIOS[scenario]
    check_poll = args.check_poll if args.check_poll is not None else check_poll
    data_dir = workdir / scenario
    async with bench_database(args.db) as db:
        requesters = [f"requester{i}" for i in range(args.requesters)]
        owners = [f"owner{i}" for i in range(args.nodes)]
        keys = await create_accounts(data_dir, db, requesters + owners, kudos=1000)
        profile_out = profile_path(args, workdir, scenario)
        coordinator = Coordinator(data_dir, db, profile=args.profile, profile_out=profile_out).start()
        tally = Tally()
        try:
            async with Api(coordinator.url, report.errors) as api:
                nodes = [
                    asyncio.create_task(node(api, f"bench-node-{i}", keys[owner], tally, wait, idle_sleep))
                    for i, owner in enumerate(owners)
                ]
                await asyncio.sleep(0.5)  # every node has registered and is waiting
                clients = [
                    asyncio.create_task(requester(api, keys[name], tally, args.n, check_poll)) for name in requesters
                ]
                await asyncio.sleep(args.warmup)
                db_before, trips_before = await database_cpu(db), await round_trips(coordinator.url)
                start, before, client_cpu = now(), coordinator.sample(), self_cpu_seconds()
                await asyncio.sleep(args.duration)
                end, after, client_cpu = now(), coordinator.sample(), self_cpu_seconds() - client_cpu
                db_cpu, trips_after = cpu_between(db_before, await database_cpu(db)), await round_trips(coordinator.url)
                tally.stop = True
                _done, pending = await asyncio.wait(clients, timeout=35)
                if pending:
                    report.problems.append(f"{scenario}: {len(pending)} requesters did not finish their last request")
                tally.nodes_stop = True
                await gather_cancelling(clients + nodes)
        finally:
            coordinator.stop()
        if args.profile:
            report.notes.append(f"{scenario}: {args.profile} profile of the coordinator in {profile_out}")
    window = end - start
    images = sum(1 for at in tally.images if start <= at < end)
    coordinator_cpu = after.cpu_seconds - before.cpu_seconds
    trips = per_job(trips_before, trips_after, images)
    return {
        "scenario": scenario,
        "pop_wait": wait,
        "idle_sleep": idle_sleep,
        "seconds": round(window, 2),
        "jobs": images,
        "jobs_per_second": round(images / window, 1),
        "http_requests_per_second": round(tally.calls_between(start, end) / window, 1),
        "latency_ms": summary(within(tally.requests, start, end)),
        "pop_with_job_ms": summary(within(tally.pops_with_job, start, end)),
        "pop_empty_ms": summary(within(tally.pops_empty, start, end)),
        "submit_ms": summary(within(tally.submits, start, end)),
        "generate_ms": summary(within(tally.generates, start, end)),
        "status_ms": summary(within(tally.statuses, start, end)),
        "coordinator_cpu_seconds": round(after.cpu_seconds - before.cpu_seconds, 2),
        "coordinator_cpu_percent": round(100 * (after.cpu_seconds - before.cpu_seconds) / window, 1),
        "coordinator_cpu_ms_per_job": round(1000 * (after.cpu_seconds - before.cpu_seconds) / max(images, 1), 2),
        "coordinator_peak_rss_mb": round(after.hwm_kb / 1024, 1),
        "database_cpu_ms_per_job": None if db_cpu is None else round(1000 * db_cpu / max(images, 1), 2),
        # SQLite runs inside the coordinator; on PostgreSQL the server's processes for this database add theirs.
        "total_cpu_ms_per_job": round(1000 * (coordinator_cpu + (db_cpu or 0.0)) / max(images, 1), 2),
        "round_trips_per_job": trips,
        "check_poll": check_poll,
        "check_ms": summary(within(tally.checks, start, end)),
        "loadgen_cpu_percent": round(100 * client_cpu / window, 1),
    }


def per_job(before: dict[str, float] | None, after: dict[str, float] | None, jobs: int) -> dict[str, float] | None:
    """Round trips to the database per finished job, by endpoint and in all (None: SQLite, or code that does not
    count them)."""
    if before is None or after is None:
        return None
    made = {endpoint: count - before.get(endpoint, 0.0) for endpoint, count in after.items()}
    trips = {
        endpoint.removeprefix("/api/v2/"): round(count / max(jobs, 1), 2) for endpoint, count in made.items() if count
    }
    return trips | {"all": round(sum(made.values()) / max(jobs, 1), 2)}


def tables(runs: list[dict[str, Any]]) -> list[str]:
    headline = table(
        "Brokering throughput",
        [
            "scenario",
            "jobs/s",
            "http req/s",
            "lat p50",
            "p95",
            "p99",
            "coord CPU%",
            "CPU ms/job",
            "+ db ms/job",
            "trips/job",
            "peak RSS MB",
            "loadgen CPU%",
        ],
        [
            [
                r["scenario"],
                r["jobs_per_second"],
                r["http_requests_per_second"],
                r["latency_ms"].get("p50"),
                r["latency_ms"].get("p95"),
                r["latency_ms"].get("p99"),
                r["coordinator_cpu_percent"],
                r["coordinator_cpu_ms_per_job"],
                r["database_cpu_ms_per_job"],
                (r["round_trips_per_job"] or {}).get("all"),
                r["coordinator_peak_rss_mb"],
                r["loadgen_cpu_percent"],
            ]
            for r in runs
        ],
    )
    calls = table(
        "Call latency (ms; long-poll pops include the time spent waiting for a job)",
        ["scenario", "call", "n", "p50", "p99", "max"],
        [
            [r["scenario"], name, r[key].get("n"), r[key].get("p50"), r[key].get("p99"), r[key].get("max")]
            for r in runs
            for name, key in (
                ("pop (job)", "pop_with_job_ms"),
                ("pop (empty)", "pop_empty_ms"),
                ("submit", "submit_ms"),
                ("generate", "generate_ms"),
                ("check", "check_ms"),
                ("status", "status_ms"),
            )
        ],
    )
    return [headline, calls]


async def main_async(args: Any) -> int:
    config = {key: getattr(args, key) for key in ("requesters", "nodes", "duration", "warmup", "n", "check_poll")}
    config |= {"scenarios": args.scenarios, "db": "postgresql" if args.db else "sqlite", "short": args.short}
    report = Report("broker", config)
    runs = []
    with temporary_dir(args.keep, "horde-bench-broker-") as workdir:
        for scenario in args.scenarios:
            runs.append(await run_scenario(args, scenario, report, workdir))
    report.results = {"runs": runs, "target_jobs_per_second": TARGET_JOBS_PER_SECOND}
    report.tables = tables(runs)
    for run in runs:
        if run["jobs"] == 0:
            report.problems.append(f"{run['scenario']}: no job finished")
    longpoll = next((run for run in runs if run["scenario"] == "longpoll"), None)
    if longpoll and not args.short and longpoll["jobs_per_second"] < TARGET_JOBS_PER_SECOND:
        report.notes.append(
            f"long-poll throughput {longpoll['jobs_per_second']} jobs/s is under the {TARGET_JOBS_PER_SECOND} target"
        )
    return report.emit(args.json)


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--requesters", type=int, default=32)
    parser.add_argument("--nodes", type=int, default=32)
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per scenario")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--n", type=int, default=1, help="images per request")
    parser.add_argument(
        "--check-poll", type=float, help="requesters poll /check every S seconds (0: long-poll) in every scenario"
    )
    parser.add_argument(
        "--scenarios",
        type=lambda text: text.split(","),
        default=list(SCENARIOS),
        help="comma-separated: " + ", ".join(SCENARIOS),
    )
    parser.add_argument("--profile", choices=("py-spy", "cprofile"), help="profile the coordinator process")
    parser.add_argument("--profile-out", help="where the profile goes (default: in the data dir; use with --keep)")
    args = parser.parse_args()
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.short:
        args.requesters, args.nodes = min(args.requesters, 4), min(args.nodes, 4)
        args.duration, args.warmup = min(args.duration, 2.0), min(args.warmup, 0.5)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
