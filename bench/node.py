"""The node's overhead over the bare pipeline.

The same N images are made twice, on the tiny random-weight SD1 pipeline (node/tiny_model.py) on the CPU:

(a) bare: the diffusers pipeline called directly in a loop (StableDiffusionPipeline.from_pretrained), run
    before and after (b) since a shared machine drifts;
(a') the node's own Generator in a loop, no network (separates the inference wrapper from the rest);
(b) networked: N requests (n=1) queued on a coordinator (its own process), served by the real node daemon
    (node.daemon.NodeDaemon, in this process, prefetching one pop ahead, signing, spooling, submitting).

All exclude model loading and one warm-up image, and run torch with the threads the node picks for itself
(node.devices.torch_threads: every core but one on the CPU). Reports the ratio (b)/(a) of wall time, the
node's busy fraction (time inside the generator / wall time), and per image the time spent encoding, signing,
spooling and submitting (and uploading, when a pop's upload URL is a bucket). The daemon runs in-process only
so that those steps can be timed (by wrapping the functions the daemon calls); the requester side here only
queues the requests and waits for the daemon's "submitted" events. (a) runs the node's sampler (k_euler:
diffusers' EulerDiscreteScheduler), not the model's default one.

Full mode exits non-zero when a target is missed ((b)/(a) ≤ 1.05, busy fraction ≥ 0.95), and every mode when
the node's inference stack cannot be imported (nothing measured is an error); --short is a sanity run.

    python bench/node.py                            # 32 images, 64×64, 20 steps (the target's jobs)
    python bench/node.py --short                    # CI: 2 images, 64×64, 2 steps
    HORDE_TINY_MODEL_DIR=.cache/tiny-sd python bench/node.py --images 64 --torch-threads 2

The tiny model is taken from HORDE_TINY_MODEL_DIR when set, else built into the temporary folder.
"""

