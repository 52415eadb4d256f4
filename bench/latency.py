"""Latency the broker adds when the network is idle.

One node waits for work; one requester submits a request (n=1), rounds one after another with a random pause
between them. Two intervals per round:

- dispatch: the requester sends `/generate/async` → the node's pop returns the job. Counted from the send, not
  from the 202: the coordinator wakes the waiting node as it commits the request, before it answers the
  requester, so the node's answer can arrive (and be read by this process) before the 202, which made a
  "202 → pop" interval 0 or negative in some rounds. The send is the one moment certainly before the job
  exists; `/generate/async`'s own time is given beside it;
- delivery: the node sends its result → the requester's check reports it finished.

The node "generates" for a random 0.1–1 s. Two cadences, same workload:

- long-poll (ours): the node pops with `wait=30`; the requester holds `/check?wait=30&finished=0`;
- AI Horde's: the node pops without waiting and sleeps 1 s when empty; the requester checks every 4 s.

    python bench/latency.py                 # 40 long-poll rounds, 15 polling rounds
    python bench/latency.py --short         # CI: a few rounds, polling cadence scaled down 10×
"""

import asyncio
import base64
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/latency.py` from anywhere

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
    tiny_webp,
)
from protocol.keys import Identity
from protocol.provenance import ResultDocument, request_digest, sha256_hex, sign_result

MODEL = "bench-model"
TARGETS_MS = {"dispatch_p50": 20.0, "delivery_p50": 50.0}


@dataclass
class Cadence:
    name: str
    pop_wait: float  # node: long-poll seconds (0: poll)
    pop_sleep: float  # node: sleep after an empty pop
    check_every: float  # requester: seconds between plain checks (0: long-poll)


@dataclass
class Round:
    sent: float = 0.0
    accepted: float = 0.0
    node_got: float = 0.0
    node_sent: float = 0.0
    node_answered: float = 0.0
    seen: float = 0.0
    got_job: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Shared:
    rounds: dict[str, Round] = field(default_factory=dict)  # by request id
    early: dict[str, float] = field(default_factory=dict)  # jobs popped before the 202 reached the requester
    stop: bool = False


async def node(
    api: Api, apikey: str, cadence: Cadence, shared: Shared, gen_seconds: tuple[float, float], rng: random.Random
) -> None:
    identity = Identity.generate()
    image = tiny_webp(size=512)  # the jobs' own size: any other is refused (ImageSizeMismatch)
    generation, image_sha = base64.b64encode(image).decode(), sha256_hex(image)
    body = {
        "name": "latency-node",
        "models": [MODEL],
        "max_pixels": 1024 * 1024,
        "amount": 1,
        "wait": cadence.pop_wait,
        "bridge_agent": "horde-bench:1:latency",
    }
    while not shared.stop:
        status, job = await api.call("POST", "/v2/generate/pop", body, label="pop", apikey=apikey, identity=identity)
        got = now()
        if status != 200:
            await asyncio.sleep(0.5)
            continue
        if not job["ids"]:
            if cadence.pop_sleep:
                await asyncio.sleep(cadence.pop_sleep)
            continue
        # Nodes never learn request ids: the job document commits to the request by its digest.
        request_id = job["jobs"][0]["document"]["request_sha256"]
        round_ = shared.rounds.get(request_id)
        if round_ is None:
            shared.early[request_id] = got
        else:
            round_.node_got = got
        await asyncio.sleep(rng.uniform(*gen_seconds))
        seed = job["jobs"][0]["document"]["payload"]["seed"]
        document = ResultDocument(job_id=job["ids"][0], image_sha256=image_sha, seed=seed, state="ok")
        result = {
            "id": job["ids"][0],
            "generation": generation,
            "state": "ok",
            "seed": seed,
            "signature": sign_result(identity, document),
        }
        round_ = shared.rounds.get(request_id) or Round()
        round_.node_sent = now()
        await api.call("POST", "/v2/generate/submit", result, label="submit", apikey=apikey, identity=identity)
        round_.node_answered = now()


async def one_round(api: Api, apikey: str, cadence: Cadence, shared: Shared) -> Round | None:
    body = {"prompt": "latency bench", "models": [MODEL], "params": {"width": 512, "height": 512, "steps": 20}}
    round_ = Round(sent=now())
    status, accepted = await api.call("POST", "/v2/generate/async", body, label="generate", apikey=apikey)
    round_.accepted = now()
    if status != 202:
        return None
    request_id = accepted["id"]
    shared.rounds[request_digest(request_id)] = round_
    round_.node_got = shared.early.pop(request_digest(request_id), 0.0)
    while True:
        if cadence.check_every:
            await asyncio.sleep(cadence.check_every)
            status, check = await api.call("GET", f"/v2/generate/check/{request_id}", label="check")
        else:
            query = "?wait=30&finished=0"
            status, check = await api.call("GET", f"/v2/generate/check/{request_id}{query}", label="check")
        if status != 200 or check["faulted"]:
            return None
        if check["finished"] >= 1:
            round_.seen = now()
            return round_


async def run_cadence(args: Any, cadence: Cadence, rounds: int, report: Report, workdir: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    data_dir = workdir / cadence.name
    async with bench_database(args.db) as db:
        keys = await create_accounts(data_dir, db, ["requester", "owner"], kudos=1000)
        coordinator = Coordinator(data_dir, db).start()
        shared = Shared()
        done: list[Round] = []
        try:
            async with Api(coordinator.url, report.errors) as api:
                worker = asyncio.create_task(node(api, keys["owner"], cadence, shared, args.gen_seconds, rng))
                await asyncio.sleep(0.5)  # the node has registered and waits
                for _ in range(rounds):
                    await asyncio.sleep(rng.uniform(0, max(cadence.pop_sleep, 0.2)))  # a random phase
                    finished = await one_round(api, keys["requester"], cadence, shared)
                    if finished is not None and finished.node_got and finished.node_sent:
                        done.append(finished)
                    else:
                        report.problems.append(f"{cadence.name}: a round did not complete")
                shared.stop = True
                await gather_cancelling([worker])
        finally:
            coordinator.stop()
    for round_ in done:
        if round_.node_got - round_.sent <= 0:  # the clock is one process's monotonic one: impossible
            report.problems.append(f"{cadence.name}: a dispatch time of {round_.node_got - round_.sent:.6f} s")
    return {
        "cadence": cadence.name,
        "pop_wait": cadence.pop_wait,
        "pop_sleep": cadence.pop_sleep,
        "check_every": cadence.check_every,
        "rounds": len(done),
        "dispatch_ms": summary([r.node_got - r.sent for r in done]),
        "dispatch_min_ms": round(1000 * min((r.node_got - r.sent for r in done), default=float("nan")), 2),
        "delivery_ms": summary([r.seen - r.node_sent for r in done]),
        "delivery_from_answer_ms": summary([r.seen - r.node_answered for r in done]),
        "generate_call_ms": summary([r.accepted - r.sent for r in done]),
        "submit_call_ms": summary([r.node_answered - r.node_sent for r in done]),
    }


async def main_async(args: Any) -> int:
    scale = 0.1 if args.short else 1.0
    cadences = [
        (Cadence("long-poll", 30.0, 0.0, 0.0), args.rounds),
        (Cadence("ai-horde-poll", 0.0, 1.0 * scale, 4.0 * scale), args.poll_rounds),
    ]
    config = {
        "rounds": args.rounds,
        "poll_rounds": args.poll_rounds,
        "gen_seconds": args.gen_seconds,
        "polling_scale": scale,
        "db": "postgresql" if args.db else "sqlite",
        "short": args.short,
    }
    report = Report("latency", config)
    runs = []
    with temporary_dir(args.keep, "horde-bench-latency-") as workdir:
        for cadence, rounds in cadences:
            runs.append(await run_cadence(args, cadence, rounds, report, workdir))
    report.results = {"runs": runs, "targets_ms": TARGETS_MS}
    report.tables.append(
        table(
            "Added latency, idle network (ms)",
            ["cadence", "rounds", "dispatch p50", "p95", "p99", "min", "delivery p50", "p95", "p99"],
            [
                [
                    r["cadence"],
                    r["rounds"],
                    r["dispatch_ms"].get("p50"),
                    r["dispatch_ms"].get("p95"),
                    r["dispatch_ms"].get("p99"),
                    r["dispatch_min_ms"],
                    r["delivery_ms"].get("p50"),
                    r["delivery_ms"].get("p95"),
                    r["delivery_ms"].get("p99"),
                ]
                for r in runs
            ],
        )
    )
    report.tables.append(
        table(
            "The calls themselves (ms)",
            ["cadence", "generate p50", "p99", "submit p50", "p99"],
            [
                [
                    r["cadence"],
                    r["generate_call_ms"].get("p50"),
                    r["generate_call_ms"].get("p99"),
                    r["submit_call_ms"].get("p50"),
                    r["submit_call_ms"].get("p99"),
                ]
                for r in runs
            ],
        )
    )
    if args.short:
        report.notes.append("short mode: the AI Horde cadence is scaled down 10× (sanity only)")
    longpoll = runs[0]
    for key, target in (("dispatch_ms", TARGETS_MS["dispatch_p50"]), ("delivery_ms", TARGETS_MS["delivery_p50"])):
        value = longpoll[key].get("p50")
        if value is not None and value > target:
            report.notes.append(f"target missed: long-poll {key} p50 = {value} ms (target {target} ms)")
    for run in runs:
        if run["rounds"] == 0:
            report.problems.append(f"{run['cadence']}: no round completed")
    return report.emit(args.json)


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="long-poll rounds")
    parser.add_argument("--poll-rounds", type=int, default=15, help="AI Horde cadence rounds")
    parser.add_argument(
        "--gen-seconds",
        type=lambda text: tuple(float(x) for x in text.split(",")),
        default=(0.1, 1.0),
        help="the node's simulated generation time: MIN,MAX seconds",
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.short:
        args.rounds, args.poll_rounds, args.gen_seconds = min(args.rounds, 8), min(args.poll_rounds, 3), (0.02, 0.1)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
