"""The sampler and source-processing names of the AI Horde image API."""

from typing import Literal

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
PAINTING = frozenset({"inpainting", "outpainting"})

GenerationState = Literal["ok", "censored", "faulted", "csam"]
