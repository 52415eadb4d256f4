"""Many nodes online at once: N nodes long-polling together while requests arrive at a steady rate.

Every node is a raw HTTP client with its own signing key: it long-polls `/generate/pop` (`wait`: what
`horde-node` asks for, 50 s, or `--pop-wait`), and submits a signed result at once for every job it gets,
then polls again; so all N are parked in the coordinator whenever they have nothing to do. Each node
serves one of MODELS; each request (n=1, 64×64) asks for one of them at random, so a job can be served by
about N/len(MODELS) of the parked nodes.
Requesters check each request (no wait) until it is done.

Reported: generate, check and submit p50/p99; "pop" is the time from a request's 202 to a node's pop
answering with its job (the dispatch a requester waits for); the coordinator's RSS per parked node (RSS
with every node parked less RSS with them registered and none parked, over N).

On PostgreSQL with 2 processes, nodes and requesters are split over both. Then a second phase measures
what a request costs the OTHER process: requests on process 0 for a model only a few nodes of process 0
serves, while process 1's nodes stay parked; process 1's CPU in that phase less its CPU over an idle
phase as long, per request.

Nodes connect from NODE_ADDRESSES loopback addresses (127.0.2.x), as a network's come from many, and
start their long-polls spread over `--settle` seconds; the measure starts `--settle` seconds after the
coordinators' own gauge (`horde_long_polls_parked`) says every node is parked (memory stops growing then,
and a full collection that growth calls for runs before the measure: coordinator/gcpolicy.py).

    python bench/scale.py --pg postgresql://postgres@127.0.0.1:5432/test   # every figure of issue 19
    python bench/scale.py --nodes 1,10000                   # SQLite only: 1 and 10,000 nodes
    python bench/scale.py --db postgresql://postgres@127.0.0.1:5432/test --processes 2 --nodes 1000
    python bench/scale.py --short                           # CI: 50 nodes, a few seconds, sanity only

Full mode (the first line) runs SQLite at 1, 1,000 and 10,000 nodes, then PostgreSQL (`--pg`, or
HORDE_BENCH_POSTGRES_DSN) with 1 and 2 processes of `--pg-nodes` (1,000) nodes each, prints the command
line that reproduces each row, and exits non-zero when a target (TARGETS) is missed or was not measured
(no PostgreSQL server given); `--db` runs that engine only; short mode only checks that jobs flow.
"""

