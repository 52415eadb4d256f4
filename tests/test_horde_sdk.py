"""Compatibility with the real `horde_sdk` package (AI Horde's own SDK, pinned at 0.18.0).

Everything here goes over real HTTP to a real coordinator on loopback, using only the SDK's
clients and models on the AI Horde side: a requester with the simple clients, a worker built
from the SDK's pop/submit models that uploads to `r2_upload` as reGen does, and the other
calls the SDK offers that map to endpoints we serve. How the SDK is pointed at the coordinator
is explained in `tests/sdk_env.py`.
"""

import asyncio
import base64
import io
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from horde_sdk import ANON_API_KEY
from horde_sdk.ai_horde_api.ai_horde_clients import AIHordeAPIAsyncManualClient, AIHordeAPIAsyncSimpleClient
from horde_sdk.ai_horde_api.apimodels import (
    AIHordeHeartbeatRequest,
    AIHordeHeartbeatResponse,
    AllWorkersDetailsRequest,
    AllWorkersDetailsResponse,
    DeleteWorkerRequest,
    DeleteWorkerResponse,
    FindUserRequest,
    GenMetadataEntry,
    HordePerformanceRequest,
    HordePerformanceResponse,
    HordeStatusModelsAllRequest,
    HordeStatusModelsAllResponse,
    HordeStatusModelsSingleRequest,
    HordeStatusModelsSingleResponse,
    ImageGenerateAsyncDryRunResponse,
    ImageGenerateAsyncRequest,
    ImageGenerateAsyncResponse,
    ImageGenerateCheckResponse,
    ImageGenerateStatusResponse,
    ImageGenerationInputPayload,
    ImageStatsModelsTotalRequest,
    ImageStatsModelsTotalResponse,
    JobSubmitResponse,
    KudosTransferRequest,
    KudosTransferResponse,
    ModifyWorkerRequest,
    ModifyWorkerResponse,
    SingleUserDetailsRequest,
    SingleWorkerDetailsRequest,
    SingleWorkerDetailsResponse,
    UserDetailsResponse,
)
from horde_sdk.ai_horde_api.consts import GENERATION_STATE, METADATA_TYPE, METADATA_VALUE, MODEL_TYPE
from horde_sdk.ai_horde_api.exceptions import AIHordePayloadValidationError
from horde_sdk.generic_api.apimodels import RequestErrorResponse
from PIL import Image

from tests.conftest import RunningCoordinator
from tests.sdk_env import SdkWorker, point_sdk_at, webp_bytes

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def sdk(coordinator: RunningCoordinator) -> AsyncIterator[RunningCoordinator]:
    with point_sdk_at(coordinator.api_url):
        yield coordinator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


def small_request(apikey: str, n: int = 1, **extra: object) -> ImageGenerateAsyncRequest:
    return ImageGenerateAsyncRequest(
        apikey=apikey,
        prompt="a lighthouse at dusk ### blurry",
        models=["tiny-sd"],
        params=ImageGenerationInputPayload(width=64, height=64, steps=4, n=n, sampler_name="k_euler", seed="1234"),
        **extra,
    )


async def worker_for(sdk: RunningCoordinator, session: aiohttp.ClientSession, name: str) -> SdkWorker:
    owner = await sdk.create_account(f"{name}-owner")
    return SdkWorker(AIHordeAPIAsyncManualClient(aiohttp_session=session), session, owner.apikey, name)


async def test_async_simple_client_generates_with_an_account_key(
    sdk: RunningCoordinator, session: aiohttp.ClientSession
) -> None:
    requester = await sdk.create_account("alice", kudos=100)
    worker = await worker_for(sdk, session, "sdk-node-1")
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.run(stop))
    try:
        client = AIHordeAPIAsyncSimpleClient(aiohttp_session=session, apikey=requester.apikey)
        checks: list[ImageGenerateCheckResponse] = []
        status, job_id = await asyncio.wait_for(
            client.image_generate_request(
                small_request(requester.apikey, n=2), timeout=60, check_callback=checks.append
            ),
            timeout=30,
        )
    finally:
        stop.set()
        await serving

    assert isinstance(status, ImageGenerateStatusResponse)
    assert status.done and status.finished == 2 and status.waiting == 0 and not status.faulted
    assert status.kudos > 0 and status.is_possible
    assert checks and all(isinstance(check, ImageGenerateCheckResponse) for check in checks)
    assert len(status.generations) == 2
    assert {generation.seed for generation in status.generations} == {"1234", "1235"}
    for generation in status.generations:
        assert generation.state == GENERATION_STATE.ok and not generation.censored
        assert generation.worker_name == "sdk-node-1" and generation.model == "tiny-sd"
        assert generation.img.startswith(sdk.url)  # r2=True: a URL to GET
        image, image_id = await client.download_image_from_generation(generation)
        assert image_id == generation.id_ and image.format == "WEBP" and image.size == (64, 64)
        # Our extensions (provenance) come only to clients that ask for them (protocol/extensions.py).
        assert not generation.model_extra
    assert len(worker.rewards) == 2 and all(reward > 0 for reward in worker.rewards)
    assert (await sdk.account(requester.id)).kudos < 100
    assert str(job_id)


