"""Model baselines: the architecture family a model name stands for.

A ControlNet or a textual inversion is trained for one baseline, so what a node can do with a job
depends on the baseline of the model it runs it on. A node of ours declares the baseline of each model
it serves (its catalog knows the pipeline); for a node that does not (an AI Horde worker, which runs
models from AI Horde's image model reference), the coordinator looks the name up in `REFERENCE`, and a
name it does not know counts as SD 1.x, as AI Horde counts it.
"""

from typing import Literal

SD1 = "stable_diffusion_1"
SD2 = "stable_diffusion_2"
SDXL = "stable_diffusion_xl"
CASCADE = "stable_cascade"
FLUX = "flux_1"
FAMILIES = (SD1, SD2, SDXL, CASCADE, FLUX)

# The names a pop may declare: ours (node/catalog.py) and AI Horde's reference spellings, old and new.
BaselineName = Literal[
    "stable_diffusion_1",
    "stable diffusion 1",
    "stable_diffusion_2",
    "stable_diffusion_2_768",
    "stable_diffusion_2_512",
    "stable diffusion 2",
    "stable diffusion 2 512",
    "stable_diffusion_xl",
    "stable_cascade",
    "flux_1",
]
_FAMILY_OF_NAME = {
    "stable diffusion 1": SD1,
    "stable_diffusion_2_768": SD2,
    "stable_diffusion_2_512": SD2,
    "stable diffusion 2": SD2,
    "stable diffusion 2 512": SD2,
    **{family: family for family in FAMILIES},
}

# Well-known names of AI Horde's image model reference and of node/catalog.py's built-in table, with
# their baselines (facts of those models, not a copy of the reference; extend it as models come).
REFERENCE: dict[str, str] = {
    "stable_diffusion": SD1,
    "Deliberate": SD1,
    "Dreamshaper": SD1,
    "Anything Diffusion": SD1,
    "Realistic Vision": SD1,
    "stable_diffusion_inpainting": SD1,
    "stable_diffusion_2.1": SD2,
    "sd-turbo": SD2,
    "SDXL 1.0": SDXL,
    "AlbedoBase XL (SDXL)": SDXL,
    "Juggernaut XL": SDXL,
    "Pony Diffusion XL": SDXL,
    "Stable Cascade 1.0": CASCADE,
    "Flux.1-Schnell fp8 (Compact)": FLUX,
}
UNKNOWN_MODEL_FAMILY = SD1  # AI Horde's rule for a name its reference lacks


def family(name: str) -> str:
    """The family of a declared baseline name (any spelling of BaselineName)."""
    return _FAMILY_OF_NAME[name]


def reference_family(model: str) -> str:
    """A model name's family by the reference (SD 1.x for a name it does not hold)."""
    return REFERENCE.get(model, UNKNOWN_MODEL_FAMILY)
