"""The node's content policy: which prompts it refuses, and which images it censors before they leave.

The operator decides (the project's "freedom of use decided locally"): `nsfw` off means every image is
checked, on means only those whose requester asked for `censor_nsfw`; the word blacklist is refused
outright. The check is diffusers' StableDiffusionSafetyChecker (a CLIP vision model compared with
concept embeddings), loaded from a hub id or a folder like any model. A flagged image is replaced by
a placeholder of the same size and submitted as AI Horde's workers do: state `censored`,
`censored: true` and a `{"type": "censorship", "value": "nsfw"}` gen_metadata entry.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image, ImageDraw
from transformers import CLIPImageProcessor

from node.devices import pick_dtype
from node.jobspec import JobRejected, JobSpec
from node.pipelines import MODULE_BUILD_LOCK

CENSORSHIP_METADATA = {"type": "censorship", "value": "nsfw"}
_PLACEHOLDER_BACKGROUND = (40, 40, 40)
_PLACEHOLDER_TEXT = (220, 220, 220)
# The checker warns that it returns a black image: the node uses only its verdict (and sends a placeholder).
logging.getLogger("diffusers.pipelines.stable_diffusion.safety_checker").setLevel(logging.ERROR)


@dataclass(frozen=True)
class ContentPolicy:
    """What this node's operator allows: NSFW images or not, and prompt words it never runs."""

    nsfw: bool = False
    blacklist: tuple[str, ...] = ()

    def must_check(self, censor_requested: bool) -> bool:
        return censor_requested or not self.nsfw

    def blacklisted(self, prompt: str) -> str | None:
        """The first blacklisted word the prompt contains (case-insensitive, as the coordinator matches)."""
        text = prompt.lower()
        return next((word for word in self.blacklist if word and word.lower() in text), None)


def check_policy(job: JobSpec, policy: ContentPolicy, *, has_checker: bool) -> bool:
    """Whether the job's images go through the safety checker; JobRejected for what the policy forbids."""
    word = policy.blacklisted(f"{job.prompt} {job.negative_prompt or ''}")
    if word is not None:
        raise JobRejected(f"the prompt contains {word!r}, which this node's operator does not run")
    if job.censor_nsfw and not has_checker:
        raise JobRejected("censor_nsfw needs a safety checker, and this node has none")
    # Without a checker a node that refuses NSFW relies on the coordinator sending it none.
    return policy.must_check(job.censor_nsfw) and has_checker


class SafetyChecker:
    """StableDiffusionSafetyChecker and its CLIP image processor from `source`, loaded on first use."""

    def __init__(self, source: str, device: torch.device) -> None:
        self.source = source
        self.device = device
        self._model: StableDiffusionSafetyChecker | None = None
        self._processor: CLIPImageProcessor | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            source = str(Path(self.source).expanduser()) if Path(self.source).expanduser().exists() else self.source
            with MODULE_BUILD_LOCK:
                processor = CLIPImageProcessor.from_pretrained(source)
                model = StableDiffusionSafetyChecker.from_pretrained(source, dtype=pick_dtype(self.device))
            self._processor, self._model = processor, model.to(self.device).eval()

    @torch.no_grad()
    def flags(self, images: list[Image.Image]) -> list[bool]:
        """Whether each image shows a concept the checker is set to catch."""
        self.load()
        assert self._model is not None and self._processor is not None
        features = self._processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
        clip_input = features.pixel_values.to(self.device, self._model.dtype)
        pixels = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255 for image in images]
        _, flagged = self._model(clip_input=clip_input, images=pixels)
        return [bool(flag) for flag in flagged]


def placeholder(size: tuple[int, int]) -> Image.Image:
    """What a censored image is replaced with: a plain card of the same size that says so."""
    image = Image.new("RGB", size, _PLACEHOLDER_BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((size[0] / 2, size[1] / 2), "censored", fill=_PLACEHOLDER_TEXT, anchor="mm")
    return image
