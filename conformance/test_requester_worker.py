"""horde-sdk 0.33.3, strict, as requester and as worker through every image endpoint we serve."""

from horde_sdk import ANON_API_KEY
from horde_sdk.ai_horde_api.ai_horde_clients import AIHordeAPIManualClient, AIHordeAPISimpleClient
from horde_sdk.ai_horde_api.apimodels import (
    DeleteImageGenerateRequest,
    ImageGenerateAsyncRequest,
    ImageGenerateAsyncResponse,
    ImageGenerateCheckRequest,
    ImageGenerateCheckResponse,
    ImageGenerateStatusRequest,
    ImageGenerateStatusResponse,
    ImageGenerationInputPayload,
    SingleWorkerDetailsResponse,
    SingleWorkerNameDetailsRequest,
)

from conformance.sdk import MODEL, Live, SdkWorker, serving


def small_request(apikey: str, n: int = 1) -> ImageGenerateAsyncRequest:
    return ImageGenerateAsyncRequest(
        apikey=apikey,
        prompt="a lighthouse at dusk",
        models=[MODEL],
        r2=True,
        params=ImageGenerationInputPayload(width=64, height=64, steps=4, n=n, sampler_name="k_euler"),
    )


def test_request_pop_upload_submit_check_status_download(live: Live) -> None:
    client = AIHordeAPIManualClient()
    accepted = client.submit_request(small_request(live.requester_key, n=2), ImageGenerateAsyncResponse)
    assert isinstance(accepted, ImageGenerateAsyncResponse), accepted
    worker = SdkWorker(client, live.worker_key, "conformance-node")
    popped = worker.pop(amount=2)
    assert len(popped.ids) == 2 and popped.payload.width == 64 and popped.model == MODEL, popped
    worker.serve(popped)
    assert len(worker.rewards) == 2 and all(reward > 0 for reward in worker.rewards)

    check = client.submit_request(ImageGenerateCheckRequest(id=accepted.id_), ImageGenerateCheckResponse)
    assert isinstance(check, ImageGenerateCheckResponse) and check.done and check.finished == 2, check
    status = client.submit_request(ImageGenerateStatusRequest(id=accepted.id_), ImageGenerateStatusResponse)
    assert isinstance(status, ImageGenerateStatusResponse) and status.done, status
    assert sorted(str(g.id_) for g in status.generations) == sorted(str(i) for i in popped.ids)
    assert {g.worker_name for g in status.generations} == {"conformance-node"}
    images = [AIHordeAPISimpleClient().download_image_from_generation(g) for g in status.generations]
    assert [image.size for image in images] == [(64, 64), (64, 64)]


def test_simple_client_generates_anonymously_while_a_worker_serves(live: Live) -> None:
    """The SDK's simple client, anonymous, end to end (its own polling), served by an SDK worker."""
    with serving(SdkWorker(AIHordeAPIManualClient(), live.worker_key, "conformance-node")):
        status, job_id = AIHordeAPISimpleClient().image_generate_request(small_request(ANON_API_KEY), timeout=60)
    assert status.done and len(status.generations) == 1 and job_id, status
    assert status.generations[0].worker_name == "conformance-node"


def test_cancel_without_apikey_cancels_an_accounts_request(live: Live) -> None:
    """horde-sdk cancels with DELETE and no apikey (also on every exception): the id is the capability."""
    client = AIHordeAPIManualClient()
    accepted = client.submit_request(small_request(live.requester_key, n=3), ImageGenerateAsyncResponse)
    assert isinstance(accepted, ImageGenerateAsyncResponse), accepted
    cancelled = client.delete_pending_image(accepted.id_)
    assert isinstance(cancelled, ImageGenerateStatusResponse) and cancelled.done and cancelled.waiting == 0
    again = client.submit_request(DeleteImageGenerateRequest(id=accepted.id_), ImageGenerateStatusResponse)
    assert isinstance(again, ImageGenerateStatusResponse) and again.done, again
    popped = SdkWorker(client, live.worker_key, "conformance-node").pop()
    assert popped.ids == [] and popped.id_ is None, popped  # nothing of it is left to serve


def test_worker_found_by_name(live: Live) -> None:
    client = AIHordeAPIManualClient()
    SdkWorker(client, live.worker_key, "Named-Node").pop()
    found = client.submit_request(SingleWorkerNameDetailsRequest(worker_name="named-node"), SingleWorkerDetailsResponse)
    assert isinstance(found, SingleWorkerDetailsResponse), found
    assert found.name == "Named-Node" and found.type_ == "image" and found.models == ["tiny-sd"]
    missing = client.submit_request(SingleWorkerNameDetailsRequest(worker_name="nobody"), SingleWorkerDetailsResponse)
    assert not isinstance(missing, SingleWorkerDetailsResponse)
