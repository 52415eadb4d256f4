"""Verified work (issue 17): how fast spot checks catch cheaters, what they cost, and whether they ever wrong
an honest node.

1. Measured, on the real tiny pipeline (64×64, 8 steps, k_euler_a): for N seeds, the honest image in
   float32 (1 CPU thread), the same in bfloat16 and in float32 on 2 threads (honest "classes"), and each
   cheater's answer (noise; a quarter of the steps; another seed; a cached image). Each is compared with the
   float32 image by the coordinator's own rule (coordinator/likeness.py): the per-check detection rate of
   each cheat, and the false disagreements (and the largest distance) between honest classes.
2. End to end: a real coordinator (in this process, on a loopback port, the default check policy) with honest
   float32 and bfloat16 nodes and one new cheater of each kind, every image made by the tiny pipeline and
   delivered over real HTTP: the cheater's jobs until its first failed check, the kudos it kept, the checks
   and images made, and verdicts against honest nodes.
3. Computed and simulated, with the coordinator's own check-rate policy (coordinator/verification.py,
   default settings) and the measured rates: per cheater kind and cheating fraction f, the jobs until first
   caught, the kudos it kept (rewards released before the verdict), and the probability of being caught
   within 300 jobs; for honest nodes, the verification overhead (extra inference per image) once they have a
   record, and the false disagreements between honest classes.

    python bench/verify.py            # 60 seeds, 40 end-to-end rounds, 2,000 simulated nodes per case
    python bench/verify.py --short    # CI: 6 seeds, 6 rounds, 200 simulated nodes
    python bench/verify.py --pairs 10000 --minutes 30   # only the honest pairs, as many as fit the time

`--pairs N` measures only honest pairs (the false-verdict figure): per seed, the image made in four honest
classes (float32 and bfloat16, each on 1 and on 2 CPU threads) at the tiny pipeline's smallest size (64×64),
and every two of them compared (six pairs a seed), until N pairs or `--minutes` run out; it prints how many
pairs ran, the false disagreements and the largest distance per pair of classes.
"""

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from coordinator.config import VerificationSettings
from coordinator.estimates import quicker_than_measured, record_speed
from coordinator.likeness import agree, distance, fingerprint
from coordinator.storage.records import Worker
from coordinator.verification import check_rate
from tests.api_support import count, generate, small
from tests.helpers import Api, SimWorker
from tests.verify_support import CHEATS, Network, TinyNode, class_of, network, tiny_generator

JOBS_WINDOW = 300  # the target: a node cheating on >= 10% of its images is caught within 300 jobs, >= 99%
SIZE, STEPS = 64, 8
PAYLOAD = {
    "prompt": "a lighthouse at dusk",
    "width": SIZE,
    "height": SIZE,
    "ddim_steps": STEPS,
    "sampler_name": "k_euler_a",
    "cfg_scale": 7.5,
    "n_iter": 1,
}


# The honest classes of the pairs run: (name, dtype, CPU threads); every two of them are compared.
PAIR_CLASSES = (
    ("float32", torch.float32, 1),
    ("bfloat16", torch.bfloat16, 1),
    ("float32, 2 threads", torch.float32, 2),
    ("bfloat16, 2 threads", torch.bfloat16, 2),
)


def honest_pairs(pairs: int, minutes: float, tiny: Path) -> dict[str, tuple[int, int, float]]:
    """Per pair of honest classes: (pairs compared, false disagreements, largest distance), each seed's image
    made once in every class and every two classes compared (six pairs a seed), until `pairs` are done or
    `minutes` have passed."""
    generators = {
        torch.float32: tiny_generator(tiny, torch.float32),
        torch.bfloat16: tiny_generator(tiny, torch.bfloat16),
    }
    dummy = SimWorker(Api("http://unused"), "bench")
    max_distance = VerificationSettings().max_distance
    found: dict[str, list[float]] = {}
    deadline, seed, done = time.monotonic() + 60 * minutes, 0, 0
    while done < pairs and time.monotonic() < deadline:
        payload = {**PAYLOAD, "seed": str(500_000 + seed)}
        made = []
        for name, dtype, threads in PAIR_CLASSES:
            torch.set_num_threads(threads)
            image = fingerprint(TinyNode(dummy, generators[dtype]).make("tiny-sd", payload))
            made.append((name, image, class_of(dtype)))  # the class names its threads
        torch.set_num_threads(1)
        for index, (name_a, image_a, class_a) in enumerate(made):
            for name_b, image_b, class_b in made[index + 1 :]:
                row = found.setdefault(f"{name_a} vs {name_b}", [0, 0, 0.0])
                row[0] += 1
                row[1] += not agree(image_a, image_b, class_a, class_b, max_distance)
                row[2] = max(row[2], distance(image_a, image_b))
                done += 1
        seed += 1
        if seed % 100 == 0:
            print(f"  ... {done} pairs", flush=True)
    return {name: (int(n), int(false), largest) for name, (n, false, largest) in found.items()}