import asyncio
import base64
import os
import random
import resource
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/scale.py` from anywhere

from bench.common import (
    Api,
    Coordinator,
    Report,
    base_parser,
    bench_database,
    create_accounts,
    is_postgres,
    now,
    summary,
    table,
    temporary_dir,
    tiny_webp,
)
from coordinator.gcpolicy import defer_full_collections, full_collection, run_collections
from node.config import NodeConfig
from protocol.keys import Identity
from protocol.provenance import ResultDocument, request_digest, sha256_hex, sign_result

MODELS = [f"scale-{i}" for i in range(10)]
SOLO_MODEL = "scale-solo"  # served by one node of process 0 only (the other-process phase)
WORKERS_PER_OWNER = 3  # an untrusted account's limit (coordinator/roster.py)
POP_WAIT = NodeConfig.model_fields["pop_wait"].default  # what `horde-node` asks for (`--pop-wait`)
CHECK_FOR = 30.0  # seconds a requester checks its request before giving up on it
SOLO_NODES = 4
NODE_ADDRESSES = 64  # loopback addresses the nodes connect from (127.0.2.1 …): ~160 nodes each at 10,000
PARK_TIMEOUT = 120.0  # seconds past `--settle` for every node to be parked before the run is called failed
IMAGE = tiny_webp()
IMAGE_SHA = sha256_hex(IMAGE)
IMAGE_B64 = base64.b64encode(IMAGE).decode()
TARGETS = {
    "sqlite_generate_p99_ms": 20.0,  # at the most nodes measured
    "sqlite_generate_p99_ratio": 2.0,  # most nodes / 1 node
    "rss_bytes_per_parked_node": 10 * 1024,
    "pg2_submit_p99_ms": 50.0,
    "pg2_other_cpu_ms_per_request": 1.0,
}


@dataclass
class Node:
    name: str
    owner: str
    model: str
    process: int
    address: int = 0  # which of NODE_ADDRESSES it connects from
    identity: Identity = field(default_factory=Identity.generate)

    def body(self, wait: float) -> dict[str, Any]:
        return {
            "name": self.name,
            "models": [self.model],
            "max_pixels": 512 * 512,
            "amount": 1,
            "wait": wait,
            "bridge_agent": "scale-bench:1:local",
        }


@dataclass
class Run:
    """What one scenario's clients saw."""

    apis: list[Api]  # per process: the requesters'
    node_apis: list[list[Api]]  # per process, per address: the nodes'
    keys: dict[str, str]
    pop_wait: float = POP_WAIT
    generate: list[float] = field(default_factory=list)
    check: list[float] = field(default_factory=list)
    submit: list[float] = field(default_factory=list)
    dispatch: list[float] = field(default_factory=list)
    accepted: dict[str, float] = field(default_factory=dict)  # request id → when its 202 arrived
    jobs: int = 0
    stopping: bool = False


def raise_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def pop(run: Run, node: Node, wait: float) -> dict[str, Any] | None:
    api = run.node_apis[node.process][node.address]
    status, answer = await api.call(
        "POST", "/v2/generate/pop", node.body(wait), label="pop", apikey=run.keys[node.owner], identity=node.identity
    )
    return answer if status == 200 else None


async def node_loop(run: Run, node: Node, first_wait: float | None = None, start_after: float = 0.0) -> None:
    """Long-poll; submit each job at once; poll again. `first_wait` spreads the nodes' re-polls over
    `run.pop_wait` (all started together, they would otherwise all poll again in the same moment), and
    `start_after` their first pops (10,000 signed pops at one moment are a backlog of many seconds)."""
    await asyncio.sleep(start_after)
    wait = run.pop_wait if first_wait is None else first_wait
    while not run.stopping:
        answer = await pop(run, node, wait)
        wait = run.pop_wait
        if answer is None:
            await asyncio.sleep(1.0)  # an error: counted by Api; do not spin
            continue
        for index, job_id in enumerate(answer.get("ids") or []):
            request_id = answer["jobs"][index]["document"]["request_sha256"]
            seed = answer["jobs"][index]["document"]["payload"]["seed"]
            await submit(run, node, job_id, seed, request_id)


async def submit(run: Run, node: Node, job_id: str, seed: str, request_digest: str) -> None:
    accepted = run.accepted.get(request_digest)
    if accepted is not None:
        run.dispatch.append(now() - accepted)
    document = ResultDocument(job_id=job_id, image_sha256=IMAGE_SHA, seed=seed, state="ok")
    body = {
        "id": job_id,
        "generation": IMAGE_B64,
        "state": "ok",
        "seed": seed,
        "signature": sign_result(node.identity, document),
    }
    before = now()
    status, _ = await run.node_apis[node.process][node.address].call(
        "POST", "/v2/generate/submit", body, label="submit", apikey=run.keys[node.owner], identity=node.identity
    )
    if status == 200:
        run.submit.append(now() - before)
        run.jobs += 1


async def request_one(run: Run, process: int, apikey: str, model: str) -> None:
    api = run.apis[process]
    body = {"prompt": "a lighthouse", "models": [model], "params": {"width": 64, "height": 64, "steps": 4, "n": 1}}
    before = now()
    status, answer = await api.call("POST", "/v2/generate/async", body, label="generate", apikey=apikey)
    if status != 202:
        return
    run.generate.append(now() - before)
    run.accepted[request_digest(answer["id"])] = now()
    deadline = now() + CHECK_FOR
    while now() < deadline:
        await asyncio.sleep(0.2)
        before = now()
        status, check = await api.call("GET", f"/v2/generate/check/{answer['id']}", label="check", apikey=apikey)
        run.check.append(now() - before)
        if status != 200 or check.get("done"):
            return


async def requests_at(
    run: Run, rate: float, seconds: float, requesters: list[str], processes: list[int], models: list[str]
) -> int:
    """Requests at a steady rate, each on one of `processes`, for one of `models`; waits for them all."""
    rng = random.Random(7)
    tasks, started = [], now()
    for index in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, started + index / rate - now()))
        process = processes[index % len(processes)]
        tasks.append(
            asyncio.create_task(request_one(run, process, requesters[index % len(requesters)], rng.choice(models)))
        )
    await asyncio.gather(*tasks)
    return len(tasks)


def make_nodes(count: int, processes: int) -> list[Node]:
    return [
        Node(
            f"scale-node-{i}",
            f"owner-{i // WORKERS_PER_OWNER}",
            MODELS[i % len(MODELS)],
            i % processes,
            (i // processes) % NODE_ADDRESSES,
        )
        for i in range(count)
    ]


async def parked_pops(api: Api) -> int | None:
    """Pops parked in one coordinator now, from its own gauge (coordinator/events.py `EventHub.parked`);
    None from a coordinator without it (older code, run with HORDE_BENCH_SOURCE)."""
    assert api.session is not None
    async with api.session.get(api.base.removesuffix("/api") + "/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith('horde_long_polls_parked{kind="pop"}'):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0 if "horde_long_polls_parked" in text else None


async def until_parked(apis: list[Api], nodes: list[Node], settle: float, seconds: float) -> int | None:
    """Wait until every node is parked (each process holds its nodes' pops), or `seconds` pass; how many are.
    Without the gauge: `settle` seconds, and None."""
    expected = [sum(1 for node in nodes if node.process == index) for index in range(len(apis))]
    started = now()
    while True:
        read = [await parked_pops(api) for api in apis]
        counts = [count for count in read if count is not None]
        if len(counts) < len(read):
            await asyncio.sleep(max(0.0, started + settle - now()))
            return None
        # Nearly all: a node whose long-poll just ended is between two pops for a moment.
        if all(c >= want - want // 100 for c, want in zip(counts, expected, strict=True)) or now() > started + seconds:
            return sum(counts)
        await asyncio.sleep(2.0)  # a scrape reads the network's state from the database: not too often


async def start_cluster(
    workdir: Path, db: str | None, processes: int, nodes: int, profile: str | None = None
) -> tuple[list[Coordinator], dict[str, str]]:
    owners = [f"owner-{i}" for i in range((nodes + WORKERS_PER_OWNER) // WORKERS_PER_OWNER + 1)]
    requesters = [f"requester-{i}" for i in range(8)]
    first = workdir / "coordinator-0"
    solo_owners = [f"solo-owner-{i}" for i in range(SOLO_NODES)]
    keys = await create_accounts(first, db, [*owners, *requesters, *solo_owners], kudos=1_000_000)
    coordinators = []
    limits = ["--connections-per-ip", "1000000", "--long-polls-per-ip", "1000000", "--header-timeout", "60"]
    for index in range(processes):
        data_dir = workdir / f"coordinator-{index}"
        if index:
            data_dir.mkdir(parents=True)
            for name in ("coordinator.key", "secret.key"):
                shutil.copy2(first / name, data_dir / name)
        profile_out = workdir.parent / f"scale-{nodes}-{index}.prof" if profile else None
        coordinators.append(
            Coordinator(data_dir, db, extra_args=limits, profile=profile, profile_out=profile_out).start()
        )
    return coordinators, keys


async def scenario(
    args: Any, report: Report, workdir: Path, db: str | None, processes: int, count: int
) -> dict[str, Any]:
    coordinators, keys = await start_cluster(workdir, db, processes, count, args.profile)
    apis = [Api(c.url, report.errors, timeout=args.pop_wait + 30) for c in coordinators]
    addresses = min(NODE_ADDRESSES, count)
    node_apis = [
        [
            Api(c.url, report.errors, timeout=args.pop_wait + 30, local_address=f"127.0.2.{i + 1}")
            for i in range(addresses)
        ]
        for c in coordinators
    ]
    every_api = [*apis, *(api for per_process in node_apis for api in per_process)]
    for api in every_api:
        await api.__aenter__()
    run = Run(apis, node_apis, keys, args.pop_wait)
    requesters = [keys[f"requester-{i}"] for i in range(8)]
    nodes = make_nodes(count, processes)
    loops: list[asyncio.Task[None]] = []
    try:
        await register(run, nodes)
        registered = [c.sample().rss_kb for c in coordinators]
        spread = random.Random(3)
        loops = [
            asyncio.create_task(
                node_loop(run, node, spread.uniform(1.0, args.pop_wait), start_after=index * args.settle / count)
            )
            for index, node in enumerate(nodes)
        ]
        parked_count = await until_parked(apis, nodes, args.settle, args.settle + PARK_TIMEOUT)
        if parked_count is not None and parked_count < count - count // 100:
            report.problems.append(f"{count} nodes: only {parked_count} were parked {args.settle + PARK_TIMEOUT} s on")
        parked = [c.sample().rss_kb for c in coordinators]
        # Steady state before the measure: memory stops growing once every node is parked, and the full
        # collection that growth may call for (coordinator/gcpolicy.py: when memory has doubled, looked at
        # every 5 s) runs now, not in the measure: it comes once per doubling, never again at a steady size.
        await asyncio.sleep(args.settle)
        sent = await requests_at(run, args.rate, args.seconds, requesters, list(range(processes)), MODELS)
        row: dict[str, Any] = {
            "engine": "postgresql" if is_postgres(db) else "sqlite",
            "processes": processes,
            "nodes": count,
            "parked": parked_count,
            "requests": sent,
            "jobs": run.jobs,
            "rss_bytes_per_parked_node": round(sum(parked) * 1024 / count - sum(registered) * 1024 / count)
            if count >= 100
            else None,
            **{
                name: summary(values)
                for name, values in (
                    ("generate", run.generate),
                    ("check", run.check),
                    ("pop", run.dispatch),
                    ("submit", run.submit),
                )
            },
        }
        if processes > 1:
            row["other_cpu_ms_per_request"] = await other_process_cpu(args, run, coordinators, requesters)
        return row
    finally:
        run.stopping = True
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        for api in every_api:
            await api.__aexit__()
        for coordinator in coordinators:
            coordinator.stop(grace=None if args.profile else 1.0)


async def other_process_cpu(args: Any, run: Run, coordinators: list[Coordinator], requesters: list[str]) -> float:
    """Process 1's CPU per request queued on process 0 for a model none of process 1's nodes serve."""
    solos = [Node(f"scale-solo-node-{i}", f"solo-owner-{i}", SOLO_MODEL, 0) for i in range(SOLO_NODES)]
    for solo in solos:
        await pop(run, solo, 0)  # registered before the idle phase
    solo_loops = [asyncio.create_task(node_loop(run, solo)) for solo in solos]
    # Each phase lasts a whole re-poll period: every parked node of process 1 re-polls once in each, whatever
    # the main phase left behind (the nodes that took jobs there re-poll together a period later), so the
    # phases differ by the requests alone. Phases of 10 s measured that pattern instead: 0.35 to 2.1 ms.
    seconds = max(args.seconds / 2, args.pop_wait)
    other = coordinators[1]
    try:
        idle_before = other.sample().cpu_seconds
        await asyncio.sleep(seconds)
        idle = other.sample().cpu_seconds - idle_before
        busy_before = other.sample().cpu_seconds
        started = now()
        sent = await requests_at(run, args.rate, seconds, requesters[:1], [0], [SOLO_MODEL])
        busy = other.sample().cpu_seconds - busy_before
        idle *= (now() - started) / seconds  # the busy phase ran a little longer (its last checks)
        return round(max(0.0, busy - idle) * 1000 / max(sent, 1), 3)
    finally:
        for task in solo_loops:
            task.cancel()
        await asyncio.gather(*solo_loops, return_exceptions=True)


async def register(run: Run, nodes: list[Node], concurrency: int = 16) -> None:
    """One pop each on an empty queue: the nodes exist (and are online) before the measure starts."""
    pending = list(nodes)

    async def one() -> None:
        while pending:
            await pop(run, pending.pop(), 0)

    await asyncio.gather(*(one() for _ in range(concurrency)))


def check_targets(rows: list[dict[str, Any]], report: Report, short: bool) -> None:
    for row in rows:
        if row["nodes"] >= 50 and row["jobs"] < row["requests"] * 0.9:  # one node cannot keep up by design
            report.problems.append(
                f"{row['engine']} ×{row['processes']} {row['nodes']} nodes: only {row['jobs']} "
                f"of {row['requests']} requests were served"
            )
    if short:
        return
    sqlite = sorted((r for r in rows if r["engine"] == "sqlite"), key=lambda r: r["nodes"])
    if len(sqlite) >= 2:
        one, most = sqlite[0], sqlite[-1]
        p99 = most["generate"].get("p99", float("inf"))  # none answered: missed
        limit = min(
            TARGETS["sqlite_generate_p99_ms"], TARGETS["sqlite_generate_p99_ratio"] * one["generate"].get("p99", 0)
        )
        if p99 > limit:
            report.problems.append(f"SQLite generate p99 at {most['nodes']} nodes is {p99} ms (target ≤ {limit:.1f})")
        per_node = most["rss_bytes_per_parked_node"]
        if per_node is not None and per_node > TARGETS["rss_bytes_per_parked_node"]:
            report.problems.append(f"RSS per parked node is {per_node} B (target ≤ 10 KiB)")
    for row in rows:
        if row["engine"] == "postgresql" and row["processes"] == 2:
            if row["submit"].get("p99", float("inf")) > TARGETS["pg2_submit_p99_ms"]:
                report.problems.append(f"PostgreSQL ×2 submit p99 is {row['submit'].get('p99')} ms (target ≤ 50)")
            if row["other_cpu_ms_per_request"] > TARGETS["pg2_other_cpu_ms_per_request"]:
                report.problems.append(
                    f"PostgreSQL ×2: {row['other_cpu_ms_per_request']} ms CPU per request in the "
                    "other process (target ≤ 1)"
                )


def runs(args: Any) -> list[tuple[str | None, int, int]]:
    """(database URL or None for SQLite, processes, nodes per process) of each row, in order."""
    counts = [int(n) for n in args.nodes.split(",")]
    if args.db:
        processes = [int(p) for p in args.processes.split(",")] if is_postgres(args.db) else [1]
        return [(args.db, p, n) for p in processes for n in counts]
    plan: list[tuple[str | None, int, int]] = [(None, 1, n) for n in counts]
    if args.pg and not args.short:
        plan += [(args.pg, p, args.pg_nodes) for p in (1, 2)]
    return plan


def command_line(args: Any, db: str | None, processes: int, nodes: str) -> str:
    """The command that measures these rows again, alone."""
    engine = f" --db {db} --processes {processes}" if db else ""
    return (
        f"python bench/scale.py{engine} --nodes {nodes} --rate {args.rate:g} --seconds {args.seconds:g} "
        f"--settle {args.settle:g} --pop-wait {args.pop_wait:g}"
    )


async def main_async(args: Any) -> int:
    raise_open_files()
    # The load generator holds as many objects as the coordinator, and collects as it does
    # (coordinator/gcpolicy.py), or its own pauses would count as the coordinator's latency; its full
    # collections run only between rows (`measure`).
    defer_full_collections()
    collecting = asyncio.create_task(run_collections(full=False))
    try:
        return await measure(args)
    finally:
        collecting.cancel()


async def measure(args: Any) -> int:
    plan = runs(args)
    report = Report(
        "scale",
        {
            "runs": [{"engine": "postgresql" if db else "sqlite", "processes": p, "nodes": n} for db, p, n in plan],
            "rate": args.rate,
            "seconds": args.seconds,
            "settle": args.settle,
            "pop_wait": args.pop_wait,
            "models": len(MODELS),
            "node_addresses": NODE_ADDRESSES,
            "targets": TARGETS,
        },
    )
    rows = []
    for db_url, process_count, count in plan:
        with temporary_dir(args.keep, "horde-bench-scale-") as workdir:
            async with bench_database(db_url) as db:
                row = await scenario(args, report, workdir, db, process_count, count * process_count)
        row["command"] = command_line(args, db_url, process_count, str(count))
        rows.append(row)
        full_collection()
    sqlite_counts = ",".join(str(n) for db, _, n in plan if db is None)
    if sqlite_counts:
        report.notes.append(f"SQLite rows together (the p99 ratio): {command_line(args, None, 1, sqlite_counts)}")
    for row in rows:
        report.notes.append(f"{row['engine']} ×{row['processes']}, {row['nodes']} nodes in all: {row['command']}")
    report.results["rows"] = rows
    report.tables.append(
        table(
            "Nodes long-polling at once; requests at a steady rate (ms; pop = 202 → a node's pop has the job)",
            [
                "engine",
                "procs",
                "nodes",
                "jobs",
                "gen p50",
                "gen p99",
                "check p50",
                "check p99",
                "pop p50",
                "pop p99",
                "submit p50",
                "submit p99",
                "B/parked node",
                "other CPU ms/req",
            ],
            [
                [
                    r["engine"],
                    r["processes"],
                    r["nodes"],
                    r["jobs"],
                    r["generate"].get("p50"),
                    r["generate"].get("p99"),
                    r["check"].get("p50"),
                    r["check"].get("p99"),
                    r["pop"].get("p50"),
                    r["pop"].get("p99"),
                    r["submit"].get("p50"),
                    r["submit"].get("p99"),
                    r["rss_bytes_per_parked_node"],
                    r.get("other_cpu_ms_per_request"),
                ]
                for r in rows
            ],
        )
    )
    check_targets(rows, report, args.short)
    if not args.short and not args.db and not args.pg:
        report.problems.append(
            "PostgreSQL targets not measured: give a server with --pg URL (or HORDE_BENCH_POSTGRES_DSN)"
        )
    return report.emit(args.json)


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="1,1000,10000", help="nodes per process, comma-separated")
    parser.add_argument("--processes", default="1,2", help="coordinator processes (PostgreSQL only)")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--pop-wait", type=float, default=POP_WAIT, help="each node's long-poll, seconds")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long requests arrive")
    parser.add_argument(
        "--settle",
        type=float,
        default=20.0,
        help="seconds over which the nodes start to park, and parked before the measure",
    )
    parser.add_argument(
        "--pg",
        default=os.environ.get("HORDE_BENCH_POSTGRES_DSN"),
        help="full mode: also PostgreSQL, 1 and 2 processes, on a fresh database on this server",
    )
    parser.add_argument("--pg-nodes", type=int, default=1000, help="nodes per PostgreSQL process (with --pg)")
    parser.add_argument(
        "--profile", choices=("cprofile", "py-spy"), help="profile each coordinator (file beside the data dir)"
    )
    args = parser.parse_args()
    if args.short:
        args.nodes, args.rate, args.seconds, args.settle = "50", 10.0, 3.0, 1.0
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