import asyncio
import functools
import io
import os
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/node.py` from anywhere

from bench.common import (
    Api,
    Coordinator,
    Report,
    base_parser,
    bench_database,
    create_accounts,
    summary,
    table,
    temporary_dir,
)

MODEL = "tiny-sd"
TARGET_RATIO = 1.05  # (b)/(a) for 64×64, 20-step jobs
TARGET_BUSY = 0.95  # the node's busy fraction in (b)


class Timings:
    """Durations of named steps, thread-safe (the generator runs on the daemon's inference thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.recording = False

    def add(self, name: str, seconds: float) -> None:
        if self.recording:
            with self.lock:
                self.seconds[name].append(seconds)

    def wrap_sync(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - started)

        return timed

    def wrap_async(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await function(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - started)

        return timed


def signalling_console() -> Any:
    """The daemon's console (quiet, JSON) that wakes the bench once a given number of results were
    submitted: the bench neither polls nor wakes per image, since every wake-up of the event loop the
    daemon shares takes the GIL from inference."""
    from node.console import Console

    class SignallingConsole(Console):
        def __init__(self) -> None:
            super().__init__(io.StringIO(), "json")
            self.submits, self.target, self.reached = 0, 0, asyncio.Event()

        def expect(self, total: int) -> None:
            self.target = total
            if self.submits >= total:
                self.reached.set()

        def event(self, kind: str, level: int = 20, /, **fields: Any) -> None:
            super().event(kind, level, **fields)
            if kind == "submitted":
                self.submits += 1
                if self.submits >= self.target:
                    self.reached.set()

    return SignallingConsole()


def node_modules_missing() -> str | None:
    """Why the real node can't be benchmarked here, or None when it can."""
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401

        from node.config import build_config  # noqa: F401
        from node.daemon import NodeDaemon  # noqa: F401
        from node.tiny_model import build_tiny_model  # noqa: F401
    except ImportError as error:
        return f"the node or its inference stack cannot be imported ({error})"
    return None


def tiny_model(workdir: Path) -> Path:
    given = os.environ.get("HORDE_TINY_MODEL_DIR")
    if given and (Path(given) / "model_index.json").exists():
        return Path(given)
    from node.tiny_model import build_tiny_model

    return build_tiny_model(workdir / "tiny-sd")


def load_bare(model_dir: Path) -> Any:
    """The pipeline with the scheduler the node runs for the benchmark's jobs (`k_euler`, no Karras sigmas):
    diffusers' EulerDiscreteScheduler on the model's own noise schedule. (The tiny model ships Euler
    ancestral, which draws fresh noise every step: a different, slightly slower sampler than the node's.)"""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bare(pipe: Any, images: int, width: int, steps: int) -> dict[str, Any]:
    """(a): the pipeline in a loop, one image per call, a different seed each time."""
    import torch

    def one(seed: int) -> float:
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(seed)
        pipe(
            "a lighthouse on a cliff at dusk",
            negative_prompt="blurry",
            num_inference_steps=steps,
            width=width,
            height=width,
            guidance_scale=7.5,
            generator=generator,
        )
        return time.perf_counter() - started

    one(0)  # warm-up
    started = time.perf_counter()
    per_image = [one(seed) for seed in range(1, images + 1)]
    wall = time.perf_counter() - started
    return {"wall_seconds": round(wall, 3), "per_image_ms": summary(per_image)}


def node_config(workdir: Path, model_dir: Path, args: Any, url: str, apikey: str | None, key: str | None) -> Any:
    from node.config import build_config

    return build_config(
        {
            "coordinator_url": url,
            "name": "bench-node",
            "apikey": apikey,
            "models": [MODEL],
            "catalog": {MODEL: {"source": str(model_dir)}},
            "device": "cpu",
            "max_pixels": max(args.width * args.width, 64 * 64),
            "queue_size": 1,
            "threads": 1,
            "pop_wait": 20.0,
            "torch_threads": args.torch_threads,
            "shutdown_grace": 5.0,
            "key_file": "node.key",
            "spool_dir": "spool",
            "coordinator_public_key": key,
        },
        workdir / "node",
    )


def pipeline_cache(config: Any) -> Any:
    """The node's own pipeline cache with the model loaded (shared by the generator loop and the daemon)."""
    from node.catalog import Catalog
    from node.devices import pick_device
    from node.pipelines import PipelineCache
    from node.startup import device_of

    cache = PipelineCache(
        Catalog.from_config(config.catalog_table()), pick_device(device_of(config)), budget_bytes=config.budget_bytes
    )
    cache.preload([MODEL])
    return cache


def generator_loop(config: Any, cache: Any, images: int, width: int, steps: int) -> dict[str, Any]:
    """(a'): the node's own Generator (sampler set-up, prompt handling, seeds) in a loop, no network."""
    from node.jobspec import JobSpec
    from node.startup import default_generator_factory

    generator = default_generator_factory(config)(cache)

    def one(seed: int) -> float:
        payload = {
            "prompt": "a lighthouse on a cliff at dusk ### blurry",
            "ddim_steps": steps,
            "width": width,
            "height": width,
            "seed": str(seed),
            "sampler_name": "k_euler",
            "cfg_scale": 7.5,
            "n_iter": 1,
        }
        started = time.perf_counter()
        generator.run(JobSpec.from_payload(MODEL, payload))
        return time.perf_counter() - started

    one(0)  # warm-up
    started = time.perf_counter()
    per_image = [one(seed) for seed in range(1, images + 1)]
    return {"wall_seconds": round(time.perf_counter() - started, 3), "per_image_ms": summary(per_image)}


def instrument(timings: Timings) -> list[Callable[[], None]]:
    """Wrap the steps the daemon takes per image; returns the undo functions."""
    import node.results
    import node.worker
    from node.coordinator_api import CoordinatorClient
    from node.spool import Spool

    undo: list[Callable[[], None]] = []
    for owner, name, label, is_async in (
        (node.worker, "encode_image", "encode", False),
        (node.results, "ok_entry", "sign", False),
        (Spool, "put", "spool", False),
        (CoordinatorClient, "upload", "upload", True),
        (CoordinatorClient, "submit", "submit", True),
        (CoordinatorClient, "pop", "pop", True),
    ):
        original = getattr(owner, name, None)
        if original is None:
            continue
        wrapped = (timings.wrap_async if is_async else timings.wrap_sync)(label, original)
        setattr(owner, name, wrapped)
        undo.append(functools.partial(setattr, owner, name, original))
    return undo


async def networked(args: Any, model_dir: Path, workdir: Path, cache: Any, report: Report) -> dict[str, Any]:
    """(b): coordinator + the real node daemon, N requests queued up front."""
    from node.daemon import NodeDaemon
    from node.startup import default_generator_factory

    data_dir = workdir / "coordinator"
    timings = Timings()
    async with bench_database(args.db) as db:
        keys = await create_accounts(data_dir, db, ["requester", "owner"], kudos=10_000)
        coordinator = Coordinator(data_dir, db).start()
        undo = instrument(timings)
        try:
            async with Api(coordinator.url, report.errors) as api:
                _, info = await api.call("GET", "/v2/coordinator", label="coordinator")
                config = node_config(workdir, model_dir, args, coordinator.url, keys["owner"], info["public_key"])
                make_generator = default_generator_factory(config)

                def timed_generator(cache: Any) -> Any:
                    generator = make_generator(cache)
                    generator.run = timings.wrap_sync("inference", generator.run)  # type: ignore[method-assign]
                    return generator

                console = signalling_console()
                daemon = NodeDaemon(config, console=console, cache=cache, generator_factory=timed_generator)
                stop = asyncio.Event()
                task = asyncio.create_task(daemon.run_until(stop))
                body = {
                    "prompt": "a lighthouse on a cliff at dusk ### blurry",
                    "models": [MODEL],
                    "params": {
                        "width": args.width,
                        "height": args.width,
                        "steps": args.steps,
                        "n": 1,
                        "sampler_name": "k_euler",
                        "cfg_scale": 7.5,
                    },
                }

                async def submitted(count: int, timeout: float) -> None:
                    console.reached.clear()
                    console.expect(count)
                    reached = asyncio.ensure_future(console.reached.wait())
                    await asyncio.wait({reached, task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                    reached.cancel()
                    if daemon.stats.jobs_submitted < count:
                        raise RuntimeError(f"the node submitted {daemon.stats.jobs_submitted} of {count} images")

                try:
                    await api.call("POST", "/v2/generate/async", body, label="generate", apikey=keys["requester"])
                    await submitted(1, args.timeout)  # model load and warm-up image
                    timings.recording = True
                    started = time.perf_counter()
                    for _ in range(args.images):
                        await api.call("POST", "/v2/generate/async", body, label="generate", apikey=keys["requester"])
                    await submitted(1 + args.images, args.timeout)
                    wall = time.perf_counter() - started
                    timings.recording = False
                    faulted = daemon.stats.jobs_faulted
                finally:
                    stop.set()
                    await asyncio.wait_for(task, 60)
        finally:
            for revert in undo:
                revert()
            coordinator.stop()
    if faulted:
        report.problems.append(f"the node faulted {faulted} jobs")
    steps = {name: summary(values) for name, values in timings.seconds.items()}
    inference = sum(timings.seconds.get("inference", []))
    return {
        "wall_seconds": round(wall, 3),
        "busy_fraction": round(inference / wall, 3),
        "steps_ms": steps,
        "per_image_overhead_ms": round(1000 * (wall - inference) / args.images, 1),
    }


async def main_async(args: Any) -> int:
    config = {key: getattr(args, key) for key in ("images", "width", "steps", "torch_threads")}
    config |= {"db": "postgresql" if args.db else "sqlite", "short": args.short}
    report = Report("node", config)
    missing = node_modules_missing()
    if missing:
        # Nothing measured is a failure, not a pass: the node's stack is a dependency of this project (CI
        # installs it), so a run without it is a broken environment.
        report.problems.append(f"nothing measured: {missing}")
        return report.emit(args.json)
    import torch

    from node.devices import torch_threads

    # (a) runs with the threads the node picks for itself on the CPU (or the ones asked for).
    args.torch_threads = torch_threads(torch.device("cpu"), args.torch_threads)
    torch.set_num_threads(args.torch_threads)
    report.config["torch_threads"] = args.torch_threads
    with temporary_dir(args.keep, "horde-bench-node-") as workdir:
        model_dir = tiny_model(workdir)
        pipe = await asyncio.to_thread(load_bare, model_dir)
        config = node_config(workdir, model_dir, args, "http://127.0.0.1:9", None, None)
        cache = await asyncio.to_thread(pipeline_cache, config)
        # (a) runs before and after (b): on a shared machine the two differ, and their mean is the baseline.
        before = await asyncio.to_thread(bare, pipe, args.images, args.width, args.steps)
        loop = await asyncio.to_thread(generator_loop, config, cache, args.images, args.width, args.steps)
        b = await networked(args, model_dir, workdir, cache, report)
        after = await asyncio.to_thread(bare, pipe, args.images, args.width, args.steps)
    a_wall = (before["wall_seconds"] + after["wall_seconds"]) / 2
    ratio = round(b["wall_seconds"] / a_wall, 3)
    report.results = {
        "bare_before": before,
        "generator_loop": loop,
        "networked": b,
        "bare_after": after,
        "ratio": ratio,
        "ratio_to_generator_loop": round(b["wall_seconds"] / loop["wall_seconds"], 3),
    }
    if ratio > TARGET_RATIO:
        # Full mode measures the target; short mode (2 images, 2 steps) is a sanity run whose ratio means little.
        missed = f"(b)/(a) = {ratio} is over the {TARGET_RATIO} target"
        (report.notes if args.short else report.problems).append(missed)
    if b["busy_fraction"] < TARGET_BUSY:
        missed = f"busy fraction {b['busy_fraction']} is under the {TARGET_BUSY} target"
        (report.notes if args.short else report.problems).append(missed)
    report.tables.append(
        table(
            f"Node overhead ({args.images} images, {args.width}x{args.width}, {args.steps} steps, tiny SD1 on CPU, "
            f"{args.torch_threads} torch threads)",
            ["run", "wall s", "per image ms (p50)", "busy fraction", "(b)/this"],
            [
                ["(a) bare pipeline, before", before["wall_seconds"], before["per_image_ms"].get("p50"), None, None],
                [
                    "(a') node's Generator, no network",
                    loop["wall_seconds"],
                    loop["per_image_ms"].get("p50"),
                    None,
                    report.results["ratio_to_generator_loop"],
                ],
                ["(b) coordinator + node", b["wall_seconds"], None, b["busy_fraction"], None],
                ["(a) bare pipeline, after", after["wall_seconds"], after["per_image_ms"].get("p50"), None, None],
                ["(b) / mean of (a)", None, None, None, ratio],
            ],
        )
    )
    report.tables.append(
        table(
            "Per image inside the node (ms; upload, submit and pop overlap inference when prefetching)",
            ["step", "n", "p50", "p99", "mean"],
            [[name, s["n"], s.get("p50"), s.get("p99"), s.get("mean")] for name, s in b["steps_ms"].items()],
        )
    )
    return report.emit(args.json)


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--width", type=int, default=64, help="width and height (a multiple of 64)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the node")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: the node's own choice)")
    args = parser.parse_args()
    if args.short:
        args.images, args.width, args.steps = min(args.images, 2), 64, 2
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
