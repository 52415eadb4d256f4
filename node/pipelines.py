"""Loading diffusers pipelines once and keeping the recently used ones within a memory budget."""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from diffusers import (
    DiffusionPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

from node.catalog import Baseline, Catalog, ModelSpec
from node.devices import pick_dtype

log = logging.getLogger(__name__)

PipelineKind = Literal["txt2img", "img2img", "inpaint"]
ProgressCallback = Callable[[str, float], None]
Loader = Callable[[ModelSpec, torch.dtype], DiffusionPipeline]
AbortCheck = Callable[[], bool]
_LEASE_POLL_SECONDS = 0.1

_SD_CLASSES: dict[PipelineKind, type[DiffusionPipeline]] = {
    "txt2img": StableDiffusionPipeline,
    "img2img": StableDiffusionImg2ImgPipeline,
    "inpaint": StableDiffusionInpaintPipeline,
}
_SDXL_CLASSES: dict[PipelineKind, type[DiffusionPipeline]] = {
    "txt2img": StableDiffusionXLPipeline,
    "img2img": StableDiffusionXLImg2ImgPipeline,
    "inpaint": StableDiffusionXLInpaintPipeline,
}
PIPELINE_CLASSES: dict[Baseline, dict[PipelineKind, type[DiffusionPipeline]]] = {
    "stable_diffusion_1": _SD_CLASSES,
    "stable_diffusion_2": _SD_CLASSES,
    "stable_diffusion_xl": _SDXL_CLASSES,
}


# diffusers and accelerate build models under init_empty_weights, which patches torch.nn.Module for the
# whole process: two loads on different threads leave each other's (and every later) module on the meta
# device. Everything in the node that builds or loads modules holds this lock.
MODULE_BUILD_LOCK = threading.Lock()


class LeaseAbandoned(Exception):
    """should_abort fired while waiting for a model another job was using."""


class ModelLoadError(RuntimeError):
    """The weights of a catalogued model could not be loaded (missing, offline, corrupt, wrong baseline)."""


def load_pipeline(spec: ModelSpec, dtype: torch.dtype) -> DiffusionPipeline:
    """Load the txt2img pipeline of `spec` on the CPU, the way diffusers' docs show for each source kind.

    Hub ids download on first use (with huggingface_hub's own progress bar) into the HF cache.
    """
    cls = PIPELINE_CLASSES[spec.baseline]["txt2img"]
    components: dict[str, object] = {}
    if spec.baseline != "stable_diffusion_xl":
        # Censoring is not this layer's job: SD 1/2's checker would black out images without telling anyone.
        components = {"safety_checker": None, "requires_safety_checker": False}
    source = str(Path(spec.source).expanduser())
    if not spec.is_single_file and not spec.is_local:
        # Downloading can take minutes, so it happens before taking the lock; passing the checker as None
        # also skips downloading its weights.
        source = cls.download(spec.source, revision=spec.revision, **components)
    with MODULE_BUILD_LOCK:
        if spec.is_single_file:
            pipe = cls.from_single_file(source, dtype=dtype, **components)
        else:
            pipe = cls.from_pretrained(source, dtype=dtype, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_bytes(pipe: DiffusionPipeline) -> int:
    """Memory held by the pipeline's weights and buffers, the part that matters for the budget."""
    total = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            tensors = [*component.parameters(), *component.buffers()]
            total += sum(t.numel() * t.element_size() for t in tensors)
    return total


@dataclass
class _Entry:
    base: DiffusionPipeline
    size_bytes: int
    derived: dict[PipelineKind, DiffusionPipeline] = field(default_factory=dict)


class PipelineCache:
    """Loaded pipelines by model, least recently used evicted when over `budget_bytes`.

    img2img and inpaint pipelines are built from the txt2img pipeline's components, so they cost no
    extra memory. A short-held lock guards the table; each model also has its own lock, held while it
    loads and (through `lease`) while a job runs on it, so a slow load never blocks jobs on other models.
    """

    def __init__(
        self,
        catalog: Catalog,
        device: torch.device,
        dtype: torch.dtype | None = None,
        budget_bytes: int | None = None,
        loader: Loader = load_pipeline,
    ) -> None:
        self.catalog = catalog
        self.device = device
        self.dtype = dtype or pick_dtype(device)
        self.budget_bytes = budget_bytes
        self._loader = loader
        self._entries: OrderedDict[ModelSpec, _Entry] = OrderedDict()
        self._model_locks: dict[ModelSpec, threading.RLock] = {}
        self._lock = threading.Lock()

    def get(self, spec: ModelSpec, kind: PipelineKind = "txt2img") -> DiffusionPipeline:
        """The pipeline of `kind` for `spec`, loading the model if it isn't resident."""
        with self._model_lock(spec):
            with self._lock:
                entry = self._entries.get(spec)
                if entry is not None:
                    self._entries.move_to_end(spec)
            if entry is None:
                entry = self._load(spec)
            return self._pipeline(spec, entry, kind)

    @contextmanager
    def lease(
        self, spec: ModelSpec, kind: PipelineKind = "txt2img", should_abort: AbortCheck | None = None
    ) -> Iterator[DiffusionPipeline]:
        """The pipeline, held exclusively: a job patches the shared modules (sampler, LoRAs, tiling).

        Waiting for another job on the same model polls `should_abort`, so a watchdog can still stop
        it; LeaseAbandoned is raised then.
        """
        lock = self._model_lock(spec)
        while not lock.acquire(timeout=_LEASE_POLL_SECONDS):
            if should_abort and should_abort():
                raise LeaseAbandoned(f"gave up waiting for model {spec.name!r}, busy with another job")
        try:
            yield self.get(spec, kind)
        finally:
            lock.release()

    def preload(self, names: Iterable[str], progress: ProgressCallback | None = None) -> dict[str, str]:
        """Load the named models now; returns `{name: reason}` for those that failed (the rest are ready).

        `progress(name, fraction)` is called with 0.0 before and 1.0 after each model.
        """
        failed: dict[str, str] = {}
        for name in names:
            if progress:
                progress(name, 0.0)
            try:
                self.get(self.catalog.resolve(name))
            except Exception as error:  # a broken model must not stop the others from loading
                failed[name] = f"{type(error).__name__}: {error}"
                log.warning("could not load model %s: %s", name, failed[name])
            if progress:
                progress(name, 1.0)
        return failed

    def loaded(self) -> list[str]:
        """Names of the resident models, least recently used first."""
        with self._lock:
            return [spec.name for spec in self._entries]

    def used_bytes(self) -> int:
        with self._lock:
            return self._used()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
        self._release_memory()

    def _load(self, spec: ModelSpec) -> _Entry:
        log.info("loading model %s from %s", spec.name, spec.source)
        try:
            # Loaded on the CPU first so the budget can make room on the device before it moves there.
            pipe = self._loader(spec, self.dtype)
        except Exception as error:
            raise ModelLoadError(f"could not load model {spec.name!r} from {spec.source}: {error}") from error
        entry = _Entry(base=pipe, size_bytes=pipeline_bytes(pipe))
        with self._lock:
            evicted = self._make_room(entry.size_bytes)
        if evicted:
            self._release_memory()
        pipe.to(self.device)
        with self._lock:
            self._entries[spec] = entry
        return entry

    def _model_lock(self, spec: ModelSpec) -> threading.RLock:
        with self._lock:
            return self._model_locks.setdefault(spec, threading.RLock())

    def _make_room(self, incoming: int) -> bool:
        """Evict least recently used models until `incoming` fits; the caller holds the table lock."""
        if self.budget_bytes is None:
            return False
        evicted = False
        while self._entries and self._used() + incoming > self.budget_bytes:
            spec, _ = self._entries.popitem(last=False)
            log.info("evicting model %s to stay within the memory budget", spec.name)
            evicted = True
        return evicted

    def _used(self) -> int:
        return sum(entry.size_bytes for entry in self._entries.values())

    def _pipeline(self, spec: ModelSpec, entry: _Entry, kind: PipelineKind) -> DiffusionPipeline:
        if kind == "txt2img":
            return entry.base
        if kind not in entry.derived:
            cls = PIPELINE_CLASSES[spec.baseline][kind]
            # from_pipe casts to float32 unless told the dtype, which would upcast the shared modules.
            derived = cls.from_pipe(entry.base, dtype=entry.base.dtype)
            derived.set_progress_bar_config(disable=True)
            entry.derived[kind] = derived
        return entry.derived[kind]

    def _release_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
