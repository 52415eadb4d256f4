"""The sampler and source-processing names of the AI Horde image API."""

from collections.abc import Sequence
from typing import Literal, get_args

SamplerName = Literal[
    "k_lms",
    "k_heun",
    "k_euler",
    "k_euler_a",
    "k_dpm_2",
    "k_dpm_2_a",
    "k_dpm_fast",
    "k_dpm_adaptive",
    "k_dpmpp_2s_a",
    "k_dpmpp_2m",
    "dpmsolver",
    "k_dpmpp_sde",
    "DDIM",
    "lcm",
]

# Second-order samplers evaluate the model twice per step, so a step costs double.
SECOND_ORDER_SAMPLERS = frozenset({"k_heun", "k_dpm_2", "k_dpm_2_a", "k_dpmpp_sde", "k_dpm_adaptive"})

SourceProcessing = Literal["txt2img", "img2img", "inpainting", "outpainting"]

GenerationState = Literal["ok", "censored", "faulted", "csam"]

# AI Horde's ControlNet types (horde-sdk's KNOWN_IMAGE_CONTROLNETS).
ControlType = Literal["canny", "hed", "depth", "normal", "openpose", "seg", "scribble", "fakescribbles", "hough"]
CONTROL_TYPES: tuple[str, ...] = get_args(ControlType)

# AI Horde's post-processor names (its API refuses others): upscalers, face fixers, and the rest.
UPSCALERS = ("RealESRGAN_x4plus", "RealESRGAN_x2plus", "RealESRGAN_x4plus_anime_6B", "NMKD_Siax", "4x_AnimeSharp")
# The factor each upscaler scales by: a node's result must have the job's size times these (the
# coordinator checks it; a node refuses weights whose scale differs). Other post-processors keep the size.
UPSCALE_FACTORS = {
    "RealESRGAN_x4plus": 4,
    "RealESRGAN_x2plus": 2,
    "RealESRGAN_x4plus_anime_6B": 4,
    "NMKD_Siax": 4,
    "4x_AnimeSharp": 4,
}
FACEFIXERS = ("GFPGAN", "CodeFormers")
PostProcessor = Literal[
    "RealESRGAN_x4plus",
    "RealESRGAN_x2plus",
    "RealESRGAN_x4plus_anime_6B",
    "NMKD_Siax",
    "4x_AnimeSharp",
    "GFPGAN",
    "CodeFormers",
    "strip_background",
]
POST_PROCESSORS: tuple[str, ...] = get_args(PostProcessor)
# AI Horde's orders (node/postprocess.py's in_order); `custom`: exactly as listed.
PostProcessingOrder = Literal["facefixers_first", "upscalers_first", "custom"]
POST_PROCESSING_ORDERS: tuple[str, ...] = get_args(PostProcessingOrder)


def post_processor_mask(names: Sequence[str]) -> int:
    """Post-processor names as bits (one per AI Horde name), so "the node runs every one the job asks
    for" is one integer test, in SQL as in Python (coordinator/capabilities.py)."""
    return sum(1 << POST_PROCESSORS.index(name) for name in set(names))