def report_pairs(pairs: int, minutes: float, tiny: Path) -> int:
    started = time.monotonic()
    found = honest_pairs(pairs, minutes, tiny)
    total, false = sum(n for n, _, _ in found.values()), sum(f for _, f, _ in found.values())
    print(
        f"honest pairs (tiny pipeline, 64x64, 8 steps, threshold {VerificationSettings().max_distance}), "
        f"{time.monotonic() - started:.0f} s:"
    )
    for name, (n, wrong, largest) in found.items():
        print(f"  {name:42}: {n} pairs, {wrong} false disagreements, largest distance {largest:.3f}")
    print(f"total: {total} pairs run (of {pairs} asked), {false} false disagreements")
    return 1 if false else 0


@dataclass
class Measured:
    """What the tiny pipeline showed: per cheat, the share of its images the likeness rule tells apart from the
    honest one (`detect`); per honest class, (false disagreements, largest distance) against float32 on 1
    thread; and the seconds each image took, honest (float32, 1 thread) and per cheat."""

    detect: dict[str, float]
    honest: dict[str, tuple[int, float]]
    honest_seconds: list[float]
    cheat_seconds: dict[str, list[float]]


def timed(node: TinyNode, payload: dict[str, Any]) -> tuple[bytes, float]:
    started = time.perf_counter()
    image = node.make("tiny-sd", payload)
    return image, time.perf_counter() - started


def measure(tiny: Path, seeds: int) -> Measured:
    f32, bf16 = tiny_generator(tiny, torch.float32), tiny_generator(tiny, torch.bfloat16)
    honest_class, bf16_class = class_of(torch.float32), class_of(torch.bfloat16)
    max_distance = VerificationSettings().max_distance
    dummy = SimWorker(Api("http://unused"), "bench")
    cheaters = {kind: TinyNode(dummy, f32, cheat=kind) for kind in CHEATS}
    caught = dict.fromkeys(CHEATS, 0)
    honest: dict[str, list[float]] = {"bfloat16": [], "2 threads": []}
    false = {"bfloat16": 0, "2 threads": 0}
    seconds: list[float] = []
    cheat_seconds: dict[str, list[float]] = {kind: [] for kind in CHEATS}
    for seed in range(seeds):
        payload = {**PAYLOAD, "seed": str(1000 + seed)}
        torch.set_num_threads(1)
        image, took = timed(TinyNode(dummy, f32), payload)
        reference = fingerprint(image)
        seconds.append(took)
        other = fingerprint(TinyNode(dummy, bf16).make("tiny-sd", payload))
        honest["bfloat16"].append(distance(reference, other))
        false["bfloat16"] += not agree(reference, other, honest_class, bf16_class, max_distance)
        torch.set_num_threads(2)
        threads = fingerprint(TinyNode(dummy, f32).make("tiny-sd", payload))
        torch.set_num_threads(1)
        honest["2 threads"].append(distance(reference, threads))
        # Two thread counts are two classes (threads are in the class), so the distance rule applies.
        false["2 threads"] += not agree(reference, threads, honest_class, honest_class + "-2", max_distance)
        for kind, node in cheaters.items():
            answer, took = timed(node, payload)
            cheat_seconds[kind].append(took)
            caught[kind] += not agree(reference, fingerprint(answer), honest_class, honest_class, max_distance)
    detect = {kind: caught[kind] / seeds for kind in CHEATS}
    return Measured(
        detect, {name: (false[name], max(values)) for name, values in honest.items()}, seconds, cheat_seconds
    )


