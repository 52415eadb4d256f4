"""Nodes for the verification tests and bench/verify.py (a plain module): honest ones of a hardware class,
and cheaters, all speaking pop/submit over real HTTP and making their images with the real tiny pipeline."""

from __future__ import annotations

import asyncio
import io
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from coordinator.config import VerificationSettings
from node.devices import hardware_class
from node.inference import Generator, encode_image
from node.jobspec import JobSpec
from node.pipelines import PipelineCache
from tests.api_support import custom_coordinator, fetch_all, node, requester
from tests.conftest import RunningCoordinator, TestAccount
from tests.fixtures_models import tiny_catalog
from tests.helpers import Api, Reply, SimWorker

CPU = torch.device("cpu")
CHEATS = ("noise", "quarter", "seed", "cached")


def tiny_generator(tiny: Path, dtype: torch.dtype) -> Generator:
    return Generator(PipelineCache(tiny_catalog(tiny), CPU, dtype=dtype), CPU)


def class_of(dtype: torch.dtype) -> str:
    return hardware_class(CPU, dtype, torch.get_num_threads(), "webp-95")


@dataclass
class TinyNode:
    """A node over real HTTP whose images come from the tiny pipeline, honest unless `cheat` says how not to
    be (on a fraction `rate` of its jobs, or only on the jobs numbered in `on_jobs`)."""

    worker: SimWorker
    generator: Generator
    cheat: str | None = None
    rate: float = 1.0
    on_jobs: set[int] | None = None
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    jobs: int = 0
    cheated: int = 0
    cached: bytes | None = None

    @classmethod
    def of(cls, worker: SimWorker, generator: Generator, dtype: torch.dtype, **kw: Any) -> TinyNode:
        worker.extra["hardware"] = class_of(dtype)
        return cls(worker, generator, **kw)

    def make(self, model: str, payload: dict[str, Any]) -> bytes:
        """The job's image as this node makes it (on a thread: inference takes a while)."""
        cheating = self.cheat is not None and (
            self.jobs in self.on_jobs if self.on_jobs is not None else self.rng.random() < self.rate
        )
        self.jobs += 1
        self.cheated += cheating
        return self._image(model, payload, self.cheat if cheating else None)

    def _image(self, model: str, payload: dict[str, Any], cheat: str | None) -> bytes:
        width, height = payload["width"], payload["height"]
        if cheat == "noise":
            pixels = np.random.default_rng(self.jobs).integers(0, 256, (height, width, 3), dtype=np.uint8)
            return encode_image(Image.fromarray(pixels))
        if cheat == "cached" and self.cached is not None:
            return self.cached
        changed = dict(payload)
        if cheat == "quarter":
            changed["ddim_steps"] = max(1, payload["ddim_steps"] // 4)
        elif cheat == "seed":
            changed["seed"] = str(int(payload["seed"]) + 1)
        elif cheat == "cached":  # the first image it made (for a seed no job asks for), kept and sent again
            changed["seed"] = str(int(payload["seed"]) + 10**6)
        image = self.generator.run(JobSpec.from_payload(model, changed))[0].image
        assert image is not None
        data = encode_image(image)
        if cheat == "cached":
            self.cached = data
        return data

    async def serve_one(self, wait: float = 0.0) -> Reply | None:
        """Pop one job and answer it; None when no job came."""
        popped = await self.worker.pop(wait=wait)
        assert popped.status == 200, popped.body
        if not popped.body["ids"]:
            return None
        document = popped.body["jobs"][0]["document"]
        data = await asyncio.to_thread(self.make, document["model"], document["payload"])
        with Image.open(io.BytesIO(data)) as check:
            assert check.size == (document["payload"]["width"], document["payload"]["height"])
        return await self.worker.submit(popped.body["ids"][0], document["payload"]["seed"], image=data)


WINDOW = 3600.0
ALWAYS = VerificationSettings(enabled=True, window=WINDOW, new_rate=1.0, settled_rate=1.0, suspect_rate=1.0)


@dataclass
class Network:
    coordinator: RunningCoordinator
    payer: Api
    owners: dict[str, TestAccount]
    nodes: dict[str, TinyNode]

    async def serve(self, *names: str) -> None:
        """Each named node in turn pops and answers one job, which must be there."""
        for name in names:
            reply = await self.nodes[name].serve_one()
            assert reply is not None and reply.status == 200, (name, reply)

    async def verdicts(self) -> dict[str, list[str]]:
        rows = await fetch_all(
            self.coordinator,
            "SELECT w.name, v.outcome FROM verdicts v JOIN workers w ON w.id = v.worker_id ORDER BY v.id",
        )
        found: dict[str, list[str]] = {}
        for row in rows:
            found.setdefault(row["name"], []).append(row["outcome"])
        return found

    async def held(self, name: str) -> tuple[float, float]:
        reply = await Api(self.coordinator.url, apikey=self.owners[name].apikey).get("/v2/find_user")
        return reply.body["kudos"], reply.body["held_kudos"]


@asynccontextmanager
async def network(
    tmp_path: Path,
    database_url: str | None,
    tiny_model_dir: Path,
    cheat: str | None = None,
    settings: VerificationSettings = ALWAYS,
    **cheater: Any,
) -> AsyncIterator[Network]:
    """Honest nodes `f32` (float32) and `bf16` (bfloat16), and `cheater` (float32) cheating as told; one owner each."""
    async with custom_coordinator(tmp_path, database_url, verification=settings) as coordinator:
        payer = requester(coordinator, await coordinator.create_account("payer", kudos=1000))
        owners = {name: await coordinator.create_account(f"owner-{name}") for name in ("f32", "bf16", "cheater")}
        f32, bf16 = tiny_generator(tiny_model_dir, torch.float32), tiny_generator(tiny_model_dir, torch.bfloat16)
        nodes = {
            "f32": TinyNode.of(node(coordinator, owners["f32"], "f32"), f32, torch.float32),
            "bf16": TinyNode.of(node(coordinator, owners["bf16"], "bf16"), bf16, torch.bfloat16),
            "cheater": TinyNode.of(
                node(coordinator, owners["cheater"], "cheater"), f32, torch.float32, cheat=cheat, **cheater
            ),
        }
        yield Network(coordinator, payer, owners, nodes)


async def audit_ok(coordinator: RunningCoordinator) -> None:
    report = await coordinator.broker.bank.audit()
    assert report.ok, report.problems
