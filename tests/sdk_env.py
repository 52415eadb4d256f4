"""Helpers for driving the coordinator with the real `horde_sdk` package (AI Horde's own SDK).

horde_sdk reads its API URL once, from `AI_HORDE_URL`, when `horde_sdk.ai_horde_api.endpoints`
is imported; every request class then asks `BaseAIHordeRequest.get_api_url()`, which returns the
module global `horde_sdk.ai_horde_api.apimodels.base.AI_HORDE_BASE_URL` at call time. Tests start
a coordinator on a random port after the SDK is imported, so `point_sdk_at` replaces that global
(and the `endpoints` one, for code that reads it there). The subprocess entry point at the bottom
proves the documented way, `AI_HORDE_URL=http://HOST:PORT/api/` set before the SDK is imported,
works unchanged.
"""

import asyncio
import base64
import io
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import aiohttp
from horde_sdk.ai_horde_api.apimodels import (
    ImageGenerateJobPopRequest,
    ImageGenerateJobPopResponse,
    ImageGenerationJobSubmitRequest,
    JobSubmitResponse,
)
from horde_sdk.ai_horde_api.consts import GENERATION_STATE
from horde_sdk.generic_api.apimodels import RequestErrorResponse
from PIL import Image

SDK_BRIDGE_AGENT = "horde_sdk test worker:1:tests"


@contextmanager
def point_sdk_at(api_url: str) -> Iterator[None]:
    """Send every horde_sdk request to `api_url` (which ends in /api/) until the block exits."""
    import horde_sdk.ai_horde_api.apimodels.base as base
    import horde_sdk.ai_horde_api.endpoints as endpoints
    from horde_sdk.ai_horde_api.apimodels import ImageGenerateAsyncRequest

    assert api_url.endswith("/api/"), api_url
    saved = base.AI_HORDE_BASE_URL, endpoints.AI_HORDE_BASE_URL
    base.AI_HORDE_BASE_URL = endpoints.AI_HORDE_BASE_URL = api_url
    try:
        # Never let a test talk to the public AI Horde by accident.
        assert ImageGenerateAsyncRequest.get_api_endpoint_url().startswith(api_url)
        yield
    finally:
        base.AI_HORDE_BASE_URL, endpoints.AI_HORDE_BASE_URL = saved


def webp_bytes(color: tuple[int, int, int] = (30, 120, 200), size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="WEBP")
    return buffer.getvalue()


@dataclass
class SdkWorker:
    """A worker built only from horde_sdk's models, doing what reGen does: pop, PUT the WebP to
    `r2_upload`, submit `generation="R2"`. It sends only an apikey (no signature), like reGen."""

    client: object  # AIHordeAPIAsyncManualClient
    session: aiohttp.ClientSession
    apikey: str
    name: str
    models: list[str] = field(default_factory=lambda: ["tiny-sd"])
    max_pixels: int = 1024 * 1024
    rewards: list[float] = field(default_factory=list)
    pops: list[ImageGenerateJobPopResponse] = field(default_factory=list)

    def pop_request(self, amount: int = 1, wait: float | None = None) -> ImageGenerateJobPopRequest:
        extra = {"wait": wait} if wait is not None else {}  # our long-poll extension, sent as an extra field
        return ImageGenerateJobPopRequest(
            apikey=self.apikey,
            name=self.name,
            models=self.models,
            max_pixels=self.max_pixels,
            amount=amount,
            bridge_agent=SDK_BRIDGE_AGENT,
            nsfw=True,
            allow_painting=True,
            **extra,
        )

    async def pop(self, amount: int = 1, wait: float | None = None) -> ImageGenerateJobPopResponse:
        answer = await self.client.submit_request(self.pop_request(amount, wait), ImageGenerateJobPopResponse)
        assert isinstance(answer, ImageGenerateJobPopResponse), answer
        return answer

    async def upload(self, url: str, image: bytes) -> None:
        async with self.session.put(url, data=image, headers={"Content-Type": "image/webp"}) as response:
            assert response.status == 200, await response.text()

    async def submit(
        self,
        job_id: object,
        seed: str | int,
        state: GENERATION_STATE = GENERATION_STATE.ok,
        generation: str = "R2",
        **extra: object,
    ) -> JobSubmitResponse | RequestErrorResponse:
        request = ImageGenerationJobSubmitRequest(
            apikey=self.apikey,
            id=job_id,
            generation=generation,
            state=state,
            seed=int(seed),
            **extra,
        )
        return await self.client.submit_request(request, JobSubmitResponse)

    async def serve(self, popped: ImageGenerateJobPopResponse) -> None:
        """Make (a solid colour for) every image of a pop, upload it and submit it."""
        assert popped.r2_uploads is not None and len(popped.r2_uploads) == len(popped.ids)
        for index, (job_id, upload_url) in enumerate(zip(popped.ids, popped.r2_uploads, strict=True)):
            assert str(job_id) in upload_url  # ids and r2_uploads stay paired after the SDK sorts both
            await self.upload(upload_url, webp_bytes((40 * index % 255, 90, 160)))
            result = await self.submit(job_id, int(popped.payload.seed or 0) + index)
            assert isinstance(result, JobSubmitResponse), result
            self.rewards.append(result.reward)

    async def run(self, stop: asyncio.Event, wait: float = 1.0) -> None:
        while not stop.is_set():
            popped = await self.pop(wait=wait)
            if popped.ids:
                self.pops.append(popped)
                await self.serve(popped)


def _generate_in_subprocess(prompt: str, n: int, r2: bool) -> dict:
    """Run by a test in a fresh interpreter with AI_HORDE_URL set: the sync simple client,
    anonymous, exactly as a user of horde_sdk would call it."""
    from horde_sdk import ANON_API_KEY
    from horde_sdk.ai_horde_api.ai_horde_clients import AIHordeAPISimpleClient
    from horde_sdk.ai_horde_api.apimodels import ImageGenerateAsyncRequest, ImageGenerationInputPayload

    client = AIHordeAPISimpleClient()
    heartbeat = client.heartbeat_request()
    request = ImageGenerateAsyncRequest(
        apikey=ANON_API_KEY,
        prompt=prompt,
        models=["tiny-sd"],
        r2=r2,
        params=ImageGenerationInputPayload(width=64, height=64, steps=4, n=n, sampler_name="k_euler"),
    )
    status, job_id = client.image_generate_request(request, timeout=60)
    images = [client.download_image_from_generation(generation) for generation in status.generations]
    return {
        "heartbeat": heartbeat.message,
        "version": heartbeat.version,
        "job_id": str(job_id),
        "done": status.done,
        "finished": status.finished,
        "kudos": status.kudos,
        "generations": [
            {
                "img_is_url": g.img.startswith("http"),
                "seed": g.seed,
                "state": str(g.state),
                "worker_id": str(g.worker_id),
                "worker_name": g.worker_name,
                "model": g.model,
                "censored": g.censored,
            }
            for g in status.generations
        ],
        "image_sizes": [list(image.size) for image in images],
        "image_b64": base64.b64encode(images[0].tobytes()[:16]).decode() if images else "",
    }


if __name__ == "__main__":
    # python -m tests.sdk_env PROMPT N R2  (with AI_HORDE_URL=http://HOST:PORT/api/ in the environment)
    from horde_sdk.ai_horde_api.endpoints import AI_HORDE_BASE_URL

    result = _generate_in_subprocess(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1")
    result["base_url"] = AI_HORDE_BASE_URL
    print("RESULT " + json.dumps(result))
