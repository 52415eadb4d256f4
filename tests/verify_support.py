"""Nodes for the verification tests and bench/verify.py (a plain module): honest ones of a hardware class,
and cheaters, all speaking pop/submit over real HTTP and making their images with the real tiny pipeline."""

from __future__ import annotations

import asyncio
import io
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from node.devices import hardware_class
from node.inference import Generator, encode_image
from node.jobspec import JobSpec
from node.pipelines import PipelineCache
from tests.fixtures_models import tiny_catalog
from tests.helpers import Reply, SimWorker

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