async def test_sync_simple_client_anonymous_with_ai_horde_url(
    sdk: RunningCoordinator, session: aiohttp.ClientSession
) -> None:
    """A separate interpreter configured only by AI_HORDE_URL, anonymous key, images inline (r2=false)."""
    worker = await worker_for(sdk, session, "sdk-node-2")
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.run(stop))
    env = {**os.environ, "AI_HORDE_URL": sdk.api_url, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("AI_HORDE_DEV_URL", None)
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.sdk_env",
            "a red fox",
            "1",
            "0",
            cwd=REPO_ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=45)
    finally:
        stop.set()
        await serving
    assert process.returncode == 0, stderr.decode()[-3000:]
    line = next(line for line in stdout.decode().splitlines() if line.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    assert result["base_url"] == sdk.api_url
    assert result["heartbeat"] == "OK"
    assert result["done"] is True and result["finished"] == 1
    assert result["image_sizes"] == [[64, 64]]
    [generation] = result["generations"]
    assert not generation["img_is_url"]  # r2=false: base64 inline
    assert generation["state"] == "ok" and generation["worker_name"] == "sdk-node-2"


async def test_worker_side_with_sdk_models(sdk: RunningCoordinator, session: aiohttp.ClientSession) -> None:
    requester = await sdk.create_account("carol", kudos=100)
    worker = await worker_for(sdk, session, "sdk-node-3")
    client = AIHordeAPIAsyncManualClient(aiohttp_session=session)

    # Nothing queued: an empty pop the SDK parses, with `skipped` present and empty.
    empty = await worker.pop()
    assert empty.ids == [] and empty.id_ is None and empty.model is None and not empty.ids_present
    assert empty.skipped.is_empty() or not any(empty.skipped.model_dump(exclude_none=True).values())

    # A request this worker cannot serve shows up in `skipped` under the SDK's own field names.
    other = await client.submit_request(
        ImageGenerateAsyncRequest(
            apikey=requester.apikey,
            prompt="x",
            models=["some-other-model"],
            params=ImageGenerationInputPayload(width=64, height=64, steps=4),
        ),
        ImageGenerateAsyncResponse,
    )
    assert isinstance(other, ImageGenerateAsyncResponse), other
    assert [warning.code for warning in other.warnings or []] == ["NoAvailableWorker"]
    skipped = await worker.pop()
    assert skipped.ids == [] and skipped.skipped.models == 1

    # A two-image request, popped at once (amount=2) with the long-poll `wait` extension.
    accepted = await client.submit_request(small_request(requester.apikey, n=2), ImageGenerateAsyncResponse)
    assert isinstance(accepted, ImageGenerateAsyncResponse), accepted
    popped = await worker.pop(amount=2, wait=2)
    assert popped.ids_present and len(popped.ids) == 2 and popped.model == "tiny-sd"
    assert popped.id_ in popped.ids and popped.ttl and popped.ttl > 0
    # AI Horde's form: the negative prompt after "###" in the one prompt (no field the SDK does not define).
    assert popped.payload.prompt == "a lighthouse at dusk ### blurry" and popped.payload.ddim_steps == 4
    assert popped.payload.width == 64 and popped.payload.height == 64 and popped.payload.n_iter == 2
    assert popped.payload.seed == "1234" and popped.payload.sampler_name == "k_euler"
    assert not popped.payload.model_extra
    assert popped.source_image is None and popped.source_processing == "txt2img"
    assert popped.skipped.is_empty() or not any(popped.skipped.model_dump(exclude_none=True).values())
    assert popped.r2_upload in (popped.r2_uploads or [])
    await worker.serve(popped)
    assert len(worker.rewards) == 2 and all(reward > 0 for reward in worker.rewards)

    # Submitting again is refused with AI Horde's return code, which the SDK surfaces.
    again = await worker.submit(popped.ids[0], 1234)
    assert isinstance(again, RequestErrorResponse) and again.rc == "DuplicateGen"

    status = await client.get_generate_status(accepted.id_)
    assert status.done and len(status.generations) == 2
    assert {str(generation.id_) for generation in status.generations} == {str(i) for i in popped.ids}


def pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB").tobytes()


async def test_worker_downloads_sources_and_reports_metadata(
    sdk: RunningCoordinator, session: aiohttp.ClientSession
) -> None:
    """Inpainting: the pop carries source URLs the SDK downloads itself; a submit with gen_metadata
    (sent inline as base64 here, the other way a worker may deliver) comes back in the status."""
    requester = await sdk.create_account("gina", kudos=100)
    worker = await worker_for(sdk, session, "sdk-node-6")
    client = AIHordeAPIAsyncManualClient(aiohttp_session=session)
    source, mask = webp_bytes((10, 200, 10)), webp_bytes((255, 255, 255))
    accepted = await client.submit_request(
        small_request(
            requester.apikey,
            source_image=base64.b64encode(source).decode(),
            source_mask=base64.b64encode(mask).decode(),
            source_processing="inpainting",
        ),
        ImageGenerateAsyncResponse,
    )
    assert isinstance(accepted, ImageGenerateAsyncResponse), accepted
    popped = await worker.pop(wait=2)
    assert popped.ids_present and popped.source_processing == "inpainting"
    assert popped.source_image and popped.source_image.startswith(sdk.url)
    assert popped.payload.denoising_strength is not None
    await popped.async_download_additional_data(session)
    # The coordinator hands out its own lossless re-encoding: other bytes, the same pixels.
    assert pixels(base64.b64decode(popped.get_downloaded_source_image() or "")) == pixels(source)
    assert pixels(base64.b64decode(popped.get_downloaded_source_mask() or "")) == pixels(mask)

    metadata = [GenMetadataEntry(type=METADATA_TYPE.lora, value=METADATA_VALUE.download_failed, ref="123")]
    result = await worker.submit(
        popped.ids[0],
        popped.payload.seed or 0,
        generation=base64.b64encode(webp_bytes()).decode(),
        gen_metadata=metadata,
    )
    assert isinstance(result, JobSubmitResponse) and result.reward > 0, result
    status = await client.get_generate_status(accepted.id_)
    [generation] = status.generations
    assert generation.gen_metadata == metadata and generation.seed == "1234"


async def test_worker_reports_a_fault_the_sdk_way(sdk: RunningCoordinator, session: aiohttp.ClientSession) -> None:
    """The SDK's own clean-up submit for an abandoned job: state=faulted, generation="Faulted"."""
    requester = await sdk.create_account("dave", kudos=100)
    worker = await worker_for(sdk, session, "sdk-node-4")
    client = AIHordeAPIAsyncManualClient(aiohttp_session=session)
    accepted = await client.submit_request(small_request(requester.apikey), ImageGenerateAsyncResponse)
    assert isinstance(accepted, ImageGenerateAsyncResponse), accepted
    popped = await worker.pop(wait=2)
    assert popped.ids_present
    [cleanup] = popped.get_follow_up_failure_cleanup_request()
    cleanup = cleanup.model_copy(update={"apikey": worker.apikey})
    answer = await client.submit_request(cleanup, cleanup.get_default_success_response_type())
    assert not isinstance(answer, RequestErrorResponse), answer
    assert answer.reward == 0
    check = await client.get_generate_check(accepted.id_)
    assert check.restarted == 1 and check.waiting == 1 and not check.done  # requeued for another node


async def test_requester_calls(sdk: RunningCoordinator, session: aiohttp.ClientSession) -> None:
    requester = await sdk.create_account("erin", kudos=100)
    friend = await sdk.create_account("frank")
    client = AIHordeAPIAsyncManualClient(aiohttp_session=session)

    heartbeat = await client.submit_request(AIHordeHeartbeatRequest(), AIHordeHeartbeatResponse)
    assert isinstance(heartbeat, AIHordeHeartbeatResponse) and heartbeat.message == "OK", heartbeat

    me = await client.submit_request(FindUserRequest(apikey=requester.apikey), UserDetailsResponse)
    assert isinstance(me, UserDetailsResponse), me
    assert me.id_ == requester.id and me.username == f"erin#{requester.id}" and me.kudos == 100
    by_id = await client.submit_request(SingleUserDetailsRequest(user_id=str(requester.id)), UserDetailsResponse)
    assert isinstance(by_id, UserDetailsResponse) and by_id.id_ == requester.id, by_id
    unknown = await client.submit_request(FindUserRequest(apikey="x" * 22), UserDetailsResponse)
    assert isinstance(unknown, RequestErrorResponse) and unknown.rc == "InvalidAPIKey"

    sent = await client.submit_request(
        KudosTransferRequest(apikey=requester.apikey, username=f"frank#{friend.id}", amount=5), KudosTransferResponse
    )
    assert isinstance(sent, KudosTransferResponse) and sent.transferred == 5, sent

    dry = await client.submit_request(
        small_request(requester.apikey, n=2, dry_run=True), ImageGenerateAsyncDryRunResponse
    )
    assert isinstance(dry, ImageGenerateAsyncDryRunResponse) and dry.kudos > 0, dry

    # A request no node serves: check and status parse.
    accepted = await client.submit_request(small_request(requester.apikey, n=3), ImageGenerateAsyncResponse)
    assert isinstance(accepted, ImageGenerateAsyncResponse), accepted
    check = await client.get_generate_check(accepted.id_)
    assert check.waiting == 3 and not check.done and check.is_possible is False
    status = await client.get_generate_status(accepted.id_)
    assert status.generations == [] and not status.done
    # The SDK's cancel sends DELETE without an apikey: the id is the capability, as in AI Horde.
    cancelled = await client.delete_pending_image(accepted.id_)
    assert isinstance(cancelled, ImageGenerateStatusResponse) and cancelled.done and cancelled.waiting == 0
    anonymous = await client.submit_request(small_request(ANON_API_KEY), ImageGenerateAsyncResponse)
    assert isinstance(anonymous, ImageGenerateAsyncResponse), anonymous
    cancelled = await client.delete_pending_image(anonymous.id_)
    assert isinstance(cancelled, ImageGenerateStatusResponse) and cancelled.done and cancelled.waiting == 0

    # Input the coordinator rejects: the SDK raises its validation error from our `errors` map.
    with pytest.raises(AIHordePayloadValidationError):
        await client.submit_request(
            ImageGenerateAsyncRequest(
                apikey=requester.apikey, prompt="x", models=["tiny-sd"], params=ImageGenerationInputPayload(steps=5000)
            ),
            ImageGenerateAsyncResponse,
        )
    missing = await client.submit_request(FindUserRequest(apikey=ANON_API_KEY), UserDetailsResponse)
    assert isinstance(missing, RequestErrorResponse) and missing.rc == "AnonForbidden"


async def test_status_and_worker_calls(sdk: RunningCoordinator, session: aiohttp.ClientSession) -> None:
    worker = await worker_for(sdk, session, "sdk-node-5")
    client = AIHordeAPIAsyncManualClient(aiohttp_session=session)
    await worker.pop()  # registers the worker, online now

    models = await client.submit_request(HordeStatusModelsAllRequest(), HordeStatusModelsAllResponse)
    assert isinstance(models, HordeStatusModelsAllResponse), models
    assert [model.name for model in models] == ["tiny-sd"] and models[0].count == 1
    single = await client.submit_request(
        HordeStatusModelsSingleRequest(model_name="tiny-sd"), HordeStatusModelsSingleResponse
    )
    assert isinstance(single, HordeStatusModelsSingleResponse) and single.root[0].name == "tiny-sd", single
    for filtered in (HordeStatusModelsAllRequest(type=MODEL_TYPE.text), HordeStatusModelsAllRequest(min_count=2)):
        none = await client.submit_request(filtered, HordeStatusModelsAllResponse)
        assert isinstance(none, HordeStatusModelsAllResponse) and none.root == [], none

    performance = await client.submit_request(HordePerformanceRequest(), HordePerformanceResponse)
    assert isinstance(performance, HordePerformanceResponse) and performance.worker_count == 1, performance
    totals = await client.submit_request(ImageStatsModelsTotalRequest(), ImageStatsModelsTotalResponse)
    assert isinstance(totals, ImageStatsModelsTotalResponse), totals

    workers = await client.submit_request(AllWorkersDetailsRequest(), AllWorkersDetailsResponse)
    assert isinstance(workers, AllWorkersDetailsResponse), workers
    [listed] = list(workers)
    assert listed.name == "sdk-node-5" and listed.online and listed.bridge_agent.startswith("horde_sdk test worker")
    one = await client.submit_request(
        SingleWorkerDetailsRequest(worker_id=str(listed.id_)), SingleWorkerDetailsResponse
    )
    assert isinstance(one, SingleWorkerDetailsResponse) and one.max_pixels == worker.max_pixels, one

    changed = await client.submit_request(
        ModifyWorkerRequest(apikey=worker.apikey, worker_id=str(listed.id_), maintenance=True, info="testing"),
        ModifyWorkerResponse,
    )
    assert isinstance(changed, ModifyWorkerResponse) and changed.maintenance is True, changed
    deleted = await client.submit_request(
        DeleteWorkerRequest(apikey=worker.apikey, worker_id=str(listed.id_)), DeleteWorkerResponse
    )
    assert isinstance(deleted, DeleteWorkerResponse) and deleted.deleted_name == "sdk-node-5", deleted
