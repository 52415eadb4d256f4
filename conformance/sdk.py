"""horde-sdk 0.33.3 against a live coordinator: where it points, and a worker made only of its models.

horde-sdk reads its API address once, from `AI_HORDE_URL`, when `horde_sdk.ai_horde_api.endpoints` is
imported, and every request class asks `get_api_url()`, which returns the module global
`horde_sdk.ai_horde_api.apimodels.base.AI_HORDE_BASE_URL` at call time; `point_sdk_at` swaps that global
(and the `endpoints` one) for a test's coordinator. Strict mode (the SDK's models forbid unknown fields)
is on for the whole suite: conftest.py sets `TESTS_ONGOING` before the SDK is first imported.
"""

import io
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import requests
from PIL import Image

SDK_AGENT = "horde-sdk conformance worker:1:conformance"
MODEL = "tiny-sd"
# What an upscaler does to the image's size, as a worker knows it (the coordinator checks the size it gets).
UPSCALERS = {
    "RealESRGAN_x4plus": 4,
    "RealESRGAN_x2plus": 2,
    "RealESRGAN_x4plus_anime_6B": 4,
    "NMKD_Siax": 4,
    "4x_AnimeSharp": 4,
}


@dataclass(frozen=True)
class Live:
    """A coordinator started by conformance/live.py, and its accounts."""

    api_url: str  # ends in /api/
    base_url: str
    engine: str
    requester_key: str
    requester_id: int
    worker_key: str
    worker_owner_id: int
    moderator_key: str
    moderator_id: int


@contextmanager
def point_sdk_at(api_url: str) -> Iterator[None]:
    import horde_sdk.ai_horde_api.apimodels.base as base
    import horde_sdk.ai_horde_api.endpoints as endpoints
    from horde_sdk.ai_horde_api.apimodels import ImageGenerateAsyncRequest

    assert api_url.endswith("/api/"), api_url
    saved = base.AI_HORDE_BASE_URL, endpoints.AI_HORDE_BASE_URL
    base.AI_HORDE_BASE_URL = endpoints.AI_HORDE_BASE_URL = api_url
    try:
        assert ImageGenerateAsyncRequest.get_api_endpoint_url().startswith(api_url)  # never the public Horde
        yield
    finally:
        base.AI_HORDE_BASE_URL, endpoints.AI_HORDE_BASE_URL = saved


def webp(color: tuple[int, int, int] = (30, 120, 200), size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="WEBP")
    return buffer.getvalue()


@dataclass
class SdkWorker:
    """A worker as reGen drives one: the SDK's pop and submit models, the image PUT to `r2_upload`,
    `generation="R2"`; only an apikey (no signature)."""

    client: object  # AIHordeAPIManualClient
    apikey: str
    name: str
    models: list[str] = field(default_factory=lambda: [MODEL])
    rewards: list[float] = field(default_factory=list)
    # How long each image takes, as a GPU's fixed cost per image (decode, checks, upload) makes a real
    # worker take seconds even at 1 step; 0: at once.
    seconds_per_image: float = 0.0
    stopped: threading.Event = field(default_factory=threading.Event)

    def pop(self, amount: int = 1) -> object:
        from horde_sdk.ai_horde_api.apimodels import ImageGenerateJobPopRequest, ImageGenerateJobPopResponse

        request = ImageGenerateJobPopRequest(
            apikey=self.apikey,
            name=self.name,
            models=self.models,
            max_pixels=2048 * 2048,
            amount=amount,
            bridge_agent=SDK_AGENT,
            nsfw=True,
            allow_painting=True,
            allow_img2img=True,
            allow_lora=True,
            allow_post_processing=True,
        )
        answer = self.client.submit_request(request, ImageGenerateJobPopResponse)
        assert isinstance(answer, ImageGenerateJobPopResponse), answer
        return answer

    def serve(self, popped: object) -> None:
        """Make (a solid colour for) every image of a pop, upload it and submit it."""
        from horde_sdk.ai_horde_api.apimodels import ImageGenerationJobSubmitRequest, JobSubmitResponse
        from horde_sdk.ai_horde_api.consts import GENERATION_STATE

        assert popped.r2_uploads is not None and len(popped.r2_uploads) == len(popped.ids)
        for index, (job_id, url) in enumerate(zip(popped.ids, popped.r2_uploads, strict=True)):
            if self.stopped.wait(self.seconds_per_image):
                return
            factor = math.prod(UPSCALERS.get(str(name), 1) for name in popped.payload.post_processing or [])
            size = ((popped.payload.width or 64) * factor, (popped.payload.height or 64) * factor)
            image = webp((40 * index % 255, 90, 160), size)
            response = requests.put(url, data=image, headers={"Content-Type": "image/webp"}, timeout=30)
            assert response.status_code == 200, response.text
            submit = ImageGenerationJobSubmitRequest(
                apikey=self.apikey,
                id=job_id,
                generation="R2",
                state=GENERATION_STATE.ok,
                seed=int(popped.payload.seed or 0) + index,
            )
            result = self.client.submit_request(submit, JobSubmitResponse)
            assert isinstance(result, JobSubmitResponse), result
            self.rewards.append(result.reward)


@contextmanager
def serving(worker: SdkWorker) -> Iterator[None]:
    """`worker` serves every job it can pop, on a thread, until the block exits."""
    stop = worker.stopped

    def serve() -> None:
        while not stop.is_set():
            popped = worker.pop()
            if popped.ids:
                worker.serve(popped)
            else:
                stop.wait(0.2)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(60)