def quick_shares(measured: Measured, fraction: float) -> tuple[float, dict[str, float]]:
    """The coordinator's own timing rule (`estimates.quicker_than_measured`) over the measured seconds, as a
    node delivering them one after another would be judged: the share of honest images it calls quick, and
    per cheat the share of cheated images it calls quick (each against the honest record up to then)."""
    worker, now, work = blank_worker(), 0.0, SIZE * SIZE * STEPS / 1e6  # megapixelsteps
    honest_quick, quick = 0, dict.fromkeys(measured.cheat_seconds, 0)
    for index, seconds in enumerate(measured.honest_seconds):
        for kind, times in measured.cheat_seconds.items():
            quick[kind] += quicker_than_measured(worker, "tiny-sd", work, now, now + times[index], fraction)
        honest_quick += quicker_than_measured(worker, "tiny-sd", work, now, now + seconds, fraction)
        record_speed(worker, "tiny-sd", work, now, now + seconds)
        now += seconds
    count_ = len(measured.honest_seconds)
    return honest_quick / count_, {kind: found / count_ for kind, found in quick.items()}


async def end_to_end(tiny: Path, cheat: str, fraction: float, rounds: int) -> tuple[int | None, float, int, int, int]:
    """A real coordinator (the default check policy) with honest float32 and bfloat16 nodes and one new cheater,
    over real HTTP: each round three requests of one image, popped first by the cheater, `f32` and `bf16` in
    turn, then the checks they raise. Returns (the cheater's jobs until its first failed check, None if never;
    the kudos it kept after it: available plus held; checks issued; images made in all; failed verdicts
    against honest nodes)."""
    with tempfile.TemporaryDirectory() as folder:
        async with network(Path(folder), None, tiny, cheat, VerificationSettings(enabled=True), rate=fraction) as net:
            caught, made = None, 0
            for round_ in range(rounds):
                for index, name in enumerate(("cheater", "f32", "bf16")):
                    await generate(net.payer, small(steps=8, seed=str(3 * round_ + index)))
                    made += await serve_all(net, first=name)
                if "fail" in (await net.verdicts()).get("cheater", []):
                    caught = net.nodes["cheater"].jobs
                    break
            verdicts = await net.verdicts()
            wronged = sum(found.count("fail") for name, found in verdicts.items() if name != "cheater")
            return caught, sum(await net.held("cheater")), await count(net.coordinator, "checks"), made, wronged


async def serve_all(net: Network, first: str) -> int:
    """`first` pops the new request; then every node serves checks until none is left. Images made."""
    made, progress = 0, True
    order = [first, *[name for name in net.nodes if name != first]]
    while progress:
        progress = False
        for name in order:
            if await net.nodes[name].serve_one() is not None:
                made, progress = made + 1, True
    return made


