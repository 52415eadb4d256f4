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
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/abuse.py` from anywhere

from bench.abuse_attackers import Attacker
from bench.abuse_phases import PHASE_FUNCTIONS, Setup
from bench.abuse_probe import Prober
from bench.common import (
    Coordinator,
    Report,
    base_parser,
    bench_database,
    create_accounts,
    table,
    temporary_dir,
)

TARGET_P99_MS = 100.0
PHASES = ("idle", "farming", "disk", "flood", "answers", "sources", "malformed")


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
                    result |= {
                        "phase": name,
                        "address": attacker.address,
                        "seconds": round(end - start, 1),
                        "statuses": dict(attacker.statuses),
                    }
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
        rows.append(
            [run["phase"], beat["n"], beat["failed"], beat["p50"], beat["p99"], beat["max"], met, run["achieved"]]
        )
    return [
        table(
            f"Heartbeat during each abuse (ms; target p99 < {TARGET_P99_MS:.0f}) and what the abuse achieved",
            ["phase", "beats", "failed", "p50", "p99", "max", "met", "achieved"],
            rows,
        )
    ]


async def main_async(args: Any) -> int:
    report = Report(
        "abuse",
        {
            "seconds_per_phase": args.seconds,
            "phases": args.phases,
            "short": args.short,
            "db": "postgresql" if args.db else "sqlite",
        },
    )
    with temporary_dir(args.keep, "horde-bench-abuse-") as workdir:
        runs = await run_phases(args, report, workdir)
    report.results = {"phases": runs, "target_heartbeat_p99_ms": TARGET_P99_MS}
    report.tables = tables(runs)
    for run in runs:
        beat = run["heartbeat_ms"]
        if beat["failed"]:
            report.problems.append(f"{run['phase']}: {beat['failed']} heartbeats got no answer")
        if beat["p99"] is not None and beat["p99"] >= TARGET_P99_MS:
            report.notes.append(
                f"{run['phase']}: heartbeat p99 {beat['p99']} ms is over the {TARGET_P99_MS:.0f} ms target"
            )
    return report.emit(args.json)


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per phase (farming twice as long)")
    parser.add_argument(
        "--phases",
        type=lambda text: text.split(","),
        default=list(PHASES),
        help="comma-separated: " + ", ".join(PHASES),
    )
    args = parser.parse_args()
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    if args.short:
        args.seconds = min(args.seconds, 2.5)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
