"""The kudos price of an image: one pure function, shared by coordinator, node and client.

Calibrated to AI Horde's published scale (512²/30 steps ≈ 7.6, 512²/50 ≈ 11.0,
1024²/30 ≈ 20.6, 2048²/30 ≈ 114.5). The shape follows the cost of the work:

    kudos = BASE + steps × (PER_STEP + PER_STEP_AREA × area^AREA_EXPONENT)

where `area` is the image's pixels relative to 512×512. The BASE covers the per-image
overhead (loading the text encoder, VAE decode, transfer); a step costs a fixed part plus a
part that grows faster than linearly with pixels, because self-attention in the UNet is
quadratic in the number of latent tokens. The fit reproduces all four reference points
within 1%. Modifiers: second-order samplers evaluate the model twice per step (steps ×2);
img2img ×1.3 (AI Horde's surcharge for decoding and encoding the source); +3 per LoRA (its
download and load); +20% per post-processor (upscalers and face fixers cost about a fifth
of a base image each); +10% for a request that names its nodes (`workers`, as an allow- or a
blocklist: AI Horde charges 10% extra for a worker blocklist; here a list of either kind costs
it, since pinning is how a node's owner would steer requests to their own node).
"""

from collections.abc import Sequence

from protocol.samplers import SECOND_ORDER_SAMPLERS

BASE = 2.5
PER_STEP = 0.1
PER_STEP_AREA = 0.07
AREA_EXPONENT = 1.425
REFERENCE_PIXELS = 512 * 512
IMG2IMG_FACTOR = 1.3
LORA_SURCHARGE = 3.0
POST_PROCESSOR_FACTOR = 0.2
PINNED_FACTOR = 1.1

# Requests above these need their cost available up front (AI Horde's rule).
UPFRONT_PIXELS = 1024 * 1024
UPFRONT_STEPS = 50


def image_kudos(
    *,
    width: int,
    height: int,
    steps: int,
    sampler_name: str = "k_euler_a",
    img2img: bool = False,
    loras: int = 0,
    post_processors: Sequence[str] = (),
    pinned: bool = False,
) -> float:
    """The price of one image, rounded to two decimals."""
    area = width * height / REFERENCE_PIXELS
    effective_steps = steps * (2 if sampler_name in SECOND_ORDER_SAMPLERS else 1)
    kudos = BASE + effective_steps * (PER_STEP + PER_STEP_AREA * area**AREA_EXPONENT)
    if img2img:
        kudos *= IMG2IMG_FACTOR
    kudos *= 1 + POST_PROCESSOR_FACTOR * len(post_processors)
    kudos += LORA_SURCHARGE * loras
    if pinned:
        kudos *= PINNED_FACTOR
    return round(float(kudos), 2)


def needs_upfront_kudos(*, width: int, height: int, steps: int) -> bool:
    return width * height > UPFRONT_PIXELS or steps > UPFRONT_STEPS


def job_time_limit(*, width: int, height: int, steps: int) -> int:
    """Seconds a node has for one image before it is reissued (AI Horde's rule, at least 150 s)."""
    return max(150, int(30 + 2 * steps * (width * height / REFERENCE_PIXELS)))