def simulate(
    detect: float,
    fraction: float,
    quick: float,
    settings: VerificationSettings,
    nodes: int,
    rng: random.Random,
    passes: int = 0,
) -> tuple[float, float, float]:
    """A node cheating on `fraction` of its jobs (each cheat caught with `detect` when checked, and quick, so
    checked for sure, with `quick`), under the policy, from a record of `passes` passed checks (0: a new node).
    Returns (median jobs until first caught, mean rewards kept as a share of jobs' rewards before then, share
    caught within 300 jobs). Rewards are released `window_jobs` jobs after they were earned."""
    window_jobs = 100  # the window, counted in the node's jobs (an hour at ~100 images an hour)
    firsts, kept = [], []
    within = 0
    for _ in range(nodes):
        worker = blank_worker()
        worker.checks_passed = worker.passes_since_failure = passes
        job = 0
        while job < 10 * JOBS_WINDOW:
            job += 1
            cheated = rng.random() < fraction
            rate = check_rate(worker, settings.new_rate, settings.settled_rate, settings.suspect_rate, settings.record)
            if cheated and rng.random() < quick:
                rate = settings.suspect_rate
            if rng.random() < rate:
                if cheated and rng.random() < detect:
                    break
                worker.checks_passed += 1
                worker.passes_since_failure += 1
        firsts.append(job)
        within += job <= JOBS_WINDOW
        kept.append(max(0, job - window_jobs) / job)
    firsts.sort()
    return firsts[len(firsts) // 2], sum(kept) / nodes, within / nodes


def analytic(detect: float, fraction: float, rate: float, jobs: int = JOBS_WINDOW) -> float:
    """Caught within `jobs` at a constant check rate: 1 - (1 - p·f·d)^jobs."""
    return 1 - (1 - rate * fraction * detect) ** jobs


def blank_worker() -> Worker:
    """A node with no record, for the check-rate policy (which reads only its check counters)."""
    return Worker.new("w", "w", 1, 0.0)


def overhead(settings: VerificationSettings, jobs: int, honest_quick: float) -> tuple[float, float]:
    """Extra inference per image for an honest node: over its first `jobs`, and once it has a record; each
    including the images its own timing calls quick (`honest_quick` of them), checked for sure."""
    worker = blank_worker()
    total, rng = 0.0, random.Random(3)
    for _ in range(jobs):
        rate = check_rate(worker, settings.new_rate, settings.settled_rate, settings.suspect_rate, settings.record)
        rate += honest_quick * (settings.suspect_rate - rate)
        total += rate
        worker.checks_passed += rng.random() < rate
    settled = settings.settled_rate + honest_quick * (settings.suspect_rate - settings.settled_rate)
    return total / jobs, settled


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="CI: fewer seeds and simulated nodes")
    parser.add_argument("--pairs", type=int, default=0, help="only measure this many honest cross-class pairs")
    parser.add_argument("--minutes", type=float, default=60.0, help="with --pairs: stop after this long")
    args = parser.parse_args()
    tiny = Path(os.environ.get("HORDE_TINY_MODEL_DIR", ".cache/tiny-sd"))
    if args.pairs:
        return report_pairs(args.pairs, args.minutes, tiny)
    seeds, nodes, rounds = (6, 200, 6) if args.short else (60, 2000, 40)
    settings = VerificationSettings()
    measured = measure(tiny, seeds)
    honest_quick, quick = quick_shares(measured, settings.quick_fraction)
    print(f"measured on {seeds} seeds (tiny pipeline, 64x64, 8 steps), threshold {settings.max_distance}:")
    mean = sum(measured.honest_seconds) / seeds
    print(f"  honest image: {mean * 1000:.0f} ms on average; quick (under {settings.quick_fraction:.2f} of the")
    print(f"  node's measured time, so checked for sure): {honest_quick:.3f} of honest images")
    for kind, rate in measured.detect.items():
        took = sum(measured.cheat_seconds[kind]) / seeds
        print(f"  {kind:8}: per-check detection {rate:.3f}; {took * 1000:.0f} ms per image, {quick[kind]:.3f} quick")
    for name, (false, largest) in measured.honest.items():
        print(f"  honest float32 vs {name:9}: {false} false disagreements, largest distance {largest:.3f}")
    rng = random.Random(11)
    print(
        f"policy: new {settings.new_rate} -> settled {settings.settled_rate} over {settings.record} passes, "
        f"suspect {settings.suspect_rate}, quick images {settings.suspect_rate}"
    )
    print("simulated: a new node, and a settled one (a record of passes first), cheating on f of its jobs")
    print("cheater      f     median jobs to catch  kept share  caught<=300 new  settled  settled, if never quick")
    for kind, detect in measured.detect.items():
        for fraction in (1.0, 0.1):
            median, kept, within = simulate(detect, fraction, quick[kind], settings, nodes, rng)
            settled = simulate(detect, fraction, quick[kind], settings, nodes, rng, passes=settings.record)[2]
            padded = analytic(detect, fraction, settings.settled_rate)
            print(
                f"  {kind:9} {fraction:4.2f}  {median:10d}            {kept:6.3f}       {within:6.3f}"
                f"      {settled:6.3f}   {padded:.3f}"
            )
    print("end to end (real coordinator, real HTTP, tiny pipeline; new cheater vs honest float32 + bfloat16):")
    print("cheater      f     jobs to first catch  kudos kept  checks  images  verdicts against honest nodes")
    cases = [(kind, 1.0) for kind in CHEATS] + [("seed", 0.25)]
    e2e_wronged = 0
    for kind, fraction in cases:
        caught, kept, checks, made, wronged = asyncio.run(end_to_end(tiny, kind, fraction, rounds))
        e2e_wronged += wronged
        shown = "not caught" if caught is None else str(caught)
        print(
            f"  {kind:9} {fraction:4.2f}  {shown:>10}            {kept:8.2f}  {checks:6d}  {made:6d}  {wronged}",
            flush=True,
        )
    early, settled = overhead(settings, 1000, honest_quick)
    print(
        f"overhead: {early:.3f} extra inference per image over a new node's first 1000 jobs; {settled:.3f} "
        "once it has a record (both with its quick images; plus a third run per disagreement)"
    )
    false_pairs = sum(false for false, _ in measured.honest.values())
    pairs = 2 * seeds
    print(
        f"false verdicts against honest nodes: {false_pairs} disagreements in {pairs} honest cross-class pairs; "
        "a verdict needs a third node to side against it too"
    )
    return 1 if false_pairs or e2e_wronged else 0


if __name__ == "__main__":
    sys.exit(main())
