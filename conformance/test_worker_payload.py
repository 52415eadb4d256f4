"""The pop payload as AI Horde's workers read it (issue 12, item 1): horde-sdk 0.33.3's own worker-side
conversion (`convert_image_job_pop_response_to_parameters`, the path AI Horde's reGen worker takes) turns
our pop into the same generation parameters as it turns AI Horde's payload for the same request.

AI Horde's payload is built here by its rule: the request's `params` as sent, plus `prompt` (the
negative after "###"), `ddim_steps`, `n_iter`, `seed` and `use_nsfw_censor`.
"""

import asyncio
import base64
import io
from typing import Any

import aiohttp
from horde_sdk.ai_horde_api.ai_horde_clients import AIHordeAPIManualClient
from horde_sdk.ai_horde_api.apimodels import (
    ImageGenerateAsyncRequest,
    ImageGenerateAsyncResponse,
    ImageGenerateJobPopRequest,
    ImageGenerateJobPopResponse,
    ImageGenerationInputPayload,
)
from horde_sdk.worker.dispatch.ai_horde.image.convert import convert_image_job_pop_response_to_parameters
from PIL import Image

from conformance.sdk import MODEL, SDK_AGENT, Live

PARAMS: dict[str, Any] = {
    "width": 64,
    "height": 64,
    "steps": 12,
    "n": 1,
    "seed": "42",
    "sampler_name": "k_dpmpp_2m",
    "cfg_scale": 6.5,
    "karras": True,
    "clip_skip": 2,
    "tiling": True,
    "denoising_strength": 0.55,
    "hires_fix": True,
    "hires_fix_denoising_strength": 0.4,
    "loras": [{"name": "12345", "model": 0.8, "clip": 0.6, "is_version": True, "inject_trigger": "any"}],
    "tis": [{"name": "negfix", "inject_ti": "negprompt", "strength": 0.5}],
    "post_processing": ["RealESRGAN_x2plus", "GFPGAN"],
    "facefixer_strength": 0.3,
    "control_type": "canny",
    "image_is_control": True,
    "return_control_map": False,
}
PROMPT = "a castle on a hill ### fog, blurry"
# The defaults of AI Horde's `ModelPayloadStable` (horde/apis/models/stable_v2.py), which its pop answer
# carries for a field the request left out.
AI_HORDE_PAYLOAD_DEFAULTS: dict[str, Any] = {
    "sampler_name": "k_euler_a",
    "cfg_scale": 7.5,
    "height": 512,
    "width": 512,
    "karras": False,
    "tiling": False,
    "hires_fix": False,
    "image_is_control": False,
    "return_control_map": False,
}


class NoModelReference:
    """The SDK asks its model reference for the model's baseline; the tiny test model has none."""

    def query(self, *_args: Any) -> "NoModelReference":
        return self

    def where(self, **_kwargs: Any) -> "NoModelReference":
        return self

    def first(self) -> None:
        return None


def source_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 40)).save(buffer, "WEBP")
    return base64.b64encode(buffer.getvalue()).decode()


def ai_horde_form(ours: ImageGenerateJobPopResponse, params: dict[str, Any], censor: bool) -> dict[str, Any]:
    """The pop AI Horde would answer for the same request and the same job ids and URLs: the params the
    SDK sent (it leaves out what was not set), over the defaults AI Horde's payload model fills in."""
    payload = AI_HORDE_PAYLOAD_DEFAULTS | {key: value for key, value in params.items() if key not in ("steps", "n")}
    payload.update(prompt=PROMPT, ddim_steps=params["steps"], n_iter=params["n"], use_nsfw_censor=censor)
    answer = ours.model_dump(mode="json", by_alias=True, exclude_none=True)
    answer["payload"] = payload
    return answer


def converted(response: ImageGenerateJobPopResponse) -> dict[str, Any]:
    async def download() -> None:
        async with aiohttp.ClientSession() as session:
            await response.async_download_source_image(session)

    if response.source_image:
        asyncio.run(download())
    result = convert_image_job_pop_response_to_parameters(response, NoModelReference())  # type: ignore[arg-type]
    assert not result.faults, result.faults
    return result.generation_parameters.model_dump()


def submit_and_pop(live: Live, params: dict[str, Any], source: str | None, censor: bool) -> ImageGenerateJobPopResponse:
    client = AIHordeAPIManualClient()
    request = ImageGenerateAsyncRequest(
        apikey=live.requester_key,
        prompt=PROMPT,
        models=[MODEL],
        nsfw=not censor,
        censor_nsfw=censor,
        source_image=source,
        source_processing="img2img" if source else "txt2img",
        params=ImageGenerationInputPayload(**params),
    )
    accepted = client.submit_request(request, ImageGenerateAsyncResponse)
    assert isinstance(accepted, ImageGenerateAsyncResponse), accepted
    pop = ImageGenerateJobPopRequest(
        apikey=live.worker_key,
        name="regen-like",
        models=[MODEL],
        max_pixels=1024 * 1024,
        bridge_agent=SDK_AGENT,
        nsfw=True,
        allow_img2img=True,
        allow_painting=True,
        allow_lora=True,
        allow_controlnet=True,
        allow_post_processing=True,
        extra_slow_worker=False,
    )
    popped = client.submit_request(pop, ImageGenerateJobPopResponse)
    assert isinstance(popped, ImageGenerateJobPopResponse) and popped.ids, popped
    return popped


def test_every_parameter_arrives_where_a_regen_worker_reads_it(live: Live) -> None:
    ours = submit_and_pop(live, PARAMS, source_b64(), censor=True)
    theirs = ImageGenerateJobPopResponse.model_validate(ai_horde_form(ours, PARAMS, censor=True))
    mine, reference = converted(ours), converted(theirs)
    assert_same(mine, reference)
    # And the values themselves, where the worker reads them.
    base = mine["base_params"]
    assert (base["prompt"].strip(), base["negative_prompt"].strip()) == ("a castle on a hill", "fog, blurry")
    assert base["denoising_strength"] == 0.55 and base["steps"] == 12 and base["clip_skip"] == 2
    components = {type(c).__name__ for c in ours_components(ours)}
    assert {"Image2ImageGenerationParameters", "ControlnetGenerationParameters", "LoRaEntry", "TIEntry"} <= components
    assert ours.payload.loras is not None and ours.payload.loras[0].is_version
    assert ours.payload.loras[0].inject_trigger == "any" and ours.payload.use_nsfw_censor


def test_a_plain_txt2img_request_converts_alike(live: Live) -> None:
    plain = {"width": 64, "height": 64, "steps": 4, "n": 1, "seed": "7", "sampler_name": "k_euler"}
    ours = submit_and_pop(live, plain, None, censor=False)
    theirs = ImageGenerateJobPopResponse.model_validate(ai_horde_form(ours, plain, censor=False))
    assert_same(converted(ours), converted(theirs))
    assert converted(ours)["base_params"]["negative_prompt"].strip() == "fog, blurry"


def ours_components(response: ImageGenerateJobPopResponse) -> list[Any]:
    result = convert_image_job_pop_response_to_parameters(response, NoModelReference())  # type: ignore[arg-type]
    return list(result.generation_parameters.additional_params.components)


def assert_same(mine: dict[str, Any], reference: dict[str, Any]) -> None:
    differing = {
        key: (mine[key], reference[key]) for key in mine if key != "base_params" and mine[key] != reference[key]
    }
    base = mine["base_params"]
    differing |= {
        key: (base[key], reference["base_params"][key]) for key in base if base[key] != reference["base_params"][key]
    }
    assert not differing, differing
